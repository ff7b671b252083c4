//! What the demo shows: in a terminal, one status block redrawn in place with the few events
//! that matter above it in words; elsewhere, one plain line per second.

use crate::logging::Record;
use std::fmt::Write as _;

/// The pool and the simulated app at one moment.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub elapsed_s: f64,
    pub total_s: f64,
    pub workers: usize,
    pub busy: usize,
    pub idle: usize,
    pub pool_size: usize,
    pub connected: usize,
    pub waiting: usize,
    pub wait_p99_ms: f64,
    pub window_s: f64,
    pub transactions: u64,
    pub slow: u64,
    pub errors: u64,
}

/// The first line of the block: what a test looks for.
pub const BLOCK_TITLE: &str = "=== pgsidecar demo: the pool";
const WIDTH: usize = 78;

pub fn bar(used: usize, max: usize) -> String {
    (0..max).map(|i| if i < used { '#' } else { '.' }).collect()
}

/// The status block, each line shorter than a narrow terminal.
pub fn block(s: &Status) -> Vec<String> {
    let rate = if s.elapsed_s > 0.0 { s.transactions as f64 / s.elapsed_s } else { 0.0 };
    let mut title =
        format!("{BLOCK_TITLE}, {:.1}s of {:.0}s, {} app workers busy ", s.elapsed_s, s.total_s, s.workers);
    while title.len() < WIDTH {
        title.push('=');
    }
    vec![
        title,
        format!(
            "servers   [{}] {} busy, {} idle, pool size {}",
            bar(s.busy, s.pool_size),
            s.busy,
            s.idle,
            s.pool_size
        ),
        format!("clients   {} connected, {} waiting for a server", s.connected, s.waiting),
        format!("wait p99  {:.1}ms over the last {:.2}s", s.wait_p99_ms, s.window_s),
        format!(
            "requests  {} transactions ({rate:.0}/s), {} slow, {} errors",
            s.transactions, s.slow, s.errors
        ),
        "=".repeat(WIDTH),
    ]
}

/// Today's one-line view, for a pipe or a file.
pub fn plain_line(s: &Status) -> String {
    format!(
        "{:5.1}s  servers [{}] {}/{} busy  clients {:3} connected {:3} waiting  wait p99 {:>6.1}ms  tx {:6}  slow {:3}  errors {}",
        s.elapsed_s,
        bar(s.busy, s.pool_size),
        s.busy,
        s.pool_size,
        s.connected,
        s.waiting,
        s.wait_p99_ms,
        s.transactions,
        s.slow,
        s.errors,
    )
}

/// Whether the demo retells this logged event.
pub fn wanted(r: &Record) -> bool {
    matches!(r.event.as_str(), "pool_saturated" | "pool_saturation_ended")
}

/// `text` wrapped at word boundaries to `width`, lines after the first indented by `indent`.
fn wrap(text: &str, first: &str, indent: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = first.to_owned();
    let mut fresh = true;
    for word in text.split_whitespace() {
        if !fresh && line.len() + 1 + word.len() > width {
            lines.push(std::mem::replace(&mut line, indent.to_owned()));
            fresh = true;
        }
        if !fresh {
            line.push(' ');
        }
        line.push_str(word);
        fresh = false;
    }
    lines.push(line);
    lines
}

/// A logged event retold in words, at `elapsed_s` into the run.
pub fn event_lines(r: &Record, elapsed_s: f64) -> Vec<String> {
    let at = format!("{elapsed_s:5.1}s  ");
    let indent = " ".repeat(at.len() + 2);
    let f = |k: &str| r.field(k).unwrap_or("?").to_owned();
    match r.event.as_str() {
        "pool_saturated" => {
            let p99: f64 = f("wait_p99_ms").parse().unwrap_or(0.0);
            let mut out = Vec::new();
            let mut head = String::new();
            let _ = write!(
                head,
                "POOL SATURATED: {} clients have waited for a server for {}s; all {} servers busy; the oldest has waited {}ms (p99 of the waits that ended: {p99:.0}ms).",
                f("waiting"),
                f("waiting_for_s"),
                f("pool_size"),
                f("oldest_wait_ms")
            );
            out.extend(wrap(&head, &at, &indent, WIDTH + 20));
            let top = f("top_statement");
            if !top.is_empty() && top != "?" {
                out.extend(wrap(&top, &format!("{indent}busiest statement: "), &indent, WIDTH + 20));
            }
            out.extend(wrap(&f("advice"), &format!("{indent}diagnosis: "), &indent, WIDTH + 20));
            out
        }
        "pool_saturation_ended" => vec![format!("{at}saturation ended: no client is waiting for a server")],
        _ => vec![format!("{at}{}", r.event)],
    }
}

/// The terminal: redraws the block in place, with new event lines scrolling above it.
#[derive(Debug, Default)]
pub struct Screen {
    drawn: usize,
}

impl Screen {
    /// The bytes that move up over the last block, print `events`, then the new block.
    pub fn frame(&mut self, events: &[String], block: &[String]) -> String {
        let mut out = String::new();
        if self.drawn > 0 {
            let _ = write!(out, "\x1b[{}A\r\x1b[J", self.drawn);
        }
        for line in events.iter().chain(block) {
            out.push_str(line);
            out.push('\n');
        }
        self.drawn = block.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_fits_a_narrow_terminal() {
        let s = Status { busy: 9, pool_size: 9, connected: 48, waiting: 39, ..Default::default() };
        let b = block(&s);
        assert!(b.iter().all(|l| l.len() <= WIDTH), "{b:#?}");
        assert!(b[0].starts_with(BLOCK_TITLE));
    }

    #[test]
    fn frames_move_up_over_the_last_block() {
        let mut screen = Screen::default();
        let first = screen.frame(&[], &["a".into(), "b".into()]);
        assert_eq!(first, "a\nb\n");
        let second = screen.frame(&["event".into()], &["c".into(), "d".into()]);
        assert_eq!(second, "\x1b[2A\r\x1b[Jevent\nc\nd\n");
    }

    #[test]
    fn saturation_is_told_in_words() {
        let r = Record {
            level: tracing::Level::WARN,
            event: "pool_saturated".into(),
            fields: [
                ("waiting", "12"),
                ("waiting_for_s", "5"),
                ("pool_size", "9"),
                ("wait_p99_ms", "812.400"),
                ("oldest_wait_ms", "4930"),
                ("top_statement", "SELECT pg_sleep($1)"),
                ("advice", "raise PGSIDECAR_POOL_SIZE"),
            ]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        };
        let text = event_lines(&r, 10.0).join("\n");
        assert!(text.contains("POOL SATURATED: 12 clients"), "{text}");
        let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            words.contains("the oldest has waited 4930ms (p99 of the waits that ended: 812ms)"),
            "{text}"
        );
        assert!(text.contains("busiest statement: SELECT pg_sleep($1)"), "{text}");
        assert!(text.contains("diagnosis: raise PGSIDECAR_POOL_SIZE"), "{text}");
        assert!(!text.contains("level="));
    }
}
