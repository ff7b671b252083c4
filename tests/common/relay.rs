//! A TCP relay in front of the test PostgreSQL that can black-hole traffic, the way a network
//! partition or a vanished host looks to the proxy: connections stay open, bytes sent are
//! taken, nothing comes back, and no FIN or RST ever arrives.
//!
//! [`Relay::hole_all`] black-holes the connections that are open and the ones that will be
//! accepted (the TCP handshake still completes, as the kernel does it); [`Relay::hole_existing`]
//! only the open ones. [`Relay::heal`] forwards new connections again and closes the
//! black-holed ones, whose streams lost bytes and cannot be resumed. Dropping the relay closes
//! everything.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// One relayed connection's switches.
#[derive(Default)]
struct Link {
    holed: AtomicBool,
    closing: AtomicBool,
    changed: Notify,
}

impl Link {
    fn poke(&self) {
        self.changed.notify_one();
    }
}

#[derive(Default)]
struct Shared {
    /// New connections are black-holed.
    hole_new: AtomicBool,
    links: Mutex<Vec<Arc<Link>>>,
    accepted: AtomicUsize,
    /// Connections the upstream side closed first (counted before the relay closes the other
    /// side, so a client that sees the close can rely on the count).
    upstream_closed: AtomicUsize,
}

pub struct Relay {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Listens on 127.0.0.1:0 and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay on 127.0.0.1:0");
        let addr = listener.local_addr().expect("relay address");
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                s.accepted.fetch_add(1, Ordering::Relaxed);
                let link = Arc::new(Link::default());
                link.holed.store(s.hole_new.load(Ordering::SeqCst), Ordering::SeqCst);
                {
                    let mut links = s.links.lock().unwrap();
                    links.retain(|l| Arc::strong_count(l) > 1);
                    links.push(link.clone());
                }
                tokio::spawn(run_link(down, upstream, link, s.clone()));
            }
        });
        Relay { addr, shared, accept }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Connections that PostgreSQL closed (the relay then closed the proxy's side).
    pub fn upstream_closed(&self) -> usize {
        self.shared.upstream_closed.load(Ordering::SeqCst)
    }

    /// Black-holes every open connection and every new one.
    pub fn hole_all(&self) {
        self.shared.hole_new.store(true, Ordering::SeqCst);
        self.hole_existing();
    }

    /// Black-holes the connections open now; new ones are forwarded.
    pub fn hole_existing(&self) {
        for link in self.shared.links.lock().unwrap().iter() {
            link.holed.store(true, Ordering::SeqCst);
            link.poke();
        }
    }

    /// Forwards new connections again and closes the black-holed ones.
    pub fn heal(&self) {
        self.shared.hole_new.store(false, Ordering::SeqCst);
        for link in self.shared.links.lock().unwrap().iter() {
            if link.holed.load(Ordering::SeqCst) {
                link.closing.store(true, Ordering::SeqCst);
                link.poke();
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        for link in self.shared.links.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            link.closing.store(true, Ordering::SeqCst);
            link.poke();
        }
    }
}

/// Relays one connection until either side closes (while forwarding) or the link is closed.
/// While black-holed, both sides are read and the bytes dropped; a side that closes then is
/// simply no longer read, and the other side is not told.
async fn run_link(mut down: TcpStream, upstream: SocketAddr, link: Arc<Link>, shared: Arc<Shared>) {
    let mut up = if link.holed.load(Ordering::SeqCst) {
        None
    } else {
        match TcpStream::connect(upstream).await {
            Ok(s) => Some(s),
            Err(_) => return,
        }
    };
    let _ = down.set_nodelay(true);
    if let Some(u) = &up {
        let _ = u.set_nodelay(true);
    }
    let (mut down_open, mut up_open) = (true, up.is_some());
    let mut dbuf = vec![0u8; 16 * 1024];
    let mut ubuf = vec![0u8; 16 * 1024];
    loop {
        if link.closing.load(Ordering::SeqCst) {
            return;
        }
        let holed = link.holed.load(Ordering::SeqCst);
        let changed = link.changed.notified();
        tokio::select! {
            _ = changed => {}
            r = down.read(&mut dbuf), if down_open => match r {
                Ok(0) | Err(_) if holed => down_open = false,
                Ok(0) | Err(_) => return,
                Ok(_) if holed => {}
                Ok(n) => {
                    let Some(u) = up.as_mut() else { return };
                    if u.write_all(&dbuf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            r = async { up.as_mut().expect("read only while open").read(&mut ubuf).await }, if up_open => match r {
                Ok(0) | Err(_) if holed => up_open = false,
                Ok(0) | Err(_) => {
                    shared.upstream_closed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Ok(_) if holed => {}
                Ok(n) => {
                    if down.write_all(&ubuf[..n]).await.is_err() {
                        return;
                    }
                }
            },
        }
    }
}
