#!/usr/bin/env python3
"""pgsidecar benchmark harness (issue 6): pgsidecar vs PgBouncer vs direct PostgreSQL.

One command:  python3 bench/run.py [--quick] [--rounds N] [--duration S] [--out DIR] [--binary PATH]
                                  [--transport tcp|unix] [--pgbouncer PATH ...]

It builds pgsidecar (release), starts a throwaway PostgreSQL 15, PgBouncer and pgsidecar on
127.0.0.1 with equal settings, drives all of them with pgbench in alternating rounds, and writes
a table to stdout, results.csv and tps.png to the output directory. Everything it starts is
stopped at the end, on Ctrl-C and on errors. See bench/README.md.
"""

import argparse
import asyncio
import base64
import csv
import datetime
import glob
import hashlib
import hmac
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_USER = "bench"
BENCH_DB = "bench"
BENCH_PASSWORD = "bench-" + secrets.token_hex(8)
CLK_TCK = os.sysconf("SC_CLK_TCK")

DIRECT, PGBOUNCER, SIDECAR = "direct", "pgbouncer", "pgsidecar"
TARGETS = [DIRECT, PGBOUNCER, SIDECAR]
MODES = ["simple", "extended", "prepared", "unnamed"]
# "unnamed" is pgbench -M extended through a second pgsidecar with
# PGSIDECAR_PREPARE_UNNAMED_STATEMENTS=1; direct and PgBouncer rows are their -M extended runs.
PGBENCH_MODE = {"unnamed": "extended"}
# Modes where a target's row is its -M extended run instead of a run of its own.
REUSES_EXTENDED = {"prepared": (PGBOUNCER,), "unnamed": (DIRECT, PGBOUNCER)}

CSV_FIELDS = [
    "phase", "round", "target", "mode", "mode_run", "clients", "pool_size", "duration_s", "status",
    "tps", "transactions", "failed_transactions", "lat_avg_ms", "lat_p50_ms", "lat_p99_ms",
    "lat_max_ms", "lat_mean_ms", "conn_time_ms", "proxy_cpu_s", "proxy_cpu_s_per_100k_tx", "proxy_cpu_us_per_tx",
    "transport", "service_ms", "ideal_latency_ms",
    "ideal_wait_ms", "wait_p50_ms", "wait_p99_ms", "wait_max_ms", "steady_tps", "window_s", "connections_requested",
    "connections_open", "rss_base_kb", "rss_kb", "rss_per_conn_kb", "fd_limit", "note", "error",
]


def log(msg=""):
    print(msg, flush=True)


def die(msg):
    raise SystemExit(f"bench: {msg}")


# ----------------------------------------------------------------------------------------------
# Processes we start: tracked so that cleanup stops exactly those.

class Children:
    def __init__(self):
        self.procs = []  # (name, Popen, stop_signal)

    def add(self, name, proc, stop_signal=signal.SIGTERM):
        self.procs.append((name, proc, stop_signal))

    def stop(self, proc, stop_signal=signal.SIGTERM, grace=10.0):
        if proc.poll() is None:
            try:
                proc.send_signal(stop_signal)
            except ProcessLookupError:
                pass
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session/group: only what we started
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        else:
            # The leader is gone; reap any stragglers still in its group (e.g. postgres backends).
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.procs = [p for p in self.procs if p[1] is not proc]

    def stop_all(self):
        for name, proc, sig in reversed(list(self.procs)):
            self.stop(proc, sig)


CHILDREN = Children()


def run_cmd(cmd, timeout, check=True, env=None, cwd=None, as_postgres=False, stdout=subprocess.PIPE):
    """Runs a command in its own process group; kills that group on timeout or interrupt."""
    kw = postgres_user_kw() if as_postgres else {}
    p = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.STDOUT,
                         text=True, env=env, cwd=cwd, start_new_session=True, **kw)
    try:
        out, _ = p.communicate(timeout=timeout)
    except BaseException:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
        raise
    if check and p.returncode != 0:
        die(f"command failed ({p.returncode}): {' '.join(cmd)}\n{out or ''}")
    return p.returncode, out or ""


def postgres_user_kw():
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, deadline_s, what):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            die(f"{what} exited with {proc.returncode} while starting (see its log)")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    die(f"{what} did not listen on 127.0.0.1:{port} within {deadline_s:.0f} s")


def proc_cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)
    except (OSError, IndexError, ValueError):
        return None


def proc_status_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def proc_fd_limit(pid):
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    return int(line.split()[3])
    except (OSError, ValueError, IndexError):
        pass
    return None


def raise_fd_limit(want=65536):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (want, max(hard, soft)):
        try:
            new_hard = max(hard, target) if os.geteuid() == 0 else hard
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(target, new_hard), new_hard))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def find_pg_bin(name):
    for d in ("/usr/lib/postgresql/15/bin", "/usr/local/bin"):
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    p = shutil.which(name)
    if not p:
        die(f"{name} not found (PostgreSQL 15 binaries expected in /usr/lib/postgresql/15/bin)")
    return p


def clean_env():
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("PG") or k.startswith("PGSIDECAR_") or k.startswith("PGBOUNCER_")
                   or k in ("DATABASE_URL", "LOG_LEVEL", "DYNO"))}
    env["PGSSLMODE"] = "disable"  # no TLS on any hop: same for every target
    env["PGCONNECT_TIMEOUT"] = "30"
    return env


# ----------------------------------------------------------------------------------------------
# PostgreSQL, PgBouncer, pgsidecar

class Postgres:
    def __init__(self, tmp, bins):
        self.tmp = tmp
        self.bins = bins
        self.data = os.path.join(tmp, "pgdata")
        self.sock = os.path.join(tmp, "sock")
        self.logfile = os.path.join(tmp, "logs", "postgres.log")
        self.port = None
        self.proc = None

    def psql_super(self, sql, db="postgres"):
        env = clean_env()
        _, out = run_cmd([self.bins["psql"], "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", self.sock,
                          "-p", str(self.port), "-U", "postgres", "-d", db, "-c", sql],
                         timeout=120, env=env, cwd=self.tmp, as_postgres=True)
        return out.strip()

    def start(self):
        os.makedirs(self.sock, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.sock, "postgres", "postgres")
        run_cmd([self.bins["initdb"], "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                 "--no-sync", "--no-instructions"], timeout=180, env=clean_env(), cwd=self.tmp,
                as_postgres=True)
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
            f.write("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
        self.port = free_port()
        args = [self.bins["postgres"], "-D", self.data,
                "-c", f"port={self.port}", "-c", "listen_addresses=127.0.0.1",
                "-c", f"unix_socket_directories={self.sock}",
                "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                "-c", "max_connections=400", "-c", "shared_buffers=128MB",
                "-c", "password_encryption=scram-sha-256", "-c", "ssl=off",
                "-c", "log_min_messages=warning", "-c", "logging_collector=off"]
        logf = open(self.logfile, "a")
        if os.geteuid() == 0:
            shutil.chown(self.logfile, "postgres", "postgres")
        self.proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT, cwd=self.tmp,
                                     env=clean_env(), start_new_session=True, **postgres_user_kw())
        logf.close()
        # SIGINT = fast shutdown for the postmaster.
        CHILDREN.add("postgres", self.proc, signal.SIGINT)
        end = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                die(f"postgres exited with {self.proc.returncode}; log: {self.logfile}\n" + tail(self.logfile))
            rc, _ = run_cmd([self.bins["psql"], "-X", "-q", "-h", self.sock, "-p", str(self.port), "-U",
                             "postgres", "-d", "postgres", "-c", "select 1"], timeout=10, check=False,
                            env=clean_env(), cwd=self.tmp, as_postgres=True)
            if rc == 0:
                break
            if time.monotonic() > end:
                die("postgres did not accept connections within 60 s\n" + tail(self.logfile))
            time.sleep(0.2)

    def setup_bench(self, scale):
        self.psql_super(f"CREATE ROLE {BENCH_USER} LOGIN PASSWORD '{BENCH_PASSWORD}'")
        self.psql_super(f"CREATE DATABASE {BENCH_DB} OWNER {BENCH_USER}")
        env = clean_env()
        env["PGPASSWORD"] = BENCH_PASSWORD
        run_cmd([self.bins["pgbench"], "-i", "-s", str(scale), "-q", "-h", "127.0.0.1", "-p", str(self.port),
                 "-U", BENCH_USER, BENCH_DB], timeout=600, env=env, cwd=self.tmp)
        self.psql_super("CHECKPOINT")
        secret = self.psql_super(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{BENCH_USER}'")
        if not secret.startswith("SCRAM-SHA-256$"):
            die(f"unexpected password verifier for {BENCH_USER}: {secret[:20]}...")
        return secret

    def stop(self):
        if self.proc is not None:
            CHILDREN.stop(self.proc, signal.SIGINT, grace=20)


class Proxy:
    """One pooler process (PgBouncer or pgsidecar) listening on 127.0.0.1:port and, with
    transport unix, on the Unix socket DIR/.s.PGSQL.port as well (`host` is where pgbench goes)."""

    def __init__(self, kind, label, tmp, pool_size, pg_port, scram_secret, binary=None, client_auth="scram-sha-256",
                 extra_env=None, transport="tcp", pgbouncer_path=None, max_prepared=None):
        self.kind = kind
        self.pgbouncer_path = pgbouncer_path
        self.max_prepared = max_prepared
        self.transport = transport
        self.sockdir = os.path.join(tmp, f"{label}.sock") if transport == "unix" else None
        self.host = self.sockdir or "127.0.0.1"
        self.extra_env = extra_env or {}
        self.label = label
        self.tmp = tmp
        self.pool_size = pool_size
        self.pg_port = pg_port
        self.scram_secret = scram_secret
        self.binary = binary
        self.client_auth = client_auth
        self.port = None
        self.proc = None
        self.logfile = os.path.join(tmp, "logs", f"{label}.log")
        self.restarts = 0

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self):
        self.port = free_port()
        logf = open(self.logfile, "a")
        logf.write(f"--- start {datetime.datetime.now().isoformat()} port {self.port}\n")
        logf.flush()
        if os.geteuid() == 0:
            shutil.chown(self.logfile, "postgres", "postgres")
        if self.kind == PGBOUNCER:
            if self.sockdir:
                os.makedirs(self.sockdir, mode=0o700, exist_ok=True)
                if os.geteuid() == 0:
                    shutil.chown(self.sockdir, "postgres", "postgres")
            ini = self.write_pgbouncer_ini()
            exe = self.pgbouncer_path or shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
            self.proc = subprocess.Popen([exe, ini],
                                         stdout=logf, stderr=subprocess.STDOUT, cwd=self.tmp, env=clean_env(),
                                         start_new_session=True, **postgres_user_kw())
        else:
            env = clean_env()
            env.update({
                "DATABASE_URL": f"postgres://{BENCH_USER}:{BENCH_PASSWORD}@127.0.0.1:{self.pg_port}/{BENCH_DB}"
                                "?sslmode=disable",
                # With transport unix also DIR/.s.PGSQL.PORT (pgsidecar creates DIR, 0700).
                "PGSIDECAR_LISTEN": f"127.0.0.1:{self.port}" + (f",{self.sockdir}:{self.port}" if self.sockdir else ""),
                "PGSIDECAR_POOL_SIZE": str(self.pool_size),
                "PGSIDECAR_POOL_MODE": "transaction",
                "PGSIDECAR_CLIENT_AUTH": self.client_auth,
                "PGSIDECAR_MAX_CLIENT_CONN": "12000",
                "PGSIDECAR_QUERY_WAIT_TIMEOUT": "20s",
                "PGSIDECAR_SHUTDOWN_TIMEOUT": "3s",
                "PGSIDECAR_LOG_LEVEL": "warn",
                # On, as in production, each on its own port (two sidecars run at once).
                "PGSIDECAR_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
            })
            env.update(self.extra_env)
            self.proc = subprocess.Popen([self.binary, "serve"], stdout=logf, stderr=subprocess.STDOUT,
                                         cwd=self.tmp, env=env, start_new_session=True)
        logf.close()
        CHILDREN.add(self.label, self.proc, signal.SIGTERM)  # both: shut down now, no waiting for clients
        wait_port(self.port, self.proc, 30, self.label)

    def write_pgbouncer_ini(self):
        userlist = os.path.join(self.tmp, f"{self.label}.userlist.txt")
        with open(userlist, "w") as f:
            f.write(f'"{BENCH_USER}" "{self.scram_secret}"\n')
        ini = os.path.join(self.tmp, f"{self.label}.ini")
        with open(ini, "w") as f:
            f.write(f"""[databases]
{BENCH_DB} = host=127.0.0.1 port={self.pg_port} dbname={BENCH_DB}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir = {self.sockdir or ""}
auth_type = {self.client_auth}
auth_file = {userlist}
pool_mode = transaction
default_pool_size = {self.pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 12000
max_db_connections = 0
query_wait_timeout = 20
server_tls_sslmode = disable
client_tls_sslmode = disable
listen_backlog = 1024
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
stats_period = 3600
pidfile = {os.path.join(self.tmp, self.label + '.pid')}
""")
            if self.max_prepared is not None and self.max_prepared >= 0:
                f.write(f"max_prepared_statements = {self.max_prepared}\n")
        if os.geteuid() == 0:
            for p in (userlist, ini):
                shutil.chown(p, "postgres", "postgres")
                os.chmod(p, 0o600)
        return ini

    def stop(self):
        if self.proc is not None:
            CHILDREN.stop(self.proc, signal.SIGTERM, grace=10)


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# ----------------------------------------------------------------------------------------------
# pgbench

def pct(sorted_vals, p):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(-(-p * len(sorted_vals) // 100)) - 1))
    return sorted_vals[k]


def read_tx_logs(prefix):
    """pgbench -l lines: client_id tx_no latency_us script_no epoch_s epoch_us -> [(end_s, latency_us)]."""
    rows = []
    for path in glob.glob(prefix + ".*"):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 6:
                    continue
                try:
                    lat = int(parts[2])
                    end = int(parts[4]) + int(parts[5]) / 1e6
                except ValueError:
                    continue  # "failed" / "skipped" transactions
                rows.append((end, lat))
        os.unlink(path)
    return rows


class Bench:
    def __init__(self, args, bins, tmp):
        self.args = args
        self.bins = bins
        self.tmp = tmp
        self.logdir = os.path.join(tmp, "txlogs")
        os.makedirs(self.logdir, exist_ok=True)
        self.env = clean_env()
        self.env["PGPASSWORD"] = BENCH_PASSWORD
        self.seq = 0
        self.incidents = []

    def pgbench(self, port, mode, clients, duration, select_only=True, script=None, connect=False,
                tx_log=False, proxy=None, host=None):
        self.seq += 1
        host = host or (proxy.host if proxy else "127.0.0.1")
        cmd = [self.bins["pgbench"], "-h", host, "-p", str(port), "-U", BENCH_USER, "-n",
               "-c", str(clients), "-j", str(min(2, clients)), "-T", str(duration), "-M", PGBENCH_MODE.get(mode, mode)]
        if script:
            cmd += ["-f", script]
        elif select_only:
            cmd += ["-S"]
        if connect:
            cmd += ["-C"]
        prefix = None
        if tx_log:
            prefix = os.path.join(self.logdir, f"run{self.seq}")
            cmd += ["-l", f"--log-prefix={prefix}"]
        cmd += [BENCH_DB]
        cpu0 = proc_cpu_seconds(proxy.pid) if proxy else None
        t0 = time.monotonic()
        timeout = duration + 60 + clients * 0.2
        res = {"status": "ok", "cmd": " ".join(cmd)}
        try:
            rc, out = run_cmd(cmd, timeout=timeout, check=False, env=self.env, cwd=self.tmp)
        except subprocess.TimeoutExpired:
            rc, out = None, ""
            res["status"] = "hang"
            res["error"] = f"pgbench did not finish within {timeout:.0f} s (killed)"
        res["wall_s"] = time.monotonic() - t0
        cpu1 = proc_cpu_seconds(proxy.pid) if proxy else None
        m = re.search(r"^tps = ([\d.]+)", out, re.M)
        tps = float(m.group(1)) if m else None
        m = re.search(r"number of transactions actually processed: (\d+)", out)
        txns = int(m.group(1)) if m else None
        m = re.search(r"number of failed transactions: (\d+)", out)
        failed = int(m.group(1)) if m else 0
        m = re.search(r"latency average = ([\d.]+) ms", out)
        lat_avg = float(m.group(1)) if m else None
        m = re.search(r"(?:initial|average) connection time = ([\d.]+) ms", out)
        res["conn_time_ms"] = float(m.group(1)) if m else None
        if rc not in (0, None) or tps is None:
            res["status"] = "failed" if res["status"] == "ok" else res["status"]
            errs = [l for l in out.splitlines() if "error" in l.lower() or "fatal" in l.lower()
                    or "abort" in l.lower()]
            res.setdefault("error", (errs[0] if errs else (out.strip().splitlines() or ["?"])[-1])[:300])
            res["exit_code"] = rc
            tps = None  # incomplete runs are not numbers we compare
        res.update(tps=tps, transactions=txns, failed_transactions=failed, lat_avg_ms=lat_avg)
        if proxy is not None:
            if cpu0 is not None and cpu1 is not None:
                res["proxy_cpu_s"] = cpu1 - cpu0
                if txns:
                    res["proxy_cpu_s_per_100k_tx"] = (cpu1 - cpu0) / txns * 1e5
                    # The proxy's CPU per transaction: on a dyno, taken from the app.
                    res["proxy_cpu_us_per_tx"] = (cpu1 - cpu0) / txns * 1e6
            if not proxy.alive():
                res["status"] = "crash"
                res["error"] = (res.get("error", "") + f" {proxy.label} exited with {proxy.proc.returncode}").strip()
        if prefix:
            res["txlog"] = read_tx_logs(prefix)
        return res


def ensure_alive(proxy, bench, context):
    if not proxy.alive():
        msg = f"{proxy.label} was not running before {context} (exit {proxy.proc.returncode}); restarted. Log tail:\n" \
              + tail(proxy.logfile)
        log("  !! " + msg)
        bench.incidents.append(msg)
        proxy.restarts += 1
        proxy.stop()
        proxy.start()


# ----------------------------------------------------------------------------------------------
# Idle connections: a minimal asyncio Postgres client with SCRAM-SHA-256.

_SALTED = {}


def _hmac(key, msg):
    return hmac.new(key, msg, hashlib.sha256).digest()


async def _read_msg(reader):
    head = await reader.readexactly(5)
    typ, ln = head[:1], struct.unpack("!I", head[1:])[0]
    body = await reader.readexactly(ln - 4)
    return typ, body


def _msg(typ, body):
    return typ + struct.pack("!I", len(body) + 4) + body


def _err_text(body):
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[part[:1]] = part[1:].decode(errors="replace")
    return f"{fields.get(b'C', '?')} {fields.get(b'M', '')}"


async def pg_login(port, user, password, database):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        params = b"user\0" + user.encode() + b"\0database\0" + database.encode() + b"\0\0"
        body = struct.pack("!I", 196608) + params
        writer.write(struct.pack("!I", len(body) + 4) + body)
        nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        client_first_bare = f"n=,r={nonce}"
        auth_message = server_key = None
        while True:
            typ, body = await _read_msg(reader)
            if typ == b"E":
                raise RuntimeError("login refused: " + _err_text(body))
            if typ == b"R":
                code = struct.unpack("!I", body[:4])[0]
                if code == 0:
                    continue
                if code == 10:  # AuthenticationSASL
                    mechs = body[4:].split(b"\0")
                    if b"SCRAM-SHA-256" not in mechs:
                        raise RuntimeError(f"no SCRAM-SHA-256 offered: {mechs}")
                    first = ("n,," + client_first_bare).encode()
                    writer.write(_msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first))
                elif code == 11:  # SASLContinue
                    server_first = body[4:].decode()
                    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
                    if not attrs["r"].startswith(nonce):
                        raise RuntimeError("server nonce does not extend ours")
                    salt, iters = base64.b64decode(attrs["s"]), int(attrs["i"])
                    key = (salt, iters)
                    if key not in _SALTED:
                        _SALTED[key] = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iters)
                    salted = _SALTED[key]
                    client_key = _hmac(salted, b"Client Key")
                    stored_key = hashlib.sha256(client_key).digest()
                    without_proof = f"c=biws,r={attrs['r']}"
                    auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
                    sig = _hmac(stored_key, auth_message)
                    proof = bytes(a ^ b for a, b in zip(client_key, sig))
                    server_key = _hmac(salted, b"Server Key")
                    writer.write(_msg(b"p", f"{without_proof},p={base64.b64encode(proof).decode()}".encode()))
                elif code == 12:  # SASLFinal
                    final = body[4:].decode()
                    expect = base64.b64encode(_hmac(server_key, auth_message)).decode()
                    if final.split(",")[0] != f"v={expect}":
                        raise RuntimeError("server signature mismatch")
                else:
                    raise RuntimeError(f"unsupported authentication request {code}")
                await writer.drain()
            elif typ == b"Z":
                return reader, writer
            # 'S' ParameterStatus, 'K' BackendKeyData, 'N' notices: ignored
    except BaseException:
        writer.close()
        raise


async def pg_simple_query(reader, writer, sql):
    writer.write(_msg(b"Q", sql.encode() + b"\0"))
    await writer.drain()
    rows, err = [], None
    while True:
        typ, body = await _read_msg(reader)
        if typ == b"D":
            n = struct.unpack("!H", body[:2])[0]
            off, row = 2, []
            for _ in range(n):
                ln = struct.unpack("!i", body[off:off + 4])[0]
                off += 4
                row.append(None if ln < 0 else body[off:off + ln].decode())
                off += max(ln, 0)
            rows.append(row)
        elif typ == b"E":
            err = _err_text(body)
        elif typ == b"Z":
            if err:
                raise RuntimeError(err)
            return rows


async def idle_connections(proxy, n, deadline_s, concurrency=200):
    """Opens n authenticated idle connections, measures RSS, checks a sample still works, closes."""
    conns, errors = [], []
    sem = asyncio.Semaphore(concurrency)

    async def one():
        async with sem:
            try:
                rw = await asyncio.wait_for(pg_login(proxy.port, BENCH_USER, BENCH_PASSWORD, BENCH_DB), 60)
                conns.append(rw)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, RuntimeError) as e:
                errors.append(f"{type(e).__name__}: {e}")

    t0 = time.monotonic()
    tasks = [asyncio.ensure_future(one()) for _ in range(n)]
    done, pending = await asyncio.wait(tasks, timeout=deadline_s)
    for t in pending:
        t.cancel()
    if pending:
        errors.append(f"{len(pending)} logins still pending after {deadline_s} s")
    open_s = time.monotonic() - t0
    await asyncio.sleep(3)  # let the proxy settle
    res = {"connections_open": len(conns), "open_s": open_s, "errors": errors,
           "rss_kb": proc_status_kb(proxy.pid, "VmRSS"), "hwm_kb": proc_status_kb(proxy.pid, "VmHWM")}
    # Idle connections must still be usable: a sample runs a query through the pool.
    sample = conns[:: max(1, len(conns) // 20)][:20]
    ok = 0
    for r, w in sample:
        try:
            rows = await asyncio.wait_for(pg_simple_query(r, w, "SELECT 1"), 20)
            ok += rows == [["1"]]
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, RuntimeError) as e:
            errors.append(f"sample query: {type(e).__name__}: {e}")
    res["sample_ok"], res["sample_n"] = ok, len(sample)
    for r, w in conns:
        try:
            w.write(_msg(b"X", b""))
            w.close()
        except OSError:
            pass
    await asyncio.sleep(1)
    return res


# ----------------------------------------------------------------------------------------------
# Phases

def fmt_num(v, digits=0):
    if v is None:
        return "NA"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def med_spread(vals, digits=0):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "NA"
    m = statistics.median(vals)
    if len(vals) == 1:
        return fmt_num(m, digits)
    return f"{fmt_num(m, digits)} [{fmt_num(min(vals), digits)}-{fmt_num(max(vals), digits)}]"


def median(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def ratio(a, b):
    if a is None or b in (None, 0):
        return "NA"
    return f"{a / b:.2f}"


def paired_ratios(rows, phase, mode, clients, key, a, b):
    """a/b within each round: the two runs of one point in one round are a minute apart at
    most, so noise that drifts over minutes hits both; a ratio of medians can pair a good
    round of one target with a bad round of the other."""
    by = {}
    for r in rows:
        if (r["phase"] == phase and r["mode"] == mode and r["clients"] == clients and r["status"] == "ok"
                and r.get(key) is not None):
            by[(r["target"], r["round"])] = r[key]
    return [by[(a, n)] / by[(b, n)] for (t, n) in sorted(by) if t == a and by.get((b, n))]


def ratio_spread(vals):
    if not vals:
        return "NA"
    m = statistics.median(vals)
    return f"{m:.2f}" if len(vals) == 1 else f"{m:.2f} [{min(vals):.2f}-{max(vals):.2f}]"


def main():
    ap = argparse.ArgumentParser(description="Benchmark pgsidecar against PgBouncer and direct PostgreSQL.")
    ap.add_argument("--quick", action="store_true", help="3 s runs, 1 round, fewer points (a smoke run)")
    ap.add_argument("--rounds", type=int, help="rounds of A B C alternation (default 5, quick 1)")
    ap.add_argument("--duration", type=int, help="seconds per pgbench run (default 8, quick 3)")
    ap.add_argument("--out", help="output directory (default bench/out/<timestamp>)")
    ap.add_argument("--binary", help="use this pgsidecar binary instead of cargo build --release")
    ap.add_argument("--pgbouncer", metavar="PATH", action="append", default=[],
                    help="another PgBouncer build to add to the select-only runs, with max_prepared_statements"
                         " set (its prepared rows are real prepared runs); repeatable")
    ap.add_argument("--max-prepared-statements", type=int, default=200,
                    help="max_prepared_statements of the --pgbouncer builds (default 200; -1 leaves it unset,"
                         " for a build older than 1.21, which refuses the setting)")
    ap.add_argument("--transport", choices=("tcp", "unix", "both"), default="tcp",
                    help="how pgbench reaches every target: tcp (127.0.0.1) or unix (each one's Unix socket:"
                         " PostgreSQL's, PgBouncer's unix_socket_dir, pgsidecar's socket directory); both: unix,"
                         " plus pgsidecar and each --pgbouncer build over TCP as targets of their own (the same"
                         " processes), so one run compares each proxy's socket with its TCP")
    ap.add_argument("--clients", help="comma-separated client counts (default 1,16,64,256; quick 1,64)")
    ap.add_argument("--modes", help="comma-separated query modes (default simple,extended,prepared,unnamed;"
                    " unnamed is -M extended with PGSIDECAR_PREPARE_UNNAMED_STATEMENTS=1)")
    ap.add_argument("--idle-conns", type=int, help="idle connections for the memory phase (default 10000; quick 1000)")
    ap.add_argument("--fair-clients", type=int, default=500)
    ap.add_argument("--fair-pool", type=int, default=10)
    ap.add_argument("--fair-duration", type=int, help="pgbench -T for fairness runs, including connecting the clients (default 12, quick 6)")
    ap.add_argument("--pool-size", type=int, default=20)
    ap.add_argument("--scale", type=int, default=10, help="pgbench -i scale (default 10)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (for debugging)")
    ap.add_argument("--replot", metavar="DIR", help="only redraw summary.txt and tps.png from DIR/results.csv")
    args = ap.parse_args()
    if args.replot:
        return replot(args.replot)
    q = args.quick
    args.rounds = args.rounds or (1 if q else 5)
    args.duration = args.duration or (3 if q else 8)
    args.fair_duration = args.fair_duration or (6 if q else 12)
    args.idle_conns = args.idle_conns if args.idle_conns is not None else (1000 if q else 10000)
    args.clients = [int(c) for c in (args.clients or ("1,64" if q else "1,16,64,256")).split(",")]
    args.modes = (args.modes or ",".join(MODES)).split(",")
    for m in args.modes:
        if m not in MODES:
            die(f"unknown mode {m}")
    if "unnamed" in args.modes and "extended" not in args.modes:
        die("mode unnamed runs next to mode extended: add extended to --modes")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = os.path.abspath(args.out or os.path.join(REPO, "bench", "out", stamp))
    os.makedirs(out, exist_ok=True)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    tmp = None
    rc = 0
    try:
        tmp = tempfile.mkdtemp(prefix="pgsidecar-bench-")
        rc = run(args, out, tmp)
    except KeyboardInterrupt as e:
        log(f"\nbench: interrupted ({str(e) or 'Ctrl-C'}); stopping everything it started;"
            f" rows measured so far are in {out}/results.csv")
        rc = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        CHILDREN.stop_all()
        if tmp:
            if os.path.isdir(os.path.join(tmp, "logs")):
                shutil.copytree(os.path.join(tmp, "logs"), os.path.join(out, "logs"), dirs_exist_ok=True)
            if args.keep_tmp:
                log(f"temp dir kept: {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    return rc


def build_binary(args, tmp):
    if args.binary:
        src = os.path.abspath(args.binary)
        if not os.access(src, os.X_OK):
            die(f"--binary {src} is not an executable")
    else:
        log("building: cargo build --release (output in <out>/logs/cargo-build.log)")
        t0 = time.monotonic()
        with open(os.path.join(tmp, "logs", "cargo-build.log"), "w") as f:
            rc, _ = run_cmd(["cargo", "build", "--release"], timeout=3600, check=False, cwd=REPO, stdout=f)
        if rc != 0:
            die(f"cargo build --release failed (exit {rc}); see the build log:\n"
                + tail(os.path.join(tmp, "logs", "cargo-build.log"), 30)
                + "\nuse --binary PATH to benchmark an existing build")
        log(f"  built in {time.monotonic() - t0:.0f} s")
        src = os.path.join(REPO, "target", "release", "pgsidecar")
    # A private copy: a rebuild by someone else mid-run does not swap the binary under us.
    dst = os.path.join(tmp, "pgsidecar")
    shutil.copy2(src, dst)
    os.chmod(dst, 0o755)
    return src, dst


def run(args, out, tmp):
    os.chmod(tmp, 0o755)
    os.makedirs(os.path.join(tmp, "logs"), exist_ok=True)
    if os.geteuid() == 0:
        for d in (tmp, os.path.join(tmp, "logs")):
            shutil.chown(d, "postgres", "postgres")
        os.chmod(os.path.join(tmp, "logs"), 0o777)
    fd_limit = raise_fd_limit()
    bins = {n: find_pg_bin(n) for n in ("initdb", "postgres", "psql", "pgbench")}
    if not shutil.which("pgbouncer") and not os.path.exists("/usr/sbin/pgbouncer"):
        die("pgbouncer not installed: apt-get install -y pgbouncer")
    for mod in ("matplotlib",):
        try:
            __import__(mod)
        except ImportError:
            die("matplotlib missing: pip install matplotlib")
    t_start = time.monotonic()
    src_binary, binary = build_binary(args, tmp)

    meta = {
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "args": vars(args), "fd_limit_harness": fd_limit, "binary": src_binary,
        "binary_sha256": hashlib.sha256(open(binary, "rb").read()).hexdigest(),
        "git_head": subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "git_dirty": bool(subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "src", "Cargo.toml"],
                                         capture_output=True, text=True).stdout.strip()),
        "pgbench": subprocess.run([bins["pgbench"], "--version"], capture_output=True, text=True).stdout.strip(),
        "pgbouncer": subprocess.run(["pgbouncer", "--version"], capture_output=True, text=True).stdout.splitlines()[0],
        "nproc": os.cpu_count(), "loadavg_start": open("/proc/loadavg").read().strip(),
        "transport": args.transport,
    }
    log(f"pgsidecar binary {src_binary} (sha256 {meta['binary_sha256'][:12]}; repo HEAD {meta['git_head'][:10]}"
        f"{' + uncommitted changes' if meta['git_dirty'] else ''}); {meta['pgbouncer']}; fd limit {fd_limit}")

    pg = Postgres(tmp, bins)
    log("starting PostgreSQL 15 (fsync=off, synchronous_commit=off, max_connections=400, shared_buffers=128MB)")
    pg.start()
    log(f"  port {pg.port}; pgbench -i -s {args.scale}")
    t0 = time.monotonic()
    secret = pg.setup_bench(args.scale)
    log(f"  initialised in {time.monotonic() - t0:.0f} s")

    tr = "unix" if args.transport == "both" else args.transport
    pgb = Proxy(PGBOUNCER, "pgbouncer", tmp, args.pool_size, pg.port, secret, transport=tr)
    sc = Proxy(SIDECAR, "pgsidecar", tmp, args.pool_size, pg.port, secret, binary=binary, transport=tr)
    pgb_f = Proxy(PGBOUNCER, "pgbouncer-pool%d" % args.fair_pool, tmp, args.fair_pool, pg.port, secret, transport=tr)
    sc_f = Proxy(SIDECAR, "pgsidecar-pool%d" % args.fair_pool, tmp, args.fair_pool, pg.port, secret, binary=binary,
                 transport=tr)
    sc_u = Proxy(SIDECAR, "pgsidecar-unnamed", tmp, args.pool_size, pg.port, secret, binary=binary,
                 extra_env={"PGSIDECAR_PREPARE_UNNAMED_STATEMENTS": "1"}, transport=tr)
    # The second pgsidecar (and its pool's connections) only when its mode is measured.
    unnamed_proxy = [sc_u] if "unnamed" in args.modes else []
    # --pgbouncer builds: each a target of its own, named by its version, prepared statements on.
    extras = []
    meta["pgbouncer_extra"] = {}
    for path in args.pgbouncer:
        version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.split("\n")[0].strip()
        label = "pgbouncer-" + (version.split()[-1] if version else f"build{len(extras) + 1}")
        while label in [x.label for x in extras] or label in TARGETS:
            label += "+"
        extras.append(Proxy(PGBOUNCER, label, tmp, args.pool_size, pg.port, secret, transport=tr,
                            pgbouncer_path=path, max_prepared=args.max_prepared_statements))
        meta["pgbouncer_extra"][label] = f"{version} ({path}), max_prepared_statements={args.max_prepared_statements}"
    for p in [pgb, sc, pgb_f, sc_f] + unnamed_proxy + extras:
        p.start()
        log(f"  {p.label}: 127.0.0.1:{p.port} pid {p.pid} pool {p.pool_size} fd limit {proc_fd_limit(p.pid)}")
    meta["fd_limit_proxies"] = {p.label: proc_fd_limit(p.pid) for p in (pgb, sc)}

    bench = Bench(args, bins, tmp)
    ports = {DIRECT: pg.port, PGBOUNCER: pgb.port, SIDECAR: sc.port}
    proxies = {DIRECT: None, PGBOUNCER: pgb, SIDECAR: sc}
    # Direct PostgreSQL over its own socket with transport unix (pg_hba: trust there, SCRAM on TCP:
    # only the connect-per-transaction rows see the difference).
    hosts = {DIRECT: pg.sock if tr == "unix" else "127.0.0.1", PGBOUNCER: pgb.host, SIDECAR: sc.host}
    for x in extras:
        ports[x.label], proxies[x.label], hosts[x.label] = x.port, x, x.host
    # --transport both: the same processes over TCP, each a target of its own ("<label>-tcp").
    views = []
    if args.transport == "both":
        for x in [sc] + extras:
            label = x.label + "-tcp"
            ports[label], proxies[label], hosts[label] = x.port, x, "127.0.0.1"
            views.append(label)
            meta["pgbouncer_extra"][label] = f"the {x.label} process above, reached over TCP 127.0.0.1"

    # Login check through every target, then a short warm-up (opens pool servers, warms caches).
    for t in TARGETS:
        r = bench.pgbench(ports[t], "simple", 20, 2, proxy=proxies[t], host=hosts[t])
        if r["status"] != "ok":
            die(f"warm-up through {t} failed: {r.get('error')}\n{r['cmd']}")
    for p in [pgb_f, sc_f] + unnamed_proxy + extras:
        r = bench.pgbench(p.port, "simple", 20, 1, proxy=p)
        if r["status"] != "ok":
            die(f"warm-up through {p.label} failed: {r.get('error')}")

    fair_script = os.path.join(tmp, "fair.sql")
    with open(fair_script, "w") as f:
        f.write("SELECT pg_sleep(0.002);\n")

    rows = RowLog(os.path.join(out, "results.csv"))
    n_tps = sum(len(args.clients) * (3 + len(extras) + len(views) - len(REUSES_EXTENDED.get(m, ()))) for m in args.modes)
    per_round = n_tps * args.duration + 3 * args.duration + 2 * args.fair_duration
    log(f"\nplan: {args.rounds} round(s) x ({n_tps} select-only runs x {args.duration} s + 3 connect-per-tx runs"
        f" + 2 fairness runs x {args.fair_duration} s) ~ {args.rounds * per_round * 1.15 / 60:.1f} min"
        f" + idle-memory phase ({args.idle_conns} connections per proxy)")

    def record(phase, rnd, target, mode, clients, res, pool, duration, mode_run=None, **extra):
        row = {"phase": phase, "round": rnd, "target": target, "mode": mode, "mode_run": mode_run or mode,
               "clients": clients, "pool_size": pool, "duration_s": duration, "status": res["status"],
               "tps": res.get("tps"), "transactions": res.get("transactions"),
               "failed_transactions": res.get("failed_transactions"), "lat_avg_ms": res.get("lat_avg_ms"),
               "proxy_cpu_s": res.get("proxy_cpu_s"), "conn_time_ms": res.get("conn_time_ms"), "proxy_cpu_s_per_100k_tx": res.get("proxy_cpu_s_per_100k_tx"),
               "proxy_cpu_us_per_tx": res.get("proxy_cpu_us_per_tx"), "transport": "tcp" if target in views else tr,
               "error": res.get("error", "")}
        row.update(extra)
        rows.append(row)
        return row

    for rnd in range(1, args.rounds + 1):
        log(f"\n== round {rnd}/{args.rounds}  (elapsed {(time.monotonic() - t_start) / 60:.1f} min,"
            f" load {open('/proc/loadavg').read().split()[0]})")
        # The order changes per round: odd rounds run direct, PgBouncer, pgsidecar for each point,
        # even rounds the reverse, and each pair of rounds starts one target later. Within a round
        # the order repeats point after point, so a fixed order would have every target follow
        # the same neighbour (and meet its leftover load) all through the run.
        base = TARGETS if rnd % 2 else TARGETS[::-1]
        turn = ((rnd - 1) // 2) % len(TARGETS)
        order = base[turn:] + base[:turn]
        for mode in args.modes:
            if mode == "unnamed":
                continue  # run next to pgsidecar's own extended run, below
            for clients in args.clients:
                parts = {}
                runs = []
                for t in order:
                    if t in REUSES_EXTENDED.get(mode, ()):
                        continue  # its extended row is reused (PgBouncer 1.18 has no prepared mode)
                    runs.append((t, mode))
                    if t == SIDECAR and mode == "extended" and "unnamed" in args.modes:
                        runs.append((t, "unnamed"))
                more = [x.label for x in extras] + views
                runs += [(label, mode) for label in (more if rnd % 2 else more[::-1])]
                for t, m in runs:
                    proxy, port, host = (sc_u, sc_u.port, sc_u.host) if m == "unnamed" else (proxies[t], ports[t], hosts[t])
                    if proxy:
                        ensure_alive(proxy, bench, f"{m} c={clients}")
                    res = bench.pgbench(port, m, clients, args.duration, tx_log=(clients == 1), proxy=proxy, host=host)
                    extra = {}
                    if res.get("txlog"):
                        lats = sorted(l for _, l in res["txlog"])
                        extra = {"lat_p50_ms": pct(lats, 50) / 1000, "lat_p99_ms": pct(lats, 99) / 1000,
                                 "lat_max_ms": lats[-1] / 1000}
                    row = record("select_only", rnd, t, m, clients, res, args.pool_size, args.duration, **extra)
                    for other, reusing in REUSES_EXTENDED.items():
                        if m == "extended" and t in reusing and other in args.modes:
                            record("select_only", rnd, t, other, clients, res, args.pool_size, args.duration,
                                   mode_run="extended", note=f"its -M extended run, reused for the {other} row", **extra)
                    s = fmt_num(row["tps"]) if row["status"] == "ok" else f"{row['status'].upper()}"
                    if row.get("proxy_cpu_us_per_tx") is not None:
                        s += f" ({row['proxy_cpu_us_per_tx']:.1f} cpu-us/tx)"
                    parts[(t, m)] = f"{t}{' unnamed' if m == 'unnamed' else ''} {s}"
                    if row["status"] != "ok":
                        msg = f"round {rnd}: {t} -S -M {m} -c {clients}: {row['status']}: {row['error']}"
                        bench.incidents.append(msg + f"\n    reproduce: {res['cmd']}")
                log(f"  -S -M {mode:<8} c={clients:<4} " + " | ".join(
                    parts[k] for k in sorted(parts, key=lambda k: (TARGETS.index(k[0]) if k[0] in TARGETS else len(TARGETS),
                                                             k[0], k[1] == "unnamed"))))
        # Connect-per-transaction.
        parts = {}
        for t in order:
            if proxies[t]:
                ensure_alive(proxies[t], bench, "connect-per-tx")
            res = bench.pgbench(ports[t], "simple", 16, args.duration, connect=True, proxy=proxies[t], host=hosts[t])
            row = record("connect_per_tx", rnd, t, "simple", 16, res, args.pool_size, args.duration)
            if row["status"] != "ok":
                bench.incidents.append(f"round {rnd}: {t} -C: {row['status']}: {row['error']}\n    reproduce: {res['cmd']}")
            parts[t] = f"{t} {fmt_num(row['tps']) if row['status'] == 'ok' else row['status'].upper()}"
        log("  -S -C -c 16           " + " | ".join(parts[t] for t in TARGETS))
        # Fairness: many clients on a small pool.
        parts = []
        pairs = ((PGBOUNCER, pgb_f), (SIDECAR, sc_f))
        for label, p in pairs if rnd % 2 else pairs[::-1]:
            ensure_alive(p, bench, "fairness")
            res = bench.pgbench(p.port, "simple", args.fair_clients, args.fair_duration, script=fair_script,
                                tx_log=True, proxy=p)
            extra = fairness_stats(res.get("txlog") or [], args.fair_clients, args.fair_pool)
            row = record("fairness", rnd, label, "simple", args.fair_clients, res, args.fair_pool,
                         args.fair_duration, note="script SELECT pg_sleep(0.002); start-up transient dropped",
                         **extra)
            if row["status"] != "ok":
                bench.incidents.append(f"round {rnd}: {label} fairness: {row['status']}: {row['error']}\n    reproduce: {res['cmd']}")
            parts.append(f"{label} p50 {fmt_num(extra.get('lat_p50_ms'), 1)} p99 {fmt_num(extra.get('lat_p99_ms'), 1)}"
                         f" max {fmt_num(extra.get('lat_max_ms'), 1)} ms (ideal {fmt_num(extra.get('ideal_latency_ms'), 1)})")
        log(f"  fairness c={args.fair_clients} pool={args.fair_pool}: " + " | ".join(parts))

    # Idle memory: fresh proxies, one at a time.
    for p in [pgb, sc, pgb_f, sc_f] + unnamed_proxy + extras:
        p.stop()
    if args.idle_conns > 0:
        log(f"\n== idle memory: {args.idle_conns} authenticated idle client connections per proxy (SCRAM-SHA-256)")
        for kind, label in ((PGBOUNCER, "pgbouncer-idle"), (SIDECAR, "pgsidecar-idle")):
            p = Proxy(kind, label, tmp, args.pool_size, pg.port, secret, binary=binary)
            p.start()
            # One login and a query first, so that the pool and TLS-less server path are set up as in use.
            warm = bench.pgbench(p.port, "simple", 1, 1, proxy=p)
            if warm["status"] != "ok":
                bench.incidents.append(f"idle memory {kind}: warm-up query failed: {warm.get('error')}")
            time.sleep(1)
            base = proc_status_kb(p.pid, "VmRSS")
            want = min(args.idle_conns, max(0, fd_limit - 200))
            res = asyncio.run(idle_connections(p, want, deadline_s=max(120, want / 50)))
            alive = p.alive()
            per = (res["rss_kb"] - base) / res["connections_open"] if res["connections_open"] and res["rss_kb"] else None
            note = (f"opened in {res['open_s']:.1f} s; {res['sample_ok']}/{res['sample_n']} sampled idle connections "
                    f"then ran SELECT 1; VmHWM {res['hwm_kb']} kB")
            if want < args.idle_conns:
                note += f"; limited to {want} by the fd limit {fd_limit}"
            err = "; ".join(sorted(set(res["errors"])))[:500]
            status = "ok" if (res["connections_open"] == want and alive and res["sample_ok"] == res["sample_n"]) else "partial"
            if not alive:
                status = "crash"
            rows.append({"phase": "idle_memory", "round": 1, "target": kind, "mode": "", "mode_run": "",
                         "clients": want, "pool_size": args.pool_size, "status": status,
                         "connections_requested": want, "connections_open": res["connections_open"],
                         "rss_base_kb": base, "rss_kb": res["rss_kb"], "rss_per_conn_kb": per,
                         "fd_limit": proc_fd_limit(p.pid), "note": note, "error": err})
            log(f"  {kind}: {res['connections_open']}/{want} open, RSS {fmt_num(base)} kB -> {fmt_num(res['rss_kb'])} kB"
                f" ({fmt_num(per, 2)} kB/conn); {note}" + (f"; errors: {err}" if err else ""))
            if status != "ok":
                bench.incidents.append(f"idle memory {kind}: {status}: {res['connections_open']}/{want} open; {err}")
            p.stop()

    meta["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    meta["elapsed_min"] = round((time.monotonic() - t_start) / 60, 1)
    meta["loadavg_end"] = open("/proc/loadavg").read().strip()
    meta["incidents"] = bench.incidents
    meta["pgsidecar_log_problems"] = scan_logs(tmp)

    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    report = summarize(rows, args, meta)
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write(report)
    log("\n" + report)
    chart(rows, args, os.path.join(out, "tps.png"))
    log(f"\nresults: {out}/results.csv  chart: {out}/tps.png  summary: {out}/summary.txt  logs: {out}/logs/")
    return 1 if bench.incidents and any("crash" in i or "hang" in i for i in bench.incidents) else 0


class RowLog(list):
    """Result rows, each also appended to results.csv at once (an interrupted run keeps what it measured)."""

    def __init__(self, path):
        super().__init__()
        self.path = path
        with open(path, "w", newline="") as f:
            csv.DictWriter(f, fieldnames=CSV_FIELDS).writeheader()

    def append(self, row):
        super().append(row)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore").writerow(
                {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})


def fairness_stats(txlog, clients, pool):
    """Queueing fairness from per-transaction logs. Under strict FIFO with every server always busy, each
    transaction waits behind the (clients - pool) others queued ahead of it, so every latency is the same:
    clients / TPS (Little's law, no spread); its wait is (clients/pool - 1) x service, service = pool / TPS."""
    if not txlog:
        return {}
    t0 = min(end - lat / 1e6 for end, lat in txlog)
    t_last = max(end for end, _ in txlog)
    # Drop the start-up transient (all clients arrive at once): the first second or 20% of the run.
    cut = t0 + max(1.0, 0.2 * (t_last - t0))
    if t_last - cut < 0.5:
        cut = t0 + 0.5 * (t_last - t0)
    window = t_last - cut
    x = sum(1 for end, _ in txlog if end >= cut) / window  # steady-state throughput (completions in window)
    lats = sorted(lat / 1e6 for end, lat in txlog if end - lat / 1e6 >= cut)
    if len(lats) < 10 or x <= 0:
        return {}
    service_s = pool / x  # mean time a transaction occupies a server (pool always busy)
    ideal_lat = clients / x
    ideal_wait = (clients / pool - 1) * service_s
    waits = [max(0.0, l - service_s) for l in lats]
    return {"lat_p50_ms": pct(lats, 50) * 1e3, "lat_p99_ms": pct(lats, 99) * 1e3, "lat_max_ms": lats[-1] * 1e3,
            "lat_mean_ms": statistics.fmean(lats) * 1e3, "steady_tps": x, "window_s": window,
            "service_ms": service_s * 1e3, "ideal_latency_ms": ideal_lat * 1e3, "ideal_wait_ms": ideal_wait * 1e3,
            "wait_p50_ms": pct(waits, 50) * 1e3, "wait_p99_ms": pct(waits, 99) * 1e3, "wait_max_ms": waits[-1] * 1e3}


def scan_logs(tmp):
    """Distinct warning/error lines of the proxies' and PostgreSQL's logs, with counts."""
    import collections
    out = []
    for path in sorted(glob.glob(os.path.join(tmp, "logs", "*.log"))):
        name = os.path.basename(path)
        if name.startswith("cargo"):
            continue
        counts, first = collections.Counter(), {}
        with open(path, errors="replace") as f:
            for line in f:
                l = line.lower()
                if name.startswith("postgres"):
                    hit = "error:" in l or "fatal:" in l or "panic:" in l
                else:
                    hit = any(w in l for w in ("panic", "level=error", "level=warn", " error ", " fatal ",
                                               " warning ", "thread '"))
                if not hit or "the database system is starting up" in l:  # our own readiness probe
                    continue
                # Strip timestamps, pids and numbers so that repeats collapse.
                msg = re.sub(r"^\S+ \S+ \S+ \[\d+\] ", "", line.strip())
                msg = re.sub(r"^(ts|time)=\S+ ", "", msg)
                key = re.sub(r"\d+", "N", msg)[:200]
                counts[key] += 1
                first.setdefault(key, msg[:300])
        for key, n in counts.most_common(8):
            out.append(f"{name}: {n}x {first[key]}")
    return out


def ext(target, mode):
    """The marker of a cell that is the target's -M extended run."""
    return " *ext" if target in REUSES_EXTENDED.get(mode, ()) else ""


def summarize(rows, args, meta):
    L = []

    def value(r, key):
        v = r.get(key)
        if key == "proxy_cpu_us_per_tx" and v in (None, "") and r.get("proxy_cpu_s_per_100k_tx") not in (None, ""):
            v = float(r["proxy_cpu_s_per_100k_tx"]) * 10  # results.csv of runs before the column
        return v

    def get(target, mode, clients, key="tps", phase="select_only"):
        return [value(r, key) for r in rows if r["phase"] == phase and r["target"] == target
                and r["mode"] == mode and r["clients"] == clients and r["status"] == "ok"]

    def status_of(target, mode, clients, phase="select_only"):
        st = [r["status"] for r in rows if r["phase"] == phase and r["target"] == target
              and r["mode"] == mode and r["clients"] == clients]
        bad = [s for s in st if s != "ok"]
        return f"{bad[0].upper()} {len(bad)}/{len(st)}" if bad else ""

    def cell(target, mode, clients, key="tps", digits=0, phase="select_only"):
        s = med_spread(get(target, mode, clients, key, phase), digits)
        st = status_of(target, mode, clients, phase)
        if st:
            s = (s + " " if s != "NA" else "") + st
        return s

    L.append(f"pgsidecar benchmark  {meta['started']}  binary sha256 {meta['binary_sha256'][:12]}  repo HEAD {meta['git_head'][:10]}"
             f"{' (dirty)' if meta['git_dirty'] else ''}  {meta['pgbouncer']}  {meta['pgbench']}")
    L.append(f"{meta['nproc']} cores; load at start {meta['loadavg_start'].split()[0]}; rounds {args.rounds};"
             f" {args.duration} s per run; pool {args.pool_size}, transaction mode, client auth SCRAM-SHA-256 on both"
             f" proxies; no TLS on any hop (client or server); "
             + ("pgbench reaches every target over its Unix socket (PostgreSQL's, PgBouncer's unix_socket_dir,"
                " pgsidecar's socket directory); servers over 127.0.0.1."
                if meta.get("transport") == "unix"
                else "pgbench reaches every target over its Unix socket, and the '-tcp' targets (the same processes)"
                " over 127.0.0.1; servers over 127.0.0.1." if meta.get("transport") == "both"
                else "all on 127.0.0.1."))
    L.append("Cells: median [min-max] over rounds. sc/pgb and sc/direct are ratios of those medians; 'per round' is the"
             " median [min-max] of the ratios")
    L.append("within each round (the runs it pairs are a minute apart at most, so slow drifts in machine load cancel)."
             " sc = pgsidecar, pgb = PgBouncer.")
    L.append("")
    L.append(f"Select-only TPS (pgbench -S -j 2 -T {args.duration})")
    hdr = (f"{'mode':<9}{'clients':>7}  {'direct':<26}{'pgbouncer':<28}{'pgsidecar':<28}{'sc/pgb':>7}{'sc/direct':>10}"
           f"  {'sc/pgb per round':<18}")
    L.append(hdr)
    L.append("-" * len(hdr))
    for mode in args.modes:
        for c in args.clients:
            d, b, s = (median(get(t, mode, c)) for t in TARGETS)
            bcell = cell(PGBOUNCER, mode, c) + ext(PGBOUNCER, mode)
            pr = ratio_spread(paired_ratios(rows, "select_only", mode, c, "tps", SIDECAR, PGBOUNCER))
            L.append(f"{mode:<9}{c:>7}  {cell(DIRECT, mode, c) + ext(DIRECT, mode):<26}{bcell:<28}{cell(SIDECAR, mode, c):<28}"
                     f"{ratio(s, b):>7}{ratio(s, d):>10}  {pr:<18}")
    if "prepared" in args.modes:
        L.append("* PgBouncer 1.18 has no prepared statements in transaction mode: its prepared row is its -M extended run.")
    if "unnamed" in args.modes:
        L.append("* unnamed: -M extended through a second pgsidecar with PGSIDECAR_PREPARE_UNNAMED_STATEMENTS=1 (off by"
                 " default); direct and PgBouncer rows are their -M extended runs.")
    L.append("")
    L.append("Latency at 1 client, ms (exact percentiles from pgbench -l per-transaction logs): p50 / p99")
    hdr = f"{'mode':<9}  {'direct':<22}{'pgbouncer':<22}{'pgsidecar':<22}{'sc/pgb p50':>11}{'sc/pgb p99':>11}"
    L.append(hdr)
    L.append("-" * len(hdr))
    for mode in args.modes:
        if 1 not in args.clients:
            break
        cells, med = [], {}
        for t in TARGETS:
            p50, p99 = median(get(t, mode, 1, "lat_p50_ms")), median(get(t, mode, 1, "lat_p99_ms"))
            med[t] = (p50, p99)
            cells.append(f"{fmt_num(p50, 3)} / {fmt_num(p99, 3)}" if p50 is not None else "NA " + status_of(t, mode, 1))
        L.append(f"{mode:<9}  {cells[0] + ext(DIRECT, mode):<22}{cells[1] + ext(PGBOUNCER, mode):<22}{cells[2]:<22}"
                 f"{ratio(med[SIDECAR][0], med[PGBOUNCER][0]):>11}{ratio(med[SIDECAR][1], med[PGBOUNCER][1]):>11}")
    L.append("")
    L.append("Proxy CPU microseconds per transaction (utime+stime of the proxy process from /proc; direct: n/a;"
             " on a dyno this CPU is taken from the app)")
    hdr = f"{'mode':<9}{'clients':>7}  {'pgbouncer':<24}{'pgsidecar':<24}{'sc/pgb':>7}  {'sc/pgb per round':<18}"
    L.append(hdr)
    L.append("-" * len(hdr))
    for mode in args.modes:
        for c in args.clients:
            b = median(get(PGBOUNCER, mode, c, "proxy_cpu_us_per_tx"))
            s = median(get(SIDECAR, mode, c, "proxy_cpu_us_per_tx"))
            L.append(f"{mode:<9}{c:>7}  {cell(PGBOUNCER, mode, c, 'proxy_cpu_us_per_tx', 1) + ext(PGBOUNCER, mode):<24}"
                     f"{cell(SIDECAR, mode, c, 'proxy_cpu_us_per_tx', 1):<24}{ratio(s, b):>7}  "
                     f"{ratio_spread(paired_ratios(rows, 'select_only', mode, c, 'proxy_cpu_us_per_tx', SIDECAR, PGBOUNCER))}")
    for label, desc in (meta.get("pgbouncer_extra") or {}).items():
        L.append("")
        L.append(f"{label}: {desc}. Its prepared rows are -M prepared runs of its own; sc = pgsidecar.")
        hdr = (f"{'mode':<9}{'clients':>7}  {'TPS ' + label:<26}{'sc/it':>7}  {'cpu-us/tx':<12}{'sc cpu-us/tx':<14}"
               f"{'sc/it cpu':>9}  {'p50/p99 ms (1 client)':<24}{'sc p50/p99':<16}")
        L.append(hdr)
        L.append("-" * len(hdr))
        for mode in args.modes:
            if mode == "unnamed":
                continue
            for c in args.clients:
                x, s = median(get(label, mode, c)), median(get(SIDECAR, mode, c))
                lat = sc_lat = ""
                if c == 1:
                    lat = f"{fmt_num(median(get(label, mode, 1, 'lat_p50_ms')), 3)} / {fmt_num(median(get(label, mode, 1, 'lat_p99_ms')), 3)}"
                    sc_lat = f"{fmt_num(median(get(SIDECAR, mode, 1, 'lat_p50_ms')), 3)} / {fmt_num(median(get(SIDECAR, mode, 1, 'lat_p99_ms')), 3)}"
                cpu_ratio = ratio(median(get(SIDECAR, mode, c, "proxy_cpu_us_per_tx")),
                                  median(get(label, mode, c, "proxy_cpu_us_per_tx")))
                L.append(f"{mode:<9}{c:>7}  {cell(label, mode, c):<26}{ratio(s, x):>7}  "
                         f"{cell(label, mode, c, 'proxy_cpu_us_per_tx', 1):<12}{cell(SIDECAR, mode, c, 'proxy_cpu_us_per_tx', 1):<14}"
                         f"{cpu_ratio:>9}  {lat:<24}{sc_lat:<16}")
    L.append("")
    L.append("Connect per transaction (pgbench -S -C -c 16 -M simple; every transaction logs in with SCRAM-SHA-256)")
    d, b, s = (median(get(t, "simple", 16, "tps", "connect_per_tx")) for t in TARGETS)
    L.append(f"  TPS  direct {cell(DIRECT, 'simple', 16, phase='connect_per_tx')}   pgbouncer "
             f"{cell(PGBOUNCER, 'simple', 16, phase='connect_per_tx')}   pgsidecar {cell(SIDECAR, 'simple', 16, phase='connect_per_tx')}"
             f"   sc/pgb {ratio(s, b)} (per round {ratio_spread(paired_ratios(rows, 'connect_per_tx', 'simple', 16, 'tps', SIDECAR, PGBOUNCER))})"
             f"  sc/direct {ratio(s, d)}")
    b = median(get(PGBOUNCER, "simple", 16, "proxy_cpu_s_per_100k_tx", "connect_per_tx"))
    s = median(get(SIDECAR, "simple", 16, "proxy_cpu_s_per_100k_tx", "connect_per_tx"))
    L.append(f"  proxy CPU s per 100k connect+tx: pgbouncer {fmt_num(b, 2)}  pgsidecar {fmt_num(s, 2)}  sc/pgb {ratio(s, b)}")
    L.append("")
    fc = args.fair_clients
    L.append(f"Fairness: {fc} clients on a pool of {args.fair_pool}, SELECT pg_sleep(0.002) per transaction, pgbench -T"
             f" {args.fair_duration} (includes connecting the {fc} clients); start-up transient dropped.")
    L.append("  Strict FIFO with the pool always busy gives every transaction the same latency, clients/TPS, and the"
             " same checkout wait,")
    L.append("  (clients/pool - 1) x service, where service = pool/TPS is the mean time a transaction holds a server."
             " wait = latency - service.")
    hdr = (f"{'target':<10}{'TPS':>8}{'service':>9}{'ideal':>8}{'mean':>8}{'p50':>8}{'p99':>8}{'max':>8}"
           f"{'p50/id':>8}{'p99/id':>8}{'max/id':>8}")
    for kind, pre in (("latency", "lat"), ("wait", "wait")):
        L.append(f"  {kind} (ms)" + ("" if kind == "latency" else "; ideal = ideal wait"))
        L.append(hdr)
        L.append("-" * len(hdr))
        for t in (PGBOUNCER, SIDECAR):
            g = lambda k: median(get(t, "simple", fc, k, "fairness"))
            ideal = g("ideal_latency_ms" if kind == "latency" else "ideal_wait_ms")
            st = status_of(t, "simple", fc, "fairness")
            mean = g("lat_mean_ms")
            if kind == "wait" and mean is not None and g("service_ms") is not None:
                mean = mean - g("service_ms")
            L.append(f"{t:<10}{fmt_num(g('steady_tps')):>8}{fmt_num(g('service_ms'), 2):>9}{fmt_num(ideal, 1):>8}"
                     f"{fmt_num(mean, 1):>8}{fmt_num(g(pre + '_p50_ms'), 1):>8}{fmt_num(g(pre + '_p99_ms'), 1):>8}"
                     f"{fmt_num(g(pre + '_max_ms'), 1):>8}{ratio(g(pre + '_p50_ms'), ideal):>8}"
                     f"{ratio(g(pre + '_p99_ms'), ideal):>8}{ratio(g(pre + '_max_ms'), ideal):>8}" + (f"  {st}" if st else ""))
    spread = {t: [r.get("lat_p99_ms") for r in rows if r["phase"] == "fairness" and r["target"] == t] for t in (PGBOUNCER, SIDECAR)}
    L.append(f"  p99 per round: pgbouncer {', '.join(fmt_num(v, 1) for v in spread[PGBOUNCER])};"
             f" pgsidecar {', '.join(fmt_num(v, 1) for v in spread[SIDECAR])}")
    L.append("")
    mem = [r for r in rows if r["phase"] == "idle_memory"]
    if mem:
        L.append("Resident memory with idle authenticated clients (fresh proxy each; clients log in with SCRAM-SHA-256"
                 " from an asyncio client in the harness)")
        hdr = f"{'target':<10}{'conns':>8}{'RSS before':>12}{'RSS with':>12}{'per conn':>10}  note"
        L.append(hdr + "   (kB)")
        L.append("-" * len(hdr))
        for r in mem:
            L.append(f"{r['target']:<10}{r['connections_open']:>8}{fmt_num(r['rss_base_kb']):>12}{fmt_num(r['rss_kb']):>12}"
                     f"{fmt_num(r['rss_per_conn_kb'], 2):>10}  {r['status']}; {r['note']}" + (f"; {r['error']}" if r["error"] else ""))
        by = {r["target"]: r for r in mem}
        if PGBOUNCER in by and SIDECAR in by:
            L.append(f"  sc/pgb RSS with clients {ratio(by[SIDECAR]['rss_kb'], by[PGBOUNCER]['rss_kb'])}")
        L.append("")
    if meta["incidents"]:
        L.append("Incidents (failed, crashed or hung runs):")
        seen = set()
        for i in meta["incidents"]:
            key = re.sub(r"round \d+: ", "", i)
            if key in seen:
                continue
            seen.add(key)
            L.append("  " + i)
        L.append("")
    if [p for p in meta["pgsidecar_log_problems"] if "database system is starting up" not in p]:
        L.append("Warnings/errors in the logs (distinct messages, count; PgBouncer/pgsidecar/PostgreSQL):")
        for p in [p for p in meta["pgsidecar_log_problems"] if "database system is starting up" not in p][:30]:
            L.append("  " + p)
        L.append("")
    L.append(f"elapsed {meta['elapsed_min']} min; load at end {meta['loadavg_end'].split()[0]}")
    return "\n".join(L) + "\n"


def replot(d):
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    args = argparse.Namespace(**meta["args"])
    ints = {"round", "clients", "pool_size", "duration_s", "transactions", "failed_transactions",
            "connections_requested", "connections_open", "rss_base_kb", "rss_kb", "fd_limit"}
    rows = []
    with open(os.path.join(d, "results.csv"), newline="") as f:
        for r in csv.DictReader(f):
            for k, v in r.items():
                if k in ("phase", "target", "mode", "mode_run", "status", "note", "error"):
                    continue
                r[k] = None if v in ("", None) else (int(float(v)) if k in ints else float(v))
            rows.append(r)
    report = summarize(rows, args, meta)
    with open(os.path.join(d, "summary.txt"), "w") as f:
        f.write(report)
    log(report)
    chart(rows, args, os.path.join(d, "tps.png"))
    log(f"redrawn: {d}/summary.txt {d}/tps.png")
    return 0


def chart(rows, args, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {DIRECT: "#444444", PGBOUNCER: "#1f77b4", SIDECAR: "#d62728"}
    styles = {"simple": "-", "extended": "--", "prepared": ":", "unnamed": "-."}
    markers = {"simple": "o", "extended": "s", "prepared": "^", "unnamed": "D"}
    fig, ax = plt.subplots(figsize=(10, 7.5), dpi=110)
    for t in TARGETS:
        for mode in args.modes:
            if t in REUSES_EXTENDED.get(mode, ()):
                continue
            xs, ys, lo, hi = [], [], [], []
            for c in args.clients:
                v = [r["tps"] for r in rows if r["phase"] == "select_only" and r["target"] == t and r["mode"] == mode
                     and r["clients"] == c and r["status"] == "ok" and r["tps"] is not None]
                if not v:
                    continue
                m = statistics.median(v)
                xs.append(c)
                ys.append(m)
                lo.append(m - min(v))
                hi.append(max(v) - m)
            failed = [c for c in args.clients if c not in xs and any(
                r["phase"] == "select_only" and r["target"] == t and r["mode"] == mode and r["clients"] == c
                for r in rows)]
            if failed:
                ax.plot(failed, [0] * len(failed), linestyle="none", marker="x", markersize=10, color=colors[t],
                        clip_on=False, label=f"{t} {mode}: failed at c={','.join(map(str, failed))}")
            if not xs:
                continue
            shift = {DIRECT: 0.95, PGBOUNCER: 1.0, SIDECAR: 1.05}[t]  # keep error bars apart on the log axis
            ax.errorbar([x * shift for x in xs], ys, yerr=[lo, hi], color=colors[t], linestyle=styles[mode], marker=markers[mode],
                        capsize=3, linewidth=1.6, markersize=5,
                        label=f"{t} {mode}" + (" (also its 'prepared' comparison)" if t == PGBOUNCER and mode == "extended"
                                               and "prepared" in args.modes else "")
                        + (" (PGSIDECAR_PREPARE_UNNAMED_STATEMENTS=1)" if mode == "unnamed" else ""))
    ax.set_xscale("log")
    ax.set_xticks(args.clients)
    ax.set_xticklabels([str(c) for c in args.clients])
    ax.set_xlabel("pgbench clients (-j 2)")
    ax.set_ylabel("transactions per second (select-only, -S)")
    ax.set_ylim(bottom=0)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"Select-only TPS: direct PostgreSQL vs PgBouncer vs pgsidecar (pool {args.pool_size}, transaction mode)\n"
                 f"median of {args.rounds} round(s), bars = min-max; {args.duration} s per run; "
                 f"PgBouncer 1.18 has no prepared mode in transaction pooling", fontsize=10)
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
