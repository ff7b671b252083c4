//! What the relay finds in a statement's text, for the check at the end of a transaction:
//! whether it may leave session state ([`mentions_session_state`]), name custom settings, or
//! call `set_config`; remembered with the text's fingerprint (see [`normalize::recall`]) and
//! recorded on the proxy-wide statements of named Parses ([`mark`]).
//!
//! The scans run on every statement: [`mentions_session_state`] reads eight bytes at a time
//! and compares words only at a word start that begins one of them.
//!
//! May import: [`crate::prepared`] (the statements it marks), [`crate::observe::normalize`]
//! and [`crate::params`]; nothing else of the relay.

use crate::observe::normalize;
use crate::prepared::{self, Statement};

/// The proxy-wide statement for a client's named Parse, marked when its text may leave
/// session state: its Binds, in this transaction or any later one, make the proxy count the
/// state on the server before giving it back.
pub fn managed_statement(query: &[u8], types: &[u8]) -> Statement {
    let mut stmt = prepared::statement(query, types);
    mark(&mut stmt, query, scan_facts(query));
    stmt
}

/// Records on a statement what the scans found in its text (`facts`), for its executions.
pub(super) fn mark(stmt: &mut Statement, query: &[u8], facts: u8) {
    stmt.session_state = facts & MENTIONS_SESSION_STATE != 0;
    stmt.sets_config = facts & CALLS_SET_CONFIG != 0;
    if facts & MAY_NAME_CUSTOM_SETTINGS != 0 {
        crate::params::custom_setting_names(query, &mut stmt.custom_settings);
    }
}

/// Facts the relay remembers with a statement's text (see [`normalize::recall`]).
pub(super) const MENTIONS_SESSION_STATE: u8 = 1;
pub(super) const MAY_NAME_CUSTOM_SETTINGS: u8 = 2;
/// The text calls `set_config`, which changes a setting without the SET command tag that
/// otherwise tells the relay to read the settings back.
pub(super) const CALLS_SET_CONFIG: u8 = 4;

/// Whether `sql` contains `set_config` in any case (a false positive costs one read-back).
pub(super) fn calls_set_config(sql: &[u8]) -> bool {
    memchr::memchr_iter(b'_', sql).any(|at| {
        at >= 3
            && sql[at - 3..at].eq_ignore_ascii_case(b"set")
            && sql.get(at + 1..at + 7).is_some_and(|w| w.eq_ignore_ascii_case(b"config"))
    })
}

/// A statement's fingerprint (when it can be remembered) and what the relay's scans find in
/// it: remembered for texts that differ from it only in the digits of numbers, which changes
/// neither (the runs of letters stay the same, in the same order, as no run of digits
/// appears or vanishes).
pub(super) fn text_facts(text: &[u8]) -> (Option<u64>, u8) {
    if let Some(r) = normalize::recall(text) {
        return (Some(r.fingerprint), r.facts);
    }
    let facts = scan_facts(text);
    // Computed here for a text that can be remembered (the facts go with it); a longer one's
    // only when the statement is counted.
    let fingerprint = (text.len() <= normalize::REMEMBERED_MAX_TEXT).then(|| {
        let fingerprint = normalize::fingerprint(text);
        normalize::remember(text, normalize::Recalled { fingerprint, facts });
        fingerprint
    });
    (fingerprint, facts)
}

/// What the relay's scans find in a statement's text: [`MENTIONS_SESSION_STATE`],
/// [`MAY_NAME_CUSTOM_SETTINGS`], [`CALLS_SET_CONFIG`].
pub(super) fn scan_facts(text: &[u8]) -> u8 {
    let mut facts = 0;
    if mentions_session_state(text) {
        facts |= MENTIONS_SESSION_STATE;
    }
    if crate::params::may_name_custom_settings(text) {
        facts |= MAY_NAME_CUSTOM_SETTINGS;
    }
    if calls_set_config(text) {
        facts |= CALLS_SET_CONFIG;
    }
    facts
}

/// Whether a statement may create session state outliving a transaction (or remove it): a
/// statement containing one of these words makes the proxy check the server before giving it to
/// someone else. A word matches at a word start (after a byte that is not a letter) as a prefix,
/// so `pg_advisory_lock`, `TEMPORARY` and `prepared` match and `unlisten` is a word of its own.
/// False positives only cost a check.
pub(super) fn mentions_session_state(sql: &[u8]) -> bool {
    // Runs on every statement: eight bytes at a time find the word starts (a letter after a
    // byte that is not one), and the comparisons run only at a word start whose first letter
    // begins one of the words.
    const ONES: u64 = 0x0101_0101_0101_0101;
    let mut chunks = sql.chunks_exact(8);
    let mut base = 0;
    // The high bit of the byte before the current chunk's first, when it was a letter.
    let mut carry = 0u64;
    for chunk in &mut chunks {
        // OR-ing 0x20 makes exactly the ASCII letters land in 'a'..='z'; the high bit of each
        // byte of `letters` says whether it is there (exact per byte: no carry crosses bytes).
        let x = u64::from_le_bytes(chunk.try_into().expect("8 bytes")) | (ONES * 0x20);
        let low = x & (ONES * 0x7f);
        let letters =
            (ONES * (127 + 0x7b)).wrapping_sub(low) & !x & (low + ONES * (127 - 0x60)) & (ONES * 0x80);
        let mut starts = letters & !((letters << 8) | carry);
        while starts != 0 {
            let i = base + (starts.trailing_zeros() / 8) as usize;
            if LETTERS[sql[i] as usize] == STARTS_WORD && starts_state_word(&sql[i..]) {
                return true;
            }
            starts &= starts - 1;
        }
        carry = letters >> 56;
        base += 8;
    }
    let mut prev_letter = carry != 0;
    for (k, &c) in chunks.remainder().iter().enumerate() {
        let class = LETTERS[c as usize];
        if class == STARTS_WORD && !prev_letter && starts_state_word(&sql[base + k..]) {
            return true;
        }
        prev_letter = class != 0;
    }
    false
}

/// Byte classes for [`mentions_session_state`]: 0 not a letter, 1 a letter, 2 a letter that
/// begins one of the words.
const STARTS_WORD: u8 = 2;
static LETTERS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        if b.is_ascii_alphabetic() {
            t[c] = if matches!(b | 0x20, b'p' | b'd' | b'l' | b'u' | b'c' | b't' | b'a') {
                STARTS_WORD
            } else {
                1
            };
        }
        c += 1;
    }
    t
};

/// The words of [`mentions_session_state`], grouped by first letter.
pub(super) const WORDS: [&[u8]; 10] = [
    b"prepare",
    b"deallocate",
    b"declare",
    b"discard",
    b"drop",
    b"listen",
    b"unlisten",
    b"close",
    b"temp",
    b"advisory",
];

/// The words, as up to 8 lower-case bytes (little-endian) and a mask of their length; longer
/// words are matched on their first 8 letters, which only adds false positives.
const STATE_WORDS: [(u64, u64); 10] = {
    let mut out = [(0u64, 0u64); 10];
    let mut i = 0;
    while i < WORDS.len() {
        let w = WORDS[i];
        let mut k = 0;
        while k < w.len() && k < 8 {
            out[i].0 |= (w[k] as u64) << (8 * k);
            out[i].1 |= 0xff << (8 * k);
            k += 1;
        }
        i += 1;
    }
    out
};

/// Whether `rest` (starting at a word start) begins with one of the words, in any case. The
/// words are all letters, and OR-ing 0x20 into a byte gives a lower-case letter only when it
/// is a letter, so a match lies within the one word.
fn starts_state_word(rest: &[u8]) -> bool {
    let eight: [u8; 8] = match rest.first_chunk() {
        Some(eight) => *eight,
        None => {
            let mut padded = [0u8; 8];
            padded[..rest.len()].copy_from_slice(rest);
            padded
        }
    };
    let lower = u64::from_le_bytes(eight) | 0x2020_2020_2020_2020;
    // Only the words with this first letter (one to four of them).
    let (from, to) = BY_FIRST_LETTER[(lower & 0xff) as usize];
    STATE_WORDS[from as usize..to as usize].iter().any(|&(word, mask)| lower & mask == word)
}

/// For each lower-case first letter, the range of [`STATE_WORDS`] that begin with it (the
/// words are listed grouped by first letter; a unit test checks that).
const BY_FIRST_LETTER: [(u8, u8); 256] = {
    let mut t = [(0u8, 0u8); 256];
    let mut i = 0;
    while i < WORDS.len() {
        let c = WORDS[i][0] as usize;
        if t[c].1 == 0 {
            t[c].0 = i as u8;
        }
        t[c].1 = i as u8 + 1;
        i += 1;
    }
    t
};
