//! A client's startup settings as PostgreSQL takes them, for transaction mode.
//!
//! There a client's settings are applied with `set_config` on servers opened with the pool's,
//! but at login PostgreSQL would have told the client its own spelling of each value
//! (`UTF8`, `ISO, MDY`, `UTC` where the client wrote `utf-8`, `iso`, `utc`), sent a NOTICE
//! where it adjusts one (an application_name truncated to 63 bytes), and refused a bad one
//! with a FATAL error before ReadyForQuery. So each (name, value as spelled) is tried once on
//! a server, in a transaction that is rolled back: `SET LOCAL name TO DEFAULT` (a value such
//! as `iso` completes the login value, not another client's) then `set_config(name, value,
//! true)`, whose result is the value as PostgreSQL shows it (what ParameterStatus reports).
//! The answer is kept per upstream, for at most [`MAX_ENTRIES`] pairs, so that a login whose
//! settings are all known needs no server.

use crate::params::{self, Settings};
use crate::server::pool::Pool;
use crate::server::ServerError;
use crate::wire::messages::PgError;
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most (name, value) pairs an upstream remembers; the oldest go first.
pub const MAX_ENTRIES: usize = 256;

/// How long the server may take to try the settings.
const TRY_TIMEOUT: Duration = Duration::from_secs(5);

/// What PostgreSQL does with one startup setting.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// The value as PostgreSQL shows it, and the NoticeResponse messages (whole) it sends.
    Accepted { value: String, notices: Bytes },
    /// The ErrorResponse body it refuses the value with (severity ERROR, as `set_config`
    /// raises it; at login it is FATAL).
    Refused { error: Bytes },
}

type Key = (String, String);

#[derive(Default)]
struct Entries {
    map: HashMap<Key, Arc<Outcome>>,
    order: VecDeque<Key>,
}

/// The outcomes an upstream has seen, bounded.
#[derive(Default)]
pub struct StartupValues {
    entries: Mutex<Entries>,
}

impl StartupValues {
    fn get(&self, name: &str, value: &str) -> Option<Arc<Outcome>> {
        let e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.map.get(&(name.to_owned(), value.to_owned())).cloned()
    }

    fn insert(&self, key: Key, outcome: Arc<Outcome>) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if e.map.insert(key.clone(), outcome).is_none() {
            e.order.push_back(key);
            while e.order.len() > MAX_ENTRIES {
                if let Some(old) = e.order.pop_front() {
                    e.map.remove(&old);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A login's settings as PostgreSQL takes them.
#[derive(Debug)]
pub struct Resolved {
    /// Each name's last value, as PostgreSQL shows it.
    pub settings: Settings,
    /// The NoticeResponse messages PostgreSQL sends while it applies them, in order.
    pub notices: BytesMut,
}

/// A login refused: the notices of the settings before the refused one, then the error
/// (whole messages, to send after AuthenticationOk).
#[derive(Debug)]
pub struct Refused {
    pub notices: BytesMut,
    pub error: BytesMut,
}

/// The startup settings `sequence` (in the order PostgreSQL applies them, names as spelled)
/// as PostgreSQL takes them; a server of `pool` tries those `cache` does not know yet.
pub async fn resolve(
    cache: &StartupValues,
    pool: &Arc<Pool>,
    sequence: &[(String, String)],
) -> Result<Resolved, Refused> {
    // Unknown settings before the first refused one (in order, once each): their answers
    // are all that can change the outcome.
    let mut unknown: Vec<Key> = Vec::new();
    let mut known: HashMap<Key, Arc<Outcome>> = HashMap::new();
    for (name, value) in sequence {
        let outcome = cache.get(name, value);
        let refused = matches!(outcome.as_deref(), Some(Outcome::Refused { .. }));
        match outcome {
            Some(outcome) => {
                known.insert((name.clone(), value.clone()), outcome);
                if refused {
                    break;
                }
            }
            None => {
                let key = (name.clone(), value.clone());
                if !unknown.contains(&key) {
                    unknown.push(key);
                }
            }
        }
    }
    let tried =
        if unknown.is_empty() { HashMap::new() } else { try_on_server(cache, pool, &unknown).await? };
    let mut settings = Settings::new();
    let mut notices = BytesMut::new();
    for (name, value) in sequence {
        let key = (name.clone(), value.clone());
        match tried.get(&key).or_else(|| known.get(&key)).map(|o| &**o) {
            Some(Outcome::Accepted { value, notices: n }) => {
                notices.extend_from_slice(n);
                settings.insert(params::canonical_name(name), value.clone());
            }
            Some(Outcome::Refused { error }) => return Err(Refused { notices, error: as_fatal(error) }),
            // Not answered: the server stopped short without saying why.
            None => return Err(proxy_error()),
        }
    }
    Ok(Resolved { settings, notices })
}

fn proxy_error() -> Refused {
    let mut error = BytesMut::new();
    PgError::fatal("08006", "pgsidecar could not check the startup settings on the server")
        .encode(&mut error);
    Refused { notices: BytesMut::new(), error }
}

/// The script that tries `settings` in order, in a transaction rolled back.
fn script(settings: &[Key]) -> String {
    let mut sql = String::from("BEGIN");
    for (name, value) in settings {
        sql.push_str(&format!(
            "; SET LOCAL {} TO DEFAULT; SELECT pg_catalog.set_config({}, {}, true)",
            params::ident(name),
            params::literal(name),
            params::literal(value)
        ));
    }
    sql.push_str("; ROLLBACK");
    sql
}

/// Tries `settings` on a server of the pool and remembers the outcomes; those after a refused
/// one stay unknown (PostgreSQL stops at the first).
async fn try_on_server(
    cache: &StartupValues,
    pool: &Arc<Pool>,
    settings: &[Key],
) -> Result<HashMap<Key, Arc<Outcome>>, Refused> {
    let lease = match pool.checkout_now() {
        Some(lease) => Ok(lease),
        None => {
            let mailbox = Arc::new(crate::server::pool::Mailbox::default());
            pool.checkout_checked(mailbox, quanta::Instant::now()).await
        }
    };
    let mut lease = lease.map_err(|e| {
        tracing::warn!(kind = e.kind(), error = %e, "startup_settings_no_server");
        let mut error = BytesMut::new();
        match e {
            ServerError::WaitTimeout => PgError::fatal(
                "53300",
                "pgsidecar: no server connection became free within PGSIDECAR_QUERY_WAIT_TIMEOUT to check the startup settings",
            )
            .encode(&mut error),
            other => other.encode_for_client(&mut error),
        }
        Refused { notices: BytesMut::new(), error }
    })?;
    let conn = lease.conn();
    let (answers, status) = match tokio::time::timeout(TRY_TIMEOUT, conn.exec_each(&script(settings))).await {
        Ok(Ok(x)) => x,
        // The lease is dropped: the server, in an unknown state, is discarded.
        _ => return Err(proxy_error()),
    };
    if status != b'I' {
        // A refused setting left the transaction aborted.
        let done = tokio::time::timeout(TRY_TIMEOUT, conn.exec("ROLLBACK", &mut Vec::new())).await;
        if !matches!(done, Ok(Ok(_))) {
            lease.close();
            return Err(proxy_error());
        }
    }
    lease.release();
    // Answers: BEGIN, then for each setting its SET LOCAL and its SELECT, then ROLLBACK.
    let mut out = HashMap::new();
    for (i, key) in settings.iter().enumerate() {
        let (reset, set) = (answers.get(1 + 2 * i), answers.get(2 + 2 * i));
        let outcome = match (reset, set) {
            (Some(a), _) if a.error.is_some() => {
                Outcome::Refused { error: a.error.clone().unwrap_or_default() }
            }
            (_, Some(a)) if a.error.is_some() => {
                Outcome::Refused { error: a.error.clone().unwrap_or_default() }
            }
            (_, Some(a)) => match a.rows.first().and_then(|r| r.first()).cloned().flatten() {
                Some(value) => Outcome::Accepted { value, notices: a.notices.clone().freeze() },
                None => break,
            },
            _ => break,
        };
        let refused = matches!(outcome, Outcome::Refused { .. });
        let outcome = Arc::new(outcome);
        cache.insert(key.clone(), outcome.clone());
        out.insert(key.clone(), outcome);
        if refused {
            break;
        }
    }
    Ok(out)
}

/// The whole ErrorResponse message for `body` with its severity made FATAL, as PostgreSQL
/// refuses a setting at login.
fn as_fatal(body: &[u8]) -> BytesMut {
    let mut fields = BytesMut::with_capacity(body.len() + 8);
    for field in body.split(|&b| b == 0).filter(|f| !f.is_empty()) {
        match field[0] {
            b'S' | b'V' => {
                fields.put_u8(field[0]);
                fields.put_slice(b"FATAL");
            }
            _ => fields.put_slice(field),
        }
        fields.put_u8(0);
    }
    fields.put_u8(0);
    let mut out = BytesMut::with_capacity(fields.len() + 5);
    out.put_u8(crate::wire::tag::ERROR_RESPONSE);
    out.put_i32(fields.len() as i32 + 4);
    out.put_slice(&fields);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_fatal_with_every_other_field_kept() {
        let body = b"SERROR\0VERROR\0C22023\0Minvalid value for parameter \"TimeZone\": \"x\"\0Rhook\0\0";
        let out = as_fatal(body);
        let mut want = BytesMut::new();
        want.put_u8(b'E');
        let fields = b"SFATAL\0VFATAL\0C22023\0Minvalid value for parameter \"TimeZone\": \"x\"\0Rhook\0\0";
        want.put_i32(fields.len() as i32 + 4);
        want.put_slice(fields);
        assert_eq!(out, want);
    }

    #[test]
    fn the_script_resets_each_setting_before_trying_it_and_rolls_back() {
        let s = script(&[("DateStyle".into(), "iso".into()), ("a\"b".into(), "it's".into())]);
        assert_eq!(
            s,
            "BEGIN; SET LOCAL \"DateStyle\" TO DEFAULT; SELECT pg_catalog.set_config(E'DateStyle', E'iso', true); \
             SET LOCAL \"a\"\"b\" TO DEFAULT; SELECT pg_catalog.set_config(E'a\"b', E'it''s', true); ROLLBACK"
        );
    }

    #[test]
    fn the_cache_is_bounded_and_forgets_the_oldest_first() {
        let cache = StartupValues::default();
        let accepted = Arc::new(Outcome::Accepted { value: "v".into(), notices: Bytes::new() });
        for i in 0..MAX_ENTRIES + 10 {
            cache.insert((format!("n{i}"), "v".into()), accepted.clone());
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        assert!(cache.get("n0", "v").is_none() && cache.get("n9", "v").is_none());
        assert!(
            cache.get("n10", "v").is_some() && cache.get(&format!("n{}", MAX_ENTRIES + 9), "v").is_some()
        );
    }
}
