//! The cross-dyno connection budget: sidecars sharing one database coordinate through the
//! database itself, with no other service.
//!
//! Each sidecar keeps one coordination connection whose `application_name` is
//! `pgsidecar:<id>:<claim>`, where the claim is the most server connections it may hold. The
//! connection (and so the registration) vanishes when the sidecar or its dyno dies. Every
//! statement it sends starts with a comment listing the process ids of the sidecar's server
//! connections, so `pg_stat_activity.query` of a coordination connection tells the other
//! sidecars which backends are that sidecar's: a server's own `application_name` is its
//! client's, and says nothing.
//!
//! Every period each sidecar reads the limit, every client backend and the other sidecars'
//! claims, counts as "others" the backends that are neither a coordination connection nor a
//! listed server of a sidecar (consoles, one-off dynos, other apps), computes its fair share
//! of what is left, and publishes its new claim. Publishing is a compare-and-set under a
//! transaction-level advisory lock, inside one statement message: the claim is set only if
//! the other sidecars' claims are still those the decision was made from, and no lock is
//! ever held while waiting for the network, so a sidecar that vanishes mid-round holds up
//! nobody. A sidecar never claims more than is free right now: while a newcomer arrives, the
//! others shrink at their next period (idle servers first, active transactions never cut) and
//! the newcomer grows into the room they leave, so the sum of the claims, the coordination
//! connections and the others, as each round sees them, stays within the limit minus the
//! reserve (a newcomer's own coordination connection aside until the others' next round: the
//! reserve absorbs it).
//!
//! A server a sidecar opened since its last listing counts as an other for its peers until
//! its next round: the errors of this count go towards too many others, never too few.
//!
//! A failed round keeps the last claim while the coordination connection stays; a round that
//! loses it (its claim is no longer published, and peers count only the servers this sidecar
//! holds) shrinks the pool to [`START_SIZE`] (or less, if it was less) until a round succeeds
//! again.
//!
//! May import: [`crate::server`] (its pool and a connection of its own), [`crate::cancel`] (which
//! servers clients hold), [`crate::config`]. It is handed its pool and state; never
//! [`crate::upstream`], [`crate::shared`] or [`crate::proxy`].

use crate::cancel::{Activity, Registry};
use crate::config::sizing;
use crate::server::conn::ServerConn;
use crate::server::pool::Pool;
use crate::server::ServerError;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Prefix of coordination connections' application_name.
pub const TAG: &str = "pgsidecar:";
/// Start of the comment listing a sidecar's server process ids, at the head of every
/// statement of its coordination connection.
const SERVERS: &str = "/*pgsidecar servers:";
/// Advisory lock key serializing the sidecars' publishing ("pgsc" in ASCII).
const LOCK_KEY: i64 = 0x7067_7363;
/// The longest a round may take (connecting aside, which PGSIDECAR_SERVER_CONNECT_TIMEOUT
/// bounds); a round past it fails and the last claim stays.
pub const ROUND_TIMEOUT: Duration = Duration::from_secs(5);
/// Compare-and-set attempts per round, when peers publish in between.
const ATTEMPTS: u32 = 4;
/// The pool size until a round has succeeded, and again after the coordination connection
/// (and with it the published claim) is lost until a round succeeds anew: within the smallest
/// default reserve (3), so a sidecar without a published claim cannot take what its peers were
/// promised.
pub const START_SIZE: usize = 2;

/// The longest a first round can take: connecting, setting up the session, and the round.
/// Start-up waits this long at most (plus a margin) for the first rounds.
pub fn worst_first_round(connect_timeout: Duration) -> Duration {
    connect_timeout + ROUND_TIMEOUT + ROUND_TIMEOUT
}

/// The pool size while no claim is published (the coordination connection was lost): the
/// last size if smaller, else [`START_SIZE`]. Peers count only the servers this sidecar
/// holds; shrinking closes idle servers and lets active ones finish.
pub fn unpublished_size(current: usize) -> usize {
    current.min(START_SIZE)
}

/// Settings of the coordination connection: bounded waits, and the backend of a sidecar whose
/// dyno vanished without a reset (with its registration) gone within about a minute.
const SESSION_SQL: &str = "SET lock_timeout = '2s'; SET statement_timeout = '4s'; \
     SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; SET tcp_keepalives_count = 3";

/// What one round saw and decided; exported as metrics and shown in the admin console.
#[derive(Debug, Default)]
pub struct BudgetState {
    pub limit: AtomicU64,
    pub sidecars: AtomicU64,
    pub share: AtomicU64,
    pub claim: AtomicU64,
    pub others: AtomicU64,
    /// Rounds finished, successful or not.
    pub rounds: AtomicU64,
    /// Rounds that failed (the last claim stayed, or the pool shrank to [`START_SIZE`] with the
    /// coordination connection lost).
    pub failed: AtomicU64,
    /// The budget task sizes this pool: RELOAD must not.
    pub running: AtomicBool,
    /// Asks the task for a round now (RELOAD).
    pub wake: tokio::sync::Notify,
    /// Woken at the end of every round.
    done: tokio::sync::Notify,
}

impl BudgetState {
    /// Resolves once a round has finished, successful or not.
    pub async fn first_round(&self) {
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.rounds.load(Ordering::Acquire) > 0 {
                return;
            }
            notified.await;
        }
    }

    fn finished(&self, ok: bool) {
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.rounds.fetch_add(1, Ordering::Release);
        self.done.notify_waiters();
    }
}

/// The pool size before the first successful round: the static share, at most [`START_SIZE`].
/// `sized` is the static sizing's pool size, when there was one.
pub fn start_size(sized: Option<usize>) -> usize {
    sized.map_or(START_SIZE, |size| size.min(START_SIZE))
}

/// Inputs of one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    /// Connections the database allows this role (after superuser reservations).
    pub limit: u32,
    pub reserved: u32,
    /// What each other live sidecar may hold: its claim, or the servers it holds if more,
    /// at most the limit.
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
    let sidecars = u32::try_from(r.peer_claims.len()).unwrap_or(u32::MAX).saturating_add(1);
    let budget = r.limit.saturating_sub(r.reserved).saturating_sub(sidecars).saturating_sub(r.others);
    let share = (budget / sidecars).max(1);
    let peers = r.peer_claims.iter().fold(0u32, |sum, &c| sum.saturating_add(c));
    let free = budget.saturating_sub(peers);
    // Never more than is free now, even if that is nothing: the peers shrink next round.
    let claim = share.min(free);
    Decision { share, claim: claim.max(r.open.min(share)) }
}

fn parse_tag(app: &str) -> Option<(&str, u32)> {
    let rest = app.strip_prefix(TAG)?;
    let (id, claim) = rest.split_once(':')?;
    if claim.is_empty() || !claim.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Digits beyond u32 (a hostile or broken name) claim everything; capped by the caller.
    Some((id, claim.parse().unwrap_or(u32::MAX)))
}

/// The comment that starts each statement of the coordination connection: the server
/// process ids, ascending, each as its distance from the previous one in base 36, each
/// followed by a comma (so a list cut short by `track_activity_query_size` loses only whole
/// entries).
fn servers_note(pids: &[i32]) -> String {
    let mut pids: Vec<i64> = pids.iter().filter(|&&p| p > 0).map(|&p| i64::from(p)).collect();
    pids.sort_unstable();
    pids.dedup();
    let mut note = String::with_capacity(SERVERS.len() + 4 * pids.len() + 3);
    note.push_str(SERVERS);
    let mut prev = 0;
    for p in pids {
        push_base36(&mut note, (p - prev) as u64);
        note.push(',');
        prev = p;
    }
    note.push_str("*/ ");
    note
}

fn push_base36(out: &mut String, mut n: u64) {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut buf = [0u8; 16];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = DIGITS[(n % 36) as usize];
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.extend(buf[i..].iter().map(|&b| b as char));
}

/// The server process ids a coordination connection's last statement listed; nothing when it
/// lists none, and only the entries before the first malformed one.
fn parse_servers(query: &str) -> Vec<i32> {
    let Some(rest) = query.strip_prefix(SERVERS) else { return Vec::new() };
    let mut pids = Vec::new();
    let mut pid: i64 = 0;
    let mut entries = rest.split(',');
    // The piece after the last comma is the end of the comment, or an entry cut short.
    let _ = entries.next_back();
    for entry in entries {
        let delta = match u32::from_str_radix(entry, 36) {
            Ok(d) if !entry.starts_with('+') => i64::from(d),
            _ => break,
        };
        pid += delta;
        match i32::try_from(pid) {
            Ok(p) if p > 0 => pids.push(p),
            _ => break,
        }
    }
    pids
}

/// One client backend as the round sees it in `pg_stat_activity`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backend {
    pub pid: i32,
    pub application_name: Option<String>,
    /// `backend_start`, in microseconds.
    pub started: Option<i64>,
    /// `query`, for coordination connections only.
    pub query: Option<String>,
    /// `query_start`, in microseconds.
    pub query_started: Option<i64>,
}

/// Who holds the client backends (this sidecar's coordination connection excluded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Per other sidecar: the larger of its claim and the servers it listed that are still
    /// its own, at most `limit`.
    pub peer_claims: Vec<u32>,
    /// Backends that are neither a coordination connection nor a server of a sidecar.
    pub others: u32,
    /// Backends found by pid as this sidecar's servers.
    pub mine: u32,
}

/// Sorts the backends: coordination connections (by their tag), the `held` servers of this
/// sidecar's pool (found by pid in `mine`, or not), servers a peer listed (if the backend
/// started before the peer's listing), and the rest, the others. A server a peer opened after its last listing counts as an other until
/// its next round: too many others, never too few.
pub fn tally(backends: &[Backend], mine: &[i32], held: u32, limit: u32) -> Tally {
    struct Peer {
        claim: u32,
        listed_at: Option<i64>,
        held: u32,
    }
    let mut peers: Vec<Peer> = Vec::new();
    let mut coordination: HashSet<i32> = HashSet::new();
    let mut owner: HashMap<i32, usize> = mine.iter().filter(|&&p| p > 0).map(|&p| (p, usize::MAX)).collect();
    for b in backends {
        let Some((_, claim)) = b.application_name.as_deref().and_then(parse_tag) else { continue };
        if !coordination.insert(b.pid) {
            continue;
        }
        let index = peers.len();
        peers.push(Peer { claim, listed_at: b.query_started, held: 0 });
        for pid in parse_servers(b.query.as_deref().unwrap_or("")) {
            owner.entry(pid).or_insert(index);
        }
    }
    let (mut others, mut own) = (0u32, 0u32);
    for b in backends {
        if coordination.contains(&b.pid) {
            continue;
        }
        match owner.get(&b.pid) {
            Some(&usize::MAX) => own = own.saturating_add(1),
            Some(&i) if matches!((b.started, peers[i].listed_at), (Some(s), Some(l)) if s <= l) => {
                peers[i].held = peers[i].held.saturating_add(1);
            }
            _ => others = others.saturating_add(1),
        }
    }
    let peer_claims = peers.iter().map(|p| p.claim.max(p.held).min(limit)).collect();
    // This sidecar holds `held` servers: those not found by pid (between two clients, say)
    // were counted above, and backends found by pid beyond `held` are closing, yet still there.
    let others = others.saturating_add(own).saturating_sub(held);
    Tally { peer_claims, others, mine: own }
}

/// This sidecar's servers it has seen (process id and `backend_start`), kept while the same
/// backend lives: a server seen once is listed in every later round, even when it is between
/// two clients (neither idle nor held by one) at the instant of a round, as busy servers often
/// are. Returns the list to publish.
fn remember(known: &mut HashMap<i32, i64>, seen: &[i32], backends: &[Backend]) -> Vec<i32> {
    let alive: HashMap<i32, i64> = backends.iter().filter_map(|b| Some((b.pid, b.started?))).collect();
    known.retain(|pid, started| alive.get(pid) == Some(started));
    for pid in seen {
        if let Some(&started) = alive.get(pid) {
            known.insert(*pid, started);
        }
    }
    let mut pids: Vec<i32> = known.keys().copied().chain(seen.iter().copied()).collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The fingerprint of the other sidecars' tags; publishing compares it under the lock. md5 is
/// only a change detector here, and exists in every PostgreSQL version (sha256 needs 11).
const FINGERPRINT_SQL: &str = "SELECT pg_catalog.md5(\
     coalesce(pg_catalog.string_agg(pid || '=' || application_name, ',' ORDER BY pid), '')) \
     FROM pg_catalog.pg_stat_activity WHERE backend_type = 'client backend' \
     AND application_name LIKE 'pgsidecar:%' AND pid <> pg_catalog.pg_backend_pid()";

/// The limits and the fingerprint (one row), then every other client backend (one row each).
fn read_sql() -> String {
    format!(
        "SELECT pg_catalog.current_setting('max_connections')::int, \
         pg_catalog.current_setting('superuser_reserved_connections')::int, \
         (SELECT rolconnlimit FROM pg_catalog.pg_roles WHERE rolname = current_user), ({FINGERPRINT_SQL}); \
         SELECT pid, application_name, (extract(epoch FROM backend_start) * 1000000)::int8, \
         CASE WHEN application_name LIKE 'pgsidecar:%' THEN query END, \
         (extract(epoch FROM query_start) * 1000000)::int8 \
         FROM pg_catalog.pg_stat_activity \
         WHERE backend_type = 'client backend' AND pid <> pg_catalog.pg_backend_pid()"
    )
}

/// Sets `name` as application_name if the other sidecars' tags still have `fingerprint`,
/// under the lock; the row says whether it did.
fn publish_sql(fingerprint: &str, name: &str) -> String {
    format!(
        "SELECT pg_catalog.pg_advisory_xact_lock({LOCK_KEY}); \
         SELECT s.same, pg_catalog.set_config('application_name', \
         CASE WHEN s.same THEN '{name}' ELSE pg_catalog.current_setting('application_name') END, false) \
         FROM (SELECT ({FINGERPRINT_SQL}) = '{fingerprint}' AS same) s"
    )
}

#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("other sidecars published their claims during each of {ATTEMPTS} attempts")]
    Contended,
    #[error("the round took longer than {ROUND_TIMEOUT:?}")]
    Timeout,
}

impl RoundError {
    /// Whether the coordination connection is still in a known state.
    fn keeps_connection(&self) -> bool {
        matches!(self, RoundError::Contended | RoundError::Server(ServerError::Postgres { .. }))
    }
}

fn bad(what: &str) -> ServerError {
    ServerError::Protocol(format!("unexpected budget answer: {what}"))
}

fn num(row: &[Option<String>], i: usize) -> Option<i64> {
    row.get(i)?.as_deref()?.parse().ok()
}

/// One round on the coordination connection: read, decide, publish if no peer published in
/// between (else again, up to [`ATTEMPTS`] times). `seen` are server pids of this sidecar
/// found just now, `known` those of earlier rounds; `counts` gives, at each attempt, the
/// servers its pool holds (open ones, not those still connecting) and those with the ones
/// connecting.
async fn round(
    conn: &mut ServerConn,
    id: &str,
    seen: &[i32],
    known: &mut HashMap<i32, i64>,
    counts: impl Fn() -> (u32, u32),
    reserved: Option<u32>,
) -> Result<(Decision, Round), RoundError> {
    let mut listed: Vec<i32> = known.keys().copied().chain(seen.iter().copied()).collect();
    let mut reported = Vec::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(rand::random_range(5..50))).await;
        }
        // Sampled per attempt, just before the read: the pool may have opened or closed
        // servers during the previous attempt.
        let (held, open) = counts();
        let rows = conn.exec(&format!("{}{}", servers_note(&listed), read_sql()), &mut reported).await?;
        let (first, backends) = rows.split_first().ok_or_else(|| bad("no rows"))?;
        let max_connections =
            num(first, 0).and_then(|n| u32::try_from(n).ok()).ok_or_else(|| bad("limit"))?;
        let superuser_reserved =
            num(first, 1).and_then(|n| u32::try_from(n).ok()).ok_or_else(|| bad("reserved"))?;
        let role_limit = num(first, 2).and_then(|n| u32::try_from(n).ok());
        let fingerprint = first.get(3).cloned().flatten().ok_or_else(|| bad("fingerprint"))?;
        if fingerprint.is_empty() || !fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("fingerprint").into());
        }
        let backends: Vec<Backend> = backends
            .iter()
            .filter_map(|row| {
                Some(Backend {
                    pid: i32::try_from(num(row, 0)?).ok()?,
                    application_name: row.get(1).cloned().flatten(),
                    started: num(row, 2),
                    query: row.get(3).cloned().flatten(),
                    query_started: num(row, 4),
                })
            })
            .collect();
        listed = remember(known, seen, &backends);
        let usable = max_connections.saturating_sub(superuser_reserved);
        let limit = role_limit.map_or(usable, |r| r.min(usable));
        let reserved = reserved.unwrap_or_else(|| sizing::default_reserve(limit));
        let t = tally(&backends, &listed, held, limit);
        let r = Round { limit, reserved, peer_claims: t.peer_claims, others: t.others, open };
        let d = decide(&r);
        // Servers above a shrinking claim close only as they are released: claim them until then.
        let name = format!("{TAG}{id}:{}", d.claim.max(open));
        let publish = format!("{}{}", servers_note(&listed), publish_sql(&fingerprint, &name));
        let rows = conn.exec(&publish, &mut reported).await?;
        match rows.last().and_then(|r| r.first().cloned().flatten()).as_deref() {
            Some("t") => return Ok((d, r)),
            Some("f") => continue,
            _ => return Err(bad("publish").into()),
        }
    }
    Err(RoundError::Contended)
}

/// This sidecar's server pids in `pool`: idle ones from the pool, active ones from the
/// clients holding them (`clients`). A server on its way between two clients is missed: [`remember`]
/// keeps it listed once it has been seen.
fn own_servers(pool: &Pool, clients: &Registry) -> Vec<i32> {
    let mut pids: Vec<i32> = pool.idle_servers().iter().map(|s| s.pid).collect();
    for c in clients.snapshot() {
        if let Activity::Active { target, server, .. } = &c.activity {
            if Arc::ptr_eq(target, &pool.target) {
                pids.push(server.pid);
            }
        }
    }
    pids
}

/// Connects (and sets up) the coordination connection if it is not open, then runs a round.
async fn connect_and_round(
    pool: &Pool,
    clients: &Registry,
    conn: &mut Option<ServerConn>,
    sampled: &mut HashSet<i32>,
    known: &mut HashMap<i32, i64>,
    id: &str,
    reserved: Option<u32>,
) -> Result<(Decision, Round), RoundError> {
    let c = match conn {
        Some(c) => c,
        None => {
            let mut c = ServerConn::connect(&pool.target).await?;
            tokio::time::timeout(ROUND_TIMEOUT, c.exec(SESSION_SQL, &mut Vec::new()))
                .await
                .map_err(|_| RoundError::Timeout)??;
            conn.insert(c)
        }
    };
    sampled.extend(own_servers(pool, clients));
    let seen: Vec<i32> = sampled.drain().collect();
    let counts = || {
        let s = pool.stats();
        let held = u32::try_from(s.active + s.idle).unwrap_or(u32::MAX);
        (held, held.saturating_add(u32::try_from(s.connecting).unwrap_or(u32::MAX)))
    };
    tokio::time::timeout(ROUND_TIMEOUT, round(c, id, &seen, known, counts, reserved))
        .await
        .map_err(|_| RoundError::Timeout)?
}

/// Runs budget rounds for one pool every `period` (and when RELOAD asks), reporting into
/// `state`, until the proxy is gone (`clients`, its client registry, dropped). A failed round keeps the last claim, unless it lost the coordination connection:
/// the claim is unpublished then, and the pool shrinks to [`unpublished_size`] until a round
/// succeeds again.
pub async fn run(
    pool: Arc<Pool>,
    state: Arc<BudgetState>,
    clients: Weak<Registry>,
    period: Duration,
    reserved: Option<u32>,
) {
    let id = format!("{:08x}", rand::random::<u32>());
    let mut conn: Option<ServerConn> = None;
    let (mut sampled, mut known) = (HashSet::new(), HashMap::new());
    let mut last: Option<Decision> = None;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Between rounds, this sidecar's servers are looked for now and then: a busy one is often
    // between two clients at any one instant, and a server never seen is listed for no peer.
    let mut sample = tokio::time::interval((period / 20).max(Duration::from_millis(25)));
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.wake.notified() => {}
            _ = sample.tick() => {
                let Some(c) = clients.upgrade() else { return };
                sampled.extend(own_servers(&pool, &c));
                continue;
            }
        }
        let Some(c) = clients.upgrade() else { return };
        let outcome = connect_and_round(&pool, &c, &mut conn, &mut sampled, &mut known, &id, reserved).await;
        drop(c);
        match outcome {
            Ok((d, r)) => {
                pool.set_max_size(d.claim as usize);
                state.limit.store(u64::from(r.limit.saturating_sub(r.reserved)), Ordering::Relaxed);
                state.sidecars.store(r.peer_claims.len() as u64 + 1, Ordering::Relaxed);
                state.share.store(u64::from(d.share), Ordering::Relaxed);
                state.claim.store(u64::from(d.claim), Ordering::Relaxed);
                state.others.store(u64::from(r.others), Ordering::Relaxed);
                if last != Some(d) {
                    tracing::info!(
                        database = %pool.database,
                        budget = r.limit.saturating_sub(r.reserved),
                        sidecars = r.peer_claims.len() + 1,
                        others = r.others,
                        share = d.share,
                        pool_size = d.claim,
                        open = r.open,
                        "budget_changed"
                    );
                    last = Some(d);
                }
                state.finished(true);
            }
            Err(e) => {
                if !e.keeps_connection() {
                    conn = None;
                }
                // Without the connection (lost now, or never set up) no claim is published:
                // peers count only the servers this sidecar holds, and may take the rest.
                let lost = conn.is_none();
                if lost {
                    pool.set_max_size(unpublished_size(pool.stats().max_size));
                    last = None;
                }
                tracing::warn!(
                    database = %pool.database,
                    error = %e,
                    coordination_connection = if lost { "lost" } else { "kept" },
                    pool_size = pool.stats().max_size,
                    "budget_round_failed"
                );
                state.finished(false);
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

    #[test]
    fn huge_claims_neither_panic_nor_wrap() {
        // Any session may name itself so: the sum must saturate, not overflow.
        let d = round(37, &[u32::MAX, u32::MAX, 5], 0, 0);
        assert_eq!(d.claim, 0);
        let d = round(37, &[u32::MAX, 1], 0, 3);
        assert_eq!(d, Decision { share: 10, claim: 3 }, "what it holds, up to its share, and no more");
        assert_eq!(parse_tag("pgsidecar:x:4294967295"), Some(("x", u32::MAX)));
        assert_eq!(parse_tag("pgsidecar:x:99999999999999999999999"), Some(("x", u32::MAX)));
        for bad in ["pgsidecar:x:", "pgsidecar:x:-1", "pgsidecar:x:+3", "pgsidecar:x: 3", "pgsidecar:x"] {
            assert_eq!(parse_tag(bad), None, "{bad}");
        }
    }

    fn coordination(pid: i32, claim: &str, servers: &[i32], at: i64) -> Backend {
        Backend {
            pid,
            application_name: Some(format!("{TAG}{pid:x}:{claim}")),
            started: Some(0),
            query: Some(format!("{}SELECT 1", servers_note(servers))),
            query_started: Some(at),
        }
    }

    fn plain(pid: i32, app: &str, started: i64) -> Backend {
        Backend { pid, application_name: Some(app.into()), started: Some(started), ..Default::default() }
    }

    #[test]
    fn without_a_published_claim_the_pool_is_small() {
        assert_eq!(unpublished_size(31), START_SIZE);
        assert_eq!(unpublished_size(START_SIZE), START_SIZE);
        assert_eq!(unpublished_size(1), 1, "never grows");
        assert_eq!(unpublished_size(0), 0);
    }

    #[test]
    fn hostile_names_are_capped_at_the_limit() {
        let backends = vec![
            plain(10, "pgsidecar:a:4294967295", 1),
            plain(11, "pgsidecar:b:99999999999999", 1),
            plain(12, "pgsidecar:c:-5", 1),
            plain(13, "pgsidecar:", 1),
            Backend {
                pid: 14,
                application_name: Some("pgsidecar:d:3".into()),
                query: Some("/*pgsidecar servers:zzzzzzzzzzzzzzz,1,*/".into()),
                ..Default::default()
            },
        ];
        let t = tally(&backends, &[], 0, 37);
        assert_eq!(t.peer_claims, vec![37, 37, 3]);
        assert_eq!(t.others, 2, "malformed tags are ordinary connections");
        let d =
            decide(&Round { limit: 37, reserved: 4, peer_claims: t.peer_claims, others: t.others, open: 0 });
        assert_eq!(d.claim, 0);
    }

    #[test]
    fn server_lists_round_trip_and_survive_truncation() {
        let pids = [4_194_304, 17, 18, 950, 17, 0, -3, 2_000_000];
        let note = servers_note(&pids);
        assert!(note.starts_with(SERVERS) && note.ends_with("*/ "), "{note}");
        assert_eq!(parse_servers(&format!("{note}SELECT 1")), vec![17, 18, 950, 2_000_000, 4_194_304]);
        // track_activity_query_size cuts the text anywhere: only whole entries count.
        for cut in SERVERS.len()..note.len() {
            let seen = parse_servers(&note[..cut]);
            assert!([17, 18, 950, 2_000_000, 4_194_304].starts_with(&seen), "{cut}: {seen:?}");
        }
        assert_eq!(parse_servers("SELECT 1 /*pgsidecar servers:1,*/"), Vec::<i32>::new());
        assert_eq!(parse_servers("/*pgsidecar servers:"), Vec::<i32>::new());
        assert_eq!(parse_servers("/*pgsidecar servers:zzzzzz,1,"), Vec::<i32>::new(), "past i32");
        assert_eq!(parse_servers("/*pgsidecar servers:zik0zj,zik0zj,"), vec![i32::MAX]);
        assert_eq!(parse_servers("/*pgsidecar servers:5,-1,6,"), vec![5]);
    }

    /// The review's example: usable 37, reserve 4, two idle sidecars and 20 console
    /// connections. Each sidecar's rounds must count the consoles as others however much the
    /// other claims, so that a burst to both claims fits: claims + 2 + 20 <= 33.
    #[test]
    fn unused_claims_do_not_hide_other_connections() {
        let consoles: Vec<Backend> = (100..120).map(|pid| plain(pid, "psql", 5)).collect();
        let mut claims = [0u32, 0];
        for _ in 0..6 {
            for me in 0..2 {
                let peer = 1 - me;
                let mut backends = consoles.clone();
                // The peer's coordination connection; it holds no server (idle).
                backends.push(coordination(1 + peer as i32, &claims[peer].to_string(), &[], 10));
                let t = tally(&backends, &[], 0, 37);
                assert_eq!(t.others, 20);
                let d = decide(&Round {
                    limit: 37,
                    reserved: 4,
                    peer_claims: t.peer_claims,
                    others: t.others,
                    open: 0,
                });
                claims[me] = d.claim;
            }
        }
        assert!(claims[0] + claims[1] + 2 + 20 <= 33, "{claims:?}");
        assert_eq!(claims, [5, 5], "(33 - 2 - 20) / 2");
    }

    #[test]
    fn listed_servers_are_their_sidecars_not_others() {
        // A peer claiming 5 that holds 4 listed servers; this sidecar holds 2; a console.
        let mut backends = vec![coordination(1, "5", &[20, 21, 22, 23], 100)];
        backends.extend([20, 21, 22, 23].map(|pid| plain(pid, "puma", 50)));
        backends.extend([30, 31].map(|pid| plain(pid, "sidekiq", 50)));
        backends.push(plain(40, "psql", 50));
        let t = tally(&backends, &[30, 31], 2, 37);
        assert_eq!(t, Tally { peer_claims: vec![5], others: 1, mine: 2 });
        // Its pool holds a third server it has not seen yet (between two clients).
        backends.push(plain(32, "sidekiq", 60));
        assert_eq!(tally(&backends, &[30, 31], 3, 37).others, 1);
        backends.pop();
        // Or it has closed one of the two, whose backend has not quite gone yet.
        assert_eq!(tally(&backends, &[30, 31], 1, 37).others, 2);
        // A listed pid that now belongs to a backend started after the listing (pid reuse)
        // is an other; so is a server the peer opened after it.
        backends[1].started = Some(150);
        backends.push(plain(24, "puma", 120));
        let t = tally(&backends, &[30, 31], 2, 37);
        assert_eq!((t.others, t.mine), (3, 2));
        // A peer holding more listed servers than it claims counts for what it holds.
        let mut backends = vec![coordination(1, "2", &[20, 21, 22, 23], 100)];
        backends.extend([20, 21, 22, 23].map(|pid| plain(pid, "puma", 50)));
        assert_eq!(tally(&backends, &[], 0, 37).peer_claims, vec![4]);
    }

    #[test]
    fn servers_seen_once_stay_listed_while_they_live() {
        let mut known = HashMap::new();
        let backends = [plain(20, "puma", 5), plain(21, "puma", 6), plain(22, "puma", 7)];
        assert_eq!(remember(&mut known, &[20, 21, 99], &backends), vec![20, 21, 99]);
        // 21 is between two clients this time: still listed. 99 never was a backend.
        assert_eq!(remember(&mut known, &[20, 22], &backends), vec![20, 21, 22]);
        // 20 closed; 21's pid now belongs to a newer backend (not this sidecar's server).
        let backends = [plain(21, "psql", 50), plain(22, "puma", 7)];
        assert_eq!(remember(&mut known, &[], &backends), vec![22]);
    }
}
