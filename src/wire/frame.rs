//! Frame types of PROTOCOL.md §2–§6; [`super::codec`] encodes and decodes them.
//!
//! Every frame is one WebSocket binary message: an 8-byte header (version, type, flags,
//! body length) and a body whose layout depends on the type. All integers are big-endian.
//! Payload fields are [`Bytes`] slices of the received message (zero-copy).

use bytes::Bytes;

use super::ReasonCode;

/// The only protocol version this build speaks (subprotocol `clipsync.v1`).
pub const PROTOCOL_VERSION: u8 = 1;
/// The WebSocket subprotocol that negotiates [`PROTOCOL_VERSION`].
pub const SUBPROTOCOL: &str = "clipsync.v1";
/// Length of the fixed frame header.
pub const HEADER_LEN: usize = 8;
/// Header flag valid on every frame type: a receiver that does not know the type skips the
/// frame instead of closing the connection (PROTOCOL.md §10).
pub const FLAG_IGNORABLE: u16 = 0x8000;
/// `STREAM_OPEN` flag: the `total_len` field is meaningful.
pub const FLAG_LENGTH_KNOWN: u16 = 0x0001;
/// `STREAM_OPEN` flag: the `hash` field is meaningful.
pub const FLAG_HASH_KNOWN: u16 = 0x0002;
/// `MESSAGE` and `STREAM_OPEN` flag: a `metadata` field follows the content type (§5.1).
/// Legal only when both sides set [`CAP_METADATA`].
pub const FLAG_METADATA: u16 = 0x0004;
/// `STREAM_OPEN` flag: the stream is an offer; its sender sends no chunk and no `STREAM_END`
/// until the receiver accepts it with a `CREDIT` (§5.2). Legal only when both sides set
/// [`CAP_OFFERS`].
pub const FLAG_OFFER: u16 = 0x0008;
/// Longest application metadata on a `MESSAGE` or `STREAM_OPEN`, in bytes.
pub const MAX_METADATA_LEN: usize = 1024;
/// Longest reason text in `AUTH_RESULT`, `STREAM_ABORT` and `GOAWAY`, in bytes of UTF-8.
pub const MAX_TEXT_LEN: usize = 1024;
/// Longest content type, in bytes (its length travels in one byte).
pub const MAX_CONTENT_TYPE_LEN: usize = 255;
/// Longest SSH public key blob in `HELLO` (an RSA-16384 key is about 2 KiB). With
/// [`MAX_EXTENSIONS`] full extensions the largest `HELLO` still fits the 16 KiB pre-auth cap.
pub const MAX_KEY_LEN: usize = 4096;
/// Longest SSHSIG blob in `AUTH`.
pub const MAX_SIGNATURE_LEN: usize = 8192;
/// Most extensions in one `HELLO`.
pub const MAX_EXTENSIONS: usize = 8;
/// Longest data of one `HELLO` extension.
pub const MAX_EXTENSION_LEN: usize = 1024;
/// Capability bit: the peer supports streams (§5).
pub const CAP_STREAMS: u32 = 1 << 0;
/// Capability bit: the peer keeps sessions for resumption (§4).
pub const CAP_RESUME: u32 = 1 << 1;
/// Capability bit: the peer understands application metadata on `MESSAGE` and `STREAM_OPEN`
/// ([`FLAG_METADATA`]).
pub const CAP_METADATA: u32 = 1 << 2;
/// Capability bit: the peer understands stream offers ([`FLAG_OFFER`]) and the reason
/// `already have` (20).
pub const CAP_OFFERS: u32 = 1 << 3;

/// A frame's type byte (PROTOCOL.md §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum FrameType {
    /// 0x01, handshake.
    Hello,
    /// 0x02, handshake.
    Auth,
    /// 0x03, handshake.
    AuthResult,
    /// 0x10, session.
    Resume,
    /// 0x11, session.
    Resumed,
    /// 0x12, session.
    SessionLost,
    /// 0x20, data.
    Message,
    /// 0x21, data.
    StreamOpen,
    /// 0x22, data.
    StreamChunk,
    /// 0x23, data.
    StreamEnd,
    /// 0x24, data.
    StreamAbort,
    /// 0x25, data.
    StreamResult,
    /// 0x30, flow and health.
    Ack,
    /// 0x31, flow and health.
    Credit,
    /// 0x32, flow and health.
    Ping,
    /// 0x33, flow and health.
    Pong,
    /// 0x34, flow and health.
    GoAway,
}

impl FrameType {
    /// Every frame type, in wire order.
    pub const ALL: [FrameType; 17] = [
        Self::Hello,
        Self::Auth,
        Self::AuthResult,
        Self::Resume,
        Self::Resumed,
        Self::SessionLost,
        Self::Message,
        Self::StreamOpen,
        Self::StreamChunk,
        Self::StreamEnd,
        Self::StreamAbort,
        Self::StreamResult,
        Self::Ack,
        Self::Credit,
        Self::Ping,
        Self::Pong,
        Self::GoAway,
    ];

    /// The type byte.
    pub fn byte(self) -> u8 {
        match self {
            Self::Hello => 0x01,
            Self::Auth => 0x02,
            Self::AuthResult => 0x03,
            Self::Resume => 0x10,
            Self::Resumed => 0x11,
            Self::SessionLost => 0x12,
            Self::Message => 0x20,
            Self::StreamOpen => 0x21,
            Self::StreamChunk => 0x22,
            Self::StreamEnd => 0x23,
            Self::StreamAbort => 0x24,
            Self::StreamResult => 0x25,
            Self::Ack => 0x30,
            Self::Credit => 0x31,
            Self::Ping => 0x32,
            Self::Pong => 0x33,
            Self::GoAway => 0x34,
        }
    }

    /// The type for a byte, if this build knows it.
    pub fn from_byte(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.byte() == b)
    }

    /// The frame's name as PROTOCOL.md writes it (`HELLO`, `STREAM_CHUNK`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::Hello => "HELLO",
            Self::Auth => "AUTH",
            Self::AuthResult => "AUTH_RESULT",
            Self::Resume => "RESUME",
            Self::Resumed => "RESUMED",
            Self::SessionLost => "SESSION_LOST",
            Self::Message => "MESSAGE",
            Self::StreamOpen => "STREAM_OPEN",
            Self::StreamChunk => "STREAM_CHUNK",
            Self::StreamEnd => "STREAM_END",
            Self::StreamAbort => "STREAM_ABORT",
            Self::StreamResult => "STREAM_RESULT",
            Self::Ack => "ACK",
            Self::Credit => "CREDIT",
            Self::Ping => "PING",
            Self::Pong => "PONG",
            Self::GoAway => "GOAWAY",
        }
    }

    /// Handshake frames are the only ones accepted before authentication completes
    /// (besides `GOAWAY`, which may always explain a close).
    pub fn is_handshake(self) -> bool {
        matches!(self, Self::Hello | Self::Auth | Self::AuthResult)
    }

    /// Header flag bits defined for this type (besides [`FLAG_IGNORABLE`], which is never
    /// set on a type this build knows).
    pub(super) fn allowed_flags(self) -> u16 {
        match self {
            Self::Message => FLAG_METADATA,
            Self::StreamOpen => FLAG_LENGTH_KNOWN | FLAG_HASH_KNOWN | FLAG_METADATA | FLAG_OFFER,
            _ => 0,
        }
    }
}

impl std::fmt::Display for FrameType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which end of the TCP connection a peer is: part of the signed transcript (§3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// 0: the peer that dialled.
    Dialer,
    /// 1: the peer that accepted.
    Listener,
}

impl Role {
    /// The role byte.
    pub fn byte(self) -> u8 {
        match self {
            Self::Dialer => 0,
            Self::Listener => 1,
        }
    }
}

/// A session identifier (16 bytes); all zero means "no session" in `RESUME`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    /// The all-zero id: "start a new session".
    pub const NONE: SessionId = SessionId([0; 16]);

    /// Whether this is [`SessionId::NONE`].
    pub fn is_none(&self) -> bool {
        *self == Self::NONE
    }
}

/// The limits and timers a peer announces in `HELLO` and enforces on what it receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerLimits {
    /// Largest frame (header included) the announcer accepts after authentication.
    pub max_frame_size: u32,
    /// Largest `MESSAGE` payload the announcer accepts; larger payloads go as streams.
    pub max_message_size: u32,
    /// Initial per-stream credit, in bytes, the announcer grants to each stream it receives.
    pub stream_window: u32,
    /// Initial connection-wide credit, in bytes of stream data, the announcer grants.
    pub connection_window: u32,
    /// Most streams the announcer accepts open at once.
    pub max_streams: u16,
    /// How often the announcer pings when idle, in milliseconds.
    pub heartbeat_interval_ms: u32,
    /// How long the announcer waits in silence before closing with idle timeout, in ms.
    pub idle_timeout_ms: u32,
}

/// An opaque `HELLO` extension (§10): unknown kinds are ignored.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Extension {
    /// Extension kind.
    pub kind: u16,
    /// Extension data, at most [`MAX_EXTENSION_LEN`] bytes.
    pub data: Bytes,
}

/// `HELLO` (0x01): the first frame each side sends after the WebSocket upgrade (§3.1).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Hello {
    /// The highest protocol version the sender speaks.
    pub protocol_version: u8,
    /// The sender's role.
    pub role: Role,
    /// 32 fresh random bytes.
    pub nonce: [u8; 32],
    /// Capability bits ([`CAP_STREAMS`], [`CAP_RESUME`]; unknown bits are ignored).
    pub capabilities: u32,
    /// What the sender enforces.
    pub limits: PeerLimits,
    /// The sender's SSH public key in wire encoding (RFC 4253 §6.6).
    pub public_key: Bytes,
    /// Extensions, at most [`MAX_EXTENSIONS`].
    pub extensions: Vec<Extension>,
}

/// `AUTH` (0x02): the sender's SSHSIG signature over the transcript (§3.2).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Auth {
    /// The binary SSHSIG blob (OpenSSH `PROTOCOL.sshsig`), not armored.
    pub signature: Bytes,
}

/// `AUTH_RESULT` (0x03): whether the sender accepted the peer's proof (§3.3).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AuthResult {
    /// [`ReasonCode::Normal`] to accept; otherwise why not.
    pub reason: ReasonCode,
    /// Human-readable detail, at most [`MAX_TEXT_LEN`] bytes.
    pub text: String,
}

/// `RESUME` (0x10): the dialer asks to resume a session, or to start one (§4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Resume {
    /// The session to resume, or [`SessionId::NONE`].
    pub session: SessionId,
    /// The highest sequence number the dialer received in order in that session.
    pub last_received: u64,
}

/// `RESUMED` (0x11): the listener resumed (or started) the session (§4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Resumed {
    /// The session now in force (never [`SessionId::NONE`]).
    pub session: SessionId,
    /// The highest sequence number the listener received in order in that session.
    pub last_received: u64,
}

/// `SESSION_LOST` (0x12): the session could not be resumed; a new one starts (§4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionLost {
    /// The session the dialer asked for.
    pub old_session: SessionId,
    /// The fresh session that replaces it (never [`SessionId::NONE`]).
    pub new_session: SessionId,
    /// Why: session unknown, session expired or replay overflow.
    pub reason: ReasonCode,
}

/// `MESSAGE` (0x20): one whole application message (§5.1).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MessageFrame {
    /// Sequence number, from 1, shared with `STREAM_OPEN`.
    pub seq: u64,
    /// Content type, 1 to 255 bytes of printable ASCII.
    pub content_type: String,
    /// Application metadata (flag `METADATA`), at most [`MAX_METADATA_LEN`] bytes; empty
    /// when absent (the encoder sets the flag only for non-empty metadata).
    pub metadata: Bytes,
    /// The payload: the rest of the frame.
    pub payload: Bytes,
}

/// `STREAM_OPEN` (0x21): a stream begins (§5.2).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamOpen {
    /// Sequence number, shared with `MESSAGE`.
    pub seq: u64,
    /// The sender's stream id, from 1.
    pub stream_id: u64,
    /// Total length, when the sender knows it.
    pub total_len: Option<u64>,
    /// BLAKE3 of the whole payload, when the sender knows it in advance.
    pub hash: Option<[u8; 32]>,
    /// Flag `OFFER`: no bytes flow until the receiver accepts with a `CREDIT`.
    pub offer: bool,
    /// Content type, 1 to 255 bytes of printable ASCII.
    pub content_type: String,
    /// Application metadata (flag `METADATA`), at most [`MAX_METADATA_LEN`] bytes; empty
    /// when absent.
    pub metadata: Bytes,
}

/// `STREAM_CHUNK` (0x22): bytes of a stream at an offset (§5.3).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamChunk {
    /// The stream.
    pub stream_id: u64,
    /// Offset of the first byte of `data` in the payload.
    pub offset: u64,
    /// At least one byte: the rest of the frame.
    pub data: Bytes,
}

/// `STREAM_END` (0x23): the stream is complete (§5.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamEnd {
    /// The stream.
    pub stream_id: u64,
    /// Total length of the payload.
    pub total_len: u64,
    /// BLAKE3 of the whole payload.
    pub hash: [u8; 32],
}

/// `STREAM_ABORT` (0x24): the stream's sender gives up on it (§5.5).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamAbort {
    /// The stream.
    pub stream_id: u64,
    /// Why.
    pub reason: ReasonCode,
    /// Detail, at most [`MAX_TEXT_LEN`] bytes.
    pub text: String,
}

/// `STREAM_RESULT` (0x25): the stream's receiver settles its fate (§5.6).
///
/// Sequenced in the receiver's direction, so it survives a reconnect like a message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamResult {
    /// Sequence number in the sender-of-this-frame's sequence, shared with `MESSAGE`.
    pub seq: u64,
    /// The stream (the peer's id).
    pub stream_id: u64,
    /// [`ReasonCode::Normal`]: received whole and verified; otherwise why it failed.
    pub reason: ReasonCode,
    /// Detail, at most [`MAX_TEXT_LEN`] bytes.
    pub text: String,
}

/// `ACK` (0x30): cumulative acknowledgement of sequence numbers (§6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ack {
    /// Every sequence number up to and including this one was received.
    pub last_seq: u64,
}

/// `CREDIT` (0x31): acknowledges stream bytes and grants more (§6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Credit {
    /// The stream, or 0 for the connection-wide window.
    pub stream_id: u64,
    /// Bytes received in order (for stream 0: stream bytes received over the connection).
    pub acked: u64,
    /// The sender of the credit accepts bytes up to (excluding) this offset.
    pub limit: u64,
}

/// `PING` (0x32): liveness and round-trip time (§6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ping {
    /// The sender's clock, in microseconds (any epoch; only the sender reads it back).
    pub timestamp_us: u64,
}

/// `PONG` (0x33): the answer to a `PING` (§6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pong {
    /// The `PING`'s timestamp, echoed.
    pub timestamp_us: u64,
}

/// `GOAWAY` (0x34): the sender is closing, and why (§6.4).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GoAway {
    /// Why.
    pub reason: ReasonCode,
    /// The highest sequence number the sender received in order.
    pub last_seq: u64,
    /// Detail, at most [`MAX_TEXT_LEN`] bytes.
    pub text: String,
}

/// One ClipSync frame.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)] // each variant is documented on its body type
pub enum Frame {
    Hello(Hello),
    Auth(Auth),
    AuthResult(AuthResult),
    Resume(Resume),
    Resumed(Resumed),
    SessionLost(SessionLost),
    Message(MessageFrame),
    StreamOpen(StreamOpen),
    StreamChunk(StreamChunk),
    StreamEnd(StreamEnd),
    StreamAbort(StreamAbort),
    StreamResult(StreamResult),
    Ack(Ack),
    Credit(Credit),
    Ping(Ping),
    Pong(Pong),
    GoAway(GoAway),
}

/// Bounds the decoder enforces before it reads a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest whole frame, header included.
    pub max_frame_size: usize,
}

impl DecodeLimits {
    /// The cap before authentication completes (PROTOCOL.md §8): 16 KiB.
    pub const PRE_AUTH: DecodeLimits = DecodeLimits {
        max_frame_size: 16 * 1024,
    };
}

impl PeerLimits {
    /// Smallest `max_frame_size` a peer may announce (PROTOCOL.md §3.1).
    pub const MIN_FRAME_SIZE: u32 = 16 * 1024;
    /// Bytes a `MESSAGE` needs besides its payload at most: header 8, seq 8, content type
    /// 1 + 255.
    pub const MESSAGE_OVERHEAD: u32 = 272;
    /// Bytes a `STREAM_CHUNK` frame needs besides its data: header 8, stream id 8, offset 8.
    pub const CHUNK_OVERHEAD: u32 = 24;

    /// Smallest stream window a peer may announce (PROTOCOL.md §3.1): 1 KiB.
    pub const MIN_STREAM_WINDOW: u32 = 1024;
    /// Heartbeat interval range a peer may announce: 100 ms to 1 hour.
    pub const HEARTBEAT_MS: (u32, u32) = (100, 3_600_000);
    /// Longest idle timeout a peer may announce: 1 day.
    pub const MAX_IDLE_MS: u32 = 86_400_000;

    /// What breaks the ranges of PROTOCOL.md §3.1, if anything (a `HELLO` outside them is
    /// refused with `protocol error`).
    pub fn problem(&self) -> Option<&'static str> {
        let (hb_min, hb_max) = Self::HEARTBEAT_MS;
        if self.max_frame_size < Self::MIN_FRAME_SIZE {
            Some("max_frame_size below 16384")
        } else if self.max_message_size == 0
            || self.max_message_size > self.max_frame_size - Self::MESSAGE_OVERHEAD
        {
            Some("max_message_size not within 1 and max_frame_size - 272")
        } else if self.stream_window < Self::MIN_STREAM_WINDOW {
            Some("stream_window below 1024")
        } else if self.connection_window < self.stream_window {
            Some("connection_window below stream_window")
        } else if !(hb_min..=hb_max).contains(&self.heartbeat_interval_ms) {
            Some("heartbeat_interval_ms not within 100 and 3600000")
        } else if self.idle_timeout_ms / 2 < self.heartbeat_interval_ms {
            Some("idle_timeout_ms below twice heartbeat_interval_ms")
        } else if self.idle_timeout_ms > Self::MAX_IDLE_MS {
            Some("idle_timeout_ms above 86400000 (a day)")
        } else {
            None
        }
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary (for
/// reason texts, which have byte limits).
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Frame {
    /// The sequence number of a sequenced frame (`MESSAGE`, `STREAM_OPEN`, `STREAM_RESULT`).
    pub fn seq(&self) -> Option<u64> {
        match self {
            Frame::Message(m) => Some(m.seq),
            Frame::StreamOpen(o) => Some(o.seq),
            Frame::StreamResult(r) => Some(r.seq),
            _ => None,
        }
    }
}
