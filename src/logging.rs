//! Log lines as logfmt on stderr: `level=info event=server_connected key=value ...`, with a
//! timestamp unless the platform adds its own (on a dyno, `DYNO` is set).
//!
//! May import nothing else of the crate.

use std::fmt::Write as _;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

pub struct Logfmt {
    pub timestamps: bool,
}

struct Fields<'a> {
    out: &'a mut String,
}

fn push_value(out: &mut String, v: &str) {
    if !v.is_empty() && v.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\') {
        out.push_str(v);
    } else {
        out.push('"');
        for c in v.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let name = if field.name() == "message" { "event" } else { field.name() };
        let _ = write!(self.out, " {name}=");
        push_value(self.out, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        let _ = write!(self.out, " {}={value}", field.name());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        let _ = write!(self.out, " {}={value}", field.name());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        let _ = write!(self.out, " {}={value}", field.name());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        let _ = write!(self.out, " {}={value:.3}", field.name());
    }
}

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::with_capacity(160);
        if self.timestamps {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let _ = write!(line, "ts={}.{:03} ", now.as_secs(), now.subsec_millis());
        }
        let _ = write!(line, "level={}", event.metadata().level().as_str().to_ascii_lowercase());
        event.record(&mut Fields { out: &mut line });
        line.push('\n');
        writer.write_str(&line)
    }
}

static TIMESTAMPS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);
static MAX_LEVEL: std::sync::OnceLock<tracing::Level> = std::sync::OnceLock::new();

/// Writes a pre-formatted logfmt line (l2met keys such as `sample#x=1` are not tracing field
/// names) at `level`, with the same timestamp rule as every other line.
pub fn raw_line(level: tracing::Level, line: &str) {
    if MAX_LEVEL.get().is_some_and(|max| level > *max) {
        return;
    }
    let mut out = String::with_capacity(line.len() + 24);
    if TIMESTAMPS.load(std::sync::atomic::Ordering::Relaxed) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let _ = write!(out, "ts={}.{:03} ", now.as_secs(), now.subsec_millis());
    }
    out.push_str(line);
    out.push('\n');
    use std::io::Write as _;
    let _ = std::io::stderr().write_all(out.as_bytes());
}

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(level: tracing::Level, timestamps: bool) {
    TIMESTAMPS.store(timestamps, std::sync::atomic::Ordering::Relaxed);
    let _ = MAX_LEVEL.set(level);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .event_format(Logfmt { timestamps })
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::push_value;

    #[test]
    fn values_are_quoted_when_needed() {
        let mut s = String::new();
        push_value(&mut s, "plain");
        push_value(&mut s, " ");
        push_value(&mut s, "a \"b\"\nc");
        assert_eq!(s, "plain\" \"\"a \\\"b\\\"\\nc\"");
    }
}
