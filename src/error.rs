//! Errors, one enum per layer. Each variant says what went wrong and what the caller can do.
//!
//! | layer | error | raised by |
//! | --- | --- | --- |
//! | wire | [`DecodeError`], [`EncodeError`] | [`crate::wire::Frame::decode`], [`crate::wire::Frame::encode`] |
//! | configuration | [`ConfigError`] | [`crate::config::TransportConfig`] |
//!
//! Later layers (socket, secure channel, session, public API) add their own enums here.

use thiserror::Error;

pub use crate::wire::{DecodeError, EncodeError};

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
