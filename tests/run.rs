//! `pgsidecar run` and `pgsidecar check` as real processes: URL rewriting, exit codes,
//! signals during a drain, plan-based sizing, and check's diagnoses.

mod common;

use common::pg::{pg_tool, PgOptions, TestPg, SCRAM_USER};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgsidecar"));
    for (k, _) in std::env::vars() {
        if k.starts_with("PGSIDECAR_") || k.starts_with("PGBOUNCER_") || k == "DATABASE_URL" || k == "DYNO" {
            cmd.env_remove(k);
        }
    }
    cmd.env("PATH", path_with_psql());
    cmd
}

/// PATH with the directory of the real psql first.
fn path_with_psql() -> String {
    let psql = pg_tool("psql");
    format!("{}:{}", psql.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default())
}

fn free_listen() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn run_passes_rewritten_urls_and_exit_codes() {
    let pg = TestPg::shared();
    let db = pg.create_db("run");
    let out = bin()
        .env("DATABASE_URL", pg.url(SCRAM_USER, &db, "require"))
        .env("PGSIDECAR_LISTEN", free_listen())
        .args(["run", "--", "sh", "-c", "psql \"$DATABASE_URL\" -Atc 'select 1'"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, "1\n", "{stderr}");
    let out = bin()
        .env("DATABASE_URL", pg.url(SCRAM_USER, &db, "require"))
        .env("PGSIDECAR_LISTEN", free_listen())
        .args(["run", "--", "sh", "-c", "exit 7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    // A child killed by a signal: 128 + signal number, like a shell.
    let out = bin()
        .env("DATABASE_URL", pg.url(SCRAM_USER, &db, "require"))
        .env("PGSIDECAR_LISTEN", free_listen())
        .args(["run", "--", "sh", "-c", "kill -KILL $$"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(137));
}

#[test]
fn several_urls_each_get_their_own_pool() {
    let pg = TestPg::shared();
    let main_db = pg.create_db("main");
    let rose_db = pg.create_db("rose");
    let listen = free_listen();
    let script = "for v in DATABASE_URL HEROKU_POSTGRESQL_ROSE_URL; do eval u=\\$$v; echo \"$v $u\"; psql \"${u%&pool=5}\" -Atc 'select current_database()'; done";
    let out = bin()
        .env("DATABASE_URL", pg.url(SCRAM_USER, &main_db, "require"))
        .env("HEROKU_POSTGRESQL_ROSE_URL", format!("{}&pool=5", pg.url(SCRAM_USER, &rose_db, "require")))
        .env("PGSIDECAR_URLS", "DATABASE_URL HEROKU_POSTGRESQL_ROSE_URL")
        .env("PGSIDECAR_LISTEN", &listen)
        .args(["run", "--", "sh", "-c", script])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}\n{stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "DATABASE_URL postgres://scram_user:scram-pass%2F1@{listen}/{main_db}?sslmode=disable"
        )),
        "{}",
        lines[0]
    );
    assert_eq!(lines[1], main_db);
    assert!(lines[2].ends_with(&format!("@{listen}/{rose_db}?sslmode=disable&pool=5")), "{}", lines[2]);
    assert_eq!(lines[3], rose_db);
    // The child's environment never holds the original server address.
    assert!(!stdout.contains(&format!(":{}/", pg.port())));
}

#[test]
fn disabled_runs_the_app_directly() {
    let pg = TestPg::shared();
    let url = pg.url(SCRAM_USER, "postgres", "require");
    let out = bin()
        .env("DATABASE_URL", &url)
        .env("PGBOUNCER_ENABLED", "0")
        .args(["run", "--", "sh", "-c", "echo \"$DATABASE_URL\""])
        .output()
        .unwrap();
    assert_eq!(text(&out).0.trim(), url);
}

#[test]
fn sigterm_to_the_whole_dyno_drains_while_the_app_keeps_querying() {
    let pg = TestPg::shared();
    let db = pg.create_db("drain");
    // The app: waits for SIGTERM, then keeps opening connections and querying for 5 s.
    let app = r#"
        trap 'term=1' TERM
        psql "$DATABASE_URL" -Atc 'select 1' >/dev/null && echo ready
        while [ -z "$term" ]; do sleep 0.05; done
        # The signal burst also hits short-lived children (sleep, date, psql): the test
        # creates $BURST_DONE after its last SIGTERM.
        while [ ! -e "$BURST_DONE" ]; do sleep 0.05; done
        end=""; while [ -z "$end" ]; do end=$(date +%s); done
        end=$((end + 5)); ok=0; fail=0; now=0
        while [ "$now" -lt "$end" ]; do
            now=$(date +%s) || now=0
            if psql "$DATABASE_URL" -Atc 'select 1' >/dev/null 2>&1; then ok=$((ok+1)); else fail=$((fail+1)); fi
        done
        echo "ok=$ok fail=$fail"
    "#;
    let burst = tempfile::tempdir().unwrap();
    let burst_done = burst.path().join("done");
    let mut child = bin()
        .env("DATABASE_URL", pg.url(SCRAM_USER, &db, "require"))
        .env("PGSIDECAR_LISTEN", free_listen())
        .env("BURST_DONE", &burst_done)
        .args(["run", "--", "sh", "-c", app])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    // pgsidecar's log, read as it comes: the next SIGTERM goes once the last one was seen
    // (signals sent back to back may reach it as one).
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stderr_pipe = BufReader::new(child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for l in stderr_pipe.lines().map_while(Result::ok) {
            all.push_str(&l);
            all.push('\n');
            let _ = lines_tx.send(l);
        }
        all
    });
    let wait_for = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(l) if l.contains(what) => return,
                Ok(_) => {}
                Err(e) => panic!("no {what} in pgsidecar's log: {e}"),
            }
        }
    };
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    // As the platform does: SIGTERM to every process of the dyno, more than once.
    let group = format!("-{}", child.id());
    let signalled = Instant::now();
    let term = || assert!(Command::new("kill").args(["-TERM", "--", &group]).status().unwrap().success());
    term();
    wait_for("event=draining");
    for _ in 0..2 {
        term();
        wait_for("event=signal_ignored_while_draining");
    }
    std::fs::write(&burst_done, b"").unwrap();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    let status = child.wait().unwrap();
    let elapsed = signalled.elapsed();
    drop(lines);
    let stderr = reader.join().unwrap();
    assert!(line.starts_with("ok=") && line.trim_end().ends_with(" fail=0"), "{line}\n{stderr}");
    let ok: u32 = line.trim_start_matches("ok=").split(' ').next().unwrap().parse().unwrap();
    assert!(ok > 0, "{line}");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}\n{stderr}");
}

#[test]
fn auto_sizing_keeps_four_sidecars_within_the_limit() {
    let pg = TestPg::start(PgOptions { max_connections: 40, tls: true });
    let db = pg.create_db("sizing");
    let out = bin()
        .env("DATABASE_URL", pg.url(SCRAM_USER, &db, "require"))
        .env("PGSIDECAR_PROCESSES", "4")
        .env("PGSIDECAR_LISTEN", free_listen())
        .args(["run", "--", "true"])
        .output()
        .unwrap();
    let stderr = text(&out).1;
    let line = stderr.lines().find(|l| l.contains("event=pool_sized")).unwrap_or_else(|| panic!("{stderr}"));
    // 40 - 3 superuser-reserved = 37 usable, minus max(3, 10%) = 4 reserved, / 4 = 8.
    for field in [
        "max_connections=40",
        "superuser_reserved=3",
        "processes=4",
        "reserved=4",
        "limit=37",
        "pool_size=8",
        "source=database",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    // Four sidecars, each saturated by 12 clients holding a server: the database never
    // sees more than 4 x 8 = 32 of its 37 usable connections, and nobody is refused.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let total = rt.block_on(async {
        let mut proxies = Vec::new();
        for _ in 0..4 {
            let p = common::proxy::start(&pg, &db, &[("PGSIDECAR_PROCESSES", "4")]).await;
            p.proxy.size_pools().await;
            assert_eq!(p.proxy.upstreams()[0].pool.stats().max_size, 8);
            proxies.push(p);
        }
        let mut tasks = Vec::new();
        for p in &proxies {
            for _ in 0..12 {
                let c = p.connect(&db).await;
                tasks.push(tokio::spawn(
                    async move { c.simple_query("select pg_sleep(0.3)").await.map(|_| ()) },
                ));
            }
        }
        let mut max = 0;
        while tasks.iter().any(|t| !t.is_finished()) {
            max = max.max(common::proxy::server_count(&pg, &db));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for t in tasks {
            t.await.unwrap().expect("no client refused");
        }
        max
    });
    assert!(total <= 32, "saw {total} server connections");
    assert!(total >= 20, "the pools never filled ({total})");
}

#[test]
fn check_reports_problems_with_what_to_change() {
    let pg = TestPg::shared();
    let db = pg.create_db("check");
    let ok = bin().env("DATABASE_URL", pg.url(SCRAM_USER, &db, "require")).arg("check").output().unwrap();
    let (stdout, _) = text(&ok);
    assert!(ok.status.success(), "{stdout}");
    assert!(
        stdout.contains("connected") && stdout.contains("TLS") && stdout.contains("max_connections=100"),
        "{stdout}"
    );
    let wrong = bin()
        .env("DATABASE_URL", pg.url(SCRAM_USER, &db, "require").replace("scram-pass%2F1", "nope"))
        .arg("check")
        .output()
        .unwrap();
    let (stdout, _) = text(&wrong);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        stdout.contains("FAIL") && stdout.contains("28P01") && stdout.contains("check the user and password"),
        "{stdout}"
    );
    assert!(!stdout.contains("nope"), "password leaked: {stdout}");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let down = bin()
        .env("DATABASE_URL", format!("postgres://a:b@127.0.0.1:{port}/x"))
        .arg("check")
        .output()
        .unwrap();
    let (stdout, _) = text(&down);
    assert_eq!(down.status.code(), Some(1));
    assert!(stdout.contains("cannot connect") && stdout.contains("check the host and port"), "{stdout}");
    let risky = bin()
        .env("DATABASE_URL", pg.url(SCRAM_USER, &db, "require"))
        .env("PGSIDECAR_QUERY_WAIT_TIMEOUT", "60s")
        .env("PGSIDECAR_POOL_SIZE", "90")
        .env("PGSIDECAR_PROCESSES", "2")
        .arg("check")
        .output()
        .unwrap();
    let (stdout, _) = text(&risky);
    assert_eq!(risky.status.code(), Some(1));
    assert!(
        stdout.contains("30 s request timeout") && stdout.contains("lower PGSIDECAR_POOL_SIZE"),
        "{stdout}"
    );
}

#[test]
fn check_reports_tls_refused() {
    let pg = TestPg::start(PgOptions { max_connections: 20, tls: false });
    let out =
        bin().env("DATABASE_URL", pg.url(SCRAM_USER, "postgres", "require")).arg("check").output().unwrap();
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout.contains("refused TLS") && stdout.contains("sslmode"), "{stdout}");
}

#[test]
fn help_lists_settings_without_secrets() {
    let out = bin()
        .env("DATABASE_URL", "postgres://u:supersecret@h/db")
        .env("PGSIDECAR_LISTEN", "127.0.0.1:1")
        .args(["run", "--help"])
        .output()
        .unwrap();
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("PGSIDECAR_POOL_SIZE") && stdout.contains("PGBOUNCER_DEFAULT_POOL_SIZE"),
        "{stdout}"
    );
    assert!(!stdout.contains("supersecret"));
}

#[test]
fn start_script_is_a_drop_in_for_start_pgbouncer() {
    let pg = TestPg::shared();
    let db = pg.create_db("startscript");
    let url = pg.url(SCRAM_USER, &db, "require");
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_pgsidecar")).parent().unwrap().to_path_buf();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bin/start-pgsidecar");
    for (enabled, proxied) in [("1", true), ("0", false)] {
        let mut c = Command::new(script);
        c.env_clear()
            .env("PATH", format!("{}:{}", bin_dir.display(), path_with_psql()))
            .env("DATABASE_URL", &url)
            .env("PGSIDECAR_LISTEN", free_listen())
            .env("PGBOUNCER_ENABLED", enabled)
            .env("HOME", std::env::temp_dir())
            .args([
                "sh",
                "-c",
                "echo \"$DATABASE_URL\"; psql \"$DATABASE_URL\" -Atc 'select current_database()'",
            ]);
        let out = c.output().unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        let mut lines = stdout.lines();
        let seen_url = lines.next().unwrap();
        assert_eq!(seen_url == url, !proxied, "{seen_url}");
        if proxied {
            assert!(seen_url.ends_with("?sslmode=disable"), "{seen_url}");
        }
        assert_eq!(lines.next(), Some(db.as_str()));
    }
}
