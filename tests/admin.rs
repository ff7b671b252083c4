//! The admin console (database `pgbouncer` / `pgsidecar`) driven with psql and tokio-postgres:
//! PgBouncer's column names, counts under load, SHOW QUERIES after pgbench, PAUSE/RESUME (and
//! the servers PAUSE closes, counted in pg_stat_activity), RECONNECT, SHUTDOWN, who may log in,
//! and that no answer carries a password; and the check of a server idle past the check delay.

mod common;

use common::code;

use common::pg::{pg_tool, TestPg, MD5_PASS, MD5_USER, SCRAM_PASS, SCRAM_USER};
use common::proxy::{self, start, TestProxy};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tokio_postgres::SimpleQueryMessage;

/// Runs one admin command with psql (`-A -t`: rows as `a|b|c` lines).
fn psql_admin(p: &TestProxy, user: &str, password: &str, db: &str, sql: &str) -> Output {
    psql_admin_port(p.port(), user, password, db, sql)
}

fn psql_admin_port(port: u16, user: &str, password: &str, db: &str, sql: &str) -> Output {
    Command::new(pg_tool("psql"))
        .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", user, "-d", db])
        .args(["-c", sql])
        .env("PGPASSWORD", password)
        .env("PGSSLMODE", "disable")
        .env_remove("PGOPTIONS")
        .output()
        .expect("run psql")
}

/// [`psql_admin`] from async code, off the runtime's thread (the proxy runs there too).
async fn psql_admin_async(p: &TestProxy, db: &'static str, sql: &'static str) -> Output {
    let port = p.port();
    tokio::task::spawn_blocking(move || psql_admin_port(port, SCRAM_USER, SCRAM_PASS, db, sql)).await.unwrap()
}

fn psql_rows(p: &TestProxy, sql: &str) -> Vec<Vec<String>> {
    let out = psql_admin(p, SCRAM_USER, SCRAM_PASS, "pgbouncer", sql);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    stdout.lines().filter(|l| !l.is_empty()).map(|l| l.split('|').map(str::to_owned).collect()).collect()
}

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_else(|| e.to_string())
}

/// An answer of the console: column names and rows.
#[derive(Debug)]
struct Answer {
    columns: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Answer {
    fn get(&self, row: usize, column: &str) -> &str {
        let i = self.columns.iter().position(|c| c == column).unwrap_or_else(|| panic!("no column {column}"));
        &self.rows[row][i]
    }

    fn num(&self, row: usize, column: &str) -> i64 {
        self.get(row, column).parse().unwrap_or_else(|_| panic!("{column} is not a number: {self:?}"))
    }
}

async fn show(c: &tokio_postgres::Client, sql: &str) -> Answer {
    let msgs = c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut a = Answer { columns: Vec::new(), rows: Vec::new() };
    for m in msgs {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                a.columns = cols.iter().map(|c| c.name().to_owned()).collect()
            }
            SimpleQueryMessage::Row(r) => {
                a.rows.push((0..r.len()).map(|i| r.get(i).unwrap_or("").to_owned()).collect())
            }
            _ => {}
        }
    }
    a
}

async fn console(p: &TestProxy) -> tokio_postgres::Client {
    p.connect_with("pgbouncer", "").await.expect("admin console login")
}

const POOLS: &[&str] = &[
    "database",
    "user",
    "cl_active",
    "cl_waiting",
    "cl_active_cancel_req",
    "cl_waiting_cancel_req",
    "sv_active",
    "sv_active_cancel",
    "sv_being_canceled",
    "sv_idle",
    "sv_used",
    "sv_tested",
    "sv_login",
    "maxwait",
    "maxwait_us",
    "pool_mode",
];
const STATS: &[&str] = &[
    "database",
    "total_xact_count",
    "total_query_count",
    "total_received",
    "total_sent",
    "total_xact_time",
    "total_query_time",
    "total_wait_time",
    "avg_xact_count",
    "avg_query_count",
    "avg_recv",
    "avg_sent",
    "avg_xact_time",
    "avg_query_time",
    "avg_wait_time",
];
const CLIENTS: &[&str] =
    &["type", "user", "database", "state", "addr", "port", "connect_time", "wait", "wait_us"];
const SERVERS: &[&str] = &["type", "user", "database", "state", "addr", "port", "connect_time", "remote_pid"];
const CONFIG: &[&str] = &["key", "value", "default", "changeable"];
const DATABASES: &[&str] = &[
    "name",
    "host",
    "port",
    "database",
    "force_user",
    "pool_size",
    "min_pool_size",
    "reserve_pool",
    "pool_mode",
    "max_connections",
    "current_connections",
    "paused",
    "disabled",
];
const QUERIES: &[&str] =
    &["database", "fingerprint", "query", "calls", "total_ms", "mean_ms", "p99_ms", "rows"];

fn starts_with_columns(a: &Answer, expected: &[&str], what: &str) {
    assert!(
        a.columns.len() >= expected.len() && a.columns[..expected.len()] == *expected,
        "{what}: {:?}",
        a.columns
    );
}

#[tokio::test]
async fn every_command_answers_with_pgbouncer_columns_and_no_password() {
    let pg = TestPg::shared();
    let db = pg.create_db("admincols");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_SIZE", "3")]).await;
    let app = p.connect(&db).await;
    app.simple_query("select 1").await.unwrap();
    app.simple_query("select 2").await.unwrap();
    let admin = console(&p).await;
    let mut seen = String::new();
    for (sql, columns) in [
        ("SHOW POOLS", POOLS),
        ("show stats;", STATS),
        ("SHOW CLIENTS", CLIENTS),
        ("SHOW SERVERS", SERVERS),
        ("SHOW CONFIG", CONFIG),
        ("SHOW DATABASES", DATABASES),
        ("SHOW QUERIES", QUERIES),
        ("SHOW VERSION", &["version"]),
    ] {
        let a = show(&admin, sql).await;
        starts_with_columns(&a, columns, sql);
        assert!(!a.rows.is_empty(), "{sql} has rows");
        seen.push_str(&format!("{a:?}"));
    }
    let pools = show(&admin, "SHOW POOLS").await;
    assert_eq!((pools.get(0, "database"), pools.get(0, "user")), (db.as_str(), SCRAM_USER));
    assert_eq!(pools.num(0, "cl_active"), 1);
    assert_eq!(pools.num(0, "sv_idle"), 1);
    assert_eq!(pools.get(0, "pool_mode"), "transaction");
    let stats = show(&admin, "SHOW STATS").await;
    assert!(stats.num(0, "total_query_count") >= 2, "{stats:?}");
    assert!(stats.num(0, "total_received") > 0 && stats.num(0, "total_sent") > 0, "{stats:?}");
    let clients = show(&admin, "SHOW CLIENTS").await;
    let app_row = clients.rows.iter().position(|r| r[2] == db).expect("the app client is listed");
    assert_eq!(clients.get(app_row, "state"), "idle");
    let addr = match proxy::Transport::from_env() {
        proxy::Transport::Unix => "unix",
        proxy::Transport::Tcp => "127.0.0.1",
    };
    assert_eq!(clients.get(app_row, "addr"), addr);
    assert!(clients.rows.iter().any(|r| r[2] == "pgbouncer"), "the console itself is listed");
    let servers = show(&admin, "SHOW SERVERS").await;
    assert_eq!(servers.get(0, "state"), "idle");
    assert!(servers.num(0, "remote_pid") > 0);
    let config = show(&admin, "SHOW CONFIG").await;
    let url = config.rows.iter().find(|r| r[0] == "DATABASE_URL").expect("the URL is listed");
    assert!(url[1].contains("<redacted>"), "{url:?}");

    // psql, with both names of the console; the help goes out as a NOTICE like PgBouncer's.
    for db_name in ["pgbouncer", "pgsidecar"] {
        let out = psql_admin_async(&p, db_name, "SHOW POOLS").await;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("{db}|{SCRAM_USER}|")));
        seen.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    let out = psql_admin_async(&p, "pgbouncer", "SHOW HELP").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Console usage") && stderr.contains("SHOW HELP|"), "{stderr}");
    for sql in ["SHOW CONFIG", "SHOW DATABASES", "SHOW SERVERS", "SHOW CLIENTS"] {
        let out = psql_admin_async(&p, "pgbouncer", sql).await;
        seen.push_str(&String::from_utf8_lossy(&out.stdout));
        seen.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    for secret in [SCRAM_PASS, "scram-pass%2F1"] {
        assert!(!seen.contains(secret), "a password in the console's output:\n{seen}");
    }
}

#[tokio::test]
async fn errors_unknown_commands_and_extended_protocol() {
    let pg = TestPg::shared();
    let db = pg.create_db("adminerr");
    let p = start(pg, &db, &[]).await;
    let admin = console(&p).await;
    let e = admin.simple_query("SHOW SOCKETS").await.unwrap_err();
    assert_eq!(code(&e), "42601");
    let e = admin.simple_query("select 1").await.unwrap_err();
    assert_eq!(code(&e), "42601");
    let db_error = e.as_db_error().unwrap();
    assert!(db_error.hint().unwrap_or("").contains("SHOW HELP"), "{db_error:?}");
    let e = admin.simple_query("PAUSE nosuchdb").await.unwrap_err();
    assert_eq!(code(&e), "3D000");
    // tokio-postgres' query() is the extended protocol: refused, and the session goes on.
    let e = admin.query("SHOW POOLS", &[]).await.unwrap_err();
    assert_eq!(code(&e), "0A000");
    assert!(message(&e).contains("only simple queries"), "{e:?}");
    assert_eq!(show(&admin, "show version").await.rows.len(), 1);
    // An empty query is answered like Postgres answers it.
    admin.simple_query("").await.unwrap();
}

#[tokio::test]
async fn who_may_log_in() {
    let pg = TestPg::shared();
    let db = pg.create_db("adminauth");
    let db2 = pg.create_db("adminauth2");
    let mut env = proxy::env_for(pg, SCRAM_USER, &db, "require", &[("PGSIDECAR_ADMIN_USERS", MD5_USER)]);
    env.insert("OTHER_URL".into(), pg.url(MD5_USER, &db2, "require"));
    env.insert("PGSIDECAR_URLS".into(), "DATABASE_URL OTHER_URL".into());
    let p = proxy::start_with_env(env).await;
    // Wrong password.
    let wrong =
        tokio_postgres::connect(&p.url_as(MD5_USER, "wrong", "pgbouncer"), tokio_postgres::NoTls).await;
    assert_eq!(code(&common::must_fail(wrong, "wrong password")), "28P01");
    // Right password, but not in PGSIDECAR_ADMIN_USERS.
    let e = common::must_fail(p.connect_with("pgbouncer", "").await, "not an admin user");
    assert_eq!(code(&e), "28000");
    assert!(message(&e).contains("not allowed to use the admin console"), "{e:?}");
    // A user no URL names.
    let stranger =
        tokio_postgres::connect(&p.url_as("nobody", "x", "pgsidecar"), tokio_postgres::NoTls).await;
    assert_eq!(code(&common::must_fail(stranger, "unknown user")), "28P01");
    // The second URL's user, with its own password, may.
    let (admin, conn) =
        tokio_postgres::connect(&p.url_as(MD5_USER, MD5_PASS, "pgsidecar"), tokio_postgres::NoTls)
            .await
            .expect("md5_user logs in");
    tokio::spawn(conn);
    assert_eq!(show(&admin, "SHOW POOLS").await.rows.len(), 2);
    // The app still reaches its database; the console used no server connection.
    assert_eq!(proxy::server_count(pg, &db2), 0);
    p.connect(&db).await.simple_query("select 1").await.unwrap();
}

#[test]
fn show_pools_counts_the_queue_under_load() {
    let pg = TestPg::shared();
    let db = pg.create_db("adminload");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p = rt.block_on(start(pg, &db, &[("PGSIDECAR_POOL_SIZE", "2")]));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let c = rt.block_on(p.connect(&db));
        // Each task keeps its connection until joined, so all 20 stay connected.
        tasks.push(rt.spawn(async move { c.simple_query("select pg_sleep(1)").await.map(|_| c) }));
    }
    let deadline = Instant::now() + Duration::from_secs(8);
    let row = loop {
        let rows = psql_rows(&p, "SHOW POOLS");
        let n = |i: usize| rows[0][i].parse::<i64>().unwrap();
        // cl_waiting, and sv_active once the second server has connected.
        if n(3) >= 15 && n(6) == 2 {
            break rows[0].clone();
        }
        assert!(Instant::now() < deadline, "never saw 15 waiting clients on 2 busy servers: {rows:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    // cl_active + cl_waiting = the 20 clients.
    let n = |i: usize| row[i].parse::<i64>().unwrap();
    assert_eq!(n(2) + n(3), 20, "{row:?}");
    assert_eq!(row[16], "2", "pool_size: {row:?}");
    let clients = psql_rows(&p, "SHOW CLIENTS");
    assert!(clients.iter().filter(|r| r[3] == "waiting").count() >= 10, "{clients:?}");
    // A server changes hands between two clients for a moment: look again if needed.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let servers = psql_rows(&p, "SHOW SERVERS");
        let active: Vec<_> = servers.iter().filter(|r| r[3] == "active").collect();
        if active.len() == 2 {
            assert!(active.iter().all(|r| r[7].parse::<i32>().unwrap() > 0), "{servers:?}");
            break;
        }
        assert!(Instant::now() < deadline, "SHOW SERVERS: {servers:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    for t in tasks {
        rt.block_on(t).unwrap().expect("every client got its turn");
    }
}

#[test]
fn show_queries_lists_pgbench_statements() {
    let pg = TestPg::shared();
    let db = pg.create_db("adminbench");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p = rt.block_on(start(pg, &db, &[("PGSIDECAR_POOL_SIZE", "2")]));
    p.pgbench(&db, &["-i", "-q"]);
    p.pgbench(&db, &["-S", "-t", "50", "-c", "2"]);
    let rows = psql_rows(&p, "SHOW QUERIES");
    let select = rows
        .iter()
        .find(|r| r[2].starts_with("SELECT abalance FROM pgbench_accounts WHERE aid = $1"))
        .unwrap_or_else(|| panic!("pgbench's select is listed: {rows:?}"));
    assert_eq!(select[0], db);
    assert_eq!(select[1].len(), 16, "{select:?}");
    assert!(select[3].parse::<u64>().unwrap() >= 100, "{select:?}");
    assert!(select[4].parse::<f64>().unwrap() > 0.0, "{select:?}");
    let stats = psql_rows(&p, "SHOW STATS");
    assert!(stats[0][1].parse::<u64>().unwrap() >= 100, "{stats:?}");
}

#[tokio::test]
async fn pause_waits_for_active_servers_and_holds_queries_until_resume() {
    let pg = TestPg::shared();
    let db = pg.create_db("adminpause");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_SIZE", "2")]).await;
    let app = p.connect(&db).await;
    app.simple_query("begin; select 1").await.unwrap();
    let admin = console(&p).await;
    let pause = tokio::spawn(async move { admin.simple_query("PAUSE").await.map(|_| admin) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pause.is_finished(), "PAUSE returned while a transaction held a server");
    app.simple_query("commit").await.unwrap();
    let admin =
        tokio::time::timeout(Duration::from_secs(5), pause).await.expect("PAUSE returns").unwrap().unwrap();
    assert_eq!(show(&admin, "SHOW DATABASES").await.get(0, "paused"), "1");

    let query = tokio::spawn(async move { app.simple_query("select 'after resume'").await.map(|_| app) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!query.is_finished(), "a query ran while the pool was paused");
    let pools = show(&admin, "SHOW POOLS").await;
    assert_eq!((pools.num(0, "cl_waiting"), pools.num(0, "sv_active")), (1, 0), "{pools:?}");
    admin.simple_query("RESUME").await.unwrap();
    let app = tokio::time::timeout(Duration::from_secs(5), query)
        .await
        .expect("runs after RESUME")
        .unwrap()
        .unwrap();

    // A PAUSE that waits can be cancelled; the pool stays paused until RESUME.
    app.simple_query("begin; select 1").await.unwrap();
    let token = admin.cancel_token();
    let pause = tokio::spawn(async move { admin.simple_query(&format!("PAUSE {db}")).await.map(|_| admin) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e =
        tokio::time::timeout(Duration::from_secs(5), pause).await.unwrap().unwrap().expect_err("cancelled");
    assert_eq!(code(&e), "57014");
    app.simple_query("commit").await.unwrap();
    let admin = console(&p).await;
    admin.simple_query("RESUME").await.unwrap();
    app.simple_query("select 1").await.unwrap();
}

/// Polls until Postgres shows `n` server connections to `db` (a closed server's backend exits
/// a moment after its Terminate), or fails the test after 5 s.
async fn until_servers(db: &str, n: i64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let db = db.to_owned();
        let count =
            tokio::task::spawn_blocking(move || proxy::server_count(TestPg::shared(), &db)).await.unwrap();
        if count == n {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {count} server connections, {n} expected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// PAUSE is PgBouncer's, for a database restart: it closes the idle servers at once, the busy
/// ones as their transactions end, answers once no server connection is left, and opens none
/// while paused (not even for PGSIDECAR_MIN_POOL_SIZE); RESUME opens new ones on demand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_closes_every_server_connection_and_resume_opens_new_ones() {
    let pg = TestPg::shared();
    let db = pg.create_db("adminpauseclose");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_SIZE", "3"), ("PGSIDECAR_MIN_POOL_SIZE", "2")]).await;
    let pool = p.proxy.upstreams()[0].pool.clone();
    let (a, b) = (p.connect(&db).await, p.connect(&db).await);
    a.simple_query("begin; select 1").await.unwrap();
    b.simple_query("select 1").await.unwrap();
    until_servers(&db, 2, "one server in a transaction, one idle").await;

    let admin = console(&p).await;
    let pause = tokio::spawn(async move { admin.simple_query("PAUSE").await.map(|_| admin) });
    until_servers(&db, 1, "PAUSE closes the idle server at once").await;
    assert!(!pause.is_finished(), "PAUSE returned while a transaction held a server");
    a.simple_query("commit").await.unwrap();
    let admin =
        tokio::time::timeout(Duration::from_secs(5), pause).await.expect("PAUSE returns").unwrap().unwrap();
    let stats = pool.stats();
    assert_eq!((stats.active, stats.idle, stats.connecting), (0, 0, 0), "{stats:?}");
    until_servers(&db, 0, "no server connection once PAUSE has answered").await;
    // The minimum pool size is not kept while paused (maintenance runs every second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(pool.stats().opened_total, stats.opened_total, "a server was opened while paused");
    assert_eq!(proxy::server_count(pg, &db), 0);

    let query = tokio::spawn(async move { b.simple_query("select 'after resume'").await.map(|_| b) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!query.is_finished(), "a query ran while the pool was paused");
    admin.simple_query("RESUME").await.unwrap();
    let b = tokio::time::timeout(Duration::from_secs(5), query)
        .await
        .expect("runs after RESUME")
        .unwrap()
        .unwrap();
    a.simple_query("select 1").await.unwrap();
    b.simple_query("select 1").await.unwrap();
    until_servers(&db, 2, "new servers after RESUME, up to the minimum").await;
}

/// RESUME from another console ends a PAUSE still waiting for a server to come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_ends_a_pause_that_still_waits() {
    let pg = TestPg::shared();
    let db = pg.create_db("adminpauseresume");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_SIZE", "1")]).await;
    let pool = p.proxy.upstreams()[0].pool.clone();
    let a = p.connect(&db).await;
    a.simple_query("begin; select 1").await.unwrap();
    let admin = console(&p).await;
    let pause = tokio::spawn(async move { admin.simple_query("PAUSE").await.map(|_| ()) });
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pool.is_paused() {
        assert!(Instant::now() < deadline, "PAUSE did not pause the pool");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    console(&p).await.simple_query("RESUME").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), pause)
        .await
        .expect("PAUSE answers once RESUME has run, with the transaction still open")
        .unwrap()
        .unwrap();
    a.simple_query("commit").await.unwrap();
}

/// A server that no client has used yet (opened for PGSIDECAR_MIN_POOL_SIZE) is checked like
/// any other once it has been idle longer than PGSIDECAR_SERVER_CHECK_DELAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unused_server_idle_past_the_check_delay_is_checked() {
    let pg = TestPg::shared();
    let db = pg.create_db("freshcheck");
    let p = start(
        pg,
        &db,
        &[
            ("PGSIDECAR_POOL_SIZE", "2"),
            ("PGSIDECAR_MIN_POOL_SIZE", "1"),
            ("PGSIDECAR_SERVER_CHECK_DELAY", "1s"),
        ],
    )
    .await;
    let pool = p.proxy.upstreams()[0].pool.clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.stats().idle == 0 {
        assert!(Instant::now() < deadline, "the minimum was not opened: {:?}", pool.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = p.connect(&db).await;
    c.simple_query("select 1").await.unwrap();
    c.simple_query("select 1").await.unwrap();
    let stats = pool.stats();
    assert_eq!(stats.opened_total, 1, "{stats:?}");
    assert_eq!(stats.checks_total, 1, "checked once, after its long idle only: {stats:?}");
}

#[tokio::test]
async fn reconnect_gives_new_server_connections() {
    let pg = TestPg::shared();
    let db = pg.create_db("adminreconnect");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_SIZE", "1")]).await;
    let app = p.connect(&db).await;
    let pid = |msgs: Vec<SimpleQueryMessage>| -> String {
        msgs.into_iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_owned()),
                _ => None,
            })
            .unwrap()
    };
    let first = pid(app.simple_query("select pg_backend_pid()").await.unwrap());
    let admin = console(&p).await;
    assert_eq!(show(&admin, "SHOW SERVERS").await.get(0, "remote_pid"), first);
    admin.simple_query("RECONNECT").await.unwrap();
    let second = pid(app.simple_query("select pg_backend_pid()").await.unwrap());
    assert_ne!(first, second);
    // A server in use is closed when its transaction ends, not before.
    app.simple_query("begin").await.unwrap();
    admin.simple_query(&format!("RECONNECT {db}")).await.unwrap();
    assert_eq!(pid(app.simple_query("select pg_backend_pid()").await.unwrap()), second);
    app.simple_query("commit").await.unwrap();
    let third = pid(app.simple_query("select pg_backend_pid()").await.unwrap());
    assert_ne!(third, second);
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy::server_count(pg, &db) > 1 {
        assert!(Instant::now() < deadline, "old servers were not closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn shutdown_drains_like_sigterm() {
    let pg = TestPg::shared();
    let db = pg.create_db("adminshutdown");
    let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgsidecar"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PGSIDECAR_") || k.starts_with("PGBOUNCER_") || k == "DATABASE_URL" {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .env("DATABASE_URL", pg.url(SCRAM_USER, &db, "require"))
        .env("PGSIDECAR_LISTEN", listen.to_string())
        .env("PGSIDECAR_METRICS_LISTEN", "")
        .env("PGSIDECAR_POOL_SIZE", "2")
        .env("PGSIDECAR_SHUTDOWN_TIMEOUT", "20s")
        .arg("serve")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let conn_str = format!(
        "host=127.0.0.1 port={} user={SCRAM_USER} password='{SCRAM_PASS}' dbname=pgsidecar sslmode=disable",
        listen.port()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let admin = loop {
        match rt.block_on(tokio_postgres::connect(&conn_str, tokio_postgres::NoTls)) {
            Ok((client, conn)) => {
                rt.spawn(conn);
                break client;
            }
            Err(e) => assert!(Instant::now() < deadline, "pgsidecar serve did not start: {e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let started = Instant::now();
    let msgs = rt.block_on(admin.simple_query("SHUTDOWN")).expect("SHUTDOWN is answered");
    assert!(matches!(msgs.last(), Some(SimpleQueryMessage::CommandComplete(_))));
    // The open console does not hold up the drain: no application client is connected.
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "pgsidecar did not stop after SHUTDOWN");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("admin_command") && stderr.contains("draining"), "{stderr}");
}
