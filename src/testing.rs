//! Helpers for unit tests.

/// `n` texts, each the concatenation of up to `max_pieces - 1` pieces picked by a xorshift
/// generator from `seed`: inputs for tests that check a fast scan against a plain rule.
pub fn texts_from_pieces(pieces: &[&[u8]], n: usize, max_pieces: u64, mut seed: u64) -> Vec<Vec<u8>> {
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..n)
        .map(|_| {
            let count = next() % max_pieces;
            (0..count).flat_map(|_| pieces[(next() % pieces.len() as u64) as usize].iter().copied()).collect()
        })
        .collect()
}

/// `text` with every ASCII digit changed, and after some of them one more digit (`k` varies
/// which): the same text but for the digits of its numbers.
pub fn other_digits(text: &[u8], k: usize) -> Vec<u8> {
    let mut other = Vec::with_capacity(text.len() + text.len() / 3);
    for (i, &c) in text.iter().enumerate() {
        if c.is_ascii_digit() {
            other.push(b'0' + (c - b'0' + 1 + (k + i) as u8 % 8) % 10);
            if (k + i) % 3 == 0 {
                other.push(b'0' + (k % 10) as u8);
            }
        } else {
            other.push(c);
        }
    }
    other
}
