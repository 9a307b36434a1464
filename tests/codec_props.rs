//! Properties of the wire codec, over arbitrary frames and arbitrary bytes.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use bytes::Bytes;
use clipsync::wire::*;
use proptest::prelude::*;

const LIMITS: DecodeLimits = DecodeLimits {
    max_frame_size: 1 << 20,
};

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

fn nonempty_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 1..=max).prop_map(Bytes::from)
}

fn content_type() -> impl Strategy<Value = String> {
    prop_oneof![Just("text/plain".to_string()), "[ -~]{1,64}", "[ -~]{255}",]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), ".{0,40}", "[a-z]{1024}"]
        .prop_filter("at most 1024 bytes", |t| t.len() <= MAX_TEXT_LEN)
}

fn reason() -> impl Strategy<Value = ReasonCode> {
    any::<u16>().prop_map(ReasonCode::from_code)
}

/// A `STREAM_ABORT` says why: `normal` (0) is no reason to abort, and encoding refuses it
/// (drawn from every u16, 0 came up once in about 65,000 frames and failed CI).
fn abort_reason() -> impl Strategy<Value = ReasonCode> {
    reason().prop_filter("an abort has a reason", |r| *r != ReasonCode::Normal)
}

fn session() -> impl Strategy<Value = SessionId> {
    any::<[u8; 16]>().prop_map(SessionId)
}

fn nonzero_session() -> impl Strategy<Value = SessionId> {
    session().prop_filter("nonzero", |s| !s.is_none())
}

fn limits() -> impl Strategy<Value = PeerLimits> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u16>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(a, b, c, d, e, f, g)| PeerLimits {
            max_frame_size: a,
            max_message_size: b,
            stream_window: c,
            connection_window: d,
            max_streams: e,
            heartbeat_interval_ms: f,
            idle_timeout_ms: g,
        })
}

fn hello() -> impl Strategy<Value = Frame> {
    (
        any::<u8>(),
        prop_oneof![Just(Role::Dialer), Just(Role::Listener)],
        any::<[u8; 32]>(),
        any::<u32>(),
        limits(),
        bytes(200),
        proptest::collection::vec(
            (any::<u16>(), bytes(MAX_EXTENSION_LEN))
                .prop_map(|(kind, data)| Extension { kind, data }),
            0..=MAX_EXTENSIONS,
        ),
    )
        .prop_map(
            |(protocol_version, role, nonce, capabilities, limits, public_key, extensions)| {
                Frame::Hello(Hello {
                    protocol_version,
                    role,
                    nonce,
                    capabilities,
                    limits,
                    public_key,
                    extensions,
                })
            },
        )
}

/// Any valid frame of any type.
fn frame() -> impl Strategy<Value = Frame> {
    let seq = 1..=u64::MAX;
    let id = 1..=u64::MAX;
    prop_oneof![
        hello(),
        bytes(MAX_SIGNATURE_LEN).prop_map(|signature| Frame::Auth(Auth { signature })),
        (reason(), text())
            .prop_map(|(reason, text)| Frame::AuthResult(AuthResult { reason, text })),
        (session(), any::<u64>()).prop_map(|(session, last_received)| Frame::Resume(Resume {
            session,
            last_received
        })),
        (nonzero_session(), any::<u64>()).prop_map(|(session, last_received)| {
            Frame::Resumed(Resumed {
                session,
                last_received,
            })
        }),
        (session(), nonzero_session(), reason()).prop_map(|(old_session, new_session, reason)| {
            Frame::SessionLost(SessionLost {
                old_session,
                new_session,
                reason,
            })
        }),
        (seq.clone(), content_type(), bytes(1024), bytes(4096)).prop_map(
            |(seq, content_type, metadata, payload)| {
                Frame::Message(MessageFrame {
                    seq,
                    content_type,
                    metadata,
                    payload,
                })
            }
        ),
        (
            seq.clone(),
            id.clone(),
            any::<Option<u64>>(),
            any::<Option<[u8; 32]>>(),
            any::<bool>(),
            content_type(),
            bytes(1024),
        )
            .prop_map(
                |(seq, stream_id, total_len, hash, offer, content_type, metadata)| {
                    Frame::StreamOpen(StreamOpen {
                        seq,
                        stream_id,
                        total_len,
                        hash,
                        offer,
                        content_type,
                        metadata,
                    })
                }
            ),
        (id.clone(), 0..=u64::MAX / 2, nonempty_bytes(4096)).prop_map(
            |(stream_id, offset, data)| Frame::StreamChunk(StreamChunk {
                stream_id,
                offset,
                data
            })
        ),
        (id.clone(), any::<u64>(), any::<[u8; 32]>()).prop_map(|(stream_id, total_len, hash)| {
            Frame::StreamEnd(StreamEnd {
                stream_id,
                total_len,
                hash,
            })
        }),
        (id.clone(), abort_reason(), text()).prop_map(|(stream_id, reason, text)| {
            Frame::StreamAbort(StreamAbort {
                stream_id,
                reason,
                text,
            })
        }),
        (seq, id, reason(), text()).prop_map(|(seq, stream_id, reason, text)| {
            Frame::StreamResult(StreamResult {
                seq,
                stream_id,
                reason,
                text,
            })
        }),
        any::<u64>().prop_map(|last_seq| Frame::Ack(Ack { last_seq })),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(stream_id, a, b)| {
            Frame::Credit(Credit {
                stream_id,
                acked: a.min(b),
                limit: a.max(b),
            })
        }),
        any::<u64>().prop_map(|timestamp_us| Frame::Ping(Ping { timestamp_us })),
        any::<u64>().prop_map(|timestamp_us| Frame::Pong(Pong { timestamp_us })),
        (reason(), any::<u64>(), text()).prop_map(|(reason, last_seq, text)| {
            Frame::GoAway(GoAway {
                reason,
                last_seq,
                text,
            })
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Encoding then decoding gives the same frame.
    #[test]
    fn every_frame_round_trips(f in frame()) {
        let bytes = f.encode().expect("generated frames are valid");
        prop_assert_eq!(Frame::decode(bytes, LIMITS), Ok(f));
    }

    /// Arbitrary bytes never panic: the decoder returns a frame or a typed error.
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Frame::decode(Bytes::from(data), LIMITS);
    }

    /// A valid header with an arbitrary body never panics either (reaches the field parsers,
    /// which random bytes rarely do).
    #[test]
    fn arbitrary_bodies_never_panic(
        ty in prop::sample::select(FrameType::ALL.to_vec()),
        flags in prop_oneof![Just(0u16), Just(3u16), any::<u16>()],
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut msg = vec![PROTOCOL_VERSION, ty.byte()];
        msg.extend_from_slice(&flags.to_be_bytes());
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes());
        msg.extend_from_slice(&body);
        if let Ok(f) = Frame::decode(Bytes::from(msg.clone()), LIMITS) {
            // Whatever decodes re-encodes to the same bytes: one frame, one encoding.
            let again = f.encode().expect("decoded frames are valid");
            prop_assert_eq!(again.as_ref(), &msg[..]);
        }
    }

    /// Every truncation of a valid frame is refused with a typed error, never misread.
    #[test]
    fn every_truncation_is_refused(f in frame()) {
        let bytes = f.encode().expect("generated frames are valid");
        for cut in 0..bytes.len() {
            let r = Frame::decode(bytes.slice(..cut), LIMITS);
            prop_assert!(r.is_err(), "prefix of {} bytes decoded as {:?}", cut, r);
        }
    }

    /// A truncated body with the header's length fixed up to match is still refused, by the
    /// field parser this time (the length check alone does not carry the property).
    #[test]
    fn truncated_bodies_with_matching_length_are_refused(f in frame()) {
        let bytes = f.encode().expect("generated frames are valid");
        let body_len = bytes.len() - HEADER_LEN;
        for cut in 0..body_len {
            let mut msg = bytes[..HEADER_LEN + cut].to_vec();
            msg[4..8].copy_from_slice(&(cut as u32).to_be_bytes());
            if let Ok(g) = Frame::decode(Bytes::from(msg), LIMITS) {
                // Frames ending in a `rest` field (payload, data) legitimately decode shorter;
                // they must then be a *different* frame of the same type, never a misread type.
                prop_assert_eq!(g.frame_type(), f.frame_type());
                prop_assert!(
                    matches!(g, Frame::Message(_) | Frame::StreamChunk(_)),
                    "{:?} decoded from a cut body", g
                );
            }
        }
    }

    /// A valid frame with bytes appended is refused (the header length disagrees).
    #[test]
    fn trailing_bytes_are_refused(f in frame(), extra in proptest::collection::vec(any::<u8>(), 1..16)) {
        let mut msg = f.encode().expect("generated frames are valid").to_vec();
        msg.extend_from_slice(&extra);
        let r = Frame::decode(Bytes::from(msg), LIMITS);
        prop_assert!(matches!(r, Err(DecodeError::LengthMismatch { .. })), "{:?}", r);
    }

    /// Appended bytes with the length fixed up are refused as trailing bytes, except for
    /// frames whose last field is the rest of the frame.
    #[test]
    fn trailing_bytes_with_matching_length_are_refused(
        f in frame(),
        extra in proptest::collection::vec(any::<u8>(), 1..16),
    ) {
        let mut msg = f.encode().expect("generated frames are valid").to_vec();
        msg.extend_from_slice(&extra);
        let len = (msg.len() - HEADER_LEN) as u32;
        msg[4..8].copy_from_slice(&len.to_be_bytes());
        let r = Frame::decode(Bytes::from(msg), LIMITS);
        if matches!(f, Frame::Message(_) | Frame::StreamChunk(_)) {
            prop_assert!(r.is_ok());
        } else {
            prop_assert!(
                matches!(r, Err(DecodeError::TrailingBytes { .. })),
                "{:?}", r
            );
        }
    }

    /// A frame over the limit is refused before anything is read.
    #[test]
    fn oversized_frames_are_refused(f in frame()) {
        let bytes = f.encode().expect("generated frames are valid");
        let limits = DecodeLimits { max_frame_size: bytes.len() - 1 };
        prop_assert_eq!(
            Frame::decode(bytes.clone(), limits),
            Err(DecodeError::FrameTooLarge { len: bytes.len(), max: bytes.len() - 1 })
        );
    }
}

#[test]
fn unknown_types_are_refused_unless_ignorable() {
    let msg = |flags: u16| {
        Bytes::from(vec![
            1,
            0x7e,
            (flags >> 8) as u8,
            flags as u8,
            0,
            0,
            0,
            1,
            9,
        ])
    };
    let e = Frame::decode(msg(0), LIMITS).unwrap_err();
    assert_eq!(
        e,
        DecodeError::UnknownType {
            frame_type: 0x7e,
            ignorable: false
        }
    );
    assert!(!e.is_ignorable());
    assert_eq!(e.reason(), ReasonCode::UnknownFrameType);
    let e = Frame::decode(msg(FLAG_IGNORABLE), LIMITS).unwrap_err();
    assert!(e.is_ignorable());
}

#[test]
fn other_versions_are_refused() {
    let mut msg = Frame::Ack(Ack { last_seq: 1 }).encode().unwrap().to_vec();
    msg[0] = 2;
    let e = Frame::decode(Bytes::from(msg), LIMITS).unwrap_err();
    assert_eq!(e, DecodeError::UnsupportedVersion { version: 2 });
    assert_eq!(e.reason(), ReasonCode::UnsupportedVersion);
}

#[test]
fn undefined_flags_are_refused() {
    let mut msg = Frame::Ack(Ack { last_seq: 1 }).encode().unwrap().to_vec();
    msg[3] = 1;
    assert!(matches!(
        Frame::decode(Bytes::from(msg), LIMITS),
        Err(DecodeError::InvalidFlags {
            frame: FrameType::Ack,
            flags: 1
        })
    ));
}

/// Issue 12, item 12 (PROTOCOL.md §5.5): STREAM_ABORT with reason 0 would settle an aborted
/// stream as verified; it is malformed.
#[test]
fn a_stream_abort_with_reason_zero_is_refused() {
    // STREAM_ABORT (0x24), stream 1, reason 0, empty text.
    let msg = hex("01 24 0000 0000000c 0000000000000001 0000 0000");
    let e = Frame::decode(Bytes::from(msg), LIMITS).unwrap_err();
    assert!(
        matches!(
            e,
            DecodeError::InvalidField {
                field: "reason",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.reason(), ReasonCode::ProtocolError);
    let mut ok = hex("01 24 0000 0000000c 0000000000000001 000f 0000");
    assert!(Frame::decode(Bytes::from(std::mem::take(&mut ok)), LIMITS).is_ok());
}

/// Issue 12, item 5 (PROTOCOL.md §2): the IGNORABLE bit is valid on every type; on a known
/// type the frame is decoded as usual.
#[test]
fn the_ignorable_bit_is_valid_on_every_type() {
    for (name, frame) in clipsync::wire::examples::all() {
        let mut msg = frame.encode().unwrap().to_vec();
        msg[2] |= 0x80;
        let decoded = Frame::decode(Bytes::from(msg), LIMITS);
        assert_eq!(decoded.as_ref(), Ok(&frame), "{name}");
    }
}

#[test]
fn fields_the_protocol_forbids_are_refused() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        // MESSAGE with seq 0.
        (hex("01 20 0000 0000000a 0000000000000000 01 61"), "seq"),
        // MESSAGE with an empty content type.
        (
            hex("01 20 0000 00000009 0000000000000001 00"),
            "content_type",
        ),
        // MESSAGE with a control character in the content type.
        (
            hex("01 20 0000 0000000a 0000000000000001 01 0a"),
            "content_type",
        ),
        // STREAM_CHUNK with no data.
        (
            hex("01 22 0000 00000010 0000000000000001 0000000000000000"),
            "data",
        ),
        // STREAM_CHUNK on stream 0.
        (
            hex("01 22 0000 00000011 0000000000000000 0000000000000000 61"),
            "stream_id",
        ),
        // STREAM_CHUNK whose end overflows u64.
        (
            hex("01 22 0000 00000011 0000000000000001 ffffffffffffffff 61"),
            "offset",
        ),
        // CREDIT with acked above limit.
        (
            hex("01 31 0000 00000018 0000000000000001 0000000000000002 0000000000000001"),
            "acked",
        ),
        // HELLO with role 2 (the rest is irrelevant: the role is refused first).
        (hex("01 01 0000 00000002 01 02"), "role"),
        // AUTH_RESULT whose text is not UTF-8.
        (hex("01 03 0000 00000005 0000 0001 ff"), "text"),
        // RESUMED with a zero session.
        (
            hex("01 11 0000 00000018 00000000000000000000000000000000 0000000000000000"),
            "session",
        ),
    ];
    for (msg, field) in cases {
        match Frame::decode(Bytes::from(msg.clone()), LIMITS) {
            Err(DecodeError::InvalidField { field: f, .. }) => assert_eq!(f, field, "{msg:02x?}"),
            other => panic!("{msg:02x?}: expected InvalidField {field}, got {other:?}"),
        }
    }
}

#[test]
fn stream_open_fields_must_be_zero_without_their_flag() {
    let open = Frame::StreamOpen(StreamOpen {
        seq: 1,
        stream_id: 1,
        total_len: Some(5),
        hash: None,
        content_type: "a/b".into(),
        offer: false,
        metadata: Bytes::new(),
    });
    let mut msg = open.encode().unwrap().to_vec();
    msg[3] = 0; // clear LENGTH_KNOWN, keep total_len = 5
    assert!(matches!(
        Frame::decode(Bytes::from(msg), LIMITS),
        Err(DecodeError::InvalidField {
            field: "total_len",
            ..
        })
    ));
}

#[test]
fn the_encoder_refuses_what_the_decoder_would() {
    let long = "x".repeat(MAX_TEXT_LEN + 1);
    let bad = [
        Frame::Message(MessageFrame {
            seq: 1,
            content_type: String::new(),
            metadata: Bytes::new(),
            payload: Bytes::new(),
        }),
        Frame::Message(MessageFrame {
            seq: 1,
            content_type: "é".into(),
            metadata: Bytes::new(),
            payload: Bytes::new(),
        }),
        Frame::Message(MessageFrame {
            seq: 0,
            content_type: "a".into(),
            metadata: Bytes::new(),
            payload: Bytes::new(),
        }),
        Frame::GoAway(GoAway {
            reason: ReasonCode::Normal,
            last_seq: 0,
            text: long,
        }),
        Frame::StreamChunk(StreamChunk {
            stream_id: 1,
            offset: 0,
            data: Bytes::new(),
        }),
        Frame::Credit(Credit {
            stream_id: 0,
            acked: 2,
            limit: 1,
        }),
        Frame::Auth(Auth {
            signature: Bytes::from(vec![0; MAX_SIGNATURE_LEN + 1]),
        }),
    ];
    for f in bad {
        assert!(
            matches!(f.encode(), Err(EncodeError::InvalidField { .. })),
            "{f:?} encoded"
        );
    }
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Issue 12, item 8 (PROTOCOL.md §3.1): every HELLO field has a range; a HELLO outside it is
/// refused. The example (ClipSync's defaults) is inside.
#[test]
fn hello_limits_outside_their_ranges_are_refused() {
    use clipsync::wire::PeerLimits;
    let ok = clipsync::wire::examples::example_limits();
    assert_eq!(ok.problem(), None);
    let bad: Vec<(PeerLimits, &str)> = vec![
        (
            PeerLimits {
                max_frame_size: 1000,
                ..ok
            },
            "max_frame_size",
        ),
        (
            PeerLimits {
                max_message_size: 0,
                ..ok
            },
            "max_message_size",
        ),
        (
            PeerLimits {
                stream_window: 0,
                ..ok
            },
            "stream_window",
        ),
        (
            PeerLimits {
                connection_window: ok.stream_window - 1,
                ..ok
            },
            "connection_window",
        ),
        (
            PeerLimits {
                heartbeat_interval_ms: 1,
                idle_timeout_ms: 2,
                ..ok
            },
            "heartbeat_interval_ms",
        ),
        (
            PeerLimits {
                idle_timeout_ms: ok.heartbeat_interval_ms + 1,
                ..ok
            },
            "idle_timeout_ms",
        ),
        (
            PeerLimits {
                idle_timeout_ms: 86_400_001,
                ..ok
            },
            "idle_timeout_ms",
        ),
    ];
    for (limits, field) in bad {
        let p = limits.problem();
        assert!(p.is_some_and(|p| p.contains(field)), "{field}: {p:?}");
    }
}
