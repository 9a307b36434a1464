//! The handshake's checks on what a peer sends before it is trusted: a HELLO decoded from any
//! bytes and its limits checked, and an AUTH signature blob (SSHSIG) checked against a key
//! and a transcript — errors, never a panic.
#![no_main]

use bytes::Bytes;
use clipsync::secure::auth::verify_sshsig;
use clipsync::wire::{DecodeLimits, Frame};
use libfuzzer_sys::fuzz_target;

/// An ed25519 public key in SSH wire encoding (the key of `tests/fixtures/ed25519_test_key`'s
/// shape; any valid key does).
const KEY: [u8; 51] = {
    let mut k = [0u8; 51];
    let head = *b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20";
    let mut i = 0;
    while i < head.len() {
        k[i] = head[i];
        i += 1;
    }
    k
};

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits {
        max_frame_size: 16 * 1024,
    };
    match Frame::decode(Bytes::copy_from_slice(data), limits) {
        Ok(Frame::Hello(h)) => {
            let _ = h.limits.problem();
        }
        Ok(Frame::Auth(a)) => {
            let _ = verify_sshsig(&KEY, b"transcript", &a.signature);
        }
        _ => {}
    }
    let _ = verify_sshsig(&KEY, b"transcript", data);
    let _ = verify_sshsig(data, b"transcript", data);
});
