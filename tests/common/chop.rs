//! A TCP relay that cuts every byte stream into random pieces, single bytes included, with
//! small random delays between some of them: the way a real network, a slow client or a TLS
//! record layer hands bytes to a reader. Nothing is changed, lost or reordered; only the
//! boundaries at which a reader finds the bytes.
//!
//! `common::proxy` puts one in front of the proxy and one in front of PostgreSQL when
//! `PGSIDECAR_TEST_CHOP` is set (see [`from_env`]), so that the protocol, prepared-statement,
//! integrity and driver tests run unchanged over chopped streams. With
//! `PGSIDECAR_TEST_TRANSPORT=unix` the relay in front of the proxy forwards to its Unix
//! socket instead ([`Chopper::to_unix`]), chopping or not.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

/// A small, seedable generator (xorshift64*): the same seed cuts the same way.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `lo..=hi`.
    pub fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    /// The length of the next piece: a quarter single bytes, a quarter up to 8, a quarter up
    /// to 512, a quarter up to 16 KiB.
    pub fn piece(&mut self) -> usize {
        match self.next() % 4 {
            0 => 1,
            1 => self.between(2, 8),
            2 => self.between(9, 512),
            _ => self.between(513, 16 * 1024),
        }
    }

    /// The pause after a piece: none for most, up to 2 ms for one in eight.
    pub fn pause(&mut self) -> Option<Duration> {
        (self.next() % 8 == 0).then(|| Duration::from_micros(self.between(50, 2000) as u64))
    }
}

/// The seed `PGSIDECAR_TEST_CHOP` asks for: `None` when unset, empty or `0` (no chopping);
/// `1` picks a seed from the clock (printed, so a failure can be replayed); any other number
/// is the seed.
pub fn from_env() -> Option<u64> {
    let v = std::env::var("PGSIDECAR_TEST_CHOP").ok()?;
    match v.trim() {
        "" | "0" => None,
        "1" => {
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7);
            eprintln!("PGSIDECAR_TEST_CHOP: seed {seed} (replay with PGSIDECAR_TEST_CHOP={seed})");
            Some(seed)
        }
        n => Some(n.parse().expect("PGSIDECAR_TEST_CHOP is 0, 1 or a seed")),
    }
}

pub struct Chopper {
    pub addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Chopper {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Chopper {
    /// Listens on port 0 of `upstream`'s address (so that a certificate check of the host
    /// name sees the same address) and relays every connection to `upstream`, chopped both
    /// ways. Each connection and direction gets its own generator, derived from `seed`.
    pub async fn start(upstream: SocketAddr, seed: u64) -> Chopper {
        let listener = TcpListener::bind((upstream.ip(), 0)).await.expect("bind chopper on port 0");
        let addr = listener.local_addr().expect("chopper address");
        let counter = Arc::new(AtomicU64::new(0));
        let accept = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(upstream).await else { return };
                    let _ = (down.set_nodelay(true), up.set_nodelay(true));
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    let a = Rng::new(seed ^ (n << 1));
                    let b = Rng::new(seed ^ (n << 1 | 1));
                    tokio::join!(pump(dr, uw, Some(a)), pump(ur, dw, Some(b)));
                });
            }
        });
        Chopper { addr, accept }
    }

    /// Listens on 127.0.0.1:0 and relays every connection to the Unix socket at `socket`,
    /// chopped both ways when `seed` is given, as received otherwise.
    pub async fn to_unix(socket: PathBuf, seed: Option<u64>) -> Chopper {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay on port 0");
        let addr = listener.local_addr().expect("relay address");
        let counter = Arc::new(AtomicU64::new(0));
        let accept = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let socket = socket.clone();
                tokio::spawn(async move {
                    let Ok(up) = UnixStream::connect(&socket).await else { return };
                    let _ = down.set_nodelay(true);
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    let a = seed.map(|s| Rng::new(s ^ (n << 1)));
                    let b = seed.map(|s| Rng::new(s ^ (n << 1 | 1)));
                    tokio::join!(pump(dr, uw, a), pump(ur, dw, b));
                });
            }
        });
        Chopper { addr, accept }
    }
}

/// Copies one direction, in random pieces when `rng` is given, until the source ends (then
/// half-closes the destination) or either side fails.
async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, mut rng: Option<Rng>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let Some(rng) = rng.as_mut() else {
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
            continue;
        };
        let mut at = 0;
        while at < n {
            let len = rng.piece().min(n - at);
            if to.write_all(&buf[at..at + len]).await.is_err() {
                return;
            }
            at += len;
            if let Some(pause) = rng.pause() {
                tokio::time::sleep(pause).await;
            }
        }
    }
    let _ = to.shutdown().await;
}

/// Writes `bytes` to a blocking socket in pieces cut by `rng`, pausing as it says.
pub fn write_chopped(w: &mut impl std::io::Write, bytes: &[u8], rng: &mut Rng) -> std::io::Result<()> {
    let mut at = 0;
    while at < bytes.len() {
        let len = rng.piece().min(bytes.len() - at);
        w.write_all(&bytes[at..at + len])?;
        w.flush()?;
        at += len;
        if let Some(pause) = rng.pause() {
            std::thread::sleep(pause);
        }
    }
    Ok(())
}
