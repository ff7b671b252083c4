//! SHOW VERSION: one row, one column `version`.

use super::{Table, Words};
use crate::wire::messages::PgError;
use bytes::BytesMut;

/// What SHOW VERSION answers and the console reports in `server_version`.
pub const VERSION: &str = concat!("pgsidecar ", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShowVersion;

impl ShowVersion {
    pub fn parse(words: Words<'_>) -> Result<ShowVersion, PgError> {
        words.finish()?;
        Ok(ShowVersion)
    }

    pub fn execute(&self) -> BytesMut {
        let mut t = Table::new(&["version"]);
        t.row(&[VERSION]);
        t.finish()
    }
}
