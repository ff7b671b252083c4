//! Named prepared statements in transaction mode.
//!
//! A client's named statement is stored under a proxy-wide name derived from its query text
//! and parameter types (`pgsidecar_<hash>`), so that clients preparing the same statement
//! share it on every server. Each server connection remembers which proxy-wide statements it
//! holds ([`ServerStatements`], a bounded LRU whose evictions are closed on the server); each
//! client maps its own names to proxy-wide statements ([`ClientStatements`]). The relay
//! rewrites Parse, Bind, Describe and Close with these names and prepares a statement on a
//! server that lacks it, in the same batch as the client's message.
//!
//! # Files
//!
//! - this one: a proxy-wide [`Statement`] and its [`Shape`], the maps keyed by names.
//! - `names.rs`: new statements and their names ([`statement`], [`instance_name`]), and the
//!   per-thread cache of unnamed texts ([`unnamed_statement`]).
//! - `client.rs`: one client's names ([`ClientStatements`]).
//! - `server.rs`: the instances one server holds, by name, text and shape ([`ServerStatements`]).
//! - `messages.rs`: the rewriting: Parse, Bind, Describe and Close read and written.
//! - `sql.rs`: the SQL commands about prepared statements the proxy reads (`DEALLOCATE`,
//!   `DISCARD ALL`, `EXECUTE`).
//!
//! Everything is used as `crate::prepared::X` (re-exported here). May import:
//! [`crate::wire`] and [`crate::observe`] (the hashing seed); never the client or server
//! side. Within it, the files import this one, and names.rs imports messages.rs; no other.

mod client;
mod messages;
mod names;
mod server;
mod sql;

pub use client::ClientStatements;
pub use messages::{
    bind_parts, parse_parts, parse_texts, put_bind, put_parse, put_statement_message, target, BindParts,
    ParseParts,
};
pub use names::{from_parse, instance_name, statement, unnamed_statement};
pub use server::ServerStatements;
pub use sql::{sql_command, sql_execute, SqlCommand};

use crate::wire::frame::{FrameError, Reader};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;

/// Hashing for the maps keyed by statement names: foldhash, seeded per process. Std's SipHash
/// cost about 200 instructions per name (callgrind), and a Bind of a named statement looks up
/// three maps. The names a client chooses go only into its own maps, which are bounded.
#[derive(Clone, Debug)]
pub struct NameHash(foldhash::fast::FixedState);

impl Default for NameHash {
    fn default() -> NameHash {
        NameHash(foldhash::fast::FixedState::with_seed(crate::observe::normalize::seed()))
    }
}

impl std::hash::BuildHasher for NameHash {
    type Hasher = foldhash::fast::FoldHasher<'static>;

    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

/// A map keyed by statement names.
pub type NameMap<K, V> = HashMap<K, V, NameHash>;

/// Prefix of proxy-wide statement names.
pub const PREFIX: &str = "pgsidecar_";

/// Most named statements one client may hold at once.
pub const MAX_PER_CLIENT: usize = 10_000;

/// A statement as the servers know it.
#[derive(Debug)]
pub struct Statement {
    /// This statement's own name on the servers: `pgsidecar_<hash>_<n>`, made afresh for
    /// every client Parse, so that a Parse always prepares the text as the database is now.
    pub name: Arc<str>,
    /// `pgsidecar_<hash>` of the query text and declared parameter types: the instances of
    /// one text on a server are found by it.
    pub base: Arc<str>,
    /// The body of a Parse after the statement name: query text, terminator, parameter types.
    pub text: Bytes,
    /// Its text may create or remove session state (the relay's scan says so): every
    /// execution makes the proxy count the state on the server before giving it back.
    pub session_state: bool,
    /// Its text calls `set_config`: every execution makes the proxy read the session's
    /// settings back before giving the server to someone else.
    pub sets_config: bool,
    /// The custom (dotted) settings its text sets, noted at every execution for the
    /// read-back (usually none).
    pub custom_settings: Vec<String>,
    /// The shape PostgreSQL gave the statement when the client prepared it (learned from a
    /// Describe the proxy adds). PostgreSQL keeps a statement's result shape for its life, so
    /// another server's instance is used for it only when it has the same shape.
    pub shape: std::sync::OnceLock<Shape>,
    /// The shape is followed (a client's named statement). Unnamed statements shared between
    /// clients (PGSIDECAR_PREPARE_UNNAMED_STATEMENTS) use any instance of their text.
    pub tracked: bool,
}

impl PartialEq for Statement {
    fn eq(&self, other: &Statement) -> bool {
        self.name == other.name
    }
}

impl Eq for Statement {}

/// What a Describe of a statement said: the parameter types (as a Parse declares them: a
/// count, then the type oids) and a fingerprint of both descriptions (the parameter types,
/// then each result column's name, type and type modifier: what PostgreSQL compares when it
/// decides that a cached plan changed its result type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub param_types: Bytes,
    pub fingerprint: u64,
}

impl Shape {
    /// From the bodies of ParameterDescription and RowDescription (`None`: NoData).
    pub fn from_descriptions(params: &[u8], rows: Option<&[u8]>) -> Result<Shape, FrameError> {
        use std::hash::{BuildHasher, Hasher};
        let mut h = foldhash::fast::FixedState::with_seed(0x7067_7369_6465_6361).build_hasher();
        let mut r = Reader::new(params, "ParameterDescription");
        let n = r.i16()?;
        if n < 0 || r.remaining().len() != n as usize * 4 {
            return Err(FrameError::Malformed { what: "ParameterDescription" });
        }
        h.write(params);
        match rows {
            None => h.write_u8(0),
            Some(rows) => {
                h.write_u8(1);
                let mut r = Reader::new(rows, "RowDescription");
                let n = r.i16()?;
                h.write_i16(n);
                for _ in 0..n.max(0) {
                    h.write(r.cstr_bytes()?);
                    h.write_u8(0);
                    let _table = r.i32()?;
                    let _column = r.i16()?;
                    h.write_i32(r.i32()?); // type oid
                    let _len = r.i16()?;
                    h.write_i32(r.i32()?); // type modifier
                    let _format = r.i16()?;
                }
            }
        }
        Ok(Shape { param_types: Bytes::copy_from_slice(params), fingerprint: h.finish() | 1 })
    }
}

#[cfg(test)]
mod tests {
    use super::messages::put_cstr;
    use super::*;
    use bytes::{BufMut, BytesMut};

    #[test]
    fn shapes_differ_by_column_type_and_name_not_by_format() {
        fn row(name: &str, oid: i32, format: i16) -> Vec<u8> {
            let mut b = BytesMut::new();
            b.put_i16(1);
            put_cstr(&mut b, name.as_bytes());
            b.put_i32(0);
            b.put_i16(0);
            b.put_i32(oid);
            b.put_i16(4);
            b.put_i32(-1);
            b.put_i16(format);
            b.to_vec()
        }
        let none = b"\0\0";
        let a = Shape::from_descriptions(none, Some(&row("a", 23, 0))).unwrap();
        assert_eq!(a, Shape::from_descriptions(none, Some(&row("a", 23, 1))).unwrap());
        assert_ne!(a, Shape::from_descriptions(none, Some(&row("a", 20, 0))).unwrap());
        assert_ne!(a, Shape::from_descriptions(none, Some(&row("b", 23, 0))).unwrap());
        assert_ne!(a, Shape::from_descriptions(none, None).unwrap());
        assert_ne!(a.fingerprint, 0, "0 stands for an unknown shape");
        assert!(Shape::from_descriptions(b"\0\x01", None).is_err());
    }
}
