//! Streams on real sockets: a large stream with its hash checked, a slow reader that keeps
//! the sender within the window, concurrent streams with messages, cancellation, and a small
//! message that is not stuck behind a large stream.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use bytes::Bytes;
use clipsync::config::TransportConfig;
use clipsync::error::SendError;
use clipsync::transport::{Connection, Incoming, IncomingStream, Message, PeerInfo, Transport};
use clipsync::wire::ReasonCode;
use common::*;
use sha2::{Digest, Sha256};

/// A connected pair over loopback TCP with TLS: (client, server, what must live as long: the
/// transports, which own the connections, and the listener, which takes the client's resumes).
async fn pair(
    cfg: TransportConfig,
) -> (
    Connection,
    Connection,
    (Transport, Transport, clipsync::transport::Listener),
) {
    let (ka, kb) = (key(1), key(2));
    let server = transport(cfg.clone());
    let mut listener = server.listen(&loopback(), auth(&ka, &[&kb])).await.unwrap();
    let peer = PeerInfo::new("server", vec![listener.local_addr().clone()]);
    let client = transport(cfg);
    let (c, s) = tokio::join!(client.connect(&peer, auth(&kb, &[&ka])), listener.accept());
    (c.unwrap(), s.unwrap(), (client, server, listener))
}

/// Deterministic payload bytes: byte `i` of stream `tag` (cheap to check without storing).
fn byte(tag: u8, i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ tag
}

fn piece(tag: u8, offset: u64, len: usize) -> Bytes {
    Bytes::from(
        (0..len as u64)
            .map(|i| byte(tag, offset + i))
            .collect::<Vec<_>>(),
    )
}

/// Writes `len` pattern bytes of stream `tag` in 1 MiB pieces, then finishes.
fn write_pattern(
    mut s: clipsync::transport::StreamSender,
    tag: u8,
    len: u64,
) -> tokio::task::JoinHandle<Result<(), SendError>> {
    tokio::spawn(async move {
        let mut off = 0;
        while off < len {
            s.write(piece(tag, off, (1 << 20).min(len - off) as usize))
                .await
                .unwrap();
            off += 1 << 20;
        }
        s.finish().await
    })
}

async fn expect_stream(conn: &mut Connection) -> IncomingStream {
    match conn.receive().await.unwrap() {
        Incoming::Stream(s) => s,
        Incoming::Message(m) => panic!(
            "expected a stream, got a message of {} bytes",
            m.payload.len()
        ),
        _ => panic!("unexpected incoming item"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_stream_arrives_whole_and_verified() {
    const LEN: u64 = 256 << 20;
    let (client, mut server, _transports) = pair(cfg()).await;
    let sender = tokio::spawn(async move {
        let mut s = client
            .open_stream("application/octet-stream", Some(LEN))
            .await
            .unwrap();
        let progress = s.progress();
        let mut hasher = Sha256::new();
        let mut off = 0;
        while off < LEN {
            let n = (1 << 20).min(LEN - off) as usize;
            let p = piece(7, off, n);
            hasher.update(&p);
            s.write(p).await.unwrap();
            off += n as u64;
        }
        s.finish().await.unwrap();
        let p = progress.borrow().clone();
        assert!(p.done && p.sent == LEN && p.acked == LEN, "{p:?}");
        (client, <[u8; 32]>::from(hasher.finalize()))
    });
    let mut stream = expect_stream(&mut server).await;
    assert_eq!(stream.total_len(), Some(LEN));
    let mut got = 0u64;
    let mut hasher = Sha256::new();
    while let Some(b) = stream.chunk().await.unwrap() {
        hasher.update(&b);
        got += b.len() as u64;
    }
    let (_client, sent_hash) = sender.await.unwrap();
    assert_eq!(got, LEN);
    assert_eq!(<[u8; 32]>::from(hasher.finalize()), sent_hash);
    assert!(stream.progress().borrow().done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_keeps_the_sender_within_the_window() {
    const LEN: u64 = 24 << 20;
    let cfg = TransportConfig {
        stream_window: 1 << 20,
        ..cfg()
    };
    let window = u64::from(cfg.stream_window);
    let chunk = u64::from(cfg.chunk_size);
    let (client, mut server, _transports) = pair(cfg).await;
    let s = client
        .open_stream("application/octet-stream", Some(LEN))
        .await
        .unwrap();
    let progress = s.progress();
    let writer = write_pattern(s, 3, LEN);
    let mut stream = expect_stream(&mut server).await;
    let mut read = 0u64;
    let mut worst = 0u64;
    while let Some(b) = stream.chunk().await.unwrap() {
        for (i, x) in b.iter().enumerate() {
            assert_eq!(*x, byte(3, read + i as u64));
        }
        read += b.len() as u64;
        // The sender may be at most one window (plus the chunk being read) ahead of the
        // reader: that is the memory the receiver needs, whatever the payload size.
        let ahead = progress.borrow().sent.saturating_sub(read);
        worst = worst.max(ahead);
        assert!(
            ahead <= window + chunk,
            "sender {ahead} bytes ahead of the reader"
        );
        // Read slowly: yield to let the sender run ahead if it could.
        tokio::task::yield_now().await;
        if read % (4 << 20) == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    assert_eq!(read, LEN);
    writer.await.unwrap().unwrap();
    // The window was actually used, so the bound above was really tested.
    assert!(
        worst >= window / 2,
        "the sender never got ahead ({worst} bytes)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_and_messages_all_arrive_intact() {
    const STREAMS: u8 = 4;
    const LEN: u64 = 6 << 20;
    const MESSAGES: usize = 200;
    let (client, mut server, _transports) = pair(cfg()).await;
    let client = std::sync::Arc::new(client);
    let mut tasks = Vec::new();
    for tag in 0..STREAMS {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = c
                .open_stream(format!("test/stream-{tag}"), Some(LEN))
                .await
                .unwrap();
            let mut off = 0;
            while off < LEN {
                let n = 100_000.min(LEN - off) as usize;
                s.write(piece(tag, off, n)).await.unwrap();
                off += n as u64;
            }
            s.finish().await.unwrap();
        }));
    }
    let c = client.clone();
    let messages = tokio::spawn(async move {
        for i in 0..MESSAGES {
            c.send(Message::text(format!("m{i}"))).await.unwrap();
        }
    });
    let mut readers = Vec::new();
    let mut next_message = 0;
    while readers.len() < STREAMS as usize || next_message < MESSAGES {
        match server.receive().await.unwrap() {
            Incoming::Message(m) => {
                assert_eq!(
                    m,
                    Message::text(format!("m{next_message}")),
                    "messages in order"
                );
                next_message += 1;
            }
            Incoming::Stream(mut s) => readers.push(tokio::spawn(async move {
                let tag: u8 = s
                    .content_type()
                    .trim_start_matches("test/stream-")
                    .parse()
                    .unwrap();
                let mut off = 0u64;
                while let Some(b) = s.chunk().await.unwrap() {
                    for (i, x) in b.iter().enumerate() {
                        assert_eq!(
                            *x,
                            byte(tag, off + i as u64),
                            "stream {tag} at {}",
                            off + i as u64
                        );
                    }
                    off += b.len() as u64;
                }
                (tag, off)
            })),
            _ => panic!("unexpected incoming item"),
        }
    }
    let mut seen = Vec::new();
    for r in readers {
        let (tag, len) = r.await.unwrap();
        assert_eq!(len, LEN);
        seen.push(tag);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..STREAMS).collect::<Vec<_>>());
    messages.await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_message_overtakes_a_large_stream() {
    const LEN: u64 = 64 << 20;
    let (client, mut server, _transports) = pair(cfg()).await;
    let client = std::sync::Arc::new(client);
    let s = client
        .open_stream("application/octet-stream", Some(LEN))
        .await
        .unwrap();
    let progress = s.progress();
    let writer = write_pattern(s, 1, LEN);
    let mut stream = expect_stream(&mut server).await;
    // The reader takes its time (2 ms per MiB, so the stream lasts well over 100 ms) and
    // counts what it has read.
    let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = {
        let read = read.clone();
        tokio::spawn(async move {
            let mut since_pause = 0u64;
            while let Some(b) = stream.chunk().await.unwrap() {
                read.fetch_add(b.len() as u64, std::sync::atomic::Ordering::SeqCst);
                since_pause += b.len() as u64;
                if since_pause >= 1 << 20 {
                    since_pause = 0;
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
            }
        })
    };
    // Once 8 MiB are under way, a clipboard update.
    let mut p = progress.clone();
    p.wait_for(|p| p.sent >= 8 << 20).await.unwrap();
    let ack = client.try_send(Message::text("clipboard")).unwrap();
    let m = server.receive().await.unwrap().into_message().unwrap();
    let read_at_arrival = read.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(m, Message::text("clipboard"));
    ack.await.unwrap();
    // It arrived while the stream was far from done: not queued behind it. (The strict bound,
    // a few chunks, is checked in the session core; here the reader's pace gives a margin.)
    assert!(
        read_at_arrival < LEN / 2,
        "the message waited until {read_at_arrival} of {LEN} stream bytes were read"
    );
    writer.await.unwrap().unwrap();
    reader.await.unwrap();
    assert_eq!(read.load(std::sync::atomic::Ordering::SeqCst), LEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_incoming_stream_cancels_it_for_the_sender() {
    let (client, mut server, _transports) = pair(cfg()).await;
    let mut s = client
        .open_stream("application/octet-stream", None)
        .await
        .unwrap();
    s.write(piece(9, 0, 100_000)).await.unwrap();
    let incoming = expect_stream(&mut server).await;
    drop(incoming);
    // The sender keeps writing until it learns; then finish reports the cancellation.
    let e = loop {
        match s.try_write(piece(9, 0, 10_000)) {
            Ok(_) | Err(_) => {}
        }
        tokio::task::yield_now().await;
        if s.progress().borrow().done {
            break s.finish().await.unwrap_err();
        }
    };
    assert!(
        matches!(
            e,
            SendError::Stream {
                reason: ReasonCode::Cancelled,
                ..
            }
        ),
        "{e}"
    );
    // The connection is fine.
    client.send(Message::text("after")).await.unwrap();
    assert_eq!(
        server.receive().await.unwrap().into_message().unwrap(),
        Message::text("after")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_shorter_than_announced_fails_alone() {
    let (client, mut server, _transports) = pair(cfg()).await;
    let mut s = client
        .open_stream("application/octet-stream", Some(1000))
        .await
        .unwrap();
    s.write(piece(2, 0, 500)).await.unwrap();
    let e = s.finish().await.unwrap_err();
    assert!(
        matches!(
            e,
            SendError::Stream {
                reason: ReasonCode::StreamIntegrity,
                ..
            }
        ),
        "{e}"
    );
    let incoming = expect_stream(&mut server).await;
    let e = incoming.read_to_end(1 << 20).await.unwrap_err();
    assert!(e.to_string().contains("stream integrity"), "{e}");
    client.send(Message::text("still fine")).await.unwrap();
    assert!(server.receive().await.unwrap().into_message().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_streams_large_payloads_automatically() {
    let (client, mut server, _transports) = pair(cfg()).await;
    let big = piece(4, 0, 3 << 20);
    let c = tokio::spawn(async move {
        client.send(Message::new("image/png", big)).await.unwrap();
        client
    });
    let got = server.receive().await.unwrap();
    assert!(matches!(got, Incoming::Stream(_)));
    let m = got.into_bytes(8 << 20).await.unwrap();
    assert_eq!(m.content_type, "image/png");
    assert_eq!(m.payload, piece(4, 0, 3 << 20));
    c.await.unwrap();
}

/// An application that stops reading for several heartbeat timeouts while the peer keeps
/// sending messages is slow, not gone: the connection stays up on both sides (no idle timeout,
/// no reconnect), the sender waits, and every message arrives once, in order, when it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_is_not_taken_for_a_dead_connection() {
    const N: usize = 400;
    let cfg = fast();
    let stall = cfg.heartbeat_timeout * 4;
    let (client, mut server, _transports) = pair(cfg).await;
    let client = std::sync::Arc::new(client);
    let sender = {
        let c = client.clone();
        tokio::spawn(async move {
            for i in 0..N {
                c.send(Message::text(format!("{i:05}").repeat(200)))
                    .await
                    .unwrap();
            }
        })
    };
    // The application is busy elsewhere: it reads nothing for a while.
    tokio::time::sleep(stall).await;
    for i in 0..N {
        match server.receive().await.unwrap() {
            Incoming::Message(m) => {
                assert_eq!(&m.payload[..], format!("{i:05}").repeat(200).as_bytes())
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    sender.await.unwrap();
    for (side, h) in [("sender", client.health()), ("reader", server.health())] {
        let h = *h.borrow();
        assert_eq!(h.reconnects, 0, "the {side} reconnected: {h:?}");
    }
}

/// A sender that knows its payload's BLAKE3 announces it at STREAM_OPEN, and the stream is
/// an offer (PROTOCOL.md §5.2): the receiver sees length and hash before any byte, and no byte
/// flows until it starts reading. One that lacks the payload reads and verifies it; one that
/// has it declines, and the sender's stream settles `already have` with **no byte sent**; one
/// that drops the offer settles it `cancelled`, also with none sent. Bytes that do not match
/// the announced hash fail the stream with `stream integrity`, and the connection stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announced_hash_lets_the_receiver_skip_what_it_has() {
    let (client, mut server, _transports) = pair(cfg()).await;
    let image = piece(4, 0, 3 << 20);
    let hash = *blake3::hash(&image).as_bytes();
    let mut have = std::collections::BTreeSet::new();
    for round in 0..3 {
        let s = client
            .open_stream_hashed("image/png", image.len() as u64, hash)
            .await
            .unwrap();
        let progress = s.progress();
        let writer = {
            let image = image.clone();
            tokio::spawn(async move { s.send_all(&mut &image[..]).await })
        };
        let incoming = expect_stream(&mut server).await;
        assert_eq!(incoming.hash(), Some(hash));
        assert_eq!(incoming.total_len(), Some(image.len() as u64));
        if round == 2 {
            drop(incoming); // not interested, for whatever reason
        } else if have.contains(&incoming.hash().unwrap()) {
            incoming.decline();
        } else {
            let got = incoming.read_to_end(8 << 20).await.unwrap();
            assert_eq!(got, image);
            have.insert(hash);
        }
        let outcome = writer.await.unwrap();
        let sent = progress.borrow().sent;
        match round {
            0 => assert_eq!(outcome.unwrap(), image.len() as u64),
            1 => {
                assert!(
                    outcome.as_ref().is_err_and(SendError::already_had),
                    "{outcome:?}"
                );
                assert_eq!(sent, 0, "a declined offer sent payload bytes");
            }
            _ => {
                assert!(
                    matches!(
                        outcome,
                        Err(SendError::Stream {
                            reason: ReasonCode::Cancelled,
                            ..
                        })
                    ),
                    "{outcome:?}"
                );
                assert_eq!(sent, 0, "a dropped offer sent payload bytes");
            }
        }
    }
    // A payload that is not what was announced: an offer, so its bytes flow once the
    // receiver reads, and the receiver's check fails it.
    let mut s = client
        .open_stream_hashed("image/png", 3, [7; 32])
        .await
        .unwrap();
    s.write(Bytes::from_static(b"abc")).await.unwrap();
    let finishing = tokio::spawn(s.finish());
    let failed = expect_stream(&mut server).await.read_to_end(1024).await;
    assert!(failed.is_err(), "{failed:?}");
    let finished = finishing.await.unwrap();
    assert!(
        matches!(
            finished,
            Err(SendError::Stream {
                reason: ReasonCode::StreamIntegrity,
                ..
            })
        ),
        "{finished:?}"
    );
    client.send(Message::text("after")).await.unwrap();
    let next = server.receive().await.unwrap();
    assert_eq!(next.into_message().unwrap(), Message::text("after"));
}

/// Application metadata travels beside the payload untouched (PROTOCOL.md §5.1): on a message,
/// on a message large enough to go as a stream, and on a stream opened with a spec. Metadata
/// over 1024 bytes fails that send alone, nothing sent, and the connection carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_travels_with_messages_and_streams() {
    let (client, mut server, _transports) = pair(cfg()).await;
    let small = Message::text("hello").with_metadata(&b"origin=a;clip=1"[..]);
    client.send(small.clone()).await.unwrap();
    let got = server.receive().await.unwrap().into_message().unwrap();
    assert_eq!(got, small);

    // Above stream_threshold: a stream, whose STREAM_OPEN carries the metadata.
    let big = Message::new("image/png", piece(5, 0, 2 << 20)).with_metadata(&b"clip=2"[..]);
    let sending = {
        let client = client.sender();
        let big = big.clone();
        tokio::spawn(async move { client.send(big).await })
    };
    let s = expect_stream(&mut server).await;
    assert_eq!(&s.metadata()[..], b"clip=2");
    let whole = Incoming::Stream(s).into_bytes(4 << 20).await.unwrap();
    assert_eq!(whole, big);
    sending.await.unwrap().unwrap();

    let spec = clipsync::transport::StreamSpec::new("text/csv")
        .len(3)
        .metadata(vec![9u8; 1024]);
    let mut s = client.open_stream_with(spec).await.unwrap();
    s.write(Bytes::from_static(b"a,b")).await.unwrap();
    let reading = tokio::spawn(async move {
        let s = expect_stream(&mut server).await;
        assert_eq!(s.metadata().len(), 1024);
        assert_eq!(&s.read_to_end(16).await.unwrap()[..], b"a,b");
        server
    });
    s.finish().await.unwrap();
    let mut server = reading.await.unwrap();

    let too_much = Message::text("x").with_metadata(vec![0u8; 1025]);
    let refused = client.send(too_much).await;
    assert!(
        matches!(refused, Err(SendError::InvalidMetadata(_))),
        "{refused:?}"
    );
    client.send(Message::text("still up")).await.unwrap();
    let got = server.receive().await.unwrap().into_message().unwrap();
    assert_eq!(&got.payload[..], b"still up");
    assert!(got.metadata.is_empty());
}

/// A reader that takes a stream and waits for its data while the sender's messages keep
/// coming: the messages overtake the stream's chunks on the wire (they have priority) and
/// pile up behind the stream in the receiver's queue. The driver must read on for the
/// stream's chunks instead of pausing because the application is "behind" — pausing there
/// deadlocked the reader (found by the simulator's `pipelined` scenario).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_waiting_for_stream_data_is_not_stalled_by_messages_queued_behind_it() {
    let (client, mut server, _transports) = pair(cfg()).await;
    let len = 4u64 << 20;
    let s = client.open_stream("image/png", Some(len)).await.unwrap();
    let writer = write_pattern(s, 7, len);
    // One task hands the messages in, in order, as fast as the send queue takes them.
    let tx = client.sender();
    let sending = tokio::spawn(async move {
        let mut sent = std::collections::VecDeque::new();
        for i in 0..300u32 {
            let m = Message::text(format!("message {i} {}", "x".repeat(1000)));
            loop {
                match tx.try_send(m.clone()) {
                    Ok(settles) => {
                        sent.push_back(tokio::spawn(settles));
                        break;
                    }
                    Err(SendError::Full) => {
                        let oldest = sent.pop_front().expect("a full queue holds our sends");
                        oldest.await.unwrap().unwrap();
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
        sent
    });
    let stream = expect_stream(&mut server).await;
    // A bound for the failure report only: without the rule the read never ends.
    let got = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stream.read_to_end(8 << 20),
    )
    .await
    .expect("the stream's data never came: the reader is stalled behind queued messages")
    .unwrap();
    assert_eq!(got.len() as u64, len);
    assert!(got.iter().enumerate().all(|(i, b)| *b == byte(7, i as u64)));
    writer.await.unwrap().unwrap();
    for i in 0..300u32 {
        let m = server.receive().await.unwrap().into_message().unwrap();
        assert!(m.payload.starts_with(format!("message {i} ").as_bytes()));
    }
    for s in sending.await.unwrap() {
        s.await.unwrap().unwrap();
    }
}

/// `IncomingStream::verified_hash` is the payload's BLAKE3 once the verified end was read, and
/// `None` before it: an application naming content by hash (as `serve --out` does) takes it
/// from there instead of hashing the bytes again. Checked with and without a hash announced
/// at the open.
#[tokio::test]
async fn the_verified_hash_is_given_once_the_end_is_read() {
    let (client, mut server, _transports) = pair(cfg()).await;
    let payload = piece(7, 0, 300_000);
    let expected = *blake3::hash(&payload).as_bytes();
    for announce in [false, true] {
        let s = if announce {
            client
                .open_stream_with(
                    clipsync::transport::StreamSpec::new("application/octet-stream")
                        .len(payload.len() as u64)
                        .hash(expected),
                )
                .await
                .unwrap()
        } else {
            client
                .open_stream("application/octet-stream", Some(payload.len() as u64))
                .await
                .unwrap()
        };
        let sending = {
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut s = s;
                s.write(payload).await.unwrap();
                s.finish().await
            })
        };
        let mut incoming = expect_stream(&mut server).await;
        assert_eq!(incoming.verified_hash(), None, "before any byte");
        let mut got = Vec::new();
        while let Some(b) = incoming.chunk().await.unwrap() {
            assert_eq!(incoming.verified_hash(), None, "before the end");
            got.extend_from_slice(&b);
        }
        assert_eq!(got, payload);
        assert_eq!(
            incoming.verified_hash(),
            Some(expected),
            "announced: {announce}"
        );
        drop(incoming);
        sending.await.unwrap().unwrap();
    }
}
