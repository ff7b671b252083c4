//! The running proxy: builds the [`Shared`] state from the configuration, starts the
//! background tasks (pool maintenance, metrics, reports, the shared budget) and runs the accept
//! loop that gives each client its task: login, then a session.
//!
//! The wiring: the one module that imports both [`crate::client`] and [`crate::admin`].
//! Imported only by the entry points (`cli`, `supervise`, `demo`).

use crate::client::handshake::{handshake, Login, Outcome};
use crate::client::session::Session;
use crate::config::Config;
use crate::listen::Listeners;
use crate::shared::Shared;
use crate::stream::{Peer, Stream};
use bytes::BytesMut;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

pub use crate::shared::SharedError as ProxyError;

/// The proxy: its shared state (which it derefs to) and the accept loop.
pub struct Proxy {
    shared: Arc<Shared>,
}

impl Deref for Proxy {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

/// Counts a connected client for PGSIDECAR_MAX_CLIENT_CONN.
struct ClientGuard(Arc<Shared>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.client_left();
    }
}

/// Marks a client as an admin console session for as long as it lives.
struct ConsoleGuard(Arc<Shared>);

impl ConsoleGuard {
    fn new(shared: Arc<Shared>) -> ConsoleGuard {
        shared.console_opened();
        ConsoleGuard(shared)
    }
}

impl Drop for ConsoleGuard {
    fn drop(&mut self) {
        self.0.console_closed();
    }
}

impl Proxy {
    pub fn new(config: Config) -> Result<Arc<Proxy>, ProxyError> {
        Ok(Arc::new(Proxy { shared: Arc::new(Shared::new(config)?) }))
    }

    /// The state sessions and the console share.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Starts the cross-dyno budget rounds for every auto-sized pool. Until its first round
    /// has published a claim a pool holds at most [`crate::budget::START_SIZE`] servers (its
    /// peers have not counted it); this returns once every first round has ended, successful
    /// or not, so no server is opened beyond the share.
    pub async fn start_budget(&self) {
        let cfg = &self.config.pool.sizing;
        let (true, Some(period)) = (cfg.auto, cfg.budget_period) else { return };
        for up in self.upstreams() {
            up.pool.set_max_size(crate::budget::start_size(up.sized()));
            up.budget.running.store(true, Ordering::Release);
            tokio::spawn(crate::budget::run(
                up.pool.clone(),
                up.budget.clone(),
                Arc::downgrade(&self.cancels),
                period,
                cfg.reserved,
            ));
        }
        // A round is bounded (connecting, the session's set-up and the round each by their own
        // timeout): this bound, past the worst first round, is only a backstop.
        let worst = self.upstreams().iter().map(|u| u.pool.target.connect_timeout).max().unwrap_or_default();
        let deadline =
            tokio::time::Instant::now() + crate::budget::worst_first_round(worst) + Duration::from_secs(2);
        for up in self.upstreams() {
            let _ = tokio::time::timeout_at(deadline, up.budget.first_round()).await;
        }
    }

    /// Accepts clients until `shutdown` completes, then stops accepting (closing the
    /// listeners, removing their socket files). Sessions already running go on.
    pub async fn serve(self: Arc<Self>, listeners: impl Into<Listeners>, shutdown: impl Future<Output = ()>) {
        let listeners = listeners.into();
        let maintenance = tokio::spawn(maintain(Arc::downgrade(&self.shared)));
        let sampler = tokio::spawn(crate::observe::metrics::sample(self.weak_upstreams()));
        let source = std::env::var("DYNO").unwrap_or_else(|_| "pgsidecar".to_owned());
        let reports = tokio::spawn(crate::observe::report::run(
            self.weak_upstreams(),
            self.config.observe.stats_period,
            source,
        ));
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                r = listeners.accept() => r,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let n = self.shared.client_connected();
                    let guard = ClientGuard(self.shared.clone());
                    let over_limit = n > self.config.client.max_clients;
                    // The login future is boxed here, outside the task: an async block or fn
                    // keeps the values it was given (socket, address) in its state for as
                    // long as it lives, even once moved out, so the task of every idle client
                    // would carry them. The task gets only the guard and the box.
                    let admit = Box::pin(Proxy::admit(self.shared.clone(), stream, peer, over_limit));
                    tokio::spawn(Proxy::client(guard, admit));
                }
                Err(e) => {
                    // Out of file descriptors, usually: back off instead of spinning.
                    tracing::warn!(error = %e, "accept_failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        drop(listeners);
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
            let log_connections = guard.0.config.observe.log_connections;
            if log_connections {
                tracing::info!(peer = %login.peer, user = %login.user, database = %login.database, "client_login");
            } else {
                tracing::debug!(peer = %login.peer, user = %login.user, database = %login.database, "client_login");
            }
            // Moved out of its box inside a block, so the box is freed now rather than when the
            // client leaves: moving out of a `Box` frees it only when the (shadowed, but still
            // live) `Box` binding goes out of scope, which here would be the end of the session.
            let login: Login = {
                let boxed = login;
                *boxed
            };
            let mut session = Session::new(guard.0.clone(), login);
            session.run().await;
            if log_connections {
                tracing::info!(peer = %session.peer(), "client_disconnect");
            } else {
                tracing::debug!(peer = %session.peer(), "client_disconnect");
            }
        }
    }

    /// Startup and authentication; a pool client's login, or `None` when the connection was
    /// something else (the admin console, a cancel request) or was refused.
    async fn admit(shared: Arc<Shared>, stream: Stream, peer: Peer, over_limit: bool) -> Option<Box<Login>> {
        let login_timeout = shared.config.client.login_timeout;
        let (stream, outcome) = match tokio::time::timeout(
            login_timeout,
            Box::pin(handshake(&shared, stream, peer, over_limit)),
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
                return crate::client::handshake::settle_startup_settings(&shared, login).await;
            }
            Ok(Outcome::Console(login)) => {
                tracing::info!(peer = %peer, user = %login.user, "admin_login");
                let _console = ConsoleGuard::new(shared.clone());
                Box::pin(crate::admin::console::run(shared.clone(), *login)).await;
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

    fn weak_upstreams(&self) -> Vec<std::sync::Weak<crate::upstream::Upstream>> {
        self.upstreams().iter().map(Arc::downgrade).collect()
    }
}

async fn maintain(shared: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        for u in shared.upstreams() {
            u.pool.maintain();
        }
    }
}
