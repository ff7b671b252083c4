//! The relay's unit tests, by subject: [`pipeline`] (the queue of expected answers, flow
//! control, COPY, timing), [`statements`] (named and unnamed statements rewritten and
//! prepared per server) and [`scans`] (what statement texts tell the relay). This file holds
//! the messages they send and answer, and the [`Rig`] that plays the session around a relay.

mod pipeline;
mod scans;
mod statements;

use super::*;
use crate::wire::frame::split_frame;
use crate::wire::messages::ErrorFields;
use bytes::BufMut;

fn msg(t: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![t];
    m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_slice(name.as_bytes());
    b.put_u8(0);
    b.put_slice(sql.as_bytes());
    b.put_u8(0);
    b.put_i16(0);
    msg(b'P', &b)
}

fn bind(stmt: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u8(0);
    b.put_slice(stmt.as_bytes());
    b.put_u8(0);
    b.put_slice(&[0, 0, 0, 0, 0, 0]);
    msg(b'B', &b)
}

fn execute() -> Vec<u8> {
    msg(b'E', b"\0\0\0\0\0")
}

fn sync() -> Vec<u8> {
    msg(b'S', b"")
}

fn close(stmt: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    b.extend_from_slice(stmt.as_bytes());
    b.push(0);
    msg(b'C', &b)
}

/// Message types and the names they carry (Parse/Bind statement names) in a byte stream.
fn decode(mut buf: BytesMut) -> Vec<(char, String)> {
    let mut out = Vec::new();
    while let Some((t, body)) = split_frame(&mut buf, 1 << 20).unwrap() {
        let name = match t {
            b'P' => String::from_utf8_lossy(body[..].split(|&b| b == 0).next().unwrap()).into_owned(),
            b'B' => String::from_utf8_lossy(body[..].split(|&b| b == 0).nth(1).unwrap()).into_owned(),
            b'Q' => String::from_utf8_lossy(&body[..body.len() - 1]).into_owned(),
            b'E' if !body.starts_with(b"\0\0\0") => {
                ErrorFields::parse(&body).map(|f| f.code).unwrap_or_default()
            }
            _ => String::new(),
        };
        out.push((t as char, name));
    }
    assert!(buf.is_empty());
    out
}

type Msgs = Vec<(char, String)>;

struct Rig {
    relay: Relay,
    client: ClientStatements,
    timing: crate::client::timing::Timing,
    /// PGSIDECAR_PREPARE_UNNAMED_STATEMENTS.
    unnamed: bool,
    /// Client bytes not read yet (the relay waits for a statement to be described).
    input: BytesMut,
    /// What the relay sent the server when an answer let it read the client again.
    resumed: Msgs,
}

impl Rig {
    fn new() -> Rig {
        Rig {
            relay: Relay::new(),
            client: ClientStatements::default(),
            timing: Default::default(),
            unnamed: false,
            input: BytesMut::new(),
            resumed: Vec::new(),
        }
    }

    fn preparing_unnamed() -> Rig {
        Rig { unnamed: true, ..Rig::new() }
    }

    /// The relay and the statement state it works on (transaction mode, rewriting), as the
    /// session lends them.
    fn split<'a>(&'a mut self, server: &'a mut ServerStatements) -> (&'a mut Relay, Statements<'a>) {
        let st = Statements {
            timing: &mut self.timing,
            client: &mut self.client,
            server,
            rewrite: true,
            unnamed: self.unnamed,
            pinned: false,
        };
        (&mut self.relay, st)
    }

    /// Client sends `input`; returns (to server, to client). All of it is read unless the
    /// relay waits for a statement to be described.
    fn send(&mut self, server: &mut ServerStatements, input: &[Vec<u8>]) -> (Msgs, Msgs) {
        let mut inbuf = std::mem::take(&mut self.input);
        inbuf.extend_from_slice(&input.concat());
        let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());
        let (relay, mut st) = self.split(server);
        relay.client_to_server(&mut inbuf, &mut to_server, &mut to_client, 1 << 20, &mut st).unwrap();
        assert!(inbuf.is_empty() || relay.blocked());
        self.input = inbuf;
        (decode(to_server), decode(to_client))
    }

    /// Server answers with `answers`; returns what the client gets. Client bytes left
    /// waiting are read again once the answers free them (what they make the relay send the
    /// server is in `resumed`).
    fn answer(&mut self, server: &mut ServerStatements, answers: &[Vec<u8>]) -> Vec<(char, String)> {
        let mut inbuf = BytesMut::from(&answers.concat()[..]);
        let mut out = BytesMut::new();
        let mut input = std::mem::take(&mut self.input);
        let mut to_server = BytesMut::new();
        let (relay, mut st) = self.split(server);
        while !inbuf.is_empty() {
            relay.server_to_client(&mut inbuf, &mut out, 1 << 20, &mut st).unwrap();
        }
        if !input.is_empty() && !relay.blocked() {
            relay.client_to_server(&mut input, &mut to_server, &mut out, 1 << 20, &mut st).unwrap();
        }
        self.input = input;
        self.resumed = decode(to_server);
        decode(out)
    }
}

fn ok(t: u8) -> Vec<u8> {
    msg(t, b"")
}

fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

fn complete() -> Vec<u8> {
    msg(b'C', b"SELECT 1\0")
}

fn error(code: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"SERROR\0C");
    b.extend_from_slice(code.as_bytes());
    b.extend_from_slice(b"\0Mboom\0\0");
    msg(b'E', &b)
}

/// ParameterDescription of a statement without parameters.
fn params() -> Vec<u8> {
    msg(b't', b"\0\0")
}

/// RowDescription of one column `c` of type `oid`.
fn row_desc(oid: i32) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i16(1);
    b.put_slice(b"c\0");
    b.put_i32(0);
    b.put_i16(0);
    b.put_i32(oid);
    b.put_i16(4);
    b.put_i32(-1);
    b.put_i16(0);
    msg(b'T', &b)
}

/// The server's answers to a named Parse as the relay sends it: ParseComplete, then the
/// answer to the Describe it adds (an int4 column).
fn parsed() -> Vec<u8> {
    [ok(b'1'), params(), row_desc(23)].concat()
}

fn tags(v: &[(char, String)]) -> String {
    v.iter().map(|(t, _)| *t).collect()
}

fn describe_statement(stmt: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    b.extend_from_slice(stmt.as_bytes());
    b.push(0);
    msg(b'D', &b)
}
