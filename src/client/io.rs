//! Non-blocking I/O for a client-server pair: one poll writes what is pending to both sides
//! and reads from both, so neither direction waits on the other and backpressure reaches only
//! the side that is slow.

use bytes::{Buf, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::io::poll_read_buf;

const READ_CHUNK: usize = 16 * 1024;
/// Below this much free room a read first makes room for [`READ_CHUNK`].
const MIN_READ_ROOM: usize = 4 * 1024;

/// Which side an I/O error came from.
#[derive(Debug)]
pub enum IoError {
    Client(io::Error),
    Server(io::Error),
}

/// What one round of I/O did: `Some(0)` is end of stream.
#[derive(Debug, Default, Clone, Copy)]
pub struct IoEvent {
    pub client_read: Option<usize>,
    pub server_read: Option<usize>,
}

/// One half of a relay: a stream, what was read from it, and what waits to be written to it.
pub struct Half<'a, S> {
    pub io: &'a mut S,
    pub rbuf: &'a mut BytesMut,
    pub wbuf: &'a mut BytesMut,
    pub needs_flush: &'a mut bool,
    /// Read more from this side only while this is true.
    pub may_read: bool,
    /// Write nothing to this side for now (what waits is sent with what follows it).
    pub hold: bool,
    /// How much of this side may be buffered: reads never make the buffer larger than this
    /// (or than one read chunk past what it holds), so a message near the size limit costs
    /// its size, not up to twice it as a doubling reservation would.
    pub limit: usize,
}

fn poll_write_half<S: AsyncWrite + Unpin>(
    h: &mut Half<'_, S>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<bool>> {
    if h.hold {
        return Poll::Ready(Ok(false));
    }
    let mut progressed = false;
    while !h.wbuf.is_empty() {
        match Pin::new(&mut *h.io).poll_write(cx, h.wbuf) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => {
                h.wbuf.advance(n);
                *h.needs_flush = true;
                progressed = true;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Ready(Ok(progressed)),
        }
    }
    if *h.needs_flush {
        match Pin::new(&mut *h.io).poll_flush(cx) {
            // A flush left pending by an earlier round (or by `write_now`) that completes is
            // progress too: the caller must look again (a server may now be free to release).
            Poll::Ready(Ok(())) => {
                *h.needs_flush = false;
                progressed = true;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
    }
    Poll::Ready(Ok(progressed))
}

/// Writes what the socket takes of `wbuf` now, without waiting: a response goes out before
/// the proxy's bookkeeping for it (statistics, releasing the server). What is left, and any
/// error, is for the next [`poll_io`], which registers for writability.
pub fn write_now(io: &mut crate::stream::Stream, wbuf: &mut BytesMut, needs_flush: &mut bool) {
    while !wbuf.is_empty() {
        let Some(n) = io.write_now(wbuf) else { break };
        wbuf.advance(n);
        *needs_flush = true;
    }
    if *needs_flush {
        // A plain socket has nothing to flush; TLS may. A flush still pending is finished
        // by the next `poll_io`, which then reports progress.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if let Poll::Ready(Ok(())) = Pin::new(&mut *io).poll_flush(&mut cx) {
            *needs_flush = false;
        }
    }
}

fn poll_read_half<S: AsyncRead + Unpin>(
    h: &mut Half<'_, S>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if !h.may_read {
        return Poll::Pending;
    }
    // Room is made only when little is left: a buffer whose front was just split off (a
    // statement kept for its text) cannot grow in place while that part lives, and growing
    // it at every request would allocate twice per transaction.
    if h.rbuf.capacity() - h.rbuf.len() < MIN_READ_ROOM {
        if h.limit > 4 * READ_CHUNK && h.limit > h.rbuf.len() {
            // A large message is being read whole: room grows with what arrives of it.
            crate::wire::frame::grow_toward(h.rbuf, h.limit, READ_CHUNK);
        } else {
            h.rbuf.reserve(READ_CHUNK);
        }
    }
    // A read takes no more than the limit leaves room for, whatever capacity an earlier large
    // message left: what is buffered stays within the limit (plus one chunk).
    let room = h.limit.saturating_sub(h.rbuf.len()).max(READ_CHUNK);
    poll_read_buf(Pin::new(&mut *h.io), cx, &mut bytes::BufMut::limit(&mut *h.rbuf, room))
}

/// Writes whatever is pending to both sides and reads from both, without blocking one side
/// on the other. Ready as soon as anything moved.
///
/// When the server had data, the client is not polled in that same round, but always in the
/// next (`client_owed` remembers it). No wake-up is lost: a round that skips the client has
/// read server data, so it returns Ready and the caller comes back (or leaves the attachment,
/// and the idle wait polls the client); a round that returns Pending has polled the client
/// (unless the client may not be read at all). Most transactions end with a round that reads
/// the server's answer; this saves the client poll that found nothing there.
pub fn poll_io<C, S>(
    cx: &mut Context<'_>,
    client: &mut Half<'_, C>,
    server: &mut Half<'_, S>,
    client_owed: &mut bool,
) -> Poll<Result<IoEvent, IoError>>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Poll::Ready(wrote_s) = poll_write_half(server, cx).map_err(IoError::Server)? else { unreachable!() };
    let Poll::Ready(wrote_c) = poll_write_half(client, cx).map_err(IoError::Client)? else { unreachable!() };
    let mut ev = IoEvent::default();
    if let Poll::Ready(r) = poll_read_half(server, cx) {
        ev.server_read = Some(r.map_err(IoError::Server)?);
    }
    if ev.server_read.is_some_and(|n| n > 0) && !*client_owed {
        *client_owed = true;
    } else {
        *client_owed = false;
        if let Poll::Ready(r) = poll_read_half(client, cx) {
            ev.client_read = Some(r.map_err(IoError::Client)?);
        }
    }
    if wrote_s || wrote_c || ev.client_read.is_some() || ev.server_read.is_some() {
        Poll::Ready(Ok(ev))
    } else {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A server that always has more to say cannot keep the client from being read: the
    /// client is read at least every other round.
    #[tokio::test]
    async fn a_busy_server_does_not_starve_the_client() {
        let (mut client_io, mut client_peer) = tokio::io::duplex(1 << 20);
        let (mut server_io, mut server_peer) = tokio::io::duplex(1 << 20);
        let (mut crbuf, mut cwbuf, mut srbuf, mut swbuf) =
            (BytesMut::new(), BytesMut::new(), BytesMut::new(), BytesMut::new());
        let (mut cflush, mut sflush) = (false, false);
        let mut owed = false;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut client_reads = Vec::new();
        for _ in 0..4 {
            server_peer.write_all(b"more rows").await.unwrap();
            client_peer.write_all(b"more requests").await.unwrap();
            let mut client = Half {
                io: &mut client_io,
                rbuf: &mut crbuf,
                wbuf: &mut cwbuf,
                needs_flush: &mut cflush,
                may_read: true,
                hold: false,
                limit: 1 << 20,
            };
            let mut server = Half {
                io: &mut server_io,
                rbuf: &mut srbuf,
                wbuf: &mut swbuf,
                needs_flush: &mut sflush,
                may_read: true,
                hold: false,
                limit: 1 << 20,
            };
            let Poll::Ready(Ok(ev)) = poll_io(&mut cx, &mut client, &mut server, &mut owed) else {
                panic!("the server had data");
            };
            assert!(ev.server_read.is_some_and(|n| n > 0));
            client_reads.push(ev.client_read);
        }
        // Skipped in a round the server had data, read in the next whatever the server does.
        assert_eq!(client_reads, [None, Some(26), None, Some(26)]);
        assert_eq!(crbuf.len(), 4 * 13);
    }
}
