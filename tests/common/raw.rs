//! A client speaking the wire protocol by hand, for clients that misbehave: they stop
//! reading, vanish in the middle of a message, or never finish logging in.

use bytes::{BufMut, BytesMut};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A StartupMessage (protocol 3.0) with the given parameters.
pub fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    startup_version(196_608, params)
}

/// A startup packet with the given version code (any: tests send wrong ones too).
pub fn startup_version(version: i32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_i32(version);
    for (k, v) in params {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = Vec::new();
    out.put_i32(body.len() as i32 + 4);
    out.extend_from_slice(&body);
    out
}

/// One typed message: tag, length, body.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.put_i32(body.len() as i32 + 4);
    out.extend_from_slice(body);
    out
}

/// A simple Query message.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

/// Reads one typed message; `None` at the end of the stream.
pub async fn read_msg(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    read_msg_from(s).await
}

/// [`read_msg`] from any reader (the read half of a split stream, say).
pub async fn read_msg_from<R: tokio::io::AsyncRead + Unpin>(s: &mut R) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await.ok()?;
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len.checked_sub(4)?];
    s.read_exact(&mut body).await.ok()?;
    Some((head[0], body))
}

/// Reads messages until one of type `tag`; panics on an ErrorResponse or the end of stream.
pub async fn read_until(s: &mut TcpStream, tag: u8) -> Vec<u8> {
    read_until_from(s, tag).await
}

/// [`read_until`] from any reader.
pub async fn read_until_from<R: tokio::io::AsyncRead + Unpin>(s: &mut R, tag: u8) -> Vec<u8> {
    loop {
        let (t, body) = read_msg_from(s).await.expect("connection open");
        if t == tag {
            return body;
        }
        assert_ne!(t, b'E', "error: {}", String::from_utf8_lossy(&body));
    }
}

/// Logs in where client authentication is `trust`; returns once ReadyForQuery arrived.
pub async fn trusted_login(addr: SocketAddr, user: &str, db: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&startup(&[("user", user), ("database", db)])).await.unwrap();
    read_until(&mut s, b'Z').await;
    s
}

/// Whether the peer closed the connection: reads (and discards) until end of stream or error.
pub async fn closed_by_peer(s: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
