//! # ClipSync transport
//!
//! ClipSync keeps a person's clipboards in step across their machines. This crate is its
//! transport: it carries clipboard payloads between peers that authenticate each other with
//! SSH keys, over WebSocket on TLS, and is built so that a seeded simulator can run the very
//! same code over a simulated network.
//!
//! ## Layers
//!
//! Each layer uses only the layers below it.
//!
//! | layer | module | what it is |
//! | --- | --- | --- |
//! | 0. wire format | [`wire`] | frames to bytes and back; pure data (`PROTOCOL.md` at the repository root) |
//! | 1. socket seam | *(next: issue 3)* | dial / bind / accept as an abstract trait |
//! | 2. secure channel | *(next: issue 3)* | TLS 1.3, WebSocket upgrade, SSH-key authentication |
//! | 3. session core | *(next)* | sans-I/O state machines: sequence numbers, acks, credit, heartbeats |
//! | 4. driver | *(next)* | the async task per connection, the reconnect supervisor |
//! | 5. public API | *(next)* | `Transport`, `Connection`, `Listener` |
//!
//! Beside them: [`config`] (every tunable with its default and the reason for it) and
//! [`error`] (one error enum per layer).
//!
//! ## Determinism contract
//!
//! Everything below the driver is deterministic: time comes in as an argument, randomness
//! from an RNG derived from [`config::TransportConfig::rng_seed`], and maps whose order can
//! leak into behaviour are ordered. The codec in [`wire`] goes further: it has no time, no
//! randomness and no I/O at all.
#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod wire;
