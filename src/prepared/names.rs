//! New proxy-wide statements and their names: a base name hashed from the text and parameter
//! types, an instance name unique in the process, and the per-thread cache that spares the
//! hash for the unnamed texts a client keeps sending.
//!
//! May import: [`super`] and [`super::messages`] (the Parse body it reads and the text it
//! stores); [`crate::wire`].

use super::messages::{parse_parts, put_cstr};
use super::{NameMap, Statement, PREFIX};
use crate::wire::frame::FrameError;
use bytes::{BufMut, BytesMut};
use std::sync::Arc;

/// Numbers the instances the proxy prepares (unique for the life of the process).
static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A new statement for a query and its parameter types: its base name is a hash of both, its
/// own name that and a number no other statement of this process has.
pub fn statement(query: &[u8], types: &[u8]) -> Statement {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    h.update(query);
    h.update(&[0]);
    h.update(types);
    let digest = h.finish();
    let mut base = String::with_capacity(PREFIX.len() + 24);
    base.push_str(PREFIX);
    for &b in &digest.as_ref()[..12] {
        base.push(char::from(HEX[usize::from(b >> 4)]));
        base.push(char::from(HEX[usize::from(b & 15)]));
    }
    let mut text = BytesMut::with_capacity(query.len() + 1 + types.len());
    put_cstr(&mut text, query);
    text.put_slice(types);
    Statement {
        name: instance_name(&base).into(),
        base: base.into(),
        text: text.freeze(),
        session_state: false,
        sets_config: false,
        custom_settings: Vec::new(),
        shape: std::sync::OnceLock::new(),
        tracked: true,
    }
}

/// A name for a new instance of the statements named `base` (at most 10 + 24 + 1 + 20 bytes,
/// below PostgreSQL's 63).
pub fn instance_name(base: &str) -> String {
    let n = INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{base}_{n}")
}

/// Most texts [`unnamed_statement`] remembers per thread in each of its two generations, and
/// their most bytes (each text counted twice, as its statement holds a Parse message with the
/// text, plus the rest of an entry). When the newer generation is full it becomes the older
/// one and the older is dropped; a text found in the older moves to the newer. A text looked
/// up again before a generation fills stays, however many others pass by, and at most twice
/// these limits are held. Longer texts are not remembered.
const UNNAMED_CACHE_ENTRIES: usize = 512;
const UNNAMED_CACHE_BYTES: usize = 512 << 10;
const UNNAMED_CACHE_LONGEST: usize = 16 << 10;

#[derive(Default)]
struct UnnamedCache {
    new: NameMap<Box<[u8]>, Arc<Statement>>,
    old: NameMap<Box<[u8]>, Arc<Statement>>,
    bytes: usize,
}

impl UnnamedCache {
    fn insert(&mut self, key: Box<[u8]>, stmt: Arc<Statement>) {
        let size = 2 * key.len() + 160;
        if self.new.len() >= UNNAMED_CACHE_ENTRIES || self.bytes + size > UNNAMED_CACHE_BYTES {
            std::mem::swap(&mut self.old, &mut self.new);
            self.new.clear(); // keeps its allocation
            self.bytes = 0;
        }
        self.bytes += size;
        self.new.insert(key, stmt);
    }
}

thread_local! {
    /// Proxy-wide statements of recent unnamed Parse texts: the same few texts come again and
    /// again, and deriving the name (SHA-256 of the text) costs more than looking it up.
    static UNNAMED: std::cell::RefCell<UnnamedCache> = std::cell::RefCell::default();
}

/// The proxy-wide statement for an unnamed Parse (with `PGSIDECAR_PREPARE_UNNAMED_STATEMENTS`):
/// `key` is the body after the empty name (text, its terminator and the parameter types);
/// `mark` records what the relay's scans found in the text on a statement made afresh. Texts
/// that may leave session state are not prepared this way: they stay unnamed.
pub fn unnamed_statement(
    key: &[u8],
    query: &[u8],
    types: &[u8],
    mark: impl FnOnce(&mut Statement),
) -> Arc<Statement> {
    let make = || {
        let mut stmt = statement(query, types);
        stmt.tracked = false;
        mark(&mut stmt);
        Arc::new(stmt)
    };
    if key.len() > UNNAMED_CACHE_LONGEST {
        return make();
    }
    UNNAMED.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(stmt) = c.new.get(key) {
            return stmt.clone();
        }
        let (key, stmt) = match c.old.remove_entry(key) {
            Some(found) => found,
            None => (key.into(), make()),
        };
        c.insert(key, stmt.clone());
        stmt
    })
}

/// Reads a Parse body: the client's statement name and, for a named statement, the
/// proxy-wide statement.
pub fn from_parse(body: &[u8]) -> Result<(Vec<u8>, Option<Statement>), FrameError> {
    let p = parse_parts(body)?;
    if p.name.is_empty() {
        return Ok((Vec::new(), None));
    }
    Ok((p.name.to_vec(), Some(statement(p.query, p.types))))
}

#[cfg(test)]
mod tests {
    use super::super::put_parse;
    use super::*;
    use crate::wire::frame::split_frame;

    /// The texts an application keeps sending stay remembered (the same statement, no new
    /// hash) while many others pass through the cache; the cache stays bounded. (The cache is
    /// per thread, and each test runs on a thread of its own.)
    #[test]
    fn unnamed_texts_in_use_stay_remembered_while_others_pass() {
        let lookup = |text: &str| {
            let body = parse_body("", text, &[]);
            let p = parse_parts(&body).unwrap();
            let mut marked = false;
            let stmt = unnamed_statement(&body[1..], p.query, p.types, |_| marked = true);
            (stmt, marked)
        };
        let (hot, made) = lookup("select hot");
        assert!(made);
        for i in 0..10 * UNNAMED_CACHE_ENTRIES {
            let (_, made) = lookup(&format!("select {i}"));
            assert!(made, "{i}: a new text");
            if i % 100 == 0 {
                let (again, made) = lookup("select hot");
                assert!(!made && Arc::ptr_eq(&again, &hot), "{i}: the text in use was forgotten");
            }
        }
        let (_, made) = lookup("select 0");
        assert!(made, "a text not sent for long is forgotten");
        // Long texts fill a generation by bytes first.
        let long = "x".repeat(8 << 10);
        for i in 0..4 * UNNAMED_CACHE_BYTES / (16 << 10) {
            lookup(&format!("select '{long}' -- {i}"));
            if i % 10 == 0 {
                let (again, made) = lookup("select hot");
                assert!(!made && Arc::ptr_eq(&again, &hot), "{i}: the text in use was forgotten");
            }
        }
        UNNAMED.with(|c| {
            let c = c.borrow();
            assert!(c.new.len() <= UNNAMED_CACHE_ENTRIES && c.old.len() <= UNNAMED_CACHE_ENTRIES);
            assert!(c.bytes <= UNNAMED_CACHE_BYTES);
            assert!(c.new.len() < 64, "{} long texts: the bytes limit swaps first", c.new.len());
        });
    }

    fn parse_body(name: &str, query: &str, types: &[i32]) -> Vec<u8> {
        let mut b = BytesMut::new();
        put_cstr(&mut b, name.as_bytes());
        put_cstr(&mut b, query.as_bytes());
        b.put_i16(types.len() as i16);
        for t in types {
            b.put_i32(*t);
        }
        b.to_vec()
    }

    #[test]
    fn same_query_and_types_share_a_base_and_never_a_name() {
        let (n1, a) = from_parse(&parse_body("s1", "select $1", &[23])).unwrap();
        let (n2, b) = from_parse(&parse_body("other", "select $1", &[23])).unwrap();
        let (_, c) = from_parse(&parse_body("s1", "select $1", &[25])).unwrap();
        let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
        assert_eq!((n1.as_slice(), n2.as_slice()), (&b"s1"[..], &b"other"[..]));
        assert_eq!(a.base, b.base);
        assert_ne!(a.name, b.name, "every Parse prepares an instance of its own");
        assert_ne!(a.base, c.base);
        assert!(a.name.starts_with(&*a.base) && a.name.starts_with(PREFIX) && a.name.len() < 63);
        // The rewritten Parse carries the instance name and the same query and types.
        let mut m = BytesMut::new();
        put_parse(&mut m, &a.name, &a, None);
        let (t, body) = split_frame(&mut m, 1 << 20).unwrap().unwrap();
        assert_eq!(t, b'P');
        assert_eq!(body.to_vec(), parse_body(&a.name, "select $1", &[23]));
        // Or the types PostgreSQL inferred, in place of the declared ones.
        let mut m = BytesMut::new();
        put_parse(&mut m, "x", &a, Some(b"\0\x01\0\0\0\x14"));
        let (_, body) = split_frame(&mut m, 1 << 20).unwrap().unwrap();
        assert_eq!(body.to_vec(), parse_body("x", "select $1", &[20]));
    }

    #[test]
    fn unnamed_and_malformed_parse() {
        assert_eq!(from_parse(&parse_body("", "select 1", &[])).unwrap(), (Vec::new(), None));
        assert!(from_parse(b"s1\0select 1\0\0\x02\0\0\0\x17").is_err());
        assert!(from_parse(b"s1\0select 1").is_err());
    }
}
