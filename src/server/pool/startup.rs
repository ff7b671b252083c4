//! Servers opened with a session-mode client's startup settings. PostgreSQL takes the values
//! that `RESET`, `RESET ALL`, `SET ... TO DEFAULT` and `DISCARD ALL` return to from the startup
//! packet alone, so a client whose settings differ from the pool's gets a server whose startup
//! packet carried them: an idle one opened with the same settings, a new one in a free slot,
//! or, when the pool is full, the server it was given, replaced in the same slot. The pool's
//! size bounds them like any other server.

use super::{Lease, Pool};
use crate::observe::stats::CloseReason;
use crate::params::Settings;
use crate::server::conn::ServerConn;
use crate::server::ServerError;
use quanta::Instant;
use std::sync::Arc;

/// A slot counted as active while its server is being opened; freed (and the queue served)
/// if the opening fails or is abandoned.
struct Slot(Option<Arc<Pool>>);

impl Slot {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take() {
            let mut s = pool.lock();
            pool.lease_ended(&mut s);
            pool.spawn_connects(&mut s);
        }
    }
}

impl Pool {
    /// An idle server opened with `startup` that can be handed out without a check, taken
    /// without a queue entry; `None` while others wait or the pool is paused.
    pub fn checkout_opened_with(self: &Arc<Self>, startup: &Settings) -> Option<Lease> {
        let mut s = self.lock();
        if s.paused || !s.waiters.is_empty() {
            return None;
        }
        let (now, generation, delay) = (Instant::now(), s.generation, self.cfg.server_check_delay);
        let at = s.idle.iter_mut().rposition(|c| {
            *c.startup == *startup
                && c.generation == generation
                && !self.expired(c, now)
                && now.saturating_duration_since(c.last_used) < delay
                && !c.is_stale()
        })?;
        let conn = s.idle.remove(at);
        s.active += 1;
        Some(Lease { conn: Some(conn), pool: self.clone() })
    }

    /// A new server opened with `startup` in a free slot; `None` when there is none (or
    /// others wait, or the pool is paused or closed).
    pub async fn open_with(self: &Arc<Self>, startup: &Arc<Settings>) -> Option<Result<Lease, ServerError>> {
        let generation = {
            let mut s = self.lock();
            if s.closed || s.paused || !s.waiters.is_empty() || s.total() >= s.max_size {
                return None;
            }
            s.active += 1;
            s.generation
        };
        Some(self.open_in(Slot(Some(self.clone())), generation, startup).await)
    }

    async fn open_in(
        self: &Arc<Self>,
        slot: Slot,
        generation: u64,
        startup: &Arc<Settings>,
    ) -> Result<Lease, ServerError> {
        let mut conn = ServerConn::connect_with(&self.target, startup.clone()).await?;
        conn.generation = generation;
        self.lock().opened_total += 1;
        slot.keep();
        tracing::debug!(database = %self.database, server_pid = conn.pid, "server_connected_with_client_settings");
        Ok(Lease { conn: Some(Box::new(conn)), pool: self.clone() })
    }
}

impl Lease {
    /// Replaces the server with one opened with `startup`, in the same slot; the old one is
    /// closed. On failure the slot is freed.
    pub async fn reopen(mut self, startup: &Arc<Settings>) -> Result<Lease, ServerError> {
        let pool = self.pool.clone();
        let old = self.conn.take().expect("lease holds a connection until consumed");
        // A lease without a connection drops as nothing: the slot is the `Slot`'s now.
        drop(self);
        let slot = Slot(Some(pool.clone()));
        let generation = {
            let mut s = pool.lock();
            s.closing += 1;
            s.note_closed(CloseReason::StartupSettings, 1);
            s.generation
        };
        pool.close_counted(vec![old]);
        pool.open_in(slot, generation, startup).await
    }
}
