//! PostgreSQL's own answers through the pool (issue 21). Each test does the same thing against
//! PostgreSQL directly and through pgsidecar and compares what the client is told: at login
//! (ParameterStatus values, notices, the refusal of a bad setting), after RESET in session mode,
//! when a cancel is answered, which role a statement runs as, and what a temporary object of
//! any kind does to the next transaction.

mod common;

use bytes::BytesMut;
use common::pg::{TestPg, SCRAM_PASS, SCRAM_USER};
use common::proxy::{env_for, start, start_with_env};
use common::raw;
use common::relay::Relay;
use common::watch;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

type Msg = (u8, Vec<u8>);

/// A client speaking the protocol by hand, logged in with SCRAM as scram_user (PostgreSQL and
/// pgsidecar both ask for it).
struct RawClient {
    stream: TcpStream,
    /// What the server sent after AuthenticationOk, up to the login's ReadyForQuery (or the end
    /// of the connection).
    login: Vec<Msg>,
    open: bool,
}

impl RawClient {
    async fn login(port: u16, db: &str, params: &[(&str, &str)]) -> RawClient {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        let mut all = vec![("user", SCRAM_USER), ("database", db)];
        all.extend_from_slice(params);
        s.write_all(&raw::startup(&all)).await.unwrap();
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (t, body) = raw::read_msg(&mut s).await.expect("an answer to the login");
            assert_eq!(t, b'R', "before AuthenticationOk: {}", String::from_utf8_lossy(&body));
            let code = i32::from_be_bytes(body[..4].try_into().unwrap());
            let data = &body[4..];
            let mut buf = BytesMut::new();
            match code {
                0 => break,
                10 => {
                    let sc = ScramSha256::new(SCRAM_PASS.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, sc.message(), &mut buf).unwrap();
                    scram = Some(sc);
                }
                11 => {
                    let sc = scram.as_mut().expect("SASL started");
                    sc.update(data).unwrap();
                    frontend::sasl_response(sc.message(), &mut buf).unwrap();
                }
                12 => {
                    scram.take().expect("SASL started").finish(data).unwrap();
                    continue;
                }
                other => panic!("authentication method {other}"),
            }
            s.write_all(&buf).await.unwrap();
        }
        let mut login = Vec::new();
        let open = loop {
            match raw::read_msg(&mut s).await {
                None => break false,
                Some(m) => {
                    let ready = m.0 == b'Z';
                    login.push(m);
                    if ready {
                        break true;
                    }
                }
            }
        };
        RawClient { stream: s, login, open }
    }

    /// The process id and secret of the login's BackendKeyData.
    fn key(&self) -> (i32, i32) {
        let body = &self.login.iter().find(|(t, _)| *t == b'K').expect("BackendKeyData").1;
        (
            i32::from_be_bytes(body[..4].try_into().unwrap()),
            i32::from_be_bytes(body[4..8].try_into().unwrap()),
        )
    }

    async fn send(&mut self, sql: &str) {
        self.stream.write_all(&raw::query(sql)).await.unwrap();
    }

    /// The answer to one earlier query, up to its ReadyForQuery.
    async fn answer(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            let m = raw::read_msg(&mut self.stream).await.expect("the connection stays open");
            let ready = m.0 == b'Z';
            out.push(m);
            if ready {
                return out;
            }
        }
    }
    async fn query(&mut self, sql: &str) -> Vec<Msg> {
        self.send(sql).await;
        self.answer().await
    }
}

/// The fields of an ErrorResponse or NoticeResponse, by their one-letter codes.
fn fields(body: &[u8]) -> BTreeMap<char, String> {
    body.split(|&b| b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| (f[0] as char, String::from_utf8_lossy(&f[1..]).into_owned()))
        .collect()
}

/// Messages as lines to compare: notices and errors with every field, ParameterStatus values
/// that arrive together as one sorted block, BackendKeyData without its key (it differs by
/// design), rows with their values, and whether the connection ended.
fn describe(msgs: &[Msg], open: bool) -> Vec<String> {
    fn flush(block: &mut BTreeMap<String, String>, out: &mut Vec<String>) {
        if !block.is_empty() {
            out.push(format!("ParameterStatus {:?}", std::mem::take(block)));
        }
    }
    let mut out = Vec::new();
    let mut block = BTreeMap::new();
    for (t, body) in msgs {
        if *t == b'S' {
            let mut parts = body.split(|&b| b == 0).map(|p| String::from_utf8_lossy(p).into_owned());
            block.insert(parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
            continue;
        }
        flush(&mut block, &mut out);
        out.push(match t {
            b'N' | b'E' => format!("{} {:?}", *t as char, fields(body)),
            b'K' => "BackendKeyData".to_owned(),
            b'Z' => format!("ReadyForQuery {}", body[0] as char),
            b'D' => format!("DataRow {:?}", row_values(body)),
            b'C' => format!("CommandComplete {}", String::from_utf8_lossy(&body[..body.len() - 1])),
            b'T' => "RowDescription".to_owned(),
            other => format!("{} {:?}", *other as char, body),
        });
    }
    flush(&mut block, &mut out);
    if !open {
        out.push("connection closed".to_owned());
    }
    out
}

fn row_values(body: &[u8]) -> Vec<Option<String>> {
    let n = i16::from_be_bytes([body[0], body[1]]);
    let mut at = 2;
    (0..n)
        .map(|_| {
            let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
            at += 4;
            if len < 0 {
                return None;
            }
            let v = String::from_utf8_lossy(&body[at..at + len as usize]).into_owned();
            at += len as usize;
            Some(v)
        })
        .collect()
}

/// The login as a list of lines.
fn login_lines(c: &RawClient) -> Vec<String> {
    describe(&c.login, c.open)
}

fn long_name() -> String {
    "a_rather_long_application_name_that_postgres_truncates_at_63_bytes_with_a_notice".to_owned()
}

/// Issue 21, cases 8 and 11: at login a client is told exactly what PostgreSQL tells it: the
/// values of its startup settings as PostgreSQL spells them (`UTF8`, `ISO, MDY`, `UTC`, not the
/// client's `utf-8`, `iso`, `utc`), PostgreSQL's NOTICE when it truncates an application_name,
/// and for a setting PostgreSQL refuses, the FATAL error PostgreSQL sends at login. In both
/// pool modes, at a client's first login with these settings and again (when pgsidecar may
/// know them already).
#[tokio::test]
async fn logins_are_answered_as_postgres_answers_them() {
    let pg = TestPg::shared();
    let db = pg.create_db("answerlogin");
    let long = long_name();
    let long_option = format!("-c application_name={long}");
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![("client_encoding", "utf-8"), ("DateStyle", "iso"), ("TimeZone", "utc")],
        vec![("options", "-c DateStyle=sql,dmy -c timezone=Europe/Paris -c IntervalStyle=ISO_8601")],
        vec![
            ("options", "-c statement_timeout=5s -c search_path=public -c myapp.tenant=7"),
            ("DateStyle", "German"),
        ],
        vec![("application_name", &long)],
        vec![("options", &long_option), ("datestyle", "iso")],
        vec![("TimeZone", "nonsense")],
        vec![("options", "-c DateStyle=bogus")],
        vec![("no_such_setting", "x")],
        vec![("statement_timeout", "abc")],
        vec![("application_name", &long), ("TimeZone", "nonsense")],
        vec![("options", "-c shared_buffers=1GB")],
    ];
    let (mut direct, mut by_name) = (Vec::new(), Vec::new());
    for params in &cases {
        direct.push(login_lines(&RawClient::login(pg.port(), &db, params).await));
        // In session mode the server is sent the client's settings in the order of their
        // names (docs/prepared-statements.md, "In session mode"): what PostgreSQL answers to
        // that order is the standard there. It differs only for the application_name noticed
        // before a refused TimeZone.
        let mut sorted = params.clone();
        sorted.sort_by_key(|(k, _)| (*k != "options", pgsidecar::params::canonical_name(k)));
        by_name.push(login_lines(&RawClient::login(pg.port(), &db, &sorted).await));
    }
    let mut differences = Vec::new();
    for mode in ["transaction", "session"] {
        let p = start(pg, &db, &[("PGSIDECAR_POOL_MODE", mode)]).await;
        let standard = if mode == "session" { &by_name } else { &direct };
        if mode == "session" {
            let relaxed = direct.iter().zip(&by_name).filter(|(a, b)| a != b).count();
            assert_eq!(relaxed, 1, "the order of the names matters for one case only");
        }
        for round in ["first", "second"] {
            for (params, want) in cases.iter().zip(standard) {
                let got = login_lines(&RawClient::login(p.port(), &db, params).await);
                if &got != want {
                    differences.push(format!(
                        "{mode} mode, {round} login with {params:?}:\n  pgsidecar:  {got:?}\n  PostgreSQL: {want:?}"
                    ));
                }
            }
        }
    }
    assert!(differences.is_empty(), "{} logins differ:\n{}", differences.len(), differences.join("\n"));

    // Transaction mode: settings pgsidecar has seen need no server at login. With the pool
    // paused (no server handed out), a client with known settings still logs in.
    let p = start(pg, &db, &[("PGSIDECAR_POOL_MODE", "transaction")]).await;
    assert_eq!(login_lines(&RawClient::login(p.port(), &db, &cases[0]).await), direct[0]);
    let pool = &p.proxy.upstream(&db).unwrap().pool;
    pool.pause();
    let known =
        tokio::time::timeout(Duration::from_secs(10), RawClient::login(p.port(), &db, &cases[0])).await;
    assert_eq!(login_lines(&known.expect("a login with known settings waits for no server")), direct[0]);
    pool.resume();
}

/// The statements of the RESET test, each followed by what it shows.
const RESET_SCRIPT: &[&str] = &[
    "show datestyle",
    "set datestyle = 'SQL, YMD'",
    "reset datestyle",
    "show datestyle",
    "set timezone = 'America/New_York'",
    "set timezone to default",
    "show timezone",
    "set statement_timeout = 7",
    "set application_name = 'changed'",
    "set intervalstyle = 'sql_standard'",
    "reset all",
    "show statement_timeout",
    "show application_name",
    "show datestyle",
    "show timezone",
    "show intervalstyle",
    "set datestyle = 'Postgres'",
    "set timezone = 'UTC'",
    "discard all",
    "show datestyle",
    "show timezone",
    "show statement_timeout",
];

async fn reset_transcript(port: u16, db: &str, params: &[(&str, &str)]) -> Vec<String> {
    let mut c = RawClient::login(port, db, params).await;
    let mut out = login_lines(&c);
    for sql in RESET_SCRIPT {
        out.push(format!("-- {sql}"));
        let answer = c.query(sql).await;
        out.extend(describe(&answer, true));
    }
    out
}

/// Issue 21, case 9: in session mode `RESET x`, `RESET ALL`, `SET x TO DEFAULT` and
/// `DISCARD ALL` return to the client's startup settings (its `options=-c ...`, a `TimeZone`
/// from PGTZ, its application_name), as they do in PostgreSQL, and never to another client's:
/// with a pool of one server, clients with other settings, and with none, take turns.
#[tokio::test]
async fn reset_returns_to_the_startup_settings_in_session_mode() {
    let pg = TestPg::shared();
    let db = pg.create_db("answerreset");
    let with: &[(&str, &str)] = &[
        ("options", "-c DateStyle=German -c statement_timeout=1234 -c IntervalStyle=iso_8601"),
        ("TimeZone", "Asia/Tokyo"),
        ("application_name", "case9"),
    ];
    let other: &[(&str, &str)] = &[("DateStyle", "SQL, MDY"), ("TimeZone", "Pacific/Auckland")];
    let p = start(pg, &db, &[("PGSIDECAR_POOL_MODE", "session"), ("PGSIDECAR_POOL_SIZE", "1")]).await;
    for (i, params) in [with, &[], other, with, with].into_iter().enumerate() {
        let want = reset_transcript(pg.port(), &db, params).await;
        let got = reset_transcript(p.port(), &db, params).await;
        assert_eq!(got, want, "client {i} with {params:?}");
        let stats = p.proxy.upstream(&db).unwrap().pool.stats();
        assert!(stats.active + stats.idle + stats.connecting <= 1, "the pool outgrew its size: {stats:?}");
    }
    // The only server was replaced for clients with other settings, and reused for the last.
    let stats = p.proxy.upstream(&db).unwrap().pool.stats();
    let replaced = stats.closed_by[pgsidecar::observe::stats::CloseReason::StartupSettings as usize];
    assert_eq!((replaced, stats.opened_total), (3, 4), "{stats:?}");
}

/// A CancelRequest for `key`, sent on a connection of its own; returns once the other side
/// closed that connection.
async fn cancel_and_wait_for_close(addr: SocketAddr, (pid, secret): (i32, i32)) {
    let mut s = TcpStream::connect(addr).await.expect("connect for the cancel");
    let mut packet = Vec::new();
    packet.extend_from_slice(&16i32.to_be_bytes());
    packet.extend_from_slice(&80_877_102i32.to_be_bytes());
    packet.extend_from_slice(&pid.to_be_bytes());
    packet.extend_from_slice(&secret.to_be_bytes());
    s.write_all(&packet).await.unwrap();
    raw::closed_by_peer(&mut s).await;
}

/// Issue 21, case 10: PostgreSQL closes a cancel connection only once it has signalled the
/// backend, and clients (asyncpg) take the close to mean that the cancel can no longer hit
/// their next statement. pgsidecar answers the same way: it closes the client's cancel
/// connection only after PostgreSQL closed the one pgsidecar opened for it (the relay in
/// front of PostgreSQL counts those closes before passing them on). Many rounds of: a long
/// statement, its cancel, and right after the close another statement, which must succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_connection_closes_after_postgres_has_taken_the_cancel() {
    let pg = TestPg::shared();
    let db = pg.create_db("answercancel");
    let relay = Relay::start(SocketAddr::from(([127, 0, 0, 1], pg.port()))).await;
    let watcher = watch::superuser(pg, "postgres").await;
    for mode in ["session", "transaction"] {
        // Without TLS to PostgreSQL: its close is then the end of the stream alone, which the
        // relay counts before passing it on (with TLS, a close_notify would come first).
        let mut env = env_for(pg, SCRAM_USER, &db, "disable", &[("PGSIDECAR_POOL_MODE", mode)]);
        let url = env["DATABASE_URL"].replace(&format!(":{}/", pg.port()), &format!(":{}/", relay.port()));
        env.insert("DATABASE_URL".into(), url);
        let p = start_with_env(env).await;
        let mut c = RawClient::login(p.port(), &db, &[]).await;
        assert!(c.open, "logged in");
        let key = c.key();
        for round in 0..20 {
            let marker = format!("cancel-{mode}-{round}");
            c.send(&format!("select pg_sleep(5), '{marker}'")).await;
            let running = format!(
                "select count(*) from pg_stat_activity where state = 'active' and query like '%{marker}%' \
                 and pid <> pg_backend_pid()"
            );
            watch::until(Duration::from_secs(10), "the statement runs", || async {
                watch::value(&watcher, &running).await == "1"
            })
            .await;
            let before = relay.upstream_closed();
            cancel_and_wait_for_close(p.addr, key).await;
            let after = relay.upstream_closed();
            // At once, as asyncpg does.
            c.send("select 1").await;
            assert!(
                after > before,
                "{mode} mode, round {round}: the cancel connection was closed before PostgreSQL had closed \
                 pgsidecar's ({before} closes before, {after} after)"
            );
            let cancelled = c.answer().await;
            let error = cancelled.iter().find(|(t, _)| *t == b'E').map(|(_, b)| fields(b));
            assert_eq!(
                error.as_ref().map(|f| f[&'C'].as_str()),
                Some("57014"),
                "{mode} round {round}: {error:?}"
            );
            let next = describe(&c.answer().await, true);
            assert!(next.contains(&"DataRow [Some(\"1\")]".to_owned()), "{mode} round {round}: {next:?}");
        }
    }
}

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
