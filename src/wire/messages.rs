//! Builders for the messages the proxy sends itself, and readers for the few it must
//! understand. Everything else is forwarded as received.

use super::frame::{FrameError, Reader};
use super::tag;
use bytes::{BufMut, BytesMut};

/// Starts a typed message; returns the offset of its length field for [`finish`].
fn begin(buf: &mut BytesMut, tag: u8) -> usize {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    at
}

fn finish(buf: &mut BytesMut, at: usize) {
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    buf.put_slice(s);
    buf.put_u8(0);
}

/// Severity of an ErrorResponse the proxy sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An error the proxy reports to a client in Postgres' own format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub hint: Option<String>,
}

impl PgError {
    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        PgError { severity: Severity::Fatal, code, message: message.into(), hint: None }
    }

    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        PgError { severity: Severity::Error, code, message: message.into(), hint: None }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn encode(&self, buf: &mut BytesMut) {
        let at = begin(buf, tag::ERROR_RESPONSE);
        for (field, value) in [(b'S', self.severity.as_str()), (b'V', self.severity.as_str())] {
            buf.put_u8(field);
            put_cstr(buf, value.as_bytes());
        }
        buf.put_u8(b'C');
        put_cstr(buf, self.code.as_bytes());
        buf.put_u8(b'M');
        put_cstr(buf, self.message.as_bytes());
        if let Some(hint) = &self.hint {
            buf.put_u8(b'H');
            put_cstr(buf, hint.as_bytes());
        }
        buf.put_u8(0);
        finish(buf, at);
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity.as_str(), self.code, self.message)
    }
}

pub fn auth_ok(buf: &mut BytesMut) {
    auth_with(buf, 0, b"");
}

pub fn auth_cleartext(buf: &mut BytesMut) {
    auth_with(buf, 3, b"");
}

pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    auth_with(buf, 5, &salt);
}

pub fn auth_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    let at = begin(buf, tag::AUTHENTICATION);
    buf.put_i32(10);
    for m in mechanisms {
        put_cstr(buf, m.as_bytes());
    }
    buf.put_u8(0);
    finish(buf, at);
}

pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    auth_with(buf, 11, data);
}

pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    auth_with(buf, 12, data);
}

fn auth_with(buf: &mut BytesMut, code: i32, data: &[u8]) {
    let at = begin(buf, tag::AUTHENTICATION);
    buf.put_i32(code);
    buf.put_slice(data);
    finish(buf, at);
}

pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    let at = begin(buf, tag::PARAMETER_STATUS);
    put_cstr(buf, name.as_bytes());
    put_cstr(buf, value.as_bytes());
    finish(buf, at);
}

pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    let at = begin(buf, tag::BACKEND_KEY_DATA);
    buf.put_i32(pid);
    buf.put_i32(secret);
    finish(buf, at);
}

pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    let at = begin(buf, tag::READY_FOR_QUERY);
    buf.put_u8(status);
    finish(buf, at);
}

pub fn negotiate_protocol_version(buf: &mut BytesMut, version: i32, unrecognized: &[&str]) {
    let at = begin(buf, tag::NEGOTIATE_PROTOCOL_VERSION);
    buf.put_i32(version);
    buf.put_i32(unrecognized.len() as i32);
    for name in unrecognized {
        put_cstr(buf, name.as_bytes());
    }
    finish(buf, at);
}

/// A single-byte answer to SSLRequest / GSSENCRequest.
pub fn refuse_encryption(buf: &mut BytesMut) {
    buf.put_u8(b'N');
}

/// Frontend simple Query, used by the proxy for its own statements.
pub fn query(buf: &mut BytesMut, sql: &str) {
    let at = begin(buf, tag::QUERY);
    put_cstr(buf, sql.as_bytes());
    finish(buf, at);
}

pub fn terminate(buf: &mut BytesMut) {
    let at = begin(buf, tag::TERMINATE);
    finish(buf, at);
}

/// A RowDescription with text columns, and DataRows, for answers the proxy makes itself.
pub fn row_description(buf: &mut BytesMut, columns: &[&str]) {
    let typed: Vec<(&str, i32)> = columns.iter().map(|c| (*c, TEXT_OID)).collect();
    row_description_typed(buf, &typed);
}

/// Type OIDs the admin console declares, as PgBouncer does: `text`, `int4`, `int8`.
pub const TEXT_OID: i32 = 25;
pub const INT4_OID: i32 = 23;
pub const INT8_OID: i32 = 20;

/// A RowDescription with each column's type OID (values still in text format).
pub fn row_description_typed(buf: &mut BytesMut, columns: &[(&str, i32)]) {
    let at = begin(buf, b'T');
    buf.put_i16(columns.len() as i16);
    for (name, oid) in columns {
        put_cstr(buf, name.as_bytes());
        buf.put_i32(0); // table oid
        buf.put_i16(0); // column number
        buf.put_i32(*oid);
        buf.put_i16(match *oid {
            INT4_OID => 4,
            INT8_OID => 8,
            _ => -1,
        });
        buf.put_i32(-1);
        buf.put_i16(0); // text format
    }
    finish(buf, at);
}

pub fn data_row(buf: &mut BytesMut, values: &[Option<&str>]) {
    let at = begin(buf, tag::DATA_ROW);
    buf.put_i16(values.len() as i16);
    for v in values {
        match v {
            Some(v) => {
                buf.put_i32(v.len() as i32);
                buf.put_slice(v.as_bytes());
            }
            None => buf.put_i32(-1),
        }
    }
    finish(buf, at);
}

/// The answer to a Query holding no statement.
pub fn empty_query_response(buf: &mut BytesMut) {
    let at = begin(buf, b'I');
    finish(buf, at);
}

/// A NoticeResponse (severity NOTICE, SQLSTATE 00000) with an optional detail.
pub fn notice(buf: &mut BytesMut, message: &str, detail: Option<&str>) {
    let at = begin(buf, tag::NOTICE_RESPONSE);
    for (field, value) in [(b'S', "NOTICE"), (b'V', "NOTICE"), (b'C', "00000"), (b'M', message)] {
        buf.put_u8(field);
        put_cstr(buf, value.as_bytes());
    }
    if let Some(detail) = detail {
        buf.put_u8(b'D');
        put_cstr(buf, detail.as_bytes());
    }
    buf.put_u8(0);
    finish(buf, at);
}

/// An ErrorResponse of exactly these fields (type byte, value), in this order.
pub fn error_fields(buf: &mut BytesMut, fields: &[(u8, &str)]) {
    let at = begin(buf, tag::ERROR_RESPONSE);
    for &(field, value) in fields {
        buf.put_u8(field);
        put_cstr(buf, value.as_bytes());
    }
    buf.put_u8(0);
    finish(buf, at);
}

pub fn command_complete(buf: &mut BytesMut, tag_text: &str) {
    let at = begin(buf, tag::COMMAND_COMPLETE);
    put_cstr(buf, tag_text.as_bytes());
    finish(buf, at);
}

/// The fields of an ErrorResponse or NoticeResponse the proxy looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

impl ErrorFields {
    pub fn parse(body: &[u8]) -> Result<ErrorFields, FrameError> {
        let mut r = Reader::new(body, "ErrorResponse");
        let mut out = ErrorFields::default();
        loop {
            let field = r.u8()?;
            if field == 0 {
                break;
            }
            let value = String::from_utf8_lossy(r.cstr_bytes()?).into_owned();
            match field {
                b'V' => out.severity = value,
                b'S' if out.severity.is_empty() => out.severity = value,
                b'C' => out.code = value,
                b'M' => out.message = value,
                _ => {}
            }
        }
        Ok(out)
    }

    pub fn is_fatal(&self) -> bool {
        matches!(self.severity.as_str(), "FATAL" | "PANIC")
    }
}

/// Body of ParameterStatus: name and value.
pub fn parse_parameter_status(body: &[u8]) -> Result<(String, String), FrameError> {
    let mut r = Reader::new(body, "ParameterStatus");
    let name = String::from_utf8_lossy(r.cstr_bytes()?).into_owned();
    let value = String::from_utf8_lossy(r.cstr_bytes()?).into_owned();
    Ok((name, value))
}

/// Body of ReadyForQuery: the transaction status byte.
pub fn parse_ready_for_query(body: &[u8]) -> Result<u8, FrameError> {
    match body {
        [s @ (b'I' | b'T' | b'E')] => Ok(*s),
        _ => Err(FrameError::Malformed { what: "ReadyForQuery" }),
    }
}

/// Body of CommandComplete: the command tag without its terminator.
pub fn parse_command_tag(body: &[u8]) -> &[u8] {
    body.strip_suffix(b"\0").unwrap_or(body)
}
