//! The link model: bandwidth, a bottleneck queue and packet loss as TCP shows them to the
//! application, in the socket seam (turmoil moves every write as one message, with latency but
//! without bandwidth or loss).
//!
//! Each simulated TCP connection's write half goes through a [`ShapedStream`]: what the
//! application writes enters a queue and a pump task hands it to turmoil's socket when the
//! link would have finished sending it, so a stream fills the queue like a real link and a
//! message written behind it waits for what is ahead of it.
//!
//! - **Bandwidth** (`[link] bandwidth_mbit`): one transmitter per direction between two hosts,
//!   shared by every connection of that direction (a host's egress to one peer, as a veth with
//!   a `tbf` qdisc has). A write of `n` bytes takes `n × 8 / bandwidth` of the transmitter's
//!   time, in the order the writes reached it.
//! - **Queue** (`[link] queue_ms`): the bottleneck's queue, as time at that bandwidth (`tbf`'s
//!   `latency`), plus the socket's own unsent bytes (`TCP_NOTSENT_LOWAT`, 128 KiB, which
//!   ClipSync sets on real TCP sockets). A write that finds the queue full waits (`Pending`), as
//!   a write to a full socket buffer does.
//! - **Loss** (`[link] loss`): each 1448-byte segment is lost with this probability; TCP
//!   repairs it and the application sees only a pause of the byte stream, never a gap,
//!   reordering or corruption. The pause is one round trip when at least three segments follow
//!   the lost one (fast retransmit on duplicate ACKs; with RACK a lost retransmission costs one
//!   more round trip; the sender goes on sending meanwhile, so only the reading waits), and a
//!   retransmission timeout otherwise (a tail loss: the sender waits too), doubled for each
//!   loss of the same segment again (exponential backoff). Round trip: twice the link's
//!   largest one-way latency, at least 1 ms; RTO: 200 ms (Linux's minimum) plus that round
//!   trip, at most 120 s.
//!
//! What it leaves out (scenarios/README.md, "The link model"): congestion control (the rate
//! after a loss stays the link's, where TCP halves its window), loss of ACKs, and the peer's
//! receive window beyond turmoil's own flow control.
//!
//! Every draw comes from an RNG seeded from the root seed, the host and its incarnation; the
//! pump's time is `tokio::time`, simulated.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

/// A TCP segment's payload on a 1500-byte Ethernet link with timestamps.
pub const MSS: usize = 1448;
/// The socket's unsent bytes that the real transport allows (`TCP_NOTSENT_LOWAT`).
const SOCKET_BUFFER: usize = clipsync::net::TCP_NOTSENT_LOWAT as usize;
/// Linux's smallest retransmission timeout.
const RTO_MIN: Duration = Duration::from_millis(200);
/// Linux's largest retransmission timeout.
const RTO_MAX: Duration = Duration::from_secs(120);

/// The link's properties, from the scenario's `[link]` table.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkModel {
    /// Bits per second each way; `None`: unlimited (only loss is modelled).
    pub bandwidth_bps: Option<f64>,
    /// The bottleneck queue, as time at that bandwidth.
    pub queue: Duration,
    /// Probability that a segment is lost.
    pub loss: f64,
    /// The link's largest one-way latency (the round trip and RTO derive from it).
    pub max_latency: Duration,
}

impl LinkModel {
    /// Whether the model changes anything (without it, streams go to turmoil directly).
    pub fn is_active(&self) -> bool {
        self.bandwidth_bps.is_some() || self.loss > 0.0
    }

    /// One round trip, for fast-retransmit repair.
    fn round_trip(&self) -> Duration {
        (self.max_latency * 2).max(Duration::from_millis(1))
    }

    /// The bottleneck queue in bytes.
    fn queue_bytes(&self) -> f64 {
        self.bandwidth_bps
            .map_or(0.0, |bps| bps / 8.0 * self.queue.as_secs_f64())
    }

    /// How many bytes a connection may have queued before its writes wait.
    fn capacity(&self) -> usize {
        self.queue_bytes() as usize + SOCKET_BUFFER
    }

    /// How long `bytes` take to leave at the link's bandwidth.
    fn transmit(&self, bytes: usize) -> Duration {
        self.bandwidth_bps.map_or(Duration::ZERO, |bps| {
            Duration::from_secs_f64(bytes as f64 * 8.0 / bps)
        })
    }
}

/// One host incarnation's link model: its egress transmitters, one per peer address, and the
/// loss RNG.
#[derive(Debug)]
pub struct Shaper {
    model: LinkModel,
    state: Mutex<ShaperState>,
}

#[derive(Debug)]
struct ShaperState {
    /// When each peer's transmitter is free again.
    free_at: BTreeMap<IpAddr, Instant>,
    rng: ChaCha20Rng,
}

impl Shaper {
    /// A shaper for one host incarnation, its RNG from `seed` (derived from the root seed).
    pub fn new(model: LinkModel, seed: [u8; 32]) -> Self {
        Self {
            model,
            state: Mutex::new(ShaperState {
                free_at: BTreeMap::new(),
                rng: ChaCha20Rng::from_seed(seed),
            }),
        }
    }

    /// Wraps a connected turmoil stream to `peer`; spawns its pump on the current host.
    pub fn wrap(self: &Arc<Self>, stream: turmoil::net::TcpStream, peer: IpAddr) -> ShapedStream {
        let (read, write) = stream.into_split();
        let egress = Arc::new(Mutex::new(Egress::default()));
        tokio::spawn(pump(self.clone(), peer, egress.clone(), write));
        ShapedStream {
            read,
            egress,
            capacity: self.model.capacity(),
        }
    }

    /// Schedules `len` bytes on `peer`'s transmitter, `behind` more bytes queued after them:
    /// when they will have left (the transmitter's time, stalled by retransmission timeouts)
    /// and how much later the far end can read them (fast-retransmit repairs, which delay the
    /// byte stream but not the transmitter: SACK keeps new data flowing meanwhile).
    /// `back_to_back`: they were queued before the transmitter finished what it sent before,
    /// so they start exactly then (the pump wakes on the simulator's tick, later).
    fn schedule(
        &self,
        peer: IpAddr,
        len: usize,
        behind: usize,
        back_to_back: bool,
    ) -> (Instant, Duration) {
        let m = &self.model;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let free = st.free_at.get(&peer).copied().unwrap_or(now);
        let start = if back_to_back { free } else { free.max(now) };
        let (mut timeouts, mut repairs) = (Duration::ZERO, Duration::ZERO);
        if m.loss > 0.0 {
            let segments = len.div_ceil(MSS);
            for i in 0..segments {
                if !lost(&mut st.rng, m.loss) {
                    continue;
                }
                let after = (segments - i - 1) * MSS + behind;
                if after >= 3 * MSS {
                    // Fast retransmit; each lost retransmission one more round trip (RACK).
                    repairs += m.round_trip();
                    while lost(&mut st.rng, m.loss) {
                        repairs += m.round_trip();
                    }
                } else {
                    let mut rto = (RTO_MIN + m.round_trip()).min(RTO_MAX);
                    timeouts += rto;
                    while lost(&mut st.rng, m.loss) {
                        rto = (rto * 2).min(RTO_MAX);
                        timeouts += rto;
                    }
                }
            }
        }
        let sent = start + m.transmit(len) + timeouts;
        st.free_at.insert(peer, sent);
        (sent, repairs)
    }
}

fn lost(rng: &mut ChaCha20Rng, p: f64) -> bool {
    let unit = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    unit < p
}

/// What the application wrote and the pump has not handed to turmoil yet.
#[derive(Debug, Default)]
struct Egress {
    queue: VecDeque<Bytes>,
    queued: usize,
    /// The application shut its write half down (or dropped the stream): send what is
    /// queued, then FIN.
    closing: bool,
    /// The socket failed under the pump; every later write gets this.
    error: Option<io::ErrorKind>,
    writer: Option<Waker>,
    pump: Option<Waker>,
}

/// A turmoil TCP stream behind the link model (see the module docs).
pub struct ShapedStream {
    read: turmoil::net::tcp::OwnedReadHalf,
    egress: Arc<Mutex<Egress>>,
    capacity: usize,
}

impl std::fmt::Debug for ShapedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShapedStream")
    }
}

fn lock(egress: &Mutex<Egress>) -> std::sync::MutexGuard<'_, Egress> {
    egress.lock().unwrap_or_else(|p| p.into_inner())
}

/// Hands the queue to turmoil, each write when the transmitter has sent it.
async fn pump(
    shaper: Arc<Shaper>,
    peer: IpAddr,
    egress: Arc<Mutex<Egress>>,
    mut write: turmoil::net::tcp::OwnedWriteHalf,
) {
    let mut last_readable = Instant::now();
    loop {
        let mut waited = false;
        let next = std::future::poll_fn(|cx| {
            let mut e = lock(&egress);
            if let Some(front) = e.queue.front() {
                Poll::Ready(Some((front.clone(), e.queued - front.len())))
            } else if e.closing || e.error.is_some() {
                Poll::Ready(None)
            } else {
                e.pump = Some(cx.waker().clone());
                waited = true;
                Poll::Pending
            }
        })
        .await;
        let Some((chunk, behind)) = next else {
            // Dropping the write half sends the FIN after everything written.
            return;
        };
        let (sent, repairs) = shaper.schedule(peer, chunk.len(), behind, !waited);
        // The byte stream stays in order: nothing is readable before what is ahead of it.
        let readable = (sent + repairs).max(last_readable);
        last_readable = readable;
        if readable > Instant::now() {
            tokio::time::sleep_until(readable).await;
        }
        let result = write.write_all(&chunk).await;
        let mut e = lock(&egress);
        match result {
            Ok(()) => {
                e.queue.pop_front();
                e.queued -= chunk.len();
            }
            Err(err) => {
                e.error = Some(err.kind());
                e.queue.clear();
                e.queued = 0;
            }
        }
        if let Some(w) = e.writer.take() {
            w.wake();
        }
    }
}

impl AsyncRead for ShapedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for ShapedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let mut e = lock(&this.egress);
        if let Some(kind) = e.error {
            return Poll::Ready(Err(kind.into()));
        }
        if e.closing {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let room = this.capacity.saturating_sub(e.queued);
        if room == 0 {
            e.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(buf.len());
        e.queue.push_back(Bytes::copy_from_slice(&buf[..n]));
        e.queued += n;
        if let Some(p) = e.pump.take() {
            p.wake();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // As on a real socket: written is on its way; nothing waits for the wire.
        match lock(&self.egress).error {
            Some(kind) => Poll::Ready(Err(kind.into())),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        close(&self.egress);
        Poll::Ready(Ok(()))
    }
}

fn close(egress: &Mutex<Egress>) {
    let mut e = lock(egress);
    e.closing = true;
    if let Some(p) = e.pump.take() {
        p.wake();
    }
}

impl Drop for ShapedStream {
    fn drop(&mut self) {
        // A closed socket still sends what it holds, then FIN (unless unread data makes the
        // read half's drop reset the connection, as on a real socket).
        close(&self.egress);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_the_queue_at_the_bandwidth_plus_the_socket_buffer() {
        let m = LinkModel {
            bandwidth_bps: Some(10e6),
            queue: Duration::from_millis(400),
            loss: 0.0,
            max_latency: Duration::ZERO,
        };
        assert_eq!(m.capacity(), 500_000 + SOCKET_BUFFER);
        assert_eq!(m.transmit(1_250_000), Duration::from_secs(1));
    }

    #[test]
    fn loss_draws_match_the_probability() {
        let mut rng = ChaCha20Rng::from_seed([7; 32]);
        let n = 100_000;
        let hits = (0..n).filter(|_| lost(&mut rng, 0.05)).count();
        assert!((4_500..5_500).contains(&hits), "{hits} of {n}");
    }
}
