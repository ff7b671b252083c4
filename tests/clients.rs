//! pgsidecar driven by PostgreSQL's own clients: pgbench and psql.

mod common;

use common::pg::{pg_tool, TestPg, SCRAM_PASS, SCRAM_USER};
use common::proxy::{self, start};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn psql(p: &proxy::TestProxy, db: &str) -> Command {
    let mut cmd = Command::new(pg_tool("psql"));
    cmd.args([
        "-X",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-p",
        &p.port().to_string(),
        "-U",
        SCRAM_USER,
        "-d",
        db,
    ])
    .env("PGPASSWORD", SCRAM_PASS)
    .env("PGSSLMODE", "disable")
    .env_remove("PGOPTIONS");
    cmd
}

#[test]
fn pgbench_simple_and_extended_with_a_small_pool() {
    let pg = TestPg::shared();
    let db = pg.create_db("pgbench");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p = rt.block_on(start(pg, &db, &[("PGSIDECAR_POOL_SIZE", "4")]));
    p.pgbench(&db, &["-i", "-q"]);
    let watch_db = db.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let watcher = std::thread::spawn(move || {
        let mut max = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            max = max.max(proxy::server_count(TestPg::shared(), &watch_db));
        }
        max
    });
    for mode in ["simple", "extended"] {
        let out = p.pgbench(&db, &["-c", "20", "-j", "2", "-T", "3", "-M", mode]);
        assert!(out.contains("number of failed transactions: 0 "), "{out}");
        assert!(!out.contains("number of transactions actually processed: 0/"), "{out}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let max = watcher.join().unwrap();
    assert!((1..=4).contains(&max), "saw {max} server connections for a pool of 4");
}

#[test]
fn psql_copy_both_directions_and_options() {
    let pg = TestPg::shared();
    let db = pg.create_db("psqlcopy");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p = rt.block_on(start(pg, &db, &[("PGSIDECAR_POOL_SIZE", "2")]));
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.tsv");
    let output = dir.path().join("out.tsv");
    let data: String = (0..20_000).map(|i| format!("{i}\tline {i}\n")).collect();
    std::fs::write(&input, &data).unwrap();
    let out = psql(&p, &db)
        .args(["-c", "create table cp(id int, t text)"])
        .args(["-c", &format!("\\copy cp from '{}'", input.display())])
        .args(["-c", &format!("\\copy cp to '{}'", output.display())])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&output).unwrap(), data);
    // PGOPTIONS reaches the session through the startup packet's options.
    let out = psql(&p, &db)
        .env("PGOPTIONS", "-c search_path=app,public -c statement_timeout=5s")
        .args(["-c", "show search_path", "-c", "show statement_timeout"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "app,public\n5s\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn psql_ctrl_c_cancels_the_query() {
    let pg = TestPg::shared();
    let db = pg.create_db("psqlcancel");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p = rt.block_on(start(pg, &db, &[]));
    let child = psql(&p, &db)
        .args(["-c", "select pg_sleep(10)"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let active = format!("select count(*) from pg_stat_activity where datname='{db}' and query = 'select pg_sleep(10)' and state = 'active'");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.sql("postgres", &active) != "1" {
        assert!(Instant::now() < deadline, "query never started");
    }
    let signalled = Instant::now();
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("canceling statement due to user request"), "{stderr}");
    // Far sooner than the 10 s the statement would have slept.
    assert!(signalled.elapsed() < Duration::from_secs(5), "{:?}", signalled.elapsed());
}

#[test]
fn client_facing_tls_with_psql() {
    let pg = TestPg::shared();
    let db = pg.create_db("clienttls");
    let dir = tempfile::tempdir().unwrap();
    let tls = common::pg::generate_tls();
    let (cert, key, ca) = (dir.path().join("c.pem"), dir.path().join("k.pem"), dir.path().join("ca.pem"));
    std::fs::write(&cert, &tls.cert_pem).unwrap();
    std::fs::write(&key, &tls.key_pem).unwrap();
    std::fs::write(&ca, &tls.ca_pem).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tls_env = [
        ("PGSIDECAR_CLIENT_TLS_CERT", cert.to_str().unwrap()),
        ("PGSIDECAR_CLIENT_TLS_KEY", key.to_str().unwrap()),
    ];
    // Over TCP whatever PGSIDECAR_TEST_TRANSPORT says: TLS is refused on a Unix socket, as
    // PostgreSQL refuses it (tests/socket.rs checks that).
    let env = proxy::env_for(pg, SCRAM_USER, &db, "require", &tls_env);
    let p = rt.block_on(proxy::start_on(env, proxy::Transport::Tcp));
    let out = psql(&p, &db)
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", &ca)
        .env("PGHOST", "localhost")
        .args(["-h", "localhost", "-c", "select 'over tls'", "-c", "\\conninfo"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("over tls") && stdout.contains("SSL connection"), "{stdout}");
    // Plain connections still work when the client does not ask for TLS.
    let out = psql(&p, &db).args(["-c", "select 'plain'"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "plain\n");
}
