//! SHOW DATABASES: one row per upstream with PgBouncer's columns. `max_connections` is the
//! pool's size (pgsidecar never opens more to one database); there is no reserve pool.

use super::{Table, Words};
use crate::shared::Shared;
use crate::wire::messages::{PgError, INT4_OID, TEXT_OID};
use bytes::BytesMut;

pub const COLUMNS: [&str; 13] = [
    "name",
    "host",
    "port",
    "database",
    "force_user",
    "pool_size",
    "min_pool_size",
    "reserve_pool",
    "pool_mode",
    "max_connections",
    "current_connections",
    "paused",
    "disabled",
];

/// PgBouncer's types: names, host and mode as `text`, numbers as `int4`.
pub const TYPES: [i32; 13] = [
    TEXT_OID, TEXT_OID, INT4_OID, TEXT_OID, TEXT_OID, INT4_OID, INT4_OID, INT4_OID, TEXT_OID, INT4_OID,
    INT4_OID, INT4_OID, INT4_OID,
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShowDatabases;

impl ShowDatabases {
    pub fn parse(words: Words<'_>) -> Result<ShowDatabases, PgError> {
        words.finish()?;
        Ok(ShowDatabases)
    }

    pub fn execute(&self, shared: &Shared) -> BytesMut {
        let mut t = Table::typed(&COLUMNS, &TYPES);
        for up in shared.upstreams() {
            let s = up.pool.stats();
            let url = &up.pool.target.url;
            t.row(&[
                up.pool.database.clone(),
                url.host.clone(),
                url.port.to_string(),
                url.database.clone(),
                url.user.clone(),
                s.max_size.to_string(),
                up.pool.config().min_size.to_string(),
                "0".into(),
                shared.config.pool.mode.as_str().to_owned(),
                s.max_size.to_string(),
                (s.active + s.idle + s.connecting).to_string(),
                u8::from(s.paused).to_string(),
                "0".into(),
            ]);
        }
        t.finish()
    }
}
