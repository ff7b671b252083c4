//! RELOAD: size the pools again from the databases' connection limits (PGSIDECAR_POOL_SIZE
//! auto), as at start. With the shared budget on, a pool keeps its claim and a budget round
//! runs at once instead, which reads the limit itself: the static share would overrun the
//! peers' claims until the next round, and a probe connection would count as an other in the
//! round it wakes. Settings are read once at start: changing any other needs a restart, which
//! the answer's NOTICE says.

use super::Words;
use crate::shared::Shared;
use crate::wire::messages::{self, PgError};
use bytes::BytesMut;
use std::sync::atomic::Ordering;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reload;

impl Reload {
    pub fn parse(words: Words<'_>) -> Result<Reload, PgError> {
        words.finish()?;
        Ok(Reload)
    }

    pub async fn execute(&self, shared: &Shared) -> BytesMut {
        shared.size_pools().await;
        let mut buf = BytesMut::new();
        let budget = shared.upstreams().iter().any(|u| u.budget.running.load(Ordering::Acquire));
        let what = if budget {
            "pool sizes follow the shared connection budget: a budget round was started"
        } else if shared.config.pool.sizing.auto {
            "pool sizes were computed again from the databases' connection limits"
        } else {
            "nothing to reload: PGSIDECAR_POOL_SIZE is fixed"
        };
        messages::notice(
            &mut buf,
            what,
            Some("other settings are read at start: restart pgsidecar to change them"),
        );
        messages::command_complete(&mut buf, "RELOAD");
        buf
    }
}
