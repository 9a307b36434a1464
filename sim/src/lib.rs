//! `clipsync-sim`: the deterministic network simulator for the ClipSync transport.
//!
//! It will run the production transport, unchanged, over turmoil's simulated network and
//! replay seeded scenarios from `scenarios/` (issue 4). Until the socket seam exists there is
//! nothing for it to drive, so this crate holds no code yet; it is a workspace member now so
//! that the workspace's shape, lints and shared `target/` are settled from the start.
