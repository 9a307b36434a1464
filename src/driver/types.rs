//! What the application sees of a connection: [`Message`], [`Incoming`], [`ConnectionState`],
//! [`Health`].

use std::time::Duration;

use bytes::Bytes;

use crate::core::CloseCause;

/// One application message: bytes and what they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// A MIME type such as `text/plain; charset=utf-8` or `image/png` (1–255 printable
    /// ASCII bytes).
    pub content_type: String,
    /// The payload.
    pub payload: Bytes,
}

impl Message {
    /// A message of `content_type` carrying `payload`.
    pub fn new(content_type: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            content_type: content_type.into(),
            payload: payload.into(),
        }
    }

    /// A UTF-8 text message (`text/plain; charset=utf-8`).
    pub fn text(text: impl Into<String>) -> Self {
        Self::new("text/plain; charset=utf-8", Bytes::from(text.into()))
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
