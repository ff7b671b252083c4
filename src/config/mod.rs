//! Settings: gathered from flags and the environment ([`settings`]), parsed into a tree of
//! small per-subsystem structs that is built once and passed down.
//!
//! May import nothing else of the crate: every other module reads its types.

pub mod listen;
pub mod settings;
pub mod sizing;
pub mod url;

#[cfg(test)]
mod tests;

pub use listen::{Listen, UrlStyle};
use settings::{Env, Raw, RawSettings, Source};
use std::path::PathBuf;
use std::time::Duration;
pub use url::{DbUrl, Secret, SslMode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    Session,
    Transaction,
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    ScramSha256,
    Md5,
    Trust,
}

/// One upstream database: the variable it came from and its URL.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Name of the environment variable that held the URL (e.g. `DATABASE_URL`).
    pub var: String,
    pub url: DbUrl,
}

/// Inputs of `pool-size auto`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizingConfig {
    /// Size from the database's limit (true) or the fixed `PoolConfig::size` (false).
    pub auto: bool,
    pub plan: Option<(String, u32)>,
    pub processes: u32,
    /// Explicit reserve; `None` for the default (the larger of 3 and 10%).
    pub reserved: Option<u32>,
    /// Period of the cross-dyno budget rounds; `None` when off.
    pub budget_period: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub mode: PoolMode,
    /// The fixed size, or the starting size until `auto` sizing has run.
    pub size: usize,
    pub sizing: SizingConfig,
    pub min_size: usize,
    pub server_lifetime: Option<Duration>,
    pub server_idle_timeout: Option<Duration>,
    pub connect_timeout: Duration,
    pub connect_parallelism: usize,
    pub query_wait_timeout: Option<Duration>,
    /// Statements cached per server in transaction mode; 0 disables rewriting.
    pub max_prepared_statements: usize,
    /// Unnamed statements are prepared under proxy-wide names too (with rewriting on).
    pub prepare_unnamed_statements: bool,
    /// Longest wait for a server's complete answer before it is cancelled; `None` when off.
    pub query_timeout: Option<Duration>,
    /// Longest a client may sit idle inside a transaction; `None` when off.
    pub idle_transaction_timeout: Option<Duration>,
    /// A client idle inside a transaction this long is logged once; `None` when off.
    pub idle_transaction_warn: Option<Duration>,
    /// Servers idle longer than this are checked with a round trip before use (zero: always).
    pub server_check_delay: Duration,
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub auth: ClientAuth,
    pub max_clients: usize,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub login_timeout: Duration,
    pub max_message_size: usize,
}

/// Who may use the admin console.
#[derive(Debug, Clone, Default)]
pub struct AdminConfig {
    /// User names allowed in; empty allows every user of an upstream URL.
    pub users: Vec<String>,
}

impl AdminConfig {
    pub fn allows(&self, user: &str) -> bool {
        self.users.is_empty() || self.users.iter().any(|u| u == user)
    }
}

/// What gets measured and logged.
#[derive(Debug, Clone)]
pub struct ObserveConfig {
    pub slow_query: Option<Duration>,
    pub slow_query_max_length: usize,
    pub slow_transaction: Option<Duration>,
    /// `None` when the Prometheus endpoint is off.
    pub metrics_listen: Option<String>,
    /// `None` when l2met lines are off.
    pub stats_period: Option<Duration>,
    /// Client logins and disconnects at info rather than debug.
    pub log_connections: bool,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the application reaches the proxy (TCP and Unix-domain sockets).
    pub listen: Vec<Listen>,
    /// The address `pgsidecar run` gives the application.
    pub url_style: UrlStyle,
    pub observe: ObserveConfig,
    pub upstreams: Vec<Upstream>,
    pub pool: PoolConfig,
    pub client: ClientConfig,
    pub admin: AdminConfig,
    pub log_level: tracing::Level,
    pub log_format: crate::logging::Format,
    pub shutdown_timeout: Duration,
    /// Threads of the runtime that serves clients.
    pub worker_threads: usize,
    /// `pgsidecar run` starts the proxy (true) or only the application (false).
    pub enabled: bool,
    /// heroku-buildpack-pgbouncer variables that are set but have no meaning here, with why.
    pub ignored_vars: Vec<(&'static str, &'static str)>,
    /// Aliases that were used: (alias, the PGSIDECAR_* name it stands for).
    pub aliases_used: Vec<(&'static str, &'static str)>,
    /// Every setting as resolved (strings and where they came from), for SHOW CONFIG. Holds
    /// no secret: upstream URLs are read from the variables `urls` names, not kept here.
    pub raw: RawSettings,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} ({from}): {message}")]
    Invalid { name: &'static str, from: String, message: String },
    #[error("{var} is not set: it is named in PGSIDECAR_URLS and must hold a postgres:// URL")]
    MissingUrl { var: String },
    #[error("{var} {error}")]
    Url { var: String, error: url::UrlError },
    #[error("{0}")]
    Other(String),
}

fn invalid(raw: &Raw, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { name: raw.name, from: raw.source.to_string(), message: message.into() }
}

/// Parses `250ms`, `5s`, `2min`, `1h` or a bare number of seconds (fractions allowed).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "" | "s" | "sec" => n,
        "ms" => n / 1000.0,
        "us" => n / 1_000_000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && (0.0..1e9).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

/// Parses `1024`, `64kB`, `8MiB`, `1GB` (binary multiples either way).
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn duration(raw: &Raw) -> Result<Duration, ConfigError> {
    parse_duration(&raw.value)
        .ok_or_else(|| invalid(raw, format!("invalid duration {:?}: use e.g. 500ms, 5s, 2min", raw.value)))
}

/// A duration where 0 means "no limit".
fn optional_duration(raw: &Raw) -> Result<Option<Duration>, ConfigError> {
    duration(raw).map(|d| (!d.is_zero()).then_some(d))
}

/// One thread on small machines: a sidecar shares the dyno's cores with the application, and
/// one thread without work stealing uses the least CPU per query; two on larger machines.
pub fn auto_worker_threads() -> usize {
    match std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) {
        0..=2 => 1,
        _ => 2,
    }
}

fn number(raw: &Raw, min: usize, max: usize) -> Result<usize, ConfigError> {
    let n: usize =
        raw.value.parse().map_err(|_| invalid(raw, format!("{:?} is not a whole number", raw.value)))?;
    if n < min || n > max {
        return Err(invalid(raw, format!("{n} is outside {min}..={max}")));
    }
    Ok(n)
}

fn flag(raw: &Raw) -> Result<bool, ConfigError> {
    match raw.value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(invalid(raw, format!("{other:?}: use 1 or 0"))),
    }
}

/// heroku-buildpack-pgbouncer settings without a counterpart, and what pgsidecar does instead.
pub const IGNORED_VARS: &[(&str, &str)] = &[
    (
        "PGBOUNCER_RESERVE_POOL_SIZE",
        "no reserve pool: size the pool with PGSIDECAR_POOL_SIZE=auto and PGSIDECAR_RESERVED_CONNECTIONS",
    ),
    (
        "PGBOUNCER_RESERVE_POOL_TIMEOUT",
        "no reserve pool; clients wait in FIFO order up to PGSIDECAR_QUERY_WAIT_TIMEOUT",
    ),
    (
        "PGBOUNCER_SERVER_RESET_QUERY",
        "session mode always runs DISCARD ALL; transaction mode re-applies each client's settings",
    ),
    ("PGBOUNCER_IGNORE_STARTUP_PARAMETERS", "every startup parameter is applied as a session setting"),
    (
        "PGBOUNCER_LOG_CONNECTIONS",
        "connection lines are logged at debug level; PGSIDECAR_LOG_CONNECTIONS=1 logs them at info",
    ),
    (
        "PGBOUNCER_LOG_DISCONNECTIONS",
        "disconnection lines are logged at debug level; PGSIDECAR_LOG_CONNECTIONS=1 logs them at info",
    ),
    ("PGBOUNCER_LOG_POOLER_ERRORS", "pooler errors are always logged at warn level"),
    (
        "PGBOUNCER_PREPARED_STATEMENTS",
        "prepared statements work in transaction mode; the application can keep them on",
    ),
];

fn optional_path(raw: &Raw) -> Option<PathBuf> {
    (!raw.value.is_empty()).then(|| PathBuf::from(&raw.value))
}

impl Config {
    /// Builds the configuration from parsed flags and an environment.
    pub fn load(
        flags: &std::collections::BTreeMap<String, String>,
        env: &dyn Env,
    ) -> Result<Config, ConfigError> {
        Config::from_raw(&RawSettings::resolve(flags, env), env)
    }

    /// The second stage: types every setting, section by section. Each section's settings are
    /// checked in the order its helper reads them; the first invalid one is the error.
    pub fn from_raw(raw: &RawSettings, env: &dyn Env) -> Result<Config, ConfigError> {
        let upstreams = upstreams_config(raw, env)?;
        let (listen, url_style) = listen(raw)?;
        let pool = pool_config(raw)?;
        let client = client_config(raw)?;
        let log_level = log_level(raw)?;
        let log_format = log_format(raw)?;
        let observe = observe_config(raw)?;
        Ok(Config {
            listen,
            url_style,
            observe,
            upstreams,
            pool,
            client,
            admin: admin_config(raw),
            log_level,
            log_format,
            shutdown_timeout: duration(raw.get("shutdown-timeout"))?,
            worker_threads: worker_threads(raw)?,
            enabled: flag(raw.get("enabled"))?,
            ignored_vars: IGNORED_VARS.iter().filter(|(name, _)| env.get(name).is_some()).copied().collect(),
            aliases_used: raw.aliases_used.clone(),
            raw: raw.clone(),
        })
    }

    /// The upstream a client's database name selects.
    pub fn upstream(&self, database: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.url.database == database)
    }
}

/// The upstreams named by `urls`, each with `server-sslmode` where its URL names no sslmode.
fn upstreams_config(raw: &RawSettings, env: &dyn Env) -> Result<Vec<Upstream>, ConfigError> {
    let server_sslmode = raw.get("server-sslmode");
    let default_sslmode = SslMode::parse(&server_sslmode.value).ok_or_else(|| {
        invalid(server_sslmode, "use disable, allow, prefer, require, verify-ca or verify-full")
    })?;
    let mut upstreams = upstreams(raw.get("urls"), env)?;
    for u in &mut upstreams {
        if !u.url.sslmode_explicit {
            u.url.sslmode = default_sslmode;
        }
    }
    Ok(upstreams)
}

fn listen(raw: &RawSettings) -> Result<(Vec<Listen>, UrlStyle), ConfigError> {
    let listen = listen::parse(&raw.get("listen").value).map_err(|e| invalid(raw.get("listen"), e))?;
    let style = raw.get("client-url-style");
    let mut url_style = UrlStyle::parse(&style.value).ok_or_else(|| invalid(style, "use tcp or socket"))?;
    // Left at its default, the style follows the listeners: a socket-only list (DIR:PORT)
    // hands the application the socket rather than refusing to start.
    let socket_only = !listen.iter().any(|l| matches!(l, Listen::Tcp(_)));
    if matches!(style.source, Source::Default)
        && socket_only
        && listen.iter().any(|l| l.libpq_dir().is_some())
    {
        url_style = UrlStyle::Socket;
    }
    let reachable = match url_style {
        UrlStyle::Tcp => listen.iter().any(|l| matches!(l, Listen::Tcp(_))),
        UrlStyle::Socket => listen.iter().any(|l| l.libpq_dir().is_some()),
    };
    if !reachable {
        let need = match url_style {
            UrlStyle::Tcp => "a host:port in PGSIDECAR_LISTEN, or PGSIDECAR_CLIENT_URL_STYLE=socket",
            UrlStyle::Socket => "a socket directory in PGSIDECAR_LISTEN, e.g. 127.0.0.1:6432,/tmp/pgsidecar",
        };
        return Err(invalid(style, format!("{}: the application's URL needs {need}", style.value)));
    }
    Ok((listen, url_style))
}

fn pool_config(raw: &RawSettings) -> Result<PoolConfig, ConfigError> {
    let mode = match raw.get("pool-mode").value.as_str() {
        "session" => PoolMode::Session,
        "transaction" => PoolMode::Transaction,
        other => return Err(invalid(raw.get("pool-mode"), format!("{other:?}: use session or transaction"))),
    };
    let (size, sizing) = sizing_config(raw)?;
    let min_size = number(raw.get("min-pool-size"), 0, 10_000)?;
    if !sizing.auto && min_size > size {
        return Err(invalid(
            raw.get("min-pool-size"),
            format!("{min_size} is larger than the pool size {size}"),
        ));
    }
    Ok(PoolConfig {
        mode,
        size,
        sizing,
        min_size,
        server_lifetime: optional_duration(raw.get("server-lifetime"))?,
        server_idle_timeout: optional_duration(raw.get("server-idle-timeout"))?,
        connect_timeout: duration(raw.get("server-connect-timeout"))?.max(Duration::from_millis(10)),
        connect_parallelism: number(raw.get("server-connect-parallelism"), 1, 1000)?,
        query_wait_timeout: optional_duration(raw.get("query-wait-timeout"))?,
        max_prepared_statements: number(raw.get("max-prepared-statements"), 0, 100_000)?,
        prepare_unnamed_statements: flag(raw.get("prepare-unnamed-statements"))?,
        query_timeout: optional_duration(raw.get("query-timeout"))?,
        idle_transaction_timeout: optional_duration(raw.get("idle-transaction-timeout"))?,
        idle_transaction_warn: optional_duration(raw.get("idle-transaction-warn"))?,
        server_check_delay: duration(raw.get("server-check-delay"))?,
    })
}

/// The pool's starting size and the inputs of `pool-size auto`.
fn sizing_config(raw: &RawSettings) -> Result<(usize, SizingConfig), ConfigError> {
    let size_raw = raw.get("pool-size");
    let auto = size_raw.value.eq_ignore_ascii_case("auto");
    let size = if auto { sizing::FALLBACK_POOL_SIZE } else { number(size_raw, 1, 10_000)? };
    let plan_raw = raw.get("plan");
    let plan = if plan_raw.value.is_empty() {
        None
    } else {
        let limit = sizing::plan_limit(&plan_raw.value).ok_or_else(|| {
            invalid(
                plan_raw,
                format!("unknown plan {:?}: use e.g. essential-0, standard-0, premium-2", plan_raw.value),
            )
        })?;
        Some((plan_raw.value.to_ascii_lowercase(), limit))
    };
    let reserved_raw = raw.get("reserved-connections");
    let reserved = if reserved_raw.value.eq_ignore_ascii_case("auto") {
        None
    } else {
        Some(number(reserved_raw, 0, 100_000)? as u32)
    };
    let budget_period = optional_duration(raw.get("budget-period"))?;
    let processes = number(raw.get("processes"), 1, 100_000)? as u32;
    Ok((size, SizingConfig { auto, plan, processes, reserved, budget_period }))
}

fn client_config(raw: &RawSettings) -> Result<ClientConfig, ConfigError> {
    let auth = match raw.get("client-auth").value.to_ascii_lowercase().as_str() {
        "scram-sha-256" | "scram" => ClientAuth::ScramSha256,
        "md5" => ClientAuth::Md5,
        "trust" => ClientAuth::Trust,
        other => {
            return Err(invalid(
                raw.get("client-auth"),
                format!("{other:?}: use scram-sha-256, md5 or trust"),
            ))
        }
    };
    let tls_cert = optional_path(raw.get("client-tls-cert"));
    let tls_key = optional_path(raw.get("client-tls-key"));
    if tls_cert.is_some() != tls_key.is_some() {
        return Err(invalid(
            raw.get("client-tls-key"),
            "set both PGSIDECAR_CLIENT_TLS_CERT and PGSIDECAR_CLIENT_TLS_KEY, or neither",
        ));
    }
    let max_message_size = parse_size(&raw.get("max-message-size").value)
        .filter(|&n| (64 * 1024..=1 << 30).contains(&n))
        .ok_or_else(|| {
            invalid(raw.get("max-message-size"), "use a size between 64kB and 1GB, e.g. 256MiB")
        })?;
    Ok(ClientConfig {
        auth,
        max_clients: number(raw.get("max-client-conn"), 1, 1_000_000)?,
        tls_cert,
        tls_key,
        login_timeout: duration(raw.get("client-login-timeout"))?.max(Duration::from_millis(10)),
        max_message_size,
    })
}

fn admin_config(raw: &RawSettings) -> AdminConfig {
    AdminConfig {
        users: raw
            .get("admin-users")
            .value
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect(),
    }
}

fn log_format(raw: &RawSettings) -> Result<crate::logging::Format, ConfigError> {
    match raw.get("log-format").value.to_ascii_lowercase().as_str() {
        "logfmt" | "" => Ok(crate::logging::Format::Logfmt),
        "json" => Ok(crate::logging::Format::Json),
        other => Err(invalid(raw.get("log-format"), format!("{other:?}: use logfmt or json"))),
    }
}

fn log_level(raw: &RawSettings) -> Result<tracing::Level, ConfigError> {
    match raw.get("log-level").value.to_ascii_lowercase().as_str() {
        "error" => Ok(tracing::Level::ERROR),
        "warn" | "warning" => Ok(tracing::Level::WARN),
        "info" => Ok(tracing::Level::INFO),
        "debug" => Ok(tracing::Level::DEBUG),
        "trace" => Ok(tracing::Level::TRACE),
        other => {
            Err(invalid(raw.get("log-level"), format!("{other:?}: use error, warn, info, debug or trace")))
        }
    }
}

/// A threshold in milliseconds: -1 is off, 0 is everything.
fn millis(raw: &Raw) -> Result<Option<Duration>, ConfigError> {
    let v: i64 = raw
        .value
        .parse()
        .map_err(|_| invalid(raw, format!("{:?} is not a number of milliseconds", raw.value)))?;
    if v < -1 {
        return Err(invalid(raw, "use -1 (off), 0 (everything) or a number of milliseconds"));
    }
    Ok((v >= 0).then(|| Duration::from_millis(v as u64)))
}

fn observe_config(raw: &RawSettings) -> Result<ObserveConfig, ConfigError> {
    let metrics_listen = raw.get("metrics-listen").value.clone();
    Ok(ObserveConfig {
        slow_query: millis(raw.get("slow-query-ms"))?,
        slow_query_max_length: number(raw.get("slow-query-max-length"), 16, 1 << 20)?,
        slow_transaction: millis(raw.get("slow-transaction-ms"))?,
        metrics_listen: (!metrics_listen.is_empty()).then_some(metrics_listen),
        stats_period: {
            let secs = number(raw.get("stats-period"), 0, 86_400)?;
            (secs > 0).then(|| Duration::from_secs(secs as u64))
        },
        log_connections: flag(raw.get("log-connections"))?,
    })
}

fn worker_threads(raw: &RawSettings) -> Result<usize, ConfigError> {
    match raw.get("worker-threads").value.as_str() {
        "auto" | "" => Ok(auto_worker_threads()),
        _ => number(raw.get("worker-threads"), 1, 16),
    }
}

fn upstreams(raw: &Raw, env: &dyn Env) -> Result<Vec<Upstream>, ConfigError> {
    let vars: Vec<&str> = raw.value.split_whitespace().collect();
    if vars.is_empty() {
        return Err(invalid(raw, "names no variable; the default is DATABASE_URL"));
    }
    let mut out: Vec<Upstream> = Vec::new();
    for var in vars {
        if !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            // Not quoted: it may be a URL, password and all, put here by mistake.
            return Err(invalid(
                raw,
                "takes names of environment variables (such as DATABASE_URL HEROKU_POSTGRESQL_ROSE_URL), not URLs; one entry is not a variable name",
            ));
        }
        let value = env
            .get(var)
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| ConfigError::MissingUrl { var: var.to_owned() })?;
        let url =
            DbUrl::parse(value.trim()).map_err(|error| ConfigError::Url { var: var.to_owned(), error })?;
        if let Some(other) = out.iter().find(|u| u.url.database == url.database) {
            return Err(ConfigError::Other(format!(
                "{var} and {} both name database {:?}; clients choose an upstream by database name, so each URL needs its own",
                other.var, url.database
            )));
        }
        out.push(Upstream { var: var.to_owned(), url });
    }
    Ok(out)
}
