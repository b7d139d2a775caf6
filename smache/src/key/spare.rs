//! The buffer of the last key dropped on this thread, kept for the next
//! key made on it: a call makes a key and drops it when it returns, so a
//! thread making one key after another (hits) allocates none.

use std::cell::Cell;

/// Buffers past this capacity are not kept (a key with long arguments
/// would otherwise hold its memory for the thread's life).
const KEPT_CAPACITY: usize = 512;

thread_local! {
    static SPARE: Cell<String> = const { Cell::new(String::new()) };
}

/// An empty buffer of at least `capacity`: the spare if there is one.
#[inline]
pub(super) fn take(capacity: usize) -> String {
    let mut buffer = SPARE.try_with(Cell::take).unwrap_or_default();
    buffer.clear();
    buffer.reserve(capacity);
    buffer
}

/// Keeps `buffer` as this thread's spare (replacing any other).
#[inline]
pub(super) fn give(buffer: String) {
    if buffer.capacity() != 0 && buffer.capacity() <= KEPT_CAPACITY {
        let _ = SPARE.try_with(|spare| spare.set(buffer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_is_taken_again_empty() {
        let mut buffer = take(16);
        buffer.push_str("key");
        let at = buffer.as_ptr();
        give(buffer);
        let again = take(8);
        assert_eq!(again.as_ptr(), at);
        assert!(again.is_empty());
        give(String::with_capacity(KEPT_CAPACITY + 1));
        assert!(
            take(8).capacity() <= KEPT_CAPACITY,
            "a large buffer is not kept"
        );
    }
}
