//! Untyped packets a client sends before authentication: SSLRequest, GSSENCRequest,
//! CancelRequest and the StartupMessage with its parameters.

use super::frame::{FrameError, Reader};
use super::{CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, MAX_STARTUP_PACKET, SSL_REQUEST_CODE};
use bytes::{Buf, BytesMut};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel { pid: i32, secret: i32 },
    Startup(Startup),
}

/// A StartupMessage. Parameter values are kept as sent (validated as UTF-8).
#[derive(Clone, PartialEq, Eq)]
pub struct Startup {
    pub major: u16,
    pub minor: u16,
    pub params: Vec<(String, String)>,
}

impl std::fmt::Debug for Startup {
    // Parameters may carry anything a client chose to send; only their names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Startup")
            .field("major", &self.major)
            .field("minor", &self.minor)
            .field("params", &self.params.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .finish()
    }
}

impl Startup {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    #[error("invalid startup packet length {0}")]
    BadLength(i64),
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid startup packet layout: {0}")]
    Layout(&'static str),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Splits one startup-phase packet off `buf`. `Ok(None)` until it is complete; the length is
/// checked against Postgres' own 10,000-byte limit before anything is reserved.
pub fn split_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, StartupError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 || len as usize > MAX_STARTUP_PACKET {
        return Err(StartupError::BadLength(i64::from(len)));
    }
    let len = len as usize;
    if buf.len() < len {
        super::frame::reserve_exact(buf, len);
        return Ok(None);
    }
    let mut packet = buf.split_to(len);
    packet.advance(4);
    parse_startup_body(&packet).map(Some)
}

/// Parses the body of a startup packet (after the length word).
pub fn parse_startup_body(body: &[u8]) -> Result<StartupPacket, StartupError> {
    let mut r = Reader::new(body, "startup");
    let code = r.i32()?;
    match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
            if !r.is_empty() {
                return Err(StartupError::Layout("request packet carries extra bytes"));
            }
            Ok(if code == SSL_REQUEST_CODE {
                StartupPacket::SslRequest
            } else {
                StartupPacket::GssEncRequest
            })
        }
        CANCEL_REQUEST_CODE => {
            let pid = r.i32()?;
            let secret = r.i32()?;
            if !r.is_empty() {
                return Err(StartupError::Layout("cancel request carries extra bytes"));
            }
            Ok(StartupPacket::Cancel { pid, secret })
        }
        version => {
            let major = (version >> 16) as u16;
            let minor = (version & 0xffff) as u16;
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            let mut params = Vec::new();
            loop {
                let name = r.cstr()?;
                if name.is_empty() {
                    break;
                }
                let value = r.cstr()?;
                if params.iter().any(|(k, _): &(String, String)| k == name) {
                    return Err(StartupError::Layout("a parameter is given twice"));
                }
                params.push((name.to_owned(), value.to_owned()));
            }
            if !r.is_empty() {
                return Err(StartupError::Layout("bytes after the parameter list terminator"));
            }
            Ok(StartupPacket::Startup(Startup { major, minor, params }))
        }
    }
}

/// Splits a libpq `options` value into `name=value` settings.
///
/// Accepts `-c name=value`, `-cname=value` and `--name=value`; words are separated by
/// whitespace and a backslash escapes the next character, as in libpq. Dashes in names become
/// underscores like Postgres does for `--name=value`. Anything else is an error naming the word.
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    cur.push(next);
                }
                in_word = true;
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(word) = it.next() {
        let setting = if word == "-c" {
            it.next().ok_or_else(|| "option -c needs name=value".to_owned())?
        } else if let Some(rest) = word.strip_prefix("-c") {
            rest.to_owned()
        } else if let Some(rest) = word.strip_prefix("--") {
            rest.to_owned()
        } else {
            return Err(format!("unsupported option \"{word}\": only -c name=value is supported"));
        };
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("option \"{setting}\" must have the form name=value"))?;
        if name.is_empty() {
            return Err(format!("option \"{setting}\" has no name"));
        }
        out.push((name.replace('-', "_"), value.to_owned()));
    }
    Ok(out)
}
