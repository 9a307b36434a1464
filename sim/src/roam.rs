//! Roaming: a host whose network changes under a live connection (a laptop moving from one
//! Wi-Fi to another). Its open connections go half-open at both ends, with no FIN and no RST
//! (nothing of them passes any more, as when the old path is gone), while the connections it
//! opens from then on work at once (its new network).
//!
//! turmoil gives every host one fixed address, so the model works on connections instead: each
//! connection remembers the roaming count of both its ends when it was made, and a `roam`
//! fault raises the host's count. A connection whose end has roamed since reads nothing ever
//! again (`Pending`, as a half-open TCP read does) and takes writes until the socket would
//! hold 128 KiB unsent (`TCP_NOTSENT_LOWAT`, which ClipSync sets), then blocks them for good
//! (`Pending`), as a real socket does until its retransmissions time out, many minutes later. What differs from a real roam: the peer
//! still sees the same address on the new connection (ClipSync identifies peers by key and
//! session, never by address, so nothing depends on it).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use clipsync::net::BoxStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How often each host (by address) has roamed in this run.
pub type Roams = Arc<Mutex<BTreeMap<IpAddr, u64>>>;

thread_local! {
    /// This run's roaming counts (a run is one thread: turmoil runs its hosts on it).
    static ROAMS: RefCell<Option<Roams>> = const { RefCell::new(None) };
}

/// Starts a run: roaming on (`Some`, for scenarios with `roam` faults) or off.
pub fn start_run(roams: Option<Roams>) {
    ROAMS.with(|r| *r.borrow_mut() = roams);
}

/// The host at `ip` roams: its connections made before now go half-open.
pub fn roam(ip: IpAddr) {
    ROAMS.with(|r| {
        if let Some(roams) = &*r.borrow() {
            *lock(roams).entry(ip).or_default() += 1;
        }
    });
}

fn lock(r: &Roams) -> std::sync::MutexGuard<'_, BTreeMap<IpAddr, u64>> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// `stream` between `local` and `peer`, cut when either roams; unchanged when roaming is off.
pub fn wrap(stream: BoxStream, local: IpAddr, peer: IpAddr) -> BoxStream {
    let Some(roams) = ROAMS.with(|r| r.borrow().clone()) else {
        return stream;
    };
    let born = {
        let r = lock(&roams);
        [
            r.get(&local).copied().unwrap_or(0),
            r.get(&peer).copied().unwrap_or(0),
        ]
    };
    Box::new(RoamingStream {
        inner: stream,
        roams,
        ends: [local, peer],
        born,
        swallowed: 0,
    })
}

struct RoamingStream {
    inner: BoxStream,
    roams: Roams,
    ends: [IpAddr; 2],
    born: [u64; 2],
    /// Bytes written since the cut (they go nowhere).
    swallowed: usize,
}

/// What a cut connection's socket still takes before its writes block.
const SOCKET_BUFFER: usize = clipsync::net::TCP_NOTSENT_LOWAT as usize;

impl RoamingStream {
    /// Whether an end has roamed since the connection was made.
    fn cut(&self) -> bool {
        let r = lock(&self.roams);
        self.ends
            .iter()
            .zip(self.born)
            .any(|(ip, born)| r.get(ip).copied().unwrap_or(0) != born)
    }
}

impl AsyncRead for RoamingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.cut() {
            // Half-open: nothing will ever arrive; only the reader's own timers end this.
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for RoamingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.cut() {
            let room = SOCKET_BUFFER - self.swallowed;
            if room == 0 {
                // Full, and nothing will ever drain it: only the writer's own timeout ends this.
                return Poll::Pending;
            }
            let n = room.min(buf.len());
            self.swallowed += n;
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.cut() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.cut() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
