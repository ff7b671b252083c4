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

thread_local! {
    static BUFFERS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static TIMINGS: RefCell<Vec<Box<Timing>>> = const { RefCell::new(Vec::new()) };
}

/// A spare empty buffer, or a new one without capacity.
pub fn buffer() -> BytesMut {
    BUFFERS.with(|b| b.borrow_mut().pop()).unwrap_or_default()
}

/// Gives back an empty buffer (anything it holds is dropped).
pub fn give_buffer(mut buf: BytesMut) {
    buf.clear();
    // A buffer that carried a large message keeps its whole allocation, even where its
    // capacity (counted from what was consumed) looks small: such a buffer is freed.
    if buf.capacity() == 0 || crate::wire::frame::shrink_empty(&mut buf, MAX_SPARE_CAPACITY) {
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

    #[test]
    fn spares_are_reused_and_bounded() {
        let mut b = BytesMut::with_capacity(1024);
        b.extend_from_slice(b"left over");
        let ptr = b.as_ptr();
        give_buffer(b);
        let again = buffer();
        assert!(again.is_empty() && again.capacity() >= 1024);
        assert_eq!(again.as_ptr(), ptr, "the spare was not reused");
        give_buffer(BytesMut::with_capacity(MAX_SPARE_CAPACITY + 1));
        assert_eq!(buffer().capacity(), 0, "an oversized buffer was kept");
        // One whose large front was consumed looks small, yet holds its whole allocation.
        let mut big = BytesMut::with_capacity(1 << 20);
        big.extend_from_slice(&[7; (1 << 20) - 100]);
        let _ = big.split_to(big.len());
        assert!(big.capacity() <= MAX_SPARE_CAPACITY);
        give_buffer(big);
        assert_eq!(buffer().capacity(), 0, "a buffer holding 1 MiB was kept");
        for _ in 0..MAX_SPARES + 10 {
            give_buffer(BytesMut::with_capacity(64));
        }
        assert_eq!(BUFFERS.with(|b| b.borrow().len()), MAX_SPARES);
    }
}
