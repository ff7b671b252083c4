//! The `startup_packet` target: startup-phase packets split off a stream read in pieces.
//!
//! May import: [`super`] (the input and the reader) and [`crate::wire`].

use super::{read_into, Input, READ_RESERVE};
use crate::wire::startup::{parse_options, parse_startup_body, split_startup, StartupError, StartupPacket};
use crate::wire::MAX_STARTUP_PACKET;
use bytes::{BufMut, BytesMut};

/// Startup-phase packets: `data[0]` picks the read size, the rest is the client's bytes.
///
/// Checks that a packet split off a stream read in pieces is the packet parsed from the
/// whole bytes, that the buffer never grows beyond the 10,000-byte startup limit (plus one
/// read reservation), and that a StartupMessage re-encodes to the same bytes.
pub fn startup_packet(data: &[u8]) {
    let mut input = Input(data);
    let chunk = usize::from(input.u8()) * 8 + 1;
    let stream = input.0;

    // Once, as the handshake reads: from a 512-byte buffer, in pieces.
    let mut buf = BytesMut::with_capacity(512);
    let mut src = stream;
    let mut consumed = 0;
    let mut packets = 0;
    loop {
        match split_startup(&mut buf) {
            Ok(Some(packet)) => {
                let total = stream.len() - src.len() - buf.len();
                let body = &stream[consumed + 4..total];
                let len = i32::from_be_bytes(stream[consumed..consumed + 4].try_into().unwrap());
                assert_eq!(len as usize, total - consumed, "packet length as declared");
                assert_eq!(parse_startup_body(body).as_ref(), Ok(&packet), "same packet from the whole body");
                check_startup(&packet, body);
                consumed = total;
                packets += 1;
                if packets > 64 {
                    break;
                }
            }
            Ok(None) => {
                assert!(
                    buf.capacity() <= MAX_STARTUP_PACKET.max(512) + READ_RESERVE,
                    "startup buffer grew to {} bytes",
                    buf.capacity()
                );
                if read_into(&mut buf, &mut src, chunk) == 0 {
                    break;
                }
            }
            Err(e) => {
                let len = i32::from_be_bytes(stream[consumed..consumed + 4].try_into().unwrap());
                match e {
                    StartupError::BadLength(l) => {
                        assert_eq!(l, i64::from(len));
                        assert!(!(8..=MAX_STARTUP_PACKET as i32).contains(&len));
                    }
                    _ => {
                        let body = &stream[consumed + 4..consumed + len as usize];
                        assert_eq!(parse_startup_body(body), Err(e));
                    }
                }
                break;
            }
        }
    }
    // And every body decoder directly, on the raw bytes.
    if let Ok(packet) = parse_startup_body(stream) {
        check_startup(&packet, stream);
    }
    if let Ok(s) = std::str::from_utf8(stream) {
        let _ = parse_options(s);
    }
}

fn check_startup(packet: &StartupPacket, body: &[u8]) {
    let StartupPacket::Startup(s) = packet else {
        return;
    };
    let mut again = BytesMut::new();
    again.put_u16(s.major);
    again.put_u16(s.minor);
    for (k, v) in &s.params {
        assert!(!k.is_empty() && !k.contains('\0') && !v.contains('\0'));
        again.put_slice(k.as_bytes());
        again.put_u8(0);
        again.put_slice(v.as_bytes());
        again.put_u8(0);
    }
    again.put_u8(0);
    assert_eq!(&again[..], body, "a StartupMessage re-encodes to its bytes");
    if let Some(options) = s.param("options") {
        if let Ok(settings) = parse_options(options) {
            assert!(settings.iter().all(|(name, _)| !name.is_empty()));
        }
    }
}
