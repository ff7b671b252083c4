//! A throwaway PostgreSQL cluster from the machine's own binaries, for `pgsidecar demo`.
//! As root, the server runs as the `postgres` user (PostgreSQL refuses to run as root).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct TempDb {
    dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    pub port: u16,
    pub password: String,
}

/// Finds a PostgreSQL server binary: PATH first, then the newest /usr/lib/postgresql/*/bin.
fn find_bin_dir() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p): &(u32, PathBuf)| p.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

impl TempDb {
    fn cmd(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        c.stdin(Stdio::null());
        c
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let out = self.cmd(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{program} failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    /// Creates and starts a cluster on a free loopback port with `max_connections`.
    pub fn start(max_connections: u32) -> Result<TempDb, String> {
        let bin = find_bin_dir().ok_or(
            "PostgreSQL server binaries (initdb, pg_ctl) not found in PATH or /usr/lib/postgresql/*/bin: install them, e.g. apt-get install postgresql",
        )?;
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!("pgsidecar-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let password: String = {
            use rand::Rng;
            rand::rng().sample_iter(rand::distr::Alphanumeric).take(20).map(char::from).collect()
        };
        let mut db = TempDb { dir, bin, as_postgres, port: 0, password };
        std::fs::write(db.dir.join("pwfile"), &db.password).map_err(|e| e.to_string())?;
        if as_postgres {
            let ok = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&db.dir).status();
            if !ok.is_ok_and(|s| s.success()) {
                return Err(
                    "as root the demo runs PostgreSQL as the `postgres` user, which must exist".into()
                );
            }
        }
        let data = db.data();
        db.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--pwfile",
                &db.path("pwfile"),
                "-A",
                "scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections={max_connections} -c fsync=off -c synchronous_commit=off -c shared_buffers=32MB",
            db.dir.display()
        );
        db.run(
            "pg_ctl",
            &["-D", &data, "-l", &db.path("postgres.log"), "-o", &opts, "-w", "-t", "30", "start"],
        )?;
        db.port = port;
        Ok(db)
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn data(&self) -> String {
        self.path("data")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The superuser URL (over TCP, no TLS).
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres:{}@127.0.0.1:{}/postgres?sslmode=disable", self.password, self.port)
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        if self.port != 0 {
            let _ = self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
