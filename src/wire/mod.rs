//! Layer 0, the wire format: ClipSync frames to bytes and back, nothing else.
//!
//! Every frame travels as one WebSocket binary message (subprotocol [`SUBPROTOCOL`]), so the
//! codec works on whole messages: [`Frame::encode`] returns one message body,
//! [`Frame::decode`] takes one. There is no streaming parser because there is no stream: the
//! WebSocket layer already delimits messages and bounds their size.
//!
//! The codec is pure data. It knows nothing of sockets, time or sessions; which frame is
//! legal in which state is the connection core's business (PROTOCOL.md §9).
//!
//! ```
//! use bytes::Bytes;
//! use clipsync::wire::{DecodeLimits, Frame, MessageFrame};
//!
//! let frame = Frame::Message(MessageFrame {
//!     seq: 1,
//!     content_type: "text/plain".into(),
//!     metadata: Bytes::from_static(b"clip=1"),
//!     payload: Bytes::from_static(b"hi"),
//! });
//! let bytes = frame.encode()?;
//! let limits = DecodeLimits { max_frame_size: 1 << 20 };
//! assert_eq!(Frame::decode(bytes, limits)?, frame);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod codec;
mod error;
pub mod examples;
mod frame;
mod reason;

pub use codec::content_type_problem;
pub use error::{DecodeError, EncodeError};
pub use frame::*;
pub use reason::ReasonCode;
