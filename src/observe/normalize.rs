//! SQL text for logs: literals replaced by `$n` placeholders, whitespace collapsed,
//! comments dropped, length capped. Values never reach a log line through this.

/// Normalizes `sql`, keeping at most `max` bytes of output (cut on a character boundary, with
/// `...` appended when cut).
pub fn normalize(sql: &str, max: usize) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len().min(max) + 8);
    // Placeholders for literals are numbered after the statement's own parameters, so that
    // `select $1 || 'x'` does not read (and fingerprint) as `select $1 || $1`.
    let mut n = highest_parameter(b);
    let mut i = 0;
    let mut pending_space = false;
    let mut placeholder = |out: &mut String| {
        n += 1;
        out.push('$');
        out.push_str(&n.to_string());
    };
    while i < b.len() && out.len() < max {
        let c = b[i];
        if c.is_ascii_whitespace() {
            pending_space = !out.is_empty();
            i += 1;
            continue;
        }
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            pending_space = !out.is_empty();
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i = sql[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        let prev_ident =
            out.as_bytes().last().is_some_and(|p| p.is_ascii_alphanumeric() || *p == b'_' || *p == b'$');
        // String literals: '...', E'...', B'...', X'...', N'...' with '' escapes (and \' in E'').
        let prefixed = matches!(c, b'e' | b'E' | b'b' | b'B' | b'x' | b'X' | b'n' | b'N')
            && b.get(i + 1) == Some(&b'\'')
            && !prev_ident;
        if c == b'\'' || prefixed {
            let escapes = matches!(c, b'e' | b'E');
            i += if prefixed { 2 } else { 1 };
            while i < b.len() {
                if escapes && b[i] == b'\\' {
                    i += 2;
                    continue;
                }
                if b[i] == b'\'' {
                    if b.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i += 1;
            placeholder(&mut out);
            continue;
        }
        // Dollar-quoted strings: $tag$ ... $tag$ (a $1 parameter is not one).
        if c == b'$' && !prev_ident {
            let tag_end =
                b[i + 1..].iter().position(|&x| !(x.is_ascii_alphanumeric() || x == b'_')).map(|p| i + 1 + p);
            if let Some(e) =
                tag_end.filter(|&e| b[e] == b'$' && !b[i + 1..e].first().is_some_and(u8::is_ascii_digit))
            {
                let tag = &sql[i..=e];
                let body_start = e + 1;
                i = sql[body_start..].find(tag).map_or(b.len(), |p| body_start + p + tag.len());
                placeholder(&mut out);
                continue;
            }
        }
        // Numbers not part of an identifier.
        if c.is_ascii_digit() && !prev_ident
            || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit) && !prev_ident)
        {
            while i < b.len()
                && (b[i].is_ascii_alphanumeric()
                    || b[i] == b'.'
                    || ((b[i] == b'+' || b[i] == b'-') && matches!(b[i - 1], b'e' | b'E')))
            {
                i += 1;
            }
            placeholder(&mut out);
            continue;
        }
        let ch_len = sql[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&sql[i..i + ch_len]);
        i += ch_len;
    }
    if i < b.len() {
        let mut cut = max.min(out.len());
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

/// The highest `$n` parameter number in the text (0 when there is none).
fn highest_parameter(b: &[u8]) -> u32 {
    let mut highest = 0;
    let mut i = 0;
    while i < b.len() {
        let ident_before =
            i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b'$');
        if b[i] == b'$' && !ident_before {
            let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if digits > 0 {
                let v = std::str::from_utf8(&b[i + 1..i + 1 + digits]).ok().and_then(|d| d.parse().ok());
                highest = highest.max(v.unwrap_or(0));
                i += 1 + digits;
                continue;
            }
        }
        i += 1;
    }
    highest
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            normalize("SELECT * FROM t WHERE a = 'x''y' AND b = 42 AND c = 1.5e3", 200),
            "SELECT * FROM t WHERE a = $1 AND b = $2 AND c = $3"
        );
        assert_eq!(normalize("select E'a\\'b', $$body$$, $tag$x$tag$, x'ff'", 200), "select $1, $2, $3, $4");
        assert_eq!(normalize("select $1, col2, t1.c3 from t1", 200), "select $1, col2, t1.c3 from t1");
    }

    #[test]
    fn literal_placeholders_follow_the_parameters() {
        assert_eq!(normalize("select $1 || 'x'", 200), "select $1 || $2");
        assert_eq!(normalize("select pg_sleep(0.2), $2::text, $1", 200), "select pg_sleep($3), $2::text, $1");
        assert_eq!(normalize("insert into t values ($1, $1)", 200), "insert into t values ($1, $1)");
    }

    #[test]
    fn whitespace_and_comments() {
        assert_eq!(normalize("  select\n\t1 -- secret 'x'\n /* 'y' */ from   t ", 200), "select $1 from t");
    }

    #[test]
    fn truncation_on_char_boundary() {
        let s = normalize("select 'aaaa', ééééééé from t", 14);
        assert!(s.ends_with("...") && s.len() <= 17, "{s}");
        assert!(!s.contains("aaaa"));
    }

    #[test]
    fn unterminated_literal_is_still_hidden() {
        assert_eq!(normalize("select 'secret", 200), "select $1");
    }
}
