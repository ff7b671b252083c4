//! Session settings that follow a client from server to server in transaction mode.
//!
//! A client's settings are what it asked for at startup (parameters and `options`) and what
//! it later changed with SET. When the client gets a server whose applied settings differ,
//! the proxy re-applies them with one statement before forwarding anything.

use std::collections::BTreeMap;

pub type Settings = BTreeMap<String, String>;

/// Startup parameters that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// Settings a client asked for at startup.
pub fn from_startup(params: &[(String, String)], options: &[(String, String)]) -> Settings {
    let mut out = Settings::new();
    for (k, v) in params {
        if !NOT_SETTINGS.contains(&k.as_str()) && !k.starts_with("_pq_.") {
            out.insert(canonical_name(k), v.clone());
        }
    }
    for (k, v) in options {
        out.insert(canonical_name(k), v.clone());
    }
    out
}

/// Postgres compares setting names case-insensitively; keep the spelling it reports for the
/// common ones so that ParameterStatus names and ours line up.
pub fn canonical_name(name: &str) -> String {
    for known in super::relay::TRACKED_REPORTED {
        if known.eq_ignore_ascii_case(name) {
            return (*known).to_owned();
        }
    }
    name.to_ascii_lowercase()
}

fn literal(s: &str) -> String {
    // An E'' literal reads the same whatever standard_conforming_strings is.
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The statement that turns `applied` into `wanted` on a server, or `None` when they match.
pub fn sync_statement(wanted: &Settings, applied: &Settings) -> Option<String> {
    let sets: Vec<String> = wanted
        .iter()
        .filter(|(k, v)| applied.get(*k) != Some(*v))
        .map(|(k, v)| format!("pg_catalog.set_config({}, {}, false)", literal(k), literal(v)))
        .collect();
    let resets: Vec<String> =
        applied.keys().filter(|k| !wanted.contains_key(*k)).map(|k| format!("RESET {}", ident(k))).collect();
    if sets.is_empty() && resets.is_empty() {
        return None;
    }
    let mut sql = String::new();
    if !sets.is_empty() {
        sql.push_str("SELECT ");
        sql.push_str(&sets.join(", "));
    }
    for r in resets {
        if !sql.is_empty() {
            sql.push_str("; ");
        }
        sql.push_str(&r);
    }
    Some(sql)
}

/// Reads back every setting changed in the session, after the client ran SET, RESET or
/// DISCARD.
pub const READ_SESSION_SETTINGS: &str = "SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session' \
     UNION ALL SELECT 'role', pg_catalog.current_setting('role') WHERE pg_catalog.current_setting('role') <> 'none'";

/// Settings from the rows of [`READ_SESSION_SETTINGS`].
pub fn from_rows(rows: Vec<Vec<Option<String>>>) -> Settings {
    rows.into_iter()
        .filter_map(|r| match r.as_slice() {
            [Some(k), Some(v)] => Some((canonical_name(k), v.clone())),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pairs: &[(&str, &str)]) -> Settings {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn nothing_to_do_when_equal() {
        let a = s(&[("TimeZone", "UTC")]);
        assert_eq!(sync_statement(&a, &a), None);
    }

    #[test]
    fn sets_changed_and_resets_extra() {
        let wanted = s(&[("TimeZone", "Europe/Paris"), ("application_name", "it's")]);
        let applied = s(&[("TimeZone", "UTC"), ("statement_timeout", "5000")]);
        let sql = sync_statement(&wanted, &applied).unwrap();
        assert_eq!(
            sql,
            "SELECT pg_catalog.set_config(E'TimeZone', E'Europe/Paris', false), pg_catalog.set_config(E'application_name', E'it''s', false); RESET \"statement_timeout\""
        );
    }

    #[test]
    fn backslashes_are_escaped() {
        let sql = sync_statement(&s(&[("search_path", r"a\b")]), &Settings::new()).unwrap();
        assert!(sql.contains(r"E'a\\b'"), "{sql}");
    }

    #[test]
    fn startup_settings() {
        let params = vec![
            ("user".to_string(), "u".to_string()),
            ("database".to_string(), "d".to_string()),
            ("timezone".to_string(), "UTC".to_string()),
            ("_pq_.x".to_string(), "1".to_string()),
        ];
        let opts = vec![("statement_timeout".to_string(), "5s".to_string())];
        assert_eq!(from_startup(&params, &opts), s(&[("TimeZone", "UTC"), ("statement_timeout", "5s")]));
    }
}
