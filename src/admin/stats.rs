//! SHOW STATS: traffic per pool since the proxy started, in PgBouncer's units (bytes and
//! microseconds). Averages of counts and bytes are per second since the start; averages of
//! times are per transaction, query or client wait. Waits are every client wait, with or
//! without a server at its end, as in Prometheus.

use super::{Table, Words};
use crate::proxy::Proxy;
use crate::wire::messages::PgError;
use bytes::BytesMut;
use std::sync::atomic::Ordering;

pub const COLUMNS: [&str; 15] = [
    "database",
    "total_xact_count",
    "total_query_count",
    "total_received",
    "total_sent",
    "total_xact_time",
    "total_query_time",
    "total_wait_time",
    "avg_xact_count",
    "avg_query_count",
    "avg_recv",
    "avg_sent",
    "avg_xact_time",
    "avg_query_time",
    "avg_wait_time",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShowStats;

impl ShowStats {
    pub fn parse(words: Words<'_>) -> Result<ShowStats, PgError> {
        words.finish()?;
        Ok(ShowStats)
    }

    pub fn execute(&self, proxy: &Proxy) -> BytesMut {
        let uptime = proxy.started.elapsed().as_secs().max(1);
        let mut t = Table::new(&COLUMNS);
        for up in proxy.upstreams() {
            let c = &up.counters;
            let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            let (xacts, queries) = (load(&c.transactions), load(&c.queries));
            let (received, sent) = (load(&c.bytes_from_clients), load(&c.bytes_to_clients));
            let (xact_us, query_us) = (load(&c.xact_us), load(&c.query_us));
            let waits = up.counters.wait_time.snapshot();
            let per = |total: u64, n: u64| total.checked_div(n).unwrap_or(0).to_string();
            t.row(&[
                up.pool.database.clone(),
                xacts.to_string(),
                queries.to_string(),
                received.to_string(),
                sent.to_string(),
                xact_us.to_string(),
                query_us.to_string(),
                waits.sum_us.to_string(),
                per(xacts, uptime),
                per(queries, uptime),
                per(received, uptime),
                per(sent, uptime),
                per(xact_us, xacts),
                per(query_us, queries),
                per(waits.sum_us, waits.count()),
            ]);
        }
        t.finish()
    }
}
