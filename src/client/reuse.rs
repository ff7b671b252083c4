//! Per-thread spares of what a busy client needs and an idle one gives back: buffers and
//! statement-timing state. An idle client holds none of them (so idle clients stay small),
//! and a client that becomes busy again takes a spare instead of allocating (so a
//! transaction does not pay for a handful of allocations).
//!
//! Spares are bounded in number and size; anything beyond is simply freed. Timing state is
//! kept boxed, as the session holds it, so that a hand-over moves a pointer.
#![allow(clippy::vec_box)]

use super::timing::Timing;
use bytes::BytesMut;
use std::cell::RefCell;

/// Spares kept per thread, of each kind.
const MAX_SPARES: usize = 128;
/// Buffers larger than this are freed rather than kept.
pub const MAX_SPARE_CAPACITY: usize = 16 * 1024;
/// Every spare buffer has this capacity, whichever part it played: a buffer serves as the
/// client's input, the client's output or the server's input in turn, and spares of mixed
/// sizes (a request-sized output buffer taken next as an input) were grown by reallocation
/// two or three times per transaction. One size, large enough for a read's room
/// (`client::io`), makes taking a spare for any part free.
pub const SPARE_CAPACITY: usize = MAX_SPARE_CAPACITY;

thread_local! {
    static BUFFERS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static TIMINGS: RefCell<Vec<Box<Timing>>> = const { RefCell::new(Vec::new()) };
}

/// A spare empty buffer of [`SPARE_CAPACITY`], or a new one.
pub fn buffer() -> BytesMut {
    BUFFERS.with(|b| b.borrow_mut().pop()).unwrap_or_else(|| BytesMut::with_capacity(SPARE_CAPACITY))
}

/// Gives back an empty buffer (anything it holds is dropped). Kept only if it can hold
/// [`SPARE_CAPACITY`] bytes from its start again and no more than [`MAX_SPARE_CAPACITY`]:
/// one grown for a large message, or whose storage a statement's text still shares, is
/// freed.
pub fn give_buffer(mut buf: BytesMut) {
    buf.clear();
    if !buf.try_reclaim(SPARE_CAPACITY) || buf.try_reclaim(MAX_SPARE_CAPACITY + 1) {
        return;
    }
    BUFFERS.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < MAX_SPARES {
            b.push(buf);
        }
    });
}

/// Timing state for a client that has none.
pub fn timing() -> Box<Timing> {
    TIMINGS.with(|t| t.borrow_mut().pop()).unwrap_or_default()
}

/// Gives back timing state that holds nothing ([`Timing::is_empty`]).
pub fn give_timing(t: Box<Timing>) {
    if !t.is_empty() || !t.small() {
        return;
    }
    TIMINGS.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < MAX_SPARES {
            s.push(t);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;

    fn spares() -> usize {
        BUFFERS.with(|b| b.borrow().len())
    }

    #[test]
    fn spares_are_reused_of_one_size_and_bounded() {
        BUFFERS.with(|b| b.borrow_mut().clear());
        let mut b = buffer();
        assert_eq!(b.capacity(), SPARE_CAPACITY);
        b.extend_from_slice(b"left over");
        b.advance(4);
        let ptr = b.as_ptr().wrapping_sub(4);
        give_buffer(b);
        let again = buffer();
        assert!(again.is_empty() && again.capacity() == SPARE_CAPACITY, "{}", again.capacity());
        assert_eq!(again.as_ptr(), ptr, "the spare was not reused from its start");
        // Not kept: too large, too small (it would be reallocated for its next part), sharing
        // its storage with a statement's text, or holding a large allocation whose front was
        // consumed.
        give_buffer(BytesMut::with_capacity(MAX_SPARE_CAPACITY + 1));
        give_buffer(BytesMut::with_capacity(64));
        let mut shared = buffer();
        shared.extend_from_slice(b"SELECT 1");
        let text = shared.split_to(8).freeze();
        give_buffer(shared);
        let mut big = BytesMut::with_capacity(1 << 20);
        big.extend_from_slice(&[7; (1 << 20) - 100]);
        let _ = big.split_to(big.len());
        assert!(big.capacity() <= MAX_SPARE_CAPACITY);
        give_buffer(big);
        assert_eq!(spares(), 0);
        drop(text);
        for _ in 0..MAX_SPARES + 10 {
            give_buffer(BytesMut::with_capacity(SPARE_CAPACITY));
        }
        assert_eq!(spares(), MAX_SPARES);
    }
}
