use super::frame::{split_frame, FrameError, Header};
use super::messages::{ErrorFields, PgError};
use super::startup::{parse_options, split_startup, StartupError, StartupPacket};
use bytes::{BufMut, BytesMut};

fn startup_bytes(version: i32, params: &[(&str, &str)]) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_i32(version);
    for (k, v) in params {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut buf = BytesMut::new();
    buf.put_i32(body.len() as i32 + 4);
    buf.put_slice(&body);
    buf
}

#[test]
fn frame_incomplete_then_complete() {
    let mut buf = BytesMut::from(&b"Q\0\0\0\x0bsel"[..]);
    assert_eq!(split_frame(&mut buf, 1024).unwrap(), None);
    buf.put_slice(b"ect\0Z");
    let (tag, body) = split_frame(&mut buf, 1024).unwrap().unwrap();
    assert_eq!(tag, b'Q');
    assert_eq!(&body[..], b"select\0");
    assert_eq!(&buf[..], b"Z");
}

#[test]
fn frame_rejects_short_negative_and_huge_lengths() {
    for len in [0i32, 3, -1, i32::MIN] {
        let mut buf = BytesMut::new();
        buf.put_u8(b'Q');
        buf.put_i32(len);
        assert!(matches!(split_frame(&mut buf, 1024), Err(FrameError::BadLength { .. })), "{len}");
    }
    let mut buf = BytesMut::new();
    buf.put_u8(b'Q');
    buf.put_i32(i32::MAX);
    assert!(matches!(split_frame(&mut buf, 1 << 20), Err(FrameError::TooLong { .. })));
    // Nothing was reserved for the announced body.
    assert!(buf.capacity() < 1 << 20);
}

#[test]
fn header_only_parse_for_streaming() {
    let h = Header::parse(b"D\0\0\x10\0", usize::MAX).unwrap().unwrap();
    assert_eq!(h, Header { tag: b'D', body_len: 4092 });
    assert_eq!(h.total_len(), 4097);
    assert_eq!(Header::parse(b"D\0\0", 100).unwrap(), None);
}

#[test]
fn startup_parses_params_and_requests() {
    let mut buf = startup_bytes(196_608, &[("user", "app"), ("database", "db")]);
    match split_startup(&mut buf).unwrap().unwrap() {
        StartupPacket::Startup(s) => {
            assert_eq!((s.major, s.minor), (3, 0));
            assert_eq!(s.param("user"), Some("app"));
            assert_eq!(s.param("database"), Some("db"));
        }
        other => panic!("{other:?}"),
    }
    let mut ssl = BytesMut::from(&[0u8, 0, 0, 8, 4, 210, 22, 47][..]);
    assert_eq!(split_startup(&mut ssl).unwrap(), Some(StartupPacket::SslRequest));
    let mut cancel = BytesMut::new();
    cancel.put_i32(16);
    cancel.put_i32(80_877_102);
    cancel.put_i32(42);
    cancel.put_i32(-7);
    assert_eq!(split_startup(&mut cancel).unwrap(), Some(StartupPacket::Cancel { pid: 42, secret: -7 }));
}

#[test]
fn startup_rejects_bad_input() {
    // Too long, too short, negative.
    for len in [10_001i32, 7, -8] {
        let mut buf = BytesMut::new();
        buf.put_i32(len);
        buf.put_i32(196_608);
        assert!(matches!(split_startup(&mut buf), Err(StartupError::BadLength(_))), "{len}");
    }
    // Missing terminator.
    let mut buf = BytesMut::new();
    buf.put_i32(4 + 4 + 4);
    buf.put_i32(196_608);
    buf.put_slice(b"user");
    assert!(split_startup(&mut buf).is_err());
    // Invalid UTF-8 in a value.
    let mut buf = startup_bytes(196_608, &[("user", "a")]);
    let at = buf.len() - 3;
    buf[at] = 0xff;
    assert!(split_startup(&mut buf).is_err());
    // Protocol 2.
    let mut buf = startup_bytes(131_072, &[("user", "a")]);
    assert!(matches!(split_startup(&mut buf), Err(StartupError::UnsupportedProtocol { major: 2, .. })));
}

#[test]
fn options_are_split_like_libpq() {
    let got = parse_options("-c statement_timeout=5s  -csearch_path=app,public --lock-timeout=1s").unwrap();
    assert_eq!(
        got,
        vec![
            ("statement_timeout".into(), "5s".into()),
            ("search_path".into(), "app,public".into()),
            ("lock_timeout".into(), "1s".into()),
        ]
    );
    assert_eq!(
        parse_options(r"-c application_name=my\ app").unwrap(),
        vec![("application_name".into(), "my app".into())]
    );
    assert!(parse_options("-x foo").is_err());
    assert!(parse_options("-c").is_err());
    assert!(parse_options("-c novalue").is_err());
}

#[test]
fn error_response_round_trips() {
    let mut buf = BytesMut::new();
    PgError::fatal("53300", "too many clients").with_hint("raise it").encode(&mut buf);
    let (tag, body) = split_frame(&mut buf, 1024).unwrap().unwrap();
    assert_eq!(tag, b'E');
    let fields = ErrorFields::parse(&body).unwrap();
    assert_eq!(fields.code, "53300");
    assert_eq!(fields.severity, "FATAL");
    assert_eq!(fields.message, "too many clients");
    assert!(fields.is_fatal());
}

#[test]
fn frame_reservation_never_exceeds_the_limit() {
    // Found writing the `frame` fuzz target's capacity check: a buffer more than half the limit holding the start
    // of a message just under the limit. `BytesMut::reserve` doubled it (12,000 bytes for a
    // 10,000-byte limit); the reservation is now exactly the message.
    let max = 10_000;
    let mut buf = BytesMut::with_capacity(6_000);
    buf.put_u8(b'Q');
    buf.put_i32(9_000 - 1);
    buf.put_bytes(b'x', 6_000 - 5);
    assert_eq!(buf.capacity(), 6_000);
    assert_eq!(split_frame(&mut buf, max).unwrap(), None);
    assert!((9_000..=max).contains(&buf.capacity()), "capacity {}", buf.capacity());
    buf.put_bytes(b'x', 3_000);
    let (tag, body) = split_frame(&mut buf, max).unwrap().unwrap();
    assert_eq!((tag, body.len()), (b'Q', 9_000 - 5));
    assert!(body.iter().all(|&b| b == b'x') && buf.is_empty());
}

#[test]
fn startup_reservation_never_exceeds_the_limit() {
    let mut buf =
        startup_bytes(super::PROTOCOL_3_0, &[("user", "u"), ("application_name", &"a".repeat(8_900))]);
    let whole = buf.split();
    let mut buf = BytesMut::with_capacity(6_000);
    buf.put_slice(&whole[..6_000]);
    assert_eq!(split_startup(&mut buf).unwrap(), None);
    assert!((whole.len()..=super::MAX_STARTUP_PACKET).contains(&buf.capacity()), "{}", buf.capacity());
    buf.put_slice(&whole[6_000..]);
    let Some(StartupPacket::Startup(s)) = split_startup(&mut buf).unwrap() else {
        panic!("a startup packet")
    };
    assert_eq!(s.param("application_name").map(str::len), Some(8_900));
}

#[test]
fn reader_splits_empty_and_named_strings_and_rejects_a_missing_terminator() {
    use crate::wire::frame::Reader;
    let mut r = Reader::new(b"\0portal\0\0x", "Bind");
    assert_eq!(r.cstr_bytes().unwrap(), b"");
    assert_eq!(r.cstr_bytes().unwrap(), b"portal");
    assert_eq!(r.cstr_bytes().unwrap(), b"");
    assert!(r.cstr_bytes().is_err(), "no terminator after x");
    assert!(Reader::new(b"", "Bind").cstr_bytes().is_err());
}

/// Room for a message that arrives in pieces grows with what has arrived, never past the
/// message, and never to the length its header claims before the bytes come.
#[test]
fn room_grows_with_the_bytes_that_arrive() {
    use crate::wire::frame::grow_toward;
    let total = 1 << 20;
    let mut buf = BytesMut::new();
    buf.put_slice(b"Q\x00\x10\x00\x00");
    grow_toward(&mut buf, total, 1024);
    assert!(buf.capacity() < 4096, "{} reserved for 5 bytes of a 1 MiB message", buf.capacity());
    let mut copies = 0;
    while buf.len() < total {
        let before = buf.capacity();
        grow_toward(&mut buf, total, 1024);
        copies += usize::from(buf.capacity() != before);
        assert!(buf.capacity() <= total && buf.capacity() > buf.len());
        let n = (buf.capacity() - buf.len()).min(3000);
        buf.put_bytes(b'x', n);
    }
    assert!(copies <= 12, "{copies} reallocations for 1 MiB");
    assert_eq!(buf.capacity(), total);
}

/// A buffer that carried a large message is freed once empty, even when its front was
/// consumed (its capacity then looks small while the allocation is whole).
#[test]
fn an_empty_buffer_a_large_message_grew_is_freed() {
    use crate::wire::frame::shrink_empty;
    let mut buf = BytesMut::with_capacity(1 << 20);
    buf.put_bytes(b'x', 1 << 20);
    let _ = buf.split_to(1 << 20); // consumed, as a relay does
    assert!(buf.is_empty() && buf.capacity() < 4096);
    assert!(shrink_empty(&mut buf, 64 * 1024));
    assert_eq!(buf.capacity(), 0);
    // Small buffers and buffers still holding bytes are kept.
    let mut small = BytesMut::with_capacity(8192);
    assert!(!shrink_empty(&mut small, 64 * 1024));
    let mut full = BytesMut::with_capacity(1 << 20);
    full.put_u8(1);
    assert!(!shrink_empty(&mut full, 64 * 1024));
}
