//! [`TransportConfig`]: every tunable of the transport, its default and the reason for it.
//!
//! Load it from TOML with [`TransportConfig::from_toml_str`] or [`TransportConfig::from_file`];
//! keys not given keep their defaults, unknown keys are refused, and every value is checked
//! against its allowed range ([`TransportConfig::validate`]) with an error that names the key.
//! Durations are written in milliseconds, under keys ending in `_ms`:
//!
//! ```
//! use clipsync::config::TransportConfig;
//!
//! let cfg = TransportConfig::from_toml_str("heartbeat_interval_ms = 5000\nchunk_size = 32768")?;
//! assert_eq!(cfg.heartbeat_interval.as_millis(), 5000);
//! assert_eq!(cfg.chunk_size, 32768);
//! assert_eq!(cfg.max_streams, TransportConfig::default().max_streams);
//! # Ok::<(), clipsync::error::ConfigError>(())
//! ```
//!
//! Where a default comes from a measurement or another project's choice, the field says so;
//! `../shared/FIELD-NOTES.md` has the figures.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::wire::{DecodeLimits, PeerLimits};

const KIB: u32 = 1024;
const MIB: u32 = 1024 * 1024;
/// Bytes a `MESSAGE` frame needs besides its payload: header 8, seq 8, a 255-byte content type
/// with its length byte (PROTOCOL.md §3.1).
pub const MESSAGE_OVERHEAD: u32 = PeerLimits::MESSAGE_OVERHEAD;
/// Bytes a `STREAM_CHUNK` frame needs besides its data: header 8, stream id 8, offset 8.
pub const CHUNK_OVERHEAD: u32 = PeerLimits::CHUNK_OVERHEAD;

/// Every setting of the transport. Build it with [`Default`] and struct update syntax, or load
/// it from TOML. Memory per connection is bounded by `connection_window` (receive side) plus
/// `replay_buffer_bytes` and `stream_window` per open stream (send side), not by payload size;
/// a connection also keeps up to 32 idle receive buffers of `chunk_size` for reuse.
///
/// ```
/// use std::time::Duration;
/// use clipsync::config::TransportConfig;
/// let cfg = TransportConfig {
///     heartbeat_interval: Duration::from_secs(5),
///     ..TransportConfig::default()
/// };
/// cfg.validate()?;
/// let from_file = TransportConfig::from_toml_str("chunk_size = 32768\n")?;
/// assert_eq!(from_file.chunk_size, 32768);
/// # Ok::<(), clipsync::error::ConfigError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// Largest frame accepted after authentication, header included. Default 1 MiB + 1 KiB:
    /// room for a 1 MiB message and its header. Range 16 KiB to 16 MiB + 1 KiB (tungstenite's
    /// own frame limit is 16 MiB).
    pub max_frame_size: u32,
    /// Largest single message payload accepted. Default 1 MiB: any text clipboard and small
    /// images go in one frame; larger payloads stream. At most `max_frame_size - 272`.
    pub max_message_size: u32,
    /// Payloads larger than this are sent as streams by the convenience send path. Default
    /// 256 KiB, so one clipboard image never holds the link for long. 1 to `max_message_size`.
    pub stream_threshold: u32,
    /// Bytes of stream data per `STREAM_CHUNK`. Default 64 KiB: wss in 64 KiB messages ran at
    /// ~790 MB/s here against ~143 MB/s for one huge message (FIELD-NOTES). Also the
    /// interleaving quantum: a message waits behind at most one chunk per stream.
    /// 1 KiB to `max_frame_size - 24`.
    pub chunk_size: u32,
    /// Credit granted to each incoming stream. Default 4 MiB: covers 100 Mbit/s × 100 ms
    /// (1.25 MB, quinn's choice) with room, and on fast links the credit loop's own latency
    /// (the receiving application, the driver and the writer on both sides). It is also what a
    /// message can find ahead of it in TCP, so it trades throughput for latency: on loopback
    /// (`THROUGHPUT_WINDOW_MIB=N cargo bench --bench throughput`) 2 MiB gave 1313–1322 MB/s and
    /// a 2.0 ms round-trip p99 under a stream, 4 MiB 1411–1681 MB/s and 3.8 ms, 8 MiB
    /// 1395–1628 MB/s and 6.3 ms. `chunk_size` to 1 GiB.
    pub stream_window: u32,
    /// Credit granted to all incoming streams together: the receive-side memory bound.
    /// Default 8 MiB (two streams at full window), which also bounds the stream data a message
    /// can find ahead of it when several streams run. `stream_window` to 4 GiB − 1.
    pub connection_window: u32,
    /// Most incoming streams open at once. Default 16. 1 to 1024.
    pub max_streams: u16,
    /// Bytes of unacknowledged sequenced frames kept for replay after a reconnect. Default
    /// 8 MiB (SignalR keeps 100 KB, but our messages may be 1 MiB). `max_message_size` to 1 GiB.
    pub replay_buffer_bytes: u64,
    /// Sends that may wait while disconnected or blocked before `send` waits or fails fast.
    /// Default 256. 1 to 65536.
    pub send_queue: u32,
    /// Acknowledge after this many sequenced frames at most. Default 32. 1 to 1024.
    pub ack_every: u32,
    /// … or after this delay at most. Default 5 ms: `send` resolves on the acknowledgement,
    /// so the delay adds to every lone send's latency (100 ms made a three-message exchange
    /// on loopback take half a second); 5 ms still folds a burst into one `ACK`. SignalR acks
    /// at most once a second, for throughput rather than latency. TOML key `ack_delay_ms`;
    /// 1 ms to 10 s.
    #[serde(rename = "ack_delay_ms", with = "ms")]
    pub ack_delay: Duration,
    /// Ping an idle connection this often. Default 15 s (SignalR keep-alive). TOML key
    /// `heartbeat_interval_ms`; 100 ms to 1 h.
    #[serde(rename = "heartbeat_interval_ms", with = "ms")]
    pub heartbeat_interval: Duration,
    /// Declare the peer dead after this long without any frame. Default 30 s (SignalR). At
    /// least twice the interval, so one late pong never causes a reconnect storm
    /// (aspnetcore #44197). TOML key `heartbeat_timeout_ms`; up to 1 day.
    #[serde(rename = "heartbeat_timeout_ms", with = "ms")]
    pub heartbeat_timeout: Duration,
    /// Report the connection degraded when the round-trip time exceeds this. Default 2 s.
    /// TOML key `degraded_rtt_ms`; 1 ms to `heartbeat_timeout`.
    #[serde(rename = "degraded_rtt_ms", with = "ms")]
    pub degraded_rtt: Duration,
    /// First reconnect delay. Default 1 s (gRPC). TOML key `backoff_initial_ms`;
    /// 1 ms to `backoff_max`.
    #[serde(rename = "backoff_initial_ms", with = "ms")]
    pub backoff_initial: Duration,
    /// Growth of the delay per failed attempt. Default 1.6 (gRPC). 1.0 to 10.0.
    pub backoff_multiplier: f64,
    /// Largest reconnect delay. Default 30 s: gRPC uses 120 s, but a clipboard that lags
    /// two minutes after Wi-Fi returns feels broken. TOML key `backoff_max_ms`; up to 1 day.
    #[serde(rename = "backoff_max_ms", with = "ms")]
    pub backoff_max: Duration,
    /// Fraction of the delay drawn at random from the seeded RNG: 1.0 is AWS "full jitter"
    /// (`rand(0, delay)`), which spreads retries best; 0.0 is none. Default 1.0. 0.0 to 1.0.
    pub backoff_jitter: f64,
    /// A connection up this long resets the backoff to `backoff_initial`. Default 60 s.
    /// TOML key `backoff_reset_after_ms`; up to 1 day.
    #[serde(rename = "backoff_reset_after_ms", with = "ms")]
    pub backoff_reset_after: Duration,
    /// Keep a session across network failures: the dialer reconnects with backoff and both
    /// sides resume where they were (PROTOCOL.md §4), so sends neither fail nor repeat.
    /// Default true. False ends the connection at the first failure, with every pending send
    /// settled as "delivery unknown" (the application redials).
    pub reconnect: bool,
    /// Give up (state offline) after this many failed attempts in a row; 0 never gives up.
    /// Default 0: the sync engine wants its peers back whenever they return.
    pub max_reconnect_attempts: u32,
    /// How long a disconnected session is kept for resumption. Default 5 min: a laptop lid
    /// closed for a coffee resumes; longer outages restart the session and report the sends
    /// of unknown fate. TOML key `resume_window_ms`; up to 7 days.
    #[serde(rename = "resume_window_ms", with = "ms")]
    pub resume_window: Duration,
    /// Limit on the TCP (or Unix) connect. Default 10 s (gRPC uses 20 s; a LAN peer answers
    /// in milliseconds). TOML key `connect_timeout_ms`; 1 ms to 10 min.
    #[serde(rename = "connect_timeout_ms", with = "ms")]
    pub connect_timeout: Duration,
    /// Limit on TLS plus the WebSocket upgrade. Default 10 s. TOML key
    /// `handshake_timeout_ms`; 1 ms to 10 min.
    #[serde(rename = "handshake_timeout_ms", with = "ms")]
    pub handshake_timeout: Duration,
    /// Limit on the ClipSync handshake (hello, auth, resume), the pre-auth deadline. Default
    /// 5 s: KDE Connect's CVE-2020-26164 came from an unbounded pre-auth phase. TOML key
    /// `auth_timeout_ms`; 1 ms to 10 min.
    #[serde(rename = "auth_timeout_ms", with = "ms")]
    pub auth_timeout: Duration,
    /// Limit on one socket write; a peer that stops reading is declared dead after it.
    /// Default 30 s. TOML key `write_timeout_ms`; 1 ms to 10 min.
    #[serde(rename = "write_timeout_ms", with = "ms")]
    pub write_timeout: Duration,
    /// Most authenticated sessions a listener holds at once, live or waiting for their peer to
    /// resume; a session's resumes use its own place. Connections still in setup do not count
    /// here (see `max_startups`). Default 64 (a person has a handful of machines; the rest is
    /// headroom). 1 to 65536.
    pub max_connections: u32,
    /// Most connections a listener has in setup (TLS, upgrade, authentication) at once,
    /// OpenSSH's `MaxStartups` "full". A newcomer beyond it evicts the oldest one in setup for
    /// at least a second, or is refused. Default 100 (OpenSSH's). `max_startups_start` to 65536.
    pub max_startups: u32,
    /// Connections in setup at which random early drop begins (OpenSSH's `MaxStartups`
    /// "start"). Default 10 (OpenSSH's). 1 to `max_startups`.
    pub max_startups_start: u32,
    /// Drop probability at `max_startups_start`, in percent, growing linearly to 100 at
    /// `max_startups` (OpenSSH's "rate"). Default 30 (OpenSSH's). 0 to 100.
    pub max_startups_rate: u32,
    /// Most connections in setup from one source address (OpenSSH's `PerSourceMaxStartups`);
    /// a newcomer beyond it evicts that address's oldest one in setup for at least a second, or
    /// is refused. Default 10. 1 to `max_startups`.
    pub per_source_max_startups: u32,
    /// An accepted socket that sends no byte within this is closed (a client starts the TLS
    /// handshake at once). Default 2 s. TOML key `first_byte_timeout_ms`; 1 ms to
    /// `handshake_timeout_ms`.
    #[serde(rename = "first_byte_timeout_ms", with = "ms")]
    pub first_byte_timeout: Duration,
    /// Root seed of every random draw (backoff jitter, nonces, session ids). Unset: drawn
    /// from the operating system once at start. The simulator always sets it.
    pub rng_seed: Option<u64>,
    /// Allow WebSocket without TLS, for Unix sockets and tests. Default false; never a
    /// fallback: a plaintext peer and a TLS peer refuse each other.
    pub allow_plaintext: bool,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            max_frame_size: MIB + KIB,
            max_message_size: MIB,
            stream_threshold: 256 * KIB,
            chunk_size: 64 * KIB,
            stream_window: 4 * MIB,
            connection_window: 8 * MIB,
            max_streams: 16,
            replay_buffer_bytes: 8 * u64::from(MIB),
            send_queue: 256,
            ack_every: 32,
            ack_delay: Duration::from_millis(5),
            heartbeat_interval: Duration::from_secs(15),
            heartbeat_timeout: Duration::from_secs(30),
            degraded_rtt: Duration::from_secs(2),
            backoff_initial: Duration::from_secs(1),
            backoff_multiplier: 1.6,
            backoff_max: Duration::from_secs(30),
            backoff_jitter: 1.0,
            backoff_reset_after: Duration::from_secs(60),
            reconnect: true,
            max_reconnect_attempts: 0,
            resume_window: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            max_connections: 64,
            max_startups: 100,
            max_startups_start: 10,
            max_startups_rate: 30,
            per_source_max_startups: 10,
            first_byte_timeout: Duration::from_secs(2),
            rng_seed: None,
            allow_plaintext: false,
        }
    }
}

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
const MS: Duration = Duration::from_millis(1);

impl TransportConfig {
    /// The reconnection backoff policy of these settings (`backoff_*`).
    pub fn backoff_policy(&self) -> crate::core::BackoffPolicy {
        crate::core::BackoffPolicy {
            initial: self.backoff_initial,
            multiplier: self.backoff_multiplier,
            max: self.backoff_max,
            jitter: self.backoff_jitter,
            reset_after: self.backoff_reset_after,
        }
    }

    /// Parses TOML and validates it. Missing keys keep their defaults.
    pub fn from_toml_str(s: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(s).map_err(|e| ConfigError::Parse {
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// The configuration as TOML, every key present (what `clipsync config` prints).
    pub fn to_toml(&self) -> String {
        // Serializing plain numbers, booleans and an optional integer cannot fail.
        toml::to_string(self).unwrap_or_default()
    }

    /// Checks every field against its allowed range; the error names the first bad field
    /// by its TOML key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        range(
            "max_frame_size",
            self.max_frame_size,
            16 * KIB,
            16 * MIB + KIB,
        )?;
        range(
            "max_message_size",
            self.max_message_size,
            1,
            self.max_frame_size - MESSAGE_OVERHEAD,
        )?;
        range(
            "stream_threshold",
            self.stream_threshold,
            1,
            self.max_message_size,
        )?;
        range(
            "chunk_size",
            self.chunk_size,
            KIB,
            self.max_frame_size - CHUNK_OVERHEAD,
        )?;
        range(
            "stream_window",
            self.stream_window,
            self.chunk_size,
            1024 * MIB,
        )?;
        range(
            "connection_window",
            self.connection_window,
            self.stream_window,
            u32::MAX,
        )?;
        range("max_streams", self.max_streams, 1, 1024)?;
        range(
            "replay_buffer_bytes",
            self.replay_buffer_bytes,
            u64::from(self.max_message_size),
            1024 * u64::from(MIB),
        )?;
        range("send_queue", self.send_queue, 1, 65_536)?;
        range("ack_every", self.ack_every, 1, 1024)?;
        duration("ack_delay_ms", self.ack_delay, MS, 10 * SECOND)?;
        duration(
            "heartbeat_interval_ms",
            self.heartbeat_interval,
            Duration::from_millis(100),
            HOUR,
        )?;
        duration(
            "heartbeat_timeout_ms",
            self.heartbeat_timeout,
            self.heartbeat_interval * 2,
            DAY,
        )?;
        duration(
            "degraded_rtt_ms",
            self.degraded_rtt,
            MS,
            self.heartbeat_timeout,
        )?;
        duration("backoff_max_ms", self.backoff_max, MS, DAY)?;
        duration(
            "backoff_initial_ms",
            self.backoff_initial,
            MS,
            self.backoff_max,
        )?;
        float("backoff_multiplier", self.backoff_multiplier, 1.0, 10.0)?;
        float("backoff_jitter", self.backoff_jitter, 0.0, 1.0)?;
        duration(
            "backoff_reset_after_ms",
            self.backoff_reset_after,
            Duration::ZERO,
            DAY,
        )?;
        duration(
            "resume_window_ms",
            self.resume_window,
            Duration::ZERO,
            7 * DAY,
        )?;
        duration("connect_timeout_ms", self.connect_timeout, MS, 10 * MINUTE)?;
        duration(
            "handshake_timeout_ms",
            self.handshake_timeout,
            MS,
            10 * MINUTE,
        )?;
        duration("auth_timeout_ms", self.auth_timeout, MS, 10 * MINUTE)?;
        duration("write_timeout_ms", self.write_timeout, MS, 10 * MINUTE)?;
        range("max_connections", self.max_connections, 1, 65_536)?;
        range(
            "max_startups",
            self.max_startups,
            self.max_startups_start,
            65_536,
        )?;
        range(
            "max_startups_start",
            self.max_startups_start,
            1,
            self.max_startups,
        )?;
        range("max_startups_rate", self.max_startups_rate, 0, 100)?;
        range(
            "per_source_max_startups",
            self.per_source_max_startups,
            1,
            self.max_startups,
        )?;
        duration(
            "first_byte_timeout_ms",
            self.first_byte_timeout,
            MS,
            self.handshake_timeout,
        )?;
        Ok(())
    }

    /// The limits this side announces in its `HELLO` (PROTOCOL.md §3.1).
    pub fn peer_limits(&self) -> PeerLimits {
        PeerLimits {
            max_frame_size: self.max_frame_size,
            max_message_size: self.max_message_size,
            stream_window: self.stream_window,
            connection_window: self.connection_window,
            max_streams: self.max_streams,
            heartbeat_interval_ms: millis_u32(self.heartbeat_interval),
            idle_timeout_ms: millis_u32(self.heartbeat_timeout),
        }
    }

    /// What the decoder enforces once authenticated.
    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_frame_size: self.max_frame_size as usize,
        }
    }
}

fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn range<T>(field: &'static str, v: T, min: T, max: T) -> Result<(), ConfigError>
where
    T: PartialOrd + std::fmt::Display,
{
    if v < min || v > max {
        return Err(ConfigError::Invalid {
            field,
            value: v.to_string(),
            allowed: format!("{min} to {max}"),
        });
    }
    Ok(())
}

fn float(field: &'static str, v: f64, min: f64, max: f64) -> Result<(), ConfigError> {
    if !(v.is_finite() && v >= min && v <= max) {
        return Err(ConfigError::Invalid {
            field,
            value: v.to_string(),
            allowed: format!("{min:.1} to {max:.1}"),
        });
    }
    Ok(())
}

fn duration(
    field: &'static str,
    v: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), ConfigError> {
    if v < min || v > max {
        return Err(ConfigError::Invalid {
            field,
            value: format!("{} ms", v.as_millis()),
            allowed: format!("{} to {} ms", min.as_millis(), max.as_millis()),
        });
    }
    Ok(())
}

/// Durations as whole milliseconds in TOML.
mod ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
