//! The server-to-client direction of the relay ([`Relay::server_to_client`]): server messages
//! move towards the client, each answer matched to the request at the head of the queue.
//! Answers to requests the proxy made itself are dropped, the Describe it adds to learn a
//! statement instance's shape is read ([`Relay::probe_answer`]) and releases the client's
//! message that waited for it, and after an error what Postgres skips up to Sync is taken
//! back ([`Relay::on_error`]).
//!
//! May import: the relay's state ([`super`]), never the other direction (client.rs, instances.rs);
//! [`crate::prepared`] and [`crate::wire`].

use super::{
    stream_rest, Barrier, Expect, Kind, Payload, Relay, Statements, Stop, Undo, MAX_STREAMED, WRITE_HIGH,
};
use crate::prepared;
use crate::wire::frame::{FrameError, Header, HEADER_LEN};
use crate::wire::messages::{
    self, parse_command_tag, parse_parameter_status, parse_ready_for_query, ErrorFields,
};
use crate::wire::tag;
use bytes::{Buf, Bytes, BytesMut};

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

/// Entries of the queue popped after an error, with their payloads.
type Skipped = Vec<(Expect, Option<Payload>)>;

impl Relay {
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
            if let Some(stop) = stream_rest(&mut self.s2c_remaining, input, out) {
                return Ok(stop);
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
            if !self.reads_whole(h.tag) {
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
            let forward = self.server_message(h.tag, &input[HEADER_LEN..total], out, st)?;
            // Judged before the answers the proxy owes after it go out.
            let at_rest = h.tag == tag::READY_FOR_QUERY && self.at_rest();
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

    /// Whether a server message of type `t` is read whole: the ones the relay learns from,
    /// and the answers to a probe at the head. Others stream through in pieces.
    #[inline]
    fn reads_whole(&self, t: u8) -> bool {
        matches!(
            t,
            tag::READY_FOR_QUERY
                | tag::PARAMETER_STATUS
                | tag::COMMAND_COMPLETE
                | tag::ERROR_RESPONSE
                | b'1'
                | b'2'
                | b'3'
        ) || (matches!(t, b't' | b'T' | b'n') && self.head_is(|k| k == Kind::Probe))
    }

    /// A server message read whole (its `body`): what it tells the relay. True when it goes
    /// on to the client.
    #[inline]
    fn server_message(
        &mut self,
        t: u8,
        body: &[u8],
        out: &mut BytesMut,
        st: &mut Statements<'_>,
    ) -> Result<bool, FrameError> {
        Ok(match t {
            tag::READY_FOR_QUERY => self.ready_for_query(body, st)?,
            tag::PARAMETER_STATUS => {
                self.reported.push(parse_parameter_status(body)?);
                true
            }
            tag::COMMAND_COMPLETE => {
                self.command_complete(body, st);
                true
            }
            tag::ERROR_RESPONSE => self.error_response(body, out, st),
            b't' | b'T' | b'n' => {
                self.probe_answer(t, body, st)?;
                false
            }
            // ParseComplete, BindComplete, CloseComplete.
            _ => !self.complete(|_| true),
        })
    }

    /// A ReadyForQuery: the transaction status, and one fewer owed. The answer to the proxy's
    /// own Sync is dropped (false).
    #[inline]
    fn ready_for_query(&mut self, body: &[u8], st: &mut Statements<'_>) -> Result<bool, FrameError> {
        self.status = parse_ready_for_query(body)?;
        self.outstanding = self.outstanding.saturating_sub(1);
        let forward = !self.complete(|k| matches!(k, Kind::Sync | Kind::Query));
        if forward {
            // (The proxy's own Sync ends no transaction of the client's.)
            st.timing.ready(self.status);
        }
        Ok(forward)
    }

    /// A CommandComplete: timed; a command that changes settings has them read back, one
    /// that drops the server's statements empties its cache; an Execute is answered.
    #[inline]
    fn command_complete(&mut self, body: &[u8], st: &mut Statements<'_>) {
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

    /// An ErrorResponse: forwarded (true), unless it is the failure of a message the proxy
    /// sent to a statement that does not exist, which PostgreSQL's 0A000 replaces.
    #[inline]
    fn error_response(&mut self, body: &[u8], out: &mut BytesMut, st: &mut Statements<'_>) -> bool {
        if self.replace_next_error {
            self.replace_next_error = false;
            messages::error_fields(out, STALE_PLAN);
            st.timing.error("0A000");
            self.on_error(st);
            return false;
        }
        let fields = ErrorFields::parse(body).unwrap_or_default();
        st.timing.error(&fields.code);
        if fields.is_fatal() {
            self.server_fatal = true;
        }
        if fields.code == "0A000" && fields.message.starts_with("cached plan must not change result type") {
            // DDL changed a statement's result: prepare every statement afresh.
            st.server.invalidate_all();
        }
        self.on_error(st);
        true
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
        let head_payload = self.expect.front().is_some_and(|e| e.payload);
        let skipped = self.pop_skipped(st);
        if skipped.is_empty() {
            return;
        }
        self.fail_skipped_probe(&skipped, head_payload);
        self.undo_skipped(skipped, st);
    }

    /// Pops what Postgres skips after an error, up to the next Sync. Only entries with
    /// something to take back are kept: for the usual failed Bind or Execute nothing is, and
    /// nothing is allocated or scanned. A simple query (or function call) pipelined before
    /// the Sync is skipped by Postgres too: no ReadyForQuery answers it.
    fn pop_skipped(&mut self, st: &mut Statements<'_>) -> Skipped {
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
        skipped
    }

    /// The client's message that waited for a skipped probe is in what PostgreSQL now
    /// skips: it is released, and failed. `head_payload`: the failed request had a payload.
    fn fail_skipped_probe(&mut self, skipped: &[(Expect, Option<Payload>)], head_payload: bool) {
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
    }

    /// Takes back, last first, what the skipped requests did to the server's and the
    /// client's statements, except for names that requests still queued touch.
    fn undo_skipped(&self, skipped: Skipped, st: &mut Statements<'_>) {
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
