//! SQL text for logs: literals replaced by `$n` placeholders, whitespace collapsed,
//! comments dropped, length capped. Values never reach a log line through this.
//!
//! Three parts: this file normalizes and fingerprints (one pass that writes either the text or
//! its hash); `lexer.rs` finds where each token of a text ends, as Postgres' scanner reads it;
//! `remembered.rs` keeps what was found for texts seen before, so that a statement run again
//! with other numbers in it is not normalized again.

mod lexer;
mod remembered;
#[cfg(test)]
mod tests;

use lexer::{is_ident, lex, number_end, Reading, Token};
pub(crate) use remembered::seed;
pub use remembered::{recall, remember, text_hash, Recalled, REMEMBERED_MAX_TEXT};
// Outside this module only the relay's tests compare texts this way.
#[cfg(test)]
pub(crate) use remembered::same_but_numbers;

/// Normalizes `sql`, keeping at most `max` bytes of output (cut on a character boundary, with
/// `...` appended when cut).
pub fn normalize(sql: &str, max: usize) -> String {
    normalize_bytes(sql.as_bytes(), max)
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
