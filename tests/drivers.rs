//! Real drivers through transaction pooling with named prepared statements: psycopg 3 with
//! prepare_threshold=0 and node-postgres named queries, 20 workers x 500 queries, pool of 3.

mod common;

use common::pg::{TestPg, SCRAM_PASS, SCRAM_USER};
use common::proxy::start;
use std::process::Command;

fn run_driver(program: &str, script: &str, db: &str, url: &str) -> String {
    let out = Command::new(program)
        .arg(format!("{}/tests/drivers/{script}", env!("CARGO_MANIFEST_DIR")))
        .current_dir(format!("{}/tests/drivers", env!("CARGO_MANIFEST_DIR")))
        .env("DATABASE_URL", url)
        .env("WORKERS", "20")
        .env("QUERIES", "500")
        .env("POOL_SIZE", "3")
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (.ci/run installs the drivers)"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{script} against {db}:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_and_node_postgres_prepared_statements() {
    let pg = TestPg::shared();
    let db = pg.create_db("drivers");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_SIZE", "3")]).await;
    let url = p.url_as(SCRAM_USER, SCRAM_PASS, &db);
    let (db2, url2) = (db.clone(), url.clone());
    let py = tokio::task::spawn_blocking(move || run_driver("python3", "psycopg_check.py", &db2, &url2));
    let node = tokio::task::spawn_blocking(move || run_driver("node", "node_check.js", &db, &url));
    let py = py.await.unwrap();
    let node = node.await.unwrap();
    assert!(py.contains("workers=20 queries=10000 errors=0 wrong=0"), "{py}");
    assert!(node.contains("workers=20 queries=10000 errors=0 wrong=0"), "{node}");
}
