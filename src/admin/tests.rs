use super::*;
use crate::config::Config;
use crate::wire::frame::split_frame;
use std::collections::BTreeMap;
use std::time::Duration;

/// A proxy in front of a database that is never contacted.
fn proxy(extra: &[(&str, &str)]) -> Arc<Shared> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("DATABASE_URL".into(), "postgres://app:t0psecret@127.0.0.1:1/appdb?sslmode=disable".into());
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    Arc::new(Shared::new(Config::load(&BTreeMap::new(), &env).unwrap()).unwrap())
}

/// An answer taken apart: column names, rows, notices, the command tag.
#[derive(Debug, Default)]
struct Answer {
    columns: Vec<String>,
    rows: Vec<Vec<String>>,
    notices: Vec<String>,
    tag: String,
}

fn cstrs(body: &[u8]) -> Vec<String> {
    body.split(|&b| b == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

fn decode(mut buf: BytesMut) -> Answer {
    let mut a = Answer::default();
    while let Some((t, body)) = split_frame(&mut buf, 1 << 20).unwrap() {
        match t {
            b'T' => {
                let mut rest = &body[2..];
                while !rest.is_empty() {
                    let end = rest.iter().position(|&b| b == 0).unwrap();
                    a.columns.push(String::from_utf8_lossy(&rest[..end]).into_owned());
                    rest = &rest[end + 1 + 18..];
                }
            }
            b'D' => {
                let n = u16::from_be_bytes([body[0], body[1]]) as usize;
                let mut rest = &body[2..];
                let mut row = Vec::new();
                for _ in 0..n {
                    let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                    row.push(String::from_utf8_lossy(&rest[4..4 + len]).into_owned());
                    rest = &rest[4 + len..];
                }
                assert_eq!(row.len(), a.columns.len(), "one value per column");
                a.rows.push(row);
            }
            b'N' => a.notices.push(cstrs(&body).join("|")),
            b'C' => a.tag = cstrs(&body)[0].clone(),
            other => panic!("unexpected message {:?}", other as char),
        }
    }
    assert!(buf.is_empty());
    a
}

async fn run(shared: &Arc<Shared>, sql: &str) -> Answer {
    let command = Command::parse(sql).unwrap().expect("a command");
    decode(command.execute(shared).await.unwrap())
}

fn value<'a>(a: &'a Answer, row: usize, column: &str) -> &'a str {
    let i = a.columns.iter().position(|c| c == column).unwrap_or_else(|| panic!("no column {column}"));
    &a.rows[row][i]
}

#[test]
fn parsing_is_case_insensitive_and_takes_one_command() {
    assert_eq!(Command::parse("show pools").unwrap(), Some(Command::Pools(pools::ShowPools)));
    assert_eq!(Command::parse("  SHOW   Stats ;  ").unwrap(), Some(Command::Stats(stats::ShowStats)));
    assert_eq!(
        Command::parse("pause \"my db\"").unwrap_err().code,
        "42601",
        "a quoted name with a space is two words"
    );
    assert_eq!(
        Command::parse("PAUSE appdb;").unwrap(),
        Some(Command::Pause(pause::Pause { database: Some("appdb".into()) }))
    );
    assert_eq!(
        Command::parse("reconnect \"appdb\"").unwrap(),
        Some(Command::Reconnect(reconnect::Reconnect { database: Some("appdb".into()) }))
    );
    assert_eq!(Command::parse("resume").unwrap(), Some(Command::Resume(resume::Resume { database: None })));
    assert_eq!(Command::parse("").unwrap(), None);
    assert_eq!(Command::parse(" ; ").unwrap(), None);
    for bad in ["SHOW", "SHOW SOCKETS", "DISABLE appdb", "select 1", "SHOW POOLS; SHOW STATS", "RELOAD now"] {
        let e = Command::parse(bad).unwrap_err();
        assert_eq!(e.code, "42601", "{bad}");
        if bad != "SHOW POOLS; SHOW STATS" {
            assert!(e.hint.as_deref().unwrap_or("").contains("SHOW HELP"), "{bad}: {e:?}");
        }
    }
}

#[tokio::test]
async fn show_commands_answer_with_pgbouncer_columns() {
    let p = proxy(&[("PGSIDECAR_POOL_SIZE", "3")]);
    let pools = run(&p, "SHOW POOLS").await;
    assert_eq!(pools.columns, pools::COLUMNS);
    assert_eq!(pools.tag, "SHOW");
    assert_eq!(pools.rows.len(), 1);
    assert_eq!(value(&pools, 0, "database"), "appdb");
    assert_eq!(value(&pools, 0, "user"), "app");
    assert_eq!(value(&pools, 0, "pool_mode"), "transaction");
    assert_eq!(value(&pools, 0, "pool_size"), "3");
    assert_eq!(value(&pools, 0, "cl_waiting"), "0");

    let stats = run(&p, "show stats").await;
    assert_eq!(stats.columns, stats::COLUMNS);
    p.upstreams()[0].counters.transaction(Duration::from_millis(4));
    p.upstreams()[0].counters.transaction(Duration::from_millis(2));
    let stats = run(&p, "show stats").await;
    assert_eq!(value(&stats, 0, "total_xact_count"), "2");
    assert_eq!(value(&stats, 0, "total_xact_time"), "6000");
    assert_eq!(value(&stats, 0, "avg_query_time"), "0");

    let dbs = run(&p, "SHOW DATABASES").await;
    assert_eq!(dbs.columns, databases::COLUMNS);
    assert_eq!(value(&dbs, 0, "host"), "127.0.0.1");
    assert_eq!(value(&dbs, 0, "force_user"), "app");
    assert_eq!(value(&dbs, 0, "paused"), "0");

    let clients = run(&p, "SHOW CLIENTS").await;
    assert_eq!(clients.columns, clients::COLUMNS);
    assert!(clients.rows.is_empty());
    let servers = run(&p, "SHOW SERVERS").await;
    assert_eq!(servers.columns, servers::COLUMNS);

    let version = run(&p, "SHOW VERSION").await;
    assert_eq!(version.columns, ["version"]);
    assert!(version.rows[0][0].starts_with("pgsidecar "));

    let help = run(&p, "SHOW HELP").await;
    assert!(help.notices[0].contains("Console usage") && help.notices[0].contains("RECONNECT"));
    assert_eq!(help.tag, "SHOW");
}

/// The `avg_*` columns are PgBouncer's: over the last complete stats period, not since the
/// start; counts and bytes per second, times per transaction, query or client wait.
#[tokio::test]
async fn show_stats_averages_are_per_stats_period() {
    let p = proxy(&[]);
    let c = &p.upstreams()[0].counters;
    let t0 = std::time::Instant::now();
    c.end_period(t0);
    // A busy first period: 4 transactions of 10 ms in 2 s, 2 waits of 1 ms and 3 ms.
    for _ in 0..4 {
        c.transaction(Duration::from_millis(10));
    }
    c.bytes_from_clients.fetch_add(4000, std::sync::atomic::Ordering::Relaxed);
    c.wait_time.record(Duration::from_millis(1));
    c.wait_time.record(Duration::from_millis(3));
    let stats = run(&p, "SHOW STATS").await;
    assert_eq!(value(&stats, 0, "avg_xact_count"), "0", "no period has ended yet");
    c.end_period(t0 + Duration::from_secs(2));
    let stats = run(&p, "SHOW STATS").await;
    assert_eq!(value(&stats, 0, "avg_xact_count"), "2");
    assert_eq!(value(&stats, 0, "avg_recv"), "2000");
    assert_eq!(value(&stats, 0, "avg_xact_time"), "10000");
    assert_eq!(value(&stats, 0, "avg_wait_time"), "2000");
    // A quiet second period of 1 s with one short transaction and one long wait.
    c.transaction(Duration::from_millis(2));
    c.wait_time.record(Duration::from_millis(500));
    c.end_period(t0 + Duration::from_secs(3));
    let stats = run(&p, "SHOW STATS").await;
    assert_eq!(value(&stats, 0, "total_xact_count"), "5");
    assert_eq!(value(&stats, 0, "total_xact_time"), "42000");
    assert_eq!(value(&stats, 0, "total_wait_time"), "504000");
    assert_eq!(value(&stats, 0, "avg_xact_count"), "1");
    assert_eq!(value(&stats, 0, "avg_recv"), "0");
    assert_eq!(value(&stats, 0, "avg_xact_time"), "2000");
    assert_eq!(value(&stats, 0, "avg_wait_time"), "500000");
}

#[tokio::test]
async fn show_clients_lists_registered_clients() {
    let p = proxy(&[]);
    let info = crate::cancel::CancelSlot::new(
        crate::cancel::ClientInfo {
            user: "app".into(),
            database: "appdb".into(),
            peer: crate::stream::Peer::Tcp("127.0.0.1:40000".parse().unwrap()),
            connected_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            tls: true,
        },
        "web.1",
    );
    let reg = p.cancels.register(None, info);
    reg.slot.set(crate::cancel::Activity::Waiting {
        since: quanta::Instant::now() - Duration::from_millis(1500),
    });
    let a = run(&p, "SHOW CLIENTS").await;
    assert_eq!(a.rows.len(), 1);
    assert_eq!(value(&a, 0, "state"), "waiting");
    assert_eq!(value(&a, 0, "wait"), "1");
    assert_eq!(value(&a, 0, "port"), "40000");
    assert_eq!(value(&a, 0, "connect_time"), "2023-11-14 22:13:20 UTC");
    assert_eq!(value(&a, 0, "application_name"), "web.1");
    assert_eq!(value(&a, 0, "tls"), "TLS");
    drop(reg);
    assert!(run(&p, "SHOW CLIENTS").await.rows.is_empty());
}

#[tokio::test]
async fn show_config_lists_every_setting_and_no_password() {
    let p = proxy(&[("PGSIDECAR_ADMIN_USERS", "app")]);
    let a = run(&p, "SHOW CONFIG").await;
    assert_eq!(a.columns, config::COLUMNS);
    assert_eq!(a.rows.len(), crate::config::settings::SETTINGS.len() + 1);
    let get = |key: &str| a.rows.iter().find(|r| r[0] == key).unwrap_or_else(|| panic!("{key}")).clone();
    assert_eq!(get("pool_mode"), ["pool_mode", "transaction", "transaction", "no"]);
    assert_eq!(get("admin_users")[1], "app");
    assert!(get("DATABASE_URL")[1].contains("<redacted>"));
    let everything = format!("{a:?}");
    assert!(!everything.contains("t0psecret"), "{everything}");
}

#[tokio::test]
async fn pause_resume_and_reconnect_of_idle_pools() {
    let p = proxy(&[]);
    let a = run(&p, "PAUSE").await;
    assert_eq!(a.tag, "PAUSE");
    assert!(p.upstreams()[0].pool.is_paused());
    assert_eq!(value(&run(&p, "SHOW DATABASES").await, 0, "paused"), "1");
    assert_eq!(run(&p, "RESUME appdb").await.tag, "RESUME");
    assert!(!p.upstreams()[0].pool.is_paused());
    assert_eq!(run(&p, "RECONNECT").await.tag, "RECONNECT");
    let e = Command::parse("PAUSE nosuchdb").unwrap().unwrap().execute(&p).await.unwrap_err();
    assert_eq!(e.code, "3D000");
}

#[tokio::test]
async fn show_queries_ranks_statements_by_total_time() {
    let p = proxy(&[]);
    let c = &p.upstreams()[0].counters;
    for _ in 0..3 {
        c.statement_text(b"select * from t where id = 42", None, Duration::from_millis(2), 1);
    }
    c.statement_text(b"select pg_sleep(1)", None, Duration::from_secs(1), 1);
    let a = run(&p, "SHOW QUERIES").await;
    assert_eq!(a.columns, queries::COLUMNS);
    assert_eq!(a.rows.len(), 2);
    assert_eq!(value(&a, 0, "calls"), "1");
    assert_eq!(value(&a, 1, "calls"), "3");
    assert_eq!(value(&a, 1, "total_ms"), "6.000");
    assert_eq!(value(&a, 1, "mean_ms"), "2.000");
    assert_eq!(value(&a, 1, "fingerprint").len(), 16);
    assert!(!value(&a, 1, "query").contains("42"), "constants are normalized away");
}

#[test]
fn times_are_shown_in_utc() {
    assert_eq!(format_time(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
    assert_eq!(format_time(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29 00:00:00 UTC");
    assert_eq!(format_time(UNIX_EPOCH + Duration::from_secs(1_798_761_599)), "2026-12-31 23:59:59 UTC");
}

/// The column types of a RowDescription, in order.
fn column_types(mut buf: BytesMut) -> Vec<i32> {
    let (t, body) = split_frame(&mut buf, 1 << 20).unwrap().unwrap();
    assert_eq!(t, b'T');
    let mut rest = &body[2..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let end = rest.iter().position(|&b| b == 0).unwrap();
        let oid = &rest[end + 1 + 6..end + 1 + 10];
        out.push(i32::from_be_bytes([oid[0], oid[1], oid[2], oid[3]]));
        rest = &rest[end + 1 + 18..];
    }
    out
}

/// Issue 24: the commands PgBouncer's monitoring tools read, with PgBouncer's column types
/// (prometheus-pgbouncer-exporter 1.7 reads SHOW LISTS by row and total_requests in SHOW STATS).
#[tokio::test]
async fn lists_users_and_fds_answer_as_pgbouncer_does() {
    let p = proxy(&[("PGSIDECAR_POOL_SIZE", "3")]);
    let lists = run(&p, "SHOW LISTS").await;
    assert_eq!(lists.columns, ["list", "items"]);
    let names: Vec<&str> = lists.rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(names, lists::LISTS);
    let item = |name: &str| lists.rows.iter().find(|r| r[0] == name).unwrap()[1].clone();
    assert_eq!(
        (item("databases"), item("users"), item("pools"), item("used_servers")),
        ("1".into(), "1".into(), "1".into(), "0".into())
    );
    let users = run(&p, "SHOW USERS").await;
    assert_eq!(users.columns, users::COLUMNS);
    assert_eq!(users.rows.len(), 1);
    assert_eq!(value(&users, 0, "name"), "app");
    assert_eq!(value(&users, 0, "pool_size"), "3");
    assert!(!format!("{users:?}").contains("t0psecret"));
    let fds = run(&p, "SHOW FDS").await;
    assert_eq!(fds.columns, fds::COLUMNS);
    assert!(fds.rows.is_empty());
    let stats = run(&p, "SHOW STATS").await;
    assert_eq!(value(&stats, 0, "total_requests"), value(&stats, 0, "total_query_count"));

    let types = |sql: &'static str| {
        let p = p.clone();
        async move { column_types(Command::parse(sql).unwrap().unwrap().execute(&p).await.unwrap()) }
    };
    assert_eq!(types("SHOW LISTS").await, [25, 23]);
    assert_eq!(types("SHOW STATS").await[..3], [25, 20, 20]);
    let pools = types("SHOW POOLS").await;
    assert_eq!((pools[0], pools[2], pools[15]), (25, 23, 25));
    assert_eq!(types("SHOW DATABASES").await[..3], [25, 25, 23]);

    for (sql, word) in [("SUSPEND", "SUSPEND"), ("KILL appdb", "KILL")] {
        let e = Command::parse(sql).unwrap().unwrap().execute(&p).await.unwrap_err();
        assert_eq!(e.code, "0A000", "{sql}");
        assert!(e.message.starts_with(word), "{e:?}");
    }
}
