//! A logged-in client: the loop that gets it a server per transaction (or for the whole
//! session), forwards messages both ways, and gives the server back clean.

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

/// Session state that pins a client to its server in transaction mode; one row, one count.
/// Temporary objects of every kind (tables, sequences, views, types, domains, functions,
/// operators, collations, ...) are counted by their dependency on the session's temporary
/// schema, which PostgreSQL records for each of them and follows to drop them at the end of
/// the session (an index scan of pg_depend; no temporary schema, no rows).
const SESSION_STATE_QUERY: &str = "SELECT (SELECT count(*) FROM pg_catalog.pg_prepared_statements WHERE from_sql) \
     + (SELECT count(*) FROM pg_catalog.pg_listening_channels()) \
     + (SELECT count(*) FROM pg_catalog.pg_cursors WHERE is_holdable) \
     + (SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()) \
     + (SELECT count(*) FROM pg_catalog.pg_depend WHERE refclassid = 'pg_catalog.pg_namespace'::pg_catalog.regclass \
        AND refobjid = pg_catalog.pg_my_temp_schema())";

/// Why a session ended or paused.
enum Flow {
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
enum Local {
    Answered,
    NeedServer,
    End,
}

/// What [`Session::server_for_request`] got.
enum Got {
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
    pub fn peer(&self) -> std::net::SocketAddr {
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

    /// Session mode: a server opened with the client's startup settings, so that RESET
    /// returns to them as in PostgreSQL. An idle one opened with the same settings, else a new
    /// one in a free slot, else the server the pool gives, replaced in its slot.
    fn checkout_opened_with(&mut self) -> Boxed<'_, Result<Lease, Refused>> {
        Box::pin(async move {
            let pool = self.upstream.pool.clone();
            let startup = self.startup_settings.clone();
            let slot =
                self.registration.as_ref().map(|r| r.slot.clone()).expect("registered before checkout");
            let mut lease = match pool.checkout_opened_with(&startup) {
                Some(lease) => lease,
                None => match pool.open_with(&startup).await {
                    Some(opened) => opened.map_err(Refused::Server)?,
                    None => {
                        let mut lease = self.checkout().await?;
                        if *lease.conn().startup == *startup {
                            return Ok(lease);
                        }
                        lease.reopen(&startup).await.map_err(Refused::Server)?
                    }
                },
            };
            mark_active(&slot, &pool, &mut lease);
            Ok(lease)
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

    /// A server for a request that starts with a named Parse, waited for [`PARSE_WAIT`] at
    /// most (`None`: none came). Boxed: a timer would enlarge every transaction's future.
    fn server_for_parse(&mut self) -> Boxed<'_, Option<Got>> {
        Box::pin(async move {
            // Only the wait for a server is bounded, not the answer to a refusal.
            let checked_out = tokio::time::timeout(PARSE_WAIT, self.checkout()).await.ok()?;
            Some(self.got_server(checked_out).await)
        })
    }

    /// A named Parse waited [`PARSE_WAIT`] for a server while every server was busy: it is
    /// acknowledged without one, with the messages after it that need none. A program that
    /// prepares synchronously on one connection while its other connections hold every server
    /// in a transaction (pgbench -M prepared, one thread for many clients) would otherwise
    /// wait until the query wait timeout. The text is then checked when the statement is
    /// first bound or described: an error in it arrives there.
    fn parse_without_server(&mut self) -> Boxed<'_, Flow> {
        Box::pin(async move {
            if let Some(r) = &self.registration {
                r.slot.set(Activity::Idle);
            }
            self.upstream.counters.parses_without_server.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.parse_without_server = true;
            let local = self.answer_locally().await;
            self.parse_without_server = false;
            match local {
                Local::Answered | Local::NeedServer => Flow::Released,
                Local::End => Flow::End,
            }
        })
    }

    /// A server for the client's request; a pooler error that leaves the connection usable
    /// (the wait timeout, a cancel while queued) is answered and the request skipped.
    async fn server_for_request(&mut self) -> Got {
        let checked_out = self.checkout().await;
        self.got_server(checked_out).await
    }

    /// [`Session::server_for_request`] once the checkout has ended.
    async fn got_server(&mut self, checked_out: Result<Lease, Refused>) -> Got {
        match checked_out {
            Ok(lease) => Got::Lease(lease),
            Err(Refused::Error(e)) if e.severity == messages::Severity::Error => {
                tracing::warn!(code = e.code, error = %e.message, "pooler_error");
                e.encode(&mut self.cwbuf);
                if self.skip_request().await {
                    Got::Skipped
                } else {
                    Got::End
                }
            }
            Err(other) => {
                self.finish_refused(other).await;
                Got::End
            }
        }
    }

    /// The pool's login parameters, from a first server when the pool has none yet; `None`
    /// when the client was refused (and told).
    fn first_login_params(&mut self) -> Boxed<'_, Option<Arc<BTreeMap<String, String>>>> {
        Box::pin(async move {
            match self.checkout().await {
                Ok(mut lease) => {
                    let p = Arc::new(lease.conn().login_params.clone());
                    self.slot_set(Activity::Idle);
                    self.cancels_settled().await;
                    lease.release();
                    Some(p)
                }
                Err(flow) => {
                    self.finish_refused(flow).await;
                    None
                }
            }
        })
    }

    /// Whether the next message may be one [`Session::answer_locally`] answers. Checked
    /// before that future is allocated: most requests (a Query, an unnamed Parse) are not.
    /// When the bytes that tell are not in yet, it says yes and lets that function decide.
    fn may_answer_locally(&self) -> bool {
        use crate::wire::frame::HEADER_LEN;
        let b = &self.crbuf[..];
        self.local_skip
            || match b.first() {
                Some(&tag::SYNC | &tag::FLUSH) => true,
                // A named statement (its name's first byte is not the terminator).
                Some(&tag::PARSE) => b.get(HEADER_LEN).is_none_or(|&c| c != 0),
                // Close of a named statement.
                Some(&tag::CLOSE) => {
                    b.get(HEADER_LEN).is_none_or(|&c| c == b'S')
                        && b.get(HEADER_LEN + 1).is_none_or(|&c| c != 0)
                }
                _ => false,
            }
    }

    /// Answers, without a server, the messages that need none: a named Parse while every
    /// server is busy (the statement is prepared on a server when the client first binds or
    /// describes it, and an error in its text arrives then), Close of a
    /// managed statement, Flush, and Sync outside a transaction. Single-threaded clients that
    /// prepare synchronously while other connections of theirs hold servers (pgbench -M
    /// prepared) would otherwise wait for a server just to prepare.
    fn answer_locally(&mut self) -> Boxed<'_, Local> {
        Box::pin(async move {
            loop {
                let h = match Header::parse(&self.crbuf, self.max_message()) {
                    Ok(Some(h)) => h,
                    _ => return Local::NeedServer,
                };
                let local =
                    matches!(h.tag, tag::PARSE | tag::CLOSE | tag::SYNC | tag::FLUSH) || self.local_skip;
                if !local {
                    return Local::NeedServer;
                }
                while self.crbuf.len() < h.total_len() {
                    crate::wire::frame::grow_toward(&mut self.crbuf, h.total_len(), IDLE_READ);
                    match self.client.read_buf(&mut self.crbuf).await {
                        Ok(0) | Err(_) => return Local::End,
                        Ok(n) => self.received(n),
                    }
                }
                let msg = self.crbuf.split_to(h.total_len());
                let body = &msg[crate::wire::frame::HEADER_LEN..];
                let answered = match h.tag {
                    tag::SYNC => {
                        self.local_skip = false;
                        messages::ready_for_query(&mut self.cwbuf, b'I');
                        true
                    }
                    _ if self.local_skip => true,
                    tag::FLUSH => true,
                    // A named Parse goes to a server, so that the client gets PostgreSQL's
                    // answer (an error included) to the Parse itself, unless it waited
                    // PARSE_WAIT for one.
                    tag::PARSE if !self.parse_without_server => false,
                    tag::PARSE => match crate::prepared::parse_parts(body) {
                        Ok(p) if !p.name.is_empty() => {
                            if let Some(error) = self.statements.refuse_parse(p.name) {
                                error.encode(&mut self.cwbuf);
                                self.local_skip = true;
                            } else {
                                self.timing.get_or_insert_with(super::reuse::timing).parse(p.name, p.query);
                                let stmt = super::relay::managed_statement(p.query, p.types);
                                self.statements.insert(p.name.to_vec(), Arc::new(stmt));
                                self.cwbuf.extend_from_slice(b"1\0\0\0\x04");
                            }
                            true
                        }
                        Ok(_) => false,
                        Err(e) => {
                            self.fail(PgError::fatal("08P01", format!("invalid message from client: {e}")))
                                .await;
                            return Local::End;
                        }
                    },
                    _ => match crate::prepared::target(body, "Close") {
                        Ok((b'S', name)) if !name.is_empty() && self.statements.remove(name) => {
                            self.cwbuf.extend_from_slice(b"3\0\0\0\x04");
                            true
                        }
                        _ => false,
                    },
                };
                if !answered {
                    // Put it back for the server path.
                    let mut back = msg;
                    back.unsplit(std::mem::take(&mut self.crbuf));
                    self.crbuf = back;
                    return Local::NeedServer;
                }
                // Answered without a server, but not without limit: flush before more.
                if self.crbuf.len() < crate::wire::frame::HEADER_LEN || self.cwbuf.len() >= WRITE_HIGH {
                    return Local::Answered;
                }
            }
        })
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

    /// Waits in the pool's queue. Gives up on the wait timeout, on a cancel request for this
    /// client, or when the client disconnects; reads ahead from the client meanwhile.
    async fn checkout(&mut self) -> Result<Lease, Refused> {
        let pool = self.upstream.pool.clone();
        let slot = self.registration.as_ref().map(|r| r.slot.clone()).expect("registered before checkout");
        // The common case while the pool is not saturated: an idle server that needs no
        // check, taken without a queue entry, a timer or a cancel wait.
        if let Some(mut lease) = pool.checkout_now() {
            self.last_wait = Duration::ZERO;
            self.upstream.counters.wait_time.record(Duration::ZERO);
            mark_active(&slot, &pool, &mut lease);
            return Ok(lease);
        }
        self.checkout_queued(pool, slot).await
    }

    /// [`Session::checkout`] through the pool's queue: boxed, so that its queue entry and
    /// cancel wait do not enlarge every transaction's future (which then stays in malloc's
    /// per-thread cache).
    fn checkout_queued(
        &mut self,
        pool: Arc<crate::server::pool::Pool>,
        slot: Arc<CancelSlot>,
    ) -> Boxed<'_, Result<Lease, Refused>> {
        Box::pin(async move {
            let notified = slot.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // quanta's clock: cheaper to read than the system's.
            let started = Instant::now();
            slot.set(Activity::Waiting { since: started });
            let mailbox = self.mailbox.get_or_insert_with(Default::default).clone();
            let ticket = pool.checkout_checked(mailbox, started);
            tokio::pin!(ticket);
            // No timer here: the pool ends waits at PGSIDECAR_QUERY_WAIT_TIMEOUT (one timer
            // per pool, not one per queued checkout).
            let result = loop {
                let may_read = self.crbuf.len() < READ_HIGH;
                tokio::select! {
                    biased;
                    r = &mut ticket => break r.map_err(|e| refused_waiting(e, &pool, started)),
                    _ = &mut notified => {
                        break Err(Refused::Error(PgError::error("57014", "canceling statement due to user request")));
                    }
                    r = self.client.read_buf(&mut self.crbuf), if may_read => {
                        match r {
                            Ok(0) | Err(_) => break Err(Refused::Gone),
                            Ok(n) => self.received(n),
                        }
                    }
                }
            };
            // The ticket (pinned above) leaves the queue when this function returns, with no
            // await in between.
            self.last_wait = started.elapsed();
            self.upstream.counters.wait_time.record(self.last_wait);
            match &result {
                Err(Refused::Error(e)) if e.code == "53300" => {
                    self.upstream.counters.error(PoolerError::WaitTimeout)
                }
                Err(Refused::Server(_)) => self.upstream.counters.error(PoolerError::ServerConnect),
                Err(Refused::Error(e)) if e.code == "57014" => {
                    self.upstream.counters.cancels.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                _ => {}
            }
            match result {
                Ok(mut lease) => {
                    mark_active(&slot, &pool, &mut lease);
                    Ok(lease)
                }
                Err(e) => {
                    slot.set(Activity::Idle);
                    Err(e)
                }
            }
        })
    }

    /// Makes the server's session settings the client's. On failure the client has been
    /// told, and the session must end.
    fn apply_settings(&mut self, mut lease: Lease) -> Boxed<'_, Option<Lease>> {
        Box::pin(async move {
            let conn = lease.conn();
            let Some(sql) = params::sync_statement(&self.settings, &conn.applied) else {
                return Some(lease);
            };
            let mut reported = Vec::new();
            match tokio::time::timeout(CLEANUP_TIMEOUT, conn.exec(&sql, &mut reported)).await {
                Ok(Ok(_)) => {
                    conn.applied = Settings::clone(&self.settings);
                    self.tell(&reported);
                    Some(lease)
                }
                Ok(Err(e @ ServerError::Postgres { .. })) => {
                    // The client's own settings were refused (a bad TimeZone, say); the server
                    // rolled the statement back and can serve others, once a cancel the
                    // client sent meanwhile can no longer reach their statements.
                    self.slot_set(Activity::Idle);
                    self.cancels_settled().await;
                    lease.release();
                    self.fail_server(&e).await;
                    None
                }
                Ok(Err(e)) => {
                    self.fail_server(&e).await;
                    None
                }
                Err(_) => {
                    self.fail(PgError::fatal(
                        "08006",
                        "pgsidecar: the server did not answer while settings were applied",
                    ))
                    .await;
                    None
                }
            }
        })
    }

    /// Forwards ParameterStatus values the client has not seen yet.
    fn tell(&mut self, reported: &[(String, String)]) {
        for (name, value) in reported {
            if self.told.get(name) != Some(value) {
                messages::parameter_status(&mut self.cwbuf, name, value);
                self.told.insert(name, value);
            }
        }
    }

    /// Serves the client with a server attached until it can be released (transaction
    /// mode) or either side leaves.
    async fn attached(&mut self, mut lease: Lease) -> Flow {
        // Expected answers are followed in both modes: an error makes Postgres skip what was
        // pipelined up to the next Sync, simple queries included, and only the queue of
        // requests tells which ReadyForQuery is still owed.
        let mut relay = Relay::new();
        let max = self.max_message();
        let cfg = &self.shared.config.pool;
        let mut t = Timeouts::new(cfg.query_timeout, cfg.idle_transaction_timeout);
        // One timer for the whole attachment, created only once a deadline is needed; it lives
        // in this (boxed) future, so it costs no allocation of its own.
        let mut timer = std::pin::pin!(None::<tokio::time::Sleep>);
        let mut client_owed = false;
        // Answers the proxy gave itself (a ParseComplete for a statement the server already
        // holds) wait for the server's answers to the same batch, which the server owes: one
        // write to the client per transaction instead of two.
        let mut hold_client = false;
        loop {
            let conn = lease.conn();
            if t.phase == Phase::Cancelling && t.reply.is_some() && !conn.rbuf.is_empty() {
                // The server's answer to the proxy's cancel names the query timeout instead.
                let reply = t.reply.as_deref().unwrap_or_default();
                if replace_cancel_error(&mut conn.rbuf, relay.server_partial(), reply) {
                    t.reply = None;
                }
            }
            let mut st = Statements {
                timing: self.timing.get_or_insert_with(super::reuse::timing),
                client: &mut self.statements,
                server: &mut conn.statements,
                rewrite: self.rewrite,
                unnamed: self.unnamed,
                pinned: self.pinned,
            };
            let before = self.cwbuf.len();
            let c_stop =
                match relay.client_to_server(&mut self.crbuf, &mut self.swbuf, &mut self.cwbuf, max, &mut st)
                {
                    Ok(stop) => stop,
                    Err(e) => {
                        self.fail(PgError::fatal("08P01", format!("invalid message from client: {e}"))).await;
                        return Flow::End; // lease dropped: the server is discarded
                    }
                };
            let local = self.cwbuf.len();
            let was_blocked = relay.blocked();
            let s_stop = match relay.server_to_client(&mut conn.rbuf, &mut self.cwbuf, max, &mut st) {
                Ok(stop) => stop,
                Err(e) => {
                    self.fail(PgError::fatal(
                        "08006",
                        format!("pgsidecar: invalid message from the server: {e}"),
                    ))
                    .await;
                    return Flow::End;
                }
            };
            if !self.swbuf.is_empty() {
                // The request goes to Postgres before anything else is done with it (and only
                // to a server whose output made sense so far).
                super::io::write_now(&mut conn.io, &mut self.swbuf, &mut self.sflush);
            }
            if self.cwbuf.len() != local || relay.outstanding == 0 || self.cwbuf.len() > HOLD_MAX {
                hold_client = false;
            } else if before == 0 && local > 0 {
                hold_client = true;
            }
            // Unless the proxy still has to look at the server's session state first (pinning,
            // settings, reported parameters such as application_name): a client that has its
            // answer sees the proxy's view (SHOW CLIENTS, the pinned gauge) up to date.
            if !self.cwbuf.is_empty()
                && !hold_client
                && relay.state_hint.is_none()
                && !relay.settings_changed
                && relay.reported.is_empty()
            {
                super::io::write_now(&mut self.client, &mut self.cwbuf, &mut self.cflush);
            }
            if !relay.reported.is_empty() {
                self.note_reported(&mut relay, &mut lease);
            }
            self.record_finished();
            if t.phase == Phase::Cancelling && relay.outstanding == 0 && !relay.blocked() {
                t.cancel_settled().await;
            }
            let conn = lease.conn();
            let drained = self.swbuf.is_empty() && conn.rbuf.is_empty() && !self.sflush;
            if self.mode == PoolMode::Transaction && relay.at_rest() && drained && !relay.server_fatal {
                if relay.settings_changed {
                    self.note_custom(&mut relay);
                    if !Box::pin(self.read_back_settings(&mut lease)).await {
                        return Flow::End;
                    }
                    relay.settings_changed = false;
                }
                if let Some(statement) = relay.state_hint.take() {
                    match Box::pin(self.session_state(&mut lease)).await {
                        Some(n) => self.set_pinned(n > 0, &statement),
                        None => return Flow::End,
                    }
                }
                if !self.pinned {
                    self.slot_set(Activity::Idle);
                    if t.doomed {
                        lease.close();
                    } else {
                        self.cancels_settled().await;
                        lease.release();
                    }
                    if relay.terminated {
                        self.flush_client().await;
                        return Flow::End;
                    }
                    return Flow::Released;
                }
            }
            let conn = lease.conn();
            if relay.terminated && drained {
                self.flush_client().await;
                self.slot_set(Activity::Idle);
                Box::pin(self.give_back(lease, &relay, t.doomed)).await;
                return Flow::End;
            }
            if t.enabled {
                t.update(&relay, self.crbuf.is_empty(), timer.as_mut());
            }
            if s_stop == Stop::Rest && self.mode == PoolMode::Session {
                // A session keeps its buffers from one transaction to the next: those a large
                // message grew are freed once empty.
                for buf in [&mut self.crbuf, &mut self.cwbuf, &mut self.swbuf, &mut conn.rbuf] {
                    crate::wire::frame::shrink_empty(buf, super::reuse::MAX_SPARE_CAPACITY);
                }
            }
            // Wait on the sockets only when neither direction can move anything more: one that
            // stopped on its full output moves again once the writes above made room, and one
            // that stopped at a ReadyForQuery left what followed it unread.
            // A client held back (answers capped, a statement being described for it) moves
            // again once the server's answer freed it, though no socket may deliver more.
            if (c_stop == Stop::Output && self.swbuf.len() < WRITE_HIGH)
                || (s_stop == Stop::Output && self.cwbuf.len() < WRITE_HIGH)
                || (s_stop == Stop::Rest && !conn.rbuf.is_empty())
                || (was_blocked && !relay.blocked() && !self.crbuf.is_empty())
            {
                continue;
            }
            let client_may_read = !relay.terminated
                && self.crbuf.len() < relay.client_read_limit()
                && self.swbuf.len() < WRITE_HIGH;
            let server_may_read =
                conn.rbuf.len() < relay.server_read_limit() && self.cwbuf.len() < WRITE_HIGH;
            let mut client = Half {
                io: &mut self.client,
                rbuf: &mut self.crbuf,
                wbuf: &mut self.cwbuf,
                needs_flush: &mut self.cflush,
                may_read: client_may_read,
                hold: hold_client,
                limit: relay.client_read_limit(),
            };
            let mut server = Half {
                io: &mut conn.io,
                rbuf: &mut conn.rbuf,
                wbuf: &mut self.swbuf,
                needs_flush: &mut self.sflush,
                may_read: server_may_read,
                hold: false,
                limit: relay.server_read_limit(),
            };
            let armed = t.deadline.is_some();
            let event = std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = poll_io(cx, &mut client, &mut server, &mut client_owed) {
                    return Poll::Ready(Some(r));
                }
                match timer.as_mut().as_pin_mut() {
                    Some(sleep) if armed => sleep.poll(cx).map(|()| None),
                    _ => Poll::Pending,
                }
            })
            .await;
            let Some(event) = event else {
                match t.expired(timer.as_mut()) {
                    Expired::No => {}
                    Expired::Query => self.start_cancel(&mut t, &mut lease, timer.as_mut()),
                    Expired::IdleTransaction(idle) => {
                        return Box::pin(self.idle_transaction_expired(lease, &relay, idle, t.doomed)).await;
                    }
                    Expired::Cancel => return Box::pin(self.cancel_expired(lease, &relay, &t)).await,
                }
                continue;
            };
            match event {
                Ok(ev) => {
                    self.count_relayed(ev);
                    if ev.client_read == Some(0) {
                        tracing::debug!("client_gone_with_server");
                        self.slot_set(Activity::Idle);
                        self.swbuf.clear();
                        Box::pin(self.give_back(lease, &relay, t.doomed)).await;
                        return Flow::End;
                    }
                    if ev.server_read == Some(0) {
                        // Forward whatever the server said last (often a FATAL), then end.
                        let conn = lease.conn();
                        let mut st = Statements {
                            timing: self.timing.get_or_insert_with(super::reuse::timing),
                            client: &mut self.statements,
                            server: &mut conn.statements,
                            rewrite: self.rewrite,
                            unnamed: self.unnamed,
                            pinned: self.pinned,
                        };
                        let _ = relay.server_to_client(&mut conn.rbuf, &mut self.cwbuf, max, &mut st);
                        self.slot_set(Activity::Idle);
                        drop(lease);
                        if !relay.server_fatal {
                            self.fail_server(&ServerError::Closed).await;
                        } else {
                            self.flush_client().await;
                        }
                        return Flow::End;
                    }
                }
                Err(IoError::Client(_)) => {
                    self.slot_set(Activity::Idle);
                    self.swbuf.clear();
                    Box::pin(self.give_back(lease, &relay, t.doomed)).await;
                    return Flow::End;
                }
                Err(IoError::Server(e)) => {
                    self.slot_set(Activity::Idle);
                    drop(lease);
                    self.fail_server(&ServerError::io(e)).await;
                    return Flow::End;
                }
            }
        }
    }

    /// PGSIDECAR_QUERY_TIMEOUT passed with the server's answer incomplete: ask Postgres to
    /// cancel the statement, and give the server [`CANCEL_GRACE`] to answer.
    fn start_cancel(&self, t: &mut Timeouts, lease: &mut Lease, timer: Pin<&mut Option<Sleep>>) {
        let conn = lease.conn();
        let limit = t.query.unwrap_or_default();
        tracing::warn!(
            database = %self.upstream.pool.database,
            user = %self.info.user,
            server_pid = conn.pid,
            timeout_ms = limit.as_millis() as u64,
            "query_timeout_cancel"
        );
        let target = self.upstream.pool.target.clone();
        let (pid, secret) = (conn.pid, conn.secret);
        t.cancel = Some(tokio::spawn(async move { target.cancel(pid, secret, CANCEL_GRACE).await }));
        let mut reply = BytesMut::new();
        PgError::error(
            "57014",
            format!(
                "pgsidecar: canceling statement: the server gave no complete answer within {limit:?} (PGSIDECAR_QUERY_TIMEOUT)"
            ),
        )
        .with_hint(
            "if statements legitimately run this long, raise PGSIDECAR_QUERY_TIMEOUT; to bound them, set statement_timeout below it so Postgres ends them itself",
        )
        .encode(&mut reply);
        t.reply = Some(reply.freeze());
        t.phase = Phase::Cancelling;
        t.arm(tokio::time::Instant::now(), CANCEL_GRACE, timer);
    }

    /// The server answered neither the request within PGSIDECAR_QUERY_TIMEOUT nor the cancel
    /// after it: close it (its slot is freed) and end the session with 08006.
    async fn cancel_expired(&mut self, lease: Lease, relay: &Relay, t: &Timeouts) -> Flow {
        let limit = t.query.unwrap_or_default();
        tracing::warn!(
            database = %self.upstream.pool.database,
            user = %self.info.user,
            timeout_ms = limit.as_millis() as u64,
            grace_ms = CANCEL_GRACE.as_millis() as u64,
            "query_timeout_server_closed"
        );
        self.slot_set(Activity::Idle);
        lease.close();
        // Mid-message the client could not read an error: closing tells it enough.
        if relay.server_partial() == 0 {
            PgError::fatal(
                "08006",
                format!(
                    "pgsidecar: the server gave no answer within {limit:?} (PGSIDECAR_QUERY_TIMEOUT), nor within {CANCEL_GRACE:?} of a cancel request; its connection was closed"
                ),
            )
            .with_hint(
                "check the database's health and the network to it; if statements legitimately run this long, raise PGSIDECAR_QUERY_TIMEOUT",
            )
            .encode(&mut self.cwbuf);
        }
        let _ = tokio::time::timeout(CLIENT_FLUSH_LIMIT, self.flush_client()).await;
        Flow::End
    }

    /// The client sat inside a transaction past PGSIDECAR_IDLE_TRANSACTION_TIMEOUT: FATAL
    /// 25P03, its server rolled back (or closed, when `doomed` as in [`Session::give_back`]),
    /// the connection ended.
    async fn idle_transaction_expired(
        &mut self,
        lease: Lease,
        relay: &Relay,
        idle: Duration,
        doomed: bool,
    ) -> Flow {
        let limit = self.shared.config.pool.idle_transaction_timeout.unwrap_or_default();
        tracing::warn!(
            database = %self.upstream.pool.database,
            user = %self.info.user,
            application_name = %self.app_name(),
            idle_ms = idle.as_millis() as u64,
            timeout_ms = limit.as_millis() as u64,
            "idle_transaction_timeout"
        );
        PgError::fatal(
            "25P03",
            format!(
                "pgsidecar: terminating connection: idle inside a transaction for longer than {limit:?} (PGSIDECAR_IDLE_TRANSACTION_TIMEOUT)"
            ),
        )
        .with_hint(
            "commit or roll back promptly: an open transaction holds one of the pool's server connections; raise PGSIDECAR_IDLE_TRANSACTION_TIMEOUT if this is expected (0 turns it off)",
        )
        .encode(&mut self.cwbuf);
        let _ = tokio::time::timeout(CLIENT_FLUSH_LIMIT, self.flush_client()).await;
        self.slot_set(Activity::Idle);
        self.give_back(lease, relay, doomed).await;
        Flow::End
    }

    /// Counts the bytes one round of relay I/O read: from the client, and from the server for
    /// the client (SHOW STATS total_received and total_sent).
    fn count_relayed(&self, ev: super::io::IoEvent) {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.upstream.counters;
        if let Some(n) = ev.client_read.filter(|&n| n > 0) {
            c.bytes_from_clients.fetch_add(n as u64, Relaxed);
        }
        if let Some(n) = ev.server_read.filter(|&n| n > 0) {
            c.bytes_to_clients.fetch_add(n as u64, Relaxed);
        }
    }

    /// Counts statements and transactions that finished, logs the slow ones.
    fn record_finished(&mut self) {
        let Some(timing) = self.timing.as_deref_mut() else {
            return;
        };
        if timing.finished.is_empty() && timing.transactions.is_empty() {
            return;
        }
        let up = &self.upstream;
        for f in timing.finished.drain(..) {
            up.counters.query(f.duration);
            if let Some(text) = &f.text {
                if f.parsed {
                    up.counters.statement_parsed(text, f.duration, f.rows);
                } else {
                    up.counters.statement_text(text, f.fingerprint, f.duration, f.rows);
                }
            }
            if self.slow.is_slow_query(f.duration) {
                up.counters.slow_queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.slow.log_query(&crate::observe::slowlog::SlowQuery {
                    duration: f.duration,
                    wait: self.last_wait,
                    database: &up.pool.database,
                    user: &self.info.user,
                    application_name: self.settings.get("application_name").map_or("", String::as_str),
                    rows: f.rows,
                    sqlstate: f.sqlstate.as_deref(),
                    text: f.text.as_deref(),
                });
            }
        }
        for d in timing.transactions.drain(..) {
            up.counters.transaction(d);
            if self.slow.is_slow_transaction(d) {
                let app = self.settings.get("application_name").map_or("", String::as_str);
                self.slow.log_transaction(d, &up.pool.database, &self.info.user, app);
            }
        }
    }

    /// Records settings the server reported while the client ran. A new session
    /// authorization, or a role that changes is_superuser, is read back with the other
    /// settings however it was made (a DO block says no SET): who the session is must follow
    /// its client and never reach the next one.
    fn note_reported(&mut self, relay: &mut Relay, lease: &mut Lease) {
        let conn = lease.conn();
        if relay.reported.iter().any(|(name, _)| name == "session_authorization" || name == "is_superuser") {
            relay.settings_changed = true;
        }
        for (name, value) in relay.reported.drain(..) {
            if TRACKED_REPORTED.contains(&name.as_str()) {
                if self.settings.get(&name) != Some(&value) {
                    Arc::make_mut(&mut self.settings).insert(name.clone(), value.clone());
                }
                conn.applied.insert(name.clone(), value.clone());
            }
            if name == "application_name" {
                if let Some(r) = &self.registration {
                    r.slot.set_application_name(&value);
                }
            }
            self.told.insert(&name, &value);
        }
    }

    /// Remembers the custom setting names the relay saw, for the read-back.
    fn note_custom(&mut self, relay: &mut Relay) {
        for name in relay.custom_names.drain(..) {
            params::remember_custom(self.custom.get_or_insert_default(), &name);
        }
    }

    /// After SET, RESET or DISCARD: learn the session's settings from the server itself.
    async fn read_back_settings(&mut self, lease: &mut Lease) -> bool {
        let conn = lease.conn();
        let mut reported = Vec::new();
        let query = params::read_settings_query(self.custom.as_deref().map_or(&[], Vec::as_slice));
        match tokio::time::timeout(CLEANUP_TIMEOUT, conn.exec(&query, &mut reported)).await {
            Ok(Ok(rows)) => {
                let now = params::from_rows(rows, &conn.login_params);
                let mut settings = Settings::clone(&self.startup_settings);
                settings.extend(now.iter().map(|(k, v)| (k.clone(), v.clone())));
                self.settings = Arc::new(settings);
                conn.applied = now;
                true
            }
            _ => {
                self.fail(PgError::fatal(
                    "08006",
                    "pgsidecar could not read back the session settings from the server",
                ))
                .await;
                false
            }
        }
    }

    /// Counts session state on the server that would outlive the transaction: SQL-level
    /// prepared statements, LISTEN, holdable cursors, session advisory locks, temporary objects.
    async fn session_state(&mut self, lease: &mut Lease) -> Option<i64> {
        let conn = lease.conn();
        let rows =
            tokio::time::timeout(CLEANUP_TIMEOUT, conn.exec(SESSION_STATE_QUERY, &mut Vec::new())).await;
        match rows {
            Ok(Ok(rows)) => rows.first().and_then(|r| r.first()).and_then(|v| v.as_deref()?.parse().ok()),
            _ => {
                self.fail(PgError::fatal(
                    "08006",
                    "pgsidecar could not check the session state on the server",
                ))
                .await;
                None
            }
        }
    }

    fn set_pinned(&mut self, pinned: bool, statement: &[u8]) {
        if pinned == self.pinned {
            return;
        }
        self.pinned = pinned;
        if let Some(r) = &self.registration {
            r.slot.set_pinned(pinned);
        }
        let text = crate::observe::normalize::normalize_bytes(statement, 200);
        let delta = if pinned { 1 } else { -1 };
        self.upstream.counters.pinned.fetch_add(delta, std::sync::atomic::Ordering::Relaxed);
        if pinned {
            self.shared.pinned.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(database = %self.upstream.pool.database, statement = %text, "client_pinned");
        } else {
            self.shared.pinned.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(database = %self.upstream.pool.database, statement = %text, "client_unpinned");
        }
    }

    /// The client left while holding a server: return it clean, or close it.
    /// `doomed`: a cancel may still reach the server, so it is closed whatever its state.
    async fn give_back(&mut self, mut lease: Lease, relay: &Relay, doomed: bool) {
        let reusable = !doomed
            && relay.quiet()
            && self.swbuf.is_empty()
            && !relay.server_fatal
            && lease.conn().rbuf.is_empty();
        if !reusable {
            if !relay.quiet() && !relay.server_fatal {
                // A statement may still be running: closing the connection alone would leave
                // PostgreSQL running it to the end on a backend the pool no longer counts.
                let conn = lease.conn();
                let (target, pid, secret) = (self.upstream.pool.target.clone(), conn.pid, conn.secret);
                tokio::spawn(async move { target.cancel(pid, secret, CANCEL_GRACE).await });
            }
            lease.close();
            return;
        }
        // Session mode, and a pinned client's server: its session state goes with the client.
        // So does state the transaction may have made that outlives its ROLLBACK (a session
        // advisory lock, PREPARE, LISTEN): the check a release at rest runs is not run here.
        let discard = self.mode == PoolMode::Session || self.pinned || relay.state_hint.is_some();
        // Separate queries: in one multi-statement query DISCARD ALL would run inside the
        // implicit transaction block and fail.
        let rollback = (relay.status != b'I').then_some("ROLLBACK");
        let conn = lease.conn();
        for sql in rollback.into_iter().chain(discard.then_some("DISCARD ALL")) {
            let mut reported = Vec::new();
            let ok = matches!(
                tokio::time::timeout(CLEANUP_TIMEOUT, conn.exec(sql, &mut reported)).await,
                Ok(Ok(_))
            );
            if !ok {
                lease.close();
                return;
            }
        }
        if discard {
            conn.applied.clear();
            conn.statements.clear();
        }
        if relay.settings_changed && !discard {
            let mut reported = Vec::new();
            let mut custom = self.custom.as_deref().cloned().unwrap_or_default();
            for name in &relay.custom_names {
                params::remember_custom(&mut custom, name);
            }
            let query = params::read_settings_query(&custom);
            match tokio::time::timeout(CLEANUP_TIMEOUT, conn.exec(&query, &mut reported)).await {
                Ok(Ok(rows)) => conn.applied = params::from_rows(rows, &conn.login_params),
                _ => {
                    lease.close();
                    return;
                }
            }
        }
        self.cancels_settled().await;
        lease.release();
    }
}

/// What an attachment is waiting on, for PGSIDECAR_QUERY_TIMEOUT and
/// PGSIDECAR_IDLE_TRANSACTION_TIMEOUT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
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
enum Expired {
    /// Nothing (yet): the deadline moved later since the timer was set.
    No,
    Query,
    IdleTransaction(Duration),
    Cancel,
}

/// The timeouts of one server attachment. The deadline is a plain value updated when the
/// phase changes (no timer work while no timeout applies); the one `Sleep` is moved only
/// when a deadline comes earlier than it, or when it fires before the current deadline.
struct Timeouts {
    enabled: bool,
    query: Option<Duration>,
    idle_transaction: Option<Duration>,
    phase: Phase,
    /// ReadyForQuery still owed when the phase was last looked at.
    outstanding: u32,
    deadline: Option<tokio::time::Instant>,
    /// When the current phase began (for the log).
    since: Option<tokio::time::Instant>,
    /// The cancel request on its way to Postgres.
    cancel: Option<tokio::task::JoinHandle<Result<(), ServerError>>>,
    /// The ErrorResponse that replaces the server's 57014 answer to the proxy's cancel.
    reply: Option<bytes::Bytes>,
    /// A cancel may still reach the server: close it rather than give it to anyone else.
    doomed: bool,
}

impl Timeouts {
    fn new(query: Option<Duration>, idle_transaction: Option<Duration>) -> Timeouts {
        Timeouts {
            enabled: query.is_some() || idle_transaction.is_some(),
            query,
            idle_transaction,
            phase: Phase::Other,
            outstanding: 0,
            deadline: None,
            since: None,
            cancel: None,
            reply: None,
            doomed: false,
        }
    }

    /// Follows the relay's state; a new phase (or an answer while more are owed) restarts
    /// the deadline that applies to it.
    fn update(&mut self, relay: &Relay, client_quiet: bool, timer: Pin<&mut Option<Sleep>>) {
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
        let limit = match phase {
            Phase::Busy => self.query,
            Phase::IdleInTransaction => self.idle_transaction,
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
    fn arm(&mut self, now: tokio::time::Instant, limit: Duration, mut timer: Pin<&mut Option<Sleep>>) {
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
    fn expired(&mut self, timer: Pin<&mut Option<Sleep>>) -> Expired {
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
            Phase::IdleInTransaction => {
                Expired::IdleTransaction(self.since.map(|s| now - s).unwrap_or_default())
            }
            Phase::Cancelling => Expired::Cancel,
            Phase::Other => Expired::No,
        }
    }

    /// The server answered everything after the proxy's cancel. Waits (within the deadline)
    /// for the cancel request to have reached Postgres, so that it cannot hit a later
    /// statement; if that is not known, the server is doomed.
    async fn cancel_settled(&mut self) {
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

/// What a client that waited in the queue is told when the pool refuses it.
fn refused_waiting(e: ServerError, pool: &crate::server::pool::Pool, started: Instant) -> Refused {
    let ServerError::WaitTimeout = e else { return Refused::Server(e) };
    let stats = pool.stats();
    Refused::Error(
        PgError::error("53300", format!(
            "pgsidecar: no server connection became free within {:.1}s (PGSIDECAR_QUERY_WAIT_TIMEOUT); all {} server connections of database \"{}\" were busy and {} clients were waiting",
            started.elapsed().as_secs_f64(), stats.max_size, pool.database, stats.waiting
        ))
        .with_hint("raise PGSIDECAR_POOL_SIZE within the database's connection limit, shorten transactions, or raise PGSIDECAR_QUERY_WAIT_TIMEOUT"),
    )
}

/// Shows the client as running on its server (SHOW CLIENTS, cancel forwarding).
fn mark_active(slot: &CancelSlot, pool: &crate::server::pool::Pool, lease: &mut Lease) {
    let conn = lease.conn();
    slot.set(Activity::Active { target: pool.target.clone(), server: conn.info(), secret: conn.secret });
}

/// Replaces the first ErrorResponse with SQLSTATE 57014 among the whole messages in `rbuf`
/// (whose first `skip` bytes end a message already being forwarded) by `with`. Returns
/// whether it did.
fn replace_cancel_error(rbuf: &mut BytesMut, skip: usize, with: &[u8]) -> bool {
    let mut at = skip;
    while rbuf.len() >= at + crate::wire::frame::HEADER_LEN {
        let len = i32::from_be_bytes([rbuf[at + 1], rbuf[at + 2], rbuf[at + 3], rbuf[at + 4]]);
        let Ok(len) = usize::try_from(len) else { return false };
        if len < 4 {
            return false;
        }
        let end = at + 1 + len;
        if rbuf.len() < end {
            return false;
        }
        if rbuf[at] == tag::ERROR_RESPONSE
            && messages::ErrorFields::parse(&rbuf[at + crate::wire::frame::HEADER_LEN..end])
                .is_ok_and(|f| f.code == "57014")
        {
            let mut out = BytesMut::with_capacity(rbuf.len() - (end - at) + with.len());
            out.extend_from_slice(&rbuf[..at]);
            out.extend_from_slice(with);
            out.extend_from_slice(&rbuf[end..]);
            *rbuf = out;
            return true;
        }
        at = end;
    }
    false
}

/// Why a checkout did not produce a server.
enum Refused {
    Gone,
    Error(PgError),
    Server(ServerError),
}

#[cfg(test)]
mod tests {
    use super::replace_cancel_error;

    /// Every idle client keeps its session and the future of its loop: paths with servers,
    /// errors and settings are boxed so that this stays small (it was 3.6 kB before).
    #[tokio::test]
    async fn an_idle_session_stays_small() {
        use std::collections::BTreeMap;
        let mut env = BTreeMap::new();
        env.insert(
            "DATABASE_URL".to_owned(),
            "postgres://app:pw@127.0.0.1:1/appdb?sslmode=disable".to_owned(),
        );
        let config = crate::config::Config::load(&BTreeMap::new(), &env).unwrap();
        let shared = std::sync::Arc::new(crate::shared::Shared::new(config).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let login = super::Login {
            stream: crate::stream::Stream::Plain(stream),
            rbuf: bytes::BytesMut::new(),
            greeting: bytes::BytesMut::new(),
            startup: crate::wire::startup::Startup { major: 3, minor: 0, params: vec![] },
            user: "app".into(),
            database: "appdb".into(),
            upstream: shared.upstream("appdb").unwrap(),
            settings: Default::default(),
            sequence: Vec::new(),
            peer: addr,
        };
        let mut session = super::Session::new(shared.clone(), login);
        let session_size = std::mem::size_of_val(&session);
        // Every transaction allocates this future: up to 1,032 B glibc serves it from its
        // per-thread cache (≈30 instructions); past it, from the arena (≈300).
        let per_transaction = std::mem::size_of_val(&*session.with_server());
        assert!(per_transaction <= TRANSACTION_LIMIT, "a transaction's future is {per_transaction} B");
        const TRANSACTION_LIMIT: usize = 1032;
        let run = session.run();
        let total = session_size + std::mem::size_of_val(&run);
        assert!(total <= LIMIT, "session {session_size} B + run future = {total} B");
        // Release: 368 B measured. The client's task adds 24 B to this and tokio pads its cell
        // to a multiple of 128 B with 104 B of its own: up to 384 B here the cell is 512 B, one
        // byte more makes it 640 B for every idle client.
        const LIMIT: usize = if cfg!(debug_assertions) { 400 } else { 384 };
    }
    use crate::wire::messages::{self, PgError};
    use bytes::BytesMut;

    #[test]
    fn the_servers_cancel_error_is_replaced_whole_and_only_it() {
        let mut ours = BytesMut::new();
        PgError::error("57014", "pgsidecar: PGSIDECAR_QUERY_TIMEOUT").encode(&mut ours);
        let mut theirs = BytesMut::new();
        PgError::error("57014", "canceling statement due to user request").encode(&mut theirs);
        let mut other = BytesMut::new();
        PgError::error("22012", "division by zero").encode(&mut other);
        let mut rfq = BytesMut::new();
        messages::ready_for_query(&mut rfq, b'I');

        // The tail of a streamed message first, then another error, then the cancel's.
        let mut buf = BytesMut::from(&b"xyz"[..]);
        buf.extend_from_slice(&other);
        buf.extend_from_slice(&theirs);
        buf.extend_from_slice(&rfq);
        assert!(replace_cancel_error(&mut buf, 3, &ours));
        let mut want = BytesMut::from(&b"xyz"[..]);
        want.extend_from_slice(&other);
        want.extend_from_slice(&ours);
        want.extend_from_slice(&rfq);
        assert_eq!(buf, want);

        // Incomplete: left alone until it is whole.
        let mut buf = BytesMut::from(&theirs[..theirs.len() - 1]);
        assert!(!replace_cancel_error(&mut buf, 0, &ours));
        assert_eq!(&buf[..], &theirs[..theirs.len() - 1]);
        // A bogus length or an offset past the end changes nothing and does not panic.
        let mut buf = BytesMut::from(&b"E\xff\xff\xff\xff"[..]);
        assert!(!replace_cancel_error(&mut buf, 0, &ours));
        assert!(!replace_cancel_error(&mut buf, 100, &ours));
    }
}
