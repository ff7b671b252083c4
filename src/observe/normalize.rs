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
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a over the normalized bytes as they are produced.
struct Fnv {
    hash: u64,
    len: usize,
}

impl Fnv {
    fn new() -> Self {
        Fnv { hash: FNV_OFFSET, len: 0 }
    }
}

impl Out for Fnv {
    fn push(&mut self, c: u8) {
        self.hash = (self.hash ^ u64::from(c)).wrapping_mul(FNV_PRIME);
        self.len += 1;
    }
    fn extend(&mut self, s: &[u8]) {
        for &c in s {
            self.hash = (self.hash ^ u64::from(c)).wrapping_mul(FNV_PRIME);
        }
        self.len += s.len();
    }
    fn len(&self) -> usize {
        self.len
    }
    fn clear(&mut self) {
        *self = Fnv::new();
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
    if b.is_empty() || b.len() > REMEMBERED_MAX_TEXT || digits_in_quoted_names(b) {
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
/// normalize alike: the runs are numbers, or inside the same literal or comment in both (or
/// inside a quoted name, which is copied whole: [`remember`] keeps no text with such digits in
/// one, see [`digits_in_quoted_names`]).
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

/// Byte classes for [`normalize_pass`]: the common bytes (white space, letters that start
/// nothing else) are told apart with one lookup; the others go to [`lex`].
const SPACE: u8 = 1;
/// Starts an identifier or keyword and nothing else.
const WORD: u8 = 2;
/// `e`, `b`, `x`, `n` (either case): start an identifier, or a string when a quote follows.
const PREFIX: u8 = 3;
/// Starts a number.
const DIGIT: u8 = 4;
/// A byte that is a token of its own (an operator's, punctuation).
const PUNCT: u8 = 5;
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = if b.is_ascii_whitespace() {
            SPACE
        } else if matches!(b | 0x20, b'e' | b'b' | b'x' | b'n') {
            PREFIX
        } else if b.is_ascii_alphabetic() || b == b'_' || b >= 0x80 {
            WORD
        } else if b.is_ascii_digit() {
            DIGIT
        } else if matches!(b, b'-' | b'/' | b'\'' | b'"' | b'$' | b'.') {
            0 // may start a longer token: see `lex`
        } else {
            PUNCT
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
/// stopped (never past its end).
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
        if class == 0 && matches!((c, b.get(i + 1)), (b'-', Some(b'-')) | (b'/', Some(b'*'))) {
            i = lex(b, i, Reading::Both).1; // a comment
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(b' ');
            pending_space = false;
        }
        // The common tokens, as `lex` would find them: a keyword or identifier (copied whole),
        // punctuation, a number.
        if class == WORD || (class == PREFIX && b.get(i + 1) != Some(&b'\'')) {
            i = out.ident(b, i);
            continue;
        }
        if class == PUNCT {
            out.push(c);
            i += 1;
            continue;
        }
        if class == DIGIT {
            placeholder(out, numbering);
            i = number_end(b, i);
            continue;
        }
        let (token, end) = lex(b, i, Reading::Both);
        debug_assert!(i < end && end <= b.len(), "{i}..{end} of {}", b.len());
        match token {
            Token::Literal => placeholder(out, numbering),
            Token::Parameter => {
                numbering.parameter(&b[i + 1..end]);
                out.extend(&b[i..end]);
            }
            Token::Unterminated => out.push(c),
            Token::Copy | Token::Space if end == i + 1 => out.push(c),
            Token::Copy | Token::Space => out.extend(&b[i..end]),
        }
        i = end;
    }
    i
}

/// What [`lex`] finds at a place in a text.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Token {
    /// A comment (or a byte of white space): one space in the output.
    Space,
    /// An identifier or keyword, a quoted name (`"..."`, `""` in it), an operator or
    /// punctuation: copied.
    Copy,
    /// A string (`'...'`, `E'...'`, `B'...'`, `X'...'`, `N'...'`, a dollar-quoted one) or a
    /// number: a placeholder.
    Literal,
    /// `$n`: copied, and its number taken by the numbering.
    Parameter,
    /// A quoted name that the text ends in: its quote alone is copied (what follows might be
    /// meant as anything).
    Unterminated,
}

/// How the backslashes of a plain `'...'` string read, which depends on the client's
/// standard_conforming_strings: `On`, a byte like any other; `Off`, an escape of the next
/// byte, `\'` included; `Both`, not known (see [`plain_end`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reading {
    On,
    Off,
    Both,
}

/// The token that starts at `b[i]` (`i < b.len()`) and where it ends (past `i`, at most
/// `b.len()`: a text may end inside anything), as Postgres' scanner (scan.l) reads it: strings
/// go on in a string after white space with a newline (`'a'\n'b'` is one), block comments nest,
/// a dollar-quote tag is a name without `$` (non-ASCII bytes are letters), a number ends
/// before a string prefix (`1e'x'` is `1` and `e'x'`) and before a sign that no digit follows.
/// Words are taken whole (with any `$` in them, as in Postgres), so no token starts inside
/// one: a `$$` after a literal, a number or a parameter starts a string (`'a'$$x$$` is two).
#[inline]
fn lex(b: &[u8], i: usize, reading: Reading) -> (Token, usize) {
    let c = b[i];
    let next = b.get(i + 1).copied();
    match c {
        b'-' if next == Some(b'-') => (Token::Space, line_comment_end(b, i + 2)),
        b'/' if next == Some(b'*') => (Token::Space, block_comment_end(b, i + 2)),
        b'\'' => (Token::Literal, plain_end(b, i + 1, reading)),
        b'"' => match quoted_name_end(b, i + 1) {
            Some(end) => (Token::Copy, end),
            None => (Token::Unterminated, b.len()),
        },
        b'$' => dollar(b, i),
        b'e' | b'E' if next == Some(b'\'') => (Token::Literal, string_end(b, i + 2, Body::Escapes).0),
        b'b' | b'B' | b'x' | b'X' if next == Some(b'\'') => {
            (Token::Literal, string_end(b, i + 2, Body::Bits).0)
        }
        // N'...' is a plain string after an internal NCHAR.
        b'n' | b'N' if next == Some(b'\'') => (Token::Literal, plain_end(b, i + 2, reading)),
        b'0'..=b'9' => (Token::Literal, number_end(b, i)),
        b'.' if next.is_some_and(|d| d.is_ascii_digit()) => (Token::Literal, number_end(b, i)),
        _ if is_ident(c) => (Token::Copy, ident_end(b, i)),
        _ if c.is_ascii_whitespace() => (Token::Space, i + 1),
        _ => (Token::Copy, i + 1),
    }
}

/// Where the identifier or keyword starting at `b[i]` ends.
fn ident_end(b: &[u8], i: usize) -> usize {
    b[i..].iter().position(|&c| !is_ident(c)).map_or(b.len(), |p| i + p)
}

/// Where a `--` comment whose text starts at `b[i]` ends: at the newline or carriage return
/// that ends it (either ends one in Postgres).
fn line_comment_end(b: &[u8], i: usize) -> usize {
    memchr::memchr2(b'\n', b'\r', &b[i..]).map_or(b.len(), |p| i + p)
}

/// Where a `/*` comment whose text starts at `b[i]` ends: past the `*/` that closes it, the
/// comments opened inside it closed first.
fn block_comment_end(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while let Some(p) = memchr::memchr2(b'*', b'/', &b[i..]) {
        let p = i + p;
        match (b[p], b.get(p + 1)) {
            (b'*', Some(b'/')) if depth == 0 => return p + 2,
            (b'*', Some(b'/')) => {
                depth -= 1;
                i = p + 2;
            }
            (b'/', Some(b'*')) => {
                depth += 1;
                i = p + 2;
            }
            _ => i = p + 1,
        }
    }
    b.len()
}

/// Where the quoted name whose text starts at `b[i]` ends (past its closing quote; `""` is a
/// quote in it), or `None` when the text ends first.
fn quoted_name_end(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let p = i + memchr::memchr(b'"', &b[i..])?;
        if b.get(p + 1) == Some(&b'"') {
            i = p + 2;
        } else {
            return Some(p + 1);
        }
    }
}

/// The token starting with the `$` at `b[i]`: a parameter (`$` and digits), a dollar-quoted
/// string (`$tag$ ... $tag$`, the tag empty or a name without `$`, not starting with a digit),
/// or else a `$` and what follows it of a name.
fn dollar(b: &[u8], i: usize) -> (Token, usize) {
    let after = &b[i + 1..];
    let digits = after.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits > 0 {
        return (Token::Parameter, i + 1 + digits);
    }
    let close = i + 1 + after.iter().take_while(|&&c| c != b'$' && is_ident(c)).count();
    if b.get(close) != Some(&b'$') {
        return (Token::Copy, close);
    }
    let tag = &b[i..=close];
    let body = close + 1;
    (Token::Literal, memchr::memmem::find(&b[body..], tag).map_or(b.len(), |p| body + p + tag.len()))
}

/// Where the number starting at `b[i]` ends (its letters, `_` and `.` with it: `0x1f`,
/// `1_000`, junk such as `12abc`, all hidden).
fn number_end(b: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    while b.get(j).is_some_and(u8::is_ascii_digit) {
        j += 1;
    }
    if !b.get(j).is_some_and(|&d| d.is_ascii_alphabetic() || d == b'.' || d == b'_') {
        return j; // digits alone, the common case
    }
    while let Some(&d) = b.get(j) {
        let take = if d.is_ascii_alphanumeric() || d == b'.' || d == b'_' {
            // Not the prefix of a string that follows: `1e'x'` is `1` and `e'x'`.
            !(matches!(d | 0x20, b'e' | b'b' | b'x' | b'n') && b.get(j + 1) == Some(&b'\''))
        } else {
            // An exponent's sign, when a digit follows (`1e--` is `1`, `e` and a comment).
            matches!(d, b'+' | b'-')
                && matches!(b[j - 1], b'e' | b'E')
                && b.get(j + 1).is_some_and(u8::is_ascii_digit)
        };
        if !take {
            break;
        }
        j += 1;
    }
    j
}

/// How a string's body reads: `Plain`, `''` is a quote (a plain string as Postgres reads it
/// with standard_conforming_strings on, and a `U&'...'` one); `Escapes`, a backslash escapes
/// the next byte too (`E'...'`, and a plain string with the setting off); `Bits`, the first
/// quote ends it (`B'...'`, `X'...'`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Body {
    Plain,
    Escapes,
    Bits,
}

/// Where the string whose body starts at `b[i]` ends: past its closing quote and past the
/// parts that continue it (see [`continuation`]), or at the end of `b`. Also whether a
/// backslash came before that.
fn string_end(b: &[u8], mut i: usize, body: Body) -> (usize, bool) {
    let mut backslash = false;
    loop {
        let close = loop {
            let found = match body {
                Body::Bits => memchr::memchr(b'\'', &b[i..]),
                _ => memchr::memchr2(b'\'', b'\\', &b[i..]),
            };
            let Some(p) = found.map(|p| i + p) else {
                return (b.len(), backslash);
            };
            if b[p] == b'\\' {
                backslash = true;
                i = if body == Body::Escapes { p + 2 } else { p + 1 };
                if i >= b.len() {
                    return (b.len(), backslash);
                }
            } else if body != Body::Bits && b.get(p + 1) == Some(&b'\'') {
                i = p + 2;
            } else {
                break p + 1;
            }
        };
        match continuation(b, close) {
            Some(part) => i = part,
            None => return (close, backslash),
        }
    }
}

/// Where the next part of a string that closed just before `b[i]` starts (past its opening
/// quote), when one follows: Postgres joins strings separated by white space and `--`
/// comments with a newline among them, and reads the next part as the first (`E'a'\n'\''`).
fn continuation(b: &[u8], mut i: usize) -> Option<usize> {
    let mut newline = false;
    loop {
        match *b.get(i)? {
            b' ' | b'\t' | b'\x0b' | b'\x0c' => i += 1,
            b'\n' | b'\r' => {
                newline = true;
                i += 1;
            }
            // A comment, up to the newline that must end it.
            b'-' if b.get(i + 1) == Some(&b'-') => i += 2 + memchr::memchr2(b'\n', b'\r', &b[i + 2..])?,
            b'\'' if newline => return Some(i + 1),
            _ => return None,
        }
    }
}

/// Where the plain string whose body starts at `b[i]` ends, read as `reading` says.
///
/// Read `Both` ways (the normalizer does not know the client's standard_conforming_strings),
/// a string without a backslash ends at the same place either way. One with a backslash may
/// not (`'it\'s'`, `'C:\dir\'`): then neither reading's end is safe to go on from, as a
/// string that the other reading starts before it may end past it (`'a\', 'b', 'x y'` is
/// `'a\'`, `'b'` and `'x y'`, or `'a\', '`, `b', '` and the words `x y`). So both readings
/// are followed, token by token, to the first place where both are between tokens, and all
/// up to there is one placeholder: no byte comes out that either reading puts in a string.
/// (With the setting off, `'C:\dir\' and id = 5` is one unterminated string, so a text like
/// that loses its tail.)
fn plain_end(b: &[u8], i: usize, reading: Reading) -> usize {
    match reading {
        Reading::On => string_end(b, i, Body::Plain).0,
        Reading::Off => string_end(b, i, Body::Escapes).0,
        Reading::Both => {
            let (mut on, backslash) = string_end(b, i, Body::Plain);
            if !backslash {
                return on;
            }
            let mut off = string_end(b, i, Body::Escapes).0;
            while on != off {
                // The one behind takes its next token (it is not at the end).
                if on < off {
                    on = lex(b, on, Reading::On).1;
                } else {
                    off = lex(b, off, Reading::Off).1;
                }
            }
            on
        }
    }
}

/// Whether a quoted name in `b` (as [`normalize_pass`] reads it) has a digit after a byte
/// of [`BEFORE_NUMBER`]: [`same_but_numbers`] would take a text that differs there for the
/// same statement, but the name is copied whole, so their normalized forms differ.
fn digits_in_quoted_names(b: &[u8]) -> bool {
    if memchr::memchr(b'"', b).is_none() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let (token, end) = lex(b, i, Reading::Both);
        if token == Token::Copy
            && b[i] == b'"'
            && b[i..end].windows(2).any(|w| BEFORE_NUMBER[w[0] as usize] && w[1].is_ascii_digit())
        {
            return true;
        }
        i = end;
    }
    false
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
        let (first, second) =
            (b"select \"a 1\", 5 from t".as_slice(), b"select \"a 2\", 6 from t".as_slice());
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
        for (k, sql) in crate::testing::texts_from_pieces(&pieces, 20_000, 12, 0x2545_f491_4f6c_dd1d)
            .into_iter()
            .enumerate()
        {
            let text = super::normalize_bytes(&sql, super::FINGERPRINT_MAX);
            assert_eq!(
                super::fingerprint(&sql),
                fnv(&text),
                "{:?} -> {text:?}",
                String::from_utf8_lossy(&sql)
            );
            let max = k % (sql.len() + 3);
            assert!(super::normalize_bytes(&sql, max).len() <= max + 3);
            let other = crate::testing::other_digits(&sql, k);
            for t in [&sql, &other] {
                let (fp, _) = remembered(t);
                assert_eq!(fp, super::fingerprint(t), "{:?}", String::from_utf8_lossy(t));
            }
        }
    }
}
