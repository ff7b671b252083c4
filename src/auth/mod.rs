//! Authentication of clients against the upstream URL's credentials: SCRAM-SHA-256 (server
//! side, [`scram`]), md5 and trust. Server-side authentication (the proxy as a client of
//! Postgres) lives in `server::conn` and uses postgres-protocol.
//!
//! May import: [`crate::config`] and [`crate::wire`]: nothing with a socket or a pool.

pub mod scram;

use crate::config::Secret;
use subtle::ConstantTimeEq;

/// What a client must prove: the upstream's user and password, with the SCRAM verifier
/// computed once.
pub struct Credentials {
    pub user: String,
    password: Secret,
    pub scram: scram::Verifier,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn new(user: &str, password: &Secret) -> Credentials {
        Credentials {
            user: user.to_owned(),
            password: password.clone(),
            scram: scram::Verifier::new(password.expose()),
        }
    }

    /// Whether a password can prove anything: PostgreSQL accepts no empty password, so a URL
    /// without one admits nobody by SCRAM or md5 (else anyone knowing the user would get in).
    pub fn has_password(&self) -> bool {
        !self.password.expose().is_empty()
    }

    /// Checks an md5 password response (`md5` + hex) in constant time.
    pub fn check_md5(&self, response: &[u8], salt: [u8; 4]) -> bool {
        let expected = postgres_protocol::authentication::md5_hash(
            self.user.as_bytes(),
            self.password.expose().as_bytes(),
            salt,
        );
        expected.as_bytes().ct_eq(response).into()
    }
}
