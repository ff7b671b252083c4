//! Timing of statements and transactions on the relay path, with the text each statement ran,
//! for the slow-query log, SHOW QUERIES and the latency metrics.
//!
//! Responses arrive in request order, so a queue of open timers is enough: a simple query
//! ends at ReadyForQuery, an Execute at its CommandComplete (or error, empty query, portal
//! suspension), and Executes skipped after an error are dropped at the Sync that ends them.

use bytes::Bytes;
use quanta::Instant;
use std::collections::VecDeque;
use std::time::Duration;

/// Named statements remembered for their text.
const MAX_NAMES: usize = 1000;

#[derive(Debug)]
enum Timer {
    Query {
        start: Instant,
        text: Option<Bytes>,
        fingerprint: Option<u64>,
        rows: u64,
        sqlstate: Option<String>,
    },
    Execute {
        start: Instant,
        text: Option<Bytes>,
    },
    Sync,
}

/// A statement that finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub text: Option<Bytes>,
    /// The text's fingerprint, when the relay already had it.
    pub fingerprint: Option<u64>,
    /// Run by Execute: the text came with a Parse (and is usually sent again unchanged).
    pub parsed: bool,
    pub duration: Duration,
    pub rows: u64,
    pub sqlstate: Option<String>,
}

#[derive(Debug, Default)]
pub struct Timing {
    timers: VecDeque<Timer>,
    names: crate::prepared::NameMap<Vec<u8>, Bytes>,
    unnamed: Option<Bytes>,
    /// What the relay's scans found in `unnamed`, once it has looked (its facts bits).
    unnamed_facts: Option<u8>,
    portal: Option<Bytes>,
    xact_start: Option<Instant>,
    /// Statements finished since the session last looked.
    pub finished: Vec<Finished>,
    /// Transactions finished since the session last looked.
    pub transactions: Vec<Duration>,
    /// The fingerprint of the last statement counted, for the idle-in-transaction warning.
    pub last_statement: Option<u64>,
}

/// The row count at the end of a command tag ("SELECT 5", "INSERT 0 1", "COPY 10").
fn rows(tag: &[u8]) -> u64 {
    let tag = tag.strip_suffix(b"\0").unwrap_or(tag);
    let digits = tag.rsplit(|&b| b == b' ').next().unwrap_or_default();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return 0;
    }
    digits.iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0'))).unwrap_or(0)
}

impl Timing {
    /// Its queues have not grown past a few entries (worth keeping as a spare).
    pub fn small(&self) -> bool {
        self.timers.capacity() <= 16 && self.finished.capacity() <= 16 && self.transactions.capacity() <= 16
    }

    /// Nothing timed, pending or remembered: the session may drop this until it needs it.
    pub fn is_empty(&self) -> bool {
        self.timers.is_empty()
            && self.names.is_empty()
            && self.unnamed.is_none()
            && self.portal.is_none()
            && self.xact_start.is_none()
            && self.finished.is_empty()
            && self.transactions.is_empty()
    }

    fn begin(&mut self, now: Instant) {
        self.xact_start.get_or_insert(now);
    }

    /// A simple query (or function call: no text), with its text's fingerprint when known.
    pub fn query(&mut self, text: Option<Bytes>, fingerprint: Option<u64>) {
        let now = Instant::now();
        self.begin(now);
        self.timers.push_back(Timer::Query { start: now, text, fingerprint, rows: 0, sqlstate: None });
    }

    /// Remembers a statement's text: copied, as it outlives the request (an idle client keeps
    /// it), and a slice would keep the client's whole read buffer alive with it.
    pub fn parse(&mut self, name: &[u8], text: &[u8]) {
        if name.is_empty() {
            // Drivers parse the same unnamed texts again and again: the copy kept (already
            // shared with earlier executions) serves again, with no allocation.
            if self.unnamed.as_deref() != Some(text) {
                self.unnamed = Some(Bytes::copy_from_slice(text));
                self.unnamed_facts = None;
            }
        } else {
            if self.names.len() >= MAX_NAMES {
                self.names.clear();
            }
            self.names.insert(name.to_vec(), Bytes::copy_from_slice(text));
        }
    }

    /// What the relay found in the text of the client's last unnamed Parse, if it has looked
    /// since the text last changed.
    pub fn unnamed_facts(&self) -> Option<u8> {
        self.unnamed_facts
    }

    pub fn set_unnamed_facts(&mut self, facts: u8) {
        self.unnamed_facts = Some(facts);
    }

    /// No clock read: the transaction's time starts at the Execute that runs the portal
    /// (drivers send the two in one batch).
    pub fn bind(&mut self, statement: &[u8]) {
        self.portal =
            if statement.is_empty() { self.unnamed.clone() } else { self.names.get(statement).cloned() };
    }

    pub fn close(&mut self, name: &[u8]) {
        self.names.remove(name);
    }

    pub fn execute(&mut self) {
        let now = Instant::now();
        self.begin(now);
        self.timers.push_back(Timer::Execute { start: now, text: self.portal.clone() });
    }

    pub fn sync(&mut self) {
        self.timers.push_back(Timer::Sync);
    }

    fn finish_execute(&mut self, start: Instant, text: Option<Bytes>, rows: u64, sqlstate: Option<String>) {
        let duration = start.elapsed();
        self.finished.push(Finished { text, fingerprint: None, parsed: true, duration, rows, sqlstate });
    }

    /// CommandComplete, EmptyQueryResponse ('I') or PortalSuspended ('s').
    pub fn complete(&mut self, tag: Option<&[u8]>) {
        let n = tag.map_or(0, rows);
        match self.timers.front_mut() {
            Some(Timer::Query { rows, .. }) => *rows += n,
            Some(Timer::Execute { .. }) => {
                if let Some(Timer::Execute { start, text }) = self.timers.pop_front() {
                    self.finish_execute(start, text, n, None);
                }
            }
            _ => {}
        }
    }

    pub fn error(&mut self, code: &str) {
        match self.timers.front_mut() {
            Some(Timer::Query { sqlstate, .. }) => *sqlstate = Some(code.to_owned()),
            Some(Timer::Execute { .. }) => {
                if let Some(Timer::Execute { start, text }) = self.timers.pop_front() {
                    self.finish_execute(start, text, 0, Some(code.to_owned()));
                }
            }
            _ => {}
        }
    }

    /// An error made Postgres skip the simple queries pipelined before the next Sync: they
    /// are not timed (no ReadyForQuery ends them).
    pub fn skip_queries(&mut self) {
        let sync = self.timers.iter().position(|t| matches!(t, Timer::Sync)).unwrap_or(self.timers.len());
        let mut i = 0;
        let mut end = sync;
        while i < end {
            if matches!(self.timers[i], Timer::Query { .. }) {
                self.timers.remove(i);
                end -= 1;
            } else {
                i += 1;
            }
        }
    }

    /// ReadyForQuery with the transaction status.
    pub fn ready(&mut self, status: u8) {
        while let Some(Timer::Execute { .. }) = self.timers.front() {
            self.timers.pop_front(); // skipped after an error
        }
        // One clock read for the statement and the transaction it ends.
        let now = Instant::now();
        if let Some(Timer::Query { start, text, fingerprint, rows, sqlstate }) = self.timers.pop_front() {
            let duration = now.saturating_duration_since(start);
            self.finished.push(Finished { text, fingerprint, parsed: false, duration, rows, sqlstate });
        }
        if status == b'I' {
            if let Some(start) = self.xact_start.take() {
                self.transactions.push(now.saturating_duration_since(start));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_query_counts_rows_until_ready() {
        let mut t = Timing::default();
        t.query(Some(Bytes::from_static(b"select 1; select 2")), Some(7));
        t.complete(Some(b"SELECT 1\0"));
        t.complete(Some(b"SELECT 1\0"));
        assert!(t.finished.is_empty());
        t.ready(b'I');
        assert_eq!(t.finished.len(), 1);
        assert_eq!(t.finished[0].rows, 2);
        assert_eq!(t.finished[0].fingerprint, Some(7));
        assert_eq!(t.transactions.len(), 1);
    }

    #[test]
    fn extended_statements_carry_their_text() {
        let mut t = Timing::default();
        t.parse(b"s1", b"select $1");
        t.bind(b"s1");
        t.execute();
        t.parse(b"", b"update t set x = $1");
        t.bind(b"");
        t.execute();
        t.sync();
        t.complete(Some(b"SELECT 1\0"));
        t.error("23505");
        t.ready(b'I');
        let texts: Vec<_> = t.finished.iter().map(|f| f.text.clone().unwrap()).collect();
        assert_eq!(texts, [Bytes::from_static(b"select $1"), Bytes::from_static(b"update t set x = $1")]);
        assert_eq!(t.finished[1].sqlstate.as_deref(), Some("23505"));
    }

    #[test]
    fn executes_skipped_after_an_error_are_dropped_and_transactions_span_statements() {
        let mut t = Timing::default();
        t.query(Some(Bytes::from_static(b"begin")), None);
        t.ready(b'T');
        t.bind(b"");
        t.execute();
        t.execute();
        t.sync();
        t.error("22012");
        t.ready(b'E');
        assert_eq!(t.finished.len(), 2);
        assert!(t.transactions.is_empty());
        t.query(Some(Bytes::from_static(b"rollback")), None);
        t.ready(b'I');
        assert_eq!(t.transactions.len(), 1);
        assert_eq!(rows(b"INSERT 0 7\0"), 7);
        assert_eq!(rows(b"SELECT 18446744073709551615\0"), u64::MAX);
        assert_eq!(rows(b"SELECT 18446744073709551616\0"), 0);
        assert_eq!(rows(b"BEGIN\0"), 0);
        assert_eq!(rows(b"SELECT \0"), 0);
        assert_eq!(rows(b"SELECT 1x\0"), 0);
    }
}
