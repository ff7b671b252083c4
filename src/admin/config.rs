//! SHOW CONFIG: every setting with the value in use, its default, and whether it can change
//! without a restart (none can: RELOAD only re-sizes pools). Upstream URLs are shown
//! redacted, under the name of their variable.

use super::{Table, Words};
use crate::config::settings::SETTINGS;
use crate::shared::Shared;
use crate::wire::messages::PgError;
use bytes::BytesMut;

pub const COLUMNS: [&str; 4] = ["key", "value", "default", "changeable"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShowConfig;

impl ShowConfig {
    pub fn parse(words: Words<'_>) -> Result<ShowConfig, PgError> {
        words.finish()?;
        Ok(ShowConfig)
    }

    pub fn execute(&self, shared: &Shared) -> BytesMut {
        let config = &shared.config;
        let mut t = Table::new(&COLUMNS);
        for s in SETTINGS {
            let value = config.raw.values.get(s.flag).map_or("", |r| r.value.as_str());
            t.row(&[s.flag.replace('-', "_").as_str(), value, s.default, "no"]);
        }
        for up in &config.upstreams {
            t.row(&[up.var.as_str(), &up.url.redacted(), "", "no"]);
        }
        t.finish()
    }
}
