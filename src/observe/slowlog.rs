//! The slow-query and slow-transaction log: one logfmt line at warn per slow statement, with
//! the text normalized (literals replaced by `$n`, never values) and a fingerprint, rate-limited
//! so that a storm of slow queries cannot flood the log drain.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines allowed in a burst, and refilled per second.
const BURST: f64 = 20.0;
const PER_SECOND: f64 = 5.0;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

#[derive(Debug)]
pub struct SlowLog {
    pub query: Option<Duration>,
    pub transaction: Option<Duration>,
    pub max_len: usize,
    bucket: Mutex<Bucket>,
}

/// One slow statement, as the session knows it.
pub struct SlowQuery<'a> {
    pub duration: Duration,
    pub wait: Duration,
    pub database: &'a str,
    pub user: &'a str,
    pub application_name: &'a str,
    pub rows: u64,
    pub sqlstate: Option<&'a str>,
    pub text: Option<&'a [u8]>,
}

impl SlowLog {
    pub fn new(query: Option<Duration>, transaction: Option<Duration>, max_len: usize) -> SlowLog {
        SlowLog {
            query,
            transaction,
            max_len,
            bucket: Mutex::new(Bucket { tokens: BURST, last: Instant::now(), suppressed: 0 }),
        }
    }

    /// Takes a token; returns how many lines were suppressed before this one, or `None` when
    /// this line must be suppressed too.
    fn admit(&self) -> Option<u64> {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * PER_SECOND).min(BURST);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Some(std::mem::take(&mut b.suppressed))
        } else {
            b.suppressed += 1;
            None
        }
    }

    pub fn is_slow_query(&self, d: Duration) -> bool {
        self.query.is_some_and(|t| d >= t)
    }

    pub fn log_query(&self, q: &SlowQuery<'_>) {
        let Some(suppressed) = self.admit() else { return };
        let text = q.text.map(|t| super::normalize::normalize_bytes(t, self.max_len)).unwrap_or_default();
        // The same fingerprint as SHOW QUERIES shows, whatever the log's length limit.
        let fingerprint = format!("{:016x}", q.text.map_or(0, super::normalize::fingerprint));
        tracing::warn!(
            duration_ms = q.duration.as_secs_f64() * 1000.0,
            wait_ms = q.wait.as_secs_f64() * 1000.0,
            database = q.database,
            user = q.user,
            application_name = q.application_name,
            rows = q.rows,
            sqlstate = q.sqlstate.unwrap_or(""),
            fingerprint = %fingerprint,
            query = %text,
            suppressed,
            "slow_query"
        );
    }

    pub fn is_slow_transaction(&self, d: Duration) -> bool {
        self.transaction.is_some_and(|t| d >= t)
    }

    pub fn log_transaction(&self, duration: Duration, database: &str, user: &str, application_name: &str) {
        if !self.is_slow_transaction(duration) {
            return;
        }
        let Some(suppressed) = self.admit() else { return };
        tracing::warn!(
            duration_ms = duration.as_secs_f64() * 1000.0,
            database,
            user,
            application_name,
            suppressed,
            "slow_transaction"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storm_is_rate_limited_with_a_count() {
        let log = SlowLog::new(Some(Duration::ZERO), None, 100);
        let admitted = (0..100).filter(|_| log.admit().is_some()).count();
        assert!(admitted <= BURST as usize + 1, "{admitted}");
        assert!(log.bucket.lock().unwrap().suppressed >= 70);
    }

    #[test]
    fn thresholds() {
        let log = SlowLog::new(Some(Duration::from_millis(500)), None, 100);
        assert!(log.is_slow_query(Duration::from_millis(500)));
        assert!(!log.is_slow_query(Duration::from_millis(499)));
        assert!(!SlowLog::new(None, None, 1).is_slow_query(Duration::from_secs(100)));
    }
}
