//! `clipsync-sim`: the deterministic network simulator for the ClipSync transport.
//!
//! It runs the production transport, unchanged (TLS, WebSocket, SSH-key authentication, the
//! `Transport` API; only the AES-GCM over TLS records is replaced, see
//! [`crypto::seeded_provider`]), over turmoil's simulated network ([`TurmoilNet`]), replays the seeded
//! fault timelines of `scenarios/*.toml` ([`scenario`]), records every transport event with
//! its simulated time and host ([`trace`]), and checks the invariants ([`invariants`]).
//!
//! ## One seed drives everything
//!
//! From the root seed come turmoil's RNG (latency and failure draws), each host's key, each
//! transport's RNG (nonces, session ids, later backoff jitter), rustls's `SecureRandom`, and
//! the workload's sizes and pauses ([`crypto::derive`]). Time is turmoil's: `tokio::time`
//! inside hosts, a fixed simulated epoch for TLS's clock. The workspace builds with
//! `--cfg tokio_unstable` (`.cargo/config.toml`) so each host's tokio runtime is seeded too,
//! and every `select!` in the transport is `biased;`. The same seed and commit give the same
//! trace, line for line; `run --check-determinism` checks it.
//!
//! A build without `tokio_unstable` does not compile: `RUSTFLAGS` set in the environment
//! replaces `.cargo/config.toml`'s flags instead of adding to them, and such a build (a
//! profiling build with `RUSTFLAGS=-Cforce-frame-pointers=yes`, say) ran one seed of
//! `peer_restart_streams` three different ways in four replays: tokio's `watch` channels park
//! their receivers on one of eight `Notify`s drawn from the runtime's RNG, so tasks woken by
//! one change ran in a different order. Add the flag to such a `RUSTFLAGS`.

// rustdoc gets `rustdocflags`, not `rustflags`: its passes over this crate (`cargo doc`, the
// doctest collection of `cargo test`) build nothing that runs.
#[cfg(not(any(tokio_unstable, doc, doctest)))]
compile_error!(
    "clipsync-sim must be built with `--cfg tokio_unstable` (.cargo/config.toml sets it; a \
     RUSTFLAGS environment variable replaces it: add `--cfg tokio_unstable` to it)"
);

pub mod crypto;
pub mod host;
pub mod invariants;
pub mod link;
pub mod mesh;
mod net;
pub mod process;
pub mod roam;
pub mod runner;
pub mod scenario;
pub mod trace;

pub use net::TurmoilNet;
