//! Login, authentication, database selection, query protocols through pgsidecar against a
//! real PostgreSQL with TLS.

mod common;

use common::code;

use common::pg::{TestPg, MD5_PASS, MD5_USER, PLAIN_PASS, PLAIN_USER, SCRAM_PASS, SCRAM_USER};
use common::proxy::{self, env_for, start, start_with_env};
use tokio_postgres::types::Type;

#[tokio::test]
async fn simple_and_extended_queries_over_tls_to_server() {
    let pg = TestPg::shared();
    let db = pg.create_db("basics");
    let p = start(pg, &db, &[]).await;
    let c = p.connect(&db).await;
    let rows = c.simple_query("select 1 as one; select 'two'").await.unwrap();
    let values: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(values, ["1", "two"]);
    // Extended protocol with an unnamed statement, parameters and a binary result.
    let row = c
        .query_typed_raw(
            "select $1::int + 1, $2::text",
            [(&41i32 as &(dyn tokio_postgres::types::ToSql + Sync), Type::INT4), (&"x", Type::TEXT)],
        )
        .await;
    use futures_util::TryStreamExt;
    let rows: Vec<tokio_postgres::Row> = row.unwrap().try_collect().await.unwrap();
    assert_eq!(rows[0].get::<_, i32>(0), 42);
    assert_eq!(rows[0].get::<_, String>(1), "x");
    // The server connection really is TLS.
    let ssl = c.simple_query("select ssl::text from pg_stat_ssl where pid = pg_backend_pid()").await.unwrap();
    match &ssl[1] {
        tokio_postgres::SimpleQueryMessage::Row(r) => assert_eq!(r.get(0), Some("true")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn wrong_password_gets_28p01_and_unknown_database_3d000() {
    let pg = TestPg::shared();
    let db = pg.create_db("auth");
    let p = start(pg, &db, &[]).await;
    let bad = format!("host=127.0.0.1 port={} user={SCRAM_USER} password=wrong dbname={db}", p.port());
    let err = common::must_fail(tokio_postgres::connect(&bad, tokio_postgres::NoTls).await, "refused");
    assert_eq!(code(&err), "28P01");
    // A user other than the URL's gets the same answer.
    let other = format!("host=127.0.0.1 port={} user=intruder password='{SCRAM_PASS}' dbname={db}", p.port());
    let err = common::must_fail(tokio_postgres::connect(&other, tokio_postgres::NoTls).await, "refused");
    assert_eq!(code(&err), "28P01");
    let err = p.connect_with("nosuchdb", "").await.expect_err("refused");
    assert_eq!(code(&err), "3D000");
    // The proxy still serves good clients.
    let c = p.connect(&db).await;
    assert_eq!(c.simple_query("select 1").await.unwrap().len(), 3);
}

/// A database URL without a password admits nobody by SCRAM or md5, as PostgreSQL accepts no
/// empty password. The URL names a closed port: a client let in would get 08001 from the
/// server side instead of 28P01.
#[tokio::test]
async fn a_url_without_a_password_admits_no_client_by_password() {
    let pg = TestPg::shared();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    for auth in ["scram-sha-256", "md5"] {
        let mut env = env_for(pg, SCRAM_USER, "nopass", "disable", &[("PGSIDECAR_CLIENT_AUTH", auth)]);
        env.insert("DATABASE_URL".into(), format!("postgres://{SCRAM_USER}@127.0.0.1:{closed}/nopass"));
        let p = start_with_env(env).await;
        let conn = format!("host=127.0.0.1 port={} user={SCRAM_USER} password='' dbname=nopass", p.port());
        let err = common::must_fail(tokio_postgres::connect(&conn, tokio_postgres::NoTls).await, "refused");
        assert_eq!(code(&err), "28P01", "{auth}: {err}");
    }
}

#[tokio::test]
async fn md5_and_trust_client_auth_and_md5_cleartext_servers() {
    let pg = TestPg::shared();
    let db = pg.create_db("authmodes");
    // Server side md5 (md5_user) and cleartext (plain_user); client side md5 and trust.
    for (user, pass, client_auth) in [(MD5_USER, MD5_PASS, "md5"), (PLAIN_USER, PLAIN_PASS, "trust")] {
        let p = start_with_env(env_for(pg, user, &db, "require", &[("PGSIDECAR_CLIENT_AUTH", client_auth)]))
            .await;
        let given = if client_auth == "trust" { "anything" } else { pass };
        let conn = format!("host=127.0.0.1 port={} user={user} password='{given}' dbname={db}", p.port());
        let (c, conn) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let row = c.query_one("select current_user::text", &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), user);
        if client_auth == "md5" {
            let bad = format!("host=127.0.0.1 port={} user={user} password=nope dbname={db}", p.port());
            let err = tokio_postgres::connect(&bad, tokio_postgres::NoTls).await.err().unwrap();
            assert_eq!(code(&err), "28P01");
        }
    }
}

#[tokio::test]
async fn pool_is_bounded_and_clients_all_served() {
    let pg = TestPg::shared();
    let db = pg.create_db("bounded");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_SIZE", "3")]).await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let url_db = db.clone();
        let c = p.connect(&url_db).await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                let rows = c.simple_query(&format!("select {i}, pg_sleep(0.01)")).await.unwrap();
                match &rows[1] {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        assert_eq!(r.get(0), Some(i.to_string().as_str()))
                    }
                    other => panic!("{other:?}"),
                }
            }
        }));
    }
    let watcher = {
        let db = db.clone();
        tokio::task::spawn_blocking(move || {
            let mut max = 0;
            for _ in 0..20 {
                max = max.max(proxy::server_count(TestPg::shared(), &db));
            }
            max
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    let max = watcher.await.unwrap();
    assert!(max <= 3, "saw {max} server connections for a pool of 3");
    assert!(proxy::server_count(pg, &db) <= 3);
}
