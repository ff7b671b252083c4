//! Cancel requests. Each client gets a key from the proxy; the registry maps it to what the
//! client is doing now. A cancel for a client that is running a query is sent to its server
//! on a new connection with that server's key; a cancel for a client waiting in the queue
//! takes it out of the queue (it then gets 57014).
//!
//! The registry is also the list of logged-in clients: each slot carries who the client is
//! (from [`ClientInfo`]) for SHOW CLIENTS, and the server it holds for SHOW SERVERS.
//!
//! May import: [`crate::server`] (a server's address and key), [`crate::stream`] (a client's
//! peer). Sessions, the console and the budget read it; it reads none of them.

use crate::server::conn::{ServerInfo, Target};
use bytes::BytesMut;
use quanta::Instant;
use rand::Rng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

/// What a client is doing: for cancelling, and for SHOW CLIENTS / SHOW SERVERS.
#[derive(Clone)]
pub enum Activity {
    Idle,
    /// Waiting in a pool's queue since `since`; `notify_waiters` wakes the wait to give up.
    Waiting {
        since: Instant,
    },
    Active {
        target: Arc<Target>,
        server: ServerInfo,
        secret: i32,
    },
}

/// Who a client is, fixed at login. Never a password or query text. Kept in the client's
/// [`CancelSlot`].
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub user: String,
    /// The database name the client asked for.
    pub database: String,
    pub peer: crate::stream::Peer,
    pub connected_at: SystemTime,
    pub tls: bool,
}

/// Per-client state, shared between the session and the registry: who the client is (fixed
/// at login) and what it is doing. One allocation per client for both: every idle client
/// keeps one, so the strings are boxed slices (no spare capacity) and small fields packed.
pub struct CancelSlot {
    pub user: Box<str>,
    /// The database name the client asked for.
    pub database: Box<str>,
    pub peer: crate::stream::Peer,
    pub connected_at: SystemTime,
    pub tls: bool,
    activity: Mutex<Activity>,
    pub wake: Notify,
    application_name: Mutex<Box<str>>,
    pinned: AtomicBool,
    /// Cancel requests forwarded to this client's server and not yet done with (PostgreSQL
    /// has not closed the cancel connection): the server must not serve anyone else until
    /// then, or the cancel may hit the next client's statement. 32 bits, packed with the
    /// flags: the slot is then 248 B with Arc's counts, which malloc serves from a 256 B
    /// chunk instead of a 272 B one.
    in_flight: std::sync::atomic::AtomicU32,
    settled: Notify,
}

impl CancelSlot {
    pub fn new(info: ClientInfo, application_name: &str) -> Arc<CancelSlot> {
        let ClientInfo { user, database, peer, connected_at, tls } = info;
        Arc::new(CancelSlot {
            user: user.into_boxed_str(),
            database: database.into_boxed_str(),
            peer,
            connected_at,
            tls,
            activity: Mutex::new(Activity::Idle),
            wake: Notify::new(),
            application_name: Mutex::new(application_name.into()),
            pinned: AtomicBool::new(false),
            in_flight: Default::default(),
            settled: Notify::new(),
        })
    }

    pub fn set(&self, activity: Activity) {
        *self.activity.lock().unwrap_or_else(|p| p.into_inner()) = activity;
    }

    pub fn activity(&self) -> Activity {
        self.activity.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_application_name(&self, name: &str) {
        *self.application_name.lock().unwrap_or_else(|p| p.into_inner()) = name.into();
    }

    pub fn set_pinned(&self, pinned: bool) {
        self.pinned.store(pinned, Ordering::Relaxed);
    }

    /// Waits until every cancel request forwarded for this client has been processed by
    /// PostgreSQL. Call after setting the activity to anything but `Active`, before the
    /// server goes back to the pool.
    pub async fn cancels_settled(&self) {
        // Nearly always none: checked before setting up a wait (once per transaction).
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            return;
        }
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One registered client at one moment (SHOW CLIENTS).
pub struct ClientSnapshot {
    /// The key's process id, as the client was told in BackendKeyData.
    pub pid: i32,
    /// Who the client is (its `user`, `peer`, ...).
    pub info: Arc<CancelSlot>,
    pub activity: Activity,
    pub application_name: String,
    pub pinned: bool,
}

struct Entry {
    secret: i32,
    slot: Arc<CancelSlot>,
}

#[derive(Default)]
pub struct Registry {
    entries: Mutex<HashMap<i32, Entry>>,
}

/// Removes the client's key when the session ends.
pub struct Registration {
    registry: Arc<Registry>,
    pub pid: i32,
    pub secret: i32,
    pub slot: Arc<CancelSlot>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self.registry.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&self.pid).is_some_and(|e| Arc::ptr_eq(&e.slot, &self.slot)) {
            map.remove(&self.pid);
        }
    }
}

impl Registry {
    /// Issues a key for `slot`. `pid` is the server's real process id in session mode when
    /// no other client holds it (two upstreams may have backends with the same pid), and
    /// random otherwise. A slot has one registration at a time: drop the previous one before
    /// registering a slot again.
    pub fn register(self: &Arc<Self>, fixed_pid: Option<i32>, slot: Arc<CancelSlot>) -> Registration {
        let mut rng = rand::rng();
        let secret: i32 = rng.random();
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let pid = match fixed_pid {
            Some(pid) if !map.contains_key(&pid) => pid,
            _ => loop {
                let pid = rng.random_range(1..i32::MAX);
                if !map.contains_key(&pid) {
                    break pid;
                }
            },
        };
        map.insert(pid, Entry { secret, slot: slot.clone() });
        Registration { registry: self.clone(), pid, secret, slot }
    }

    /// Every registered client, oldest connection first.
    pub fn snapshot(&self) -> Vec<ClientSnapshot> {
        let slots: Vec<(i32, Arc<CancelSlot>)> = {
            let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            map.iter().map(|(pid, e)| (*pid, e.slot.clone())).collect()
        };
        let mut out: Vec<ClientSnapshot> = slots
            .into_iter()
            .map(|(pid, slot)| {
                let application_name =
                    slot.application_name.lock().unwrap_or_else(|p| p.into_inner()).to_string();
                ClientSnapshot {
                    pid,
                    activity: slot.activity(),
                    application_name,
                    pinned: slot.pinned.load(Ordering::Relaxed),
                    info: slot,
                }
            })
            .collect();
        out.sort_by_key(|c| (c.info.connected_at, c.pid));
        out
    }

    /// Handles a CancelRequest. The request forwarded to a server runs in a task of its own,
    /// detached from the requesting socket (libpq closes it right after sending); the handle
    /// tells when PostgreSQL has closed the forwarded connection, which it does once it has
    /// signalled the backend. The requesting socket is answered (closed) only then, as
    /// PostgreSQL answers it: clients such as asyncpg take the close to mean that the cancel
    /// can no longer hit their next statement. `None` when nothing was forwarded.
    pub fn cancel(&self, pid: i32, secret: i32) -> Option<Forwarded> {
        let activity = {
            let map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&pid) {
                Some(e) if bool::from(e.secret.to_be_bytes().ct_eq(&secret.to_be_bytes())) => {
                    let guard = e.slot.activity.lock().unwrap_or_else(|p| p.into_inner());
                    let a = guard.clone();
                    match a {
                        Activity::Waiting { .. } => e.slot.wake.notify_waiters(),
                        // Counted under the activity lock: a session that sets its activity
                        // to Idle and then waits for cancels to settle sees this one.
                        Activity::Active { .. } => {
                            e.slot.in_flight.fetch_add(1, Ordering::SeqCst);
                        }
                        Activity::Idle => {}
                    }
                    drop(guard);
                    (a, e.slot.clone())
                }
                _ => {
                    tracing::debug!("cancel_unknown_key");
                    return None;
                }
            }
        };
        let (activity, slot) = activity;
        let Activity::Active { target, server, secret } = activity else {
            return None;
        };
        let forwarded_to = target.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = send_cancel(&target, server.pid, secret).await {
                tracing::warn!(error = %e, "cancel_forward_failed");
            }
            slot.in_flight.fetch_sub(1, Ordering::SeqCst);
            slot.settled.notify_waiters();
        });
        Some(Forwarded { target: forwarded_to, task })
    }
}

/// A cancel request on its way to a server.
pub struct Forwarded {
    /// The server's database (whose pool counts the cancel).
    pub target: Arc<Target>,
    /// Ends once PostgreSQL has taken the request, or the forward gave up.
    pub task: tokio::task::JoinHandle<()>,
}

async fn send_cancel(target: &Target, pid: i32, secret: i32) -> Result<(), crate::server::ServerError> {
    let fut = async {
        let mut stream = target.open().await?;
        let mut buf = BytesMut::new();
        postgres_protocol::message::frontend::cancel_request(pid, secret, &mut buf);
        stream.write_all(&buf).await.map_err(crate::server::ServerError::io)?;
        stream.flush().await.map_err(crate::server::ServerError::io)?;
        // Postgres closes the connection once it has read the request.
        let mut sink = [0u8; 16];
        let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await;
        Ok(())
    };
    tokio::time::timeout(target.connect_timeout, fut)
        .await
        .unwrap_or_else(|_| Err(crate::server::ServerError::Timeout("cancel request timed out".into())))
}

#[cfg(test)]
mod tests {
    /// Every logged-in client keeps one slot: with Arc's two counts and malloc's 8 B header
    /// it must fit a 256 B chunk.
    #[test]
    fn a_slot_fits_a_256_byte_chunk() {
        assert!(std::mem::size_of::<super::CancelSlot>() + 16 <= 248);
    }

    /// Two session-mode clients whose servers (on two upstreams) share a process id: each
    /// keeps a key of its own, and the first stays registered when the second leaves.
    #[test]
    fn a_server_pid_taken_by_another_client_gets_a_key_of_its_own() {
        use super::{Activity, CancelSlot, ClientInfo, Registry};
        let slot = || {
            let info = ClientInfo {
                user: "app".into(),
                database: "appdb".into(),
                peer: crate::stream::Peer::Tcp("127.0.0.1:40000".parse().unwrap()),
                connected_at: std::time::SystemTime::now(),
                tls: false,
            };
            CancelSlot::new(info, "web.1")
        };
        let registry = std::sync::Arc::new(Registry::default());
        let a = registry.register(Some(4242), slot());
        let b = registry.register(Some(4242), slot());
        assert_eq!(a.pid, 4242);
        assert_ne!(b.pid, 4242, "the pid is taken: a random one instead");
        drop(b);
        let left = registry.snapshot();
        assert_eq!(left.len(), 1);
        assert!(left[0].pid == 4242 && std::sync::Arc::ptr_eq(&left[0].info, &a.slot));
        // A's key still reaches A: a cancel while it waits wakes it.
        a.slot.set(Activity::Waiting { since: quanta::Instant::now() });
        let woken = a.slot.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        assert!(registry.cancel(4242, a.secret).is_none(), "nothing forwarded for a waiting client");
        assert!(futures_poll_ready(woken.as_mut()), "A's cancel reached A");
    }

    fn futures_poll_ready<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> bool {
        let waker = std::task::Waker::noop();
        f.poll(&mut std::task::Context::from_waker(waker)).is_ready()
    }
}
