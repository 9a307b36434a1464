//! `Transport::open`: a connection that exists before the peer answers, in state
//! `Connecting`, with sends queued until it connects.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::path::PathBuf;
use std::time::Duration;

use clipsync::error::{CloseCause, ConnectError, SendError};
use clipsync::transport::{Address, Connection, ConnectionState, Message, PeerInfo, Transport};
use clipsync::wire::ReasonCode;
use common::*;

/// A Unix socket path nobody listens on (yet).
fn socket(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("clipsync-open-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

fn fast_backoff() -> clipsync::config::TransportConfig {
    clipsync::config::TransportConfig {
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        ..cfg()
    }
}

/// A connection opened, with `cfg`, to a socket nobody listens on, and its transport (which
/// must live as long as the connection is used).
fn open_to_nobody(name: &str, cfg: clipsync::config::TransportConfig) -> (Transport, Connection) {
    let (ka, kb) = (key(1), key(2));
    let peer = PeerInfo::new("nobody", vec![Address::Unix(socket(name))])
        .with_key(ka.public_key().clone());
    let t = transport(cfg);
    let conn = t.open(&peer, auth(&kb, &[&ka])).unwrap();
    (t, conn)
}

/// Waits until the state satisfies `f`; returns it.
async fn state_until(conn: &Connection, f: impl Fn(&ConnectionState) -> bool) -> ConnectionState {
    let mut rx = conn.state();
    rx.wait_for(|s| f(s)).await.unwrap().clone()
}

#[tokio::test]
async fn sends_queue_while_connecting_and_go_out_in_order_once_connected() {
    let (ka, kb) = (key(1), key(2));
    let path = socket("later.sock");
    let peer = PeerInfo::new("server", vec![Address::Unix(path.clone())])
        .with_key(ka.public_key().clone());
    let client = transport(fast_backoff());
    let conn = client.open(&peer, auth(&kb, &[&ka])).unwrap();
    // Nobody listens: the connection cannot be anything but connecting.
    assert_eq!(*conn.state().borrow(), ConnectionState::Connecting);
    assert_eq!(
        conn.peer_key().as_ref(),
        &ka.public_key().to_bytes().unwrap()[..]
    );
    let pending: Vec<_> = (0..3)
        .map(|i| conn.try_send(Message::text(format!("queued {i}"))).unwrap())
        .collect();

    // The server appears; the dialer's backoff finds it.
    let server = transport(cfg());
    let mut listener = server
        .listen(&Address::Unix(path.clone()), auth(&ka, &[&kb]))
        .await
        .unwrap();
    let mut s = listener.accept().await.unwrap();
    for (i, p) in pending.into_iter().enumerate() {
        p.await.unwrap();
        let m = s.receive().await.unwrap().into_message().unwrap();
        assert_eq!(m, Message::text(format!("queued {i}")));
    }
    assert!(matches!(
        *conn.state().borrow(),
        ConnectionState::Connected | ConnectionState::Degraded
    ));
    // From here on it is an ordinary connection, both ways.
    s.send(Message::text("back")).await.unwrap();
    let mut conn = conn;
    assert_eq!(
        conn.receive().await.unwrap().into_message().unwrap(),
        Message::text("back")
    );
    conn.close().await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn gives_up_after_max_attempts_and_fails_the_queued_sends_as_not_sent() {
    let (_transport, conn) = open_to_nobody(
        "never.sock",
        clipsync::config::TransportConfig {
            max_reconnect_attempts: 3,
            ..fast_backoff()
        },
    );
    let queued = conn.try_send(Message::text("never sent")).unwrap();
    let end = state_until(&conn, |s| matches!(s, ConnectionState::Closed(_))).await;
    let ConnectionState::Closed(CloseCause::Lost(detail)) = end else {
        panic!("{end:?}")
    };
    assert!(detail.contains("gave up after 3"), "{detail}");
    assert!(matches!(queued.await, Err(SendError::Closed(_))));
}

#[tokio::test]
async fn closing_while_connecting_stops_at_once_even_with_a_full_queue() {
    let (_transport, conn) = open_to_nobody(
        "closed.sock",
        clipsync::config::TransportConfig {
            send_queue: 2,
            ..fast_backoff()
        },
    );
    // Fill the queue until the transport says so (it takes `send_queue` for itself and the
    // channel holds as many again).
    let mut queued = Vec::new();
    let full = loop {
        match conn.try_send(Message::text("x")) {
            Ok(f) => queued.push(f),
            Err(e) => break e,
        }
        assert!(queued.len() <= 8, "the queue never filled");
    };
    assert!(matches!(full, SendError::Full), "{full:?}");
    let state = conn.state();
    conn.close().await;
    assert!(
        matches!(
            &*state.borrow(),
            ConnectionState::Closed(CloseCause::Local(ReasonCode::Normal, _))
        ),
        "{:?}",
        *state.borrow()
    );
    for q in queued {
        assert!(matches!(q.await, Err(SendError::Closed(_))));
    }
}

#[tokio::test]
async fn a_peer_that_refuses_our_key_ends_it() {
    let (ka, kb, kc) = (key(1), key(2), key(3));
    let server = transport(cfg());
    let _listener = server.listen(&loopback(), auth(&ka, &[&kc])).await.unwrap();
    let addr = _listener.local_addr().clone();
    let peer = PeerInfo::new("server", vec![addr]).with_key(ka.public_key().clone());
    let client = transport(fast_backoff());
    let conn = client.open(&peer, auth(&kb, &[&ka])).unwrap();
    let end = state_until(&conn, |s| matches!(s, ConnectionState::Closed(_))).await;
    assert!(
        matches!(
            end,
            ConnectionState::Closed(CloseCause::Peer(ReasonCode::KeyNotAuthorized, _))
        ),
        "{end:?}"
    );
}

#[tokio::test]
async fn open_needs_the_peers_key_and_an_address() {
    let (ka, kb) = (key(1), key(2));
    let t = transport(cfg());
    let no_key = PeerInfo::new("server", vec![loopback()]);
    assert!(matches!(
        t.open(&no_key, auth(&kb, &[&ka])),
        Err(ConnectError::KeyRequired)
    ));
    let no_addr = PeerInfo::new("server", vec![]).with_key(ka.public_key().clone());
    assert!(matches!(
        t.open(&no_addr, auth(&kb, &[&ka])),
        Err(ConnectError::NoAddress)
    ));
}

/// Both peers open a connection to each other: each ends with the one the tie-break keeps,
/// the other closed with reason 13, and messages flow over the survivor.
#[tokio::test]
async fn two_peers_opening_each_other_end_with_one_connection() {
    let (ka, kb) = (key(1), key(2));
    let (ta, tb) = (transport(cfg()), transport(cfg()));
    let mut la = ta.listen(&loopback(), auth(&ka, &[&kb])).await.unwrap();
    let mut lb = tb.listen(&loopback(), auth(&kb, &[&ka])).await.unwrap();
    let a_to_b =
        PeerInfo::new("b", vec![lb.local_addr().clone()]).with_key(kb.public_key().clone());
    let b_to_a =
        PeerInfo::new("a", vec![la.local_addr().clone()]).with_key(ka.public_key().clone());
    let oa = ta.open(&a_to_b, auth(&ka, &[&kb])).unwrap();
    let ob = tb.open(&b_to_a, auth(&kb, &[&ka])).unwrap();
    assert_ne!(oa.wins_tie_break(), ob.wins_tie_break());
    // The side whose opened connection loses takes the other's as its link.
    let (winner, mut accepted, loser) = if oa.wins_tie_break() {
        (oa, lb.accept().await.unwrap(), ob)
    } else {
        (ob, la.accept().await.unwrap(), oa)
    };
    assert!(accepted.wins_tie_break());
    let end = state_until(&loser, |s| matches!(s, ConnectionState::Closed(_))).await;
    assert!(
        matches!(
            &end,
            ConnectionState::Closed(
                CloseCause::Local(ReasonCode::DuplicateConnection, _)
                    | CloseCause::Peer(ReasonCode::DuplicateConnection, _)
            )
        ),
        "{end:?}"
    );
    winner
        .send(Message::text("over the survivor"))
        .await
        .unwrap();
    assert_eq!(
        accepted.receive().await.unwrap().into_message().unwrap(),
        Message::text("over the survivor")
    );
    assert!(matches!(
        *winner.state().borrow(),
        ConnectionState::Connected | ConnectionState::Degraded
    ));
}
