//! `PGSIDECAR_LISTEN`: where the application reaches the proxy. A comma-separated list of
//!
//! - `HOST:PORT`: TCP, e.g. `127.0.0.1:6432`;
//! - `DIR:PORT` or `DIR` (an absolute path): a Unix-domain socket in libpq's convention,
//!   `DIR/.s.PGSQL.PORT`, so `psql -h DIR -p PORT` reaches it. Without `:PORT` the port is
//!   that of the list's TCP address. pgsidecar creates `DIR` (mode 0700) when it is missing;
//! - `unix:PATH`: a Unix-domain socket at exactly `PATH`.
//!
//! Parsing only: binding is [`crate::listen`]'s job.

use std::path::{Path, PathBuf};

/// Most addresses in the list.
pub const MAX_LISTEN: usize = 8;

/// The longest socket path the kernel takes (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// One address the proxy listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `host:port` as written (resolved when bound).
    Tcp(String),
    Unix {
        /// The socket file.
        path: PathBuf,
        /// The `PORT` of a `.s.PGSQL.PORT` name, 0 otherwise (shown for its clients).
        port: u16,
        /// Given as a directory: pgsidecar creates it (0700) if missing.
        dir: bool,
    },
}

impl Listen {
    /// The directory and port a libpq client names (`host=DIR port=PORT`), for a socket
    /// named `.s.PGSQL.PORT`.
    pub fn libpq_dir(&self) -> Option<(&Path, u16)> {
        match self {
            Listen::Unix { path, port, .. } if *port != 0 => Some((path.parent()?, *port)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => f.write_str(a),
            Listen::Unix { path, .. } => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The address `pgsidecar run` gives the application (PGSIDECAR_CLIENT_URL_STYLE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlStyle {
    /// `postgres://user:pass@127.0.0.1:PORT/db`: every driver takes it.
    Tcp,
    /// `postgres://user:pass@/db?host=DIR&port=PORT`: the Unix socket, in the form libpq,
    /// psycopg, Rails, node-postgres and Django take.
    Socket,
}

impl UrlStyle {
    pub fn parse(value: &str) -> Option<UrlStyle> {
        match value.to_ascii_lowercase().as_str() {
            "tcp" => Some(UrlStyle::Tcp),
            "socket" | "unix" => Some(UrlStyle::Socket),
            _ => None,
        }
    }
}

/// The port of a socket file named in libpq's convention, `.s.PGSQL.PORT`.
fn libpq_port(path: &Path) -> Option<u16> {
    path.file_name()?.to_str()?.strip_prefix(".s.PGSQL.")?.parse().ok().filter(|&p| p != 0)
}

fn tcp_port(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok()
}

/// Parses the list; the error says what is wrong with which entry.
pub fn parse(value: &str) -> Result<Vec<Listen>, String> {
    let items: Vec<&str> = value.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if items.is_empty() {
        return Err("expected host:port, a socket directory or unix:PATH, e.g. 127.0.0.1:6432".into());
    }
    if items.len() > MAX_LISTEN {
        return Err(format!("at most {MAX_LISTEN} addresses"));
    }
    let default_port =
        items.iter().find(|i| !i.starts_with('/') && !i.starts_with("unix:")).and_then(|a| tcp_port(a));
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let listen = if let Some(path) = item.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path, e.g. unix:/tmp/pgsidecar/.s.PGSQL.6432".into());
            }
            let path = PathBuf::from(path);
            Listen::Unix { port: libpq_port(&path).unwrap_or(0), path, dir: false }
        } else if item.starts_with('/') {
            let (dir, port) = match item.rsplit_once(':').map(|(d, p)| (d, p.parse::<u16>())) {
                Some((d, Ok(p))) => (d, p),
                _ => (item, default_port.ok_or_else(|| format!("{item}: name the port, as in {item}:6432"))?),
            };
            if port == 0 {
                return Err(format!("{item}: a socket directory needs a port other than 0"));
            }
            Listen::Unix { path: Path::new(dir).join(format!(".s.PGSQL.{port}")), port, dir: true }
        } else {
            if item.parse::<std::net::SocketAddr>().is_err() && tcp_port(item).is_none() {
                return Err(format!("{item}: expected host:port, e.g. 127.0.0.1:6432"));
            }
            Listen::Tcp(item.to_owned())
        };
        if let Listen::Unix { path, .. } = &listen {
            if path.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(format!("{}: a socket path is at most {MAX_SOCKET_PATH} bytes", path.display()));
            }
        }
        if out.contains(&listen) {
            return Err(format!("{item} is listed twice"));
        }
        out.push(listen);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(path: &str, port: u16, dir: bool) -> Listen {
        Listen::Unix { path: path.into(), port, dir }
    }

    #[test]
    fn tcp_directory_and_path() {
        assert_eq!(parse("127.0.0.1:6432").unwrap(), vec![Listen::Tcp("127.0.0.1:6432".into())]);
        assert_eq!(
            parse("127.0.0.1:6432, /tmp/sc").unwrap(),
            vec![Listen::Tcp("127.0.0.1:6432".into()), unix("/tmp/sc/.s.PGSQL.6432", 6432, true)]
        );
        assert_eq!(parse("/tmp/sc:7000").unwrap(), vec![unix("/tmp/sc/.s.PGSQL.7000", 7000, true)]);
        assert_eq!(parse("unix:/run/a.sock").unwrap(), vec![unix("/run/a.sock", 0, false)]);
        assert_eq!(parse("unix:/run/.s.PGSQL.5433").unwrap(), vec![unix("/run/.s.PGSQL.5433", 5433, false)]);
        assert_eq!(parse("localhost:6432").unwrap(), vec![Listen::Tcp("localhost:6432".into())]);
    }

    #[test]
    fn libpq_dir_of_a_socket() {
        let l = &parse("/tmp/sc:7000").unwrap()[0];
        assert_eq!(l.libpq_dir(), Some((Path::new("/tmp/sc"), 7000)));
        assert_eq!(l.to_string(), "unix:/tmp/sc/.s.PGSQL.7000");
        assert_eq!(parse("unix:/run/a.sock").unwrap()[0].libpq_dir(), None);
        assert_eq!(Listen::Tcp("127.0.0.1:1".into()).libpq_dir(), None);
    }

    #[test]
    fn refusals() {
        assert!(parse("").unwrap_err().contains("host:port"));
        assert!(parse("/tmp/sc").unwrap_err().contains("name the port"));
        assert!(parse("/tmp/sc:0").unwrap_err().contains("other than 0"));
        assert!(parse("unix:").unwrap_err().contains("socket path"));
        assert!(parse("nonsense").unwrap_err().contains("host:port"));
        assert!(parse("127.0.0.1:1,127.0.0.1:1").unwrap_err().contains("twice"));
        assert!(parse(&format!("unix:/{}", "a".repeat(120))).unwrap_err().contains("at most 107"));
        assert!(parse(&["127.0.0.1:1"; 9].join(",")).unwrap_err().contains("at most 8"));
    }
}
