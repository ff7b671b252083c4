//! A client's Unix-domain socket, registered with the runtime for readability only.
//!
//! tokio registers every socket for reading and writing at once, edge-triggered. On a Unix
//! socket the kernel signals write space each time the peer reads what was sent to it (TCP
//! does only after its send buffer was full), so each answer the application read woke the
//! proxy with nothing to do: 0.2-0.3 extra `epoll_wait` per transaction at one client,
//! where a transaction takes two. Here the socket is registered for reading only; a write
//! that finds the socket's buffer full registers a duplicate of the descriptor for
//! writability, which is dropped once a write through it went out.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::task::{ready, Context, Poll};
use tokio::io::unix::AsyncFd;
use tokio::io::{Interest, ReadBuf};

/// Most bytes one read takes.
const READ_MAX: usize = 64 * 1024;

thread_local! {
    /// Where reads land first: safe code can only read into initialised memory, and zeroing
    /// the caller's buffer before each read cost more than the read (64 KiB a time); this
    /// one is zeroed once per thread, and only what arrived is copied on.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Reads from `sock` into the thread's scratch buffer, at most `max` bytes, and hands what
/// arrived to `put`.
fn read_via_scratch(mut sock: &UnixStream, max: usize, put: impl FnOnce(&[u8])) -> io::Result<usize> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        if scratch.is_empty() {
            scratch.resize(READ_MAX, 0);
        }
        let n = sock.read(&mut scratch[..max.min(READ_MAX)])?;
        put(&scratch[..n]);
        Ok(n)
    })
}

pub struct UnixConn {
    sock: AsyncFd<UnixStream>,
    /// The socket's duplicate, registered for writability while a write waits for room
    /// (boxed: rare, and every idle client's stream would carry it).
    room: Option<Box<AsyncFd<OwnedFd>>>,
}

/// Registers `fd` with the runtime for `interest` alone. `AsyncFd::with_interest` is
/// deprecated because a `T` could hand out a descriptor it does not own; both types used
/// here own theirs, and it stays open for as long as the `AsyncFd` holds it.
#[allow(deprecated)]
fn register<T: std::os::fd::AsRawFd>(fd: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    AsyncFd::with_interest(fd, interest)
}

impl UnixConn {
    /// Takes over an accepted socket (moving it from tokio's registration to this one).
    pub fn new(accepted: tokio::net::UnixStream) -> io::Result<UnixConn> {
        let sock = accepted.into_std()?; // non-blocking, as tokio left it
        Ok(UnixConn { sock: register(sock, Interest::READABLE)?, room: None })
    }

    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.sock.poll_read_ready(cx).map_ok(|_| ())
    }

    pub fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut ready = ready!(self.sock.poll_read_ready(cx))?;
            let want = buf.remaining().min(READ_MAX);
            match ready.try_io(|s| read_via_scratch(s.get_ref(), want, |got| buf.put_slice(got))) {
                Ok(Ok(n)) => {
                    // A short read emptied the socket: the next read waits for the next
                    // edge rather than paying a system call to learn that (as tokio does).
                    if n > 0 && n < want {
                        ready.clear_ready();
                    }
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads what is there into `buf` if the runtime has seen the socket readable; the
    /// runtime's `WouldBlock` otherwise (no system call).
    pub fn try_read_buf(&self, buf: &mut bytes::BytesMut) -> io::Result<usize> {
        self.sock
            .try_io(Interest::READABLE, |s| read_via_scratch(s, READ_MAX, |got| buf.extend_from_slice(got)))
    }

    /// Writes what the socket takes now, without registering for writability. (A peer that
    /// closed gives EPIPE: Rust programs ignore SIGPIPE.)
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        self.sock.get_ref().write(buf)
    }

    pub fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            if let Some(room) = &self.room {
                let mut ready = ready!(room.poll_write_ready(cx))?;
                match ready.try_io(|_| self.sock.get_ref().write(buf)) {
                    Ok(r) => {
                        self.room = None;
                        return Poll::Ready(r);
                    }
                    Err(_would_block) => continue,
                }
            }
            match self.sock.get_ref().write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let dup = self.sock.get_ref().as_fd().try_clone_to_owned()?;
                    self.room = Some(Box::new(register(dup, Interest::WRITABLE)?));
                }
                r => return Poll::Ready(r),
            }
        }
    }

    pub fn shutdown(&self) -> io::Result<()> {
        match self.sock.get_ref().shutdown(std::net::Shutdown::Write) {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            r => r,
        }
    }
}
