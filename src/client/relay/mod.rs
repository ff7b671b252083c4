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
//!
//! # Files
//!
//! - this one: the [`Relay`] and its state, the queue of expected answers (`Kind`,
//!   `Payload`), the thresholds, the small accessors the session reads, the answers the
//!   proxy gives itself.
//! - `client.rs`: the client-to-server direction ([`Relay::client_to_server`]): each message
//!   type read, named statements rewritten, requests queued.
//! - `instances.rs`: the statement instances on the attached server: the one that runs a
//!   client's statement, found or prepared and described while the client's message waits.
//! - `server.rs`: the server-to-client direction ([`Relay::server_to_client`]): answers
//!   matched to the queue, probes read, what an error skips taken back.
//! - `facts.rs`: what the relay finds in a statement's text (session state, custom settings,
//!   `set_config`).
//! - `tests/`: the unit tests, by subject.
//!
//! Each file adds an `impl Relay` block of its own. May import: [`crate::prepared`],
//! [`crate::wire`], [`crate::params`], [`crate::observe`] (`normalize`) and the client's
//! [`super::timing`]. Within the relay, every file may import this one and `facts.rs`;
//! `client.rs` calls into `instances.rs`; the two directions never import each other;
//! `facts.rs` imports none of the others; this file imports none of them (it only
//! re-exports [`managed_statement`]).

mod client;
mod facts;
mod instances;
mod server;

pub use facts::managed_statement;

use crate::prepared::{ClientStatements, ServerStatements, Statement};
use crate::wire::messages;
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
/// Most responses a client may have outstanding (each costs an entry in the relay's queue):
/// past it the relay stops reading the client until the server catches up.
pub const MAX_EXPECTED: usize = 4096;

const PARSE_COMPLETE: &[u8] = b"1\0\0\0\x04";
const FLUSH: &[u8] = b"H\0\0\0\x04";

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

/// Moves on what `input` holds of the message being streamed through in either direction,
/// of which `remaining` bytes were still to come. `Some` while some still are: the input
/// ran out before the message's end.
#[inline]
fn stream_rest(remaining: &mut usize, input: &mut BytesMut, out: &mut BytesMut) -> Option<Stop> {
    if *remaining == 0 {
        return None;
    }
    let n = (*remaining).min(input.len());
    out.extend_from_slice(&input[..n]);
    input.advance(n);
    *remaining -= n;
    if *remaining > 0 {
        return Some(if out.len() >= WRITE_HIGH { Stop::Output } else { Stop::Input });
    }
    None
}

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
}

#[cfg(test)]
mod tests;
