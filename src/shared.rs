//! What the running proxy's parts share: the settings, the upstreams, the count of connected
//! clients, the cancel-key registry (which also lists what each client is doing), client-facing
//! TLS and the slow-query log.
//!
//! Sessions, the admin console and the reporters read this; [`crate::proxy`] builds it and runs
//! the accept loop around it. May import: [`crate::config`], [`crate::upstream`],
//! [`crate::cancel`], [`crate::tls`], [`crate::observe`]. Never [`crate::client`],
//! [`crate::admin`] or [`crate::proxy`].

use crate::cancel::Registry;
use crate::config::Config;
use crate::upstream::Upstream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct Shared {
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
pub enum SharedError {
    #[error("{var}: {error}")]
    Tls { var: String, error: crate::tls::TlsConfigError },
    #[error("client TLS: {0}")]
    ClientTls(crate::tls::TlsConfigError),
}

impl Shared {
    pub fn new(config: Config) -> Result<Shared, SharedError> {
        let mut upstreams = Vec::new();
        for up in &config.upstreams {
            let upstream = Upstream::new(up, &config)
                .map_err(|error| SharedError::Tls { var: up.var.clone(), error })?;
            let upstream = Arc::new(upstream);
            crate::observe::metrics::register_histograms(&upstream);
            upstreams.push(upstream);
        }
        let client_tls = match (&config.client.tls_cert, &config.client.tls_key) {
            (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(
                crate::tls::client_side_config(cert, key).map_err(SharedError::ClientTls)?,
            )),
            _ => None,
        };
        let slow_log = Arc::new(crate::observe::slowlog::SlowLog::new(
            config.observe.slow_query,
            config.observe.slow_transaction,
            config.observe.slow_query_max_length,
        ));
        Ok(Shared {
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
        })
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

    /// Counts a client that connected; returns how many are connected now.
    pub fn client_connected(&self) -> usize {
        self.clients.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Counts a client that left.
    pub fn client_left(&self) {
        self.clients.fetch_sub(1, Ordering::AcqRel);
        self.notify_if_idle();
    }

    /// Counts a connected client as an admin console session (which no drain waits for).
    pub fn console_opened(&self) {
        self.consoles.fetch_add(1, Ordering::AcqRel);
        self.notify_if_idle();
    }

    pub fn console_closed(&self) {
        self.consoles.fetch_sub(1, Ordering::AcqRel);
    }

    /// Client connections that are not admin console sessions.
    pub fn app_clients(&self) -> usize {
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

    /// Sizes every pool whose size is `auto` (see [`Upstream::size`]).
    pub async fn size_pools(&self) {
        for up in &self.upstreams {
            up.size(&self.config.pool.sizing).await;
        }
    }

    /// Closes idle servers and stops pools (for shutdown).
    pub fn close_pools(&self) {
        for u in &self.upstreams {
            u.pool.close();
        }
    }
}
