//! RESUME [db]: hand servers out again; clients queued while paused get them in the order
//! they arrived, on new connections (PAUSE closed the old ones), opened as for any waiting
//! client. Resuming a pool that is not paused does nothing.

use super::{done, pools_named, Words};
use crate::shared::Shared;
use crate::wire::messages::PgError;
use bytes::BytesMut;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub database: Option<String>,
}

impl Resume {
    pub fn parse(words: Words<'_>) -> Result<Resume, PgError> {
        Ok(Resume { database: words.optional_database()? })
    }

    pub fn execute(&self, shared: &Shared) -> Result<BytesMut, PgError> {
        for up in pools_named(shared, self.database.as_deref())? {
            up.pool.resume();
        }
        Ok(done("RESUME"))
    }
}
