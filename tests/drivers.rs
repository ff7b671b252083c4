//! Real drivers through transaction pooling with named prepared statements: psycopg 3 with
//! prepare_threshold=0 and node-postgres named queries, 20 workers x 500 queries, pool of 3;
//! and node-postgres' unnamed statements, passed through and prepared by the proxy.

mod common;

use common::pg::{TestPg, SCRAM_PASS, SCRAM_USER};
use common::proxy::start;
use std::process::Command;

fn run_driver(program: &str, script: &str, db: &str, url: &str) -> String {
    run_driver_with(program, script, db, url, &[])
}

fn run_driver_with(program: &str, script: &str, db: &str, url: &str, env: &[(&str, &str)]) -> String {
    let out = Command::new(program)
        .envs(env.iter().copied())
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
    let p = start(pg, &db, &[("PGSIDECAR_POOL_MODE", "transaction"), ("PGSIDECAR_POOL_SIZE", "3")]).await;
    let url = p.url_as(SCRAM_USER, SCRAM_PASS, &db);
    let (db2, url2) = (db.clone(), url.clone());
    let py = tokio::task::spawn_blocking(move || run_driver("python3", "psycopg_check.py", &db2, &url2));
    let node = tokio::task::spawn_blocking(move || run_driver("node", "node_check.js", &db, &url));
    let py = py.await.unwrap();
    let node = node.await.unwrap();
    assert!(py.contains("workers=20 queries=10000 errors=0 wrong=0"), "{py}");
    assert!(node.contains("workers=20 queries=10000 errors=0 wrong=0"), "{node}");
}

/// Statements the proxy prepared under its own names on each of the pool's `size` servers:
/// `size` clients each hold one server in a transaction while they count.
async fn proxy_statements_per_server(p: &common::proxy::TestProxy, db: &str, size: usize) -> Vec<i64> {
    let mut clients = Vec::new();
    for _ in 0..size {
        let c = p.connect(db).await;
        c.batch_execute("begin").await.unwrap();
        clients.push(c);
    }
    let mut counts = Vec::new();
    for c in &clients {
        let rows = c
            .simple_query(
                "select count(*) from pg_prepared_statements \
                 where name like 'pgsidecar\\_%' and statement like '%$1::int%'",
            )
            .await
            .unwrap();
        let n = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse::<i64>().unwrap()),
            _ => None,
        });
        counts.push(n.unwrap());
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_unnamed_statements_pass_through_or_are_prepared_when_asked() {
    let pg = TestPg::shared();
    for (prepare, name) in [("0", "unnamed_off"), ("1", "unnamed_on")] {
        let db = pg.create_db(name);
        let p = start(
            pg,
            &db,
            &[
                ("PGSIDECAR_POOL_MODE", "transaction"),
                ("PGSIDECAR_POOL_SIZE", "3"),
                ("PGSIDECAR_PREPARE_UNNAMED_STATEMENTS", prepare),
            ],
        )
        .await;
        let url = p.url_as(SCRAM_USER, SCRAM_PASS, &db);
        let d = db.clone();
        let node = tokio::task::spawn_blocking(move || {
            run_driver_with("node", "node_check.js", &d, &url, &[("UNNAMED", "1")])
        })
        .await
        .unwrap();
        assert!(node.contains("workers=20 queries=10000 errors=0 wrong=0"), "{prepare}: {node}");
        let counts = proxy_statements_per_server(&p, &db, 3).await;
        if prepare == "1" {
            // Every server ran the texts with `$1::int` (five of the nine) and kept them.
            assert!(counts.iter().all(|&n| n > 0), "{counts:?}");
        } else {
            assert_eq!(counts, [0, 0, 0], "unnamed statements pass through by default");
        }
    }
}
