//! The running proxy: its upstreams and pools, the cancel registry, and the accept loop.

use crate::auth::Credentials;
use crate::cancel::Registry;
use crate::client::handshake::{handshake, Login, Outcome};
use crate::client::session::Session;
use crate::config::sizing::{self, DbLimits, Sizing};
use crate::config::Config;
use crate::server::conn::ServerConn;
use crate::server::conn::Target;
use crate::server::pool::Pool;
use crate::server::ServerError;
use crate::stream::Stream;
use bytes::BytesMut;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// One upstream database: its pool and the credentials clients must present.
pub struct Upstream {
    pub var: String,
    pub pool: Arc<Pool>,
    pub credentials: Credentials,
    /// The last sizing decision (pool-size auto), for logs and the admin console.
    pub sizing: std::sync::Mutex<Option<Sizing>>,
    /// Counters of this pool's traffic.
    pub counters: crate::observe::stats::Counters,
    /// The cross-dyno budget as last computed.
    pub budget: crate::budget::BudgetState,
    /// Clients' startup settings as PostgreSQL takes them (transaction mode).
    pub startup_values: crate::client::canonical::StartupValues,
}

pub struct Proxy {
    pub config: Arc<Config>,
    upstreams: Vec<Arc<Upstream>>,
    pub cancels: Arc<Registry>,
    pub client_tls: Option<tokio_rustls::TlsAcceptor>,
    clients: AtomicUsize,
    /// Admin console sessions among `clients`; they do not hold up a drain.
    consoles: AtomicUsize,
    /// When the proxy started (SHOW STATS averages).
    pub started: std::time::Instant,
    /// Clients pinned to their server by session state (transaction mode).
    pub pinned: AtomicUsize,
    pub slow_log: Arc<crate::observe::slowlog::SlowLog>,
    /// Woken when the last client leaves.
    idle: tokio::sync::Notify,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{var}: {error}")]
    Tls { var: String, error: crate::tls::TlsConfigError },
    #[error("client TLS: {0}")]
    ClientTls(crate::tls::TlsConfigError),
}

/// Counts a connected client for PGSIDECAR_MAX_CLIENT_CONN.
struct ClientGuard(Arc<Proxy>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
        self.0.notify_if_idle();
    }
}

/// Marks a client as an admin console session for as long as it lives.
struct ConsoleGuard(Arc<Proxy>);

impl ConsoleGuard {
    fn new(proxy: Arc<Proxy>) -> ConsoleGuard {
        proxy.consoles.fetch_add(1, Ordering::AcqRel);
        proxy.notify_if_idle();
        ConsoleGuard(proxy)
    }
}

impl Drop for ConsoleGuard {
    fn drop(&mut self) {
        self.0.consoles.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Proxy {
    pub fn new(config: Config) -> Result<Arc<Proxy>, ProxyError> {
        let mut upstreams = Vec::new();
        for up in &config.upstreams {
            let mut target = Target::new(up.url.clone(), config.pool.connect_timeout)
                .map_err(|error| ProxyError::Tls { var: up.var.clone(), error })?;
            target.max_prepared = config.pool.max_prepared_statements;
            let pool = Pool::new(up.url.database.clone(), Arc::new(target), config.pool.clone());
            let upstream = Arc::new(Upstream {
                var: up.var.clone(),
                pool,
                credentials: Credentials::new(&up.url.user, &up.url.password),
                sizing: std::sync::Mutex::new(None),
                counters: Default::default(),
                budget: Default::default(),
                startup_values: Default::default(),
            });
            crate::observe::metrics::register_histograms(&upstream);
            upstreams.push(upstream);
        }
        let client_tls = match (&config.client.tls_cert, &config.client.tls_key) {
            (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(
                crate::tls::client_side_config(cert, key).map_err(ProxyError::ClientTls)?,
            )),
            _ => None,
        };
        let slow_log = Arc::new(crate::observe::slowlog::SlowLog::new(
            config.observe.slow_query,
            config.observe.slow_transaction,
            config.observe.slow_query_max_length,
        ));
        Ok(Arc::new(Proxy {
            config: Arc::new(config),
            upstreams,
            cancels: Arc::new(Registry::default()),
            client_tls,
            clients: AtomicUsize::new(0),
            consoles: AtomicUsize::new(0),
            started: std::time::Instant::now(),
            pinned: AtomicUsize::new(0),
            slow_log,
            idle: tokio::sync::Notify::new(),
        }))
    }

    pub fn upstream(&self, database: &str) -> Option<Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.pool.database == database).cloned()
    }

    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    /// Client connections open right now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Acquire)
    }

    /// Client connections that are not admin console sessions.
    fn app_clients(&self) -> usize {
        self.clients().saturating_sub(self.consoles.load(Ordering::Acquire))
    }

    fn notify_if_idle(&self) {
        if self.app_clients() == 0 {
            self.idle.notify_waiters();
        }
    }

    /// Resolves once no client is connected, apart from admin console sessions (an operator
    /// who typed SHUTDOWN in psql must not hold up the drain).
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.app_clients() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Starts the cross-dyno budget rounds for every auto-sized pool. Until its first round
    /// has published a claim a pool holds at most [`crate::budget::START_SIZE`] servers (its
    /// peers have not counted it); this returns once every first round has ended, successful
    /// or not, so no server is opened beyond the share.
    pub async fn start_budget(self: &Arc<Self>) {
        let cfg = &self.config.pool.sizing;
        let (true, Some(period)) = (cfg.auto, cfg.budget_period) else { return };
        for up in &self.upstreams {
            up.pool.set_max_size(crate::budget::start_size(up));
            up.budget.running.store(true, Ordering::Release);
            tokio::spawn(crate::budget::run(up.clone(), Arc::downgrade(self), period, cfg.reserved));
        }
        // A round is bounded (connecting, the session's set-up and the round each by their own
        // timeout): this bound, past the worst first round, is only a backstop.
        let worst = self.upstreams.iter().map(|u| u.pool.target.connect_timeout).max().unwrap_or_default();
        let deadline =
            tokio::time::Instant::now() + crate::budget::worst_first_round(worst) + Duration::from_secs(2);
        for up in &self.upstreams {
            let _ = tokio::time::timeout_at(deadline, up.budget.first_round()).await;
        }
    }

    /// Sizes every pool whose size is `auto` from its database's connection limit (or the
    /// plan's), and logs every input with the result. Pools keep their fallback size when
    /// neither is known. A pool the shared budget sizes keeps its claim (RELOAD): a round is
    /// run now instead, and no probe connection is opened (the round would count it as an
    /// other, and shrink the claim for a period).
    pub async fn size_pools(&self) {
        let cfg = &self.config.pool.sizing;
        if !cfg.auto {
            return;
        }
        for up in &self.upstreams {
            if up.budget.running.load(Ordering::Acquire) {
                let pool_size = up.pool.stats().max_size;
                if let Some(s) = up.sizing.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                    s.pool_size = pool_size;
                }
                up.budget.wake.notify_one();
                tracing::info!(var = %up.var, database = %up.pool.database, pool_size, "budget_round_requested");
                continue;
            }
            let probe = probe_limits(&up.pool.target).await;
            let (db, error) = match probe {
                Ok((limits, _)) => (Some(limits), None),
                Err(e) => (None, Some(e)),
            };
            let s = sizing::compute(db, cfg.plan.clone(), cfg.reserved, cfg.processes);
            up.pool.set_max_size(s.pool_size);
            log_sizing(&up.var, &up.pool.database, &s, error.as_ref());
            *up.sizing.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
        }
    }

    /// Accepts clients until `shutdown` completes, then stops accepting. Sessions already
    /// running go on.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let maintenance = tokio::spawn(maintain(Arc::downgrade(&self)));
        let sampler = tokio::spawn(crate::observe::metrics::sample(Arc::downgrade(&self)));
        let source = std::env::var("DYNO").unwrap_or_else(|_| "pgsidecar".to_owned());
        let reports = tokio::spawn(crate::observe::report::run(
            Arc::downgrade(&self),
            self.config.observe.stats_period,
            source,
        ));
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let n = self.clients.fetch_add(1, Ordering::Relaxed) + 1;
                    let guard = ClientGuard(self.clone());
                    let over_limit = n > self.config.client.max_clients;
                    // The login future is boxed here, outside the task: an async block or fn
                    // keeps the values it was given (socket, address) in its state for as
                    // long as it lives, even once moved out, so the task of every idle client
                    // would carry them. The task gets only the guard and the box.
                    let admit = Box::pin(self.clone().admit(Stream::Plain(tcp), peer, over_limit));
                    tokio::spawn(Proxy::client(guard, admit));
                }
                Err(e) => {
                    // Out of file descriptors, usually: back off instead of spinning.
                    tracing::warn!(error = %e, "accept_failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        maintenance.abort();
        sampler.abort();
        reports.abort();
    }

    /// A client's task: its login (`admit`, boxed and gone once the client has logged in),
    /// then its session. `guard` counts the client until the task ends. An async block rather
    /// than an async fn: a fn would keep a second copy of the guard in its state.
    #[allow(clippy::manual_async_fn)]
    fn client(
        guard: ClientGuard,
        admit: Pin<Box<impl Future<Output = Option<Box<Login>>> + Send>>,
    ) -> impl Future<Output = ()> + Send {
        async move {
            let Some(login) = admit.await else {
                return;
            };
            tracing::debug!(peer = %login.peer, user = %login.user, database = %login.database, "client_login");
            // Moved out of its box inside a block, so the box is freed now rather than when the
            // client leaves: moving out of a `Box` frees it only when the (shadowed, but still
            // live) `Box` binding goes out of scope, which here would be the end of the session.
            let login: Login = {
                let boxed = login;
                *boxed
            };
            let mut session = Session::new(guard.0.clone(), login);
            session.run().await;
            tracing::debug!(peer = %session.peer(), "client_disconnect");
        }
    }

    /// Startup and authentication; a pool client's login, or `None` when the connection was
    /// something else (the admin console, a cancel request) or was refused.
    async fn admit(
        self: Arc<Self>,
        stream: Stream,
        peer: std::net::SocketAddr,
        over_limit: bool,
    ) -> Option<Box<Login>> {
        let login_timeout = self.config.client.login_timeout;
        let (stream, outcome) = match tokio::time::timeout(
            login_timeout,
            Box::pin(handshake(&self, stream, peer, over_limit)),
        )
        .await
        {
            Ok(x) => x,
            Err(_) => {
                tracing::warn!(peer = %peer, timeout_ms = login_timeout.as_millis() as u64, "client_login_timeout");
                return None;
            }
        };
        match outcome {
            Ok(Outcome::Login(login)) => {
                return crate::client::handshake::settle_startup_settings(&self, login).await;
            }
            Ok(Outcome::Console(login)) => {
                tracing::info!(peer = %peer, user = %login.user, "admin_login");
                let _console = ConsoleGuard::new(self.clone());
                Box::pin(crate::admin::console::run(self.clone(), *login)).await;
                tracing::debug!(peer = %peer, "admin_disconnect");
            }
            Ok(Outcome::Cancel) | Ok(Outcome::Refused) => {}
            Err(refusal) => {
                if matches!(refusal.log, "auth_failed" | "admin_not_allowed")
                    || refusal.error.as_ref().is_some_and(|e| e.code == "53300")
                {
                    tracing::warn!(peer = %peer, reason = refusal.log, "client_refused");
                } else {
                    tracing::debug!(peer = %peer, reason = refusal.log, "client_refused");
                }
                if let (Some(mut stream), Some(error)) = (stream, refusal.error) {
                    let mut buf = BytesMut::new();
                    error.encode(&mut buf);
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        let _ = stream.write_all(&buf).await;
                        let _ = stream.flush().await;
                    })
                    .await;
                }
            }
        }
        None
    }

    /// Closes idle servers and stops pools (for shutdown).
    pub fn close_pools(&self) {
        for u in &self.upstreams {
            u.pool.close();
        }
    }
}

/// Connects once and reads the connection limits and the server version.
pub async fn probe_limits(target: &Target) -> Result<(DbLimits, String), ServerError> {
    let mut conn = ServerConn::connect(target).await?;
    let rows = conn.exec(sizing::LIMITS_QUERY, &mut Vec::new()).await;
    let version = conn.login_params.get("server_version").cloned().unwrap_or_default();
    conn.close().await;
    let rows = rows?;
    let limits = rows
        .first()
        .and_then(|r| sizing::parse_limits(r))
        .ok_or_else(|| ServerError::Protocol("unexpected answer to the connection-limit query".into()))?;
    Ok((limits, version))
}

fn log_sizing(var: &str, database: &str, s: &Sizing, error: Option<&ServerError>) {
    let opt = |v: Option<u32>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
    let db = s.db;
    if let Some(e) = error {
        tracing::warn!(
            var,
            error = %e,
            hint = "the database could not be asked for its connection limit: set PGSIDECAR_PLAN or PGSIDECAR_POOL_SIZE",
            "pool_limit_unknown"
        );
    }
    tracing::info!(
        var,
        database,
        source = s.source.as_str(),
        max_connections = %opt(db.map(|d| d.max_connections)),
        superuser_reserved = %opt(db.map(|d| d.superuser_reserved)),
        role_limit = %opt(db.and_then(|d| d.role_limit)),
        in_use = %opt(db.map(|d| d.in_use)),
        plan = s.plan.as_ref().map_or("none", |(p, _)| p.as_str()),
        limit = %opt(s.limit),
        reserved = s.reserved,
        processes = s.processes,
        pool_size = s.pool_size,
        "pool_sized"
    );
}

async fn maintain(proxy: std::sync::Weak<Proxy>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(proxy) = proxy.upgrade() else { return };
        for u in proxy.upstreams() {
            u.pool.maintain();
        }
    }
}
