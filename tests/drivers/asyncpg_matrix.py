#!/usr/bin/env python3
"""Driver matrix: asyncpg with its default statement cache (every query a named server-side
statement, prepared once per connection; rows decoded with the description from that prepare).

Implements the workload of MATRIX.md beside this file and prints its summary.
"""

import asyncio
import os
import sys
import traceback

import asyncpg

URL = os.environ["DATABASE_URL"]
DDL_URL = os.environ.get("DDL_URL", URL)
WORKERS = int(os.environ.get("WORKERS", "6"))
ITERATIONS = int(os.environ.get("ITERATIONS", "20"))
ROWS = 50
BLOB_LEN = 100 * 1024
BIG_REPEAT = 10 * 1024 * 1024 // 16
MAX_DETAILS = int(os.environ.get("MAX_DETAILS", "10"))

ECHO = "select $1::int as w, $2::int as n, $3::text as tag"
STAR = "select * from matrix_t where id = $1"
COLS = "select id, a, b from matrix_t where id = $1"
LATE = "select c from matrix_t where id = $1"
BLOB = "select $1::bytea as v, $2::int as w, $3::int as n"
DIV = "select 100 / $1::int as q"
BIG = "select repeat($1::text, $2::int) as v"
PID = "select $1::int as n, pg_backend_pid() as pid"

# The DDL changes (counted from 1) after which a statement's result columns differ.
CHANGES = {"star": (1, 2), "cols": (2,)}
PATTERN = bytes(range(256)) * (BLOB_LEN // 256 + 2)


def table_row(epoch, id_):
    if epoch == 0:
        return [("id", str(id_)), ("a", str(id_ * 10)), ("b", f"b{id_}")]
    if epoch == 1:
        return [("id", str(id_)), ("a", str(id_ * 10)), ("b", f"b{id_}"), ("c", f"c{id_}")]
    return [("c", f"c{id_}"), ("b", f"b{id_}"), ("id", str(id_)), ("a", str(id_ * 100))]


def cols_row(epoch, id_):
    a = id_ * (100 if epoch == 2 else 10)
    return [("id", str(id_)), ("a", str(a)), ("b", f"b{id_}")]


def blob(w, n):
    off = (7 * w + 13 * n) % 256
    return f"w{w:03d}n{n:05d}".encode() + PATTERN[off + 10 : off + BLOB_LEN]


def rows_of(records):
    return [[(k, v if isinstance(v, bytes) else str(v)) for k, v in r.items()] for r in records]


def short(v):
    text = repr(v)
    return text if len(text) <= 300 else text[:300] + f"... ({len(text)} chars)"


class Stats:
    def __init__(self):
        self.queries = 0
        self.ok = 0
        self.wrong = 0
        self.stale = 0
        self.errors = {}
        self.details = []

    def detail(self, text):
        if len(self.details) < MAX_DETAILS:
            self.details.append(text)

    def record(self, outcome, where, text="", expected=False):
        """outcome: ok, stale (an accepted 0A000), wrong, or an error's SQLSTATE; an error
        the workload expects is counted without a detail line."""
        self.queries += 1
        if outcome == "ok":
            self.ok += 1
        elif outcome == "stale":
            self.ok += 1
            self.stale += 1
        elif outcome == "wrong":
            self.wrong += 1
            self.detail(f"wrong: {where}: {text}")
        else:
            self.errors[outcome] = self.errors.get(outcome, 0) + 1
            if not expected:
                self.detail(f"error {outcome}: {where}: {text}")


STATS = Stats()


async def connect(url):
    return await asyncpg.connect(url, timeout=30)


class Worker:
    def __init__(self, w):
        self.w = w
        self.conn = None
        self.prepared = {}  # op -> epoch of its first use on this connection

    async def ensure(self):
        if self.conn is None or self.conn.is_closed():
            self.conn = await connect(URL)
            self.prepared.clear()

    async def run(self, op, epoch, where, coro_fn, error=None):
        """Awaits coro_fn(conn) -> (got, want) and records the outcome; `error` is the
        SQLSTATE the workload expects instead of a result."""
        try:
            await self.ensure()
            self.prepared.setdefault(op, epoch)
            got, want = await coro_fn(self.conn)
            if error is not None:
                STATS.record("wrong", where, f"got {short(got)}, expected error {error}")
            elif got == want:
                STATS.record("ok", where)
            else:
                STATS.record("wrong", where, f"got {short(got)}, expected {short(want)}")
        except asyncpg.PostgresError as e:
            code = e.sqlstate or f"X-{type(e).__name__}"
            p = self.prepared.get(op)
            if code == "0A000" and p is not None and any(p < c <= epoch for c in CHANGES.get(op, ())):
                # asyncpg retries this itself outside transactions: seen only if the retry
                # failed too.
                STATS.record("stale", where)
                return
            STATS.record(code, where, str(e), expected=code == error)
        except Exception as e:  # noqa: BLE001
            STATS.record(f"X-{type(e).__name__}", where, str(e))

    async def epoch(self, e):
        w = self.w
        for i in range(ITERATIONS):
            n = e * ITERATIONS + i
            id_ = (w * 7 + n) % ROWS + 1
            at = f"worker {w} epoch {e} i {i}"

            async def fetch(sql, *args, want):
                return rows_of(await self.conn.fetch(sql, *args)), want

            await self.run("echo", e, f"{at} echo", lambda c: fetch(
                ECHO, w, n, f"{w}:{n}", want=[[("w", str(w)), ("n", str(n)), ("tag", f"{w}:{n}")]]
            ))
            if e >= w % 3:
                await self.run("star", e, f"{at} star", lambda c: fetch(
                    STAR, id_, want=[table_row(e, id_)]
                ))
            await self.run("cols", e, f"{at} cols", lambda c: fetch(
                COLS, id_, want=[cols_row(e, id_)]
            ))
            if i % 5 == 0:
                await self.run("late", e, f"{at} late", lambda c: fetch(
                    LATE, id_, want=[[("c", f"c{id_}")]]
                ), error="42703" if e == 0 else None)
            if i % 4 == 1:
                value = blob(w, n)
                await self.run("blob", e, f"{at} blob", lambda c: fetch(
                    BLOB, value, w, n, want=[[("v", value), ("w", str(w)), ("n", str(n))]]
                ))
            if i % 7 == 3:
                await self.run("div", e, f"{at} div", lambda c: fetch(
                    DIV, n % 3, want=[[("q", str(100 // (n % 3 or 1)))]]
                ), error="22012" if n % 3 == 0 else None)
            if i == 2:
                tag = f"{w:03d}:{n:05d}:abcdef"
                await self.run("big", e, f"{at} big", lambda c: fetch(
                    BIG, tag, BIG_REPEAT, want=[[("v", tag * BIG_REPEAT)]]
                ))
            if i % 10 == 6:
                await self.run("txn", e, f"{at} txn", lambda c: self.txn(c, n))

    async def txn(self, conn, n):
        async with conn.transaction():
            first = await conn.fetch(PID, n)
            second = await conn.fetch(PID, n + 1)
        got = [[r["n"] for r in first], [r["n"] for r in second], first[0]["pid"] == second[0]["pid"]]
        return got, [[n], [n + 1], True]


async def setup():
    conn = await connect(URL)
    try:
        await conn.execute("drop table if exists matrix_t")
        await conn.execute("create table matrix_t (id int primary key, a int not null, b text not null)")
        await conn.execute(
            "insert into matrix_t select g, g * 10, 'b' || g from generate_series(1, 50) g"
        )
    finally:
        await conn.close()


async def ddl(number):
    conn = await connect(DDL_URL if number == 1 else URL)
    try:
        if number == 1:
            await conn.execute("alter table matrix_t add column c text")
            await conn.execute("update matrix_t set c = 'c' || id")
        else:
            async with conn.transaction():
                await conn.execute("drop table matrix_t")
                await conn.execute(
                    "create table matrix_t (c text not null, b text not null, "
                    "id int primary key, a bigint not null)"
                )
                await conn.execute(
                    "insert into matrix_t select 'c' || g, 'b' || g, g, g * 100 "
                    "from generate_series(1, 50) g"
                )
    finally:
        await conn.close()


async def main():
    await setup()
    workers = [Worker(w) for w in range(WORKERS)]
    encoding = "-"
    for e in range(3):
        if e > 0:
            await ddl(e)
        await asyncio.gather(*(wk.epoch(e) for wk in workers))
        print(f"asyncpg: epoch {e} done", file=sys.stderr, flush=True)
        if e == 0:
            live = next((wk.conn for wk in workers if wk.conn is not None and not wk.conn.is_closed()), None)
            if live is not None:
                encoding = live.get_settings().client_encoding
    for wk in workers:
        if wk.conn is not None:
            await wk.conn.close()
    for d in STATS.details:
        print(f"detail: {d}")
    errors = ",".join(f"{k}:{v}" for k, v in sorted(STATS.errors.items())) or "none"
    print(f"version: asyncpg {asyncpg.__version__}")
    print(
        f"summary: queries={STATS.queries} ok={STATS.ok} wrong={STATS.wrong} "
        f"errors={errors} client_encoding={encoding}"
    )
    print(f"stale: 0A000={STATS.stale}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        sys.exit(1)
