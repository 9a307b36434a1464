//! One example of each frame type: the frames whose bytes PROTOCOL.md shows.
//!
//! The tests encode each of these and compare the bytes with the hex block of the same name in
//! PROTOCOL.md, so the document cannot drift from the code. `clipsync frames` prints them.

use bytes::Bytes;

use super::*;

/// The SSH wire encoding of an ed25519 public key whose 32 key bytes are `0x00..=0x1f`.
pub fn example_public_key() -> Bytes {
    let mut k = Vec::with_capacity(51);
    k.extend_from_slice(&11u32.to_be_bytes());
    k.extend_from_slice(b"ssh-ed25519");
    k.extend_from_slice(&32u32.to_be_bytes());
    k.extend((0u8..32).collect::<Vec<_>>());
    Bytes::from(k)
}

/// The limits every example `HELLO` announces: [`crate::config::TransportConfig`]'s defaults.
pub fn example_limits() -> PeerLimits {
    PeerLimits {
        max_frame_size: 1_049_600,
        max_message_size: 1_048_576,
        stream_window: 4_194_304,
        connection_window: 8_388_608,
        max_streams: 16,
        heartbeat_interval_ms: 15_000,
        idle_timeout_ms: 30_000,
    }
}

const SESSION_A: SessionId = SessionId([
    0x5e, 0x55, 0x10, 0x4a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
]);
const SESSION_B: SessionId = SessionId([
    0x5e, 0x55, 0x10, 0x4b, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02,
]);
/// BLAKE3 of the three bytes `abc` (the BLAKE3 reference's test vector).
pub const BLAKE3_ABC: [u8; 32] = [
    0x64, 0x37, 0xb3, 0xac, 0x38, 0x46, 0x51, 0x33, 0xff, 0xb6, 0x3b, 0x75, 0x27, 0x3a, 0x8d, 0xb5,
    0x48, 0xc5, 0x58, 0x46, 0x5d, 0x79, 0xdb, 0x03, 0xfd, 0x35, 0x9c, 0x6c, 0xd5, 0xbd, 0x9d, 0x85,
];

/// Every example, by the name of its hex block in PROTOCOL.md.
pub fn all() -> Vec<(&'static str, Frame)> {
    vec![
        (
            "hello",
            Frame::Hello(Hello {
                protocol_version: 1,
                role: Role::Dialer,
                nonce: [0xa5; 32],
                capabilities: CAP_STREAMS | CAP_RESUME,
                limits: example_limits(),
                public_key: example_public_key(),
                extensions: vec![],
            }),
        ),
        (
            "hello-with-extension",
            Frame::Hello(Hello {
                protocol_version: 1,
                role: Role::Listener,
                nonce: [0x3c; 32],
                capabilities: CAP_STREAMS,
                limits: example_limits(),
                public_key: example_public_key(),
                extensions: vec![Extension {
                    kind: 0x7f01,
                    data: Bytes::from_static(b"hi"),
                }],
            }),
        ),
        (
            "auth",
            Frame::Auth(Auth {
                signature: Bytes::from_static(b"SSHSIG\x00\x00\x00\x01"),
            }),
        ),
        (
            "auth-result-ok",
            Frame::AuthResult(AuthResult {
                reason: ReasonCode::Normal,
                text: String::new(),
            }),
        ),
        (
            "auth-result-refused",
            Frame::AuthResult(AuthResult {
                reason: ReasonCode::KeyNotAuthorized,
                text: "key not trusted".into(),
            }),
        ),
        (
            "resume",
            Frame::Resume(Resume {
                session: SESSION_A,
                last_received: 41,
            }),
        ),
        (
            "resumed",
            Frame::Resumed(Resumed {
                session: SESSION_A,
                last_received: 17,
            }),
        ),
        (
            "session-lost",
            Frame::SessionLost(SessionLost {
                old_session: SESSION_A,
                new_session: SESSION_B,
                reason: ReasonCode::SessionUnknown,
            }),
        ),
        (
            "message",
            Frame::Message(MessageFrame {
                seq: 1,
                content_type: "text/plain".into(),
                metadata: Bytes::new(),
                payload: Bytes::from_static(b"hello"),
            }),
        ),
        (
            "message-with-metadata",
            Frame::Message(MessageFrame {
                seq: 4,
                content_type: "text/plain".into(),
                metadata: Bytes::from_static(b"clip-7"),
                payload: Bytes::from_static(b"hello"),
            }),
        ),
        (
            "stream-open",
            Frame::StreamOpen(StreamOpen {
                seq: 2,
                stream_id: 1,
                total_len: Some(3),
                hash: Some(BLAKE3_ABC),
                offer: false,
                content_type: "image/png".into(),
                metadata: Bytes::new(),
            }),
        ),
        (
            "stream-open-offer",
            Frame::StreamOpen(StreamOpen {
                seq: 5,
                stream_id: 3,
                total_len: Some(3),
                hash: Some(BLAKE3_ABC),
                offer: true,
                content_type: "image/png".into(),
                metadata: Bytes::from_static(b"clip-8"),
            }),
        ),
        (
            "stream-open-unknown-length",
            Frame::StreamOpen(StreamOpen {
                seq: 3,
                stream_id: 2,
                total_len: None,
                hash: None,
                offer: false,
                content_type: "application/octet-stream".into(),
                metadata: Bytes::new(),
            }),
        ),
        (
            "stream-chunk",
            Frame::StreamChunk(StreamChunk {
                stream_id: 1,
                offset: 0,
                data: Bytes::from_static(b"abc"),
            }),
        ),
        (
            "stream-end",
            Frame::StreamEnd(StreamEnd {
                stream_id: 1,
                total_len: 3,
                hash: BLAKE3_ABC,
            }),
        ),
        (
            "stream-abort",
            Frame::StreamAbort(StreamAbort {
                stream_id: 2,
                reason: ReasonCode::Cancelled,
                text: "user cancelled".into(),
            }),
        ),
        (
            "stream-result",
            Frame::StreamResult(StreamResult {
                seq: 9,
                stream_id: 1,
                reason: ReasonCode::Normal,
                text: String::new(),
            }),
        ),
        (
            "stream-result-already-have",
            Frame::StreamResult(StreamResult {
                seq: 10,
                stream_id: 3,
                reason: ReasonCode::AlreadyHave,
                text: String::new(),
            }),
        ),
        (
            "credit-accept-offer",
            Frame::Credit(Credit {
                stream_id: 3,
                acked: 0,
                limit: 4_194_304,
            }),
        ),
        ("ack", Frame::Ack(Ack { last_seq: 3 })),
        (
            "credit",
            Frame::Credit(Credit {
                stream_id: 1,
                acked: 65_536,
                limit: 2_162_688,
            }),
        ),
        (
            "ping",
            Frame::Ping(Ping {
                timestamp_us: 1_000_000,
            }),
        ),
        (
            "pong",
            Frame::Pong(Pong {
                timestamp_us: 1_000_000,
            }),
        ),
        (
            "goaway",
            Frame::GoAway(GoAway {
                reason: ReasonCode::GoingAway,
                last_seq: 3,
                text: "shutting down".into(),
            }),
        ),
    ]
}
