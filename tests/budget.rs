//! Cross-dyno budget: several pgsidecar processes against one PostgreSQL with
//! max_connections=40 never exceed its limit, converge to a fair share, and follow peers that
//! leave and join.

mod common;

use common::pg::{pg_tool, PgOptions, TestPg, SCRAM_PASS, SCRAM_USER};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Sidecar {
    proc: Child,
    port: u16,
    log: std::path::PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn sidecar(pg: &TestPg, db: &str, dir: &std::path::Path, n: usize) -> Sidecar {
    let port = free_port();
    let log = dir.join(format!("sidecar{n}.log"));
    let proc = Command::new(env!("CARGO_BIN_EXE_pgsidecar"))
        .arg("serve")
        .env("DATABASE_URL", pg.url(SCRAM_USER, db, "disable"))
        .env("PGSIDECAR_LISTEN", format!("127.0.0.1:{port}"))
        .env("PGSIDECAR_METRICS_LISTEN", "")
        .env("PGSIDECAR_BUDGET_PERIOD", "1s")
        .env("PGSIDECAR_QUERY_WAIT_TIMEOUT", "30s")
        .env_remove("DYNO")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("event=listening") {
        assert!(Instant::now() < deadline, "sidecar {n} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Sidecar { proc, port, log }
}

fn load(port: u16, db: &str, secs: u64) -> Child {
    Command::new(pg_tool("pgbench"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            SCRAM_USER,
            "-n",
            "-S",
            "-c",
            "100",
            "-j",
            "1",
        ])
        .args(["-T", &secs.to_string(), db])
        .env("PGPASSWORD", SCRAM_PASS)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The pool size of the last `budget_changed` line, and the share.
fn last_budget(log: &std::path::Path) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().rfind(|l| l.contains("event=budget_changed"))?;
    let field = |k: &str| line.split(&format!(" {k}=")).nth(1)?.split(' ').next()?.parse().ok();
    Some((field("pool_size")?, field("share")?))
}

#[test]
fn sidecars_share_the_database_and_never_exceed_it() {
    let pg = TestPg::start(PgOptions { max_connections: 40, tls: false });
    let db = pg.create_db("budget");
    let dir = tempfile::tempdir().unwrap();
    pgbench_init(&pg, &db);
    // 40 - 3 superuser-reserved = 37 usable; reserve max(3, 10%) = 4.
    let ceiling = 37 - 4;
    let stop = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicI64::new(0));
    let watcher = {
        let (stop, max_seen) = (stop.clone(), max_seen.clone());
        let port = pg.port();
        std::thread::spawn(move || {
            let conn =
                format!("host=127.0.0.1 port={port} user=scram_user password='{SCRAM_PASS}' dbname=postgres");
            let mut c = postgres_sync(&conn);
            while !stop.load(Ordering::Relaxed) {
                let n = c("select count(*) - 1 from pg_stat_activity where backend_type = 'client backend'");
                max_seen.fetch_max(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let mut sidecars: Vec<Sidecar> = (0..4).map(|n| sidecar(&pg, &db, dir.path(), n)).collect();
    let mut loads: Vec<Child> = sidecars.iter().map(|s| load(s.port, &db, 20)).collect();
    std::thread::sleep(Duration::from_secs(4));
    // One dyno goes away, two arrive.
    let gone = sidecars.remove(0);
    let mut gone_proc = gone.proc;
    let _ = gone_proc.kill();
    let _ = gone_proc.wait();
    let _ = loads.remove(0).kill();
    let joined = Instant::now();
    for n in 4..6 {
        let s = sidecar(&pg, &db, dir.path(), n);
        loads.push(load(s.port, &db, 12));
        sidecars.push(s);
    }
    // Two periods after the change, each of the 5 sidecars holds its fair share (+-1):
    // (33 - 5 coordination connections) / 5 = 5.
    let deadline = joined + Duration::from_secs(15);
    let mut converged_after = None;
    while Instant::now() < deadline {
        let sizes: Vec<Option<(u32, u32)>> = sidecars.iter().map(|s| last_budget(&s.log)).collect();
        if sizes.iter().all(|s| s.is_some_and(|(size, share)| share == 5 && size.abs_diff(share) <= 1)) {
            converged_after = Some(joined.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut outputs = Vec::new();
    for l in loads {
        outputs.push(l.wait_with_output().unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    for mut s in sidecars {
        let _ = s.proc.kill();
        let _ = s.proc.wait();
    }
    let Some(converged_after) = converged_after else {
        let logs: Vec<String> = (0..6)
            .map(|n| {
                let text =
                    std::fs::read_to_string(dir.path().join(format!("sidecar{n}.log"))).unwrap_or_default();
                text.lines()
                    .filter(|l| l.contains("budget") || l.contains("warn"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .collect();
        panic!("sidecars did not converge to a fair share:\n{}", logs.join("\n---\n"));
    };
    eprintln!(
        "converged {converged_after:?} after the change; max connections {}",
        max_seen.load(Ordering::Relaxed)
    );
    for o in &outputs {
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(!text.contains("too many"), "{text}");
    }
    let max = max_seen.load(Ordering::Relaxed);
    assert!(max <= ceiling, "saw {max} connections, limit minus reserve is {ceiling}");
}

fn pgbench_init(pg: &TestPg, db: &str) {
    let out = Command::new(pg_tool("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &pg.port().to_string(), "-U", SCRAM_USER, "-i", "-q", db])
        .env("PGPASSWORD", SCRAM_PASS)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A blocking one-value query helper on its own runtime (the watcher runs on a thread).
fn postgres_sync(conn: &str) -> impl FnMut(&str) -> i64 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (client, connection) = rt.block_on(tokio_postgres::connect(conn, tokio_postgres::NoTls)).unwrap();
    rt.spawn(connection);
    move |sql| {
        let row = rt.block_on(client.query_one(sql, &[])).unwrap();
        row.get::<_, i64>(0)
    }
}
