//! A throw-away PostgreSQL cluster for integration tests.
//!
//! `TestPg::start` runs `initdb` into a fresh temporary directory, generates a
//! CA plus server certificate, writes `pg_hba.conf` / config, starts the
//! postmaster on a free 127.0.0.1 port and creates three login roles that
//! authenticate with SCRAM-SHA-256, MD5 and cleartext password respectively.
//!
//! Lifetime: the postmaster is started by a tiny `sh` wrapper whose stdin is a
//! pipe held by this process. When the pipe reaches EOF (the `TestPg` was
//! dropped, or the test process exited / was killed -- which also covers the
//! never-dropped `shared()` instance), the wrapper fast-stops the server and
//! deletes the temporary directory. No cluster outlives its test process.
//!
//! Everything is blocking `std` code, so it can be called from sync tests and
//! from inside `#[tokio::test]` alike.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

pub const SCRAM_USER: &str = "scram_user";
pub const SCRAM_PASS: &str = "scram-pass/1";
pub const MD5_USER: &str = "md5_user";
pub const MD5_PASS: &str = "md5 pass:2";
pub const PLAIN_USER: &str = "plain_user";
pub const PLAIN_PASS: &str = "plain@pass3";

/// Bootstrap superuser (trust over the unix socket only).
pub const SUPERUSER: &str = "postgres";

const HOST: &str = "127.0.0.1";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const PORT_ATTEMPTS: usize = 5;
const POLL_INTERVAL: Duration = Duration::from_millis(25);
const HARNESS_CONF: &str = "pgsidecar_harness.conf";
const LOG_FILE: &str = "postgres.log";
/// Written by the wrapper when the postmaster it started has exited.
const EXITED_MARKER: &str = "postmaster.exited";

/// Runs as the server's OS user. Arguments:
/// $1 postgres binary, $2 pg_ctl binary, $3 data dir, $4 log file, $5 temp root.
/// Reading a line "keep" on stdin suppresses the final `rm -rf` (used when a
/// start attempt is abandoned because of a port clash).
const WRAPPER_SCRIPT: &str = r#"
postgres_bin=$1; pg_ctl=$2; data=$3; log=$4; root=$5
exited="$root/postmaster.exited"
child="$root/postmaster.child"
rm -f "$exited" "$child"
trap '' INT
(
  "$postgres_bin" -D "$data" </dev/null >>"$log" 2>&1 &
  echo $! >"$child"
  wait $!
  echo $? >"$exited"
) </dev/null &
keep=
while IFS= read -r line; do
  if [ "$line" = keep ]; then keep=1; fi
done
while [ ! -s "$child" ] && [ ! -e "$exited" ]; do sleep 0.05; done
if [ ! -e "$exited" ]; then kill -INT "$(cat "$child")" 2>/dev/null; fi
"$pg_ctl" stop -D "$data" -m fast -w -t 60 >/dev/null 2>&1 ||
  "$pg_ctl" stop -D "$data" -m immediate -w -t 60 >/dev/null 2>&1
wait
if [ -z "$keep" ]; then rm -rf "$root"; fi
"#;

/// Options for [`TestPg::start`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    pub max_connections: u32,
    pub tls: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions { max_connections: 100, tls: true }
    }
}

/// A running temporary PostgreSQL cluster. Dropping it shuts the server down
/// and removes its files.
pub struct TestPg {
    port: u16,
    root: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    ca_cert: PathBuf,
    run_as: Option<RunAs>,
    wrapper: Mutex<Option<Wrapper>>,
    /// Removes the directory if the wrapper did not already; dropped last.
    _tempdir: tempfile::TempDir,
}

struct Wrapper {
    child: Child,
    stdin: Option<ChildStdin>,
}

enum LaunchError {
    PortClash,
    Failed(String),
}

impl TestPg {
    /// Start a fresh cluster (blocking).
    pub fn start(opts: PgOptions) -> TestPg {
        assert!(opts.max_connections >= 1, "max_connections must be >= 1");
        let started = Instant::now();
        let run_as = RunAs::detect();

        let tempdir = tempfile::Builder::new()
            .prefix("pgsc-")
            .tempdir_in(temp_base(run_as.is_some()))
            .expect("create temp dir for test cluster");
        let root = tempdir.path().to_path_buf();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).expect("chmod temp dir");
        if let Some(r) = &run_as {
            r.chown(&root);
        }
        let data_dir = root.join("data");
        let mut pg = TestPg {
            port: 0,
            log_path: data_dir.join(LOG_FILE),
            ca_cert: root.join("ca.crt"),
            data_dir,
            root,
            run_as,
            wrapper: Mutex::new(None),
            _tempdir: tempdir,
        };

        pg.initdb();
        pg.write_tls_files();
        pg.write_hba();
        let mut conf = fs::OpenOptions::new()
            .append(true)
            .open(pg.data_dir.join("postgresql.conf"))
            .expect("open postgresql.conf");
        writeln!(conf, "\n# added by the pgsidecar test harness\ninclude '{HARNESS_CONF}'")
            .expect("append to postgresql.conf");
        drop(conf);

        pg.launch(&opts);
        pg.bootstrap_roles();
        eprintln!(
            "[test-pg] cluster ready on {HOST}:{} (socket dir {}) in {:?}",
            pg.port,
            pg.root.display(),
            started.elapsed()
        );
        pg
    }

    /// One cluster per test binary, started with default options on first use.
    pub fn shared() -> &'static TestPg {
        static SHARED: OnceLock<TestPg> = OnceLock::new();
        SHARED.get_or_init(|| TestPg::start(PgOptions::default()))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &str {
        HOST
    }

    /// PEM of the CA that signed the server certificate
    /// (server SANs: `localhost`, `127.0.0.1`). Exists even when TLS is off.
    pub fn ca_cert_path(&self) -> &Path {
        &self.ca_cert
    }

    /// Unix socket directory (for `psql -h`).
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_file(&self.log_path, lines)
    }

    /// `postgres://` URL over TCP for `user`; the password is filled in for
    /// the three harness roles and omitted for any other user. An empty
    /// `sslmode` leaves out the query string.
    pub fn url(&self, user: &str, db: &str, sslmode: &str) -> String {
        let userinfo = match password_for(user) {
            Some(pass) => format!("{}:{}", pct_encode(user), pct_encode(pass)),
            None => pct_encode(user),
        };
        let mut url = format!("postgres://{userinfo}@{HOST}:{}/{}", self.port, pct_encode(db));
        if !sslmode.is_empty() {
            url.push_str("?sslmode=");
            url.push_str(&pct_encode(sslmode));
        }
        url
    }

    /// Run SQL as the superuser over the unix socket
    /// (`psql -X -A -t -q -v ON_ERROR_STOP=1`, script fed on stdin, so
    /// statements run one by one in autocommit mode). Returns trimmed stdout;
    /// panics with stderr on failure.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let mut cmd = Command::new(&tools().psql);
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.root)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", SUPERUSER, "-d", db])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        scrub_env(&mut cmd);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", tools().psql.display()));
        let mut stdin = child.stdin.take().expect("psql stdin");
        let script = sql.to_owned();
        let writer = thread::spawn(move || {
            let _ = stdin.write_all(script.as_bytes());
            let _ = stdin.write_all(b"\n");
        });
        let out = child.wait_with_output().expect("wait for psql");
        let _ = writer.join();
        if !out.status.success() {
            panic!(
                "psql failed ({}) on db {db:?}: {}\n--- SQL ---\n{sql}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Create a fresh database named `<prefix>_<counter>_<pid>` (sanitised to
    /// `[a-z0-9_]`, at most 63 bytes) owned by `scram_user`, with ALL on the
    /// database and on its `public` schema granted to `md5_user` and
    /// `plain_user`. Returns the name.
    pub fn create_db(&self, prefix: &str) -> String {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let suffix = format!("_{n}_{}", std::process::id());
        let mut base: String = prefix
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
            .collect();
        if base.is_empty() {
            base.push_str("db");
        }
        base.truncate(63 - suffix.len());
        let name = base + &suffix;
        let ident = quote_ident(&name);
        self.sql(
            "postgres",
            &format!(
                "CREATE DATABASE {ident} OWNER {owner} TEMPLATE template0;\n\
                 GRANT ALL ON DATABASE {ident} TO {md5}, {plain};",
                owner = quote_ident(SCRAM_USER),
                md5 = quote_ident(MD5_USER),
                plain = quote_ident(PLAIN_USER),
            ),
        );
        self.sql(
            &name,
            &format!("GRANT ALL ON SCHEMA public TO {}, {};", quote_ident(MD5_USER), quote_ident(PLAIN_USER)),
        );
        name
    }

    /// Whether a postmaster is running on the data directory (`pg_ctl status`).
    pub fn is_running(&self) -> bool {
        self.server_cmd(&tools().pg_ctl)
            .arg("status")
            .arg("-D")
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// `pg_ctl stop -m fast` (waits). No-op when already stopped.
    pub fn stop_fast(&self) {
        self.stop_mode("fast");
    }

    /// `pg_ctl stop -m immediate` (waits; crash recovery on next start).
    /// No-op when already stopped.
    pub fn stop_immediate(&self) {
        self.stop_mode("immediate");
    }

    /// Fast-stop if running, then start again on the same port and data dir
    /// and wait until it accepts connections. Panics (with the log tail) if
    /// the server does not come back, e.g. because the port was taken.
    pub fn restart_same_port(&self) {
        self.stop_mode("fast");
        let out = self
            .server_cmd(&tools().pg_ctl)
            .arg("start")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_path)
            .args(["-w", "-t", "30", "-s"])
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl start");
        if !out.status.success() {
            panic!(
                "pg_ctl start failed on port {}: {}\n{}",
                self.port,
                output_text(&out),
                self.log_context()
            );
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.pg_isready() {
            if Instant::now() > deadline {
                panic!("server on port {} not ready after restart\n{}", self.port, self.log_context());
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    // ---------------------------------------------------------------------
    // internals

    fn stop_mode(&self, mode: &str) {
        if !self.is_running() {
            return;
        }
        let out = self
            .server_cmd(&tools().pg_ctl)
            .arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", mode, "-w", "-t", "60", "-s"])
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl stop");
        if !out.status.success() && self.is_running() {
            panic!("pg_ctl stop -m {mode} failed: {}\n{}", output_text(&out), self.log_context());
        }
    }

    /// A command that runs as the server's OS user (via runuser when root).
    fn server_cmd(&self, program: &Path) -> Command {
        let mut cmd = match &self.run_as {
            Some(_) => {
                let mut c = Command::new(&tools().runuser);
                c.args(["-u", SUPERUSER, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.current_dir(&self.root).env("LC_ALL", "C");
        scrub_env(&mut cmd);
        cmd
    }

    fn initdb(&self) {
        let out = self
            .server_cmd(&tools().initdb)
            .arg("-D")
            .arg(&self.data_dir)
            .args([
                "-A",
                "trust",
                "--auth-host=scram-sha-256",
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run initdb");
        if !out.status.success() {
            panic!("initdb failed ({}): {}", out.status, output_text(&out));
        }
    }

    /// Write a file and hand it to the server user.
    fn write_owned(&self, path: &Path, contents: &[u8], mode: u32) {
        fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
        if let Some(r) = &self.run_as {
            r.chown(path);
        }
    }

    fn write_tls_files(&self) {
        let tls = generate_tls();
        self.write_owned(&self.ca_cert, tls.ca_pem.as_bytes(), 0o644);
        self.write_owned(&self.root.join("server.crt"), tls.cert_pem.as_bytes(), 0o644);
        self.write_owned(&self.root.join("server.key"), tls.key_pem.as_bytes(), 0o600);
    }

    fn write_hba(&self) {
        let hba = format!(
            "# pgsidecar test harness\n\
             local all all trust\n\
             host all {PLAIN_USER} 127.0.0.1/32 password\n\
             host all {MD5_USER} 127.0.0.1/32 md5\n\
             host all all 127.0.0.1/32 scram-sha-256\n"
        );
        self.write_owned(&self.data_dir.join("pg_hba.conf"), hba.as_bytes(), 0o600);
    }

    fn write_conf(&self, opts: &PgOptions, port: u16) {
        let reserved = opts.max_connections.saturating_sub(1).min(3);
        let mut conf = format!(
            "listen_addresses = '{HOST}'\n\
             port = {port}\n\
             unix_socket_directories = {sock}\n\
             max_connections = {max}\n\
             superuser_reserved_connections = {reserved}\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             shared_buffers = '32MB'\n\
             log_min_messages = warning\n\
             logging_collector = off\n\
             log_destination = 'stderr'\n",
            sock = quote_literal(&self.root.to_string_lossy()),
            max = opts.max_connections,
        );
        if opts.tls {
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = {}\nssl_key_file = {}\n",
                quote_literal(&self.root.join("server.crt").to_string_lossy()),
                quote_literal(&self.root.join("server.key").to_string_lossy()),
            ));
        } else {
            conf.push_str("ssl = off\n");
        }
        self.write_owned(&self.data_dir.join(HARNESS_CONF), conf.as_bytes(), 0o644);
    }

    fn launch(&mut self, opts: &PgOptions) {
        for attempt in 1..=PORT_ATTEMPTS {
            let port = free_port();
            self.port = port;
            self.write_conf(opts, port);
            let log_offset = fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0);
            self.spawn_wrapper();
            match self.wait_started(log_offset) {
                Ok(()) => return,
                Err(LaunchError::PortClash) if attempt < PORT_ATTEMPTS => {
                    eprintln!("[test-pg] port {port} already in use, retrying");
                    self.shutdown_wrapper(true);
                }
                Err(LaunchError::PortClash) => {
                    panic!(
                        "could not find a free port after {PORT_ATTEMPTS} attempts\n{}",
                        self.log_context()
                    )
                }
                Err(LaunchError::Failed(why)) => {
                    panic!("test postgres failed to start: {why}\n{}", self.log_context())
                }
            }
        }
    }

    fn spawn_wrapper(&self) {
        let _ = fs::remove_file(self.root.join(EXITED_MARKER));
        let t = tools();
        let mut cmd = self.server_cmd(Path::new("/bin/sh"));
        cmd.arg("-c")
            .arg(WRAPPER_SCRIPT)
            .arg("pgsidecar-test-pg")
            .arg(&t.postgres)
            .arg(&t.pg_ctl)
            .arg(&self.data_dir)
            .arg(&self.log_path)
            .arg(&self.root)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn postgres wrapper");
        let stdin = child.stdin.take();
        *self.wrapper.lock().unwrap_or_else(PoisonError::into_inner) = Some(Wrapper { child, stdin });
    }

    /// Close the wrapper's stdin and wait for it; it stops the server and,
    /// unless `keep`, removes the temp dir.
    fn shutdown_wrapper(&self, keep: bool) {
        let wrapper = self.wrapper.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(mut w) = wrapper {
            if let Some(mut stdin) = w.stdin.take() {
                if keep {
                    let _ = stdin.write_all(b"keep\n");
                }
            }
            let _ = w.child.wait();
        }
    }

    fn wait_started(&self, log_offset: u64) -> Result<(), LaunchError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.pg_isready() {
                return Ok(());
            }
            if self.root.join(EXITED_MARKER).exists() {
                let log = read_from(&self.log_path, log_offset);
                if log.contains("Address already in use") {
                    return Err(LaunchError::PortClash);
                }
                return Err(LaunchError::Failed("postmaster exited".into()));
            }
            if let Some(w) = self.wrapper.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
                if let Ok(Some(status)) = w.child.try_wait() {
                    return Err(LaunchError::Failed(format!("wrapper exited early ({status})")));
                }
            }
            if Instant::now() > deadline {
                return Err(LaunchError::Failed(format!("not ready within {READY_TIMEOUT:?}")));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    fn pg_isready(&self) -> bool {
        let mut cmd = Command::new(&tools().pg_isready);
        cmd.arg("-q")
            .arg("-h")
            .arg(&self.root)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", SUPERUSER, "-d", "postgres", "-t", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        scrub_env(&mut cmd);
        cmd.status().map(|s| s.success()).unwrap_or(false)
    }

    fn bootstrap_roles(&self) {
        let sql = format!(
            "SET password_encryption = 'scram-sha-256';\n\
             CREATE ROLE {scram_u} LOGIN CREATEDB PASSWORD {scram_p};\n\
             SET password_encryption = 'md5';\n\
             CREATE ROLE {md5_u} LOGIN PASSWORD {md5_p};\n\
             SET password_encryption = 'scram-sha-256';\n\
             CREATE ROLE {plain_u} LOGIN PASSWORD {plain_p};\n",
            scram_u = quote_ident(SCRAM_USER),
            scram_p = quote_literal(SCRAM_PASS),
            md5_u = quote_ident(MD5_USER),
            md5_p = quote_literal(MD5_PASS),
            plain_u = quote_ident(PLAIN_USER),
            plain_p = quote_literal(PLAIN_PASS),
        );
        self.sql("postgres", &sql);
    }

    fn log_context(&self) -> String {
        format!("--- tail of {} ---\n{}", self.log_path.display(), self.log_tail(60))
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        self.shutdown_wrapper(false);
    }
}

// -------------------------------------------------------------------------
// helpers

struct Tools {
    initdb: PathBuf,
    postgres: PathBuf,
    pg_ctl: PathBuf,
    pg_isready: PathBuf,
    psql: PathBuf,
    runuser: PathBuf,
}

fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| Tools {
        initdb: find_pg_tool("initdb"),
        postgres: find_pg_tool("postgres"),
        pg_ctl: find_pg_tool("pg_ctl"),
        pg_isready: find_pg_tool("pg_isready"),
        psql: find_pg_tool("psql"),
        runuser: find_in_path("runuser")
            .or_else(|| {
                ["/usr/sbin/runuser", "/sbin/runuser"].iter().map(PathBuf::from).find(|p| is_executable(p))
            })
            .unwrap_or_else(|| PathBuf::from("runuser")),
    })
}

/// PATH first, then the highest `/usr/lib/postgresql/<version>/bin`.
/// Debian's `pg_wrapper` shims (/usr/bin/psql etc.) are skipped when a real
/// binary exists under /usr/lib/postgresql: they work, but cost ~90 ms per call.
/// A PostgreSQL client tool (psql, pgbench, ...) found the same way as the server binaries.
pub fn pg_tool(name: &str) -> PathBuf {
    find_pg_tool(name)
}

fn find_pg_tool(name: &str) -> PathBuf {
    let in_path = find_in_path(name);
    if let Some(p) = &in_path {
        let is_shim =
            fs::canonicalize(p).map(|c| c.file_name() == Some(OsStr::new("pg_wrapper"))).unwrap_or(false);
        if !is_shim {
            return p.clone();
        }
    }
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        for entry in entries.flatten() {
            let version: Option<Vec<u32>> =
                entry.file_name().to_string_lossy().split('.').map(|part| part.parse().ok()).collect();
            let Some(version) = version else { continue };
            let candidate = entry.path().join("bin").join(name);
            if is_executable(&candidate) && best.as_ref().is_none_or(|(v, _)| version > *v) {
                best = Some((version, candidate));
            }
        }
    }
    best.map(|(_, p)| p)
        .or(in_path)
        .unwrap_or_else(|| panic!("PostgreSQL tool `{name}` not found in PATH or /usr/lib/postgresql/*/bin"))
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Set when the test process runs as root: server processes then run as the
/// `postgres` OS user and the files they need are chowned to it.
struct RunAs {
    uid: u32,
    gid: u32,
}

impl RunAs {
    fn detect() -> Option<RunAs> {
        let euid = fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or_else(|_| id_of(&["-u"]).expect("determine current uid with `id -u`"));
        if euid != 0 {
            return None;
        }
        let uid = id_of(&["-u", SUPERUSER]);
        let gid = id_of(&["-g", SUPERUSER]);
        match (uid, gid) {
            (Some(uid), Some(gid)) => Some(RunAs { uid, gid }),
            _ => panic!(
                "running as root, but there is no `{SUPERUSER}` OS user to run the server as \
                 (PostgreSQL refuses to run as root)"
            ),
        }
    }

    fn chown(&self, path: &Path) {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

fn id_of(args: &[&str]) -> Option<u32> {
    let out = Command::new("id").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Where to put the cluster: `$TMPDIR` unless the socket path would get too
/// long or (when root) the `postgres` user could not traverse it; else /tmp.
fn temp_base(as_root: bool) -> PathBuf {
    let base = std::env::temp_dir();
    let traversable = || {
        base.ancestors()
            .all(|a| fs::metadata(a).map(|m| m.permissions().mode() & 0o001 != 0).unwrap_or(false))
    };
    if base.as_os_str().len() <= 60 && (!as_root || traversable()) {
        base
    } else {
        PathBuf::from("/tmp")
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((HOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Keep child processes from picking up the caller's libpq environment.
fn scrub_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
}

fn password_for(user: &str) -> Option<&'static str> {
    match user {
        SCRAM_USER => Some(SCRAM_PASS),
        MD5_USER => Some(MD5_PASS),
        PLAIN_USER => Some(PLAIN_PASS),
        _ => None,
    }
}

/// Percent-encode everything except RFC 3986 unreserved characters.
fn pct_encode(s: &str) -> String {
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

pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn output_text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
        .trim()
        .to_owned()
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut buf = Vec::new();
    if let Ok(mut f) = fs::File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_end(&mut buf);
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn tail_file(path: &Path, lines: usize) -> String {
    let text = match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => return format!("<cannot read {}: {e}>", path.display()),
    };
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub struct TlsFiles {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn generate_tls() -> TlsFiles {
    use rcgen::{
        date_time_ymd, BasicConstraints, CertificateParams, DistinguishedName, DnType,
        ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    };

    let ca_key = KeyPair::generate().expect("generate CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, "pgsidecar test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca.not_before = date_time_ymd(2000, 1, 1);
    ca.not_after = date_time_ymd(2099, 12, 31);
    let ca_cert = ca.self_signed(&ca_key).expect("self-sign CA");

    let key = KeyPair::generate().expect("generate server key");
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), HOST.to_owned()]).expect("server cert params");
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "localhost");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = date_time_ymd(2000, 1, 1);
    params.not_after = date_time_ymd(2099, 12, 31);
    let cert = params.signed_by(&key, &ca_cert, &ca_key).expect("sign server cert");

    TlsFiles { ca_pem: ca_cert.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() }
}
