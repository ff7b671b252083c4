//! SHOW SERVERS: one row per server connection. Idle ones come from the pools; active ones
//! from the clients holding them (the cancel registry records each client's server).

use super::{format_time, tls_column, wall_time_ago, Table, Words};
use crate::cancel::Activity;
use crate::server::conn::{ServerInfo, Target};
use crate::shared::Shared;
use crate::wire::messages::PgError;
use bytes::BytesMut;

pub const COLUMNS: [&str; 11] = [
    "type",
    "user",
    "database",
    "state",
    "addr",
    "port",
    "connect_time",
    "remote_pid",
    "tls",
    "prepared_statements",
    "link",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShowServers;

impl ShowServers {
    pub fn parse(words: Words<'_>) -> Result<ShowServers, PgError> {
        words.finish()?;
        Ok(ShowServers)
    }

    pub fn execute(&self, shared: &Shared) -> BytesMut {
        let mut t = Table::new(&COLUMNS);
        for c in shared.cancels.snapshot() {
            if let Activity::Active { target, server, .. } = &c.activity {
                t.row(&row(target, server, "active", c.pid));
            }
        }
        for up in shared.upstreams() {
            for server in up.pool.idle_servers() {
                t.row(&row(&up.pool.target, &server, "idle", 0));
            }
        }
        t.finish()
    }
}

/// `link` is the key pid of the client holding the server (0 when idle).
fn row(target: &Target, s: &ServerInfo, state: &str, link: i32) -> [String; 11] {
    let url = &target.url;
    [
        "S".to_owned(),
        url.user.clone(),
        url.database.clone(),
        state.to_owned(),
        url.host.clone(),
        url.port.to_string(),
        format_time(wall_time_ago(s.created.elapsed())),
        s.pid.to_string(),
        tls_column(s.tls).to_owned(),
        s.prepared_statements.to_string(),
        link.to_string(),
    ]
}
