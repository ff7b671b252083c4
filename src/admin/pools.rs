//! SHOW POOLS: one row per pool with PgBouncer's columns, then pgsidecar's own (`pool_size`,
//! `cl_pinned`). Counts a pool cannot have (cancel requests in flight, servers being tested)
//! are 0.

use super::{Table, Words};
use crate::shared::Shared;
use crate::wire::messages::{PgError, INT4_OID, TEXT_OID};
use bytes::BytesMut;
use std::sync::atomic::Ordering;

pub const COLUMNS: [&str; 18] = [
    "database",
    "user",
    "cl_active",
    "cl_waiting",
    "cl_active_cancel_req",
    "cl_waiting_cancel_req",
    "sv_active",
    "sv_active_cancel",
    "sv_being_canceled",
    "sv_idle",
    "sv_used",
    "sv_tested",
    "sv_login",
    "maxwait",
    "maxwait_us",
    "pool_mode",
    "pool_size",
    "cl_pinned",
];

/// PgBouncer's types: names and the mode as `text`, counts as `int4`.
pub const TYPES: [i32; 18] = {
    let mut t = [INT4_OID; 18];
    t[0] = TEXT_OID;
    t[1] = TEXT_OID;
    t[15] = TEXT_OID;
    t
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShowPools;

impl ShowPools {
    pub fn parse(words: Words<'_>) -> Result<ShowPools, PgError> {
        words.finish()?;
        Ok(ShowPools)
    }

    pub fn execute(&self, shared: &Shared) -> BytesMut {
        let mode = shared.config.pool.mode.as_str();
        let mut t = Table::typed(&COLUMNS, &TYPES);
        for up in shared.upstreams() {
            let s = up.pool.stats();
            let clients = up.counters.clients.load(Ordering::Relaxed).max(0) as usize;
            let pinned = up.counters.pinned.load(Ordering::Relaxed).max(0);
            let wait = s.oldest_wait;
            t.row(&[
                up.pool.database.clone(),
                up.credentials.user.clone(),
                clients.saturating_sub(s.waiting).to_string(),
                s.waiting.to_string(),
                "0".into(),
                "0".into(),
                s.active.to_string(),
                "0".into(),
                "0".into(),
                s.idle.to_string(),
                "0".into(),
                "0".into(),
                s.connecting.to_string(),
                wait.as_secs().to_string(),
                wait.subsec_micros().to_string(),
                mode.to_owned(),
                s.max_size.to_string(),
                pinned.to_string(),
            ]);
        }
        t.finish()
    }
}
