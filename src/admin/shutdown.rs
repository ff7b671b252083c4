//! SHUTDOWN: the same graceful drain as SIGTERM (the signal is sent to this process, so
//! `pgsidecar run` also stops the application): clients are served until they leave or the
//! shutdown timeout passes. The console sends the signal once the answer has been written,
//! since the process may exit soon after.

use super::{done, Words};
use crate::wire::messages::PgError;
use bytes::BytesMut;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shutdown;

impl Shutdown {
    pub fn parse(words: Words<'_>) -> Result<Shutdown, PgError> {
        words.finish()?;
        Ok(Shutdown)
    }

    pub fn execute(&self) -> BytesMut {
        done("SHUTDOWN")
    }
}

/// Sends SIGTERM to this process.
pub fn signal() -> nix::Result<()> {
    kill(Pid::this(), Signal::SIGTERM)
}
