//! Cross-dyno budget: several pgsidecar processes against one PostgreSQL with
//! max_connections=40 never exceed its limit, converge to a fair share, and follow peers that
//! leave and join.

mod common;

use common::pg::{pg_tool, PgOptions, TestPg, SCRAM_PASS, SCRAM_USER};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Sidecar {
    proc: Child,
    port: u16,
    log: std::path::PathBuf,
}

/// Killed when dropped, also when a test fails (it would outlive the test otherwise).
impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn sidecar(pg: &TestPg, db: &str, dir: &std::path::Path, n: usize) -> Sidecar {
    let port = free_port();
    let log = dir.join(format!("sidecar{n}.log"));
    let proc = Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .arg("serve")
        .env("DATABASE_URL", pg.url(SCRAM_USER, db, "disable"))
        .env("PGSIDECAR_LISTEN", format!("127.0.0.1:{port}"))
        .env("PGSIDECAR_METRICS_LISTEN", "")
        .env("PGSIDECAR_BUDGET_PERIOD", "1s")
        .env("PGSIDECAR_QUERY_WAIT_TIMEOUT", "30s")
        .env_remove("DYNO")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let s = Sidecar { proc, port, log };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&s.log).unwrap_or_default().contains("event=listening") {
        assert!(Instant::now() < deadline, "sidecar {n} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    s
}

fn load(port: u16, db: &str, secs: u64) -> Child {
    Command::new(pg_tool("pgbench"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            SCRAM_USER,
            "-n",
            "-S",
            "-c",
            "100",
            "-j",
            "1",
        ])
        .args(["-T", &secs.to_string(), db])
        .env("PGPASSWORD", SCRAM_PASS)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The pool size of the last `budget_changed` line, and the share.
fn last_budget(log: &std::path::Path) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().rfind(|l| l.contains("event=budget_changed"))?;
    let field = |k: &str| line.split(&format!(" {k}=")).nth(1)?.split(' ').next()?.parse().ok();
    Some((field("pool_size")?, field("share")?))
}

#[test]
fn sidecars_share_the_database_and_never_exceed_it() {
    let pg = TestPg::start(PgOptions { max_connections: 40, tls: false });
    let db = pg.create_db("budget");
    let dir = tempfile::tempdir().unwrap();
    pgbench_init(&pg, &db);
    // 40 - 3 superuser-reserved = 37 usable; reserve max(3, 10%) = 4.
    let ceiling = 37 - 4;
    let stop = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicI64::new(0));
    let watcher = {
        let (stop, max_seen) = (stop.clone(), max_seen.clone());
        let port = pg.port();
        std::thread::spawn(move || {
            let conn =
                format!("host=127.0.0.1 port={port} user=scram_user password='{SCRAM_PASS}' dbname=postgres");
            let mut c = postgres_sync(&conn);
            while !stop.load(Ordering::Relaxed) {
                let n = c("select count(*) - 1 from pg_stat_activity where backend_type = 'client backend'");
                max_seen.fetch_max(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let mut sidecars: Vec<Sidecar> = (0..4).map(|n| sidecar(&pg, &db, dir.path(), n)).collect();
    // The load starts once every sidecar's round has seen the four: the first one claimed the
    // whole budget while it was alone and gives it up at its next round, while the others'
    // coordination connections are already open.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sidecars
        .iter()
        .all(|s| std::fs::read_to_string(&s.log).unwrap_or_default().contains(" sidecars=4 "))
    {
        assert!(Instant::now() < deadline, "the sidecars did not see each other");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut loads: Vec<Child> = sidecars.iter().map(|s| load(s.port, &db, 20)).collect();
    std::thread::sleep(Duration::from_secs(4));
    // One dyno goes away, two arrive.
    drop(sidecars.remove(0));
    let _ = loads.remove(0).kill();
    let joined = Instant::now();
    for n in 4..6 {
        let s = sidecar(&pg, &db, dir.path(), n);
        loads.push(load(s.port, &db, 12));
        sidecars.push(s);
    }
    // Two periods after the change, each of the 5 sidecars holds its fair share (+-1):
    // (33 - 5 coordination connections) / 5 = 5.
    let deadline = joined + Duration::from_secs(15);
    let mut converged_after = None;
    while Instant::now() < deadline {
        let sizes: Vec<Option<(u32, u32)>> = sidecars.iter().map(|s| last_budget(&s.log)).collect();
        if sizes.iter().all(|s| s.is_some_and(|(size, share)| share == 5 && size.abs_diff(share) <= 1)) {
            converged_after = Some(joined.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut outputs = Vec::new();
    for l in loads {
        outputs.push(l.wait_with_output().unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    drop(sidecars);
    let Some(converged_after) = converged_after else {
        let logs: Vec<String> = (0..6)
            .map(|n| {
                let text =
                    std::fs::read_to_string(dir.path().join(format!("sidecar{n}.log"))).unwrap_or_default();
                text.lines()
                    .filter(|l| l.contains("budget") || l.contains("warn"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .collect();
        panic!("sidecars did not converge to a fair share:\n{}", logs.join("\n---\n"));
    };
    eprintln!(
        "converged {converged_after:?} after the change; max connections {}",
        max_seen.load(Ordering::Relaxed)
    );
    for o in &outputs {
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(!text.contains("too many"), "{text}");
    }
    let max = max_seen.load(Ordering::Relaxed);
    assert!(max <= ceiling, "saw {max} connections, limit minus reserve is {ceiling}");
}

fn pgbench_init(pg: &TestPg, db: &str) {
    let out = Command::new(pg_tool("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &pg.port().to_string(), "-U", SCRAM_USER, "-i", "-q", db])
        .env("PGPASSWORD", SCRAM_PASS)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A blocking one-value query helper on its own runtime (the watcher runs on a thread).
fn postgres_sync(conn: &str) -> impl FnMut(&str) -> i64 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (client, connection) = rt.block_on(tokio_postgres::connect(conn, tokio_postgres::NoTls)).unwrap();
    rt.spawn(connection);
    move |sql| {
        let row = rt.block_on(client.query_one(sql, &[])).unwrap();
        row.get::<_, i64>(0)
    }
}

/// The advisory lock key of the budget ("pgsc").
const LOCK_KEY: i64 = 0x7067_7363;

/// A direct connection to the test database (not through pgsidecar), e.g. a console, or a
/// session that pretends to be a sidecar through its application_name.
async fn direct(pg: &TestPg, db: &str, application_name: &str) -> tokio_postgres::Client {
    let conn = format!(
        "host=127.0.0.1 port={} user={SCRAM_USER} password='{SCRAM_PASS}' dbname={db} application_name='{application_name}'",
        pg.port()
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// The claims the sidecars publish (the `pgsidecar:<8 hex digits>:<claim>` names; a test's
/// own `pgsidecar:rogue...` sessions are left out).
async fn published_claims(c: &tokio_postgres::Client) -> Vec<u32> {
    let rows = c
        .query(
            "select application_name from pg_stat_activity where application_name ~ '^pgsidecar:[0-9a-f]{8}:'",
            &[],
        )
        .await
        .unwrap();
    rows.iter().filter_map(|r| r.get::<_, String>(0).rsplit(':').next()?.parse().ok()).collect()
}

async fn in_process(pg: &TestPg, db: &str, period: &str) -> common::proxy::TestProxy {
    let env = common::proxy::env_for(pg, SCRAM_USER, db, "disable", &[("PGSIDECAR_BUDGET_PERIOD", period)]);
    common::proxy::start_with_env(env).await
}

async fn until(what: &str, limit: Duration, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Usable 37 (40 - 3 superuser-reserved), reserve 4, two idle sidecars and 20 console
/// connections: each sidecar must see the 20 as others whatever the other one claims, so that
/// the claims, the two coordination connections and the consoles fit in 33 and a burst to both
/// claims gets no "too many clients".
#[test]
fn consoles_count_as_others_however_much_the_sidecars_claim() {
    let pg = TestPg::start(PgOptions { max_connections: 40, tls: false });
    let db = pg.create_db("budget_others");
    let dir = tempfile::tempdir().unwrap();
    pgbench_init(&pg, &db);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    // 19 idle consoles and the watcher: 20 connections that belong to no sidecar.
    let consoles: Vec<_> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..19 {
            v.push(direct(&pg, &db, "psql").await);
        }
        v
    });
    let watcher = rt.block_on(direct(&pg, &db, "watcher"));
    let sidecars: Vec<Sidecar> = (0..2).map(|n| sidecar(&pg, &db, dir.path(), n)).collect();
    // Several rounds (1 s each) with both sidecars idle.
    std::thread::sleep(Duration::from_secs(5));
    let claims = rt.block_on(published_claims(&watcher));
    assert_eq!(claims.len(), 2, "{claims:?}");
    let total = claims.iter().sum::<u32>() + 2 + 20;
    assert!(total <= 33, "claims {claims:?} + 2 coordination + 20 consoles = {total} > 37 - 4");
    // A burst to both claims fits.
    let stop = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicI64::new(0));
    let counting = {
        let (stop, max_seen) = (stop.clone(), max_seen.clone());
        rt.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let row = watcher
                    .query_one(
                        "select count(*) from pg_stat_activity where backend_type = 'client backend'",
                        &[],
                    )
                    .await
                    .unwrap();
                max_seen.fetch_max(row.get::<_, i64>(0), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let loads: Vec<Child> = sidecars.iter().map(|s| load(s.port, &db, 3)).collect();
    let outputs: Vec<_> = loads.into_iter().map(|l| l.wait_with_output().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    rt.block_on(counting).unwrap();
    drop(sidecars);
    drop(consoles);
    for o in &outputs {
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success() && !text.contains("too many"), "{text}");
    }
    let max = max_seen.load(Ordering::Relaxed);
    assert!(max <= 33, "saw {max} client connections during the burst, limit minus reserve is 33");
}

/// A session that holds the budget's lock and never lets go (a peer gone without a reset, as
/// the database sees it): start-up still ends once the first round has failed, with a small
/// pool rather than the whole database; rounds fail in bounded time while it lasts, keeping
/// the last claim; they succeed again once it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_lock_holder_stalls_no_round() {
    let pg = TestPg::start(PgOptions { max_connections: 40, tls: false });
    let db = pg.create_db("budget_lock");
    let holder = direct(&pg, &db, "stuck").await;
    holder.execute("select pg_advisory_lock($1)", &[&LOCK_KEY]).await.unwrap();
    let p = in_process(&pg, &db, "1s").await;
    p.proxy.size_pools().await;
    let up = p.proxy.upstreams()[0].clone();
    assert_eq!(up.pool.stats().max_size, 33, "the static share before the budget starts");
    let started = Instant::now();
    p.proxy.start_budget().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "start-up took {took:?}");
    assert_eq!(up.pool.stats().max_size, pgsidecar::budget::START_SIZE, "no claim yet: a small pool");
    assert!(up.budget.failed.load(Ordering::Relaxed) >= 1);
    // The holder goes: the next round publishes a claim and the pool grows to it.
    holder.execute("select pg_advisory_unlock($1)", &[&LOCK_KEY]).await.unwrap();
    until("a claim after the lock is free", Duration::from_secs(5), async || {
        published_claims(&holder).await.len() == 1 && up.pool.stats().max_size > 2
    })
    .await;
    let claim = up.pool.stats().max_size;
    // Held again: the rounds fail within their bound and the claim stays.
    holder.execute("select pg_advisory_lock($1)", &[&LOCK_KEY]).await.unwrap();
    let failed = up.budget.failed.load(Ordering::Relaxed);
    until("a failed round", Duration::from_secs(5), async || {
        up.budget.failed.load(Ordering::Relaxed) > failed
    })
    .await;
    assert_eq!(up.pool.stats().max_size, claim, "a failed round keeps the last claim");
    assert_eq!(published_claims(&holder).await, vec![claim as u32]);
}

/// Sessions named like sidecars with absurd claims: the rounds go on (no overflow), start-up
/// does not wait for a claim above zero, and the sidecar grows once they are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_claims_of_other_sessions_neither_stop_the_rounds_nor_delay_start_up() {
    let pg = TestPg::start(PgOptions { max_connections: 40, tls: false });
    let db = pg.create_db("budget_absurd");
    let rogues = [
        direct(&pg, &db, "pgsidecar:rogue1:4294967295").await,
        direct(&pg, &db, "pgsidecar:rogue2:4294967295").await,
    ];
    let p = in_process(&pg, &db, "10s").await;
    p.proxy.size_pools().await;
    let up = p.proxy.upstreams()[0].clone();
    let started = Instant::now();
    p.proxy.start_budget().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "a claim of zero is an answer: start-up took {took:?}");
    assert_eq!(up.pool.stats().max_size, 0, "no room while the others claim it all");
    assert_eq!(up.budget.failed.load(Ordering::Relaxed), 0);
    let watcher = direct(&pg, &db, "watcher").await;
    drop(rogues);
    // RELOAD asks for a round now (the period is 10 s): the sidecar takes what is free.
    let admin = p.connect("pgsidecar").await;
    admin.simple_query("RELOAD").await.unwrap();
    until("the pool grows once the absurd claims are gone", Duration::from_secs(5), async || {
        up.pool.stats().max_size > 20
    })
    .await;
    assert_eq!(published_claims(&watcher).await, vec![up.pool.stats().max_size as u32]);
}

/// RELOAD with the shared budget on keeps the budget's claim: the static share (the whole
/// database with PGSIDECAR_PROCESSES=1) would overrun the peers' claims until the next round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_the_budget_claim() {
    let pg = TestPg::start(PgOptions { max_connections: 40, tls: false });
    let db = pg.create_db("budget_reload");
    // A peer claiming 20: 33 - 2 coordination connections = 31; 31 - 20 = 11 are free.
    let peer = direct(&pg, &db, "pgsidecar:peer0001:20").await;
    let p = in_process(&pg, &db, "1s").await;
    p.proxy.size_pools().await;
    p.proxy.start_budget().await;
    let up = p.proxy.upstreams()[0].clone();
    // (A round may still see size_pools' probe connection as an other: 10.)
    until("the claim", Duration::from_secs(5), async || up.pool.stats().max_size == 11).await;
    let admin = p.connect("pgsidecar").await;
    for _ in 0..3 {
        admin.simple_query("RELOAD").await.unwrap();
        assert_eq!(up.pool.stats().max_size, 11, "RELOAD kept the claim");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(up.pool.stats().max_size, 11, "and the round it ran agrees");
    }
    assert_eq!(published_claims(&peer).await, vec![11]);
}
