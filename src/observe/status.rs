//! The live status page (`GET /` on the metrics listener): every pool's servers and clients
//! now, the checkout wait and query latency over the last minutes as inline SVG charts, the
//! top statements by total time (normalized text only) and the recent saturation events.
//! Plain HTML that refreshes itself: no script, no external request, works offline.
//!
//! The metrics sampler calls [`record`] once a second per pool; the saturation report calls
//! [`event`]. Both keep bounded buffers.

use super::histogram::Snapshot;
use crate::upstream::Upstream;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

/// Points kept per pool: ten minutes at one a second.
const MAX_POINTS: usize = 600;
/// Saturation events kept, newest first.
const MAX_EVENTS: usize = 20;
/// Statements shown, and the longest text shown of each (bytes).
const TOP_STATEMENTS: usize = 10;
const STATEMENT_MAX: usize = 300;

/// One second of one pool.
#[derive(Debug, Clone, Copy, Default)]
struct Point {
    busy: usize,
    waiting: usize,
    wait_p99_ms: f64,
    query_p99_ms: f64,
}

struct History {
    pool: Weak<Upstream>,
    points: VecDeque<Point>,
    waits: Snapshot,
    queries: Snapshot,
}

static HISTORIES: Mutex<Vec<History>> = Mutex::new(Vec::new());
static EVENTS: Mutex<VecDeque<(SystemTime, String, String)>> = Mutex::new(VecDeque::new());

/// Adds this second's point for `up` (the metrics sampler's tick).
pub fn record(up: &Arc<Upstream>) {
    let s = up.pool.stats();
    let (waits, queries) = (up.counters.wait_time.snapshot(), up.counters.query_time.snapshot());
    let mut all = HISTORIES.lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|h| h.pool.strong_count() > 0);
    let i = match all.iter().position(|h| std::ptr::eq(h.pool.as_ptr(), Arc::as_ptr(up))) {
        Some(i) => i,
        None => {
            all.push(History {
                pool: Arc::downgrade(up),
                points: VecDeque::with_capacity(MAX_POINTS),
                waits,
                queries,
            });
            all.len() - 1
        }
    };
    let h = &mut all[i];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let point = Point {
        busy: s.active,
        waiting: s.waiting,
        wait_p99_ms: ms(waits.since(&h.waits).quantile(0.99)),
        query_p99_ms: ms(queries.since(&h.queries).quantile(0.99)),
    };
    h.waits = waits;
    h.queries = queries;
    if h.points.len() >= MAX_POINTS {
        h.points.pop_front();
    }
    h.points.push_back(point);
}

/// Keeps a saturation event for the page: the pool and what happened, in words.
pub fn event(database: &str, text: impl Into<String>) {
    let mut events = EVENTS.lock().unwrap_or_else(|p| p.into_inner());
    if events.len() >= MAX_EVENTS {
        events.pop_back();
    }
    events.push_front((SystemTime::now(), database.to_owned(), text.into()));
}

fn html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Seconds a chart spans at least, so that a young history is not a sliver at the right.
const MIN_SPAN: usize = 60;

/// A line chart of up to [`MAX_POINTS`] values (one a second), newest on the right.
fn chart(id: &str, title: &str, values: &[f64], colour: &str, unit: &str) -> String {
    let (w, h) = (540.0, 120.0);
    let max = values.iter().copied().fold(0.0, f64::max).max(1.0);
    let span = values.len().max(MIN_SPAN);
    let step = w / (span - 1) as f64;
    let start = span - values.len();
    let points: String = values
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{:.1},{:.1} ", (start + i) as f64 * step, h - h * v / max))
        .collect();
    format!(
        r##"<figure><figcaption>{title} (top of the scale {max:.1}{unit}, last {span} s)</figcaption><svg id="{id}" width="{w}" height="{h}" viewBox="0 0 {w} {h}"><rect width="{w}" height="{h}" fill="#fafafa" stroke="#ccc"/><polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/></svg></figure>"##,
        points.trim_end()
    )
}

fn pool_section(out: &mut String, up: &Upstream, points: &[Point]) {
    let s = up.pool.stats();
    let clients = up.counters.clients.load(Ordering::Relaxed).max(0) as usize;
    let db = html(&up.pool.database);
    let id = |what: &str| {
        format!("{}-{what}", up.pool.database.replace(|c: char| !c.is_ascii_alphanumeric(), "_"))
    };
    let _ = write!(
        out,
        r#"<section class="pool"><h2>{db} <small>as {}</small></h2><table><tr>"#,
        html(&up.credentials.user)
    );
    for (label, key, v) in [
        ("servers busy", "sv_active", s.active),
        ("servers idle", "sv_idle", s.idle),
        ("pool size", "pool_size", s.max_size),
        ("clients active", "cl_active", clients.saturating_sub(s.waiting)),
        ("clients waiting", "cl_waiting", s.waiting),
    ] {
        let _ = write!(out, r#"<td><div class="n" id="{}" data-value="{v}">{v}</div>{label}</td>"#, id(key));
    }
    out.push_str("</table>");
    let waits: Vec<f64> = points.iter().map(|p| p.wait_p99_ms).collect();
    let queries: Vec<f64> = points.iter().map(|p| p.query_p99_ms).collect();
    let busy: Vec<f64> = points.iter().map(|p| p.busy as f64).collect();
    let waiting: Vec<f64> = points.iter().map(|p| p.waiting as f64).collect();
    out.push_str(&chart(&id("wait-chart"), "checkout wait p99 per second", &waits, "#6a1b9a", " ms"));
    out.push_str(&chart(&id("query-chart"), "query time p99 per second", &queries, "#1f5fbf", " ms"));
    out.push_str(&chart(&id("busy-chart"), "servers busy", &busy, "#2e7d32", ""));
    out.push_str(&chart(&id("waiting-chart"), "clients waiting", &waiting, "#c62828", ""));
    out.push_str("<h3>Top statements by total time</h3><table class=\"top\"><tr><th>statement (normalized)</th><th>calls</th><th>total ms</th><th>mean ms</th></tr>");
    for (_, t) in up.counters.top_statements(TOP_STATEMENTS) {
        let mut text = t.text.clone();
        if text.len() > STATEMENT_MAX {
            let mut end = STATEMENT_MAX;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str("...");
        }
        let total = t.total.as_secs_f64() * 1000.0;
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td><td>{total:.1}</td><td>{:.2}</td></tr>",
            html(&text),
            t.calls,
            total / t.calls.max(1) as f64
        );
    }
    out.push_str("</table></section>");
}

/// The whole page.
pub fn page(upstreams: &[Arc<Upstream>]) -> String {
    let histories: Vec<(Weak<Upstream>, Vec<Point>)> = HISTORIES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|h| (h.pool.clone(), h.points.iter().copied().collect()))
        .collect();
    let mut out = String::with_capacity(32 * 1024);
    out.push_str(concat!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">",
        "<title>pgsidecar status</title><style>",
        "body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}",
        "td{padding:.3em 1.2em .3em 0;vertical-align:top}.n{font-size:2em;font-weight:bold}",
        "figure{display:inline-block;margin:.5em 1em .5em 0}figcaption{font-size:.85em;color:#555}",
        ".top td,.top th{border-bottom:1px solid #ddd;text-align:left;font-size:.9em}code{white-space:pre-wrap}",
        "</style></head><body><h1>pgsidecar</h1>"
    ));
    let _ = write!(
        out,
        "<p>{} pool(s); refreshes every 2 s. Prometheus metrics: <a href=\"/metrics\">/metrics</a>.</p>",
        upstreams.len()
    );
    for up in upstreams {
        let points = histories
            .iter()
            .find(|(w, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(up)))
            .map_or(&[][..], |(_, p)| p.as_slice());
        pool_section(&mut out, up, points);
    }
    out.push_str("<h2>Recent saturation events</h2><ul id=\"events\">");
    let events = EVENTS.lock().unwrap_or_else(|p| p.into_inner());
    if events.is_empty() {
        out.push_str("<li>none</li>");
    }
    for (at, db, text) in events.iter() {
        let ago = at.elapsed().unwrap_or_default().as_secs();
        let _ = write!(out, "<li>{ago} s ago, <b>{}</b>: {}</li>", html(db), html(text));
    }
    out.push_str("</ul></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_hold_one_point_a_second_and_html_is_escaped() {
        let values: Vec<f64> = (0..MAX_POINTS).map(|i| i as f64).collect();
        let svg = chart("a", "t", &values, "#000", "");
        let points = svg.split("points=\"").nth(1).unwrap().split('"').next().unwrap();
        assert_eq!(points.split_whitespace().count(), MAX_POINTS);
        assert!(svg.contains("last 600 s"));
        assert_eq!(html("<b a=\"1\">&"), "&lt;b a=&quot;1&quot;&gt;&amp;");
    }

    #[test]
    fn events_are_bounded_newest_first() {
        for i in 0..3 * MAX_EVENTS {
            event("db", format!("e{i}"));
        }
        let events = EVENTS.lock().unwrap();
        assert!(events.len() <= MAX_EVENTS);
        assert_eq!(events[0].2, format!("e{}", 3 * MAX_EVENTS - 1));
    }
}
