//! tokio-postgres in the driver matrix (MATRIX.md): each connection `prepare`s its statements
//! once and keeps them (named server-side statements, row descriptions cached in the client);
//! three echoes go out pipelined at `i % 5 == 3`, and at `i % 10 == 8` a portal is bound inside a
//! transaction and read three rows at a time. A program of its own in all but the process: it
//! returns the [`Outcome`] the other drivers print.

use crate::Outcome;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls, Row, Statement};

const ROWS: i32 = 50;
const BLOB_LEN: usize = 100 * 1024;
const BIG_REPEAT: i32 = 10 * 1024 * 1024 / 16;
const MAX_DETAILS: usize = 10;

const ECHO: &str = "select $1::int as w, $2::int as n, $3::text as tag";
const STAR: &str = "select * from matrix_t where id = $1";
const COLS: &str = "select id, a, b from matrix_t where id = $1";
const LATE: &str = "select c from matrix_t where id = $1";
const BLOB: &str = "select $1::bytea as v, $2::int as w, $3::int as n";
const DIV: &str = "select 100 / $1::int as q";
const BIG: &str = "select repeat($1::text, $2::int) as v";
const PID: &str = "select $1::int as n, pg_backend_pid() as pid";
const SERIES: &str = "select g, $1::int as w from generate_series(1, $2::int) as g";

/// A row as the driver decoded it: column names in order, each value's bytes (text as UTF-8).
type Got = Vec<Vec<(String, Vec<u8>)>>;

fn expect(cols: &[(&str, String)]) -> Got {
    vec![cols.iter().map(|(k, v)| (k.to_string(), v.clone().into_bytes())).collect()]
}

fn table_row(epoch: usize, id: i32) -> Got {
    let (a, b, c) = (id.to_string(), format!("b{id}"), format!("c{id}"));
    match epoch {
        0 => expect(&[("id", a), ("a", (id * 10).to_string()), ("b", b)]),
        1 => expect(&[("id", a), ("a", (id * 10).to_string()), ("b", b), ("c", c)]),
        _ => expect(&[("c", c), ("b", b), ("id", a), ("a", (id * 100).to_string())]),
    }
}

fn cols_row(epoch: usize, id: i32) -> Got {
    let a = id * if epoch == 2 { 100 } else { 10 };
    expect(&[("id", id.to_string()), ("a", a.to_string()), ("b", format!("b{id}"))])
}

fn blob(w: i32, n: i32) -> Vec<u8> {
    let mut v = format!("w{w:03}n{n:05}").into_bytes();
    v.extend((10..BLOB_LEN).map(|k| ((k as i64 + 7 * w as i64 + 13 * n as i64) % 256) as u8));
    v
}

/// Decodes every column by the type the statement described (a row that does not match that
/// description fails here, as it would in an application).
fn decode(rows: &[Row]) -> Result<Got, String> {
    let mut got = Vec::new();
    for row in rows {
        let mut cols = Vec::new();
        for (i, col) in row.columns().iter().enumerate() {
            let value = match *col.type_() {
                Type::INT4 => row.try_get::<_, i32>(i).map(|v| v.to_string().into_bytes()),
                Type::INT8 => row.try_get::<_, i64>(i).map(|v| v.to_string().into_bytes()),
                Type::TEXT => row.try_get::<_, String>(i).map(String::into_bytes),
                Type::BYTEA => row.try_get::<_, Vec<u8>>(i),
                ref t => return Err(format!("unexpected column type {t} of {}", col.name())),
            };
            cols.push((col.name().to_owned(), value.map_err(|e| format!("column {}: {e}", col.name()))?));
        }
        got.push(cols);
    }
    Ok(got)
}

#[derive(Default)]
struct Stats {
    queries: u64,
    ok: u64,
    wrong: u64,
    stale: u64,
    errors: BTreeMap<String, u64>,
    details: Vec<String>,
}

impl Stats {
    fn detail(&mut self, text: String) {
        if self.details.len() < MAX_DETAILS {
            self.details.push(text);
        }
    }
}

/// How one operation ended.
enum End {
    Rows(Got, Got),
    Error(String, String),
}

/// The DDL changes (counted from 1) after which a statement's result columns differ.
fn changes(op: &str) -> &'static [usize] {
    match op {
        "star" => &[1, 2],
        "cols" => &[2],
        _ => &[],
    }
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    match e.code() {
        Some(c) => c.code().to_owned(),
        None if e.is_closed() => "X-closed".to_owned(),
        None => "X-client".to_owned(),
    }
}

struct Worker {
    w: i32,
    url: String,
    client: Option<Client>,
    /// Statements this connection prepared, with the epoch it prepared each in.
    statements: HashMap<&'static str, (Statement, usize)>,
    stats: Arc<Mutex<Stats>>,
    /// The epoch running, and where in it (for details).
    epoch: usize,
    at: String,
}

impl Worker {
    async fn client(&mut self) -> Result<&mut Client, tokio_postgres::Error> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.statements.clear();
            let (client, connection) = tokio_postgres::connect(&self.url, NoTls).await?;
            tokio::spawn(connection);
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected"))
    }

    async fn statement(&mut self, op: &'static str, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some((s, _)) = self.statements.get(op) {
            return Ok(s.clone());
        }
        let s = self.client().await?.prepare(sql).await?;
        self.statements.insert(op, (s.clone(), self.epoch));
        Ok(s)
    }

    /// Runs `sql` with `params` as the prepared statement `op` and checks the rows.
    async fn query(
        &mut self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Got, tokio_postgres::Error> {
        let s = self.statement(op, sql).await?;
        let rows = self.client().await?.query(&s, params).await?;
        Ok(decode(&rows).unwrap_or_else(|e| vec![vec![("decode error".into(), e.into_bytes())]]))
    }

    /// Counts how `op` ended; `error` is the SQLSTATE the workload expects instead of rows.
    fn record(&mut self, op: &'static str, end: End, error: Option<&str>) {
        let (epoch, at) = (self.epoch, &self.at);
        let stale_ok = |p: usize| changes(op).iter().any(|&c| p < c && c <= epoch);
        let mut stats = self.stats.lock().unwrap();
        stats.queries += 1;
        match end {
            End::Rows(got, want) => {
                if let Some(code) = error {
                    stats.wrong += 1;
                    stats.detail(format!("wrong: {at} {op}: got rows, expected error {code}"));
                } else if got == want {
                    stats.ok += 1;
                } else {
                    stats.wrong += 1;
                    stats.detail(format!("wrong: {at} {op}: got {}, expected {}", show(&got), show(&want)));
                }
            }
            End::Error(code, message) => {
                let prepared = self.statements.get(op).map(|(_, p)| *p);
                if code == "0A000" {
                    // The application's recovery: prepare the statement again.
                    self.statements.remove(op);
                    if prepared.is_some_and(stale_ok) {
                        stats.ok += 1;
                        stats.stale += 1;
                        return;
                    }
                }
                if error != Some(code.as_str()) {
                    stats.detail(format!("error {code}: {at} {op}: {message}"));
                }
                *stats.errors.entry(code).or_default() += 1;
            }
        }
    }

    async fn op(
        &mut self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        want: Got,
        error: Option<&str>,
    ) {
        let end = match self.query(op, sql, params).await {
            Ok(got) => End::Rows(got, want),
            Err(e) => End::Error(sqlstate(&e), message(&e)),
        };
        self.record(op, end, error);
    }

    async fn epoch(mut self, e: usize, iterations: usize) -> Self {
        let w = self.w;
        for i in 0..iterations {
            let n = (e * iterations + i) as i32;
            let id = (w * 7 + n) % ROWS + 1;
            self.epoch = e;
            self.at = format!("worker {w} epoch {e} i {i}");
            let tag = format!("{w}:{n}");
            let echo = expect(&[("w", w.to_string()), ("n", n.to_string()), ("tag", tag.clone())]);
            self.op("echo", ECHO, &[&w, &n, &tag], echo, None).await;
            if e as i32 >= w % 3 {
                self.op("star", STAR, &[&id], table_row(e, id), None).await;
            }
            self.op("cols", COLS, &[&id], cols_row(e, id), None).await;
            if i % 5 == 0 {
                let want = expect(&[("c", format!("c{id}"))]);
                self.op("late", LATE, &[&id], want, (e == 0).then_some("42703")).await;
            }
            if i % 4 == 1 {
                let v = blob(w, n);
                let want = vec![vec![
                    ("v".to_owned(), v.clone()),
                    ("w".to_owned(), w.to_string().into_bytes()),
                    ("n".to_owned(), n.to_string().into_bytes()),
                ]];
                self.op("blob", BLOB, &[&v, &w, &n], want, None).await;
            }
            if i % 7 == 3 {
                let d = n % 3;
                let want = expect(&[("q", (100 / d.max(1)).to_string())]);
                self.op("div", DIV, &[&d], want, (d == 0).then_some("22012")).await;
            }
            if i == 2 {
                let tag = format!("{w:03}:{n:05}:abcdef");
                let want = expect(&[("v", tag.repeat(BIG_REPEAT as usize))]);
                self.op("big", BIG, &[&tag, &BIG_REPEAT], want, None).await;
            }
            if i % 10 == 6 {
                let end = ended(self.txn(n).await);
                self.record("txn", end, None);
            }
            if i % 5 == 3 {
                let end = ended(self.pipeline(n).await);
                self.record("pipeline", end, None);
            }
            if i % 10 == 8 {
                let end = ended(self.portal(n).await);
                self.record("portal", end, None);
            }
        }
        self
    }

    /// Two statements in one transaction: right rows, one backend.
    async fn txn(&mut self, n: i32) -> Result<(Got, Got), tokio_postgres::Error> {
        let s = self.statement("pid", PID).await?;
        let tx = self.client().await?.transaction().await?;
        let first = tx.query_one(&s, &[&n]).await?;
        let second = tx.query_one(&s, &[&(n + 1)]).await?;
        tx.commit().await?;
        let (p1, p2): (i32, i32) = (first.try_get(1)?, second.try_get(1)?);
        let got = expect(&[
            ("n", first.try_get::<_, i32>(0)?.to_string()),
            ("n", second.try_get::<_, i32>(0)?.to_string()),
            ("same backend", (p1 == p2).to_string()),
        ]);
        let want =
            expect(&[("n", n.to_string()), ("n", (n + 1).to_string()), ("same backend", "true".into())]);
        Ok((got, want))
    }

    /// Three echoes sent before the first answer arrives.
    async fn pipeline(&mut self, n: i32) -> Result<(Got, Got), tokio_postgres::Error> {
        let s = self.statement("echo", ECHO).await?;
        let w = self.w;
        let tags: Vec<String> = (0..3).map(|k| format!("{w}:{n}:p{k}")).collect();
        let params: Vec<[&(dyn ToSql + Sync); 3]> = tags.iter().map(|t| [&w as _, &n as _, t as _]).collect();
        let c = self.client().await?;
        let (a, b, d) =
            tokio::try_join!(c.query(&s, &params[0]), c.query(&s, &params[1]), c.query(&s, &params[2]),)?;
        let mut got = Vec::new();
        for rows in [a, b, d] {
            got.extend(decode(&rows).unwrap_or_else(|e| vec![vec![("decode error".into(), e.into_bytes())]]));
        }
        let want = tags
            .iter()
            .flat_map(|t| expect(&[("w", w.to_string()), ("n", n.to_string()), ("tag", t.clone())]))
            .collect();
        Ok((got, want))
    }

    /// A portal of `10 + w` rows read three at a time inside a transaction.
    async fn portal(&mut self, n: i32) -> Result<(Got, Got), tokio_postgres::Error> {
        let s = self.statement("series", SERIES).await?;
        let w = self.w;
        let count = 10 + w + n % 3;
        let tx = self.client().await?.transaction().await?;
        let portal = tx.bind(&s, &[&w, &count]).await?;
        let mut got = Vec::new();
        let mut chunks = 0;
        loop {
            let rows = tx.query_portal(&portal, 3).await?;
            if rows.is_empty() {
                break;
            }
            chunks += 1;
            got.extend(decode(&rows).unwrap_or_else(|e| vec![vec![("decode error".into(), e.into_bytes())]]));
        }
        tx.commit().await?;
        got.push(vec![("chunks".into(), chunks.to_string().into_bytes())]);
        let mut want: Got =
            (1..=count).flat_map(|g| expect(&[("g", g.to_string()), ("w", w.to_string())])).collect();
        want.push(vec![("chunks".into(), ((count + 2) / 3).to_string().into_bytes())]);
        Ok((got, want))
    }
}

fn ended(r: Result<(Got, Got), tokio_postgres::Error>) -> End {
    match r {
        Ok((got, want)) => End::Rows(got, want),
        Err(e) => End::Error(sqlstate(&e), message(&e)),
    }
}

/// The server's message, or the client's description when there is none.
fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned())
}

fn show(got: &Got) -> String {
    let text = format!(
        "{:?}",
        got.iter()
            .map(|r| r.iter().map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v))).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    );
    if text.len() > 300 {
        format!("{}... ({} chars)", text.chars().take(300).collect::<String>(), text.len())
    } else {
        text
    }
}

async fn connect(url: &str) -> Result<(Client, Option<String>), String> {
    let (client, connection) =
        tokio_postgres::connect(url, NoTls).await.map_err(|e| format!("tokio-postgres connect: {e}"))?;
    let encoding = connection.parameter("client_encoding").map(str::to_owned);
    tokio::spawn(connection);
    Ok((client, encoding))
}

async fn setup(url: &str) -> Result<(), String> {
    let (c, _) = connect(url).await?;
    for sql in [
        "drop table if exists matrix_t",
        "create table matrix_t (id int primary key, a int not null, b text not null)",
        "insert into matrix_t select g, g * 10, 'b' || g from generate_series(1, 50) g",
    ] {
        c.execute(sql, &[]).await.map_err(|e| format!("setup: {e}"))?;
    }
    Ok(())
}

async fn ddl(number: usize, url: &str, ddl_url: &str) -> Result<(), String> {
    let fail = |e: tokio_postgres::Error| format!("DDL {number}: {e}");
    if number == 1 {
        let (c, _) = connect(ddl_url).await?;
        c.execute("alter table matrix_t add column c text", &[]).await.map_err(fail)?;
        c.execute("update matrix_t set c = 'c' || id", &[]).await.map_err(fail)?;
        return Ok(());
    }
    let (mut c, _) = connect(url).await?;
    let tx = c.transaction().await.map_err(fail)?;
    for sql in [
        "drop table matrix_t",
        "create table matrix_t (c text not null, b text not null, id int primary key, a bigint not null)",
        "insert into matrix_t select 'c' || g, 'b' || g, g, g * 100 from generate_series(1, 50) g",
    ] {
        tx.execute(sql, &[]).await.map_err(fail)?;
    }
    tx.commit().await.map_err(fail)
}

/// Runs the workload through `url` (DDL 1 through `ddl_url`) and returns its outcome.
pub async fn run(url: &str, ddl_url: &str, workers: usize, iterations: usize) -> Result<Outcome, String> {
    setup(url).await?;
    let stats = Arc::new(Mutex::new(Stats::default()));
    let (_, encoding) = connect(url).await?;
    let mut all: Vec<Worker> = (0..workers as i32)
        .map(|w| Worker {
            w,
            url: url.to_owned(),
            client: None,
            statements: HashMap::new(),
            stats: stats.clone(),
            epoch: 0,
            at: String::new(),
        })
        .collect();
    for e in 0..3 {
        if e > 0 {
            ddl(e, url, ddl_url).await?;
        }
        let tasks: Vec<_> = all.drain(..).map(|wk| tokio::spawn(wk.epoch(e, iterations))).collect();
        for t in tasks {
            all.push(t.await.map_err(|err| format!("a worker panicked in epoch {e}: {err}"))?);
        }
    }
    drop(all);
    let s = stats.lock().unwrap();
    let errors = if s.errors.is_empty() {
        "none".to_owned()
    } else {
        s.errors.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(",")
    };
    Ok(Outcome {
        summary: format!(
            "queries={} ok={} wrong={} errors={errors} client_encoding={}",
            s.queries,
            s.ok,
            s.wrong,
            encoding.as_deref().unwrap_or("-")
        ),
        wrong: s.wrong,
        stale: s.stale,
        details: s.details.clone(),
        elapsed: Duration::ZERO,
    })
}
