//! A client's way in: SSL/GSS negotiation, the startup packet, protocol version, database
//! selection and authentication. Everything read here is bounded by Postgres' own startup
//! limit or by `MAX_PRE_AUTH_MESSAGE`, and the whole exchange by the login timeout.

use crate::admin::console::ConsoleLogin;
use crate::auth::scram::{self, Exchange, ScramError};
use crate::auth::Credentials;
use crate::config::ClientAuth;
use crate::shared::Shared;
use crate::stream::Stream;
use crate::upstream::Upstream;
use crate::wire::frame::{split_frame, Reader};
use crate::wire::messages::{self, PgError};
use crate::wire::startup::{parse_options, split_startup, Startup, StartupPacket};
use crate::wire::{tag, MAX_PRE_AUTH_MESSAGE};
use bytes::BytesMut;
use rand::RngCore;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// An authenticated client, ready for its session.
pub struct Login {
    pub stream: Stream,
    pub rbuf: BytesMut,
    /// The end of the authentication exchange (SASL's final message), AuthenticationOk and
    /// the notices PostgreSQL sends while it applies the startup settings, not yet sent: they
    /// go out with the rest of the greeting, in one write.
    pub greeting: BytesMut,
    pub startup: Startup,
    pub user: String,
    pub database: String,
    pub upstream: Arc<Upstream>,
    /// The startup settings: as PostgreSQL shows them in transaction mode, as the client
    /// spelled them in session mode (where its server is opened with them).
    pub settings: crate::params::Settings,
    /// The same in the order PostgreSQL applies them, names as spelled (dropped with the
    /// login: a session keeps only `settings`).
    pub sequence: Vec<(String, String)>,
    pub peer: crate::stream::Peer,
}

pub enum Outcome {
    Login(Box<Login>),
    /// The client asked for the admin console's virtual database.
    Console(Box<ConsoleLogin>),
    /// The connection carried a CancelRequest, which has been handed on.
    Cancel,
    /// The client was refused; the error (if any) has been sent.
    Refused,
}

/// Why the handshake stopped early. The message, if any, is sent before closing.
pub struct Refusal {
    pub error: Option<PgError>,
    pub log: &'static str,
}

impl Refusal {
    fn send(error: PgError, log: &'static str) -> Refusal {
        Refusal { error: Some(error), log }
    }
    fn silent(log: &'static str) -> Refusal {
        Refusal { error: None, log }
    }
}

async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> Result<(), Refusal> {
    match stream.read_buf(buf).await {
        Ok(0) | Err(_) => Err(Refusal::silent("client_closed_during_login")),
        Ok(_) => Ok(()),
    }
}

async fn write<S: AsyncWrite + Unpin>(stream: &mut S, buf: &mut BytesMut) -> Result<(), Refusal> {
    let r = async {
        stream.write_all(buf).await?;
        stream.flush().await
    }
    .await;
    buf.clear();
    r.map_err(|_| Refusal::silent("client_closed_during_login"))
}

/// What the startup phase ended with.
pub(crate) enum StartupStep {
    /// The client asked for TLS and `S` has been answered: the stream is to be upgraded.
    Tls,
    /// A CancelRequest, handed on.
    Cancel,
    Startup(Startup),
}

/// Reads startup packets until a StartupMessage or CancelRequest, answering SSL and GSS
/// requests on the way. `tls` says whether an SSLRequest can be accepted on this stream;
/// accepting it (answering `S`) ends this step, and the caller upgrades the stream.
pub(crate) async fn read_startup_packet<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    stream: &mut S,
    rbuf: &mut BytesMut,
    tls: bool,
) -> Result<StartupStep, Refusal> {
    let mut out = BytesMut::new();
    loop {
        let packet = match split_startup(rbuf) {
            Ok(Some(p)) => p,
            Ok(None) => {
                read_more(stream, rbuf).await?;
                continue;
            }
            Err(e) => {
                return Err(Refusal::send(
                    PgError::fatal("08P01", format!("invalid startup packet: {e}")),
                    "bad_startup_packet",
                ))
            }
        };
        match packet {
            StartupPacket::SslRequest if tls => {
                if !rbuf.is_empty() {
                    // Bytes sent after SSLRequest but before the handshake would be taken as
                    // if they were encrypted (CVE-2021-23222): refuse them.
                    return Err(Refusal::silent("data_after_ssl_request"));
                }
                out.extend_from_slice(b"S");
                write(stream, &mut out).await?;
                return Ok(StartupStep::Tls);
            }
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                messages::refuse_encryption(&mut out);
                write(stream, &mut out).await?;
            }
            StartupPacket::Cancel { pid, secret } => {
                // The connection is closed once PostgreSQL has taken the cancel (or the forward
                // gave up, within the connect timeout), as PostgreSQL closes it.
                if let Some(forwarded) = shared.cancels.cancel(pid, secret) {
                    // pgsidecar_cancels_total of the pool that owns the server (a cancel of a
                    // waiting client is counted by its session, once it has left the queue).
                    let pool =
                        shared.upstreams().iter().find(|u| Arc::ptr_eq(&u.pool.target, &forwarded.target));
                    if let Some(up) = pool {
                        up.counters.cancels.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    let _ = forwarded.task.await;
                }
                return Ok(StartupStep::Cancel);
            }
            StartupPacket::Startup(s) => return Ok(StartupStep::Startup(s)),
        }
    }
}

/// Reads the startup packet, answering SSL and GSS requests on the way and upgrading the
/// stream to TLS when the client asks and the proxy has a certificate.
async fn read_startup(
    shared: &Shared,
    mut stream: Stream,
    rbuf: &mut BytesMut,
) -> Result<(Stream, Option<Startup>), Refusal> {
    loop {
        let tls = shared.client_tls.is_some() && matches!(stream, Stream::Plain(_));
        match read_startup_packet(shared, &mut stream, rbuf, tls).await? {
            StartupStep::Tls => {
                let (Some(acceptor), Stream::Plain(tcp)) = (&shared.client_tls, stream) else {
                    unreachable!("TLS is only accepted on a plain stream with an acceptor")
                };
                stream = match acceptor.accept(tcp).await {
                    Ok(s) => Stream::Accepted(Box::new(s)),
                    Err(_) => return Err(Refusal::silent("client_tls_handshake_failed")),
                };
            }
            StartupStep::Cancel => return Ok((stream, None)),
            StartupStep::Startup(s) => return Ok((stream, Some(s))),
        }
    }
}

/// Reads one password-type message ('p') before authentication completes.
async fn read_password_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
) -> Result<BytesMut, Refusal> {
    loop {
        match split_frame(rbuf, MAX_PRE_AUTH_MESSAGE) {
            Ok(Some((tag::PASSWORD, body))) => return Ok(body),
            Ok(Some((t, _))) => {
                return Err(Refusal::send(
                    PgError::fatal(
                        "08P01",
                        format!("expected a password response, got message type {:?}", t as char),
                    ),
                    "unexpected_message_during_auth",
                ))
            }
            Ok(None) => read_more(stream, rbuf).await?,
            Err(e) => {
                return Err(Refusal::send(
                    PgError::fatal("08P01", format!("invalid message during authentication: {e}")),
                    "bad_auth_message",
                ))
            }
        }
    }
}

fn auth_failed(user: &str) -> Refusal {
    Refusal::send(
        PgError::fatal("28P01", format!("password authentication failed for user \"{user}\"")),
        "auth_failed",
    )
}

async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    method: ClientAuth,
    creds: &Credentials,
    user: &str,
    out: &mut BytesMut,
) -> Result<(), Refusal> {
    let user_ok = creds.user == user;
    match method {
        ClientAuth::Trust if user_ok => Ok(()),
        ClientAuth::Trust => Err(Refusal::send(
            PgError::fatal(
                "28000",
                format!("role \"{user}\" is not served here: connect as the user of the database URL"),
            ),
            "auth_failed",
        )),
        ClientAuth::Md5 => {
            let mut salt = [0u8; 4];
            rand::rng().fill_bytes(&mut salt);
            messages::auth_md5(out, salt);
            write(stream, out).await?;
            let body = read_password_message(stream, rbuf).await?;
            let response = body.strip_suffix(b"\0").unwrap_or(&body);
            if user_ok && creds.has_password() && creds.check_md5(response, salt) {
                Ok(())
            } else {
                Err(auth_failed(user))
            }
        }
        ClientAuth::ScramSha256 => {
            messages::auth_sasl(out, &[scram::MECHANISM]);
            write(stream, out).await?;
            let body = read_password_message(stream, rbuf).await?;
            let mut r = Reader::new(&body, "SASLInitialResponse");
            let malformed = || {
                Refusal::send(PgError::fatal("08P01", "malformed SASLInitialResponse"), "bad_auth_message")
            };
            let mechanism = r.cstr().map_err(|_| malformed())?;
            if mechanism != scram::MECHANISM {
                return Err(Refusal::send(
                    PgError::fatal(
                        "28000",
                        format!("client selected an invalid SASL authentication mechanism {mechanism:?}"),
                    ),
                    "auth_failed",
                ));
            }
            let len = r.i32().map_err(|_| malformed())?;
            let data = r.remaining();
            if len < 0 || len as usize != data.len() {
                return Err(malformed());
            }
            let mut exchange = Exchange::new(&creds.scram);
            let scram_err = |e: ScramError| match e {
                ScramError::BadProof | ScramError::Nonce => auth_failed(user),
                other => Refusal::send(PgError::fatal("08P01", other.to_string()), "bad_auth_message"),
            };
            let server_first = exchange.client_first(data).map_err(scram_err)?;
            messages::auth_sasl_continue(out, server_first.as_bytes());
            write(stream, out).await?;
            let body = read_password_message(stream, rbuf).await?;
            let server_final = exchange.client_final(&body).map_err(scram_err)?;
            if !user_ok || !creds.has_password() {
                // Same answer as a wrong password: do not reveal which users exist.
                return Err(auth_failed(user));
            }
            messages::auth_sasl_final(out, server_final.as_bytes());
            Ok(())
        }
    }
}

/// Runs the handshake up to (not including) AuthenticationOk.
pub async fn handshake(
    shared: &Arc<Shared>,
    stream: Stream,
    peer: crate::stream::Peer,
    over_limit: bool,
) -> (Option<Stream>, Result<Outcome, Refusal>) {
    let mut rbuf = BytesMut::with_capacity(512);
    let (mut stream, startup) = match read_startup(shared, stream, &mut rbuf).await {
        Ok(x) => x,
        Err(r) => return (None, Err(r)),
    };
    let Some(startup) = startup else {
        return (Some(stream), Ok(Outcome::Cancel));
    };
    let result = login(shared, &mut stream, &mut rbuf, startup, over_limit).await;
    match result {
        Ok(Admitted::Pool { startup, user, database, upstream, sequence, mut greeting }) => {
            messages::auth_ok(&mut greeting);
            let settings = crate::params::from_startup(&sequence);
            let login =
                Login { stream, rbuf, greeting, startup, user, database, upstream, settings, sequence, peer };
            (None, Ok(Outcome::Login(Box::new(login))))
        }
        Ok(Admitted::Console { user, database, application_name }) => (
            None,
            Ok(Outcome::Console(Box::new(ConsoleLogin {
                stream,
                rbuf,
                user,
                database,
                application_name,
                peer,
            }))),
        ),
        Err(r) => (Some(stream), Err(r)),
    }
}

/// Finishes a pool client's login with its startup settings as PostgreSQL takes them: in
/// transaction mode (see [`crate::params::canonical`]) their values as PostgreSQL shows them and its
/// notices go into the greeting, and a setting PostgreSQL refuses gets its FATAL error after
/// AuthenticationOk (`None`: the client has been told). In session mode the client's server is
/// opened with them, and its login says what PostgreSQL does with them. Not bounded by the
/// login timeout: a client with settings not seen yet waits for a server as a query does.
pub async fn settle_startup_settings(shared: &Shared, mut login: Box<Login>) -> Option<Box<Login>> {
    if shared.config.pool.mode == crate::config::PoolMode::Session || login.sequence.is_empty() {
        return Some(login);
    }
    match crate::params::canonical::resolve(
        &login.upstream.startup_values,
        &login.upstream.pool,
        &login.sequence,
    )
    .await
    {
        Ok(r) => {
            login.settings = r.settings;
            login.greeting.unsplit(r.notices);
            Some(login)
        }
        Err(refused) => {
            tracing::debug!(peer = %login.peer, reason = "startup_setting_refused", "client_refused");
            let Login { mut stream, mut greeting, .. } = *login;
            greeting.unsplit(refused.notices);
            greeting.unsplit(refused.error);
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(1), write(&mut stream, &mut greeting))
                    .await;
            None
        }
    }
}

/// Where an authenticated client goes.
pub(crate) enum Admitted {
    Pool {
        startup: Startup,
        user: String,
        database: String,
        upstream: Arc<Upstream>,
        /// The startup settings in the order PostgreSQL applies them.
        sequence: Vec<(String, String)>,
        greeting: BytesMut,
    },
    Console {
        user: String,
        database: String,
        application_name: String,
    },
}

/// Everything after the startup packet: protocol negotiation, database selection and
/// authentication.
pub(crate) async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    stream: &mut S,
    rbuf: &mut BytesMut,
    startup: Startup,
    over_limit: bool,
) -> Result<Admitted, Refusal> {
    let mut out = BytesMut::new();
    let (user, database) = who(shared, &startup, over_limit)?;
    let unrecognized: Vec<&str> =
        startup.params.iter().map(|(k, _)| k.as_str()).filter(|k| k.starts_with("_pq_.")).collect();
    if startup.minor > 0 || !unrecognized.is_empty() {
        // The newest version served, in full (3.0 is 196608), as Postgres sends it: libpq 18
        // refuses a downgrade below 3.0, which a bare minor of 0 would read as.
        messages::negotiate_protocol_version(&mut out, crate::wire::PROTOCOL_3_0, &unrecognized);
    }
    let options = match startup.param("options").map(parse_options).transpose() {
        Ok(o) => o.unwrap_or_default(),
        Err(e) => {
            return Err(Refusal::send(
                PgError::fatal("22023", format!("invalid options startup parameter: {e}")),
                "bad_options",
            ))
        }
    };
    if crate::admin::is_console_database(&database) {
        let user = console_login(shared, stream, rbuf, &user, &mut out).await?;
        if !out.is_empty() {
            write(stream, &mut out).await?;
        }
        let application_name = startup.param("application_name").unwrap_or_default().to_owned();
        return Ok(Admitted::Console { user, database, application_name });
    }
    let Some(upstream) = shared.upstream(&database) else {
        return Err(Refusal::send(
            PgError::fatal("3D000", format!("database \"{database}\" does not exist")),
            "unknown_database",
        ));
    };
    if let Err(refusal) =
        authenticate(stream, rbuf, shared.config.client.auth, &upstream.credentials, &user, &mut out).await
    {
        if refusal.log == "auth_failed" {
            upstream.counters.error(crate::observe::stats::PoolerError::AuthFailure);
        }
        return Err(refusal);
    }
    // SASL's final message waits for AuthenticationOk: one write and one wake-up of the
    // client for both.
    let sequence = crate::params::startup_sequence(&startup.params, &options);
    Ok(Admitted::Pool { startup, user, database, upstream, sequence, greeting: out })
}

/// The user and database a startup packet asks for, or its refusal: no user, a replication
/// connection, or one client too many (PGSIDECAR_MAX_CLIENT_CONN).
fn who(shared: &Shared, startup: &Startup, over_limit: bool) -> Result<(String, String), Refusal> {
    let Some(user) = startup.param("user").map(str::to_owned) else {
        return Err(Refusal::send(
            PgError::fatal("28000", "no PostgreSQL user name specified in startup packet"),
            "no_user",
        ));
    };
    let database = startup.param("database").filter(|d| !d.is_empty()).unwrap_or(&user).to_owned();
    if startup.param("replication").is_some_and(|r| r != "false" && r != "0" && r != "off") {
        return Err(Refusal::send(
            PgError::fatal(
                "0A000",
                "pgsidecar does not pool replication connections: connect to the database directly",
            ),
            "replication_refused",
        ));
    }
    if over_limit {
        if let Some(up) = shared.upstream(&database) {
            up.counters.error(crate::observe::stats::PoolerError::MaxClients);
        }
        return Err(Refusal::send(
            PgError::fatal(
                "53300",
                format!(
                    "sorry, too many clients already: pgsidecar serves at most {} client connections",
                    shared.config.client.max_clients
                ),
            )
            .with_hint(
                "raise PGSIDECAR_MAX_CLIENT_CONN, or lower the number of connections the application opens",
            ),
            "max_client_conn",
        ));
    }
    Ok((user, database))
}

/// Authenticates a client of the admin console with the credentials of the upstream whose
/// URL names the same user, then applies PGSIDECAR_ADMIN_USERS.
async fn console_login<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    stream: &mut S,
    rbuf: &mut BytesMut,
    user: &str,
    out: &mut BytesMut,
) -> Result<String, Refusal> {
    let upstreams = shared.upstreams();
    // A user no URL names still goes through the exchange (against credentials it cannot
    // match), so the answer does not tell which users exist.
    let upstream = upstreams.iter().find(|u| u.credentials.user == user).unwrap_or(&upstreams[0]);
    if let Err(refusal) =
        authenticate(stream, rbuf, shared.config.client.auth, &upstream.credentials, user, out).await
    {
        if refusal.log == "auth_failed" {
            upstream.counters.error(crate::observe::stats::PoolerError::AuthFailure);
        }
        return Err(refusal);
    }
    if !shared.config.admin.allows(user) {
        return Err(Refusal::send(
            PgError::fatal("28000", format!("user \"{user}\" is not allowed to use the admin console"))
                .with_hint("PGSIDECAR_ADMIN_USERS lists the users who may"),
            "admin_not_allowed",
        ));
    }
    Ok(user.to_owned())
}
