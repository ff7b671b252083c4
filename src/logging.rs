//! Log lines on stderr, or in a file: logfmt by default (`level=info event=server_connected
//! key=value ...`), or one JSON object per line with the same fields; with a timestamp unless
//! the platform adds its own (on a dyno, `DYNO` is set). A tap lets the demo see chosen
//! events as they are logged, to retell them in words.
//!
//! May import nothing else of the crate.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Mutex, OnceLock};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How a line is written: logfmt (what Heroku's log drains parse) or JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Logfmt,
    Json,
}

/// Where lines go: stderr, or a file (the demo keeps the terminal for its own view).
pub enum Sink {
    Stderr,
    File(Mutex<std::fs::File>),
}

/// One logged event as the tap sees it: its level, its name and its fields as text.
#[derive(Debug, Clone)]
pub struct Record {
    pub level: tracing::Level,
    pub event: String,
    pub fields: Vec<(String, String)>,
}

impl Record {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

pub type Tap = Box<dyn Fn(&Record) + Send + Sync>;

/// Everything [`init`] decides, once per process.
pub struct Options {
    /// The most verbose level written.
    pub level: tracing::Level,
    pub timestamps: bool,
    pub format: Format,
    pub sink: Sink,
    /// Sees every event at info or above, written or not.
    pub tap: Option<Tap>,
}

impl Options {
    /// Logfmt on stderr at `level`, no tap.
    pub fn stderr(level: tracing::Level, timestamps: bool) -> Options {
        Options { level, timestamps, format: Format::Logfmt, sink: Sink::Stderr, tap: None }
    }
}

/// A field value, kept typed so that JSON writes numbers and booleans as such.
enum Value {
    Str(String),
    Int(i64),
    UInt(u64),
    Bool(bool),
    Float(f64),
}

impl Value {
    fn text(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            Value::Int(v) => v.to_string(),
            Value::UInt(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
            Value::Float(v) => format!("{v:.3}"),
        }
    }
}

#[derive(Default)]
struct Fields {
    list: Vec<(&'static str, Value)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        let name = if field.name() == "message" { "event" } else { field.name() };
        self.list.push((name, Value::Str(value.to_owned())));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.list.push((field.name(), Value::Int(value)));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.list.push((field.name(), Value::UInt(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.list.push((field.name(), Value::Bool(value)));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.list.push((field.name(), Value::Float(value)));
    }
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

fn push_json_str(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn timestamp() -> std::time::Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}

/// One line, newline included, in `format`: `ts` (when wanted), `level`, then the fields in
/// the order they were recorded.
fn render(format: Format, timestamps: bool, level: &str, fields: &[(&str, Value)]) -> String {
    let mut line = String::with_capacity(160);
    let now = timestamp();
    match format {
        Format::Logfmt => {
            if timestamps {
                let _ = write!(line, "ts={}.{:03} ", now.as_secs(), now.subsec_millis());
            }
            let _ = write!(line, "level={level}");
            for (k, v) in fields {
                let _ = write!(line, " {k}=");
                match v {
                    Value::Str(s) => push_value(&mut line, s),
                    other => line.push_str(&other.text()),
                }
            }
        }
        Format::Json => {
            line.push('{');
            if timestamps {
                let _ = write!(line, "\"ts\":{}.{:03},", now.as_secs(), now.subsec_millis());
            }
            let _ = write!(line, "\"level\":\"{level}\"");
            for (k, v) in fields {
                line.push(',');
                push_json_str(&mut line, k);
                line.push(':');
                match v {
                    Value::Str(s) => push_json_str(&mut line, s),
                    Value::Float(f) if !f.is_finite() => line.push_str("null"),
                    other => line.push_str(&other.text()),
                }
            }
            line.push('}');
        }
    }
    line.push('\n');
    line
}

struct State {
    level: tracing::Level,
    timestamps: bool,
    format: Format,
    sink: Sink,
    tap: Option<Tap>,
}

static STATE: OnceLock<State> = OnceLock::new();

fn write_out(line: &str) {
    match STATE.get().map(|s| &s.sink) {
        Some(Sink::File(f)) => {
            let _ = f.lock().unwrap_or_else(|p| p.into_inner()).write_all(line.as_bytes());
        }
        _ => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

struct Formatter;

impl<S, N> FormatEvent<S, N> for Formatter
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
        let Some(state) = STATE.get() else { return Ok(()) };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = event.metadata().level();
        if let Some(tap) = &state.tap {
            let name = fields.list.iter().find(|(k, _)| *k == "event").map(|(_, v)| v.text());
            tap(&Record {
                level: *level,
                event: name.unwrap_or_default(),
                fields: fields.list.iter().map(|(k, v)| ((*k).to_owned(), v.text())).collect(),
            });
        }
        // The tap may see more than is written (the subscriber lets info through for it).
        if *level > state.level {
            return Ok(());
        }
        let line = render(state.format, state.timestamps, &level.as_str().to_ascii_lowercase(), &fields.list);
        writer.write_str(&line)
    }
}

/// The writer tracing-subscriber asks for every line: the configured sink.
struct SinkWriter;

impl std::io::Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        write_out(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Splits a logfmt line into its keys and values (quoted values unescaped), for JSON.
fn parse_logfmt(line: &str) -> Vec<(&str, Value)> {
    let mut out = Vec::new();
    let mut rest = line.trim_start();
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim();
        rest = &rest[eq + 1..];
        let value = if let Some(quoted) = rest.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => v.push('\n'),
                        Some((_, c)) => v.push(c),
                        None => {}
                    },
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => v.push(c),
                }
            }
            rest = &quoted[end.min(quoted.len())..];
            v
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            let v = rest[..end].to_owned();
            rest = &rest[end..];
            v
        };
        out.push((key, Value::Str(value)));
        rest = rest.trim_start();
    }
    out
}

/// Writes a pre-formatted logfmt line (l2met keys such as `sample#x=1` are not tracing field
/// names) at `level`, with the same timestamp rule and format as every other line. Its
/// `level=` key, if any, is the line's own.
pub fn raw_line(level: tracing::Level, line: &str) {
    let Some(state) = STATE.get() else {
        write_out(&format!("{line}\n"));
        return;
    };
    if level > state.level {
        return;
    }
    let out = match state.format {
        Format::Logfmt if state.timestamps => {
            let now = timestamp();
            format!("ts={}.{:03} {line}\n", now.as_secs(), now.subsec_millis())
        }
        Format::Logfmt => format!("{line}\n"),
        Format::Json => {
            let mut fields = parse_logfmt(line);
            let lvl = match fields.iter().position(|(k, _)| *k == "level") {
                Some(i) => fields.remove(i).1.text(),
                None => level.as_str().to_ascii_lowercase(),
            };
            render(Format::Json, state.timestamps, &lvl, &fields)
        }
    };
    write_out(&out);
}

/// Installs the global subscriber: logfmt on stderr. Safe to call more than once (later calls
/// do nothing).
pub fn init(level: tracing::Level, timestamps: bool) {
    init_with(Options::stderr(level, timestamps));
}

/// [`init`] with every choice: format, sink and tap.
pub fn init_with(options: Options) {
    let level = options.level;
    let max = if options.tap.is_some() { level.max(tracing::Level::INFO) } else { level };
    let _ = STATE.set(State {
        level,
        timestamps: options.timestamps,
        format: options.format,
        sink: options.sink,
        tap: options.tap,
    });
    let _ = tracing_subscriber::fmt()
        .with_max_level(max)
        .with_writer(|| SinkWriter)
        .event_format(Formatter)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_when_needed() {
        let mut s = String::new();
        push_value(&mut s, "plain");
        push_value(&mut s, " ");
        push_value(&mut s, "a \"b\"\nc");
        assert_eq!(s, "plain\" \"\"a \\\"b\\\"\\nc\"");
    }

    fn sample() -> Vec<(&'static str, Value)> {
        vec![
            ("event", Value::Str("slow_query".into())),
            ("statement", Value::Str("SELECT \"a\"\n$1".into())),
            ("duration_ms", Value::Float(512.25)),
            ("rows", Value::UInt(3)),
            ("pinned", Value::Bool(false)),
        ]
    }

    #[test]
    fn logfmt_and_json_carry_the_same_fields() {
        let l = render(Format::Logfmt, false, "warn", &sample());
        assert_eq!(
            l,
            "level=warn event=slow_query statement=\"SELECT \\\"a\\\"\\n$1\" duration_ms=512.250 rows=3 pinned=false\n"
        );
        let j = render(Format::Json, false, "warn", &sample());
        assert_eq!(
            j,
            "{\"level\":\"warn\",\"event\":\"slow_query\",\"statement\":\"SELECT \\\"a\\\"\\n$1\",\"duration_ms\":512.250,\"rows\":3,\"pinned\":false}\n"
        );
        assert!(render(Format::Json, true, "info", &[]).starts_with("{\"ts\":"));
    }

    #[test]
    fn l2met_lines_become_json_objects() {
        let f =
            parse_logfmt("level=info event=pool_stats database=\"my db\" sample#pgsidecar.pool.max_size=9");
        let j = render(Format::Json, false, "info", &f[1..]);
        assert_eq!(
            j,
            "{\"level\":\"info\",\"event\":\"pool_stats\",\"database\":\"my db\",\"sample#pgsidecar.pool.max_size\":\"9\"}\n"
        );
    }
}
