//! Progress on real byte streams: requests that arrive in pieces, large messages, slow readers,
//! pipelines after an error, and bursts of clients. Each test names the case of the issue it
//! pins ("never stall on a real byte stream").
//!
//! The clients here are blocking std sockets with a read timeout on the test's own thread,
//! and the proxy runs on a runtime of its own: a proxy that stops serving fails the test with
//! a message instead of hanging it.

mod common;

use common::blocking::{self, bind, execute, flush, parse, query, shape, sync, Client};
use common::pg::{TestPg, SCRAM_USER};
use common::proxy::{start, TestProxy};
use std::time::{Duration, Instant};

const TRUST: (&str, &str) = ("PGSIDECAR_CLIENT_AUTH", "trust");
const MODES: [&str; 2] = ["transaction", "session"];

/// The proxy's runtime: its own threads (named, so their CPU time can be read).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("proxy-under-test")
        .enable_all()
        .build()
        .unwrap()
}

fn proxy(rt: &tokio::runtime::Runtime, pg: &TestPg, db: &str, extra: &[(&str, &str)]) -> TestProxy {
    let mut env = vec![TRUST];
    env.extend_from_slice(extra);
    rt.block_on(start(pg, db, &env))
}

fn client(p: &TestProxy, db: &str) -> Client {
    Client::tcp(p.addr).login(SCRAM_USER, db)
}

/// CPU time (user + system) of the threads of the proxy's runtime, from /proc.
fn proxy_cpu() -> Duration {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("proxy-under-tes") {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is 3rd, utime 14th, stime 15th.
        let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        ticks += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        ticks += f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    Duration::from_millis(ticks * 10)
}

/// Runs `sql` through the proxy on a fresh connection; the proxy still serves others.
fn still_serves(p: &TestProxy, db: &str) {
    assert_eq!(client(p, db).values("select 'still serving'"), ["still serving"]);
}

/// Case 1: a request whose first message is not wholly in the first read. Transaction mode
/// used to give the server back, see a header, take a server again and loop without reading
/// the socket: 100% CPU and no client served. Every cut of `select 42`, with a pause between
/// the pieces, in both modes.
#[test]
fn a_query_cut_at_any_byte_is_answered() {
    let pg = TestPg::shared();
    let db = pg.create_db("cutquery");
    let rt = runtime();
    for mode in MODES {
        let p = proxy(&rt, pg, &db, &[("PGSIDECAR_POOL_MODE", mode), ("PGSIDECAR_POOL_SIZE", "2")]);
        let mut c = client(&p, &db);
        let q = query("select 42");
        for at in 1..q.len() {
            c.send_split(&q, at, Duration::from_millis(20));
            let got = shape(&c.until_ready());
            assert_eq!(got, ["T", "D [\"42\"]", "C SELECT 1\0", "Z I"], "{mode}: cut at byte {at}");
        }
        still_serves(&p, &db);
    }
}

/// Case 1: messages larger than the first read: a first query of 1.2 kB on a new connection
/// (psql -c), a later Query over 16 kB, an unnamed Parse of 20 kB, a Bind with a 100 kB
/// parameter (pgJDBC's fifth execution). Each is sent whole, as a driver does.
#[test]
fn large_first_messages_are_answered() {
    let pg = TestPg::shared();
    let db = pg.create_db("largefirst");
    let rt = runtime();
    let long = |n: usize| "x".repeat(n);
    for mode in MODES {
        let p = proxy(&rt, pg, &db, &[("PGSIDECAR_POOL_MODE", mode), ("PGSIDECAR_POOL_SIZE", "2")]);
        // The first query of a new connection, 1.2 kB, in the same write as nothing else.
        let mut c = client(&p, &db);
        let sql = format!("select length('{}')", long(1200));
        assert_eq!(c.values(&sql), ["1200"], "{mode}: 1.2 kB first query");
        // A later Query over 16 kB.
        let sql = format!("select length('{}')", long(17_000));
        assert_eq!(c.values(&sql), ["17000"], "{mode}: 17 kB query");
        // An unnamed Parse of 20 kB, then Bind, Execute, Sync in the same write.
        let mut req = parse("", &format!("select length('{}')", long(20_000)));
        req.extend(bind("", &[]));
        req.extend(execute());
        req.extend(sync());
        c.send(&req);
        let got = shape(&c.until_ready());
        assert_eq!(got, ["1", "2", "D [\"20000\"]", "C SELECT 1\0", "Z I"], "{mode}: 20 kB Parse");
        // A Bind with a 100 kB parameter.
        let value = long(100_000);
        let mut req = parse("", "select length($1::text)");
        req.extend(bind("", &[value.as_bytes()]));
        req.extend(execute());
        req.extend(sync());
        c.send(&req);
        let got = shape(&c.until_ready());
        assert_eq!(got, ["1", "2", "D [\"100000\"]", "C SELECT 1\0", "Z I"], "{mode}: 100 kB Bind");
        still_serves(&p, &db);
    }
}

/// Case 1, the way a client on a real network or behind TLS sends: a 64 kB Query one byte per
/// write, through client-facing TLS; meanwhile a client holding half a message costs the
/// proxy no CPU and blocks no one.
#[test]
fn a_64kb_query_in_one_byte_writes_over_tls_is_answered() {
    let pg = TestPg::shared();
    let db = pg.create_db("bytewisetls");
    let dir = tempfile::tempdir().unwrap();
    let tls = common::pg::generate_tls();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, &tls.cert_pem).unwrap();
    std::fs::write(&key, &tls.key_pem).unwrap();
    let rt = runtime();
    for mode in MODES {
        let p = proxy(
            &rt,
            pg,
            &db,
            &[
                ("PGSIDECAR_POOL_MODE", mode),
                // Session mode: the TLS client and the one holding half a message keep theirs.
                ("PGSIDECAR_POOL_SIZE", "3"),
                ("PGSIDECAR_CLIENT_TLS_CERT", cert.to_str().unwrap()),
                ("PGSIDECAR_CLIENT_TLS_KEY", key.to_str().unwrap()),
            ],
        );
        let mut c = blocking::tls(p.tcp, &tls.ca_pem).login(SCRAM_USER, &db);
        let sql = format!("select length('{}')", "y".repeat(64 * 1024));
        c.send_bytewise(&query(&sql));
        let got = shape(&c.until_ready());
        assert_eq!(got, ["T", "D [\"65536\"]", "C SELECT 1\0", "Z I"], "{mode}");

        // Half a message held: others are served, and the proxy does not spin meanwhile.
        let mut half = client(&p, &db);
        let q = query("select 'late'");
        half.send(&q[..7]);
        let (cpu, wall) = (proxy_cpu(), Instant::now());
        for _ in 0..10 {
            still_serves(&p, &db);
            std::thread::sleep(Duration::from_millis(100));
        }
        let used = proxy_cpu().saturating_sub(cpu);
        // A spinning session burns a whole core; ten short sessions cost a few milliseconds.
        assert!(used < wall.elapsed() / 2, "{mode}: the proxy used {used:?} of CPU in {:?}", wall.elapsed());
        half.send(&q[7..]);
        assert_eq!(shape(&half.until_ready())[1], "D [\"late\"]", "{mode}");
    }
}

/// Case 2: a named Parse over 64 KiB sent in two writes (65,000 bytes worked).
#[test]
fn a_named_parse_over_64kib_in_two_writes_is_answered() {
    let pg = TestPg::shared();
    let db = pg.create_db("bigparse");
    let rt = runtime();
    for mode in MODES {
        let p = proxy(&rt, pg, &db, &[("PGSIDECAR_POOL_MODE", mode), ("PGSIDECAR_POOL_SIZE", "2")]);
        let mut c = client(&p, &db);
        for size in [65_000usize, 66_000, 200_000] {
            let name = format!("big{size}");
            let mut req = parse(&name, &format!("select length('{}')", "z".repeat(size)));
            req.extend(sync());
            c.send_split(&req, req.len() / 2, Duration::from_millis(50));
            assert_eq!(shape(&c.until_ready()), ["1", "Z I"], "{mode}: Parse of {size}");
            let mut req = bind(&name, &[]);
            req.extend(execute());
            req.extend(sync());
            c.send_split(&req, 3, Duration::from_millis(20));
            let want = format!("D [\"{size}\"]");
            assert_eq!(shape(&c.until_ready())[..2], ["2".to_string(), want], "{mode}: {size}");
        }
        still_serves(&p, &db);
    }
}

/// Case 3: after an error of ~200 kB (read whole, it grew the server read buffer), a 1 MB
/// result that the client reads late must still arrive whole; then the server is free.
#[test]
fn a_large_result_read_late_after_a_large_error_completes() {
    let pg = TestPg::shared();
    let db = pg.create_db("lateread");
    let rt = runtime();
    for mode in MODES {
        let p = proxy(&rt, pg, &db, &[("PGSIDECAR_POOL_MODE", mode), ("PGSIDECAR_POOL_SIZE", "1")]);
        let mut c = client(&p, &db);
        c.send(&query("do $$ begin raise exception '%', repeat('e', 200000); end $$"));
        let msgs = c.until_ready();
        assert_eq!(blocking::sqlstate(&msgs[0].1), "P0001", "{mode}");
        assert_eq!(blocking::field(&msgs[0].1, b'M').len(), 200_000, "{mode}");
        c.send(&query(
            "select repeat('r', 1048576) union all select repeat('s', 100) from generate_series(1, 10000)",
        ));
        // The client reads nothing for a while: the proxy's buffers fill and it must stop
        // reading the server, then resume when the client reads.
        std::thread::sleep(Duration::from_secs(2));
        let msgs = c.until_ready();
        let rows: Vec<_> = msgs.iter().filter(|(t, _)| *t == b'D').collect();
        assert_eq!(rows.len(), 10_001, "{mode}");
        assert_eq!(blocking::row(&rows[0].1)[0].len(), 1_048_576, "{mode}");
        assert_eq!(c.values("select 'after'"), ["after"], "{mode}");
        if mode == "transaction" {
            still_serves(&p, &db);
        }
    }
}

/// Case 4: a pipeline with an error, a query after it (which PostgreSQL skips up to the Sync),
/// Sync, then Bind/Execute of a statement the server holds and a Flush. The answers, through
/// the proxy in both modes, are PostgreSQL's own.
#[test]
fn a_pipeline_after_an_error_gets_postgres_answers() {
    let pg = TestPg::shared();
    let db = pg.create_db("pipeerror");
    let rt = runtime();
    let script = |c: &mut Client| -> Vec<String> {
        let mut out = Vec::new();
        let mut req = parse("s", "select $1::int * 2");
        req.extend(bind("s", &[b"1"]));
        req.extend(execute());
        req.extend(sync());
        c.send(&req);
        out.extend(shape(&c.until_ready()));
        for extended in [false, true] {
            let mut req = parse("", "select 1/0");
            req.extend(bind("", &[]));
            req.extend(execute());
            if extended {
                req.extend(parse("", "select 2"));
                req.extend(bind("", &[]));
                req.extend(execute());
            } else {
                req.extend(query("select 2"));
            }
            req.extend(sync());
            req.extend(bind("s", &[b"21"]));
            req.extend(execute());
            req.extend(flush());
            c.send(&req);
            // Error, ReadyForQuery, then BindComplete, DataRow, CommandComplete (the Flush).
            out.extend(shape(&c.read_n(5)));
            c.send(&sync());
            out.extend(shape(&c.until_ready()));
        }
        out
    };
    let mut direct = Client::unix(pg.socket_dir(), pg.port()).login("postgres", &db);
    let want = script(&mut direct);
    assert!(want.contains(&"D [\"42\"]".to_string()), "{want:?}");
    for mode in MODES {
        let p = proxy(
            &rt,
            pg,
            &db,
            &[
                ("PGSIDECAR_POOL_MODE", mode),
                ("PGSIDECAR_POOL_SIZE", "2"),
                ("PGSIDECAR_IDLE_TRANSACTION_TIMEOUT", "1s"),
            ],
        );
        let mut c = client(&p, &db);
        assert_eq!(script(&mut c), want, "{mode}");
        // The proxy counts nothing as still owed: a transaction left idle is seen as idle (had
        // it still waited for the skipped query's answer, it would wait forever).
        assert_eq!(c.values("select 'next'"), ["next"], "{mode}");
        c.send(&query("begin"));
        c.until_ready();
        let (t, e) = c.read();
        assert_eq!((t, blocking::sqlstate(&e)), (b'E', "25P03".to_string()), "{mode}");
        still_serves(&p, &db);
    }
}

/// Case 5: the pool keeps growing in a burst. When a connect finished, the pool handed the
/// server to a waiter and started no further connects: in session mode after two warm-ups,
/// only some of ten clients got a server. Now 50 clients burst at a pool of 20 in session
/// mode and all 20 servers open, no client times out.
#[test]
fn a_burst_of_clients_grows_the_pool_to_its_size() {
    let pg = TestPg::shared();
    let db = pg.create_db("burst");
    let rt = runtime();
    let p = proxy(
        &rt,
        pg,
        &db,
        &[
            ("PGSIDECAR_POOL_MODE", "session"),
            ("PGSIDECAR_POOL_SIZE", "20"),
            ("PGSIDECAR_QUERY_WAIT_TIMEOUT", "60s"),
        ],
    );
    // Two warm-ups leave two idle servers.
    drop((client(&p, &db), client(&p, &db)));
    // Each client holds its server until told to go: 20 at a time, then the next 20, ...
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let go_rx = std::sync::Arc::new(std::sync::Mutex::new(go_rx));
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Result<i32, String>>();
    for _ in 0..50 {
        let (addr, db, go, done) = (p.addr, db.clone(), go_rx.clone(), done_tx.clone());
        std::thread::spawn(move || {
            let mut c = Client::tcp(addr);
            c.send(&blocking::startup(&[("user", SCRAM_USER), ("database", &db)]));
            let login = c.until_ready();
            let result = match login.iter().find(|(t, _)| *t == b'E') {
                Some((_, e)) => Err(format!("{} {}", blocking::sqlstate(e), blocking::field(e, b'M'))),
                None => Ok(c.values("select pg_backend_pid()")[0].parse().unwrap()),
            };
            done.send(result).unwrap();
            let _ = go.lock().unwrap().recv();
        });
    }
    let mut pids = std::collections::BTreeSet::new();
    for served in 0..50 {
        let r = done_rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
            panic!("{served} of 50 clients got a server; the pool: {:?}", p.proxy.upstreams()[0].pool.stats())
        });
        pids.insert(r.unwrap_or_else(|e| panic!("client {served}: {e}")));
        if served >= 19 {
            go_tx.send(()).unwrap(); // one leaves, the next one in the queue gets its server
        }
    }
    assert_eq!(pids.len(), 20, "servers used: {pids:?}");
    assert_eq!(p.proxy.upstreams()[0].pool.stats().opened_total, 20);
    drop(go_tx);
}

/// Case 5, transaction mode: ten clients each hold a server in one statement at the same time
/// on a pool of ten (the statements wait on a lock the test holds, so all ten must be running
/// together for any to finish).
#[test]
fn ten_concurrent_statements_run_on_ten_servers_at_once() {
    let pg = TestPg::shared();
    let db = pg.create_db("tenatonce");
    let rt = runtime();
    let p = proxy(&rt, pg, &db, &[("PGSIDECAR_POOL_SIZE", "10"), ("PGSIDECAR_QUERY_WAIT_TIMEOUT", "60s")]);
    drop((client(&p, &db), client(&p, &db)));
    let mut holder = Client::unix(pg.socket_dir(), pg.port()).login("postgres", &db);
    holder.values("select pg_advisory_lock(7)");
    let mut clients: Vec<Client> = (0..10).map(|_| client(&p, &db)).collect();
    for c in &mut clients {
        c.send(&query("select pg_advisory_lock_shared(7), pg_advisory_unlock_shared(7)"));
    }
    let mut watch = Client::unix(pg.socket_dir(), pg.port()).login("postgres", &db);
    let started = Instant::now();
    let sql =
        format!("select count(*) from pg_stat_activity where datname = '{db}' and wait_event_type = 'Lock'");
    loop {
        let waiting: i64 = watch.values(&sql)[0].parse().unwrap();
        if waiting == 10 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{waiting} of 10 statements reached the server; the pool: {:?}",
            p.proxy.upstreams()[0].pool.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    holder.values("select pg_advisory_unlock(7)");
    for c in &mut clients {
        assert!(!c.until_ready().iter().any(|(t, _)| *t == b'E'));
    }
}
