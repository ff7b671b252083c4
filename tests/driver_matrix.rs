//! The driver matrix (issue 21): psycopg 3, node-postgres, pgJDBC, asyncpg, tokio-postgres and
//! ActiveRecord, each with named server-side prepared statements on, run the workload of
//! `tests/drivers/MATRIX.md` (concurrent connections, every result checked, 100 kB and 10 MiB
//! values, two DDL changes mid-run) against PostgreSQL directly, then through pgsidecar in
//! transaction mode and in session mode. Through pgsidecar each driver must see what it sees
//! against PostgreSQL: the same summary line (queries, right answers, errors by SQLSTATE), no
//! wrong result, and no more `0A000 cached plan must not change result type` than PostgreSQL
//! gave it. pgsidecar runs as `pgsidecar serve` processes; the drivers are programs of
//! tests/drivers/ (tokio-postgres runs in this process). `.ci/run` installs the drivers; a
//! missing one fails the test.

mod common;
#[path = "drivers/tokio_postgres_matrix.rs"]
mod tokio_postgres_matrix;

use common::pg::{TestPg, SCRAM_PASS, SCRAM_USER};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// Connections each program runs concurrently, and iterations per epoch (MATRIX.md).
const WORKERS: usize = 6;
const ITERATIONS: usize = 20;
/// Transaction mode: fewer servers than workers, so statements move between servers.
const TRANSACTION_POOL: &str = "3";
/// Session mode: a server per client (workers, the setup and DDL connections, ActiveRecord's
/// lock probe and node-postgres reconnecting).
const SESSION_POOL: &str = "12";
/// One run of a program takes seconds; past this it is taken to have frozen.
const RUN_LIMIT: Duration = Duration::from_secs(45);
/// No slow-query log: the 10 MiB reads take most of a second in a debug build.
const QUIET: (&str, &str) = ("PGSIDECAR_SLOW_QUERY_MS", "-1");
const INSTALL_HINT: &str = "`bash .ci/run --setup-only` installs the drivers";

fn drivers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers")
}

/// What one run of a driver program reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// `queries=.. ok=.. wrong=.. errors=.. client_encoding=..`, compared whole.
    pub summary: String,
    pub wrong: u64,
    /// `0A000` answers the program accepted for statements prepared before a DDL change.
    pub stale: u64,
    /// Wrong results and unexpected errors, described.
    pub details: Vec<String>,
    pub elapsed: Duration,
}

impl Outcome {
    fn parse(output: &str, elapsed: Duration) -> Result<Outcome, String> {
        let line = |prefix: &str| {
            output.lines().find_map(|l| l.strip_prefix(prefix)).map(str::trim).map(str::to_owned)
        };
        let summary = line("summary: ").ok_or("no `summary:` line")?;
        let field = |text: &str, key: &str| -> Result<u64, String> {
            text.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("no `{key}` number in {text:?}"))
        };
        let wrong = field(&summary, "wrong=")?;
        let stale = field(&line("stale: ").ok_or("no `stale:` line")?, "0A000=")?;
        let details = output.lines().filter_map(|l| l.strip_prefix("detail: ")).map(str::to_owned).collect();
        Ok(Outcome { summary, wrong, stale, details, elapsed })
    }
}

/// A driver program of tests/drivers/ and how to start it.
struct Program {
    name: &'static str,
    command: Vec<String>,
    /// Where a compiled program lives while the test runs.
    _build: Option<tempfile::TempDir>,
}

impl Program {
    fn new(name: &'static str, command: &[&str]) -> Program {
        Program { name, command: command.iter().map(|s| s.to_string()).collect(), _build: None }
    }

    /// JdbcMatrix.java compiled against Debian's pgJDBC jar into a temporary directory.
    fn jdbc() -> Program {
        let jar = pgjdbc_jar();
        let build = tempfile::tempdir().expect("a temporary directory for javac");
        let out = std::process::Command::new("javac")
            .arg("-cp")
            .arg(&jar)
            .arg("-d")
            .arg(build.path())
            .arg(drivers_dir().join("JdbcMatrix.java"))
            .output()
            .unwrap_or_else(|e| panic!("cannot run javac: {e} ({INSTALL_HINT}: default-jdk-headless)"));
        assert!(
            out.status.success(),
            "javac JdbcMatrix.java failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let classpath = format!("{}:{}", build.path().display(), jar.display());
        Program {
            name: "java",
            command: vec!["java".into(), "-cp".into(), classpath, "JdbcMatrix".into()],
            _build: Some(build),
        }
    }
}

/// Debian's pgJDBC (libpostgresql-jdbc-java) puts its jar in /usr/share/java, Debian's place for
/// jars: `postgresql.jar`, or a versioned name beside it.
fn pgjdbc_jar() -> PathBuf {
    const JAVA_DIR: &str = "/usr/share/java";
    let plain = Path::new(JAVA_DIR).join("postgresql.jar");
    if plain.is_file() {
        return plain;
    }
    let mut versioned: Vec<PathBuf> = std::fs::read_dir(JAVA_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("postgresql-4") && n.ends_with(".jar"))
        })
        .collect();
    versioned.sort();
    versioned.pop().unwrap_or_else(|| {
        panic!("pgJDBC's jar is not in {JAVA_DIR} ({INSTALL_HINT}: libpostgresql-jdbc-java)")
    })
}

/// Runs `program` with the workload's environment; kills it past [`RUN_LIMIT`].
async fn run_program(program: &Program, url: &str, ddl_url: &str) -> Result<Outcome, String> {
    let mut cmd = tokio::process::Command::new(&program.command[0]);
    cmd.args(&program.command[1..])
        .current_dir(drivers_dir())
        .env("DATABASE_URL", url)
        .env("DDL_URL", ddl_url)
        .env("WORKERS", WORKERS.to_string())
        .env("ITERATIONS", ITERATIONS.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    let started = Instant::now();
    let mut child =
        cmd.spawn().map_err(|e| format!("cannot start {}: {e} ({INSTALL_HINT})", program.name))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf).await;
        buf
    });
    let err = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf).await;
        buf
    });
    let status = tokio::time::timeout(RUN_LIMIT, child.wait()).await;
    if status.is_err() {
        let _ = child.kill().await;
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.await.unwrap_or_default()),
        String::from_utf8_lossy(&err.await.unwrap_or_default())
    );
    match status {
        Err(_) => Err(format!("no end within {RUN_LIMIT:?} (frozen?); output so far:\n{text}")),
        Ok(Err(e)) => Err(format!("wait: {e}")),
        Ok(Ok(s)) if !s.success() => Err(format!("exited with {s} ({INSTALL_HINT}):\n{text}")),
        Ok(Ok(_)) => Outcome::parse(&text, started.elapsed()).map_err(|e| format!("{e} in:\n{text}")),
    }
}

/// How a driver runs the workload: as a program of tests/drivers/, or in this process.
enum Driver {
    External(Program),
    TokioPostgres,
}

impl Driver {
    async fn run(&self, url: &str, ddl_url: &str) -> Result<Outcome, String> {
        match self {
            Driver::External(p) => run_program(p, url, ddl_url).await,
            Driver::TokioPostgres => {
                let started = Instant::now();
                let run = tokio_postgres_matrix::run(url, ddl_url, WORKERS, ITERATIONS);
                let mut o = tokio::time::timeout(RUN_LIMIT, run)
                    .await
                    .map_err(|_| format!("no end within {RUN_LIMIT:?} (frozen?)"))??;
                o.elapsed = started.elapsed();
                Ok(o)
            }
        }
    }
}

/// Whether PostgreSQL itself hands this driver `0A000` after the DDL changes (MATRIX.md): the
/// drivers that prepare again and retry by themselves never show it to the program.
#[derive(Clone, Copy)]
enum Stale {
    Shown,
    RetriedByDriver,
}

/// `pgsidecar serve` as a process on 127.0.0.1:0, as production runs it (one thread on a 2-core
/// machine). A proxy that freezes or spins is killed when the run ends instead of holding the
/// test's threads: in-process, a session spinning without yielding once kept this test running
/// for 44 minutes. Killed when dropped, as a frozen proxy ignores SIGTERM.
struct Serve {
    child: std::process::Child,
    url: String,
    /// What the proxy logged above info level, for a failure's message.
    log: Arc<Mutex<String>>,
}

impl Serve {
    fn start(pg: &TestPg, db: &str, settings: &[(&str, &str)]) -> Serve {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgsidecar"));
        cmd.arg("serve")
            .env("DATABASE_URL", pg.url(SCRAM_USER, db, "require"))
            .env("PGSIDECAR_LISTEN", "127.0.0.1:0")
            .env("PGSIDECAR_METRICS_LISTEN", "")
            .env("PGSIDECAR_LOG_LEVEL", "info")
            .env_remove("DYNO")
            .envs(settings.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start pgsidecar serve");
        let stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        let log = Arc::new(Mutex::new(String::new()));
        let (listening, listen_rx) = std::sync::mpsc::channel();
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if line.contains("event=listening") {
                    let addr = line.split(" listen=").nth(1).and_then(|a| a.split(' ').next()).unwrap_or("");
                    let _ = listening.send(addr.trim_matches('"').to_owned());
                } else if !line.contains("level=info") {
                    kept.lock().unwrap().push_str(&format!("    {line}\n"));
                }
            }
        });
        let Ok(addr) = listen_rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            panic!("pgsidecar serve did not start:\n{}", log.lock().unwrap());
        };
        let port = addr.rsplit(':').next().unwrap_or_default();
        let url =
            format!("postgres://{SCRAM_USER}:{}@127.0.0.1:{port}/{db}?sslmode=disable", pct(SCRAM_PASS));
        Serve { child, url, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs `driver` against PostgreSQL, then through pgsidecar in both pool modes, and fails with
/// every difference found.
fn matrix(name: &str, driver: Driver, stale: Stale) {
    let pg = TestPg::shared();
    let client_rt = runtime();
    let db = pg.create_db(&format!("matrix_{name}_direct"));
    let direct_url = pg.url(SCRAM_USER, &db, "disable");
    let direct = client_rt
        .block_on(driver.run(&direct_url, &direct_url))
        .unwrap_or_else(|e| panic!("{name} directly: {e}"));
    eprintln!("[matrix] {name} directly in {:?}: {} stale={}", direct.elapsed, direct.summary, direct.stale);
    // The program's expectations are PostgreSQL's answers: no wrong result, no unexpected error.
    assert!(
        direct.wrong == 0 && direct.details.is_empty(),
        "{name} against PostgreSQL itself: the program's expectations are wrong:\n{direct:#?}"
    );
    match stale {
        Stale::Shown => assert!(direct.stale > 0, "{name}: the DDL changes should hit prepared statements"),
        Stale::RetriedByDriver => assert_eq!(direct.stale, 0, "{name} retries 0A000 by itself"),
    }

    let mut failures = Vec::new();
    for (mode, pool) in [("transaction", TRANSACTION_POOL), ("session", SESSION_POOL)] {
        let db = pg.create_db(&format!("matrix_{name}_{mode}"));
        let p = Serve::start(pg, &db, &[("PGSIDECAR_POOL_MODE", mode), ("PGSIDECAR_POOL_SIZE", pool), QUIET]);
        let ddl_url = pg.url(SCRAM_USER, &db, "disable");
        let result = client_rt.block_on(driver.run(&p.url, &ddl_url));
        let log = p.log();
        drop(p);
        let got = match result {
            Ok(o) => o,
            Err(e) => {
                failures.push(format!("{name}, {mode} mode: {e}\n  pgsidecar logged:\n{log}"));
                continue;
            }
        };
        eprintln!("[matrix] {name} {mode} mode in {:?}: {} stale={}", got.elapsed, got.summary, got.stale);
        let mut problems = Vec::new();
        if got.summary != direct.summary {
            problems.push(format!(
                "summary differs:\n    postgres:  {}\n    pgsidecar: {}",
                direct.summary, got.summary
            ));
        }
        if got.wrong != 0 {
            problems.push(format!("{} wrong results", got.wrong));
        }
        if got.stale > direct.stale {
            problems.push(format!(
                "0A000 accepted {} times, PostgreSQL gave it {} times",
                got.stale, direct.stale
            ));
        }
        if !problems.is_empty() {
            let mut text = format!("{name}, {mode} mode:\n  {}", problems.join("\n  "));
            if !got.details.is_empty() {
                text.push_str(&format!("\n  details:\n    {}", got.details.join("\n    ")));
            }
            failures.push(text);
        }
    }
    assert!(failures.is_empty(), "through pgsidecar, not as against PostgreSQL:\n{}", failures.join("\n\n"));
}

/// The drivers' runtime: tokio-postgres and the clock of each program's run.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

#[test]
fn psycopg_matrix() {
    matrix(
        "psycopg",
        Driver::External(Program::new("python3", &["python3", "psycopg_matrix.py"])),
        Stale::Shown,
    );
}

#[test]
fn tokio_postgres_matrix() {
    matrix("tokio_postgres", Driver::TokioPostgres, Stale::Shown);
}

#[test]
fn asyncpg_matrix() {
    matrix(
        "asyncpg",
        Driver::External(Program::new("python3", &["python3", "asyncpg_matrix.py"])),
        Stale::RetriedByDriver,
    );
}

#[test]
fn node_postgres_matrix() {
    matrix(
        "node_postgres",
        Driver::External(Program::new("node", &["node", "node_matrix.js"])),
        Stale::Shown,
    );
}

#[test]
fn pgjdbc_matrix() {
    matrix("pgjdbc", Driver::External(Program::jdbc()), Stale::RetriedByDriver);
}

#[test]
fn activerecord_matrix() {
    let program = Program::new("ruby", &["ruby", "activerecord_matrix.rb"]);
    matrix("activerecord", Driver::External(program), Stale::RetriedByDriver);
}
