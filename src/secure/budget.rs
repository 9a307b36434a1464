//! A read budget for the unauthenticated phase.
//!
//! tokio-tungstenite 0.30 fixes its message-size limits at the upgrade and cannot lower them
//! for the handshake, so on its own it would buffer up to `max_frame_size` bytes (1 MiB) from
//! a peer that has proven nothing. [`Budgeted`] sits under the WebSocket and refuses to read
//! more than a fixed number of bytes until the handshake lifts the budget: an unauthenticated
//! peer can make us buffer at most [`PRE_AUTH_BUDGET`] bytes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes a peer may send before authentication completes: the WebSocket upgrade request
/// (a few hundred bytes; 8 KiB allowed) plus four handshake frames at the 16 KiB pre-auth cap
/// with their WebSocket headers.
pub const PRE_AUTH_BUDGET: usize = 8 * 1024 + 4 * (16 * 1024 + 14);

/// A stream whose reads stop with an error once its budget is spent, until lifted.
#[derive(Debug)]
pub struct Budgeted<S> {
    inner: S,
    budget: Arc<AtomicUsize>,
}

/// Lifts the budget of a [`Budgeted`] stream (after authentication).
#[derive(Clone, Debug)]
pub struct BudgetLifter(Arc<AtomicUsize>);

impl BudgetLifter {
    /// Removes the limit.
    pub fn lift(&self) {
        self.0.store(usize::MAX, Ordering::Relaxed);
    }
}

impl<S> Budgeted<S> {
    /// Wraps `inner` with a budget of `bytes`.
    pub fn new(inner: S, bytes: usize) -> (Self, BudgetLifter) {
        let budget = Arc::new(AtomicUsize::new(bytes));
        (
            Self {
                inner,
                budget: budget.clone(),
            },
            BudgetLifter(budget),
        )
    }
}

/// The error a read returns once the budget is spent.
pub fn is_budget_error(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::InvalidData && e.to_string().contains(BUDGET_MESSAGE)
}

const BUDGET_MESSAGE: &str = "pre-authentication read budget exhausted";

impl<S: AsyncRead + Unpin> AsyncRead for Budgeted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let budget = this.budget.load(Ordering::Relaxed);
        if budget == usize::MAX {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if budget == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                BUDGET_MESSAGE,
            )));
        }
        let want = buf.remaining().min(budget);
        // Read into an initialized window of at most `want` bytes (zeroing costs little and
        // only happens before authentication), then advance the caller's buffer.
        let (poll, n) = {
            let mut limited = ReadBuf::new(buf.initialize_unfilled_to(want));
            let poll = Pin::new(&mut this.inner).poll_read(cx, &mut limited);
            let n = limited.filled().len();
            (poll, n)
        };
        if let Poll::Ready(Ok(())) = poll {
            buf.advance(n);
            // Only this reader decrements, and lift() only raises the budget to MAX.
            let _ = this
                .budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    (b != usize::MAX).then(|| b.saturating_sub(n))
                });
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Budgeted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn reads_stop_at_the_budget_until_lifted() {
        let data = [1u8; 100];
        let (mut r, lifter) = Budgeted::new(&data[..], 30);
        let mut buf = [0u8; 64];
        assert_eq!(r.read(&mut buf).await.ok(), Some(30));
        let e = r.read(&mut buf).await.err();
        assert!(e.as_ref().is_some_and(is_budget_error), "{e:?}");
        lifter.lift();
        assert_eq!(r.read(&mut buf).await.ok(), Some(64));
    }
}
