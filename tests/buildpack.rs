//! The buildpacks run as the platforms run them, without Heroku or the internet.
//!
//! `scripts/release` packages the binary cargo built for these tests (a copy of the buildpack
//! files takes its pin), and a small HTTP server on 127.0.0.1 serves the tarball. The classic
//! buildpack's bin/detect, bin/compile and bin/release run against a BUILD_DIR holding
//! examples/webapp and the repository's Procfile, with a CACHE_DIR and an ENV_DIR; the slug is
//! then moved elsewhere and started as a dyno starts it (.profile.d sourced, PORT and
//! DATABASE_URL set, the Procfile's web command run by bash), and answers requests that write
//! and read the database through the sidecar. The Cloud Native Buildpack's bin/detect and
//! bin/build run with the spec's environment and a layers directory, and the app is launched
//! with the launch layer's bin/ on PATH. A bad checksum, a 404 and an unreachable server fail a
//! build with one line and leave nothing behind; the packaged binary needs no glibc newer than
//! heroku-22's 2.35.

mod common;

use common::pg::{TestPg, SCRAM_PASS, SCRAM_USER};
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// PATH for the build scripts: the system's tools only (curl, tar, sha256sum, readelf, strip).
const SYSTEM_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Stands in for a token in a download URL: it must never reach a build log.
const URL_SECRET: &str = "tok3n-never-logged";
/// heroku-22's glibc; heroku-24 and Fir have 2.39.
const MAX_GLIBC: (u32, u32) = (2, 35);

fn target() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x86_64-unknown-linux-gnu",
        "aarch64" => "aarch64-unknown-linux-gnu",
        other => panic!("no pgsidecar release target for {other}"),
    }
}

/// The architecture as a CNB lifecycle names it in CNB_TARGET_ARCH.
fn cnb_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no CNB architecture name for {other}"),
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn sha256_hex(path: &Path) -> String {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn cp_a(from: &Path, to: &Path) {
    let st = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

/// Every path under `dir` with its kind, size and mode: equal before and after a failed build.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (bool, u64, u32)> {
    let mut all = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = fs::symlink_metadata(entry.path()).unwrap();
            let rel = entry.path().strip_prefix(dir).unwrap().to_path_buf();
            all.insert(
                rel,
                (meta.is_dir(), if meta.is_dir() { 0 } else { meta.len() }, meta.permissions().mode()),
            );
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    all
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    snapshot(dir).into_iter().filter(|(_, (is_dir, _, _))| !is_dir).map(|(p, _)| p).collect()
}

// --- the release ---------------------------------------------------------------------------

/// A copy of what Heroku clones to run the buildpack (bin/, buildpack/, scripts/release,
/// Cargo.toml), released with the test binary: its pin names the tarball in `dist`.
struct Release {
    dir: tempfile::TempDir,
    root: PathBuf,
    dist: PathBuf,
    tarball: String,
    sha256: String,
}

impl Release {
    fn new() -> Release {
        let dir = tempfile::Builder::new().prefix("pgsc-bp-").tempdir().unwrap();
        let root = dir.path().join("buildpack-repo");
        fs::create_dir_all(root.join("scripts")).unwrap();
        for sub in ["bin", "buildpack", "Cargo.toml"] {
            cp_a(&Path::new(REPO).join(sub), &root.join(sub));
        }
        cp_a(&Path::new(REPO).join("scripts/release"), &root.join("scripts/release"));
        let dist = dir.path().join("dist");
        let started = Instant::now();
        let out = Command::new(root.join("scripts/release"))
            .env_clear()
            .env("PATH", SYSTEM_PATH)
            .arg("--binary")
            .arg(env!("CARGO_BIN_EXE_pgsidecar"))
            .args(["--target", target(), "--out"])
            .arg(&dist)
            .output()
            .unwrap();
        let log = text(&out);
        assert!(out.status.success(), "scripts/release failed:\n{log}");
        eprintln!("----- scripts/release ({:.1?}) -----\n{log}", started.elapsed());

        let tarball = format!("pgsidecar-{VERSION}-{}.tar.gz", target());
        let sha256 = sha256_hex(&dist.join(&tarball));
        let sha_file = fs::read_to_string(dist.join(format!("{tarball}.sha256"))).unwrap();
        assert_eq!(sha_file, format!("{sha256}  {tarball}\n"), "the .sha256 file is not sha256sum's line");
        let pin = fs::read_to_string(root.join("buildpack/pgsidecar.pin")).unwrap();
        assert!(pin.lines().any(|l| l == format!("version={VERSION}")), "{pin}");
        assert!(pin.lines().any(|l| l == format!("sha256.{}={sha256}", target())), "{pin}");
        let toml = fs::read_to_string(root.join("buildpack/buildpack.toml")).unwrap();
        assert!(toml.lines().any(|l| l == format!("version = \"{VERSION}\"")), "{toml}");
        let cnb = dist.join(format!("pgsidecar-buildpack-{VERSION}.tgz"));
        let listing = Command::new("tar").arg("-tzf").arg(&cnb).output().unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        for f in ["./buildpack.toml", "./bin/detect", "./bin/build", "./lib/install.sh", "./pgsidecar.pin"] {
            assert!(listing.lines().any(|l| l == f), "{f} missing from {}:\n{listing}", cnb.display());
        }
        Release { dir, root, dist, tarball, sha256 }
    }

    fn work(&self) -> &Path {
        self.dir.path()
    }

    /// A fresh app checkout: examples/webapp and the repository's Procfile.
    fn app(&self, name: &str) -> PathBuf {
        let app = self.work().join(name);
        fs::create_dir_all(app.join("examples")).unwrap();
        cp_a(&Path::new(REPO).join("examples/webapp"), &app.join("examples/webapp"));
        fs::copy(Path::new(REPO).join("Procfile"), app.join("Procfile")).unwrap();
        app
    }

    fn classic(&self, script: &str) -> Command {
        let mut cmd = Command::new(self.root.join("bin").join(script));
        cmd.env_clear().env("PATH", SYSTEM_PATH).env("HOME", self.work()).current_dir(self.work());
        cmd
    }

    /// bin/compile BUILD_DIR CACHE_DIR ENV_DIR; prints the build log.
    fn compile(&self, what: &str, build: &Path, cache: &Path, env: &Path) -> Output {
        let started = Instant::now();
        let out = self.classic("compile").arg(build).arg(cache).arg(env).output().unwrap();
        eprintln!(
            "----- classic buildpack: {what} ({:.1?}, {}) -----\n{}",
            started.elapsed(),
            out.status,
            text(&out)
        );
        out
    }

    /// A copy of the tarball with one byte changed in the middle.
    fn tampered(&self) -> &'static str {
        let mut bytes = fs::read(self.dist.join(&self.tarball)).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        fs::write(self.dist.join("tampered.tar.gz"), bytes).unwrap();
        "tampered.tar.gz"
    }
}

/// Config vars as (name, value).
type EnvVars<'a> = Vec<(&'a str, &'a str)>;

fn write_env(dir: &Path, vars: &[(&str, &str)]) {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).unwrap();
    for (k, v) in vars {
        fs::write(dir.join(k), v).unwrap();
    }
}

// --- a file server on 127.0.0.1 ------------------------------------------------------------

/// Serves the files of one directory by name (GET /NAME), 404 otherwise, and records each
/// request's method and path.
struct FileServer {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl FileServer {
    fn start(dir: PathBuf) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, stopped) = (requests.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(mut conn) = conn {
                    serve_one(&dir, &mut conn, &log);
                }
            }
        });
        FileServer { port, requests, stop }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve_one(dir: &Path, conn: &mut TcpStream, log: &Mutex<Vec<String>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut first = head.lines().next().unwrap_or("").split(' ');
    let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let path = target.split(['?', '#']).next().unwrap_or("");
    log.lock().unwrap().push(format!("{method} {path}"));
    let name = path.trim_start_matches('/');
    let file = dir.join(name);
    let (status, body) = if method == "GET" && !name.is_empty() && !name.contains('/') && file.is_file() {
        ("200 OK", fs::read(&file).unwrap())
    } else {
        ("404 Not Found", b"not found\n".to_vec())
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(&body);
}

// --- a dyno --------------------------------------------------------------------------------

/// The directory of the Python that has psycopg (the shims of a version manager need their own
/// environment, which a dyno does not have).
fn python_dir() -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import sys, psycopg; print(sys.executable)"])
        .output()
        .expect("python3 is needed: .ci/run installs psycopg");
    assert!(out.status.success(), "python3 with psycopg is needed (.ci/run installs it): {}", text(&out));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).parent().unwrap().to_path_buf()
}

/// The command of the Procfile's `web` process type.
fn procfile_web(app: &Path) -> String {
    let procfile = fs::read_to_string(app.join("Procfile")).unwrap();
    procfile
        .lines()
        .find_map(|l| l.strip_prefix("web:"))
        .unwrap_or_else(|| panic!("no web process in the Procfile:\n{procfile}"))
        .trim()
        .to_owned()
}

struct Dyno {
    child: Child,
    lines: Receiver<String>,
    log: Arc<Mutex<String>>,
    port: u16,
    sidecar_port: u16,
}

impl Dyno {
    /// Starts `command` in `app` as the platform does: bash, in the app directory with HOME
    /// there, PORT and DATABASE_URL set; with `profile_d`, `.profile.d/*.sh` sourced first (a
    /// classic slug), else with `path_first` ahead of the system PATH (a CNB launch layer).
    fn start(
        app: &Path,
        command: &str,
        profile_d: bool,
        path_first: Option<&Path>,
        database_url: &str,
    ) -> Dyno {
        let port = free_port();
        let sidecar_port = free_port();
        let mut path = format!("{}:/usr/bin:/bin", python_dir().display());
        if let Some(dir) = path_first {
            path = format!("{}:{path}", dir.display());
        }
        let mut script = String::new();
        if profile_d {
            // pgsidecar must come from the slug, not from the machine running the test.
            script.push_str(
                "if command -v pgsidecar >/dev/null 2>&1; then\n\
                 echo \"pgsidecar is on PATH before .profile.d: $(command -v pgsidecar)\" >&2; exit 97\nfi\n\
                 for f in .profile.d/*.sh; do . \"$f\"; done\n",
            );
        }
        script.push_str(&format!("exec {command}\n"));
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(app)
            .env_clear()
            .env("PATH", path)
            .env("HOME", app)
            .env("PORT", port.to_string())
            .env("DATABASE_URL", database_url)
            .env("DYNO", "web.1")
            .env("PGSIDECAR_LISTEN", format!("127.0.0.1:{sidecar_port}"))
            .env("PGSIDECAR_METRICS_LISTEN", "")
            .env("PGSIDECAR_STATS_PERIOD", "1")
            .env("PYTHONUNBUFFERED", "1")
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let (tx, lines) = channel();
        let log = Arc::new(Mutex::new(String::new()));
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for pipe in [stdout, stderr] {
            let (tx, log) = (tx.clone(), log.clone());
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    log.lock().unwrap().push_str(&format!("{line}\n"));
                    let _ = tx.send(line);
                }
            });
        }
        Dyno { child, lines, log, port, sidecar_port }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Polls GET /health until it answers 200 "ok", the process exits, or 30 s pass.
    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the dyno exited ({status}) before /health answered:\n{}", self.log());
            }
            if let Ok((200, body)) = http_get(self.port, "/health") {
                assert_eq!(body, "ok\n");
                return;
            }
            assert!(Instant::now() < deadline, "GET /health did not answer 200 within 30 s:\n{}", self.log());
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// GET /: a visit recorded and read back; the app must have connected through the sidecar.
    fn visit(&self) -> i64 {
        let (status, body) = http_get(self.port, "/").unwrap();
        assert_eq!(status, 200, "{body}\n{}", self.log());
        assert_eq!(
            json_number(&body, "db_port"),
            i64::from(self.sidecar_port),
            "not through the sidecar: {body}"
        );
        assert!(body.contains("\"db_host\": \"127.0.0.1\""), "{body}");
        json_number(&body, "visits")
    }

    fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if pred(&l) => return l,
                Ok(_) => {}
                Err(_) => panic!("no {what} within 20 s:\n{}", self.log()),
            }
        }
    }

    /// SIGTERM to the dyno's processes, as the platform sends it; it must exit 0 promptly.
    fn stop(mut self) -> String {
        let group = format!("-{}", self.child.id());
        assert!(Command::new("kill").args(["-TERM", "--", &group]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "still running 20 s after SIGTERM:\n{}", self.log());
            thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "exited with {status} after SIGTERM:\n{}", self.log());
        let log = self.log();
        eprintln!("----- the dyno's output -----\n{log}");
        log
    }
}

impl Drop for Dyno {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
            let _ = self.child.wait();
        }
    }
}

fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(15))).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
    let status =
        raw.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("no status: {raw}"))?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

fn json_number(body: &str, key: &str) -> i64 {
    let at = body.find(&format!("\"{key}\": ")).unwrap_or_else(|| panic!("no {key} in {body}"));
    let rest = &body[at + key.len() + 4..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().unwrap_or_else(|_| panic!("{key} is not a number in {body}"))
}

/// The requests and the l2met line every slug must show: two visits counted, through the sidecar.
fn serve_and_watch(dyno: &mut Dyno) {
    dyno.wait_healthy();
    let first = dyno.visit();
    let second = dyno.visit();
    assert!(second > first, "visits did not grow: {first} then {second}");
    // What `heroku logs --tail` shows of the pool.
    let stats = dyno.wait_line("l2met pool_stats line", |l| {
        l.contains("event=pool_stats")
            && l.contains("source=web.1")
            && l.contains("sample#pgsidecar.pool.max_size=")
    });
    eprintln!("l2met: {stats}");
}

fn error_lines<'a>(log: &'a str, prefix: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.starts_with(prefix)).collect()
}

// --- the tests -----------------------------------------------------------------------------

#[test]
fn classic_buildpack_builds_a_slug_that_serves_through_the_sidecar() {
    let rel = Release::new();
    let server = FileServer::start(rel.dist.clone());
    let pg = TestPg::shared();
    let db = pg.create_db("buildpack_classic");
    let database_url = pg.url(SCRAM_USER, &db, "require");
    let work = rel.work();
    let cache = work.join("cache");
    let env = work.join("env");
    // A mirror of the release, with credentials and a token that must not be logged; ENV_DIR
    // holds every config var, DATABASE_URL included.
    write_env(
        &env,
        &[
            (
                "PGSIDECAR_BINARY_URL",
                &format!(
                    "http://mirror:{URL_SECRET}@127.0.0.1:{}/pgsidecar-{{version}}-{{target}}.tar.gz?token={URL_SECRET}",
                    server.port
                ),
            ),
            ("DATABASE_URL", &database_url),
        ],
    );

    let build = rel.app("build_1");
    let detect = rel.classic("detect").arg(&build).output().unwrap();
    assert!(detect.status.success(), "{}", text(&detect));
    assert_eq!(String::from_utf8_lossy(&detect.stdout), "pgsidecar\n");

    let out = rel.compile("first build", &build, &cache, &env);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    let url = format!("http://127.0.0.1:{}/{}", server.port, rel.tarball);
    for line in [
        format!("-----> pgsidecar {VERSION} ({})", target()),
        format!("       Downloading {url}"),
        format!("       Verified sha256 {} (pinned by the buildpack)", rel.sha256),
        "-----> Installing pgsidecar".to_owned(),
        format!("       pgsidecar {VERSION} in .heroku/pgsidecar/bin, on PATH at dyno start (.profile.d/pgsidecar.sh)"),
        "       bin/start-pgsidecar added (the drop-in for bin/start-pgbouncer)".to_owned(),
        "       Procfile runs it for: web".to_owned(),
    ] {
        assert!(log.lines().any(|l| l == line), "no line {line:?} in:\n{log}");
    }
    for secret in [URL_SECRET, SCRAM_PASS, "mirror:"] {
        assert!(!log.contains(secret), "{secret:?} in the build log:\n{log}");
    }
    assert_eq!(server.requests(), [format!("GET /{}", rel.tarball)]);
    assert_eq!(
        files_under(&build.join(".heroku")),
        [PathBuf::from("pgsidecar/bin/pgsidecar"), PathBuf::from("pgsidecar/bin/start-pgsidecar")]
    );
    assert!(build.join("bin/start-pgsidecar").is_file());
    let profile = fs::read_to_string(build.join(".profile.d/pgsidecar.sh")).unwrap();
    assert!(
        !profile.contains(&build.display().to_string()),
        "the profile names the build directory:\n{profile}"
    );
    assert_eq!(files_under(&cache), [PathBuf::from(format!("pgsidecar/{}.tar.gz", rel.sha256))]);

    let release = rel.classic("release").arg(&build).output().unwrap();
    assert!(release.status.success(), "{}", text(&release));
    assert_eq!(String::from_utf8_lossy(&release.stdout), "--- {}\n");

    // The dyno: the slug runs from another directory than it was built in, as /app.
    let app = work.join("app_1");
    fs::rename(&build, &app).unwrap();
    let mut dyno = Dyno::start(&app, &procfile_web(&app), true, None, &database_url);
    serve_and_watch(&mut dyno);
    let dyno_log = dyno.stop();
    assert!(dyno_log.contains("app: stopped"), "{dyno_log}");

    // Second build, a fresh checkout with the same cache: nothing downloaded.
    let build = rel.app("build_2");
    let out = rel.compile("second build, from the cache", &build, &cache, &env);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    let cached = format!("       Using the cached download (sha256 {}, pinned by the buildpack)", rel.sha256);
    assert!(log.lines().any(|l| l == cached), "no line {cached:?} in:\n{log}");
    assert!(!log.contains("Downloading"), "{log}");
    assert_eq!(server.requests().len(), 1, "the second build downloaded: {:?}", server.requests());

    // Migrating from heroku-buildpack-pgbouncer: bin/start-pgsidecar in front of the command.
    let app = work.join("app_2");
    fs::rename(&build, &app).unwrap();
    let mut dyno =
        Dyno::start(&app, "bin/start-pgsidecar python3 examples/webapp/app.py", true, None, &database_url);
    dyno.wait_healthy();
    dyno.visit();
    dyno.stop();
}

#[test]
fn classic_buildpack_failures_leave_nothing_behind() {
    let rel = Release::new();
    let server = FileServer::start(rel.dist.clone());
    let tampered = rel.tampered();
    let closed = free_port();
    let work = rel.work();
    let base = format!("http://127.0.0.1:{}", server.port);
    let tampered_url = format!("{base}/{tampered}?token={URL_SECRET}");
    let missing_url = format!("{base}/missing-{{version}}.tar.gz?token={URL_SECRET}");
    let closed_url = format!("http://user:{URL_SECRET}@127.0.0.1:{closed}/pgsidecar.tar.gz");
    let mirror_url = format!("{base}/{}", rel.tarball);
    let cases: Vec<(&str, EnvVars, String)> = vec![
        (
            "a bad checksum",
            vec![("PGSIDECAR_BINARY_URL", &tampered_url)],
            format!(
                " !     pgsidecar: checksum mismatch for {base}/{tampered}: expected sha256 {} (pinned by the buildpack), got ",
                rel.sha256
            ),
        ),
        (
            "a 404",
            vec![("PGSIDECAR_BINARY_URL", &missing_url)],
            format!(
                " !     pgsidecar: download failed: HTTP 404 from {base}/missing-{VERSION}.tar.gz; nothing was installed"
            ),
        ),
        (
            "an unreachable server",
            vec![("PGSIDECAR_BINARY_URL", &closed_url)],
            format!(" !     pgsidecar: download failed: cannot connect to 127.0.0.1:{closed} (http://127.0.0.1:{closed}/pgsidecar.tar.gz); nothing was installed"),
        ),
        (
            "a version the buildpack does not pin, from a URL of one's own, without its checksum",
            vec![("PGSIDECAR_VERSION", "9.9.9"), ("PGSIDECAR_BINARY_URL", &mirror_url)],
            format!(" !     pgsidecar: PGSIDECAR_BINARY_URL for pgsidecar 9.9.9 needs PGSIDECAR_BINARY_SHA256 (this buildpack pins only {VERSION})"),
        ),
    ];
    for (i, (what, vars, expected)) in cases.iter().enumerate() {
        let build = rel.app(&format!("build_fail_{i}"));
        let cache = work.join(format!("cache_fail_{i}"));
        let env = work.join(format!("env_fail_{i}"));
        write_env(&env, vars);
        let before = snapshot(&build);
        let out = rel.compile(what, &build, &cache, &env);
        let log = text(&out);
        assert_eq!(out.status.code(), Some(1), "{what}: {log}");
        let errors = error_lines(&log, " !     ");
        assert_eq!(errors.len(), 1, "{what}: not one error line:\n{log}");
        assert!(
            errors[0].starts_with(expected.as_str()),
            "{what}: {:?}\ndoes not start with\n{expected:?}",
            errors[0]
        );
        assert!(!log.contains(URL_SECRET), "{what}: the URL's secret is in the log:\n{log}");
        assert_eq!(snapshot(&build), before, "{what}: BUILD_DIR changed");
        assert_eq!(files_under(&cache), Vec::<PathBuf>::new(), "{what}: left in CACHE_DIR");
    }
    assert_eq!(
        server.requests(),
        [format!("GET /{tampered}"), format!("GET /missing-{VERSION}.tar.gz")],
        "a refused configuration must not download anything"
    );

    // The way out the last error names: the checksum given with the URL.
    let build = rel.app("build_own_checksum");
    let env = work.join("env_own_checksum");
    write_env(
        &env,
        &[
            ("PGSIDECAR_VERSION", "9.9.9"),
            ("PGSIDECAR_BINARY_URL", &mirror_url),
            ("PGSIDECAR_BINARY_SHA256", &rel.sha256),
        ],
    );
    let out = rel.compile("a checksum of one's own", &build, &work.join("cache_own_checksum"), &env);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    let verified = format!("       Verified sha256 {} (PGSIDECAR_BINARY_SHA256)", rel.sha256);
    assert!(log.lines().any(|l| l == verified), "no line {verified:?} in:\n{log}");
    assert!(build.join(".heroku/pgsidecar/bin/pgsidecar").is_file());
}

#[test]
fn cloud_native_buildpack_installs_a_launch_layer() {
    let rel = Release::new();
    let server = FileServer::start(rel.dist.clone());
    let pg = TestPg::shared();
    let db = pg.create_db("buildpack_cnb");
    let database_url = pg.url(SCRAM_USER, &db, "require");
    let work = rel.work();
    let bp = rel.root.join("buildpack");
    let app = rel.app("workspace");
    let app_before = snapshot(&app);
    let platform = work.join("platform");
    let url = format!("http://127.0.0.1:{}/pgsidecar-{{version}}-{{target}}.tar.gz", server.port);
    write_env(&platform.join("env"), &[("PGSIDECAR_BINARY_URL", &url)]);
    let layers = work.join("layers/pgsidecar_pgsidecar");
    fs::create_dir_all(&layers).unwrap();

    // The lifecycle's environment (Buildpack API 0.10): no arguments, paths in CNB_* variables,
    // the app directory as working directory.
    let cnb = |script: &str| {
        let mut cmd = Command::new(bp.join("bin").join(script));
        cmd.env_clear()
            .env("PATH", SYSTEM_PATH)
            .env("HOME", work)
            .env("CNB_BUILDPACK_DIR", &bp)
            .env("CNB_PLATFORM_DIR", &platform)
            .env("CNB_TARGET_OS", "linux")
            .env("CNB_TARGET_ARCH", cnb_arch())
            .current_dir(&app);
        cmd
    };
    let plan = work.join("plan.toml");
    fs::write(&plan, "").unwrap();
    let detect = cnb("detect").env("CNB_BUILD_PLAN_PATH", &plan).output().unwrap();
    assert_eq!(detect.status.code(), Some(0), "{}", text(&detect));
    assert_eq!(
        fs::read_to_string(&plan).unwrap(),
        "[[provides]]\nname = \"pgsidecar\"\n\n[[requires]]\nname = \"pgsidecar\"\n"
    );
    let bp_plan = work.join("bp-plan.toml");
    fs::write(&bp_plan, "[[entries]]\nname = \"pgsidecar\"\n").unwrap();
    let build = |what: &str, layers: &Path| {
        let started = Instant::now();
        let out =
            cnb("build").env("CNB_LAYERS_DIR", layers).env("CNB_BP_PLAN_PATH", &bp_plan).output().unwrap();
        eprintln!(
            "----- cloud native buildpack: {what} ({:.1?}, {}) -----\n{}",
            started.elapsed(),
            out.status,
            text(&out)
        );
        out
    };

    let out = build("first build", &layers);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    for line in [
        "## pgsidecar".to_owned(),
        format!("- pgsidecar {VERSION} ({})", target()),
        format!("  Downloading http://127.0.0.1:{}/{}", server.port, rel.tarball),
        format!("  Verified sha256 {} (pinned by the buildpack)", rel.sha256),
        format!("  pgsidecar {VERSION} in the launch layer pgsidecar: bin/ on PATH at launch"),
    ] {
        assert!(log.lines().any(|l| l == line), "no line {line:?} in:\n{log}");
    }
    let toml_path = layers.join("pgsidecar.toml");
    let toml = fs::read_to_string(&toml_path).unwrap();
    let expected_toml = format!(
        "[types]\nlaunch = true\nbuild = false\ncache = true\n\n[metadata]\nversion = \"{VERSION}\"\ntarget = \"{}\"\nsha256 = \"{}\"\n",
        target(),
        rel.sha256
    );
    assert_eq!(toml, expected_toml);
    assert_eq!(
        files_under(&layers),
        [
            PathBuf::from("pgsidecar/bin/pgsidecar"),
            PathBuf::from("pgsidecar/bin/start-pgsidecar"),
            PathBuf::from("pgsidecar.toml")
        ]
    );
    assert_eq!(snapshot(&app), app_before, "bin/build wrote into the app directory");
    assert_eq!(server.requests().len(), 1);

    // Launch: the launch layer's bin/ on PATH, the Procfile's web command.
    let mut dyno =
        Dyno::start(&app, &procfile_web(&app), false, Some(&layers.join("pgsidecar/bin")), &database_url);
    serve_and_watch(&mut dyno);
    dyno.stop();

    // Rebuild as the lifecycle prepares it: the cached layer restored, its metadata without
    // [types] (and formatted its own way).
    let restored = format!(
        "[metadata]\n  sha256 = \"{}\"\n  target = \"{}\"\n  version = \"{VERSION}\"\n",
        rel.sha256,
        target()
    );
    fs::write(&toml_path, &restored).unwrap();
    let out = build("rebuild, cached layer restored", &layers);
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    let reused = format!("  Reusing the cached layer (sha256 {}, pinned by the buildpack)", rel.sha256);
    assert!(log.lines().any(|l| l == reused), "no line {reused:?} in:\n{log}");
    assert_eq!(server.requests().len(), 1, "the rebuild downloaded: {:?}", server.requests());
    assert_eq!(fs::read_to_string(&toml_path).unwrap(), expected_toml);

    // A cached layer of another build is replaced.
    fs::write(&toml_path, restored.replace(&rel.sha256, &"0".repeat(64))).unwrap();
    let out = build("rebuild, cached layer of another version", &layers);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("  Downloading "), "{}", text(&out));
    assert_eq!(server.requests().len(), 2);
    assert_eq!(fs::read_to_string(&toml_path).unwrap(), expected_toml);

    // A bad checksum: one line, and no layer.
    let tampered = rel.tampered();
    write_env(
        &platform.join("env"),
        &[("PGSIDECAR_BINARY_URL", &format!("http://127.0.0.1:{}/{tampered}", server.port))],
    );
    let fresh = work.join("layers/fresh");
    fs::create_dir_all(&fresh).unwrap();
    let out = build("a bad checksum", &fresh);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    let errors = error_lines(&log, "ERROR: ");
    assert_eq!(errors.len(), 1, "not one error line:\n{log}");
    assert!(errors[0].starts_with("ERROR: pgsidecar: checksum mismatch for "), "{}", errors[0]);
    assert_eq!(snapshot(&fresh), BTreeMap::new(), "a failed build left something in its layers directory");
}

/// The highest GLIBC_x.y a binary binds to, and the libraries it links.
fn glibc_needs(binary: &Path) -> ((u32, u32), Vec<String>) {
    let out = Command::new("readelf").args(["-W", "--version-info"]).arg(binary).output().unwrap();
    assert!(out.status.success(), "readelf (binutils) is needed: {}", text(&out));
    let info = String::from_utf8_lossy(&out.stdout);
    let highest = info
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut parts = v.split('.').map(|p| p.parse::<u32>());
            Some((parts.next()?.ok()?, parts.next().unwrap_or(Ok(0)).ok()?))
        })
        .max()
        .expect("no GLIBC_ symbol versions");
    let out = Command::new("readelf").arg("-d").arg(binary).output().unwrap();
    let needed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split_once('[')?.1.trim_end_matches(']').to_owned()))
        .collect();
    (highest, needed)
}

#[test]
fn release_binary_runs_on_heroku_22_and_later() {
    let rel = Release::new();
    let unpacked = rel.work().join("unpacked");
    fs::create_dir_all(&unpacked).unwrap();
    let st = Command::new("tar")
        .arg("-xzf")
        .arg(rel.dist.join(&rel.tarball))
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(st.success());
    let binary = unpacked.join(format!("pgsidecar-{VERSION}-{}/bin/pgsidecar", target()));
    let ((major, minor), needed) = glibc_needs(&binary);
    eprintln!(
        "packaged binary: {} bytes, needs GLIBC_{major}.{minor}, links {needed:?}",
        fs::metadata(&binary).unwrap().len()
    );
    assert!((major, minor) <= MAX_GLIBC, "needs GLIBC_{major}.{minor}: newer than heroku-22's 2.35");
    for lib in &needed {
        assert!(
            ["libc.so.6", "libm.so.6", "libgcc_s.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1"]
                .contains(&lib.as_str()),
            "links {lib}, which a Heroku stack may lack"
        );
    }
    assert!(!needed.iter().any(|l| l.starts_with("libssl") || l.starts_with("libcrypto")));

    // The release script refuses what would not run there, and then writes nothing.
    let pin = rel.root.join("buildpack/pgsidecar.pin");
    let pin_before = fs::read_to_string(&pin).unwrap();
    let older = format!("{major}.{}", minor - 1);
    let (other_target, other_arch) = if target().starts_with("x86_64") {
        ("aarch64-unknown-linux-gnu", "aarch64")
    } else {
        ("x86_64-unknown-linux-gnu", "x86_64")
    };
    let cases = [
        (
            vec!["--target", target(), "--max-glibc", older.as_str()],
            format!("needs GLIBC_{major}.{minor}, newer than the {older} allowed"),
        ),
        (vec!["--target", other_target], format!("is not a {other_arch} binary")),
    ];
    for (args, expected) in cases {
        let out_dir = rel.work().join("refused");
        let out = Command::new(rel.root.join("scripts/release"))
            .env_clear()
            .env("PATH", SYSTEM_PATH)
            .arg("--binary")
            .arg(env!("CARGO_BIN_EXE_pgsidecar"))
            .args(&args)
            .arg("--out")
            .arg(&out_dir)
            .output()
            .unwrap();
        let log = text(&out);
        assert!(!out.status.success(), "{args:?}: {log}");
        assert!(log.contains(&expected), "{args:?}: no {expected:?} in {log}");
        assert!(!out_dir.exists() || files_under(&out_dir).is_empty(), "{args:?}: files written");
        assert_eq!(fs::read_to_string(&pin).unwrap(), pin_before, "{args:?}: the pin changed");
    }
}
