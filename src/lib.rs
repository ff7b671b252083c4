//! pgsidecar: a Postgres connection-pooling sidecar for Heroku-style dynos.
//!
//! Applications connect to pgsidecar on localhost as if it were their database; pgsidecar
//! multiplexes those client connections onto a small, bounded pool of server connections per
//! upstream database, in transaction or session pooling mode.
//!
//! # Layout
//!
//! - [`config`]: settings from flags and the environment (`PGSIDECAR_*`, Heroku names,
//!   `PGBOUNCER_*` aliases), `postgres://` URL parsing, the typed configuration tree.
//! - [`wire`]: the Postgres protocol without I/O: framing with length limits, startup packets,
//!   the messages the proxy builds or reads.
//! - [`auth`]: client authentication (SCRAM-SHA-256 server side, md5, trust).
//! - [`tls`]: rustls configurations per `sslmode` towards Postgres and for client-facing TLS.
//! - [`stream`]: a TCP stream that may be TLS in either direction.
//! - [`server`]: one server connection (connect, TLS, login, internal queries) and the
//!   bounded FIFO pool with its RAII lease.
//! - [`client`]: the client handshake, the session loop, the relay that moves bytes while a
//!   server is attached, and session settings that follow a client between servers.
//! - [`prepared`]: named prepared statements in transaction mode: proxy-wide names, per-server
//!   LRU caches, rewriting of Parse/Bind/Describe/Close.
//! - [`budget`]: the cross-dyno connection budget: sidecars sharing a database agree on their
//!   shares through the database itself.
//! - [`cancel`]: proxy-issued cancel keys mapped to what each client is doing.
//! - [`proxy`]: the running proxy: upstreams, pools, accept loop, maintenance.
//! - [`admin`]: the admin console (virtual database `pgsidecar` / `pgbouncer`): PgBouncer's
//!   SHOW, PAUSE, RESUME, RECONNECT, RELOAD and SHUTDOWN, one file per command.
//! - [`supervise`]: `pgsidecar run -- CMD` (URL rewrite, signals, drain) and `serve`.
//! - [`check`]: `pgsidecar check`, settings and upstream diagnosis without starting the proxy.
//! - [`demo`]: `pgsidecar demo`: temporary PostgreSQL, the proxy and a simulated app, with a live view.
//! - [`cli`]: the command line and process setup.
//! - [`logging`]: logfmt log lines on stderr.
//! - [`observe`]: latency histograms kept by the proxy (checkout wait).

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
pub mod logging;
pub mod observe;
pub mod prepared;
pub mod proxy;
pub mod server;
pub mod stream;
pub mod supervise;
#[cfg(test)]
mod testing;
pub mod tls;
pub mod wire;

pub use config::Config;
pub use proxy::Proxy;
