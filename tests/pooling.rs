//! Transaction and session pooling behaviour: queueing, timeouts, cancel, clean hand-over of
//! servers between clients, settings isolation, COPY, NOTIFY.

mod common;

use common::{code, first_value};

use common::pg::TestPg;
use common::proxy::{self, start};
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use std::time::{Duration, Instant};
use tokio_postgres::{AsyncMessage, SimpleQueryMessage};

/// Waits until the pool reports `n` waiting clients.
async fn until_waiting(p: &proxy::TestProxy, n: usize) {
    let pool = p.proxy.upstreams()[0].pool.clone();
    tokio::time::timeout(Duration::from_secs(10), async {
        while pool.stats().waiting < n {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("clients queued");
}

#[tokio::test]
async fn cancel_reaches_the_running_query() {
    let pg = TestPg::shared();
    let db = pg.create_db("cancel");
    let p = start(pg, &db, &[]).await;
    let c = p.connect(&db).await;
    let token = c.cancel_token();
    let started = Instant::now();
    let q = tokio::spawn(async move { c.simple_query("select pg_sleep(10)").await.map(|_| c) });
    // Wait until the query is really running on the server, then cancel.
    while proxy::server_count(pg, &db) == 0
        || pg.sql("postgres", &format!("select count(*) from pg_stat_activity where datname='{db}' and query like 'select pg_sleep(10)%' and state='active'")) != "1"
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = q.await.unwrap().expect_err("cancelled");
    assert_eq!(code(&err), "57014");
    assert!(started.elapsed() < Duration::from_secs(9));
}

#[tokio::test]
async fn cancel_of_a_queued_client_takes_it_out_of_the_queue() {
    let pg = TestPg::shared();
    let db = pg.create_db("cancelq");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_SIZE", "1")]).await;
    let holder = p.connect(&db).await;
    holder.simple_query("begin; select 1").await.unwrap();
    let waiter = p.connect(&db).await;
    let token = waiter.cancel_token();
    let q = tokio::spawn(async move { waiter.simple_query("select 'ran'").await.map(|_| waiter) });
    until_waiting(&p, 1).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = q.await.unwrap().expect_err("cancelled while queued");
    assert_eq!(code(&err), "57014");
    assert_eq!(p.proxy.upstreams()[0].pool.stats().waiting, 0);
    holder.simple_query("commit").await.unwrap();
}

#[tokio::test]
async fn queued_client_can_continue_after_cancel_and_wait_timeout() {
    let pg = TestPg::shared();
    let db = pg.create_db("waitto");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_SIZE", "1"), ("PGSIDECAR_QUERY_WAIT_TIMEOUT", "200ms")]).await;
    let holder = p.connect(&db).await;
    holder.simple_query("begin; select 1").await.unwrap();
    let c = p.connect(&db).await;
    let err = c.simple_query("select 2").await.expect_err("wait timeout");
    assert_eq!(code(&err), "53300");
    let msg = err.as_db_error().unwrap().message().to_owned();
    assert!(msg.contains("PGSIDECAR_QUERY_WAIT_TIMEOUT"), "{msg}");
    // Extended protocol request is skipped up to its Sync as well.
    let err =
        c.query_typed("select $1::int", &[(&5i32, tokio_postgres::types::Type::INT4)]).await.err().unwrap();
    assert_eq!(code(&err), "53300");
    holder.simple_query("commit").await.unwrap();
    // Same connection, now served.
    assert_eq!(first_value(&c.simple_query("select 3").await.unwrap()), "3");
    let rows = c.query_typed("select $1::int", &[(&5i32, tokio_postgres::types::Type::INT4)]).await.unwrap();
    assert_eq!(rows[0].get::<_, i32>(0), 5);
}

/// The pool keeps one timer for all its waiters (the oldest one's deadline): a later waiter
/// must still get its whole PGSIDECAR_QUERY_WAIT_TIMEOUT, and the oldest one no more.
#[tokio::test]
async fn every_queued_client_gets_its_own_full_wait_timeout() {
    let pg = TestPg::shared();
    let db = pg.create_db("waitown");
    let limit = Duration::from_millis(600);
    let p = start(pg, &db, &[("PGSIDECAR_POOL_SIZE", "1"), ("PGSIDECAR_QUERY_WAIT_TIMEOUT", "600ms")]).await;
    let holder = p.connect(&db).await;
    holder.simple_query("begin; select 1").await.unwrap();
    let wait = |c: tokio_postgres::Client| {
        let started = Instant::now();
        tokio::spawn(async move {
            let err = c.simple_query("select 2").await.expect_err("wait timeout");
            (code(&err), started.elapsed(), c)
        })
    };
    let first = wait(p.connect(&db).await);
    until_waiting(&p, 1).await;
    // The second waiter's deadline falls well after the first one's.
    tokio::time::sleep(limit / 2).await;
    let second = wait(p.connect(&db).await);
    let (code1, waited1, _c1) = first.await.unwrap();
    let (code2, waited2, _c2) = second.await.unwrap();
    assert_eq!((code1.as_str(), code2.as_str()), ("53300", "53300"));
    assert!(waited1 >= limit && waited2 >= limit, "refused after {waited1:?} and {waited2:?}");
    assert_eq!(p.proxy.upstreams()[0].pool.stats().waiting, 0);
    holder.simple_query("commit").await.unwrap();
}

#[tokio::test]
async fn max_client_conn_refuses_with_53300() {
    let pg = TestPg::shared();
    let db = pg.create_db("maxcl");
    let p = start(pg, &db, &[("PGSIDECAR_MAX_CLIENT_CONN", "2")]).await;
    let _a = p.connect(&db).await;
    let _b = p.connect(&db).await;
    let err = p.connect_with(&db, "").await.expect_err("third client refused");
    assert_eq!(code(&err), "53300");
    drop(_a);
    // The slot frees when a client leaves.
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if p.connect_with(&db, "").await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a slot frees up");
}

#[tokio::test]
async fn client_leaving_mid_transaction_never_hands_a_dirty_server_over() {
    let pg = TestPg::shared();
    let db = pg.create_db("dirty");
    pg.sql(&db, "create table t(v int); alter table t owner to scram_user");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_SIZE", "1")]).await;
    {
        let a = p.connect(&db).await;
        a.simple_query("begin; insert into t values (1)").await.unwrap();
        drop(a);
    }
    let b = p.connect(&db).await;
    // Same single server: it must not be inside A's transaction.
    assert_eq!(first_value(&b.simple_query("select count(*) from t").await.unwrap()), "0");
    assert_eq!(first_value(&b.simple_query("select now() = statement_timestamp()").await.unwrap()), "t");
    assert_eq!(proxy::server_count(pg, &db), 1);
}

#[tokio::test]
async fn settings_follow_each_client_and_never_leak() {
    let pg = TestPg::shared();
    let db = pg.create_db("settings");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_SIZE", "1")]).await;
    let a = p
        .connect_with(&db, "options='-c TimeZone=Asia/Tokyo -c statement_timeout=5s' application_name=app_a")
        .await
        .unwrap();
    let b = p.connect_with(&db, "application_name=app_b").await.unwrap();
    let tz = pg.sql(&db, "show timezone");
    let b_default = format!("{tz}|0|app_b|\"$user\", public");
    let show = "select current_setting('TimeZone') || '|' || current_setting('statement_timeout') || '|' || current_setting('application_name') || '|' || current_setting('search_path')";
    for _ in 0..3 {
        assert_eq!(
            first_value(&a.simple_query(show).await.unwrap()),
            "Asia/Tokyo|5s|app_a|\"$user\", public"
        );
        assert_eq!(first_value(&b.simple_query(show).await.unwrap()), b_default);
    }
    // SET outside a transaction sticks to the client that ran it.
    b.simple_query("set search_path = pg_catalog, public").await.unwrap();
    b.simple_query("set TimeZone = 'America/New_York'").await.unwrap();
    assert_eq!(first_value(&a.simple_query(show).await.unwrap()), "Asia/Tokyo|5s|app_a|\"$user\", public");
    assert_eq!(
        first_value(&b.simple_query(show).await.unwrap()),
        "America/New_York|0|app_b|pg_catalog, public"
    );
    // RESET goes back to the startup value; SET LOCAL vanishes at commit.
    a.simple_query("reset TimeZone").await.unwrap();
    a.simple_query("begin; set local statement_timeout = '1s'; commit").await.unwrap();
    assert_eq!(first_value(&a.simple_query(show).await.unwrap()), "Asia/Tokyo|5s|app_a|\"$user\", public");
    assert_eq!(
        first_value(&b.simple_query(show).await.unwrap()),
        "America/New_York|0|app_b|pg_catalog, public"
    );
}

#[tokio::test]
async fn copy_both_directions_streams_every_row() {
    let pg = TestPg::shared();
    let db = pg.create_db("copy");
    pg.sql(&db, "create table c(id int, t text); alter table c owner to scram_user");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_SIZE", "2")]).await;
    let c = p.connect(&db).await;
    let sink = c.copy_in("copy c from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    let mut chunk = Vec::new();
    for i in 0..50_000 {
        chunk.extend_from_slice(format!("{i}\trow {i}\n").as_bytes());
        if chunk.len() > 32 * 1024 {
            sink.send(bytes::Bytes::from(std::mem::take(&mut chunk))).await.unwrap();
        }
    }
    sink.send(bytes::Bytes::from(chunk)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 50_000);
    let out = c.copy_out("copy (select * from c order by id) to stdout").await.unwrap();
    let data: Vec<bytes::Bytes> = out.try_collect().await.unwrap();
    let text: String = data.iter().map(|b| std::str::from_utf8(b).unwrap()).collect();
    assert_eq!(text.lines().count(), 50_000);
    assert_eq!(text.lines().nth(49_999), Some("49999\trow 49999"));
    // A failed COPY leaves the client usable.
    let sink = c.copy_in::<_, bytes::Bytes>("copy c from stdin").await.unwrap();
    drop(sink); // sends CopyFail
    assert_eq!(first_value(&c.simple_query("select count(*) from c").await.unwrap()), "50000");
}

#[tokio::test]
async fn large_results_stream_through() {
    let pg = TestPg::shared();
    let db = pg.create_db("large");
    let p = start(pg, &db, &[("PGSIDECAR_MAX_MESSAGE_SIZE", "1MiB")]).await;
    let c = p.connect(&db).await;
    // Each row is 4 MiB, larger than the proxy's message limit for messages it must read
    // whole: DataRows are streamed, never buffered whole.
    let rows = c.simple_query("select repeat('x', 4*1024*1024) from generate_series(1, 16)").await.unwrap();
    let lens: Vec<usize> = rows
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().len()),
            _ => None,
        })
        .collect();
    assert_eq!(lens, vec![4 * 1024 * 1024; 16]);
}

#[tokio::test]
async fn session_mode_shows_the_real_backend_pid_and_delivers_notify() {
    let pg = TestPg::shared();
    let db = pg.create_db("session");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_MODE", "session"), ("PGSIDECAR_POOL_SIZE", "2")]).await;
    let conn_str = format!(
        "host=127.0.0.1 port={} user=scram_user password='{}' dbname={db}",
        p.port(),
        common::pg::SCRAM_PASS
    );
    let (listener, mut connection) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(stream.for_each(move |m| {
        if let Ok(AsyncMessage::Notification(n)) = m {
            let _ = tx.send((n.process_id(), n.payload().to_owned()));
        }
        futures_util::future::ready(())
    }));
    listener.simple_query("listen chan").await.unwrap();
    let talker = p.connect(&db).await;
    let talker_pid: i32 =
        first_value(&talker.simple_query("select pg_backend_pid()").await.unwrap()).parse().unwrap();
    talker.simple_query("notify chan, 'hello'").await.unwrap();
    let (pid, payload) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert_eq!(payload, "hello");
    // The sender pid in the notification is the real backend pid, the one the talker sees.
    assert_eq!(pid, talker_pid);
    // Session settings persist and are discarded before another client gets the server.
    listener.simple_query("set statement_timeout = '7s'").await.unwrap();
    assert_eq!(first_value(&listener.simple_query("show statement_timeout").await.unwrap()), "7s");
    drop(listener);
    drop(talker);
    let c1 = p.connect(&db).await;
    let c2 = p.connect(&db).await;
    for c in [&c1, &c2] {
        assert_eq!(first_value(&c.simple_query("show statement_timeout").await.unwrap()), "0");
    }
}

#[tokio::test]
async fn waiting_clients_are_served_first_come_first_served() {
    let pg = TestPg::shared();
    let db = pg.create_db("fifo");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_SIZE", "1")]).await;
    let holder = p.connect(&db).await;
    holder.simple_query("begin; select 1").await.unwrap();
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..6 {
        let c = p.connect(&db).await;
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            c.simple_query(&format!("select {i}")).await.unwrap();
            order.lock().unwrap().push(i);
        }));
        // Queue them in a known order.
        until_waiting(&p, i + 1).await;
    }
    holder.simple_query("commit").await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn idle_servers_above_the_minimum_are_closed_and_the_minimum_is_kept() {
    let pg = TestPg::shared();
    let db = pg.create_db("idlemin");
    let p = start(
        pg,
        &db,
        &[
            ("PGSIDECAR_POOL_SIZE", "4"),
            ("PGSIDECAR_MIN_POOL_SIZE", "2"),
            ("PGSIDECAR_SERVER_IDLE_TIMEOUT", "300ms"),
        ],
    )
    .await;
    // The maintenance task opens the minimum by itself.
    let pool = p.proxy.upstreams()[0].pool.clone();
    tokio::time::timeout(Duration::from_secs(10), async {
        while pool.stats().idle < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("minimum pool opened");
    // Four busy clients grow the pool to 4; once idle, it shrinks back to 2.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = p.connect(&db).await;
        tasks.push(tokio::spawn(async move { c.simple_query("select pg_sleep(0.3)").await.unwrap() }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(pool.stats().idle, 4);
    tokio::time::timeout(Duration::from_secs(10), async {
        while pool.stats().idle > 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("idle servers closed");
    assert_eq!(pool.stats().idle, 2);
    assert!(pool.stats().closed_by[0] >= 2, "{:?}", pool.stats());
}

/// A message that gets no answer (here CopyData outside COPY, which Postgres ignores, as a
/// client sends it after a COPY failed) still lets the server go back to the pool at once:
/// the client that sent it is idle, and the next client gets the server.
#[tokio::test]
async fn a_message_without_an_answer_does_not_keep_the_server() {
    let pg = TestPg::shared();
    let db = pg.create_db("noanswer");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_SIZE", "1"), ("PGSIDECAR_CLIENT_AUTH", "trust")]).await;
    let holder = p.connect(&db).await;
    holder.simple_query("begin; select 1").await.unwrap();
    let mut stray = common::raw::trusted_login(p.addr, common::pg::SCRAM_USER, &db).await;
    tokio::io::AsyncWriteExt::write_all(&mut stray, &common::raw::message(b'd', b"late row\n"))
        .await
        .unwrap();
    until_waiting(&p, 1).await;
    // The holder's commit hands the server to the stray CopyData, which Postgres ignores.
    holder.simple_query("commit").await.unwrap();
    let pool = p.proxy.upstreams()[0].pool.clone();
    common::watch::until(Duration::from_secs(10), "the server back in the pool", || {
        let s = pool.stats();
        async move { s.waiting == 0 && s.active == 0 && s.idle == 1 }
    })
    .await;
    let rows = holder.simple_query("select 'next'").await.unwrap();
    assert_eq!(first_value(&rows), "next");
    // The stray client's connection still works.
    tokio::io::AsyncWriteExt::write_all(&mut stray, &common::raw::query("select 1")).await.unwrap();
    common::raw::read_until(&mut stray, b'Z').await;
}
