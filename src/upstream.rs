//! One upstream database as the proxy keeps it: its pool, the credentials clients present, and
//! what the proxy has learned about it (its sizing, its traffic counters, the shared budget,
//! how PostgreSQL takes clients' startup settings). Also the sizing of pools from the
//! database's connection limit.
//!
//! May import: [`crate::server`], [`crate::config`], [`crate::auth`], [`crate::params`],
//! [`crate::budget`] (its state type), [`crate::observe::stats`]. Never [`crate::client`],
//! [`crate::admin`] or [`crate::proxy`]: they read upstreams, not the other way round.

use crate::auth::Credentials;
use crate::config::sizing::{self, DbLimits, Sizing};
use crate::config::{Config, SizingConfig};
use crate::server::conn::{ServerConn, Target};
use crate::server::pool::Pool;
use crate::server::ServerError;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// One upstream database: its pool and the credentials clients must present.
pub struct Upstream {
    pub var: String,
    pub pool: Arc<Pool>,
    pub credentials: Credentials,
    /// The last sizing decision (pool-size auto), for logs and the admin console.
    pub sizing: Mutex<Option<Sizing>>,
    /// Counters of this pool's traffic.
    pub counters: crate::observe::stats::Counters,
    /// The cross-dyno budget as last computed (its task holds it too).
    pub budget: Arc<crate::budget::BudgetState>,
    /// Clients' startup settings as PostgreSQL takes them (transaction mode).
    pub startup_values: crate::params::canonical::StartupValues,
}

impl Upstream {
    /// The upstream for `up`, with an empty pool sized by `config`.
    pub fn new(
        up: &crate::config::Upstream,
        config: &Config,
    ) -> Result<Upstream, crate::tls::TlsConfigError> {
        let mut target = Target::new(up.url.clone(), config.pool.connect_timeout)?;
        target.max_prepared = config.pool.max_prepared_statements;
        let pool = Pool::new(up.url.database.clone(), Arc::new(target), config.pool.clone());
        Ok(Upstream {
            var: up.var.clone(),
            pool,
            credentials: Credentials::new(&up.url.user, &up.url.password),
            sizing: Mutex::new(None),
            counters: Default::default(),
            budget: Default::default(),
            startup_values: Default::default(),
        })
    }

    /// The size the static sizing chose, if it ran.
    pub fn sized(&self) -> Option<usize> {
        self.sizing.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|s| s.pool_size)
    }

    /// Sizes the pool from its database's connection limit (or the plan's) when its size is
    /// `auto`, and logs every input with the result; it keeps its fallback size when neither
    /// is known. A pool the shared budget sizes keeps its claim (RELOAD): a round is asked for
    /// instead, and no probe connection is opened (the round would count it as an other, and
    /// shrink the claim for a period).
    pub async fn size(&self, cfg: &SizingConfig) {
        if !cfg.auto {
            return;
        }
        if self.budget.running.load(Ordering::Acquire) {
            let pool_size = self.pool.stats().max_size;
            if let Some(s) = self.sizing.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                s.pool_size = pool_size;
            }
            self.budget.wake.notify_one();
            tracing::info!(var = %self.var, database = %self.pool.database, pool_size, "budget_round_requested");
            return;
        }
        let (db, error) = match probe_limits(&self.pool.target).await {
            Ok((limits, _)) => (Some(limits), None),
            Err(e) => (None, Some(e)),
        };
        let s = sizing::compute(db, cfg.plan.clone(), cfg.reserved, cfg.processes);
        self.pool.set_max_size(s.pool_size);
        log_sizing(&self.var, &self.pool.database, &s, error.as_ref());
        *self.sizing.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
    }
}

/// Connects once and reads the connection limits and the server version.
pub async fn probe_limits(target: &Target) -> Result<(DbLimits, String), ServerError> {
    let mut conn = ServerConn::connect(target).await?;
    let rows = conn.exec(sizing::LIMITS_QUERY, &mut Vec::new()).await;
    let version = conn.login_params.get("server_version").cloned().unwrap_or_default();
    conn.close().await;
    let rows = rows?;
    let limits = rows
        .first()
        .and_then(|r| sizing::parse_limits(r))
        .ok_or_else(|| ServerError::Protocol("unexpected answer to the connection-limit query".into()))?;
    Ok((limits, version))
}

fn log_sizing(var: &str, database: &str, s: &Sizing, error: Option<&ServerError>) {
    let opt = |v: Option<u32>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
    let db = s.db;
    if let Some(e) = error {
        tracing::warn!(
            var,
            error = %e,
            hint = "the database could not be asked for its connection limit: set PGSIDECAR_PLAN or PGSIDECAR_POOL_SIZE",
            "pool_limit_unknown"
        );
    }
    tracing::info!(
        var,
        database,
        source = s.source.as_str(),
        max_connections = %opt(db.map(|d| d.max_connections)),
        superuser_reserved = %opt(db.map(|d| d.superuser_reserved)),
        role_limit = %opt(db.and_then(|d| d.role_limit)),
        in_use = %opt(db.map(|d| d.in_use)),
        plan = s.plan.as_ref().map_or("none", |(p, _)| p.as_str()),
        limit = %opt(s.limit),
        reserved = s.reserved,
        processes = s.processes,
        pool_size = s.pool_size,
        "pool_sized"
    );
}
