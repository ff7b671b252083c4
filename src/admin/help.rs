//! SHOW HELP: the commands, as a NOTICE like PgBouncer's ("Console usage").

use super::Words;
use crate::wire::messages::{self, PgError};
use bytes::BytesMut;

/// Every command, one per line, for SHOW HELP.
pub const USAGE: &str = "\
SHOW HELP|VERSION|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|STATS|QUERIES
SHOW LISTS|USERS|FDS
PAUSE [<db>]
RESUME [<db>]
RECONNECT [<db>]
RELOAD
SHUTDOWN";

/// The same list on one line, as the hint of a syntax error.
pub const USAGE_HINT: &str =
    "commands: SHOW HELP|VERSION|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|STATS|QUERIES|LISTS|USERS|FDS; \
PAUSE [<db>]; RESUME [<db>]; RECONNECT [<db>]; RELOAD; SHUTDOWN";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShowHelp;

impl ShowHelp {
    pub fn parse(words: Words<'_>) -> Result<ShowHelp, PgError> {
        words.finish()?;
        Ok(ShowHelp)
    }

    pub fn execute(&self) -> BytesMut {
        let mut buf = BytesMut::new();
        let detail: String = USAGE.lines().map(|l| format!("\n\t{l}")).collect();
        messages::notice(&mut buf, "Console usage", Some(&detail));
        messages::command_complete(&mut buf, "SHOW");
        buf
    }
}
