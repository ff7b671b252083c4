//! Periodic reports in the log: l2met lines for Heroku log drains (one per pool every
//! PGSIDECAR_STATS_PERIOD seconds), and a saturation diagnosis when clients keep waiting. The
//! same loop ends SHOW STATS' averaging periods.

use crate::observe::histogram::Snapshot;
use crate::upstream::Upstream;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, Instant};

/// Clients waiting continuously this long make a saturation warning.
const SATURATED_AFTER: Duration = Duration::from_secs(5);
/// SHOW STATS' averaging period when PGSIDECAR_STATS_PERIOD is 0 (no l2met lines): PgBouncer's
/// default stats_period.
const DEFAULT_AVERAGES_PERIOD: Duration = Duration::from_secs(60);

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
    /// Calls and total time by statement fingerprint when clients began to wait.
    window_statements: HashMap<u64, (u64, Duration)>,
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
            super::status::event(&up.pool.database, "saturation ended: no client is waiting");
        }
        r.waiting_since = None;
        r.warned = false;
        return;
    }
    let since = match r.waiting_since {
        Some(since) => since,
        None => {
            start_window(up, r);
            *r.waiting_since.insert(now)
        }
    };
    if r.warned || now.duration_since(since) < SATURATED_AFTER {
        return;
    }
    r.warned = true;
    let p99 = up.counters.wait_time.snapshot().since(&r.window_waits).quantile(0.99);
    let limit = up
        .sizing
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|z| z.limit)
        .map_or("unknown".to_owned(), |l| l.to_string());
    let top_in = top_in_window(up, r, 3);
    // The busiest statement by name (normalized: literals hidden), shortened for a log line.
    let busiest = top_in
        .first()
        .and_then(|&(fp, _, _)| up.counters.statement_text_of(fp))
        .map(|t| shorten(&t, BUSIEST_MAX))
        .unwrap_or_default();
    let top: Vec<String> = top_in
        .into_iter()
        .map(|(fp, calls, total)| {
            format!("{fp:016x} ({calls} calls, {:.0}ms total)", total.as_secs_f64() * 1000.0)
        })
        .collect();
    let advice = advice(up, s.max_size);
    super::status::event(
        &up.pool.database,
        format!(
            "pool saturated: {} clients waiting for {}s on {} servers, the oldest for {:.0}ms (p99 of the waits that ended: {:.0}ms); {}{advice}",
            s.waiting,
            now.duration_since(since).as_secs(),
            s.max_size,
            s.oldest_wait.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0,
            if busiest.is_empty() { String::new() } else { format!("busiest statement: {busiest}; ") }
        ),
    );
    tracing::warn!(
        database = %up.pool.database,
        pool_size = s.max_size,
        waiting = s.waiting,
        waiting_for_s = now.duration_since(since).as_secs(),
        wait_p99_ms = p99.as_secs_f64() * 1000.0,
        oldest_wait_ms = s.oldest_wait.as_millis() as u64,
        db_limit = %limit,
        top_statements = %top.join(", "),
        top_statement = %busiest,
        advice = %advice,
        "pool_saturated"
    );
}

/// Longest busiest-statement text in a saturation warning, in bytes.
const BUSIEST_MAX: usize = 300;

/// `text` cut to at most `max` bytes on a character boundary, with `...` when cut.
fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// Clients began to wait: what the warning will compare with.
fn start_window(up: &Upstream, r: &mut PoolReport) {
    r.window_waits = up.counters.wait_time.snapshot();
    r.window_statements = up.counters.statement_times();
}

/// The `n` statements that took the most server time since [`start_window`] (among those that
/// finished meanwhile), largest first: fingerprint, calls and time in the window.
fn top_in_window(up: &Upstream, r: &PoolReport, n: usize) -> Vec<(u64, u64, Duration)> {
    let mut v: Vec<(u64, u64, Duration)> = up
        .counters
        .statement_times()
        .into_iter()
        .filter_map(|(fp, (calls, total))| {
            let (calls0, total0) = match r.window_statements.get(&fp) {
                // Fewer calls than before: forgotten and remembered again meanwhile.
                Some(&(c, t)) if c <= calls => (c, t),
                _ => (0, Duration::ZERO),
            };
            let took = total.saturating_sub(total0);
            (calls > calls0).then_some((fp, calls - calls0, took))
        })
        .collect();
    v.sort_by_key(|&(fp, _, took)| (std::cmp::Reverse(took), fp));
    v.truncate(n);
    v
}

/// What to change, worded from what is known of the pool's size: the shared budget's last
/// round (the live sidecars and their shares), else the startup sizing (the database's limit
/// and PGSIDECAR_PROCESSES), else nothing of the database's limit.
fn advice(up: &Upstream, pool_size: usize) -> String {
    let b = &up.budget;
    let sidecars = b.sidecars.load(Ordering::Relaxed);
    if sidecars > 0 {
        let (budget, share, others) = (
            b.limit.load(Ordering::Relaxed),
            b.share.load(Ordering::Relaxed),
            b.others.load(Ordering::Relaxed),
        );
        let known = format!(
            "{budget} connections after the reserve for {sidecars} sidecars, {others} more held by other clients"
        );
        return if (pool_size as u64) < share {
            format!(
                "the shared budget lets this sidecar hold {pool_size} of its fair share of {share} ({known}): the other sidecars still hold the rest and give it up as their transactions end, so the pool grows at the next rounds (PGSIDECAR_BUDGET_PERIOD); if the waits go on, shorten the transactions holding servers (see the statements below and SHOW QUERIES)"
            )
        } else {
            format!(
                "the pool has its fair share of the shared budget, {share} ({known}), and a larger PGSIDECAR_POOL_SIZE would not be used: shorten transactions (see the statements below and SHOW QUERIES), run fewer sidecars, or move to a plan with more connections"
            )
        };
    }
    let sizing = up.sizing.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match sizing.and_then(|z| z.limit.map(|l| (l, z.reserved, z.processes))) {
        Some((l, reserved, processes)) if (pool_size as u32) * processes + reserved < l => format!(
            "raise PGSIDECAR_POOL_SIZE (the database allows {} more connections for {processes} sidecars, as PGSIDECAR_PROCESSES says), or shorten the transactions holding servers",
            l - reserved - (pool_size as u32) * processes
        ),
        Some((l, _, processes)) => format!(
            "the pool already uses its share of the database's limit ({l} connections for {processes} sidecars, as PGSIDECAR_PROCESSES says): shorten transactions (see the statements below and SHOW QUERIES), or move to a plan with more connections"
        ),
        None => "the database's connection limit is not known here (a fixed PGSIDECAR_POOL_SIZE, or the database could not be asked): raise PGSIDECAR_POOL_SIZE if the database has connections to spare, else shorten transactions (see the statements below and SHOW QUERIES)".to_owned(),
    }
}

/// Runs the reports until the pools are gone.
pub async fn run(upstreams: Vec<Weak<Upstream>>, period: Option<Duration>, source: String) {
    let mut reports: Vec<PoolReport> = upstreams.iter().map(|_| PoolReport::default()).collect();
    let every = period.unwrap_or(DEFAULT_AVERAGES_PERIOD);
    let mut last_period = Instant::now();
    for (u, r) in upstreams.iter().zip(reports.iter_mut()) {
        let Some(u) = u.upgrade() else { return };
        l2met_line(&u, r, &source); // baseline
        u.counters.end_period(last_period);
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let due = now.duration_since(last_period) >= every;
        let mut alive = false;
        for (u, r) in upstreams.iter().zip(reports.iter_mut()) {
            let Some(u) = u.upgrade() else { continue };
            alive = true;
            saturation(&u, r);
            if due {
                u.counters.end_period(now);
                if period.is_some() {
                    let line = l2met_line(&u, r, &source);
                    crate::logging::raw_line(tracing::Level::INFO, &line);
                }
            }
        }
        if !alive {
            return;
        }
        if due {
            last_period = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::sizing::{LimitSource, Sizing};
    use std::collections::BTreeMap;

    /// An upstream database that is never contacted.
    fn upstream() -> std::sync::Arc<Upstream> {
        let mut env = BTreeMap::new();
        env.insert(
            "DATABASE_URL".to_owned(),
            "postgres://app:pw@127.0.0.1:1/appdb?sslmode=disable".to_owned(),
        );
        let config = crate::config::Config::load(&BTreeMap::new(), &env).unwrap();
        std::sync::Arc::new(Upstream::new(&config.upstreams[0], &config).unwrap())
    }

    #[test]
    fn the_warning_names_the_statements_that_ran_while_clients_waited() {
        let up = &upstream();
        let c = &up.counters;
        c.statement(1, || "all-time top".into(), Duration::from_secs(100), 1);
        c.statement(2, || "before and during".into(), Duration::from_secs(1), 1);
        let mut r = PoolReport::default();
        start_window(up, &mut r);
        c.statement(2, || unreachable!(), Duration::from_secs(3), 1);
        c.statement(3, || "during".into(), Duration::from_secs(2), 1);
        c.statement(3, || unreachable!(), Duration::from_secs(2), 1);
        let top = top_in_window(up, &r, 3);
        assert_eq!(top, [(3, 2, Duration::from_secs(4)), (2, 1, Duration::from_secs(3))]);
    }

    #[test]
    fn the_advice_follows_what_is_known_of_the_pool_size() {
        let up = &upstream();
        // Sized at startup for one sidecar: 100 connections, 10 reserved.
        *up.sizing.lock().unwrap() = Some(Sizing {
            db: None,
            plan: None,
            limit: Some(100),
            source: LimitSource::Database,
            reserved: 10,
            processes: 1,
            pool_size: 90,
        });
        let a = advice(up, 30);
        assert!(a.starts_with("raise PGSIDECAR_POOL_SIZE") && a.contains("60 more"), "{a}");
        // The shared budget found four sidecars: a larger pool is not the answer.
        let b = &up.budget;
        b.limit.store(90, Ordering::Relaxed);
        b.sidecars.store(4, Ordering::Relaxed);
        b.share.store(21, Ordering::Relaxed);
        b.others.store(2, Ordering::Relaxed);
        let a = advice(up, 21);
        assert!(
            !a.contains("raise PGSIDECAR_POOL_SIZE") && a.contains("fair share of the shared budget, 21"),
            "{a}"
        );
        assert!(a.contains("4 sidecars"), "{a}");
        // Below its share, the peers still hold the rest.
        let a = advice(up, 12);
        assert!(!a.contains("raise PGSIDECAR_POOL_SIZE") && a.contains("12 of its fair share of 21"), "{a}");
        assert!(a.contains("other sidecars still hold the rest"), "{a}");
        // A fixed pool size: the limit is not known.
        b.sidecars.store(0, Ordering::Relaxed);
        *up.sizing.lock().unwrap() = None;
        assert!(advice(up, 12).contains("not known"));
    }
}
