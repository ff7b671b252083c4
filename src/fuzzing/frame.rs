//! The `frame` target: message framing with a configured maximum, each frame checked against
//! an independent reading of the stream and run through the body decoders the proxy uses.
//!
//! May import: [`super`] (the input and the reader), [`crate::wire`] and [`crate::prepared`]
//! (its decoders of statement messages).

use super::{read_into, Input, READ_RESERVE};
use crate::prepared;
use crate::wire::frame::{split_frame, FrameError, Header, Reader, HEADER_LEN};
use crate::wire::messages::{self, ErrorFields};
use crate::wire::tag;
use bytes::BytesMut;

/// Message framing with a configured maximum: `data[0..2]` picks the maximum, `data[2]` the
/// read size, `data[3]` bit 0 the reader (the handshake's, which reads into spare capacity,
/// or the session's, which reserves 16 KiB per read); the rest is the byte stream.
///
/// Checks each frame against an independent reading of the stream (same type byte, same
/// body, errors exactly where the stream is invalid), that the buffer's capacity stays
/// within the maximum (plus one read's reservation), and runs the body decoders the proxy
/// uses on every frame.
pub fn frame(data: &[u8]) {
    let mut input = Input(data);
    let max = match input.u16() {
        m @ 0..=15 => [HEADER_LEN, HEADER_LEN + 1, 64, crate::wire::MAX_PRE_AUTH_MESSAGE][usize::from(m % 4)],
        m => usize::from(m),
    };
    let chunk = usize::from(input.u8()) * 16 + 1;
    let session_reader = input.u8() & 1 == 1;
    let read_reserve = if session_reader { 16 * 1024 } else { READ_RESERVE };
    let stream = input.0;

    let mut buf = BytesMut::with_capacity(512);
    let mut src = stream;
    let mut at = 0; // where the next frame starts in `stream`
    let mut frames = 0;
    loop {
        match split_frame(&mut buf, max) {
            Ok(Some((t, body))) => {
                // The reference: the header at `at`, read independently.
                let rest = &stream[at..];
                let len = i32::from_be_bytes(rest[1..5].try_into().unwrap());
                assert!(len >= 4 && (len as usize) < max);
                let end = 1 + len as usize;
                assert_eq!(t, rest[0]);
                assert_eq!(&body[..], &rest[HEADER_LEN..end], "the frame's body as sent");
                decode_body(t, &body);
                at += end;
                frames += 1;
                if frames > 4096 {
                    break;
                }
            }
            Ok(None) => {
                // The handshake's reader stays within the maximum plus one 64-byte read
                // reservation. The session's reader (client/io.rs) reserves 16 KiB per read
                // with `BytesMut::reserve`, which may double the allocation.
                let limit = if session_reader {
                    2 * (max.max(512) + read_reserve)
                } else {
                    max.max(512) + read_reserve
                };
                assert!(buf.capacity() <= limit, "buffer capacity {} above {limit}", buf.capacity());
                // Only an incomplete frame is left in the buffer.
                if let Ok(Some(h)) = Header::parse(&buf, max) {
                    assert!(buf.len() < h.total_len());
                }
                if session_reader {
                    buf.reserve(read_reserve);
                }
                if read_into(&mut buf, &mut src, chunk) == 0 {
                    break;
                }
            }
            Err(e) => {
                check_error(e, &stream[at..], max);
                break;
            }
        }
    }
    // The decoders on the whole stream too, as if it were one body.
    for t in [tag::QUERY, tag::PARSE, tag::BIND, tag::DESCRIBE, tag::CLOSE, tag::ERROR_RESPONSE, b'S', b'Z'] {
        decode_body(t, stream);
    }
}

/// A framing error is what the header at the start of `rest` (the stream from where the
/// frame starts) has wrong with it, and nothing else.
fn check_error(e: FrameError, rest: &[u8], max: usize) {
    let len = i32::from_be_bytes(rest[1..5].try_into().unwrap());
    match e {
        FrameError::BadLength { tag: t, len: l } => {
            assert_eq!((t, l), (rest[0], i64::from(len)));
            assert!(len < 4);
        }
        FrameError::TooLong { tag: t, len: l, max: m } => {
            assert_eq!((t, m), (rest[0], max));
            assert!(len >= 4 && l == len as usize + 1 && l > max);
        }
        other => panic!("framing returned {other:?}"),
    }
}

/// Every body decoder the proxy applies to a message of type `t`.
fn decode_body(t: u8, body: &[u8]) {
    match t {
        tag::PARSE => {
            if let Ok((name, stmt)) = prepared::from_parse(body) {
                let (n, q) = prepared::parse_texts(body).expect("a valid Parse has texts");
                assert_eq!(n, &name[..]);
                if let Some(stmt) = stmt {
                    assert!(!name.is_empty());
                    let mut m = BytesMut::new();
                    prepared::put_parse(&mut m, &stmt.name, &stmt, None);
                    let (t, again) = split_frame(&mut m, usize::MAX).unwrap().unwrap();
                    assert_eq!(t, tag::PARSE);
                    let (n2, q2) = prepared::parse_texts(&again).unwrap();
                    assert_eq!((n2, q2), (stmt.name.as_bytes(), q));
                }
            }
        }
        tag::BIND => {
            if let Ok(b) = prepared::bind_parts(body) {
                let mut m = bytes::BytesMut::new();
                prepared::put_bind(&mut m, b.portal, "pgsidecar_x", b.rest);
                let (_, again) = split_frame(&mut m, usize::MAX).unwrap().unwrap();
                let b2 = prepared::bind_parts(&again).unwrap();
                assert_eq!((b2.portal, b2.statement, b2.rest), (b.portal, &b"pgsidecar_x"[..], b.rest));
            }
        }
        tag::DESCRIBE | tag::CLOSE => {
            let _ = prepared::target(body, "Describe");
        }
        tag::QUERY => {
            let _ = prepared::sql_command(body);
        }
        tag::ERROR_RESPONSE | tag::NOTICE_RESPONSE => {
            let _ = ErrorFields::parse(body).map(|f| f.is_fatal());
        }
        b'S' => {
            let _ = messages::parse_parameter_status(body);
        }
        b'Z' => {
            let _ = messages::parse_ready_for_query(body);
        }
        _ => {
            let _ = messages::parse_command_tag(body);
            let mut r = Reader::new(body, "any");
            while r.cstr().is_ok() || r.i32().is_ok() || r.i16().is_ok() || r.u8().is_ok() {}
            assert!(r.is_empty());
        }
    }
}
