//! PgBouncer's monitoring tools, unchanged, against pgsidecar's admin console (issue 24):
//! Debian's prometheus-pgbouncer-exporter (1.7) logs in to the `pgbouncer` database, reads
//! SHOW STATS, SHOW POOLS, SHOW DATABASES and SHOW LISTS, and its /metrics must show what SHOW
//! POOLS shows while the pool is saturated.

mod common;

use common::pg::{TestPg, SCRAM_PASS, SCRAM_USER};
use common::proxy::start;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_postgres::SimpleQueryMessage;

const EXPORTER: &str = "prometheus-pgbouncer-exporter";

struct Exporter(Child);

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET /metrics, or `None` while the exporter is not listening yet.
fn scrape(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nhost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let (head, text) = body.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200").then(|| text.to_owned())
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, db: Option<&str>) -> f64 {
    let s = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && db.is_none_or(|db| s.labels.get("database") == Some(db)))
        .unwrap_or_else(|| panic!("no {name} for {db:?} in {:#?}", scrape.samples));
    match s.value {
        prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v)
        | prometheus_parse::Value::Counter(v) => v,
        ref other => panic!("{name}: {other:?}"),
    }
}

/// A SHOW command's rows as column -> value maps.
async fn show(admin: &tokio_postgres::Client, sql: &str) -> Vec<std::collections::HashMap<String, String>> {
    let mut out = Vec::new();
    for m in admin.simple_query(sql).await.unwrap() {
        if let SimpleQueryMessage::Row(r) = m {
            out.push(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_owned(), r.get(i).unwrap_or("").to_owned()))
                    .collect(),
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debian_pgbouncer_exporter_reads_the_console() {
    assert!(
        Command::new(EXPORTER).arg("--version").output().is_ok_and(|o| o.status.success()),
        "{EXPORTER} is missing: bash .ci/run --setup-only installs it (apt package {EXPORTER})"
    );
    let pg = TestPg::shared();
    let db = pg.create_db("exporter");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_SIZE", "2"), ("PGSIDECAR_QUERY_WAIT_TIMEOUT", "60s")]).await;
    let connect = |db: String| {
        let url = p.url_as(SCRAM_USER, SCRAM_PASS, &db);
        async move {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            c
        }
    };
    let app = connect(db.clone()).await;
    for _ in 0..10 {
        app.simple_query("SELECT 1").await.unwrap();
    }
    // Saturate: two clients hold both servers, three wait behind them, for the whole test.
    let held = common::watch::saturate_pool_of_two(&p.url_as(SCRAM_USER, SCRAM_PASS, &db)).await;
    let admin = connect("pgbouncer".into()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let pools = loop {
        let pools = show(&admin, "SHOW POOLS").await;
        if pools[0]["cl_waiting"] == "3" && pools[0]["sv_active"] == "2" {
            break pools;
        }
        assert!(Instant::now() < deadline, "the pool did not saturate: {pools:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let port = free_port();
    let child = Command::new(EXPORTER)
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--pgbouncer-host", "127.0.0.1"])
        .args(["--pgbouncer-port", &p.port().to_string(), "--pgbouncer-user", SCRAM_USER])
        .env("PGPASSWORD", SCRAM_PASS)
        .env("PGSSLMODE", "disable")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut exporter = Exporter(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        if let Some(text) = tokio::task::spawn_blocking(move || scrape(port)).await.unwrap() {
            break text;
        }
        if let Some(status) = exporter.0.try_wait().unwrap() {
            let mut err = String::new();
            exporter.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("the exporter exited ({status}):\n{err}");
        }
        assert!(Instant::now() < deadline, "the exporter did not answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    std::fs::write(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("exporter-metrics.txt"), &text)
        .unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let db = Some(db.as_str());
    // SHOW POOLS as the exporter saw it, and as the console says.
    assert_eq!(value(&scrape, "pgbouncer_waiting_clients", db), 3.0, "{text}");
    assert_eq!(value(&scrape, "pgbouncer_waiting_clients", db).to_string(), pools[0]["cl_waiting"]);
    assert_eq!(value(&scrape, "pgbouncer_active_clients", db).to_string(), pools[0]["cl_active"]);
    // SHOW DATABASES, SHOW STATS, SHOW LISTS.
    assert_eq!(value(&scrape, "pgbouncer_pool_size", db), 2.0);
    assert_eq!(value(&scrape, "pgbouncer_reserve_pool", db), 0.0);
    let stats = show(&admin, "SHOW STATS").await;
    assert!(value(&scrape, "pgbouncer_requests_total", db) >= 10.0, "{text}");
    assert!(
        stats[0]["total_requests"].parse::<f64>().unwrap() >= value(&scrape, "pgbouncer_requests_total", db)
    );
    assert!(value(&scrape, "pgbouncer_received_bytes_total", db) > 0.0);
    assert_eq!(value(&scrape, "pgbouncer_databases", None), 1.0);
    assert_eq!(value(&scrape, "pgbouncer_pools", None), 1.0);
    assert_eq!(value(&scrape, "pgbouncer_used_servers", None), 2.0);
    // Every client connection, consoles too (as PgBouncer counts them): the five saturating
    // clients, the app's, this test's console and the exporter's.
    assert_eq!(value(&scrape, "pgbouncer_used_clients", None), 8.0);
    assert_eq!(value(&scrape, "pgbouncer_login_clients", None), 0.0);
    for h in held {
        h.abort();
    }
}
