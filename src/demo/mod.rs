//! `pgsidecar demo`: a temporary PostgreSQL sized like a small Heroku plan (max_connections
//! 20, as on essential-0), pgsidecar in front of it with `pool-size auto`, and a simulated
//! application of many workers whose traffic saturates the pool for a while. In a terminal, a
//! status block redrawn in place shows the pool, the saturation events are told above it in
//! words and the log goes to a file; piped, one plain line a second and the log on stderr. A
//! summary and a chart of the run (SVG) follow. The database is removed afterwards, on Ctrl-C
//! too; the log and the chart stay.
//!
//! An entry point: may import [`crate::proxy`] and what it wires.

mod chart;
mod tempdb;
mod view;

use crate::config::settings::Env;
use crate::config::Config;
use crate::proxy::Proxy;
use rand::Rng;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempdb::TempDb;

/// The simulated application: a phase of calm, a rush that saturates the pool, then calm.
const WORKERS: usize = 48;
const CALM_WORKERS: usize = 8;
/// Queries slower than this count as slow (the default of PGSIDECAR_SLOW_QUERY_MS).
const SLOW: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Counters {
    transactions: AtomicU64,
    errors: AtomicU64,
    slow: AtomicU64,
}

fn phase_workers(elapsed: Duration, total: Duration) -> usize {
    let f = elapsed.as_secs_f64() / total.as_secs_f64();
    if (0.25..0.7).contains(&f) {
        WORKERS
    } else {
        CALM_WORKERS
    }
}

async fn worker(
    id: usize,
    url: String,
    started: Instant,
    total: Duration,
    stop: Arc<AtomicBool>,
    c: Arc<Counters>,
) {
    let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await else {
        c.errors.fetch_add(1, Ordering::Relaxed);
        return;
    };
    tokio::spawn(conn);
    while !stop.load(Ordering::Relaxed) && started.elapsed() < total {
        if id >= phase_workers(started.elapsed(), total) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        // A request: a short transaction, now and then a slow report query.
        let (sleep_ms, think_ms) = {
            let mut rng = rand::rng();
            let slow = rng.random_bool(0.03);
            (if slow { rng.random_range(500..900) } else { rng.random_range(5..40) }, rng.random_range(5..30))
        };
        let sql = format!(
            "BEGIN; UPDATE demo_counters SET hits = hits + 1 WHERE id = {}; SELECT pg_sleep({}); COMMIT",
            id % 8,
            sleep_ms as f64 / 1000.0
        );
        let t = Instant::now();
        match client.batch_execute(&sql).await {
            Ok(()) => {
                c.transactions.fetch_add(1, Ordering::Relaxed);
                if t.elapsed() >= SLOW {
                    c.slow.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(think_ms)).await;
    }
}

struct Peak {
    waiting: usize,
    active: usize,
    saturated_ticks: u32,
    ticks: u32,
}

/// Where the demo's files go and how it talks: decided before the proxy logs anything.
struct Output {
    tty: bool,
    log: Option<PathBuf>,
    chart: PathBuf,
    events: std::sync::mpsc::Receiver<crate::logging::Record>,
}

/// Events kept for the view between two redraws; more are dropped (they are in the log).
const MAX_PENDING_EVENTS: usize = 64;

/// Logging for the demo: to a file in a terminal (the screen is the view's), else to stderr
/// at warn as before; either way the saturation events are also handed to the view.
fn output(out_dir: &Path) -> Result<Output, String> {
    let tty = std::io::stdout().is_terminal();
    std::fs::create_dir_all(out_dir).map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let stem = format!("pgsidecar-demo-{}", std::process::id());
    let chart = out_dir.join(format!("{stem}.svg"));
    let (tx, events) = std::sync::mpsc::sync_channel(MAX_PENDING_EVENTS);
    let tap: crate::logging::Tap = Box::new(move |r| {
        if view::wanted(r) {
            let _ = tx.try_send(r.clone());
        }
    });
    let (sink, level, log) = if tty {
        let path = out_dir.join(format!("{stem}.log"));
        let file =
            std::fs::File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        (crate::logging::Sink::File(std::sync::Mutex::new(file)), tracing::Level::INFO, Some(path))
    } else {
        (crate::logging::Sink::Stderr, tracing::Level::WARN, None)
    };
    crate::logging::init_with(crate::logging::Options {
        level,
        timestamps: true,
        format: crate::logging::Format::Logfmt,
        sink,
        tap: Some(tap),
    });
    Ok(Output { tty, log, chart, events })
}

pub async fn run(duration: Duration, out_dir: PathBuf) -> ExitCode {
    let out = match output(&out_dir) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let db = match tokio::task::spawn_blocking(|| TempDb::start(20)).await {
        Ok(Ok(db)) => db,
        Ok(Err(e)) => {
            eprintln!("demo: cannot start a temporary PostgreSQL: {e}");
            return ExitCode::FAILURE;
        }
        Err(_) => return ExitCode::FAILURE,
    };
    println!("pgsidecar demo: temporary PostgreSQL on 127.0.0.1:{} (max_connections=20, like essential-0), data in {}", db.port, db.dir().display());
    if let Some(log) = &out.log {
        println!("the proxy's log (logfmt) goes to {}", log.display());
    }
    let outcome = tokio::select! {
        r = demo(&db, duration, &out) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".to_owned()),
    };
    drop(db);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e}; the temporary database has been removed");
            ExitCode::FAILURE
        }
    }
}

async fn setup(db: &TempDb) -> Result<(), String> {
    let (admin, conn) =
        tokio_postgres::connect(&db.admin_url(), tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    // Separate statements: CREATE DATABASE cannot run in the implicit transaction of a batch.
    for sql in
        [format!("CREATE ROLE app LOGIN PASSWORD '{}'", db.password), "CREATE DATABASE app OWNER app".into()]
    {
        admin.batch_execute(&sql).await.map_err(pg_err)?;
    }
    let url = format!("postgres://app:{}@127.0.0.1:{}/app?sslmode=disable", db.password, db.port);
    let (app, conn) =
        tokio_postgres::connect(&url, tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    app.batch_execute(
        "CREATE TABLE demo_counters(id int PRIMARY KEY, hits bigint NOT NULL DEFAULT 0); \
         INSERT INTO demo_counters SELECT g, 0 FROM generate_series(0, 7) g",
    )
    .await
    .map_err(pg_err)
}

async fn demo(db: &TempDb, duration: Duration, out: &Output) -> Result<(), String> {
    setup(db).await?;
    let (proxy, addr, stop_proxy) = start_proxy(db).await?;
    let up = proxy.upstreams()[0].clone();
    print_plan(&up, addr, duration);
    let url = format!("host=127.0.0.1 port={} user=app password={} dbname=app", addr.port(), db.password);
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|id| tokio::spawn(worker(id, url.clone(), started, duration, stop.clone(), counters.clone())))
        .collect();
    let watched = watch(&proxy, &up, &counters, started, duration, out).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let tx = print_summary(&up, &counters, &watched.peak, started);
    let title = format!(
        "pgsidecar demo: pool of {} servers, {WORKERS} app workers, {:.0}s ({} transactions)",
        up.pool.stats().max_size,
        watched.status.elapsed_s,
        tx
    );
    match std::fs::write(&out.chart, chart::svg(watched.samples.list(), &title)) {
        Ok(()) => {
            println!("\nchart of the run (servers busy, clients waiting, p99 wait): {}", out.chart.display())
        }
        Err(e) => println!("\ncannot write the chart to {}: {e}", out.chart.display()),
    }
    if let Some(log) = &out.log {
        println!("the proxy's log: {}", log.display());
    }
    let _ = stop_proxy.send(());
    proxy.close_pools();
    if counters.errors.load(Ordering::Relaxed) > 0 {
        return Err("some simulated requests failed".into());
    }
    Ok(())
}

/// The proxy in front of the temporary database, sized as one of two dynos would size it, on
/// a port of its own; it serves until the sender is used.
async fn start_proxy(
    db: &TempDb,
) -> Result<(Arc<Proxy>, std::net::SocketAddr, tokio::sync::oneshot::Sender<()>), String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert(
        "DATABASE_URL".into(),
        format!("postgres://app:{}@127.0.0.1:{}/app?sslmode=disable", db.password, db.port),
    );
    // Two dynos share the database: each sidecar takes half of what the plan leaves.
    env.insert("PGSIDECAR_PROCESSES".into(), "2".into());
    env.insert("PGSIDECAR_QUERY_WAIT_TIMEOUT".into(), "10s".into());
    let config = Config::load(&BTreeMap::new(), &env as &dyn Env).map_err(|e| e.to_string())?;
    let proxy = Proxy::new(config).map_err(|e| e.to_string())?;
    proxy.size_pools().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(proxy.clone().serve(listener, async move {
        let _ = stop_rx.await;
    }));
    Ok((proxy, addr, stop_tx))
}

/// The first line: where the proxy listens, how its pool was sized, what the run will do.
fn print_plan(up: &crate::upstream::Upstream, addr: std::net::SocketAddr, duration: Duration) {
    if let Some(s) = up.sizing.lock().unwrap_or_else(|p| p.into_inner()).clone() {
        println!(
            "pgsidecar on {addr}: pool size {} = ({} usable - {} reserved) / {} processes; {} simulated app workers, rush from {:.0}s to {:.0}s",
            s.pool_size,
            s.limit.unwrap_or(0),
            s.reserved,
            s.processes,
            WORKERS,
            duration.as_secs_f64() * 0.25,
            duration.as_secs_f64() * 0.7
        );
    }
}

/// What the live view saw over the run.
struct Watched {
    peak: Peak,
    samples: chart::Samples,
    status: view::Status,
}

/// Shows the pool while the workers run: a status block redrawn in place with the events
/// above it in a terminal, plain lines otherwise; every sample is kept for the chart.
async fn watch(
    proxy: &Proxy,
    up: &crate::upstream::Upstream,
    counters: &Counters,
    started: Instant,
    duration: Duration,
    out: &Output,
) -> Watched {
    let pool = &up.pool;
    let tty = out.tty;
    let mut peak = Peak { waiting: 0, active: 0, saturated_ticks: 0, ticks: 0 };
    let window = Duration::from_millis(if tty { 250 } else { 1000 });
    let mut tick = tokio::time::interval(window);
    let mut last = up.counters.wait_time.snapshot();
    let mut screen = view::Screen::default();
    let mut samples = chart::Samples::default();
    let mut events = Vec::new();
    let mut status = view::Status::default();
    while started.elapsed() < duration {
        tick.tick().await;
        let st = pool.stats();
        let now = up.counters.wait_time.snapshot();
        let since = now.since(&last);
        last = now;
        peak.waiting = peak.waiting.max(st.waiting);
        peak.active = peak.active.max(st.active);
        peak.ticks += 1;
        if st.waiting > 0 {
            peak.saturated_ticks += 1;
        }
        let elapsed = started.elapsed();
        status = view::Status {
            elapsed_s: elapsed.as_secs_f64(),
            total_s: duration.as_secs_f64(),
            workers: phase_workers(elapsed, duration),
            busy: st.active,
            idle: st.idle,
            pool_size: st.max_size,
            connected: proxy.clients(),
            waiting: st.waiting,
            wait_p99_ms: ms(since.quantile(0.99)),
            window_s: window.as_secs_f64(),
            transactions: counters.transactions.load(Ordering::Relaxed),
            slow: counters.slow.load(Ordering::Relaxed),
            errors: counters.errors.load(Ordering::Relaxed),
        };
        samples.push(chart::Sample {
            t_s: status.elapsed_s,
            busy: st.active,
            pool_size: st.max_size,
            waiting: st.waiting,
            wait_p99_ms: status.wait_p99_ms,
        });
        events.clear();
        while let Ok(r) = out.events.try_recv() {
            events.extend(view::event_lines(&r, status.elapsed_s));
        }
        let text = if tty {
            screen.frame(&events, &view::block(&status))
        } else {
            let mut t: String = events.iter().map(|l| format!("{l}\n")).collect();
            t.push_str(&view::plain_line(&status));
            t.push('\n');
            t
        };
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
    }
    Watched { peak, samples, status }
}

/// The summary after the run; returns the transactions run.
fn print_summary(up: &crate::upstream::Upstream, counters: &Counters, peak: &Peak, started: Instant) -> u64 {
    let waits = up.counters.wait_time.snapshot();
    let st = up.pool.stats();
    let tx = counters.transactions.load(Ordering::Relaxed);
    println!("\nsummary");
    println!("  duration            {:.1}s", started.elapsed().as_secs_f64());
    println!(
        "  transactions        {tx} ({:.0}/s), errors {}",
        tx as f64 / started.elapsed().as_secs_f64(),
        counters.errors.load(Ordering::Relaxed)
    );
    println!(
        "  server connections  pool {} (database limit 20, at most {} in use)",
        st.max_size, peak.active
    );
    println!("  app connections     {WORKERS} workers multiplexed onto those servers");
    println!(
        "  checkout wait       p50 {:.1}ms  p99 {:.1}ms  max {:.1}ms",
        ms(waits.quantile(0.5)),
        ms(waits.quantile(0.99)),
        waits.max_us as f64 / 1000.0
    );
    println!(
        "  saturation          clients waited in {} of {} samples, up to {} at once",
        peak.saturated_ticks, peak.ticks, peak.waiting
    );
    println!(
        "  slow requests       {} took longer than {}ms as the app saw them (queue wait included)",
        counters.slow.load(Ordering::Relaxed),
        SLOW.as_millis()
    );
    if peak.waiting > 0 {
        println!(
            "  diagnosis           the pool saturated during the rush: shorten the slow transactions, or raise PGSIDECAR_POOL_SIZE within the plan's limit (pgsidecar check shows it)"
        );
    }
    tx
}

fn pg_err(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
