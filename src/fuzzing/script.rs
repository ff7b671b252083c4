//! The in-memory client of the `pre_auth` target: a script of chunks, some of which (a
//! SCRAM or md5 answer) are written from what the proxy has sent so far.
//!
//! May import: [`super`] (the upstream's user and password), [`crate::auth`] and
//! [`crate::wire`].

use super::{PASSWORD, USER};
use crate::auth::scram;
use crate::wire::frame::split_frame;
use crate::wire::tag;
use bytes::{BufMut, BytesMut};
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A chunk of client input, or a message the stream writes itself when its turn comes
/// from what the proxy has sent so far (so that the fuzzer can get past a challenge).
#[derive(Debug)]
pub(super) enum Chunk {
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
    /// A client that sends `script`, then ends its stream.
    pub(super) fn new(script: VecDeque<Chunk>) -> ScriptedStream {
        ScriptedStream {
            script,
            pending: Vec::new(),
            written: Vec::new(),
            encryption_answers: 0,
            scram: None,
            proved: false,
        }
    }

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
