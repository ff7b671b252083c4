//! Where each token of a SQL text ends, read as Postgres' scanner (scan.l) reads it: strings
//! of every kind, quoted names, dollar quotes, nested comments, numbers and parameters. A
//! text may end inside any of them; nothing here allocates.

/// Bytes that continue an identifier (or a `$n` parameter); non-ASCII bytes are letters.
pub(super) fn is_ident(c: u8) -> bool {
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

/// What [`lex`] finds at a place in a text.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Token {
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
pub(super) enum Reading {
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
pub(super) fn lex(b: &[u8], i: usize, reading: Reading) -> (Token, usize) {
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
pub(super) fn number_end(b: &[u8], i: usize) -> usize {
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
