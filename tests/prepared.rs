//! Transaction pooling that unmodified drivers can use: named prepared statements across
//! servers, DDL recovery, Describe/Flush flows, pinning for session state, and a leak test.

mod common;

use common::first_value;

use common::pg::{TestPg, SCRAM_PASS, SCRAM_USER};
use common::proxy::{self, start};
use std::sync::atomic::Ordering;
use std::time::Duration;

#[tokio::test]
async fn prepared_statements_work_across_servers() {
    let pg = TestPg::shared();
    let db = pg.create_db("prep");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_MODE", "transaction"), ("PGSIDECAR_POOL_SIZE", "2")]).await;
    let mut tasks = Vec::new();
    for id in 0..12i32 {
        let c = p.connect(&db).await;
        tasks.push(tokio::spawn(async move {
            let echo = c.prepare("select $1::int + 0, pg_backend_pid()").await.unwrap();
            let text = c.prepare("select $1::text || '!'").await.unwrap();
            let mut pids = std::collections::HashSet::new();
            for i in 0..40 {
                let row = c.query_one(&echo, &[&(id * 1000 + i)]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), id * 1000 + i);
                pids.insert(row.get::<_, i32>(1));
                let row = c.query_one(&text, &[&format!("c{id}")]).await.unwrap();
                assert_eq!(row.get::<_, String>(0), format!("c{id}!"));
                // A transaction in between moves the client to whichever server is free.
                let tx_row = c.query_one("select $1::int", &[&i]).await.unwrap();
                assert_eq!(tx_row.get::<_, i32>(0), i);
            }
            pids.len()
        }));
    }
    let mut seen_several = false;
    for t in tasks {
        seen_several |= t.await.unwrap() > 1;
    }
    assert!(seen_several, "clients should have moved between the two servers");
    assert!(proxy::server_count(pg, &db) <= 2);
}

#[test]
fn pgbench_prepared_mode_with_many_clients() {
    let pg = TestPg::shared();
    let db = pg.create_db("pgbprep");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p =
        rt.block_on(start(pg, &db, &[("PGSIDECAR_POOL_MODE", "transaction"), ("PGSIDECAR_POOL_SIZE", "5")]));
    p.pgbench(&db, &["-i", "-q"]);
    let out = p.pgbench(&db, &["-M", "prepared", "-c", "50", "-j", "2", "-T", "3"]);
    assert!(out.contains("number of failed transactions: 0 "), "{out}");
    assert!(proxy::server_count(pg, &db) <= 5);
}

#[tokio::test]
async fn statement_survives_ddl_once_the_client_prepares_again() {
    let pg = TestPg::shared();
    let db = pg.create_db("ddl");
    pg.sql(&db, "create table t(a int); alter table t owner to scram_user; insert into t values (1)");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_MODE", "transaction"), ("PGSIDECAR_POOL_SIZE", "1")]).await;
    let c = p.connect(&db).await;
    let s = c.prepare("select * from t").await.unwrap();
    assert_eq!(c.query(&s, &[]).await.unwrap()[0].len(), 1);
    c.simple_query("alter table t add column b int").await.unwrap();
    let err = c.query(&s, &[]).await.expect_err("result type changed");
    assert_eq!(err.code().map(|c| c.code()), Some("0A000"));
    // The same connection recovers by preparing again (what pgJDBC and Rails do).
    let s2 = c.prepare("select * from t").await.unwrap();
    assert_eq!(c.query(&s2, &[]).await.unwrap()[0].len(), 2);
    let other = p.connect(&db).await;
    assert_eq!(other.query("select * from t", &[]).await.unwrap()[0].len(), 2);
}

#[tokio::test]
async fn listen_pins_the_client_until_unlisten() {
    let pg = TestPg::shared();
    let db = pg.create_db("pinlisten");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_MODE", "transaction"), ("PGSIDECAR_POOL_SIZE", "2")]).await;
    let conn_str =
        format!("host=127.0.0.1 port={} user={SCRAM_USER} password='{SCRAM_PASS}' dbname={db}", p.port());
    let (listener, mut connection) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(m) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let Ok(tokio_postgres::AsyncMessage::Notification(n)) = m {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    listener.simple_query("listen chan").await.unwrap();
    assert_eq!(p.proxy.pinned.load(Ordering::Relaxed), 1);
    // Other clients keep being served by the other server, and their NOTIFY arrives.
    let talker = p.connect(&db).await;
    for i in 0..5 {
        talker.simple_query(&format!("notify chan, 'm{i}'")).await.unwrap();
    }
    for i in 0..5 {
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert_eq!(got, format!("m{i}"));
    }
    listener.simple_query("unlisten *").await.unwrap();
    assert_eq!(p.proxy.pinned.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn temp_tables_advisory_locks_and_sql_prepare_pin() {
    let pg = TestPg::shared();
    let db = pg.create_db("pinstate");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_MODE", "transaction"), ("PGSIDECAR_POOL_SIZE", "2")]).await;
    let c = p.connect(&db).await;
    let other = p.connect(&db).await;
    let cases = [
        (
            "create temp table scratch(v int); insert into scratch values (7)",
            "select v from scratch",
            "drop table scratch",
        ),
        (
            "select pg_advisory_lock(42)",
            "select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()",
            "select pg_advisory_unlock(42)",
        ),
        ("prepare mine(int) as select $1 * 2", "execute mine(21)", "deallocate mine"),
    ];
    for (create, use_it, remove) in cases {
        c.simple_query(create).await.unwrap();
        assert_eq!(p.proxy.pinned.load(Ordering::Relaxed), 1, "{create}");
        for _ in 0..3 {
            // Other traffic would otherwise move the client to another server.
            other.simple_query("select pg_sleep(0.001)").await.unwrap();
            let v = first_value(&c.simple_query(use_it).await.unwrap());
            assert!(v == "7" || v == "1" || v == "42", "{use_it}: {v}");
        }
        c.simple_query(remove).await.unwrap();
        assert_eq!(p.proxy.pinned.load(Ordering::Relaxed), 0, "{remove}");
    }
}

/// A session advisory lock taken by a named prepared statement (as job queues do through
/// their ORM) pins the client in whichever transaction executes it, and the unlock frees it.
#[tokio::test]
async fn advisory_lock_through_a_prepared_statement_pins() {
    let pg = TestPg::shared();
    let db = pg.create_db("pinprep");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_MODE", "transaction"), ("PGSIDECAR_POOL_SIZE", "2")]).await;
    let c = p.connect(&db).await;
    let other = p.connect(&db).await;
    let lock = c.prepare("select pg_advisory_lock($1::bigint)").await.unwrap();
    let unlock = c.prepare("select pg_advisory_unlock($1::bigint)").await.unwrap();
    let held = c
        .prepare("select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()")
        .await
        .unwrap();
    // Prepared in one transaction, executed in later ones.
    other.simple_query("select 1").await.unwrap();
    c.query(&lock, &[&42i64]).await.unwrap();
    assert_eq!(p.proxy.pinned.load(Ordering::Relaxed), 1, "the lock pins");
    for _ in 0..3 {
        // Other traffic would otherwise move the client to another server.
        other.simple_query("select pg_sleep(0.001)").await.unwrap();
        let n: i64 = c.query_one(&held, &[]).await.unwrap().get(0);
        assert_eq!(n, 1, "the client stays on the server that holds its lock");
    }
    let freed: bool = c.query_one(&unlock, &[&42i64]).await.unwrap().get(0);
    assert!(freed);
    assert_eq!(p.proxy.pinned.load(Ordering::Relaxed), 0, "the unlock unpins");
}

#[tokio::test]
async fn describe_and_flush_keep_the_server_until_sync() {
    use bytes::{BufMut, BytesMut};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pg = TestPg::shared();
    let db = pg.create_db("flush");
    let p = start(
        pg,
        &db,
        &[
            ("PGSIDECAR_POOL_MODE", "transaction"),
            ("PGSIDECAR_POOL_SIZE", "1"),
            ("PGSIDECAR_CLIENT_AUTH", "trust"),
        ],
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let mut startup = BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [("user", SCRAM_USER), ("database", db.as_str())],
        &mut startup,
    )
    .unwrap();
    s.write_all(&startup).await.unwrap();
    async fn read_until(s: &mut tokio::net::TcpStream, last: u8) -> Vec<u8> {
        let mut tags = Vec::new();
        loop {
            let t = s.read_u8().await.unwrap();
            let len = s.read_i32().await.unwrap();
            let mut body = vec![0; len as usize - 4];
            s.read_exact(&mut body).await.unwrap();
            tags.push(t);
            if t == last {
                return tags;
            }
        }
    }
    read_until(&mut s, b'Z').await;
    // postgres.js style: Parse + Describe + Flush, then wait for the answers without Sync.
    let mut b = BytesMut::new();
    postgres_protocol::message::frontend::parse("st1", "select $1::int as x", [23], &mut b).unwrap();
    postgres_protocol::message::frontend::describe(b'S', "st1", &mut b).unwrap();
    postgres_protocol::message::frontend::flush(&mut b);
    s.write_all(&b).await.unwrap();
    assert_eq!(read_until(&mut s, b'T').await, b"1tT");
    // Meanwhile another client must wait: the only server stays with this one.
    let waiting = tokio::spawn({
        let p_addr = p.addr;
        let db = db.clone();
        async move {
            let conn = format!("host=127.0.0.1 port={} user={SCRAM_USER} dbname={db}", p_addr.port());
            let (c, conn) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            first_value(&c.simple_query("select 'second'").await.unwrap())
        }
    });
    let mut b = BytesMut::new();
    // Bind "" to st1 with one binary int4 parameter (5), text results.
    b.put_u8(b'B');
    let body: &[u8] = b"\0st1\0\0\x01\0\x01\0\x01\0\0\0\x04\0\0\0\x05\0\0";
    b.put_i32(body.len() as i32 + 4);
    b.put_slice(body);
    postgres_protocol::message::frontend::execute("", 0, &mut b).unwrap();
    postgres_protocol::message::frontend::sync(&mut b);
    s.write_all(&b).await.unwrap();
    assert_eq!(read_until(&mut s, b'Z').await, b"2DCZ");
    assert_eq!(waiting.await.unwrap(), "second");
}

#[tokio::test]
async fn settings_never_leak_between_100_clients_on_4_servers() {
    let pg = TestPg::shared();
    let db = pg.create_db("leak");
    pg.sql(&db, "create schema s0; create schema s1; create schema s2; grant usage on schema s0, s1, s2 to scram_user");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_MODE", "transaction"), ("PGSIDECAR_POOL_SIZE", "4")]).await;
    let zones = ["UTC", "Asia/Tokyo", "Europe/Paris", "America/New_York", "Australia/Sydney"];
    let mut tasks = Vec::new();
    for id in 0..100usize {
        let c = p.connect(&db).await;
        let zone = zones[id % zones.len()];
        tasks.push(tokio::spawn(async move {
            c.simple_query(&format!("set TimeZone = '{zone}'")).await.unwrap();
            c.simple_query(&format!("set application_name = 'client{id}'")).await.unwrap();
            c.simple_query(&format!("set search_path = s{}, public", id % 3)).await.unwrap();
            let expect = format!("{id}|{zone}|client{id}|s{}, public", id % 3);
            let sql = format!(
                "select '{id}' || '|' || current_setting('TimeZone') || '|' || current_setting('application_name') || '|' || current_setting('search_path')"
            );
            for _ in 0..10 {
                assert_eq!(first_value(&c.simple_query(&sql).await.unwrap()), expect);
                let row = c.query_one("select current_setting('application_name')", &[]).await.unwrap();
                assert_eq!(row.get::<_, String>(0), format!("client{id}"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(proxy::server_count(pg, &db) <= 4);
}

/// With unnamed statements prepared by the proxy, the ParseComplete it answers itself goes
/// out in one write with the server's answers to the same batch (one write and one wake-up of
/// the client per transaction, not two): the first read after the batch holds both.
#[tokio::test]
async fn a_parse_answered_by_the_proxy_goes_out_with_the_servers_answers() {
    trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin {}
    impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Stream for T {}
    use common::raw;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pg = TestPg::shared();
    let db = pg.create_db("holdparse");
    let p = start(
        pg,
        &db,
        &[
            ("PGSIDECAR_POOL_MODE", "transaction"),
            ("PGSIDECAR_POOL_SIZE", "1"),
            ("PGSIDECAR_PREPARE_UNNAMED_STATEMENTS", "1"),
            ("PGSIDECAR_CLIENT_AUTH", "trust"),
        ],
    )
    .await;
    // The check needs the batch to reach the proxy in one piece, as one write does over a
    // direct connection. Under the unix test transport `p.addr` is a relay into the socket,
    // which may cut it anywhere (a cut batch is the chopped-stream tests' job): connect to
    // the socket itself instead.
    let mut s: Box<dyn Stream> = match &p.socket {
        Some((dir, port)) if p.via_socket() => {
            let mut u = tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).await.unwrap();
            u.write_all(&raw::startup(&[("user", SCRAM_USER), ("database", db.as_str())])).await.unwrap();
            raw::read_until_from(&mut u, b'Z').await;
            Box::new(u)
        }
        _ => Box::new(raw::trusted_login(p.addr, SCRAM_USER, &db).await),
    };
    let batch = [
        raw::message(b'P', b"\0select pg_sleep(0.3)\0\0\0"),
        raw::message(b'B', b"\0\0\0\0\0\0\0\0"),
        raw::message(b'E', b"\0\0\0\0\0"),
        raw::message(b'S', b""),
    ]
    .concat();
    s.write_all(&batch).await.unwrap();
    raw::read_until_from(&mut s, b'Z').await; // prepared on the server now
    s.write_all(&batch).await.unwrap();
    if common::chop::from_env().is_some() {
        // Chopped streams cut the proxy's output into pieces too, so one read tells nothing
        // of how it was written: only the answers and their order can be checked.
        let mut tags = Vec::new();
        while tags.last() != Some(&b'Z') {
            tags.push(raw::read_msg_from(&mut s).await.expect("connection open").0);
        }
        assert_eq!(&tags[..2], b"12", "{tags:?}");
        return;
    }
    let mut buf = vec![0u8; 8192];
    let n = s.read(&mut buf).await.unwrap();
    // ParseComplete (5 bytes), then at least BindComplete: the proxy's answer did not go
    // alone, 0.3 s before the server's.
    assert!(n > 5, "the ParseComplete came alone: {:?}", &buf[..n]);
    assert_eq!((buf[0], buf[5]), (b'1', b'2'), "{:?}", &buf[..n]);
}

/// The SQLSTATE of an ErrorResponse body.
fn sqlstate(body: &[u8]) -> String {
    body.split(|&b| b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_default()
}

/// A client holds at most 10,000 named statements, whether the proxy answers its Parse itself
/// (no server attached) or passes it on inside a transaction; a Close makes room again.
#[tokio::test]
async fn a_client_holds_at_most_ten_thousand_named_statements() {
    use common::raw;
    use tokio::io::AsyncWriteExt;
    let pg = TestPg::shared();
    let db = pg.create_db("stmtcap");
    let p =
        start(pg, &db, &[("PGSIDECAR_POOL_MODE", "transaction"), ("PGSIDECAR_CLIENT_AUTH", "trust")]).await;
    let (mut r, mut w) = raw::trusted_login(p.addr, SCRAM_USER, &db).await.into_split();
    let parse = |name: &str| raw::message(b'P', format!("{name}\0select 1\0\0\0").as_bytes());
    let sync = raw::message(b'S', b"");
    // 10,001 Parses and a Sync outside a transaction.
    let mut batch: Vec<u8> = (0..=10_000).flat_map(|i| parse(&format!("s{i}"))).collect();
    batch.extend(&sync);
    let writer = tokio::spawn(async move {
        w.write_all(&batch).await.unwrap();
        w
    });
    let mut parsed = 0;
    let code = loop {
        match raw::read_msg_from(&mut r).await.expect("connection open") {
            (b'1', _) => parsed += 1,
            (b'E', body) => break sqlstate(&body),
            (t, body) => panic!("unexpected {:?}: {body:?}", t as char),
        }
    };
    assert_eq!((parsed, code.as_str()), (10_000, "53400"), "the 10,001st statement is refused");
    assert_eq!(raw::read_msg_from(&mut r).await.map(|m| m.0), Some(b'Z'));
    let mut w = writer.await.unwrap();

    // Inside a transaction (a server attached) the relay keeps the same bound.
    w.write_all(&raw::query("begin")).await.unwrap();
    assert_eq!(raw::read_until_from(&mut r, b'Z').await, b"T");
    w.write_all(&[parse("s10000"), sync.clone()].concat()).await.unwrap();
    let (t, body) = raw::read_msg_from(&mut r).await.expect("open");
    assert_eq!((t, sqlstate(&body).as_str()), (b'E', "53400"));
    raw::read_until_from(&mut r, b'Z').await;
    // Closing one makes room for one.
    let close = raw::message(b'C', b"Ss0\0");
    w.write_all(&[close, parse("s10000"), sync].concat()).await.unwrap();
    assert_eq!(raw::read_msg_from(&mut r).await.map(|m| m.0), Some(b'3'));
    assert_eq!(raw::read_msg_from(&mut r).await.map(|m| m.0), Some(b'1'));
    raw::read_until_from(&mut r, b'Z').await;
    w.write_all(&raw::query("commit")).await.unwrap();
    assert_eq!(raw::read_until_from(&mut r, b'Z').await, b"I");
}

/// Issue 21, case 7: a named Parse is PostgreSQL's to answer. One that fails is an error, and
/// the name stays free: preparing it again with fixed text succeeds (before, the proxy
/// acknowledged the Parse itself, then refused the second with 42P05).
#[tokio::test]
async fn a_failed_named_parse_is_an_error_and_leaves_the_name_free() {
    use common::raw;
    use tokio::io::AsyncWriteExt;
    let pg = TestPg::shared();
    let db = pg.create_db("badparse");
    pg.sql(&db, "create table t7 (id int); alter table t7 owner to scram_user");
    let p = start(
        pg,
        &db,
        &[
            ("PGSIDECAR_POOL_MODE", "transaction"),
            ("PGSIDECAR_POOL_SIZE", "1"),
            ("PGSIDECAR_CLIENT_AUTH", "trust"),
        ],
    )
    .await;
    let mut s = raw::trusted_login(p.addr, SCRAM_USER, &db).await;
    let sync = raw::message(b'S', b"");
    let parse = |sql: &str| raw::message(b'P', format!("bad\0{sql}\0\0\0").as_bytes());
    s.write_all(&[parse("select no_such from t7 where id = $1"), sync.clone()].concat()).await.unwrap();
    let (t, body) = raw::read_msg(&mut s).await.expect("open");
    assert_eq!((t, sqlstate(&body).as_str()), (b'E', "42703"), "PostgreSQL's error for the text");
    assert_eq!(raw::read_msg(&mut s).await.map(|m| m.0), Some(b'Z'));
    s.write_all(&[parse("select id from t7 where id = $1"), sync].concat()).await.unwrap();
    assert_eq!(raw::read_msg(&mut s).await.map(|m| m.0), Some(b'1'), "the name was free");
    assert_eq!(raw::read_msg(&mut s).await.map(|m| m.0), Some(b'Z'));
}

/// Issue 21, case 6: a statement another client prepared before a DDL never answers for a
/// client that prepares the same text after it. A type dropped and created again, a table
/// whose columns changed order and type: the new client gets what PostgreSQL gives it, and
/// the old client's statement fails with PostgreSQL's 0A000 instead of handing it rows of
/// another shape.
#[tokio::test]
async fn statements_prepared_after_ddl_see_the_new_schema() {
    let pg = TestPg::shared();
    let db = pg.create_db("freshprep");
    let setup = "create type mood as enum ('a', 'b'); create table t (id int, a int, b text); \
                 insert into t values (1, 10, 'x'); alter table t owner to scram_user";
    pg.sql(&db, setup);
    // One server: every statement of every client meets on it.
    let p = start(pg, &db, &[("PGSIDECAR_POOL_MODE", "transaction"), ("PGSIDECAR_POOL_SIZE", "1")]).await;
    let old = p.connect(&db).await;
    let mood = old.prepare("select $1::text::mood::text").await.unwrap();
    let star = old.prepare("select * from t").await.unwrap();
    assert_eq!(old.query_one(&mood, &[&"a"]).await.unwrap().get::<_, String>(0), "a");
    assert_eq!(old.query_one(&star, &[]).await.unwrap().len(), 3);

    pg.sql(
        &db,
        "drop type mood; create type mood as enum ('a', 'b', 'c'); drop table t; \
         create table t (b text, id int, a bigint); insert into t values ('y', 1, 20); \
         alter table t owner to scram_user",
    );
    let new = p.connect(&db).await;
    let mood2 = new.prepare("select $1::text::mood::text").await.expect("prepared afresh");
    assert_eq!(new.query_one(&mood2, &[&"c"]).await.unwrap().get::<_, String>(0), "c");
    let star2 = new.prepare("select * from t").await.unwrap();
    let row = new.query_one(&star2, &[]).await.unwrap();
    let names: Vec<_> = row.columns().iter().map(|c| c.name().to_owned()).collect();
    assert_eq!(names, ["b", "id", "a"]);
    assert_eq!((row.get::<_, String>(0), row.get::<_, i32>(1), row.get::<_, i64>(2)), ("y".into(), 1, 20));
    // The old client's statement: PostgreSQL's own answer to it.
    let err = old.query(&star, &[]).await.expect_err("its result changed");
    assert_eq!(err.code().map(|c| c.code()), Some("0A000"));
}

/// Issue 21, case 12: SQL EXECUTE of a statement the client prepared through the protocol
/// gets PostgreSQL's answers (those a libpq client gets from PostgreSQL 15 directly: rows,
/// 42601 for a wrong argument count, 26000 once deallocated), on whichever server the
/// transaction gets.
#[tokio::test]
async fn sql_execute_of_a_protocol_statement_works_as_in_postgres() {
    use common::raw;
    use tokio::io::AsyncWriteExt;
    let pg = TestPg::shared();
    let db = pg.create_db("sqlexec");
    let p = start(
        pg,
        &db,
        &[
            ("PGSIDECAR_POOL_MODE", "transaction"),
            ("PGSIDECAR_POOL_SIZE", "2"),
            ("PGSIDECAR_CLIENT_AUTH", "trust"),
        ],
    )
    .await;
    let mut s = raw::trusted_login(p.addr, SCRAM_USER, &db).await;
    s.write_all(&[raw::message(b'P', b"s1\0select $1::int + 1\0\0\0"), raw::message(b'S', b"")].concat())
        .await
        .unwrap();
    assert_eq!(raw::read_until(&mut s, b'Z').await, b"I");
    // Another client holds a server now and then, so the statement meets both servers.
    let other = p.connect(&db).await;
    let busy = tokio::spawn(async move {
        for _ in 0..20 {
            other.simple_query("select pg_sleep(0.005)").await.unwrap();
        }
    });
    async fn answer(s: &mut tokio::net::TcpStream, q: String) -> String {
        use tokio::io::AsyncWriteExt;
        s.write_all(&common::raw::query(&q)).await.unwrap();
        let mut got = String::new();
        loop {
            match common::raw::read_msg(s).await.expect("open") {
                (b'D', body) => got = String::from_utf8_lossy(&body[6..]).into_owned(),
                (b'E', body) => got = sqlstate(&body),
                (b'Z', _) => return got,
                _ => {}
            }
        }
    }
    for i in 0..10 {
        let q = if i % 2 == 0 { format!("execute s1({i})") } else { format!("EXECUTE S1 ({i});") };
        assert_eq!(answer(&mut s, q).await, (i + 1).to_string());
    }
    assert_eq!(answer(&mut s, "execute s1(1, 2)".into()).await, "42601");
    assert_eq!(answer(&mut s, "deallocate s1".into()).await, "");
    assert_eq!(answer(&mut s, "execute s1(1)".into()).await, "26000");
    busy.await.unwrap();
}

/// A statement whose result changed fails inside the client's transaction as it does in
/// PostgreSQL: with 0A000, and the transaction fails with it (what the client wrote before
/// is rolled back at COMMIT). Here the client's transaction gets the server where its
/// statement was never prepared, so pgsidecar prepares it there and finds the new shape.
#[tokio::test]
async fn a_changed_statement_fails_the_transaction_as_in_postgres() {
    let pg = TestPg::shared();
    let db = pg.create_db("stalexact");
    pg.sql(
        &db,
        "create table t (a int); create table w (x int); insert into t values (1); \
         alter table t owner to scram_user; alter table w owner to scram_user",
    );
    let p = start(pg, &db, &[("PGSIDECAR_POOL_MODE", "transaction"), ("PGSIDECAR_POOL_SIZE", "2")]).await;
    async fn pid(c: &tokio_postgres::Client) -> i32 {
        c.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0)
    }
    let a = p.connect(&db).await;
    a.batch_execute("begin").await.unwrap();
    let star = a.prepare("select * from t").await.unwrap();
    let prepared_on = pid(&a).await;
    a.batch_execute("commit").await.unwrap();
    pg.sql(&db, "alter table t add column b int");
    // Two other clients hold both servers; the one holding the other server lets it go.
    let (b, c) = (p.connect(&db).await, p.connect(&db).await);
    b.batch_execute("begin").await.unwrap();
    c.batch_execute("begin").await.unwrap();
    let (pb, pc) = (pid(&b).await, pid(&c).await);
    assert!(pb == prepared_on || pc == prepared_on, "servers {pb} {pc}, prepared on {prepared_on}");
    let free = if pb == prepared_on { &c } else { &b };
    free.batch_execute("commit").await.unwrap();

    a.batch_execute("begin; insert into w values (1)").await.unwrap();
    assert_ne!(pid(&a).await, prepared_on, "the transaction is on the other server");
    let err = a.query(&star, &[]).await.expect_err("its result changed");
    assert_eq!(err.code().map(|c| c.code()), Some("0A000"));
    let err = a.query("select 1", &[]).await.expect_err("the transaction failed");
    assert_eq!(err.code().map(|c| c.code()), Some("25P02"));
    a.batch_execute("commit").await.unwrap();
    assert_eq!(pg.sql(&db, "select count(*) from w").trim(), "0", "the insert was rolled back");
}
