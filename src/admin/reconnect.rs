//! RECONNECT [db]: close every server connection of the pool (or of all pools) once it is
//! idle: idle ones now, the ones clients hold when they come back. New ones are opened as
//! clients need them (after a failover or a credential rotation, say).

use super::{done, pools_named, Words};
use crate::shared::Shared;
use crate::wire::messages::PgError;
use bytes::BytesMut;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconnect {
    pub database: Option<String>,
}

impl Reconnect {
    pub fn parse(words: Words<'_>) -> Result<Reconnect, PgError> {
        Ok(Reconnect { database: words.optional_database()? })
    }

    pub fn execute(&self, shared: &Shared) -> Result<BytesMut, PgError> {
        for up in pools_named(shared, self.database.as_deref())? {
            up.pool.reconnect();
        }
        Ok(done("RECONNECT"))
    }
}
