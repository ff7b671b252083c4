//! PostgreSQL's own answers through the pool (issue 21). Each test does the same thing against
//! PostgreSQL directly and through pgsidecar and compares what the client is told: at login
//! (ParameterStatus values, notices, the refusal of a bad setting), after RESET in session mode,
//! when a cancel is answered, which role a statement runs as, and what a temporary object of
//! any kind does to the next transaction.

mod common;

use common::pg::{TestPg, SCRAM_PASS, SCRAM_USER};
use common::proxy::{start, start_with_env};
use std::collections::BTreeMap;

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

/// Issue 21, case 13 (security): in transaction mode `SET SESSION AUTHORIZATION` and `SET ROLE`,
/// however they are made and undone, stay with the client that made them: the next client of
/// the same (only) server runs as the login user, and the client that made them keeps them in
/// its next transactions, as it would on a connection of its own.
#[tokio::test]
async fn role_and_session_authorization_stay_with_their_client() {
    let pg = TestPg::shared();
    let db = pg.create_db("answerrole");
    let n = std::process::id();
    let (owner, alice, bob) =
        (format!("answer_owner_{n}"), format!("answer_alice_{n}"), format!("answer_bob_{n}"));
    let password = "owner-pass";
    pg.sql(
        "postgres",
        &format!(
            "create role {owner} login superuser password '{password}'; create role {alice}; create role {bob}; \
             grant {bob} to {alice}; grant {bob} to {owner}"
        ),
    );
    let mut env = BTreeMap::new();
    env.insert(
        "DATABASE_URL".to_owned(),
        format!("postgres://{owner}:{password}@127.0.0.1:{}/{db}?sslmode=require", pg.port()),
    );
    env.insert("PGSIDECAR_LOG_LEVEL".to_owned(), "warn".to_owned());
    env.insert("PGSIDECAR_POOL_SIZE".to_owned(), "1".to_owned());
    let p = start_with_env(env).await;
    let who = "select current_user, session_user, current_setting('role'), current_setting('is_superuser')";
    // (client, statement): A changes its identity, B (the next client of the only server)
    // looks, A looks in its next transaction.
    let steps: &[&[&str]] = &[
        &[&format!("set session authorization {alice}")],
        &[&format!("set role {bob}")],
        &[&format!("set session authorization {alice}"), &format!("set role {bob}")],
        &[&format!("set role {bob}"), &format!("set session authorization {alice}")],
        &[
            &format!("set session authorization {alice}"),
            &format!("set role {bob}"),
            "reset session authorization",
        ],
        &[&format!("set session authorization {alice}"), "set session authorization default"],
        &[&format!("set session authorization {alice}"), &format!("set role {bob}"), "reset role"],
        &[&format!("begin; set local role {bob}; select current_user; commit")],
        &[&format!("begin; set local session authorization {alice}; commit")],
        &[&format!("select set_config('role', '{bob}', false)")],
        &[&format!("select set_config('session_authorization', '{alice}', false)")],
        // Out of sight of the statement's text: PostgreSQL reports the new authorization (and
        // is_superuser), and that is enough.
        &[&format!("do $$ begin execute 'set session authorization {alice}'; end $$")],
        &[&format!("do $$ begin execute 'set role {bob}'; end $$")],
        &[&format!("set session authorization {alice}"), "discard all"],
        &[&format!("set session authorization {alice}"), "reset all"],
    ];
    for (i, statements) in steps.iter().enumerate() {
        let (a, b) = (
            connect_as(p.port(), &owner, password, &db).await,
            connect_as(p.port(), &owner, password, &db).await,
        );
        let (da, db_) = (
            connect_as(pg.port(), &owner, password, &db).await,
            connect_as(pg.port(), &owner, password, &db).await,
        );
        for sql in *statements {
            assert_eq!(run(&a, sql).await, run(&da, sql).await, "step {i}: {sql}");
            assert_eq!(run(&b, who).await, run(&db_, who).await, "step {i}: the next client after A's {sql}");
            assert_eq!(run(&a, who).await, run(&da, who).await, "step {i}: A's next transaction after {sql}");
        }
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
