//! A logged-in client: the loop that gets it a server per transaction (or for the whole
//! session), forwards messages both ways, and gives the server back clean.
//!
//! This file holds the session's state and its outer loop: waiting for a request, then
//! [`Session::with_server`]. The rest, one idea per file:
//! - [`checkout`]: getting a server from the pool (queue, wait timeout, cancel while queued);
//! - [`local`]: the messages answered without a server (named Parse when every server is
//!   busy, Close, Flush, Sync);
//! - [`attached`]: the loop while a server is attached, and what ends it;
//! - [`timeouts`]: PGSIDECAR_QUERY_TIMEOUT and PGSIDECAR_IDLE_TRANSACTION_TIMEOUT as a state
//!   machine;
//! - [`follow`]: what follows the client between servers: settings, reported parameters,
//!   pinning, statistics, and giving the server back clean.
//!
//! May import what [`crate::client`] may; nothing here is used outside the session.

mod attached;
mod checkout;
mod follow;
mod local;
mod timeouts;

use checkout::Refused;
use timeouts::{Expired, Phase, Timeouts};
#[cfg(test)]
mod tests;

use super::handshake::Login;
use super::io::{poll_io, Half, IoError};
use super::relay::{read_whole, Relay, Statements, Stop, READ_HIGH, WRITE_HIGH};
use crate::cancel::{Activity, CancelSlot, ClientInfo, Registration};
use crate::config::PoolMode;
use crate::observe::stats::PoolerError;
use crate::params::TRACKED_REPORTED;
use crate::params::{self, Settings};
use crate::prepared::ClientStatements;
use crate::server::pool::Lease;
use crate::server::ServerError;
use crate::shared::Shared;
use crate::stream::Stream;
use crate::upstream::Upstream;
use crate::wire::frame::{split_frame, Header};
use crate::wire::messages::{self, PgError};
use crate::wire::tag;
use bytes::BytesMut;
use quanta::Instant;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Sleep;

/// How long a named Parse waits for a server while every server is busy before it is
/// acknowledged without one (see [`Session::parse_without_server`]): long enough that an
/// application's Parse practically always reaches a server, and so gets PostgreSQL's own
/// answer, short enough that a program stuck on its own connections goes on.
const PARSE_WAIT: Duration = Duration::from_secs(1);
/// How long the proxy's own clean-up statements (ROLLBACK, DISCARD ALL) may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Most bytes of the proxy's own answers held back to go out with the server's (a few dozen
/// ParseCompletes); past it they are written at once.
const HOLD_MAX: usize = 1024;
/// Read reservation while a client is idle: most requests are small, and an idle client
/// should cost little memory (the buffer grows for larger messages).
const IDLE_READ: usize = 1024;

/// After PGSIDECAR_QUERY_TIMEOUT: how long the server has to answer the cancel before it is
/// closed.
const CANCEL_GRACE: Duration = Duration::from_secs(2);
/// Longest wait for a client to take the error that ends its session on a timeout (it may
/// have stopped reading).
const CLIENT_FLUSH_LIMIT: Duration = Duration::from_secs(1);

/// Why a session ended or paused.
pub(super) enum Flow {
    /// Transaction mode: the server went back to the pool; wait for the next request.
    Released,
    /// The client is gone or was sent a FATAL error.
    End,
}

pub struct Session {
    shared: Arc<Shared>,
    upstream: Arc<Upstream>,
    client: Stream,
    crbuf: BytesMut,
    cwbuf: BytesMut,
    swbuf: BytesMut,
    cflush: bool,
    sflush: bool,
    /// Settings from the startup packet.
    startup_settings: Arc<Settings>,
    /// Settings the client currently has (shared with `startup_settings` until it changes one).
    settings: Arc<Settings>,
    /// ParameterStatus values the client has been told.
    told: Told,
    /// Custom (dotted) settings the client has set or reset, read back with the others.
    /// Boxed: few clients have any, and every idle client keeps this field (8 B, not 24 B).
    #[allow(clippy::box_collection)]
    custom: Option<Box<Vec<String>>>,
    registration: Option<Registration>,
    mode: PoolMode,
    /// This client's named prepared statements (transaction mode).
    statements: ClientStatements,
    rewrite: bool,
    /// Unnamed statements are rewritten too (PGSIDECAR_PREPARE_UNNAMED_STATEMENTS).
    unnamed: bool,
    /// Session state ties the client to its current server (transaction mode).
    pinned: bool,
    /// The proxy answered an error without a server: drop messages up to the next Sync.
    local_skip: bool,
    /// A named Parse waited [`PARSE_WAIT`] for a server: it is acknowledged without one.
    parse_without_server: bool,
    /// Statement timing; allocated while the client has something timed or remembered.
    timing: Option<Box<super::timing::Timing>>,
    /// How long this client waited for its current server.
    last_wait: Duration,
    /// Where servers arrive when this client waits in the pool's queue (made at its first wait).
    mailbox: Option<Arc<crate::server::pool::Mailbox>>,
    /// Slow-query thresholds and the log's rate limit.
    slow: Arc<crate::observe::slowlog::SlowLog>,
    /// Who this client is, for the registry (SHOW CLIENTS): its slot there, registered or not.
    info: Arc<CancelSlot>,
}

impl Drop for Session {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.pinned {
            self.shared.pinned.fetch_sub(1, Relaxed);
            self.upstream.counters.pinned.fetch_sub(1, Relaxed);
        }
        self.upstream.counters.clients.fetch_sub(1, Relaxed);
    }
}

/// A future boxed so that the session's own future, which every idle client keeps, stays
/// small: paths taken rarely (errors, settings, local answers) are allocated only when taken.
type Boxed<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The ParameterStatus values a client has been told: the pool's login values (shared by all
/// its clients) and this client's differences from them, so an idle client keeps no copy.
/// The differences are usually the client's own startup settings (its application_name),
/// and then they are the session's settings themselves, shared (see [`Told::share`]).
#[derive(Default)]
struct Told {
    base: Option<Arc<BTreeMap<String, String>>>,
    /// `None`: no differences.
    changed: Option<Arc<Settings>>,
}

impl Told {
    fn new(base: Arc<BTreeMap<String, String>>) -> Told {
        Told { base: Some(base), changed: None }
    }

    fn get(&self, name: &str) -> Option<&String> {
        self.changed.as_ref().and_then(|c| c.get(name)).or_else(|| self.base.as_ref()?.get(name))
    }

    fn insert(&mut self, name: &str, value: &str) {
        let changed = self.changed.as_ref().and_then(|c| c.get(name));
        if self.base.as_ref().and_then(|b| b.get(name)).is_some_and(|v| v == value) {
            if changed.is_some() {
                let c = self.changed.as_mut().expect("looked up above");
                Arc::make_mut(c).remove(name);
            }
        } else if changed.is_none_or(|v| v != value) {
            // Copied on write when shared with the session's settings.
            Arc::make_mut(self.changed.get_or_insert_with(Default::default))
                .insert(name.to_owned(), value.to_owned());
        }
    }

    /// Shares `settings` instead of an equal copy of the differences.
    fn share(&mut self, settings: &Arc<Settings>) {
        if self.changed.as_deref() == Some(&**settings) {
            self.changed = Some(settings.clone());
        }
    }
}

/// What [`Session::answer_locally`] did.
pub(super) enum Local {
    Answered,
    NeedServer,
    End,
}

/// What [`Session::server_for_request`] got.
pub(super) enum Got {
    Lease(Lease),
    Skipped,
    End,
}

/// A request the client sent while it had no server.
enum Request {
    Message,
    Terminate,
    Gone,
}

impl Session {
    pub fn new(shared: Arc<Shared>, login: Login) -> Session {
        let Login { stream, rbuf, greeting, upstream, settings, user, database, peer, .. } = login;
        let settings = Arc::new(settings);
        let mode = shared.config.pool.mode;
        upstream.counters.clients.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let info = ClientInfo {
            user,
            database,
            peer,
            connected_at: std::time::SystemTime::now(),
            tls: stream.is_tls(),
        };
        let info = CancelSlot::new(info, settings.get("application_name").map_or("", String::as_str));
        Session {
            info,
            timing: None,
            last_wait: Duration::ZERO,
            mailbox: None,
            slow: shared.slow_log.clone(),
            rewrite: mode == PoolMode::Transaction && shared.config.pool.max_prepared_statements > 0,
            unnamed: mode == PoolMode::Transaction
                && shared.config.pool.max_prepared_statements > 0
                && shared.config.pool.prepare_unnamed_statements,
            statements: ClientStatements::default(),
            pinned: false,
            local_skip: false,
            parse_without_server: false,
            mode,
            shared,
            upstream,
            client: stream,
            crbuf: rbuf,
            cwbuf: greeting,
            swbuf: BytesMut::new(),
            cflush: false,
            sflush: false,
            startup_settings: settings.clone(),
            settings,
            told: Told::default(),
            custom: None,
            registration: None,
        }
    }

    async fn flush_client(&mut self) -> bool {
        if self.cwbuf.is_empty() && !self.cflush {
            return true;
        }
        let ok = self.client.write_all(&self.cwbuf).await.is_ok() && self.client.flush().await.is_ok();
        self.cwbuf.clear();
        self.cflush = false;
        ok
    }

    /// Sends a FATAL (or ERROR) message and ends the session.
    fn fail(&mut self, error: PgError) -> Boxed<'_, ()> {
        Box::pin(async move {
            tracing::warn!(code = error.code, error = %error.message, "pooler_error");
            error.encode(&mut self.cwbuf);
            self.flush_client().await;
        })
    }

    fn fail_server<'a>(&'a mut self, error: &'a ServerError) -> Boxed<'a, ()> {
        Box::pin(async move {
            tracing::warn!(kind = error.kind(), error = %error, "server_error_to_client");
            error.encode_for_client(&mut self.cwbuf);
            self.flush_client().await;
        })
    }

    /// Waits for cancels forwarded to the current server to be done with, so that none can
    /// reach the next client of that server.
    async fn cancels_settled(&self) {
        if let Some(r) = &self.registration {
            r.slot.cancels_settled().await;
        }
    }

    /// PGSIDECAR_MAX_MESSAGE_SIZE (read from the configuration rather than kept in every
    /// session).
    fn max_message(&self) -> usize {
        self.shared.config.client.max_message_size
    }

    /// The client's address.
    pub fn peer(&self) -> crate::stream::Peer {
        self.info.peer
    }

    /// The client's application_name now (empty when it set none).
    fn app_name(&self) -> &str {
        self.settings.get("application_name").map_or("", String::as_str)
    }

    fn slot_set(&self, activity: Activity) {
        if let Some(r) = &self.registration {
            r.slot.set(activity);
        }
    }

    fn register(&self, fixed_pid: Option<i32>) -> Registration {
        self.shared.cancels.register(fixed_pid, self.info.clone())
    }

    /// Counts bytes read from the client (SHOW STATS total_received).
    fn received(&self, n: usize) {
        self.upstream.counters.bytes_from_clients.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Finish the login (AuthenticationOk is in the greeting) and serve the client until it
    /// leaves.
    pub async fn run(&mut self) {
        self.registration = Some(self.register(None));
        if self.mode == PoolMode::Session {
            return self.session_mode().await;
        }
        let login_params = match self.upstream.pool.login_params() {
            Some(p) => p,
            None => match self.first_login_params().await {
                Some(p) => p,
                None => return,
            },
        };
        self.greet(login_params);
        messages::ready_for_query(&mut self.cwbuf, b'I');
        // Transaction mode. The loop is here rather than in a function of its own: each level
        // of async fn adds its own state (~24 B) to the task of every idle client.
        loop {
            match self.wait_for_request().await {
                Request::Message => {}
                Request::Terminate | Request::Gone => return,
            }
            if self.rewrite && self.may_answer_locally() {
                match self.answer_locally().await {
                    Local::Answered => continue,
                    Local::NeedServer => {}
                    Local::End => return,
                }
            }
            match self.with_server().await {
                Flow::Released => continue,
                Flow::End => return,
            }
        }
    }

    /// Session mode: the client keeps one server from login to the end. Boxed, like every
    /// path that holds a server, so that the future an idle client keeps stays small.
    fn session_mode(&mut self) -> Boxed<'_, ()> {
        Box::pin(async move {
            let mut lease = match self.checkout_opened_with().await {
                Ok(lease) => lease,
                Err(flow) => return self.finish_refused(flow).await,
            };
            let conn = lease.conn();
            // The server was opened with the client's startup settings: its login says what
            // PostgreSQL tells the client (values as it shows them, notices), and RESET returns
            // to them. Nothing is left to apply.
            let params = Arc::new(conn.login_params.clone());
            self.cwbuf.extend_from_slice(&conn.login_notices);
            self.take_shown_values(&params);
            // In session mode the client keeps this server: show it the real pid.
            let (pid, active) = (
                conn.pid,
                Activity::Active {
                    target: self.upstream.pool.target.clone(),
                    server: conn.info(),
                    secret: conn.secret,
                },
            );
            // The slot's key changes: its first registration goes first.
            self.registration = None;
            self.registration = Some(self.register(Some(pid)));
            self.slot_set(active);
            self.greet(params);
            messages::ready_for_query(&mut self.cwbuf, b'I');
            let flow = Box::pin(self.attached(lease)).await;
            debug_assert!(matches!(flow, Flow::End));
        })
    }

    /// Session mode: the values of the client's settings as its server shows them (it was
    /// opened with them), for SHOW CLIENTS and the logs.
    fn take_shown_values(&mut self, shown: &BTreeMap<String, String>) {
        if shown.iter().any(|(n, v)| self.settings.get(n).is_some_and(|c| c != v)) {
            let settings = Arc::make_mut(&mut self.settings);
            for (name, value) in shown {
                if settings.get(name).is_some_and(|c| c != value) {
                    settings.insert(name.clone(), value.clone());
                }
            }
            if let Some(r) = &self.registration {
                r.slot.set_application_name(self.settings.get("application_name").map_or("", String::as_str));
            }
        }
    }

    /// The login's ParameterStatus messages (the client's own settings where it chose them,
    /// as PostgreSQL shows them) and BackendKeyData.
    fn greet(&mut self, login_params: Arc<BTreeMap<String, String>>) {
        let mut told = Told::new(login_params.clone());
        // One allocation for the whole greeting (ParameterStatus messages, BackendKeyData and
        // the ReadyForQuery after it) instead of the buffer doubling its way up.
        let size: usize = login_params.iter().map(|(n, v)| 7 + n.len() + v.len() * 2).sum();
        self.cwbuf.reserve(size + 32);
        for (name, value) in login_params.iter() {
            let value = match self.settings.get(name) {
                Some(v) => {
                    if v != value {
                        told.insert(name, v);
                    }
                    v
                }
                _ => value,
            };
            messages::parameter_status(&mut self.cwbuf, name, value);
        }
        told.share(&self.settings);
        self.told = told;
        let reg = self.registration.as_ref().expect("registered before the greeting");
        messages::backend_key_data(&mut self.cwbuf, reg.pid, reg.secret);
    }

    fn finish_refused(&mut self, refusal: Refused) -> Boxed<'_, ()> {
        Box::pin(async move {
            match refusal {
                Refused::Gone => {}
                Refused::Error(e) => self.fail(e).await,
                Refused::Server(e) => self.fail_server(&e).await,
            }
        })
    }

    /// Serves the client's request with a server: checkout, settings, relay. One boxed future
    /// (one allocation per transaction): these states are large, and boxed they exist only
    /// while a client is busy, so an idle client's task stays small. `Released` also when
    /// the request was answered with a pooler error and skipped.
    fn with_server(&mut self) -> Boxed<'_, Flow> {
        Box::pin(async move {
            let got = if self.rewrite && self.starts_with_named_parse() && !self.upstream.pool.has_room() {
                match self.server_for_parse().await {
                    Some(got) => got,
                    None => return self.parse_without_server().await,
                }
            } else {
                self.server_for_request().await
            };
            let mut lease = match got {
                Got::Lease(lease) => lease,
                Got::Skipped => return Flow::Released,
                Got::End => return Flow::End,
            };
            // Usually the server has the client's settings already: no statement, no future.
            let lease = if *self.settings == lease.conn().applied {
                lease
            } else {
                match self.apply_settings(lease).await {
                    Some(lease) => lease,
                    None => return Flow::End,
                }
            };
            for buf in [&mut self.cwbuf, &mut self.swbuf] {
                if buf.capacity() == 0 {
                    *buf = super::reuse::buffer();
                }
            }
            self.attached(lease).await
        })
    }

    /// The client's request starts with a Parse of a named statement.
    fn starts_with_named_parse(&self) -> bool {
        let b = &self.crbuf[..];
        b.first() == Some(&tag::PARSE) && b.get(crate::wire::frame::HEADER_LEN).is_some_and(|&c| c != 0)
    }

    /// Flushes pending output and waits until the client has sent the start of a message.
    async fn wait_for_request(&mut self) -> Request {
        if !self.flush_client().await {
            return Request::Gone;
        }
        // An idle client holds no buffers or timing state: they go to this thread's spares
        // and come back from there for its next request.
        if self.timing.as_ref().is_some_and(|t| t.is_empty()) {
            if let Some(t) = self.timing.take() {
                super::reuse::give_timing(t);
            }
        }
        for buf in [&mut self.cwbuf, &mut self.swbuf] {
            if buf.is_empty() && buf.capacity() > 0 {
                super::reuse::give_buffer(std::mem::take(buf));
            }
        }
        loop {
            // A request is ready once its first message is whole, when the relay reads that
            // kind of message whole (a Query, a Parse, a Bind): with only part of it here, a
            // server taken for it could only be given back unused, and the part read again.
            // The error is turned into its (boxed) answer before the await, so that neither it
            // nor the parse result is kept in this future, which is where idle clients wait.
            let mut need = 0;
            let invalid = match Header::parse(&self.crbuf, self.max_message()) {
                Ok(Some(h)) if h.tag == tag::TERMINATE => return Request::Terminate,
                Ok(Some(h)) if !crate::wire::is_frontend_tag(h.tag) => {
                    Some(crate::wire::frame::FrameError::UnknownType(h.tag))
                }
                Ok(Some(h)) if !read_whole(h.tag) || self.crbuf.len() >= h.total_len() => {
                    return Request::Message
                }
                Ok(Some(h)) => {
                    need = h.total_len();
                    None
                }
                Ok(None) => None,
                Err(e) => Some(e),
            };
            if let Some(e) = invalid {
                let answer = self.fail(PgError::fatal("08P01", format!("invalid message from client: {e}")));
                answer.await;
                return Request::Gone;
            }
            if self.crbuf.is_empty() {
                if self.crbuf.capacity() > 0 {
                    super::reuse::give_buffer(std::mem::take(&mut self.crbuf));
                }
                if self.client.readable().await.is_err() {
                    return Request::Gone;
                }
                self.crbuf = super::reuse::buffer();
            }
            if need > 0 {
                // Room grows with the bytes that arrive, not with the length the header claims.
                crate::wire::frame::grow_toward(&mut self.crbuf, need, IDLE_READ);
            } else {
                self.crbuf.reserve(IDLE_READ);
            }
            match self.client.read_buf(&mut self.crbuf).await {
                Ok(0) | Err(_) => return Request::Gone,
                Ok(n) => self.received(n),
            }
        }
    }

    /// Drops the client's current request after a non-fatal pooler error: the simple query,
    /// or the extended-protocol messages up to and including Sync; then ReadyForQuery.
    fn skip_request(&mut self) -> Boxed<'_, bool> {
        Box::pin(async move {
            loop {
                let max = self.max_message();
                match split_frame(&mut self.crbuf, max) {
                    Ok(Some((t, _))) => match t {
                        tag::QUERY | tag::FUNCTION_CALL | tag::SYNC => break,
                        tag::TERMINATE => return false,
                        _ => continue,
                    },
                    Ok(None) => {}
                    Err(e) => {
                        self.fail(PgError::fatal("08P01", format!("invalid message from client: {e}"))).await;
                        return false;
                    }
                }
                if !self.flush_client().await {
                    return false;
                }
                match self.client.read_buf(&mut self.crbuf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => self.received(n),
                }
            }
            messages::ready_for_query(&mut self.cwbuf, b'I');
            true
        })
    }
}
