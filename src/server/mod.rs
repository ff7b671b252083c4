//! The server side: one backend connection ([`conn`]) and the bounded FIFO pool ([`pool`]).
//!
//! May import: [`crate::params`], [`crate::prepared`] (statements a server holds),
//! [`crate::observe`] (counters), [`crate::config`], [`crate::stream`], [`crate::tls`],
//! [`crate::wire`]. Never [`crate::client`], [`crate::admin`], [`crate::shared`] or
//! [`crate::proxy`]: a server connection knows no client.

pub mod conn;
pub mod pool;

use crate::wire::messages::{ErrorFields, PgError};
use bytes::{BufMut, Bytes, BytesMut};

/// Why talking to a server failed. Every variant can be turned into a message for a client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Connect(String),
    #[error("{0}")]
    Tls(String),
    #[error("{0}")]
    Timeout(String),
    #[error("server authentication failed: {0}")]
    Auth(String),
    #[error("protocol error from server: {0}")]
    Protocol(String),
    #[error("server closed the connection unexpectedly")]
    Closed,
    /// The pool's own refusal: the waiter sat in the queue for PGSIDECAR_QUERY_WAIT_TIMEOUT.
    /// The session answers it with its own message.
    #[error("no server connection became free within PGSIDECAR_QUERY_WAIT_TIMEOUT")]
    WaitTimeout,
    #[error("server connection failed: {0}")]
    Io(String),
    /// The server's own ErrorResponse, kept as sent so clients see the server's message:
    /// `raw` holds the whole messages for a client, at login after the NoticeResponse
    /// messages the server sent before it.
    #[error("server error {}: {}", .fields.code, .fields.message)]
    Postgres { fields: ErrorFields, raw: Bytes },
}

impl ServerError {
    pub fn io(e: std::io::Error) -> ServerError {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ServerError::Closed
        } else {
            ServerError::Io(e.to_string())
        }
    }

    pub fn protocol(e: impl std::fmt::Display) -> ServerError {
        ServerError::Protocol(e.to_string())
    }

    pub fn from_error_body(body: &[u8]) -> ServerError {
        ServerError::at_login(body, &[])
    }

    /// [`ServerError::from_error_body`] for an error at login, after `notices` (whole
    /// NoticeResponse messages).
    pub fn at_login(body: &[u8], notices: &[u8]) -> ServerError {
        let mut raw = BytesMut::with_capacity(notices.len() + body.len() + 5);
        raw.put_slice(notices);
        raw.put_u8(b'E');
        raw.put_i32(body.len() as i32 + 4);
        raw.put_slice(body);
        ServerError::Postgres { fields: ErrorFields::parse(body).unwrap_or_default(), raw: raw.freeze() }
    }

    /// Short kind name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerError::Connect(_) => "connect",
            ServerError::Tls(_) => "tls",
            ServerError::Timeout(_) => "timeout",
            ServerError::Auth(_) => "auth",
            ServerError::Protocol(_) => "protocol",
            ServerError::Closed | ServerError::Io(_) => "io",
            ServerError::Postgres { .. } => "server_error",
            ServerError::WaitTimeout => "wait_timeout",
        }
    }

    /// Appends an ErrorResponse for a client to `buf`: the server's own message when there is
    /// one, otherwise a FATAL 08006/08001 naming what failed.
    pub fn encode_for_client(&self, buf: &mut BytesMut) {
        match self {
            ServerError::Postgres { raw, .. } => buf.put_slice(raw),
            ServerError::Connect(_)
            | ServerError::Tls(_)
            | ServerError::Timeout(_)
            | ServerError::Auth(_) => {
                PgError::fatal("08001", format!("pgsidecar could not connect to the database server: {self}"))
                    .with_hint("check that the database is up and that DATABASE_URL is current")
                    .encode(buf)
            }
            ServerError::WaitTimeout => PgError::error("53300", format!("pgsidecar: {self}")).encode(buf),
            _ => PgError::fatal("08006", format!("pgsidecar lost the server connection: {self}")).encode(buf),
        }
    }
}
