#!/usr/bin/env python3
"""Driver check: psycopg 3 with server-side prepared statements through pgsidecar.

Environment:
  DATABASE_URL  URL of the proxy (required)
  WORKERS       concurrent threads, each with its own connection (default 20)
  QUERIES       queries per worker (default 500)
  POOL_SIZE     if set, the distinct backend pids seen must be <= this
  PREPARED_MAX  psycopg's per-connection statement cache size (default 5)

Every connection uses prepare_threshold=0, so each statement is prepared as a named
protocol-level statement on first use; with more distinct statement texts than
PREPARED_MAX, psycopg evicts and closes statements as it goes. Every result is checked.
Prints `psycopg: workers=W queries=N errors=E wrong=X` and exits non-zero on any problem.
"""

import contextlib
import decimal
import os
import sys
import threading
import time
import traceback

import psycopg

URL = os.environ.get("DATABASE_URL")
WORKERS = int(os.environ.get("WORKERS", "20"))
QUERIES = int(os.environ.get("QUERIES", "500"))
POOL_SIZE = os.environ.get("POOL_SIZE")
PREPARED_MAX = int(os.environ.get("PREPARED_MAX", "5"))
MAX_REPORTED = 10

# (sql, params(w, i), expected rows(w, i)); the backend pid column is checked separately.
MAIN = "select %s::int as w, %s::int as i, pg_backend_pid()"
STATEMENTS = [
    (
        "select %s::int + %s::int as s",
        lambda w, i: (w, i),
        lambda w, i: [(w + i,)],
    ),
    (
        "select %s::text || '-' || %s::text as t",
        lambda w, i: (f"w{w}", f"i{i}"),
        lambda w, i: [(f"w{w}-i{i}",)],
    ),
    (
        "select g from generate_series(1, %s::int) as g",
        lambda w, i: (i % 4 + 1,),
        lambda w, i: [(g,) for g in range(1, i % 4 + 2)],
    ),
    (
        "select %s::bigint * 2 as d, %s::int as w",
        lambda w, i: (i, w),
        lambda w, i: [(2 * i, w)],
    ),
    (
        "select array[%s::int, %s::int] as a",
        lambda w, i: (w, i),
        lambda w, i: [([w, i],)],
    ),
    (
        "select %s::int as i where %s::bool",
        lambda w, i: (i, i % 2 == 0),
        lambda w, i: [(i,)] if i % 2 == 0 else [],
    ),
    (
        "select length(%s::text) as n, %s::int as w",
        lambda w, i: ("x" * (i % 37), w),
        lambda w, i: [(i % 37, w)],
    ),
    (
        "select %s::numeric(10,2) as m, %s::text as t",
        lambda w, i: (f"{i}.25", f"worker-{w}"),
        lambda w, i: [(decimal.Decimal(f"{i}.25"), f"worker-{w}")],
    ),
]

lock = threading.Lock()
totals = {"queries": 0, "errors": 0, "wrong": 0}
pids = set()
messages = []


def note(kind, text):
    with lock:
        totals[kind] += 1
        if len(messages) < MAX_REPORTED:
            messages.append(f"{kind}: {text}")


def connect():
    conn = psycopg.connect(
        URL, prepare_threshold=0, autocommit=True, connect_timeout=30
    )
    conn.prepared_max = PREPARED_MAX
    return conn


def run_main(cur, w, i, seen):
    cur.execute(MAIN, (w, i))
    rows = cur.fetchall()
    if len(rows) != 1 or rows[0][0] != w or rows[0][1] != i:
        note("wrong", f"worker {w} query {i}: {MAIN!r} returned {rows!r}")
        return None
    seen.add(rows[0][2])
    return rows[0][2]


def run_other(cur, k, w, i):
    sql, params, expected = STATEMENTS[k]
    cur.execute(sql, params(w, i))
    rows = [tuple(r) for r in cur.fetchall()]
    want = expected(w, i)
    if rows != want:
        note(
            "wrong",
            f"worker {w} query {i}: {sql!r} returned {rows!r}, expected {want!r}",
        )


def worker(w, barrier):
    seen = set()
    done = 0
    conn = None
    try:
        conn = connect()
    except Exception as e:  # noqa: BLE001
        note("errors", f"worker {w} connect: {type(e).__name__}: {e}")
    barrier.wait()
    i = 0
    while i < QUERIES:
        if conn is None or conn.closed or conn.broken:
            try:
                conn = connect()
            except Exception as e:  # noqa: BLE001
                note("errors", f"worker {w} reconnect: {type(e).__name__}: {e}")
                i += 1
                done += 1
                continue
        try:
            with conn.cursor() as cur:
                if i % 25 == 24 and i + 1 < QUERIES:
                    # An explicit transaction with two statements: both on one server.
                    rollback = i % 50 == 49
                    with conn.transaction(force_rollback=rollback):
                        p1 = run_main(cur, w, i, seen)
                        i += 1
                        done += 1
                        p2 = run_main(cur, w, i, seen)
                        if p1 is not None and p2 is not None and p2 != p1:
                            note(
                                "wrong",
                                f"worker {w} query {i}: pid changed inside a transaction ({p1} -> {p2})",
                            )
                elif i % 2 == 0:
                    run_main(cur, w, i, seen)
                else:
                    run_other(cur, (w * 7 + i) % len(STATEMENTS), w, i)
        except Exception as e:  # noqa: BLE001
            note("errors", f"worker {w} query {i}: {type(e).__name__}: {e}".rstrip())
        i += 1
        done += 1
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()
    with lock:
        totals["queries"] += done
        pids.update(seen)


def main():
    if not URL:
        print("DATABASE_URL is required", file=sys.stderr)
        return 2
    barrier = threading.Barrier(WORKERS)
    threads = [
        threading.Thread(target=worker, args=(w, barrier), daemon=True)
        for w in range(WORKERS)
    ]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    for m in messages:
        print(m)
    if totals["errors"] + totals["wrong"] > len(messages):
        print(f"... {totals['errors'] + totals['wrong'] - len(messages)} more")
    pid_ok = True
    pid_line = f"psycopg: distinct backend pids={len(pids)}"
    if POOL_SIZE:
        pid_ok = len(pids) <= int(POOL_SIZE)
        pid_line += f" (pool size {POOL_SIZE}: {'ok' if pid_ok else 'TOO MANY'})"
    print(pid_line)
    print(
        f"psycopg: elapsed={elapsed:.2f}s psycopg={psycopg.__version__} "
        f"libpq={psycopg.pq.version()} prepared_max={PREPARED_MAX}"
    )
    print(
        f"psycopg: workers={WORKERS} queries={totals['queries']} "
        f"errors={totals['errors']} wrong={totals['wrong']}"
    )
    return 0 if totals["errors"] == 0 and totals["wrong"] == 0 and pid_ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        sys.exit(1)
