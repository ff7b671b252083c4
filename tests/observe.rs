//! Observability through real processes and a real Prometheus text-format parser: the
//! /metrics endpoint under load, the slow-query log (no literal or bind value in it), l2met
//! lines parsed back into numbers.

mod common;

use common::pg::{TestPg, SCRAM_PASS, SCRAM_USER};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

struct Sidecar {
    child: Child,
    listen: String,
    metrics: String,
    lines: mpsc::Receiver<String>,
    seen: std::cell::RefCell<Vec<String>>,
}

impl Sidecar {
    fn start(db: &str, extra: &[(&str, &str)]) -> Sidecar {
        let pg = TestPg::shared();
        let (listen, metrics) = (free_addr(), free_addr());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgsidecar"));
        cmd.arg("serve")
            .env_remove("DYNO")
            .env("DATABASE_URL", pg.url(SCRAM_USER, db, "require"))
            .env("PGSIDECAR_LISTEN", &listen)
            .env("PGSIDECAR_METRICS_LISTEN", &metrics)
            .stderr(Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let s = Sidecar { child, listen, metrics, lines, seen: Default::default() };
        s.wait_for_line(
            |l| l.contains("event=listening") || l.contains("\"event\":\"listening\""),
            Duration::from_secs(20),
        );
        s
    }

    fn wait_for_line(&self, f: impl Fn(&str) -> bool, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.borrow_mut().push(l.clone());
                    if f(&l) {
                        return l;
                    }
                }
                Err(_) => panic!("no matching log line within {limit:?}: {:#?}", self.seen.borrow()),
            }
        }
    }

    fn conn_str(&self, db: &str) -> String {
        let (host, port) = self.listen.split_once(':').unwrap();
        format!("host={host} port={port} user={SCRAM_USER} password='{SCRAM_PASS}' dbname={db}")
    }

    fn stop(mut self) -> Vec<String> {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        let mut all = self.seen.take();
        all.extend(self.lines.try_iter());
        all
    }
}

fn scrape(addr: &str) -> prometheus_parse::Scrape {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let text = body.split_once("\r\n\r\n").unwrap().1;
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format")
}

fn gauge(scrape: &prometheus_parse::Scrape, name: &str, db: &str) -> Option<f64> {
    scrape.samples.iter().find(|s| s.metric == name && s.labels.get("database") == Some(db)).and_then(|s| {
        match s.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_waiting_clients_and_the_wait_histogram() {
    let pg = TestPg::shared();
    let db = pg.create_db("metrics");
    let sc = Sidecar::start(&db, &[("PGSIDECAR_POOL_SIZE", "2"), ("PGSIDECAR_QUERY_WAIT_TIMEOUT", "30s")]);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (c, conn) = tokio_postgres::connect(&sc.conn_str(&db), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        tasks.push(tokio::spawn(async move { c.simple_query("select pg_sleep(1)").await.map(|_| ()) }));
    }
    // The gauges are refreshed every second: wait until they show the queue.
    let metrics = sc.metrics.clone();
    let db2 = db.clone();
    let waiting = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(8);
        let mut best = 0.0f64;
        while Instant::now() < deadline && best < 15.0 {
            best = best.max(gauge(&scrape(&metrics), "pgsidecar_clients_waiting", &db2).unwrap_or(0.0));
            std::thread::sleep(Duration::from_millis(100));
        }
        best
    })
    .await
    .unwrap();
    assert!(waiting >= 15.0, "pgsidecar_clients_waiting peaked at {waiting}");
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let scraped = tokio::task::spawn_blocking({
        let m = sc.metrics.clone();
        let db = db.clone();
        move || {
            // The sampler copies counters every second: poll until it has seen the load.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let s = scrape(&m);
                if gauge(&s, "pgsidecar_queries_total", &db).unwrap_or(0.0) >= 20.0
                    || Instant::now() > deadline
                {
                    return s;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    })
    .await
    .unwrap();
    // The latency histograms are the proxy's own, rendered after the exporter's text: they
    // must parse as histograms and count what ran.
    let histogram_count = |name: &str| {
        scraped
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("database") == Some(db.as_str()))
            .map(|s| match &s.value {
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                other => panic!("{name}: histogram expected, got {other:?}"),
            })
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    for name in [
        "pgsidecar_checkout_wait_seconds",
        "pgsidecar_query_duration_seconds",
        "pgsidecar_transaction_duration_seconds",
    ] {
        let count = histogram_count(name);
        assert!(count >= 20.0, "{name}: {count}");
    }
    assert_eq!(gauge(&scraped, "pgsidecar_pool_max_size", &db), Some(2.0));
    assert!(gauge(&scraped, "pgsidecar_queries_total", &db).unwrap() >= 20.0);
    assert!(scraped.samples.iter().any(|s| s.metric == "pgsidecar_process_resident_memory_bytes"));
    sc.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_query_line_has_no_literals_or_bind_values() {
    let pg = TestPg::shared();
    let db = pg.create_db("slowlog");
    let sc = Sidecar::start(&db, &[("PGSIDECAR_SLOW_QUERY_MS", "100"), ("PGSIDECAR_STATS_PERIOD", "1")]);
    let (c, conn) = tokio_postgres::connect(&sc.conn_str(&db), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    c.simple_query("select pg_sleep(0.3), 'secret-literal'").await.unwrap();
    let row = c.query_one("select pg_sleep(0.2)::text, $1::text", &[&"bind-secret"]).await.unwrap();
    assert_eq!(row.get::<_, String>(1), "bind-secret");
    for i in 0..30 {
        c.simple_query(&format!("select {i}")).await.unwrap();
    }
    // One l2met line with the queries counted.
    let l2met = sc.wait_for_line(
        |l| l.contains("event=pool_stats") && !l.contains("count#pgsidecar.queries=0"),
        Duration::from_secs(5),
    );
    let lines = sc.stop();
    let slow: Vec<&String> = lines.iter().filter(|l| l.contains("event=slow_query")).collect();
    assert_eq!(slow.len(), 2, "{slow:#?}");
    let first = slow.iter().find(|l| l.contains("pg_sleep($1), $2")).expect("normalized text");
    let ms: f64 = first.split(" duration_ms=").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(ms >= 300.0, "{first}");
    for l in &lines {
        assert!(!l.contains("secret-literal") && !l.contains("bind-secret"), "leaked: {l}");
    }
    // l2met keys parse back into numbers.
    let mut values = std::collections::HashMap::new();
    for kv in l2met.split(' ') {
        if let Some((k, v)) = kv.split_once('=') {
            if k.contains('#') {
                let num: f64 = v.trim_end_matches("ms").parse().unwrap_or_else(|_| panic!("{kv}"));
                values.insert(k.to_owned(), num);
            }
        }
    }
    assert!(values["count#pgsidecar.queries"] >= 30.0, "{l2met}");
    assert!(values.contains_key("sample#pgsidecar.clients.waiting"), "{l2met}");
    assert!(values.contains_key("measure#pgsidecar.checkout.wait.p99"), "{l2met}");
}

/// User + system CPU seconds of a process, from /proc (100 ticks a second on Linux).
fn cpu_seconds_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    (f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()) as f64 / 100.0
}

/// Polls /metrics (off the runtime's threads) until `f` holds for a scrape, or 8 s pass.
async fn scrape_until(
    addr: &str,
    f: impl Fn(&prometheus_parse::Scrape) -> bool + Send + 'static,
) -> prometheus_parse::Scrape {
    let addr = addr.to_owned();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            let s = scrape(&addr);
            if f(&s) || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap()
}

/// pgsidecar_cancels_total counts both kinds of cancel request that take effect: one
/// forwarded to the server running the query (the usual kind) and one that takes a waiting
/// client out of the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_of_running_and_waiting_queries_are_counted() {
    let pg = TestPg::shared();
    let db = pg.create_db("cancels");
    let sc = Sidecar::start(&db, &[("PGSIDECAR_POOL_SIZE", "1")]);
    let connect = || async {
        let (c, conn) = tokio_postgres::connect(&sc.conn_str(&db), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        c
    };
    let (running, waiting) = (connect().await, connect().await);
    let (cancel_running, cancel_waiting) = (running.cancel_token(), waiting.cancel_token());
    let sleeper = tokio::spawn(async move { running.simple_query("select pg_sleep(20)").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queued = tokio::spawn(async move { waiting.simple_query("select 1").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel_waiting.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), queued).await.unwrap().unwrap().unwrap_err();
    assert_eq!(common::code(&e), "57014", "the waiting client left the queue: {e}");
    cancel_running.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), sleeper).await.unwrap().unwrap().unwrap_err();
    assert_eq!(common::code(&e), "57014", "the running query was cancelled: {e}");

    let db2 = db.clone();
    let scraped =
        scrape_until(&sc.metrics, move |s| gauge(s, "pgsidecar_cancels_total", &db2).unwrap_or(0.0) >= 2.0)
            .await;
    assert_eq!(gauge(&scraped, "pgsidecar_cancels_total", &db), Some(2.0));
    sc.stop();
}

/// The process' figures are read at scrape time: CPU seconds as /proc has them between two
/// readings around a scrape, not whole seconds (the sidecar has used well under a second),
/// and resident memory as the kernel counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_cpu_seconds_are_fractional_and_memory_is_the_kernels_count() {
    let pg = TestPg::shared();
    let db = pg.create_db("process");
    let sc = Sidecar::start(&db, &[]);
    let (c, conn) = tokio_postgres::connect(&sc.conn_str(&db), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let pid = sc.child.id();
    // Queries until the kernel has counted a first tick of CPU for the sidecar (well under a
    // second: a whole-seconds counter would still read 0).
    let mut i = 0u64;
    while cpu_seconds_of(pid) == 0.0 {
        assert!(i < 100_000, "no CPU tick counted after {i} queries");
        c.simple_query(&format!("select {i}")).await.unwrap();
        i += 1;
    }
    let before = cpu_seconds_of(pid);
    let scraped = scrape(&sc.metrics);
    let after = cpu_seconds_of(pid);
    let sample = |name: &str| {
        scraped.samples.iter().find(|s| s.metric == name).map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name}: {:?}", s.value),
        })
    };
    let cpu = sample("pgsidecar_process_cpu_seconds_total").expect("cpu seconds");
    assert!(before > 0.0 && before <= cpu && cpu <= after, "{before} <= {cpu} <= {after}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let rss = sample("pgsidecar_process_resident_memory_bytes").expect("resident memory");
    assert!((rss / (rss_kb * 1024.0) - 1.0).abs() < 0.2, "{rss} bytes against VmRSS {rss_kb} kB");
    assert!(sample("pgsidecar_process_open_fds").expect("open fds") > 3.0);
    sc.stop();
}

/// Waits that end at PGSIDECAR_QUERY_WAIT_TIMEOUT are part of the l2met p99, SHOW STATS and
/// Prometheus alike, once per client wait, and SHOW STATS' averages are per stats period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_waits_count_in_the_log_show_stats_and_prometheus_alike() {
    let pg = TestPg::shared();
    let db = pg.create_db("waitviews");
    let sc = Sidecar::start(
        &db,
        &[
            ("PGSIDECAR_POOL_SIZE", "1"),
            ("PGSIDECAR_QUERY_WAIT_TIMEOUT", "500ms"),
            ("PGSIDECAR_STATS_PERIOD", "1"),
        ],
    );
    let connect = || async {
        let (c, conn) = tokio_postgres::connect(&sc.conn_str(&db), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        c
    };
    let holder = connect().await;
    let others = [connect().await, connect().await, connect().await];
    let (admin, conn) =
        tokio_postgres::connect(&sc.conn_str("pgbouncer"), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let stats = |msgs: Vec<tokio_postgres::SimpleQueryMessage>, column: &str| -> i64 {
        let mut names = Vec::new();
        for m in msgs {
            match m {
                tokio_postgres::SimpleQueryMessage::RowDescription(cols) => {
                    names = cols.iter().map(|c| c.name().to_owned()).collect()
                }
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    let i = names.iter().position(|n| n == column).unwrap();
                    return r.get(i).unwrap().parse().unwrap();
                }
                _ => {}
            }
        }
        panic!("no row")
    };
    let held = tokio::spawn(async move { holder.simple_query("select pg_sleep(2)").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waits: Vec<_> =
        others.into_iter().map(|c| tokio::spawn(async move { c.simple_query("select 1").await })).collect();
    for w in waits {
        let e = w.await.unwrap().expect_err("the wait times out");
        assert_eq!(common::code(&e), "53300", "{e}");
    }
    // SHOW STATS' avg_wait_time is over one stats period (1 s here): the period that ended
    // the timed-out waits shows them (with the holder's wait of nothing, at most), and a
    // later, quiet period shows none; a lifetime average would stay up.
    let deadline = Instant::now() + Duration::from_secs(8);
    let (mut best, mut quiet) = (0, false);
    while !quiet {
        assert!(Instant::now() < deadline, "avg_wait_time peaked at {best} µs and never went back to 0");
        let avg = stats(admin.simple_query("SHOW STATS").await.unwrap(), "avg_wait_time");
        best = best.max(avg);
        quiet = best >= 100_000 && avg == 0;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    held.await.unwrap().unwrap();
    // The period with the timed-out waits shows them in its p99.
    let line = sc.wait_for_line(
        |l| {
            l.contains("event=pool_stats")
                && l.split(' ')
                    .find_map(|kv| kv.strip_prefix("measure#pgsidecar.checkout.wait.p99="))
                    .and_then(|v| v.trim_end_matches("ms").parse::<f64>().ok())
                    .is_some_and(|ms| ms >= 500.0)
        },
        Duration::from_secs(5),
    );
    assert!(line.contains("count#pgsidecar.pooler_errors=3"), "{line}");
    // SHOW STATS: the same total as Prometheus' histogram.
    let total = stats(admin.simple_query("SHOW STATS").await.unwrap(), "total_wait_time");
    assert!(total >= 1_500_000, "total_wait_time {total}");
    let scraped = scrape(&sc.metrics);
    let sum = scraped
        .samples
        .iter()
        .find(|s| {
            s.metric == "pgsidecar_checkout_wait_seconds_sum" && s.labels.get("database") == Some(db.as_str())
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Untyped(v) | prometheus_parse::Value::Counter(v) => v,
            ref other => panic!("{other:?}"),
        });
    let sum = sum.expect("pgsidecar_checkout_wait_seconds_sum");
    assert!((sum * 1e6 - total as f64).abs() <= 2.0, "Prometheus {sum} s, SHOW STATS {total} µs");
    sc.stop();
}

/// Issue 24: PGSIDECAR_LOG_FORMAT=json writes one JSON object per line with the same fields;
/// PGSIDECAR_LOG_CONNECTIONS=1 logs logins and disconnects at info; a client idle inside a
/// transaction past PGSIDECAR_IDLE_TRANSACTION_WARN gets one warning naming its application
/// and its last statement, normalized (no literal), and keeps its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_connection_lines_and_the_idle_in_transaction_warning() {
    let pg = TestPg::shared();
    let db = pg.create_db("jsonlog");
    let sc = Sidecar::start(
        &db,
        &[
            ("PGSIDECAR_LOG_FORMAT", "json"),
            ("PGSIDECAR_LOG_CONNECTIONS", "1"),
            ("PGSIDECAR_IDLE_TRANSACTION_WARN", "300ms"),
            ("PGSIDECAR_IDLE_TRANSACTION_TIMEOUT", "30s"),
        ],
    );
    let conn_str = format!("{} application_name=billing-job", sc.conn_str(&db));
    let (c, conn) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls).await.unwrap();
    let conn = tokio::spawn(conn);
    c.batch_execute("BEGIN").await.unwrap();
    c.simple_query("SELECT 'hunter2-literal' AS secret, 42 AS answer").await.unwrap();
    // Idle inside the transaction: the warning comes, the connection stays.
    let warned = tokio::task::block_in_place(|| {
        sc.wait_for_line(|l| l.contains("\"event\":\"idle_in_transaction\""), Duration::from_secs(10))
    });
    assert!(warned.contains("\"level\":\"warn\""), "{warned}");
    assert!(warned.contains("\"application_name\":\"billing-job\""), "{warned}");
    assert!(warned.contains("\"last_statement\":\"SELECT $1 AS secret, $2 AS answer\""), "{warned}");
    assert!(!warned.contains("hunter2"), "{warned}");
    c.batch_execute("COMMIT").await.unwrap();
    drop(c);
    let _ = conn.await;
    tokio::task::block_in_place(|| {
        sc.wait_for_line(|l| l.contains("\"event\":\"client_disconnect\""), Duration::from_secs(10))
    });
    let lines = sc.stop();
    let login = lines.iter().find(|l| l.contains("\"event\":\"client_login\"")).expect("a login line");
    assert!(login.contains("\"level\":\"info\""), "{login}");
    assert_eq!(lines.iter().filter(|l| l.contains("idle_in_transaction")).count(), 1, "{lines:#?}");
    // Every line is one JSON object (checked by a real parser), with a level and an event.
    let mut check = Command::new("python3")
        .args([
            "-c",
            "import json, sys\n\
             for line in sys.stdin:\n\
             \x20   o = json.loads(line)\n\
             \x20   assert isinstance(o, dict) and 'level' in o and 'event' in o and 'ts' in o, line\n",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check.stdin.take().unwrap().write_all(lines.join("\n").as_bytes()).unwrap();
    assert!(check.wait().unwrap().success(), "{lines:#?}");
}
