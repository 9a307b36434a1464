//! Numbered reason codes (PROTOCOL.md §7).
//!
//! One table serves every place a reason travels: `AUTH_RESULT`, `SESSION_LOST`,
//! `STREAM_ABORT`, `GOAWAY`, and the WebSocket close code, which is `4000 + code`.

use std::fmt;

/// Why a connection, a session or a stream ended (PROTOCOL.md §7).
///
/// Codes are stable wire values. A code this build does not know decodes as
/// [`ReasonCode::Other`], so a newer peer's reasons are still reported, never refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ReasonCode {
    /// 0: no error; the application closed on purpose, or an `AUTH_RESULT` accepted.
    Normal,
    /// 1: a frame broke the protocol (bad field, frame illegal in this state, sequence gap).
    ProtocolError,
    /// 2: a frame exceeded the receiver's announced `max_frame_size` (or the pre-auth cap).
    FrameTooLarge,
    /// 3: a frame type this peer does not know and that was not marked ignorable.
    UnknownFrameType,
    /// 4: the header's version is not the negotiated one.
    UnsupportedVersion,
    /// 5: the peer's signature did not verify (wrong key, wrong namespace, other TLS session).
    AuthFailed,
    /// 6: the signature verified, but the peer's key is not in the trusted-keys file.
    KeyNotAuthorized,
    /// 7: the handshake (hello, auth, resume) did not complete within its deadline.
    HandshakeTimeout,
    /// 8: no frame arrived within the idle (heartbeat) timeout.
    IdleTimeout,
    /// 9: the sender is shutting down.
    GoingAway,
    /// 10: data sent beyond the credit the receiver granted.
    FlowControlError,
    /// 11: a limit was exceeded: too many streams, a message over `max_message_size`.
    LimitExceeded,
    /// 12: a newer authenticated connection from the same peer replaced this one.
    Replaced,
    /// 13: two peers dialled each other; this connection lost the tie-break.
    DuplicateConnection,
    /// 14: the stream's bytes do not match the announced length or BLAKE3.
    StreamIntegrity,
    /// 15: the application cancelled the stream.
    Cancelled,
    /// 16: the session to resume is unknown (the peer restarted or never had it).
    SessionUnknown,
    /// 17: the session was kept for the resume window and then dropped.
    SessionExpired,
    /// 18: the replay buffer overflowed, so the session cannot be resumed losslessly.
    ReplayOverflow,
    /// 19: a bug or resource failure on the sender's side.
    InternalError,
    /// 20: the receiver declines a stream because it already has the payload (its announced
    /// BLAKE3 names content the receiver holds): nothing is missing, nothing needs sending.
    AlreadyHave,
    /// A code this build does not know (from a newer peer).
    Other(u16),
}

impl ReasonCode {
    /// The wire value.
    pub fn code(self) -> u16 {
        match self {
            Self::Normal => 0,
            Self::ProtocolError => 1,
            Self::FrameTooLarge => 2,
            Self::UnknownFrameType => 3,
            Self::UnsupportedVersion => 4,
            Self::AuthFailed => 5,
            Self::KeyNotAuthorized => 6,
            Self::HandshakeTimeout => 7,
            Self::IdleTimeout => 8,
            Self::GoingAway => 9,
            Self::FlowControlError => 10,
            Self::LimitExceeded => 11,
            Self::Replaced => 12,
            Self::DuplicateConnection => 13,
            Self::StreamIntegrity => 14,
            Self::Cancelled => 15,
            Self::SessionUnknown => 16,
            Self::SessionExpired => 17,
            Self::ReplayOverflow => 18,
            Self::InternalError => 19,
            Self::AlreadyHave => 20,
            Self::Other(c) => c,
        }
    }

    /// The reason for a wire value; unknown values become [`ReasonCode::Other`].
    pub fn from_code(code: u16) -> Self {
        match code {
            0 => Self::Normal,
            1 => Self::ProtocolError,
            2 => Self::FrameTooLarge,
            3 => Self::UnknownFrameType,
            4 => Self::UnsupportedVersion,
            5 => Self::AuthFailed,
            6 => Self::KeyNotAuthorized,
            7 => Self::HandshakeTimeout,
            8 => Self::IdleTimeout,
            9 => Self::GoingAway,
            10 => Self::FlowControlError,
            11 => Self::LimitExceeded,
            12 => Self::Replaced,
            13 => Self::DuplicateConnection,
            14 => Self::StreamIntegrity,
            15 => Self::Cancelled,
            16 => Self::SessionUnknown,
            17 => Self::SessionExpired,
            18 => Self::ReplayOverflow,
            19 => Self::InternalError,
            20 => Self::AlreadyHave,
            c => Self::Other(c),
        }
    }

    /// The WebSocket close code that carries this reason: `4000 + code` (PROTOCOL.md §7).
    ///
    /// Codes above 999 do not fit the private-use range and map to 4001 (protocol error).
    pub fn close_code(self) -> u16 {
        match self.code() {
            c @ 0..=999 => 4000 + c,
            _ => 4001,
        }
    }

    /// The reason carried by a WebSocket close code, if it is in ClipSync's range 4000–4999.
    pub fn from_close_code(close: u16) -> Option<Self> {
        (4000..=4999)
            .contains(&close)
            .then(|| Self::from_code(close - 4000))
    }

    /// The short name used in PROTOCOL.md, logs and error messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::ProtocolError => "protocol error",
            Self::FrameTooLarge => "frame too large",
            Self::UnknownFrameType => "unknown frame type",
            Self::UnsupportedVersion => "unsupported version",
            Self::AuthFailed => "auth failed",
            Self::KeyNotAuthorized => "key not authorized",
            Self::HandshakeTimeout => "handshake timeout",
            Self::IdleTimeout => "idle timeout",
            Self::GoingAway => "going away",
            Self::FlowControlError => "flow control error",
            Self::LimitExceeded => "limit exceeded",
            Self::Replaced => "replaced",
            Self::DuplicateConnection => "duplicate connection",
            Self::StreamIntegrity => "stream integrity",
            Self::Cancelled => "cancelled",
            Self::SessionUnknown => "session unknown",
            Self::SessionExpired => "session expired",
            Self::ReplayOverflow => "replay overflow",
            Self::InternalError => "internal error",
            Self::AlreadyHave => "already have",
            Self::Other(_) => "unknown reason",
        }
    }

    /// Every reason this build knows, in code order (for tables and tests).
    pub const ALL: [ReasonCode; 21] = [
        Self::Normal,
        Self::ProtocolError,
        Self::FrameTooLarge,
        Self::UnknownFrameType,
        Self::UnsupportedVersion,
        Self::AuthFailed,
        Self::KeyNotAuthorized,
        Self::HandshakeTimeout,
        Self::IdleTimeout,
        Self::GoingAway,
        Self::FlowControlError,
        Self::LimitExceeded,
        Self::Replaced,
        Self::DuplicateConnection,
        Self::StreamIntegrity,
        Self::Cancelled,
        Self::SessionUnknown,
        Self::SessionExpired,
        Self::ReplayOverflow,
        Self::InternalError,
        Self::AlreadyHave,
    ];
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_dense() {
        for (i, r) in ReasonCode::ALL.iter().enumerate() {
            assert_eq!(usize::from(r.code()), i, "{r:?} out of order");
            assert_eq!(ReasonCode::from_code(r.code()), *r);
            assert_eq!(ReasonCode::from_close_code(r.close_code()), Some(*r));
        }
        assert_eq!(ReasonCode::from_code(777), ReasonCode::Other(777));
        assert_eq!(ReasonCode::Other(5000).close_code(), 4001);
        assert_eq!(ReasonCode::from_close_code(1000), None);
        assert_eq!(ReasonCode::KeyNotAuthorized.close_code(), 4006);
    }
}
