//! Named prepared statements in transaction mode.
//!
//! A client's named statement is stored under a proxy-wide name derived from its query text
//! and parameter types (`pgsidecar_<hash>`), so that clients preparing the same statement
//! share it on every server. Each server connection remembers which proxy-wide statements it
//! holds ([`ServerStatements`], a bounded LRU whose evictions are closed on the server); each
//! client maps its own names to proxy-wide statements ([`ClientStatements`]). The relay
//! rewrites Parse, Bind, Describe and Close with these names and prepares a statement on a
//! server that lacks it, in the same batch as the client's message.

use crate::wire::frame::{FrameError, Reader};
use crate::wire::tag;
use bytes::{BufMut, Bytes, BytesMut};
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

/// Appends a message to `buf` (no buffer of its own: the relay writes straight into the
/// server's output).
fn put_message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    let start = buf.len();
    buf.put_u8(tag);
    buf.put_i32(0);
    body(buf);
    let len = (buf.len() - start - 1) as i32;
    buf[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    buf.put_slice(s);
    buf.put_u8(0);
}

/// Appends the Parse of `stmt` under `name`; with `types`, those parameter types instead of
/// the declared ones (the types PostgreSQL inferred when the client prepared it).
pub fn put_parse(out: &mut BytesMut, name: &str, stmt: &Statement, types: Option<&[u8]>) {
    put_message(out, tag::PARSE, |b| {
        put_cstr(b, name.as_bytes());
        match types {
            None => b.put_slice(&stmt.text),
            Some(types) => {
                let query_end = stmt.text.iter().position(|&c| c == 0).map_or(stmt.text.len(), |i| i + 1);
                b.put_slice(&stmt.text[..query_end]);
                b.put_slice(types);
            }
        }
    })
}

/// The parts of a Parse body.
pub struct ParseParts<'a> {
    /// The client's statement name (empty: the unnamed statement).
    pub name: &'a [u8],
    pub query: &'a [u8],
    /// The parameter types, their count included, as sent.
    pub types: &'a [u8],
}

/// Splits a Parse body, checking that the parameter types fill the rest of it.
pub fn parse_parts(body: &[u8]) -> Result<ParseParts<'_>, FrameError> {
    let mut r = Reader::new(body, "Parse");
    let name = r.cstr_bytes()?;
    let query = r.cstr_bytes()?;
    let types = r.remaining();
    let mut count = Reader::new(types, "Parse");
    let n = count.i16()?;
    if n < 0 || count.remaining().len() != n as usize * 4 {
        return Err(FrameError::Malformed { what: "Parse" });
    }
    Ok(ParseParts { name, query, types })
}

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

/// Statement name and query text of a Parse body.
pub fn parse_texts(body: &[u8]) -> Result<(&[u8], &[u8]), FrameError> {
    let mut r = Reader::new(body, "Parse");
    Ok((r.cstr_bytes()?, r.cstr_bytes()?))
}

/// The parts of a Bind body.
pub struct BindParts<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    /// Parameter formats, values and result formats, as sent.
    pub rest: &'a [u8],
}

/// Splits a Bind body into portal name, statement name and the rest.
pub fn bind_parts(body: &[u8]) -> Result<BindParts<'_>, FrameError> {
    let mut r = Reader::new(body, "Bind");
    let portal = r.cstr_bytes()?;
    let statement = r.cstr_bytes()?;
    Ok(BindParts { portal, statement, rest: r.remaining() })
}

/// Appends a Bind message naming the proxy-wide statement instead of the client's.
pub fn put_bind(out: &mut BytesMut, portal: &[u8], statement: &str, rest: &[u8]) {
    put_message(out, tag::BIND, |b| {
        put_cstr(b, portal);
        put_cstr(b, statement.as_bytes());
        b.put_slice(rest);
    })
}

/// Kind ('S' or 'P') and name of a Describe or Close body.
pub fn target<'a>(body: &'a [u8], what: &'static str) -> Result<(u8, &'a [u8]), FrameError> {
    let mut r = Reader::new(body, what);
    let kind = r.u8()?;
    let name = r.cstr_bytes()?;
    if !matches!(kind, b'S' | b'P') || !r.is_empty() {
        return Err(FrameError::Malformed { what });
    }
    Ok((kind, name))
}

/// Appends a Describe or Close ('D' / 'C') of a statement by name.
pub fn put_statement_message(out: &mut BytesMut, msg_tag: u8, name: &str) {
    put_message(out, msg_tag, |b| {
        b.put_u8(b'S');
        put_cstr(b, name.as_bytes());
    })
}

/// One client's statement names. The map is boxed and made at the first name: most clients
/// name none, and every idle client keeps this (8 B instead of a 48 B empty map).
#[derive(Debug, Default)]
pub struct ClientStatements {
    // The extra allocation is the point: 8 B inline until a client names a statement.
    #[allow(clippy::box_collection)]
    map: Option<Box<NameMap<Vec<u8>, Arc<Statement>>>>,
}

impl ClientStatements {
    pub fn get(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.map.as_ref()?.get(name)
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.map.as_ref().is_some_and(|m| m.contains_key(name))
    }

    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn insert(&mut self, name: Vec<u8>, s: Arc<Statement>) {
        self.map.get_or_insert_default().insert(name, s);
    }

    /// Why the client may not prepare `name` now: it exists (42P05, as Postgres says), or
    /// the client holds [`MAX_PER_CLIENT`] statements already (53400).
    pub fn refuse_parse(&self, name: &[u8]) -> Option<crate::wire::messages::PgError> {
        use crate::wire::messages::PgError;
        if self.contains(name) {
            return Some(PgError::error(
                "42P05",
                format!("prepared statement \"{}\" already exists", String::from_utf8_lossy(name)),
            ));
        }
        (self.len() >= MAX_PER_CLIENT).then(|| {
            PgError::error(
                "53400",
                format!(
                    "pgsidecar: this connection holds {MAX_PER_CLIENT} prepared statements, the most it may"
                ),
            )
            .with_hint("close statements the application no longer uses")
        })
    }

    pub fn remove(&mut self, name: &[u8]) -> bool {
        self.take(name).is_some()
    }

    pub fn take(&mut self, name: &[u8]) -> Option<Arc<Statement>> {
        self.map.as_mut()?.remove(name)
    }

    pub fn clear(&mut self) {
        if let Some(m) = &mut self.map {
            m.clear();
        }
    }

    /// Every name and its statement (the client's map is left as it is).
    pub fn into_entries(self) -> impl Iterator<Item = (Vec<u8>, Arc<Statement>)> {
        self.map.into_iter().flat_map(|m| m.into_iter())
    }
}

/// An instance of a statement on a server.
#[derive(Debug)]
struct Instance {
    tick: u64,
    base: Arc<str>,
    /// The fingerprint of its shape (0 until its Describe is answered).
    shape: u64,
}

/// The statement instances one server holds, least recently used first out.
#[derive(Debug)]
pub struct ServerStatements {
    used: NameMap<Arc<str>, Instance>,
    /// The instances of each base name.
    bases: NameMap<Arc<str>, Vec<Arc<str>>>,
    tick: u64,
    capacity: usize,
    /// Evicted statements still to be closed on the server.
    pub to_close: Vec<Arc<str>>,
}

impl ServerStatements {
    pub fn new(capacity: usize) -> Self {
        ServerStatements {
            used: NameMap::default(),
            bases: NameMap::default(),
            tick: 0,
            capacity: capacity.max(1),
            to_close: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }

    /// Whether the server holds `name`; marks it used.
    pub fn touch(&mut self, name: &str) -> bool {
        self.tick += 1;
        match self.used.get_mut(name) {
            Some(i) => {
                i.tick = self.tick;
                true
            }
            None => false,
        }
    }

    /// An instance of `base` whose shape has fingerprint `shape` (with 0, any instance), the
    /// most recently used first; marks it used.
    pub fn find(&mut self, base: &str, shape: u64) -> Option<Arc<str>> {
        let names = self.bases.get(base)?;
        let best = names
            .iter()
            .filter_map(|n| self.used.get(n).map(|i| (n, i)))
            .filter(|(_, i)| if shape == 0 { true } else { i.shape == shape })
            .max_by_key(|(_, i)| i.tick)
            .map(|(n, _)| n.clone())?;
        self.touch(&best);
        Some(best)
    }

    /// Records that `name`, an instance of `base`, is being prepared; evicts the least
    /// recently used beyond capacity.
    pub fn insert(&mut self, name: Arc<str>, base: Arc<str>) {
        // A name still waiting in `to_close` exists on the server: it is closed before being
        // prepared again, in the same batch.
        self.tick += 1;
        self.bases.entry(base.clone()).or_default().push(name.clone());
        if let Some(old) = self.used.insert(name.clone(), Instance { tick: self.tick, base, shape: 0 }) {
            self.unlink(&name, &old.base);
            self.bases.entry(old.base).or_default().push(name);
        }
        while self.used.len() > self.capacity {
            let oldest = self.used.iter().min_by_key(|(_, i)| i.tick).map(|(n, _)| n.clone());
            match oldest {
                Some(n) => {
                    self.forget(&n);
                    self.to_close.push(n);
                }
                None => break,
            }
        }
    }

    /// The instance's Describe was answered. Older instances of the same text and shape are
    /// retired (closed before the next Parse): clients that used them find this one, and a
    /// server keeps about one instance per text and shape however many clients prepare it.
    pub fn set_shape(&mut self, name: &str, shape: u64) {
        let Some(i) = self.used.get_mut(name) else { return };
        i.shape = shape;
        let base = i.base.clone();
        let same: Vec<Arc<str>> = self
            .bases
            .get(&base)
            .into_iter()
            .flatten()
            .filter(|n| &***n != name && self.used.get(*n).is_some_and(|i| i.shape == shape))
            .cloned()
            .collect();
        for n in same {
            self.forget(&n);
            self.to_close.push(n);
        }
    }

    fn unlink(&mut self, name: &str, base: &str) {
        if let Some(names) = self.bases.get_mut(base) {
            names.retain(|n| &**n != name);
            if names.is_empty() {
                self.bases.remove(base);
            }
        }
    }

    /// The server does not hold `name` (its Parse failed).
    pub fn forget(&mut self, name: &str) {
        if let Some(i) = self.used.remove(name) {
            self.unlink(name, &i.base);
        }
    }

    /// Every statement is to be closed and prepared afresh on next use (after DDL changed a
    /// result type).
    pub fn invalidate_all(&mut self) {
        let names: Vec<Arc<str>> = self.used.drain().map(|(n, _)| n).collect();
        self.bases.clear();
        self.to_close.extend(names);
    }

    /// The server's statements are gone (DISCARD ALL, DEALLOCATE ALL).
    pub fn clear(&mut self) {
        self.used.clear();
        self.bases.clear();
        self.to_close.clear();
    }
}

/// SQL statements about prepared statements that the proxy handles itself for a client.
#[derive(Debug, PartialEq, Eq)]
pub enum SqlCommand<'a> {
    Deallocate(&'a str),
    DeallocateAll,
    DiscardAll,
}

/// Recognises `DEALLOCATE [PREPARE] name`, `DEALLOCATE [PREPARE] ALL` and `DISCARD ALL` when
/// they are the whole query (an optional trailing semicolon allowed).
pub fn sql_command(query: &[u8]) -> Option<SqlCommand<'_>> {
    // Runs on every simple query: both commands start with a 'd', so a text whose first
    // byte after ASCII white space (vertical tab included, as `trim` has it) is another ASCII
    // byte is refused before it is validated and split. Non-ASCII goes the long way.
    let first = query.iter().find(|c| !(c.is_ascii_whitespace() || **c == 0x0b));
    if first.is_none_or(|&c| c < 0x80 && c | 0x20 != b'd') {
        return None;
    }
    let text = std::str::from_utf8(query.strip_suffix(b"\0").unwrap_or(query)).ok()?;
    let text = text.trim().trim_end_matches(';').trim_end();
    let mut words = text.split_ascii_whitespace();
    let first = words.next()?;
    if first.eq_ignore_ascii_case("discard") {
        let all = words.next()?;
        return (all.eq_ignore_ascii_case("all") && words.next().is_none()).then_some(SqlCommand::DiscardAll);
    }
    if !first.eq_ignore_ascii_case("deallocate") {
        return None;
    }
    let mut name = words.next()?;
    if name.eq_ignore_ascii_case("prepare") {
        name = words.next()?;
    }
    if words.next().is_some() {
        return None;
    }
    if name.eq_ignore_ascii_case("all") {
        return Some(SqlCommand::DeallocateAll);
    }
    // A quoted identifier keeps its case; an unquoted one is folded to lower case by Postgres,
    // and statement names from drivers are lower case already.
    let name = name.strip_prefix('"').and_then(|n| n.strip_suffix('"')).unwrap_or(name);
    Some(SqlCommand::Deallocate(name))
}

/// Where the statement name is in a query that starts with `EXECUTE name`: its byte range in
/// `query` and the name as PostgreSQL reads it (an unquoted name folded to lower case).
pub fn sql_execute(query: &[u8]) -> Option<(std::ops::Range<usize>, Vec<u8>)> {
    let start = query.iter().position(|c| !(c.is_ascii_whitespace() || *c == 0x0b))?;
    let keyword = query.get(start..start + 7)?;
    if !keyword.eq_ignore_ascii_case(b"execute") {
        return None;
    }
    let mut at = start + 7;
    let gap = query[at..].iter().take_while(|c| c.is_ascii_whitespace() || **c == 0x0b).count();
    if gap == 0 {
        return None;
    }
    at += gap;
    if query.get(at) == Some(&b'"') {
        // A quoted name: "" stands for one quote.
        let mut name = Vec::new();
        let mut i = at + 1;
        loop {
            match (query.get(i)?, query.get(i + 1)) {
                (b'"', Some(b'"')) => {
                    name.push(b'"');
                    i += 2;
                }
                // PostgreSQL refuses a zero-length name.
                (b'"', _) => return (!name.is_empty()).then_some((at..i + 1, name)),
                (&c, _) => {
                    name.push(c);
                    i += 1;
                }
            }
        }
    }
    let len = query[at..]
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$') || **c >= 0x80)
        .count();
    if len == 0 || query[at].is_ascii_digit() || query[at] == b'$' {
        return None;
    }
    Some((at..at + len, query[at..at + len].to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::split_frame;

    #[test]
    fn execute_names_are_found_as_postgres_reads_them() {
        let name = |q: &str| sql_execute(q.as_bytes()).map(|(r, n)| (r, String::from_utf8(n).unwrap()));
        assert_eq!(name("EXECUTE s1(1, 2)"), Some((8..10, "s1".into())));
        assert_eq!(name("  execute\tS_1 ;"), Some((10..13, "s_1".into())));
        assert_eq!(name("execute \"My \"\"x\"\"\" (1)"), Some((8..18, "My \"x\"".into())));
        assert_eq!(name("executes s1"), None);
        assert_eq!(name("execute"), None);
        assert_eq!(name("execute 1"), None);
        assert_eq!(name("execute \"open"), None);
        assert_eq!(name("execute \"\"(1)"), None);
        assert_eq!(name("select 1"), None);
    }

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

    #[test]
    fn unnamed_and_malformed_parse() {
        assert_eq!(from_parse(&parse_body("", "select 1", &[])).unwrap(), (Vec::new(), None));
        assert!(from_parse(b"s1\0select 1\0\0\x02\0\0\0\x17").is_err());
        assert!(from_parse(b"s1\0select 1").is_err());
    }

    #[test]
    fn bind_is_rewritten_keeping_parameters() {
        let mut body = BytesMut::new();
        put_cstr(&mut body, b"portal");
        put_cstr(&mut body, b"s1");
        body.put_slice(b"\0\0\0\x01\0\0\0\x01x\0\0");
        let b = bind_parts(&body).unwrap();
        assert_eq!((b.portal, b.statement), (&b"portal"[..], &b"s1"[..]));
        // Appended after what the buffer holds already.
        let mut m = BytesMut::from(&b"H\0\0\0\x04"[..]);
        put_bind(&mut m, b.portal, "pgsidecar_ab", b.rest);
        assert_eq!(split_frame(&mut m, 1 << 20).unwrap().unwrap().0, b'H');
        let (_, new_body) = split_frame(&mut m, 1 << 20).unwrap().unwrap();
        assert_eq!(&new_body[..], b"portal\0pgsidecar_ab\0\0\0\0\x01\0\0\0\x01x\0\0");
    }

    #[test]
    fn server_cache_evicts_least_recently_used() {
        let mut s = ServerStatements::new(2);
        s.insert("a".into(), "x".into());
        s.insert("b".into(), "x".into());
        assert!(s.touch("a"));
        s.insert("c".into(), "y".into());
        assert!(s.touch("a") && s.touch("c") && !s.touch("b"));
        assert_eq!(s.to_close, vec![Arc::<str>::from("b")]);
        s.insert("b".into(), "x".into());
        assert!(s.to_close.iter().any(|n| &**n == "b"), "closed before it is prepared again");
    }

    #[test]
    fn instances_are_found_by_base_and_shape() {
        let mut s = ServerStatements::new(10);
        s.insert("x_1".into(), "x".into());
        s.insert("x_2".into(), "x".into());
        assert_eq!(s.find("x", 7), None, "no shape known yet");
        s.set_shape("x_1", 7);
        s.set_shape("x_2", 9);
        assert_eq!(s.find("x", 7).as_deref(), Some("x_1"));
        assert_eq!(s.find("x", 9).as_deref(), Some("x_2"));
        assert_eq!(s.find("x", 0).as_deref(), Some("x_2"), "any shape: the latest used");
        s.forget("x_2");
        assert_eq!(s.find("x", 9), None);
        // A newer instance of the same shape retires the older one.
        s.insert("x_3".into(), "x".into());
        s.set_shape("x_3", 7);
        assert_eq!(s.find("x", 7).as_deref(), Some("x_3"));
        assert!(!s.touch("x_1") && s.to_close == [Arc::<str>::from("x_1")]);
        s.to_close.clear();
        s.invalidate_all();
        assert_eq!(s.find("x", 7), None);
        assert_eq!(s.to_close.len(), 1);
    }

    #[test]
    fn sql_commands() {
        assert_eq!(sql_command(b"DEALLOCATE s1\0"), Some(SqlCommand::Deallocate("s1")));
        assert_eq!(sql_command(b"deallocate prepare \"S1\";"), Some(SqlCommand::Deallocate("S1")));
        assert_eq!(sql_command(b"DEALLOCATE ALL"), Some(SqlCommand::DeallocateAll));
        assert_eq!(sql_command(b" discard all ; "), Some(SqlCommand::DiscardAll));
        assert_eq!(sql_command(b"discard plans"), None);
        assert_eq!(sql_command(b"select 1"), None);
        assert_eq!(sql_command(b"deallocate a; select 1"), None);
        assert_eq!(sql_command(b"\x0b\tDEALLOCATE s2"), Some(SqlCommand::Deallocate("s2")));
        assert_eq!(sql_command("\u{3000}discard all".as_bytes()), Some(SqlCommand::DiscardAll));
    }
}
