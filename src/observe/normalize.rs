//! SQL text for logs: literals replaced by `$n` placeholders, whitespace collapsed,
//! comments dropped, length capped. Values never reach a log line through this.

/// Normalizes `sql`, keeping at most `max` bytes of output (cut on a character boundary, with
/// `...` appended when cut).
pub fn normalize(sql: &str, max: usize) -> String {
    normalize_bytes(sql.as_bytes(), max)
}

/// Bytes that continue an identifier (or a `$n` parameter); non-ASCII bytes are letters.
fn is_ident(c: u8) -> bool {
    const fn table() -> [bool; 256] {
        let mut t = [false; 256];
        let mut c = 0;
        while c < 256 {
            let b = c as u8;
            t[c] = b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
            c += 1;
        }
        t
    }
    static IDENT: [bool; 256] = table();
    IDENT[c as usize]
}

/// Where normalized bytes go: a buffer (the text) or a running hash (the fingerprint, computed
/// for every statement without building the text).
trait Out {
    fn push(&mut self, c: u8);
    fn extend(&mut self, s: &[u8]);
    fn len(&self) -> usize;
    fn last(&self) -> Option<u8>;
    /// Back to empty, for a second pass.
    fn clear(&mut self);
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies the identifier or keyword starting at `b[i]` whole; returns where it ends.
    fn ident(&mut self, b: &[u8], i: usize) -> usize {
        let end = b[i..].iter().position(|&c| !is_ident(c)).map_or(b.len(), |p| i + p);
        self.extend(&b[i..end]);
        end
    }
}

impl Out for Vec<u8> {
    fn push(&mut self, c: u8) {
        Vec::push(self, c);
    }
    fn extend(&mut self, s: &[u8]) {
        self.extend_from_slice(s);
    }
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn clear(&mut self) {
        Vec::clear(self);
    }
    fn last(&self) -> Option<u8> {
        <[u8]>::last(self).copied()
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a over the normalized bytes as they are produced.
struct Fnv {
    hash: u64,
    len: usize,
    last: Option<u8>,
}

impl Fnv {
    fn new() -> Self {
        Fnv { hash: FNV_OFFSET, len: 0, last: None }
    }
}

impl Out for Fnv {
    fn push(&mut self, c: u8) {
        self.hash = (self.hash ^ u64::from(c)).wrapping_mul(FNV_PRIME);
        self.len += 1;
        self.last = Some(c);
    }
    fn extend(&mut self, s: &[u8]) {
        for &c in s {
            self.hash = (self.hash ^ u64::from(c)).wrapping_mul(FNV_PRIME);
        }
        self.len += s.len();
        self.last = s.last().copied().or(self.last);
    }
    fn len(&self) -> usize {
        self.len
    }
    fn clear(&mut self) {
        *self = Fnv::new();
    }
    fn last(&self) -> Option<u8> {
        self.last
    }
    /// Scans and hashes an identifier in one loop (most of a statement's bytes).
    fn ident(&mut self, b: &[u8], start: usize) -> usize {
        let mut hash = self.hash;
        let mut i = start;
        while let Some(&c) = b.get(i) {
            if !is_ident(c) {
                break;
            }
            hash = (hash ^ u64::from(c)).wrapping_mul(FNV_PRIME);
            i += 1;
        }
        self.hash = hash;
        self.len += i - start;
        if i > start {
            self.last = Some(b[i - 1]);
        }
        i
    }
}

/// A 64-bit hash of a whole text, eight bytes per multiply (FNV takes one per byte): the
/// key under which a parsed text's fingerprint is remembered, computed for every Execute.
///
/// Seeded per process: a client cannot craft a text that lands on another statement's key
/// (its executions would be counted under that statement's fingerprint).
pub fn text_hash(s: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(rand::random);
    let mut h: u64 = seed ^ s.len() as u64;
    let mut words = s.chunks_exact(8);
    for w in &mut words {
        h = (h.rotate_left(23) ^ u64::from_le_bytes(w.try_into().expect("8 bytes"))).wrapping_mul(K);
    }
    let mut tail = [0u8; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    h = (h.rotate_left(23) ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    // A final avalanche, so that every input bit reaches the bits a hash map looks at.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// Numbers literal placeholders after the statement's own highest `$n` parameter, as the
/// normalizing pass meets them (parameters inside literals and comments do not count). The
/// first placeholder takes the highest parameter seen so far; a higher one after it means the
/// pass runs again with that number known from the start. A text without parameters, or with
/// its literals after them, takes one pass; ORM statements such as `update jobs set state =
/// 'done' where id = $1` take two, but come by Parse, whose fingerprints are remembered by text.
#[derive(Default)]
struct Numbering {
    /// Fixed before the pass (a second pass), or at the first placeholder.
    base: Option<u32>,
    /// The highest parameter met so far.
    seen: u32,
    /// Placeholders produced.
    n: u32,
}

impl Numbering {
    fn next(&mut self) -> u32 {
        let base = *self.base.get_or_insert(self.seen);
        self.n += 1;
        base.saturating_add(self.n)
    }

    /// A `$n` parameter; `digits` follow its `$`.
    fn parameter(&mut self, digits: &[u8]) {
        let mut v = 0u32;
        for &d in digits.iter().take_while(|c| c.is_ascii_digit()) {
            v = v.saturating_mul(10).saturating_add(u32::from(d - b'0'));
        }
        self.seen = self.seen.max(v);
    }

    /// A placeholder went out numbered below a parameter met later (`base` is set by the first
    /// placeholder).
    fn needs_second_pass(&self) -> bool {
        self.base.is_some_and(|b| b < self.seen)
    }
}

fn placeholder(out: &mut impl Out, numbering: &mut Numbering) {
    out.push(b'$');
    let mut v = numbering.next();
    if v < 10 {
        // Most statements have fewer than ten literals.
        out.push(b'0' + v as u8);
        return;
    }
    let mut digits = [0u8; 10];
    let mut k = digits.len();
    loop {
        k -= 1;
        digits[k] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend(&digits[k..]);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// [`normalize`] of raw statement bytes, in a pass that copies identifiers and keywords a run
/// at a time (it runs for every statement, so it is on the hot path). Invalid UTF-8 comes
/// out as U+FFFD.
pub fn normalize_bytes(b: &[u8], max: usize) -> String {
    normalize_counted(b, max).0
}

/// [`normalize_bytes`], also saying how many literals it replaced.
pub fn normalize_counted(b: &[u8], max: usize) -> (String, u32) {
    let mut out: Vec<u8> = Vec::with_capacity(b.len().min(max) + 8);
    let (cut, literals) = normalize_into(b, max, &mut out);
    if cut {
        let mut cut = max.min(out.len());
        while cut > 0 && cut < out.len() && out[cut] & 0xC0 == 0x80 {
            cut -= 1;
        }
        out.truncate(cut);
        out.extend_from_slice(b"...");
    }
    let text = match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    (text, literals)
}

/// Longest normalized prefix that goes into a fingerprint.
pub const FINGERPRINT_MAX: usize = 2000;

/// The fingerprint of a statement's normalized form (FNV-1a of its first
/// [`FINGERPRINT_MAX`] normalized bytes), computed without building the text: it runs for
/// every statement, the text is built only for one not seen before.
pub fn fingerprint(b: &[u8]) -> u64 {
    let mut out = Fnv::new();
    normalize_into(b, FINGERPRINT_MAX, &mut out);
    out.hash
}

/// Byte classes for [`normalize_into`]: the common bytes (white space, letters that start
/// nothing else) are told apart with one lookup.
const SPACE: u8 = 1;
/// Starts an identifier or keyword and nothing else.
const WORD: u8 = 2;
/// `-` and `/`, which may start a comment.
const COMMENT: u8 = 3;
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = if b.is_ascii_whitespace() {
            SPACE
        } else if b == b'-' || b == b'/' {
            COMMENT
        } else if (b.is_ascii_alphabetic() && !matches!(b | 0x20, b'e' | b'b' | b'x' | b'n'))
            || b == b'_'
            || b >= 0x80
        {
            WORD
        } else {
            0
        };
        c += 1;
    }
    t
};

/// Normalizes `b` into `out`: one pass, or two when a parameter turns up after a literal (see
/// [`Numbering`]). Returns whether the text was cut and how many literals it replaced.
fn normalize_into(b: &[u8], max: usize, out: &mut impl Out) -> (bool, u32) {
    // Placeholders for literals are numbered after the statement's own parameters, so that
    // `select $1 || 'x'` does not read (and fingerprint) as `select $1 || $1`.
    let mut numbering = Numbering::default();
    let stop = normalize_pass(b, max, out, &mut numbering);
    let cut = stop < b.len() || out.len() > max;
    if cut && numbering.n > 0 {
        // Cut short: parameters past the cut count too, so that a shorter text (a log line's)
        // numbers its placeholders as the longer one (SHOW QUERIES') does. The rest is not
        // normalized (a bulk INSERT's can be megabytes): every `$n` in it counts.
        numbering.seen = numbering.seen.max(parameters_in(b, stop));
    }
    if numbering.needs_second_pass() {
        numbering = Numbering { base: Some(numbering.seen), ..Numbering::default() };
        out.clear();
        let stop = normalize_pass(b, max, out, &mut numbering);
        return (stop < b.len() || out.len() > max, numbering.n);
    }
    (cut, numbering.n)
}

/// The highest `$n` in `b` from `from` on that follows no identifier byte, inside literals
/// and comments too (0 when there is none).
fn parameters_in(b: &[u8], from: usize) -> u32 {
    let mut highest = 0u32;
    for i in memchr::memchr_iter(b'$', &b[from..]).map(|i| from + i) {
        if i > 0 && is_ident(b[i - 1]) {
            continue;
        }
        let mut digits = Numbering::default();
        digits.parameter(&b[i + 1..]);
        highest = highest.max(digits.seen);
    }
    highest
}

/// One normalizing pass over `b` into `out`, numbering placeholders with `numbering`, until
/// the end of `b` or `max` bytes of output (perhaps a little past it). Returns where in `b` it
/// stopped.
fn normalize_pass(b: &[u8], max: usize, out: &mut impl Out, numbering: &mut Numbering) -> usize {
    let mut i = 0;
    let mut pending_space = false;
    while i < b.len() && out.len() < max {
        let c = b[i];
        let class = CLASS[c as usize];
        if class == SPACE {
            pending_space = !out.is_empty();
            i += 1;
            continue;
        }
        if class == COMMENT {
            if c == b'-' && b.get(i + 1) == Some(&b'-') {
                i = memchr::memchr(b'\n', &b[i..]).map_or(b.len(), |p| i + p);
                pending_space = !out.is_empty();
                continue;
            }
            if c == b'/' && b.get(i + 1) == Some(&b'*') {
                i = find(&b[i + 2..], b"*/").map_or(b.len(), |e| i + 2 + e + 2);
                pending_space = !out.is_empty();
                continue;
            }
        }
        if pending_space {
            out.push(b' ');
            pending_space = false;
        }
        if class == WORD {
            // A keyword or identifier: copied whole.
            i = out.ident(b, i);
            continue;
        }
        let prev_ident = out.last().is_some_and(is_ident);
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
            placeholder(out, numbering);
            continue;
        }
        // Dollar-quoted strings: $tag$ ... $tag$ (a $1 parameter is not one).
        if c == b'$' && !prev_ident {
            let tag_end =
                b[i + 1..].iter().position(|&x| !(x.is_ascii_alphanumeric() || x == b'_')).map(|p| i + 1 + p);
            if let Some(e) =
                tag_end.filter(|&e| b[e] == b'$' && !b[i + 1..e].first().is_some_and(u8::is_ascii_digit))
            {
                let tag = &b[i..=e];
                let body_start = e + 1;
                i = find(&b[body_start..], tag).map_or(b.len(), |p| body_start + p + tag.len());
                placeholder(out, numbering);
                continue;
            }
        }
        // Numbers not part of an identifier.
        if !prev_ident && (c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)))
        {
            while i < b.len()
                && (b[i].is_ascii_alphanumeric()
                    || b[i] == b'.'
                    || ((b[i] == b'+' || b[i] == b'-') && matches!(b[i - 1], b'e' | b'E')))
            {
                i += 1;
            }
            placeholder(out, numbering);
            continue;
        }
        if is_ident(c) {
            // `$1`, or a word starting with e, b, x or n.
            if c == b'$' && !prev_ident {
                numbering.parameter(&b[i + 1..]);
            }
            i = out.ident(b, i);
            continue;
        }
        out.push(c);
        i += 1;
    }
    i
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
        assert_eq!(super::normalize_counted(b"select $2, 'a', 3", 200), ("select $2, $3, $4".to_owned(), 2));
        // Placeholders past nine, and a parameter after the first literal.
        assert_eq!(normalize("select 'a', 'b', $9, 'c'", 200), "select $10, $11, $9, $12");
        assert_eq!(normalize("select x$1, 'a'", 200), "select x$1, $1");
        // A parameter after a literal (the pass runs again), counted once.
        assert_eq!(
            super::normalize_counted(b"select 'a', $3, 'b'", 200),
            ("select $4, $3, $5".to_owned(), 2)
        );
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
        assert_eq!(
            normalize(&format!("select {many}"), 200),
            "select $1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,"
        );
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
            let hash = text
                .bytes()
                .fold(super::FNV_OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(super::FNV_PRIME));
            assert_eq!(super::fingerprint(sql.as_bytes()), hash, "{sql:?} -> {text:?}");
        }
    }

    #[test]
    fn long_identifier_is_cut() {
        let s = normalize(&format!("select {}", "é".repeat(100)), 21);
        assert!(s.ends_with("...") && s.len() <= 24, "{s}");
    }

    #[test]
    fn fingerprint_is_the_hash_of_the_normalized_text() {
        for sql in
            ["select 1", "SELECT a FROM t WHERE b = 'x' and c = $1", "select $$x$$, 1.5e3 -- c\n", "é 'x'"]
        {
            let text = super::normalize_bytes(sql.as_bytes(), super::FINGERPRINT_MAX);
            let hash = text
                .bytes()
                .fold(super::FNV_OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(super::FNV_PRIME));
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
}
