//! The table of settings: each one is a flag, a `PGSIDECAR_*` variable, and possibly a
//! Heroku or heroku-buildpack-pgbouncer name accepted as an alias.
//!
//! Resolution order: flag, then the `PGSIDECAR_*` variable, then the aliases in the order
//! listed, then the default. The first stage only gathers strings and where they came from;
//! typed parsing happens in `config::Config::from_raw` so that errors can name the source.

use std::collections::BTreeMap;

/// Where the process reads its environment. Tests pass a map instead of touching the real one.
pub trait Env {
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
pub struct OsEnv;

impl Env for OsEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Env for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        BTreeMap::get(self, key).cloned()
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        std::collections::HashMap::get(self, key).cloned()
    }
}

pub struct Setting {
    /// Flag name without the leading dashes; also the key in [`RawSettings`].
    pub flag: &'static str,
    pub env: &'static str,
    pub aliases: &'static [&'static str],
    pub default: &'static str,
    pub help: &'static str,
}

macro_rules! settings {
    ($( $flag:literal, $env:literal, [$($alias:literal),*], $default:literal, $help:literal; )*) => {
        pub const SETTINGS: &[Setting] = &[
            $( Setting { flag: $flag, env: $env, aliases: &[$($alias),*], default: $default, help: $help }, )*
        ];
    };
}

settings! {
    "urls", "PGSIDECAR_URLS", ["PGBOUNCER_URLS"], "DATABASE_URL",
        "Space-separated names of the environment variables that hold upstream database URLs; one pool per URL";
    "listen", "PGSIDECAR_LISTEN", [], "127.0.0.1:6432",
        "Where the proxy listens for the application: a comma-separated list of host:port, a Unix socket directory DIR[:PORT] (DIR/.s.PGSQL.PORT) and unix:PATH";
    "client-url-style", "PGSIDECAR_CLIENT_URL_STYLE", [], "tcp",
        "The URL pgsidecar run gives the application: tcp (127.0.0.1:PORT) or socket (host=DIR&port=PORT, the Unix socket)";
    "pool-mode", "PGSIDECAR_POOL_MODE", ["PGBOUNCER_POOL_MODE"], "transaction",
        "session (a server per client for its whole connection) or transaction (a server per transaction)";
    "pool-size", "PGSIDECAR_POOL_SIZE", ["PGBOUNCER_DEFAULT_POOL_SIZE"], "auto",
        "Maximum server connections per pool: a number, or auto (this sidecar's share of the database's connection limit)";
    "plan", "PGSIDECAR_PLAN", [], "",
        "Heroku Postgres plan (essential-0, standard-0, premium-2, ...): its connection limit is used when the database cannot be asked";
    "processes", "PGSIDECAR_PROCESSES", [], "1",
        "Number of sidecars sharing the database's connections (dynos x sidecars per dyno), for pool-size auto";
    "budget-period", "PGSIDECAR_BUDGET_PERIOD", [], "10s",
        "With pool-size auto: how often sidecars sharing the database recount each other and resize (0 turns the shared budget off)";
    "reserved-connections", "PGSIDECAR_RESERVED_CONNECTIONS", [], "auto",
        "Connections left free for consoles, migrations and deploy overlap (auto: the larger of 3 and 10% of the limit)";
    "min-pool-size", "PGSIDECAR_MIN_POOL_SIZE", ["PGBOUNCER_MIN_POOL_SIZE"], "0",
        "Server connections kept open even when idle";
    "max-client-conn", "PGSIDECAR_MAX_CLIENT_CONN", ["PGBOUNCER_MAX_CLIENT_CONN"], "10000",
        "Maximum client connections; further clients get SQLSTATE 53300";
    "query-wait-timeout", "PGSIDECAR_QUERY_WAIT_TIMEOUT", ["PGBOUNCER_QUERY_WAIT_TIMEOUT"], "20s",
        "Longest a client waits in the queue for a server before it gets an error (0 = forever)";
    "server-lifetime", "PGSIDECAR_SERVER_LIFETIME", ["PGBOUNCER_SERVER_LIFETIME"], "3600s",
        "Server connections older than this are closed when they next become idle (0 = never)";
    "server-idle-timeout", "PGSIDECAR_SERVER_IDLE_TIMEOUT", ["PGBOUNCER_SERVER_IDLE_TIMEOUT"], "600s",
        "Server connections idle longer than this are closed, down to the minimum pool size (0 = never)";
    "server-connect-timeout", "PGSIDECAR_SERVER_CONNECT_TIMEOUT", [], "5s",
        "Limit for connecting and logging in to the server (the URL's connect_timeout wins)";
    "query-timeout", "PGSIDECAR_QUERY_TIMEOUT", ["PGBOUNCER_QUERY_TIMEOUT"], "0",
        "The proxy's own backstop for a request the server does not answer (statement_timeout is the usual tool): past it the server is sent a cancel, and closed if it still does not answer; the client gets 57014 (0 = off)";
    "idle-transaction-timeout", "PGSIDECAR_IDLE_TRANSACTION_TIMEOUT", ["PGBOUNCER_IDLE_TRANSACTION_TIMEOUT"], "60s",
        "A client idle inside a transaction longer than this gets FATAL 25P03 and its server is rolled back (0 = off)";
    "idle-transaction-warn", "PGSIDECAR_IDLE_TRANSACTION_WARN", [], "10s",
        "A client idle inside a transaction longer than this gets one event=idle_in_transaction warning naming its application_name and last statement, before PGSIDECAR_IDLE_TRANSACTION_TIMEOUT cuts it (0 = off)";
    "server-check-delay", "PGSIDECAR_SERVER_CHECK_DELAY", ["PGBOUNCER_SERVER_CHECK_DELAY"], "30s",
        "A pooled server idle longer than this answers an empty query before it is handed out; a failed check replaces it (0 = check every time)";
    "server-connect-parallelism", "PGSIDECAR_SERVER_CONNECT_PARALLELISM", [], "4",
        "Server connections a pool may be opening at the same time when demand rises";
    "client-auth", "PGSIDECAR_CLIENT_AUTH", ["PGBOUNCER_AUTH_TYPE"], "scram-sha-256",
        "How clients authenticate: scram-sha-256, md5 or trust (against the upstream URL's user and password)";
    "admin-users", "PGSIDECAR_ADMIN_USERS", [], "",
        "Users (space or comma separated) allowed into the admin console (database pgsidecar or pgbouncer); empty = every user of an upstream URL";
    "client-tls-cert", "PGSIDECAR_CLIENT_TLS_CERT", [], "",
        "PEM certificate chain for TLS towards clients (with --client-tls-key); empty = no client TLS";
    "client-tls-key", "PGSIDECAR_CLIENT_TLS_KEY", [], "",
        "PEM private key for TLS towards clients";
    "client-login-timeout", "PGSIDECAR_CLIENT_LOGIN_TIMEOUT", [], "15s",
        "Time a client has to finish its startup and authentication";
    "max-message-size", "PGSIDECAR_MAX_MESSAGE_SIZE", [], "256MiB",
        "Largest protocol message the proxy accepts from a client or server";
    "max-prepared-statements", "PGSIDECAR_MAX_PREPARED_STATEMENTS", ["PGBOUNCER_MAX_PREPARED_STATEMENTS"], "500",
        "Named prepared statements kept per server connection in transaction mode (least recently used closed first); 0 passes statements through untouched";
    "prepare-unnamed-statements", "PGSIDECAR_PREPARE_UNNAMED_STATEMENTS", [], "0",
        "Also prepare unnamed statements (node-postgres' parameterized queries, libpq's PQexecParams) once per server and reuse them; 1 to turn on";
    "slow-query-ms", "PGSIDECAR_SLOW_QUERY_MS", [], "500",
        "Log statements that take longer than this many milliseconds (0 logs every statement, -1 turns the log off)";
    "slow-query-max-length", "PGSIDECAR_SLOW_QUERY_MAX_LENGTH", [], "2000",
        "Longest normalized statement text in a slow-query line, in bytes";
    "slow-transaction-ms", "PGSIDECAR_SLOW_TRANSACTION_MS", [], "5000",
        "Log transactions that take longer than this many milliseconds (-1 off)";
    "stats-period", "PGSIDECAR_STATS_PERIOD", ["PGBOUNCER_STATS_PERIOD"], "60",
        "Seconds between l2met stats lines per pool for Heroku log drains (0 off)";
    "metrics-listen", "PGSIDECAR_METRICS_LISTEN", [], "127.0.0.1:9432",
        "Address of the Prometheus endpoint (GET /metrics); empty turns it off";
    "server-sslmode", "PGSIDECAR_SERVER_SSLMODE", ["PGBOUNCER_SERVER_TLS_SSLMODE"], "prefer",
        "sslmode for upstream URLs that do not give one (Heroku Postgres needs require)";
    "worker-threads", "PGSIDECAR_WORKER_THREADS", [], "auto",
        "Threads serving clients: auto (1 on machines with up to 2 cores, where the application needs the rest; else 2) or a number up to 16";
    "shutdown-timeout", "PGSIDECAR_SHUTDOWN_TIMEOUT", [], "25s",
        "After SIGTERM, longest time to keep serving while the application drains (the platform kills at 30 s)";
    "enabled", "PGSIDECAR_ENABLED", ["PGBOUNCER_ENABLED"], "1",
        "0 makes `pgsidecar run` start the application directly, without the proxy";
    "log-level", "PGSIDECAR_LOG_LEVEL", ["LOG_LEVEL"], "info",
        "error, warn, info, debug or trace";
    "log-format", "PGSIDECAR_LOG_FORMAT", [], "logfmt",
        "logfmt, or json for one JSON object per line with the same fields";
    "log-connections", "PGSIDECAR_LOG_CONNECTIONS", [], "0",
        "1 logs each client's login and disconnect at info (else at debug)";
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env(&'static str),
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag => f.write_str("flag"),
            Source::Env(name) => f.write_str(name),
            Source::Default => f.write_str("default"),
        }
    }
}

/// One resolved value and where it came from.
#[derive(Debug, Clone)]
pub struct Raw {
    pub value: String,
    pub source: Source,
    /// The setting's own name for messages: the `PGSIDECAR_*` variable.
    pub name: &'static str,
}

/// Settings as strings, keyed by flag name.
#[derive(Debug, Clone, Default)]
pub struct RawSettings {
    pub values: BTreeMap<&'static str, Raw>,
    /// Aliases that were used, for a one-line notice each.
    pub aliases_used: Vec<(&'static str, &'static str)>,
}

impl RawSettings {
    /// Gathers every setting from flags (already parsed into `flags`) and the environment.
    pub fn resolve(flags: &BTreeMap<String, String>, env: &dyn Env) -> RawSettings {
        let mut out = RawSettings::default();
        for s in SETTINGS {
            let (value, source) = if let Some(v) = flags.get(s.flag) {
                (v.clone(), Source::Flag)
            } else if let Some(v) = env.get(s.env) {
                (v, Source::Env(s.env))
            } else if let Some((alias, v)) = s.aliases.iter().find_map(|a| env.get(a).map(|v| (*a, v))) {
                out.aliases_used.push((alias, s.env));
                (v, Source::Env(alias))
            } else {
                (s.default.to_owned(), Source::Default)
            };
            out.values.insert(s.flag, Raw { value: value.trim().to_owned(), source, name: s.env });
        }
        out
    }

    pub fn get(&self, flag: &str) -> &Raw {
        self.values.get(flag).unwrap_or_else(|| panic!("setting {flag} is not in SETTINGS"))
    }
}
