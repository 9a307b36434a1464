//! The wire layer's errors.

use thiserror::Error;

use super::{FrameType, ReasonCode};

/// Why a received WebSocket message is not a valid frame.
///
/// Each variant maps to the reason code the connection closes with
/// ([`DecodeError::reason`]), except [`DecodeError::UnknownType`] with `ignorable` set, which
/// the receiver skips ([`DecodeError::is_ignorable`]).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The message is larger than the receiver's limit: close with `frame too large`.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Size of the message.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The message ends inside a field: close with `protocol error`.
    #[error("{frame} frame truncated in field {field}")]
    Truncated {
        /// The frame's name, or `header`.
        frame: &'static str,
        /// The field being read.
        field: &'static str,
    },
    /// The header's version is not the one this connection speaks: close with
    /// `unsupported version`.
    #[error("unsupported protocol version {version}")]
    UnsupportedVersion {
        /// The version byte received.
        version: u8,
    },
    /// The header's length disagrees with the bytes present: close with `protocol error`.
    #[error("header declares a {declared}-byte body but {actual} bytes follow")]
    LengthMismatch {
        /// The header's length field.
        declared: u32,
        /// The bytes after the header.
        actual: usize,
    },
    /// A type byte this build does not know. Skip the frame if `ignorable`, otherwise close
    /// with `unknown frame type`.
    #[error("unknown frame type 0x{frame_type:02x}")]
    UnknownType {
        /// The type byte.
        frame_type: u8,
        /// The sender set the ignorable flag.
        ignorable: bool,
    },
    /// Flag bits not defined for this type: close with `protocol error`.
    #[error("{frame} frame has undefined flags 0x{flags:04x}")]
    InvalidFlags {
        /// The frame type.
        frame: FrameType,
        /// The flags received.
        flags: u16,
    },
    /// Bytes after the last field: close with `protocol error`.
    #[error("{frame} frame has {extra} trailing bytes")]
    TrailingBytes {
        /// The frame type.
        frame: FrameType,
        /// How many bytes were left over.
        extra: usize,
    },
    /// A field holds a value the protocol forbids: close with `protocol error`.
    #[error("{frame} frame field {field} {reason}")]
    InvalidField {
        /// The frame type.
        frame: FrameType,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl DecodeError {
    /// The reason code to close the connection with.
    pub fn reason(&self) -> ReasonCode {
        match self {
            Self::FrameTooLarge { .. } => ReasonCode::FrameTooLarge,
            Self::UnsupportedVersion { .. } => ReasonCode::UnsupportedVersion,
            Self::UnknownType { .. } => ReasonCode::UnknownFrameType,
            _ => ReasonCode::ProtocolError,
        }
    }

    /// Whether the receiver should skip this message and carry on (PROTOCOL.md §10).
    pub fn is_ignorable(&self) -> bool {
        matches!(
            self,
            Self::UnknownType {
                ignorable: true,
                ..
            }
        )
    }
}

/// Why a frame cannot be encoded: a field the decoder would refuse. Fix the value; nothing
/// was sent.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The field's value breaks a rule of PROTOCOL.md.
    #[error("cannot encode {frame}: field {field} {reason}")]
    InvalidField {
        /// The frame type.
        frame: FrameType,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}
