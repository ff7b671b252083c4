//! No secret in anything pgsidecar writes. `pgsidecar serve` runs as a real process (stderr and
//! stdout to files) in front of three upstreams whose passwords are random and distinctive
//! (SCRAM, md5 and cleartext towards PostgreSQL), with every statement logged
//! (`PGSIDECAR_SLOW_QUERY_MS=0`) at debug and at trace level. A full session goes through it:
//! good logins, wrong passwords (also a raw password message), bind parameters in named,
//! prepared and unnamed statements, parameters that end up in server errors (unique violation,
//! cast error), slow queries, literals, a pinned client, transactions, COPY both ways, a cancel,
//! a queue timeout, the admin console, `/metrics`, `pgsidecar check`, `--help`, SIGTERM. Then
//! every byte pgsidecar wrote (logs, stdout, metrics, admin output, check and help output) is
//! searched for each password (raw, URL-encoded, base64, md5 hash) and each parameter, literal
//! and COPY value (whole and by its random core). Errors relayed to the client that caused them
//! carry that client's own values (PostgreSQL puts them there) and are not searched.

mod common;

use common::pg::{pg_tool, quote_literal, TestPg, MD5_USER, PLAIN_USER};
use futures_util::{SinkExt, TryStreamExt};
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio_postgres::config::SslMode;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls};

const SCRAM_USER: &str = "sec_scram";
const DB_SCRAM: &str = "sec_scram_db";
const DB_MD5: &str = "sec_md5_db";
const DB_PLAIN: &str = "sec_plain_db";

/// A random core that cannot match anything pgsidecar makes up itself (fingerprints are lowercase
/// hex): mixed-case letters and digits.
fn core() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjkmnpqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..14).map(|_| CHARS[rng.random_range(0..CHARS.len())] as char).collect()
}

/// A secret value: the string used, and its random core (caught even when cut or re-quoted).
#[derive(Clone)]
struct Value {
    what: String,
    full: String,
    core: String,
}

impl Value {
    fn new(what: &str, prefix: &str, suffix: &str) -> Value {
        let core = core();
        Value { what: what.to_owned(), full: format!("{prefix}{core}{suffix}"), core }
    }
    fn s(&self) -> &str {
        &self.full
    }
}

struct Fixture {
    pg: &'static TestPg,
    scram_pass: Value,
    md5_pass: Value,
    plain_pass: Value,
    /// Wrong passwords tried by clients and by `check`.
    wrong: Vec<Value>,
    /// Bind parameter values, literals in SQL text, COPY data.
    values: Vec<Value>,
    /// md5 hashes of the passwords as md5 authentication sends them (`md5(password || user)`).
    md5_hashes: Vec<(String, String)>,
}

impl Fixture {
    fn value(&self, what: &str) -> &str {
        self.values.iter().find(|v| v.what == what).unwrap_or_else(|| panic!("no value {what}")).s()
    }

    fn users(&self) -> [(&'static str, &str, &'static str); 3] {
        [
            (SCRAM_USER, self.scram_pass.s(), DB_SCRAM),
            (MD5_USER, self.md5_pass.s(), DB_MD5),
            (PLAIN_USER, self.plain_pass.s(), DB_PLAIN),
        ]
    }

    fn url(&self, user: &str, pass: &str, db: &str) -> String {
        format!("postgres://{}:{}@127.0.0.1:{}/{db}?sslmode=require", enc(user), enc(pass), self.pg.port())
    }

    /// Every needle: (description, text that must not appear).
    fn needles(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let passwords =
            [&self.scram_pass, &self.md5_pass, &self.plain_pass].into_iter().chain(self.wrong.iter());
        for p in passwords {
            use base64::Engine;
            out.push((p.what.clone(), p.full.clone()));
            out.push((format!("{} (core)", p.what), p.core.clone()));
            out.push((format!("{} (URL-encoded)", p.what), enc(&p.full)));
            out.push((
                format!("{} (base64)", p.what),
                base64::engine::general_purpose::STANDARD.encode(&p.full),
            ));
        }
        for (what, hash) in &self.md5_hashes {
            out.push((what.clone(), hash.clone()));
        }
        for v in &self.values {
            out.push((v.what.clone(), v.full.clone()));
            out.push((format!("{} (core)", v.what), v.core.clone()));
        }
        out
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let pg = TestPg::shared();
        // Characters that must be percent-encoded in a URL, so the encoded form is a needle too.
        let scram_pass = Value::new("SCRAM user's password", "S3cr3t-", ":/@?#%x");
        let md5_pass = Value::new("md5 user's password", "M5pass-", " sp&ce");
        let plain_pass = Value::new("cleartext user's password", "Pl41n-", "+=;");
        let wrong = (0..6).map(|i| Value::new(&format!("wrong password #{i}"), "WrongPw-", "!")).collect();
        let values = [
            ("text bind parameter", "SECRETPARAM-"),
            ("second text bind parameter", "SECRETPARAM2-"),
            ("numeric text bind parameter", "7"),
            ("prepared-statement parameter", "SECRETPREP-"),
            ("unique-violation parameter", "SECRETDUP-"),
            ("cast-error parameter", "SECRETCAST-"),
            ("unnamed-statement parameter", "SECRETUNNAMED-"),
            ("slow-query parameter", "SECRETSLOW-"),
            ("transaction parameter", "SECRETTX-"),
            ("cancelled-query parameter", "SECRETCANCEL-"),
            ("queued-query parameter", "SECRETQUEUED-"),
            ("literal", "SECRETLIT-"),
            ("slow literal", "SECRETLITSLOW-"),
            ("literal in a failing statement", "SECRETLITERR-"),
            ("literal in a syntax error", "SECRETSYNTAX-"),
            ("pinned EXECUTE literal", "SECRETPIN-"),
            ("COPY data", "SECRETCOPY-"),
        ]
        .into_iter()
        .map(|(what, prefix)| {
            if what == "numeric text bind parameter" {
                // Digits only: a numeric value, sent as text.
                let n: u64 = rand::random::<u64>() % 900_000_000_000_000 + 100_000_000_000_000;
                Value { what: what.into(), full: format!("{n}"), core: format!("{n}") }
            } else {
                Value::new(what, prefix, "")
            }
        })
        .collect();
        let ql = |v: &Value| quote_literal(v.s());
        pg.sql(
            "postgres",
            &format!(
                "SET password_encryption = 'scram-sha-256';\n\
                 CREATE ROLE {SCRAM_USER} LOGIN PASSWORD {};\n\
                 SET password_encryption = 'md5';\n\
                 ALTER ROLE {MD5_USER} PASSWORD {};\n\
                 SET password_encryption = 'scram-sha-256';\n\
                 ALTER ROLE {PLAIN_USER} PASSWORD {};\n\
                 CREATE DATABASE {DB_SCRAM} OWNER {SCRAM_USER};\n\
                 CREATE DATABASE {DB_MD5} OWNER {MD5_USER};\n\
                 CREATE DATABASE {DB_PLAIN} OWNER {PLAIN_USER};\n",
                ql(&scram_pass),
                ql(&md5_pass),
                ql(&plain_pass)
            ),
        );
        let mut fx = Fixture { pg, scram_pass, md5_pass, plain_pass, wrong, values, md5_hashes: Vec::new() };
        let mut hashes = Vec::new();
        for (user, pass, _) in fx.users() {
            let hash = pg.sql(
                "postgres",
                &format!("select 'md5' || md5({})", quote_literal(&format!("{pass}{user}"))),
            );
            hashes.push((format!("md5 hash of {user}'s password"), hash));
        }
        fx.md5_hashes = hashes;
        fx
    })
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

/// How a run differs: log level (and the variable that sets it), client auth, pool mode.
struct Run {
    name: &'static str,
    level_var: &'static str,
    level: &'static str,
    client_auth: &'static str,
    mode: &'static str,
}

/// `pgsidecar` with a clean environment plus the fixture's upstreams.
fn bin(fx: &Fixture, run: &Run) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgsidecar"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PGSIDECAR_")
            || k.starts_with("PGBOUNCER_")
            || matches!(k.as_str(), "DATABASE_URL" | "DYNO" | "LOG_LEVEL")
        {
            cmd.env_remove(k);
        }
    }
    cmd.env("DATABASE_URL", fx.url(SCRAM_USER, fx.scram_pass.s(), DB_SCRAM))
        .env("SECRETS_MD5_URL", fx.url(MD5_USER, fx.md5_pass.s(), DB_MD5))
        .env("SECRETS_PLAIN_URL", fx.url(PLAIN_USER, fx.plain_pass.s(), DB_PLAIN))
        .env("PGSIDECAR_URLS", "DATABASE_URL SECRETS_MD5_URL SECRETS_PLAIN_URL")
        .env("PGSIDECAR_CLIENT_AUTH", run.client_auth)
        .env("PGSIDECAR_POOL_MODE", run.mode)
        .env(run.level_var, run.level)
        .stdin(Stdio::null());
    cmd
}

struct Sidecar {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    metrics: String,
}

impl Sidecar {
    fn start(fx: &Fixture, run: &Run, pool_size: usize) -> Sidecar {
        let dir = tempfile::tempdir().unwrap();
        let listen = free_addr();
        let metrics = free_addr();
        let child = bin(fx, run)
            .arg("serve")
            .env("PGSIDECAR_LISTEN", &listen)
            .env("PGSIDECAR_METRICS_LISTEN", &metrics)
            .env("PGSIDECAR_POOL_SIZE", pool_size.to_string())
            .env("PGSIDECAR_SLOW_QUERY_MS", "0")
            // Slow-transaction lines share the slow-query rate limit: only the sleeping ones.
            .env("PGSIDECAR_SLOW_TRANSACTION_MS", "100")
            .env("PGSIDECAR_STATS_PERIOD", "1")
            .env("PGSIDECAR_QUERY_WAIT_TIMEOUT", "1s")
            .env("PGSIDECAR_SHUTDOWN_TIMEOUT", "5s")
            .stdout(fs::File::create(dir.path().join("stdout")).unwrap())
            .stderr(fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .unwrap();
        let port = listen.rsplit_once(':').unwrap().1.parse().unwrap();
        let mut sc = Sidecar { child, dir, port, metrics };
        sc.wait_for_log("event=listening");
        sc.wait_for_log("event=metrics_listening");
        sc
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.path("stderr")).unwrap()).into_owned()
    }

    fn wait_for_log(&mut self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.stderr();
            if log.contains(what) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("pgsidecar exited ({status}) before {what:?}:\n{log}");
            }
            assert!(Instant::now() < deadline, "no {what:?} within 30 s:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn config(&self, user: &str, password: &str, db: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(db)
            .ssl_mode(SslMode::Disable);
        c
    }

    async fn connect(&self, user: &str, password: &str, db: &str) -> Result<Client, tokio_postgres::Error> {
        let (client, conn) = self.config(user, password, db).connect(NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// One admin command through psql (rows on stdout, notices on stderr): both are
    /// pgsidecar's output.
    fn psql_admin(&self, user: &str, password: &str, db: &str, sql: &str) -> String {
        let out = Command::new(pg_tool("psql"))
            .args(["-X", "-A", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", user, "-d", db])
            .args(["-c", sql])
            .env("PGPASSWORD", password)
            .env("PGSSLMODE", "disable")
            .env_remove("PGOPTIONS")
            .output()
            .expect("run psql");
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{sql}: {text}");
        text
    }

    fn sigterm(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    }

    /// Waits for the exit (the drain is bounded by the shutdown timeout).
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "pgsidecar still running 20 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scrape(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    common::code(e)
}

/// The full text of an error as the client got it (message and detail).
fn error_text(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| format!("{} {}", d.message(), d.detail().unwrap_or(""))).unwrap_or_default()
}

/// A client that answers the authentication request with the password itself in a password
/// message (what a broken or hostile client might do): refused, and never echoed in a log.
async fn raw_password_message(port: u16, user: &str, db: &str, password: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut body = 196608u32.to_be_bytes().to_vec();
    for part in ["user", user, "database", db] {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    s.write_all(&msg).await.unwrap();
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], b'R', "an authentication request");
    let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
    let mut rest = vec![0u8; len - 4];
    s.read_exact(&mut rest).await.unwrap();
    let mut p = vec![b'p'];
    p.extend_from_slice(&((password.len() + 5) as u32).to_be_bytes());
    p.extend_from_slice(password.as_bytes());
    p.push(0);
    s.write_all(&p).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    assert_eq!(answer.first(), Some(&b'E'), "refused with an error: {answer:?}");
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Runs the session against a fresh sidecar and returns everything pgsidecar wrote, by source.
async fn session(run: &Run) -> Vec<(String, String)> {
    let fx = fixture();
    let pool_size = 3;
    let mut sc = tokio::task::block_in_place(|| Sidecar::start(fx, run, pool_size));
    let mut outputs: Vec<(String, String)> = Vec::new();
    let sp = fx.scram_pass.s();
    let table = format!("t_{}", run.name);

    // Good logins through every upstream: SCRAM, md5 and cleartext towards PostgreSQL.
    for (user, pass, db) in fx.users() {
        let c = sc.connect(user, pass, db).await.unwrap_or_else(|e| panic!("{user}: {e}"));
        let who = c.simple_query("select current_user").await.unwrap();
        assert_eq!(common::first_value(&who), user);
    }
    // Wrong passwords: each user, the right password of another user, the console, a raw
    // password message with the password in it.
    for (i, (user, _, db)) in fx.users().into_iter().enumerate() {
        let e = common::must_fail(sc.connect(user, fx.wrong[i].s(), db).await, "wrong password");
        assert_eq!(sqlstate(&e), "28P01", "{e}");
    }
    let e = common::must_fail(sc.connect(MD5_USER, sp, DB_MD5).await, "another user's password");
    assert_eq!(sqlstate(&e), "28P01", "{e}");
    let e = common::must_fail(sc.connect(SCRAM_USER, fx.wrong[3].s(), "pgsidecar").await, "console");
    assert_eq!(sqlstate(&e), "28P01", "{e}");
    raw_password_message(sc.port, SCRAM_USER, DB_SCRAM, fx.wrong[4].s()).await;

    let c = sc.connect(SCRAM_USER, sp, DB_SCRAM).await.unwrap();
    c.batch_execute(&format!("create table {table}(k text primary key, n numeric, note text)"))
        .await
        .unwrap();

    // Bind parameters: a named statement (tokio-postgres prepares every query), a prepared
    // statement reused, an unnamed statement.
    let p1 = fx.value("text bind parameter");
    let p2 = fx.value("second text bind parameter");
    let num = fx.value("numeric text bind parameter");
    let row =
        c.query_one("select $1::text, $2::text::numeric::text, $3::text", &[&p1, &num, &p2]).await.unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), (p1.to_owned(), num.to_owned()));
    let insert = c
        .prepare(&format!("insert into {table}(k, n, note) values ($1, $2::text::numeric, $3)"))
        .await
        .unwrap();
    let prep = fx.value("prepared-statement parameter");
    for i in 0..3 {
        c.execute(&insert, &[&format!("{prep}-{i}"), &num, &prep]).await.unwrap();
    }
    let dup = fx.value("unique-violation parameter");
    c.execute(&insert, &[&dup, &num, &"x"]).await.unwrap();
    let e = c.execute(&insert, &[&dup, &num, &"x"]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "23505", "{e}");
    assert!(error_text(&e).contains(dup), "PostgreSQL names the value to its client: {}", error_text(&e));
    let cast = fx.value("cast-error parameter");
    let e = c.query_one("select $1::text::int", &[&cast]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "22P02", "{e}");
    assert!(error_text(&e).contains(cast), "{}", error_text(&e));
    let unnamed = fx.value("unnamed-statement parameter");
    let rows = c.query_typed("select $1 || '!'", &[(&unnamed, Type::TEXT)]).await.unwrap();
    assert_eq!(rows[0].get::<_, String>(0), format!("{unnamed}!"));
    let slow = fx.value("slow-query parameter");
    c.query_one("select pg_sleep(0.2)::text, $1::text", &[&slow]).await.unwrap();

    // Simple protocol: literals, a slow one, errors.
    let lit = fx.value("literal");
    c.simple_query(&format!("select '{lit}', {num}")).await.unwrap();
    c.simple_query(&format!("select pg_sleep(0.2), '{}'", fx.value("slow literal"))).await.unwrap();
    let e = c
        .simple_query(&format!("select '{}'::int", fx.value("literal in a failing statement")))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22P02");
    let e = c.simple_query(&format!("selec '{}'", fx.value("literal in a syntax error"))).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42601");
    c.simple_query("select 1/0").await.unwrap_err();

    // Transactions: one committed, one failing and rolled back.
    let txp = fx.value("transaction parameter");
    {
        let mut c2 = sc.connect(SCRAM_USER, sp, DB_SCRAM).await.unwrap();
        let tx = c2.transaction().await.unwrap();
        tx.execute(&format!("insert into {table}(k, note) values ($1, $1)"), &[&txp]).await.unwrap();
        tx.query_one(&format!("select note from {table} where k = $1"), &[&txp]).await.unwrap();
        tx.commit().await.unwrap();
        let tx = c2.transaction().await.unwrap();
        let e = tx.execute(&format!("insert into {table}(k) values ($1)"), &[&txp]).await.unwrap_err();
        assert_eq!(sqlstate(&e), "23505");
        tx.rollback().await.unwrap();
    }

    // SQL-level PREPARE pins the client (its log line names the normalized statement).
    c.batch_execute("prepare pinned(text) as select $1 || 'x'").await.unwrap();
    c.simple_query(&format!("execute pinned('{}')", fx.value("pinned EXECUTE literal"))).await.unwrap();
    c.batch_execute("deallocate pinned").await.unwrap();

    // COPY in and out.
    let copy = fx.value("COPY data");
    let sink = c.copy_in(&format!("copy {table}(k, note) from stdin")).await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from(format!("{copy}-1\t{copy}\n{copy}-2\t{copy}\n"))).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);
    let out =
        c.copy_out(&format!("copy (select k from {table} where note = '{copy}') to stdout")).await.unwrap();
    let data: Vec<bytes::Bytes> = out.try_collect().await.unwrap();
    assert_eq!(data.concat().len(), 2 * (copy.len() + 3));

    // A cancelled statement with a parameter: cancelled once PostgreSQL runs it.
    let app = format!("secrets_{}", run.name); // both tests share the cluster
    let (canceller, conn) =
        sc.config(SCRAM_USER, sp, DB_SCRAM).application_name(&app).connect(NoTls).await.unwrap();
    tokio::spawn(conn);
    let token = canceller.cancel_token();
    let cancel_value = fx.value("cancelled-query parameter").to_owned();
    let running = tokio::spawn(async move {
        canceller.query_one("select pg_sleep(30)::text, $1::text", &[&cancel_value]).await.map(|_| ())
    });
    let pg = fx.pg;
    blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        // Asleep, not only active: tokio-postgres prepares the statement first, and the
        // backend shows it active during that Parse too; a cancel then finds nothing running
        // (seen once under heavy load: the sleep went on for its 30 s).
        let running = format!(
            "select count(*) from pg_stat_activity where state = 'active' and wait_event = 'PgSleep' \
             and query like 'select pg_sleep(30)%' and application_name = '{app}'"
        );
        while pg.sql("postgres", &running) != "1" {
            assert!(Instant::now() < deadline, "the statement never ran");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await;
    token.cancel_query(NoTls).await.unwrap();
    let e = running.await.unwrap().unwrap_err();
    assert_eq!(sqlstate(&e), "57014", "{e}");

    // A queued statement with a parameter times out while every server is held (in session
    // mode `c` holds one already).
    let mut holders = Vec::new();
    let held = if run.mode == "session" { pool_size - 1 } else { pool_size };
    for _ in 0..held {
        let h = sc.connect(SCRAM_USER, sp, DB_SCRAM).await.unwrap();
        h.batch_execute("begin; select 1").await.unwrap();
        holders.push(h);
    }
    let queued = fx.value("queued-query parameter");
    if run.mode == "transaction" {
        let e = c.query_one("select $1::text", &[&queued]).await.unwrap_err();
        assert_eq!(sqlstate(&e), "53300", "{e}");
    } else {
        // Session mode: `c` keeps its own server; a new client waits for one.
        let late = sc.connect(SCRAM_USER, sp, DB_SCRAM).await;
        match late {
            Ok(late) => {
                let e = late.query_one("select $1::text", &[&queued]).await.unwrap_err();
                assert_eq!(sqlstate(&e), "53300", "{e}");
            }
            Err(e) => assert_eq!(sqlstate(&e), "53300", "{e}"),
        }
    }
    for h in &holders {
        h.batch_execute("commit").await.unwrap();
    }
    drop(holders);
    // PAUSE waits until no server is in use: in session mode, until the clients have left.
    drop(c);

    // The console: every command, through psql (rows and notices) as two users.
    let admin_cmds = [
        "SHOW HELP",
        "SHOW VERSION",
        "SHOW CONFIG",
        "SHOW DATABASES",
        "SHOW POOLS",
        "SHOW CLIENTS",
        "SHOW SERVERS",
        "SHOW STATS",
        "SHOW QUERIES",
        "PAUSE",
        "RESUME",
        "RECONNECT",
        "RELOAD",
    ];
    let admin: Vec<(String, String)> = tokio::task::block_in_place(|| {
        let mut v = Vec::new();
        for cmd in admin_cmds {
            v.push((format!("admin {cmd}"), sc.psql_admin(SCRAM_USER, sp, "pgsidecar", cmd)));
        }
        let pools = sc.psql_admin(MD5_USER, fx.md5_pass.s(), "pgbouncer", "SHOW POOLS");
        v.push(("admin SHOW POOLS as md5_user".into(), pools));
        v
    });
    let queries = &admin.iter().find(|(w, _)| w == "admin SHOW QUERIES").unwrap().1;
    assert!(queries.contains("pg_sleep($1)"), "SHOW QUERIES lists the statements: {queries}");
    let config = &admin.iter().find(|(w, _)| w == "admin SHOW CONFIG").unwrap().1;
    assert!(config.contains("<redacted>") && config.contains("SECRETS_MD5_URL"), "{config}");
    outputs.extend(admin);

    // /metrics once the sampler has counted the session (it copies counters every second).
    let metrics_addr = sc.metrics.clone();
    let body = blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let body = scrape(&metrics_addr, "/metrics");
            let counted = body.lines().any(|l| {
                l.starts_with("pgsidecar_queries_total{")
                    && l.contains(DB_SCRAM)
                    && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v >= 20.0)
            });
            if counted || Instant::now() > deadline {
                return body;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await;
    assert!(body.contains("pgsidecar_pooler_errors_total"), "{body}");
    outputs.push(("/metrics".into(), body));
    let m = sc.metrics.clone();
    outputs.push(("/other path".into(), blocking(move || scrape(&m, "/debug?x=1")).await));

    // SIGTERM with clients still connected (one idle, one in a transaction); they leave during
    // the drain.
    let idle = sc.connect(SCRAM_USER, sp, DB_SCRAM).await.unwrap();
    let busy = sc.connect(SCRAM_USER, sp, DB_SCRAM).await.unwrap();
    busy.batch_execute("begin; select 1").await.unwrap();
    sc.sigterm();
    tokio::task::block_in_place(|| sc.wait_for_log("event=draining"));
    drop((idle, busy));
    let status = tokio::task::block_in_place(|| sc.wait_exit());
    let stderr = sc.stderr();
    assert_eq!(status.code(), Some(0), "{status}\n{stderr}");
    assert!(stderr.contains("event=stopped"), "{stderr}");

    // The session was seen at this level: what each step logs is there.
    for expected in [
        "event=client_login",
        "reason=auth_failed",
        "event=slow_query",
        "event=slow_transaction",
        "event=pooler_error",
        "event=admin_command",
        "event=pool_stats",
        "event=server_connected",
    ] {
        assert!(stderr.contains(expected), "{expected} not logged in run {}:\n{stderr}", run.name);
    }
    if run.mode == "transaction" {
        assert!(stderr.contains("event=client_pinned"), "{stderr}");
    }
    // Every statement is logged, up to the rate limit (a burst of 20, then 5 a second).
    let slow_lines = stderr.lines().filter(|l| l.contains("event=slow_query")).count();
    assert!(slow_lines >= 20, "{slow_lines} slow_query lines:\n{stderr}");
    outputs.push(("stderr".into(), stderr));
    outputs
        .push(("stdout".into(), String::from_utf8_lossy(&fs::read(sc.path("stdout")).unwrap()).into_owned()));
    outputs
}

/// `pgsidecar check` (right and wrong passwords), `--help` of every subcommand, and a settings
/// error, with the fixture's URLs in the environment.
fn one_shot_commands(run: &Run) -> Vec<(String, String)> {
    let fx = fixture();
    let mut out = Vec::new();
    let text = |o: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    };
    let ok = bin(fx, run).arg("check").output().unwrap();
    let ok_text = text(&ok);
    assert!(ok.status.success(), "{ok_text}");
    assert!(ok_text.contains("SECRETS_PLAIN_URL") && ok_text.contains("connected"), "{ok_text}");
    out.push(("check".into(), ok_text));
    let wrong = bin(fx, run)
        .env("DATABASE_URL", fx.url(SCRAM_USER, fx.wrong[5].s(), DB_SCRAM))
        .arg("check")
        .output()
        .unwrap();
    let wrong_text = text(&wrong);
    assert_eq!(wrong.status.code(), Some(1), "{wrong_text}");
    assert!(wrong_text.contains("28P01"), "{wrong_text}");
    out.push(("check with a wrong password".into(), wrong_text));
    for args in [
        &["--help"][..],
        &["-h"],
        &["serve", "--help"],
        &["run", "--help"],
        &["check", "--help"],
        &["--version"],
    ] {
        let o = bin(fx, run).args(args).output().unwrap();
        let t = text(&o);
        assert!(t.contains("pgsidecar"), "{args:?}: {t}");
        out.push((format!("pgsidecar {}", args.join(" ")), t));
    }
    // A settings error next to the URLs: reported without them.
    let bad = bin(fx, run)
        .env(
            "DATABASE_URL",
            format!("{}&connect_timeout=soon", fx.url(SCRAM_USER, fx.scram_pass.s(), DB_SCRAM)),
        )
        .arg("serve")
        .output()
        .unwrap();
    let bad_text = text(&bad);
    assert_eq!(bad.status.code(), Some(2), "{bad_text}");
    assert!(bad_text.contains("config_invalid"), "{bad_text}");
    out.push(("settings error".into(), bad_text));
    out
}

/// Searches every output; `SECRETS_TEST_DUMP=DIR` also writes them there to read by hand.
fn assert_no_secret(run: &str, outputs: &[(String, String)]) {
    let fx = fixture();
    if let Some(dir) = std::env::var_os("SECRETS_TEST_DUMP") {
        let mut all = String::new();
        for (source, text) in outputs {
            all.push_str(&format!("===== {source} =====\n{text}\n"));
        }
        fs::create_dir_all(&dir).unwrap();
        fs::write(PathBuf::from(dir).join(format!("{run}.txt")), all).unwrap();
    }
    let mut leaks = Vec::new();
    for (source, text) in outputs {
        for (what, needle) in fx.needles() {
            if let Some(pos) = text.find(&needle) {
                let start = text[..pos].rfind('\n').map_or(0, |p| p + 1);
                let end = text[pos..].find('\n').map_or(text.len(), |p| pos + p);
                leaks.push(format!("{what} in {source}: {}", &text[start..end]));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets in pgsidecar's output:\n{}", leaks.join("\n"));
    let bytes: usize = outputs.iter().map(|(_, t)| t.len()).sum();
    eprintln!("searched {bytes} bytes from {} sources for {} needles", outputs.len(), fx.needles().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_session_with_scram_clients_leaks_nothing() {
    let run = Run {
        name: "debug",
        level_var: "PGSIDECAR_LOG_LEVEL",
        level: "debug",
        client_auth: "scram-sha-256",
        mode: "transaction",
    };
    let mut outputs = session(&run).await;
    outputs.extend(blocking(move || one_shot_commands(&run)).await);
    assert_no_secret("debug", &outputs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_session_with_md5_clients_in_session_mode_leaks_nothing() {
    let run =
        Run { name: "trace", level_var: "LOG_LEVEL", level: "trace", client_auth: "md5", mode: "session" };
    let mut outputs = session(&run).await;
    outputs.extend(blocking(move || one_shot_commands(&run)).await);
    assert_no_secret("trace", &outputs);
}
