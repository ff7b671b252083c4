//! The proxy's own timeouts against a real PostgreSQL, and servers that fail in ways that give
//! no signal: PGSIDECAR_QUERY_TIMEOUT, PGSIDECAR_IDLE_TRANSACTION_TIMEOUT,
//! PGSIDECAR_SERVER_CHECK_DELAY, PGSIDECAR_SERVER_CONNECT_TIMEOUT behind a black-holing TCP
//! relay (tests/common/relay.rs), and server login failures passed on to waiting clients.

mod common;

use common::pg::{quote_ident, quote_literal, TestPg, SCRAM_USER};
use common::proxy::{self, env_for, start, start_with_env, TestProxy};
use common::relay::Relay;
use pgsidecar::observe::stats::CloseReason;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::{Client, Error};

/// The message of a server-style error (ErrorResponse), with its hint.
fn message(e: &Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {} (hint: {})", d.severity(), d.message(), d.hint().unwrap_or("")),
        None => format!("not an ErrorResponse: {e}"),
    }
}

/// Connects as scram_user and keeps the connection task's result: an error the proxy sends
/// while no request is pending (a FATAL) ends up there.
async fn connect_watched(
    p: &TestProxy,
    db: &str,
    user: &str,
    password: &str,
) -> Result<(Client, tokio::task::JoinHandle<Result<(), Error>>), Error> {
    let conn_str = format!(
        "host=127.0.0.1 port={} user={user} password='{}' dbname={db} sslmode=disable",
        p.port(),
        password.replace('\'', "\\'")
    );
    let (client, connection) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls).await?;
    Ok((client, tokio::spawn(connection)))
}

/// Polls `f` until it holds, for at most `limit`.
async fn until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A proxy whose upstream URL points at `relay` instead of PostgreSQL itself.
async fn start_via(pg: &TestPg, relay: &Relay, db: &str, extra: &[(&str, &str)]) -> TestProxy {
    let mut env: BTreeMap<String, String> = env_for(pg, SCRAM_USER, db, "require", extra);
    let url = env["DATABASE_URL"].replace(&format!(":{}/", pg.port()), &format!(":{}/", relay.port()));
    env.insert("DATABASE_URL".into(), url);
    start_with_env(env).await
}

async fn relay_for(pg: &TestPg) -> Relay {
    Relay::start(SocketAddr::from(([127, 0, 0, 1], pg.port()))).await
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Samples the pool's size (active + idle + connecting) until dropped; keeps the largest.
struct SizeWatch {
    max: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl SizeWatch {
    fn start(p: &TestProxy) -> SizeWatch {
        let (max, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let pool = p.proxy.upstreams()[0].pool.clone();
        let (m, s) = (max.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let st = pool.stats();
                m.fetch_max(st.active + st.idle + st.connecting, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        SizeWatch { max, stop }
    }

    fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }
}

impl Drop for SizeWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Statements running `pg_sleep(<secs>)` on `db`.
fn running_sleeps(pg: &TestPg, db: &str, secs: u32) -> i64 {
    pg.sql(
        "postgres",
        &format!(
            "select count(*) from pg_stat_activity where datname = {} and state = 'active' and query like '%pg_sleep({secs})%'",
            quote_literal(db)
        ),
    )
    .parse()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_the_statement_and_keeps_the_server() {
    let pg = TestPg::shared();
    let db = pg.create_db("qtimeout");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_SIZE", "1"), ("PGSIDECAR_QUERY_TIMEOUT", "500ms")]).await;
    let c = p.connect(&db).await;
    let check = |e: &Error, took: Duration| {
        assert_eq!(common::code(e), "57014", "{}", message(e));
        let m = message(e);
        assert!(m.starts_with("ERROR") && m.contains("PGSIDECAR_QUERY_TIMEOUT"), "{m}");
        assert!(m.contains("statement_timeout"), "the hint says what to change: {m}");
        assert!(took >= Duration::from_millis(500) && took < Duration::from_secs(2), "{took:?}");
    };
    // Simple protocol, extended protocol, and inside a transaction.
    let started = Instant::now();
    let e = c.simple_query("select pg_sleep(30)").await.expect_err("times out");
    check(&e, started.elapsed());
    eprintln!("simple query: 57014 after {:?}", started.elapsed());
    let started = Instant::now();
    let e = c.query("select pg_sleep(30)", &[]).await.expect_err("times out");
    check(&e, started.elapsed());
    c.batch_execute("begin").await.unwrap();
    let started = Instant::now();
    let e = c.simple_query("select pg_sleep(30)").await.expect_err("times out");
    check(&e, started.elapsed());
    let e = c.simple_query("select 1").await.expect_err("the transaction is aborted");
    assert_eq!(common::code(&e), "25P02", "{e}");
    c.batch_execute("rollback").await.unwrap();
    // The connection is usable and statements under the limit are untouched.
    c.simple_query("select pg_sleep(0.2)").await.unwrap();
    assert_eq!(common::first_value(&c.simple_query("select 1").await.unwrap()), "1");
    // Postgres answered the cancels, so its server was kept; nothing still runs there.
    let stats = p.proxy.upstreams()[0].pool.stats();
    assert_eq!((stats.opened_total, stats.closed_total), (1, 0), "{stats:?}");
    assert_eq!(stats.checks_total, 0, "servers used within the check delay are not checked");
    assert_eq!(blocking(|| running_sleeps(pg, &db, 30)), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transaction_ends_the_client_and_rolls_its_server_back() {
    let pg = TestPg::shared();
    for mode in ["transaction", "session"] {
        let db = pg.create_db("idletx");
        let p = start(
            pg,
            &db,
            &[
                ("PGSIDECAR_POOL_SIZE", "1"),
                ("PGSIDECAR_POOL_MODE", mode),
                ("PGSIDECAR_IDLE_TRANSACTION_TIMEOUT", "300ms"),
                // The warning fires first (issue 24); the timeout still counts from the same
                // start, not from the warning.
                ("PGSIDECAR_IDLE_TRANSACTION_WARN", "100ms"),
            ],
        )
        .await;
        let (c, conn) = connect_watched(&p, &db, SCRAM_USER, common::pg::SCRAM_PASS).await.unwrap();
        c.batch_execute("create table t (x int)").await.unwrap();
        // Idle outside a transaction for longer than the limit: nothing happens.
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.batch_execute("begin; insert into t values (1)").await.unwrap();
        let idle_from = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("the connection ends within 5 s")
            .unwrap();
        let took = idle_from.elapsed();
        let e = ended.expect_err("the connection ends with an error");
        assert_eq!(common::code(&e), "25P03", "{}", message(&e));
        let m = message(&e);
        assert!(m.starts_with("FATAL") && m.contains("PGSIDECAR_IDLE_TRANSACTION_TIMEOUT"), "{m}");
        assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(1500), "{took:?}");
        eprintln!("{mode}: 25P03 after {took:?} idle in a transaction");
        assert!(c.simple_query("select 1").await.is_err(), "the client connection is closed");
        // The server was rolled back and given back, not closed: the next client gets it.
        let d = p.connect(&db).await;
        assert_eq!(common::first_value(&d.simple_query("select count(*) from t").await.unwrap()), "0");
        let stats = p.proxy.upstreams()[0].pool.stats();
        assert_eq!((stats.opened_total, stats.closed_total), (1, 0), "{mode}: {stats:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_servers_are_checked_and_dead_ones_replaced_unnoticed() {
    let pg = TestPg::shared();
    let db = pg.create_db("check");
    let relay = relay_for(pg).await;
    let p = start_via(
        pg,
        &relay,
        &db,
        &[
            ("PGSIDECAR_POOL_SIZE", "1"),
            ("PGSIDECAR_SERVER_CHECK_DELAY", "0"),
            ("PGSIDECAR_SERVER_CONNECT_TIMEOUT", "1s"),
        ],
    )
    .await;
    let pool = p.proxy.upstreams()[0].pool.clone();
    let c = p.connect(&db).await;
    c.simple_query("select 1").await.unwrap();
    c.simple_query("select 1").await.unwrap();
    let stats = pool.stats();
    assert_eq!(stats.checks_total, 2, "with delay 0 every reuse is checked: {stats:?}");
    assert_eq!(stats.opened_total, 1, "{stats:?}");
    // The idle server goes silent (no FIN, no RST); new connections still work.
    relay.hole_existing();
    let started = Instant::now();
    assert_eq!(common::first_value(&c.simple_query("select 2").await.unwrap()), "2");
    let took = started.elapsed();
    eprintln!("dead idle server detected and replaced in {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    let stats = pool.stats();
    assert_eq!(stats.closed_by[CloseReason::CheckFailed as usize], 1, "{stats:?}");
    assert_eq!(stats.opened_total, 2, "{stats:?}");
    assert!(stats.active + stats.idle + stats.connecting <= 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_server_connect_times_out_with_08001_for_every_waiter() {
    let pg = TestPg::shared();
    let db = pg.create_db("holeconnect");
    let relay = relay_for(pg).await;
    relay.hole_all();
    let p = start_via(
        pg,
        &relay,
        &db,
        &[
            ("PGSIDECAR_POOL_SIZE", "4"),
            ("PGSIDECAR_SERVER_CONNECT_TIMEOUT", "1s"),
            ("PGSIDECAR_SERVER_CONNECT_PARALLELISM", "2"),
        ],
    )
    .await;
    let size = SizeWatch::start(&p);
    let started = Instant::now();
    let tries: Vec<_> = (0..6)
        .map(|_| {
            let url = p.url(&db);
            tokio::spawn(async move {
                let r = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.map(|_| ());
                (r, Instant::now())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for t in tries {
        let (r, at) = t.await.unwrap();
        let e = common::must_fail(r, "the server is black-holed");
        assert_eq!(common::code(&e), "08001", "{}", message(&e));
        let m = message(&e);
        assert!(m.contains("PGSIDECAR_SERVER_CONNECT_TIMEOUT"), "{m}");
        slowest = slowest.max(at - started);
    }
    eprintln!("6 waiting clients got 08001 within {slowest:?} (connect timeout 1s, parallelism 2)");
    assert!(slowest < Duration::from_millis(2500), "{slowest:?}");
    assert!(size.max() <= 4, "{}", size.max());
    relay.heal();
    p.until_serving(&db, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_query_times_out_and_frees_its_slot() {
    let pg = TestPg::shared();
    let db = pg.create_db("holequery");
    let relay = relay_for(pg).await;
    let p = start_via(
        pg,
        &relay,
        &db,
        &[
            ("PGSIDECAR_POOL_SIZE", "2"),
            ("PGSIDECAR_QUERY_TIMEOUT", "1s"),
            ("PGSIDECAR_SERVER_CONNECT_TIMEOUT", "1s"),
        ],
    )
    .await;
    let size = SizeWatch::start(&p);
    let a = p.connect(&db).await;
    let b = p.connect(&db).await;
    let (ra, rb) =
        tokio::join!(a.simple_query("select pg_sleep(0.1)"), b.simple_query("select pg_sleep(0.1)"));
    ra.unwrap();
    rb.unwrap();
    let sent = Instant::now();
    // Longer than the query timeout and the cancel's grace together; short enough that the
    // silenced backend ends soon after (it notices the closed socket when it answers).
    let running = tokio::spawn(async move { a.simple_query("select pg_sleep(5)").await.map(|_| ()) });
    let (pg_ref, db_ref) = (pg, db.clone());
    until(Duration::from_secs(5), "the query runs", || blocking(|| running_sleeps(pg_ref, &db_ref, 5)) == 1)
        .await;
    // The network goes silent with the query in flight; the cancel cannot get through either.
    relay.hole_all();
    let holed = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the client gets its error")
        .unwrap()
        .expect_err("the query cannot finish");
    let after_hole = holed.elapsed();
    let after_send = sent.elapsed();
    assert_eq!(common::code(&e), "08006", "{}", message(&e));
    let m = message(&e);
    assert!(m.starts_with("FATAL") && m.contains("PGSIDECAR_QUERY_TIMEOUT"), "{m}");
    eprintln!(
        "black-holed query: 08006 {after_hole:?} after the hole, {after_send:?} after it was sent (query timeout 1s + 2s for the cancel)"
    );
    assert!(after_send < Duration::from_millis(4500), "{after_send:?}");
    // The slot was freed: one server left (idle, itself silent now).
    let stats = p.proxy.upstreams()[0].pool.stats();
    assert_eq!(stats.active, 0, "{stats:?}");
    assert!(stats.active + stats.idle + stats.connecting <= 1, "{stats:?}");
    relay.heal();
    p.until_serving(&db, Duration::from_secs(5)).await;
    // The other client did not notice: its next transaction gets a working server.
    assert_eq!(common::first_value(&b.simple_query("select 3").await.unwrap()), "3");
    let (r1, r2) = tokio::join!(b.simple_query("select pg_sleep(0.2)"), async {
        p.connect(&db).await.simple_query("select pg_sleep(0.2)").await
    });
    r1.unwrap();
    r2.unwrap();
    assert!(size.max() <= 2, "the pool never exceeded its size: {}", size.max());
    // Postgres ends up with no more than the pool's servers once the silenced sessions go.
    let (pg_ref, db_ref) = (pg, db.clone());
    until(Duration::from_secs(15), "at most 2 servers on PostgreSQL", || {
        blocking(|| proxy::server_count(pg_ref, &db_ref)) <= 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_login_failures_reach_every_waiter_then_recover() {
    let pg = TestPg::shared();
    let db = pg.create_db("loginfail");
    let role = format!("lf_{}", std::process::id());
    let (ident, db_ident) = (quote_ident(&role), quote_ident(&db));
    blocking(|| {
        pg.sql(
            "postgres",
            &format!(
                "create role {ident} login password 'pw-1';\n grant all on database {db_ident} to {ident};"
            ),
        )
    });
    let url = format!("postgres://{role}:pw-1@127.0.0.1:{}/{db}?sslmode=require", pg.port());
    let mut env = env_for(pg, SCRAM_USER, &db, "require", &[("PGSIDECAR_POOL_SIZE", "4")]);
    env.insert("DATABASE_URL".into(), url);
    let p = start_with_env(env).await;
    let causes = [
        (
            format!("alter database {db_ident} allow_connections false"),
            format!("alter database {db_ident} allow_connections true"),
            "55000",
        ),
        (
            format!("alter role {ident} password 'pw-2'"),
            format!("alter role {ident} password 'pw-1'"),
            "28P01",
        ),
        (format!("alter role {ident} nologin"), format!("alter role {ident} login"), "28000"),
        (
            format!("alter role {ident} connection limit 0"),
            format!("alter role {ident} connection limit -1"),
            "53300",
        ),
    ];
    for (cause, undo, code) in causes {
        // Clients logged in while the database was fine; they hold no server between
        // transactions.
        let mut clients = Vec::new();
        for _ in 0..6 {
            clients.push(connect_watched(&p, &db, &role, "pw-1").await.unwrap());
        }
        clients[0].0.simple_query("select 1").await.unwrap();
        blocking(|| {
            pg.sql("postgres", &cause);
            pg.sql(
                "postgres",
                &format!(
                    "select count(pg_terminate_backend(pid)) from pg_stat_activity where datname = {}",
                    quote_literal(&db)
                ),
            );
        });
        let (pg_ref, db_ref) = (pg, db.clone());
        until(Duration::from_secs(5), "the old servers are gone", || {
            blocking(|| proxy::server_count(pg_ref, &db_ref)) == 0
        })
        .await;
        let started = Instant::now();
        let tries: Vec<_> = clients
            .into_iter()
            .map(|(c, _conn)| tokio::spawn(async move { c.simple_query("select 1").await.map(|_| ()) }))
            .collect();
        let mut results = Vec::new();
        for t in tries {
            results.push(t.await.unwrap());
        }
        let took = started.elapsed();
        for r in results {
            let e = common::must_fail(r, "the server refuses logins");
            assert_eq!(common::code(&e), code, "{cause}: {}", message(&e));
            assert!(!message(&e).contains("pgsidecar"), "the server's own message: {}", message(&e));
        }
        eprintln!("{cause}: 6 waiting clients got {code} from the server in {took:?}");
        assert!(took < Duration::from_secs(2), "{cause}: {took:?}");
        blocking(|| pg.sql("postgres", &undo));
        let back = until_ok_as(&p, &db, &role, Duration::from_secs(2)).await;
        eprintln!("{cause}: serving again {back:?} after the cause was removed");
    }
    blocking(|| {
        pg.sql(
            "postgres",
            &format!(
                "select count(pg_terminate_backend(pid)) from pg_stat_activity where usename = {}",
                quote_literal(&role)
            ),
        )
    });
    drop(p);
}

async fn until_ok_as(p: &TestProxy, db: &str, role: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok((c, _)) = connect_watched(p, db, role, "pw-1").await {
            if c.simple_query("select 1").await.is_ok() {
                return started.elapsed();
            }
        }
        assert!(started.elapsed() < limit, "not serving again within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
