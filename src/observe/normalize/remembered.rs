//! What is remembered of statement texts already seen: their fingerprints by a hash of the
//! whole text ([`text_hash`]), and per thread, by a text that differs from an earlier one only
//! in the digits of its numbers ([`recall`], [`remember`]).

use super::lexer::{lex, Reading, Token};

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
pub(super) fn common_prefix(a: &[u8], b: &[u8]) -> usize {
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

/// Whether a quoted name in `b` (as [`normalize_pass`](super::normalize_pass) reads it) has a digit after a byte
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
