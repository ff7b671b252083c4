//! Periodic reports in the log: l2met lines for Heroku log drains (one per pool every
//! PGSIDECAR_STATS_PERIOD seconds), and a saturation diagnosis when clients keep waiting.

use crate::observe::histogram::Snapshot;
use crate::proxy::{Proxy, Upstream};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Clients waiting continuously this long make a saturation warning.
const SATURATED_AFTER: Duration = Duration::from_secs(5);

#[derive(Default)]
struct PoolReport {
    queries: u64,
    transactions: u64,
    slow: u64,
    errors: u64,
    waits: Snapshot,
    query_time: Snapshot,
    xact_time: Snapshot,
    waiting_since: Option<Instant>,
    warned: bool,
    window_waits: Snapshot,
}

fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

/// One l2met line for a pool: samples, counts since the last line, measures over the period.
fn l2met_line(up: &Upstream, r: &mut PoolReport, source: &str) -> String {
    let s = up.pool.stats();
    let c = &up.counters;
    let (queries, transactions) = (c.queries.load(Ordering::Relaxed), c.transactions.load(Ordering::Relaxed));
    let slow = c.slow_queries.load(Ordering::Relaxed);
    let errors: u64 = c.errors.iter().map(|e| e.load(Ordering::Relaxed)).sum();
    // Every client wait, with or without a server at its end: what Prometheus shows too.
    let (waits, qt, xt) = (c.wait_time.snapshot(), c.query_time.snapshot(), c.xact_time.snapshot());
    let (dw, dq, dx) = (waits.since(&r.waits), qt.since(&r.query_time), xt.since(&r.xact_time));
    let mut line = String::with_capacity(512);
    let _ = write!(line, "level=info event=pool_stats source={source} database={}", up.pool.database);
    let _ = write!(
        line,
        " sample#pgsidecar.pool.max_size={} sample#pgsidecar.servers.active={} sample#pgsidecar.servers.idle={} sample#pgsidecar.servers.connecting={}",
        s.max_size, s.active, s.idle, s.connecting
    );
    let _ = write!(
        line,
        " sample#pgsidecar.clients.connected={} sample#pgsidecar.clients.active={} sample#pgsidecar.clients.waiting={} sample#pgsidecar.clients.pinned={}",
        c.clients.load(Ordering::Relaxed),
        s.active,
        s.waiting,
        c.pinned.load(Ordering::Relaxed)
    );
    let saturation = if s.max_size == 0 { 0.0 } else { s.active as f64 / s.max_size as f64 };
    let _ = write!(
        line,
        " sample#pgsidecar.pool.saturation={saturation:.2} sample#pgsidecar.clients.max_wait={}",
        ms(s.oldest_wait)
    );
    let _ = write!(
        line,
        " count#pgsidecar.queries={} count#pgsidecar.transactions={} count#pgsidecar.slow_queries={} count#pgsidecar.pooler_errors={}",
        queries - r.queries,
        transactions - r.transactions,
        slow - r.slow,
        errors - r.errors
    );
    let _ = write!(
        line,
        " measure#pgsidecar.checkout.wait.p50={} measure#pgsidecar.checkout.wait.p99={} measure#pgsidecar.query.p99={} measure#pgsidecar.transaction.p99={}",
        ms(dw.quantile(0.5)),
        ms(dw.quantile(0.99)),
        ms(dq.quantile(0.99)),
        ms(dx.quantile(0.99))
    );
    r.queries = queries;
    r.transactions = transactions;
    r.slow = slow;
    r.errors = errors;
    r.waits = waits;
    r.query_time = qt;
    r.xact_time = xt;
    line
}

/// Warns once when clients have been waiting for a server for a while, with what to change;
/// says when it is over.
fn saturation(up: &Upstream, r: &mut PoolReport) {
    let s = up.pool.stats();
    let now = Instant::now();
    if s.waiting == 0 {
        if r.warned {
            tracing::info!(database = %up.pool.database, "pool_saturation_ended");
        }
        r.waiting_since = None;
        r.warned = false;
        return;
    }
    let since = *r.waiting_since.get_or_insert_with(|| {
        r.window_waits = up.counters.wait_time.snapshot();
        now
    });
    if r.warned || now.duration_since(since) < SATURATED_AFTER {
        return;
    }
    r.warned = true;
    let p99 = up.counters.wait_time.snapshot().since(&r.window_waits).quantile(0.99);
    let sizing = up.sizing.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let limit = sizing.as_ref().and_then(|z| z.limit).map_or("unknown".to_owned(), |l| l.to_string());
    let top: Vec<String> = up
        .counters
        .top_statements(3)
        .into_iter()
        .map(|(fp, t)| {
            format!("{fp:016x}")
                + &format!(" ({} calls, {:.0}ms total)", t.calls, t.total.as_secs_f64() * 1000.0)
        })
        .collect();
    let advice = match sizing.and_then(|z| z.limit.map(|l| (l, z.reserved, z.processes))) {
        Some((l, reserved, processes)) if (s.max_size as u32) * processes + reserved < l => format!(
            "raise PGSIDECAR_POOL_SIZE (the database allows {} more connections for {processes} sidecars), or shorten the transactions holding servers",
            l - reserved - (s.max_size as u32) * processes
        ),
        _ => "the pool already uses its share of the database's limit: shorten transactions (see the statements below and SHOW QUERIES), or move to a plan with more connections".to_owned(),
    };
    tracing::warn!(
        database = %up.pool.database,
        pool_size = s.max_size,
        waiting = s.waiting,
        waiting_for_s = now.duration_since(since).as_secs(),
        wait_p99_ms = p99.as_secs_f64() * 1000.0,
        db_limit = %limit,
        top_statements = %top.join(", "),
        advice = %advice,
        "pool_saturated"
    );
}

/// Runs the reports until the proxy is gone.
pub async fn run(proxy: Weak<Proxy>, period: Option<Duration>, source: String) {
    let pools: Vec<Arc<Upstream>> = match proxy.upgrade() {
        Some(p) => p.upstreams().to_vec(),
        None => return,
    };
    let mut reports: Vec<PoolReport> = pools.iter().map(|_| PoolReport::default()).collect();
    for (u, r) in pools.iter().zip(reports.iter_mut()) {
        l2met_line(u, r, &source); // baseline
    }
    let mut last_l2met = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if proxy.strong_count() == 0 {
            return;
        }
        let due = period.is_some_and(|p| last_l2met.elapsed() >= p);
        for (u, r) in pools.iter().zip(reports.iter_mut()) {
            saturation(u, r);
            if due {
                let line = l2met_line(u, r, &source);
                crate::logging::raw_line(tracing::Level::INFO, &line);
            }
        }
        if due {
            last_l2met = Instant::now();
        }
    }
}
