//! The timeouts of one server attachment (PGSIDECAR_QUERY_TIMEOUT,
//! PGSIDECAR_IDLE_TRANSACTION_TIMEOUT, and the warning of PGSIDECAR_IDLE_TRANSACTION_WARN
//! before it) as a small state machine over one timer.

use super::*;

/// What an attachment is waiting on, for PGSIDECAR_QUERY_TIMEOUT and
/// PGSIDECAR_IDLE_TRANSACTION_TIMEOUT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// No timeout applies: idle outside a transaction, a message half-way, ...
    Other,
    /// The server owes a ReadyForQuery.
    Busy,
    /// Inside a transaction with nothing owed or pending either way.
    IdleInTransaction,
    /// The query timeout passed and a cancel was sent; the server has until the deadline.
    Cancelling,
}

/// What a timer that fired means.
pub(super) enum Expired {
    /// Nothing (yet): the deadline moved later since the timer was set.
    No,
    Query,
    /// Idle inside a transaction past the warning threshold (once per idle stretch).
    IdleWarn(Duration),
    IdleTransaction(Duration),
    Cancel,
}

/// The timeouts of one server attachment. The deadline is a plain value updated when the
/// phase changes (no timer work while no timeout applies); the one `Sleep` is moved only
/// when a deadline comes earlier than it, or when it fires before the current deadline.
pub(super) struct Timeouts {
    pub(super) enabled: bool,
    pub(super) query: Option<Duration>,
    pub(super) idle_transaction: Option<Duration>,
    pub(super) phase: Phase,
    /// ReadyForQuery still owed when the phase was last looked at.
    pub(super) outstanding: u32,
    pub(super) deadline: Option<tokio::time::Instant>,
    /// When the current phase began (for the log).
    pub(super) since: Option<tokio::time::Instant>,
    /// The cancel request on its way to Postgres.
    pub(super) cancel: Option<tokio::task::JoinHandle<Result<(), ServerError>>>,
    /// The ErrorResponse that replaces the server's 57014 answer to the proxy's cancel.
    pub(super) reply: Option<bytes::Bytes>,
    /// A cancel may still reach the server: close it rather than give it to anyone else.
    pub(super) doomed: bool,
    /// The idle-in-transaction warning is due in this idle stretch (the threshold itself is
    /// read from the configuration, to keep the attachment small).
    pub(super) warn_pending: bool,
}

impl Timeouts {
    pub(super) fn new(
        query: Option<Duration>,
        idle_transaction: Option<Duration>,
        warn: Option<Duration>,
    ) -> Timeouts {
        Timeouts {
            enabled: query.is_some() || idle_transaction.is_some() || warn.is_some(),
            query,
            idle_transaction,
            phase: Phase::Other,
            outstanding: 0,
            deadline: None,
            since: None,
            cancel: None,
            reply: None,
            doomed: false,
            warn_pending: false,
        }
    }

    /// The warning threshold when it comes before the timeout.
    fn warn_before(&self, warn: Option<Duration>) -> Option<Duration> {
        warn.filter(|w| self.idle_transaction.is_none_or(|t| *w < t))
    }

    /// Follows the relay's state; a new phase (or an answer while more are owed) restarts
    /// the deadline that applies to it.
    pub(super) fn update(
        &mut self,
        relay: &Relay,
        client_quiet: bool,
        warn: Option<Duration>,
        timer: Pin<&mut Option<Sleep>>,
    ) {
        if self.phase == Phase::Cancelling {
            return;
        }
        // A message held while its statement is prepared waits on the server as a query does.
        let phase = if relay.outstanding > 0 || relay.blocked() {
            Phase::Busy
        } else if matches!(relay.status, b'T' | b'E') && relay.quiet() && client_quiet {
            Phase::IdleInTransaction
        } else {
            Phase::Other
        };
        let answered = phase == Phase::Busy && relay.outstanding < self.outstanding;
        self.outstanding = relay.outstanding;
        if phase == self.phase && !answered {
            return;
        }
        self.phase = phase;
        let warn = self.warn_before(warn);
        self.warn_pending = phase == Phase::IdleInTransaction && warn.is_some();
        let limit = match phase {
            Phase::Busy => self.query,
            Phase::IdleInTransaction => warn.or(self.idle_transaction),
            _ => None,
        };
        match limit {
            Some(limit) => {
                let now = tokio::time::Instant::now();
                self.since = Some(now);
                self.arm(now, limit, timer);
            }
            None => self.deadline = None,
        }
    }

    /// Sets the deadline to `now + limit`.
    pub(super) fn arm(
        &mut self,
        now: tokio::time::Instant,
        limit: Duration,
        mut timer: Pin<&mut Option<Sleep>>,
    ) {
        let at = now + limit;
        self.deadline = Some(at);
        match timer.as_mut().as_pin_mut() {
            None => timer.set(Some(tokio::time::sleep_until(at))),
            // A later deadline waits for a timer still to fire (no timer work now); a timer
            // set for an earlier moment that has passed, or for a later one, is moved.
            Some(sleep) if sleep.deadline() <= now || sleep.deadline() > at => sleep.reset(at),
            Some(_) => {}
        }
    }

    /// The timer fired: what it means now.
    pub(super) fn expired(&mut self, mut timer: Pin<&mut Option<Sleep>>) -> Expired {
        let Some(at) = self.deadline else { return Expired::No };
        let now = tokio::time::Instant::now();
        if now < at {
            if let Some(sleep) = timer.as_pin_mut() {
                sleep.reset(at);
            }
            return Expired::No;
        }
        self.deadline = None;
        match self.phase {
            Phase::Busy => Expired::Query,
            Phase::IdleInTransaction if self.warn_pending => {
                // The warning; the timeout (if any) is next, counted from the same start.
                self.warn_pending = false;
                let since = self.since.unwrap_or(now);
                if let Some(limit) = self.idle_transaction {
                    self.deadline = Some(since + limit);
                    if let Some(sleep) = timer.as_mut().as_pin_mut() {
                        sleep.reset(since + limit);
                    }
                }
                Expired::IdleWarn(now - since)
            }
            Phase::IdleInTransaction if self.idle_transaction.is_some() => {
                Expired::IdleTransaction(self.since.map(|s| now - s).unwrap_or_default())
            }
            Phase::IdleInTransaction => Expired::No,
            Phase::Cancelling => Expired::Cancel,
            Phase::Other => Expired::No,
        }
    }

    /// The server answered everything after the proxy's cancel. Waits (within the deadline)
    /// for the cancel request to have reached Postgres, so that it cannot hit a later
    /// statement; if that is not known, the server is doomed.
    pub(super) async fn cancel_settled(&mut self) {
        if let Some(handle) = self.cancel.take() {
            let until = self.deadline.unwrap_or_else(tokio::time::Instant::now);
            let delivered = matches!(tokio::time::timeout_at(until, handle).await, Ok(Ok(Ok(()))));
            self.doomed |= !delivered;
        }
        self.phase = Phase::Other;
        self.deadline = None;
        self.reply = None;
    }
}
