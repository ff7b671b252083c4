//! Per-pool counters kept by the proxy itself (atomics, cheap on the hot path). They feed the
//! Prometheus endpoint, the l2met lines and the admin console.

use super::histogram::Histogram;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Keys of the statement maps are hashes already: hashing them again is wasted work.
#[derive(Default)]
struct KeyIsHash(u64);

impl Hasher for KeyIsHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type Prehashed = BuildHasherDefault<KeyIsHash>;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Pooler errors by kind, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolerError {
    WaitTimeout,
    MaxClients,
    ServerConnect,
    AuthFailure,
}

impl PoolerError {
    pub const ALL: [PoolerError; 4] = [
        PoolerError::WaitTimeout,
        PoolerError::MaxClients,
        PoolerError::ServerConnect,
        PoolerError::AuthFailure,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PoolerError::WaitTimeout => "wait_timeout",
            PoolerError::MaxClients => "max_clients",
            PoolerError::ServerConnect => "server_connect",
            PoolerError::AuthFailure => "auth_failure",
        }
    }
}

/// Why a server connection was closed, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    IdleTimeout,
    Lifetime,
    Broken,
    Stale,
    Shrink,
    Shutdown,
    /// RECONNECT in the admin console.
    Reconnect,
    /// An idle server failed its check before being handed out (PGSIDECAR_SERVER_CHECK_DELAY).
    CheckFailed,
    /// PAUSE in the admin console: idle servers, and servers given back while paused.
    Pause,
    /// Replaced by a server opened with a session-mode client's startup settings.
    StartupSettings,
}

impl CloseReason {
    pub const ALL: [CloseReason; 10] = [
        CloseReason::IdleTimeout,
        CloseReason::Lifetime,
        CloseReason::Broken,
        CloseReason::Stale,
        CloseReason::Shrink,
        CloseReason::Shutdown,
        CloseReason::Reconnect,
        CloseReason::CheckFailed,
        CloseReason::Pause,
        CloseReason::StartupSettings,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Lifetime => "lifetime",
            CloseReason::Broken => "broken",
            CloseReason::Stale => "stale",
            CloseReason::Shrink => "shrink",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Reconnect => "reconnect",
            CloseReason::CheckFailed => "check_failed",
            CloseReason::Pause => "pause",
            CloseReason::StartupSettings => "startup_settings",
        }
    }
}

/// Totals for one normalized statement (SHOW QUERIES).
#[derive(Debug, Clone, Default)]
pub struct QueryTotals {
    pub text: String,
    pub calls: u64,
    pub total: Duration,
    pub rows: u64,
    pub hist: [u64; 19],
}

/// Most distinct statements remembered for SHOW QUERIES; the cheapest are dropped first.
const MAX_STATEMENTS: usize = 1000;

#[derive(Debug, Default)]
pub struct Counters {
    pub clients: AtomicI64,
    pub pinned: AtomicI64,
    pub queries: AtomicU64,
    pub transactions: AtomicU64,
    pub bytes_from_clients: AtomicU64,
    pub bytes_to_clients: AtomicU64,
    pub query_us: AtomicU64,
    pub xact_us: AtomicU64,
    pub slow_queries: AtomicU64,
    /// Cancel requests that took effect: forwarded to the server running the client's query
    /// (counted by the cancel registry), or taking a waiting client out of the queue (counted
    /// by the session).
    pub cancels: AtomicU64,
    /// Named Parses acknowledged without a server after waiting PARSE_WAIT for one.
    pub parses_without_server: AtomicU64,
    pub errors: [AtomicU64; 4],
    pub query_time: Histogram,
    pub xact_time: Histogram,
    /// Checkout waits, once per client wait, whether it ended with a server, a time-out, a
    /// cancel or the client leaving: what Prometheus, the l2met lines, the saturation warning
    /// and SHOW STATS show.
    pub wait_time: Histogram,
    statements: Mutex<HashMap<u64, QueryTotals, Prehashed>>,
    /// Raw text hash -> fingerprint, for texts that came with a Parse: drivers send the same
    /// parameterized text again and again, and hashing it raw is cheaper than normalizing it.
    parsed: Mutex<HashMap<u64, u64, Prehashed>>,
    /// SHOW STATS' averages, per stats period.
    period: Mutex<Period>,
}

/// The `avg_*` columns of SHOW STATS, as PgBouncer computes them: over the last complete
/// stats period, counts and bytes per second, times per transaction, query or wait (µs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeriodAverages {
    pub xact_count: u64,
    pub query_count: u64,
    pub recv: u64,
    pub sent: u64,
    pub xact_time: u64,
    pub query_time: u64,
    pub wait_time: u64,
}

/// Totals at the start of the current stats period.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    xacts: u64,
    queries: u64,
    recv: u64,
    sent: u64,
    xact_us: u64,
    query_us: u64,
    waits: u64,
    wait_us: u64,
}

#[derive(Debug, Default)]
struct Period {
    start: Option<(std::time::Instant, Totals)>,
    last: PeriodAverages,
}

impl Counters {
    fn totals(&self) -> Totals {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let waits = self.wait_time.snapshot();
        Totals {
            xacts: load(&self.transactions),
            queries: load(&self.queries),
            recv: load(&self.bytes_from_clients),
            sent: load(&self.bytes_to_clients),
            xact_us: load(&self.xact_us),
            query_us: load(&self.query_us),
            waits: waits.count(),
            wait_us: waits.sum_us,
        }
    }

    /// Ends the current stats period at `now`: its averages become what SHOW STATS shows, and
    /// a new period starts. The first call only starts one (the averages stay zero until a
    /// period is complete, as in PgBouncer).
    pub fn end_period(&self, now: std::time::Instant) {
        let totals = self.totals();
        let mut p = self.period.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((start, base)) = p.start {
            let us = now.saturating_duration_since(start).as_micros().max(1);
            let per_second =
                |now: u64, then: u64| (u128::from(now.saturating_sub(then)) * 1_000_000 / us) as u64;
            let per = |total: u64, then: u64, n: u64, n_then: u64| {
                total.saturating_sub(then).checked_div(n.saturating_sub(n_then)).unwrap_or(0)
            };
            p.last = PeriodAverages {
                xact_count: per_second(totals.xacts, base.xacts),
                query_count: per_second(totals.queries, base.queries),
                recv: per_second(totals.recv, base.recv),
                sent: per_second(totals.sent, base.sent),
                xact_time: per(totals.xact_us, base.xact_us, totals.xacts, base.xacts),
                query_time: per(totals.query_us, base.query_us, totals.queries, base.queries),
                wait_time: per(totals.wait_us, base.wait_us, totals.waits, base.waits),
            };
        }
        p.start = Some((now, totals));
    }

    /// The averages of the last complete stats period (all zero before the first ends).
    pub fn period_averages(&self) -> PeriodAverages {
        self.period.lock().unwrap_or_else(|p| p.into_inner()).last
    }

    pub fn error(&self, kind: PoolerError) {
        self.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn query(&self, d: Duration) {
        self.queries.fetch_add(1, Ordering::Relaxed);
        self.query_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.query_time.record(d);
    }

    pub fn transaction(&self, d: Duration) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
        self.xact_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.xact_time.record(d);
    }

    /// Adds one execution of a normalized statement.
    pub fn statement(&self, fingerprint: u64, text: impl FnOnce() -> String, d: Duration, rows: u64) {
        let mut map = self.statements.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(&fingerprint) {
            // A new statement: its text is built without the lock, which every client takes.
            drop(map);
            let text = text();
            map = self.statements.lock().unwrap_or_else(|p| p.into_inner());
            if !map.contains_key(&fingerprint) && map.len() >= MAX_STATEMENTS {
                if let Some(cheapest) = map.iter().min_by_key(|(_, t)| t.total).map(|(k, _)| *k) {
                    map.remove(&cheapest);
                }
            }
            map.entry(fingerprint).or_insert_with(|| QueryTotals { text, ..Default::default() });
        }
        let t = map.get_mut(&fingerprint).expect("present: inserted above under this lock");
        t.calls += 1;
        t.total += d;
        t.rows += rows;
        let us = d.as_micros() as u64;
        t.hist[super::histogram::BOUNDS_US.partition_point(|&b| b < us)] += 1;
    }

    /// Adds one execution of a statement given by its raw text, and its fingerprint when the
    /// relay already has it (else it is computed here, with no allocation); the normalized
    /// text is built when the statement is new.
    pub fn statement_text(&self, text: &[u8], fingerprint: Option<u64>, d: Duration, rows: u64) -> u64 {
        let fp = fingerprint.unwrap_or_else(|| super::normalize::fingerprint(text));
        self.statement(
            fp,
            || super::normalize::normalize_bytes(text, super::normalize::FINGERPRINT_MAX),
            d,
            rows,
        );
        fp
    }

    /// [`Counters::statement_text`] for a text that came with a Parse: its fingerprint is
    /// remembered by the raw text's hash, for every client (a simple query's text usually
    /// carries literals that differ every time: the relay remembers those per thread, for
    /// texts that differ only in numbers).
    pub fn statement_parsed(&self, text: &[u8], d: Duration, rows: u64) -> u64 {
        let raw = super::normalize::text_hash(text);
        let known = self.parsed.lock().unwrap_or_else(|p| p.into_inner()).get(&raw).copied();
        let fp = known.unwrap_or_else(|| {
            let fp = super::normalize::fingerprint(text);
            let mut map = self.parsed.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() >= 4 * MAX_STATEMENTS {
                map.clear();
            }
            map.insert(raw, fp);
            fp
        });
        self.statement(
            fp,
            || super::normalize::normalize_bytes(text, super::normalize::FINGERPRINT_MAX),
            d,
            rows,
        );
        fp
    }

    /// Calls and total time of every remembered statement, by fingerprint: subtracted from a
    /// later reading, what ran in between.
    pub fn statement_times(&self) -> HashMap<u64, (u64, Duration)> {
        let map = self.statements.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, t)| (*k, (t.calls, t.total))).collect()
    }

    /// The normalized text of a remembered statement.
    pub fn statement_text_of(&self, fingerprint: u64) -> Option<String> {
        let map = self.statements.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&fingerprint).map(|t| t.text.clone())
    }

    /// Statements by total time, largest first.
    pub fn top_statements(&self, n: usize) -> Vec<(u64, QueryTotals)> {
        let map = self.statements.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<(u64, QueryTotals)> = map.iter().map(|(k, t)| (*k, t.clone())).collect();
        v.sort_by_key(|b| std::cmp::Reverse(b.1.total));
        v.truncate(n);
        v
    }
}

/// The p-quantile of a statement's bucket counts (upper bucket bound).
pub fn hist_quantile(hist: &[u64; 19], q: f64) -> Duration {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return Duration::ZERO;
    }
    let rank = ((q * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, c) in hist.iter().enumerate() {
        seen += c;
        if seen >= rank {
            let bound = super::histogram::BOUNDS_US.get(i).copied().unwrap_or(30_000_000);
            return Duration::from_micros(bound);
        }
    }
    Duration::ZERO
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_aggregated_and_bounded() {
        let c = Counters::default();
        for i in 0..(MAX_STATEMENTS as u64 + 10) {
            c.statement(i, || format!("select {i}"), Duration::from_micros(i + 1), 1);
        }
        c.statement(5_000, || "big".into(), Duration::from_secs(1), 3);
        c.statement(5_000, || unreachable!(), Duration::from_secs(1), 3);
        let top = c.top_statements(2);
        assert_eq!(top[0].1.text, "big");
        assert_eq!((top[0].1.calls, top[0].1.rows), (2, 6));
        assert_eq!(c.statements.lock().unwrap().len(), MAX_STATEMENTS);
        assert_eq!(hist_quantile(&top[0].1.hist, 0.99), Duration::from_secs(1));
    }

    #[test]
    fn statements_with_other_literals_share_a_fingerprint() {
        let c = Counters::default();
        c.statement_text(b"select * from t where a = 1", None, Duration::from_millis(1), 1);
        c.statement_text(b"SELECT * FROM t WHERE a = 'x'", None, Duration::from_millis(1), 1);
        c.statement_text(b"select  *  from t where a = 2 -- again", None, Duration::from_millis(1), 1);
        let top = c.top_statements(5);
        assert_eq!(top.len(), 2, "{top:?}");
        let lower = top.iter().find(|(_, t)| t.text.starts_with("select")).unwrap();
        assert_eq!((lower.1.text.as_str(), lower.1.calls), ("select * from t where a = $1", 2));
        // A parsed text lands on the same statement, the first time and when remembered.
        c.statement_parsed(b"select * from t where a = 3", Duration::from_millis(1), 1);
        c.statement_parsed(b"select * from t where a = 3", Duration::from_millis(1), 1);
        let top = c.top_statements(5);
        let lower = top.iter().find(|(_, t)| t.text.starts_with("select")).unwrap();
        assert_eq!(lower.1.calls, 4);
    }
}
