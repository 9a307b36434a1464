//! The listener's two budgets (issue 16, items 1 and 4): connections in setup have a pool of
//! their own, where a flood of idle sockets is evicted rather than locking anyone out, and
//! authenticated sessions have `max_connections`, where a resume uses its session's place.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use clipsync::config::TransportConfig;
use clipsync::transport::{ConnectionState, Message, PeerInfo};
use clipsync::wire::ReasonCode;
use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The listener's defaults (10 s setup deadline, 64 sessions, pool of 100) with fast redials.
fn server_cfg() -> TransportConfig {
    TransportConfig {
        handshake_timeout: Duration::from_secs(10),
        ..fast()
    }
}

/// Opens `n` TCP connections to `addr` that never send a byte, and keeps every one open:
/// whenever the listener closes one, it is reopened (a flood that churns as fast as it is
/// refused). Stops when the returned handle is aborted.
async fn flood(addr: std::net::SocketAddr, n: usize) -> tokio::task::JoinHandle<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        tasks.spawn(async move {
            loop {
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    tokio::task::yield_now().await;
                    continue;
                };
                // Until the listener closes it.
                let mut b = [0u8; 1];
                let _ = s.read(&mut b).await;
            }
        });
    }
    // Every flood socket connected at least once before the test goes on.
    let ready = tokio::spawn(async move { while tasks.join_next().await.is_some() {} });
    tokio::task::yield_now().await;
    ready
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_sockets_locks_out_neither_new_peers_nor_resumes() {
    let (ks, ka, kb) = (key(1), key(2), key(3));
    let server = transport(server_cfg());
    let mut listener = server
        .listen(&loopback(), auth(&ks, &[&ka, &kb]))
        .await
        .unwrap();
    let addr = tcp_addr(listener.local_addr());
    let server_app = tokio::spawn(async move {
        while let Ok(r) = listener.accept().await.map(Some).or_else(|e| match e {
            clipsync::transport::AcceptError::Closed => Err(()),
            _ => Ok(None),
        }) {
            if let Some(mut c) = r {
                tokio::spawn(async move { while c.receive().await.is_ok() {} });
            }
        }
    });
    // Peer A has a session, through a proxy that can cut it.
    let proxy = Proxy::start(addr).await;
    let a = transport(fast());
    let conn_a = a
        .connect(
            &proxy.peer("server").with_key(ks.public_key().clone()),
            auth(&ka, &[&ks]),
        )
        .await
        .unwrap();
    conn_a
        .send(Message::text("before the flood"))
        .await
        .unwrap();

    // 1,000 sockets that never speak, reopened as soon as they are closed.
    let flood = flood(addr, 1000).await;

    // A new peer gets in: `open` redials with its backoff (10–200 ms) until it is connected.
    let b = transport(fast());
    let peer_b =
        PeerInfo::new("server", vec![listener_addr(addr)]).with_key(ks.public_key().clone());
    let conn_b = b.open(&peer_b, auth(&kb, &[&ks])).unwrap();
    let mut state = conn_b.state();
    wait_state(&mut state, |s| *s == ConnectionState::Connected).await;
    let failures_b = conn_b.health().borrow().dial_failures;
    conn_b
        .send(Message::text("during the flood"))
        .await
        .unwrap();

    // A's connection is cut; its session resumes through the flood.
    proxy.cut();
    let mut state_a = conn_a.state();
    wait_state(&mut state_a, |s| *s != ConnectionState::Connected).await;
    wait_state(&mut state_a, |s| *s == ConnectionState::Connected).await;
    let health_a = *conn_a.health().borrow();
    conn_a
        .send(Message::text("resumed during the flood"))
        .await
        .unwrap();
    println!(
        "during a flood of 1000 idle sockets: new peer connected after {failures_b} failed \
         dials; resume after {} failed dials ({} reconnects)",
        health_a.dial_failures, health_a.reconnects
    );
    // Before the pool existed, 64 idle sockets held every place for the 10 s setup deadline:
    // the new peer failed ~50 dials in a row and the resume as many.
    assert!(failures_b <= 5, "new peer: {failures_b} failed dials");
    assert!(health_a.reconnects >= 1);
    assert!(
        health_a.dial_failures <= 5,
        "resume: {} failed dials",
        health_a.dial_failures
    );
    flood.abort();
    server_app.abort();
}

fn listener_addr(a: std::net::SocketAddr) -> clipsync::transport::Address {
    a.to_string().parse().unwrap()
}

#[tokio::test]
async fn a_socket_that_sends_nothing_is_closed_after_first_byte_timeout() {
    let ks = key(1);
    let server = transport(TransportConfig {
        first_byte_timeout: Duration::from_millis(300),
        handshake_timeout: Duration::from_secs(30),
        ..cfg()
    });
    let listener = server.listen(&loopback(), auth(&ks, &[])).await.unwrap();
    let addr = tcp_addr(listener.local_addr());
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let talking = TcpStream::connect(addr).await.unwrap();
    // The start of a TLS record: the talking socket has spoken.
    talking.writable().await.unwrap();
    talking.try_write(&[0x16]).unwrap();
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut b))
        .await
        .expect("the silent socket is still open after 10 s");
    assert!(matches!(n, Ok(0) | Err(_)), "the silent socket got {n:?}");
    // The talking one, opened at the same time, is still in its (30 s) setup.
    assert_eq!(
        talking.try_read(&mut b).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
    drop(listener);
}

#[tokio::test]
async fn sessions_beyond_max_connections_are_refused_and_a_restarted_peer_takes_its_place() {
    let (ks, ka, kb) = (key(1), key(2), key(3));
    let server = transport(TransportConfig {
        max_connections: 1,
        ..cfg()
    });
    let mut listener = server
        .listen(&loopback(), auth(&ks, &[&ka, &kb]))
        .await
        .unwrap();
    let peer = PeerInfo::new("server", vec![listener.local_addr().clone()])
        .with_key(ks.public_key().clone());
    let a = transport(cfg());
    let (conn_a, accepted) = tokio::join!(a.connect(&peer, auth(&ka, &[&ks])), listener.accept());
    let (_conn_a, _server_a) = (conn_a.unwrap(), accepted.unwrap());
    // A second peer: no place left.
    let b = transport(cfg());
    let (refused_b, _) = tokio::join!(b.connect(&peer, auth(&kb, &[&ks])), listener.accept());
    let e = refused_b.unwrap_err();
    assert_eq!(refused(&e), Some((ReasonCode::LimitExceeded, true)), "{e}");
    // Peer A restarts (a new transport, a new session): its old session gives way.
    let a2 = transport(cfg());
    let (conn_a2, accepted) = tokio::join!(a2.connect(&peer, auth(&ka, &[&ks])), listener.accept());
    let conn_a2 = conn_a2.unwrap();
    let mut server_a2 = accepted.unwrap();
    conn_a2
        .send(Message::text("after the restart"))
        .await
        .unwrap();
    let m = server_a2.receive().await.unwrap().into_message().unwrap();
    assert_eq!(m, Message::text("after the restart"));
}
