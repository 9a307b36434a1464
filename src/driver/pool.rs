//! Receive buffers that come back when the application is done with them.
//!
//! A received WebSocket message arrives as a slice of tungstenite's read buffer, and a stream
//! chunk cut from it lives until the application reads it. While it lives, tungstenite cannot
//! reuse that buffer and allocates a fresh one for the next message: about one 64 KiB
//! allocation per chunk, freed later on whichever thread the application reads on. glibc
//! gives such memory back to the kernel at its default thresholds, so the next buffer is
//! page-faulted and zeroed again: in the in-process throughput bench, page faults and page
//! clearing cost more than the copy below, and the stream ran at 0.66 of the
//! `wss + BLAKE3` path against 0.87 with glibc told to keep freed memory (measured with
//! `GLIBC_TUNABLES`, which an application embedding the transport cannot be asked to set).
//!
//! [`RecvPool::adopt`] copies a message of half a chunk to a whole chunk (with its frame
//! header) into a buffer of this connection's own, which returns to the pool when the last
//! slice of it is dropped; tungstenite's buffer is then free again at once and is reused in
//! place. Memory: at most [`KEEP`] idle buffers of `chunk_size` plus a little per connection;
//! buffers in use are bounded by the windows that bound the chunks themselves.

use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

/// Idle buffers kept per connection (2 MiB at the default 64 KiB chunk). In a steady stream
/// the application frees one for each the driver takes, so a few suffice.
const KEEP: usize = 32;
/// Room for a `STREAM_CHUNK` frame's header beside a whole chunk.
const HEADER_ROOM: usize = 64;

type Free = Mutex<Vec<Vec<u8>>>;

/// A connection's receive buffers; see the module doc.
#[derive(Debug)]
pub(crate) struct RecvPool {
    free: Arc<Free>,
    size: usize,
}

impl RecvPool {
    /// A pool of buffers for messages of up to `chunk_size` bytes of payload.
    pub(crate) fn new(chunk_size: usize) -> RecvPool {
        RecvPool {
            free: Arc::default(),
            size: chunk_size + HEADER_ROOM,
        }
    }

    /// `message`'s bytes in a buffer of the pool when it fills at least half of one (a whole
    /// chunk's frame does; a message the application keeps then holds at most twice its size,
    /// as a slice of tungstenite's buffer did); otherwise `message` itself.
    pub(crate) fn adopt(&self, message: Bytes) -> Bytes {
        if message.len() < self.size / 2 || message.len() > self.size {
            return message;
        }
        let reused = self.free.lock().ok().and_then(|mut f| f.pop());
        let mut buf = reused.unwrap_or_else(|| Vec::with_capacity(self.size));
        buf.clear();
        buf.extend_from_slice(&message);
        Bytes::from_owner(Pooled {
            buf,
            home: Arc::downgrade(&self.free),
        })
    }

    /// Idle buffers (for tests).
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.free.lock().map_or(0, |f| f.len())
    }
}

/// A buffer on loan from a [`RecvPool`]; it goes back on drop, unless the pool is gone or full.
struct Pooled {
    buf: Vec<u8>,
    home: Weak<Free>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(home) = self.home.upgrade()
            && let Ok(mut free) = home.lock()
            && free.len() < KEEP
        {
            free.push(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn message(n: usize, seed: u8) -> Bytes {
        Bytes::from(
            (0..n)
                .map(|i| (i as u8).wrapping_add(seed))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn an_adopted_message_keeps_its_bytes_and_its_buffer_comes_back() {
        let pool = RecvPool::new(64 * 1024);
        let m = message(64 * 1024 + 20, 1);
        let a = pool.adopt(m.clone());
        assert_eq!(a, m);
        // A slice (a chunk cut from the frame) keeps the buffer on loan.
        let chunk = a.slice(20..);
        drop(a);
        assert_eq!(pool.idle(), 0);
        assert_eq!(chunk, m.slice(20..));
        drop(chunk);
        assert_eq!(pool.idle(), 1);
        // The next message reuses it, with its own bytes.
        let m2 = message(40 * 1024, 7);
        assert!(m2.len() >= (64 * 1024 + HEADER_ROOM) / 2);
        let b = pool.adopt(m2.clone());
        assert_eq!(pool.idle(), 0);
        assert_eq!(b, m2);
    }

    #[test]
    fn small_and_oversized_messages_are_left_alone_and_idle_buffers_are_bounded() {
        let pool = RecvPool::new(64 * 1024);
        let size = 64 * 1024 + HEADER_ROOM;
        for n in [10, size / 2 - 1, size + 1] {
            let m = message(n, 3);
            let ptr = m.as_ptr();
            assert_eq!(pool.adopt(m).as_ptr(), ptr, "{n} bytes were copied");
        }
        let held: Vec<Bytes> = (0..KEEP + 10)
            .map(|i| pool.adopt(message(size / 2, i as u8)))
            .collect();
        drop(held);
        assert_eq!(pool.idle(), KEEP);
        // Buffers outliving their connection's pool are simply freed.
        let late = pool.adopt(message(size, 9));
        drop(pool);
        assert_eq!(late.len(), size);
    }
}
