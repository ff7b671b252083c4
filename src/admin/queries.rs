//! SHOW QUERIES (pgsidecar's own): the statements that took the most time in total, across
//! pools, as normalized text (constants replaced by placeholders, so no parameter values).

use super::{Table, Words};
use crate::observe::stats::hist_quantile;
use crate::shared::Shared;
use crate::wire::messages::PgError;
use bytes::BytesMut;
use std::time::Duration;

pub const COLUMNS: [&str; 8] =
    ["database", "fingerprint", "query", "calls", "total_ms", "mean_ms", "p99_ms", "rows"];

/// Rows shown.
const TOP: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShowQueries;

impl ShowQueries {
    pub fn parse(words: Words<'_>) -> Result<ShowQueries, PgError> {
        words.finish()?;
        Ok(ShowQueries)
    }

    pub fn execute(&self, shared: &Shared) -> BytesMut {
        let mut all: Vec<(&str, u64, crate::observe::stats::QueryTotals)> = shared
            .upstreams()
            .iter()
            .flat_map(|up| {
                let db = up.pool.database.as_str();
                up.counters.top_statements(TOP).into_iter().map(move |(fp, t)| (db, fp, t))
            })
            .collect();
        all.sort_by_key(|(_, _, t)| std::cmp::Reverse(t.total));
        all.truncate(TOP);
        let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1000.0);
        let mut t = Table::new(&COLUMNS);
        for (db, fp, q) in all {
            let mean = Duration::from_nanos((q.total.as_nanos() / u128::from(q.calls.max(1))) as u64);
            t.row(&[
                db.to_owned(),
                format!("{fp:016x}"),
                q.text.clone(),
                q.calls.to_string(),
                ms(q.total),
                ms(mean),
                ms(hist_quantile(&q.hist, 0.99)),
                q.rows.to_string(),
            ]);
        }
        t.finish()
    }
}
