//! The command line: every setting is a flag on every subcommand and an environment
//! variable, built from the table in `config::settings`.

use crate::config::settings::{OsEnv, SETTINGS};
use crate::config::Config;
use crate::proxy::Proxy;
use clap::{Arg, ArgAction, Command};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

fn setting_args() -> Vec<Arg> {
    SETTINGS
        .iter()
        .map(|s| {
            let mut env = s.env.to_owned();
            for a in s.aliases {
                env.push_str(", ");
                env.push_str(a);
            }
            let default = if s.default.is_empty() {
                String::new()
            } else {
                format!(" [default: {}]", s.default)
            };
            Arg::new(s.flag)
                .long(s.flag)
                .value_name("VALUE")
                .action(ArgAction::Set)
                .global(true)
                .help(format!("{} [env: {env}]{default}", s.help))
        })
        .collect()
}

pub fn command() -> Command {
    Command::new("pgsidecar")
        .version(env!("CARGO_PKG_VERSION"))
        .about("A Postgres connection-pooling sidecar for Heroku-style dynos")
        .long_about(
            "A Postgres connection-pooling sidecar for Heroku-style dynos.\n\n\
             Upstream URLs are read from the environment variables named by PGSIDECAR_URLS \
             (default DATABASE_URL); they are never taken as command-line arguments.",
        )
        .subcommand_required(true)
        .arg_required_else_help(true)
        .args(setting_args())
        .subcommand(
            Command::new("serve").about("Run the proxy in the foreground until SIGTERM or SIGINT"),
        )
}

/// Flag values the user gave, keyed by flag name.
pub fn flags(matches: &clap::ArgMatches) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let sub = matches.subcommand().map(|(_, m)| m);
    for s in SETTINGS {
        let v = sub
            .and_then(|m| m.get_one::<String>(s.flag))
            .or_else(|| matches.get_one::<String>(s.flag));
        if let Some(v) = v {
            out.insert(s.flag.to_owned(), v.clone());
        }
    }
    out
}

pub fn main() -> ExitCode {
    let matches = command().get_matches();
    let flags = flags(&matches);
    let config = match Config::load(&flags, &OsEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "level=error event=config_invalid error=\"{}\"",
                e.to_string().replace('"', "'")
            );
            return ExitCode::from(2);
        }
    };
    crate::logging::init(config.log_level, std::env::var_os("DYNO").is_none());
    for (alias, name) in &config.aliases_used {
        tracing::info!(alias = *alias, setting = *name, "alias_used");
    }
    let runtime = match runtime() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "runtime_start_failed");
            return ExitCode::FAILURE;
        }
    };
    match matches.subcommand_name() {
        Some("serve") => runtime.block_on(serve(config)),
        _ => ExitCode::from(2),
    }
}

/// A runtime sized to the machine: the sidecar shares the dyno with the application.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.clamp(1, 8))
        .max_blocking_threads(4)
        .thread_name("pgsidecar")
        .enable_all()
        .build()
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn termination() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn serve(config: Config) -> ExitCode {
    let listen = config.listen.clone();
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %listen, error = %e, "listen_failed");
            return ExitCode::FAILURE;
        }
    };
    let proxy = match Proxy::new(config) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "startup_failed");
            return ExitCode::FAILURE;
        }
    };
    for u in proxy.config.upstreams.iter() {
        tracing::info!(var = %u.var, upstream = %u.url.redacted(), pool_size = proxy.config.pool.size, mode = ?proxy.config.pool.mode, "upstream");
    }
    tracing::info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or(listen), "listening");
    proxy.clone().serve(listener, termination()).await;
    tracing::info!(clients = proxy.clients(), "draining");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    while proxy.clients() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.close_pools();
    tracing::info!(clients = proxy.clients(), "stopped");
    ExitCode::SUCCESS
}
