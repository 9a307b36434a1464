//! Layer 3, the session core: sans-I/O state machines — the session (sequence numbers,
//! acknowledgements, heartbeats, health), its streams (credit flow control, verification) and
//! the reconnection backoff policy.
//!
//! No tokio, no sockets, no clock, no global RNG: frames and `now` (a [`Duration`] since the
//! connection began, supplied by the driver) go in; frames to send, events for the
//! application and the next deadline come out. The run loop is the same for every machine
//! here (str0m's and quinn's shape):
//!
//! 1. feed input: [`Session::handle_frame`], [`Session::send_message`],
//!    [`Session::handle_timeout`], [`Session::close`];
//! 2. drain [`Session::poll_transmit`] and [`Session::poll_event`] until both are empty;
//! 3. sleep until [`Session::poll_timeout`], or until new input arrives.
//!
//! [`Duration`]: std::time::Duration

mod backoff;
mod connection;
mod session;
mod streams;

pub use backoff::{
    Backoff, BackoffPolicy, DialFailure, LinkView, RedialPolicy, RedialStep, tie_break, unit_draw,
};
pub use connection::{
    Attach, Connection, ConnectionParams, Failure, InFailure, Lane, Output, Phase, Resume,
    Resumption, SendId, StreamKey,
};
pub use session::{Abandoned, CloseCause, Event, SendRefusal, Session, SessionParams};
pub use streams::StreamRefusal;
