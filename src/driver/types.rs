//! What the application sees of a connection: [`Message`], [`Incoming`], [`ConnectionState`],
//! [`Health`].

use std::time::Duration;

use bytes::Bytes;

use crate::core::CloseCause;

/// One application message: bytes and what they are.
///
/// ```
/// use clipsync::transport::Message;
/// let text = Message::text("copied text");
/// assert_eq!(text.content_type, "text/plain; charset=utf-8");
/// let png = Message::new("image/png", vec![0x89, b'P', b'N', b'G'])
///     .with_metadata(&b"clip=7"[..]);
/// assert_eq!(png.payload.len(), 4);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// A MIME type such as `text/plain; charset=utf-8` or `image/png` (1–255 printable
    /// ASCII bytes).
    pub content_type: String,
    /// Application metadata the transport carries untouched beside the payload (for example
    /// an origin, a clip id and a timestamp): at most 1024 bytes, empty for none. It counts
    /// against the peer's message size limit with a 2-byte length (PROTOCOL.md §5.1).
    pub metadata: Bytes,
    /// The payload.
    pub payload: Bytes,
}

impl Message {
    /// A message of `content_type` carrying `payload`.
    pub fn new(content_type: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            content_type: content_type.into(),
            metadata: Bytes::new(),
            payload: payload.into(),
        }
    }

    /// The same message carrying application `metadata` (at most 1024 bytes; a longer one
    /// fails the send with [`crate::error::SendError::InvalidMetadata`]).
    ///
    /// ```
    /// use clipsync::transport::Message;
    /// let m = Message::text("hello").with_metadata(&b"origin=laptop;clip=7"[..]);
    /// assert_eq!(&m.metadata[..], b"origin=laptop;clip=7");
    /// assert_eq!(&m.payload[..], b"hello");
    /// ```
    pub fn with_metadata(mut self, metadata: impl Into<Bytes>) -> Self {
        self.metadata = metadata.into();
        self
    }

    /// A UTF-8 text message (`text/plain; charset=utf-8`).
    pub fn text(text: impl Into<String>) -> Self {
        Self::new("text/plain; charset=utf-8", Bytes::from(text.into()))
    }
}

/// What a sender says about a stream before its bytes ([`StreamSpec::new`], then the
/// builders): content type, and what the application already knows. Used by
/// `ConnectionSender::open_stream_with` and `Peer::open_stream_with`.
///
/// ```
/// use clipsync::transport::StreamSpec;
/// let png = vec![0u8; 4096];
/// let spec = StreamSpec::new("image/png")
///     .len(png.len() as u64)
///     .hash(*blake3::hash(&png).as_bytes()) // an offer: the peer may decline it unsent
///     .metadata(&b"origin=laptop;clip=42"[..]);
/// assert_eq!(spec.total_len, Some(4096));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamSpec {
    /// The content type (1–255 printable ASCII bytes).
    pub content_type: String,
    /// The payload's length, if known: the receiver sees it, and the bytes must match it.
    pub total_len: Option<u64>,
    /// The payload's BLAKE3, if known in advance: the receiver sees it before any byte, and
    /// (when both sides set OFFERS) no byte flows until it accepts, so it can decline a
    /// payload it already has (`already have`, 20). The bytes must match it.
    pub hash: Option<[u8; 32]>,
    /// Application metadata, at most 1024 bytes (empty: none).
    pub metadata: Bytes,
}

impl StreamSpec {
    /// A stream of `content_type`, nothing else known.
    pub fn new(content_type: impl Into<String>) -> Self {
        Self {
            content_type: content_type.into(),
            total_len: None,
            hash: None,
            metadata: Bytes::new(),
        }
    }

    /// Announces the payload's length.
    pub fn len(mut self, total_len: u64) -> Self {
        self.total_len = Some(total_len);
        self
    }

    /// Announces the payload's BLAKE3 (32-byte output). The stream becomes an offer
    /// (PROTOCOL.md §5.2), and the sender trusts the hash: it does not hash the bytes again,
    /// and a payload that does not match fails at the receiver with `stream integrity` (14).
    pub fn hash(mut self, hash: [u8; 32]) -> Self {
        self.hash = Some(hash);
        self
    }

    /// Attaches application metadata (at most 1024 bytes).
    pub fn metadata(mut self, metadata: impl Into<Bytes>) -> Self {
        self.metadata = metadata.into();
        self
    }
}

/// Where a connection stands. Watch it with `Connection::state`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Not connected yet (a connection from `Transport::open`): dialling the peer, with
    /// backoff between attempts. Sends queue meanwhile.
    Connecting,
    /// Authenticated; messages flow.
    Connected,
    /// Still up, but a heartbeat went unanswered for an interval or the round-trip time is
    /// above `degraded_rtt`: expect delays; the idle timeout may follow.
    Degraded,
    /// The connection broke; the session waits for a new one (the dialer redials with
    /// backoff, the listener waits for it). Sends queue meanwhile.
    Reconnecting,
    /// The dialer gave up after `max_reconnect_attempts` (for a connection from
    /// `Transport::open`, also before the first connection); the session ends.
    Offline,
    /// Ended, for this cause. Final.
    Closed(CloseCause),
}

/// A connection's measured health. Watch it with `Connection::health`.
///
/// ```no_run
/// # async fn demo(conn: clipsync::transport::Connection) {
/// let mut health = conn.health();
/// while health.changed().await.is_ok() {
///     let h = *health.borrow();
///     println!("rtt {:?} degraded {} reconnects {}", h.rtt, h.degraded, h.reconnects);
/// }
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Smoothed round-trip time of `PING`/`PONG`, once measured.
    pub rtt: Option<Duration>,
    /// Whether the connection is degraded (see [`ConnectionState::Degraded`]).
    pub degraded: bool,
    /// New connections the session has taken after its first one (resumed or not).
    pub reconnects: u32,
    /// Of those, the ones on which the peer had lost the session (it restarted, or the session
    /// expired or ended there): a fresh session replaced it, and sends of the old one settled
    /// (those on the wire as of unknown fate). Anything sent before may be missing at the peer.
    pub sessions_lost: u32,
    /// Payload bytes sent again because of resumes: replayed messages and stream data beyond
    /// the receiver's offset. Compare with the windows: a resume retransmits at most what was
    /// in flight.
    pub retransmitted_bytes: u64,
    /// While (re)connecting: failed dial attempts since the connection was lost (or since
    /// `Transport::open`); 0 otherwise.
    pub dial_failures: u32,
    /// While (re)connecting: when the next dial attempt starts (in `tokio::time`); `None`
    /// while connected or while an attempt is under way.
    pub next_dial_at: Option<tokio::time::Instant>,
}

/// The cause a closed connection reports (or a loss, if the task ended without one).
pub(crate) fn cause_of(state: &tokio::sync::watch::Receiver<ConnectionState>) -> CloseCause {
    match &*state.borrow() {
        ConnectionState::Closed(c) => c.clone(),
        _ => CloseCause::Lost("connection task ended".into()),
    }
}
