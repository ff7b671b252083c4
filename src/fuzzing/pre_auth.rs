//! The `pre_auth` target: a whole client handshake (startup packets, then login) against an
//! in-memory client, under each authentication method.
//!
//! May import: [`super`] and [`super::script`] (the client), [`crate::client::handshake`],
//! [`crate::shared`] (the proxy's settings) and [`crate::wire`].

use super::script::{Chunk, ScriptedStream};
use super::{Input, PASSWORD, READ_RESERVE, USER};
use crate::client::handshake::{self, Admitted, StartupStep};
use crate::shared::Shared;
use crate::wire::MAX_STARTUP_PACKET;
use bytes::BytesMut;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};

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

pub(super) fn run_pre_auth(data: &[u8]) -> HandshakeEnd {
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
    let mut stream = ScriptedStream::new(script);
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
