//! pgsidecar: a Postgres connection-pooling sidecar for Heroku-style dynos.
//!
//! Applications connect to pgsidecar on localhost as if it were their database; pgsidecar
//! multiplexes those client connections onto a small, bounded pool of server connections per
//! upstream database, in transaction or session pooling mode.
//!
//! # Layout
//!
//! In the order data flows, from the app's socket to the database's; each module's own doc
//! says what it may import. Lower layers never import higher ones, and only the entry points
//! import [`proxy`].
//!
//! - [`cli`]: the command line and process setup (entry point).
//! - [`supervise`]: `pgsidecar run -- CMD` (URL rewrite, signals, drain) and `serve` (entry point).
//! - [`demo`]: `pgsidecar demo`: temporary PostgreSQL, the proxy and a simulated app (entry point).
//! - [`check`]: `pgsidecar check`, settings and upstream diagnosis without starting the proxy.
//! - [`proxy`]: the wiring: builds [`shared`], starts the background tasks, runs the accept loop.
//! - [`listen`]: binds `PGSIDECAR_LISTEN` (TCP, Unix-domain sockets) and accepts from all of it.
//! - [`client`]: per client: the handshake, the session loop, the relay while a server is attached.
//! - [`admin`]: the admin console (virtual database `pgsidecar` / `pgbouncer`), one file per command.
//! - [`shared`]: what the parts share: settings, upstreams, client counts, the cancel registry.
//! - [`cancel`]: proxy-issued cancel keys mapped to what each client is doing.
//! - [`prepared`]: named prepared statements in transaction mode: per-server instances and shapes.
//! - [`params`]: session settings that follow a client between servers (client and server use them).
//! - [`upstream`]: one upstream database: its pool, credentials, counters, sizing.
//! - [`budget`]: the cross-dyno connection budget, agreed through the database itself.
//! - [`server`]: one server connection (connect, TLS, login) and the bounded FIFO pool with its lease.
//! - [`auth`]: client authentication (SCRAM-SHA-256 server side, md5, trust).
//! - [`stream`]: a TCP stream that may be TLS in either direction, or a client's Unix socket; its peer.
//! - [`tls`]: rustls configurations per `sslmode` towards Postgres and for client-facing TLS.
//! - [`wire`]: the Postgres protocol without I/O: framing with limits, startup packets, messages.
//! - [`observe`]: counters, latency histograms, slow-query log, SQL normalizing, metrics, reports.
//! - [`config`]: settings from flags and the environment, URL parsing, the typed configuration.
//! - [`logging`]: logfmt log lines on stderr.

pub mod admin;
pub mod auth;
pub mod budget;
pub mod cancel;
pub mod check;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
#[doc(hidden)]
pub mod fuzzing;
pub mod listen;
pub mod logging;
pub mod observe;
pub mod params;
pub mod prepared;
pub mod proxy;
pub mod server;
pub mod shared;
pub mod stream;
pub mod supervise;
#[cfg(test)]
mod testing;
pub mod tls;
pub mod upstream;
pub mod wire;

pub use config::Config;
pub use proxy::Proxy;
