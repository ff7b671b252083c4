//! Server faults with real processes: PostgreSQL restarted under load, pooled servers
//! terminated, and PostgreSQL down when clients arrive.

mod common;

use common::pg::{PgOptions, TestPg, SCRAM_USER};
use common::proxy::{self, start};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_under_load_errors_in_flight_then_recovers() {
    let pg = TestPg::start(PgOptions { max_connections: 50, tls: true });
    let db = pg.create_db("restart");
    let p = start(&pg, &db, &[("PGSIDECAR_POOL_SIZE", "4")]).await;
    for immediate in [false, true] {
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(p.connect(&db).await);
        }
        // In-flight transactions when the server goes away.
        let running: Vec<_> = clients
            .into_iter()
            .map(|c| tokio::spawn(async move { c.simple_query("select pg_sleep(5)").await.map(|_| ()) }))
            .collect();
        while proxy::server_count(&pg, &db) < 4 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let pg_ref = &pg;
        tokio::task::block_in_place(|| if immediate { pg_ref.stop_immediate() } else { pg_ref.stop_fast() });
        for r in running {
            r.await.unwrap().expect_err("an in-flight query fails when the server goes");
        }
        tokio::task::block_in_place(|| pg_ref.restart_same_port());
        let back = p.until_serving(&db, Duration::from_secs(5)).await;
        eprintln!("immediate={immediate}: serving again {back:?} after PostgreSQL accepted connections");
        assert!(back < Duration::from_secs(1), "new transactions took {back:?} after restart");
        // No servers leaked: the pool never holds more than its size.
        let stats = p.proxy.upstreams()[0].pool.stats();
        assert!(stats.active + stats.idle + stats.connecting <= 4, "{stats:?}");
    }
}

#[tokio::test]
async fn terminated_idle_servers_are_replaced_unnoticed() {
    let pg = TestPg::shared();
    let db = pg.create_db("terminate");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_SIZE", "2")]).await;
    let a = p.connect(&db).await;
    let b = p.connect(&db).await;
    let (ra, rb) =
        tokio::join!(a.simple_query("select pg_sleep(0.1)"), b.simple_query("select pg_sleep(0.1)"));
    ra.unwrap();
    rb.unwrap();
    assert_eq!(p.proxy.upstreams()[0].pool.stats().idle, 2);
    pg.sql(
        "postgres",
        &format!("select count(pg_terminate_backend(pid)) from pg_stat_activity where datname = '{db}'"),
    );
    // Once the backends are gone (pg_terminate_backend only signals them), the next clients do
    // not notice: stale servers are dropped at checkout.
    let gone = format!("select count(*) from pg_stat_activity where datname = '{db}'");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pg.sql("postgres", &gone).trim() != "0" {
        assert!(std::time::Instant::now() < deadline, "terminated backends still there");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..5 {
        assert_eq!(common::first_value(&a.simple_query("select 1").await.unwrap()), "1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_at_start_then_recovers_by_itself() {
    let pg = TestPg::start(PgOptions { max_connections: 20, tls: false });
    let db = pg.create_db("downstart");
    tokio::task::block_in_place(|| pg.stop_fast());
    let mut env = common::proxy::env_for(&pg, SCRAM_USER, &db, "disable", &[]);
    env.insert("PGSIDECAR_SERVER_CONNECT_TIMEOUT".into(), "2s".into());
    let p = common::proxy::start_with_env(env).await;
    let started = Instant::now();
    let err = common::must_fail(p.connect_with(&db, "").await, "database is down");
    assert_eq!(common::code(&err), "08001", "{err}");
    assert!(started.elapsed() < Duration::from_secs(2), "the error took {:?}", started.elapsed());
    tokio::task::block_in_place(|| pg.restart_same_port());
    p.until_serving(&db, Duration::from_secs(5)).await;
}

/// Sends a signal to a PostgreSQL backend; `Stopped` sends SIGCONT when dropped, so a failed
/// assertion does not leave a frozen backend behind.
struct Stopped(String);

impl Stopped {
    fn backend(pid: &str) -> Stopped {
        let ok = std::process::Command::new("kill").args(["-STOP", pid]).status().is_ok_and(|s| s.success());
        assert!(ok, "could not stop backend {pid}");
        Stopped(pid.to_owned())
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

/// PGSIDECAR_QUERY_WAIT_TIMEOUT bounds the whole checkout, the check of an idle server
/// included: a server that does not answer its check (a stopped backend here, a network black
/// hole in production) costs the client the wait limit, not the check's own bound (2 s) and
/// a new server after it.
#[tokio::test]
async fn wait_timeout_bounds_the_check_of_a_server_that_does_not_answer() {
    let pg = TestPg::shared();
    let db = pg.create_db("checkhang");
    let p = start(
        pg,
        &db,
        &[
            ("PGSIDECAR_POOL_SIZE", "1"),
            ("PGSIDECAR_SERVER_CHECK_DELAY", "0"),
            ("PGSIDECAR_QUERY_WAIT_TIMEOUT", "300ms"),
        ],
    )
    .await;
    let c = p.connect(&db).await;
    let pid = common::first_value(&c.simple_query("select pg_backend_pid()").await.unwrap());
    let stopped = Stopped::backend(&pid);
    let err = common::must_fail(c.simple_query("select 1").await, "the check cannot finish in time");
    drop(stopped);
    assert_eq!(common::code(&err), "53300", "{err}");
    // The client goes on, on a new server.
    assert_eq!(common::first_value(&c.simple_query("select 2").await.unwrap()), "2");
}
