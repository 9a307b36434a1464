//! # ClipSync transport
//!
//! ClipSync keeps a person's clipboards in step across their machines. This crate is its
//! transport: it carries clipboard payloads between peers that authenticate each other with
//! SSH keys, over WebSocket on TLS, and is built so that a seeded simulator can run the very
//! same code over a simulated network.
//!
//! Start at [`transport::Transport`]: `connect` a [`transport::PeerInfo`] (one attempt, returns
//! once authenticated), `open` one (returns at once in state `Connecting` and dials with backoff
//! until the peer answers, sends queued meanwhile) or `listen` on an [`transport::Address`],
//! then `send` and `receive` on the [`transport::Connection`]:
//!
//! - `send(Message)` resolves when the peer acknowledged the message; a payload above
//!   `stream_threshold` goes as a stream automatically;
//! - `open_stream` / `send_stream` send a payload of any size in chunks, with credit-based
//!   flow control (memory bounded by the windows, not the payload), [`transport::Progress`],
//!   and a BLAKE3 check of the whole payload at the receiver;
//! - `receive()` yields [`transport::Incoming::Message`] and [`transport::Incoming::Stream`]
//!   in the order the peer sent them; a small message is never stuck behind a large stream;
//!   `sender()` gives a cloneable sending half, so one task sends while another receives;
//!   an incoming stream settles as delivered for its sender once the application has read its
//!   verified end (or, with `hold_verdict`, once it `accept`s; `reject` fails it);
//! - `state()` and `health()` watch the connection (connecting, connected, degraded,
//!   reconnecting, offline, closed with its cause; round-trip time); every transition is
//!   logged with its reason;
//! - when the network breaks a connection, the dialer redials with backoff and both sides
//!   resume the session: messages are neither lost nor repeated, and open streams continue
//!   from the receiver's offset, not from zero. If the peer lost the session (it restarted),
//!   the connection carries on with a fresh session: sends that were on the wire and not
//!   acknowledged fail as "delivery unknown", sends that never left go out on the new session,
//!   and every stream of the old session settles.
//!
//! Every send settles: delivered, refused with a reason, or — if the connection ends first —
//! "delivery unknown". Bad input from the peer gets a typed error and a close with a numbered
//! reason (`PROTOCOL.md` §7), never a panic.
//!
//! ## Layers
//!
//! Each layer uses only the layers below it.
//!
//! | layer | module | what it is |
//! | --- | --- | --- |
//! | 0. wire format | [`wire`] | frames to bytes and back; pure data (`PROTOCOL.md` at the repository root) |
//! | 1. socket seam | [`net`] | dial / bind / accept as an abstract trait; tokio TCP and Unix sockets |
//! | 2. secure channel | [`secure`] | TLS 1.3, WebSocket upgrade, SSH-key authentication |
//! | 3. connection core | `core` (hidden) | sans-I/O state machines: the whole connection's rules (sessions and their replacement, the ledger of sends, stream scheduling, credit, heartbeats, the redial policy and the tie-break) |
//! | 4. driver | `driver` (private) | the async tasks per connection: a pump between socket, timers, application and the core |
//! | 5. public API | [`transport`] | `Transport`, `Connection`, `Listener` |
//!
//! The connection core sits beside the secure channel, not on top of it: both use the wire
//! format, neither knows the other, and the driver joins them. Every rule a test could name
//! lives in the core, where a model test (two cores joined in memory, random operations, cuts
//! and restarts, invariants after every step) checks it.
//!
//! What is public is what an application uses: [`transport`] (the API), [`config`], [`error`],
//! [`net::Address`], [`secure::SshAuthenticator`] and [`secure::TlsSetup`], the [`ssh_key`]
//! types in their signatures, and [`wire`] (the frame codec, for tools and other
//! implementations). The connection core (`clipsync::core`) and the handshake internals
//! (`secure::handshake`, `secure::dial`, …) are `#[doc(hidden)]`: the simulator, the fuzzers,
//! benchmarks and protocol tests drive them directly; they carry no stability promise. The
//! driver is private.
//!
//! Beside the layers: [`config`] (every tunable with its default and the reason for it) and
//! [`error`] (one error enum per layer).
//!
//! ## Determinism contract
//!
//! The connection core takes time as an argument and has no I/O and no randomness. The layers
//! above it read time only from `tokio::time` (which the simulator controls), draw nonces
//! and session ids from one RNG seeded by [`config::TransportConfig::rng_seed`], and use
//! `biased;` in every `select!`. TLS key exchange draws from the crypto provider, which the
//! simulator can replace; its bytes never reach behaviour.
#![warn(missing_docs)]

pub mod config;
#[doc(hidden)]
pub mod core;
mod driver;
pub mod error;
pub mod net;
pub mod secure;
pub mod transport;
pub mod wire;

/// The SSH key types used in this crate's signatures (`PeerInfo::with_key`, `SshAuthenticator`),
/// so an engine needs no `ssh-key` dependency of its own (and never a mismatched version).
pub use ssh_key;

/// Whether connections check the core's invariants after every step (off unless
/// [`enable_self_checks`] was called).
pub(crate) static SELF_CHECKS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Turns self-checks on for every connection in this process: after every step the protocol
/// core's invariants (credit within the windows, bounded buffering, the replay buffer holding
/// only unacknowledged frames) are checked, and a broken one closes the connection with
/// `internal error`. The simulator turns them on; production leaves them off.
#[doc(hidden)]
pub fn enable_self_checks() {
    SELF_CHECKS.store(true, std::sync::atomic::Ordering::Relaxed);
}
