#!/usr/bin/env python3
"""pgsidecar soak harness (issue 7): mixed load with clients coming and going; resident memory,
open file descriptors and server connections must stay flat.

One command:  python3 bench/soak.py [--duration 600] [--out DIR] [--binary PATH | --debug-build]

It starts a throwaway PostgreSQL 15 and pgsidecar (pool 10, transaction mode, SCRAM-SHA-256
client auth) on 127.0.0.1 and runs a load that repeats every cycle (60 s; 15 s for runs shorter
than 5 minutes):
  - pgbench without -C, three runs per cycle (-M simple, extended, prepared; select-only, rate
    limited) with a pause between them, so its clients come and go;
  - pgbench -C (a new connection and SCRAM login per transaction) in the first half of each cycle;
  - Python clients (psycopg 3) that connect, run simple, extended and prepared statements, a
    transaction, COPY in and out, an error and a cancel, then disconnect, over and over;
  - idle clients (psycopg 3, logged in, one query) whose number rises from 0 to --idle-peak and
    back to 0 over each cycle.
Every sample (5 s; 1 s for short runs) records pgsidecar's VmRSS and open fds (/proc), the server
connections PostgreSQL sees for the pool's user (pg_stat_activity), connected clients and TPS
(pgsidecar's /metrics). After a warm-up that is not judged (60 s; 20 s for short runs: RSS steps up
at each of the first idle peaks, by less each time), the first and the last cycle-long
window of the measured duration are compared: same load phase in both, since the duration is a
whole number of cycles. Verdict: median RSS and median fds of the last window within 10% of the
first window's, servers never above the pool size, pgsidecar alive, no unexpected client error.
Exit 0 when flat, 1 otherwise. Writes samples.csv, windows.csv and summary.txt to --out, and
stops everything it started, on Ctrl-C and errors too. See bench/README.md.
"""

import argparse
import csv
import datetime
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402  (bench/run.py: PostgreSQL, process tracking, build)

REPO = bench.REPO
log = bench.log
die = bench.die
CHILDREN = bench.CHILDREN
TOLERANCE = 0.10

SAMPLE_FIELDS = ["t_s", "phase", "window", "rss_kb", "fds", "servers_pg", "servers_sidecar", "clients",
                 "idle_clients", "tps", "unexpected_errors"]


def read_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def scrape(port):
    """Sums of pgsidecar's metrics over labels: {name: value}."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m:
            try:
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
            except ValueError:
                pass
    return out


class Errors:
    """Unexpected client errors: counted, the first few kept for the report."""

    def __init__(self):
        self.lock = threading.Lock()
        self.count = 0
        self.examples = []

    def add(self, what):
        with self.lock:
            self.count += 1
            if len(self.examples) < 20:
                self.examples.append(f"{time.strftime('%H:%M:%S')} {what}")


class Load:
    """Everything that drives pgsidecar; `stop` ends it all."""

    def __init__(self, args, bins, sidecar_port, tmp, t0):
        self.args = args
        self.bins = bins
        self.port = sidecar_port
        self.tmp = tmp
        self.t0 = t0  # start of the cycle clock (the warm-up starts at 0)
        self.stop = threading.Event()
        self.errors = Errors()
        self.threads = []
        self.idle_conns = []
        self.idle_lock = threading.Lock()
        self.procs = set()  # running pgbench processes
        self.procs_lock = threading.Lock()
        self.pgbench_runs = 0
        self.pgbench_failed = []
        self.client_sessions = 0
        self.conninfo = (f"host=127.0.0.1 port={sidecar_port} user={bench.BENCH_USER} "
                         f"password={bench.BENCH_PASSWORD} dbname={bench.BENCH_DB} sslmode=disable "
                         f"connect_timeout=30")

    def phase(self):
        return ((time.monotonic() - self.t0) % self.args.cycle) / self.args.cycle

    def start(self):
        specs = [("pgbench", self.pgbench_waves), ("pgbench -C", self.pgbench_connect_waves),
                 ("idle clients", self.idle_clients)]
        specs += [(f"client {i}", self.client_loop) for i in range(self.args.python_clients)]
        for name, fn in specs:
            t = threading.Thread(target=self.guard, args=(name, fn), name=name, daemon=True)
            t.start()
            self.threads.append(t)

    def guard(self, name, fn):
        try:
            fn()
        except Exception as e:  # a harness bug must not look like a flat run
            self.errors.add(f"{name} thread died: {type(e).__name__}: {e}")

    def wait_phase(self, target):
        """Sleeps until the cycle reaches `target` (0..1); False when stopping."""
        while not self.stop.is_set():
            left = (target - self.phase()) % 1.0
            if left < 0.002 or left > 0.998:
                return True
            self.stop.wait(min(left * self.args.cycle, 0.5))
        return False

    # pgbench -------------------------------------------------------------------------------------

    def pgbench(self, extra, duration):
        env = bench.clean_env()
        env["PGPASSWORD"] = bench.BENCH_PASSWORD
        cmd = [self.bins["pgbench"], "-h", "127.0.0.1", "-p", str(self.port), "-U", bench.BENCH_USER, "-n",
               "-S", "-j", "1", "-T", str(max(1, int(duration)))] + extra + [bench.BENCH_DB]
        with self.procs_lock:
            if self.stop.is_set():
                return
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                 cwd=self.tmp, start_new_session=True)
            self.procs.add(p)
        try:
            out, _ = p.communicate(timeout=duration + 60)
        except subprocess.TimeoutExpired:
            self.kill(p)
            out = ""
            if not self.stop.is_set():
                self.errors.add(f"pgbench {' '.join(extra)} hung past -T {duration}")
            return
        finally:
            with self.procs_lock:
                self.procs.discard(p)
        self.pgbench_runs += 1
        if self.stop.is_set():
            return
        failed = re.search(r"number of failed transactions: (\d+)", out or "")
        if p.returncode != 0 or (failed and int(failed.group(1)) > 0):
            lines = [l for l in (out or "").splitlines() if "error" in l.lower() or "abort" in l.lower()]
            self.errors.add(f"pgbench {' '.join(extra)} exit {p.returncode}: {(lines or ['?'])[0][:200]}")

    @staticmethod
    def kill(p):
        """Stops one pgbench (its own process group: only what we started)."""
        for sig, wait in ((signal.SIGINT, 5), (signal.SIGKILL, 5)):
            if p.poll() is not None:
                return
            try:
                os.killpg(p.pid, sig)
            except (ProcessLookupError, PermissionError):
                return
            try:
                p.wait(wait)
            except subprocess.TimeoutExpired:
                pass

    def pgbench_waves(self):
        """Three runs per cycle (simple, extended, prepared), each a third of the cycle minus a gap."""
        third = self.args.cycle / 3
        gap = max(1.0, third * 0.2)
        while not self.stop.is_set():
            for i, mode in enumerate(("simple", "extended", "prepared")):
                if not self.wait_phase(i / 3):
                    return
                self.pgbench(["-M", mode, "-c", str(self.args.pgbench_clients), "-R", str(self.args.rate)],
                             third - gap)

    def pgbench_connect_waves(self):
        """pgbench -C in the first half of each cycle."""
        while not self.stop.is_set():
            if not self.wait_phase(0.0):
                return
            self.pgbench(["-C", "-c", "2", "-R", str(self.args.connect_rate)], self.args.cycle / 2 - 1)

    # Python clients ------------------------------------------------------------------------------

    def client_loop(self):
        import psycopg
        rng = random.Random()
        while not self.stop.is_set():
            step = ["connect"]  # the statement under way, for the error report
            try:
                self.client_session(psycopg, rng, step)
                self.client_sessions += 1
            except psycopg.Error as e:
                if not self.stop.is_set():
                    state = getattr(e, "sqlstate", None) or "-"
                    self.errors.add(f"client at {step[0]!r}: {type(e).__name__} {state}: {str(e).strip()[:200]}")
            self.stop.wait(rng.uniform(0.05, 0.3))

    def client_session(self, psycopg, rng, step):
        worker = threading.current_thread().name.replace(" ", "_")

        def run(sql, params=None, **kw):
            step[0] = sql
            return conn.execute(sql, params, **kw)

        with psycopg.connect(self.conninfo, application_name=f"soak_{worker}", autocommit=True) as conn:
            for _ in range(rng.randint(3, 8)):
                if self.stop.is_set():
                    return
                aid = rng.randint(1, 100000 * self.args.scale)
                run("SELECT 1").fetchall()  # simple protocol
                run("SELECT abalance FROM pgbench_accounts WHERE aid = %s", (aid,)).fetchall()
                run("SELECT %s::int + %s::int", (aid, 1), prepare=True).fetchall()  # named prepared
                step[0] = "BEGIN"
                with conn.transaction():
                    run("UPDATE pgbench_accounts SET abalance = abalance + %s WHERE aid = %s", (1, aid))
                    run("SELECT abalance FROM pgbench_accounts WHERE aid = %s", (aid,)).fetchall()
                    step[0] = "COMMIT"
                self.stop.wait(rng.uniform(0.01, 0.05))
            with conn.cursor() as cur:
                step[0] = "COPY FROM STDIN"
                with cur.copy("COPY soak_copy (worker, n) FROM STDIN") as copy:
                    for n in range(50):
                        copy.write_row((worker, n))
                step[0] = "COPY TO STDOUT"
                with cur.copy("COPY (SELECT n FROM soak_copy WHERE worker = %s) TO STDOUT", (worker,)) as copy:
                    rows = sum(1 for _ in copy.rows())
                if rows < 50:
                    self.errors.add(f"COPY out returned {rows} rows, expected at least 50")
                step[0] = "DELETE"
                cur.execute("DELETE FROM soak_copy WHERE worker = %s", (worker,))
            try:
                run("SELECT 1 / 0")
                self.errors.add("division by zero did not fail")
            except psycopg.errors.DivisionByZero:
                pass
            if rng.random() < 0.5:
                # A cancel of a running statement (sent by a timer while the statement runs).
                timer = threading.Timer(0.3, conn.cancel_safe)
                timer.start()
                try:
                    run("SELECT pg_sleep(3)")
                    self.errors.add("cancel did not stop pg_sleep(3)")
                except psycopg.errors.QueryCanceled:
                    pass
                finally:
                    timer.cancel()
                run("SELECT 2").fetchall()  # usable after the cancel
            step[0] = "close"

    # Idle clients ---------------------------------------------------------------------------------

    def idle_target(self):
        """Triangle over the cycle: 0 at phase 0, the peak at 0.5, 0 again at 1."""
        ph = self.phase()
        return int(round(self.args.idle_peak * (1 - abs(2 * ph - 1))))

    def idle_clients(self):
        import psycopg
        while not self.stop.is_set():
            target = self.idle_target()
            with self.idle_lock:
                n = len(self.idle_conns)
            if n < target:
                for _ in range(min(target - n, 10)):
                    try:
                        c = psycopg.connect(self.conninfo, autocommit=True, application_name="soak_idle")
                        c.execute("SELECT 1").fetchall()
                    except psycopg.Error as e:
                        if not self.stop.is_set():
                            self.errors.add(f"idle client: {type(e).__name__}: {str(e).strip()[:200]}")
                        break
                    with self.idle_lock:
                        self.idle_conns.append(c)
            elif n > target:
                with self.idle_lock:
                    leaving = [self.idle_conns.pop(random.randrange(len(self.idle_conns)))
                               for _ in range(min(n - target, 10))]
                for c in leaving:
                    c.close()
            else:
                self.stop.wait(0.1)

    def idle_count(self):
        with self.idle_lock:
            return len(self.idle_conns)

    def shutdown(self):
        with self.procs_lock:
            self.stop.set()
            running = list(self.procs)
        for p in running:
            self.kill(p)
        for t in self.threads:
            t.join(timeout=15)
        with self.idle_lock:
            conns, self.idle_conns = self.idle_conns, []
        for c in conns:
            try:
                c.close()
            except Exception:
                pass


def start_sidecar(args, binary, tmp, pg_port):
    port, metrics_port = bench.free_port(), bench.free_port()
    env = bench.clean_env()
    env.update({
        "DATABASE_URL": f"postgres://{bench.BENCH_USER}:{bench.BENCH_PASSWORD}@127.0.0.1:{pg_port}/"
                        f"{bench.BENCH_DB}?sslmode=disable",
        "PGSIDECAR_LISTEN": f"127.0.0.1:{port}",
        "PGSIDECAR_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        "PGSIDECAR_POOL_SIZE": str(args.pool_size),
        "PGSIDECAR_POOL_MODE": "transaction",
        "PGSIDECAR_CLIENT_AUTH": "scram-sha-256",
        "PGSIDECAR_QUERY_WAIT_TIMEOUT": "20s",
        "PGSIDECAR_SHUTDOWN_TIMEOUT": "3s",
        "PGSIDECAR_STATS_PERIOD": "0",
        "PGSIDECAR_LOG_LEVEL": "warn",
    })
    logfile = os.path.join(tmp, "logs", "pgsidecar.log")
    with open(logfile, "a") as logf:
        proc = subprocess.Popen([binary, "serve"], stdout=logf, stderr=subprocess.STDOUT, cwd=tmp, env=env,
                                start_new_session=True)
    CHILDREN.add("pgsidecar", proc, signal.SIGTERM)
    bench.wait_port(port, proc, 30, "pgsidecar")
    bench.wait_port(metrics_port, proc, 30, "pgsidecar metrics")
    return proc, port, metrics_port, logfile


def build(args, tmp):
    if args.debug_build:
        log("building: cargo build (dev profile; quick after cargo test)")
        with open(os.path.join(tmp, "logs", "cargo-build.log"), "w") as f:
            rc, _ = bench.run_cmd(["cargo", "build", "--bin", "pgsidecar"], timeout=3600, check=False, cwd=REPO,
                                  stdout=f)
        if rc != 0:
            die("cargo build failed:\n" + bench.tail(os.path.join(tmp, "logs", "cargo-build.log"), 30))
        args.binary = os.path.join(REPO, "target", "debug", "pgsidecar")
    return bench.build_binary(args, tmp)


def median(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v, digits=0):
    return "NA" if v is None else f"{v:,.{digits}f}"


def change(first, last):
    if first in (None, 0) or last is None:
        return None
    return (last - first) / first


def soak(args, out, tmp):
    os.chmod(tmp, 0o755)
    os.makedirs(os.path.join(tmp, "logs"), exist_ok=True)
    if os.geteuid() == 0:
        for d in (tmp, os.path.join(tmp, "logs")):
            shutil.chown(d, "postgres", "postgres")
        os.chmod(os.path.join(tmp, "logs"), 0o777)
    try:
        import psycopg
    except ImportError:
        die("psycopg 3 missing: pip install 'psycopg[binary]==3.3.9' (bash .ci/run --setup-only installs it)")
    bench.raise_fd_limit()
    bins = {n: bench.find_pg_bin(n) for n in ("initdb", "postgres", "psql", "pgbench")}
    src, binary = build(args, tmp)
    log(f"pgsidecar binary {src}")

    pg = bench.Postgres(tmp, bins)
    log("starting PostgreSQL (fsync=off, max_connections=400)")
    pg.start()
    pg.setup_bench(args.scale)
    pg.psql_super("CREATE UNLOGGED TABLE soak_copy (worker text, n int)", db=bench.BENCH_DB)
    pg.psql_super(f"ALTER TABLE soak_copy OWNER TO {bench.BENCH_USER}", db=bench.BENCH_DB)
    proc, port, metrics_port, sidecar_log = start_sidecar(args, binary, tmp, pg.port)
    pid = proc.pid
    log(f"pgsidecar pid {pid} on 127.0.0.1:{port} (metrics {metrics_port}), pool {args.pool_size}, transaction mode")

    monitor = psycopg.connect(host=pg.sock, port=pg.port, user="postgres", dbname="postgres", autocommit=True)

    def servers_pg():
        return monitor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND backend_type = 'client backend'",
            (bench.BENCH_USER,)).fetchone()[0]

    total = args.warmup + args.duration
    log(f"load: cycle {args.cycle:g} s, warm-up {args.warmup:g} s (not judged), measured {args.duration:g} s; "
        f"windows of {args.cycle:g} s; a sample every {args.interval:g} s")
    t0 = time.monotonic()
    load = Load(args, bins, port, tmp, t0)
    load.start()
    samples = []
    last_tx, last_t = None, None
    sample_csv = open(os.path.join(out, "samples.csv"), "w", newline="")
    writer = csv.DictWriter(sample_csv, fieldnames=SAMPLE_FIELDS)
    writer.writeheader()
    n_windows = int(round(args.duration / args.cycle))
    try:
        k = 0
        while True:
            due = t0 + k * args.interval
            if due - t0 > total + 1e-6:
                break
            time.sleep(max(0.0, due - time.monotonic()))
            k += 1
            if proc.poll() is not None:
                die(f"pgsidecar exited with {proc.returncode} during the soak:\n" + bench.tail(sidecar_log))
            now = time.monotonic()
            m = scrape(metrics_port)
            tx = m.get("pgsidecar_transactions_total")
            tps = (tx - last_tx) / (now - last_t) if tx is not None and last_tx is not None else None
            last_tx, last_t = tx, now
            t = due - t0
            measured = t - args.warmup
            window = int(measured // args.cycle) + 1 if measured >= 0 and t < total else None
            if measured >= 0 and abs(t - total) < 1e-6:
                window = None  # the sample at the very end belongs to no window
            row = {
                "t_s": round(t, 2), "phase": round(load.phase(), 3), "window": window,
                "rss_kb": bench.proc_status_kb(pid, "VmRSS"), "fds": read_fds(pid), "servers_pg": servers_pg(),
                "servers_sidecar": (int(m.get("pgsidecar_servers_active", 0) + m.get("pgsidecar_servers_idle", 0)
                                        + m.get("pgsidecar_servers_connecting", 0)) if m else None),
                "clients": int(m["pgsidecar_clients_connected"]) if "pgsidecar_clients_connected" in m else None,
                "idle_clients": load.idle_count(), "tps": round(tps, 1) if tps is not None else None,
                "unexpected_errors": load.errors.count,
            }
            samples.append(row)
            writer.writerow(row)
            sample_csv.flush()
            if window is not None and (measured % args.cycle) < args.interval / 2:  # a window's first sample
                log(f"  t={t:6.0f} s  window {window}/{n_windows}  RSS {fmt(row['rss_kb'] / 1024 if row['rss_kb'] else None, 1)} MB"
                    f"  fds {row['fds']}  servers {row['servers_pg']}  clients {row['clients']}"
                    f"  tps {fmt(tps)}  errors {load.errors.count}")
    finally:
        sample_csv.close()
        load.shutdown()
        monitor.close()

    # Per window: medians of RSS, fds and clients, max servers, mean TPS.
    windows = []
    warm = [s for s in samples if s["window"] is None and s["t_s"] < args.warmup]
    for label, rows in [("warm-up", warm)] + [(str(w), [s for s in samples if s["window"] == w])
                                                for w in range(1, n_windows + 1)]:
        if not rows:
            continue
        windows.append({
            "window": label,
            "from_s": rows[0]["t_s"], "samples": len(rows),
            "rss_mb": median([s["rss_kb"] for s in rows]) / 1024 if median([s["rss_kb"] for s in rows]) else None,
            "fds": median([s["fds"] for s in rows]),
            "servers_max": max((s["servers_pg"] for s in rows), default=None),
            "clients": median([s["clients"] for s in rows]),
            "tps": statistics.mean([s["tps"] for s in rows if s["tps"] is not None]) if any(
                s["tps"] is not None for s in rows) else None,
        })
    with open(os.path.join(out, "windows.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(windows[0].keys()))
        w.writeheader()
        w.writerows(windows)

    unit = "minute" if args.cycle == 60 else f"{args.cycle:g} s window"
    L = [f"pgsidecar soak: {args.duration:g} s measured after {args.warmup:g} s warm-up; cycle {args.cycle:g} s; "
         f"pool {args.pool_size}; binary {src}", ""]
    hdr = f"{unit:>16}{'from s':>8}{'RSS MB':>9}{'fds':>7}{'servers':>9}{'clients':>9}{'TPS':>8}"
    L += [hdr + "   (medians; servers = max seen in pg_stat_activity; TPS = mean)", "-" * len(hdr)]
    for r in windows:
        L.append(f"{r['window']:>16}{fmt(r['from_s']):>8}{fmt(r['rss_mb'], 1):>9}{fmt(r['fds']):>7}"
                 f"{fmt(r['servers_max']):>9}{fmt(r['clients']):>9}{fmt(r['tps']):>8}")
    judged = [r for r in windows if r["window"] != "warm-up"]
    problems = []
    if len(judged) < 2:
        problems.append("fewer than two measured windows")
    else:
        first, last = judged[0], judged[-1]
        for key, name in (("rss_mb", "RSS"), ("fds", "open fds")):
            c = change(first[key], last[key])
            verdict = "ok" if c is not None and abs(c) <= TOLERANCE else "NOT FLAT"
            L.append(f"{name}: first {unit} {fmt(first[key], 1)}, last {fmt(last[key], 1)}: "
                     f"{'NA' if c is None else f'{c:+.1%}'} ({verdict}; limit ±{TOLERANCE:.0%})")
            if verdict != "ok":
                problems.append(f"{name} changed {'NA' if c is None else f'{c:+.1%}'} from the first to the last {unit}")
    peak_servers = max((s["servers_pg"] for s in samples if s["servers_pg"] is not None), default=0)
    L.append(f"servers: at most {peak_servers} (pool size {args.pool_size})")
    if peak_servers > args.pool_size:
        problems.append(f"{peak_servers} server connections seen, pool size is {args.pool_size}")
    L.append(f"clients: {load.client_sessions} Python sessions, {load.pgbench_runs} pgbench runs; "
             f"unexpected errors: {load.errors.count}")
    for e in load.errors.examples:
        L.append(f"  {e}")
    if load.errors.count:
        problems.append(f"{load.errors.count} unexpected client error(s)")
    if proc.poll() is not None:
        problems.append(f"pgsidecar exited with {proc.returncode}")
    events = {}
    with open(sidecar_log, errors="replace") as f:
        for line in f:
            m = re.search(r"level=(warn|error) event=(\S+)", line)
            if m:
                key = f"{m.group(1)} {m.group(2)}"
                events.setdefault(key, [0, line.strip()[:240]])[0] += 1
    for key, (n, first) in sorted(events.items()):
        L.append(f"pgsidecar log: {n} x {key}; first: {first}")
    L.append("")
    L.append("FLAT" if not problems else "NOT FLAT: " + "; ".join(problems))
    report = "\n".join(L) + "\n"
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write(report)
    log("")
    log(report)
    log(f"samples.csv, windows.csv, summary.txt and logs/ in {out}")
    return 0 if not problems else 1


def main():
    ap = argparse.ArgumentParser(description="Soak pgsidecar under mixed load; RSS, fds and servers must stay flat.")
    ap.add_argument("--duration", type=float, default=600, help="measured seconds (default 600), rounded to whole cycles")
    ap.add_argument("--warmup", type=float, help="seconds of load before the measured part (default 60; 20 below 5 min)")
    ap.add_argument("--cycle", type=float, help="seconds per load cycle and per judged window (default 60; 15 below 5 min)")
    ap.add_argument("--interval", type=float, help="seconds between samples (default 5; 1 below 5 min)")
    ap.add_argument("--out", help="output directory (default bench/out/soak-<timestamp>)")
    ap.add_argument("--binary", help="use this pgsidecar binary instead of cargo build --release")
    ap.add_argument("--debug-build", action="store_true", help="cargo build (dev profile) and use target/debug/pgsidecar")
    ap.add_argument("--pool-size", type=int, default=10)
    ap.add_argument("--pgbench-clients", type=int, default=8)
    ap.add_argument("--rate", type=int, default=200, help="pgbench -R for the runs without -C (default 200)")
    ap.add_argument("--connect-rate", type=int, default=20, help="pgbench -C -R (default 20 logins/s)")
    ap.add_argument("--python-clients", type=int, default=3)
    ap.add_argument("--idle-peak", type=int, help="idle clients at mid-cycle (default 100; 40 below 5 min)")
    ap.add_argument("--scale", type=int, default=1, help="pgbench -i scale (default 1)")
    ap.add_argument("--keep-tmp", action="store_true")
    args = ap.parse_args()
    short = args.duration < 300
    args.cycle = args.cycle or (15.0 if short else 60.0)
    # RSS steps up at each of the first idle peaks (by less each time: the allocator's high-water
    # mark, not a leak); the warm-up lets the first of them pass before the first judged window.
    args.warmup = args.warmup if args.warmup is not None else (20.0 if short else 60.0)
    args.interval = args.interval or (1.0 if short else 5.0)
    args.idle_peak = args.idle_peak if args.idle_peak is not None else (40 if short else 100)
    args.duration = max(2, round(args.duration / args.cycle)) * args.cycle
    if args.binary and args.debug_build:
        die("--binary and --debug-build exclude each other")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = os.path.abspath(args.out or os.path.join(REPO, "bench", "out", f"soak-{stamp}"))
    os.makedirs(out, exist_ok=True)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    tmp = None
    rc = 1
    try:
        tmp = tempfile.mkdtemp(prefix="pgsidecar-soak-")
        rc = soak(args, out, tmp)
    except KeyboardInterrupt as e:
        log(f"\nsoak: interrupted ({str(e) or 'Ctrl-C'}); stopping everything it started")
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


if __name__ == "__main__":
    sys.exit(main())
