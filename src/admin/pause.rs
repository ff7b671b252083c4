//! PAUSE [db]: what PgBouncer's PAUSE does, for a database restart. Stop handing out servers
//! (new checkouts wait in the queue), close the idle servers, close every server as its client
//! gives it back, and answer once the pool, or every pool, holds no server connection. Clients
//! in session mode or pinned to a server keep theirs until they leave, so PAUSE waits for
//! them; cancel it (Ctrl-C) to stop waiting: the pools stay paused (and go on closing servers
//! as they come back) until RESUME, which opens new connections as clients need them.

use super::{done, pools_named, Words};
use crate::shared::Shared;
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

    pub async fn execute(&self, shared: &Shared) -> Result<BytesMut, PgError> {
        let pools = pools_named(shared, self.database.as_deref())?;
        // Pause every pool first, then wait: a pool must not keep serving while another drains.
        for up in &pools {
            up.pool.pause();
            up.pool.disconnect_for_pause();
        }
        for up in &pools {
            up.pool.until_disconnected().await;
        }
        Ok(done("PAUSE"))
    }
}
