//! The server side of SCRAM-SHA-256 (RFC 5802, RFC 7677) as Postgres speaks it: no channel
//! binding offered, the user name in the client-first message ignored in favour of the
//! startup packet's.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::RngCore;
use subtle::ConstantTimeEq;

pub const MECHANISM: &str = "SCRAM-SHA-256";

/// Salt, iteration count, StoredKey and ServerKey: what a server keeps instead of a password.
#[derive(Clone)]
pub struct Verifier {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: [u8; 32],
    /// HMAC keys of StoredKey and ServerKey, prepared once (each preparation hashes twice).
    stored_mac: ring::hmac::Key,
    server_mac: ring::hmac::Key,
}

/// HMAC-SHA-256 and SHA-256 from ring (already built for rustls): its assembly SHA-256 is
/// faster than a portable one on CPUs without SHA instructions, and every client login
/// computes two HMACs and a hash.
fn hmac(key: &ring::hmac::Key, data: &[u8]) -> [u8; 32] {
    ring::hmac::sign(key, data).as_ref().try_into().expect("SHA-256 tags are 32 bytes")
}

fn sha256(data: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .try_into()
        .expect("SHA-256 digests are 32 bytes")
}

impl Verifier {
    /// Derives a verifier with a fresh random salt (postgres-protocol draws it). The password is SASLprep-normalised the
    /// way Postgres and libpq do it (postgres-protocol implements that).
    pub fn new(password: &str) -> Verifier {
        let encoded = postgres_protocol::password::scram_sha_256(password.as_bytes());
        Verifier::parse(&encoded).expect("postgres-protocol writes a well-formed verifier")
    }

    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(s: &str) -> Option<Verifier> {
        let rest = s.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iterations, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let stored_key: [u8; 32] = B64.decode(stored).ok()?.try_into().ok()?;
        let server_key: [u8; 32] = B64.decode(server).ok()?.try_into().ok()?;
        Some(Verifier {
            salt: B64.decode(salt).ok()?,
            iterations: iterations.parse().ok()?,
            stored_key,
            stored_mac: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &stored_key),
            server_mac: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &server_key),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding was requested but is not offered")]
    ChannelBinding,
    #[error("SCRAM nonce mismatch")]
    Nonce,
    #[error("password authentication failed")]
    BadProof,
}

/// One exchange: `client_first` then `client_final`.
pub struct Exchange<'a> {
    verifier: &'a Verifier,
    state: State,
}

enum State {
    Start,
    SentFirst { gs2_header: String, client_first_bare: String, server_first: String, nonce: String },
    Done,
}

impl<'a> Exchange<'a> {
    pub fn new(verifier: &'a Verifier) -> Self {
        Exchange { verifier, state: State::Start }
    }

    /// Takes the client-first-message; returns the server-first-message.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<String, ScramError> {
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (cbind, rest) = msg.split_once(',').ok_or(ScramError::Malformed("no GS2 header"))?;
        match cbind {
            "n" | "y" => {}
            c if c.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("bad channel binding flag")),
        }
        let (authzid, bare) = rest.split_once(',').ok_or(ScramError::Malformed("no GS2 header"))?;
        if !authzid.is_empty() && !authzid.starts_with("a=") {
            return Err(ScramError::Malformed("bad authzid"));
        }
        let gs2_header = format!("{cbind},{authzid},");
        let mut client_nonce = None;
        for (i, attr) in bare.split(',').enumerate() {
            match attr.split_once('=') {
                Some(("m", _)) => return Err(ScramError::Malformed("mandatory extension")),
                Some(("n", _)) if i == 0 => {}
                Some(("r", nonce)) if i == 1 => client_nonce = Some(nonce),
                _ if i >= 2 => {}
                _ => return Err(ScramError::Malformed("client-first-message attributes")),
            }
        }
        let client_nonce = client_nonce
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or(ScramError::Malformed("client nonce"))?;
        let mut ours = [0u8; 18];
        rand::rng().fill_bytes(&mut ours);
        let nonce = format!("{client_nonce}{}", B64.encode(ours));
        let server_first =
            format!("r={nonce},s={},i={}", B64.encode(&self.verifier.salt), self.verifier.iterations);
        self.state = State::SentFirst {
            gs2_header,
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok(server_first)
    }

    /// Takes the client-final-message; returns the server-final-message when the proof holds.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<String, ScramError> {
        let State::SentFirst { gs2_header, client_first_bare, server_first, nonce } =
            std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(ScramError::Malformed("client-final-message out of order"));
        };
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or(ScramError::Malformed("no proof"))?;
        let mut parts = without_proof.split(',');
        let cbind = parts
            .next()
            .and_then(|p| p.strip_prefix("c="))
            .ok_or(ScramError::Malformed("no channel binding"))?;
        if B64.decode(cbind).map_err(|_| ScramError::Malformed("channel binding"))? != gs2_header.as_bytes() {
            return Err(ScramError::ChannelBinding);
        }
        let got_nonce =
            parts.next().and_then(|p| p.strip_prefix("r=")).ok_or(ScramError::Malformed("no nonce"))?;
        if got_nonce.as_bytes().ct_eq(nonce.as_bytes()).unwrap_u8() != 1 {
            return Err(ScramError::Nonce);
        }
        let proof = B64.decode(proof).map_err(|_| ScramError::Malformed("proof"))?;
        if proof.len() != 32 {
            return Err(ScramError::BadProof);
        }
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let client_signature = hmac(&self.verifier.stored_mac, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ client_signature[i];
        }
        let stored = sha256(&client_key);
        if stored.ct_eq(&self.verifier.stored_key).unwrap_u8() != 1 {
            return Err(ScramError::BadProof);
        }
        let server_signature = hmac(&self.verifier.server_mac, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// Runs postgres-protocol's SCRAM client (the one tokio-postgres uses) against ours.
    fn run(server_password: &str, client_password: &str) -> Result<(), ScramError> {
        let verifier = Verifier::new(server_password);
        let mut ex = Exchange::new(&verifier);
        let mut client = ScramSha256::new(client_password.as_bytes(), ChannelBinding::unsupported());
        let server_first = ex.client_first(client.message())?;
        client.update(server_first.as_bytes()).expect("client accepts server-first");
        let server_final = ex.client_final(client.message())?;
        client.finish(server_final.as_bytes()).expect("client verifies the server signature");
        Ok(())
    }

    #[test]
    fn right_password_is_accepted_and_server_is_verified() {
        run("pa55 word/é", "pa55 word/é").unwrap();
    }

    #[test]
    fn wrong_password_is_refused() {
        assert_eq!(run("right", "wrong"), Err(ScramError::BadProof));
    }

    #[test]
    fn garbage_is_rejected_without_panic() {
        let verifier = Verifier::new("x");
        for msg in [
            &b""[..],
            b"n",
            b"n,,",
            b"p=tls-server-end-point,,n=,r=abc",
            b"\xff\xfe",
            b"n,,m=x,r=abc",
            b"n,,n=,r=",
        ] {
            assert!(Exchange::new(&verifier).client_first(msg).is_err(), "{msg:?}");
        }
        let mut ex = Exchange::new(&verifier);
        assert!(ex.client_final(b"c=biws,r=x,p=AAAA").is_err());
        let mut ex = Exchange::new(&verifier);
        ex.client_first(b"n,,n=,r=abcdef").unwrap();
        assert_eq!(ex.client_final(b"c=biws,r=abcdef,p=AAAA"), Err(ScramError::Nonce));
    }
}
