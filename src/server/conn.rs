//! One connection to Postgres: TCP, TLS per sslmode, startup, authentication, and the
//! values the server reported at login.

use super::ServerError;
use crate::config::{DbUrl, SslMode};
use crate::stream::Stream;
use crate::wire::frame::split_frame;
use crate::wire::messages::{self, parse_parameter_status, parse_ready_for_query, ErrorFields};
use crate::wire::{startup::parse_options, tag};
use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use quanta::Instant;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

/// Largest read buffer an idle server connection keeps (see [`ServerConn::trim`]).
const KEEP_READ_BUFFER: usize = 64 * 1024;

/// Largest message the proxy reads whole from a server during login and internal queries.
const MAX_CONTROL_MESSAGE: usize = 1 << 20;

/// Where and how to connect: one per upstream, shared by its pool and the cancel path.
pub struct Target {
    pub url: DbUrl,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub connect_timeout: std::time::Duration,
    /// Capacity of each connection's prepared-statement cache.
    pub max_prepared: usize,
}

impl Target {
    pub fn new(
        url: DbUrl,
        default_timeout: std::time::Duration,
    ) -> Result<Target, crate::tls::TlsConfigError> {
        let tls = crate::tls::server_side_config(url.sslmode, url.sslrootcert.as_deref())?;
        let connect_timeout = url.connect_timeout.unwrap_or(default_timeout);
        Ok(Target { url, tls, connect_timeout, max_prepared: 500 })
    }

    /// Opens TCP and negotiates TLS as the sslmode asks.
    pub async fn open(&self) -> Result<Stream, ServerError> {
        let tcp = TcpStream::connect((self.url.host.as_str(), self.url.port))
            .await
            .map_err(|e| ServerError::Connect(format!("cannot connect to {}: {e}", self.url.host_port())))?;
        let _ = tcp.set_nodelay(true);
        set_keepalive(&tcp);
        let Some(tls) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let mut tcp = tcp;
        let mut req = BytesMut::new();
        frontend::ssl_request(&mut req);
        tcp.write_all(&req).await.map_err(ServerError::io)?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await.map_err(ServerError::io)?;
        match answer[0] {
            b'S' => {
                let name =
                    crate::tls::server_name(&self.url.host).map_err(|e| ServerError::Tls(e.to_string()))?;
                let stream =
                    tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await.map_err(|e| {
                        ServerError::Tls(format!("TLS handshake with {} failed: {e}", self.url.host_port()))
                    })?;
                Ok(Stream::Connected(Box::new(stream)))
            }
            b'N' if !self.url.sslmode.tls_required() => {
                // sslmode=prefer/allow: carry on unencrypted on the same socket.
                Ok(Stream::Plain(tcp))
            }
            b'N' => Err(ServerError::Tls(format!(
                "server {} refused TLS but sslmode={} requires it",
                self.url.host_port(),
                self.url.sslmode.as_str()
            ))),
            _ => Err(ServerError::Protocol("unexpected answer to SSLRequest".into())),
        }
    }
}

/// TCP keepalive on server sockets: a server that vanished without a FIN or RST (a network
/// partition, a host gone) is noticed after about a minute of silence instead of the kernel's
/// two hours, on idle pooled connections and under long queries alike.
const KEEPALIVE_IDLE_SECS: u32 = 30;
const KEEPALIVE_INTERVAL_SECS: u32 = 10;
const KEEPALIVE_PROBES: u32 = 3;

/// Best effort: a socket that refuses an option still works, only without the early warning.
fn set_keepalive(tcp: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    if let Err(e) = setsockopt(tcp, sockopt::KeepAlive, &true) {
        tracing::debug!(error = %e, "server_keepalive_unavailable");
        return;
    }
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    let _ = setsockopt(tcp, sockopt::TcpKeepIdle, &KEEPALIVE_IDLE_SECS);
    #[cfg(not(any(target_os = "openbsd", target_os = "haiku", target_os = "redox")))]
    {
        let _ = setsockopt(tcp, sockopt::TcpKeepInterval, &KEEPALIVE_INTERVAL_SECS);
        let _ = setsockopt(tcp, sockopt::TcpKeepCount, &KEEPALIVE_PROBES);
    }
}

impl Target {
    /// Asks Postgres to cancel what the server `pid` runs, on a connection of its own; done
    /// once Postgres has read the request (it then closes the connection), within `limit`.
    pub async fn cancel(&self, pid: i32, secret: i32, limit: std::time::Duration) -> Result<(), ServerError> {
        let send = async {
            let mut stream = self.open().await?;
            let mut buf = BytesMut::new();
            frontend::cancel_request(pid, secret, &mut buf);
            stream.write_all(&buf).await.map_err(ServerError::io)?;
            stream.flush().await.map_err(ServerError::io)?;
            let mut sink = [0u8; 16];
            let _ = stream.read(&mut sink).await;
            Ok(())
        };
        tokio::time::timeout(limit, send).await.unwrap_or_else(|_| {
            Err(ServerError::Timeout(format!("cancel request not taken within {limit:?}")))
        })
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Most PBKDF2 rounds a server may ask of the proxy (PostgreSQL uses 4,096 unless
/// `scram_iterations` is raised): the challenge is the server's input, and the rounds cost the
/// proxy's CPU.
const MAX_SCRAM_ITERATIONS: u32 = 100_000;

/// The iteration count (`i=`) of a SCRAM server-first message.
fn scram_iterations(server_first: &[u8]) -> Option<u32> {
    std::str::from_utf8(server_first)
        .ok()?
        .split(',')
        .find_map(|attr| attr.strip_prefix("i="))
        .and_then(|n| n.parse().ok())
}

/// An authenticated server connection.
pub struct ServerConn {
    pub id: u64,
    pub io: Stream,
    pub rbuf: BytesMut,
    pub pid: i32,
    pub secret: i32,
    /// ParameterStatus values reported at login.
    pub login_params: BTreeMap<String, String>,
    /// The NoticeResponse messages of the login, whole, as PostgreSQL sent them (usually none).
    pub login_notices: bytes::Bytes,
    /// The client settings its startup packet carried besides the URL's (session mode opens a
    /// server with its client's): what RESET returns to.
    pub startup: Arc<crate::params::Settings>,
    /// Session settings the proxy has applied on behalf of clients (name -> value).
    pub applied: crate::params::Settings,
    /// Proxy-wide prepared statements this server holds.
    pub statements: crate::prepared::ServerStatements,
    pub created: Instant,
    pub last_used: Instant,
    /// The pool generation this connection was opened in; RECONNECT starts a new one.
    pub generation: u64,
    /// Not yet handed back by a client: logged in just now, so it needs no check.
    pub fresh: bool,
}

/// What the admin console shows about a server connection (SHOW SERVERS).
#[derive(Debug, Clone, Copy)]
pub struct ServerInfo {
    pub pid: i32,
    pub created: Instant,
    pub prepared_statements: usize,
    pub tls: bool,
}

impl std::fmt::Debug for ServerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConn").field("id", &self.id).field("pid", &self.pid).finish_non_exhaustive()
    }
}

impl ServerConn {
    pub fn info(&self) -> ServerInfo {
        ServerInfo {
            pid: self.pid,
            created: self.created,
            prepared_statements: self.statements.len(),
            tls: self.io.is_tls(),
        }
    }

    /// Connects and logs in, within the target's connect timeout.
    pub async fn connect(target: &Target) -> Result<ServerConn, ServerError> {
        Self::connect_with(target, Default::default()).await
    }

    /// [`ServerConn::connect`] with a client's startup settings in the startup packet, after
    /// the URL's (PostgreSQL applies them in that order, so the client's win).
    pub async fn connect_with(
        target: &Target,
        startup: Arc<crate::params::Settings>,
    ) -> Result<ServerConn, ServerError> {
        match tokio::time::timeout(target.connect_timeout, Self::connect_inner(target, startup)).await {
            Ok(r) => r,
            Err(_) => Err(ServerError::Timeout(format!(
                "connecting to {} took longer than {:?} (PGSIDECAR_SERVER_CONNECT_TIMEOUT or the URL's connect_timeout)",
                target.url.host_port(),
                target.connect_timeout
            ))),
        }
    }

    async fn connect_inner(
        target: &Target,
        startup: Arc<crate::params::Settings>,
    ) -> Result<ServerConn, ServerError> {
        let io = target.open().await?;
        let url = &target.url;
        let mut conn = ServerConn {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            io,
            rbuf: BytesMut::with_capacity(8192),
            pid: 0,
            secret: 0,
            login_params: BTreeMap::new(),
            login_notices: Default::default(),
            startup: startup.clone(),
            applied: Default::default(),
            statements: crate::prepared::ServerStatements::new(target.max_prepared),
            created: Instant::now(),
            last_used: Instant::now(),
            generation: 0,
            fresh: true,
        };
        let mut params: Vec<(&str, &str)> = vec![("user", &url.user), ("database", &url.database)];
        if let Some(app) = url.application_name.as_ref().filter(|_| !startup.contains_key("application_name"))
        {
            params.push(("application_name", app));
        }
        if let Some(options) = &url.options {
            // Validate here so a bad URL fails loudly; Postgres parses the same syntax.
            parse_options(options).map_err(|e| ServerError::Protocol(format!("the URL's options: {e}")))?;
            params.push(("options", options));
        }
        params.extend(startup.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut buf = BytesMut::new();
        frontend::startup_message(params.iter().copied(), &mut buf).map_err(ServerError::io)?;
        conn.io.write_all(&buf).await.map_err(ServerError::io)?;
        conn.authenticate(url).await?;
        let mut notices = BytesMut::new();
        loop {
            let (t, body) = conn.read_message().await?;
            match t {
                tag::PARAMETER_STATUS => {
                    let (k, v) = parse_parameter_status(&body).map_err(ServerError::protocol)?;
                    conn.login_params.insert(k, v);
                }
                tag::BACKEND_KEY_DATA if body.len() == 8 => {
                    conn.pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                    conn.secret = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                }
                tag::READY_FOR_QUERY => break,
                tag::ERROR_RESPONSE => return Err(ServerError::at_login(&body, &notices)),
                tag::NOTICE_RESPONSE => put_message(&mut notices, tag::NOTICE_RESPONSE, &body),
                other => {
                    return Err(ServerError::Protocol(format!(
                        "unexpected message {:?} during login",
                        other as char
                    )))
                }
            }
        }
        conn.login_notices = notices.freeze();
        Ok(conn)
    }

    async fn authenticate(&mut self, url: &DbUrl) -> Result<(), ServerError> {
        let password = url.password.expose().as_bytes();
        let mut buf = BytesMut::new();
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (t, body) = self.read_message().await?;
            if t == tag::ERROR_RESPONSE {
                return Err(ServerError::from_error_body(&body));
            }
            if t != tag::AUTHENTICATION || body.len() < 4 {
                return Err(ServerError::Protocol("expected an authentication request".into()));
            }
            let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            let data = &body[4..];
            buf.clear();
            match code {
                0 => return Ok(()),
                3 => frontend::password_message(password, &mut buf).map_err(ServerError::io)?,
                5 if data.len() == 4 => {
                    let salt = [data[0], data[1], data[2], data[3]];
                    let hash =
                        postgres_protocol::authentication::md5_hash(url.user.as_bytes(), password, salt);
                    frontend::password_message(hash.as_bytes(), &mut buf).map_err(ServerError::io)?;
                }
                10 => {
                    let offers_scram = data.split(|&b| b == 0).any(|m| m == SCRAM_SHA_256.as_bytes());
                    if !offers_scram {
                        return Err(ServerError::Protocol(
                            "server offers no SASL mechanism pgsidecar supports".into(),
                        ));
                    }
                    let s = ScramSha256::new(password, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut buf)
                        .map_err(ServerError::io)?;
                    scram = Some(s);
                }
                11 => {
                    let mut s = scram
                        .take()
                        .ok_or_else(|| ServerError::Protocol("SASL continue before start".into()))?;
                    match scram_iterations(data) {
                        Some(n) if n <= MAX_SCRAM_ITERATIONS => {}
                        _ => {
                            return Err(ServerError::Auth(format!(
                                "the server's SCRAM challenge has no iteration count, or one above {MAX_SCRAM_ITERATIONS}"
                            )))
                        }
                    }
                    // The key derivation (PBKDF2, 4,096 rounds by default: ~15 ms) runs off the
                    // runtime's thread, which serves every client.
                    let data = data.to_vec();
                    let s = tokio::task::spawn_blocking(move || s.update(&data).map(|()| s))
                        .await
                        .map_err(|_| ServerError::Protocol("SCRAM key derivation did not finish".into()))?
                        .map_err(|e| ServerError::Auth(format!("SCRAM: {e}")))?;
                    frontend::sasl_response(s.message(), &mut buf).map_err(ServerError::io)?;
                    scram = Some(s);
                }
                12 => {
                    let mut s = scram
                        .take()
                        .ok_or_else(|| ServerError::Protocol("SASL final before start".into()))?;
                    s.finish(data).map_err(|e| {
                        ServerError::Auth(format!("server's SCRAM signature is invalid: {e}"))
                    })?;
                    continue;
                }
                other => {
                    return Err(ServerError::Auth(format!(
                        "server asks for authentication method {other}, which pgsidecar does not support"
                    )))
                }
            }
            self.io.write_all(&buf).await.map_err(ServerError::io)?;
        }
    }

    /// Reads one whole message (bounded) during login or an internal query.
    pub async fn read_message(&mut self) -> Result<(u8, BytesMut), ServerError> {
        loop {
            if let Some(frame) =
                split_frame(&mut self.rbuf, MAX_CONTROL_MESSAGE).map_err(ServerError::protocol)?
            {
                return Ok(frame);
            }
            self.rbuf.reserve(8192);
            let n = std::future::poll_fn(|cx| {
                poll_read_buf(std::pin::Pin::new(&mut self.io), cx, &mut self.rbuf)
            })
            .await
            .map_err(ServerError::io)?;
            if n == 0 {
                return Err(ServerError::Closed);
            }
        }
    }

    /// Runs statements of the proxy's own and returns the text rows; the server must be idle.
    /// ParameterStatus changes are recorded in `reported`.
    pub async fn exec(
        &mut self,
        sql: &str,
        reported: &mut Vec<(String, String)>,
    ) -> Result<Vec<Vec<Option<String>>>, ServerError> {
        let mut buf = BytesMut::new();
        messages::query(&mut buf, sql);
        self.io.write_all(&buf).await.map_err(ServerError::io)?;
        self.io.flush().await.map_err(ServerError::io)?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (t, body) = self.read_message().await?;
            match t {
                tag::DATA_ROW => rows.push(parse_data_row(&body)?),
                tag::ERROR_RESPONSE => error = Some(ServerError::from_error_body(&body)),
                tag::PARAMETER_STATUS => {
                    reported.push(parse_parameter_status(&body).map_err(ServerError::protocol)?)
                }
                tag::READY_FOR_QUERY => {
                    let status = parse_ready_for_query(&body).map_err(ServerError::protocol)?;
                    if let Some(e) = error {
                        return Err(e);
                    }
                    if status != b'I' {
                        return Err(ServerError::Protocol(
                            "server is still in a transaction after an internal query".into(),
                        ));
                    }
                    return Ok(rows);
                }
                _ => {}
            }
        }
    }

    /// Runs a script of the proxy's own (several statements in one simple query) and returns
    /// each statement's answer in order, up to the one that failed (PostgreSQL runs no more),
    /// with the transaction status the server ends in. ParameterStatus messages are ignored.
    pub async fn exec_each(&mut self, sql: &str) -> Result<(Vec<Answer>, u8), ServerError> {
        let mut buf = BytesMut::new();
        messages::query(&mut buf, sql);
        self.io.write_all(&buf).await.map_err(ServerError::io)?;
        self.io.flush().await.map_err(ServerError::io)?;
        let mut answers = Vec::new();
        let mut current = Answer::default();
        loop {
            let (t, body) = self.read_message().await?;
            match t {
                tag::DATA_ROW => current.rows.push(parse_data_row(&body)?),
                tag::NOTICE_RESPONSE => put_message(&mut current.notices, t, &body),
                tag::COMMAND_COMPLETE | tag::EMPTY_QUERY_RESPONSE => {
                    answers.push(std::mem::take(&mut current))
                }
                tag::ERROR_RESPONSE => {
                    current.error = Some(body.freeze());
                    answers.push(std::mem::take(&mut current));
                }
                tag::READY_FOR_QUERY => {
                    let status = parse_ready_for_query(&body).map_err(ServerError::protocol)?;
                    return Ok((answers, status));
                }
                _ => {}
            }
        }
    }

    /// The pool's check of a server that sat idle: an empty query must come back with
    /// ReadyForQuery (outside a transaction) within `limit`. On failure the connection is in
    /// an unknown state and must be closed.
    pub async fn check(&mut self, limit: std::time::Duration) -> Result<(), ServerError> {
        match tokio::time::timeout(limit, self.exec("", &mut Vec::new())).await {
            Ok(r) => r.map(drop),
            Err(_) => Err(ServerError::Timeout(format!("no answer to the server check within {limit:?}"))),
        }
    }

    /// Sends Terminate and closes, ignoring errors: the connection is going away anyway.
    pub async fn close(mut self) {
        let mut buf = BytesMut::new();
        messages::terminate(&mut buf);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            let _ = self.io.write_all(&buf).await;
            let _ = self.io.shutdown().await;
        })
        .await;
    }

    /// Frees the read buffer's allocation when a large message left it big: an idle server
    /// keeps a small one.
    pub fn trim(&mut self) {
        crate::wire::frame::shrink_empty(&mut self.rbuf, KEEP_READ_BUFFER);
    }

    /// Whether the idle connection has been closed or has sent something unasked (a FATAL
    /// after pg_terminate_backend, say). Never blocks.
    pub fn is_stale(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return true;
        }
        self.rbuf.reserve(64);
        self.io.has_input_now(&mut self.rbuf)
    }
}

/// One statement's answer to [`ServerConn::exec_each`].
#[derive(Debug, Default)]
pub struct Answer {
    pub rows: Vec<Vec<Option<String>>>,
    /// Its NoticeResponse messages, whole.
    pub notices: BytesMut,
    /// The body of its ErrorResponse.
    pub error: Option<bytes::Bytes>,
}

/// Appends a whole message: tag, length, body.
fn put_message(buf: &mut BytesMut, tag: u8, body: &[u8]) {
    use bytes::BufMut;
    buf.put_u8(tag);
    buf.put_i32(body.len() as i32 + 4);
    buf.put_slice(body);
}

fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, ServerError> {
    let mut b = body;
    if b.len() < 2 {
        return Err(ServerError::Protocol("short DataRow".into()));
    }
    let n = b.get_i16();
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        if b.len() < 4 {
            return Err(ServerError::Protocol("short DataRow".into()));
        }
        let len = b.get_i32();
        if len < 0 {
            out.push(None);
            continue;
        }
        let len = len as usize;
        if b.len() < len {
            return Err(ServerError::Protocol("short DataRow".into()));
        }
        out.push(Some(String::from_utf8_lossy(&b[..len]).into_owned()));
        b.advance(len);
    }
    Ok(out)
}

/// The ErrorResponse fields of a server error, when the server sent one.
pub fn error_fields(body: &[u8]) -> Option<ErrorFields> {
    ErrorFields::parse(body).ok()
}

/// Whether TLS is in use for this mode at all (for logs).
pub fn uses_tls(mode: SslMode) -> bool {
    mode != SslMode::Disable
}

#[cfg(test)]
mod tests {
    #[test]
    fn scram_iteration_count_is_read_and_bounded() {
        assert_eq!(super::scram_iterations(b"r=abc,s=c2FsdA==,i=4096"), Some(4096));
        assert_eq!(super::scram_iterations(b"r=abc,s=c2FsdA=="), None);
        assert_eq!(super::scram_iterations(b"r=abc,s=x,i=99999999999"), None);
        assert!(super::scram_iterations(b"r=a,s=b,i=200000").unwrap() > super::MAX_SCRAM_ITERATIONS);
    }
}
