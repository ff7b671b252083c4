//! `pgsidecar run -- CMD`: the proxy and the application in one dyno process tree.
//!
//! The proxy starts first; the application starts once the listener is bound, with each
//! upstream URL variable rewritten to point at the proxy. On SIGTERM or SIGINT the signal is
//! passed to the application once, and the proxy keeps serving old and new client connections
//! while the application drains; pgsidecar exits when the application has exited and its
//! clients are gone, or at PGSIDECAR_SHUTDOWN_TIMEOUT. Its exit code is the application's.
//!
//! An entry point: may import [`crate::proxy`] and what it wires.

use crate::config::url::percent_encode;
use crate::config::Config;
use crate::proxy::Proxy;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus};
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

/// Where the application reaches the proxy, as its URL names it.
#[derive(Debug, Clone, Copy)]
pub enum LocalAddr<'a> {
    Tcp(SocketAddr),
    /// A Unix socket `DIR/.s.PGSQL.PORT`.
    Socket(&'a std::path::Path, u16),
}

/// The URL the application gets for one upstream: same user, password and database, at the
/// proxy's address, without TLS for the loopback hop; the application's own parameters kept.
/// A socket is named as libpq, psycopg, Rails, node-postgres and Django take it:
/// `postgres://user:pass@/db?host=DIR&port=PORT`.
pub fn local_url(url: &crate::config::DbUrl, listen: LocalAddr<'_>) -> String {
    let listen = match listen {
        LocalAddr::Tcp(a) => a,
        LocalAddr::Socket(dir, port) => {
            let mut out = format!(
                "postgres://{}:{}@/{}?host={}&port={port}",
                percent_encode(&url.user),
                percent_encode(url.password.expose()),
                percent_encode(&url.database),
                percent_encode(&dir.to_string_lossy()),
            );
            for (k, v) in &url.app_params {
                out.push_str(&format!("&{}={}", percent_encode(k), percent_encode(v)));
            }
            return out;
        }
    };
    let host = match listen {
        SocketAddr::V4(a) if a.ip().is_unspecified() => "127.0.0.1".to_owned(),
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) if a.ip().is_unspecified() => "[::1]".to_owned(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    let mut out = format!(
        "postgres://{}:{}@{host}:{}/{}?sslmode=disable",
        percent_encode(&url.user),
        percent_encode(url.password.expose()),
        listen.port(),
        percent_encode(&url.database)
    );
    for (k, v) in &url.app_params {
        out.push_str(&format!("&{}={}", percent_encode(k), percent_encode(v)));
    }
    out
}

fn exit_code(status: ExitStatus) -> ExitCode {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(sig)) => ExitCode::from((128 + sig) as u8),
        _ => ExitCode::FAILURE,
    }
}

fn signal_child(pid: Option<u32>, sig: Signal) {
    if let Some(pid) = pid {
        let _ = kill(Pid::from_raw(pid as i32), sig);
    }
}

/// Runs the application without the proxy (PGSIDECAR_ENABLED=0): replaces this process.
fn exec_unproxied(cmd: &[OsString]) -> ExitCode {
    use std::os::unix::process::CommandExt;
    tracing::info!("sidecar_disabled");
    let err = std::process::Command::new(&cmd[0]).args(&cmd[1..]).exec();
    tracing::error!(error = %err, command = ?cmd[0], "exec_failed");
    ExitCode::from(127)
}

pub async fn run(config: Config, cmd: Vec<OsString>) -> ExitCode {
    if cmd.is_empty() {
        eprintln!("usage: pgsidecar run [options] -- COMMAND [ARGS...]");
        return ExitCode::from(2);
    }
    if !config.enabled {
        return exec_unproxied(&cmd);
    }
    let shutdown_timeout = config.shutdown_timeout;
    let Some((proxy, listeners)) = start(config).await else { return ExitCode::FAILURE };
    let Some(addr) = app_addr(&proxy.config, &listeners) else { return ExitCode::FAILURE };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tracing::info!(listen = %listeners.describe(), "listening");
    let serving = tokio::spawn(proxy.clone().serve(listeners, async move {
        let _ = stop_rx.await;
    }));
    let child = match spawn_app(&cmd, &proxy, addr) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(ended) = supervise(&proxy, child, serving, shutdown_timeout).await else {
        return ExitCode::FAILURE;
    };
    let _ = stop_tx.send(());
    if !ended.proxy_failed {
        // The listeners close (socket files removed) before this process exits.
        let _ = ended.serving.await;
    }
    proxy.close_pools();
    tracing::info!(clients = proxy.clients(), "stopped");
    if ended.proxy_failed {
        return ExitCode::FAILURE;
    }
    ended.status.map_or(ExitCode::FAILURE, exit_code)
}

/// The address the application is given, in the URL style the configuration asks for (the
/// configuration guarantees a listener of that kind).
fn app_addr<'a>(config: &'a Config, listeners: &crate::listen::Listeners) -> Option<LocalAddr<'a>> {
    let tcp = listeners.tcp_addrs().first().copied();
    let socket = config.listen.iter().find_map(|l| l.libpq_dir());
    match (config.url_style, tcp, socket) {
        (crate::config::UrlStyle::Socket, _, Some((dir, port))) => Some(LocalAddr::Socket(dir, port)),
        (_, Some(a), _) => Some(LocalAddr::Tcp(a)),
        _ => None,
    }
}

/// Binds the listeners, builds the proxy, sizes its pools and starts the metrics endpoint.
/// `None`: it failed, and said why.
async fn start(config: Config) -> Option<(Arc<Proxy>, crate::listen::Listeners)> {
    let listeners = bind(&config).await?;
    let proxy = match Proxy::new(config) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "startup_failed");
            return None;
        }
    };
    proxy.size_pools().await;
    proxy.start_budget().await;
    start_metrics(&proxy.config).await;
    Some((proxy, listeners))
}

/// Starts the application with every upstream's variable pointing at the proxy.
fn spawn_app(cmd: &[OsString], proxy: &Proxy, addr: LocalAddr) -> Result<tokio::process::Child, ExitCode> {
    let mut command = tokio::process::Command::new(&cmd[0]);
    command.args(&cmd[1..]);
    for up in &proxy.config.upstreams {
        command.env(&up.var, local_url(&up.url, addr));
    }
    let child = command.spawn().map_err(|e| {
        tracing::error!(error = %e, command = ?cmd[0], "child_start_failed");
        ExitCode::from(127)
    })?;
    tracing::info!(pid = child.id().unwrap_or(0), vars = proxy.config.upstreams.len(), "child_started");
    Ok(child)
}

/// How supervision ended.
struct Ended {
    /// The application's exit status, once it exited.
    status: Option<ExitStatus>,
    /// The accept loop ended on its own (the application was told to stop).
    proxy_failed: bool,
    serving: tokio::task::JoinHandle<()>,
}

/// Runs until the application has exited and its clients are gone, or the drain's deadline
/// passes, or the proxy fails. A first SIGTERM or SIGINT is passed on to the application and
/// starts the drain; the application exiting starts it too. `None`: signals could not be set up.
async fn supervise(
    proxy: &Proxy,
    mut child: tokio::process::Child,
    mut serving: tokio::task::JoinHandle<()>,
    shutdown_timeout: std::time::Duration,
) -> Option<Ended> {
    let pid = child.id();
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        _ => return None,
    };
    let deadline = tokio::time::sleep(std::time::Duration::from_secs(u64::MAX / 4));
    tokio::pin!(deadline);
    let mut draining = false;
    let mut status: Option<ExitStatus> = None;
    let mut proxy_failed = false;
    loop {
        let sig = tokio::select! {
            _ = term.recv() => Some(Signal::SIGTERM),
            _ = int.recv() => Some(Signal::SIGINT),
            st = child.wait(), if status.is_none() => {
                let st = st.unwrap_or_else(|_| ExitStatus::from_raw(1 << 8));
                tracing::info!(code = st.code().unwrap_or(-1), signal = st.signal().unwrap_or(0), clients = proxy.clients(), "child_exited");
                status = Some(st);
                if !draining {
                    draining = true;
                    deadline.as_mut().reset(tokio::time::Instant::now() + shutdown_timeout);
                }
                None
            }
            _ = proxy.wait_idle(), if status.is_some() => break,
            _ = &mut deadline, if draining => {
                tracing::warn!(clients = proxy.clients(), child_running = status.is_none(), timeout_ms = shutdown_timeout.as_millis() as u64, "shutdown_timeout");
                break;
            }
            r = &mut serving => {
                tracing::error!(error = ?r.err(), "proxy_failed");
                proxy_failed = true;
                signal_child(pid, Signal::SIGTERM);
                break;
            }
        };
        if let Some(sig) = sig {
            if draining {
                tracing::info!(signal = sig.as_str(), "signal_ignored_while_draining");
                continue;
            }
            draining = true;
            deadline.as_mut().reset(tokio::time::Instant::now() + shutdown_timeout);
            if status.is_none() {
                signal_child(pid, sig);
            }
            tracing::info!(signal = sig.as_str(), clients = proxy.clients(), "draining");
        }
    }
    if status.is_none() && !proxy_failed {
        // Past the deadline: the platform's SIGKILL is seconds away anyway.
        signal_child(pid, Signal::SIGKILL);
        status = child.wait().await.ok();
    }
    Some(Ended { status, proxy_failed, serving })
}

/// Starts the Prometheus endpoint when one is configured. A port that cannot be bound is
/// logged, not fatal: the proxy matters more than its metrics.
pub async fn start_metrics(config: &Config) {
    let Some(addr) = &config.observe.metrics_listen else { return };
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            tracing::info!(listen = %addr, "metrics_listening");
            tokio::spawn(crate::observe::metrics::serve(l));
        }
        Err(e) => tracing::warn!(listen = %addr, error = %e, "metrics_listen_failed"),
    }
}

/// `pgsidecar serve`: the proxy alone. SIGTERM starts a drain (new and existing clients are
/// still served) that ends when clients are gone or at the shutdown timeout; a second SIGINT
/// ends it at once.
pub async fn serve(config: Config) -> ExitCode {
    // The hot path's clock calibrates itself against the OS clock on first use (under a
    // millisecond, spinning): here, before any client, not inside a checkout.
    let _ = quanta::Instant::now();
    let shutdown_timeout = config.shutdown_timeout;
    let Some(listeners) = bind(&config).await else { return ExitCode::FAILURE };
    let proxy = match Proxy::new(config) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "startup_failed");
            return ExitCode::FAILURE;
        }
    };
    log_upstreams(&proxy);
    proxy.size_pools().await;
    proxy.start_budget().await;
    start_metrics(&proxy.config).await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tracing::info!(listen = %listeners.describe(), "listening");
    let serving = tokio::spawn(proxy.clone().serve(listeners, async move {
        let _ = stop_rx.await;
    }));
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        _ => return ExitCode::FAILURE,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!(clients = proxy.clients(), "draining");
    let drain = async {
        loop {
            tokio::select! {
                _ = term.recv() => tracing::info!("signal_ignored_while_draining"),
                _ = int.recv() => return,
                _ = proxy.wait_idle() => return,
            }
        }
    };
    let _ = tokio::time::timeout(shutdown_timeout, drain).await;
    let _ = stop_tx.send(());
    let _ = serving.await;
    proxy.close_pools();
    tracing::info!(clients = proxy.clients(), "stopped");
    ExitCode::SUCCESS
}

/// Binds every listen address; a failure is logged.
async fn bind(config: &Config) -> Option<crate::listen::Listeners> {
    match crate::listen::Listeners::bind(&config.listen).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::error!(listen = %e.listen, error = %e.error, "listen_failed");
            None
        }
    }
}

fn log_upstreams(proxy: &Arc<Proxy>) {
    for u in proxy.config.upstreams.iter() {
        tracing::info!(var = %u.var, upstream = %u.url.redacted(), mode = proxy.config.pool.mode.as_str(), "upstream");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DbUrl;

    #[test]
    fn local_url_keeps_credentials_and_app_params() {
        let url =
            DbUrl::parse("postgres://u%40x:p%2Fw@db.example.com:5432/d1?sslmode=require&pool=5").unwrap();
        let local = local_url(&url, LocalAddr::Tcp("127.0.0.1:6432".parse().unwrap()));
        assert_eq!(local, "postgres://u%40x:p%2Fw@127.0.0.1:6432/d1?sslmode=disable&pool=5");
        let back = DbUrl::parse(&local).unwrap();
        assert_eq!((back.user.as_str(), back.password.expose()), ("u@x", "p/w"));
        assert_eq!(
            local_url(&url, LocalAddr::Tcp("0.0.0.0:7000".parse().unwrap())).split('@').nth(1).unwrap(),
            "127.0.0.1:7000/d1?sslmode=disable&pool=5"
        );
    }

    #[test]
    fn local_url_of_a_socket_names_its_directory_and_port() {
        let url =
            DbUrl::parse("postgres://u%40x:p%2Fw@db.example.com:5432/d1?sslmode=require&pool=5").unwrap();
        let local = local_url(&url, LocalAddr::Socket(std::path::Path::new("/tmp/my sock"), 6432));
        assert_eq!(local, "postgres://u%40x:p%2Fw@/d1?host=%2Ftmp%2Fmy%20sock&port=6432&pool=5");
    }
}
