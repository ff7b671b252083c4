//! Entry points for the cargo-fuzz targets in `fuzz/` (and the seed replay in `cargo test`).
//!
//! Each function takes arbitrary bytes, drives the real code path with them and panics only
//! when an invariant breaks: a frame returned differently from how it was sent, a buffer
//! grown beyond the configured maximum, a handshake that neither finishes nor fails, a
//! login admitted without proof. Inputs are interpreted (a few control bytes, then chunks),
//! so the fuzzer can reach split reads and whole exchanges; see each function.
//!
//! Not part of the proxy's API: nothing here is used at run time.
//!
//! # Files
//!
//! One per target: `startup_packet` (startup.rs), `frame` (frame.rs), `pre_auth`
//! (pre_auth.rs, with the in-memory client it scripts in script.rs) and `post_auth`
//! (post_auth.rs). This one holds what they share: the reading of an input's control bytes
//! and a socket-like reader, and the seed replay. The targets import this file (and
//! pre_auth.rs imports script.rs), never each other. May import any part of the crate but
//! [`crate::proxy`].

mod frame;
mod post_auth;
mod pre_auth;
mod script;
mod startup;

pub use frame::frame;
pub use post_auth::post_auth;
pub use pre_auth::{client_handshake, pre_auth, HandshakeEnd};
pub use script::ScriptedStream;
pub use startup::startup_packet;

use bytes::{Buf, BytesMut};

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
            super::pre_auth::run_pre_auth(&std::fs::read(path).unwrap())
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
