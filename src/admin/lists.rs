//! SHOW LISTS: PgBouncer's internal list sizes, one row per list (`list` text, `items` int4),
//! as prometheus-pgbouncer-exporter and Datadog's check read them. pgsidecar has no slab
//! caches, peers or DNS lookups of its own: those lists are 0; clients and servers are counted.

use super::{Table, Words};
use crate::shared::Shared;
use crate::wire::messages::{PgError, INT4_OID, TEXT_OID};
use bytes::BytesMut;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

/// PgBouncer's rows, in its order.
pub const LISTS: [&str; 14] = [
    "databases",
    "users",
    "peers",
    "pools",
    "peer_pools",
    "free_clients",
    "used_clients",
    "login_clients",
    "free_servers",
    "used_servers",
    "dns_names",
    "dns_zones",
    "dns_queries",
    "dns_pending",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShowLists;

impl ShowLists {
    pub fn parse(words: Words<'_>) -> Result<ShowLists, PgError> {
        words.finish()?;
        Ok(ShowLists)
    }

    pub fn execute(&self, shared: &Shared) -> BytesMut {
        let ups = shared.upstreams();
        let users: BTreeSet<&str> = ups.iter().map(|u| u.credentials.user.as_str()).collect();
        let pool_clients: usize =
            ups.iter().map(|u| u.counters.clients.load(Ordering::Relaxed).max(0) as usize).sum();
        let servers: usize = ups
            .iter()
            .map(|u| {
                let s = u.pool.stats();
                s.active + s.idle + s.connecting
            })
            .sum();
        // As in PgBouncer, used_clients counts every client connection, console sessions too;
        // application clients that have not reached a pool yet are logging in.
        let login = shared.app_clients().saturating_sub(pool_clients);
        let mut t = Table::typed(&["list", "items"], &[TEXT_OID, INT4_OID]);
        for list in LISTS {
            let items = match list {
                "databases" | "pools" => ups.len(),
                "users" => users.len(),
                "used_clients" => shared.clients(),
                "login_clients" => login,
                "used_servers" => servers,
                _ => 0,
            };
            t.row(&[list.to_owned(), items.to_string()]);
        }
        t.finish()
    }
}
