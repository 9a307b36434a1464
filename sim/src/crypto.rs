//! Everything random or timed that the transport takes from outside, derived from the root
//! seed: host keys, the transport's RNG seed, rustls's `SecureRandom`, and TLS's clock.
//!
//! What cannot be seeded: ring draws key-exchange secrets and rcgen certificate keys from the
//! operating system, so TLS bytes differ between runs. They never reach behaviour (sizes are
//! fixed, the channel binding only feeds signatures that either verify or not), which is why
//! determinism is checked on the event trace, not on wire bytes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rustls::crypto::{CryptoProvider, GetRandomFailed, SecureRandom};
use rustls::pki_types::UnixTime;
use rustls::time_provider::TimeProvider;
use sha2::{Digest, Sha256};

/// 32 bytes derived from the root seed and a label (a host name, a purpose, a restart count).
pub fn derive(seed: u64, label: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"clipsync-sim derive v1\0");
    h.update(seed.to_be_bytes());
    h.update(label.as_bytes());
    h.finalize().into()
}

/// A `u64` derived like [`derive`].
pub fn derive_u64(seed: u64, label: &str) -> u64 {
    let b = derive(seed, label);
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// rustls randomness from a seeded ChaCha20 stream.
#[derive(Debug)]
struct SeededRandom(Mutex<ChaCha20Rng>);

impl SecureRandom for SeededRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        self.0.lock().map_err(|_| GetRandomFailed)?.fill_bytes(buf);
        Ok(())
    }
}

/// The `ring` provider with its `SecureRandom` replaced by a seeded one.
///
/// rustls wants a `&'static` random source, so each call leaks one small box (a few hundred
/// bytes per simulated host start; a sweep of thousands of runs leaks well under a megabyte).
pub fn seeded_provider(seed: [u8; 32]) -> Arc<CryptoProvider> {
    let random: &'static SeededRandom = Box::leak(Box::new(SeededRandom(Mutex::new(
        ChaCha20Rng::from_seed(seed),
    ))));
    Arc::new(CryptoProvider {
        secure_random: random,
        ..rustls::crypto::ring::default_provider()
    })
}

/// TLS's clock: turmoil's simulated wall clock.
#[derive(Debug)]
pub struct SimTime;

impl TimeProvider for SimTime {
    fn current_time(&self) -> Option<UnixTime> {
        turmoil::since_epoch().map(UnixTime::since_unix_epoch)
    }
}

/// The simulated epoch: a fixed instant, so certificate dates and logs never depend on when
/// the simulation ran (turmoil's default is the real now).
pub fn epoch() -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_secs(1_767_225_600) // 2026-01-01T00:00:00Z
}
