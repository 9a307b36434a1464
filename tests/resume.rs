//! Reconnection and resumption on real sockets, through a TCP proxy the test can cut (the
//! transport is not told: its sockets just die) and point at another server.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clipsync::error::SendError;
use clipsync::transport::{Connection, ConnectionState, Incoming, Message, PeerInfo, Transport};
use common::*;
use tokio::task::JoinHandle;

/// How each send settled, by message number.
type Outcomes = Arc<Mutex<Vec<(u32, Result<(), SendError>)>>>;

/// Receives messages into `got` until the connection ends.
fn collect(mut conn: Connection, got: Arc<Mutex<Vec<u32>>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(item) = conn.receive().await {
            if let Incoming::Message(m) = item {
                let n = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
                got.lock().unwrap().push(n);
            }
        }
    })
}

/// The transports of a test: they own their connections, so they must live as long.
type Transports = (Transport, Transport);

/// A client connected to a server through a cuttable proxy: (client, server side, proxy,
/// listener, transports). The listener must live on: it holds the sessions waiting to resume.
async fn through_proxy() -> (
    Connection,
    Connection,
    Proxy,
    clipsync::transport::Listener,
    Transports,
) {
    let (ka, kb) = (key(1), key(2));
    let server = transport(fast());
    let mut listener = server.listen(&loopback(), auth(&ka, &[&kb])).await.unwrap();
    let proxy = Proxy::start(tcp_addr(listener.local_addr())).await;
    let peer = PeerInfo::new("server", vec![proxy.addr.to_string().parse().unwrap()]);
    let client = transport(fast());
    let (c, s) = tokio::join!(client.connect(&peer, auth(&kb, &[&ka])), listener.accept());
    (c.unwrap(), s.unwrap(), proxy, listener, (server, client))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_resumes_without_loss_or_duplicates() {
    let (c, s, proxy, mut listener, _transports) = through_proxy().await;
    let c = Arc::new(c);
    let got: Arc<Mutex<Vec<u32>>> = Arc::default();
    let receiver = collect(s, got.clone());
    let mut states = c.state();
    let reconnecting = tokio::spawn(async move {
        states
            .wait_for(|s| *s == ConnectionState::Reconnecting)
            .await
            .is_ok()
    });
    let sender = {
        let c = c.clone();
        tokio::spawn(async move {
            for n in 1..=300u32 {
                c.send(Message::new("test/n", n.to_be_bytes().to_vec()))
                    .await
                    .unwrap();
            }
        })
    };
    // Cut twice while messages flow.
    for at in [60usize, 180] {
        while got.lock().unwrap().len() < at {
            tokio::task::yield_now().await;
        }
        proxy.cut();
    }
    sender.await.unwrap();
    assert!(
        reconnecting.await.unwrap(),
        "the client never reported reconnecting"
    );
    // Every send succeeded; the server got each message once, in order, on one Connection.
    let expect: Vec<u32> = (1..=300).collect();
    while got.lock().unwrap().len() < 300 {
        tokio::task::yield_now().await;
    }
    assert_eq!(*got.lock().unwrap(), expect);
    // No second connection surfaced at the listener: the session resumed underneath.
    let extra = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(
        extra.is_err(),
        "a new connection was accepted instead of resuming"
    );
    drop(receiver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_loses_the_session_and_every_send_settles() {
    let (ka, kb) = (key(1), key(2));
    let server_a = transport(fast());
    let mut listener_a = server_a
        .listen(&loopback(), auth(&ka, &[&kb]))
        .await
        .unwrap();
    let proxy = Proxy::start(tcp_addr(listener_a.local_addr())).await;
    let peer = PeerInfo::new("server", vec![proxy.addr.to_string().parse().unwrap()]);
    let client = transport(fast());
    let (c, s) = tokio::join!(
        client.connect(&peer, auth(&kb, &[&ka])),
        listener_a.accept()
    );
    let c = Arc::new(c.unwrap());
    let got_a: Arc<Mutex<Vec<u32>>> = Arc::default();
    let receiver_a = collect(s.unwrap(), got_a.clone());
    // Send in the background, recording how each send settled.
    let outcomes: Outcomes = Arc::default();
    let sender = {
        let (c, outcomes) = (c.clone(), outcomes.clone());
        tokio::spawn(async move {
            for n in 1..=200u32 {
                let r = c
                    .send(Message::new("test/n", n.to_be_bytes().to_vec()))
                    .await;
                outcomes.lock().unwrap().push((n, r));
            }
        })
    };
    while got_a.lock().unwrap().len() < 50 {
        tokio::task::yield_now().await;
    }
    // "Kill" server A: its sockets die and the process (listener, sessions) is gone; a redial
    // before B is up finds nobody, as after a crash (not A, about to go).
    proxy.retarget("127.0.0.1:9".parse().unwrap());
    proxy.cut();
    receiver_a.abort();
    drop(listener_a);
    drop(server_a);
    // Server B, a fresh process with the same key, behind the same address.
    let server_b = transport(fast());
    let mut listener_b = server_b
        .listen(&loopback(), auth(&ka, &[&kb]))
        .await
        .unwrap();
    proxy.retarget(tcp_addr(listener_b.local_addr()));
    let s_b = listener_b.accept().await.unwrap();
    let got_b: Arc<Mutex<Vec<u32>>> = Arc::default();
    let _receiver_b = collect(s_b, got_b.clone());
    sender.await.unwrap();
    let outcomes = outcomes.lock().unwrap().clone();
    // Every send settled: delivered, or of unknown fate because the session was lost.
    assert_eq!(outcomes.len(), 200);
    let unknown: Vec<u32> = outcomes
        .iter()
        .filter(|(_, r)| matches!(r, Err(SendError::Unknown(_))))
        .map(|(n, _)| *n)
        .collect();
    assert!(
        outcomes
            .iter()
            .all(|(_, r)| r.is_ok() || matches!(r, Err(SendError::Unknown(_)))),
        "{:?}",
        outcomes
            .iter()
            .find(|(_, r)| r.is_err() && !matches!(r, Err(SendError::Unknown(_))))
    );
    // Nothing delivered twice across both servers; every acknowledged send delivered once.
    while got_b.lock().unwrap().last() != Some(&200) {
        tokio::task::yield_now().await;
    }
    let a = got_a.lock().unwrap().clone();
    let b = got_b.lock().unwrap().clone();
    let mut all = BTreeSet::new();
    for n in a.iter().chain(&b) {
        assert!(all.insert(*n), "message {n} delivered twice");
    }
    for (n, r) in outcomes.iter() {
        if r.is_ok() {
            assert!(
                all.contains(n),
                "message {n} acknowledged but never delivered"
            );
        }
    }
    assert!(a.windows(2).all(|w| w[0] < w[1]) && b.windows(2).all(|w| w[0] < w[1]));
    // What server A had not acknowledged is exactly what the client was told is unknown.
    assert!(
        unknown.iter().all(|n| !b.contains(n)),
        "unknown-fate sends are not resent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_in_the_middle_resumes_and_verifies() {
    const LEN: usize = 48 << 20;
    let (c, s, proxy, _listener, _transports) = through_proxy().await;
    let mut s = s;
    let payload = bytes::Bytes::from((0..LEN).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let expected = blake3::hash(&payload);
    let mut sender = c
        .open_stream("application/octet-stream", Some(LEN as u64))
        .await
        .unwrap();
    let progress = sender.progress();
    // Count the times the client's connection was lost and resumed.
    let mut states = c.state();
    let reconnects = tokio::spawn(async move {
        let mut n = 0;
        while states.changed().await.is_ok() {
            if *states.borrow_and_update() == ConnectionState::Reconnecting {
                n += 1;
            }
        }
        n
    });
    let writer = tokio::spawn(async move {
        sender.write(payload).await.unwrap();
        sender.finish().await
    });
    let Incoming::Stream(mut stream) = s.receive().await.unwrap() else {
        panic!("expected a stream")
    };
    let reader = tokio::spawn(async move {
        let mut hasher = blake3::Hasher::new();
        let mut n = 0usize;
        while let Some(b) = stream.chunk().await.unwrap() {
            hasher.update(&b);
            n += b.len();
        }
        (n, hasher.finalize())
    });
    // Cut once a third is across, and again at two thirds.
    for frac in [3u64, 2] {
        let mut p = progress.clone();
        p.wait_for(|p| p.acked >= LEN as u64 / frac).await.unwrap();
        proxy.cut();
    }
    writer.await.unwrap().unwrap();
    let (n, hash) = reader.await.unwrap();
    assert_eq!(n, LEN);
    assert_eq!(hash, expected);
    // Health counts both resumes, and what they sent again is bounded by the stream window
    // each time, not by the payload: the stream continued from the
    // receiver's offset.
    let health = *c.health().borrow();
    assert_eq!(health.reconnects, 2, "{health:?}");
    assert!(health.retransmitted_bytes > 0, "{health:?}");
    assert!(
        health.retransmitted_bytes <= 2 * u64::from(fast().stream_window),
        "{health:?}"
    );
    // The stream really crossed two broken connections, on the same stream and session.
    drop(c);
    assert!(
        reconnects.await.unwrap() >= 2,
        "the connection was never cut"
    );
}
