//! Framing of regular (typed) protocol messages: a type byte, then a big-endian length that
//! counts itself but not the type byte.
//!
//! Two ways to take frames out of a buffer:
//! - [`split_frame`] returns a whole message, for the messages the proxy must read;
//! - [`Header::parse`] looks only at the five header bytes, so that a message the proxy merely
//!   forwards (a 1 GB `DataRow`, a `CopyData` chunk) can stream through without being buffered.

use bytes::{Buf, BytesMut};

/// Bytes of a message header: type byte plus the 4-byte length.
pub const HEADER_LEN: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub tag: u8,
    /// Length of the body, without type byte and length field.
    pub body_len: usize,
}

impl Header {
    /// The total length of the message on the wire.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.body_len
    }

    /// Reads a header from the start of `buf`.
    ///
    /// `Ok(None)` while fewer than five bytes are there. A length below 4 or above `max` is an
    /// error before anything is reserved for the body.
    pub fn parse(buf: &[u8], max: usize) -> Result<Option<Header>, FrameError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        if len < 4 {
            return Err(FrameError::BadLength { tag: buf[0], len: i64::from(len) });
        }
        let body_len = len as usize - 4;
        if body_len + HEADER_LEN > max {
            return Err(FrameError::TooLong { tag: buf[0], len: body_len + HEADER_LEN, max });
        }
        Ok(Some(Header { tag: buf[0], body_len }))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("invalid message length {len} for message type {}", printable(*tag))]
    BadLength { tag: u8, len: i64 },
    #[error("message of type {} is {len} bytes, above the limit of {max} bytes", printable(*tag))]
    TooLong { tag: u8, len: usize, max: usize },
    #[error("malformed {what} message")]
    Malformed { what: &'static str },
    #[error("invalid frontend message type {0}")]
    UnknownType(u8),
}

fn printable(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", tag as char)
    } else {
        format!("0x{tag:02x}")
    }
}

/// Splits one whole message off the front of `buf` without copying.
///
/// `Ok(None)` when the message is not complete yet; room for more of it is made as it
/// arrives ([`grow_toward`]), within the length [`Header::parse`] checked.
pub fn split_frame(buf: &mut BytesMut, max: usize) -> Result<Option<(u8, BytesMut)>, FrameError> {
    let Some(header) = Header::parse(buf, max)? else {
        return Ok(None);
    };
    if buf.len() < header.total_len() {
        grow_toward(buf, header.total_len(), 8 * 1024);
        return Ok(None);
    }
    let mut frame = buf.split_to(header.total_len());
    frame.advance(HEADER_LEN);
    Ok(Some((header.tag, frame)))
}

/// Makes room in `buf` for the next read of a message of `total` bytes, as its bytes arrive:
/// nothing while at least `chunk` bytes (or what the message still lacks) fit; otherwise the
/// capacity doubles (at least to one `chunk` past what is held), up to `total` exactly. Memory
/// follows the bytes a peer has sent, not the length its header claims, and a message of n
/// bytes costs about log2(n / chunk) copies.
pub fn grow_toward(buf: &mut BytesMut, total: usize, chunk: usize) {
    let len = buf.len();
    let wanted = chunk.min(total.saturating_sub(len)).max(1);
    if buf.capacity() - len >= wanted {
        return;
    }
    reserve_exact(buf, total.min((buf.capacity() * 2).max(len + chunk)).max(len + 1));
}

/// Frees the allocation of an empty `buf` when it is larger than `keep` bytes (a large
/// message passed through it), so that a connection's buffers shrink back after one. The
/// allocation is measured whole: `capacity` alone shrinks as a buffer's front is consumed.
/// Returns whether it did.
pub fn shrink_empty(buf: &mut BytesMut, keep: usize) -> bool {
    if !buf.is_empty() || !(buf.capacity() > keep || buf.try_reclaim(keep + 1)) {
        return false;
    }
    *buf = BytesMut::new();
    true
}

/// Makes room for `total` bytes in `buf` without allocating more than that.
///
/// `BytesMut::reserve` grows a buffer it reallocates to at least twice its capacity, so
/// reserving up to a limit could allocate nearly twice the limit: a message just under `max`
/// arriving in a buffer already more than half that size. A buffer that must grow is
/// replaced by one of exactly `total` bytes instead (one copy, as a reallocation makes).
pub fn reserve_exact(buf: &mut BytesMut, total: usize) {
    if buf.capacity() >= total {
        return;
    }
    let mut grown = BytesMut::with_capacity(total);
    grown.extend_from_slice(buf);
    *buf = grown;
}

/// A cursor over a message body for reading its fields.
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    fn malformed(&self) -> FrameError {
        FrameError::Malformed { what: self.what }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    pub fn u8(&mut self) -> Result<u8, FrameError> {
        let (&b, rest) = self.buf.split_first().ok_or_else(|| self.malformed())?;
        self.buf = rest;
        Ok(b)
    }

    pub fn i16(&mut self) -> Result<i16, FrameError> {
        let bytes = self.bytes(2)?;
        Ok(i16::from_be_bytes([bytes[0], bytes[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, FrameError> {
        let bytes = self.bytes(4)?;
        Ok(i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(self.malformed());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A NUL-terminated string, as raw bytes without the terminator.
    pub fn cstr_bytes(&mut self) -> Result<&'a [u8], FrameError> {
        // Most portal and statement names are empty: no search for those. memchr for the
        // rest: statement texts are scanned for their end on every Parse and Query.
        if let Some((0, rest)) = self.buf.split_first() {
            self.buf = rest;
            return Ok(&[]);
        }
        let end = memchr::memchr(0, self.buf).ok_or_else(|| self.malformed())?;
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// A NUL-terminated string that must be UTF-8.
    pub fn cstr(&mut self) -> Result<&'a str, FrameError> {
        let bytes = self.cstr_bytes()?;
        std::str::from_utf8(bytes).map_err(|_| self.malformed())
    }
}
