//! The repository's Procfile under honcho: the demo web app behind `pgsidecar run` answers
//! requests from the database, and SIGTERM stops everything cleanly.

mod common;

use common::pg::{pg_tool, TestPg, SCRAM_USER};
use std::process::Command;

#[test]
fn honcho_runs_the_procfile() {
    let honcho = Command::new("honcho").arg("--version").output();
    assert!(
        honcho.is_ok_and(|o| o.status.success()),
        "honcho is missing: python3 -m pip install 'honcho==2.0.0' 'psycopg[binary]==3.3.9' (.ci/run does this)"
    );
    let pg = TestPg::shared();
    let db = pg.create_db("procfile");
    let psql_dir = pg_tool("psql").parent().unwrap().to_path_buf();
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/procfile_smoke.sh"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PGSIDECAR_BIN", env!("CARGO_BIN_EXE_pgsidecar"))
        .env("DATABASE_URL", pg.url(SCRAM_USER, &db, "require"))
        .env("PATH", format!("{}:{}", psql_dir.display(), std::env::var("PATH").unwrap_or_default()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("GET / twice"), "{stdout}\n{stderr}");
}
