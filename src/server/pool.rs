//! The bounded server pool of one upstream, in three parts: synchronous state behind a short
//! lock ([`State`]), the async side ([`Pool::checkout`] returning a [`Ticket`]), and the RAII
//! [`Lease`] whose drop discards a connection that was not given back cleanly.
//!
//! Waiters are served strictly first come, first served: a returned or newly opened
//! connection goes to the oldest waiter. When demand rises, up to `connect_parallelism`
//! connections are opened at once. A waiter that gives up (cancel, client gone) is removed by
//! dropping its ticket. PGSIDECAR_QUERY_WAIT_TIMEOUT is kept by the pool: as every waiter has
//! the same limit, the oldest waiter always has the nearest deadline, so one timer per pool
//! (a task that runs while anyone waits) serves them all, where a timer per waiter would be
//! registered and removed once per queued checkout.
//!
//! The admin console can pause a pool (checkouts queue up; PAUSE then closes every server
//! once idle, see [`Pool::disconnect_for_pause`]) and start a new generation (RECONNECT:
//! every older server is closed once idle): see [`control`]. Session mode opens servers with
//! its clients' startup settings: see [`startup`].
//!
//! Connections move between the idle list, tickets and leases as boxes: a lease is two
//! pointers, so the futures of the clients that hold one stay small, and a hand-over moves no
//! large struct.
#![allow(clippy::vec_box)]

use super::conn::{ServerConn, Target};
use super::ServerError;
use crate::config::PoolConfig;
use crate::observe::stats::CloseReason;
use quanta::Instant;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

mod control;
mod startup;

type Handoff = Result<Box<ServerConn>, ServerError>;

/// Longest wait for an idle server's answer to the check (the connect timeout if shorter).
const MAX_CHECK_WAIT: Duration = Duration::from_secs(2);
/// Failed checks in a row after which the checkout gives up with the last error.
const MAX_CHECK_ATTEMPTS: usize = 16;

const CLOSE_REASONS: usize = CloseReason::ALL.len();

struct Waiter {
    id: u64,
    since: Instant,
    mailbox: Arc<Mailbox>,
}

/// Where a queued checkout's server (or the pool's refusal) arrives. A client keeps one for
/// all its checkouts, so waiting in the queue allocates nothing; one ticket at a time uses it.
/// A waiter's ticket is alive while the waiter is in the queue (dropping the ticket leaves
/// the queue under the pool's lock), so a delivery always has a taker.
#[derive(Default)]
pub struct Mailbox(Mutex<Letter>);

#[derive(Default)]
struct Letter {
    handoff: Option<Handoff>,
    waker: Option<Waker>,
}

impl Mailbox {
    fn letter(&self) -> MutexGuard<'_, Letter> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn deliver(&self, handoff: Handoff) {
        let waker = {
            let mut l = self.letter();
            debug_assert!(l.handoff.is_none(), "one ticket at a time per mailbox");
            l.handoff = Some(handoff);
            l.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Handoff> {
        let mut l = self.letter();
        if let Some(h) = l.handoff.take() {
            return Poll::Ready(h);
        }
        if !l.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            l.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    fn take(&self) -> Option<Handoff> {
        self.letter().handoff.take()
    }
}

struct State {
    idle: Vec<Box<ServerConn>>,
    /// Connections out on leases (or in a mailbox on their way to a waiter).
    active: usize,
    connecting: usize,
    waiters: VecDeque<Waiter>,
    next_waiter: u64,
    max_size: usize,
    login_params: Option<Arc<BTreeMap<String, String>>>,
    closed: bool,
    /// PAUSE: no server is handed out or opened until RESUME, and servers given back are
    /// closed.
    paused: bool,
    /// Connections being closed by [`Pool::close_counted`]: PAUSE answers once none is left.
    closing: usize,
    /// The task that ends waits at PGSIDECAR_QUERY_WAIT_TIMEOUT is running.
    expiry_running: bool,
    /// Servers opened in an older generation are closed instead of reused (RECONNECT).
    generation: u64,
    opened_total: u64,
    /// Server connections closed, by [`CloseReason`].
    closed_by: [u64; CLOSE_REASONS],
}

impl State {
    fn total(&self) -> usize {
        self.idle.len() + self.active + self.connecting
    }

    fn note_closed(&mut self, reason: CloseReason, n: usize) {
        self.closed_by[reason as usize] += n as u64;
    }
}

/// Counts for the admin console and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub active: usize,
    pub idle: usize,
    pub connecting: usize,
    pub waiting: usize,
    pub max_size: usize,
    pub oldest_wait: Duration,
    pub paused: bool,
    pub opened_total: u64,
    pub closed_total: u64,
    /// Closed connections by [`CloseReason`].
    pub closed_by: [u64; CLOSE_REASONS],
    /// Idle servers checked before being handed out (failures are `closed_by` CheckFailed).
    pub checks_total: u64,
}

pub struct Pool {
    pub database: String,
    pub target: Arc<Target>,
    cfg: PoolConfig,
    state: Mutex<State>,
    /// Woken while the pool is paused and no server is out on a lease, whenever a server
    /// comes back, a connect ends or a close is done.
    drained: tokio::sync::Notify,
    checks: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("database", &self.database).finish_non_exhaustive()
    }
}

impl Pool {
    pub fn new(database: String, target: Arc<Target>, cfg: PoolConfig) -> Arc<Pool> {
        let max_size = cfg.size;
        Arc::new(Pool {
            database,
            target,
            cfg,
            state: Mutex::new(State {
                idle: Vec::new(),
                active: 0,
                connecting: 0,
                waiters: VecDeque::new(),
                next_waiter: 0,
                max_size,
                login_params: None,
                closed: false,
                paused: false,
                closing: 0,
                expiry_running: false,
                generation: 0,
                opened_total: 0,
                closed_by: [0; CLOSE_REASONS],
            }),
            drained: tokio::sync::Notify::new(),
            checks: Default::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock is never held across an await or user code, so poisoning means a bug in
        // this file; keep serving rather than cascade the panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    pub fn stats(&self) -> PoolStats {
        let s = self.lock();
        PoolStats {
            active: s.active,
            idle: s.idle.len(),
            connecting: s.connecting,
            waiting: s.waiters.len(),
            max_size: s.max_size,
            oldest_wait: s.waiters.front().map(|w| w.since.elapsed()).unwrap_or_default(),
            paused: s.paused,
            opened_total: s.opened_total,
            closed_total: s.closed_by.iter().sum(),
            closed_by: s.closed_by,
            checks_total: self.checks.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// A checkout now would not wait: a server is idle or may be opened, and no client is
    /// queued ahead.
    pub fn has_room(&self) -> bool {
        let s = self.lock();
        !s.paused && !s.closed && s.waiters.is_empty() && (!s.idle.is_empty() || s.total() < s.max_size)
    }

    /// The ParameterStatus values servers report at login, once one server has connected.
    pub fn login_params(&self) -> Option<Arc<BTreeMap<String, String>>> {
        self.lock().login_params.clone()
    }

    /// Changes the maximum number of servers. Shrinking closes idle servers first and lets
    /// active ones finish; nothing in flight is cut.
    pub fn set_max_size(self: &Arc<Self>, size: usize) {
        let mut doomed = Vec::new();
        {
            let mut s = self.lock();
            // Zero is allowed: a sidecar with no room in the shared budget queues its clients
            // until its peers release servers.
            s.max_size = size;
            while s.total() > s.max_size && !s.idle.is_empty() {
                doomed.push(s.idle.remove(0));
                s.note_closed(CloseReason::Shrink, 1);
            }
            self.spawn_connects(&mut s);
        }
        close_all(doomed);
    }

    /// Asks for a server. Ready at once when one is idle; otherwise the caller awaits the
    /// ticket (the server arrives in `mailbox`), and dropping the ticket leaves the queue.
    pub fn checkout(self: &Arc<Self>, mailbox: &Arc<Mailbox>) -> Ticket {
        let mut doomed = Vec::new();
        let mut s = self.lock();
        // One clock read for the idle-server decisions and the wait's start.
        let since = Instant::now();
        if let Some(conn) = self.take_idle(&mut s, &mut doomed, since) {
            s.active += 1;
            drop(s);
            close_all(doomed);
            return Ticket { pool: self.clone(), inner: TicketState::Ready(Some(conn)) };
        }
        let id = s.next_waiter;
        s.next_waiter += 1;
        s.waiters.push_back(Waiter { id, since, mailbox: mailbox.clone() });
        if let Some(limit) = self.cfg.query_wait_timeout {
            if !s.expiry_running {
                s.expiry_running = true;
                tokio::spawn(expire_waits(Arc::downgrade(self), limit));
            }
        }
        self.spawn_connects(&mut s);
        drop(s);
        close_all(doomed);
        Ticket { pool: self.clone(), inner: TicketState::Waiting { id, mailbox: mailbox.clone() } }
    }

    /// A server at once when one is idle and needs no check (the common case while the pool
    /// is not saturated): no queue entry, ticket or timer. `None` when the caller has to go
    /// through [`Pool::checkout_checked`].
    pub fn checkout_now(self: &Arc<Self>) -> Option<Lease> {
        let mut doomed = Vec::new();
        let mut s = self.lock();
        if !s.waiters.is_empty() {
            return None; // they come first
        }
        // One clock read for the lifetime and the idle-check decisions.
        let now = Instant::now();
        let taken = self.take_idle(&mut s, &mut doomed, now);
        // An idle server is never `fresh` (see `put_back_locked`): the check delay decides.
        let lease = match taken {
            Some(conn) if now.saturating_duration_since(conn.last_used) < self.cfg.server_check_delay => {
                s.active += 1;
                Some(Lease { conn: Some(conn), pool: self.clone() })
            }
            Some(conn) => {
                s.idle.push(conn); // back where it was, for the checked path
                None
            }
            None => None,
        };
        drop(s);
        close_all(doomed);
        lease
    }

    /// [`Pool::checkout`], then the check of a server that sat idle longer than
    /// PGSIDECAR_SERVER_CHECK_DELAY: an empty query with a bounded wait. A server that fails
    /// it is closed and the caller gets another one, without noticing. Dropping the future
    /// leaves the queue (or discards the server being checked).
    ///
    /// PGSIDECAR_QUERY_WAIT_TIMEOUT bounds the whole of it: the pool's timer ends the first
    /// wait in the queue, and a check, or a wait after a failed check, gets what is left.
    ///
    /// `started` is when the caller began to wait (it has read the clock already).
    pub async fn checkout_checked(
        self: &Arc<Self>,
        mailbox: Arc<Mailbox>,
        started: Instant,
    ) -> Result<Lease, ServerError> {
        let delay = self.cfg.server_check_delay;
        let left = || self.cfg.query_wait_timeout.map(|l| l.saturating_sub(started.elapsed()));
        // Every failure closes a server that was idle; servers opened meanwhile need no check,
        // so this ends quickly. The bound is for safety only.
        let mut attempts = 0;
        loop {
            let ticket = self.checkout(&mailbox);
            let mut lease = match left() {
                // The retry's place in the queue is new, so the pool's timer would give it
                // the whole limit again. A ticket dropped on the time-out leaves the queue.
                Some(left) if attempts > 0 => {
                    tokio::time::timeout(left, ticket).await.map_err(|_| ServerError::WaitTimeout)??
                }
                _ => ticket.await?,
            };
            let conn = lease.conn();
            // `fresh`: handed over straight from its login, it has not idled at all.
            if conn.fresh || conn.last_used.elapsed() < delay {
                return Ok(lease);
            }
            let mut limit = self.cfg.connect_timeout.min(MAX_CHECK_WAIT);
            if let Some(left) = left() {
                if left.is_zero() {
                    // The unchecked server is discarded with the lease.
                    return Err(ServerError::WaitTimeout);
                }
                limit = limit.min(left);
            }
            self.checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match conn.check(limit).await {
                Ok(()) => return Ok(lease),
                Err(e) => {
                    tracing::info!(
                        database = %self.database,
                        server_pid = conn.pid,
                        idle_ms = conn.last_used.elapsed().as_millis() as u64,
                        error = %e,
                        "server_check_failed"
                    );
                    lease.close_because(CloseReason::CheckFailed);
                    attempts += 1;
                    if attempts >= MAX_CHECK_ATTEMPTS {
                        return Err(e);
                    }
                }
            }
        }
    }

    fn expired(&self, conn: &ServerConn, now: Instant) -> bool {
        self.cfg.server_lifetime.is_some_and(|l| now.saturating_duration_since(conn.created) >= l)
    }

    /// An idle server that may be handed out now, closing unusable ones on the way; none
    /// while the pool is paused.
    fn take_idle(
        &self,
        s: &mut State,
        doomed: &mut Vec<Box<ServerConn>>,
        now: Instant,
    ) -> Option<Box<ServerConn>> {
        if s.paused {
            return None;
        }
        while let Some(mut conn) = s.idle.pop() {
            let reason = if conn.is_stale() {
                Some(CloseReason::Stale)
            } else if conn.generation != s.generation {
                Some(CloseReason::Reconnect)
            } else {
                self.expired(&conn, now).then_some(CloseReason::Lifetime)
            };
            match reason {
                Some(reason) => {
                    s.note_closed(reason, 1);
                    doomed.push(conn);
                }
                None => return Some(conn),
            }
        }
        None
    }

    /// Gives a connection counted as active to the oldest waiter; returns it when nobody
    /// waits.
    fn hand_over(s: &mut State, conn: Box<ServerConn>) -> Option<Box<ServerConn>> {
        match s.waiters.pop_front() {
            Some(w) => {
                w.mailbox.deliver(Ok(conn));
                None
            }
            None => Some(conn),
        }
    }

    /// Refuses, with [`ServerError::WaitTimeout`], every waiter that has waited `limit`; the
    /// time until the oldest remaining waiter's deadline, or `None` (and the expiry task ends)
    /// when nobody waits.
    fn expire(&self, limit: Duration, now: Instant) -> Option<Duration> {
        let mut s = self.lock();
        while let Some(w) = s.waiters.front() {
            let waited = now.saturating_duration_since(w.since);
            if waited < limit {
                return Some(limit - waited);
            }
            if let Some(w) = s.waiters.pop_front() {
                w.mailbox.deliver(Err(ServerError::WaitTimeout));
            }
        }
        s.expiry_running = false;
        None
    }

    /// One fewer server out on a lease; wakes a PAUSE waiting for the last one.
    fn lease_ended(&self, s: &mut State) {
        s.active -= 1;
        self.wake_pause(s);
    }

    /// Wakes a PAUSE waiting for the servers to be back or closed, when none is out.
    fn wake_pause(&self, s: &State) {
        if s.paused && s.active == 0 {
            self.drained.notify_waiters();
        }
    }

    /// Closes connections whose closing was counted in `closing` (under the lock, with the
    /// state change that doomed them), and counts them out once their sockets are shut.
    fn close_counted(self: &Arc<Self>, conns: Vec<Box<ServerConn>>) {
        let n = conns.len();
        if n == 0 {
            return;
        }
        let pool = self.clone();
        let done = move || {
            let mut s = pool.lock();
            s.closing -= n;
            pool.wake_pause(&s);
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(async move {
                for c in conns {
                    c.close().await;
                }
                done();
            });
        } else {
            drop(conns);
            done();
        }
    }

    /// Opens connections for waiters not yet covered, within the size and parallelism limits.
    fn spawn_connects(self: &Arc<Self>, s: &mut State) {
        if s.closed || s.paused {
            return;
        }
        while s.waiters.len() > s.connecting
            && s.connecting < self.cfg.connect_parallelism
            && s.total() < s.max_size
        {
            self.spawn_connect(s);
        }
    }

    fn spawn_connect(self: &Arc<Self>, s: &mut State) {
        s.connecting += 1;
        let generation = s.generation;
        let pool = self.clone();
        tokio::spawn(async move {
            let result = ServerConn::connect(&pool.target).await;
            pool.connected(result.map(|mut conn| {
                conn.generation = generation;
                conn
            }));
        });
    }

    fn connected(self: &Arc<Self>, result: Result<ServerConn, ServerError>) {
        let mut s = self.lock();
        s.connecting -= 1;
        match result {
            Ok(conn) => {
                s.opened_total += 1;
                if s.login_params.is_none() {
                    s.login_params = Some(Arc::new(conn.login_params.clone()));
                }
                tracing::debug!(database = %self.database, server_pid = conn.pid, "server_connected");
                s.active += 1;
                self.put_back_locked(s, Box::new(conn));
            }
            Err(e) => {
                tracing::warn!(database = %self.database, kind = e.kind(), error = %e, "server_connect_failed");
                // The server's own message goes to every waiter that no other attempt still
                // under way could serve, oldest first (at least one): a retry would most
                // likely fail the same way (a login refused, a server that does not answer),
                // and one attempt per waiter would multiply the delay.
                let uncovered = s.waiters.len().saturating_sub(s.connecting).max(1);
                for _ in 0..uncovered {
                    let Some(w) = s.waiters.pop_front() else { break };
                    w.mailbox.deliver(Err(e.clone()));
                }
                self.spawn_connects(&mut s);
                self.wake_pause(&s);
            }
        }
    }

    /// Gives a connection back: to the oldest waiter, or to the idle list.
    fn put_back(self: &Arc<Self>, conn: Box<ServerConn>) {
        let s = self.lock();
        self.put_back_locked(s, conn);
    }

    fn put_back_locked(self: &Arc<Self>, mut s: MutexGuard<'_, State>, mut conn: Box<ServerConn>) {
        let now = Instant::now();
        let reason = if s.closed {
            Some(CloseReason::Shutdown)
        } else if s.paused {
            Some(CloseReason::Pause)
        } else if conn.generation != s.generation {
            Some(CloseReason::Reconnect)
        } else if self.expired(&conn, now) {
            Some(CloseReason::Lifetime)
        } else {
            (s.total() > s.max_size).then_some(CloseReason::Shrink)
        };
        if let Some(reason) = reason {
            s.closing += 1;
            self.lease_ended(&mut s);
            s.note_closed(reason, 1);
            self.spawn_connects(&mut s);
            drop(s);
            self.close_counted(vec![conn]);
            return;
        }
        conn.last_used = now;
        conn.trim();
        if !s.paused {
            match Self::hand_over(&mut s, conn) {
                None => {
                    // A connect that just ended here (or a server some waiter did not need)
                    // leaves room for the next connect while more clients wait than connects
                    // are under way: growth must not stall at the first batch.
                    self.spawn_connects(&mut s);
                    return;
                }
                Some(back) => conn = back,
            }
        }
        self.lease_ended(&mut s);
        // Idle from now on: the check delay applies to it like to any other server, even if no
        // client has used it yet (opened for PGSIDECAR_MIN_POOL_SIZE, or its waiter left).
        conn.fresh = false;
        s.idle.push(conn);
    }

    /// A leased connection that cannot be reused: forget it and replace it if needed.
    /// `closing` is 1 when the caller then closes it with [`Pool::close_counted`].
    fn discard(self: &Arc<Self>, reason: CloseReason, closing: usize) {
        let mut s = self.lock();
        s.closing += closing;
        self.lease_ended(&mut s);
        s.note_closed(reason, 1);
        self.spawn_connects(&mut s);
    }

    fn leave_queue(self: &Arc<Self>, id: u64, mailbox: &Mailbox) {
        {
            let mut s = self.lock();
            if let Some(at) = s.waiters.iter().position(|w| w.id == id) {
                s.waiters.remove(at);
                return;
            }
        }
        // Already served: a connection may be waiting in the mailbox.
        if let Some(Ok(conn)) = mailbox.take() {
            self.put_back(conn);
        }
    }

    /// Closes idle servers past their idle timeout or lifetime (keeping the minimum) and opens
    /// servers up to the minimum. Called periodically.
    pub fn maintain(self: &Arc<Self>) {
        let mut doomed = Vec::new();
        {
            let mut s = self.lock();
            let min = self.cfg.min_size.min(s.max_size);
            let idle_timeout = self.cfg.server_idle_timeout;
            let mut i = 0;
            while i < s.idle.len() {
                let conn = &mut s.idle[i];
                let too_idle = idle_timeout.is_some_and(|t| conn.last_used.elapsed() >= t);
                let stale = conn.is_stale();
                let expired = self.expired(&s.idle[i], Instant::now());
                if stale || expired || (too_idle && s.total() > min) {
                    doomed.push(s.idle.remove(i));
                    let reason = if stale {
                        CloseReason::Stale
                    } else if expired {
                        CloseReason::Lifetime
                    } else {
                        CloseReason::IdleTimeout
                    };
                    s.note_closed(reason, 1);
                } else {
                    i += 1;
                }
            }
            while !s.closed && !s.paused && s.total() < min && s.connecting < self.cfg.connect_parallelism {
                self.spawn_connect(&mut s);
            }
        }
        close_all(doomed);
    }

    /// Stops handing out servers and closes the idle ones; active ones close when returned.
    pub fn close(self: &Arc<Self>) {
        let doomed = {
            let mut s = self.lock();
            s.closed = true;
            let n = s.idle.len();
            s.note_closed(CloseReason::Shutdown, n);
            std::mem::take(&mut s.idle)
        };
        close_all(doomed);
    }
}

/// Ends waits at PGSIDECAR_QUERY_WAIT_TIMEOUT while anyone waits: sleeps until the oldest
/// waiter's deadline, refuses the waiters past it, and repeats; ends when the queue is empty
/// (the next waiter starts it again) or the pool is gone.
async fn expire_waits(pool: std::sync::Weak<Pool>, limit: Duration) {
    /// Clears the pool's flag if the task is dropped before it ends by itself (runtime
    /// shutdown), so that a later waiter starts a new one.
    struct Running {
        pool: std::sync::Weak<Pool>,
        ended: bool,
    }
    impl Drop for Running {
        fn drop(&mut self) {
            if let (false, Some(pool)) = (self.ended, self.pool.upgrade()) {
                pool.lock().expiry_running = false;
            }
        }
    }
    let mut running = Running { pool, ended: false };
    loop {
        let next = match running.pool.upgrade() {
            Some(pool) => pool.expire(limit, Instant::now()),
            None => None,
        };
        let Some(next) = next else {
            // `expire` cleared the flag under the pool's lock.
            running.ended = true;
            return;
        };
        tokio::time::sleep(next).await;
    }
}

fn close_all(conns: Vec<Box<ServerConn>>) {
    if conns.is_empty() {
        return;
    }
    if tokio::runtime::Handle::try_current().is_ok() {
        tokio::spawn(async move {
            for c in conns {
                c.close().await;
            }
        });
    }
}

enum TicketState {
    Ready(Option<Box<ServerConn>>),
    Waiting { id: u64, mailbox: Arc<Mailbox> },
    Done,
}

/// A place in a pool's queue. Resolves to a [`Lease`]; dropping it leaves the queue.
pub struct Ticket {
    pool: Arc<Pool>,
    inner: TicketState,
}

impl Future for Ticket {
    type Output = Result<Lease, ServerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let result = match &mut this.inner {
            TicketState::Ready(conn) => Ok(conn.take().expect("ticket polled after completion")),
            // A waiter leaves the queue only with a delivery (or with its ticket's drop).
            TicketState::Waiting { mailbox, .. } => match mailbox.poll_take(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => r,
            },
            TicketState::Done => panic!("ticket polled after completion"),
        };
        this.inner = TicketState::Done;
        Poll::Ready(result.map(|conn| Lease { conn: Some(conn), pool: this.pool.clone() }))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.inner, TicketState::Done) {
            TicketState::Waiting { id, mailbox } => self.pool.leave_queue(id, &mailbox),
            TicketState::Ready(Some(conn)) => self.pool.put_back(conn),
            _ => {}
        }
    }
}

/// A server on loan. [`Lease::release`] returns it; dropping the lease any other way
/// discards the connection, so a server in an unknown state never reaches another client.
pub struct Lease {
    conn: Option<Box<ServerConn>>,
    pool: Arc<Pool>,
}

impl Lease {
    pub fn conn(&mut self) -> &mut ServerConn {
        self.conn.as_mut().expect("lease holds a connection until consumed")
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Returns a clean, idle connection to the pool.
    pub fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.fresh = false;
            self.pool.put_back(conn);
        }
    }

    /// Closes the connection politely (Terminate) and frees its slot.
    pub fn close(self) {
        self.close_because(CloseReason::Broken);
    }

    /// [`Lease::close`], counted under `reason`.
    pub fn close_because(mut self, reason: CloseReason) {
        if let Some(conn) = self.conn.take() {
            self.pool.discard(reason, 1);
            self.pool.close_counted(vec![conn]);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.conn.take().is_some() {
            self.pool.discard(CloseReason::Broken, 0);
        }
    }
}
