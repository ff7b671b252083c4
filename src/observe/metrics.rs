//! The Prometheus endpoint. Counters and gauges come from the proxy's own atomics, copied into
//! `metrics` handles once a second (registered once per pool, never looked up by name on the
//! hot path). metrics-exporter-prometheus renders and escapes those. The latency histograms
//! (buckets 100 µs to 30 s) are the proxy's own atomic histograms, rendered here at scrape
//! time: recording into a `metrics` histogram costs an allocation-backed sample per event,
//! which the hot path can do without.

use super::histogram::{Snapshot, BOUNDS_US};
use super::stats::{CloseReason, Counters, PoolerError};
use crate::upstream::Upstream;
use metrics::{Counter, Gauge, Label};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

/// The process-wide exporter handle (one recorder per process).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; the handle still renders ours.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

fn labels(database: &str, user: &str) -> Vec<Label> {
    vec![Label::new("database", database.to_owned()), Label::new("user", user.to_owned())]
}

/// The pools of this process, from their creation on: /metrics shows their latency
/// histograms, and a forwarded cancel request finds its pool's counters here.
static POOLS: Mutex<Vec<Weak<Upstream>>> = Mutex::new(Vec::new());

/// Makes a pool's latency histograms part of /metrics while it exists.
pub fn register_histograms(upstream: &Arc<Upstream>) {
    POOLS.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::downgrade(upstream));
}

/// The registered pools that still exist.
fn live_pools() -> Vec<Arc<Upstream>> {
    let mut reg = POOLS.lock().unwrap_or_else(|p| p.into_inner());
    reg.retain(|w| w.strong_count() > 0);
    reg.iter().filter_map(Weak::upgrade).collect()
}

/// The whole /metrics text: the exporter's counters and gauges, then the process' own
/// figures and the latency histograms.
pub fn render() -> String {
    let mut out = handle().render();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    render_process(&mut out);
    let pools = live_pools();
    type Read = fn(&Upstream) -> Snapshot;
    let families: [(&str, Read); 3] = [
        ("pgsidecar_checkout_wait_seconds", |u| u.counters.wait_time.snapshot()),
        ("pgsidecar_query_duration_seconds", |u| u.counters.query_time.snapshot()),
        ("pgsidecar_transaction_duration_seconds", |u| u.counters.xact_time.snapshot()),
    ];
    for (name, snapshot) in families {
        if pools.is_empty() {
            break;
        }
        out.push_str(&format!("# TYPE {name} histogram\n"));
        let mut seen = Vec::new();
        for u in &pools {
            let labels =
                format!("database=\"{}\",user=\"{}\"", escape(&u.pool.database), escape(&u.credentials.user));
            // Several proxies in one process (tests) may share labels: one series each.
            if seen.contains(&labels) {
                continue;
            }
            write_histogram(&mut out, name, &labels, &snapshot(u));
            seen.push(labels);
        }
        out.push('\n');
    }
    out
}

/// A label value in the text format: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn write_histogram(out: &mut String, name: &str, labels: &str, s: &Snapshot) {
    use std::fmt::Write;
    let mut cumulative = 0;
    for (i, bound) in BOUNDS_US.iter().enumerate() {
        cumulative += s.counts[i];
        let le = *bound as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
    }
    let count = s.count();
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", s.sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

/// Gauges and counters of one pool, set from the pool's state every second.
struct PoolGauges {
    max_size: Gauge,
    servers_active: Gauge,
    servers_idle: Gauge,
    servers_connecting: Gauge,
    clients_connected: Gauge,
    clients_active: Gauge,
    clients_waiting: Gauge,
    clients_pinned: Gauge,
    oldest_wait: Gauge,
    saturation: Gauge,
    queries: Counter,
    transactions: Counter,
    bytes_received: Counter,
    bytes_sent: Counter,
    opened: Counter,
    closed: Vec<(CloseReason, Counter)>,
    errors: Vec<(PoolerError, Counter)>,
    slow: Counter,
    cancels: Counter,
    parses_without_server: Counter,
    budget_limit: Gauge,
    budget_sidecars: Gauge,
    budget_share: Gauge,
}

impl PoolGauges {
    fn register(database: &str, user: &str) -> PoolGauges {
        let l = labels(database, user);
        let with = |k: &'static str, v: &'static str| {
            let mut l = l.clone();
            l.push(Label::new(k, v));
            l
        };
        PoolGauges {
            max_size: metrics::gauge!("pgsidecar_pool_max_size", l.clone()),
            servers_active: metrics::gauge!("pgsidecar_servers_active", l.clone()),
            servers_idle: metrics::gauge!("pgsidecar_servers_idle", l.clone()),
            servers_connecting: metrics::gauge!("pgsidecar_servers_connecting", l.clone()),
            clients_connected: metrics::gauge!("pgsidecar_clients_connected", l.clone()),
            clients_active: metrics::gauge!("pgsidecar_clients_active", l.clone()),
            clients_waiting: metrics::gauge!("pgsidecar_clients_waiting", l.clone()),
            clients_pinned: metrics::gauge!("pgsidecar_clients_pinned", l.clone()),
            oldest_wait: metrics::gauge!("pgsidecar_oldest_wait_seconds", l.clone()),
            saturation: metrics::gauge!("pgsidecar_pool_saturation_ratio", l.clone()),
            queries: metrics::counter!("pgsidecar_queries_total", l.clone()),
            transactions: metrics::counter!("pgsidecar_transactions_total", l.clone()),
            bytes_received: metrics::counter!("pgsidecar_client_bytes_received_total", l.clone()),
            bytes_sent: metrics::counter!("pgsidecar_client_bytes_sent_total", l.clone()),
            opened: metrics::counter!("pgsidecar_server_connections_opened_total", l.clone()),
            closed: CloseReason::ALL
                .iter()
                .map(|r| {
                    (
                        *r,
                        metrics::counter!(
                            "pgsidecar_server_connections_closed_total",
                            with("reason", r.as_str())
                        ),
                    )
                })
                .collect(),
            errors: PoolerError::ALL
                .iter()
                .map(|k| (*k, metrics::counter!("pgsidecar_pooler_errors_total", with("kind", k.as_str()))))
                .collect(),
            slow: metrics::counter!("pgsidecar_slow_queries_total", l.clone()),
            cancels: metrics::counter!("pgsidecar_cancels_total", l.clone()),
            parses_without_server: metrics::counter!("pgsidecar_parses_without_server_total", l.clone()),
            budget_limit: metrics::gauge!("pgsidecar_budget_connections", l.clone()),
            budget_sidecars: metrics::gauge!("pgsidecar_budget_sidecars", l.clone()),
            budget_share: metrics::gauge!("pgsidecar_budget_share", l),
        }
    }

    fn update_budget(&self, b: &crate::budget::BudgetState) {
        self.budget_limit.set(b.limit.load(Ordering::Relaxed) as f64);
        self.budget_sidecars.set(b.sidecars.load(Ordering::Relaxed) as f64);
        self.budget_share.set(b.share.load(Ordering::Relaxed) as f64);
    }

    fn update(&self, s: &crate::server::pool::PoolStats, c: &Counters) {
        self.max_size.set(s.max_size as f64);
        self.servers_active.set(s.active as f64);
        self.servers_idle.set(s.idle as f64);
        self.servers_connecting.set(s.connecting as f64);
        self.clients_connected.set(c.clients.load(Ordering::Relaxed) as f64);
        self.clients_active.set(s.active as f64);
        self.clients_waiting.set(s.waiting as f64);
        self.clients_pinned.set(c.pinned.load(Ordering::Relaxed) as f64);
        self.oldest_wait.set(s.oldest_wait.as_secs_f64());
        self.saturation.set(if s.max_size == 0 { 0.0 } else { s.active as f64 / s.max_size as f64 });
        self.queries.absolute(c.queries.load(Ordering::Relaxed));
        self.transactions.absolute(c.transactions.load(Ordering::Relaxed));
        self.bytes_received.absolute(c.bytes_from_clients.load(Ordering::Relaxed));
        self.bytes_sent.absolute(c.bytes_to_clients.load(Ordering::Relaxed));
        self.opened.absolute(s.opened_total);
        for (r, counter) in &self.closed {
            counter.absolute(s.closed_by[*r as usize]);
        }
        for (k, counter) in &self.errors {
            counter.absolute(c.errors[*k as usize].load(Ordering::Relaxed));
        }
        self.slow.absolute(c.slow_queries.load(Ordering::Relaxed));
        self.cancels.absolute(c.cancels.load(Ordering::Relaxed));
        self.parses_without_server.absolute(c.parses_without_server.load(Ordering::Relaxed));
    }
}

/// Clock ticks per second of /proc's CPU times (`sysconf(_SC_CLK_TCK)`, USER_HZ). The kernel
/// reports 100 on every architecture pgsidecar is built for; nix offers `sysconf` only with a
/// feature this crate does not enable, and the lints forbid calling libc directly.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// The process' own figures, read from Linux /proc at scrape time: resident memory (VmRSS, in
/// kB, so the page size does not matter), CPU seconds (user + system, fractional) and open file
/// descriptors. A metrics counter holds whole numbers only, so these are rendered here.
fn render_process(out: &mut String) {
    use std::fmt::Write;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(kb) = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    {
        let _ = writeln!(out, "# TYPE pgsidecar_process_resident_memory_bytes gauge");
        let _ = writeln!(out, "pgsidecar_process_resident_memory_bytes {}\n", kb * 1024);
    }
    if let Some(seconds) = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| cpu_seconds(&s)) {
        let _ = writeln!(out, "# TYPE pgsidecar_process_cpu_seconds_total counter");
        let _ = writeln!(out, "pgsidecar_process_cpu_seconds_total {seconds}\n");
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        let _ = writeln!(out, "# TYPE pgsidecar_process_open_fds gauge");
        let _ = writeln!(out, "pgsidecar_process_open_fds {}\n", dir.count());
    }
}

/// User + system CPU seconds from the text of /proc/self/stat.
fn cpu_seconds(stat: &str) -> Option<f64> {
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let after = stat.rsplit_once(')')?.1;
    let mut f = after.split_whitespace().skip(11);
    let ticks = f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?;
    Some(ticks as f64 / CLOCK_TICKS_PER_SECOND)
}

/// Copies pool state into the exporter every second, until the pools are gone.
pub async fn sample(upstreams: Vec<Weak<Upstream>>) {
    let exporter = handle();
    let pools: Vec<(Weak<Upstream>, PoolGauges)> = upstreams
        .into_iter()
        .filter_map(|w| {
            let u = w.upgrade()?;
            let gauges = PoolGauges::register(&u.pool.database, &u.credentials.user);
            Some((w, gauges))
        })
        .collect();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut alive = false;
        for (u, g) in &pools {
            let Some(u) = u.upgrade() else { continue };
            alive = true;
            g.update(&u.pool.stats(), &u.counters);
            g.update_budget(&u.budget);
            super::status::record(&u);
        }
        if !alive {
            return;
        }
        exporter.run_upkeep();
        tick.tick().await;
    }
}

/// Serves `GET /metrics` on `listener` with the exporter's text format, and `GET /` with the
/// live status page. Only the first 1 KiB of a request is read (the request line).
pub async fn serve(listener: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(async move {
            let mut req = [0u8; 1024];
            let n = match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut req)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let line = String::from_utf8_lossy(&req[..n]);
            let path = line.strip_prefix("GET ").and_then(|r| r.split(' ').next()).unwrap_or("");
            let (status, body, kind) = match path.split('?').next().unwrap_or("") {
                "/metrics" => ("200 OK", render(), "text/plain; version=0.0.4"),
                "/" => ("200 OK", super::status::page(&live_pools()), "text/html; charset=utf-8"),
                _ => ("404 Not Found", "try / or /metrics\n".to_owned(), "text/plain"),
            };
            let head = format!("HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_seconds_are_fractional_and_survive_odd_command_names() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 500 0 0 0 37 5 0 0 20 0 3 0 100 0 0";
        assert_eq!(super::cpu_seconds(stat), Some(0.42));
        assert_eq!(super::cpu_seconds("4242 (x) S 1"), None);
    }
}
