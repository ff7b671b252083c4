//! Session settings that follow a client from server to server in transaction mode.
//!
//! A client's settings are what it asked for at startup (parameters and `options`) and what
//! it later changed with SET. When the client gets a server whose applied settings differ,
//! the proxy re-applies them with one statement before forwarding anything.

/// Setting names and values, sorted by name. A client has a handful, so a sorted vector is
/// both smaller (an idle client keeps two of these) and faster than a tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings(Vec<(String, String)>);

impl Settings {
    pub fn new() -> Settings {
        Settings(Vec::new())
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<&String> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    pub fn insert(&mut self, name: String, value: String) {
        match self.find(&name) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => {
                // Grown one at a time: a session keeps these for its whole life.
                self.0.reserve_exact(1);
                self.0.insert(i, (name, value))
            }
        }
    }

    pub fn remove(&mut self, name: &str) {
        if let Ok(i) = self.find(name) {
            self.0.remove(i);
        }
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }
}

impl Extend<(String, String)> for Settings {
    fn extend<I: IntoIterator<Item = (String, String)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl FromIterator<(String, String)> for Settings {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Settings {
        let mut s = Settings::new();
        s.extend(iter);
        s
    }
}

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
    // Kept for the whole connection: no spare capacity.
    out.0.shrink_to_fit();
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
        .filter(|(k, v)| applied.get(k) != Some(*v))
        .map(|(k, v)| format!("pg_catalog.set_config({}, {}, false)", literal(k), literal(v)))
        .collect();
    let resets: Vec<String> =
        applied.keys().filter(|k| !wanted.contains_key(k)).map(|k| format!("RESET {}", ident(k))).collect();
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
    fn settings_stay_sorted_and_unique() {
        let mut a = s(&[("b", "1"), ("a", "2")]);
        a.insert("c".into(), "3".into());
        a.insert("a".into(), "4".into());
        assert_eq!(a.keys().map(String::as_str).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(a.get("a").map(String::as_str), Some("4"));
        a.remove("b");
        assert!(!a.contains_key("b") && a.len() == 2);
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
