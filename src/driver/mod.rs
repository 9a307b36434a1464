//! Layer 4, the driver: the async task per connection that pumps frames between the
//! authenticated WebSocket, the application's handles and the timers on one side, and the
//! sans-I/O [`crate::core::Connection`] on the other. The core decides; the driver carries out.
//!
//! Each connection has two tasks: the *driver* (reads, timers, commands from the application)
//! and the *writer* (drains two bounded lanes of encoded frames into the socket, each write
//! bounded by `write_timeout`). Reading never waits on writing, so two peers that both send a
//! lot cannot deadlock on full socket buffers. Every `select!` is `biased;`, so the simulator
//! replays the same choice for the same seed.

mod connection;
mod pool;
mod stream;
mod types;
mod writer;

pub(crate) use connection::{Command, Handles, Pending, Reconnect, Redial, spawn, spawn_pending};
pub use stream::{Full, Incoming, IncomingStream, Progress, StreamError, StreamSender};
pub(crate) use types::cause_of;
pub use types::{ConnectionState, Health, Message, StreamSpec};
