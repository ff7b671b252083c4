//! A connection: TCP that may have been upgraded to TLS in either direction, or a client's
//! Unix-domain socket (never TLS, as in PostgreSQL); and [`Peer`], who is at its other end.
//!
//! One enum rather than a stream generic over its transport: the hot path's methods below
//! already branch between plain and TLS, and a Unix arm is one more case of the same match
//! (the same jump on the discriminant), whereas a generic would compile the session, relay
//! and console twice and spread a type parameter through every type that holds a stream.
//!
//! May import nothing else of the crate.

mod unix;

pub use unix::UnixConn;

use bytes::BytesMut;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Who is at the other end of a client connection. Shown as PgBouncer shows it: a TCP
/// client by its address and port; a Unix-socket client as address `unix`, with the port of
/// the socket it came in on (the `PORT` of `.s.PGSQL.PORT`, 0 for a socket not named so).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Tcp(SocketAddr),
    Unix { port: u16 },
}

// Kept as small as the address it replaced: every client's cancel slot holds one.
const _: () = assert!(std::mem::size_of::<Peer>() == std::mem::size_of::<SocketAddr>());

impl Peer {
    /// The address column of `SHOW CLIENTS`: the IP address, or `unix`.
    pub fn addr(&self) -> String {
        match self {
            Peer::Tcp(a) => a.ip().to_string(),
            Peer::Unix { .. } => "unix".to_owned(),
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            Peer::Tcp(a) => a.port(),
            Peer::Unix { port } => *port,
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(a) => a.fmt(f),
            Peer::Unix { .. } => f.write_str("unix"),
        }
    }
}

impl From<SocketAddr> for Peer {
    fn from(a: SocketAddr) -> Peer {
        Peer::Tcp(a)
    }
}

// A socket client's stream is no larger than a TCP client's: every idle client holds one.
const _: () = assert!(std::mem::size_of::<UnixConn>() <= std::mem::size_of::<TcpStream>());

pub enum Stream {
    Plain(TcpStream),
    /// A client on a Unix-domain socket.
    Unix(UnixConn),
    /// TLS towards a client (the proxy is the TLS server).
    Accepted(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS towards a Postgres server (the proxy is the TLS client).
    Connected(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_) | Stream::Unix(_))
    }

    /// Waits until a read may find data, without holding a buffer meanwhile. A TLS stream may
    /// have decrypted data waiting already, so it is ready at once.
    ///
    /// Polls the socket's own read readiness (the waker slot `poll_read` uses) rather than
    /// awaiting `TcpStream::readable`, whose future carries a waiter node of ~170 B: this is
    /// where every idle client waits, so that node would be in every idle client's task.
    /// Only the session's task reads from its client, so the single waker slot suffices.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => std::future::poll_fn(|cx| s.poll_read_ready(cx)).await,
            Stream::Unix(s) => std::future::poll_fn(|cx| s.poll_read_ready(cx)).await,
            _ => Ok(()),
        }
    }

    /// Writes what the socket takes of `buf` now, without waiting and without registering
    /// for writability; `None` when it takes nothing now or fails (the caller's next poll
    /// sees the error, or registers). A plain socket is written directly (`try_write`: no
    /// task context or cooperative budget, which every request and answer would pay).
    pub fn write_now(&mut self, buf: &[u8]) -> Option<usize> {
        match self {
            Stream::Plain(s) => s.try_write(buf).ok().filter(|&n| n > 0),
            Stream::Unix(s) => s.try_write(buf).ok().filter(|&n| n > 0),
            _ => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                match Pin::new(self).poll_write(&mut cx, buf) {
                    Poll::Ready(Ok(n)) if n > 0 => Some(n),
                    _ => None,
                }
            }
        }
    }

    /// Whether the peer has sent anything (or closed) that nobody read, without waiting: what
    /// there is goes into `buf`. A plain socket is read only when tokio has seen it become
    /// readable (`try_read_buf`: no system call otherwise, and no wake-up registration to
    /// undo); a TLS stream is polled with a no-op waker. (Once the runtime shuts down, a
    /// plain socket reads as quiet here; its next use fails.)
    pub fn has_input_now(&mut self, buf: &mut BytesMut) -> bool {
        match self {
            Stream::Plain(s) => match s.try_read_buf(buf) {
                Err(e) => e.kind() != io::ErrorKind::WouldBlock,
                Ok(_) => true, // data, or end of stream
            },
            Stream::Unix(s) => match s.try_read_buf(buf) {
                Err(e) => e.kind() != io::ErrorKind::WouldBlock,
                Ok(_) => true,
            },
            _ => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                tokio_util::io::poll_read_buf(Pin::new(self), &mut cx, buf).is_ready()
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => s.poll_read(cx, buf),
            Stream::Accepted(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Connected(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => s.poll_write(cx, buf),
            Stream::Accepted(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Connected(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(_) => Poll::Ready(Ok(())),
            Stream::Accepted(s) => Pin::new(s).poll_flush(cx),
            Stream::Connected(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Poll::Ready(s.shutdown()),
            Stream::Accepted(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Connected(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
