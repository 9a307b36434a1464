//! Everything random or timed that the transport takes from outside, derived from the root
//! seed: host keys, the transport's RNG seed, rustls's `SecureRandom`, and TLS's clock.
//!
//! What cannot be seeded: ring draws key-exchange secrets and rcgen certificate keys from the
//! operating system, so TLS bytes differ between runs. They never reach behaviour (sizes are
//! fixed, the channel binding only feeds signatures that either verify or not), which is why
//! determinism is checked on the event trace, not on wire bytes.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, InboundPlainMessage, Iv, MessageDecrypter, MessageEncrypter,
    OutboundOpaqueMessage, OutboundPlainMessage, PrefixedPayload, Tls13AeadAlgorithm,
    UnsupportedOperationError,
};
use rustls::crypto::{CipherSuiteCommon, CryptoProvider, GetRandomFailed, SecureRandom};
use rustls::pki_types::UnixTime;
use rustls::time_provider::TimeProvider;
use rustls::{
    ConnectionTrafficSecrets, ContentType, ProtocolVersion, SupportedCipherSuite, Tls13CipherSuite,
};
use sha2::{Digest, Sha256};

/// 32 bytes derived from the root seed and a label (a host name, a purpose, a restart count).
pub fn derive(seed: u64, label: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"clipsync-sim derive v1\0");
    h.update(seed.to_be_bytes());
    h.update(label.as_bytes());
    h.finalize().into()
}

/// A `u64` derived like [`derive`](fn@derive).
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

/// The `ring` provider with its `SecureRandom` replaced by a seeded one and its record cipher
/// by `SimRecords` (below): key exchange, signatures, key schedule, exporter and the record layer are
/// rustls and ring as in production; only the AES-GCM over each record's bytes is left out.
///
/// rustls wants a `&'static` random source, so each call leaks one small box (a few hundred
/// bytes per simulated host start; a sweep of thousands of runs leaks well under a megabyte).
pub fn seeded_provider(seed: [u8; 32]) -> Arc<CryptoProvider> {
    let random: &'static SeededRandom = Box::leak(Box::new(SeededRandom(Mutex::new(
        ChaCha20Rng::from_seed(seed),
    ))));
    Arc::new(CryptoProvider {
        secure_random: random,
        cipher_suites: vec![SupportedCipherSuite::Tls13(sim_suite())],
        ..rustls::crypto::ring::default_provider()
    })
}

/// `TLS13_AES_128_GCM_SHA256` as ring implements it (the suite production negotiates, same
/// hash and HKDF), with [`SimRecords`] for its records.
fn sim_suite() -> &'static Tls13CipherSuite {
    static SUITE: OnceLock<Tls13CipherSuite> = OnceLock::new();
    SUITE.get_or_init(|| {
        // The workspace builds rustls without TLS 1.2: every suite is a TLS 1.3 one.
        let SupportedCipherSuite::Tls13(ring) =
            rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
        Tls13CipherSuite {
            common: CipherSuiteCommon {
                suite: ring.common.suite,
                hash_provider: ring.common.hash_provider,
                confidentiality_limit: ring.common.confidentiality_limit,
            },
            hkdf_provider: ring.hkdf_provider,
            aead_alg: &SimRecords,
            quic: None,
        }
    })
}

/// The simulator's record protection: each record's bytes in the clear, followed by the inner
/// content type (as TLS 1.3 frames it) and a 16-byte tag of the record's sequence number and
/// length, which the receiver checks.
///
/// Why: AES-GCM over every record was 7–10% of the CPU of the stream-heavy scenarios (perf,
/// `stream_flap`, `swarm_mix`), and the simulator tests what the transport does, not ring's AES.
/// What still runs: rustls's whole record layer (fragmenting, sequence numbers, key updates at
/// the confidentiality limit, the TLS 1.3 inner type and its padding rules), with the same
/// record sizes on the wire as AES-GCM (tag included) so no timing or window changes. What it
/// cannot do: reject a forged or flipped byte, which the simulated network never makes (the
/// link model stalls, never corrupts); a record out of order or cut short is still refused, as
/// a bad tag would be. The real-network arm, the tests and the fuzzers run AES-GCM.
struct SimRecords;

/// The tag: the record's sequence number and ciphertext length, padded to AES-GCM's 16 bytes.
fn sim_tag(seq: u64, total_len: usize) -> [u8; 16] {
    let mut tag = [0u8; 16];
    tag[..8].copy_from_slice(&seq.to_be_bytes());
    tag[8..].copy_from_slice(&(total_len as u64).to_be_bytes());
    tag
}

const SIM_TAG_LEN: usize = 16;

impl Tls13AeadAlgorithm for SimRecords {
    fn encrypter(&self, _key: AeadKey, _iv: Iv) -> Box<dyn MessageEncrypter> {
        Box::new(SimRecords)
    }

    fn decrypter(&self, _key: AeadKey, _iv: Iv) -> Box<dyn MessageDecrypter> {
        Box::new(SimRecords)
    }

    fn key_len(&self) -> usize {
        16
    }

    fn extract_keys(
        &self,
        _key: AeadKey,
        _iv: Iv,
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        Err(UnsupportedOperationError)
    }
}

impl MessageEncrypter for SimRecords {
    fn encrypt(
        &mut self,
        msg: OutboundPlainMessage<'_>,
        seq: u64,
    ) -> Result<OutboundOpaqueMessage, rustls::Error> {
        let total_len = self.encrypted_payload_len(msg.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total_len);
        payload.extend_from_chunks(&msg.payload);
        payload.extend_from_slice(&msg.typ.to_array());
        payload.extend_from_slice(&sim_tag(seq, total_len));
        Ok(OutboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            payload,
        ))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + 1 + SIM_TAG_LEN
    }
}

impl MessageDecrypter for SimRecords {
    fn decrypt<'a>(
        &mut self,
        mut msg: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, rustls::Error> {
        let total_len = msg.payload.len();
        let Some(plain_len) = total_len.checked_sub(SIM_TAG_LEN) else {
            return Err(rustls::Error::DecryptError);
        };
        if msg.payload[plain_len..] != sim_tag(seq, total_len) {
            return Err(rustls::Error::DecryptError);
        }
        msg.payload.truncate(plain_len);
        msg.into_tls13_unpadded_message()
    }
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
