//! The Unix-domain socket listener (issue 25): `pgsidecar serve` on TCP and a socket directory
//! at once (created 0700, the socket removed at shutdown), psql with `-h DIR -p PORT`, the
//! admin console's SHOW CLIENTS showing `unix`, client TLS refused on the socket as PostgreSQL
//! refuses it, cancel requests over the socket and across transports, and `pgsidecar run`
//! handing psql, psycopg and node-postgres the socket URL.
//!
//! The protocol tests themselves run over the socket with `PGSIDECAR_TEST_TRANSPORT=unix`
//! (see `common::proxy`).

mod common;

use common::pg::{pg_tool, TestPg, SCRAM_PASS, SCRAM_USER};
use common::proxy::{env_for, start_on, Transport};
use common::raw;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn psql(host: &str, port: u16, db: &str, sql: &str) -> Output {
    Command::new(pg_tool("psql"))
        .args(["-X", "-A", "-t", "-h", host, "-p", &port.to_string(), "-U", SCRAM_USER, "-d", db, "-c", sql])
        .env("PGPASSWORD", SCRAM_PASS)
        .env_remove("PGSSLMODE")
        .env_remove("PGOPTIONS")
        .output()
        .expect("run psql")
}

fn stdout_ok(out: &Output, what: &str) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{what}: {}{text}", String::from_utf8_lossy(&out.stderr));
    text
}

/// Waits for `event=listening` in the log at `log`; returns the line.
fn listening_line(log: &Path, child: &mut std::process::Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("event=listening")) {
            return line.to_owned();
        }
        assert!(child.try_wait().unwrap().is_none(), "pgsidecar exited:\n{text}");
        assert!(Instant::now() < deadline, "pgsidecar did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_listens_on_tcp_and_a_socket_directory_it_creates() {
    let pg = TestPg::shared();
    let db = pg.create_db("sockserve");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let log = tmp.path().join("serve.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .arg("serve")
        .env("DATABASE_URL", pg.url(SCRAM_USER, &db, "require"))
        .env("PGSIDECAR_LISTEN", format!("127.0.0.1:0,{}:6501", dir.display()))
        .env("PGSIDECAR_METRICS_LISTEN", "")
        .env("PGSIDECAR_LOG_LEVEL", "info")
        .env_remove("DYNO")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start pgsidecar serve");
    let line = listening_line(&log, &mut child);
    let listen = line.split(" listen=").nth(1).unwrap().split(' ').next().unwrap().trim_matches('"');
    let tcp: std::net::SocketAddr = listen.split(',').next().unwrap().parse().expect("tcp address first");
    let socket = dir.join(".s.PGSQL.6501");
    assert!(listen.ends_with(&format!("unix:{}", socket.display())), "{line}");
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the directory pgsidecar created is private");

    let host = dir.to_str().unwrap();
    assert_eq!(stdout_ok(&psql(host, 6501, &db, "select 1"), "psql -h DIR"), "1\n");
    assert_eq!(stdout_ok(&psql("127.0.0.1", tcp.port(), &db, "select 2"), "psql over TCP"), "2\n");
    // The console over the socket lists itself as PgBouncer does: addr `unix`, the socket's port.
    let clients = stdout_ok(&psql(host, 6501, "pgbouncer", "SHOW CLIENTS"), "SHOW CLIENTS");
    let row: Vec<&str> =
        clients.lines().find(|l| l.contains("|pgbouncer|")).expect("console row").split('|').collect();
    assert_eq!((row[4], row[5]), ("unix", "6501"), "{clients}");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert!(text.contains("peer=unix"), "logs name the socket's clients `unix`:\n{text}");
    assert!(!socket.exists(), "the socket file is removed at shutdown");
    assert!(!dir.exists(), "and the directory pgsidecar created for it");
}

/// PostgreSQL answers an SSLRequest on a Unix socket with `N`: TLS is for the network.
#[tokio::test]
async fn client_tls_is_refused_on_the_socket_and_offered_on_tcp() {
    let pg = TestPg::shared();
    let db = pg.create_db("socktls");
    let dir = tempfile::tempdir().unwrap();
    let tls = common::pg::generate_tls();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, &tls.cert_pem).unwrap();
    std::fs::write(&key, &tls.key_pem).unwrap();
    let env = env_for(
        pg,
        SCRAM_USER,
        &db,
        "require",
        &[
            ("PGSIDECAR_CLIENT_TLS_CERT", cert.to_str().unwrap()),
            ("PGSIDECAR_CLIENT_TLS_KEY", key.to_str().unwrap()),
            ("PGSIDECAR_CLIENT_AUTH", "trust"),
        ],
    );
    let p = start_on(env, Transport::Unix).await;
    let (sock_dir, port) = p.socket.clone().unwrap();
    let ssl_request = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

    let mut s = tokio::net::UnixStream::connect(sock_dir.join(format!(".s.PGSQL.{port}"))).await.unwrap();
    s.write_all(&ssl_request).await.unwrap();
    assert_eq!(s.read_u8().await.unwrap(), b'N');
    // The login goes on in plain text on the same connection.
    s.write_all(&raw::startup(&[("user", SCRAM_USER), ("database", &db)])).await.unwrap();
    raw::read_until_from(&mut s, b'Z').await;
    s.write_all(&raw::query("select 41 + 1")).await.unwrap();
    let row = raw::read_until_from(&mut s, b'D').await;
    assert!(row.ends_with(b"42"), "{row:?}");

    let mut t = tokio::net::TcpStream::connect(p.direct).await.unwrap();
    t.write_all(&ssl_request).await.unwrap();
    assert_eq!(t.read_u8().await.unwrap(), b'S', "TLS stays on offer over TCP");
}

async fn sleeping_query(c: &tokio_postgres::Client) -> tokio_postgres::Error {
    c.simple_query("select pg_sleep(30)").await.expect_err("cancelled")
}

/// A cancel request reaches the client's statement whichever transport carries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_requests_over_the_socket_and_across_transports() {
    let pg = TestPg::shared();
    let db = pg.create_db("sockcancel");
    let p = start_on(env_for(pg, SCRAM_USER, &db, "require", &[]), Transport::Unix).await;
    let w = common::watch::superuser(pg, "postgres").await;
    let (dir, port) = p.socket.clone().unwrap();
    let conn =
        format!("host={} port={port} user={SCRAM_USER} password='{SCRAM_PASS}' dbname={db}", dir.display());
    for via_tcp in [false, true] {
        let (c, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let token = c.cancel_token();
        let running = tokio::spawn(async move { sleeping_query(&c).await });
        common::watch::until(Duration::from_secs(10), "the sleep runs", || async {
            common::watch::busy_backends(&w, &db).await == 1
        })
        .await;
        if via_tcp {
            // The socket client's key, sent to the proxy's TCP listener.
            let tcp = tokio::net::TcpStream::connect(p.direct).await.unwrap();
            token.cancel_query_raw(tcp, tokio_postgres::NoTls).await.unwrap();
        } else {
            token.cancel_query(tokio_postgres::NoTls).await.unwrap();
        }
        let e = running.await.unwrap();
        assert_eq!(common::code(&e), "57014", "via_tcp={via_tcp}: {e}");
    }
}

/// `PGSIDECAR_CLIENT_URL_STYLE=socket`: the application gets
/// `postgres://user:pass@/db?host=DIR&port=PORT` and psql, psycopg and node-postgres all reach
/// the proxy through the socket (the proxy listens on nothing else here).
#[test]
fn run_hands_psql_psycopg_and_node_postgres_the_socket_url() {
    let pg = TestPg::shared();
    let db = pg.create_db("sockrun");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    let drivers = format!("{}/tests/drivers", env!("CARGO_MANIFEST_DIR"));
    let script = "echo \"url $DATABASE_URL\" && psql \"$DATABASE_URL\" -Atc 'select 40 + 2' \
        && python3 psycopg_check.py && node node_check.js";
    let psql_dir = pg_tool("psql").parent().unwrap().display().to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgsidecar"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PGSIDECAR_") || k.starts_with("PGBOUNCER_") || k == "DYNO" {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .current_dir(&drivers)
        .env("PATH", format!("{psql_dir}:{}", std::env::var("PATH").unwrap_or_default()))
        .env("DATABASE_URL", pg.url(SCRAM_USER, &db, "require"))
        .env("PGSIDECAR_LISTEN", format!("{}:6502", dir.display()))
        .env("PGSIDECAR_CLIENT_URL_STYLE", "socket")
        .env("PGSIDECAR_METRICS_LISTEN", "")
        .env("PGSIDECAR_POOL_SIZE", "3")
        .env("WORKERS", "4")
        .env("QUERIES", "50")
        .args(["run", "--", "sh", "-c", script])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    let url = stdout.lines().find_map(|l| l.strip_prefix("url ")).unwrap();
    let encoded_dir = dir.display().to_string().replace('/', "%2F");
    assert!(url.contains(&format!("@/{db}?host={encoded_dir}&port=6502")), "{url}");
    assert!(stdout.contains("\n42\n"), "psql: {stdout}");
    assert!(stdout.contains("workers=4 queries=200 errors=0 wrong=0"), "psycopg and node-postgres: {stdout}");
    assert_eq!(stdout.matches("errors=0 wrong=0").count(), 2, "{stdout}");
    assert!(!Path::new(&dir).exists(), "the socket directory is gone after the run");
}

/// The harness's unix transport (`PGSIDECAR_TEST_TRANSPORT=unix`) really puts every kind of
/// client on the socket: tokio-postgres and raw TCP clients of `p.addr` alike show as `unix`.
#[tokio::test]
async fn the_unix_transport_puts_every_client_on_the_socket() {
    let pg = TestPg::shared();
    let db = pg.create_db("socktransport");
    let p = start_on(
        env_for(pg, SCRAM_USER, &db, "require", &[("PGSIDECAR_CLIENT_AUTH", "trust")]),
        Transport::Unix,
    )
    .await;
    let _raw = raw::trusted_login(p.addr, SCRAM_USER, &db).await;
    let _client = p.connect(&db).await;
    let console = p.connect("pgbouncer").await;
    let rows = console.simple_query("SHOW CLIENTS").await.unwrap();
    let addrs: Vec<(String, String)> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((r.get("addr").unwrap().to_owned(), r.get("port").unwrap().to_owned()))
            }
            _ => None,
        })
        .collect();
    let port = p.socket.as_ref().unwrap().1.to_string();
    assert_eq!(addrs.len(), 3, "{addrs:?}");
    assert!(addrs.iter().all(|(a, p)| a == "unix" && *p == port), "{addrs:?}");
}

/// A result many times the socket's buffer, to a client that reads it slowly: the proxy's
/// writes find the socket full, wait for room (the only time it registers the socket for
/// writing: see src/stream/unix.rs) and go on. Every row arrives whole and in order, and the
/// proxy serves other clients on the socket meanwhile.
#[test]
fn a_large_result_to_a_slow_reader_on_the_socket_arrives_whole() {
    use common::blocking::{query, row, Client};
    let pg = TestPg::shared();
    let db = pg.create_db("sockslow");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let env = env_for(
        pg,
        SCRAM_USER,
        &db,
        "require",
        &[("PGSIDECAR_CLIENT_AUTH", "trust"), ("PGSIDECAR_POOL_SIZE", "2")],
    );
    let p = rt.block_on(start_on(env, Transport::Unix));
    let (dir, port) = p.socket.clone().unwrap();
    let mut slow = Client::unix(&dir, port).login(SCRAM_USER, &db);
    // 4,000 rows of 2,000 bytes: 8 MB, against a socket buffer of some 200 kB.
    slow.send(&query("select i, repeat(chr(65 + i % 26), 2000) from generate_series(1, 4000) i"));
    let mut rows = 0u32;
    loop {
        let (tag, body) = slow.read();
        match tag {
            b'D' => {
                rows += 1;
                let r = row(&body);
                assert_eq!(r[0], rows.to_string());
                let letter = char::from(65 + (rows % 26) as u8).to_string();
                assert_eq!(r[1], letter.repeat(2000), "row {rows}");
                if rows % 500 == 0 {
                    // The reader lags (a slow application, not a wait for the proxy)...
                    std::thread::sleep(Duration::from_millis(30));
                    // ...and the proxy serves another client on the socket meanwhile.
                    let mut other = Client::unix(&dir, port).login(SCRAM_USER, &db);
                    assert_eq!(other.values("select 'other'"), ["other"]);
                }
            }
            b'T' | b'C' => {}
            b'Z' => break,
            other => panic!("unexpected message {:?}", other as char),
        }
    }
    assert_eq!(rows, 4000);
    assert_eq!(slow.values("select 'after'"), ["after"]);
}
