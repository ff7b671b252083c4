//! `pgsidecar check`: resolves the settings, connects to each upstream (DNS, TCP, TLS,
//! authentication) without starting the proxy, prints the limits found and the pool size it
//! would use, and names every risky setting with what to change.
//!
//! May import: [`crate::config`], [`crate::server`]. Entry point of its own
//! subcommand; never [`crate::proxy`] (it starts no proxy).

use crate::config::{sizing, ClientAuth, Config, Listen};
use crate::server::conn::{ServerConn, Target};
use crate::server::ServerError;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// The platform's router gives up on a request after this long.
const PLATFORM_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One finding: `ok` lines inform, the others are problems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    Ok(String),
    Warn(String),
    Fail(String),
}

impl Finding {
    fn line(&self) -> String {
        match self {
            Finding::Ok(s) => format!("ok    {s}"),
            Finding::Warn(s) => format!("WARN  {s}"),
            Finding::Fail(s) => format!("FAIL  {s}"),
        }
    }
}

/// What to do about a failed connection attempt.
fn advice(e: &ServerError) -> &'static str {
    match e {
        ServerError::Connect(_) => "check the host and port in the URL, and that the database is running",
        ServerError::Tls(_) => "check sslmode and sslrootcert in the URL (Heroku Postgres needs sslmode=require)",
        ServerError::Timeout(_) => {
            "the server did not answer in time: check the host, firewalls, or raise PGSIDECAR_SERVER_CONNECT_TIMEOUT"
        }
        ServerError::Postgres { fields, .. } if fields.code == "28P01" || fields.code == "28000" => {
            "check the user and password in the URL (heroku config shows the current DATABASE_URL)"
        }
        ServerError::Postgres { fields, .. } if fields.code == "3D000" => "check the database name in the URL",
        ServerError::Postgres { fields, .. } if fields.code == "53300" => {
            "the database has no free connections: stop other clients or lower pool sizes"
        }
        _ => "see the message above",
    }
}

/// Findings about settings alone, before any connection.
pub fn setting_findings(config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let pool = &config.pool;
    match pool.query_wait_timeout {
        Some(t) if t > PLATFORM_REQUEST_TIMEOUT => out.push(Finding::Warn(format!(
            "PGSIDECAR_QUERY_WAIT_TIMEOUT={}s is longer than the platform's 30 s request timeout: the router gives up first; set it to 25s or less",
            t.as_secs()
        ))),
        None => out.push(Finding::Warn(
            "PGSIDECAR_QUERY_WAIT_TIMEOUT=0 lets clients wait forever: set it below the platform's 30 s request timeout, e.g. 20s".into(),
        )),
        _ => {}
    }
    // A Unix socket is as local as loopback: its directory's permissions say who reaches it.
    let exposed = config.listen.iter().find(|l| matches!(l, Listen::Tcp(a) if !is_loopback(a)));
    if let (ClientAuth::Trust, Some(listen)) = (config.client.auth, exposed) {
        out.push(Finding::Warn(format!(
            "PGSIDECAR_CLIENT_AUTH=trust while listening on {listen}: anyone who reaches that address gets in; use scram-sha-256 or listen on 127.0.0.1"
        )));
    }
    for (name, why) in &config.ignored_vars {
        out.push(Finding::Ok(format!("{name} is set but not used: {why}")));
    }
    out
}

fn is_loopback(listen: &str) -> bool {
    listen
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().is_loopback())
        .unwrap_or(listen.starts_with("localhost:"))
}

/// Connects to every upstream and reports.
pub async fn findings(config: &Config) -> Vec<Finding> {
    let mut out = setting_findings(config);
    for up in &config.upstreams {
        let name = format!("{} ({})", up.var, up.url.redacted());
        if !up.url.sslmode.tls_required() && !is_local_host(&up.url.host) {
            out.push(Finding::Warn(format!(
                "{name}: sslmode={} does not insist on TLS to a remote database; Heroku Postgres needs sslmode=require",
                up.url.sslmode.as_str()
            )));
        }
        if let Some(limits) = connect_findings(config, up, &name, &mut out).await {
            sizing_findings(config, up, limits, &mut out);
        }
    }
    out
}

/// Connects to `up` as the proxy would and reads its limits. `None`: it could not connect
/// (the reason is in `out`); `Some(None)`: connected, the limits unknown.
async fn connect_findings(
    config: &Config,
    up: &crate::config::Upstream,
    name: &str,
    out: &mut Vec<Finding>,
) -> Option<Option<sizing::DbLimits>> {
    let target = match Target::new(up.url.clone(), config.pool.connect_timeout) {
        Ok(t) => t,
        Err(e) => {
            out.push(Finding::Fail(format!("{name}: {e}")));
            return None;
        }
    };
    let started = Instant::now();
    let mut conn = match ServerConn::connect(&target).await {
        Ok(c) => c,
        Err(e) => {
            out.push(Finding::Fail(format!("{name}: {e}: {}", advice(&e))));
            return None;
        }
    };
    let version = conn.login_params.get("server_version").cloned().unwrap_or_default();
    out.push(Finding::Ok(format!(
        "{name}: connected in {} ms ({}, PostgreSQL {version})",
        started.elapsed().as_millis(),
        if conn.io.is_tls() { "TLS" } else { "no TLS" }
    )));
    let limits = conn
        .exec(sizing::LIMITS_QUERY, &mut Vec::new())
        .await
        .ok()
        .and_then(|rows| rows.first().and_then(|r| sizing::parse_limits(r)));
    conn.close().await;
    Some(limits)
}

/// The limits found, the pool size the proxy would use, and whether it fits them.
fn sizing_findings(
    config: &Config,
    up: &crate::config::Upstream,
    limits: Option<sizing::DbLimits>,
    out: &mut Vec<Finding>,
) {
    let pool = &config.pool;
    let s = sizing::compute(limits, pool.sizing.plan.clone(), pool.sizing.reserved, pool.sizing.processes);
    if let Some(d) = limits {
        out.push(Finding::Ok(format!(
            "{}: max_connections={} superuser_reserved={} role_limit={} in_use={}",
            up.var,
            d.max_connections,
            d.superuser_reserved,
            d.role_limit.map_or("none".into(), |r| r.to_string()),
            d.in_use
        )));
    }
    let mut line = String::new();
    let size = if pool.sizing.auto { s.pool_size } else { pool.size };
    let _ = write!(line, "{}: pool size {size}", up.var);
    if pool.sizing.auto {
        let _ = write!(
            line,
            " (auto: ({} limit - {} reserved) / {} processes)",
            s.limit.map_or("?".into(), |l| l.to_string()),
            s.reserved,
            s.processes
        );
    }
    out.push(Finding::Ok(line));
    if let Some(limit) = s.limit {
        let total = size as u64 * u64::from(s.processes);
        if total + u64::from(s.reserved) > u64::from(limit) {
            out.push(Finding::Warn(format!(
                "{}: pool size {size} x {} processes = {total} connections, more than the {limit} the database allows minus {} reserved: lower PGSIDECAR_POOL_SIZE or use auto",
                up.var, s.processes, s.reserved
            )));
        }
    }
    if let (Some((plan, plan_limit)), Some(d)) = (&s.plan, limits) {
        if d.max_connections != *plan_limit {
            out.push(Finding::Warn(format!(
                "{}: PGSIDECAR_PLAN={plan} says {plan_limit} connections but the database says max_connections={}: update PGSIDECAR_PLAN",
                up.var, d.max_connections
            )));
        }
    }
}

fn is_local_host(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Prints the findings; exit 0 when there is no problem.
pub async fn run(config: Config) -> std::process::ExitCode {
    let auth = match config.client.auth {
        ClientAuth::ScramSha256 => "scram-sha-256",
        ClientAuth::Md5 => "md5",
        ClientAuth::Trust => "trust",
    };
    let listen: Vec<String> = config.listen.iter().map(|l| l.to_string()).collect();
    println!("ok    listen {} mode {} client auth {auth}", listen.join(","), config.pool.mode.as_str());
    let found = findings(&config).await;
    for f in &found {
        println!("{}", f.line());
    }
    let problems = found.iter().filter(|f| !matches!(f, Finding::Ok(_))).count();
    if problems == 0 {
        println!("all good");
        std::process::ExitCode::SUCCESS
    } else {
        println!("{problems} problem(s)");
        std::process::ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SslMode;
    use std::collections::BTreeMap;

    fn config(pairs: &[(&str, &str)]) -> Config {
        let mut env: BTreeMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        env.entry("DATABASE_URL".into()).or_insert_with(|| "postgres://a:b@127.0.0.1/db".into());
        Config::load(&BTreeMap::new(), &env).unwrap()
    }

    #[test]
    fn long_wait_timeout_is_flagged() {
        let f = setting_findings(&config(&[("PGSIDECAR_QUERY_WAIT_TIMEOUT", "60s")]));
        assert!(matches!(&f[0], Finding::Warn(s) if s.contains("30 s")), "{f:?}");
        assert!(setting_findings(&config(&[])).is_empty());
    }

    #[test]
    fn trust_on_a_public_address_is_flagged() {
        let f = setting_findings(&config(&[
            ("PGSIDECAR_CLIENT_AUTH", "trust"),
            ("PGSIDECAR_LISTEN", "0.0.0.0:6432"),
        ]));
        assert_eq!(f.len(), 1);
        assert!(setting_findings(&config(&[("PGSIDECAR_CLIENT_AUTH", "trust")])).is_empty());
    }

    #[test]
    fn ssl_mode_helper() {
        assert!(SslMode::Require.tls_required());
        assert!(is_local_host("127.0.0.1") && is_local_host("localhost") && !is_local_host("db.example.com"));
    }
}
