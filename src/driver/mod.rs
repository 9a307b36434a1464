//! Layer 4, the driver: the async task per connection that pumps frames between the
//! authenticated WebSocket and the [`crate::core::Session`], and sleeps until the session's
//! next deadline.
//!
//! Each connection has two tasks: the *driver* (reads, timers, commands from the
//! application) and the *writer* (drains a bounded queue of encoded frames into the socket,
//! each write bounded by `write_timeout`). Reading never waits on writing, so two peers that
//! both send a lot cannot deadlock on full socket buffers. Every `select!` is `biased;`, so the
//! simulator replays the same choice for the same seed.

mod connection;
mod stream;

pub(crate) use connection::{
    Command, Handles, Pending, Reconnect, Redial, cause_of, spawn, spawn_pending,
};
pub use connection::{ConnectionState, Health, Incoming, Message};
pub use stream::{Full, IncomingStream, Progress, StreamError, StreamSender};
