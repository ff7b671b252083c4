#!/usr/bin/env node
// Driver matrix: node-postgres named queries ({ name, text, values }): each name is parsed
// once per connection, then only bound and executed.
//
// Implements the workload of MATRIX.md beside this file and prints its summary.
'use strict';

const pg = require('pg');

const URL = process.env.DATABASE_URL;
const DDL_URL = process.env.DDL_URL || URL;
const WORKERS = parseInt(process.env.WORKERS || '6', 10);
const ITERATIONS = parseInt(process.env.ITERATIONS || '20', 10);
const ROWS = 50;
const BLOB_LEN = 100 * 1024;
const BIG_REPEAT = (10 * 1024 * 1024) / 16;
const MAX_DETAILS = parseInt(process.env.MAX_DETAILS || '10', 10);

const SQL = {
  echo: 'select $1::int as w, $2::int as n, $3::text as tag',
  star: 'select * from matrix_t where id = $1',
  cols: 'select id, a, b from matrix_t where id = $1',
  late: 'select c from matrix_t where id = $1',
  blob: 'select $1::bytea as v, $2::int as w, $3::int as n',
  div: 'select 100 / $1::int as q',
  big: 'select repeat($1::text, $2::int) as v',
  pid: 'select $1::int as n, pg_backend_pid() as pid',
};

// The DDL changes (counted from 1) after which a statement's result columns differ.
const CHANGES = { star: [1, 2], cols: [2] };

function tableRow(epoch, id) {
  if (epoch === 0) return [['id', `${id}`], ['a', `${id * 10}`], ['b', `b${id}`]];
  if (epoch === 1) return [['id', `${id}`], ['a', `${id * 10}`], ['b', `b${id}`], ['c', `c${id}`]];
  return [['c', `c${id}`], ['b', `b${id}`], ['id', `${id}`], ['a', `${id * 100}`]];
}

function colsRow(epoch, id) {
  return [['id', `${id}`], ['a', `${id * (epoch === 2 ? 100 : 10)}`], ['b', `b${id}`]];
}

function blob(w, n) {
  const v = Buffer.alloc(BLOB_LEN);
  const header = `w${String(w).padStart(3, '0')}n${String(n).padStart(5, '0')}`;
  v.write(header, 0, 'ascii');
  for (let k = 10; k < BLOB_LEN; k++) v[k] = (k + 7 * w + 13 * n) % 256;
  return v;
}

// Rows as [[name, text or hex]]: Buffers compared by their bytes.
function show(v) {
  return Buffer.isBuffer(v) ? `\\x${v.toString('hex')}` : String(v);
}

function rowsOf(res) {
  const names = res.fields.map((f) => f.name);
  return res.rows.map((r) => names.map((name, k) => [name, show(r[k])]));
}

function short(v) {
  const text = JSON.stringify(v);
  return text.length <= 300 ? text : `${text.slice(0, 300)}... (${text.length} chars)`;
}

const stats = { queries: 0, ok: 0, wrong: 0, stale: 0, errors: new Map(), details: [] };

function detail(text) {
  if (stats.details.length < MAX_DETAILS) stats.details.push(text);
}

// outcome: ok, stale (an accepted 0A000), wrong, or an error's SQLSTATE; an error the
// workload expects is counted without a detail line.
function record(outcome, where, text, expected) {
  stats.queries += 1;
  if (outcome === 'ok') stats.ok += 1;
  else if (outcome === 'stale') {
    stats.ok += 1;
    stats.stale += 1;
  } else if (outcome === 'wrong') {
    stats.wrong += 1;
    detail(`wrong: ${where}: ${text}`);
  } else {
    stats.errors.set(outcome, (stats.errors.get(outcome) || 0) + 1);
    if (!expected) detail(`error ${outcome}: ${where}: ${text}`);
  }
}

function sqlstate(err) {
  if (err && typeof err.code === 'string' && /^[0-9A-Z]{5}$/.test(err.code)) return err.code;
  return `X-${err && err.constructor ? err.constructor.name : 'Error'}`;
}

let clientEncoding = '-';

async function connect(url) {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 30000 });
  client.connection.on('parameterStatus', (msg) => {
    if (msg.parameterName === 'client_encoding') clientEncoding = msg.parameterValue;
  });
  client.on('error', (err) => detail(`connection error event: ${err.message}`));
  await client.connect();
  return client;
}

class Worker {
  constructor(w) {
    this.w = w;
    this.client = null;
    this.prepared = new Map(); // op -> epoch in which this connection parsed it
  }

  async ensure() {
    if (this.client === null) {
      this.client = await connect(URL);
      this.prepared.clear();
    }
  }

  // node-postgres keeps a name it parsed for the life of the connection: a new connection
  // is how an application gets its statements prepared again.
  async reconnect() {
    const old = this.client;
    this.client = null;
    if (old !== null) await old.end().catch(() => {});
  }

  async named(op, values) {
    const res = await this.client.query({ name: op, text: SQL[op], values, rowMode: 'array' });
    return rowsOf(res);
  }

  // Runs fn() -> [got, want] and records the outcome; `error` is the SQLSTATE the workload
  // expects instead of a result.
  async run(op, epoch, where, fn, error) {
    try {
      await this.ensure();
      if (!this.prepared.has(op)) this.prepared.set(op, epoch);
      const [got, want] = await fn();
      if (error) record('wrong', where, `got ${short(got)}, expected error ${error}`);
      else if (JSON.stringify(got) === JSON.stringify(want)) record('ok', where);
      else record('wrong', where, `got ${short(got)}, expected ${short(want)}`);
    } catch (err) {
      const code = sqlstate(err);
      const p = this.prepared.get(op);
      if (code === '0A000') {
        await this.reconnect();
        if (p !== undefined && (CHANGES[op] || []).some((c) => p < c && c <= epoch)) {
          record('stale', where);
          return;
        }
      }
      record(code, where, err.message, code === error);
      if (code.startsWith('X-') || code.startsWith('08')) await this.reconnect();
    }
  }

  async epoch(e) {
    const w = this.w;
    for (let i = 0; i < ITERATIONS; i++) {
      const n = e * ITERATIONS + i;
      const id = ((w * 7 + n) % ROWS) + 1;
      const at = `worker ${w} epoch ${e} i ${i}`;
      await this.run('echo', e, `${at} echo`, async () => [
        await this.named('echo', [w, n, `${w}:${n}`]),
        [[['w', `${w}`], ['n', `${n}`], ['tag', `${w}:${n}`]]],
      ]);
      if (e >= w % 3) {
        await this.run('star', e, `${at} star`, async () => [await this.named('star', [id]), [tableRow(e, id)]]);
      }
      await this.run('cols', e, `${at} cols`, async () => [await this.named('cols', [id]), [colsRow(e, id)]]);
      if (i % 5 === 0) {
        await this.run(
          'late',
          e,
          `${at} late`,
          async () => [await this.named('late', [id]), [[['c', `c${id}`]]]],
          e === 0 ? '42703' : null,
        );
      }
      if (i % 4 === 1) {
        const v = blob(w, n);
        await this.run('blob', e, `${at} blob`, async () => [
          await this.named('blob', [v, w, n]),
          [[['v', show(v)], ['w', `${w}`], ['n', `${n}`]]],
        ]);
      }
      if (i % 7 === 3) {
        const d = n % 3;
        await this.run(
          'div',
          e,
          `${at} div`,
          async () => [await this.named('div', [d]), [[['q', `${Math.trunc(100 / (d || 1))}`]]]],
          d === 0 ? '22012' : null,
        );
      }
      if (i === 2) {
        const tag = `${String(w).padStart(3, '0')}:${String(n).padStart(5, '0')}:abcdef`;
        await this.run('big', e, `${at} big`, async () => [
          await this.named('big', [tag, BIG_REPEAT]),
          [[['v', tag.repeat(BIG_REPEAT)]]],
        ]);
      }
      if (i % 10 === 6) {
        await this.run('txn', e, `${at} txn`, () => this.txn(n));
      }
    }
  }

  // Two statements in one transaction: right rows, one backend.
  async txn(n) {
    await this.client.query('begin');
    try {
      const first = await this.client.query({ name: 'pid', text: SQL.pid, values: [n] });
      const second = await this.client.query({ name: 'pid', text: SQL.pid, values: [n + 1] });
      await this.client.query('commit');
      const got = [first.rows.map((r) => r.n), second.rows.map((r) => r.n), first.rows[0].pid === second.rows[0].pid];
      return [got, [[n], [n + 1], true]];
    } catch (err) {
      await this.client.query('rollback').catch(() => {});
      throw err;
    }
  }
}

async function withClient(url, fn) {
  const client = await connect(url);
  try {
    await fn(client);
  } finally {
    await client.end();
  }
}

async function setup() {
  await withClient(URL, async (c) => {
    await c.query('drop table if exists matrix_t');
    await c.query('create table matrix_t (id int primary key, a int not null, b text not null)');
    await c.query("insert into matrix_t select g, g * 10, 'b' || g from generate_series(1, 50) g");
  });
}

async function ddl(number) {
  if (number === 1) {
    await withClient(DDL_URL, async (c) => {
      await c.query('alter table matrix_t add column c text');
      await c.query("update matrix_t set c = 'c' || id");
    });
    return;
  }
  await withClient(URL, async (c) => {
    await c.query('begin');
    await c.query('drop table matrix_t');
    await c.query('create table matrix_t (c text not null, b text not null, id int primary key, a bigint not null)');
    await c.query("insert into matrix_t select 'c' || g, 'b' || g, g, g * 100 from generate_series(1, 50) g");
    await c.query('commit');
  });
}

async function main() {
  await setup();
  const workers = Array.from({ length: WORKERS }, (_, w) => new Worker(w));
  for (let e = 0; e < 3; e++) {
    if (e > 0) await ddl(e);
    await Promise.all(workers.map((wk) => wk.epoch(e)));
    console.error(`node-postgres: epoch ${e} done`);
  }
  await Promise.all(workers.map((wk) => wk.reconnect()));
  for (const d of stats.details) console.log(`detail: ${d}`);
  const errors =
    [...stats.errors.entries()]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([k, v]) => `${k}:${v}`)
      .join(',') || 'none';
  console.log(`version: node-postgres ${require('pg/package.json').version}, node ${process.version}`);
  console.log(
    `summary: queries=${stats.queries} ok=${stats.ok} wrong=${stats.wrong} errors=${errors} client_encoding=${clientEncoding}`,
  );
  console.log(`stale: 0A000=${stats.stale}`);
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
