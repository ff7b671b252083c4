//! The documentation checked against the code, so that it cannot drift (issue 23):
//!
//! - the settings table in docs/configuration.md lists every entry of
//!   `config::settings::SETTINGS` with its exact variable, flag, aliases and default, in the
//!   code's order (that of `--help`), and nothing else; on a mismatch the test prints the table
//!   to paste;
//! - the README's short settings table and every `PGSIDECAR_*` name in README.md and docs/
//!   name settings that exist, with their real defaults;
//! - every relative link in the repository's Markdown files leads to a file that exists, and
//!   to a heading that exists when it names one;
//! - every repository path README.md and docs/ name in backticks exists.
//!
//! No PostgreSQL needed.

use pgsidecar::config::settings::{Setting, SETTINGS};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const CONFIGURATION: &str = "docs/configuration.md";
const TABLE_HEADER: &str = "| Variable | Flag | Aliases | Default | Meaning |";

/// `PGSIDECAR_*` variables the docs may name that are not settings: the test harness's.
const TEST_VARIABLES: &[&str] = &[
    "PGSIDECAR_TEST_CHOP",
    "PGSIDECAR_TEST_POOL_MODE",
    "PGSIDECAR_TEST_TRANSPORT",
    "PGSIDECAR_INTEGRITY_QUERIES",
];

/// `PGSIDECAR_*` variables the buildpacks read at build time (buildpack/lib/install.sh): not
/// settings of the proxy.
const BUILDPACK_VARIABLES: &[&str] = &[
    "PGSIDECAR_VERSION",
    "PGSIDECAR_BINARY_URL",
    "PGSIDECAR_BINARY_SHA256",
    "PGSIDECAR_DEFAULT_URL",
    "PGSIDECAR_LOG_STYLE",
];

/// Paths the docs name that are not in this repository: heroku-buildpack-pgbouncer's script,
/// and the binary's place inside a release tarball.
const NOT_OURS: &[&str] = &["bin/start-pgbouncer", "bin/pgsidecar"];

/// Pages linked before they exist (a page written on another branch); none now. A page here
/// that exists is checked like any other.
const PENDING_PAGES: &[&str] = &[];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// The lines of a Markdown text outside fenced code blocks, with their numbers.
fn prose_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut fenced = false;
    text.lines().enumerate().map(|(n, l)| (n + 1, l)).filter(move |(_, l)| {
        if l.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// The cells of a table row, split at `|` that is not escaped as `\|`.
fn cells(row: &str) -> Vec<String> {
    let inner = row.trim().trim_start_matches('|').trim_end_matches('|');
    let mut out = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => out.last_mut().unwrap().push(chars.next().unwrap()),
            '|' => out.push(String::new()),
            _ => out.last_mut().unwrap().push(c),
        }
    }
    out.iter().map(|c| c.trim().to_owned()).collect()
}

fn code(s: &str) -> String {
    format!("`{s}`")
}

/// How the table writes a default: in backticks, or `(none)` when it is empty.
fn default_cell(s: &Setting) -> String {
    if s.default.is_empty() {
        "(none)".to_owned()
    } else {
        code(s.default)
    }
}

fn aliases_cell(s: &Setting) -> String {
    if s.aliases.is_empty() {
        "—".to_owned()
    } else {
        s.aliases.iter().map(|a| code(a)).collect::<Vec<_>>().join(", ")
    }
}

/// The four cells the code decides, as the table must write them.
fn expected_cells(s: &Setting) -> [String; 4] {
    [code(s.env), code(&format!("--{}", s.flag)), aliases_cell(s), default_cell(s)]
}

/// The rows of the settings table: its cells, by line number.
fn settings_table(page: &str) -> Vec<(usize, Vec<String>)> {
    let mut lines = page.lines().enumerate().skip_while(|(_, l)| l.trim() != TABLE_HEADER);
    assert!(lines.next().is_some(), "{CONFIGURATION} has no table headed {TABLE_HEADER:?}");
    lines.next(); // |---|...
    lines.take_while(|(_, l)| l.starts_with('|')).map(|(n, l)| (n + 1, cells(l))).collect()
}

/// The table as it should be: the code's settings in the code's order, each with the meaning
/// the page gives it (or its `--help` text when the page has none).
fn table_to_paste(rows: &[(usize, Vec<String>)]) -> String {
    let meanings: BTreeMap<&str, &str> =
        rows.iter().filter(|(_, c)| c.len() == 5).map(|(_, c)| (c[0].as_str(), c[4].as_str())).collect();
    let mut out = format!("{TABLE_HEADER}\n|---|---|---|---|---|\n");
    for s in SETTINGS {
        let [env, flag, aliases, default] = expected_cells(s);
        let meaning = meanings.get(env.as_str()).copied().unwrap_or(s.help);
        out.push_str(&format!("| {env} | {flag} | {aliases} | {default} | {meaning} |\n"));
    }
    out
}

#[test]
fn settings_table_matches_the_code() {
    let page = read(CONFIGURATION);
    let rows = settings_table(&page);
    let mut problems = Vec::new();
    for (n, cells) in &rows {
        if cells.len() != 5 || cells[4].is_empty() {
            problems.push(format!("line {n}: a row needs five cells, the meaning not empty"));
        }
    }
    let documented: Vec<&str> = rows.iter().map(|(_, c)| c[0].as_str()).collect();
    for s in SETTINGS {
        let expected = expected_cells(s);
        match rows.iter().find(|(_, c)| c[0] == expected[0]) {
            None => problems.push(format!("{} is missing", s.env)),
            Some((n, cells)) => {
                for (what, (want, got)) in
                    ["flag", "aliases", "default"].iter().zip(expected[1..].iter().zip(&cells[1..]))
                {
                    if want != got {
                        problems.push(format!("line {n}: {} {what} is {got}, the code says {want}", s.env));
                    }
                }
            }
        }
    }
    for (n, cells) in &rows {
        if !SETTINGS.iter().any(|s| code(s.env) == cells[0]) {
            problems.push(format!("line {n}: {} is not a setting in src/config/settings.rs", cells[0]));
        }
    }
    let in_code: Vec<String> = SETTINGS.iter().map(|s| code(s.env)).collect();
    if problems.is_empty() && documented != in_code {
        problems.push("the rows are not in the order of SETTINGS (the order of --help)".to_owned());
    }
    assert!(
        problems.is_empty(),
        "the settings table in {CONFIGURATION} does not match SETTINGS in src/config/settings.rs:\n  {}\n\n\
         To fix it, replace the table under \"## Every setting\" with this one (meanings are kept from \
         the page; a new setting gets its --help text, which you may reword), and check the README's \
         short table:\n\n{}",
        problems.join("\n  "),
        table_to_paste(&rows),
    );
}

/// The README's short table names settings that exist, with their real defaults.
#[test]
fn readme_settings_match_the_code() {
    let readme = read("README.md");
    let mut checked = 0;
    for (_, row) in prose_lines(&readme).filter(|(_, l)| l.starts_with("| `PGSIDECAR_")) {
        let cells = cells(row);
        let s = SETTINGS
            .iter()
            .find(|s| code(s.env) == cells[0])
            .unwrap_or_else(|| panic!("README.md names {} in a table; no such setting", cells[0]));
        let want = default_cell(s);
        assert!(
            cells[1] == want,
            "README.md's settings table gives {} the default {}, the code says {want}: fix the README",
            s.env,
            cells[1]
        );
        checked += 1;
    }
    assert!(checked >= 5, "README.md should show the settings changed most ({checked} found)");
}

/// Every `PGSIDECAR_*` name in README.md and docs/ is a setting (or a test harness variable):
/// a renamed setting cannot live on in prose.
#[test]
fn docs_name_only_settings_that_exist() {
    let mut unknown = Vec::new();
    for page in markdown_files().iter().filter(|p| p.starts_with("docs/") || p.as_str() == "README.md") {
        let text = read(page);
        for (at, _) in text.match_indices("PGSIDECAR_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if name == "PGSIDECAR_" {
                continue; // `PGSIDECAR_*`, the family
            }
            let known = SETTINGS.iter().any(|s| s.env == name)
                || TEST_VARIABLES.contains(&name.as_str())
                || BUILDPACK_VARIABLES.contains(&name.as_str());
            if !known {
                unknown.push(format!("{page}: {name}"));
            }
        }
    }
    unknown.dedup();
    assert!(unknown.is_empty(), "not settings (src/config/settings.rs):\n  {}", unknown.join("\n  "));
}

/// Markdown files of the repository, relative to its root, build and dependency trees left out.
fn markdown_files() -> Vec<String> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            let skip = name.starts_with('.') || matches!(name.as_str(), "target" | "node_modules" | "out");
            if e.file_type().unwrap().is_dir() && !skip {
                walk(&e.path(), &path, out);
            } else if name.ends_with(".md") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), "", &mut out);
    out
}

/// GitHub's anchor for a heading: lower case, links reduced to their text, everything but
/// letters, digits, `_`, `-` and spaces dropped, spaces turned into `-`.
fn slug(heading: &str) -> String {
    let mut text = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        let Some(mid) = rest[open..].find("](").map(|m| open + m) else { break };
        let Some(close) = rest[mid..].find(')').map(|c| mid + c) else { break };
        text.push_str(&rest[..open]);
        text.push_str(&rest[open + 1..mid]);
        rest = &rest[close + 1..];
    }
    text.push_str(rest);
    text.to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a page's headings, with GitHub's `-1`, `-2` for repeats.
fn anchors(page: &str) -> Vec<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for (_, line) in prose_lines(page) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(line[hashes..].trim());
        let n = seen.entry(base.clone()).or_insert(0);
        out.push(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// The targets of the inline links `[text](target)` on a line, inline code left out.
fn link_targets(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut in_code = false;
    let mut i = 0;
    let b = line.as_bytes();
    while i < b.len() {
        if b[i] == b'`' {
            in_code = !in_code;
        } else if !in_code && b[i..].starts_with(b"](") {
            let start = i + 2;
            if let Some(len) = line[start..].find(')') {
                out.push(&line[start..start + len]);
                i = start + len;
            }
        }
        i += 1;
    }
    out
}

#[test]
fn relative_links_resolve() {
    let mut broken = Vec::new();
    let mut count = 0;
    for page in markdown_files() {
        let text = read(&page);
        let dir = Path::new(&page).parent().unwrap_or(Path::new(""));
        for (n, line) in prose_lines(&text) {
            for target in link_targets(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                count += 1;
                let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
                let rel = if file.is_empty() { PathBuf::from(&page) } else { normalize(&dir.join(file)) };
                let rel_str = rel.to_string_lossy().into_owned();
                let where_ = format!("{page}:{n}: ({target})");
                if !root().join(&rel).exists() {
                    if !PENDING_PAGES.contains(&rel_str.as_str()) {
                        broken.push(format!("{where_}: no file {rel_str}"));
                    }
                    continue;
                }
                if !anchor.is_empty()
                    && rel_str.ends_with(".md")
                    && !anchors(&read(&rel_str)).iter().any(|a| a == anchor)
                {
                    broken.push(format!("{where_}: {rel_str} has no heading #{anchor}"));
                }
            }
        }
    }
    assert!(count > 50, "only {count} relative links found: is the link scanner broken?");
    assert!(broken.is_empty(), "broken links:\n  {}", broken.join("\n  "));
}

/// Every repository path that README.md and docs/ name in backticks (`src/...`, `tests/...`,
/// ...) exists: a file moved or renamed in the code cannot leave the docs pointing at nothing.
/// Placeholders (`fuzz/artifacts/<target>/`) and benchmark output are left out.
#[test]
fn named_paths_exist() {
    const PREFIXES: &[&str] = &["src/", "tests/", "bench/", "fuzz/", "docker/", "bin/", "examples/", ".ci/"];
    let mut missing = Vec::new();
    let mut count = 0;
    for page in markdown_files().iter().filter(|p| p.starts_with("docs/") || p.as_str() == "README.md") {
        for (n, line) in prose_lines(&read(page)) {
            for path in line.split('`').skip(1).step_by(2) {
                let named = PREFIXES.iter().any(|p| path.starts_with(p))
                    && !path.contains(['<', ' ', '*'])
                    && !path.starts_with("bench/out/")
                    && !NOT_OURS.contains(&path);
                if named {
                    count += 1;
                    if !root().join(path).exists() {
                        missing.push(format!("{page}:{n}: {path}"));
                    }
                }
            }
        }
    }
    assert!(count > 20, "only {count} paths found: is the scanner broken?");
    assert!(missing.is_empty(), "the docs name paths that do not exist:\n  {}", missing.join("\n  "));
}

/// `a/b/../c` as `a/c`, for paths inside the repository.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn slugs_are_githubs() {
    assert_eq!(
        slug("Checking a configuration: `pgsidecar check`"),
        "checking-a-configuration-pgsidecar-check"
    );
    assert_eq!(slug("SQL `EXECUTE`, `DEALLOCATE` and `DISCARD`"), "sql-execute-deallocate-and-discard");
    assert_eq!(slug("Why not bb8?"), "why-not-bb8");
    assert_eq!(slug("See [the budget](budget.md) now"), "see-the-budget-now");
    assert_eq!(anchors("# A\n## A\n```\n# not a heading\n```\n### A"), ["a", "a-1", "a-2"]);
}
