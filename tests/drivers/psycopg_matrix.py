#!/usr/bin/env python3
"""Driver matrix: psycopg 3 with prepare_threshold=0 (every statement a named server-side one).

Implements the workload of MATRIX.md beside this file and prints its summary.
"""

import os
import sys
import threading
import traceback

import psycopg

DRIVER = "psycopg"
URL = os.environ["DATABASE_URL"]
DDL_URL = os.environ.get("DDL_URL", URL)
WORKERS = int(os.environ.get("WORKERS", "6"))
ITERATIONS = int(os.environ.get("ITERATIONS", "20"))
ROWS = 50
BLOB_LEN = 100 * 1024
BIG_REPEAT = 10 * 1024 * 1024 // 16
MAX_DETAILS = int(os.environ.get("MAX_DETAILS", "10"))

ECHO = "select %s::int as w, %s::int as n, %s::text as tag"
STAR = "select * from matrix_t where id = %s"
COLS = "select id, a, b from matrix_t where id = %s"
LATE = "select c from matrix_t where id = %s"
BLOB = "select %s::bytea as v, %s::int as w, %s::int as n"
DIV = "select 100 / %s::int as q"
BIG = "select repeat(%s::text, %s::int) as v"
PID = "select %s::int as n, pg_backend_pid() as pid"

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


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
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
        with self.lock:
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


def connect(url):
    return psycopg.connect(url, prepare_threshold=0, autocommit=True, connect_timeout=30)


def rows_of(cur):
    names = [d.name for d in cur.description]
    return [[(name, as_text(v)) for name, v in zip(names, row)] for row in cur.fetchall()]


def as_text(v):
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    return str(v)


def sqlstate(e):
    code = getattr(e, "sqlstate", None)
    return code if code else f"X-{type(e).__name__}"


class Worker:
    def __init__(self, w):
        self.w = w
        self.conn = None
        self.prepared = {}  # op -> epoch in which this connection (as psycopg knows) prepared it

    def ensure(self):
        if self.conn is None or self.conn.closed or self.conn.broken:
            self.conn = connect(URL)
            self.prepared.clear()

    def run(self, op, epoch, where, fn, error=None):
        """Runs fn(conn) -> (got, want) and records the outcome; `error` is the SQLSTATE the
        workload expects instead of a result."""
        try:
            self.ensure()
            self.prepared.setdefault(op, epoch)
            got, want = fn(self.conn)
            if error is not None:
                STATS.record("wrong", where, f"got {short(got)}, expected error {error}")
            elif got == want:
                STATS.record("ok", where)
            else:
                STATS.record("wrong", where, f"got {short(got)}, expected {short(want)}")
        except psycopg.Error as e:
            code = sqlstate(e)
            if code == "0A000" and self.stale_ok(op, epoch):
                STATS.record("stale", where)
                self.recover()
                return
            first_line = (str(e).strip().splitlines() or [""])[0]
            STATS.record(code, where, first_line, expected=code == error)
            if code == "0A000":
                self.recover()
        except Exception as e:  # noqa: BLE001
            STATS.record(f"X-{type(e).__name__}", where, str(e))

    def stale_ok(self, op, epoch):
        p = self.prepared.get(op)
        return p is not None and any(p < c <= epoch for c in CHANGES.get(op, ()))

    def recover(self):
        # psycopg forgets its prepared statements when it sees DEALLOCATE ALL succeed.
        try:
            self.conn.execute("deallocate all", prepare=False)
            self.prepared.clear()
        except Exception as e:  # noqa: BLE001
            STATS.detail(f"recover: {type(e).__name__}: {e}")

    def epoch(self, e):
        w = self.w
        for i in range(ITERATIONS):
            n = e * ITERATIONS + i
            id_ = (w * 7 + n) % ROWS + 1
            at = f"worker {w} epoch {e} i {i}"
            self.run("echo", e, f"{at} echo", lambda c: (
                rows_of(c.execute(ECHO, (w, n, f"{w}:{n}"))),
                [[("w", str(w)), ("n", str(n)), ("tag", f"{w}:{n}")]],
            ))
            if e >= w % 3:
                self.run("star", e, f"{at} star", lambda c: (
                    rows_of(c.execute(STAR, (id_,))), [table_row(e, id_)],
                ))
            self.run("cols", e, f"{at} cols", lambda c: (
                rows_of(c.execute(COLS, (id_,))),
                [cols_row(e, id_)],
            ))
            if i % 5 == 0:
                self.run("late", e, f"{at} late", lambda c: (
                    rows_of(c.execute(LATE, (id_,))), [[("c", f"c{id_}")]],
                ), error="42703" if e == 0 else None)
            if i % 4 == 1:
                value = blob(w, n)
                self.run("blob", e, f"{at} blob", lambda c: (
                    rows_of(c.execute(BLOB, (value, w, n))),
                    [[("v", value), ("w", str(w)), ("n", str(n))]],
                ))
            if i % 7 == 3:
                self.run("div", e, f"{at} div", lambda c: (
                    rows_of(c.execute(DIV, (n % 3,))), [[("q", str(100 // (n % 3 or 1)))]],
                ), error="22012" if n % 3 == 0 else None)
            if i == 2:
                tag = f"{w:03d}:{n:05d}:abcdef"
                self.run("big", e, f"{at} big", lambda c: (
                    rows_of(c.execute(BIG, (tag, BIG_REPEAT))), [[("v", tag * BIG_REPEAT)]],
                ))
            if i % 10 == 6:
                self.run("txn", e, f"{at} txn", lambda c: self.txn(c, n))

    def txn(self, conn, n):
        with conn.transaction():
            first = conn.execute(PID, (n,)).fetchall()
            second = conn.execute(PID, (n + 1,)).fetchall()
        got = [[r[0] for r in first], [r[0] for r in second], first[0][1] == second[0][1]]
        return got, [[n], [n + 1], True]


def short(v):
    text = repr(v)
    return text if len(text) <= 300 else text[:300] + f"... ({len(text)} chars)"


def setup():
    with connect(URL) as conn:
        conn.execute("drop table if exists matrix_t")
        conn.execute("create table matrix_t (id int primary key, a int not null, b text not null)")
        conn.execute(
            "insert into matrix_t select g, g * 10, 'b' || g from generate_series(1, 50) g"
        )


def ddl(number):
    if number == 1:
        with connect(DDL_URL) as conn:
            conn.execute("alter table matrix_t add column c text")
            conn.execute("update matrix_t set c = 'c' || id")
    else:
        with connect(URL) as conn:
            with conn.transaction():
                conn.execute("drop table matrix_t")
                conn.execute(
                    "create table matrix_t (c text not null, b text not null, "
                    "id int primary key, a bigint not null)"
                )
                conn.execute(
                    "insert into matrix_t select 'c' || g, 'b' || g, g, g * 100 "
                    "from generate_series(1, 50) g"
                )


def main():
    setup()
    workers = [Worker(w) for w in range(WORKERS)]
    encoding = "-"
    for e in range(3):
        if e > 0:
            ddl(e)
        threads = [threading.Thread(target=wk.epoch, args=(e,)) for wk in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"{DRIVER}: epoch {e} done", file=sys.stderr, flush=True)
        if e == 0:
            live = next((wk.conn for wk in workers if wk.conn is not None and not wk.conn.closed), None)
            if live is not None:
                encoding = live.info.parameter_status("client_encoding")
    for wk in workers:
        if wk.conn is not None:
            wk.conn.close()
    for d in STATS.details:
        print(f"detail: {d}")
    errors = ",".join(f"{k}:{v}" for k, v in sorted(STATS.errors.items())) or "none"
    print(f"version: psycopg {psycopg.__version__}, libpq {psycopg.pq.version()}")
    print(
        f"summary: queries={STATS.queries} ok={STATS.ok} wrong={STATS.wrong} "
        f"errors={errors} client_encoding={encoding}"
    )
    print(f"stale: 0A000={STATS.stale}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        sys.exit(1)
