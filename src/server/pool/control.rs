//! What the admin console does to a pool: PAUSE and RESUME, RECONNECT, and the list of idle
//! servers for SHOW SERVERS. Each takes the pool's lock briefly and never across an await.

use super::{close_all, Pool};
use crate::observe::stats::CloseReason;
use crate::server::conn::ServerInfo;
use std::sync::Arc;

impl Pool {
    /// Stops handing out servers: checkouts wait in the queue until [`Pool::resume`]. With
    /// [`Pool::disconnect_for_pause`] (PAUSE) servers are also closed, idle ones at once and
    /// the others as they come back.
    pub fn pause(&self) {
        self.lock().paused = true;
    }

    /// PAUSE as PgBouncer does it, on a paused pool: closes the idle servers now; servers
    /// given back while paused are closed as they come back, and none is opened until RESUME.
    /// [`Pool::until_disconnected`] tells when no server connection is left.
    pub fn disconnect_for_pause(self: &Arc<Self>) {
        let doomed = {
            let mut s = self.lock();
            if !s.paused {
                return;
            }
            let doomed = std::mem::take(&mut s.idle);
            s.note_closed(CloseReason::Pause, doomed.len());
            s.closing += doomed.len();
            doomed
        };
        self.close_counted(doomed);
    }

    /// Resolves once the pool holds no server connection: none out on a lease, idle, being
    /// opened or being closed (after [`Pool::disconnect_for_pause`]); or once it is resumed.
    pub async fn until_disconnected(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let s = self.lock();
                if !s.paused || (s.total() == 0 && s.closing == 0) {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Hands servers out again: queued clients get idle servers, then new ones, oldest first.
    pub fn resume(self: &Arc<Self>) {
        let mut doomed = Vec::new();
        {
            let mut s = self.lock();
            s.paused = false;
            // A PAUSE still waiting for the last connection to close is over.
            self.drained.notify_waiters();
            while !s.waiters.is_empty() {
                let Some(conn) = self.take_idle(&mut s, &mut doomed, quanta::Instant::now()) else {
                    break;
                };
                s.active += 1;
                if let Some(conn) = Self::hand_over(&mut s, conn) {
                    s.active -= 1;
                    s.idle.push(conn);
                }
            }
            self.spawn_connects(&mut s);
        }
        close_all(doomed);
    }

    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Closes every server once it is idle: the idle ones now, leased ones when they come
    /// back. Waiting clients get new servers.
    pub fn reconnect(self: &Arc<Self>) {
        let doomed = {
            let mut s = self.lock();
            s.generation += 1;
            let n = s.idle.len();
            s.note_closed(CloseReason::Reconnect, n);
            let doomed = std::mem::take(&mut s.idle);
            self.spawn_connects(&mut s);
            doomed
        };
        close_all(doomed);
    }

    /// The idle servers right now (SHOW SERVERS).
    pub fn idle_servers(&self) -> Vec<ServerInfo> {
        self.lock().idle.iter().map(|c| c.info()).collect()
    }
}
