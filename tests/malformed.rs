//! The malformed-frame catalogue (issue 16): one case per way a frame can be wrong, each with
//! the close code PROTOCOL.md gives for it.
//!
//! Part 1 feeds bytes to the decoder (PROTOCOL.md §2, §3–§6 field rules, §8 limits): every
//! header fault, every undefined flag, every field out of its range, every truncation and
//! trailing byte of every example frame. Part 2 feeds well-formed frames to an authenticated
//! session where they are illegal (§4–§6): the close reason, or the stream's failure, is what
//! the text says. What happens before authentication (a data frame before HELLO, a frame over
//! 16 KiB, a text message, a truncated HELLO, the deadline) is checked on real sockets in
//! `tests/refusals.rs`.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use clipsync::core::{CloseCause, Event, Session, SessionParams};
use clipsync::wire::examples::{all, example_limits};
use clipsync::wire::*;

const LIMITS: DecodeLimits = DecodeLimits {
    max_frame_size: 64 * 1024,
};

/// What PROTOCOL.md says a receiver does with the bytes.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    /// Close with this reason (WebSocket code 4000 + reason).
    Close(ReasonCode),
    /// Skip the frame and carry on (§2, §10: an unknown type with IGNORABLE).
    Skip,
}

fn decoded(bytes: &[u8]) -> Result<Frame, Expect> {
    Frame::decode(Bytes::copy_from_slice(bytes), LIMITS).map_err(|e| {
        if e.is_ignorable() {
            Expect::Skip
        } else {
            Expect::Close(e.reason())
        }
    })
}

/// A frame with header version 1, `ty`, `flags` and `body` (the length is right).
fn raw(ty: u8, flags: u16, body: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u8(1);
    b.put_u8(ty);
    b.put_u16(flags);
    b.put_u32(u32::try_from(body.len()).unwrap());
    b.put_slice(body);
    b.to_vec()
}

fn example(name: &str) -> Vec<u8> {
    let (_, f) = all().into_iter().find(|(n, _)| *n == name).unwrap();
    f.encode().unwrap().to_vec()
}

/// `bytes` with byte `at` (counted from the start of the frame) replaced by `v`.
fn with(mut bytes: Vec<u8>, at: usize, v: u8) -> Vec<u8> {
    bytes[at] = v;
    bytes
}

#[test]
fn every_header_fault_has_its_close_code() {
    use Expect::*;
    use ReasonCode::*;
    let ping = example("ping");
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("empty message", vec![], Close(ProtocolError)),
        (
            "header cut at 7 bytes",
            ping[..7].to_vec(),
            Close(ProtocolError),
        ),
        (
            "version 0",
            with(ping.clone(), 0, 0),
            Close(UnsupportedVersion),
        ),
        (
            "version 2",
            with(ping.clone(), 0, 2),
            Close(UnsupportedVersion),
        ),
        (
            "length above the bytes present",
            with(ping.clone(), 7, 9),
            Close(ProtocolError),
        ),
        (
            "length below the bytes present",
            with(ping.clone(), 7, 7),
            Close(ProtocolError),
        ),
        (
            "unknown type",
            raw(0x7e, 0, b"future"),
            Close(UnknownFrameType),
        ),
        (
            "unknown type, IGNORABLE",
            raw(0x7e, 0x8000, b"future"),
            Skip,
        ),
        (
            "unknown type 0x00",
            raw(0x00, 0, b""),
            Close(UnknownFrameType),
        ),
        (
            "over max_frame_size",
            raw(0x20, 0, &vec![0; 64 * 1024]),
            Close(FrameTooLarge),
        ),
    ];
    for (name, bytes, want) in cases {
        assert_eq!(decoded(&bytes).err(), Some(want), "{name}");
    }
}

#[test]
fn undefined_flags_are_a_protocol_error_on_every_type() {
    for (name, f) in all() {
        let bytes = f.encode().unwrap().to_vec();
        // Every flag bit this type does not define (STREAM_OPEN defines 0x000f, MESSAGE
        // 0x0004; IGNORABLE, 0x8000, is valid everywhere).
        let defined: u16 = match f {
            Frame::StreamOpen(_) => 0x800f,
            Frame::Message(_) => 0x8004,
            _ => 0x8000,
        };
        for bit in 0..16 {
            let flag = 1u16 << bit;
            if defined & flag != 0 {
                continue;
            }
            let mut b = bytes.clone();
            let flags = u16::from_be_bytes([b[2], b[3]]) | flag;
            b[2..4].copy_from_slice(&flags.to_be_bytes());
            assert_eq!(
                decoded(&b).err(),
                Some(Expect::Close(ReasonCode::ProtocolError)),
                "{name} with flag 0x{flag:04x}"
            );
        }
    }
}

#[test]
fn every_truncation_and_trailing_byte_of_every_frame_is_a_protocol_error() {
    for (name, f) in all() {
        let bytes = f.encode().unwrap().to_vec();
        for cut in HEADER_LEN..bytes.len() {
            // The header says what is there: a body that ends inside a field.
            let b = raw(
                bytes[1],
                u16::from_be_bytes([bytes[2], bytes[3]]),
                &bytes[HEADER_LEN..cut],
            );
            let got = decoded(&b);
            // A few frames end in a variable field that may legally be shorter (a MESSAGE
            // payload, a chunk's data, a text); those cuts are other valid frames.
            if let Ok(shorter) = got {
                assert_ne!(shorter, f, "{name} cut at {cut}");
                continue;
            }
            assert_eq!(
                got.err(),
                Some(Expect::Close(ReasonCode::ProtocolError)),
                "{name} cut at {cut}"
            );
        }
        let mut longer = bytes[HEADER_LEN..].to_vec();
        longer.push(0);
        let b = raw(bytes[1], u16::from_be_bytes([bytes[2], bytes[3]]), &longer);
        match decoded(&b) {
            // A frame ending in `rest` takes the byte as payload.
            Ok(other) => assert!(
                matches!(other, Frame::Message(_) | Frame::StreamChunk(_)),
                "{name} with a trailing byte decoded as {other:?}"
            ),
            Err(e) => assert_eq!(e, Expect::Close(ReasonCode::ProtocolError), "{name}"),
        }
    }
}

#[test]
fn every_field_out_of_its_range_is_a_protocol_error() {
    let p = ReasonCode::ProtocolError;
    let h = HEADER_LEN;
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        // §3.1 HELLO: role is 0 or 1; the key is at most 4096 bytes.
        ("HELLO role 2", with(example("hello"), h + 1, 2)),
        // §4: RESUMED's session and SESSION_LOST's new session are never zero.
        (
            "RESUMED session zero",
            raw(
                0x11,
                0,
                &[vec![0; 16], 17u64.to_be_bytes().to_vec()].concat(),
            ),
        ),
        (
            "SESSION_LOST new_session zero",
            raw(
                0x12,
                0,
                &[vec![1; 16], vec![0; 16], 16u16.to_be_bytes().to_vec()].concat(),
            ),
        ),
        // §5: sequence numbers start at 1.
        (
            "MESSAGE seq 0",
            raw(
                0x20,
                0,
                &[vec![0; 8], vec![1, b'a'], b"x".to_vec()].concat(),
            ),
        ),
        // content_type: 1 to 255 bytes of printable ASCII.
        (
            "MESSAGE content type empty",
            raw(
                0x20,
                0,
                &[1u64.to_be_bytes().to_vec(), vec![0], b"x".to_vec()].concat(),
            ),
        ),
        (
            "MESSAGE content type with a control byte",
            raw(
                0x20,
                0,
                &[1u64.to_be_bytes().to_vec(), vec![1, 0x07], b"x".to_vec()].concat(),
            ),
        ),
        (
            "MESSAGE content type with a non-ASCII byte",
            raw(
                0x20,
                0,
                &[1u64.to_be_bytes().to_vec(), vec![1, 0xc3], b"x".to_vec()].concat(),
            ),
        ),
        // §5.2–§5.6: stream ids start at 1.
        ("STREAM_OPEN stream_id 0", {
            let mut b = example("stream-open");
            b[h + 8..h + 16].copy_from_slice(&[0; 8]);
            b
        }),
        ("STREAM_CHUNK stream_id 0", {
            let mut b = example("stream-chunk");
            b[h..h + 8].copy_from_slice(&[0; 8]);
            b
        }),
        ("STREAM_END stream_id 0", {
            let mut b = example("stream-end");
            b[h..h + 8].copy_from_slice(&[0; 8]);
            b
        }),
        ("STREAM_ABORT stream_id 0", {
            let mut b = example("stream-abort");
            b[h..h + 8].copy_from_slice(&[0; 8]);
            b
        }),
        // §5.3: a chunk carries at least one byte, and its end fits in 64 bits.
        (
            "STREAM_CHUNK without data",
            raw(0x22, 0, &[1u64.to_be_bytes(), 0u64.to_be_bytes()].concat()),
        ),
        (
            "STREAM_CHUNK offset + length overflows",
            raw(
                0x22,
                0,
                &[
                    1u64.to_be_bytes().to_vec(),
                    u64::MAX.to_be_bytes().to_vec(),
                    b"ab".to_vec(),
                ]
                .concat(),
            ),
        ),
        // §5.5: STREAM_ABORT reason 0.
        ("STREAM_ABORT reason 0", {
            let mut b = example("stream-abort");
            b[h + 8..h + 10].copy_from_slice(&[0, 0]);
            b
        }),
        // §5.6: STREAM_RESULT seq 0.
        ("STREAM_RESULT seq 0", {
            let mut b = example("stream-result");
            b[h..h + 8].copy_from_slice(&[0; 8]);
            b
        }),
        // §6.2: acked never exceeds limit.
        (
            "CREDIT acked above limit",
            raw(
                0x31,
                0,
                &[1u64.to_be_bytes(), 10u64.to_be_bytes(), 9u64.to_be_bytes()].concat(),
            ),
        ),
    ];
    // §1: text is at most 1024 bytes (GOAWAY, AUTH_RESULT, STREAM_ABORT, STREAM_RESULT).
    let long = vec![b'x'; 1025];
    cases.push((
        "GOAWAY text over 1024 bytes",
        raw(
            0x34,
            0,
            &[
                9u16.to_be_bytes().to_vec(),
                3u64.to_be_bytes().to_vec(),
                1025u16.to_be_bytes().to_vec(),
                long.clone(),
            ]
            .concat(),
        ),
    ));
    cases.push((
        "text that is not UTF-8",
        raw(
            0x34,
            0,
            &[
                9u16.to_be_bytes().to_vec(),
                3u64.to_be_bytes().to_vec(),
                vec![0, 1, 0xff],
            ]
            .concat(),
        ),
    ));
    for (name, bytes) in cases {
        assert_eq!(
            decoded(&bytes).err(),
            Some(Expect::Close(p)),
            "{name}: {:?}",
            decoded(&bytes)
        );
    }
    // The untouched examples decode (the cases above differ from a valid frame in one field).
    for name in [
        "hello",
        "stream-open",
        "stream-chunk",
        "stream-abort",
        "stream-result",
    ] {
        assert!(decoded(&example(name)).is_ok(), "{name}");
    }
}

fn params() -> SessionParams {
    SessionParams {
        ack_every: 1,
        ack_delay: Duration::from_millis(5),
        heartbeat_interval: Duration::from_secs(15),
        idle_timeout: Duration::from_secs(30),
        degraded_rtt: Duration::from_secs(2),
        replay_buffer_bytes: 1 << 20,
        peer_limits: example_limits(),
        streams: true,
        metadata: true,
        offers: true,
        chunk_size: 64 * 1024,
        stream_window: 64 * 1024,
        connection_window: 128 * 1024,
        max_streams: 2,
        max_message_size: 1024,
    }
}

/// Feeds `frames` to a fresh authenticated session; returns why it closed, if it did, and the
/// STREAM_RESULT reasons it sent.
fn run(p: SessionParams, frames: Vec<Frame>) -> (Option<ReasonCode>, Vec<ReasonCode>) {
    let ms = Duration::from_millis(1);
    let mut s = Session::new(p, Duration::ZERO);
    let mut results = Vec::new();
    let mut closed = None;
    for f in frames {
        s.handle_frame(f, ms);
        while let Some(out) = s.poll_transmit(ms) {
            if let Frame::StreamResult(r) = out {
                results.push(r.reason);
            }
        }
        while let Some(e) = s.poll_event() {
            if let Event::Closed(CloseCause::Local(r, _)) = e {
                closed = Some(r);
            }
        }
    }
    (closed, results)
}

fn open(seq: u64, id: u64, total: Option<u64>) -> Frame {
    Frame::StreamOpen(StreamOpen {
        seq,
        stream_id: id,
        total_len: total,
        hash: None,
        content_type: "a/b".into(),
        offer: false,
        metadata: Bytes::new(),
    })
}

/// An offer (flag OFFER) of `n` bytes of 1s, hash announced.
fn offer(seq: u64, id: u64, n: usize) -> Frame {
    Frame::StreamOpen(StreamOpen {
        seq,
        stream_id: id,
        total_len: Some(n as u64),
        hash: Some(*blake3::hash(&vec![1; n]).as_bytes()),
        content_type: "a/b".into(),
        offer: true,
        metadata: Bytes::new(),
    })
}

fn chunk(id: u64, offset: u64, n: usize) -> Frame {
    Frame::StreamChunk(StreamChunk {
        stream_id: id,
        offset,
        data: Bytes::from(vec![1; n]),
    })
}

fn message(seq: u64, n: usize) -> Frame {
    Frame::Message(MessageFrame {
        seq,
        content_type: "a/b".into(),
        metadata: Bytes::new(),
        payload: Bytes::from(vec![0; n]),
    })
}

#[test]
fn every_frame_illegal_in_an_authenticated_session_has_its_close_code() {
    use ReasonCode::*;
    let handshake: Vec<(&str, Frame)> = all()
        .into_iter()
        .filter(|(_, f)| {
            matches!(
                f,
                Frame::Hello(_)
                    | Frame::Auth(_)
                    | Frame::AuthResult(_)
                    | Frame::Resume(_)
                    | Frame::Resumed(_)
                    | Frame::SessionLost(_)
            )
        })
        .collect();
    // §3, §9: handshake frames after the handshake.
    for (name, f) in handshake {
        assert_eq!(run(params(), vec![f]).0, Some(ProtocolError), "{name}");
    }
    let no_streams = SessionParams {
        streams: false,
        ..params()
    };
    let cases: Vec<(&str, SessionParams, Vec<Frame>, Option<ReasonCode>)> = vec![
        // §5: a sequence gap.
        (
            "MESSAGE seq 2 first",
            params(),
            vec![message(2, 1)],
            Some(ProtocolError),
        ),
        // §5.1, §8: a MESSAGE over the max_message_size we announced (1024).
        (
            "MESSAGE over max_message_size",
            params(),
            vec![message(1, 1025)],
            Some(LimitExceeded),
        ),
        // §6.1: an ACK of more than was sent.
        (
            "ACK above what was sent",
            params(),
            vec![Frame::Ack(Ack { last_seq: 1 })],
            Some(ProtocolError),
        ),
        // §3.1: a stream frame without the STREAMS capability.
        (
            "STREAM_OPEN without STREAMS",
            no_streams,
            vec![open(1, 1, None)],
            Some(ProtocolError),
        ),
        // §5.2: stream ids increase within a session.
        (
            "STREAM_OPEN id not above the previous",
            params(),
            vec![open(1, 2, None), open(2, 2, None)],
            Some(ProtocolError),
        ),
        // §5.2, §8: more streams than the max_streams we announced (2).
        (
            "STREAM_OPEN beyond max_streams",
            params(),
            vec![open(1, 1, None), open(2, 2, None), open(3, 3, None)],
            Some(LimitExceeded),
        ),
        // §5.3: a chunk for a stream never opened.
        (
            "STREAM_CHUNK never opened",
            params(),
            vec![chunk(5, 0, 1)],
            Some(ProtocolError),
        ),
        (
            "STREAM_END never opened",
            params(),
            vec![Frame::StreamEnd(StreamEnd {
                stream_id: 5,
                total_len: 0,
                hash: [0; 32],
            })],
            Some(ProtocolError),
        ),
        // §6.2: chunk data beyond the window we granted (64 KiB).
        (
            "STREAM_CHUNK beyond the stream window",
            params(),
            vec![
                open(1, 1, None),
                chunk(1, 0, 64 * 1024),
                chunk(1, 64 * 1024, 1),
            ],
            Some(FlowControlError),
        ),
        // §3.1: METADATA and OFFER flags without their capabilities.
        (
            "MESSAGE with metadata without METADATA",
            SessionParams {
                metadata: false,
                ..params()
            },
            vec![Frame::Message(MessageFrame {
                metadata: Bytes::from_static(b"m"),
                ..match message(1, 1) {
                    Frame::Message(m) => m,
                    _ => unreachable!(),
                }
            })],
            Some(ProtocolError),
        ),
        (
            "STREAM_OPEN offer without OFFERS",
            SessionParams {
                offers: false,
                ..params()
            },
            vec![offer(1, 1, 0)],
            Some(ProtocolError),
        ),
        // §5.2: an offer not accepted has a limit of 0: any chunk is beyond it, and its
        // STREAM_END may not come either.
        (
            "STREAM_CHUNK of an offer not accepted",
            params(),
            vec![offer(1, 1, 1), chunk(1, 0, 1)],
            Some(FlowControlError),
        ),
        (
            "STREAM_END of an offer not accepted",
            params(),
            vec![
                offer(1, 1, 0),
                Frame::StreamEnd(StreamEnd {
                    stream_id: 1,
                    total_len: 0,
                    hash: *blake3::hash(b"").as_bytes(),
                }),
            ],
            Some(ProtocolError),
        ),
        // §5.6: a STREAM_RESULT for a stream we never opened.
        (
            "STREAM_RESULT for an unknown stream",
            params(),
            vec![Frame::StreamResult(StreamResult {
                seq: 1,
                stream_id: 9,
                reason: Normal,
                text: String::new(),
            })],
            Some(ProtocolError),
        ),
    ];
    for (name, p, frames, want) in cases {
        assert_eq!(run(p, frames).0, want, "{name}");
    }
}

#[test]
fn a_stream_that_does_not_add_up_fails_alone_with_stream_integrity() {
    let digest = [7u8; 32];
    let cases: Vec<(&str, Vec<Frame>)> = vec![
        // §5.3: a chunk that leaves a gap.
        (
            "a gap",
            vec![open(1, 1, None), chunk(1, 0, 4), chunk(1, 8, 4)],
        ),
        // §5.3: bytes beyond the announced total_len.
        (
            "beyond total_len",
            vec![open(1, 1, Some(2)), chunk(1, 0, 4)],
        ),
        // §5.4: STREAM_END whose length or hash does not match.
        (
            "END length differs",
            vec![
                open(1, 1, None),
                chunk(1, 0, 4),
                Frame::StreamEnd(StreamEnd {
                    stream_id: 1,
                    total_len: 5,
                    hash: *blake3::hash(&[1; 4]).as_bytes(),
                }),
            ],
        ),
        (
            "END hash differs",
            vec![
                open(1, 1, None),
                chunk(1, 0, 4),
                Frame::StreamEnd(StreamEnd {
                    stream_id: 1,
                    total_len: 4,
                    hash: digest,
                }),
            ],
        ),
    ];
    for (name, frames) in cases {
        let (closed, results) = run(params(), frames);
        assert_eq!(closed, None, "{name}: the connection stays");
        assert_eq!(results, vec![ReasonCode::StreamIntegrity], "{name}");
    }
}
