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
    let mut h: u64 = seed() ^ s.len() as u64;
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

/// A random number per process, which seeds the hashes whose keys clients choose.
pub(crate) fn seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(rand::random)
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
        self.seen = self.seen.max(parameter_number(digits));
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

/// Texts remembered per thread by [`remember`]: sets chosen by the text up to its first
/// digit, a few texts per set. The texts stay in memory (at most 128 KiB per thread) until
/// others take their place, as the statements a session times do while it lives; like those,
/// they never go into a log line or an error (only their normalized form does).
const REMEMBERED_SETS: usize = 32;
const REMEMBERED_WAYS: usize = 4;
/// Longer texts are not remembered (nor copied).
pub const REMEMBERED_MAX_TEXT: usize = 1024;

/// What is remembered of a simple-protocol text: its fingerprint, and facts the caller found
/// in it that do not depend on the digits of its numbers (the relay's: whether it mentions
/// session state, whether it may set custom settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recalled {
    pub fingerprint: u64,
    pub facts: u8,
}

#[derive(Default)]
struct Remembered {
    text: Vec<u8>,
    recalled: Option<Recalled>,
}

thread_local! {
    static REMEMBERED: std::cell::RefCell<Vec<[Remembered; REMEMBERED_WAYS]>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// What was remembered of a text that differs from `b` only in the digits of numbers (after
/// white space or an operator), on this thread. Simple-protocol texts carry their literals
/// inline and usually differ from the last execution only in them (`... WHERE id = 42`): one
/// comparison finds what a normalizing pass and the relay's scans would find again.
pub fn recall(b: &[u8]) -> Option<Recalled> {
    if b.is_empty() || b.len() > REMEMBERED_MAX_TEXT {
        return None;
    }
    let set = (prefix_hash(b) % REMEMBERED_SETS as u64) as usize;
    REMEMBERED.with(|cache| {
        let mut cache = cache.borrow_mut();
        let ways = cache.get_mut(set)?;
        let k = ways.iter().position(|w| w.recalled.is_some() && same_but_numbers(&w.text, b))?;
        if k > 0 {
            // Most recently used first: the next look finds it at once.
            ways[..=k].rotate_right(1);
        }
        ways[0].recalled
    })
}

/// Remembers `recalled` for `b` (and texts that differ from it only in numbers), in place of
/// the least recently used text of its set.
pub fn remember(b: &[u8], recalled: Recalled) {
    if b.is_empty() || b.len() > REMEMBERED_MAX_TEXT {
        return;
    }
    let set = (prefix_hash(b) % REMEMBERED_SETS as u64) as usize;
    REMEMBERED.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.is_empty() {
            cache.resize_with(REMEMBERED_SETS, Default::default);
        }
        let ways = &mut cache[set];
        ways.rotate_right(1);
        ways[0].text.clear();
        ways[0].text.extend_from_slice(b);
        ways[0].recalled = Some(recalled);
    })
}

/// A hash of `b` up to its first ASCII digit (texts of one statement with other numbers in
/// it land in the same set), eight bytes at a time. Seeded per process: a client cannot pick
/// texts that all land in one set and push out everyone else's.
fn prefix_hash(b: &[u8]) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = seed();
    for chunk in b.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        // High bit of each byte that is '0'..='9': at least 0x30 and not at least 0x3a, in its
        // low seven bits (no carry crosses a byte), and an ASCII byte at all.
        let low = x & (ONES * 0x7f);
        let digits = (low + ONES * (0x80 - 0x30)) & !(low + ONES * (0x80 - 0x3a)) & !x & (ONES * 0x80);
        if digits != 0 {
            let keep = digits.trailing_zeros() / 8 * 8;
            let below = if keep == 0 { 0 } else { x & (u64::MAX >> (64 - keep)) };
            return (h.rotate_left(23) ^ below ^ u64::from(keep)).wrapping_mul(K);
        }
        h = (h.rotate_left(23) ^ x).wrapping_mul(K);
    }
    h
}

/// Bytes after which a run of digits is a number of its own in both texts (or inside a
/// literal or comment in both): white space, operators, brackets, commas.
static BEFORE_NUMBER: [bool; 256] = {
    let mut t = [false; 256];
    let ok = b" \t\n\r=<>!(,+-*/%^|[";
    let mut i = 0;
    while i < ok.len() {
        t[ok[i] as usize] = true;
        i += 1;
    }
    t
};

/// How many bytes `a` and `b` have in common at their start, compared eight at a time.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut i = 0;
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let diff = u64::from_le_bytes(x.try_into().expect("8 bytes"))
            ^ u64::from_le_bytes(y.try_into().expect("8 bytes"));
        if diff != 0 {
            return i + (diff.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + a[i..].iter().zip(&b[i..]).take_while(|(x, y)| x == y).count()
}

/// Whether `a` and `b` are the same text but for the digits of numbers: every difference lies
/// in a run of digits (in both) that follows a byte of [`BEFORE_NUMBER`]. Such texts
/// normalize alike: the runs are numbers, or inside the same literal or comment in both.
pub(crate) fn same_but_numbers(a: &[u8], b: &[u8]) -> bool {
    let (mut i, mut j) = (0, 0);
    loop {
        let common = common_prefix(&a[i..], &b[j..]);
        let back = a[i..i + common].iter().rev().take_while(|c| c.is_ascii_digit()).count();
        i += common;
        j += common;
        if i == a.len() && j == b.len() {
            return true;
        }
        let run_a = a[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        let run_b = b[j..].iter().take_while(|c| c.is_ascii_digit()).count();
        // Both sides have digits here (those just compared equal count), after a byte that
        // starts no identifier, parameter or literal prefix.
        let start = i - back;
        if back + run_a == 0 || back + run_b == 0 || start == 0 || !BEFORE_NUMBER[a[start - 1] as usize] {
            return false;
        }
        if run_a == 0 && run_b == 0 {
            return false; // a difference that is no digit
        }
        i += run_a;
        j += run_b;
    }
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

/// The number of a `$n` parameter from the digits after its `$` (0 when there are none).
fn parameter_number(digits: &[u8]) -> u32 {
    digits
        .iter()
        .take_while(|c| c.is_ascii_digit())
        .fold(0u32, |v, &d| v.saturating_mul(10).saturating_add(u32::from(d - b'0')))
}

/// The highest `$n` in `b` from `from` on that follows no identifier byte, inside literals
/// and comments too (0 when there is none).
fn parameters_in(b: &[u8], from: usize) -> u32 {
    let mut highest = 0u32;
    for i in memchr::memchr_iter(b'$', &b[from..]).map(|i| from + i) {
        if i > 0 && is_ident(b[i - 1]) {
            continue;
        }
        highest = highest.max(parameter_number(&b[i + 1..]));
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
        for (k, sql) in crate::testing::texts_from_pieces(&pieces, 20_000, 10, 0x2545_f491_4f6c_dd1d)
            .into_iter()
            .enumerate()
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
            assert_eq!(super::common_prefix(&a, &b), k);
            assert_eq!(super::common_prefix(&a[..k], &a), k);
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
