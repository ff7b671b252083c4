//! SHOW CLIENTS: one row per logged-in client, from the cancel registry (which knows who
//! each client is and what it is doing). Never a password, a query or its parameters.

use super::{format_time, tls_column, Table, Words};
use crate::cancel::Activity;
use crate::shared::Shared;
use crate::wire::messages::PgError;
use bytes::BytesMut;

pub const COLUMNS: [&str; 13] = [
    "type",
    "user",
    "database",
    "state",
    "addr",
    "port",
    "connect_time",
    "wait",
    "wait_us",
    "remote_pid",
    "tls",
    "application_name",
    "pinned",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShowClients;

impl ShowClients {
    pub fn parse(words: Words<'_>) -> Result<ShowClients, PgError> {
        words.finish()?;
        Ok(ShowClients)
    }

    pub fn execute(&self, shared: &Shared) -> BytesMut {
        let mut t = Table::new(&COLUMNS);
        for c in shared.cancels.snapshot() {
            let (state, wait, server_pid) = match &c.activity {
                Activity::Idle => ("idle", Default::default(), 0),
                Activity::Waiting { since } => ("waiting", since.elapsed(), 0),
                Activity::Active { server, .. } => ("active", Default::default(), server.pid),
            };
            let wait: std::time::Duration = wait;
            t.row(&[
                "C".to_owned(),
                c.info.user.to_string(),
                c.info.database.to_string(),
                state.to_owned(),
                c.info.peer.addr(),
                c.info.peer.port().to_string(),
                format_time(c.info.connected_at),
                wait.as_secs().to_string(),
                wait.subsec_micros().to_string(),
                server_pid.to_string(),
                tls_column(c.info.tls).to_owned(),
                c.application_name.clone(),
                if c.pinned { "1" } else { "0" }.to_owned(),
            ]);
        }
        t.finish()
    }
}
