//! Moving messages between a client and its server while a server is attached.
//!
//! Bytes are forwarded as received. Only message headers are read, except for the few
//! server messages the proxy must understand (ReadyForQuery, ParameterStatus,
//! CommandComplete, ErrorResponse), which are small and bounded. Large messages (a huge
//! DataRow, CopyData) stream through in pieces, so memory per connection stays bounded by
//! the high-water marks below whatever the result size.

use crate::wire::frame::{FrameError, Header, HEADER_LEN};
use crate::wire::messages::{parse_command_tag, parse_parameter_status, parse_ready_for_query, ErrorFields};
use crate::wire::tag;
use bytes::{Buf, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::io::poll_read_buf;

/// Stop moving bytes towards a side once this much is waiting to be written to it.
pub const WRITE_HIGH: usize = 64 * 1024;
/// Stop reading from a side once this much of it is buffered (unless a whole message the
/// proxy must read is larger).
pub const READ_HIGH: usize = 64 * 1024;
const READ_CHUNK: usize = 16 * 1024;
/// Largest message streamed through: anything the length field can express.
pub const MAX_STREAMED: usize = i32::MAX as usize;

/// Settings the server reports that follow the client (re-applied on another server).
pub const TRACKED_REPORTED: &[&str] = &[
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "standard_conforming_strings",
    "application_name",
    "search_path",
];

/// Protocol state of one client-server attachment.
#[derive(Debug, Default)]
pub struct Relay {
    c2s_remaining: usize,
    s2c_remaining: usize,
    /// Bytes the next server message needs buffered before it can be read whole.
    s2c_need: usize,
    /// ReadyForQuery messages the server still owes.
    pub outstanding: u32,
    /// Extended-protocol messages were sent since the last Sync.
    pub in_batch: bool,
    /// Status byte of the last ReadyForQuery.
    pub status: u8,
    /// A SET, RESET or DISCARD ran: the session's settings must be read back.
    pub settings_changed: bool,
    /// The client sent Terminate (not forwarded).
    pub terminated: bool,
    /// The server sent a FATAL error.
    pub server_fatal: bool,
    /// ParameterStatus values seen from the server since the last check.
    pub reported: Vec<(String, String)>,
}

impl Relay {
    pub fn new() -> Relay {
        Relay { status: b'I', ..Relay::default() }
    }

    /// Nothing is owed, half-sent or pending: the server can go back to the pool.
    pub fn at_rest(&self) -> bool {
        self.outstanding == 0
            && !self.in_batch
            && self.c2s_remaining == 0
            && self.s2c_remaining == 0
            && self.status == b'I'
    }

    /// Nothing is owed or half-sent, though a transaction may be open.
    pub fn quiet(&self) -> bool {
        self.outstanding == 0 && !self.in_batch && self.c2s_remaining == 0 && self.s2c_remaining == 0
    }

    /// How many bytes of server data may be buffered before reading pauses.
    pub fn server_read_limit(&self) -> usize {
        READ_HIGH.max(self.s2c_need)
    }

    /// Moves client messages into `out` (towards the server) while there is room.
    pub fn client_to_server(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
        max: usize,
    ) -> Result<(), FrameError> {
        loop {
            if self.c2s_remaining > 0 {
                let n = self.c2s_remaining.min(input.len());
                out.extend_from_slice(&input[..n]);
                input.advance(n);
                self.c2s_remaining -= n;
                if self.c2s_remaining > 0 {
                    return Ok(());
                }
            }
            if out.len() >= WRITE_HIGH || self.terminated {
                return Ok(());
            }
            let Some(h) = Header::parse(input, max)? else {
                return Ok(());
            };
            if !crate::wire::is_frontend_tag(h.tag) {
                // Postgres would end the session; the proxy does so without involving a server.
                return Err(FrameError::UnknownType(h.tag));
            }
            match h.tag {
                tag::TERMINATE => {
                    input.advance(h.total_len().min(input.len()));
                    self.terminated = true;
                    return Ok(());
                }
                tag::QUERY | tag::FUNCTION_CALL => self.outstanding += 1,
                tag::SYNC => {
                    self.outstanding += 1;
                    self.in_batch = false;
                }
                tag::PARSE | tag::BIND | tag::DESCRIBE | tag::EXECUTE | tag::CLOSE | tag::FLUSH => {
                    self.in_batch = true
                }
                _ => {}
            }
            self.c2s_remaining = h.total_len();
        }
    }

    /// Moves server messages into `out` (towards the client), reading the ones that matter.
    /// Returns early right after a ReadyForQuery that leaves the server at rest.
    pub fn server_to_client(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
        max: usize,
    ) -> Result<(), FrameError> {
        loop {
            if self.s2c_remaining > 0 {
                let n = self.s2c_remaining.min(input.len());
                out.extend_from_slice(&input[..n]);
                input.advance(n);
                self.s2c_remaining -= n;
                if self.s2c_remaining > 0 {
                    return Ok(());
                }
            }
            if out.len() >= WRITE_HIGH {
                return Ok(());
            }
            // Results stream through whatever their size; only messages read whole below
            // are held to `max`.
            let Some(h) = Header::parse(input, MAX_STREAMED)? else {
                return Ok(());
            };
            let inspect = matches!(
                h.tag,
                tag::READY_FOR_QUERY | tag::PARAMETER_STATUS | tag::COMMAND_COMPLETE | tag::ERROR_RESPONSE
            );
            if !inspect {
                self.s2c_remaining = h.total_len();
                continue;
            }
            if h.total_len() > max {
                return Err(FrameError::TooLong { tag: h.tag, len: h.total_len(), max });
            }
            if input.len() < h.total_len() {
                self.s2c_need = h.total_len();
                return Ok(());
            }
            self.s2c_need = 0;
            let body = &input[HEADER_LEN..h.total_len()];
            let mut at_rest = false;
            match h.tag {
                tag::READY_FOR_QUERY => {
                    self.status = parse_ready_for_query(body)?;
                    self.outstanding = self.outstanding.saturating_sub(1);
                    at_rest = self.at_rest();
                }
                tag::PARAMETER_STATUS => {
                    let (name, value) = parse_parameter_status(body)?;
                    self.reported.push((name, value));
                }
                tag::COMMAND_COMPLETE => {
                    let t = parse_command_tag(body);
                    if t == b"SET" || t == b"RESET" || t.starts_with(b"DISCARD") {
                        self.settings_changed = true;
                    }
                }
                tag::ERROR_RESPONSE => {
                    if ErrorFields::parse(body).map(|f| f.is_fatal()).unwrap_or(false) {
                        self.server_fatal = true;
                    }
                }
                _ => unreachable!(),
            }
            out.extend_from_slice(&input[..h.total_len()]);
            input.advance(h.total_len());
            if at_rest {
                return Ok(());
            }
        }
    }
}

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
}

fn poll_write_half<S: AsyncWrite + Unpin>(
    h: &mut Half<'_, S>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<bool>> {
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
            Poll::Ready(Ok(())) => *h.needs_flush = false,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
    }
    Poll::Ready(Ok(progressed))
}

fn poll_read_half<S: AsyncRead + Unpin>(
    h: &mut Half<'_, S>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if !h.may_read {
        return Poll::Pending;
    }
    h.rbuf.reserve(READ_CHUNK);
    poll_read_buf(Pin::new(&mut *h.io), cx, h.rbuf)
}

/// Writes whatever is pending to both sides and reads from both, without blocking one side
/// on the other. Ready as soon as anything moved.
pub fn poll_io<C, S>(
    cx: &mut Context<'_>,
    client: &mut Half<'_, C>,
    server: &mut Half<'_, S>,
) -> Poll<Result<IoEvent, IoError>>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Poll::Ready(wrote_s) = poll_write_half(server, cx).map_err(IoError::Server)? else { unreachable!() };
    let Poll::Ready(wrote_c) = poll_write_half(client, cx).map_err(IoError::Client)? else { unreachable!() };
    let mut ev = IoEvent::default();
    if let Poll::Ready(r) = poll_read_half(client, cx) {
        ev.client_read = Some(r.map_err(IoError::Client)?);
    }
    if let Poll::Ready(r) = poll_read_half(server, cx) {
        ev.server_read = Some(r.map_err(IoError::Server)?);
    }
    if wrote_s || wrote_c || ev.client_read.is_some() || ev.server_read.is_some() {
        Poll::Ready(Ok(ev))
    } else {
        Poll::Pending
    }
}
