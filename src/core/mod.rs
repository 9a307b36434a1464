//! Layer 3, the connection core: sans-I/O state machines — the [`Connection`] (which session is
//! current and what replaces it, the ledger of sends, the queues in front of the session,
//! stream scheduling and lanes, the resume window, the one resumability rule), the
//! [`Session`] below it (sequence numbers, acknowledgements, heartbeats, health), its streams
//! (credit flow control, verification), and the redial policy ([`RedialPolicy`], backoff,
//! [`tie_break`]).
//!
//! No tokio, no sockets, no clock, no global RNG: frames and `now` (a [`Duration`] since the
//! connection began, supplied by the driver) go in; frames to send, events for the
//! application and the next deadline come out. The run loop is the same for every machine
//! here (str0m's and quinn's shape):
//!
//! 1. feed input: [`Connection::attach`], [`Connection::handle_frame`],
//!    [`Connection::send`], [`Connection::handle_timeout`], [`Connection::close`], …;
//! 2. drain [`Connection::poll_transmit`] and [`Connection::poll_output`] until both are empty;
//! 3. sleep until [`Connection::poll_timeout`], or until new input arrives.
//!
//! [`Duration`]: std::time::Duration

mod backoff;
mod connection;
mod hash;
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
