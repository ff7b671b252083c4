//! Session settings that follow a client from server to server in transaction mode.
//!
//! A client's settings are what it asked for at startup (parameters and `options`) and what
//! it later changed with SET. When the client gets a server whose applied settings differ,
//! the proxy re-applies them with one statement before forwarding anything. [`canonical`]
//! learns how PostgreSQL takes a startup setting, once per upstream.
//!
//! Neutral ground: both [`crate::client`] and [`crate::server`] use these types. May import
//! [`crate::server::pool`] (canonical tries settings on a server) and [`crate::wire`]; never
//! [`crate::client`] or [`crate::proxy`].

pub mod canonical;

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

/// The settings of a startup packet in the order PostgreSQL applies them: the `options`
/// (`-c name=value`) first, then the other parameters in the packet's order, names as the
/// client spelled them (PostgreSQL's messages about an unknown name quote it so). A name may
/// come twice; the last one is the session's.
pub fn startup_sequence(params: &[(String, String)], options: &[(String, String)]) -> Vec<(String, String)> {
    let params =
        params.iter().filter(|(k, _)| !NOT_SETTINGS.contains(&k.as_str()) && !k.starts_with("_pq_."));
    options.iter().chain(params).cloned().collect()
}

/// Settings a client asked for at startup: the last value of each name in
/// [`startup_sequence`] (a parameter wins over the same name in `options`, as in PostgreSQL).
pub fn from_startup(sequence: &[(String, String)]) -> Settings {
    let mut out: Settings = sequence.iter().map(|(k, v)| (canonical_name(k), v.clone())).collect();
    // Kept for the whole connection: no spare capacity.
    out.0.shrink_to_fit();
    out
}

/// Settings the server reports that follow the client (re-applied on another server).
pub const TRACKED_REPORTED: &[&str] = &[
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "standard_conforming_strings",
    "application_name",
    "search_path",
];

/// Postgres compares setting names case-insensitively; keep the spelling it reports for the
/// common ones so that ParameterStatus names and ours line up.
pub fn canonical_name(name: &str) -> String {
    for known in TRACKED_REPORTED {
        if known.eq_ignore_ascii_case(name) {
            return (*known).to_owned();
        }
    }
    name.to_ascii_lowercase()
}

pub(crate) fn literal(s: &str) -> String {
    // An E'' literal reads the same whatever standard_conforming_strings is.
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

pub(crate) fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The settings that make up who a session is, in the order they are applied: a change of
/// the session authorization resets the role (PostgreSQL does that), and both are applied after
/// the other settings, which a client changed while it still was who it logged in as.
const AUTHORIZATION: &str = "session_authorization";
const ROLE: &str = "role";

fn is_identity(name: &str) -> bool {
    name == AUTHORIZATION || name == ROLE
}

/// The statement that turns `applied` into `wanted` on a server, or `None` when they match.
///
/// The session authorization and the role are changed last, in that order; when the server
/// has someone else's, it first returns to its login identity (one RESET does both), so that
/// the other settings are applied with the rights the client had when it changed them.
pub fn sync_statement(wanted: &Settings, applied: &Settings) -> Option<String> {
    let sets: Vec<String> = wanted
        .iter()
        .filter(|(k, v)| !is_identity(k) && applied.get(k) != Some(*v))
        .map(|(k, v)| format!("pg_catalog.set_config({}, {}, false)", literal(k), literal(v)))
        .collect();
    let resets: Vec<String> = applied
        .keys()
        .filter(|k| !is_identity(k) && !wanted.contains_key(k))
        .map(|k| format!("RESET {}", ident(k)))
        .collect();
    let identity_changed = [AUTHORIZATION, ROLE].iter().any(|k| wanted.get(k) != applied.get(k));
    let borrowed_identity = applied.keys().any(|k| is_identity(k));
    let reset_identity = borrowed_identity && (identity_changed || !sets.is_empty() || !resets.is_empty());
    if sets.is_empty() && resets.is_empty() && !identity_changed {
        return None;
    }
    let mut statements = Vec::new();
    if reset_identity {
        statements.push("RESET SESSION AUTHORIZATION".to_owned());
    }
    if !sets.is_empty() {
        statements.push(format!("SELECT {}", sets.join(", ")));
    }
    statements.extend(resets);
    if reset_identity || identity_changed {
        // The server has its login identity now (reset above, or it had none of a client's).
        for name in [AUTHORIZATION, ROLE] {
            if let Some(v) = wanted.get(name) {
                statements.push(format!(
                    "SELECT pg_catalog.set_config({}, {}, false)",
                    literal(name),
                    literal(v)
                ));
            }
        }
    }
    Some(statements.join("; "))
}

/// Reads back every setting changed in the session, after the client ran SET, RESET or
/// DISCARD. The role and the session authorization are not in pg_settings: the role is read
/// when it is set, the session authorization always ([`from_rows`] drops it when it is the
/// server's login user).
pub const READ_SESSION_SETTINGS: &str = "SELECT name, setting FROM pg_catalog.pg_settings WHERE source = 'session' \
     UNION ALL SELECT 'role', pg_catalog.current_setting('role') WHERE pg_catalog.current_setting('role') <> 'none' \
     UNION ALL SELECT 'session_authorization', pg_catalog.current_setting('session_authorization')";

/// Most custom setting names a session's read-back includes.
pub const MAX_CUSTOM_NAMES: usize = 64;

/// [`READ_SESSION_SETTINGS`], plus the custom (dotted) settings named: PostgreSQL does not list
/// these placeholders in pg_settings, so the proxy reads back the ones its client touched.
pub fn read_settings_query(custom: &[String]) -> std::borrow::Cow<'static, str> {
    if custom.is_empty() {
        return READ_SESSION_SETTINGS.into();
    }
    let names: Vec<String> = custom.iter().map(|n| literal(n)).collect();
    format!(
        "{READ_SESSION_SETTINGS} UNION ALL SELECT n, s FROM (SELECT n, pg_catalog.current_setting(n, true) AS s \
         FROM pg_catalog.unnest(ARRAY[{}]::text[]) AS n) AS c WHERE s <> ''",
        names.join(", ")
    )
    .into()
}

/// Adds a custom setting name to a list, once, up to [`MAX_CUSTOM_NAMES`].
pub fn remember_custom(names: &mut Vec<String>, name: &str) {
    if names.len() < MAX_CUSTOM_NAMES && !names.iter().any(|n| n == name) {
        names.push(name.to_owned());
    }
}

/// Whether [`custom_setting_names`] may find a name in `sql`: it has a '.' and a "set" (SET,
/// RESET, set_config) in any case.
pub fn may_name_custom_settings(sql: &[u8]) -> bool {
    memchr::memchr(b'.', sql).is_some() && sql.windows(3).any(|w| w.eq_ignore_ascii_case(b"set"))
}

/// Adds to `out` the custom (dotted) setting names that `sql` sets or resets: `SET [SESSION |
/// LOCAL] a.b ...`, `RESET a.b`, `set_config('a.b', ...)`. Names are folded to lower case,
/// as PostgreSQL folds them; at most [`MAX_CUSTOM_NAMES`] are kept.
pub fn custom_setting_names(sql: &[u8], out: &mut Vec<String>) {
    // Every statement passes here: only one with a '.' and a "set" (SET, RESET, set_config)
    // is copied and looked at.
    if !may_name_custom_settings(sql) {
        return;
    }
    let text = String::from_utf8_lossy(sql).to_ascii_lowercase();
    let mut add = |name: &str| {
        let name = name.trim_matches('"');
        let valid = name.contains('.')
            && name.len() <= 128
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'$'));
        if valid {
            remember_custom(out, name);
        }
    };
    for statement in text.split(';') {
        let mut words = statement.split_ascii_whitespace();
        match words.next() {
            Some("set") | Some("reset") => {
                let mut name = words.next().unwrap_or("");
                if name == "session" || name == "local" {
                    name = words.next().unwrap_or("");
                }
                add(name.split('=').next().unwrap_or(""));
            }
            _ => {}
        }
    }
    // `set_config('a.b', ...)`, also with blanks before the parenthesis and as an E'' string.
    let mut rest = text.as_str();
    while let Some(at) = rest.find("set_config") {
        rest = &rest[at + "set_config".len()..];
        let Some(args) = rest.trim_start().strip_prefix('(') else {
            continue;
        };
        let arg = args.trim_start();
        if let Some(quoted) = arg.strip_prefix("e'").or_else(|| arg.strip_prefix('\'')) {
            if let Some(end) = quoted.find('\'') {
                add(&quoted[..end]);
            }
        }
    }
}

/// Settings from the rows of [`READ_SESSION_SETTINGS`] on a server whose login reported
/// `login`: its own session authorization is no setting of the client's.
pub fn from_rows(
    rows: Vec<Vec<Option<String>>>,
    login: &std::collections::BTreeMap<String, String>,
) -> Settings {
    rows.into_iter()
        .filter_map(|r| match r.as_slice() {
            [Some(k), Some(v)] => Some((canonical_name(k), v.clone())),
            _ => None,
        })
        .filter(|(k, v)| !is_default_authorization(k, v, login))
        .collect()
}

/// Whether `name` = `value` is the session authorization the server logged in with.
pub fn is_default_authorization(
    name: &str,
    value: &str,
    login: &std::collections::BTreeMap<String, String>,
) -> bool {
    name == AUTHORIZATION && login.get(AUTHORIZATION).is_some_and(|l| l == value)
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

    /// Who the session is goes last, session authorization before role (setting the first
    /// resets the second); a server that has another client's identity returns to its login
    /// identity first, so that the other settings are applied as the login user.
    #[test]
    fn identity_is_applied_last_authorization_before_role() {
        let wanted = s(&[("role", "bob"), ("session_authorization", "alice"), ("TimeZone", "UTC")]);
        assert_eq!(
            sync_statement(&wanted, &Settings::new()).unwrap(),
            "SELECT pg_catalog.set_config(E'TimeZone', E'UTC', false); \
             SELECT pg_catalog.set_config(E'session_authorization', E'alice', false); \
             SELECT pg_catalog.set_config(E'role', E'bob', false)"
        );
        // Another client's identity: back to the login identity, then this client's.
        let applied = s(&[("role", "carol"), ("TimeZone", "UTC")]);
        assert_eq!(
            sync_statement(&s(&[("role", "bob"), ("TimeZone", "UTC")]), &applied).unwrap(),
            "RESET SESSION AUTHORIZATION; SELECT pg_catalog.set_config(E'role', E'bob', false)"
        );
        assert_eq!(
            sync_statement(
                &s(&[("TimeZone", "UTC")]),
                &s(&[("session_authorization", "alice"), ("TimeZone", "UTC")])
            )
            .unwrap(),
            "RESET SESSION AUTHORIZATION"
        );
        // The same identity, other settings: applied as the login user, the identity again after.
        let applied = s(&[("session_authorization", "alice")]);
        let wanted = s(&[("session_authorization", "alice"), ("log_statement", "all")]);
        assert_eq!(
            sync_statement(&wanted, &applied).unwrap(),
            "RESET SESSION AUTHORIZATION; SELECT pg_catalog.set_config(E'log_statement', E'all', false); \
             SELECT pg_catalog.set_config(E'session_authorization', E'alice', false)"
        );
        assert_eq!(sync_statement(&wanted, &wanted), None);
    }

    #[test]
    fn the_login_users_own_authorization_is_no_setting() {
        let login = [("session_authorization".to_owned(), "app".to_owned())].into_iter().collect();
        let row = |k: &str, v: &str| vec![Some(k.to_owned()), Some(v.to_owned())];
        let rows = vec![row("session_authorization", "app"), row("role", "bob")];
        assert_eq!(from_rows(rows, &login), s(&[("role", "bob")]));
        let rows = vec![row("session_authorization", "alice")];
        assert_eq!(from_rows(rows, &login), s(&[("session_authorization", "alice")]));
    }

    #[test]
    fn backslashes_are_escaped() {
        let sql = sync_statement(&s(&[("search_path", r"a\b")]), &Settings::new()).unwrap();
        assert!(sql.contains(r"E'a\\b'"), "{sql}");
    }

    #[test]
    fn custom_names_from_statements() {
        let mut names = Vec::new();
        custom_setting_names(b"SET myapp.user_id = 5; reset Other.X; set session a.b to 'x'", &mut names);
        custom_setting_names(b"select set_config('tenant.id', '7', false), x.y from t", &mut names);
        custom_setting_names(b"SET search_path = a, b; update t set x.y = 1", &mut names);
        custom_setting_names(b"set myapp.user_id = 6", &mut names);
        custom_setting_names(b"select pg_catalog.set_config\n ( E'Spaced.Out', $1, false)", &mut names);
        custom_setting_names(b"select set_config_x('not.this'), set_config($1, 'x', false)", &mut names);
        assert_eq!(names, ["myapp.user_id", "other.x", "a.b", "tenant.id", "spaced.out"]);
        let q = read_settings_query(&names);
        assert!(q.starts_with(READ_SESSION_SETTINGS) && q.contains("E'tenant.id'"), "{q}");
        assert_eq!(read_settings_query(&[]), READ_SESSION_SETTINGS);
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
        let opts = vec![
            ("statement_timeout".to_string(), "5s".to_string()),
            ("TimeZone".to_string(), "X".to_string()),
        ];
        let sequence = startup_sequence(&params, &opts);
        assert_eq!(
            sequence.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            ["statement_timeout=5s", "TimeZone=X", "timezone=UTC"],
            "options first, then parameters, as PostgreSQL applies them"
        );
        assert_eq!(from_startup(&sequence), s(&[("TimeZone", "UTC"), ("statement_timeout", "5s")]));
    }
}
