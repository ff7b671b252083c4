//! Self-test of the temporary-PostgreSQL harness in `tests/common/pg.rs`.

mod common;

use common::pg::{TestPg, MD5_USER, PLAIN_USER, SCRAM_USER};

#[test]
fn shared_cluster_runs_sql() {
    let pg = TestPg::shared();
    assert_eq!(pg.sql("postgres", "select 1"), "1");
}

#[tokio::test]
async fn all_auth_users_can_log_in_to_created_db() {
    let pg = TestPg::shared();
    let db = pg.create_db("selftest");

    // The md5 role must really carry an md5 hash, the others SCRAM verifiers.
    let hashes = pg.sql(
        "postgres",
        "select rolname || '=' || split_part(rolpassword, '$', 1) from pg_authid \
         where rolname in ('scram_user', 'md5_user', 'plain_user') order by rolname",
    );
    let hashes: Vec<&str> = hashes.lines().collect();
    assert_eq!(hashes.len(), 3, "{hashes:?}");
    assert!(hashes[0].starts_with("md5_user=md5"), "{hashes:?}");
    assert_eq!(hashes[1], "plain_user=SCRAM-SHA-256", "{hashes:?}");
    assert_eq!(hashes[2], "scram_user=SCRAM-SHA-256", "{hashes:?}");

    for user in [SCRAM_USER, MD5_USER, PLAIN_USER] {
        let url = pg.url(user, &db, "disable");
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("{user} could not connect via {url}: {e}"));
        let conn_task = tokio::spawn(conn);
        let row = client
            .query_one("select current_user::text, current_database()::text", &[])
            .await
            .unwrap_or_else(|e| panic!("{user}: query failed: {e}"));
        assert_eq!(row.get::<_, String>(0), user);
        assert_eq!(row.get::<_, String>(1), db);
        // Every role may create objects in the new database.
        client
            .batch_execute(&format!("create table t_{user} (id int)"))
            .await
            .unwrap_or_else(|e| panic!("{user}: create table failed: {e}"));
        drop(client);
        let _ = conn_task.await;
    }
}

#[test]
fn shared_cluster_has_tls_on() {
    let pg = TestPg::shared();
    assert_eq!(pg.sql("postgres", "show ssl"), "on");
    let ca = std::fs::read_to_string(pg.ca_cert_path()).expect("read CA cert");
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
}
