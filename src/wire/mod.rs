//! The Postgres wire protocol, without any I/O.
//!
//! Everything here works on byte slices and `BytesMut`: framing of regular messages
//! ([`frame`]), the untyped startup packets ([`startup`]), and the few messages the proxy
//! itself builds or reads ([`messages`]). Sockets are glued on in `client` and `server`.
//!
//! May import nothing else of the crate: no I/O, no state.

pub mod frame;
pub mod messages;
pub mod startup;

#[cfg(test)]
mod tests;

/// Protocol 3.0 as sent in a StartupMessage.
pub const PROTOCOL_3_0: i32 = 196_608;
/// Request codes carried in the version field of untyped packets.
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// Postgres' own limit for a startup packet (src/include/libpq/pqcomm.h).
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// Largest message accepted from a client before it has authenticated.
pub const MAX_PRE_AUTH_MESSAGE: usize = 8 * 1024;

/// Whether `t` is a message type a client may send once logged in.
pub fn is_frontend_tag(t: u8) -> bool {
    use tag::*;
    matches!(
        t,
        QUERY
            | PARSE
            | BIND
            | DESCRIBE
            | EXECUTE
            | CLOSE
            | SYNC
            | FLUSH
            | TERMINATE
            | FUNCTION_CALL
            | COPY_DATA
            | COPY_DONE
            | COPY_FAIL
    )
}

/// Message type bytes the proxy acts on.
pub mod tag {
    // frontend
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const TERMINATE: u8 = b'X';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const PASSWORD: u8 = b'p';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    // backend
    pub const AUTHENTICATION: u8 = b'R';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const DATA_ROW: u8 = b'D';
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
}
