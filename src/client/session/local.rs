//! Messages answered without a server: a named Parse when every server is busy, Close of a
//! managed statement, Flush, and Sync outside a transaction.

use super::*;

impl Session {
    /// Whether the next message may be one [`Session::answer_locally`] answers. Checked
    /// before that future is allocated: most requests (a Query, an unnamed Parse) are not.
    /// When the bytes that tell are not in yet, it says yes and lets that function decide.
    pub(super) fn may_answer_locally(&self) -> bool {
        use crate::wire::frame::HEADER_LEN;
        let b = &self.crbuf[..];
        self.local_skip
            || match b.first() {
                Some(&tag::SYNC | &tag::FLUSH) => true,
                // A named statement (its name's first byte is not the terminator).
                Some(&tag::PARSE) => b.get(HEADER_LEN).is_none_or(|&c| c != 0),
                // Close of a named statement.
                Some(&tag::CLOSE) => {
                    b.get(HEADER_LEN).is_none_or(|&c| c == b'S')
                        && b.get(HEADER_LEN + 1).is_none_or(|&c| c != 0)
                }
                _ => false,
            }
    }

    /// Answers, without a server, the messages that need none: a named Parse while every
    /// server is busy (the statement is prepared on a server when the client first binds or
    /// describes it, and an error in its text arrives then), Close of a
    /// managed statement, Flush, and Sync outside a transaction. Single-threaded clients that
    /// prepare synchronously while other connections of theirs hold servers (pgbench -M
    /// prepared) would otherwise wait for a server just to prepare.
    pub(super) fn answer_locally(&mut self) -> Boxed<'_, Local> {
        Box::pin(async move {
            loop {
                let h = match Header::parse(&self.crbuf, self.max_message()) {
                    Ok(Some(h)) => h,
                    _ => return Local::NeedServer,
                };
                let local =
                    matches!(h.tag, tag::PARSE | tag::CLOSE | tag::SYNC | tag::FLUSH) || self.local_skip;
                if !local {
                    return Local::NeedServer;
                }
                while self.crbuf.len() < h.total_len() {
                    crate::wire::frame::grow_toward(&mut self.crbuf, h.total_len(), IDLE_READ);
                    match self.client.read_buf(&mut self.crbuf).await {
                        Ok(0) | Err(_) => return Local::End,
                        Ok(n) => self.received(n),
                    }
                }
                let msg = self.crbuf.split_to(h.total_len());
                let body = &msg[crate::wire::frame::HEADER_LEN..];
                let answered = match h.tag {
                    tag::SYNC => {
                        self.local_skip = false;
                        messages::ready_for_query(&mut self.cwbuf, b'I');
                        true
                    }
                    _ if self.local_skip => true,
                    tag::FLUSH => true,
                    // A named Parse goes to a server, so that the client gets PostgreSQL's
                    // answer (an error included) to the Parse itself, unless it waited
                    // PARSE_WAIT for one.
                    tag::PARSE if !self.parse_without_server => false,
                    tag::PARSE => match self.parse_locally(body) {
                        Ok(answered) => answered,
                        Err(e) => {
                            self.fail(PgError::fatal("08P01", format!("invalid message from client: {e}")))
                                .await;
                            return Local::End;
                        }
                    },
                    _ => match crate::prepared::target(body, "Close") {
                        Ok((b'S', name)) if !name.is_empty() && self.statements.remove(name) => {
                            self.cwbuf.extend_from_slice(b"3\0\0\0\x04");
                            true
                        }
                        _ => false,
                    },
                };
                if !answered {
                    // Put it back for the server path.
                    let mut back = msg;
                    back.unsplit(std::mem::take(&mut self.crbuf));
                    self.crbuf = back;
                    return Local::NeedServer;
                }
                // Answered without a server, but not without limit: flush before more.
                if self.crbuf.len() < crate::wire::frame::HEADER_LEN || self.cwbuf.len() >= WRITE_HIGH {
                    return Local::Answered;
                }
            }
        })
    }

    /// A named Parse that waited [`PARSE_WAIT`] for a server: acknowledged now, and the
    /// statement prepared on a server when the client first binds or describes it. `false`:
    /// an unnamed Parse, which needs a server.
    fn parse_locally(&mut self, body: &[u8]) -> Result<bool, crate::wire::frame::FrameError> {
        let p = crate::prepared::parse_parts(body)?;
        if p.name.is_empty() {
            return Ok(false);
        }
        if let Some(error) = self.statements.refuse_parse(p.name) {
            error.encode(&mut self.cwbuf);
            self.local_skip = true;
        } else {
            self.timing.get_or_insert_with(crate::client::reuse::timing).parse(p.name, p.query);
            let stmt = crate::client::relay::managed_statement(p.query, p.types);
            self.statements.insert(p.name.to_vec(), Arc::new(stmt));
            self.cwbuf.extend_from_slice(b"1\0\0\0\x04");
        }
        Ok(true)
    }
}
