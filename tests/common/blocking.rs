//! A blocking wire-protocol client on plain std sockets, with a read timeout: it runs on the
//! test's own thread, so a proxy whose runtime is stuck makes the test fail with a message
//! instead of hanging it. Bytes can go out whole, cut at a chosen byte, or chopped at random.

use super::chop::{write_chopped, Rng};
use bytes::BufMut;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long a read waits before the test fails: far more than any answer here needs.
pub const READ_LIMIT: Duration = Duration::from_secs(30);

/// A stream the client can use: TCP, a unix socket, or TLS over TCP.
pub trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

pub struct Client {
    pub io: Box<dyn Io>,
    /// Every message read, in order (type byte and body), for comparisons.
    pub log: Vec<(u8, Vec<u8>)>,
}

/// A message: type byte, length, body.
pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.put_i32(body.len() as i32 + 4);
    out.extend_from_slice(body);
    out
}

pub fn query(sql: &str) -> Vec<u8> {
    let mut b = sql.as_bytes().to_vec();
    b.push(0);
    msg(b'Q', &b)
}

/// Parse with no parameter types given.
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    b.extend_from_slice(sql.as_bytes());
    b.push(0);
    b.put_i16(0);
    msg(b'P', &b)
}

/// Bind of `statement` to the unnamed portal with text parameters, text results.
pub fn bind(statement: &str, params: &[&[u8]]) -> Vec<u8> {
    let mut b = vec![0];
    b.extend_from_slice(statement.as_bytes());
    b.push(0);
    b.put_i16(0);
    b.put_i16(params.len() as i16);
    for p in params {
        b.put_i32(p.len() as i32);
        b.extend_from_slice(p);
    }
    b.put_i16(0);
    msg(b'B', &b)
}

pub fn describe_portal() -> Vec<u8> {
    msg(b'D', b"P\0")
}

pub fn describe_statement(name: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    b.extend_from_slice(name.as_bytes());
    b.push(0);
    msg(b'D', &b)
}

pub fn execute() -> Vec<u8> {
    msg(b'E', b"\0\0\0\0\0")
}

pub fn sync() -> Vec<u8> {
    msg(b'S', b"")
}

pub fn flush() -> Vec<u8> {
    msg(b'H', b"")
}

/// A StartupMessage (protocol 3.0).
pub fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    super::raw::startup(params)
}

/// The SQLSTATE of an ErrorResponse body.
pub fn sqlstate(body: &[u8]) -> String {
    field(body, b'C')
}

/// One field of an ErrorResponse or NoticeResponse body.
pub fn field(body: &[u8], code: u8) -> String {
    let mut b = body;
    while let Some((&f, rest)) = b.split_first() {
        if f == 0 {
            break;
        }
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        if f == code {
            return String::from_utf8_lossy(&rest[..end]).into_owned();
        }
        b = &rest[(end + 1).min(rest.len())..];
    }
    String::new()
}

/// The text values of a DataRow body (NULL as "NULL").
pub fn row(body: &[u8]) -> Vec<String> {
    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32::from_be_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
        at += 4;
        if len < 0 {
            out.push("NULL".into());
        } else {
            out.push(String::from_utf8_lossy(&body[at..at + len as usize]).into_owned());
            at += len as usize;
        }
    }
    out
}

impl Client {
    pub fn new(io: Box<dyn Io>) -> Client {
        Client { io, log: Vec::new() }
    }

    /// A TCP connection with the read timeout set.
    pub fn tcp(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(READ_LIMIT)).unwrap();
        s.set_nodelay(true).unwrap();
        Client::new(Box::new(s))
    }

    /// PostgreSQL's unix socket in `dir` (the harness trusts the superuser there).
    pub fn unix(dir: &Path, port: u16) -> Client {
        let s = UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).expect("connect unix socket");
        s.set_read_timeout(Some(READ_LIMIT)).unwrap();
        Client::new(Box::new(s))
    }

    /// Sends the startup packet and reads up to the login's ReadyForQuery (trust only).
    pub fn login(mut self, user: &str, db: &str) -> Client {
        self.login_with(&[("user", user), ("database", db)]);
        self
    }

    /// Logs in with these startup parameters; returns the login's messages.
    pub fn login_with(&mut self, params: &[(&str, &str)]) -> Vec<(u8, Vec<u8>)> {
        self.send(&startup(params));
        let msgs = self.until_ready();
        assert!(!msgs.iter().any(|(t, _)| *t == b'E'), "login failed: {msgs:?}");
        msgs
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).expect("write");
        self.io.flush().expect("flush");
    }

    /// Sends `bytes[..at]`, waits `pause`, then the rest: a request that arrives in two reads.
    pub fn send_split(&mut self, bytes: &[u8], at: usize, pause: Duration) {
        self.send(&bytes[..at]);
        std::thread::sleep(pause);
        self.send(&bytes[at..]);
    }

    /// Sends `bytes` in random pieces with small pauses.
    pub fn send_chopped(&mut self, bytes: &[u8], rng: &mut Rng) {
        write_chopped(&mut self.io, bytes, rng).expect("write");
    }

    /// Sends `bytes` one byte per write.
    pub fn send_bytewise(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.io.write_all(std::slice::from_ref(b)).expect("write");
            self.io.flush().expect("flush");
        }
    }

    /// Reads one message; panics on a timeout or the end of the stream.
    pub fn read(&mut self) -> (u8, Vec<u8>) {
        self.try_read().unwrap_or_else(|e| panic!("no message from the peer: {e}"))
    }

    /// Reads one message, or says why none came.
    pub fn try_read(&mut self) -> Result<(u8, Vec<u8>), String> {
        let mut head = [0u8; 5];
        self.io.read_exact(&mut head).map_err(|e| e.to_string())?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        let len = usize::try_from(len).ok().and_then(|l| l.checked_sub(4)).ok_or("bad length")?;
        let mut body = vec![0u8; len];
        self.io.read_exact(&mut body).map_err(|e| e.to_string())?;
        self.log.push((head[0], body.clone()));
        Ok((head[0], body))
    }

    /// Reads messages up to and including ReadyForQuery.
    pub fn until_ready(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let m = self.read();
            let done = m.0 == b'Z';
            out.push(m);
            if done {
                return out;
            }
        }
    }

    /// Reads `n` messages.
    pub fn read_n(&mut self, n: usize) -> Vec<(u8, Vec<u8>)> {
        (0..n).map(|_| self.read()).collect()
    }

    /// Runs a simple query and returns the first column of its rows; panics on an error.
    pub fn values(&mut self, sql: &str) -> Vec<String> {
        self.send(&query(sql));
        let msgs = self.until_ready();
        if let Some((_, e)) = msgs.iter().find(|(t, _)| *t == b'E') {
            panic!("{sql}: {} {}", sqlstate(e), field(e, b'M'));
        }
        msgs.iter().filter(|(t, _)| *t == b'D').map(|(_, b)| row(b).remove(0)).collect()
    }
}

/// Message types and the parts of each that do not vary between connections: what PostgreSQL
/// and the proxy must both say. BackendKeyData and the pids, ParameterStatus values and
/// error positions/file names are left out; the SQLSTATE and message of errors are kept.
pub fn shape(msgs: &[(u8, Vec<u8>)]) -> Vec<String> {
    msgs.iter()
        .map(|(t, b)| match t {
            b'E' | b'N' => format!("{} {} {}", *t as char, sqlstate(b), field(b, b'M')),
            b'D' => format!("D {:?}", row(b)),
            b'C' | b'Z' => format!("{} {}", *t as char, String::from_utf8_lossy(b)),
            _ => format!("{}", *t as char),
        })
        .collect()
}

/// A TLS connection to the proxy (SSLRequest, then TLS verified against `ca_pem` for the
/// name `localhost`).
pub fn tls(addr: SocketAddr, ca_pem: &str) -> Client {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    use std::sync::Arc;
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(READ_LIMIT)).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(answer[0], b'S', "the proxy accepts TLS");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).expect("TLS client");
    Client::new(Box::new(rustls::StreamOwned::new(conn, s)))
}
