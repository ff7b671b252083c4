//! The cross-dyno connection budget: sidecars sharing one database coordinate through the
//! database itself, with no other service.
//!
//! Each sidecar keeps one coordination connection whose `application_name` is
//! `pgsidecar:<id>:<claim>`, where the claim is the most server connections it may hold. The
//! connection (and so the registration) vanishes when the sidecar or its dyno dies. Every
//! period, under a transaction-level advisory lock that serializes the sidecars, each one
//! reads the limit, the other sidecars' claims and the connections nobody claims, computes
//! its fair share of what is left, and publishes its new claim. A sidecar never claims more
//! than is free right now: while a newcomer arrives, the others shrink at their next period
//! (idle servers first, active transactions never cut) and the newcomer grows into the room
//! they leave, so the sum of the claims stays within the limit.

use crate::config::sizing::{self, DbLimits};
use crate::proxy::Upstream;
use crate::server::conn::ServerConn;
use crate::server::ServerError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Prefix of coordination connections' application_name.
pub const TAG: &str = "pgsidecar:";
/// Advisory lock key serializing budget rounds ("pgsc" in ASCII).
const LOCK_KEY: i64 = 0x7067_7363;

/// What one round saw and decided; exported as metrics and shown in the admin console.
#[derive(Debug, Default)]
pub struct BudgetState {
    pub limit: AtomicU64,
    pub sidecars: AtomicU64,
    pub share: AtomicU64,
    pub claim: AtomicU64,
    pub others: AtomicU64,
}

/// Inputs of one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    /// Connections the database allows this role (after superuser reservations).
    pub limit: u32,
    pub reserved: u32,
    /// Claims of the other live sidecars.
    pub peer_claims: Vec<u32>,
    /// Client backends that belong to no sidecar (consoles, one-off dynos, other apps).
    pub others: u32,
    /// Server connections this sidecar holds now.
    pub open: u32,
}

/// The decision of one round: the fair share and the claim this sidecar may take now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub share: u32,
    pub claim: u32,
}

/// Fair share of what the limit leaves after the reserve, the coordination connections and
/// the unclaimed connections; never more than is free given the peers' claims, and never
/// below what this sidecar holds up to its share (it shrinks by releasing, not by cutting).
pub fn decide(r: &Round) -> Decision {
    let sidecars = r.peer_claims.len() as u32 + 1;
    let budget = r.limit.saturating_sub(r.reserved).saturating_sub(sidecars).saturating_sub(r.others);
    let share = (budget / sidecars).max(1);
    let peers: u32 = r.peer_claims.iter().sum();
    let free = budget.saturating_sub(peers);
    // Never more than is free now, even if that is nothing: the peers shrink next round.
    let claim = share.min(free);
    Decision { share, claim: claim.max(r.open.min(share)) }
}

fn parse_tag(app: &str) -> Option<(&str, u32)> {
    let rest = app.strip_prefix(TAG)?;
    let (id, claim) = rest.split_once(':')?;
    Some((id, claim.parse().ok()?))
}

const ROUND_SQL: &str = "SELECT pg_catalog.current_setting('max_connections')::int, \
     pg_catalog.current_setting('superuser_reserved_connections')::int, \
     (SELECT rolconnlimit FROM pg_catalog.pg_roles WHERE rolname = current_user), \
     (SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'client backend'), \
     (SELECT coalesce(string_agg(application_name, ','), '') FROM pg_catalog.pg_stat_activity \
      WHERE backend_type = 'client backend' AND application_name LIKE 'pgsidecar:%' AND pid <> pg_catalog.pg_backend_pid())";

/// One round on the coordination connection; returns the decision. A session-level advisory
/// lock serializes the sidecars' rounds; it is released at the end, or with the connection if
/// the sidecar dies mid-round.
async fn round(
    conn: &mut ServerConn,
    id: &str,
    open: u32,
    reserved: Option<u32>,
) -> Result<(Decision, Round), ServerError> {
    let mut reported = Vec::new();
    conn.exec(&format!("SELECT pg_catalog.pg_advisory_lock({LOCK_KEY})"), &mut reported).await?;
    let result = round_locked(conn, id, open, reserved).await;
    let unlocked =
        conn.exec(&format!("SELECT pg_catalog.pg_advisory_unlock({LOCK_KEY})"), &mut reported).await;
    let r = result?;
    unlocked?;
    Ok(r)
}

async fn round_locked(
    conn: &mut ServerConn,
    id: &str,
    open: u32,
    reserved: Option<u32>,
) -> Result<(Decision, Round), ServerError> {
    let mut reported = Vec::new();
    let rows = conn.exec(ROUND_SQL, &mut reported).await?;
    let row = rows.first().ok_or_else(|| ServerError::Protocol("empty budget answer".into()))?;
    let limits =
        sizing::parse_limits(row).ok_or_else(|| ServerError::Protocol("bad budget answer".into()))?;
    let tags = row.get(4).cloned().flatten().unwrap_or_default();
    let peer_claims: Vec<u32> = tags.split(',').filter_map(parse_tag).map(|(_, c)| c).collect();
    let DbLimits { max_connections, superuser_reserved, role_limit, in_use } = limits;
    let usable = max_connections.saturating_sub(superuser_reserved);
    let limit = role_limit.map_or(usable, |r| r.min(usable));
    let reserved = reserved.unwrap_or_else(|| sizing::default_reserve(limit));
    let sidecar_backends = peer_claims.len() as u32 + 1;
    let claimed: u32 = peer_claims.iter().sum::<u32>() + open;
    // Client backends beyond the sidecars' coordination connections and claimed servers.
    let others = in_use.saturating_sub(sidecar_backends).saturating_sub(claimed);
    let r = Round { limit, reserved, peer_claims, others, open };
    let d = decide(&r);
    // Servers above a shrinking claim close only as they are released: claim them until then.
    let publish =
        format!("SELECT pg_catalog.set_config('application_name', '{TAG}{id}:{}', false)", d.claim.max(open));
    conn.exec(&publish, &mut reported).await?;
    Ok((d, r))
}

/// Runs budget rounds for one upstream every `period` until the proxy is gone.
pub async fn run(
    upstream: Arc<Upstream>,
    proxy: Weak<crate::proxy::Proxy>,
    period: Duration,
    reserved: Option<u32>,
) {
    let id = format!("{:08x}", rand::random::<u32>());
    let state = &upstream.budget;
    let mut conn: Option<ServerConn> = None;
    let mut last = Decision { share: 0, claim: 0 };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if proxy.strong_count() == 0 {
            return;
        }
        if conn.is_none() {
            match ServerConn::connect(&upstream.pool.target).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::warn!(database = %upstream.pool.database, error = %e, "budget_connect_failed");
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let s = upstream.pool.stats();
        let open = (s.active + s.idle + s.connecting) as u32;
        match round(c, &id, open, reserved).await {
            Ok((d, r)) => {
                upstream.pool.set_max_size(d.claim as usize);
                state.limit.store(u64::from(r.limit.saturating_sub(r.reserved)), Ordering::Relaxed);
                state.sidecars.store(r.peer_claims.len() as u64 + 1, Ordering::Relaxed);
                state.share.store(u64::from(d.share), Ordering::Relaxed);
                state.claim.store(u64::from(d.claim), Ordering::Relaxed);
                state.others.store(u64::from(r.others), Ordering::Relaxed);
                if d != last {
                    tracing::info!(
                        database = %upstream.pool.database,
                        budget = r.limit.saturating_sub(r.reserved),
                        sidecars = r.peer_claims.len() + 1,
                        others = r.others,
                        share = d.share,
                        pool_size = d.claim,
                        open,
                        "budget_changed"
                    );
                    last = d;
                }
            }
            Err(e) => {
                tracing::warn!(database = %upstream.pool.database, error = %e, "budget_round_failed");
                conn = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(limit: u32, peers: &[u32], others: u32, open: u32) -> Decision {
        decide(&Round { limit, reserved: 4, peer_claims: peers.to_vec(), others, open })
    }

    #[test]
    fn fair_share_of_what_is_left() {
        // 37 usable - 4 reserved - 4 coordination connections = 29; / 4 = 7.
        assert_eq!(round(37, &[7, 7, 7], 0, 7), Decision { share: 7, claim: 7 });
        // Unclaimed connections (a console) come off the top.
        assert_eq!(round(37, &[6, 6, 6], 5, 3).share, 6);
    }

    #[test]
    fn newcomer_takes_only_what_is_free() {
        // Three peers still hold a third each (9 + 9 + 9 = 27 of 29): 2 are free.
        let d = round(37, &[9, 9, 9], 0, 0);
        assert_eq!(d, Decision { share: 7, claim: 2 });
        // Peers shrink to their share next round and the newcomer grows.
        assert_eq!(round(37, &[7, 7, 7], 0, 2), Decision { share: 7, claim: 7 });
    }

    #[test]
    fn a_leaving_peer_lets_the_others_grow() {
        // 37 - 4 - 3 = 30; / 3 = 10.
        assert_eq!(round(37, &[7, 7], 0, 7), Decision { share: 10, claim: 10 });
    }

    #[test]
    fn never_below_one_and_tags_parse() {
        assert_eq!(round(5, &[3, 3], 0, 0).claim, 0, "no room: wait for the peers to shrink");
        assert_eq!(parse_tag("pgsidecar:ab12cd34:7"), Some(("ab12cd34", 7)));
        assert_eq!(parse_tag("psql"), None);
        assert_eq!(parse_tag("pgsidecar:x:notanumber"), None);
    }
}
