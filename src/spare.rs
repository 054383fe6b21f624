//! Spare buffers, kept per thread between the messages that use them.
//!
//! Every HTTP/1 message needs a few buffers for a short while: its parser's stream buffer (given
//! back as soon as the message is complete, so that an idle keep-alive connection holds
//! nothing), its header text and field positions, its body. Each was an allocation and a free
//! per message, several per exchange, and the allocator's slow path (a large request
//! consolidating its free lists) showed at about a sixth of the receiver's own CPU on loopback.
//! A finished message's buffers are cleared and kept here instead, for the next message that
//! the same thread (a worker: it parses, pairs and encodes) takes them for.
//!
//! Bounded: at most [`KEPT`] buffers per kind and thread, none larger than [`MAX_BYTES`]; a
//! buffer beyond either goes back to the allocator as before. So a thread keeps at most
//! 3 x 64 x 16 KiB, and in practice the size its traffic's messages need. The boxes messages
//! are kept in while parsed, paired and encoded are kept the same way (64, empty).

use crate::http::Message;
use std::cell::RefCell;

/// Buffers kept per kind and thread.
pub const KEPT: usize = 64;
/// A buffer whose capacity passes this many bytes is freed, not kept: one large body must not
/// leave its size behind.
pub const MAX_BYTES: usize = 16 * 1024;

/// Things of one kind kept for reuse on this thread: at most [`KEPT`].
struct Pool<T>(RefCell<Vec<T>>);

impl<T> Pool<T> {
    const fn new() -> Pool<T> {
        Pool(RefCell::new(Vec::new()))
    }

    fn take(&self) -> Option<T> {
        self.0.try_borrow_mut().ok().and_then(|mut s| s.pop())
    }

    /// Keeps `item` unless [`KEPT`] are kept already (then it is dropped).
    fn keep(&self, item: T) {
        if let Ok(mut kept) = self.0.try_borrow_mut()
            && kept.len() < KEPT
        {
            if kept.capacity() == 0 {
                kept.reserve_exact(KEPT);
            }
            kept.push(item);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.try_borrow().map_or(0, |s| s.len())
    }
}

/// The spares of one kind of buffer: kept cleared, none larger than [`MAX_BYTES`].
struct Spares<T>(Pool<Vec<T>>);

impl<T> Spares<T> {
    const fn new() -> Spares<T> {
        Spares(Pool::new())
    }

    fn take(&self) -> Vec<T> {
        self.0.take().unwrap_or_default()
    }

    fn give(&self, mut v: Vec<T>) {
        let bytes = v.capacity().saturating_mul(std::mem::size_of::<T>());
        if bytes == 0 || bytes > MAX_BYTES {
            return;
        }
        v.clear();
        self.0.keep(v);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }
}

thread_local! {
    /// Parsers' stream buffers.
    static STREAM: Spares<u8> = const { Spares::new() };
    /// Header text and bodies.
    static TEXT: Spares<u8> = const { Spares::new() };
    /// Header field positions.
    static FIELDS: Spares<[u32; 4]> = const { Spares::new() };
    /// Message boxes, their contents given back ([`Message::recycle`]).
    static MESSAGES: Pool<Box<Message>> = const { Pool::new() };
}

/// `msg` in a box: a spare one when there is one.
pub fn boxed(msg: Message) -> Box<Message> {
    match MESSAGES.try_with(Pool::take) {
        Ok(Some(mut b)) => {
            *b = msg;
            b
        }
        _ => Box::new(msg),
    }
}

/// Keeps a message's box for the next [`boxed`] on this thread; what it still holds is dropped
/// when it is reused (nothing that owns memory, after [`Message::recycle`]).
pub fn give_message(b: Box<Message>) {
    let _ = MESSAGES.try_with(|s| s.keep(b));
}

/// An empty stream buffer, with room from an earlier message when there is a spare.
pub fn stream() -> Vec<u8> {
    STREAM.try_with(Spares::take).unwrap_or_default()
}

/// Keeps a stream buffer for the next [`stream`] on this thread (or frees it, see the module).
pub fn give_stream(v: Vec<u8>) {
    // Once the thread's spares are gone (it is exiting), `v` is simply dropped.
    let _ = STREAM.try_with(|s| s.give(v));
}

/// An empty buffer for header text or a body.
pub fn text() -> Vec<u8> {
    TEXT.try_with(Spares::take).unwrap_or_default()
}

/// Keeps a header text or body buffer for the next [`text`] on this thread.
pub fn give_text(v: Vec<u8>) {
    let _ = TEXT.try_with(|s| s.give(v));
}

/// An empty vector of header field positions.
pub fn fields() -> Vec<[u32; 4]> {
    FIELDS.try_with(Spares::take).unwrap_or_default()
}

/// Keeps a vector of field positions for the next [`fields`] on this thread.
pub fn give_fields(v: Vec<[u32; 4]>) {
    let _ = FIELDS.try_with(|s| s.give(v));
}

/// How many buffers this thread keeps, per kind: (stream, text, fields).
#[cfg(test)]
fn kept() -> (usize, usize, usize) {
    (
        STREAM.try_with(Spares::len).unwrap_or(0),
        TEXT.try_with(Spares::len).unwrap_or(0),
        FIELDS.try_with(Spares::len).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_comes_back_empty_with_its_room() {
        // Each test runs on its own thread: its spares start empty.
        assert_eq!(kept(), (0, 0, 0));
        let mut v = stream();
        assert_eq!(v.capacity(), 0, "no spare yet: a new, unallocated vector");
        v.extend_from_slice(&[7; 1000]);
        let (cap, at) = (v.capacity(), v.as_ptr());
        give_stream(v);
        assert_eq!(kept(), (1, 0, 0));
        let again = stream();
        assert!(again.is_empty());
        assert_eq!(
            (again.capacity(), again.as_ptr()),
            (cap, at),
            "the same allocation"
        );
        assert_eq!(kept(), (0, 0, 0));
        // Kinds are kept apart.
        give_stream(again);
        assert_eq!(text().capacity(), 0);
        assert_eq!(fields().capacity(), 0);
    }

    #[test]
    fn spares_are_bounded_in_count_and_size() {
        give_text(vec![0; MAX_BYTES + 1]);
        give_text(Vec::new());
        assert_eq!(kept().1, 0, "too large, or nothing to keep: freed");
        give_fields(vec![[0; 4]; MAX_BYTES / 16]);
        assert_eq!(kept().2, 1, "16 KiB of positions is within the bound");
        for _ in 0..KEPT + 10 {
            give_text(vec![1; 100]);
        }
        assert_eq!(kept().1, KEPT);
    }

    #[test]
    fn a_given_message_box_is_used_again() {
        use crate::http::StartLine;
        let message = || {
            let start = StartLine::Response {
                status: 200,
                reason: "OK".into(),
            };
            Message::new(start, 1, 0, None)
        };
        let first = boxed(message());
        let at: *const Message = &*first;
        give_message(first);
        assert_eq!(MESSAGES.try_with(Pool::len), Ok(1));
        let again = boxed(message());
        assert_eq!(&*again as *const Message, at, "the same allocation");
        assert_eq!(MESSAGES.try_with(Pool::len), Ok(0));
    }

    #[test]
    fn spares_stay_on_their_thread() {
        give_text(vec![1; 100]);
        let elsewhere = std::thread::spawn(|| (kept(), text().capacity()))
            .join()
            .unwrap();
        assert_eq!(elsewhere, ((0, 0, 0), 0));
        assert_eq!(kept().1, 1);
    }
}
