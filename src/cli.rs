//! The command line: every setting is a flag on every subcommand and an environment
//! variable, built from the table in `config::settings`.
//!
//! An entry point: may import anything; only [`crate::supervise`], [`crate::demo`] and
//! [`crate::check`] are needed.

use crate::config::settings::{OsEnv, SETTINGS};
use crate::config::Config;
use clap::{Arg, ArgAction, Command};
use std::collections::BTreeMap;
use std::process::ExitCode;

fn setting_args() -> Vec<Arg> {
    SETTINGS
        .iter()
        .map(|s| {
            let mut env = s.env.to_owned();
            for a in s.aliases {
                env.push_str(", ");
                env.push_str(a);
            }
            let default =
                if s.default.is_empty() { String::new() } else { format!(" [default: {}]", s.default) };
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
        .subcommand(Command::new("serve").about("Run the proxy in the foreground until SIGTERM or SIGINT"))
        .subcommand(
            Command::new("run")
                .about("Start the proxy, then COMMAND with its database URLs pointing at the proxy (use in a Procfile)")
                .arg(Arg::new("command").num_args(1..).required(true).trailing_var_arg(true).allow_hyphen_values(true).value_parser(clap::value_parser!(std::ffi::OsString)).value_name("COMMAND")),
        )
        .subcommand(Command::new("check").about("Check settings and connect to each upstream without starting the proxy"))
        .subcommand(
            Command::new("demo")
                .about("Temporary PostgreSQL + pgsidecar + a simulated app that saturates the pool; live view and summary")
                .arg(Arg::new("duration").long("duration").value_name("SECONDS").default_value("20").value_parser(clap::value_parser!(u64).range(4..=3600)))
                .arg(Arg::new("out-dir").long("out-dir").value_name("DIR").value_parser(clap::value_parser!(std::path::PathBuf)).help("Where the demo writes its log (in a terminal) and its chart; default: the temporary directory")),
        )
}

/// Flag values the user gave, keyed by flag name.
pub fn flags(matches: &clap::ArgMatches) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let sub = matches.subcommand().map(|(_, m)| m);
    for s in SETTINGS {
        let v = sub.and_then(|m| m.get_one::<String>(s.flag)).or_else(|| matches.get_one::<String>(s.flag));
        if let Some(v) = v {
            out.insert(s.flag.to_owned(), v.clone());
        }
    }
    out
}

pub fn main() -> ExitCode {
    let matches = command().get_matches();
    if let Some(("demo", m)) = matches.subcommand() {
        // The demo brings its own database: no settings are read from the environment. It
        // sets up its own logging (to a file in a terminal).
        let secs = m.get_one::<u64>("duration").copied().unwrap_or(20);
        let out_dir = m.get_one::<std::path::PathBuf>("out-dir").cloned().unwrap_or_else(std::env::temp_dir);
        return match runtime(crate::config::auto_worker_threads()) {
            Ok(rt) => rt.block_on(crate::demo::run(std::time::Duration::from_secs(secs), out_dir)),
            Err(_) => ExitCode::FAILURE,
        };
    }
    let flags = flags(&matches);
    let config = match Config::load(&flags, &OsEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("level=error event=config_invalid error=\"{}\"", e.to_string().replace('"', "'"));
            return ExitCode::from(2);
        }
    };
    crate::logging::init_with(crate::logging::Options {
        format: config.log_format,
        ..crate::logging::Options::stderr(config.log_level, std::env::var_os("DYNO").is_none())
    });
    for (alias, name) in &config.aliases_used {
        tracing::info!(alias = *alias, setting = *name, "alias_used");
    }
    if config.client.auth != crate::config::ClientAuth::Trust {
        for up in config.upstreams.iter().filter(|u| u.url.password.expose().is_empty()) {
            tracing::warn!(
                url = %up.var,
                hint = "the URL has no password, and no client proves an empty one: set PGSIDECAR_CLIENT_AUTH=trust for a server without passwords",
                "no_password"
            );
        }
    }
    let runtime = match runtime(config.worker_threads) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "runtime_start_failed");
            return ExitCode::FAILURE;
        }
    };
    match matches.subcommand() {
        Some(("serve", _)) => runtime.block_on(crate::supervise::serve(config)),
        Some(("run", m)) => {
            let cmd: Vec<std::ffi::OsString> =
                m.get_many::<std::ffi::OsString>("command").into_iter().flatten().cloned().collect();
            runtime.block_on(crate::supervise::run(config, cmd))
        }
        Some(("check", _)) => runtime.block_on(crate::check::run(config)),
        _ => ExitCode::from(2),
    }
}

/// A runtime sized to the machine: the sidecar shares the dyno with the application. One
/// thread is a current-thread runtime (no work stealing, no cross-thread wake-ups).
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        return tokio::runtime::Builder::new_current_thread().max_blocking_threads(4).enable_all().build();
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .max_blocking_threads(4)
        .thread_name("pgsidecar")
        .enable_all()
        .build()
}
