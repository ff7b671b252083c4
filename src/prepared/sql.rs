//! The SQL commands about prepared statements that the proxy reads in a client's simple
//! query: `DEALLOCATE` and `DISCARD ALL` (answered or followed by the proxy), and the name an
//! `EXECUTE` runs.
//!
//! May import: nothing of the crate.

/// SQL statements about prepared statements that the proxy handles itself for a client.
#[derive(Debug, PartialEq, Eq)]
pub enum SqlCommand<'a> {
    Deallocate(&'a str),
    DeallocateAll,
    DiscardAll,
}

/// Recognises `DEALLOCATE [PREPARE] name`, `DEALLOCATE [PREPARE] ALL` and `DISCARD ALL` when
/// they are the whole query (an optional trailing semicolon allowed).
pub fn sql_command(query: &[u8]) -> Option<SqlCommand<'_>> {
    // Runs on every simple query: both commands start with a 'd', so a text whose first
    // byte after ASCII white space (vertical tab included, as `trim` has it) is another ASCII
    // byte is refused before it is validated and split. Non-ASCII goes the long way.
    let first = query.iter().find(|c| !(c.is_ascii_whitespace() || **c == 0x0b));
    if first.is_none_or(|&c| c < 0x80 && c | 0x20 != b'd') {
        return None;
    }
    let text = std::str::from_utf8(query.strip_suffix(b"\0").unwrap_or(query)).ok()?;
    let text = text.trim().trim_end_matches(';').trim_end();
    let mut words = text.split_ascii_whitespace();
    let first = words.next()?;
    if first.eq_ignore_ascii_case("discard") {
        let all = words.next()?;
        return (all.eq_ignore_ascii_case("all") && words.next().is_none()).then_some(SqlCommand::DiscardAll);
    }
    if !first.eq_ignore_ascii_case("deallocate") {
        return None;
    }
    let mut name = words.next()?;
    if name.eq_ignore_ascii_case("prepare") {
        name = words.next()?;
    }
    if words.next().is_some() {
        return None;
    }
    if name.eq_ignore_ascii_case("all") {
        return Some(SqlCommand::DeallocateAll);
    }
    // A quoted identifier keeps its case; an unquoted one is folded to lower case by Postgres,
    // and statement names from drivers are lower case already.
    let name = name.strip_prefix('"').and_then(|n| n.strip_suffix('"')).unwrap_or(name);
    Some(SqlCommand::Deallocate(name))
}

/// Where the statement name is in a query that starts with `EXECUTE name`: its byte range in
/// `query` and the name as PostgreSQL reads it (an unquoted name folded to lower case).
pub fn sql_execute(query: &[u8]) -> Option<(std::ops::Range<usize>, Vec<u8>)> {
    let start = query.iter().position(|c| !(c.is_ascii_whitespace() || *c == 0x0b))?;
    let keyword = query.get(start..start + 7)?;
    if !keyword.eq_ignore_ascii_case(b"execute") {
        return None;
    }
    let mut at = start + 7;
    let gap = query[at..].iter().take_while(|c| c.is_ascii_whitespace() || **c == 0x0b).count();
    if gap == 0 {
        return None;
    }
    at += gap;
    if query.get(at) == Some(&b'"') {
        // A quoted name: "" stands for one quote.
        let mut name = Vec::new();
        let mut i = at + 1;
        loop {
            match (query.get(i)?, query.get(i + 1)) {
                (b'"', Some(b'"')) => {
                    name.push(b'"');
                    i += 2;
                }
                // PostgreSQL refuses a zero-length name.
                (b'"', _) => return (!name.is_empty()).then_some((at..i + 1, name)),
                (&c, _) => {
                    name.push(c);
                    i += 1;
                }
            }
        }
    }
    let len = query[at..]
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$') || **c >= 0x80)
        .count();
    if len == 0 || query[at].is_ascii_digit() || query[at] == b'$' {
        return None;
    }
    Some((at..at + len, query[at..at + len].to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execute_names_are_found_as_postgres_reads_them() {
        let name = |q: &str| sql_execute(q.as_bytes()).map(|(r, n)| (r, String::from_utf8(n).unwrap()));
        assert_eq!(name("EXECUTE s1(1, 2)"), Some((8..10, "s1".into())));
        assert_eq!(name("  execute\tS_1 ;"), Some((10..13, "s_1".into())));
        assert_eq!(name("execute \"My \"\"x\"\"\" (1)"), Some((8..18, "My \"x\"".into())));
        assert_eq!(name("executes s1"), None);
        assert_eq!(name("execute"), None);
        assert_eq!(name("execute 1"), None);
        assert_eq!(name("execute \"open"), None);
        assert_eq!(name("execute \"\"(1)"), None);
        assert_eq!(name("select 1"), None);
    }

    #[test]
    fn sql_commands() {
        assert_eq!(sql_command(b"DEALLOCATE s1\0"), Some(SqlCommand::Deallocate("s1")));
        assert_eq!(sql_command(b"deallocate prepare \"S1\";"), Some(SqlCommand::Deallocate("S1")));
        assert_eq!(sql_command(b"DEALLOCATE ALL"), Some(SqlCommand::DeallocateAll));
        assert_eq!(sql_command(b" discard all ; "), Some(SqlCommand::DiscardAll));
        assert_eq!(sql_command(b"discard plans"), None);
        assert_eq!(sql_command(b"select 1"), None);
        assert_eq!(sql_command(b"deallocate a; select 1"), None);
        assert_eq!(sql_command(b"\x0b\tDEALLOCATE s2"), Some(SqlCommand::Deallocate("s2")));
        assert_eq!(sql_command("\u{3000}discard all".as_bytes()), Some(SqlCommand::DiscardAll));
    }
}
