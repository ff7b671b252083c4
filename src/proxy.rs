//! The running proxy: its upstreams and pools, the cancel registry, and the accept loop.

use crate::auth::Credentials;
use crate::cancel::Registry;
use crate::client::handshake::{handshake, Outcome};
use crate::client::session::Session;
use crate::config::Config;
use crate::server::conn::Target;
use crate::server::pool::Pool;
use crate::stream::Stream;
use bytes::BytesMut;
use std::future::Future;
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
}

pub struct Proxy {
    pub config: Arc<Config>,
    upstreams: Vec<Arc<Upstream>>,
    pub cancels: Arc<Registry>,
    pub client_tls: Option<tokio_rustls::TlsAcceptor>,
    clients: AtomicUsize,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{var}: {error}")]
    Tls {
        var: String,
        error: crate::tls::TlsConfigError,
    },
    #[error("client TLS: {0}")]
    ClientTls(crate::tls::TlsConfigError),
}

/// Counts a connected client for PGSIDECAR_MAX_CLIENT_CONN.
struct ClientGuard(Arc<Proxy>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Proxy {
    pub fn new(config: Config) -> Result<Arc<Proxy>, ProxyError> {
        let mut upstreams = Vec::new();
        for up in &config.upstreams {
            let target =
                Target::new(up.url.clone(), config.pool.connect_timeout).map_err(|error| {
                    ProxyError::Tls {
                        var: up.var.clone(),
                        error,
                    }
                })?;
            let pool = Pool::new(
                up.url.database.clone(),
                Arc::new(target),
                config.pool.clone(),
            );
            upstreams.push(Arc::new(Upstream {
                var: up.var.clone(),
                pool,
                credentials: Credentials::new(&up.url.user, &up.url.password),
            }));
        }
        let client_tls = match (&config.client.tls_cert, &config.client.tls_key) {
            (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(
                crate::tls::client_side_config(cert, key).map_err(ProxyError::ClientTls)?,
            )),
            _ => None,
        };
        Ok(Arc::new(Proxy {
            config: Arc::new(config),
            upstreams,
            cancels: Arc::new(Registry::default()),
            client_tls,
            clients: AtomicUsize::new(0),
        }))
    }

    pub fn upstream(&self, database: &str) -> Option<Arc<Upstream>> {
        self.upstreams
            .iter()
            .find(|u| u.pool.database == database)
            .cloned()
    }

    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    /// Client connections open right now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Accepts clients until `shutdown` completes, then stops accepting. Sessions already
    /// running go on.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let maintenance = tokio::spawn(maintain(Arc::downgrade(&self)));
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
                    let proxy = self.clone();
                    tokio::spawn(async move {
                        let _guard = guard;
                        proxy.client(Stream::Plain(tcp), peer, over_limit).await;
                    });
                }
                Err(e) => {
                    // Out of file descriptors, usually: back off instead of spinning.
                    tracing::warn!(error = %e, "accept_failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        maintenance.abort();
    }

    async fn client(self: Arc<Self>, stream: Stream, peer: std::net::SocketAddr, over_limit: bool) {
        let login_timeout = self.config.client.login_timeout;
        let (stream, outcome) = match tokio::time::timeout(
            login_timeout,
            handshake(&self, stream, over_limit),
        )
        .await
        {
            Ok(x) => x,
            Err(_) => {
                tracing::warn!(peer = %peer, timeout_ms = login_timeout.as_millis() as u64, "client_login_timeout");
                return;
            }
        };
        match outcome {
            Ok(Outcome::Login(login)) => {
                tracing::debug!(peer = %peer, user = %login.user, database = %login.database, "client_login");
                Session::new(self.clone(), *login).run().await;
                tracing::debug!(peer = %peer, "client_disconnect");
            }
            Ok(Outcome::Cancel) | Ok(Outcome::Refused) => {}
            Err(refusal) => {
                if refusal.log == "auth_failed"
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
    }

    /// Closes idle servers and stops pools (for shutdown).
    pub fn close_pools(&self) {
        for u in &self.upstreams {
            u.pool.close();
        }
    }
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
