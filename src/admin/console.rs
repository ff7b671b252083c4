//! One admin console session: the greeting after authentication, then simple queries until
//! the client leaves. No server connection is used. Extended-protocol messages get an error
//! and are skipped up to Sync, as Postgres skips after an error.

use super::Command;
use crate::cancel::{Activity, CancelSlot, ClientInfo, Registration};
use crate::shared::Shared;
use crate::stream::Stream;
use crate::wire::frame::split_frame;
use crate::wire::messages::{self, PgError};
use crate::wire::{is_frontend_tag, tag};
use bytes::BytesMut;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest message the console accepts: its commands are a few words.
const MAX_MESSAGE: usize = 64 * 1024;

/// `server_version` as the console reports it: a Postgres-like number first, for clients
/// that parse it (psql, drivers), then who is answering.
pub const SERVER_VERSION: &str = concat!("15.0 (pgsidecar ", env!("CARGO_PKG_VERSION"), ")");

struct Console {
    shared: Arc<Shared>,
    stream: Stream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    registration: Registration,
    user: String,
    /// An extended-protocol message was refused: drop messages up to the next Sync.
    skipping: bool,
    /// SHUTDOWN was answered: signal once the answer is out (the process may exit soon after).
    shutdown_requested: bool,
}

/// An authenticated client of the admin console.
pub struct ConsoleLogin {
    pub stream: Stream,
    pub rbuf: BytesMut,
    pub user: String,
    /// `pgsidecar` or `pgbouncer`, as the client asked.
    pub database: String,
    pub application_name: String,
    pub peer: crate::stream::Peer,
}

/// Serves an authenticated console client until it leaves.
pub async fn run(shared: Arc<Shared>, login: ConsoleLogin) {
    let ConsoleLogin { stream, rbuf, user, database, application_name, peer } = login;
    let info = CancelSlot::new(
        ClientInfo {
            user: user.clone(),
            database,
            peer,
            connected_at: SystemTime::now(),
            tls: stream.is_tls(),
        },
        &application_name,
    );
    let registration = shared.cancels.register(None, info);
    let mut console = Console {
        shared,
        stream,
        rbuf,
        wbuf: BytesMut::with_capacity(1024),
        registration,
        user,
        skipping: false,
        shutdown_requested: false,
    };
    console.greet(&application_name);
    console.serve().await;
}

impl Console {
    fn greet(&mut self, application_name: &str) {
        let w = &mut self.wbuf;
        messages::auth_ok(w);
        for (name, value) in [
            ("server_version", SERVER_VERSION),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("standard_conforming_strings", "on"),
            ("integer_datetimes", "on"),
            ("application_name", application_name),
        ] {
            messages::parameter_status(w, name, value);
        }
        messages::backend_key_data(w, self.registration.pid, self.registration.secret);
        messages::ready_for_query(w, b'I');
    }

    async fn flush(&mut self) -> bool {
        if self.wbuf.is_empty() {
            return true;
        }
        let ok = self.stream.write_all(&self.wbuf).await.is_ok() && self.stream.flush().await.is_ok();
        self.wbuf.clear();
        ok
    }

    async fn serve(&mut self) {
        loop {
            if !self.flush().await {
                return;
            }
            if std::mem::take(&mut self.shutdown_requested) {
                super::start_shutdown();
            }
            let Some((t, body)) = self.read_message().await else { return };
            match t {
                tag::TERMINATE => return,
                tag::SYNC => {
                    self.skipping = false;
                    messages::ready_for_query(&mut self.wbuf, b'I');
                }
                _ if self.skipping => {}
                tag::QUERY => {
                    if !self.query(&body).await {
                        return;
                    }
                    messages::ready_for_query(&mut self.wbuf, b'I');
                }
                tag::FLUSH => {}
                tag::FUNCTION_CALL => {
                    simple_only().encode(&mut self.wbuf);
                    messages::ready_for_query(&mut self.wbuf, b'I');
                }
                t if is_frontend_tag(t) => {
                    simple_only().encode(&mut self.wbuf);
                    self.skipping = true;
                }
                other => {
                    let e = crate::wire::frame::FrameError::UnknownType(other);
                    PgError::fatal("08P01", format!("invalid message from client: {e}"))
                        .encode(&mut self.wbuf);
                    self.flush().await;
                    return;
                }
            }
        }
    }

    /// The next whole message; `None` when the client is gone or sent something unreadable
    /// (it has been told).
    async fn read_message(&mut self) -> Option<(u8, BytesMut)> {
        loop {
            match split_frame(&mut self.rbuf, MAX_MESSAGE) {
                Ok(Some(m)) => return Some(m),
                Ok(None) => {}
                Err(e) => {
                    PgError::fatal("08P01", format!("invalid message from client: {e}"))
                        .encode(&mut self.wbuf);
                    self.flush().await;
                    return None;
                }
            }
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Answers one simple Query. `false` when the client left meanwhile.
    async fn query(&mut self, body: &[u8]) -> bool {
        let sql = String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(body)).into_owned();
        let command = match Command::parse(&sql) {
            Ok(Some(c)) => c,
            Ok(None) => {
                messages::empty_query_response(&mut self.wbuf);
                return true;
            }
            Err(e) => {
                tracing::debug!(user = %self.user, code = e.code, "admin_command_refused");
                e.encode(&mut self.wbuf);
                return true;
            }
        };
        if command.changes_state() {
            tracing::info!(user = %self.user, command = ?command, "admin_command");
        } else {
            tracing::debug!(user = %self.user, command = ?command, "admin_command");
        }
        self.shutdown_requested = matches!(command, Command::Shutdown(_));
        // Commands that wait (PAUSE, RELOAD) can be cancelled like a queued query.
        let waits = matches!(command, Command::Pause(_) | Command::Reload(_));
        let slot = self.registration.slot.clone();
        let cancelled = slot.wake.notified();
        tokio::pin!(cancelled);
        cancelled.as_mut().enable();
        if waits {
            slot.set(Activity::Waiting { since: quanta::Instant::now() });
        }
        let shared = self.shared.clone();
        let execution = command.execute(&shared);
        tokio::pin!(execution);
        let result = loop {
            let may_read = self.rbuf.len() < MAX_MESSAGE;
            tokio::select! {
                biased;
                r = &mut execution => break Some(r),
                _ = &mut cancelled, if waits => {
                    break Some(Err(PgError::error("57014", "canceling statement due to user request")));
                }
                r = self.stream.read_buf(&mut self.rbuf), if may_read => {
                    if matches!(r, Ok(0) | Err(_)) {
                        break None;
                    }
                }
            }
        };
        slot.set(Activity::Idle);
        match result {
            None => return false,
            Some(Ok(reply)) => self.wbuf.extend_from_slice(&reply),
            Some(Err(e)) => e.encode(&mut self.wbuf),
        }
        true
    }
}

fn simple_only() -> PgError {
    PgError::error("0A000", "the admin console supports only simple queries")
}
