//! The admin console: the virtual database `pgsidecar` (alias `pgbouncer`), spoken to with
//! the simple query protocol, answering PgBouncer's commands with PgBouncer's column names so
//! that existing scripts and dashboards keep working.
//!
//! [`console`] runs a console session; every command lives in its own file with a `parse`
//! that reads its arguments and an `execute` that returns the messages to send (RowDescription,
//! DataRows and CommandComplete), never writing to a socket itself. [`Command`] dispatches.
//!
//! May import: [`crate::shared`], [`crate::upstream`], [`crate::cancel`], [`crate::server`],
//! [`crate::observe`], [`crate::config`], [`crate::stream`], [`crate::wire`]. Never [`crate::client`]
//! (a console login reaches it from the handshake) or [`crate::proxy`].

pub mod console;

mod clients;
mod config;
mod databases;
mod fds;
mod help;
mod lists;
mod pause;
mod pools;
mod queries;
mod reconnect;
mod reload;
mod resume;
mod servers;
mod shutdown;
mod stats;
mod unsupported;
mod users;
mod version;

#[cfg(test)]
mod tests;

use crate::shared::Shared;
use crate::upstream::Upstream;
use crate::wire::messages::{self, PgError};
use bytes::BytesMut;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Database names that open the admin console instead of a pool.
pub const CONSOLE_DATABASES: [&str; 2] = ["pgsidecar", "pgbouncer"];

pub fn is_console_database(name: &str) -> bool {
    CONSOLE_DATABASES.contains(&name)
}

/// One admin command, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help(help::ShowHelp),
    Version(version::ShowVersion),
    Pools(pools::ShowPools),
    Stats(stats::ShowStats),
    Clients(clients::ShowClients),
    Servers(servers::ShowServers),
    Config(config::ShowConfig),
    Databases(databases::ShowDatabases),
    Queries(queries::ShowQueries),
    Lists(lists::ShowLists),
    Users(users::ShowUsers),
    Fds(fds::ShowFds),
    Unsupported(unsupported::Unsupported),
    Pause(pause::Pause),
    Resume(resume::Resume),
    Reconnect(reconnect::Reconnect),
    Reload(reload::Reload),
    Shutdown(shutdown::Shutdown),
}

impl Command {
    /// Parses the text of one simple Query: case-insensitive, one command, an optional
    /// trailing semicolon. `Ok(None)` for an empty query.
    pub fn parse(sql: &str) -> Result<Option<Command>, PgError> {
        let text = sql.trim();
        let text = text.strip_suffix(';').unwrap_or(text).trim_end();
        if text.contains(';') {
            return Err(syntax_error("the admin console runs one command per query"));
        }
        let mut words = Words::new(text);
        let Some(first) = words.next() else { return Ok(None) };
        let command = match first.to_ascii_uppercase().as_str() {
            "SHOW" => {
                let Some(what) = words.next() else {
                    return Err(unknown(text));
                };
                match what.to_ascii_uppercase().as_str() {
                    "HELP" => Command::Help(help::ShowHelp::parse(words)?),
                    "VERSION" => Command::Version(version::ShowVersion::parse(words)?),
                    "POOLS" => Command::Pools(pools::ShowPools::parse(words)?),
                    "STATS" => Command::Stats(stats::ShowStats::parse(words)?),
                    "CLIENTS" => Command::Clients(clients::ShowClients::parse(words)?),
                    "SERVERS" => Command::Servers(servers::ShowServers::parse(words)?),
                    "CONFIG" => Command::Config(config::ShowConfig::parse(words)?),
                    "DATABASES" => Command::Databases(databases::ShowDatabases::parse(words)?),
                    "QUERIES" => Command::Queries(queries::ShowQueries::parse(words)?),
                    "LISTS" => Command::Lists(lists::ShowLists::parse(words)?),
                    "USERS" => Command::Users(users::ShowUsers::parse(words)?),
                    "FDS" => Command::Fds(fds::ShowFds::parse(words)?),
                    _ => return Err(unknown(text)),
                }
            }
            "PAUSE" => Command::Pause(pause::Pause::parse(words)?),
            "RESUME" => Command::Resume(resume::Resume::parse(words)?),
            "RECONNECT" => Command::Reconnect(reconnect::Reconnect::parse(words)?),
            "RELOAD" => Command::Reload(reload::Reload::parse(words)?),
            "SHUTDOWN" => Command::Shutdown(shutdown::Shutdown::parse(words)?),
            "KILL" | "SUSPEND" => Command::Unsupported(unsupported::Unsupported::parse(first, words)?),
            _ => return Err(unknown(text)),
        };
        Ok(Some(command))
    }

    /// Runs the command. PAUSE waits for servers to come back and RELOAD asks the databases
    /// for their connection limits; everything else answers at once.
    pub async fn execute(self, shared: &Arc<Shared>) -> Result<BytesMut, PgError> {
        match self {
            Command::Help(c) => Ok(c.execute()),
            Command::Version(c) => Ok(c.execute()),
            Command::Pools(c) => Ok(c.execute(shared)),
            Command::Stats(c) => Ok(c.execute(shared)),
            Command::Clients(c) => Ok(c.execute(shared)),
            Command::Servers(c) => Ok(c.execute(shared)),
            Command::Config(c) => Ok(c.execute(shared)),
            Command::Databases(c) => Ok(c.execute(shared)),
            Command::Queries(c) => Ok(c.execute(shared)),
            Command::Lists(c) => Ok(c.execute(shared)),
            Command::Users(c) => Ok(c.execute(shared)),
            Command::Fds(c) => Ok(c.execute()),
            Command::Unsupported(c) => Err(c.execute()),
            Command::Pause(c) => c.execute(shared).await,
            Command::Resume(c) => c.execute(shared),
            Command::Reconnect(c) => c.execute(shared),
            Command::Reload(c) => Ok(c.execute(shared).await),
            Command::Shutdown(c) => Ok(c.execute()),
        }
    }

    /// Whether the command changes what the proxy does (logged at info), rather than only
    /// showing it.
    pub fn changes_state(&self) -> bool {
        matches!(
            self,
            Command::Pause(_)
                | Command::Resume(_)
                | Command::Reconnect(_)
                | Command::Reload(_)
                | Command::Shutdown(_)
        )
    }
}

/// Starts the graceful drain SHUTDOWN asked for; called once its answer is on its way.
pub fn start_shutdown() {
    if let Err(e) = shutdown::signal() {
        tracing::error!(error = %e, "admin_shutdown_failed");
    }
}

/// The words of a command after its name, consumed by each command's `parse`.
pub struct Words<'a> {
    iter: std::str::SplitWhitespace<'a>,
    text: &'a str,
}

impl<'a> Words<'a> {
    fn new(text: &'a str) -> Words<'a> {
        Words { iter: text.split_whitespace(), text }
    }

    fn next(&mut self) -> Option<&'a str> {
        self.iter.next()
    }

    /// An optional database name (double quotes allowed), and nothing after it.
    pub fn optional_database(mut self) -> Result<Option<String>, PgError> {
        let db = self
            .next()
            .map(|w| w.strip_prefix('"').and_then(|w| w.strip_suffix('"')).unwrap_or(w).to_owned());
        self.finish()?;
        Ok(db)
    }

    /// Fails when words are left over.
    pub fn finish(mut self) -> Result<(), PgError> {
        match self.next() {
            None => Ok(()),
            Some(extra) => {
                Err(syntax_error(format!("unexpected \"{extra}\" in admin command \"{}\"", self.text))
                    .with_hint(help::USAGE_HINT))
            }
        }
    }
}

fn syntax_error(message: impl Into<String>) -> PgError {
    PgError::error("42601", message)
}

fn unknown(text: &str) -> PgError {
    syntax_error(format!("unknown admin command \"{text}\"")).with_hint(help::USAGE_HINT)
}

/// The pools a PAUSE, RESUME or RECONNECT acts on: one by database name, or all.
fn pools_named<'a>(shared: &'a Shared, database: Option<&str>) -> Result<Vec<&'a Arc<Upstream>>, PgError> {
    let all = shared.upstreams();
    match database {
        None => Ok(all.iter().collect()),
        Some(db) => {
            let found: Vec<&Arc<Upstream>> = all.iter().filter(|u| u.pool.database == db).collect();
            if found.is_empty() {
                return Err(PgError::error("3D000", format!("database \"{db}\" does not exist")));
            }
            Ok(found)
        }
    }
}

/// A SHOW answer under construction: RowDescription, then DataRows, then CommandComplete.
pub struct Table {
    buf: BytesMut,
    width: usize,
}

impl Table {
    pub fn new(columns: &[&str]) -> Table {
        let mut buf = BytesMut::with_capacity(256);
        messages::row_description(&mut buf, columns);
        Table { buf, width: columns.len() }
    }

    /// Columns with PgBouncer's types (`text`, `int4`, `int8` OIDs from [`messages`]), so
    /// that drivers hand monitoring tools numbers where PgBouncer's do.
    pub fn typed(columns: &[&str], types: &[i32]) -> Table {
        debug_assert_eq!(columns.len(), types.len(), "one type per column");
        let typed: Vec<(&str, i32)> = columns.iter().copied().zip(types.iter().copied()).collect();
        let mut buf = BytesMut::with_capacity(256);
        messages::row_description_typed(&mut buf, &typed);
        Table { buf, width: columns.len() }
    }

    pub fn row<S: AsRef<str>>(&mut self, values: &[S]) {
        debug_assert_eq!(values.len(), self.width, "one value per column");
        let values: Vec<Option<&str>> = values.iter().map(|v| Some(v.as_ref())).collect();
        messages::data_row(&mut self.buf, &values);
    }

    pub fn finish(mut self) -> BytesMut {
        messages::command_complete(&mut self.buf, "SHOW");
        self.buf
    }
}

/// CommandComplete alone, for the commands that change something.
fn done(tag: &str) -> BytesMut {
    let mut buf = BytesMut::new();
    messages::command_complete(&mut buf, tag);
    buf
}

/// A wall-clock time as PgBouncer shows it, in UTC: `2026-11-26 16:11:01 UTC`.
pub fn format_time(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's days_from_civil, inverted).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The wall-clock time `ago` before now.
pub fn wall_time_ago(ago: std::time::Duration) -> SystemTime {
    SystemTime::now().checked_sub(ago).unwrap_or(UNIX_EPOCH)
}

/// `TLS` for an encrypted connection, empty otherwise (PgBouncer leaves it empty too).
fn tls_column(tls: bool) -> &'static str {
    if tls {
        "TLS"
    } else {
        ""
    }
}
