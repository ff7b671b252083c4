//! SHOW FDS: PgBouncer lists the sockets it would hand to a new process for an online
//! restart. pgsidecar has no online restart (a dyno restarts as a whole), so the answer is
//! PgBouncer's columns and no row: tools that read it see an empty list, not an error.

use super::{Table, Words};
use crate::wire::messages::{PgError, INT4_OID, INT8_OID, TEXT_OID};
use bytes::BytesMut;

pub const COLUMNS: [&str; 15] = [
    "fd",
    "task",
    "user",
    "database",
    "addr",
    "port",
    "cancel",
    "link",
    "client_encoding",
    "std_strings",
    "datestyle",
    "timezone",
    "password",
    "scram_client_key",
    "scram_server_key",
];

/// PgBouncer's type for each column.
pub const TYPES: [i32; 15] = [
    INT4_OID, TEXT_OID, TEXT_OID, TEXT_OID, TEXT_OID, INT4_OID, INT8_OID, INT4_OID, TEXT_OID, TEXT_OID,
    TEXT_OID, TEXT_OID, TEXT_OID, TEXT_OID, TEXT_OID,
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShowFds;

impl ShowFds {
    pub fn parse(words: Words<'_>) -> Result<ShowFds, PgError> {
        words.finish()?;
        Ok(ShowFds)
    }

    pub fn execute(&self) -> BytesMut {
        Table::typed(&COLUMNS, &TYPES).finish()
    }
}
