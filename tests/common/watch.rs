//! Watching PostgreSQL and the proxy from the side: a superuser connection that bypasses the
//! proxy, a sampler of the server connections a database has, and polling with a deadline.

use super::pg::{TestPg, SUPERUSER};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A tokio-postgres connection straight to PostgreSQL (unix socket, trust) as the superuser,
/// bypassing the proxy.
pub async fn superuser(pg: &TestPg, db: &str) -> tokio_postgres::Client {
    let conn = format!(
        "host={} port={} user={SUPERUSER} dbname={db} application_name=pgsidecar_test_watch",
        pg.socket_dir().display(),
        pg.port()
    );
    let (client, connection) =
        tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.expect("superuser connection");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// One text value from a query run over a direct connection.
pub async fn value(c: &tokio_postgres::Client, sql: &str) -> String {
    super::first_value(&c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")))
}

/// Client backends connected to `db` (the proxy's servers when only the proxy connects there).
pub async fn backends(c: &tokio_postgres::Client, db: &str) -> i64 {
    value(
        c,
        &format!(
            "select count(*) from pg_stat_activity where datname = '{db}' and backend_type = 'client backend' \
             and pid <> pg_backend_pid()"
        ),
    )
    .await
    .parse()
    .unwrap()
}

/// Backends of `db` that are inside a transaction or running something (not `idle`).
pub async fn busy_backends(c: &tokio_postgres::Client, db: &str) -> i64 {
    value(
        c,
        &format!(
            "select count(*) from pg_stat_activity where datname = '{db}' and backend_type = 'client backend' \
             and pid <> pg_backend_pid() and (state <> 'idle' or backend_xid is not null or xact_start is not null)"
        ),
    )
    .await
    .parse()
    .unwrap()
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after `limit`.
pub async fn until<F, Fut>(limit: Duration, what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if cond().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Samples the number of backends connected to a database until stopped; keeps the maximum.
pub struct ServerSampler {
    max: Arc<AtomicI64>,
    samples: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerSampler {
    pub async fn start(pg: &TestPg, db: &str) -> ServerSampler {
        let c = superuser(pg, "postgres").await;
        let (max, samples, stop) =
            (Arc::new(AtomicI64::new(0)), Arc::new(AtomicI64::new(0)), Arc::new(AtomicBool::new(false)));
        let (m, s, st, db) = (max.clone(), samples.clone(), stop.clone(), db.to_owned());
        let task = tokio::spawn(async move {
            while !st.load(Ordering::Relaxed) {
                let n = backends(&c, &db).await;
                m.fetch_max(n, Ordering::Relaxed);
                s.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        ServerSampler { max, samples, stop, task }
    }

    /// Stops sampling; returns (maximum seen, number of samples).
    pub async fn finish(self) -> (i64, i64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("sampler task");
        (self.max.load(Ordering::Relaxed), self.samples.load(Ordering::Relaxed))
    }
}

/// Saturates a pool of two servers for the rest of the test: five clients of `conn` (a
/// tokio-postgres connection string or URL) each run `pg_sleep(30)`, so two hold both servers
/// and three wait behind them. Returns the tasks that hold them.
#[allow(dead_code)]
pub async fn saturate_pool_of_two(conn: &str) -> Vec<tokio::task::JoinHandle<()>> {
    let mut held = Vec::new();
    for _ in 0..5 {
        let (c, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        held.push(tokio::spawn(async move {
            let _ = c.simple_query("SELECT pg_sleep(30)").await;
        }));
    }
    held
}
