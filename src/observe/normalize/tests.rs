//! Tests of SQL normalization, fingerprints and remembered texts.

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
    assert_eq!(super::normalize_counted(b"select $2, 'a', 3", 200), ("select $2, $3, $4".to_owned(), 2));
    // Placeholders past nine, and a parameter after the first literal.
    assert_eq!(normalize("select 'a', 'b', $9, 'c'", 200), "select $10, $11, $9, $12");
    assert_eq!(normalize("select x$1, 'a'", 200), "select x$1, $1");
    // A parameter after a literal (the pass runs again), counted once.
    assert_eq!(super::normalize_counted(b"select 'a', $3, 'b'", 200), ("select $4, $3, $5".to_owned(), 2));
    // `$5` inside a literal, a comment or a dollar-quoted string is no parameter.
    assert_eq!(normalize("select '$5', /* $7 */ 'x', $$ $3 $$", 200), "select $1, $2, $3");
    // A parameter past the cut numbers the placeholders before it, in short texts as in long.
    let sql = format!("select 'a', {}, $3", "x".repeat(300));
    let short = normalize(&sql, 40);
    assert!(short.starts_with("select $4, xxx") && short.ends_with("..."), "{short}");
    assert!(normalize(&sql, 2000).starts_with("select $4, xxx"));
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
fn bytes_and_text_agree() {
    let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 123;";
    assert_eq!(
        super::normalize_bytes(sql.as_bytes(), 200),
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
    );
    assert_eq!(
        normalize("select $2, x$1, a12 from t where b=$$ $$", 200),
        "select $2, x$1, a12 from t where b=$3"
    );
    assert_eq!(super::normalize_bytes(b"select \xff 'v'", 200), "select \u{fffd} $1");
    let many: String = (0..12).map(|k| format!("{k},")).collect();
    assert_eq!(normalize(&format!("select {many}"), 200), "select $1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,");
}

#[test]
fn words_starting_like_literal_prefixes() {
    assert_eq!(
        normalize("select name, extra, b2 from nodes where x = 'v' and n1 = N'w' and bx = B'01'", 200),
        "select name, extra, b2 from nodes where x = $1 and n1 = $2 and bx = $3"
    );
    assert_eq!(
        normalize("select e.x from events e where e.n=1-2/3", 200),
        "select e.x from events e where e.n=$1-$2/$3"
    );
}

/// The fingerprint's own pass (identifiers hashed as they are scanned) agrees with the
/// text on statements built from pieces of SQL.
#[test]
fn fingerprint_agrees_with_the_text_on_many_statements() {
    const PIECES: [&str; 21] = [
        "select", " ", "e", "x'1f'", "'it''s'", "$1", "$$q$$", "12.5e3", "--c\n", "/*c*/", "name", "_id",
        ",", "é", "\t", "E'\\''", "(", ".", "-", "n", "$12",
    ];
    let pieces: Vec<&[u8]> = PIECES.iter().map(|p| p.as_bytes()).collect();
    for sql in crate::testing::texts_from_pieces(&pieces, 5_000, 12, 0x9e37_79b9_7f4a_7c15) {
        let sql = String::from_utf8(sql).expect("pieces are UTF-8");
        let text = super::normalize_bytes(sql.as_bytes(), super::FINGERPRINT_MAX);
        let hash =
            text.bytes().fold(super::FNV_OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(super::FNV_PRIME));
        assert_eq!(super::fingerprint(sql.as_bytes()), hash, "{sql:?} -> {text:?}");
    }
}

/// The fingerprint of `b` as the relay finds it: recalled, or computed and remembered.
fn remembered(b: &[u8]) -> (u64, bool) {
    if let Some(r) = super::recall(b) {
        return (r.fingerprint, true);
    }
    let fingerprint = super::fingerprint(b);
    super::remember(b, super::Recalled { fingerprint, facts: 0 });
    (fingerprint, false)
}

/// The recalled fingerprint of a text is its fingerprint, whichever text was remembered
/// before it, and texts that differ only in their numbers' digits find the remembered one.
#[test]
fn remembered_fingerprints_are_fingerprints() {
    const PIECES: [&str; 24] = [
        "select", " ", "12", "7", "'a'", "x", "$1", "e", ".", "=", "(", "--c\n", "/*1*/", "E'\\1'",
        "$$ 3 $$", "$q1$", "-", "+", "\n", "é", ",", "0x1f", "$", "*",
    ];
    let pieces: Vec<&[u8]> = PIECES.iter().map(|p| p.as_bytes()).collect();
    let mut hits = 0;
    for (k, sql) in
        crate::testing::texts_from_pieces(&pieces, 20_000, 10, 0x2545_f491_4f6c_dd1d).into_iter().enumerate()
    {
        let other = crate::testing::other_digits(&sql, k);
        for text in [&sql, &other] {
            let (fp, hit) = remembered(text);
            assert_eq!(fp, super::fingerprint(text), "{:?}", String::from_utf8_lossy(text));
            hits += usize::from(hit);
        }
    }
    assert!(hits > 5_000, "{hits}");
}

/// A text whose normalized form is cut at FINGERPRINT_MAX, with a parameter past the cut,
/// is recalled from one with other digits, under the fingerprint of its own.
#[test]
fn recalled_past_the_cut() {
    let first = format!("select {}'x', $3", "1,".repeat(500));
    let second = format!("select 12,{}'x', $3", "7,".repeat(499));
    assert!(first.len() <= super::REMEMBERED_MAX_TEXT && second.len() <= super::REMEMBERED_MAX_TEXT);
    assert!(super::normalize_counted(first.as_bytes(), super::FINGERPRINT_MAX).0.ends_with("..."));
    assert!(!remembered(first.as_bytes()).1);
    assert_eq!(remembered(second.as_bytes()), (super::fingerprint(second.as_bytes()), true));
    assert_eq!(super::fingerprint(first.as_bytes()), super::fingerprint(second.as_bytes()));
}

#[test]
fn common_prefix_finds_the_first_difference() {
    let a = [b'x'; 21];
    for k in 0..21 {
        let mut b = a;
        b[k] = b'y';
        assert_eq!(super::remembered::common_prefix(&a, &b), k);
        assert_eq!(super::remembered::common_prefix(&a[..k], &a), k);
    }
}

#[test]
fn only_numbers_may_differ() {
    use super::same_but_numbers as same;
    assert!(same(b"select * from t where id = 5;", b"select * from t where id = 12345;"));
    assert!(same(b"values (1, 2.5, 'x', 30)", b"values (17, 3.5, 'x', 4)"));
    assert!(same(b"select 1e5 -- 7\n", b"select 1e5 -- 8\n"));
    assert!(!same(b"select * from t1", b"select * from t2")); // identifiers
    assert!(!same(b"select $1", b"select $2")); // parameters
    assert!(!same(b"select 'a'12", b"select 'a'34")); // `$112` against `$134`
    assert!(!same(b"select 1.25", b"select 1.37")); // after '.': not taken as a number start
    assert!(!same(b"select 'a'", b"select 'b'"));
    assert!(!same(b"12", b"34")); // nothing before the number
    assert!(!same(b"x = 1", b"x = 1 "));
    // pgbench's statement, after the first, is found every time.
    let hits = (1..200)
        .filter(|n| {
            remembered(format!("SELECT abalance FROM pgbench_accounts WHERE aid = {n};").as_bytes()).1
        })
        .count();
    assert!(hits >= 198, "{hits}");
}

#[test]
fn long_identifier_is_cut() {
    let s = normalize(&format!("select {}", "é".repeat(100)), 21);
    assert!(s.ends_with("...") && s.len() <= 24, "{s}");
}

#[test]
fn fingerprint_is_the_hash_of_the_normalized_text() {
    for sql in ["select 1", "SELECT a FROM t WHERE b = 'x' and c = $1", "select $$x$$, 1.5e3 -- c\n", "é 'x'"]
    {
        let text = super::normalize_bytes(sql.as_bytes(), super::FINGERPRINT_MAX);
        let hash =
            text.bytes().fold(super::FNV_OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(super::FNV_PRIME));
        assert_eq!(super::fingerprint(sql.as_bytes()), hash, "{sql}");
    }
    assert_ne!(super::fingerprint(b"select $1"), super::fingerprint(b"select $1, $2"));
    assert_eq!(
        super::fingerprint(b"select 1"),
        super::fingerprint(b"SELECT  2"[..].to_ascii_lowercase().as_slice())
    );
}

#[test]
fn text_hashes_differ() {
    let a = super::text_hash(b"select abalance from pgbench_accounts where aid = $1");
    assert_eq!(a, super::text_hash(b"select abalance from pgbench_accounts where aid = $1"));
    assert_ne!(a, super::text_hash(b"select abalance from pgbench_accounts where aid = $2"));
    assert_ne!(super::text_hash(b"a"), super::text_hash(b"a\0"));
    assert_ne!(super::text_hash(b""), super::text_hash(b"\0"));
}

#[test]
fn unterminated_literal_is_still_hidden() {
    assert_eq!(normalize("select 'secret", 200), "select $1");
}

/// FNV-1a of a normalized text: what its fingerprint must be.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(super::FNV_OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(super::FNV_PRIME))
}

/// `sql` normalized at every length up to its own (and a little past), and fingerprinted:
/// `secret` is never in the text.
fn assert_hidden(sql: &str, secret: &str) {
    for max in 0..sql.len() + 8 {
        let text = super::normalize_bytes(sql.as_bytes(), max);
        assert!(!text.contains(secret), "{sql:?} at {max} -> {text:?}");
    }
    super::fingerprint(sql.as_bytes());
}

/// A text that ends inside a literal, a comment or a quoted name, cut anywhere and
/// normalized at any length, does not panic (the scan once ran past its end and sliced
/// there when the output was cut).
#[test]
fn unterminated_text_at_any_cut_does_not_panic() {
    assert_eq!(super::normalize_bytes(b"ab 'x", 3), "ab ...");
    assert_eq!(super::normalize_bytes(b"ab E'x\\", 3), "ab ...");
    for tail in [
        "'x",
        "E'x\\",
        "e'\\",
        "'x\\",
        "$$x",
        "$q$x$q",
        "$é$x",
        "/* x",
        "/* /* */ x",
        "-- x",
        "\"x",
        "\"x\"\"",
        "x'0",
        "'x''",
        "1e",
        "1e-",
        "éé",
        "U&\"x",
        "'a'\n'b",
        "'a'\n--",
        "$1",
        "$",
        ".",
    ] {
        let sql = format!("select ab, {tail}");
        let b = sql.as_bytes();
        for end in 0..=b.len() {
            for max in 0..end + 4 {
                let text = super::normalize_bytes(&b[..end], max);
                assert!(text.len() <= max + 3, "{sql:?}[..{end}] at {max} -> {text:?}");
            }
            super::fingerprint(&b[..end]);
        }
    }
    // What any client can send: the fingerprint's cut falls past the text's last literal.
    for tail in ["'x", "E'x\\", "'x\\", "$$x"] {
        for pad in 1985..2000 {
            let sql = format!("select {} {tail}", "a".repeat(pad));
            super::fingerprint(sql.as_bytes());
            super::normalize_counted(sql.as_bytes(), super::FINGERPRINT_MAX);
        }
    }
}

/// A quoted name is copied whole (its `'` opens no literal) and never made a placeholder.
#[test]
fn quoted_identifiers_are_names() {
    assert_eq!(
        normalize("SELECT name AS \"Customer's name\" FROM c WHERE email = 'alice@example.com'", 200),
        "SELECT name AS \"Customer's name\" FROM c WHERE email = $1"
    );
    assert_eq!(
        normalize("select \"a\"\"b'c\", \"x\"\" 'y\"  from \"t 1\" where v = 'secret'", 200),
        "select \"a\"\"b'c\", \"x\"\" 'y\" from \"t 1\" where v = $1"
    );
    assert_eq!(
        normalize("select \"1\", \"$2\", U&\"d\\0061t\" from t where \"é\" = 3", 200),
        "select \"1\", \"$2\", U&\"d\\0061t\" from t where \"é\" = $1"
    );
    assert_hidden("select \"a 'b\" from t where v = 'secret'", "secret");
    // Unterminated: nothing after its quote is copied.
    assert_hidden("select \"a 'secret' ", "secret");
}

/// Dollar-quote tags follow the rules of names, non-ASCII letters included.
#[test]
fn dollar_quotes_with_non_ascii_tags() {
    assert_eq!(normalize("select $é$hunter2$é$, 1", 200), "select $1, $2");
    assert_eq!(normalize("select $_é9$ hunter2 $_é9$", 200), "select $1");
    assert_eq!(normalize("select $é$a$ée$hunter2$é$", 200), "select $1");
    assert_hidden("select $é$hunter2$é$", "hunter2");
    // After a literal, a number or a parameter, `$$` starts a string too.
    assert_eq!(
        normalize("select 'a'$$hunter2$$, 1$$hunter2$$, $1$$hunter2$$", 200),
        "select $2$3, $4$5, $1$6"
    );
    assert_hidden("select 'a'$$hunter2$$", "hunter2");
}

/// Block comments nest.
#[test]
fn nested_comments() {
    assert_eq!(normalize("/* a /* b */ it's */ SELECT 'hunter2'", 200), "SELECT $1");
    assert_eq!(normalize("select 1 /* /* */ 'x' */ , 2 /*/ x */", 200), "select $1 , $2");
    assert_hidden("/* a /* b */ it's */ SELECT 'hunter2'", "hunter2");
    assert_eq!(normalize("select /* /* */ 'x'", 200), "select");
}

/// A `--` comment ends at a carriage return too (then a literal may start on that line).
#[test]
fn line_comments_end_at_carriage_returns() {
    assert_eq!(normalize("select 1 -- c\r'a\n hunter2', 2", 200), "select $1 $2, $3");
    assert_hidden("select 1 -- c\r'a\n hunter2'", "hunter2");
}

/// With standard_conforming_strings off, `\'` escapes a quote in a plain string too; the
/// client's setting is unknown here, so no byte that either reading puts in a literal
/// comes out.
#[test]
fn backslashes_in_plain_strings_are_read_both_ways() {
    assert_eq!(normalize("select 'it\\'s hunter2'", 200), "select $1");
    assert_hidden("select 'it\\'s hunter2', 1", "hunter2");
    assert_hidden("select N'it\\'s hunter2', 1", "hunter2");
    assert_hidden("select 'a\\', 'b', 'hunter2 x', 1", "hunter2");
    assert_hidden("select 'a\\', $$, 'b', $$ hunter2 $$, 1", "hunter2");
    // An E string goes on in the next line's string, with its escapes.
    assert_hidden("select E'a'\n'\\' hunter2'", "hunter2");
    // A backslash before no quote reads the same both ways.
    assert_eq!(normalize("select 'a\\b', 'c\\\\', 5 from t", 200), "select $1, $2, $3 from t");
    // One read as an escape hides the rest: with the setting off, it is all one string.
    assert_eq!(
        normalize("select * from f where path = 'C:\\dir\\' and id = 5", 200),
        "select * from f where path = $1"
    );
}

/// A number's digits end before `e'`, `x'`..., and before a sign that no digit follows,
/// as Postgres' scanner reads them (`1e--` is `1`, `e` and a comment).
#[test]
fn numbers_end_where_postgres_ends_them() {
    assert_eq!(normalize("select 1e--'\n, 'hunter2'", 200), "select $1 , $2");
    assert_hidden("select 1e--'\n, 'hunter2'", "hunter2");
    assert_eq!(normalize("select 1e'a\\'b', 0x'ff', 1_000, 1.5e-3", 200), "select $1$2, $3$4, $5, $6");
    assert_hidden("select 1e'\\' hunter2'", "hunter2");
}

/// Texts that differ only in digits inside a quoted name are different statements: the
/// first is not recalled for the second.
#[test]
fn digits_in_quoted_names_are_not_taken_for_numbers() {
    let (first, second) = (b"select \"a 1\", 5 from t".as_slice(), b"select \"a 2\", 6 from t".as_slice());
    assert_ne!(super::fingerprint(first), super::fingerprint(second));
    remembered(first);
    assert_eq!(remembered(second).0, super::fingerprint(second));
    // Quoted names without such digits are remembered as before.
    remembered(b"select \"t\".\"a1\" from \"t\" where \"t\".\"id\" = 5");
    assert!(remembered(b"select \"t\".\"a1\" from \"t\" where \"t\".\"id\" = 17").1);
}

/// On texts built from pieces of quoted names, strings with backslashes, nested comments
/// and dollar quotes: no panic at any length, the fingerprint agrees with the text, and a
/// recalled fingerprint is the text's own.
#[test]
fn fingerprint_agrees_on_quoted_and_escaped_texts() {
    const PIECES: [&str; 28] = [
        "select", " ", "\"", "\"a 1\"", "'", "\\", "''", "E'", "$$", "$é$", "/*", "*/", "--", "\n", "\r",
        "1", "e", "x", "-", ",", "é", "$1", "U&", "\"\"", "'b'", "$q$", "= 2", "N'",
    ];
    let pieces: Vec<&[u8]> = PIECES.iter().map(|p| p.as_bytes()).collect();
    for (k, sql) in
        crate::testing::texts_from_pieces(&pieces, 20_000, 12, 0x2545_f491_4f6c_dd1d).into_iter().enumerate()
    {
        let text = super::normalize_bytes(&sql, super::FINGERPRINT_MAX);
        assert_eq!(super::fingerprint(&sql), fnv(&text), "{:?} -> {text:?}", String::from_utf8_lossy(&sql));
        let max = k % (sql.len() + 3);
        assert!(super::normalize_bytes(&sql, max).len() <= max + 3);
        let other = crate::testing::other_digits(&sql, k);
        for t in [&sql, &other] {
            let (fp, _) = remembered(t);
            assert_eq!(fp, super::fingerprint(t), "{:?}", String::from_utf8_lossy(t));
        }
    }
}
