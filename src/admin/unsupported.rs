//! PgBouncer commands that have no meaning here, answered with why and what to use instead
//! (SQLSTATE 0A000, feature not supported) rather than a syntax error:
//!
//! - `SUSPEND` stops all I/O so a new PgBouncer process can take over the sockets; pgsidecar
//!   has no online restart (the dyno restarts as a whole).
//! - `KILL db` drops every client and server of a database at once; pgsidecar's sessions are
//!   not reachable from the console, and `PAUSE db` / `RECONNECT db` cover a database restart.

use super::Words;
use crate::wire::messages::PgError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsupported {
    Suspend,
    Kill(Option<String>),
}

impl Unsupported {
    pub fn parse(first: &str, words: Words<'_>) -> Result<Unsupported, PgError> {
        if first.eq_ignore_ascii_case("SUSPEND") {
            words.finish()?;
            return Ok(Unsupported::Suspend);
        }
        Ok(Unsupported::Kill(words.optional_database()?))
    }

    pub fn execute(&self) -> PgError {
        match self {
            Unsupported::Suspend => PgError::error(
                "0A000",
                "SUSPEND is not supported: pgsidecar has no online restart (the dyno restarts as a whole)",
            )
            .with_hint("to restart the database behind it, use PAUSE, then RESUME"),
            Unsupported::Kill(_) => PgError::error(
                "0A000",
                "KILL is not supported: the console cannot end client sessions",
            )
            .with_hint("PAUSE [db] stops handing out servers and waits for them; RECONNECT [db] replaces every server"),
        }
    }
}
