//! Statement instances on the attached server, for the client-to-server direction: the
//! instance that runs a client's statement ([`Relay::resolve`]), found by name or by text and
//! shape, or prepared and described while the client's message waits; a client's named Parse
//! prepared as an instance of its own; an unnamed Parse prepared under its proxy-wide name;
//! the Closes of what the server's cache evicted.
//!
//! May import: the relay's state ([`super`]) and its scans ([`super::facts`]), never either
//! direction (client.rs calls in here; server.rs does not); [`crate::prepared`] and
//! [`crate::wire`].

use super::facts::mark;
use super::{Barrier, Kind, Payload, Relay, Statements, Undo, FLUSH};
use crate::prepared::{self, ServerStatements, Shape, Statement};
use crate::wire::tag;
use bytes::BytesMut;
use std::sync::Arc;

const SYNC: &[u8] = b"S\0\0\0\x04";

/// A statement name no server has (the prefix is the proxy's): a message sent to it fails.
pub(super) const NO_STATEMENT: &str = "pgsidecar_stale";

impl Relay {
    /// A client's named Parse with rewriting: refused here when the name is taken (or the
    /// client holds too many), else always prepared on the server, under a name of its own:
    /// the client gets PostgreSQL's answer to its text as the database is now (an error
    /// included), and a Describe the proxy adds records the shape PostgreSQL gave it.
    pub(super) fn prepare_named(
        &mut self,
        name: &[u8],
        query: &[u8],
        types: &[u8],
        facts: u8,
        out: &mut BytesMut,
        st: &mut Statements<'_>,
    ) {
        let name = name.to_vec();
        let mut stmt = prepared::statement(query, types);
        mark(&mut stmt, query, facts);
        if let Some(error) = st.client.refuse_parse(&name) {
            let mut buf = BytesMut::new();
            error.encode(&mut buf);
            self.push_local(buf.freeze(), Undo::Nothing);
            self.client_skip = true;
            return;
        }
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
    pub(super) fn resolve(
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
        self.prepare_instance(stmt, shape, st, out, barrier);
        None
    }

    /// Prepares and describes a new instance of the client's `stmt` on this server; the
    /// client's message (`barrier`) is held until the Describe is answered.
    fn prepare_instance(
        &mut self,
        stmt: &Arc<Statement>,
        shape: Option<&Shape>,
        st: &mut Statements<'_>,
        out: &mut BytesMut,
        barrier: Barrier,
    ) {
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
    }

    /// An unnamed Parse prepared under the proxy-wide name of its text: answered here when the
    /// server already holds that statement. The client's "" names it until its next unnamed
    /// Parse or simple query, as Postgres' unnamed statement would. False (nothing done) when
    /// the statement's Parse is still unanswered in this attachment: the client's Parse then
    /// goes as it is, so that if that Parse fails this one gets Postgres' own error too.
    pub(super) fn prepare_unnamed(
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
}
