//! The protocol state of a client-server attachment: which responses the server still owes,
//! when the server may go back to the pool, and (in transaction mode) the rewriting of named
//! prepared statements.
//!
//! Bytes are forwarded as received. Only message headers are read, except for the messages
//! the proxy must understand, which are small and bounded: from the server ReadyForQuery,
//! ParameterStatus, CommandComplete, ErrorResponse and the one-byte completions; from the
//! client Query, Parse, Bind, Describe and Close. Large messages (a huge DataRow, CopyData)
//! stream through in pieces, so memory per connection stays bounded whatever the result size.
//!
//! In transaction mode every request is recorded in a queue of expected responses, in order.
//! That lets the proxy answer some requests itself (a Close of a statement it manages), send
//! requests the client did not (a Parse on a server that lacks the statement) and drop their
//! answers, and still hand the client exactly the responses, in the order, it would get from
//! Postgres.

use crate::observe::normalize;
use crate::prepared::{self, ClientStatements, ServerStatements, SqlCommand, Statement};
use crate::wire::frame::{FrameError, Header, HEADER_LEN};
use crate::wire::messages::{
    self, parse_command_tag, parse_parameter_status, parse_ready_for_query, ErrorFields,
};
use crate::wire::tag;
use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::Arc;

/// Stop moving bytes towards a side once this much is waiting to be written to it.
pub const WRITE_HIGH: usize = 64 * 1024;
/// Stop reading from a side once this much of it is buffered (unless a whole message the
/// proxy must read is larger).
pub const READ_HIGH: usize = 64 * 1024;
/// Largest message streamed through: anything the length field can express.
pub const MAX_STREAMED: usize = i32::MAX as usize;

const PARSE_COMPLETE: &[u8] = b"1\0\0\0\x04";
const FLUSH: &[u8] = b"H\0\0\0\x04";
const SYNC: &[u8] = b"S\0\0\0\x04";
/// PostgreSQL's error for a statement whose result changed since it was prepared, field for
/// field as PostgreSQL 15 sends it: pgJDBC and asyncpg re-prepare on it, and they recognise it
/// by its routine (R), not by its text.
const STALE_PLAN: &[(u8, &str)] = &[
    (b'S', "ERROR"),
    (b'V', "ERROR"),
    (b'C', "0A000"),
    (b'M', "cached plan must not change result type"),
    (b'F', "plancache.c"),
    (b'L', "722"),
    (b'R', "RevalidateCachedQuery"),
];
/// Most responses a client may have outstanding (each costs an entry in the relay's queue):
/// past it the relay stops reading the client until the server catches up.
pub const MAX_EXPECTED: usize = 4096;
const CLOSE_COMPLETE: &[u8] = b"3\0\0\0\x04";

/// Why [`Relay::client_to_server`] or [`Relay::server_to_client`] stopped moving messages:
/// the session waits on a socket only when neither direction can move anything more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The input holds nothing more that can move now: a message is incomplete, or nothing
    /// more may be sent until the server answers. Only a read can change that.
    Input,
    /// The output reached [`WRITE_HIGH`]: more moves once it has been written out, and the
    /// input may hold whole messages meanwhile.
    Output,
    /// A ReadyForQuery left the server at rest (server to client only): what follows it in
    /// the input was not looked at.
    Rest,
}

/// Whether a client message of type `tag` is read whole before it moves on: Query, Parse and
/// Bind for their text (timing, slow-query log), Describe and Close for statement names.
/// Other messages stream through in pieces.
pub fn read_whole(tag: u8) -> bool {
    matches!(tag, tag::QUERY | tag::PARSE | tag::BIND | tag::DESCRIBE | tag::CLOSE)
}

/// Whether a statement may create session state outliving a transaction (or remove it): a
/// statement containing one of these words makes the proxy check the server before giving it to
/// someone else. A word matches at a word start (after a byte that is not a letter) as a prefix,
/// so `pg_advisory_lock`, `TEMPORARY` and `prepared` match and `unlisten` is a word of its own.
/// False positives only cost a check.
fn mentions_session_state(sql: &[u8]) -> bool {
    // Runs on every statement: eight bytes at a time find the word starts (a letter after a
    // byte that is not one), and the comparisons run only at a word start whose first letter
    // begins one of the words.
    const ONES: u64 = 0x0101_0101_0101_0101;
    let mut chunks = sql.chunks_exact(8);
    let mut base = 0;
    // The high bit of the byte before the current chunk's first, when it was a letter.
    let mut carry = 0u64;
    for chunk in &mut chunks {
        // OR-ing 0x20 makes exactly the ASCII letters land in 'a'..='z'; the high bit of each
        // byte of `letters` says whether it is there (exact per byte: no carry crosses bytes).
        let x = u64::from_le_bytes(chunk.try_into().expect("8 bytes")) | (ONES * 0x20);
        let low = x & (ONES * 0x7f);
        let letters =
            (ONES * (127 + 0x7b)).wrapping_sub(low) & !x & (low + ONES * (127 - 0x60)) & (ONES * 0x80);
        let mut starts = letters & !((letters << 8) | carry);
        while starts != 0 {
            let i = base + (starts.trailing_zeros() / 8) as usize;
            if LETTERS[sql[i] as usize] == STARTS_WORD && starts_state_word(&sql[i..]) {
                return true;
            }
            starts &= starts - 1;
        }
        carry = letters >> 56;
        base += 8;
    }
    let mut prev_letter = carry != 0;
    for (k, &c) in chunks.remainder().iter().enumerate() {
        let class = LETTERS[c as usize];
        if class == STARTS_WORD && !prev_letter && starts_state_word(&sql[base + k..]) {
            return true;
        }
        prev_letter = class != 0;
    }
    false
}

/// The proxy-wide statement for a client's named Parse, marked when its text may leave
/// session state: its Binds, in this transaction or any later one, make the proxy count the
/// state on the server before giving it back.
pub fn managed_statement(query: &[u8], types: &[u8]) -> Statement {
    let mut stmt = prepared::statement(query, types);
    mark(&mut stmt, query, scan_facts(query));
    stmt
}

/// Records on a statement what the scans found in its text (`facts`), for its executions.
fn mark(stmt: &mut Statement, query: &[u8], facts: u8) {
    stmt.session_state = facts & MENTIONS_SESSION_STATE != 0;
    stmt.sets_config = facts & CALLS_SET_CONFIG != 0;
    if facts & MAY_NAME_CUSTOM_SETTINGS != 0 {
        crate::params::custom_setting_names(query, &mut stmt.custom_settings);
    }
}

/// Facts the relay remembers with a statement's text (see [`normalize::recall`]).
const MENTIONS_SESSION_STATE: u8 = 1;
const MAY_NAME_CUSTOM_SETTINGS: u8 = 2;
/// The text calls `set_config`, which changes a setting without the SET command tag that
/// otherwise tells the relay to read the settings back.
const CALLS_SET_CONFIG: u8 = 4;

/// Whether `sql` contains `set_config` in any case (a false positive costs one read-back).
fn calls_set_config(sql: &[u8]) -> bool {
    memchr::memchr_iter(b'_', sql).any(|at| {
        at >= 3
            && sql[at - 3..at].eq_ignore_ascii_case(b"set")
            && sql.get(at + 1..at + 7).is_some_and(|w| w.eq_ignore_ascii_case(b"config"))
    })
}

/// A statement's fingerprint (when it can be remembered) and what the relay's scans find in
/// it: remembered for texts that differ from it only in the digits of numbers, which changes
/// neither (the runs of letters stay the same, in the same order, as no run of digits
/// appears or vanishes).
fn text_facts(text: &[u8]) -> (Option<u64>, u8) {
    if let Some(r) = normalize::recall(text) {
        return (Some(r.fingerprint), r.facts);
    }
    let facts = scan_facts(text);
    // Computed here for a text that can be remembered (the facts go with it); a longer one's
    // only when the statement is counted.
    let fingerprint = (text.len() <= normalize::REMEMBERED_MAX_TEXT).then(|| {
        let fingerprint = normalize::fingerprint(text);
        normalize::remember(text, normalize::Recalled { fingerprint, facts });
        fingerprint
    });
    (fingerprint, facts)
}

/// What the relay's scans find in a statement's text: [`MENTIONS_SESSION_STATE`],
/// [`MAY_NAME_CUSTOM_SETTINGS`], [`CALLS_SET_CONFIG`].
fn scan_facts(text: &[u8]) -> u8 {
    let mut facts = 0;
    if mentions_session_state(text) {
        facts |= MENTIONS_SESSION_STATE;
    }
    if crate::params::may_name_custom_settings(text) {
        facts |= MAY_NAME_CUSTOM_SETTINGS;
    }
    if calls_set_config(text) {
        facts |= CALLS_SET_CONFIG;
    }
    facts
}

/// Byte classes for [`mentions_session_state`]: 0 not a letter, 1 a letter, 2 a letter that
/// begins one of the words.
const STARTS_WORD: u8 = 2;
static LETTERS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        if b.is_ascii_alphabetic() {
            t[c] = if matches!(b | 0x20, b'p' | b'd' | b'l' | b'u' | b'c' | b't' | b'a') {
                STARTS_WORD
            } else {
                1
            };
        }
        c += 1;
    }
    t
};

/// The words of [`mentions_session_state`], grouped by first letter.
const WORDS: [&[u8]; 10] = [
    b"prepare",
    b"deallocate",
    b"declare",
    b"discard",
    b"drop",
    b"listen",
    b"unlisten",
    b"close",
    b"temp",
    b"advisory",
];

/// The words, as up to 8 lower-case bytes (little-endian) and a mask of their length; longer
/// words are matched on their first 8 letters, which only adds false positives.
const STATE_WORDS: [(u64, u64); 10] = {
    let mut out = [(0u64, 0u64); 10];
    let mut i = 0;
    while i < WORDS.len() {
        let w = WORDS[i];
        let mut k = 0;
        while k < w.len() && k < 8 {
            out[i].0 |= (w[k] as u64) << (8 * k);
            out[i].1 |= 0xff << (8 * k);
            k += 1;
        }
        i += 1;
    }
    out
};

/// Whether `rest` (starting at a word start) begins with one of the words, in any case. The
/// words are all letters, and OR-ing 0x20 into a byte gives a lower-case letter only when it
/// is a letter, so a match lies within the one word.
fn starts_state_word(rest: &[u8]) -> bool {
    let eight: [u8; 8] = match rest.first_chunk() {
        Some(eight) => *eight,
        None => {
            let mut padded = [0u8; 8];
            padded[..rest.len()].copy_from_slice(rest);
            padded
        }
    };
    let lower = u64::from_le_bytes(eight) | 0x2020_2020_2020_2020;
    // Only the words with this first letter (one to four of them).
    let (from, to) = BY_FIRST_LETTER[(lower & 0xff) as usize];
    STATE_WORDS[from as usize..to as usize].iter().any(|&(word, mask)| lower & mask == word)
}

/// For each lower-case first letter, the range of [`STATE_WORDS`] that begin with it (the
/// words are listed grouped by first letter; a unit test checks that).
const BY_FIRST_LETTER: [(u8, u8); 256] = {
    let mut t = [(0u8, 0u8); 256];
    let mut i = 0;
    while i < WORDS.len() {
        let c = WORDS[i][0] as usize;
        if t[c].1 == 0 {
            t[c].0 = i as u8;
        }
        t[c].1 = i as u8 + 1;
        i += 1;
    }
    t
};

thread_local! {
    /// Empty queues of finished attachments, for the next (a transaction would otherwise
    /// allocate one).
    static SPARE_QUEUES: std::cell::RefCell<Vec<Vec<Expect>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Drop for Relay {
    fn drop(&mut self) {
        let q = std::mem::take(&mut self.expect.items);
        if q.is_empty() && q.capacity() > 0 && q.capacity() <= 64 {
            SPARE_QUEUES.with(|s| {
                let mut s = s.borrow_mut();
                if s.len() < 128 {
                    s.push(q);
                }
            });
        }
    }
}

/// A request whose response the relay is waiting for, or an answer the proxy gives itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A Parse; for a statement the proxy manages (a named one, when it rewrites them) its
    /// payload holds the proxy-wide name, and the client's name when the client asked for it
    /// (not when the proxy prepares a statement on its own).
    Parse,
    Bind,
    Describe,
    Execute,
    /// A Close; its payload names a statement the proxy closes on its own.
    Close,
    /// A Describe the proxy adds after preparing a statement, to learn its shape: its answer
    /// (ParameterDescription, then RowDescription or NoData) is read and dropped.
    Probe,
    Sync,
    /// A simple query or function call: everything up to ReadyForQuery belongs to it.
    Query,
    /// The proxy answers with its payload's bytes when their turn comes.
    Local,
    /// The proxy answers ParseComplete for the client's unnamed statement, which the server
    /// holds under its proxy-wide name (no payload: an error before it ends the client's
    /// unnamed statement, unless a later pipelined batch has parsed another).
    LocalParse,
    /// The proxy answers a simple query itself: CommandComplete with its payload's tag, then
    /// ReadyForQuery.
    LocalQuery,
}

/// What to take back if an answer the proxy owes is never given (an earlier error made
/// Postgres skip the request).
#[derive(Debug)]
enum Undo {
    Nothing,
    /// The client's Close (or DEALLOCATE) removed this name.
    Removed(Vec<u8>, Arc<Statement>),
    /// The client's DEALLOCATE ALL removed these.
    Cleared(ClientStatements),
}

/// An entry of the queue of expected answers: three bytes with no destructor, as one is
/// pushed and popped for every request. The few that carry data have it next in the side
/// queue of payloads.
#[derive(Debug, Clone, Copy)]
struct Expect {
    kind: Kind,
    /// Drop the server's answer (the client did not ask).
    swallow: bool,
    payload: bool,
}

/// The queue of expected answers: a vector read from `head`, emptied whenever it drains (at
/// every Sync of the usual flow), cheaper per request than a ring buffer. For a client that
/// never lets it drain, the read part is dropped when the vector is full and at least half
/// read: it grows only while more than half of it is unanswered, so it stays below about four
/// times [`MAX_EXPECTED`] entries (one message may add a few past that cap), 48 KiB.
#[derive(Debug, Default)]
struct Queue {
    items: Vec<Expect>,
    head: usize,
}

impl Queue {
    fn len(&self) -> usize {
        self.items.len() - self.head
    }

    fn is_empty(&self) -> bool {
        self.head == self.items.len()
    }

    fn front(&self) -> Option<&Expect> {
        self.items.get(self.head)
    }

    fn get(&self, i: usize) -> Option<&Expect> {
        self.items.get(self.head + i)
    }

    #[inline]
    fn push_back(&mut self, e: Expect) {
        if self.head > 0 && self.items.len() == self.items.capacity() && self.head >= self.items.len() / 2 {
            self.items.drain(..self.head);
            self.head = 0;
        }
        self.items.push(e);
    }

    #[inline]
    fn pop_front(&mut self) -> Option<Expect> {
        let e = *self.items.get(self.head)?;
        self.head += 1;
        if self.head == self.items.len() {
            self.items.clear();
            self.head = 0;
        }
        Some(e)
    }

    fn remove(&mut self, i: usize) {
        self.items.remove(self.head + i);
    }

    fn first_mut(&mut self, f: impl Fn(&Expect) -> bool) -> Option<&mut Expect> {
        self.items[self.head..].iter_mut().find(|e| f(e))
    }
}

/// The data of an [`Expect`] that has some.
#[derive(Debug)]
enum Payload {
    /// A named Parse: the proxy-wide name, and the client's name when the client asked.
    Parse(Arc<str>, Option<Vec<u8>>),
    /// A Close the proxy sends for a statement the server's cache evicted.
    Close(Arc<str>),
    Local(Bytes, Undo),
    LocalQuery(&'static str, Undo),
    /// A [`Kind::Probe`] of `instance`, prepared for `stmt`. With a `barrier`, the client's
    /// message that needs the instance waits for the answer.
    Probe {
        instance: Arc<str>,
        stmt: Arc<Statement>,
        barrier: Barrier,
    },
}

/// What waits for a [`Kind::Probe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Barrier {
    /// Nothing: the instance was prepared for the client's own Parse.
    None,
    /// A Bind or Describe (the client's Sync follows it).
    Message,
    /// A simple query (SQL EXECUTE): the probe is followed by a Sync of the proxy's, whose
    /// ReadyForQuery answers the query if the instance fails.
    Query,
}

/// A statement name no server has (the prefix is the proxy's): a message sent to it fails.
const NO_STATEMENT: &str = "pgsidecar_stale";

/// Named-statement state the relay works on: the client's names and the server's cache.
pub struct Statements<'a> {
    /// Statement and transaction timing (kept by the session across servers).
    pub timing: &'a mut super::timing::Timing,
    pub client: &'a mut ClientStatements,
    pub server: &'a mut ServerStatements,
    /// Rewrite named statements (transaction mode with PGSIDECAR_MAX_PREPARED_STATEMENTS > 0).
    pub rewrite: bool,
    /// Prepare unnamed statements under proxy-wide names too (with `rewrite`, and
    /// PGSIDECAR_PREPARE_UNNAMED_STATEMENTS): the client's unnamed statement is its name "".
    pub unnamed: bool,
    /// The client is pinned to this server (SQL-level statements of its own live there).
    pub pinned: bool,
}

/// Protocol state of one client-server attachment.
#[derive(Debug, Default)]
pub struct Relay {
    c2s_remaining: usize,
    s2c_remaining: usize,
    /// Bytes the next server message needs buffered before it can be read whole.
    s2c_need: usize,
    /// Bytes the next client message needs buffered before it can be read whole.
    c2s_need: usize,
    /// ReadyForQuery messages the server still owes.
    pub outstanding: u32,
    /// Extended-protocol messages were sent since the last Sync.
    pub in_batch: bool,
    /// Status byte of the last ReadyForQuery.
    pub status: u8,
    /// A SET, RESET or DISCARD ran: the session's settings must be read back.
    pub settings_changed: bool,
    /// The client sent Terminate (not forwarded).
    pub terminated: bool,
    /// The server sent a FATAL error.
    pub server_fatal: bool,
    /// ParameterStatus values seen from the server since the last check.
    pub reported: Vec<(String, String)>,
    /// A statement that may have created session state (its text, for the log).
    pub state_hint: Option<Bytes>,
    /// Custom (dotted) setting names the client's statements set or reset.
    pub custom_names: Vec<String>,
    expect: Queue,
    /// The data of the entries of `expect` that have some, in the same order.
    payloads: VecDeque<Payload>,
    /// The proxy answered with an error: drop client messages up to the next Sync.
    client_skip: bool,
    /// Syncs sent after the last Execute and before any copy data: if that Execute turns out
    /// to start COPY FROM STDIN, the server ignores them (libpq and tokio-postgres send one).
    copy_syncs: u32,
    copy_data_seen: bool,
    /// A Flush was sent because the queue of expected responses is full.
    flush_asked: bool,
    /// A statement instance is being prepared and described for the client's next message,
    /// which waits until the server has said the instance has the client's shape.
    held: bool,
    /// The ParameterDescription of the probe being answered.
    probe_params: Option<Bytes>,
    /// The client's messages that waited (`held`) have not been read again yet: the server
    /// is not at rest.
    resume_pending: bool,
    /// A held simple query failed with its instance: it is dropped unread, and the proxy's
    /// Sync answers it.
    drop_query: bool,
    /// The instance a held message waited for has another shape than the client's statement:
    /// the message goes to a statement that does not exist, so that the server fails it (and
    /// what follows it up to Sync, and the transaction) as PostgreSQL fails a statement whose
    /// result changed.
    stale_next: bool,
    /// The server's next error answers that message: PostgreSQL's 0A000 replaces it.
    replace_next_error: bool,
}

impl Relay {
    pub fn new() -> Relay {
        let mut relay = Relay::default();
        relay.status = b'I';
        relay.expect.items = SPARE_QUEUES.with(|q| q.borrow_mut().pop()).unwrap_or_default();
        relay
    }

    /// The client's messages wait for the server's answers (the cap on answers owed, or a
    /// statement instance being described).
    pub fn blocked(&self) -> bool {
        self.held || self.answers_capped()
    }

    /// Nothing is owed, half-sent or pending: the server can go back to the pool.
    pub fn at_rest(&self) -> bool {
        self.quiet() && self.status == b'I' && !self.resume_pending
    }

    /// Nothing is owed or half-sent, though a transaction may be open.
    pub fn quiet(&self) -> bool {
        self.outstanding == 0
            && !self.in_batch
            && self.c2s_remaining == 0
            && self.s2c_remaining == 0
            && self.expect.is_empty()
            && !self.client_skip
            && !self.held
    }

    /// The client has as many answers owed as it may ([`MAX_EXPECTED`]): it is not read
    /// further until the server answers some.
    pub fn answers_capped(&self) -> bool {
        self.expect.len() >= MAX_EXPECTED
    }

    /// Bytes of a server message already being forwarded that are still to come: the next
    /// server message starts this far into the server's read buffer.
    pub fn server_partial(&self) -> usize {
        self.s2c_remaining
    }

    /// How many bytes of server data may be buffered before reading pauses.
    pub fn server_read_limit(&self) -> usize {
        READ_HIGH.max(self.s2c_need)
    }

    /// How many bytes of client data may be buffered before reading pauses.
    pub fn client_read_limit(&self) -> usize {
        READ_HIGH.max(self.c2s_need)
    }

    /// Sends answers the proxy owes once everything before them has been answered, and never
    /// into the middle of a server message being forwarded (an asynchronous notice or
    /// notification may be half through when the client's request is answered here).
    ///
    /// Called for every message both ways: the check is inlined, the work is not.
    #[inline]
    fn emit_local(&mut self, to_client: &mut BytesMut) {
        // While a server message is half through, server_to_client emits them once it is.
        if self.s2c_remaining == 0
            && self
                .expect
                .front()
                .is_some_and(|e| matches!(e.kind, Kind::Local | Kind::LocalParse | Kind::LocalQuery))
        {
            self.emit_local_now(to_client);
        }
    }

    #[inline(never)]
    fn emit_local_now(&mut self, to_client: &mut BytesMut) {
        while self
            .expect
            .front()
            .is_some_and(|e| matches!(e.kind, Kind::Local | Kind::LocalParse | Kind::LocalQuery))
        {
            match self.pop() {
                Some((_, Some(Payload::Local(bytes, _)))) => to_client.extend_from_slice(&bytes),
                Some((Expect { kind: Kind::LocalParse, .. }, None)) => {
                    to_client.extend_from_slice(PARSE_COMPLETE)
                }
                Some((_, Some(Payload::LocalQuery(command, _)))) => {
                    messages::command_complete(to_client, command);
                    messages::ready_for_query(to_client, self.status);
                }
                _ => unreachable!("a local answer has its payload"),
            }
        }
    }

    #[inline]
    fn push(&mut self, kind: Kind, swallow: bool, payload: Option<Payload>) {
        self.expect.push_back(Expect { kind, swallow, payload: payload.is_some() });
        if let Some(payload) = payload {
            self.payloads.push_back(payload);
        }
    }

    #[inline]
    fn pop(&mut self) -> Option<(Expect, Option<Payload>)> {
        let e = self.expect.pop_front()?;
        Some((e, if e.payload { self.payloads.pop_front() } else { None }))
    }

    /// The proxy answers here (with these bytes) when the answers before have been given.
    fn push_local(&mut self, bytes: Bytes, undo: Undo) {
        self.push(Kind::Local, false, Some(Payload::Local(bytes, undo)));
    }

    fn expect_server(&mut self, kind: Kind) {
        self.push(kind, false, None);
    }

    /// Queues Close for statements the server's cache evicted, answers dropped.
    fn close_evicted(&mut self, server: &mut ServerStatements, to_server: &mut BytesMut) {
        for name in server.to_close.drain(..) {
            prepared::put_statement_message(to_server, tag::CLOSE, &name);
            self.push(Kind::Close, true, Some(Payload::Close(name)));
        }
    }

    /// The instance on this server that runs the client's `stmt`: its own, or one of the
    /// same text and shape (PostgreSQL fixes a statement's result shape when it is prepared).
    /// When the server has none, one is prepared and described, and the client's message
    /// waits for the answer (`None`): an instance of another shape would hand the client rows
    /// it cannot read, where PostgreSQL says 0A000.
    fn resolve(
        &mut self,
        stmt: &Arc<Statement>,
        st: &mut Statements<'_>,
        out: &mut BytesMut,
        barrier: Barrier,
    ) -> Option<Arc<str>> {
        if self.stale_next {
            self.stale_next = false;
            self.replace_next_error = true;
            return Some(NO_STATEMENT.into());
        }
        if st.server.touch(&stmt.name) {
            return Some(stmt.name.clone());
        }
        let shape = stmt.shape.get();
        if !stmt.tracked || shape.is_some() {
            let fingerprint = shape.map_or(0, |s| s.fingerprint);
            if let Some(found) = st.server.find(&stmt.base, fingerprint) {
                return Some(found);
            }
        }
        if !stmt.tracked {
            // A shared unnamed statement: prepared under its name, answer dropped.
            st.server.insert(stmt.name.clone(), stmt.base.clone());
            self.close_evicted(st.server, out);
            prepared::put_parse(out, &stmt.name, stmt, None);
            self.push(Kind::Parse, true, Some(Payload::Parse(stmt.name.clone(), None)));
            return Some(stmt.name.clone());
        }
        let name: Arc<str> = prepared::instance_name(&stmt.base).into();
        st.server.insert(name.clone(), stmt.base.clone());
        self.close_evicted(st.server, out);
        // With the parameter types PostgreSQL inferred for the client's statement.
        prepared::put_parse(out, &name, stmt, shape.map(|s| &s.param_types[..]));
        self.push(Kind::Parse, true, Some(Payload::Parse(name.clone(), None)));
        prepared::put_statement_message(out, tag::DESCRIBE, &name);
        let probe = Payload::Probe { instance: name, stmt: stmt.clone(), barrier };
        self.push(Kind::Probe, true, Some(probe));
        if barrier == Barrier::Query {
            // A Flush would leave the server skipping the query after an error.
            out.extend_from_slice(SYNC);
            self.outstanding += 1;
            self.push(Kind::Sync, true, None);
        } else {
            out.extend_from_slice(FLUSH);
        }
        self.held = true;
        None
    }

    /// An unnamed Parse prepared under the proxy-wide name of its text: answered here when the
    /// server already holds that statement. The client's "" names it until its next unnamed
    /// Parse or simple query, as Postgres' unnamed statement would. False (nothing done) when
    /// the statement's Parse is still unanswered in this attachment: the client's Parse then
    /// goes as it is, so that if that Parse fails this one gets Postgres' own error too.
    fn prepare_unnamed(
        &mut self,
        key: &[u8],
        query: &[u8],
        types: &[u8],
        facts: u8,
        out: &mut BytesMut,
        st: &mut Statements<'_>,
    ) -> bool {
        // Drivers send the same text again and again: compared with the client's current
        // unnamed statement first, it is neither hashed nor stored again.
        let stmt = match st.client.get(b"") {
            Some(s) if s.text == key => s.clone(),
            _ => {
                let s = prepared::unnamed_statement(key, query, types, |s| mark(s, query, facts));
                st.client.insert(Vec::new(), s.clone());
                s
            }
        };
        if st.server.touch(&stmt.name) {
            let pending = self.payloads.iter().any(|p| matches!(p, Payload::Parse(n, _) if *n == stmt.name));
            if pending {
                return false;
            }
            self.push(Kind::LocalParse, false, None);
        } else {
            st.server.insert(stmt.name.clone(), stmt.base.clone());
            self.close_evicted(st.server, out);
            prepared::put_parse(out, &stmt.name, &stmt, None);
            self.push(Kind::Parse, false, Some(Payload::Parse(stmt.name.clone(), Some(Vec::new()))));
        }
        true
    }

    /// Moves client messages towards the server while there is room, rewriting named
    /// statements; answers the proxy owes go to `to_client`.
    pub fn client_to_server(
        &mut self,
        input: &mut BytesMut,
        to_server: &mut BytesMut,
        to_client: &mut BytesMut,
        max: usize,
        st: &mut Statements<'_>,
    ) -> Result<Stop, FrameError> {
        loop {
            if self.c2s_remaining > 0 {
                let n = self.c2s_remaining.min(input.len());
                to_server.extend_from_slice(&input[..n]);
                input.advance(n);
                self.c2s_remaining -= n;
                if self.c2s_remaining > 0 {
                    return Ok(if to_server.len() >= WRITE_HIGH { Stop::Output } else { Stop::Input });
                }
            }
            self.emit_local(to_client);
            if self.terminated || self.held {
                return Ok(Stop::Input);
            }
            self.resume_pending = false;
            if to_server.len() >= WRITE_HIGH {
                return Ok(Stop::Output);
            }
            if self.expect.len() >= MAX_EXPECTED {
                // Answers owed are capped: the client is not read further until the server
                // has answered some. The server may be holding its answers until a Sync
                // the proxy has not read yet, so it is asked to flush them.
                if !self.flush_asked {
                    to_server.extend_from_slice(FLUSH);
                    self.flush_asked = true;
                }
                return Ok(Stop::Input);
            }
            self.flush_asked = false;
            let Some(h) = Header::parse(input, max)? else {
                return Ok(Stop::Input);
            };
            if !crate::wire::is_frontend_tag(h.tag) {
                // Postgres would end the session; the proxy does so without involving a server.
                return Err(FrameError::UnknownType(h.tag));
            }
            if h.tag == tag::TERMINATE {
                input.advance(h.total_len().min(input.len()));
                self.terminated = true;
                return Ok(Stop::Input);
            }
            if self.client_skip {
                // After an error the proxy raised itself, Postgres would ignore everything up
                // to Sync; so does the proxy.
                if h.tag != tag::SYNC {
                    if input.len() < h.total_len() {
                        self.c2s_need = h.total_len();
                        return Ok(Stop::Input);
                    }
                    self.c2s_need = 0;
                    input.advance(h.total_len());
                    continue;
                }
                self.client_skip = false;
            }
            if !read_whole(h.tag) {
                match h.tag {
                    tag::FUNCTION_CALL => {
                        self.outstanding += 1;
                        self.expect_server(Kind::Query);
                        st.timing.query(None, None);
                    }
                    tag::SYNC => {
                        self.outstanding += 1;
                        self.in_batch = false;
                        self.expect_server(Kind::Sync);
                        st.timing.sync();
                        if !self.copy_data_seen {
                            self.copy_syncs += 1;
                        }
                    }
                    tag::EXECUTE => {
                        self.in_batch = true;
                        self.expect_server(Kind::Execute);
                        st.timing.execute();
                        self.copy_syncs = 0;
                        self.copy_data_seen = false;
                    }
                    tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => self.copy_data_seen = true,
                    tag::DESCRIBE | tag::CLOSE | tag::FLUSH => self.in_batch = true,
                    _ => {}
                }
                self.c2s_remaining = h.total_len();
                continue;
            }
            if input.len() < h.total_len() {
                self.c2s_need = h.total_len();
                return Ok(Stop::Input);
            }
            self.c2s_need = 0;
            let total = h.total_len();
            if h.tag == tag::QUERY && self.drop_query {
                // Failed with its statement's instance: already answered.
                self.drop_query = false;
                input.advance(total);
                continue;
            }
            if h.tag == tag::QUERY {
                // SQL EXECUTE of a statement the client prepared through the protocol runs the
                // instance of it on this server.
                let mut rewritten = None;
                if st.rewrite {
                    if let Some((at, name)) = prepared::sql_execute(&input[HEADER_LEN..total]) {
                        if let Some(stmt) = st.client.get(&name).cloned() {
                            let Some(instance) = self.resolve(&stmt, st, to_server, Barrier::Query) else {
                                return Ok(Stop::Input); // waits for the instance (`held`)
                            };
                            self.note_statement(&stmt);
                            let text = &input[HEADER_LEN..total];
                            let mut m = BytesMut::with_capacity(total + instance.len());
                            m.extend_from_slice(&[tag::QUERY, 0, 0, 0, 0]);
                            m.extend_from_slice(&text[..at.start]);
                            m.extend_from_slice(instance.as_bytes());
                            m.extend_from_slice(&text[at.end..]);
                            let len = (m.len() - 1) as u32;
                            m[1..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
                            rewritten = Some(m);
                        }
                    }
                }
                // Split off: the timing keeps the text until the query ends.
                let msg = input.split_to(total).freeze();
                self.query(msg, rewritten, to_server, st);
                continue;
            }
            // Read in place (a split would take a reference to the read buffer per message).
            let msg = &input[..total];
            if !self.tracked_message(h.tag, msg, to_server, st)? {
                // Waits for a statement instance to be described (`held`).
                return Ok(Stop::Input);
            }
            input.advance(total);
        }
    }

    /// What executing `stmt` may do to the server's session, noted for the check at the end.
    fn note_statement(&mut self, stmt: &Statement) {
        if stmt.session_state {
            self.state_hint = Some(stmt.text.clone());
        }
        if stmt.sets_config {
            self.settings_changed = true;
        }
        for name in &stmt.custom_settings {
            crate::params::remember_custom(&mut self.custom_names, name);
        }
    }

    /// A whole Query: timed with its text; in transaction mode scanned for session state and
    /// custom settings, and answered here when it deallocates statements the proxy manages.
    /// `rewritten`, when given, goes to the server in its place (timed with the client's text).
    fn query(
        &mut self,
        msg: Bytes,
        rewritten: Option<BytesMut>,
        out: &mut BytesMut,
        st: &mut Statements<'_>,
    ) {
        let text_end = msg.len().saturating_sub(1).max(HEADER_LEN);
        let body = &msg[HEADER_LEN..];
        let (fingerprint, facts) = text_facts(&msg[HEADER_LEN..text_end]);
        if facts & MENTIONS_SESSION_STATE != 0 {
            self.state_hint = Some(msg.slice(HEADER_LEN..));
        }
        if facts & MAY_NAME_CUSTOM_SETTINGS != 0 {
            crate::params::custom_setting_names(body, &mut self.custom_names);
        }
        if facts & CALLS_SET_CONFIG != 0 {
            self.settings_changed = true;
        }
        if st.unnamed {
            // A simple query ends the unnamed statement on the server.
            st.client.remove(b"");
        }
        if st.rewrite {
            // Answered here; what each took away comes back if an earlier error in the same
            // pipeline makes Postgres skip it (see `on_error`).
            match prepared::sql_command(body) {
                Some(SqlCommand::Deallocate(name)) if st.client.contains(name.as_bytes()) => {
                    let stmt = st.client.take(name.as_bytes()).expect("looked up above");
                    let undo = Undo::Removed(name.as_bytes().to_vec(), stmt);
                    self.push(Kind::LocalQuery, false, Some(Payload::LocalQuery("DEALLOCATE", undo)));
                    return;
                }
                Some(SqlCommand::DeallocateAll) if !st.pinned => {
                    let undo = Undo::Cleared(std::mem::take(st.client));
                    self.push(Kind::LocalQuery, false, Some(Payload::LocalQuery("DEALLOCATE ALL", undo)));
                    return;
                }
                Some(SqlCommand::DiscardAll | SqlCommand::DeallocateAll) => st.client.clear(),
                _ => {}
            }
        }
        self.outstanding += 1;
        self.expect_server(Kind::Query);
        st.timing.query(Some(msg.slice(HEADER_LEN..text_end)), fingerprint);
        out.extend_from_slice(rewritten.as_deref().unwrap_or(&msg));
    }

    /// A whole Parse, Bind, Describe or Close (read in place). False when the message has to
    /// wait (it stays in the input): a statement instance is being prepared for it.
    fn tracked_message(
        &mut self,
        t: u8,
        msg: &[u8],
        out: &mut BytesMut,
        st: &mut Statements<'_>,
    ) -> Result<bool, FrameError> {
        let body = &msg[HEADER_LEN..];
        self.in_batch = true;
        match t {
            tag::PARSE => {
                let p = prepared::parse_parts(body)?;
                st.timing.parse(p.name, p.query);
                // An unnamed Parse of the text the client parsed last time (drivers send the
                // same few texts over and over) takes what the scans found in it then: the
                // timing has just compared the two. Only the text is scanned, not the name and
                // parameter types around it.
                let unnamed = p.name.is_empty();
                let facts = match st.timing.unnamed_facts() {
                    Some(facts) if unnamed => facts,
                    _ => {
                        let facts = scan_facts(p.query);
                        if unnamed {
                            st.timing.set_unnamed_facts(facts);
                        }
                        facts
                    }
                };
                if facts & MAY_NAME_CUSTOM_SETTINGS != 0 {
                    crate::params::custom_setting_names(p.query, &mut self.custom_names);
                }
                if (unnamed || !st.rewrite) && facts & CALLS_SET_CONFIG != 0 {
                    // A statement that stays the server's (unnamed, or named without
                    // rewriting): whatever executes it is sent in this batch or on this server.
                    self.settings_changed = true;
                }
                if unnamed
                    && st.unnamed
                    && st.rewrite
                    && facts & MENTIONS_SESSION_STATE == 0
                    && self.prepare_unnamed(&body[1..], p.query, p.types, facts, out, st)
                {
                    return Ok(true);
                }
                if unnamed && st.unnamed {
                    // Left to the server's own unnamed statement, which the Binds that follow
                    // then name.
                    st.client.remove(b"");
                }
                if unnamed || !st.rewrite {
                    if facts & MENTIONS_SESSION_STATE != 0 {
                        // Copied: a slice would keep the client's read buffer alive.
                        self.state_hint = Some(Bytes::copy_from_slice(body));
                    }
                    out.extend_from_slice(msg);
                    self.expect_server(Kind::Parse);
                    return Ok(true);
                }
                let name = p.name.to_vec();
                let mut stmt = prepared::statement(p.query, p.types);
                mark(&mut stmt, p.query, facts);
                if let Some(error) = st.client.refuse_parse(&name) {
                    let mut buf = BytesMut::new();
                    error.encode(&mut buf);
                    self.push_local(buf.freeze(), Undo::Nothing);
                    self.client_skip = true;
                    return Ok(true);
                }
                // Always prepared on the server, under a name of its own: the client gets
                // PostgreSQL's answer to its text as the database is now (an error included),
                // and a Describe the proxy adds records the shape PostgreSQL gave it.
                let stmt = Arc::new(stmt);
                st.client.insert(name.clone(), stmt.clone());
                st.server.insert(stmt.name.clone(), stmt.base.clone());
                self.close_evicted(st.server, out);
                prepared::put_parse(out, &stmt.name, &stmt, None);
                self.push(Kind::Parse, false, Some(Payload::Parse(stmt.name.clone(), Some(name))));
                prepared::put_statement_message(out, tag::DESCRIBE, &stmt.name);
                let probe = Payload::Probe { instance: stmt.name.clone(), stmt, barrier: Barrier::None };
                self.push(Kind::Probe, true, Some(probe));
            }
            tag::BIND => {
                let b = prepared::bind_parts(body)?;
                // The client's map holds "" only for an unnamed statement prepared under a
                // proxy-wide name.
                let managed = if st.rewrite && (st.unnamed || !b.statement.is_empty()) {
                    st.client.get(b.statement).cloned()
                } else {
                    None
                };
                match managed {
                    Some(stmt) => {
                        let Some(instance) = self.resolve(&stmt, st, out, Barrier::Message) else {
                            return Ok(false);
                        };
                        self.note_statement(&stmt);
                        prepared::put_bind(out, b.portal, &instance, b.rest);
                    }
                    None => out.extend_from_slice(msg),
                }
                st.timing.bind(b.statement);
                self.expect_server(Kind::Bind);
            }
            tag::DESCRIBE => {
                let (kind, name) = prepared::target(body, "Describe")?;
                let managed = if kind == b'S' && st.rewrite && (st.unnamed || !name.is_empty()) {
                    st.client.get(name).cloned()
                } else {
                    None
                };
                match managed {
                    Some(stmt) => {
                        let Some(instance) = self.resolve(&stmt, st, out, Barrier::Message) else {
                            return Ok(false);
                        };
                        prepared::put_statement_message(out, tag::DESCRIBE, &instance);
                    }
                    None => out.extend_from_slice(msg),
                }
                self.expect_server(Kind::Describe);
            }
            tag::CLOSE => {
                let (kind, name) = prepared::target(body, "Close")?;
                if kind == b'S' {
                    st.timing.close(name);
                }
                let managed = if kind == b'S' && st.rewrite && (st.unnamed || !name.is_empty()) {
                    st.client.take(name)
                } else {
                    None
                };
                if let Some(stmt) = managed {
                    // The statement stays on the server for other clients; the LRU closes it.
                    let undo = Undo::Removed(name.to_vec(), stmt);
                    self.push_local(Bytes::from_static(CLOSE_COMPLETE), undo);
                } else {
                    out.extend_from_slice(msg);
                    self.expect_server(Kind::Close);
                }
            }
            _ => unreachable!("only whole messages of these types are read"),
        }
        Ok(true)
    }

    /// Moves server messages towards the client, reading the ones that matter and dropping
    /// answers to requests the client did not make. Returns early right after a
    /// ReadyForQuery that leaves the server at rest.
    pub fn server_to_client(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
        max: usize,
        st: &mut Statements<'_>,
    ) -> Result<Stop, FrameError> {
        loop {
            if self.s2c_remaining > 0 {
                let n = self.s2c_remaining.min(input.len());
                out.extend_from_slice(&input[..n]);
                input.advance(n);
                self.s2c_remaining -= n;
                if self.s2c_remaining > 0 {
                    return Ok(if out.len() >= WRITE_HIGH { Stop::Output } else { Stop::Input });
                }
            }
            self.emit_local(out);
            if out.len() >= WRITE_HIGH {
                return Ok(Stop::Output);
            }
            // Results stream through whatever their size; only messages read whole below
            // are held to `max`.
            let Some(h) = Header::parse(input, MAX_STREAMED)? else {
                return Ok(Stop::Input);
            };
            let inspect = matches!(
                h.tag,
                tag::READY_FOR_QUERY
                    | tag::PARAMETER_STATUS
                    | tag::COMMAND_COMPLETE
                    | tag::ERROR_RESPONSE
                    | b'1'
                    | b'2'
                    | b'3'
            ) || (matches!(h.tag, b't' | b'T' | b'n') && self.head_is(|k| k == Kind::Probe));
            if !inspect {
                self.complete_streamed(h.tag);
                if matches!(h.tag, b'I' | b's') {
                    st.timing.complete(None);
                }
                self.s2c_remaining = h.total_len();
                continue;
            }
            if h.total_len() > max {
                return Err(FrameError::TooLong { tag: h.tag, len: h.total_len(), max });
            }
            if input.len() < h.total_len() {
                self.s2c_need = h.total_len();
                return Ok(Stop::Input);
            }
            self.s2c_need = 0;
            // Read in place (a split would share the buffer: a reference count per message).
            // A message that fails to parse stays in `input`: the caller ends the attachment
            // and discards the server on any error.
            let total = h.total_len();
            let body = &input[HEADER_LEN..total];
            let mut forward = true;
            let mut at_rest = false;
            match h.tag {
                tag::READY_FOR_QUERY => {
                    self.status = parse_ready_for_query(body)?;
                    self.outstanding = self.outstanding.saturating_sub(1);
                    forward = !self.complete(|k| matches!(k, Kind::Sync | Kind::Query));
                    if forward {
                        // (The proxy's own Sync ends no transaction of the client's.)
                        st.timing.ready(self.status);
                    }
                    at_rest = self.at_rest();
                }
                tag::PARAMETER_STATUS => self.reported.push(parse_parameter_status(body)?),
                tag::COMMAND_COMPLETE => {
                    let t = parse_command_tag(body);
                    st.timing.complete(Some(t));
                    if t == b"SET" || t == b"RESET" || t.starts_with(b"DISCARD") {
                        self.settings_changed = true;
                    }
                    if t == b"DISCARD ALL" || t == b"DEALLOCATE ALL" {
                        st.server.clear();
                    }
                    if self.head_is(|k| matches!(k, Kind::Execute)) {
                        self.complete(|_| true);
                    }
                }
                tag::ERROR_RESPONSE if self.replace_next_error => {
                    // The failure of a message sent to NO_STATEMENT.
                    self.replace_next_error = false;
                    forward = false;
                    messages::error_fields(out, STALE_PLAN);
                    st.timing.error("0A000");
                    self.on_error(st);
                }
                tag::ERROR_RESPONSE => {
                    let fields = ErrorFields::parse(body).unwrap_or_default();
                    st.timing.error(&fields.code);
                    if fields.is_fatal() {
                        self.server_fatal = true;
                    }
                    if fields.code == "0A000"
                        && fields.message.starts_with("cached plan must not change result type")
                    {
                        // DDL changed a statement's result: prepare every statement afresh.
                        st.server.invalidate_all();
                    }
                    self.on_error(st);
                }
                b't' | b'T' | b'n' => {
                    forward = false;
                    self.probe_answer(h.tag, body, st)?;
                }
                _ => {
                    // ParseComplete, BindComplete, CloseComplete.
                    forward = !self.complete(|_| true);
                }
            }
            if forward {
                out.extend_from_slice(&input[..total]);
            }
            input.advance(total);
            self.emit_local(out);
            if at_rest {
                return Ok(Stop::Rest);
            }
        }
    }

    /// The answer to a [`Kind::Probe`] at the head: the instance's shape is recorded, and the
    /// client's statement gets it if it had none yet. A barrier instance of another shape than
    /// the client's statement fails the client's waiting message with PostgreSQL's error for
    /// a statement whose result changed.
    fn probe_answer(&mut self, t: u8, body: &[u8], st: &mut Statements<'_>) -> Result<(), FrameError> {
        if t == b't' {
            self.probe_params = Some(Bytes::copy_from_slice(body));
            return Ok(());
        }
        let params = self.probe_params.take().unwrap_or_else(|| Bytes::from_static(b"\0\0"));
        let shape = prepared::Shape::from_descriptions(&params, (t == b'T').then_some(body))?;
        let Some((_, Some(Payload::Probe { instance, stmt, barrier }))) = self.pop() else {
            unreachable!("a probe has its payload");
        };
        st.server.set_shape(&instance, shape.fingerprint);
        let fingerprint = shape.fingerprint;
        let want = stmt.shape.get_or_init(|| shape);
        if barrier != Barrier::None {
            self.release_held(barrier);
            // The server fails the message (its error replaced by PostgreSQL's 0A000).
            self.stale_next = want.fingerprint != fingerprint;
        }
        Ok(())
    }

    /// The answer a held message waited for has come: it is read again.
    fn release_held(&mut self, barrier: Barrier) {
        if barrier != Barrier::None {
            self.held = false;
            self.resume_pending = true;
        }
    }

    /// The held message is skipped after an error, as PostgreSQL skips what follows an error
    /// up to the client's Sync. A simple query whose instance failed to prepare is answered
    /// instead (the instance's error, then the ReadyForQuery of the proxy's Sync, which is now
    /// the client's), as PostgreSQL answers an EXECUTE whose statement no longer plans.
    fn fail_held(&mut self, barrier: Barrier, own_failure: bool) {
        match barrier {
            Barrier::None => {}
            Barrier::Query if own_failure => {
                self.drop_query = true;
                if let Some(sync) = self.expect.first_mut(|e| e.kind == Kind::Sync) {
                    sync.swallow = false;
                }
            }
            Barrier::Message | Barrier::Query => self.client_skip = true,
        }
    }

    /// Whether the head is a request to the server that `f` accepts.
    fn head_is(&self, f: impl Fn(Kind) -> bool) -> bool {
        self.expect.front().is_some_and(|e| {
            !matches!(e.kind, Kind::Local | Kind::LocalParse | Kind::LocalQuery) && f(e.kind)
        })
    }

    /// Pops the expectation at the head if `f` accepts it; returns whether its answer is to
    /// be dropped.
    fn complete(&mut self, f: impl Fn(Kind) -> bool) -> bool {
        if self.head_is(f) {
            if let Some((e, _)) = self.pop() {
                return e.swallow;
            }
        }
        false
    }

    /// Completion of the head by a streamed (not inspected) message.
    fn complete_streamed(&mut self, t: u8) {
        match t {
            tag::COPY_IN_RESPONSE if self.copy_syncs > 0 && self.head_is(|k| matches!(k, Kind::Execute)) => {
                // The Syncs queued behind this Execute reach the server during COPY and are
                // ignored there: no ReadyForQuery will answer them.
                let mut drop = self.copy_syncs;
                self.outstanding = self.outstanding.saturating_sub(drop);
                self.copy_syncs = 0;
                let mut i = 1;
                while drop > 0 && i < self.expect.len() {
                    if self.expect.get(i).is_some_and(|e| e.kind == Kind::Sync) {
                        // (no payload to remove with it)
                        self.expect.remove(i);
                        drop -= 1;
                    } else {
                        i += 1;
                    }
                }
            }
            b'T' | b'n' if self.head_is(|k| matches!(k, Kind::Describe)) => {
                self.complete(|_| true);
            }
            b'I' | b's' if self.head_is(|k| matches!(k, Kind::Execute)) => {
                self.complete(|_| true);
            }
            _ => {}
        }
    }

    /// An ErrorResponse: the request at the head failed, and Postgres skips everything up to
    /// the next Sync, so none of those requests will be answered; what the proxy recorded for
    /// them is taken back, last first, so that a name touched twice in the batch ends as it
    /// was before it. The client's names are updated as requests are read, ahead of the
    /// server's answers: a name that a request after the Sync (a later pipelined batch) has
    /// touched already keeps what that request made of it.
    fn on_error(&mut self, st: &mut Statements<'_>) {
        if self.head_is(|k| matches!(k, Kind::Query | Kind::Sync)) {
            return; // a simple query ends with ReadyForQuery regardless
        }
        // Only entries with something to take back are kept: for the usual failed Bind or
        // Execute nothing is, and nothing is allocated or scanned. A simple query (or function
        // call) pipelined before the Sync is skipped by Postgres too: no ReadyForQuery answers
        // it.
        let head_payload = self.expect.front().is_some_and(|e| e.payload);
        let mut skipped = Vec::new();
        let mut queries = 0;
        while self.expect.front().is_some_and(|e| e.kind != Kind::Sync) {
            match self.pop() {
                Some(entry @ ((_, Some(_)) | (Expect { kind: Kind::LocalParse, .. }, None))) => {
                    skipped.push(entry)
                }
                Some((Expect { kind: Kind::Query, .. }, None)) => queries += 1,
                _ => {}
            }
        }
        if queries > 0 {
            self.outstanding = self.outstanding.saturating_sub(queries);
            st.timing.skip_queries();
        }
        if skipped.is_empty() {
            return;
        }
        // The client's message that waited for a skipped probe is in what PostgreSQL now
        // skips.
        let held = skipped.iter().find_map(|e| match e.1 {
            Some(Payload::Probe { barrier, .. }) if barrier != Barrier::None => Some(barrier),
            _ => None,
        });
        if let Some(barrier) = held {
            // The instance's own Parse failed, rather than a request before it.
            let own_failure = head_payload
                && matches!(
                    (skipped.first().map(|e| &e.1), skipped.get(1).map(|e| &e.1)),
                    (Some(Some(Payload::Parse(a, None))), Some(Some(Payload::Probe { instance: b, .. }))) if a == b
                );
            self.release_held(barrier);
            self.fail_held(barrier, own_failure);
        }
        let later = LaterNames::queued(self);
        for entry in skipped.into_iter().rev() {
            match entry {
                (_, Some(Payload::Parse(global, client))) => {
                    st.server.forget(&global);
                    if let Some(name) = client.filter(|n| !later.touch(n)) {
                        st.client.remove(&name);
                    }
                }
                (_, Some(Payload::Close(name))) => st.server.to_close.push(name),
                (Expect { kind: Kind::LocalParse, .. }, _) if !later.touch(b"") => {
                    st.client.remove(b"");
                }
                (
                    _,
                    Some(
                        Payload::Local(_, Undo::Removed(name, stmt))
                        | Payload::LocalQuery(_, Undo::Removed(name, stmt)),
                    ),
                ) if !later.touch(&name) => {
                    st.client.insert(name, stmt);
                }
                (_, Some(Payload::LocalQuery(_, Undo::Cleared(all)))) => {
                    for (name, stmt) in all.into_entries() {
                        if !later.touch(&name) {
                            st.client.insert(name, stmt);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// The client's statement names that requests still queued have created or removed (read
/// only after an error, when usually nothing is queued).
struct LaterNames<'a> {
    /// A simple query may DEALLOCATE or DISCARD any name.
    all: bool,
    unnamed: bool,
    names: std::collections::HashSet<&'a [u8]>,
}

impl<'a> LaterNames<'a> {
    fn queued(relay: &'a Relay) -> LaterNames<'a> {
        let mut later = LaterNames { all: false, unnamed: false, names: Default::default() };
        for e in (0..relay.expect.len()).filter_map(|i| relay.expect.get(i)) {
            match e.kind {
                Kind::Query | Kind::LocalQuery => later.all = true,
                Kind::LocalParse => later.unnamed = true,
                // A client's Parse sent as it is (with rewriting, only unnamed ones go without
                // a payload) ended the mapping of "".
                Kind::Parse if !e.payload => later.unnamed = true,
                _ => {}
            }
        }
        for p in &relay.payloads {
            match p {
                Payload::Parse(_, Some(n)) | Payload::Local(_, Undo::Removed(n, _)) => {
                    later.names.insert(n);
                }
                _ => {}
            }
        }
        later
    }

    fn touch(&self, name: &[u8]) -> bool {
        self.all || (name.is_empty() && self.unnamed) || self.names.contains(name)
    }
}

#[cfg(test)]
mod tests;
