#!/usr/bin/env python3
"""A tiny demo web app for pgsidecar.

Standard library HTTP server plus psycopg 3. Every request opens its own database
connection through DATABASE_URL and closes it afterwards: the pattern that is expensive
against Postgres directly and cheap through pgsidecar on localhost.

    GET /        one transaction: record a visit, then report the server's clock, the
                 backend pid, application_name and the visit count (JSON)
    GET /health  200 "ok" after `select 1`

Settings: PORT (default 5000), DATABASE_URL (required), PGAPPNAME (application_name,
default "pgsidecar-demo"). Listens on 0.0.0.0:$PORT. SIGTERM or SIGINT stops it: it stops
accepting, lets requests in flight finish, and exits 0.
"""

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg

APP_NAME = os.environ.get("PGAPPNAME") or "pgsidecar-demo"

SCHEMA = """
create table if not exists visits (
    id bigserial primary key,
    at timestamptz not null default now(),
    path text not null,
    backend_pid integer not null
)
"""


def log(message):
    print(message, flush=True)


def connect():
    # One connection per request, closed afterwards. prepare_threshold=None keeps psycopg
    # from preparing server-side statements, which a transaction-mode pooler cannot follow
    # between server connections (irrelevant for one query per connection, but the safe
    # default behind any pooler).
    return psycopg.connect(
        os.environ["DATABASE_URL"],
        autocommit=False,
        application_name=APP_NAME,
        prepare_threshold=None,
    )


def create_schema(deadline_seconds=30.0):
    """Creates the visits table, retrying while the database (or the sidecar) comes up."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            with connect() as conn:  # commits on success, rolls back on error, then closes
                conn.execute(SCHEMA)
            return
        except psycopg.errors.UniqueViolation:
            # Another process ran the same `create table if not exists` at the same moment.
            return
        except psycopg.OperationalError as e:
            if time.monotonic() > deadline:
                raise
            reason = (str(e).strip() or type(e).__name__).splitlines()[0]
            log(f"app: database not ready ({reason}); retrying")
            time.sleep(1)


def visit(path):
    with connect() as conn:
        with conn.transaction():
            cur = conn.execute(
                "insert into visits (path, backend_pid) values (%s, pg_backend_pid())"
                " returning id",
                (path,),
            )
            (visit_id,) = cur.fetchone()
            cur = conn.execute(
                "select now(), pg_backend_pid(), current_setting('application_name'),"
                " (select count(*) from visits)"
            )
            now, pid, app_name, count = cur.fetchone()
        return {
            "visit": visit_id,
            "visits": count,
            "now": now.isoformat(),
            "backend_pid": pid,
            "application_name": app_name,
            # Where this connection went: through `pgsidecar run`, 127.0.0.1 and the
            # sidecar's port rather than the database's own host.
            "db_host": conn.info.host,
            "db_port": conn.info.port,
        }


def health():
    with connect() as conn:
        conn.execute("select 1").fetchone()


class Handler(BaseHTTPRequestHandler):
    server_version = "pgsidecar-demo/1"

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        try:
            if path == "/":
                body = json.dumps(visit(path), indent=2) + "\n"
                self.reply(200, body, "application/json")
            elif path == "/health":
                health()
                self.reply(200, "ok\n")
            else:
                self.reply(404, "not found\n")
        except psycopg.Error as e:
            message = str(e).strip() or type(e).__name__
            sqlstate = getattr(e, "sqlstate", None) or "-"
            log(f"app: database error sqlstate={sqlstate} {message.splitlines()[0]}")
            self.reply(503, f"database error ({sqlstate}): {message}\n")

    def reply(self, status, body, content_type="text/plain; charset=utf-8"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        # One line per request on stdout (the default goes to stderr).
        log(f"{self.address_string()} {format % args}")


def main():
    if not os.environ.get("DATABASE_URL"):
        print("app: DATABASE_URL is not set", file=sys.stderr, flush=True)
        return 2
    port = int(os.environ.get("PORT") or "5000")

    create_schema()

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    # Let requests in flight finish on shutdown: server_close() joins their threads.
    server.daemon_threads = False
    server.block_on_close = True

    stopping = threading.Event()

    def stop(signum, _frame):
        # On a dyno (and under honcho) every process gets SIGTERM, and pgsidecar forwards
        # one too: the second signal is expected and ignored.
        if stopping.is_set():
            return
        stopping.set()
        log(f"app: {signal.Signals(signum).name} received, shutting down")
        # shutdown() waits for serve_forever() to return, so it cannot run on this thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    log(f"app: listening on 0.0.0.0:{port} (pid {os.getpid()})")
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    log("app: stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
