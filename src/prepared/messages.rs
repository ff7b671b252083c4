//! The rewriting of the client's statement messages: Parse, Bind, Describe and Close read
//! (their parts, in place) and written again under the proxy's names, straight into the
//! server's output.
//!
//! May import: [`super`] (the [`Statement`] a Parse is written for) and [`crate::wire`].

use super::Statement;
use crate::wire::frame::{FrameError, Reader};
use crate::wire::tag;
use bytes::{BufMut, BytesMut};

/// Appends a message to `buf` (no buffer of its own: the relay writes straight into the
/// server's output).
fn put_message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    let start = buf.len();
    buf.put_u8(tag);
    buf.put_i32(0);
    body(buf);
    let len = (buf.len() - start - 1) as i32;
    buf[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

pub(super) fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    buf.put_slice(s);
    buf.put_u8(0);
}

/// Appends the Parse of `stmt` under `name`; with `types`, those parameter types instead of
/// the declared ones (the types PostgreSQL inferred when the client prepared it).
pub fn put_parse(out: &mut BytesMut, name: &str, stmt: &Statement, types: Option<&[u8]>) {
    put_message(out, tag::PARSE, |b| {
        put_cstr(b, name.as_bytes());
        match types {
            None => b.put_slice(&stmt.text),
            Some(types) => {
                let query_end = stmt.text.iter().position(|&c| c == 0).map_or(stmt.text.len(), |i| i + 1);
                b.put_slice(&stmt.text[..query_end]);
                b.put_slice(types);
            }
        }
    })
}

/// The parts of a Parse body.
pub struct ParseParts<'a> {
    /// The client's statement name (empty: the unnamed statement).
    pub name: &'a [u8],
    pub query: &'a [u8],
    /// The parameter types, their count included, as sent.
    pub types: &'a [u8],
}

/// Splits a Parse body, checking that the parameter types fill the rest of it.
pub fn parse_parts(body: &[u8]) -> Result<ParseParts<'_>, FrameError> {
    let mut r = Reader::new(body, "Parse");
    let name = r.cstr_bytes()?;
    let query = r.cstr_bytes()?;
    let types = r.remaining();
    let mut count = Reader::new(types, "Parse");
    let n = count.i16()?;
    if n < 0 || count.remaining().len() != n as usize * 4 {
        return Err(FrameError::Malformed { what: "Parse" });
    }
    Ok(ParseParts { name, query, types })
}

/// Statement name and query text of a Parse body.
pub fn parse_texts(body: &[u8]) -> Result<(&[u8], &[u8]), FrameError> {
    let mut r = Reader::new(body, "Parse");
    Ok((r.cstr_bytes()?, r.cstr_bytes()?))
}

/// The parts of a Bind body.
pub struct BindParts<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    /// Parameter formats, values and result formats, as sent.
    pub rest: &'a [u8],
}

/// Splits a Bind body into portal name, statement name and the rest.
pub fn bind_parts(body: &[u8]) -> Result<BindParts<'_>, FrameError> {
    let mut r = Reader::new(body, "Bind");
    let portal = r.cstr_bytes()?;
    let statement = r.cstr_bytes()?;
    Ok(BindParts { portal, statement, rest: r.remaining() })
}

/// Appends a Bind message naming the proxy-wide statement instead of the client's.
pub fn put_bind(out: &mut BytesMut, portal: &[u8], statement: &str, rest: &[u8]) {
    put_message(out, tag::BIND, |b| {
        put_cstr(b, portal);
        put_cstr(b, statement.as_bytes());
        b.put_slice(rest);
    })
}

/// Kind ('S' or 'P') and name of a Describe or Close body.
pub fn target<'a>(body: &'a [u8], what: &'static str) -> Result<(u8, &'a [u8]), FrameError> {
    let mut r = Reader::new(body, what);
    let kind = r.u8()?;
    let name = r.cstr_bytes()?;
    if !matches!(kind, b'S' | b'P') || !r.is_empty() {
        return Err(FrameError::Malformed { what });
    }
    Ok((kind, name))
}

/// Appends a Describe or Close ('D' / 'C') of a statement by name.
pub fn put_statement_message(out: &mut BytesMut, msg_tag: u8, name: &str) {
    put_message(out, msg_tag, |b| {
        b.put_u8(b'S');
        put_cstr(b, name.as_bytes());
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::split_frame;

    #[test]
    fn bind_is_rewritten_keeping_parameters() {
        let mut body = BytesMut::new();
        put_cstr(&mut body, b"portal");
        put_cstr(&mut body, b"s1");
        body.put_slice(b"\0\0\0\x01\0\0\0\x01x\0\0");
        let b = bind_parts(&body).unwrap();
        assert_eq!((b.portal, b.statement), (&b"portal"[..], &b"s1"[..]));
        // Appended after what the buffer holds already.
        let mut m = BytesMut::from(&b"H\0\0\0\x04"[..]);
        put_bind(&mut m, b.portal, "pgsidecar_ab", b.rest);
        assert_eq!(split_frame(&mut m, 1 << 20).unwrap().unwrap().0, b'H');
        let (_, new_body) = split_frame(&mut m, 1 << 20).unwrap().unwrap();
        assert_eq!(&new_body[..], b"portal\0pgsidecar_ab\0\0\0\0\x01\0\0\0\x01x\0\0");
    }
}
