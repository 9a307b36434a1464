//! The listener's pool of connections still in setup (TLS, upgrade, authentication): who gets
//! a place in it, and whom a newcomer may push out.
//!
//! Unauthenticated connections cost the listener little each but are free for anyone to open,
//! so they get their own pool, separate from the budget of authenticated sessions
//! (`max_connections`): a flood of idle sockets can fill this pool, never lock out a peer that
//! can authenticate, and never stop a session from resuming. The rules follow OpenSSH's
//! `MaxStartups start:rate:full` and `PerSourceMaxStartups`, with one addition: where OpenSSH
//! refuses, this pool first evicts a connection that is not going anywhere — a client sends
//! its TLS ClientHello with its first packet after connecting, so a socket silent for
//! [`SILENT_GRACE`] is idle, and an honest handshake takes a few round trips, so one in setup
//! for [`GRACE`] is stalling — so a legitimate peer still gets in while the pool is full of
//! idle sockets.
//!
//! The connection to evict ("a stale one") is the oldest that is silent — its setup task read
//! the socket and found not a byte — for [`SILENT_GRACE`], else the oldest in setup for
//! [`GRACE`]. One whose task has not read it yet is never taken for silent: under a flood that
//! reconnects thousands of times a second, a newcomer would otherwise be evicted before its
//! task had even looked at the ClientHello waiting in its socket. For a new connection from `source`
//! while `n` connections are in setup:
//! 1. if `source` already has `per_source` of them: evict a stale one of `source`, else refuse;
//! 2. if `n ≥ full`: evict a stale one, else refuse;
//! 3. if `n ≥ start`: with probability `rate/100 + (1 − rate/100)·(n − start)/(full − start)`
//!    (random early drop), evict a stale one, else refuse;
//! 4. otherwise admit.
//!
//! Pure: time and the random draw are arguments, so the simulator replays it. Beside it live
//! the two pieces the accept loop puts around each connection: [`FirstByte`], the socket
//! wrapper that reports what the connection has said ([`Hearing`]), and [`InSetup`], the
//! place in the pool that leaving setup frees.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How long a connection must have been in setup before a newcomer may evict it.
pub(crate) const GRACE: Duration = Duration::from_secs(1);

/// How long a connection that has sent nothing at all must be open before a newcomer may
/// evict it: no time. A client sends its TLS ClientHello right after connecting, so under a
/// flood the oldest silent socket is the flood's; and the one that is not, if any, is only
/// reached after every older silent socket was evicted before it. (With any grace, a flood
/// that reconnects as fast as it is refused keeps every silent socket younger than the grace
/// and turns the newcomer away: measured on loopback, a new peer then could not get in at all
/// within 10 s against 1,000 such sockets.)
pub(crate) const SILENT_GRACE: Duration = Duration::ZERO;

/// What a connection in setup has said so far, shared between its setup task (which reads
/// the socket) and the pool (which picks whom to evict).
#[derive(Clone, Debug, Default)]
pub(crate) struct Hearing(Arc<AtomicU8>);

impl Hearing {
    const UNHEARD: u8 = 0;
    const SILENT: u8 = 1;
    const SPOKE: u8 = 2;

    /// A read found no byte (before any arrived): the socket is silent, not merely unread.
    pub(crate) fn read_nothing(&self) {
        let _ = self.0.compare_exchange(
            Self::UNHEARD,
            Self::SILENT,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// A byte arrived.
    pub(crate) fn spoke(&self) {
        self.0.store(Self::SPOKE, Ordering::Relaxed);
    }

    pub(crate) fn has_spoken(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::SPOKE
    }

    /// Its task read the socket and found nothing yet. A connection whose task has not read
    /// it yet is not silent: its ClientHello may be waiting in the socket.
    fn is_silent(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::SILENT
    }
}

/// The pool's limits (from `TransportConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Connections in setup at which random early drop begins.
    pub start: u32,
    /// Drop probability at `start`, in percent.
    pub rate: u32,
    /// Most connections in setup.
    pub full: u32,
    /// Most connections in setup from one source address.
    pub per_source: u32,
}

/// What to do with a new connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission<T> {
    /// Let it in under `id`; first end the evicted connection, if any, with its handle.
    Admit { id: u64, evicted: Option<T> },
    /// Close it at once; the text says why (for the log).
    Refuse(&'static str),
}

struct Entry<T> {
    source: String,
    since: Instant,
    /// What the connection has said so far.
    hearing: Hearing,
    handle: T,
}

/// See the [module docs](self). `T` is what ends an evicted connection's setup.
pub(crate) struct Startups<T> {
    limits: Limits,
    next_id: u64,
    entries: BTreeMap<u64, Entry<T>>,
}

impl<T> Startups<T> {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            next_id: 0,
            entries: BTreeMap::new(),
        }
    }

    /// How many connections are in setup.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Decides on a new connection from `source` at `now`; `draw` is uniform in `[0, 1)`.
    /// `hearing` follows what it says; `handle` ends its setup if a later connection evicts
    /// it.
    pub(crate) fn admit(
        &mut self,
        source: &str,
        now: Instant,
        draw: f64,
        hearing: Hearing,
        handle: T,
    ) -> Admission<T> {
        let Limits {
            start,
            rate,
            full,
            per_source,
        } = self.limits;
        let from_source = self.entries.values().filter(|e| e.source == source).count();
        let n = self.entries.len() as u32;
        let evicted = if from_source >= per_source as usize {
            match self.evict(now, Some(source)) {
                Some(h) => Some(h),
                None => {
                    return Admission::Refuse("too many connections in setup from this address");
                }
            }
        } else if n >= full {
            match self.evict(now, None) {
                Some(h) => Some(h),
                None => return Admission::Refuse("too many connections in setup"),
            }
        } else if n >= start {
            let base = f64::from(rate.min(100)) / 100.0;
            let span = f64::from(full.saturating_sub(start).max(1));
            let p = base + (1.0 - base) * f64::from(n - start) / span;
            if draw < p {
                match self.evict(now, None) {
                    Some(h) => Some(h),
                    None => {
                        return Admission::Refuse("random early drop: many connections in setup");
                    }
                }
            } else {
                None
            }
        } else {
            None
        };
        let id = self.next_id;
        self.next_id += 1;
        self.entries.insert(
            id,
            Entry {
                source: source.to_string(),
                since: now,
                hearing,
                handle,
            },
        );
        Admission::Admit { id, evicted }
    }

    /// The connection `id` left setup (authenticated, failed or evicted).
    pub(crate) fn remove(&mut self, id: u64) {
        self.entries.remove(&id);
    }

    /// Removes a stale connection (of `source`, if given; see the [module docs](self)) and
    /// returns its handle. Ids grow with arrival, so the first match is the oldest.
    fn evict(&mut self, now: Instant, source: Option<&str>) -> Option<T> {
        let mut candidates = self
            .entries
            .iter()
            .filter(|(_, e)| source.is_none_or(|s| e.source == s));
        let silent = candidates
            .clone()
            .find(|(_, e)| e.hearing.is_silent() && now.duration_since(e.since) >= SILENT_GRACE);
        let id = silent
            .or_else(|| candidates.find(|(_, e)| now.duration_since(e.since) >= GRACE))
            .map(|(id, _)| *id)?;
        self.entries.remove(&id).map(|e| e.handle)
    }
}

/// The part of a printable peer address that identifies its source: the IP address of
/// `ip:port` or `[ip]:port`, else the whole text (a Unix socket's peers share one source).
pub(crate) fn source_of(peer_addr: &str) -> &str {
    match peer_addr.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) && !host.is_empty() => {
            host.trim_start_matches('[').trim_end_matches(']')
        }
        _ => peer_addr,
    }
}

/// A connection's place in the listener's pool of connections in setup; leaving setup (or
/// ending) frees it.
pub(crate) struct InSetup {
    pub(crate) startups: Arc<std::sync::Mutex<Startups<tokio::sync::oneshot::Sender<()>>>>,
    pub(crate) id: u64,
}

impl Drop for InSetup {
    fn drop(&mut self) {
        self.startups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(self.id);
    }
}

/// An accepted socket that tells the setup pool what it has heard: nothing yet, a read that
/// found nothing, or a first byte (for eviction and `first_byte_timeout`).
pub(crate) struct FirstByte {
    inner: crate::net::BoxStream,
    hearing: Hearing,
}

impl FirstByte {
    pub(crate) fn new(inner: crate::net::BoxStream) -> (Self, Hearing) {
        let hearing = Hearing::default();
        (
            Self {
                inner,
                hearing: hearing.clone(),
            },
            hearing,
        )
    }
}

impl tokio::io::AsyncRead for FirstByte {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.hearing.spoke();
        } else if r.is_pending() {
            self.hearing.read_nothing();
        }
        r
    }
}

impl tokio::io::AsyncWrite for FirstByte {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        start: 2,
        rate: 50,
        full: 4,
        per_source: 3,
    };

    /// Admits a connection that has already sent its first byte.
    fn admit(
        s: &mut Startups<u32>,
        source: &str,
        now: Instant,
        draw: f64,
        h: u32,
    ) -> Admission<u32> {
        let hearing = Hearing::default();
        hearing.spoke();
        s.admit(source, now, draw, hearing, h)
    }

    fn admitted(a: &Admission<u32>) -> bool {
        matches!(a, Admission::Admit { .. })
    }

    #[test]
    fn below_start_everyone_is_admitted() {
        let mut s = Startups::new(LIMITS);
        let t = Instant::now();
        assert!(admitted(&admit(&mut s, "a", t, 0.0, 1)));
        assert!(admitted(&admit(&mut s, "b", t, 0.0, 2)));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn random_early_drop_follows_the_draw_and_grows_to_full() {
        let mut s = Startups::new(LIMITS);
        let t = Instant::now();
        for (i, src) in ["a", "b"].iter().enumerate() {
            assert!(admitted(&admit(&mut s, src, t, 0.0, i as u32)));
        }
        // n = 2 = start: p = 0.5. A draw below refuses (nobody is past the grace), above admits.
        assert_eq!(
            admit(&mut s, "c", t, 0.49, 9),
            Admission::Refuse("random early drop: many connections in setup")
        );
        assert!(admitted(&admit(&mut s, "c", t, 0.5, 3)));
        // n = 3: p = 0.75.
        assert!(!admitted(&admit(&mut s, "d", t, 0.74, 9)));
        assert!(admitted(&admit(&mut s, "d", t, 0.76, 4)));
        // n = 4 = full: refused whatever the draw.
        assert!(!admitted(&admit(&mut s, "e", t, 0.999, 9)));
    }

    #[test]
    fn a_full_pool_evicts_its_oldest_connection_past_the_grace() {
        let mut s = Startups::new(LIMITS);
        let t = Instant::now();
        for (i, src) in ["a", "b", "c", "d"].iter().enumerate() {
            assert!(admitted(&admit(
                &mut s,
                src,
                t + Duration::from_millis(i as u64),
                0.99,
                i as u32
            )));
        }
        // Within the grace nobody can be evicted.
        assert!(!admitted(&admit(
            &mut s,
            "e",
            t + Duration::from_millis(500),
            0.99,
            9
        )));
        // Past it, the oldest ("a", handle 0) goes and the newcomer is in.
        match admit(&mut s, "e", t + GRACE + Duration::from_millis(1), 0.99, 5) {
            Admission::Admit { evicted, .. } => assert_eq!(evicted, Some(0)),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn one_source_cannot_take_more_than_its_share() {
        let mut s = Startups::new(Limits {
            full: 100,
            start: 100,
            ..LIMITS
        });
        let t = Instant::now();
        for i in 0..3 {
            assert!(admitted(&admit(&mut s, "flood", t, 0.0, i)));
        }
        assert_eq!(
            admit(&mut s, "flood", t, 0.0, 9),
            Admission::Refuse("too many connections in setup from this address")
        );
        // Another source is unaffected.
        assert!(admitted(&admit(&mut s, "peer", t, 0.0, 7)));
        // Once the flooder's sockets are past the grace, its own oldest makes room.
        match admit(&mut s, "flood", t + GRACE, 0.0, 8) {
            Admission::Admit { evicted, .. } => assert_eq!(evicted, Some(0)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn removed_connections_free_their_place() {
        let mut s = Startups::new(LIMITS);
        let t = Instant::now();
        let Admission::Admit { id, .. } = admit(&mut s, "a", t, 0.0, 1) else {
            panic!("refused")
        };
        s.remove(id);
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn sources_are_ip_addresses() {
        assert_eq!(source_of("127.0.0.1:5555"), "127.0.0.1");
        assert_eq!(source_of("[::1]:5555"), "::1");
        assert_eq!(source_of("unix"), "unix");
        assert_eq!(source_of(""), "");
    }

    #[test]
    fn a_silent_socket_is_evicted_before_a_talking_one() {
        let mut s = Startups::new(LIMITS);
        let t = Instant::now();
        let silent = Hearing::default();
        silent.read_nothing();
        assert!(admitted(&admit(&mut s, "a", t, 0.99, 0)));
        assert!(admitted(&s.admit("b", t, 0.99, silent.clone(), 1)));
        assert!(admitted(&admit(&mut s, "c", t, 0.99, 2)));
        assert!(admitted(&admit(&mut s, "d", t, 0.99, 3)));
        // Full. Within the grace: only the silent one may go, at once.
        match admit(&mut s, "e", t + SILENT_GRACE, 0.99, 4) {
            Admission::Admit { evicted, .. } => assert_eq!(evicted, Some(1)),
            other => panic!("{other:?}"),
        }
        // Now everyone has spoken and nobody is past the grace: refused.
        assert!(!admitted(&admit(&mut s, "f", t + SILENT_GRACE, 0.99, 9)));
    }
}
