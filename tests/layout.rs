//! The source tree's layering, as src/lib.rs describes it: only the entry points import
//! `proxy`, a server connection knows no client, no two files import each other (directly or
//! round a circle), and no file grows past one idea's size.
//!
//! Imports are read from the text: every `crate::a::b` or `super::a` path outside comments and
//! `#[cfg(test)] mod tests` blocks, resolved to the file of the longest module prefix.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Most lines a file under src/ may have.
const MAX_LINES: usize = 800;

struct Tree {
    /// Module path (`["client", "session"]`) to file.
    modules: BTreeMap<Vec<String>, PathBuf>,
    /// File to the files it imports.
    imports: BTreeMap<PathBuf, BTreeSet<PathBuf>>,
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The code of `text` without comments and without a trailing `#[cfg(test)] mod tests` block.
fn code_lines(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines.peek().is_some_and(|n| n.trim_start().starts_with("mod tests {"))
        {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push(line.split(" //").next().unwrap_or(line));
    }
    out
}

/// Paths such as `crate::a::b` and `super::super::c` in one line: (how many `super`s, or
/// `None` for `crate`, and the names after).
fn paths_in(line: &str) -> Vec<(Option<usize>, Vec<String>)> {
    let mut out = Vec::new();
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < line.len() {
        let rest = &line[i..];
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let (base, mut j) = if boundary && rest.starts_with("crate::") {
            (None, i + "crate::".len())
        } else if boundary && rest.starts_with("super::") {
            let mut n = 0;
            let mut j = i;
            while line[j..].starts_with("super::") {
                n += 1;
                j += "super::".len();
            }
            (Some(n), j)
        } else {
            i += rest.chars().next().map_or(1, char::len_utf8);
            continue;
        };
        let mut names = Vec::new();
        loop {
            let start = j;
            while j < line.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
                j += 1;
            }
            if start == j {
                break;
            }
            names.push(line[start..j].to_owned());
            if line[j..].starts_with("::") {
                j += 2;
            } else {
                break;
            }
        }
        out.push((base, names));
        i = j.max(i + 1);
    }
    out
}

fn read_tree() -> Tree {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> =
        files.iter().map(|f| (module_of(&src, f), f.clone())).collect();
    let resolve = |full: &[String]| -> Option<&PathBuf> {
        (1..=full.len()).rev().find_map(|n| modules.get(&full[..n]))
    };
    let mut imports = BTreeMap::new();
    for file in &files {
        let me = module_of(&src, file);
        let text = std::fs::read_to_string(file).unwrap();
        let mut deps = BTreeSet::new();
        for line in code_lines(&text) {
            for (base, names) in paths_in(line) {
                let full: Vec<String> = match base {
                    None => names,
                    Some(ups) => me[..me.len().saturating_sub(ups)].iter().cloned().chain(names).collect(),
                };
                if let Some(target) = resolve(&full) {
                    if target != file {
                        deps.insert(target.clone());
                    }
                }
            }
        }
        imports.insert(file.clone(), deps);
    }
    Tree { modules, imports }
}

fn short(p: &Path) -> String {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    p.strip_prefix(&src).unwrap_or(p).display().to_string()
}

#[test]
fn only_the_entry_points_import_proxy() {
    let tree = read_tree();
    let proxy = &tree.modules[&vec!["proxy".to_owned()]];
    let allowed = ["lib.rs", "cli.rs", "supervise.rs", "demo/mod.rs", "proxy.rs"];
    let importers: Vec<String> =
        tree.imports.iter().filter(|(_, deps)| deps.contains(proxy)).map(|(f, _)| short(f)).collect();
    assert!(!importers.is_empty(), "the reader found no importer of proxy at all: it is broken");
    let wrong: Vec<&String> = importers.iter().filter(|f| !allowed.contains(&f.as_str())).collect();
    assert!(wrong.is_empty(), "only the entry points may import proxy; also: {wrong:?}");
}

#[test]
fn the_server_side_knows_no_client() {
    let tree = read_tree();
    let forbidden = ["client", "admin", "proxy", "shared"];
    let mut wrong = Vec::new();
    for (file, deps) in &tree.imports {
        let s = short(file);
        if !(s.starts_with("server/") || s == "server.rs" || s.starts_with("params/") || s == "upstream.rs") {
            continue;
        }
        for d in deps {
            let d = short(d);
            if forbidden.iter().any(|f| d.starts_with(&format!("{f}/")) || d == format!("{f}.rs")) {
                wrong.push(format!("{s} -> {d}"));
            }
        }
    }
    assert!(wrong.is_empty(), "server, params and upstream must not import the client side: {wrong:?}");
}

#[test]
fn no_file_imports_itself_round_a_circle() {
    let tree = read_tree();
    // Depth-first search for a back edge; reports the first circle found.
    fn visit<'a>(
        f: &'a PathBuf,
        tree: &'a Tree,
        state: &mut BTreeMap<&'a PathBuf, u8>,
        stack: &mut Vec<&'a PathBuf>,
    ) -> Option<Vec<String>> {
        state.insert(f, 1);
        stack.push(f);
        for d in &tree.imports[f] {
            match state.get(d) {
                Some(1) => {
                    let at = stack.iter().position(|x| *x == d).unwrap();
                    return Some(stack[at..].iter().map(|p| short(p)).chain([short(d)]).collect());
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(d, tree, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(f, 2);
        None
    }
    let mut state = BTreeMap::new();
    for f in tree.imports.keys() {
        if !state.contains_key(f) {
            if let Some(circle) = visit(f, &tree, &mut state, &mut Vec::new()) {
                panic!("files import each other in a circle: {}", circle.join(" -> "));
            }
        }
    }
}

#[test]
fn files_stay_one_idea_in_size() {
    let tree = read_tree();
    let big: Vec<(String, usize)> = tree
        .imports
        .keys()
        .map(|f| (short(f), std::fs::read_to_string(f).unwrap().lines().count()))
        .filter(|(_, n)| *n > MAX_LINES)
        .collect();
    assert!(big.is_empty(), "files above {MAX_LINES} lines (split them by idea): {big:?}");
}

#[test]
fn the_reader_sees_imports() {
    // The checks above pass vacuously if the reader sees nothing: it must find these.
    let tree = read_tree();
    let of = |m: &[&str]| tree.modules[&m.iter().map(|s| s.to_string()).collect::<Vec<_>>()].clone();
    let session = &tree.imports[&of(&["client", "session"])];
    assert!(session.contains(&of(&["shared"])), "{session:?}");
    assert!(session.contains(&of(&["client", "handshake"])), "{session:?}");
    assert_eq!(paths_in("use super::super::x::{y}; crate::a::b(c)").len(), 2);
}
