//! Starts pgsidecar in-process on 127.0.0.1:0 for integration tests.

use super::chop::Chopper;
use super::pg::{TestPg, SCRAM_PASS, SCRAM_USER};
use pgsidecar::{Config, Proxy};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub struct TestProxy {
    /// Where clients connect over TCP: the proxy, or the relay in front of it (see
    /// [`start_with_env`]), which forwards to the proxy's Unix socket in the unix transport.
    pub addr: SocketAddr,
    /// A TCP way to the proxy's TCP listener, for client TLS (refused on a Unix socket):
    /// `addr` itself, except in the unix transport.
    pub tcp: SocketAddr,
    /// The proxy's own TCP listener.
    pub direct: SocketAddr,
    pub proxy: Arc<Proxy>,
    /// The proxy's Unix socket, `DIR/.s.PGSQL.PORT`, when it has one: its directory and port.
    pub socket: Option<(PathBuf, u16)>,
    /// Whether clients that can use a Unix socket (libpq, tokio-postgres) are sent to it
    /// directly: the unix transport without chopping.
    via_socket: bool,
    stop: Option<oneshot::Sender<()>>,
    _choppers: Vec<Chopper>,
    _socket_dir: Option<tempfile::TempDir>,
}

/// How the tests reach the proxy: `PGSIDECAR_TEST_TRANSPORT` is `tcp` (the default) or
/// `unix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Unix,
}

impl Transport {
    pub fn from_env() -> Transport {
        match std::env::var("PGSIDECAR_TEST_TRANSPORT").as_deref() {
            Ok("unix") => Transport::Unix,
            Ok("tcp") | Ok("") | Err(_) => Transport::Tcp,
            Ok(other) => panic!("PGSIDECAR_TEST_TRANSPORT is tcp or unix, not {other:?}"),
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.proxy.close_pools();
    }
}

/// Environment for a proxy in front of `db` as `user`, with `extra` settings on top.
pub fn env_for(
    pg: &TestPg,
    user: &str,
    db: &str,
    sslmode: &str,
    extra: &[(&str, &str)],
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("DATABASE_URL".into(), pg.url(user, db, sslmode));
    env.insert("PGSIDECAR_LOG_LEVEL".into(), "warn".into());
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

/// Starts the proxy with `env`. Three switches of the test run apply to every test that starts
/// its proxy here (the harness modes `.ci/run` uses):
/// - `PGSIDECAR_TEST_CHOP` (see [`super::chop::from_env`]): both of the proxy's byte streams
///   are cut into random pieces with small delays, by a chopper in front of the proxy (which
///   `addr` then names) and one in front of the server of `DATABASE_URL`;
/// - `PGSIDECAR_TEST_POOL_MODE`: the pool mode of tests that do not choose one;
/// - `PGSIDECAR_TEST_TRANSPORT=unix` (see [`Transport`]): the proxy also listens on a Unix
///   socket in a temporary directory, and every client goes through it: tokio-postgres,
///   psql and pgbench directly, raw TCP clients of `addr` through a relay to the socket.
///   Client TLS, refused on a socket, goes to `tcp`.
pub async fn start_with_env(env: BTreeMap<String, String>) -> TestProxy {
    start_on(env, Transport::from_env()).await
}

/// [`start_with_env`] on a chosen transport.
pub async fn start_on(mut env: BTreeMap<String, String>, transport: Transport) -> TestProxy {
    if let Ok(mode) = std::env::var("PGSIDECAR_TEST_POOL_MODE") {
        env.entry("PGSIDECAR_POOL_MODE".into()).or_insert(mode);
    }
    let mut choppers = Vec::new();
    let seed = super::chop::from_env();
    if let (Some(seed), Some(url)) = (seed, env.get("DATABASE_URL").cloned()) {
        // postgres://user:pass@HOST:PORT/db?...: the server is reached through a chopper.
        let at = url.rfind('@').map_or(0, |i| i + 1);
        let end = url[at..].find('/').map_or(url.len(), |i| at + i);
        // A server that is down stays down: a chopper would accept and then hang up.
        let up = |a: SocketAddr| {
            std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(1)).is_ok()
        };
        if let Some(server) = url[at..end].parse::<SocketAddr>().ok().filter(|a| up(*a)) {
            let c = Chopper::start(server, seed.wrapping_add(1)).await;
            env.insert("DATABASE_URL".into(), format!("{}{}{}", &url[..at], c.addr, &url[end..]));
            choppers.push(c);
        }
    }
    let config = Config::load(&BTreeMap::new(), &env).expect("test config is valid");
    pgsidecar::logging::init(config.log_level, true);
    let proxy = Proxy::new(config).expect("proxy starts");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let direct = listener.local_addr().unwrap();
    let mut listeners = pgsidecar::listen::Listeners::from(listener);
    let (mut socket, mut socket_dir) = (None, None);
    if transport == Transport::Unix {
        // The socket takes the TCP port's number, so `psql -h DIR -p PORT` names both.
        let dir = tempfile::Builder::new().prefix("pgsc-sock").tempdir().expect("socket dir");
        let path = dir.path().join(format!(".s.PGSQL.{}", direct.port()));
        listeners.add_unix(&path, direct.port()).expect("bind the unix socket");
        socket = Some((dir.path().to_owned(), direct.port()));
        socket_dir = Some(dir);
    }
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(proxy.clone().serve(listeners, async move {
        let _ = rx.await;
    }));
    let chopped = |to: SocketAddr| async move {
        match seed {
            Some(seed) => Some(Chopper::start(to, seed).await),
            None => None,
        }
    };
    let (addr, tcp) = match &socket {
        Some((dir, port)) => {
            let relay = Chopper::to_unix(dir.join(format!(".s.PGSQL.{port}")), seed).await;
            let addr = relay.addr;
            choppers.push(relay);
            let tcp = match chopped(direct).await {
                Some(c) => {
                    let a = c.addr;
                    choppers.push(c);
                    a
                }
                None => direct,
            };
            (addr, tcp)
        }
        None => match chopped(direct).await {
            Some(c) => {
                let a = c.addr;
                choppers.push(c);
                (a, a)
            }
            None => (direct, direct),
        },
    };
    let via_socket = socket.is_some() && seed.is_none();
    TestProxy {
        addr,
        tcp,
        direct,
        proxy,
        socket,
        via_socket,
        stop: Some(tx),
        _choppers: choppers,
        _socket_dir: socket_dir,
    }
}

/// A proxy for scram_user on `db`, TLS to the server (sslmode=require).
pub async fn start(pg: &TestPg, db: &str, extra: &[(&str, &str)]) -> TestProxy {
    start_with_env(env_for(pg, SCRAM_USER, db, "require", extra)).await
}

impl TestProxy {
    /// Whether clients that can use the Unix socket go to it directly (the unix transport
    /// without chopping).
    #[allow(dead_code)]
    pub fn via_socket(&self) -> bool {
        self.via_socket
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The socket's directory and port when clients go to it directly (see [`start_with_env`]).
    fn socket_target(&self) -> Option<(&Path, u16)> {
        self.socket.as_ref().filter(|_| self.via_socket).map(|(d, p)| (d.as_path(), *p))
    }

    /// `host=H port=P` for libpq and tokio-postgres: the socket directory or 127.0.0.1.
    pub fn host_port(&self) -> String {
        match self.socket_target() {
            Some((dir, port)) => format!("host={} port={port}", dir.display()),
            None => format!("host=127.0.0.1 port={}", self.addr.port()),
        }
    }

    /// `-h H -p P` for psql and pgbench.
    pub fn host_port_args(&self) -> [String; 4] {
        match self.socket_target() {
            Some((dir, port)) => ["-h".into(), dir.display().to_string(), "-p".into(), port.to_string()],
            None => ["-h".into(), "127.0.0.1".into(), "-p".into(), self.addr.port().to_string()],
        }
    }

    /// A libpq-style URL to the proxy for the given user and password (the socket in the
    /// form `postgres://u:p@/db?host=DIR&port=PORT`).
    pub fn url_as(&self, user: &str, password: &str, db: &str) -> String {
        if let Some((dir, port)) = self.socket_target() {
            return format!(
                "postgres://{}:{}@/{}?host={}&port={port}&sslmode=disable",
                enc(user),
                enc(password),
                enc(db),
                enc(&dir.display().to_string())
            );
        }
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{}?sslmode=disable",
            enc(user),
            enc(password),
            self.addr.port(),
            enc(db)
        )
    }

    /// Runs pgbench through the proxy as scram_user; returns its output, panics if it failed.
    pub fn pgbench(&self, db: &str, args: &[&str]) -> String {
        let out = std::process::Command::new(super::pg::pg_tool("pgbench"))
            .args(self.host_port_args())
            .args(["-U", SCRAM_USER])
            .args(args)
            .arg(db)
            .env("PGPASSWORD", SCRAM_PASS)
            .output()
            .expect("run pgbench");
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
        text
    }

    pub fn url(&self, db: &str) -> String {
        self.url_as(SCRAM_USER, SCRAM_PASS, db)
    }

    /// Connects with tokio-postgres (no TLS to the proxy).
    pub async fn connect(&self, db: &str) -> tokio_postgres::Client {
        self.connect_with(db, "").await.expect("connect through pgsidecar")
    }

    /// Polls until a new client gets an answer to `select 1` (after a fault), and says how
    /// long that took; fails the test past `limit`.
    pub async fn until_serving(&self, db: &str, limit: std::time::Duration) -> std::time::Duration {
        let started = std::time::Instant::now();
        loop {
            if let Ok(c) = self.connect_with(db, "").await {
                if c.simple_query("select 1").await.is_ok() {
                    return started.elapsed();
                }
            }
            assert!(started.elapsed() < limit, "not serving again within {limit:?}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Connects with extra key=value connection parameters (e.g. "options='-c TimeZone=UTC'").
    pub async fn connect_with(
        &self,
        db: &str,
        extra: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let conn_str = format!(
            "{} user={SCRAM_USER} password='{}' dbname={db} sslmode=disable {extra}",
            self.host_port(),
            SCRAM_PASS.replace('\'', "\\'")
        );
        let (client, connection) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Server connections pgsidecar holds to `db` right now, as Postgres sees them.
pub fn server_count(pg: &TestPg, db: &str) -> i64 {
    pg.sql("postgres", &format!("select count(*) from pg_stat_activity where datname = '{db}' and backend_type = 'client backend'"))
        .parse()
        .unwrap()
}
