//! The client-to-server direction of the relay ([`Relay::client_to_server`]): client messages
//! move towards the server, each request queued with the answer it expects. In transaction
//! mode named statements are rewritten: a client's statement runs as an instance the server
//! holds (found or prepared by instances.rs), and the proxy answers a Close or DEALLOCATE of
//! a statement it manages itself.
//!
//! May import: the relay's state ([`super`]), its scans ([`super::facts`]) and instances
//! (instances.rs), never the other direction (server.rs); [`crate::prepared`],
//! [`crate::wire`], [`crate::params`].

use super::facts::{
    scan_facts, text_facts, CALLS_SET_CONFIG, MAY_NAME_CUSTOM_SETTINGS, MENTIONS_SESSION_STATE,
};
use super::{
    read_whole, stream_rest, Barrier, Kind, Payload, Relay, Statements, Stop, Undo, FLUSH, MAX_EXPECTED,
    WRITE_HIGH,
};
use crate::prepared::{self, SqlCommand, Statement};
use crate::wire::frame::{FrameError, Header, HEADER_LEN};
use crate::wire::tag;
use bytes::{Buf, Bytes, BytesMut};
use std::ops::Range;

const CLOSE_COMPLETE: &[u8] = b"3\0\0\0\x04";

impl Relay {
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
            if let Some(stop) = stream_rest(&mut self.c2s_remaining, input, to_server) {
                return Ok(stop);
            }
            self.emit_local(to_client);
            if let Some(stop) = self.client_waits(to_server) {
                return Ok(stop);
            }
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
                    if !self.skip_message(input, h.total_len()) {
                        return Ok(Stop::Input);
                    }
                    continue;
                }
                self.client_skip = false;
            }
            if !read_whole(h.tag) {
                self.streamed_message(h.tag, st);
                self.c2s_remaining = h.total_len();
                continue;
            }
            if input.len() < h.total_len() {
                self.c2s_need = h.total_len();
                return Ok(Stop::Input);
            }
            self.c2s_need = 0;
            if !self.whole_message(h.tag, h.total_len(), input, to_server, st)? {
                // Waits for a statement instance to be described (`held`).
                return Ok(Stop::Input);
            }
        }
    }

    /// Why no further client message may move now, if one may not: the client said goodbye,
    /// a message waits for a statement instance, the output is full, or the answers owed are
    /// at their cap (the server is then asked, once, to flush its answers).
    #[inline]
    fn client_waits(&mut self, to_server: &mut BytesMut) -> Option<Stop> {
        if self.terminated || self.held {
            return Some(Stop::Input);
        }
        self.resume_pending = false;
        if to_server.len() >= WRITE_HIGH {
            return Some(Stop::Output);
        }
        if self.expect.len() >= MAX_EXPECTED {
            // Answers owed are capped: the client is not read further until the server
            // has answered some. The server may be holding its answers until a Sync
            // the proxy has not read yet, so it is asked to flush them.
            if !self.flush_asked {
                to_server.extend_from_slice(FLUSH);
                self.flush_asked = true;
            }
            return Some(Stop::Input);
        }
        self.flush_asked = false;
        None
    }

    /// Drops a message that follows an error the proxy raised (`total` bytes): false when
    /// it has not all arrived yet.
    fn skip_message(&mut self, input: &mut BytesMut, total: usize) -> bool {
        if input.len() < total {
            self.c2s_need = total;
            return false;
        }
        self.c2s_need = 0;
        input.advance(total);
        true
    }

    /// What a message streamed through (not read whole) asks of the server.
    #[inline]
    fn streamed_message(&mut self, t: u8, st: &mut Statements<'_>) {
        match t {
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
    }

    /// A message read whole, `total` bytes at the start of `input`: handled and taken from
    /// the input, or left there (false) while it waits for a statement instance.
    #[inline]
    fn whole_message(
        &mut self,
        t: u8,
        total: usize,
        input: &mut BytesMut,
        out: &mut BytesMut,
        st: &mut Statements<'_>,
    ) -> Result<bool, FrameError> {
        if t == tag::QUERY {
            return Ok(self.client_query(input, total, out, st));
        }
        // Read in place (a split would take a reference to the read buffer per message).
        let msg = &input[..total];
        if !self.tracked_message(t, msg, out, st)? {
            return Ok(false);
        }
        input.advance(total);
        Ok(true)
    }

    /// A whole Query, `total` bytes at the start of `input`: false (left in the input) when
    /// it runs a statement whose instance is being prepared on this server.
    #[inline]
    fn client_query(
        &mut self,
        input: &mut BytesMut,
        total: usize,
        out: &mut BytesMut,
        st: &mut Statements<'_>,
    ) -> bool {
        if self.drop_query {
            // Failed with its statement's instance: already answered.
            self.drop_query = false;
            input.advance(total);
            return true;
        }
        // SQL EXECUTE of a statement the client prepared through the protocol runs the
        // instance of it on this server.
        let mut rewritten = None;
        if st.rewrite {
            if let Some((at, name)) = prepared::sql_execute(&input[HEADER_LEN..total]) {
                if let Some(stmt) = st.client.get(&name).cloned() {
                    let Some(instance) = self.resolve(&stmt, st, out, Barrier::Query) else {
                        return false; // waits for the instance (`held`)
                    };
                    self.note_statement(&stmt);
                    rewritten = Some(with_instance(&input[..total], at, &instance));
                }
            }
        }
        // Split off: the timing keeps the text until the query ends.
        let msg = input.split_to(total).freeze();
        self.query(msg, rewritten, out, st);
        true
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
        if st.rewrite && self.deallocate_locally(body, st) {
            return;
        }
        self.outstanding += 1;
        self.expect_server(Kind::Query);
        st.timing.query(Some(msg.slice(HEADER_LEN..text_end)), fingerprint);
        out.extend_from_slice(rewritten.as_deref().unwrap_or(&msg));
    }

    /// A DEALLOCATE of statements the proxy manages is answered here (true); what each took
    /// away comes back if an earlier error in the same pipeline makes Postgres skip it (see
    /// `on_error`). A DISCARD ALL or DEALLOCATE ALL the server runs clears the client's names.
    #[inline]
    fn deallocate_locally(&mut self, body: &[u8], st: &mut Statements<'_>) -> bool {
        match prepared::sql_command(body) {
            Some(SqlCommand::Deallocate(name)) if st.client.contains(name.as_bytes()) => {
                let stmt = st.client.take(name.as_bytes()).expect("looked up above");
                let undo = Undo::Removed(name.as_bytes().to_vec(), stmt);
                self.push(Kind::LocalQuery, false, Some(Payload::LocalQuery("DEALLOCATE", undo)));
                return true;
            }
            Some(SqlCommand::DeallocateAll) if !st.pinned => {
                let undo = Undo::Cleared(std::mem::take(st.client));
                self.push(Kind::LocalQuery, false, Some(Payload::LocalQuery("DEALLOCATE ALL", undo)));
                return true;
            }
            Some(SqlCommand::DiscardAll | SqlCommand::DeallocateAll) => st.client.clear(),
            _ => {}
        }
        false
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
            tag::PARSE => self.parse_message(msg, body, out, st),
            tag::BIND => self.bind_message(msg, body, out, st),
            tag::DESCRIBE => self.describe_message(msg, body, out, st),
            tag::CLOSE => self.close_message(msg, body, out, st),
            _ => unreachable!("only whole messages of these types are read"),
        }
    }

    /// A Parse: an unnamed one (or any, without rewriting) goes to the server as it is, unless
    /// it is prepared under a proxy-wide name; a named one is prepared as an instance of its
    /// own and described.
    #[inline]
    fn parse_message(
        &mut self,
        msg: &[u8],
        body: &[u8],
        out: &mut BytesMut,
        st: &mut Statements<'_>,
    ) -> Result<bool, FrameError> {
        let p = prepared::parse_parts(body)?;
        st.timing.parse(p.name, p.query);
        let unnamed = p.name.is_empty();
        let facts = self.parse_facts(p.query, unnamed, st);
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
        self.prepare_named(p.name, p.query, p.types, facts, out, st);
        Ok(true)
    }

    /// What the scans find in a Parse's `query`, and what of it this transaction notes now.
    /// An unnamed Parse of the text the client parsed last time (drivers send the same few
    /// texts over and over) takes what the scans found in it then: the timing has just
    /// compared the two. Only the text is scanned, not the name and parameter types around it.
    #[inline]
    fn parse_facts(&mut self, query: &[u8], unnamed: bool, st: &mut Statements<'_>) -> u8 {
        let facts = match st.timing.unnamed_facts() {
            Some(facts) if unnamed => facts,
            _ => {
                let facts = scan_facts(query);
                if unnamed {
                    st.timing.set_unnamed_facts(facts);
                }
                facts
            }
        };
        if facts & MAY_NAME_CUSTOM_SETTINGS != 0 {
            crate::params::custom_setting_names(query, &mut self.custom_names);
        }
        if (unnamed || !st.rewrite) && facts & CALLS_SET_CONFIG != 0 {
            // A statement that stays the server's (unnamed, or named without
            // rewriting): whatever executes it is sent in this batch or on this server.
            self.settings_changed = true;
        }
        facts
    }

    /// A Bind: of a statement the proxy manages, rewritten to name its instance on this
    /// server (false while that is being prepared); otherwise sent as it is.
    #[inline]
    fn bind_message(
        &mut self,
        msg: &[u8],
        body: &[u8],
        out: &mut BytesMut,
        st: &mut Statements<'_>,
    ) -> Result<bool, FrameError> {
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
        Ok(true)
    }

    /// A Describe: of a statement the proxy manages, rewritten as a Bind is.
    #[inline]
    fn describe_message(
        &mut self,
        msg: &[u8],
        body: &[u8],
        out: &mut BytesMut,
        st: &mut Statements<'_>,
    ) -> Result<bool, FrameError> {
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
        Ok(true)
    }

    /// A Close: of a statement the proxy manages, answered here (the statement stays on the
    /// server for other clients; the LRU closes it); otherwise sent as it is.
    #[inline]
    fn close_message(
        &mut self,
        msg: &[u8],
        body: &[u8],
        out: &mut BytesMut,
        st: &mut Statements<'_>,
    ) -> Result<bool, FrameError> {
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
            let undo = Undo::Removed(name.to_vec(), stmt);
            self.push_local(Bytes::from_static(CLOSE_COMPLETE), undo);
        } else {
            out.extend_from_slice(msg);
            self.expect_server(Kind::Close);
        }
        Ok(true)
    }
}

/// The Query `msg` (a whole message) with the statement name at `at` in its text replaced by
/// `instance`.
fn with_instance(msg: &[u8], at: Range<usize>, instance: &str) -> BytesMut {
    let text = &msg[HEADER_LEN..];
    let mut m = BytesMut::with_capacity(msg.len() + instance.len());
    m.extend_from_slice(&[tag::QUERY, 0, 0, 0, 0]);
    m.extend_from_slice(&text[..at.start]);
    m.extend_from_slice(instance.as_bytes());
    m.extend_from_slice(&text[at.end..]);
    let len = (m.len() - 1) as u32;
    m[1..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    m
}
