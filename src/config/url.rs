//! Parsing of `postgres://` URLs as Heroku and libpq write them.

use std::fmt;
use std::time::Duration;

/// A password or other secret: never shown by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a plain connection is acceptable when the server refuses TLS.
    pub fn tls_required(self) -> bool {
        matches!(self, SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// Query parameters that belong to the application (Rails reads them from DATABASE_URL): the
/// proxy ignores them and keeps them in the URL it gives the application.
pub const APP_PARAMS: &[&str] =
    &["pool", "prepared_statements", "statement_limit", "reaping_frequency", "checkout_timeout"];

/// One upstream database as given by a URL.
#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
    pub database: String,
    pub sslmode: SslMode,
    /// Whether the URL itself named an sslmode (otherwise a default applies).
    pub sslmode_explicit: bool,
    pub sslrootcert: Option<String>,
    pub application_name: Option<String>,
    pub connect_timeout: Option<Duration>,
    /// `-c name=value` settings from the URL's `options` parameter, sent at server login.
    pub options: Option<String>,
    /// Application-level parameters kept for the application's URL, in their original order.
    pub app_params: Vec<(String, String)>,
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.redacted())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("must start with postgres:// or postgresql://")]
    Scheme,
    #[error("has no host")]
    NoHost,
    #[error("has no user name")]
    NoUser,
    #[error("has no database name")]
    NoDatabase,
    #[error("has an invalid port (it must be a number from 1 to 65535)")]
    Port,
    #[error("has a '/' or '?' before the '@' that ends the user name and password: percent-encode them there (%2F, %3F)")]
    Unencoded,
    #[error("has several hosts; give one host per URL")]
    MultiHost,
    #[error("has invalid percent-encoding in the {0}")]
    Encoding(&'static str),
    #[error("has an invalid value {value:?} for {key}")]
    Value { key: String, value: String },
    #[error("has query parameter {0:?}, which pgsidecar does not support (supported: sslmode, sslrootcert, application_name, connect_timeout, options, and application parameters {APP_PARAMS:?})")]
    UnsupportedParam(String),
}

fn percent_decode(s: &str, what: &'static str) -> Result<String, UrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(UrlError::Encoding(what))?;
            let hex = std::str::from_utf8(hex).map_err(|_| UrlError::Encoding(what))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| UrlError::Encoding(what))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlError::Encoding(what))
}

/// Percent-encodes everything outside the RFC 3986 unreserved set.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The user and password of the URL's userinfo (empty when it has none), percent-decoded.
fn credentials(userinfo: Option<&str>) -> Result<(String, String), UrlError> {
    Ok(match userinfo {
        Some(u) => match u.split_once(':') {
            Some((user, pass)) => (percent_decode(user, "user")?, percent_decode(pass, "password")?),
            None => (percent_decode(u, "user")?, String::new()),
        },
        None => (String::new(), String::new()),
    })
}

/// The host (an IPv6 address in brackets too), percent-decoded, and the port, 5432 when none
/// is given.
fn host_and_port(hostport: &str) -> Result<(String, u16), UrlError> {
    if hostport.contains(',') {
        return Err(UrlError::MultiHost);
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or(UrlError::NoHost)?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let host = percent_decode(host, "host")?;
    if host.is_empty() {
        return Err(UrlError::NoHost);
    }
    let port = match port {
        None | Some("") => 5432,
        Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or(UrlError::Port)?,
    };
    Ok((host, port))
}

impl DbUrl {
    pub fn parse(url: &str) -> Result<DbUrl, UrlError> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or(UrlError::Scheme)?;
        let (main, query) = match rest.split_once('?') {
            Some((m, q)) => (m, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match main.split_once('/') {
            Some((a, p)) => (a, p),
            None => (main, ""),
        };
        // A password with a bare '/' or '?' cuts the authority short, leaving no '@' in it:
        // say so without quoting any of it (the rest may be the password's).
        if !authority.contains('@') && (path.contains('@') || query.is_some_and(|q| q.contains('@'))) {
            return Err(UrlError::Unencoded);
        }
        // The password may contain '@' only percent-encoded; split at the last one anyway.
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = credentials(userinfo)?;
        let (host, port) = host_and_port(hostport)?;
        let database = percent_decode(path, "database name")?;
        if user.is_empty() {
            return Err(UrlError::NoUser);
        }
        if database.is_empty() {
            return Err(UrlError::NoDatabase);
        }
        let mut url = DbUrl {
            host,
            port,
            user,
            password: Secret(password),
            database,
            sslmode: SslMode::Prefer,
            sslmode_explicit: false,
            sslrootcert: None,
            application_name: None,
            connect_timeout: None,
            options: None,
            app_params: Vec::new(),
        };
        url.apply_query(query.unwrap_or(""))?;
        Ok(url)
    }

    /// Applies the URL's query parameters: the libpq ones pgsidecar uses, and those it passes
    /// on to the application; anything else is refused by name.
    fn apply_query(&mut self, query: &str) -> Result<(), UrlError> {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(k, "query")?;
            let value = percent_decode(&v.replace('+', " "), "query")?;
            let bad = || UrlError::Value { key: key.clone(), value: value.clone() };
            match key.as_str() {
                "sslmode" => {
                    self.sslmode = SslMode::parse(&value).ok_or_else(bad)?;
                    self.sslmode_explicit = true;
                }
                "sslrootcert" => self.sslrootcert = Some(value),
                "application_name" => self.application_name = Some(value),
                "connect_timeout" => {
                    let secs: u64 = value.parse().map_err(|_| bad())?;
                    // libpq treats 0 as "wait forever" and values below 2 as 2.
                    self.connect_timeout = (secs > 0).then(|| Duration::from_secs(secs.max(2)));
                }
                "options" => self.options = Some(value),
                k if APP_PARAMS.contains(&k) => self.app_params.push((key, value)),
                _ => return Err(UrlError::UnsupportedParam(key)),
            }
        }
        Ok(())
    }

    /// The URL without its password, for logs and messages.
    pub fn redacted(&self) -> String {
        format!(
            "postgres://{}:<redacted>@{}/{}?sslmode={}",
            percent_encode(&self.user),
            self.host_port(),
            percent_encode(&self.database),
            self.sslmode.as_str()
        )
    }

    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heroku_style_url() {
        let u = DbUrl::parse(
            "postgres://u1:p%40ss%2Fw@ec2-1-2-3-4.compute-1.amazonaws.com:5432/d9abc?sslmode=require",
        )
        .unwrap();
        assert_eq!(u.user, "u1");
        assert_eq!(u.password.expose(), "p@ss/w");
        assert_eq!(u.host, "ec2-1-2-3-4.compute-1.amazonaws.com");
        assert_eq!(u.port, 5432);
        assert_eq!(u.database, "d9abc");
        assert_eq!(u.sslmode, SslMode::Require);
        assert!(!format!("{u:?}").contains("p@ss"));
        assert!(!u.redacted().contains("p@ss"));
    }

    #[test]
    fn defaults_and_scheme_variants() {
        let u = DbUrl::parse("postgresql://app@localhost/app_db").unwrap();
        assert_eq!(u.port, 5432);
        assert_eq!(u.password.expose(), "");
        assert_eq!(u.sslmode, SslMode::Prefer);
        let u = DbUrl::parse("postgres://a:b@[::1]:6000/x").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 6000));
        assert_eq!(u.host_port(), "[::1]:6000");
    }

    #[test]
    fn query_parameters_are_honoured_or_refused() {
        let u = DbUrl::parse("postgres://a:b@h/db?sslmode=verify-full&sslrootcert=/x/ca.pem&application_name=web%201&connect_timeout=1&options=-c%20statement_timeout%3D5s&pool=5").unwrap();
        assert_eq!(u.sslmode, SslMode::VerifyFull);
        assert_eq!(u.sslrootcert.as_deref(), Some("/x/ca.pem"));
        assert_eq!(u.application_name.as_deref(), Some("web 1"));
        assert_eq!(u.connect_timeout, Some(Duration::from_secs(2)));
        assert_eq!(u.options.as_deref(), Some("-c statement_timeout=5s"));
        assert_eq!(u.app_params, vec![("pool".to_owned(), "5".to_owned())]);
        // The database name never swallows the query string.
        assert_eq!(u.database, "db");
        assert_eq!(
            DbUrl::parse("postgres://a:b@h/db?sslcompression=1"),
            Err(UrlError::UnsupportedParam("sslcompression".into()))
        );
        assert!(matches!(DbUrl::parse("postgres://a:b@h/db?sslmode=sometimes"), Err(UrlError::Value { .. })));
    }

    #[test]
    fn malformed_urls() {
        assert_eq!(DbUrl::parse("mysql://a@h/db"), Err(UrlError::Scheme));
        assert_eq!(DbUrl::parse("postgres://a:b@h1,h2/db"), Err(UrlError::MultiHost));
        assert_eq!(DbUrl::parse("postgres://a:b@h:99999/db"), Err(UrlError::Port));
        // A password with a bare '/' or '?': refused without quoting any part of it.
        for url in
            ["postgres://u:Leak/Part2@h/db", "postgres://u:Le?ak@h/db", "postgres://u:L/e?ak@h:5432/db"]
        {
            let e = DbUrl::parse(url).unwrap_err();
            assert_eq!(e, UrlError::Unencoded, "{url}");
            assert!(!e.to_string().contains("Leak") && !e.to_string().contains("ak@"), "{e}");
        }
        // '@' in a query value of a good URL is fine.
        assert!(DbUrl::parse("postgres://u:p@h/db?application_name=a@b").is_ok());
        assert_eq!(DbUrl::parse("postgres://a:b@h/"), Err(UrlError::NoDatabase));
        assert_eq!(DbUrl::parse("postgres://h/db"), Err(UrlError::NoUser));
        assert_eq!(DbUrl::parse("postgres://a:%zz@h/db"), Err(UrlError::Encoding("password")));
    }

    #[test]
    fn errors_never_contain_the_password() {
        for url in [
            "postgres://a:topsecret@h:bad/db",
            "postgres://a:topsecret@h/db?x=1",
            "postgres://a:topsecret@h/db?sslmode=nope",
        ] {
            let err = DbUrl::parse(url).unwrap_err().to_string();
            assert!(!err.contains("topsecret"), "{err}");
        }
    }
}
