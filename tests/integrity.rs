//! Nothing lost, duplicated or delivered to the wrong client: many clients on a pool of 4 in
//! transaction mode mix simple, extended, prepared, pipelined, transactional, COPY, SET and
//! cancelled queries whose results carry the client's id and a per-client sequence number;
//! every result is checked against what that client asked for.
//!
//! `PGSIDECAR_INTEGRITY_QUERIES` sets the number of statements (default 100,000).

mod common;

use bytes::Bytes;
use common::pg::{pg_tool, TestPg, SCRAM_PASS, SCRAM_USER};
use common::proxy::start;
use common::watch;
use futures_util::{SinkExt, TryStreamExt};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

const DEFAULT_QUERIES: u64 = 100_000;
const POOL_SIZE: i64 = 4;
/// tokio-postgres clients running the mixed workload.
const CLIENTS: i32 = 48;
/// In the test with cancels, this many of them (ids 0 and 1) only cancel: their cancels must
/// never reach anyone else.
const CANCELLERS: i32 = 2;
/// psql processes looping beside them (ids 1000, 1001).
const PSQL_CLIENTS: i32 = 2;
/// Longest any one operation may take before its results count as lost.
const OP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
enum Kind {
    Simple,
    Extended,
    Prepared,
    Transaction,
    Pipeline,
    CopyIn,
    CopyOut,
    Set,
    Cancel,
    Psql,
}

const KIND_NAMES: [&str; 10] = [
    "simple",
    "extended",
    "prepared",
    "transaction",
    "pipeline",
    "copy_in",
    "copy_out",
    "set",
    "cancel",
    "psql",
];

#[derive(Default)]
struct Tally {
    /// Statements sent (the stop condition).
    sent: AtomicU64,
    /// Statements that completed as expected, per kind.
    statements: [AtomicU64; 10],
    /// (id, seq) values expected and values received correctly.
    expected: AtomicU64,
    received: AtomicU64,
    wrong: AtomicU64,
    duplicated: AtomicU64,
    lost: AtomicU64,
    errors: AtomicU64,
    /// Cancelled as asked (57014).
    cancelled: AtomicU64,
    /// Rows inserted by committed transactions and by COPY.
    inserted: AtomicU64,
    copied: AtomicU64,
    samples: Mutex<Vec<String>>,
}

impl Tally {
    fn sample(&self, what: String) {
        let mut s = self.samples.lock().unwrap();
        if s.len() < 20 {
            s.push(what);
        }
    }

    fn done(&self, kind: Kind, statements: u64) {
        self.statements[kind as usize].fetch_add(statements, Relaxed);
    }

    fn total_statements(&self) -> u64 {
        self.statements.iter().map(|a| a.load(Relaxed)).sum()
    }
}

/// One client's bookkeeping: sequence numbers handed out and results seen.
struct Ledger {
    id: i32,
    next: i64,
    issued: u64,
    seen: HashSet<i64>,
    tally: Arc<Tally>,
}

impl Ledger {
    fn new(id: i32, tally: Arc<Tally>) -> Ledger {
        Ledger { id, next: 1, issued: 0, seen: HashSet::new(), tally }
    }

    /// The next sequence number; a result carrying it is now expected.
    fn seq(&mut self) -> i64 {
        let s = self.next;
        self.next += 1;
        self.issued += 1;
        self.tally.expected.fetch_add(1, Relaxed);
        s
    }

    /// A result arrived where `expected` was due, carrying `(id, seq)`.
    fn check(&mut self, kind: Kind, expected: i64, id: i64, seq: i64) -> bool {
        if id != self.id as i64 || seq != expected {
            self.tally.wrong.fetch_add(1, Relaxed);
            self.tally.sample(format!(
                "client {} {kind:?}: expected ({}, {expected}), got ({id}, {seq})",
                self.id, self.id
            ));
            false
        } else if !self.seen.insert(seq) {
            self.tally.duplicated.fetch_add(1, Relaxed);
            self.tally.sample(format!("client {} {kind:?}: ({id}, {seq}) delivered twice", self.id));
            false
        } else {
            self.tally.received.fetch_add(1, Relaxed);
            true
        }
    }

    fn error(&self, kind: Kind, e: impl std::fmt::Display) {
        self.tally.errors.fetch_add(1, Relaxed);
        self.tally.sample(format!("client {} {kind:?}: {e}", self.id));
    }

    fn finish(&self) {
        let lost = self.issued - self.seen.len() as u64;
        self.tally.lost.fetch_add(lost, Relaxed);
    }
}

fn rows_of(msgs: &[SimpleQueryMessage]) -> Vec<Vec<String>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).unwrap_or("NULL").to_owned()).collect())
            }
            _ => None,
        })
        .collect()
}

fn num(s: &str) -> i64 {
    s.parse().unwrap_or(i64::MIN)
}

fn code_of(e: &tokio_postgres::Error) -> String {
    common::code(e)
}

/// Statements a mixed-workload client prepares once and reuses.
struct Prepared {
    echo: tokio_postgres::Statement,
    insert: tokio_postgres::Statement,
}

async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{} ({})", e, code_of(&e))),
        Err(_) => Err(format!("no answer within {OP_TIMEOUT:?}")),
    }
}

/// One round of the mixed workload; `Err` stops the client (its connection state is unknown).
async fn mixed_round(
    c: &mut Client,
    l: &mut Ledger,
    st: &Prepared,
    round: u64,
    last_tag: &mut Option<(String, String)>,
) -> Result<(), String> {
    let id = l.id;
    let tally = l.tally.clone();
    let kind = match (round + id as u64) % 9 {
        0 | 8 => Kind::Simple,
        1 => Kind::Extended,
        2 => Kind::Prepared,
        3 => Kind::Transaction,
        4 => Kind::Pipeline,
        5 => Kind::CopyIn,
        6 => Kind::CopyOut,
        _ => Kind::Set,
    };
    let fail = |l: &Ledger, e: String| {
        l.error(kind, &e);
        e
    };
    match kind {
        Kind::Simple => {
            let (a, b) = (l.seq(), l.seq());
            tally.sent.fetch_add(2, Relaxed);
            let msgs = timed(c.simple_query(&format!(
                "select {id}, {a}, 'simple'; select {id} as client, {b} as seq, repeat('x', {b} % 100)"
            )))
            .await
            .map_err(|e| fail(l, e))?;
            let rows = rows_of(&msgs);
            if rows.len() != 2 {
                return Err(fail(l, format!("simple: {} rows", rows.len())));
            }
            l.check(kind, a, num(&rows[0][0]), num(&rows[0][1]));
            l.check(kind, b, num(&rows[1][0]), num(&rows[1][1]));
            tally.done(kind, 2);
        }
        Kind::Extended => {
            let s = l.seq();
            tally.sent.fetch_add(1, Relaxed);
            let rows = timed(c.query_typed(
                "select $1::int4, $2::int8, $2::int8 * 7 + $1::int4",
                &[(&id, Type::INT4), (&s, Type::INT8)],
            ))
            .await
            .map_err(|e| fail(l, e))?;
            let (gid, gseq, mix): (i32, i64, i64) = (rows[0].get(0), rows[0].get(1), rows[0].get(2));
            if l.check(kind, s, gid as i64, gseq) && mix != s * 7 + id as i64 {
                return Err(fail(l, format!("extended: computed {mix}")));
            }
            tally.done(kind, 1);
        }
        Kind::Prepared => {
            for _ in 0..2 {
                let s = l.seq();
                tally.sent.fetch_add(1, Relaxed);
                let row = timed(c.query_one(&st.echo, &[&id, &s])).await.map_err(|e| fail(l, e))?;
                let (gid, gseq): (i32, i64) = (row.get(0), row.get(1));
                l.check(kind, s, gid as i64, gseq);
            }
            tally.done(kind, 2);
        }
        Kind::Transaction => {
            let (a, b, x) = (l.seq(), l.seq(), l.seq());
            tally.sent.fetch_add(6, Relaxed);
            let r: Result<(), String> = async {
                let t = timed(c.transaction()).await?;
                timed(t.execute(&st.insert, &[&id, &a])).await?;
                timed(t.execute(&st.insert, &[&id, &b])).await?;
                // Both rows visible inside the transaction, and only them.
                let rows = timed(t.query(
                    "select client, seq, txid_current() from integrity_rows where client = $1 and seq in ($2, $3) order by seq",
                    &[&id, &a, &b],
                ))
                .await?;
                if rows.len() != 2 {
                    return Err(format!("transaction: {} rows visible", rows.len()));
                }
                for (row, want) in rows.iter().zip([a, b]) {
                    l.check(kind, want, row.get::<_, i32>(0) as i64, row.get(1));
                }
                let xid: i64 = rows[0].get(2);
                // The same transaction throughout: the same xid on a later statement.
                let row = timed(t.query_one(&st.echo, &[&id, &x])).await?;
                l.check(kind, x, row.get::<_, i32>(0) as i64, row.get(1));
                let again: i64 =
                    timed(t.query_one("select txid_current()", &[])).await?.get(0);
                if again != xid {
                    return Err(format!("transaction: xid {xid} then {again}"));
                }
                timed(t.commit()).await?;
                Ok(())
            }
            .await;
            r.map_err(|e| fail(l, e))?;
            tally.inserted.fetch_add(2, Relaxed);
            tally.done(kind, 6);
        }
        Kind::Pipeline => {
            let seqs: Vec<i64> = (0..8).map(|_| l.seq()).collect();
            tally.sent.fetch_add(8, Relaxed);
            let c: &Client = c;
            let one = |k: usize| {
                let s = &seqs[k];
                async move {
                    if k % 2 == 0 {
                        let params: [(&(dyn ToSql + Sync), Type); 2] = [(&id, Type::INT4), (s, Type::INT8)];
                        timed(c.query_typed("select $1::int4, $2::int8", &params)).await
                    } else {
                        timed(c.query(&st.echo, &[&id, s])).await
                    }
                }
            };
            // All eight are written before the first answer is read.
            let (r0, r1, r2, r3, r4, r5, r6, r7) =
                tokio::join!(one(0), one(1), one(2), one(3), one(4), one(5), one(6), one(7));
            let results = [r0, r1, r2, r3, r4, r5, r6, r7];
            for (s, r) in seqs.iter().zip(results) {
                let rows = r.map_err(|e| fail(l, e))?;
                l.check(kind, *s, rows[0].get::<_, i32>(0) as i64, rows[0].get(1));
            }
            tally.done(kind, 8);
        }
        Kind::CopyIn => {
            let seqs: Vec<i64> = (0..20).map(|_| l.seq()).collect();
            tally.sent.fetch_add(2, Relaxed);
            let data: String = seqs.iter().map(|s| format!("{id}\t{s}\n")).collect();
            let r: Result<u64, String> = async {
                let sink = timed(c.copy_in("copy integrity_copied (client, seq) from stdin")).await?;
                futures_util::pin_mut!(sink);
                // Two chunks, so CopyData really arrives in pieces.
                let half = data.len() / 2;
                timed(sink.send(Bytes::copy_from_slice(&data.as_bytes()[..half]))).await?;
                timed(sink.send(Bytes::copy_from_slice(&data.as_bytes()[half..]))).await?;
                timed(sink.finish()).await
            }
            .await;
            let n = r.map_err(|e| fail(l, e))?;
            if n != 20 {
                return Err(fail(l, format!("copy in: {n} rows")));
            }
            let rows = timed(c.query(
                "select client, seq from integrity_copied where client = $1 and seq between $2 and $3 order by seq",
                &[&id, &seqs[0], &seqs[19]],
            ))
            .await
            .map_err(|e| fail(l, e))?;
            for (k, row) in rows.iter().enumerate() {
                l.check(kind, seqs.get(k).copied().unwrap_or(-1), row.get::<_, i32>(0) as i64, row.get(1));
            }
            tally.copied.fetch_add(20, Relaxed);
            tally.done(kind, 2);
        }
        Kind::CopyOut => {
            let seqs: Vec<i64> = (0..50).map(|_| l.seq()).collect();
            tally.sent.fetch_add(1, Relaxed);
            let r: Result<Vec<Bytes>, String> = async {
                let stream = timed(c.copy_out(&format!(
                    "copy (select {id}, s from generate_series({}, {}) s) to stdout",
                    seqs[0], seqs[49]
                )))
                .await?;
                timed(stream.try_collect::<Vec<Bytes>>()).await
            }
            .await;
            let chunks = r.map_err(|e| fail(l, e))?;
            let text: String = chunks.iter().map(|b| String::from_utf8_lossy(b)).collect();
            let mut lines = 0;
            for (k, line) in text.lines().enumerate() {
                let (a, b) = line.split_once('\t').unwrap_or((line, ""));
                l.check(kind, seqs.get(k).copied().unwrap_or(-1), num(a), num(b));
                lines += 1;
            }
            if lines != 50 {
                return Err(fail(l, format!("copy out: {lines} lines")));
            }
            tally.done(kind, 1);
        }
        Kind::Set => {
            // What the previous SET left (many transactions ago, most likely on another
            // server): application_name is reported by the server (ParameterStatus), lock_timeout
            // is not.
            let read = |s: i64| {
                format!(
                    "select current_setting('application_name'), \
                     (select setting from pg_settings where name = 'lock_timeout'), {id}, {s}"
                )
            };
            let s = l.seq();
            tally.sent.fetch_add(4, Relaxed);
            let rows = rows_of(&timed(c.simple_query(&read(s))).await.map_err(|e| fail(l, e))?);
            l.check(kind, s, num(&rows[0][2]), num(&rows[0][3]));
            let want = last_tag.clone().unwrap_or_else(|| ("integrity".into(), "0".into()));
            if (&rows[0][0], &rows[0][1]) != (&want.0, &want.1) {
                l.tally.wrong.fetch_add(1, Relaxed);
                l.tally.sample(format!("client {id} Set: settings are {:?}, set {want:?}", &rows[0][..2]));
            }
            let s2 = l.seq();
            let tag = (format!("c{id}_s{s2}"), (1_000_000 + id as i64 * 10_000 + s2 % 10_000).to_string());
            timed(
                c.simple_query(&format!("set application_name = '{}'; set lock_timeout = {}", tag.0, tag.1)),
            )
            .await
            .map_err(|e| fail(l, e))?;
            *last_tag = Some(tag.clone());
            let rows = rows_of(&timed(c.simple_query(&read(s2))).await.map_err(|e| fail(l, e))?);
            l.check(kind, s2, num(&rows[0][2]), num(&rows[0][3]));
            if (&rows[0][0], &rows[0][1]) != (&tag.0, &tag.1) {
                l.tally.wrong.fetch_add(1, Relaxed);
                l.tally.sample(format!("client {id} Set: read back {:?}, set {tag:?}", &rows[0][..2]));
            }
            tally.done(kind, 4);
        }
        _ => unreachable!(),
    }
    Ok(())
}

/// A client that only cancels: a long `pg_sleep`, cancelled once it runs on a server, must
/// end with 57014 (and no one else's query may be cancelled). It runs inside a transaction,
/// which keeps the server this client's until its ROLLBACK: a cancel of an autocommit
/// statement could also hit the next client's statement on that server before servers were
/// held back until their cancels settled (`a_cancel_never_reaches_the_next_client_of_its_server`).
async fn cancel_round(c: &Client, l: &mut Ledger, watch: &Client) -> Result<(), String> {
    let (id, kind) = (l.id, Kind::Cancel);
    let tally = l.tally.clone();
    let token = c.cancel_token();
    let s = l.seq();
    tally.sent.fetch_add(3, Relaxed);
    let marker = format!("cancel-me-{id}-{s}");
    timed(c.simple_query("begin")).await.inspect_err(|e| l.error(kind, e))?;
    let sql = format!("select pg_sleep(60), {id}, {s}, '{marker}'");
    let q = c.simple_query(&sql);
    tokio::pin!(q);
    // Wait (asking PostgreSQL directly) until the query runs on a server, then cancel.
    let running = format!(
        "select count(*) from pg_stat_activity where state = 'active' and pid <> pg_backend_pid() \
         and query like '%{marker}%'"
    );
    let deadline = Instant::now() + OP_TIMEOUT;
    loop {
        tokio::select! {
            r = &mut q => {
                let e = format!("query meant to be cancelled ended early: {:?}", r.map(|m| rows_of(&m)));
                l.error(kind, &e);
                return Err(e);
            }
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
        if watch::value(watch, &running).await == "1" {
            break;
        }
        if Instant::now() > deadline {
            l.error(kind, "never ran");
            return Err("never ran".into());
        }
    }
    timed(token.cancel_query(tokio_postgres::NoTls)).await.inspect_err(|e| l.error(kind, e))?;
    match tokio::time::timeout(OP_TIMEOUT, q).await {
        Ok(Err(e)) if code_of(&e) == "57014" => {
            // The error is this query's result.
            l.check(kind, s, id as i64, s);
            tally.cancelled.fetch_add(1, Relaxed);
        }
        other => {
            let e = format!("cancelled query: {:?}", other.map(|r| r.map(|m| rows_of(&m))));
            l.error(kind, &e);
            return Err(e);
        }
    }
    // As with PostgreSQL alone, the cancel may also reach this session's next statement
    // (PostgreSQL signals the backend twice); the ROLLBACK is retried then.
    let mut tries = 0;
    loop {
        tries += 1;
        match timed(c.simple_query("rollback")).await {
            Ok(_) => break,
            Err(e) if e.contains("57014") && tries < 3 => continue,
            Err(e) => {
                l.error(kind, &e);
                return Err(e);
            }
        }
    }
    tally.done(kind, 3);
    Ok(())
}

/// psql sessions of `per_run` statements each, until the target is reached; every output
/// line is checked.
fn psql_client(port: u16, db: String, id: i32, target: u64, tally: Arc<Tally>) {
    let mut l = Ledger::new(id, tally.clone());
    let per_run = 200;
    while tally.sent.load(Relaxed) < target {
        let seqs: Vec<i64> = (0..per_run).map(|_| l.seq()).collect();
        tally.sent.fetch_add(per_run as u64, Relaxed);
        let script: String = seqs.iter().map(|s| format!("select {id}, {s};\n")).collect();
        let mut child = std::process::Command::new(pg_tool("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .args(["-U", SCRAM_USER, "-d", &db])
            .env("PGPASSWORD", SCRAM_PASS)
            .env("PGSSLMODE", "disable")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn psql");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            l.error(Kind::Psql, String::from_utf8_lossy(&out.stderr));
            break;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = 0;
        for (k, line) in text.lines().enumerate() {
            let (a, b) = line.split_once('|').unwrap_or((line, ""));
            l.check(Kind::Psql, seqs.get(k).copied().unwrap_or(-1), num(a), num(b));
            lines += 1;
        }
        if lines == per_run {
            tally.done(Kind::Psql, per_run as u64);
        }
    }
    l.finish();
}

fn target() -> u64 {
    std::env::var("PGSIDECAR_INTEGRITY_QUERIES")
        .ok()
        .map(|v| v.parse().expect("PGSIDECAR_INTEGRITY_QUERIES is a number"))
        .unwrap_or(DEFAULT_QUERIES)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_on_a_pool_of_4_get_exactly_their_own_results() {
    mixed_workload(target(), 0).await;
}

/// The same with two of the clients cancelling long statements inside transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_amid_many_clients_reach_only_their_own_statement() {
    mixed_workload(target().min(30_000), CANCELLERS).await;
}

async fn mixed_workload(target: u64, cancellers: i32) {
    let pg = TestPg::shared();
    let db = pg.create_db("integrity");
    pg.sql(
        &db,
        "create table integrity_rows (client int not null, seq bigint not null);
         create table integrity_copied (client int not null, seq bigint not null);
         alter table integrity_rows owner to scram_user;
         alter table integrity_copied owner to scram_user;",
    );
    let p = start(
        pg,
        &db,
        &[("PGSIDECAR_POOL_SIZE", &POOL_SIZE.to_string()), ("PGSIDECAR_QUERY_WAIT_TIMEOUT", "0")],
    )
    .await;
    let tally = Arc::new(Tally::default());
    let sampler = watch::ServerSampler::start(pg, &db).await;
    // The pool's own view, sampled alongside PostgreSQL's.
    let pool = p.proxy.upstreams()[0].pool.clone();
    let pool_max = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pool_sampler = {
        let (pool, pool_max, stop) = (pool.clone(), pool_max.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Relaxed) {
                let s = pool.stats();
                pool_max.fetch_max((s.active + s.idle + s.connecting) as u64, Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let watcher = Arc::new(watch::superuser(pg, "postgres").await);

    let started = Instant::now();
    let mut tasks = Vec::new();
    for id in 0..CLIENTS {
        let mut c = p.connect_with(&db, "application_name=integrity").await.expect("connect");
        let tally = tally.clone();
        let watcher = watcher.clone();
        tasks.push(tokio::spawn(async move {
            let mut l = Ledger::new(id, tally.clone());
            let mut round = 0u64;
            if id < cancellers {
                while tally.sent.load(Relaxed) < target {
                    if cancel_round(&c, &mut l, &watcher).await.is_err() {
                        break;
                    }
                    // Pace the cancels: each long one holds one of the 4 servers until it lands.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            } else {
                let st = match timed(async {
                    Ok(Prepared {
                        echo: c.prepare("select $1::int4, $2::int8").await?,
                        insert: c.prepare("insert into integrity_rows (client, seq) values ($1, $2)").await?,
                    })
                })
                .await
                {
                    Ok(st) => st,
                    Err(e) => {
                        l.error(Kind::Prepared, e);
                        return;
                    }
                };
                let mut last_tag = None;
                while tally.sent.load(Relaxed) < target {
                    if mixed_round(&mut c, &mut l, &st, round, &mut last_tag).await.is_err() {
                        break;
                    }
                    round += 1;
                }
            }
            l.finish();
        }));
    }
    for k in 0..PSQL_CLIENTS {
        let (port, db, tally) = (p.port(), db.clone(), tally.clone());
        tasks.push(tokio::task::spawn_blocking(move || psql_client(port, db, 1000 + k, target, tally)));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let elapsed = started.elapsed();
    stop.store(true, Relaxed);
    pool_sampler.await.unwrap();
    let (max_servers, samples) = sampler.finish().await;

    // Afterwards: no server left inside a transaction or running anything, none leaked.
    let settled = watch::until(Duration::from_secs(10), "servers idle outside a transaction", || async {
        watch::busy_backends(&watcher, &db).await == 0 && pool.stats().active == 0
    })
    .await;
    let servers_after = watch::backends(&watcher, &db).await;
    let in_db = watch::superuser(pg, &db).await;
    let committed: i64 =
        watch::value(&in_db, "select count(*) from (select distinct client, seq from integrity_rows) d")
            .await
            .parse()
            .unwrap();
    let total_rows: i64 = watch::value(&in_db, "select count(*) from integrity_rows").await.parse().unwrap();
    let copied: i64 =
        watch::value(&in_db, "select count(*) from (select distinct client, seq from integrity_copied) d")
            .await
            .parse()
            .unwrap();

    let t = &*tally;
    let statements = t.total_statements();
    let per_kind: Vec<String> =
        KIND_NAMES.iter().zip(t.statements.iter()).map(|(n, a)| format!("{n}={}", a.load(Relaxed))).collect();
    eprintln!(
        "integrity: {statements} statements in {:.1}s ({:.0}/s) by {CLIENTS} tokio-postgres clients \
         ({cancellers} cancelling) and {PSQL_CLIENTS} psql clients on a pool of {POOL_SIZE}",
        elapsed.as_secs_f64(),
        statements as f64 / elapsed.as_secs_f64()
    );
    eprintln!("integrity: per kind {}", per_kind.join(" "));
    eprintln!(
        "integrity: results expected={} received={} wrong={} lost={} duplicated={} errors={} \
         cancelled={}",
        t.expected.load(Relaxed),
        t.received.load(Relaxed),
        t.wrong.load(Relaxed),
        t.lost.load(Relaxed),
        t.duplicated.load(Relaxed),
        t.errors.load(Relaxed),
        t.cancelled.load(Relaxed),
    );
    eprintln!(
        "integrity: max servers seen by PostgreSQL {max_servers} ({samples} samples), by the pool {}; \
         {servers_after} servers after, idle {settled:?} after the last client finished; \
         rows committed {committed} (expected {}), copied {copied} (expected {})",
        pool_max.load(Relaxed),
        t.inserted.load(Relaxed),
        t.copied.load(Relaxed),
    );
    let samples_text = t.samples.lock().unwrap().join("\n");
    assert_eq!(t.wrong.load(Relaxed), 0, "wrong results:\n{samples_text}");
    assert_eq!(t.duplicated.load(Relaxed), 0, "duplicated results:\n{samples_text}");
    assert_eq!(t.errors.load(Relaxed), 0, "errors:\n{samples_text}");
    assert_eq!(t.lost.load(Relaxed), 0, "lost results:\n{samples_text}");
    assert_eq!(t.received.load(Relaxed), t.expected.load(Relaxed));
    assert!(statements >= target, "only {statements} of {target} statements ran");
    if cancellers > 0 {
        assert!(t.cancelled.load(Relaxed) > 0, "no cancel was exercised");
    }
    assert!(max_servers <= POOL_SIZE, "PostgreSQL saw {max_servers} server connections");
    assert!(max_servers >= 1 && samples > 0);
    assert!(pool_max.load(Relaxed) <= POOL_SIZE as u64);
    assert!(servers_after <= POOL_SIZE);
    assert_eq!(committed as u64, t.inserted.load(Relaxed), "committed rows");
    assert_eq!(total_rows, committed, "a committed row twice");
    assert_eq!(copied as u64, t.copied.load(Relaxed), "copied rows");
}

/// A cancel of an autocommit statement reaches only that statement. With a pool of 1, a
/// bystander's statements follow the canceller's on the same server; none may be cancelled.
/// First cancels sent while the statement surely runs (a `pg_sleep(60)` seen running in
/// pg_stat_activity), then cancels racing the end of a short statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_never_reaches_the_next_client_of_its_server() {
    let pg = TestPg::shared();
    let db = pg.create_db("cancelnext");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_MODE", "transaction"), ("PGSIDECAR_POOL_SIZE", "1")]).await;
    let watcher = watch::superuser(pg, "postgres").await;
    let canceller = p.connect(&db).await;
    let bystander = p.connect(&db).await;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let by = {
        let done = done.clone();
        tokio::spawn(async move {
            let (mut ok, mut cancelled) = (0u64, Vec::new());
            let mut n = 0u64;
            while !done.load(Relaxed) {
                n += 1;
                match bystander.simple_query(&format!("select pg_sleep(0.003), {n}")).await {
                    Ok(m) => {
                        assert_eq!(rows_of(&m)[0][1], n.to_string());
                        ok += 1;
                    }
                    Err(e) => cancelled.push(format!("query {n}: {e} ({})", code_of(&e))),
                }
            }
            (ok, cancelled)
        })
    };
    let token = canceller.cancel_token();
    let started = Instant::now();
    // Cancels of a statement that is running.
    let precise = 100;
    let mut own_early = 0;
    for k in 0..precise {
        let marker = format!("cancel-next-{k}");
        let sql = format!("select pg_sleep(60), '{marker}'");
        let q = canceller.simple_query(&sql);
        tokio::pin!(q);
        let running = format!(
            "select count(*) from pg_stat_activity where state = 'active' and pid <> pg_backend_pid() \
             and query like '%{marker}%'"
        );
        let mut early = None;
        loop {
            tokio::select! {
                r = &mut q => {
                    early = Some(r);
                    break;
                }
                _ = tokio::time::sleep(Duration::from_millis(2)) => {}
            }
            if watch::value(&watcher, &running).await == "1" {
                break;
            }
        }
        if let Some(r) = early {
            // The previous cancel reached this session's next statement, as it may with
            // PostgreSQL alone.
            let e = r.map(|m| rows_of(&m)).expect_err("a pg_sleep(60) ended early");
            assert_eq!(code_of(&e), "57014", "{e}");
            own_early += 1;
            continue;
        }
        token.cancel_query(tokio_postgres::NoTls).await.expect("cancel request sent");
        let e = q.await.expect_err("cancelled");
        assert_eq!(code_of(&e), "57014", "{e}");
    }
    let precise_time = started.elapsed();
    // Cancels racing the end of a short statement.
    let (mut hit, mut missed) = (0, 0);
    for k in 0..300u64 {
        let cancel = async {
            tokio::time::sleep(Duration::from_micros(250 * (k % 24))).await;
            token.cancel_query(tokio_postgres::NoTls).await
        };
        let (r, c) = tokio::join!(canceller.simple_query("select pg_sleep(0.002)"), cancel);
        c.expect("cancel request sent");
        match r {
            Ok(_) => missed += 1,
            Err(e) => {
                assert_eq!(code_of(&e), "57014", "{e}");
                hit += 1
            }
        }
    }
    done.store(true, Relaxed);
    let (ok, cancelled) = by.await.unwrap();
    eprintln!(
        "cancel next: {precise} cancels of running statements ({own_early} statements cancelled early by the \
         previous cancel) in {:.1}s, then 300 racing cancels in {:.1}s \
         ({hit} cancelled their statement, {missed} came too late); bystander: {ok} statements answered, \
         {} cancelled",
        precise_time.as_secs_f64(),
        (started.elapsed() - precise_time).as_secs_f64(),
        cancelled.len()
    );
    assert!(cancelled.is_empty(), "the bystander's statements were cancelled: {cancelled:?}");
    assert!(ok > 0 && missed > 0 && hit > 0, "the race was not exercised");
}

/// A custom (dotted) setting one client SETs is that client's alone, as with PostgreSQL: the
/// next client of the same server does not see it, and it follows its client to the server
/// it gets next.
#[tokio::test]
async fn custom_settings_stay_with_their_client() {
    let pg = TestPg::shared();
    let db = pg.create_db("customset");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_MODE", "transaction"), ("PGSIDECAR_POOL_SIZE", "1")]).await;
    let a = p.connect(&db).await;
    let b = p.connect(&db).await;
    let read = "select coalesce(current_setting('integrity.tag', true), 'unset')";
    a.simple_query("set integrity.tag = 'a'").await.unwrap();
    // B gets the same (only) server next.
    // A placeholder once defined on a server reads as '' after RESET (PostgreSQL keeps it).
    let seen_by_b = common::first_value(&b.simple_query(read).await.unwrap());
    assert!(seen_by_b == "unset" || seen_by_b.is_empty(), "A's setting leaked to B: {seen_by_b:?}");
    b.simple_query("set integrity.tag = 'b'").await.unwrap();
    assert_eq!(common::first_value(&a.simple_query(read).await.unwrap()), "a", "A's setting lost");
    assert_eq!(common::first_value(&b.simple_query(read).await.unwrap()), "b");
}

/// Settings changed with `set_config(..., false)` inside a SELECT (no SET command tag) are
/// the client's alone too, as a simple query, as a prepared statement executed in a later
/// transaction, and for a built-in setting: the next client of the only server never sees
/// them, and they follow their client.
#[tokio::test]
async fn settings_changed_by_set_config_stay_with_their_client() {
    let pg = TestPg::shared();
    let db = pg.create_db("setconfig");
    let p = start(pg, &db, &[("PGSIDECAR_POOL_MODE", "transaction"), ("PGSIDECAR_POOL_SIZE", "1")]).await;
    let a = p.connect(&db).await;
    let b = p.connect(&db).await;
    let read = "select coalesce(current_setting('integrity.tenant', true), 'unset') \
                || '|' || current_setting('statement_timeout')";
    let default = common::first_value(&b.simple_query(read).await.unwrap());
    let seen_by_b = |v: String| {
        assert!(v == default || v == format!("|{}", default.split('|').nth(1).unwrap()), "leaked to B: {v:?}")
    };

    a.simple_query("select pg_catalog.set_config('statement_timeout', '4321', false)").await.unwrap();
    seen_by_b(common::first_value(&b.simple_query(read).await.unwrap()));
    assert!(common::first_value(&a.simple_query(read).await.unwrap()).ends_with("|4321ms"), "A's own lost");

    // Prepared once; executed in later transactions, whose Binds alone say what it does.
    let set = a.prepare("select set_config('integrity.tenant', $1, false)").await.unwrap();
    for tenant in ["t1", "t2"] {
        b.simple_query("select 1").await.unwrap();
        a.query_one(&set, &[&tenant]).await.unwrap();
        seen_by_b(common::first_value(&b.simple_query(read).await.unwrap()));
        assert_eq!(common::first_value(&a.simple_query(read).await.unwrap()), format!("{tenant}|4321ms"));
    }
}
