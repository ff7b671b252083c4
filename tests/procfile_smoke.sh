#!/usr/bin/env bash
# Smoke test of the Procfile: honcho starts `web` (pgsidecar run -- the demo app in
# examples/webapp), the app answers through the sidecar, and SIGTERM stops everything.
#
#   PGSIDECAR_BIN=target/debug/pgsidecar \
#   DATABASE_URL='postgres://user:pass@127.0.0.1:5432/db?sslmode=disable' \
#   bash tests/procfile_smoke.sh
#
# Needs: python3 with honcho and psycopg 3
#   python3 -m pip install honcho 'psycopg[binary]>=3.1'
# Builds nothing: PGSIDECAR_BIN (default target/debug/pgsidecar) must exist, and
# DATABASE_URL must reach a running PostgreSQL (a user with a password: pgsidecar
# authenticates the app with the URL's user and password).
#
# Optional:
#   SMOKE_PROCFILE        Procfile to run (default: Procfile at the repository root)
#   SMOKE_EXPECT_DB_PORT  port the app must report it connected to (default: the sidecar's
#                         PGSIDECAR_LISTEN port; "any" skips the check, e.g. for a Procfile
#                         that runs the app without the sidecar)
#
# Prints "1 passed, 0 failed" and exits 0, or "0 passed, 1 failed" and exits 1.

set -u

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
root=$(pwd)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/procfile-smoke.XXXXXX")
honcho_pid=
web_pgid=
app_pid=

log() { printf 'procfile_smoke: %s\n' "$*"; }

cleanup() {
    # Only what this script started: honcho, and the process group of its `web` process.
    if [ -n "$web_pgid" ] && kill -0 -- "-$web_pgid" 2>/dev/null; then
        kill -KILL -- "-$web_pgid" 2>/dev/null
    fi
    if [ -n "$app_pid" ] && kill -0 "$app_pid" 2>/dev/null; then
        kill -KILL "$app_pid" 2>/dev/null
    fi
    if [ -n "$honcho_pid" ] && kill -0 "$honcho_pid" 2>/dev/null; then
        kill -KILL "$honcho_pid" 2>/dev/null
        wait "$honcho_pid" 2>/dev/null
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
    log "FAIL: $*"
    if [ -s "$tmp/honcho.log" ]; then
        echo "----- honcho output -----"
        cat "$tmp/honcho.log"
        echo "-------------------------"
    fi
    echo "0 passed, 1 failed"
    exit 1
}

# --- inputs ---------------------------------------------------------------------------

bin=${PGSIDECAR_BIN:-target/debug/pgsidecar}
case "$bin" in
    /*) ;;
    *) bin="$root/$bin" ;;
esac
[ -x "$bin" ] || fail "PGSIDECAR_BIN=$bin is not an executable file (build it first: cargo build)"
[ -n "${DATABASE_URL:-}" ] || fail "DATABASE_URL is not set (the URL of a running PostgreSQL)"

procfile=${SMOKE_PROCFILE:-$root/Procfile}
case "$procfile" in
    /*) ;;
    *) procfile="$root/$procfile" ;;
esac
[ -f "$procfile" ] || fail "no Procfile at $procfile"

command -v python3 >/dev/null 2>&1 || fail "python3 not found"
python3 -c 'import honcho' 2>/dev/null || fail "honcho is not installed: python3 -m pip install honcho 'psycopg[binary]>=3.1'"
python3 -c 'import psycopg' 2>/dev/null || fail "psycopg is not installed: python3 -m pip install honcho 'psycopg[binary]>=3.1'"

# pgsidecar on PATH, whatever the binary's file name.
mkdir -p "$tmp/bin"
ln -s "$bin" "$tmp/bin/pgsidecar"
export PATH="$tmp/bin:$PATH"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
web_port=$(free_port) || fail "could not pick a free port"
sidecar_port=$(free_port) || fail "could not pick a free port"
metrics_port=$(free_port) || fail "could not pick a free port"
while [ "$sidecar_port" = "$web_port" ]; do sidecar_port=$(free_port); done
while [ "$metrics_port" = "$web_port" ] || [ "$metrics_port" = "$sidecar_port" ]; do
    metrics_port=$(free_port)
done
expect_db_port=${SMOKE_EXPECT_DB_PORT:-$sidecar_port}

# --- start ----------------------------------------------------------------------------

# honcho sets PORT for each process itself (base port from -p, else $PORT, else 5000), so
# the port goes in as -p. An empty env file keeps a developer's .env out of the test.
: >"$tmp/empty.env"
log "honcho start web: PORT=$web_port PGSIDECAR_LISTEN=127.0.0.1:$sidecar_port procfile=$procfile"
PGSIDECAR_LISTEN="127.0.0.1:$sidecar_port" \
    PGSIDECAR_METRICS_LISTEN="127.0.0.1:$metrics_port" \
    PYTHONUNBUFFERED=1 \
    python3 -m honcho start --no-colour -f "$procfile" -e "$tmp/empty.env" -p "$web_port" web \
    </dev/null >"$tmp/honcho.log" 2>&1 &
honcho_pid=$!

# GET url -> prints "STATUS<newline>BODY"; status 000 when the request itself failed.
http_get() {
    python3 - "$1" <<'EOF'
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
        status, body = r.status, r.read().decode("utf-8", "replace")
except urllib.error.HTTPError as e:
    status, body = e.code, e.read().decode("utf-8", "replace")
except Exception as e:
    status, body = 0, f"{type(e).__name__}: {e}"
print(f"{status:03d}")
print(body, end="")
EOF
}

# --- wait for /health -----------------------------------------------------------------

base="http://127.0.0.1:$web_port"
deadline=$((SECONDS + 30))
healthy=
while [ "$SECONDS" -lt "$deadline" ]; do
    if [ -z "$web_pgid" ]; then
        # honcho prints "web.1 started (pid=N)"; N leads its own process group (setsid).
        web_pgid=$(sed -n 's/.*web\.1 started (pid=\([0-9][0-9]*\)).*/\1/p' "$tmp/honcho.log" | head -n1)
    fi
    kill -0 "$honcho_pid" 2>/dev/null || fail "honcho exited before /health answered"
    out=$(http_get "$base/health")
    if [ "$(printf '%s\n' "$out" | head -n1)" = "200" ]; then
        healthy=1
        break
    fi
    sleep 0.5
done
[ -n "$healthy" ] || fail "GET /health did not return 200 within 30 s (last: $(printf '%s' "$out" | tr '\n' ' '))"
if [ -z "$web_pgid" ]; then
    web_pgid=$(sed -n 's/.*web\.1 started (pid=\([0-9][0-9]*\)).*/\1/p' "$tmp/honcho.log" | head -n1)
fi
# The app prints "app: listening on 0.0.0.0:PORT (pid N)": checked separately after SIGTERM
# in case the sidecar starts it in a process group of its own.
app_pid=$(sed -n 's/.*app: listening on .* (pid \([0-9][0-9]*\)).*/\1/p' "$tmp/honcho.log" | head -n1)
[ "$(printf '%s\n' "$out" | sed -n 2p)" = "ok" ] || fail "GET /health body is not 'ok': $out"
log "GET /health: 200 ok"

# --- GET / twice ----------------------------------------------------------------------

first=$(http_get "$base/")
second=$(http_get "$base/")
check=$(python3 - "$expect_db_port" "$first" "$second" <<'EOF'
import json, sys
expect_port = sys.argv[1]
pages = []
for n, raw in enumerate(sys.argv[2:], 1):
    status, _, body = raw.partition("\n")
    if status != "200":
        print(f"GET / #{n} returned {status}: {body.strip()}")
        sys.exit(1)
    try:
        page = json.loads(body)
    except ValueError:
        print(f"GET / #{n} is not JSON: {body.strip()}")
        sys.exit(1)
    pages.append(page)
for n, page in enumerate(pages, 1):
    for key in ("visit", "visits", "backend_pid", "now", "application_name", "db_port"):
        if key not in page:
            print(f"GET / #{n} lacks {key!r}: {page}")
            sys.exit(1)
    if not (isinstance(page["backend_pid"], int) and page["backend_pid"] > 0):
        print(f"GET / #{n}: backend_pid {page['backend_pid']!r} is not a process id")
        sys.exit(1)
    if page["application_name"] != "pgsidecar-demo":
        print(f"GET / #{n}: application_name {page['application_name']!r}, expected 'pgsidecar-demo'")
        sys.exit(1)
    if expect_port != "any" and str(page["db_port"]) != expect_port:
        print(f"GET / #{n}: the app connected to port {page['db_port']}, not the sidecar's {expect_port}"
              " (DATABASE_URL was not rewritten?)")
        sys.exit(1)
a, b = pages
if not b["visit"] > a["visit"]:
    print(f"visit id did not increase: {a['visit']} then {b['visit']}")
    sys.exit(1)
if not b["visits"] >= a["visits"] + 1:
    print(f"visit count did not increase: {a['visits']} then {b['visits']}")
    sys.exit(1)
print(f"visit {a['visit']} -> {b['visit']}, visits {a['visits']} -> {b['visits']}, "
      f"backend pids {a['backend_pid']}, {b['backend_pid']}, via {a['db_host']}:{a['db_port']}")
EOF
) || fail "$check"
log "GET / twice: $check"

# --- SIGTERM --------------------------------------------------------------------------

log "sending SIGTERM to honcho (pid $honcho_pid)"
kill -TERM "$honcho_pid" 2>/dev/null || fail "honcho is no longer running"
deadline=$((SECONDS + 15))
while kill -0 "$honcho_pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.2
done
if kill -0 "$honcho_pid" 2>/dev/null; then
    fail "honcho still running 15 s after SIGTERM"
fi
wait "$honcho_pid" 2>/dev/null
honcho_pid=
if [ -n "$web_pgid" ]; then
    while kill -0 -- "-$web_pgid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 0.2
    done
    if kill -0 -- "-$web_pgid" 2>/dev/null; then
        ps -o pid,pgid,args -g "$web_pgid" 2>/dev/null
        fail "processes of web.1 (process group $web_pgid) still running 15 s after SIGTERM"
    fi
fi

if [ -n "$app_pid" ]; then
    while kill -0 "$app_pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 0.2
    done
    kill -0 "$app_pid" 2>/dev/null && fail "the app (pid $app_pid) still running 15 s after SIGTERM"
fi

# The app logged its requests (the child's stdout passed through) and shut down cleanly.
grep -q '"GET / HTTP/1.1" 200' "$tmp/honcho.log" || fail "the app's request log lines are not in honcho's output"
grep -q 'app: stopped' "$tmp/honcho.log" || fail "the app did not shut down cleanly (no 'app: stopped' line)"
# honcho reports the exit of `/bin/sh -c '<Procfile command>'`. Debian's dash does not exec
# the command, and honcho signals the whole process group, so the shell itself dies of
# SIGTERM (rc=-15) whatever pgsidecar exits with; anything else is a failure.
rc=$(sed -n 's/.*web\.1 stopped (rc=\(-\{0,1\}[0-9][0-9]*\)).*/\1/p' "$tmp/honcho.log" | head -n1)
[ -n "$rc" ] || fail "honcho did not report web.1 stopping"
case "$rc" in
    0 | -15 | 143) ;;
    *) fail "web.1 exited with rc=$rc after SIGTERM, expected 0 (or -15/143: the shell honcho runs it in)" ;;
esac
log "SIGTERM: everything exited within 15 s, the app stopped cleanly, web.1 rc=$rc"

echo "----- honcho output -----"
cat "$tmp/honcho.log"
echo "-------------------------"
echo "1 passed, 0 failed"
