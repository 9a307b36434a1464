//! Errors, one enum per layer. Each variant says what went wrong and what the caller can do.
//!
//! | layer | error | raised by |
//! | --- | --- | --- |
//! | wire | [`DecodeError`], [`EncodeError`] | [`crate::wire::Frame::decode`], [`crate::wire::Frame::encode`] |
//! | configuration | [`ConfigError`] | [`crate::config::TransportConfig`] |
//! | socket seam | [`crate::net::AddressError`], `std::io::Error` | [`crate::net`] |
//! | secure channel | [`ConnectError`] (with [`crate::secure::auth::AuthError`] inside) | connect, accept |
//! | session, public API | [`SendError`], [`ConnectionClosed`] | [`crate::transport::Connection`] |

use std::time::Duration;

use thiserror::Error;

pub use crate::core::CloseCause;
use crate::wire::ReasonCode;
pub use crate::wire::{DecodeError, EncodeError};

/// Which step of connection setup a timeout hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// The TCP or Unix connect (`connect_timeout`).
    Connect,
    /// The TLS handshake (`handshake_timeout`).
    Tls,
    /// The WebSocket upgrade (`handshake_timeout`).
    Upgrade,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Connect => "connect",
            Self::Tls => "TLS handshake",
            Self::Upgrade => "WebSocket upgrade",
        })
    }
}

/// Why a connection could not be set up. The message names the step and the reason; retry
/// for network failures and timeouts, fix keys or configuration for refusals.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The peer has no address to dial.
    #[error("no address to dial")]
    NoAddress,
    /// The transport was shut down (`Transport::shutdown`, or its last clone dropped).
    #[error("the transport is shut down")]
    ShutDown,
    /// `Transport::open` needs the peer's key ([`crate::transport::PeerInfo::with_key`]):
    /// the connection stands for that peer before any handshake tells who answers.
    #[error("the peer's key is not known; open needs PeerInfo::with_key")]
    KeyRequired,
    /// The socket could not be connected (refused, unreachable, no such path).
    #[error("cannot reach {addr}: {source}")]
    Dial {
        /// The address dialled.
        addr: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Binding the listener failed (address in use, permission, stale Unix socket).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A setup step did not finish in time.
    #[error("timeout: {stage} did not finish within {} ms", after.as_millis())]
    Timeout {
        /// The step.
        stage: Stage,
        /// The limit.
        after: Duration,
    },
    /// TLS failed: the peer does not speak TLS 1.3 (a plaintext peer?) or its handshake
    /// signature is invalid.
    #[error("TLS failure: {0}")]
    Tls(String),
    /// The listener closed the connection before TLS completed: it is shedding load (its
    /// pool of connections in setup is full), restarting, or not a TLS listener (a plaintext
    /// one). [`crate::transport::Transport::connect`] tries again twice before it reports this.
    #[error(
        "the listener closed the connection during the TLS handshake ({0}): it is busy, \
         restarting, or does not speak TLS"
    )]
    ClosedDuringTls(String),
    /// The WebSocket upgrade failed.
    #[error("WebSocket upgrade failed: {0}")]
    Upgrade(String),
    /// The peer does not negotiate the `clipsync.v1` subprotocol (not a ClipSync peer, or an
    /// incompatible version).
    #[error("the peer did not negotiate the clipsync.v1 subprotocol")]
    NoSubprotocol,
    /// The handshake was refused, by us (`by_peer == false`) or by the peer, for `reason`:
    /// unknown key, bad signature, handshake timeout, protocol error.
    #[error("{} {reason}: {detail}", if *by_peer { "refused by peer:" } else { "refused:" })]
    Refused {
        /// The reason code both sides see.
        reason: ReasonCode,
        /// Whether the peer refused.
        by_peer: bool,
        /// Details for logs.
        detail: String,
    },
    /// The connection ended during setup without a reason.
    #[error("connection ended during setup: {0}")]
    Closed(String),
    /// `allow_plaintext` with an address that leaves this machine: without TLS the channel
    /// binding is all zeros, so anyone on the path could relay one peer's authentication into
    /// another connection.
    #[error(
        "allow_plaintext is only for Unix sockets and loopback addresses, not {0}: without TLS \
         anyone on the path could relay the authentication"
    )]
    PlaintextNotLocal(String),
    /// A bug or resource failure on this side.
    #[error("internal error: {0}")]
    Internal(String),
}

impl SendError {
    /// Whether the receiver declined the stream because it already has the payload
    /// ([`ReasonCode::AlreadyHave`]): the peer has the content, nothing is missing there.
    pub fn already_had(&self) -> bool {
        matches!(
            self,
            Self::Stream {
                reason: ReasonCode::AlreadyHave,
                ..
            }
        )
    }
}

impl ConnectError {
    /// The reason code, for refusals.
    pub fn reason(&self) -> Option<ReasonCode> {
        match self {
            Self::Refused { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}

/// Why a send did not complete.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SendError {
    /// The payload is larger than the peer accepts in one message; nothing was sent and the
    /// connection is unaffected. Send it as a stream.
    #[error("message of {size} bytes exceeds the peer's limit of {max} bytes")]
    TooLarge {
        /// The payload size.
        size: usize,
        /// The peer's `max_message_size`.
        max: u32,
    },
    /// The content type is not 1–255 printable ASCII bytes. Nothing was queued; the
    /// connection is unaffected.
    #[error("invalid content type: {0}")]
    InvalidContentType(String),
    /// The send queue is full (only from `try_send`): retry later or use `send`, which waits.
    #[error("send queue full")]
    Full,
    /// The connection ended before the peer acknowledged the message: its delivery is
    /// unknown. It may or may not have arrived; the cause says why the connection ended.
    #[error("delivery unknown: {0}")]
    Unknown(CloseCause),
    /// The connection had already ended; the message was not sent.
    #[error("not sent: {0}")]
    Closed(CloseCause),
    /// The peer has no link now (`Peers::broadcast`, `Peer::try_send`); nothing was sent.
    #[error("the peer is not connected")]
    NotConnected,
    /// The receiver failed the stream (it was cancelled, refused, or did not verify); the
    /// connection is unaffected.
    #[error("stream failed at the receiver with {reason}: {detail}")]
    Stream {
        /// The receiver's reason code.
        reason: ReasonCode,
        /// Details.
        detail: String,
    },
    /// The metadata is longer than 1024 bytes. Nothing was queued; the connection is
    /// unaffected.
    #[error("invalid metadata: {0}")]
    InvalidMetadata(String),
    /// The peer does not take application metadata (it did not announce the METADATA
    /// capability); nothing was sent. Send without metadata, or put it in the payload.
    #[error("the peer does not accept metadata")]
    MetadataUnsupported,
    /// The payload needs a stream and the peer does not support streams.
    #[error("the peer does not support streams")]
    StreamsUnsupported,
    /// Reading the stream's source failed; the stream was aborted.
    #[error("reading the stream's source failed: {0}")]
    Source(String),
}

/// The connection has ended; no more messages will arrive. The cause says why.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("connection closed: {0}")]
pub struct ConnectionClosed(pub CloseCause);

/// A configuration that cannot be used. Nothing was started; fix the named key and retry.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value outside its allowed range: set `field` to a value within `allowed`.
    #[error("invalid configuration: {field} = {value} is out of range (allowed: {allowed})")]
    Invalid {
        /// The TOML key.
        field: &'static str,
        /// The value given.
        value: String,
        /// The allowed range, in words.
        allowed: String,
    },
    /// The TOML does not parse, has an unknown key or a value of the wrong type; the message
    /// names the key and the line.
    #[error("invalid configuration file: {message}")]
    Parse {
        /// The parser's message.
        message: String,
    },
    /// The file could not be read: check the path and permissions.
    #[error("cannot read configuration file {path}: {source}")]
    Io {
        /// The path given.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
}
