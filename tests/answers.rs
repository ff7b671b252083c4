//! PostgreSQL's own answers through the pool (issue 21). Each test does the same thing against
//! PostgreSQL directly and through pgsidecar and compares what the client is told: at login
//! (ParameterStatus values, notices, the refusal of a bad setting), after RESET in session mode,
//! when a cancel is answered, which role a statement runs as, and what a temporary object of
//! any kind does to the next transaction.

mod common;

use common::pg::{TestPg, SCRAM_PASS, SCRAM_USER};
use common::proxy::start;

/// A connection straight to PostgreSQL or through the proxy, as `user`.
async fn connect_as(port: u16, user: &str, password: &str, db: &str) -> tokio_postgres::Client {
    let conn =
        format!("host=127.0.0.1 port={port} user={user} password='{password}' dbname={db} sslmode=disable");
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Runs `sql` and describes its answer: the first row, or the error's SQLSTATE and message.
async fn run(c: &tokio_postgres::Client, sql: &str) -> String {
    match c.simple_query(sql).await {
        Ok(msgs) => msgs
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).unwrap_or("NULL")).collect::<Vec<_>>().join("|"))
                }
                _ => None,
            })
            .unwrap_or_else(|| "ok".to_owned()),
        Err(e) => format!(
            "error {}: {}",
            common::code(&e),
            e.as_db_error().map_or(String::new(), |d| d.message().to_owned())
        ),
    }
}

/// Issue 21, case 14: a temporary object of any kind (a type, a domain, an enum, a function, an
/// operator, a collation, a sequence, a table) pins its client to its server in transaction
/// mode, as a temporary table does: the client's next transaction finds it, even when another
/// client took the server the object was created on in between. Two servers: B takes the one A
/// just gave back (the pool hands out the most recently returned one).
#[tokio::test]
async fn temporary_objects_of_every_kind_pin_their_client() {
    let pg = TestPg::shared();
    let db = pg.create_db("answertemp");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_SIZE", "2")]).await;
    let objects: &[(&str, &str)] = &[
        ("create type pg_temp.t14 as (a int)", "select (row(1)::pg_temp.t14).a"),
        ("create domain pg_temp.d14 as int check (value > 0)", "select 1::pg_temp.d14"),
        ("create type pg_temp.e14 as enum ('x', 'y')", "select 'y'::pg_temp.e14"),
        ("create function pg_temp.f14() returns int language sql as 'select 14'", "select pg_temp.f14()"),
        (
            "create operator pg_temp.=== (leftarg = int, rightarg = int, function = int4eq)",
            "select 1 operator(pg_temp.===) 1",
        ),
        ("create collation pg_temp.c14 (locale = 'C')", "select 'a' < 'B' collate pg_temp.c14"),
        ("create temporary sequence s14", "select nextval('s14')"),
        ("create temp table t14 (a int); insert into t14 values (14)", "select a from t14"),
    ];
    for (create, use_it) in objects {
        let direct = connect_as(pg.port(), SCRAM_USER, SCRAM_PASS, &db).await;
        assert_eq!(run(&direct, create).await, "ok");
        let want = run(&direct, use_it).await;
        let (a, b) = (p.connect(&db).await, p.connect(&db).await);
        assert_eq!(run(&a, create).await, "ok", "{create}");
        b.simple_query("begin; select 1").await.unwrap();
        assert_eq!(run(&a, use_it).await, want, "A's next transaction after `{create}`");
        b.simple_query("commit").await.unwrap();
    }
}
