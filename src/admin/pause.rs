//! PAUSE [db]: stop handing out servers (new checkouts wait in the queue) and answer once no
//! server of the pool, or of any pool, is out to a client. Clients in session mode or pinned
//! to a server keep theirs until they leave, so PAUSE waits for them; cancel it (Ctrl-C) to
//! stop waiting: the pools stay paused until RESUME.

use super::{done, pools_named, Words};
use crate::proxy::Proxy;
use crate::wire::messages::PgError;
use bytes::BytesMut;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    pub database: Option<String>,
}

impl Pause {
    pub fn parse(words: Words<'_>) -> Result<Pause, PgError> {
        Ok(Pause { database: words.optional_database()? })
    }

    pub async fn execute(&self, proxy: &Proxy) -> Result<BytesMut, PgError> {
        let pools = pools_named(proxy, self.database.as_deref())?;
        // Pause every pool first, then wait: a pool must not keep serving while another drains.
        for up in &pools {
            up.pool.pause();
        }
        for up in &pools {
            up.pool.until_drained().await;
        }
        Ok(done("PAUSE"))
    }
}
