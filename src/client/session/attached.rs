//! The loop while a server is attached: both relay directions, the writes, releasing the
//! server at rest (transaction mode), and what ends an attachment (a side leaving, a timeout).

use super::*;

/// The state of one server attachment besides the server itself.
pub(super) struct Attachment {
    relay: Relay,
    t: Timeouts,
    /// The client owes the proxy a read: its output is held until it reads (see `poll_io`).
    client_owed: bool,
    /// Answers the proxy gave itself wait to go out with the server's.
    hold_client: bool,
}

/// How an attachment ends the session.
enum Ending {
    /// The client sent Terminate and everything before it was answered.
    Terminated,
    /// The client closed its connection or its socket failed.
    ClientGone,
    /// The server closed its connection.
    ServerGone,
    /// The server's socket failed.
    ServerFailed(std::io::Error),
}

impl Session {
    /// Serves the client with a server attached until it can be released (transaction
    /// mode) or either side leaves.
    pub(super) async fn attached(&mut self, mut lease: Lease) -> Flow {
        let cfg = &self.shared.config.pool;
        let mut a = Attachment {
            // Expected answers are followed in both modes: an error makes Postgres skip what
            // was pipelined up to the next Sync, simple queries included, and only the queue
            // of requests tells which ReadyForQuery is still owed.
            relay: Relay::new(),
            t: Timeouts::new(cfg.query_timeout, cfg.idle_transaction_timeout, cfg.idle_transaction_warn),
            client_owed: false,
            hold_client: false,
        };
        // One timer for the whole attachment, created only once a deadline is needed; it lives
        // in this (boxed) future, so it costs no allocation of its own.
        let mut timer = std::pin::pin!(None::<tokio::time::Sleep>);
        loop {
            let stops = match self.relay_round(&mut a, &mut lease) {
                Ok(stops) => stops,
                Err(error) => {
                    self.fail(error).await;
                    return Flow::End; // lease dropped: the server is discarded
                }
            };
            if a.t.phase == Phase::Cancelling && a.relay.outstanding == 0 && !a.relay.blocked() {
                a.t.cancel_settled().await;
            }
            let drained = self.drained(&mut lease);
            if self.mode == PoolMode::Transaction && a.relay.at_rest() && drained && !a.relay.server_fatal {
                lease = match self.at_rest(&mut a, lease).await {
                    Ok(flow) => return flow,
                    Err(pinned) => pinned,
                };
            }
            if a.relay.terminated && drained {
                self.flush_client().await;
                return self.end(lease, a, Ending::Terminated).await;
            }
            if a.t.enabled {
                let warn = self.shared.config.pool.idle_transaction_warn;
                a.t.update(&a.relay, self.crbuf.is_empty(), warn, timer.as_mut());
            }
            if stops.1 == Stop::Rest && self.mode == PoolMode::Session {
                self.shrink_session_buffers(&mut lease);
            }
            if self.may_move_again(&a, &mut lease, stops) {
                continue;
            }
            let event = self.wait_io(&mut a, &mut lease, timer.as_mut()).await;
            let Some(event) = event else {
                match a.t.expired(timer.as_mut()) {
                    Expired::No => {}
                    Expired::Query => self.start_cancel(&mut a.t, &mut lease, timer.as_mut()),
                    Expired::IdleWarn(idle) => self.warn_idle_transaction(idle),
                    Expired::IdleTransaction(idle) => {
                        return Box::pin(self.idle_transaction_expired(lease, &a.relay, idle, a.t.doomed))
                            .await;
                    }
                    Expired::Cancel => return Box::pin(self.cancel_expired(lease, &a.relay, &a.t)).await,
                }
                continue;
            };
            let ending = match event {
                Ok(ev) => {
                    self.count_relayed(ev);
                    match ev {
                        _ if ev.client_read == Some(0) => {
                            tracing::debug!("client_gone_with_server");
                            Ending::ClientGone
                        }
                        _ if ev.server_read == Some(0) => Ending::ServerGone,
                        _ => continue,
                    }
                }
                Err(IoError::Client(_)) => Ending::ClientGone,
                Err(IoError::Server(e)) => Ending::ServerFailed(e),
            };
            return self.end(lease, a, ending).await;
        }
    }

    /// Transaction mode, everything answered: the server goes back to the pool, once what
    /// the transaction did to the session is known (settings read back, session state
    /// counted). `Err`: session state pins the client to this server, which it keeps.
    async fn at_rest(&mut self, a: &mut Attachment, mut lease: Lease) -> Result<Flow, Lease> {
        if a.relay.settings_changed {
            self.note_custom(&mut a.relay);
            if !Box::pin(self.read_back_settings(&mut lease)).await {
                return Ok(Flow::End);
            }
            a.relay.settings_changed = false;
        }
        if let Some(statement) = a.relay.state_hint.take() {
            match Box::pin(self.session_state(&mut lease)).await {
                Some(n) => self.set_pinned(n > 0, &statement),
                None => return Ok(Flow::End),
            }
        }
        if self.pinned {
            return Err(lease);
        }
        self.slot_set(Activity::Idle);
        if a.t.doomed {
            lease.close();
        } else {
            self.cancels_settled().await;
            lease.release();
        }
        if a.relay.terminated {
            self.flush_client().await;
            return Ok(Flow::End);
        }
        Ok(Flow::Released)
    }

    /// One round of relaying: the client's bytes towards the server, the server's towards the
    /// client, both written as far as the sockets take them. Returns where each direction
    /// stopped, or the FATAL error that ends the session on a message that makes no sense.
    fn relay_round(&mut self, a: &mut Attachment, lease: &mut Lease) -> Result<(Stop, Stop, bool), PgError> {
        let max = self.max_message();
        let conn = lease.conn();
        if a.t.phase == Phase::Cancelling && a.t.reply.is_some() && !conn.rbuf.is_empty() {
            // The server's answer to the proxy's cancel names the query timeout instead.
            let reply = a.t.reply.as_deref().unwrap_or_default();
            if replace_cancel_error(&mut conn.rbuf, a.relay.server_partial(), reply) {
                a.t.reply = None;
            }
        }
        let mut st = Statements {
            timing: self.timing.get_or_insert_with(crate::client::reuse::timing),
            client: &mut self.statements,
            server: &mut conn.statements,
            rewrite: self.rewrite,
            unnamed: self.unnamed,
            pinned: self.pinned,
        };
        let before = self.cwbuf.len();
        let c_stop = a
            .relay
            .client_to_server(&mut self.crbuf, &mut self.swbuf, &mut self.cwbuf, max, &mut st)
            .map_err(|e| PgError::fatal("08P01", format!("invalid message from client: {e}")))?;
        let local = self.cwbuf.len();
        let was_blocked = a.relay.blocked();
        let s_stop =
            a.relay.server_to_client(&mut conn.rbuf, &mut self.cwbuf, max, &mut st).map_err(|e| {
                PgError::fatal("08006", format!("pgsidecar: invalid message from the server: {e}"))
            })?;
        if !self.swbuf.is_empty() {
            // The request goes to Postgres before anything else is done with it (and only
            // to a server whose output made sense so far).
            crate::client::io::write_now(&mut conn.io, &mut self.swbuf, &mut self.sflush);
        }
        // Answers the proxy gave itself (a ParseComplete for a statement the server already
        // holds) wait for the server's answers to the same batch, which the server owes: one
        // write to the client per transaction instead of two.
        if self.cwbuf.len() != local || a.relay.outstanding == 0 || self.cwbuf.len() > HOLD_MAX {
            a.hold_client = false;
        } else if before == 0 && local > 0 {
            a.hold_client = true;
        }
        // Unless the proxy still has to look at the server's session state first (pinning,
        // settings, reported parameters such as application_name): a client that has its
        // answer sees the proxy's view (SHOW CLIENTS, the pinned gauge) up to date.
        if !self.cwbuf.is_empty()
            && !a.hold_client
            && a.relay.state_hint.is_none()
            && !a.relay.settings_changed
            && a.relay.reported.is_empty()
        {
            crate::client::io::write_now(&mut self.client, &mut self.cwbuf, &mut self.cflush);
        }
        if !a.relay.reported.is_empty() {
            self.note_reported(&mut a.relay, lease);
        }
        self.record_finished();
        Ok((c_stop, s_stop, was_blocked))
    }

    /// Nothing is on its way to or from the server.
    fn drained(&mut self, lease: &mut Lease) -> bool {
        self.swbuf.is_empty() && lease.conn().rbuf.is_empty() && !self.sflush
    }

    /// A session keeps its buffers from one transaction to the next: those a large message
    /// grew are freed once empty.
    fn shrink_session_buffers(&mut self, lease: &mut Lease) {
        let conn = lease.conn();
        for buf in [&mut self.crbuf, &mut self.cwbuf, &mut self.swbuf, &mut conn.rbuf] {
            crate::wire::frame::shrink_empty(buf, crate::client::reuse::MAX_SPARE_CAPACITY);
        }
    }

    /// Whether a direction can move more without waiting on the sockets: one that stopped on
    /// its full output moves again once the writes made room, one that stopped at a
    /// ReadyForQuery left what followed it unread, and a client held back (answers capped, a
    /// statement being described for it) moves again once the server's answer freed it.
    fn may_move_again(
        &mut self,
        a: &Attachment,
        lease: &mut Lease,
        (c_stop, s_stop, was_blocked): (Stop, Stop, bool),
    ) -> bool {
        (c_stop == Stop::Output && self.swbuf.len() < WRITE_HIGH)
            || (s_stop == Stop::Output && self.cwbuf.len() < WRITE_HIGH)
            || (s_stop == Stop::Rest && !lease.conn().rbuf.is_empty())
            || (was_blocked && !a.relay.blocked() && !self.crbuf.is_empty())
    }

    /// Waits until either socket moves (`Some`) or the timer fires (`None`).
    fn wait_io<'a>(
        &'a mut self,
        a: &'a mut Attachment,
        lease: &'a mut Lease,
        mut timer: Pin<&'a mut Option<Sleep>>,
    ) -> impl Future<Output = Option<Result<crate::client::io::IoEvent, IoError>>> + 'a {
        let conn = lease.conn();
        let relay = &a.relay;
        let client_may_read = !relay.terminated
            && self.crbuf.len() < relay.client_read_limit()
            && self.swbuf.len() < WRITE_HIGH;
        let server_may_read = conn.rbuf.len() < relay.server_read_limit() && self.cwbuf.len() < WRITE_HIGH;
        let mut client = Half {
            io: &mut self.client,
            rbuf: &mut self.crbuf,
            wbuf: &mut self.cwbuf,
            needs_flush: &mut self.cflush,
            may_read: client_may_read,
            hold: a.hold_client,
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
        let armed = a.t.deadline.is_some();
        let client_owed = &mut a.client_owed;
        std::future::poll_fn(move |cx| {
            if let Poll::Ready(r) = poll_io(cx, &mut client, &mut server, client_owed) {
                return Poll::Ready(Some(r));
            }
            match timer.as_mut().as_pin_mut() {
                Some(sleep) if armed => sleep.poll(cx).map(|()| None),
                _ => Poll::Pending,
            }
        })
    }

    /// Ends the session with its server attached. Boxed: a path taken once per session.
    fn end(&mut self, lease: Lease, mut a: Attachment, ending: Ending) -> Boxed<'_, Flow> {
        Box::pin(async move {
            self.slot_set(Activity::Idle);
            match ending {
                Ending::Terminated => self.give_back(lease, &a.relay, a.t.doomed).await,
                Ending::ClientGone => {
                    self.swbuf.clear();
                    self.give_back(lease, &a.relay, a.t.doomed).await;
                }
                Ending::ServerGone => {
                    // Forward whatever the server said last (often a FATAL), then end.
                    let mut lease = lease;
                    let (max, conn) = (self.max_message(), lease.conn());
                    let mut st = Statements {
                        timing: self.timing.get_or_insert_with(crate::client::reuse::timing),
                        client: &mut self.statements,
                        server: &mut conn.statements,
                        rewrite: self.rewrite,
                        unnamed: self.unnamed,
                        pinned: self.pinned,
                    };
                    let _ = a.relay.server_to_client(&mut conn.rbuf, &mut self.cwbuf, max, &mut st);
                    drop(lease);
                    if !a.relay.server_fatal {
                        self.fail_server(&ServerError::Closed).await;
                    } else {
                        self.flush_client().await;
                    }
                }
                Ending::ServerFailed(e) => {
                    drop(lease);
                    self.fail_server(&ServerError::io(e)).await;
                }
            }
            Flow::End
        })
    }

    /// PGSIDECAR_QUERY_TIMEOUT passed with the server's answer incomplete: ask Postgres to
    /// cancel the statement, and give the server [`CANCEL_GRACE`] to answer.
    pub(super) fn start_cancel(&self, t: &mut Timeouts, lease: &mut Lease, timer: Pin<&mut Option<Sleep>>) {
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
    pub(super) async fn cancel_expired(&mut self, lease: Lease, relay: &Relay, t: &Timeouts) -> Flow {
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

    /// The client has sat inside a transaction past PGSIDECAR_IDLE_TRANSACTION_WARN, holding
    /// a server: one warning naming the application and its last statement (normalized:
    /// literals and parameters never reach the log).
    fn warn_idle_transaction(&self, idle: Duration) {
        let last = self.timing.as_ref().and_then(|t| t.last_statement);
        let statement = last.and_then(|fp| self.upstream.counters.statement_text_of(fp)).unwrap_or_default();
        let timeout = self.shared.config.pool.idle_transaction_timeout;
        tracing::warn!(
            database = %self.upstream.pool.database,
            user = %self.info.user,
            application_name = %self.app_name(),
            idle_ms = idle.as_millis() as u64,
            timeout_ms = timeout.map_or(0, |t| t.as_millis() as u64),
            last_statement = %statement,
            "idle_in_transaction"
        );
    }

    /// The client sat inside a transaction past PGSIDECAR_IDLE_TRANSACTION_TIMEOUT: FATAL
    /// 25P03, its server rolled back (or closed, when `doomed` as in [`Session::give_back`]),
    /// the connection ended.
    pub(super) async fn idle_transaction_expired(
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
    pub(super) fn count_relayed(&self, ev: crate::client::io::IoEvent) {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.upstream.counters;
        if let Some(n) = ev.client_read.filter(|&n| n > 0) {
            c.bytes_from_clients.fetch_add(n as u64, Relaxed);
        }
        if let Some(n) = ev.server_read.filter(|&n| n > 0) {
            c.bytes_to_clients.fetch_add(n as u64, Relaxed);
        }
    }
}

/// Replaces the first ErrorResponse with SQLSTATE 57014 among the whole messages in `rbuf`
/// (whose first `skip` bytes end a message already being forwarded) by `with`. Returns
/// whether it did.
pub(super) fn replace_cancel_error(rbuf: &mut BytesMut, skip: usize, with: &[u8]) -> bool {
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
