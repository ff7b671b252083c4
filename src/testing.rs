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
