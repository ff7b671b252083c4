#!/usr/bin/env node
// Driver check: node-postgres named prepared statements through pgsidecar.
//
// Environment:
//   DATABASE_URL  URL of the proxy (required)
//   WORKERS       concurrent clients, each a separate pg.Client (default 20)
//   QUERIES       queries per client (default 500)
//   POOL_SIZE     if set, the distinct backend pids seen must be <= this
//   UNNAMED       1: the same queries without names (node-postgres then sends an unnamed
//                 Parse with every query, as for any parameterized query without a name)
//
// Each client runs named queries ({ name, text, values }) with several distinct names and
// texts: node-postgres parses a name once per connection and afterwards sends only
// Bind/Execute, so the proxy must prepare the statement on whichever server the client
// gets. Every result is checked. Prints
// `node-postgres: workers=W queries=N errors=E wrong=X` and exits non-zero on any problem.
'use strict';

const pg = require('pg');

const URL = process.env.DATABASE_URL;
const WORKERS = parseInt(process.env.WORKERS || '20', 10);
const QUERIES = parseInt(process.env.QUERIES || '500', 10);
const POOL_SIZE = process.env.POOL_SIZE ? parseInt(process.env.POOL_SIZE, 10) : null;
const MAX_REPORTED = 10;
const UNNAMED = process.env.UNNAMED === '1';

function request(name, text, values) {
  return UNNAMED ? { text, values } : { name, text, values };
}

// q0: worker id, loop counter and backend pid.
const MAIN = {
  name: 'q0',
  text: 'select $1::int as w, $2::int as i, pg_backend_pid() as pid',
};

// Other named statements: [name, text, values(w, i), expected rows(w, i)].
const STATEMENTS = [
  ['q1', 'select $1::int + $2::int as s', (w, i) => [w, i], (w, i) => [{ s: w + i }]],
  [
    'q2',
    "select $1::text || '-' || $2::text as t",
    (w, i) => [`w${w}`, `i${i}`],
    (w, i) => [{ t: `w${w}-i${i}` }],
  ],
  [
    'q3',
    'select g from generate_series(1, $1::int) as g',
    (w, i) => [(i % 4) + 1],
    (w, i) => Array.from({ length: (i % 4) + 1 }, (_, k) => ({ g: k + 1 })),
  ],
  [
    'q4',
    'select ($1::bigint * 2)::text as d, $2::int as w',
    (w, i) => [i, w],
    (w, i) => [{ d: String(2 * i), w }],
  ],
  ['q5', 'select array[$1::int, $2::int] as a', (w, i) => [w, i], (w, i) => [{ a: [w, i] }]],
  [
    'q6',
    'select $1::int as i where $2::bool',
    (w, i) => [i, i % 2 === 0],
    (w, i) => (i % 2 === 0 ? [{ i }] : []),
  ],
  [
    'q7',
    'select length($1::text) as n, $2::int as w',
    (w, i) => ['x'.repeat(i % 37), w],
    (w, i) => [{ n: i % 37, w }],
  ],
  [
    'q8',
    'select $1::numeric(10,2)::text as m, $2::text as t',
    (w, i) => [`${i}.25`, `worker-${w}`],
    (w, i) => [{ m: `${i}.25`, t: `worker-${w}` }],
  ],
];

const totals = { queries: 0, errors: 0, wrong: 0 };
const pids = new Set();
const messages = [];

function note(kind, text) {
  totals[kind] += 1;
  if (messages.length < MAX_REPORTED) messages.push(`${kind}: ${text}`);
}

function describe(err) {
  const parts = [err && err.message ? err.message : String(err)];
  if (err && err.code) parts.push(`code=${err.code}`);
  if (err && err.severity) parts.push(`severity=${err.severity}`);
  return parts.join(' ');
}

async function connect(w) {
  const client = new pg.Client({ connectionString: URL, connectionTimeoutMillis: 30000 });
  client.on('error', (err) => note('errors', `worker ${w} connection error event: ${describe(err)}`));
  await client.connect();
  return client;
}

async function runMain(client, w, i) {
  const res = await client.query(request(MAIN.name, MAIN.text, [w, i]));
  const row = res.rows.length === 1 ? res.rows[0] : null;
  if (!row || row.w !== w || row.i !== i) {
    note('wrong', `worker ${w} query ${i}: ${MAIN.name} returned ${JSON.stringify(res.rows)}`);
    return null;
  }
  pids.add(row.pid);
  return row.pid;
}

async function runOther(client, k, w, i) {
  const [name, text, values, expected] = STATEMENTS[k];
  const res = await client.query(request(name, text, values(w, i)));
  const got = JSON.stringify(res.rows);
  const want = JSON.stringify(expected(w, i));
  if (got !== want) note('wrong', `worker ${w} query ${i}: ${name} returned ${got}, expected ${want}`);
}

async function worker(w, first) {
  let client = first;
  let done = 0;
  let i = 0;
  while (i < QUERIES) {
    if (client === null) {
      try {
        client = await connect(w);
      } catch (err) {
        note('errors', `worker ${w} reconnect: ${describe(err)}`);
        i += 1;
        done += 1;
        continue;
      }
    }
    try {
      if (i % 25 === 24 && i + 1 < QUERIES) {
        // An explicit transaction with two statements: both on one server.
        const rollback = i % 50 === 49;
        await client.query('begin');
        try {
          const p1 = await runMain(client, w, i);
          i += 1;
          done += 1;
          const p2 = await runMain(client, w, i);
          if (p1 !== null && p2 !== null && p1 !== p2) {
            note('wrong', `worker ${w} query ${i}: pid changed inside a transaction (${p1} -> ${p2})`);
          }
          await client.query(rollback ? 'rollback' : 'commit');
        } catch (err) {
          await client.query('rollback').catch(() => {});
          throw err;
        }
      } else if (i % 2 === 0) {
        await runMain(client, w, i);
      } else {
        await runOther(client, (w * 7 + i) % STATEMENTS.length, w, i);
      }
    } catch (err) {
      note('errors', `worker ${w} query ${i}: ${describe(err)}`);
      if (!client._queryable || client._ending) {
        client.end().catch(() => {});
        client = null;
      }
    }
    i += 1;
    done += 1;
  }
  totals.queries += done;
  if (client !== null) await client.end().catch(() => {});
}

async function main() {
  if (!URL) {
    console.error('DATABASE_URL is required');
    return 2;
  }
  const start = process.hrtime.bigint();
  // Connect every client first, then start all the workers at once.
  const clients = await Promise.all(
    Array.from({ length: WORKERS }, (_, w) =>
      connect(w).catch((err) => {
        note('errors', `worker ${w} connect: ${describe(err)}`);
        return null;
      }),
    ),
  );
  await Promise.all(clients.map((client, w) => worker(w, client)));
  const elapsed = Number(process.hrtime.bigint() - start) / 1e9;
  for (const m of messages) console.log(m);
  const reported = totals.errors + totals.wrong;
  if (reported > messages.length) console.log(`... ${reported - messages.length} more`);
  let pidOk = true;
  let pidLine = `node-postgres: distinct backend pids=${pids.size}`;
  if (POOL_SIZE !== null) {
    pidOk = pids.size <= POOL_SIZE;
    pidLine += ` (pool size ${POOL_SIZE}: ${pidOk ? 'ok' : 'TOO MANY'})`;
  }
  console.log(pidLine);
  const version = require('pg/package.json').version;
  console.log(`node-postgres: elapsed=${elapsed.toFixed(2)}s pg=${version} node=${process.version}`);
  console.log(
    `node-postgres: workers=${WORKERS} queries=${totals.queries} errors=${totals.errors} wrong=${totals.wrong}`,
  );
  return totals.errors === 0 && totals.wrong === 0 && pidOk ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
