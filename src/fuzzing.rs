//! Entry points for the cargo-fuzz targets in `fuzz/` (and the seed replay in `cargo test`).
//!
//! Each function takes arbitrary bytes, drives the real code path with them and panics only
//! when an invariant breaks: a frame returned differently from how it was sent, a buffer
//! grown beyond the configured maximum, a handshake that neither finishes nor fails, a
//! login admitted without proof. Inputs are interpreted (a few control bytes, then chunks),
//! so the fuzzer can reach split reads and whole exchanges; see each function.
//!
//! Not part of the proxy's API: nothing here is used at run time.

use crate::auth::scram;
use crate::client::handshake::{self, Admitted, StartupStep};
use crate::client::relay::{Relay, Statements, Stop, READ_HIGH, WRITE_HIGH};
use crate::client::timing::Timing;
use crate::prepared::{self, ClientStatements, ServerStatements};
use crate::shared::Shared;
use crate::wire::frame::{split_frame, FrameError, Header, Reader, HEADER_LEN};
use crate::wire::messages::{self, ErrorFields};
use crate::wire::startup::{parse_options, parse_startup_body, split_startup, StartupError, StartupPacket};
use crate::wire::{tag, MAX_STARTUP_PACKET};
use bytes::{Buf, BufMut, BytesMut};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// User and password of the upstream the fuzzed proxies serve.
pub const USER: &str = "app";
pub const PASSWORD: &str = "s3cret";

/// What a reader reserves when its buffer is full (tokio's `read_buf` reserves 64 bytes).
const READ_RESERVE: usize = 64;

/// Reads `n` bytes for the control fields of an input; zeros past its end.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map(|(b, r)| (*b, r)).unwrap_or((0, &[]));
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Feeds `src` into `buf` the way a socket reader does: at most `chunk` bytes, into spare
/// capacity only, reserving [`READ_RESERVE`] when there is none. Returns the bytes moved.
fn read_into(buf: &mut BytesMut, src: &mut &[u8], chunk: usize) -> usize {
    if buf.capacity() == buf.len() {
        buf.reserve(READ_RESERVE);
    }
    let n = (buf.capacity() - buf.len()).min(chunk.max(1)).min(src.len());
    buf.extend_from_slice(&src[..n]);
    src.advance(n);
    n
}

// ---------------------------------------------------------------------------------------
// startup_packet
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// frame
// ---------------------------------------------------------------------------------------

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
                let rest = &stream[at..];
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
                break;
            }
        }
    }
    // The decoders on the whole stream too, as if it were one body.
    for t in [tag::QUERY, tag::PARSE, tag::BIND, tag::DESCRIBE, tag::CLOSE, tag::ERROR_RESPONSE, b'S', b'Z'] {
        decode_body(t, stream);
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

// ---------------------------------------------------------------------------------------
// pre_auth
// ---------------------------------------------------------------------------------------

/// One proxy per client authentication method, built once (the SCRAM verifier is slow).
fn proxy(auth: usize) -> Arc<Shared> {
    static PROXIES: OnceLock<Vec<Arc<Shared>>> = OnceLock::new();
    PROXIES.get_or_init(|| {
        ["scram-sha-256", "md5", "trust"]
            .iter()
            .map(|method| {
                let mut env: BTreeMap<String, String> = BTreeMap::new();
                env.insert("DATABASE_URL".into(), format!("postgres://{USER}:{PASSWORD}@127.0.0.1:1/appdb"));
                env.insert("PGSIDECAR_CLIENT_AUTH".into(), (*method).into());
                env.insert("PGSIDECAR_SERVER_SSLMODE".into(), "disable".into());
                env.insert("PGSIDECAR_METRICS_LISTEN".into(), String::new());
                env.insert("PGSIDECAR_ADMIN_USERS".into(), USER.into());
                let config = crate::Config::load(&BTreeMap::new(), &env).expect("fuzzing config");
                Arc::new(Shared::new(config).expect("fuzzing proxy"))
            })
            .collect()
    })[auth % 3]
        .clone()
}

/// A chunk of client input, or a message the stream writes itself when its turn comes
/// from what the proxy has sent so far (so that the fuzzer can get past a challenge).
#[derive(Debug)]
enum Chunk {
    Raw(Vec<u8>),
    /// A StartupMessage for `USER` (database `appdb`, `pgsidecar` or other), with extra
    /// parameters.
    Startup {
        database: u8,
        extra: Vec<u8>,
    },
    /// A SASLInitialResponse from a real SCRAM client.
    ScramFirst,
    /// The SCRAM client's final message for the proxy's challenge; `right` picks the password.
    ScramFinal {
        right: bool,
    },
    /// An md5 password response for the proxy's salt.
    Md5 {
        right: bool,
    },
    Cleartext {
        right: bool,
    },
}

/// An in-memory client connection: reads come from the script (then end of stream), writes
/// are kept.
pub struct ScriptedStream {
    script: VecDeque<Chunk>,
    pending: Vec<u8>,
    /// What the proxy wrote (typed messages).
    pub written: Vec<u8>,
    /// One-byte answers to SSLRequest and GSSENCRequest.
    pub encryption_answers: usize,
    scram: Option<postgres_protocol::authentication::sasl::ScramSha256>,
    /// A correct proof or password was sent.
    pub proved: bool,
}

fn password_message(body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag::PASSWORD];
    m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

impl ScriptedStream {
    /// The data of the last Authentication request of type `code` the proxy sent.
    fn last_auth(&self, code: i32) -> Option<Vec<u8>> {
        let mut buf = BytesMut::from(&self.written[..]);
        let mut found = None;
        while let Ok(Some((t, body))) = split_frame(&mut buf, usize::MAX) {
            if t == tag::AUTHENTICATION && body.len() >= 4 && body[..4] == code.to_be_bytes() {
                found = Some(body[4..].to_vec());
            }
        }
        found
    }

    fn render(&mut self, chunk: Chunk) -> Vec<u8> {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        let password = |right: bool| if right { PASSWORD } else { "wrong" };
        match chunk {
            Chunk::Raw(bytes) => bytes,
            Chunk::Startup { database, extra } => {
                let mut body = BytesMut::new();
                body.put_i32(crate::wire::PROTOCOL_3_0 + i32::from(database >> 4 & 1));
                let db = ["appdb", "pgsidecar", "other", ""][usize::from(database & 3)];
                for (k, v) in [("user", USER), ("database", db)] {
                    body.put_slice(k.as_bytes());
                    body.put_u8(0);
                    body.put_slice(v.as_bytes());
                    body.put_u8(0);
                }
                body.put_slice(&extra);
                body.put_u8(0);
                let mut m = (body.len() as i32 + 4).to_be_bytes().to_vec();
                m.extend_from_slice(&body);
                m
            }
            Chunk::ScramFirst => {
                let client = ScramSha256::new(PASSWORD.as_bytes(), ChannelBinding::unsupported());
                let mut body = BytesMut::new();
                body.put_slice(scram::MECHANISM.as_bytes());
                body.put_u8(0);
                body.put_i32(client.message().len() as i32);
                body.put_slice(client.message());
                self.scram = Some(client);
                password_message(&body)
            }
            Chunk::ScramFinal { right } => {
                let challenge = self.last_auth(11).unwrap_or_default();
                let mut client = self
                    .scram
                    .take()
                    .unwrap_or_else(|| ScramSha256::new(PASSWORD.as_bytes(), ChannelBinding::unsupported()));
                if client.update(&challenge).is_err() {
                    return password_message(b"c=biws,r=x,p=AAAA");
                }
                let mut message = client.message().to_vec();
                if right {
                    self.proved = true;
                } else if let Some(at) = message.windows(3).position(|w| w == b",p=") {
                    // The same message with one bit of the proof changed (still base64).
                    let i = at + 3 + 5;
                    message[i] = if message[i] == b'A' { b'B' } else { b'A' };
                }
                password_message(&message)
            }
            Chunk::Md5 { right } => {
                let salt = self.last_auth(5).and_then(|s| <[u8; 4]>::try_from(s).ok()).unwrap_or_default();
                let hash = postgres_protocol::authentication::md5_hash(
                    USER.as_bytes(),
                    password(right).as_bytes(),
                    salt,
                );
                self.proved |= right;
                let mut body = hash.into_bytes();
                body.push(0);
                password_message(&body)
            }
            Chunk::Cleartext { right } => {
                let mut body = password(right).as_bytes().to_vec();
                body.push(0);
                password_message(&body)
            }
        }
    }
}

impl AsyncRead for ScriptedStream {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.pending.is_empty() {
            match this.script.pop_front() {
                Some(chunk) => this.pending = this.render(chunk),
                None => return Poll::Ready(Ok(())), // end of stream
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.drain(..n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ScriptedStream {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if matches!(data, b"N" | b"S") {
            // The one-byte answer to SSLRequest / GSSENCRequest: not a typed message.
            this.encryption_answers += 1;
            assert!(this.encryption_answers <= 64);
            return Poll::Ready(Ok(1));
        }
        this.written.extend_from_slice(data);
        assert!(this.written.len() < 64 * 1024, "the handshake wrote {} bytes", this.written.len());
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// How a fuzzed handshake ended.
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeEnd {
    /// SSLRequest accepted (`S` sent); the TLS handshake itself is not fuzzed.
    Tls,
    Cancel,
    Pool {
        user: String,
        database: String,
    },
    Console {
        user: String,
    },
    Refused(&'static str),
}

/// Runs the client handshake (startup packets, then login) on `stream` with `proxy`'s
/// settings, as `handshake` does after accepting a connection.
pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    stream: &mut S,
    tls: bool,
    over_limit: bool,
) -> HandshakeEnd {
    let mut rbuf = BytesMut::with_capacity(512);
    let startup = match handshake::read_startup_packet(shared, stream, &mut rbuf, tls).await {
        Ok(StartupStep::Startup(s)) => s,
        Ok(StartupStep::Tls) => return HandshakeEnd::Tls,
        Ok(StartupStep::Cancel) => return HandshakeEnd::Cancel,
        Err(r) => return HandshakeEnd::Refused(r.log),
    };
    let end = match handshake::login(shared, stream, &mut rbuf, startup, over_limit).await {
        Ok(Admitted::Pool { user, database, greeting, .. }) => {
            // The session sends these first (SCRAM's final message): checked with the rest.
            let _ = tokio::io::AsyncWriteExt::write_all(stream, &greeting).await;
            HandshakeEnd::Pool { user, database }
        }
        Ok(Admitted::Console { user, .. }) => HandshakeEnd::Console { user },
        Err(r) => HandshakeEnd::Refused(r.log),
    };
    assert!(rbuf.capacity() <= crate::wire::MAX_PRE_AUTH_MESSAGE.max(MAX_STARTUP_PACKET) + READ_RESERVE);
    end
}

/// A whole client handshake against an in-memory stream.
///
/// `data[0]`: bits 0-1 the authentication method (SCRAM, md5, trust), bit 2 whether TLS can
/// be accepted, bit 3 over the client limit. Then chunks, each a kind byte and its data:
/// kind % 8 = 0 raw bytes (a length byte, then that many bytes), 1 a StartupMessage (a
/// database byte, a length byte and extra parameter bytes), 2 a SCRAM client-first, 3/4 a
/// SCRAM client-final with the right/wrong password, 5/6 an md5 response right/wrong,
/// 7 a cleartext password (next byte's bit 0: right). The client's bytes end after the last
/// chunk.
///
/// The handshake must finish without waiting (every read is answered at once, so a pending
/// future is a hang), write a bounded answer, and admit a client only as `USER` and only with
/// a correct proof (or under trust).
pub fn pre_auth(data: &[u8]) {
    run_pre_auth(data);
}

fn run_pre_auth(data: &[u8]) -> HandshakeEnd {
    let mut input = Input(data);
    let flags = input.u8();
    let auth = usize::from(flags & 3) % 3;
    let (tls, over_limit) = (flags & 4 != 0, flags & 8 != 0);
    let mut script = VecDeque::new();
    while !input.is_empty() && script.len() < 64 {
        let kind = input.u8();
        script.push_back(match kind % 8 {
            0 => {
                let n = usize::from(input.u8()) * if kind & 0x80 != 0 { 64 } else { 1 };
                Chunk::Raw(input.take(n).to_vec())
            }
            1 => {
                let database = input.u8();
                let n = usize::from(input.u8());
                Chunk::Startup { database, extra: input.take(n).to_vec() }
            }
            2 => Chunk::ScramFirst,
            3 => Chunk::ScramFinal { right: true },
            4 => Chunk::ScramFinal { right: false },
            5 => Chunk::Md5 { right: true },
            6 => Chunk::Md5 { right: false },
            _ => Chunk::Cleartext { right: input.u8() & 1 == 1 },
        });
    }
    let shared = proxy(auth);
    let mut stream = ScriptedStream {
        script,
        pending: Vec::new(),
        written: Vec::new(),
        encryption_answers: 0,
        scram: None,
        proved: false,
    };
    let end = {
        let fut = pin!(client_handshake(&shared, &mut stream, tls, over_limit));
        let _rt = runtime().enter();
        match fut.poll(&mut Context::from_waker(std::task::Waker::noop())) {
            Poll::Ready(end) => end,
            Poll::Pending => panic!("the handshake waits although every read is answered"),
        }
    };
    match &end {
        HandshakeEnd::Pool { user, .. } | HandshakeEnd::Console { user } => {
            assert_eq!(user, USER, "admitted as another user");
            assert!(!over_limit, "admitted over the client limit");
            assert!(auth == 2 || stream.proved, "admitted without proof: {end:?}");
            if let HandshakeEnd::Pool { database, .. } = &end {
                assert!(shared.upstream(database).is_some());
            }
        }
        HandshakeEnd::Tls => assert!(tls),
        _ => {}
    }
    end
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime"))
}

// ---------------------------------------------------------------------------------------
// post_auth
// ---------------------------------------------------------------------------------------

/// Follows a byte stream message by message without keeping it: every header must be valid
/// (and, towards the server, name a frontend message other than Terminate).
struct Framing {
    towards_server: bool,
    head: Vec<u8>,
    skip: usize,
}

impl Framing {
    fn new(towards_server: bool) -> Framing {
        Framing { towards_server, head: Vec::new(), skip: 0 }
    }

    fn feed(&mut self, mut data: &[u8]) {
        loop {
            let n = self.skip.min(data.len());
            self.skip -= n;
            data = &data[n..];
            if data.is_empty() {
                return;
            }
            let n = (HEADER_LEN - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.head.len() < HEADER_LEN {
                return;
            }
            let h = match Header::parse(&self.head, crate::client::relay::MAX_STREAMED) {
                Ok(Some(h)) => h,
                other => panic!("{} stream out of step: header {:?} ({other:?})", self.side(), self.head),
            };
            if self.towards_server {
                assert!(
                    crate::wire::is_frontend_tag(h.tag) && h.tag != tag::TERMINATE,
                    "message type {:?} sent to the server",
                    h.tag as char
                );
            }
            self.head.clear();
            self.skip = h.body_len;
        }
    }

    fn side(&self) -> &'static str {
        if self.towards_server {
            "server-bound"
        } else {
            "client-bound"
        }
    }
}

/// The relay's handling of an authenticated client's messages (and the answers of a server
/// that is simulated by the input), without sockets.
///
/// `data[0]`: bit 0 transaction mode, bit 1 prepared-statement rewriting, bit 2
/// pinned, bits 3-4 the server's statement cache size (1 to 4, so evictions happen), bit 5
/// prepares unnamed statements too;
/// `data[1]` the maximum message size. Then operations, each a kind byte:
/// kind % 6 = 0 raw client bytes (a length byte, then the bytes), 1 a client message (type
/// byte, length byte, body: the length field is computed), 2 raw server bytes, 3 a server
/// message (as 1), 4 the session writes everything out (buffers emptied), 5 a Parse with a
/// statement name byte (one of four names, or none) and query byte, so that names repeat.
///
/// After every step: no panic, the input left unread is only an incomplete message (or
/// nothing), and the buffers towards each side stay within the write threshold plus what one
/// step can add. What goes to either side must stay a well-formed message stream: whatever
/// the proxy adds (its own answers, rewritten or added messages) goes between messages, never
/// into the middle of one it is forwarding.
pub fn post_auth(data: &[u8]) {
    let mut input = Input(data);
    let flags = input.u8();
    let transaction = flags & 1 != 0;
    let rewrite = transaction && flags & 2 != 0;
    let unnamed = rewrite && flags & 32 != 0;
    let pinned = flags & 4 != 0;
    let capacity = usize::from(flags >> 3 & 3) + 1;
    let max = match input.u8() {
        0 => 1 << 20,
        m => HEADER_LEN + usize::from(m) * 4,
    };

    let mut relay = Relay::new();
    let mut timing = Timing::default();
    let mut client = ClientStatements::default();
    let mut server = ServerStatements::new(capacity);
    let (mut c_in, mut s_in) = (BytesMut::new(), BytesMut::new());
    let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());
    let (mut server_framing, mut client_framing) = (Framing::new(true), Framing::new(false));
    let mut client_done = false;
    let mut server_done = false;
    let mut steps = 0;

    while !input.is_empty() && steps < 512 {
        steps += 1;
        let kind = input.u8();
        let msg = |input: &mut Input<'_>| {
            let t = input.u8();
            let n = usize::from(input.u8());
            let body = input.take(n);
            let mut m = vec![t];
            m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
            m.extend_from_slice(body);
            m
        };
        let to_client_side = match kind % 6 {
            0 => {
                let n = usize::from(input.u8());
                c_in.extend_from_slice(input.take(n));
                true
            }
            1 => {
                let m = msg(&mut input);
                c_in.extend_from_slice(&m);
                true
            }
            2 => {
                let n = usize::from(input.u8());
                s_in.extend_from_slice(input.take(n));
                false
            }
            3 => {
                let m = msg(&mut input);
                s_in.extend_from_slice(&m);
                false
            }
            4 => {
                server_framing.feed(&to_server.split());
                client_framing.feed(&to_client.split());
                continue;
            }
            _ => {
                let (name, query) = (input.u8() % 5, input.u8() % 4);
                // Name 4 is the unnamed statement.
                let mut body = if name == 4 { vec![0] } else { vec![b's', b'0' + name, 0] };
                body.extend_from_slice(format!("select {query}").as_bytes());
                body.extend_from_slice(&[0, 0, 0]);
                let mut m = vec![tag::PARSE];
                m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
                m.extend_from_slice(&body);
                c_in.extend_from_slice(&m);
                true
            }
        };
        if client_done || server_done {
            break; // the session ends
        }
        let mut st = Statements {
            timing: &mut timing,
            client: &mut client,
            server: &mut server,
            rewrite,
            unnamed,
            pinned,
        };
        if to_client_side {
            match relay.client_to_server(&mut c_in, &mut to_server, &mut to_client, max, &mut st) {
                Ok(stop) => {
                    // Progress: it stops on its output only when that is full; otherwise, unless
                    // the client said goodbye or waits for the server (answers owed at their
                    // cap, a statement being described), what is left is an incomplete
                    // message, and the session may read more of it.
                    match stop {
                        Stop::Output => {
                            assert!(to_server.len() >= WRITE_HIGH, "stopped on an output with room")
                        }
                        Stop::Rest => panic!("only the server's answers bring the relay to rest"),
                        Stop::Input => {
                            if !relay.terminated && !relay.blocked() {
                                if let Ok(Some(h)) = Header::parse(&c_in, max) {
                                    assert!(c_in.len() < h.total_len(), "a whole message left unread");
                                    assert!(
                                        c_in.len() < relay.client_read_limit(),
                                        "a message that cannot be read whole"
                                    );
                                }
                            }
                        }
                    }
                    assert!(relay.client_read_limit() <= READ_HIGH.max(max));
                }
                Err(_) => client_done = true,
            }
        } else {
            match relay.server_to_client(&mut s_in, &mut to_client, max, &mut st) {
                Ok(Stop::Output) => assert!(to_client.len() >= WRITE_HIGH, "stopped on an output with room"),
                Ok(Stop::Rest) => assert!(relay.at_rest()),
                Ok(Stop::Input) => {
                    // Whatever is left needs more bytes before anything of it can move.
                    if let Ok(Some(h)) = Header::parse(&s_in, crate::client::relay::MAX_STREAMED) {
                        assert!(s_in.len() < h.total_len(), "a whole server message left unread");
                        assert!(
                            s_in.len() < relay.server_read_limit(),
                            "a message that cannot be read whole"
                        );
                    }
                }
                Err(_) => server_done = true,
            }
        }
        // One step adds at most one message (up to `max`) and what the proxy writes on its own
        // for it: rewritten names, a Parse for a statement the server lacks, Closes of evicted
        // statements, answers it owes.
        let bound = WRITE_HIGH + 2 * max + 64 * 1024;
        assert!(to_server.len() <= bound, "{} bytes towards the server", to_server.len());
        assert!(to_client.len() <= bound + WRITE_HIGH, "{} bytes towards the client", to_client.len());
        let _ = (relay.at_rest(), relay.quiet(), relay.server_read_limit());
    }
    server_framing.feed(&to_server);
    client_framing.feed(&to_client);
}

#[cfg(test)]
mod tests {
    //! Replays the committed seeds and crash regressions (`fuzz/seeds/<target>/*`) through
    //! the same entry points, so that `cargo test` catches a regression without cargo-fuzz.

    use std::path::Path;

    fn replay(target: &str, f: fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let r = std::panic::catch_unwind(|| f(&data));
            assert!(r.is_ok(), "{} panics", path.display());
            n += 1;
        }
        assert!(n > 0, "no seeds in {}", dir.display());
    }

    #[test]
    fn startup_packet_seeds() {
        replay("startup_packet", super::startup_packet);
    }

    #[test]
    fn frame_seeds() {
        replay("frame", super::frame);
    }

    #[test]
    fn pre_auth_seeds() {
        replay("pre_auth", super::pre_auth);
    }

    #[test]
    fn pre_auth_seeds_reach_every_outcome() {
        use super::HandshakeEnd::*;
        let end = |name: &str| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/pre_auth").join(name);
            super::run_pre_auth(&std::fs::read(path).unwrap())
        };
        let pool = || Pool { user: super::USER.into(), database: "appdb".into() };
        for ok in ["scram_ok", "md5_ok", "trust", "ssl_refused_then_trust", "protocol_3_1_options"] {
            assert_eq!(end(ok), pool(), "{ok}");
        }
        assert_eq!(end("gss_then_md5"), pool());
        assert_eq!(end("console_scram"), Console { user: super::USER.into() });
        assert_eq!(end("scram_wrong"), Refused("auth_failed"));
        assert_eq!(end("md5_wrong"), Refused("auth_failed"));
        assert_eq!(end("unknown_database"), Refused("unknown_database"));
        assert_eq!(end("over_limit"), Refused("max_client_conn"));
        assert_eq!(end("ssl_accepted"), Tls);
        assert_eq!(end("cancel"), Cancel);
    }

    #[test]
    fn post_auth_seeds() {
        replay("post_auth", super::post_auth);
    }
}
