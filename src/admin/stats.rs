//! SHOW STATS: traffic per pool, in PgBouncer's units (bytes and microseconds). The `total_*`
//! columns count since the proxy started; the `avg_*` columns are PgBouncer's, over the last
//! complete stats period (PGSIDECAR_STATS_PERIOD, 60 s when that is 0; zero until the first
//! period ends): counts and bytes per second, times per transaction, query or client wait.
//! Waits are every client wait, with or without a server at its end, as in Prometheus.

use super::{Table, Words};
use crate::shared::Shared;
use crate::wire::messages::{PgError, INT8_OID, TEXT_OID};
use bytes::BytesMut;
use std::sync::atomic::Ordering;

pub const COLUMNS: [&str; 16] = [
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
    // PgBouncer before 1.8 called total_query_count this; Debian's prometheus-pgbouncer-exporter
    // (1.7) and Datadog's check still read it.
    "total_requests",
];

/// PgBouncer's types: the database name, then `int8` counters.
pub const TYPES: [i32; 16] = {
    let mut t = [INT8_OID; 16];
    t[0] = TEXT_OID;
    t
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShowStats;

impl ShowStats {
    pub fn parse(words: Words<'_>) -> Result<ShowStats, PgError> {
        words.finish()?;
        Ok(ShowStats)
    }

    pub fn execute(&self, shared: &Shared) -> BytesMut {
        let mut t = Table::typed(&COLUMNS, &TYPES);
        for up in shared.upstreams() {
            let c = &up.counters;
            let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            let avg = c.period_averages();
            t.row(&[
                up.pool.database.clone(),
                load(&c.transactions).to_string(),
                load(&c.queries).to_string(),
                load(&c.bytes_from_clients).to_string(),
                load(&c.bytes_to_clients).to_string(),
                load(&c.xact_us).to_string(),
                load(&c.query_us).to_string(),
                c.wait_time.snapshot().sum_us.to_string(),
                avg.xact_count.to_string(),
                avg.query_count.to_string(),
                avg.recv.to_string(),
                avg.sent.to_string(),
                avg.xact_time.to_string(),
                avg.query_time.to_string(),
                avg.wait_time.to_string(),
                load(&c.queries).to_string(),
            ]);
        }
        t.finish()
    }
}
