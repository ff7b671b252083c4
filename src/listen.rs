//! The proxy's listeners: binds each address of `PGSIDECAR_LISTEN` (TCP, Unix-domain
//! sockets) and accepts clients from all of them as a [`Stream`] and its [`Peer`].
//!
//! A Unix socket's file is replaced at start when it is stale (nothing accepts on it) and
//! removed when its listener is dropped, with the directory pgsidecar created for it.
//!
//! May import: [`crate::config`] (the addresses), [`crate::stream`] (what it accepts).

use crate::config::Listen;
use crate::stream::{Peer, Stream};
use std::io;
use std::path::{Path, PathBuf};
use std::task::{Context, Poll};
use tokio::net::{TcpListener, UnixListener};

/// The bound listeners, accepted from in turn.
pub struct Listeners {
    list: Vec<Bound>,
    /// Where the next accept starts polling, so that no listener starves the others.
    next: std::sync::atomic::AtomicUsize,
}

enum Bound {
    Tcp(TcpListener),
    Unix { listener: UnixListener, port: u16, file: SocketFile },
}

/// Removes a socket file (and the directory pgsidecar created for it, if empty) on drop.
struct SocketFile {
    path: PathBuf,
    created_dir: Option<PathBuf>,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(dir) = &self.created_dir {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Why an address could not be listened on.
#[derive(Debug, thiserror::Error)]
#[error("{listen}: {error}")]
pub struct BindError {
    pub listen: String,
    pub error: io::Error,
}

impl From<TcpListener> for Listeners {
    fn from(l: TcpListener) -> Listeners {
        Listeners { list: vec![Bound::Tcp(l)], next: Default::default() }
    }
}

impl Listeners {
    /// Binds every address, in order; the first failure is the error (and what was bound is
    /// closed again, its socket files removed).
    pub async fn bind(addrs: &[Listen]) -> Result<Listeners, BindError> {
        let mut list = Vec::with_capacity(addrs.len());
        for a in addrs {
            let bound = match a {
                Listen::Tcp(addr) => TcpListener::bind(addr.as_str()).await.map(Bound::Tcp),
                Listen::Unix { path, port, dir } => bind_unix(path, *port, *dir),
            };
            list.push(bound.map_err(|error| BindError { listen: a.to_string(), error })?);
        }
        Ok(Listeners { list, next: Default::default() })
    }

    /// Adds a Unix-domain socket at `path` (the test harness listens on both transports).
    pub fn add_unix(&mut self, path: &Path, port: u16) -> io::Result<()> {
        self.list.push(bind_unix(path, port, false)?);
        Ok(())
    }

    /// The bound TCP addresses (port 0 resolved), in the order listed.
    pub fn tcp_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.list
            .iter()
            .filter_map(|b| match b {
                Bound::Tcp(l) => l.local_addr().ok(),
                Bound::Unix { .. } => None,
            })
            .collect()
    }

    /// Where clients can connect, for the `listening` log line.
    pub fn describe(&self) -> String {
        let names: Vec<String> = self
            .list
            .iter()
            .map(|b| match b {
                Bound::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                Bound::Unix { file, .. } => format!("unix:{}", file.path.display()),
            })
            .collect();
        names.join(",")
    }

    /// The next client of any listener. A TCP client gets `TCP_NODELAY`.
    pub async fn accept(&self) -> io::Result<(Stream, Peer)> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Stream, Peer)>> {
        let n = self.list.len();
        let start = self.next.load(std::sync::atomic::Ordering::Relaxed);
        for i in 0..n {
            let at = (start + i) % n;
            let polled = match &self.list[at] {
                Bound::Tcp(l) => l.poll_accept(cx).map_ok(|(s, a)| {
                    let _ = s.set_nodelay(true);
                    (Stream::Plain(s), Peer::Tcp(a))
                }),
                Bound::Unix { listener, port, .. } => listener.poll_accept(cx).map(|r| {
                    let (s, _) = r?;
                    Ok((Stream::Unix(crate::stream::UnixConn::new(s)?), Peer::Unix { port: *port }))
                }),
            };
            if polled.is_ready() {
                self.next.store((at + 1) % n, std::sync::atomic::Ordering::Relaxed);
                return polled;
            }
        }
        Poll::Pending
    }
}

/// Binds a Unix socket at `path`: creates its directory (0700) when `dir` says pgsidecar may,
/// replaces a stale socket file, refuses one that something still accepts on.
fn bind_unix(path: &Path, port: u16, dir: bool) -> io::Result<Bound> {
    let mut created_dir = None;
    if let (true, Some(parent)) = (dir, path.parent()) {
        if !parent.exists() {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
            // Exactly 0700 whatever the umask.
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))?;
            created_dir = Some(parent.to_owned());
        }
    }
    remove_stale(path)?;
    let listener = UnixListener::bind(path)?;
    Ok(Bound::Unix { listener, port, file: SocketFile { path: path.to_owned(), created_dir } })
}

/// Removes a socket file that nothing accepts on (left by a process that was killed).
fn remove_stale(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else { return Ok(()) };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, "the path exists and is not a socket"));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(io::ErrorKind::AddrInUse, "another process accepts on this socket")),
        Err(_) => std::fs::remove_file(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn unix_socket_lifecycle() {
        let tmp = std::env::temp_dir().join(format!("pgsidecar-listen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let dir = tmp.join("sock");
        let addrs = crate::config::listen::parse(&format!("{}:7001", dir.display())).unwrap();
        let l = Listeners::bind(&addrs).await.unwrap();
        let file = dir.join(".s.PGSQL.7001");
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(file.exists());
        // A second proxy on the same socket is refused while the first accepts.
        let err = Listeners::bind(&addrs).await.err().expect("in use");
        assert_eq!(err.error.kind(), io::ErrorKind::AddrInUse);
        let _client = std::os::unix::net::UnixStream::connect(&file).unwrap();
        let (_, peer) = l.accept().await.unwrap();
        assert_eq!((peer.to_string(), peer.addr(), peer.port()), ("unix".into(), "unix".into(), 7001));
        drop(l);
        assert!(!file.exists() && !dir.exists(), "socket file and created directory removed");

        // A stale file (its listener gone without removing it) is replaced.
        std::fs::create_dir_all(&dir).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&file).unwrap());
        assert!(file.exists());
        let l = Listeners::bind(&addrs).await.unwrap();
        drop(l);
        assert!(!file.exists() && dir.exists(), "a directory pgsidecar did not create stays");
        // A file that is not a socket is left alone.
        std::fs::write(&file, b"x").unwrap();
        let err = Listeners::bind(&addrs).await.err().expect("not a socket");
        assert!(err.to_string().contains("not a socket"), "{err}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
