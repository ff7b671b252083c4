//! SHOW USERS: one row per user of an upstream URL, with the columns of PgBouncer 1.23 (its
//! per-user limits do not exist here: 0 means none, as in PgBouncer). Never a password.

use super::{Table, Words};
use crate::shared::Shared;
use crate::wire::messages::{PgError, INT4_OID, TEXT_OID};
use bytes::BytesMut;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

pub const COLUMNS: [&str; 8] = [
    "name",
    "pool_size",
    "reserve_pool_size",
    "pool_mode",
    "max_user_connections",
    "current_connections",
    "max_user_client_connections",
    "current_client_connections",
];

/// PgBouncer's type for each column.
pub const TYPES: [i32; 8] = [TEXT_OID, INT4_OID, INT4_OID, TEXT_OID, INT4_OID, INT4_OID, INT4_OID, INT4_OID];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShowUsers;

impl ShowUsers {
    pub fn parse(words: Words<'_>) -> Result<ShowUsers, PgError> {
        words.finish()?;
        Ok(ShowUsers)
    }

    pub fn execute(&self, shared: &Shared) -> BytesMut {
        // Per user: pool sizes, server connections and clients summed over its pools.
        let mut users: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
        for up in shared.upstreams() {
            let s = up.pool.stats();
            let e = users.entry(up.credentials.user.as_str()).or_default();
            e.0 += s.max_size;
            e.1 += s.active + s.idle + s.connecting;
            e.2 += up.counters.clients.load(Ordering::Relaxed).max(0) as usize;
        }
        let mode = shared.config.pool.mode.as_str();
        let mut t = Table::typed(&COLUMNS, &TYPES);
        for (name, (size, servers, clients)) in users {
            t.row(&[
                name.to_owned(),
                size.to_string(),
                "0".into(),
                mode.to_owned(),
                "0".into(),
                servers.to_string(),
                "0".into(),
                clients.to_string(),
            ]);
        }
        t.finish()
    }
}
