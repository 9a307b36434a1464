//! Authenticated connections on real sockets: loopback TCP and Unix sockets, both ways.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use clipsync::error::{CloseCause, SendError};
use clipsync::transport::{Address, ConnectionState, Message, PeerInfo};
use clipsync::wire::ReasonCode;
use common::*;

/// Connect, authenticate both ways, exchange messages both ways, close cleanly.
async fn exchange(listen_on: Address, cfg: clipsync::config::TransportConfig) {
    let (ka, kb) = (key(1), key(2));
    let server = transport(cfg.clone());
    let client = transport(cfg);
    let mut listener = server.listen(&listen_on, auth(&ka, &[&kb])).await.unwrap();
    let addr = listener.local_addr().clone();
    let peer = PeerInfo::new("server", vec![addr]).with_key(ka.public_key().clone());
    let (client_conn, server_conn) =
        tokio::join!(client.connect(&peer, auth(&kb, &[&ka])), listener.accept());
    let mut c = client_conn.unwrap();
    let mut s = server_conn.unwrap();
    assert_eq!(
        c.peer_key().as_ref(),
        &ka.public_key().to_bytes().unwrap()[..]
    );
    assert_eq!(
        s.peer_key().as_ref(),
        &kb.public_key().to_bytes().unwrap()[..]
    );
    assert_eq!(*c.state().borrow(), ConnectionState::Connected);

    // Client to server: three messages, each acknowledged, delivered in order.
    for i in 0..3 {
        c.send(Message::text(format!("c{i}"))).await.unwrap();
    }
    for i in 0..3 {
        let m = s.receive().await.unwrap().into_message().unwrap();
        assert_eq!(m, Message::text(format!("c{i}")));
    }
    // Server to client, with another content type.
    s.send(Message::new("image/png", vec![0x89, b'P', b'N', b'G']))
        .await
        .unwrap();
    let m = c.receive().await.unwrap().into_message().unwrap();
    assert_eq!(m.content_type, "image/png");
    assert_eq!(&m.payload[..], &[0x89, b'P', b'N', b'G']);

    // A single message over the peer's limit is refused alone; the connection stays up.
    let big = vec![0u8; 1024 * 1024 + 1];
    let e = c
        .send_message(Message::new("application/octet-stream", big))
        .await;
    assert!(matches!(e, Err(SendError::TooLarge { .. })), "{e:?}");
    c.send(Message::text("still up")).await.unwrap();
    assert_eq!(
        s.receive().await.unwrap().into_message().unwrap(),
        Message::text("still up")
    );

    // Graceful close: the server learns the peer closed normally.
    c.close().await;
    let closed = s.receive().await.unwrap_err();
    assert_eq!(
        closed.0,
        CloseCause::Peer(ReasonCode::Normal, String::new())
    );
    assert!(matches!(
        &*s.state().borrow(),
        ConnectionState::Closed(CloseCause::Peer(ReasonCode::Normal, _))
    ));
}

#[tokio::test]
async fn tcp_loopback_authenticates_and_exchanges_both_ways() {
    exchange(loopback(), cfg()).await;
}

#[cfg(unix)]
#[tokio::test]
async fn unix_socket_authenticates_and_exchanges_both_ways() {
    let dir = std::env::temp_dir().join(format!("clipsync-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tls.sock");
    let _ = std::fs::remove_file(&path);
    exchange(Address::Unix(path.clone()), cfg()).await;
    std::fs::remove_file(&path).ok();
}

#[cfg(unix)]
#[tokio::test]
async fn unix_socket_in_explicit_plaintext_mode() {
    let dir = std::env::temp_dir().join(format!("clipsync-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("plain.sock");
    let _ = std::fs::remove_file(&path);
    let cfg = clipsync::config::TransportConfig {
        allow_plaintext: true,
        ..cfg()
    };
    exchange(Address::Unix(path.clone()), cfg).await;
    std::fs::remove_file(&path).ok();
}

#[tokio::test]
async fn dropping_a_connection_settles_unacknowledged_sends() {
    let (ka, kb) = (key(1), key(2));
    let server = transport(cfg());
    let mut listener = server.listen(&loopback(), auth(&ka, &[&kb])).await.unwrap();
    let peer = PeerInfo::new("server", vec![listener.local_addr().clone()]);
    let client = transport(cfg());
    let (c, s) = tokio::join!(client.connect(&peer, auth(&kb, &[&ka])), listener.accept());
    let c = c.unwrap();
    let s = s.unwrap();
    // The server goes away: every later send settles as failed, none hangs.
    s.close_with(ReasonCode::GoingAway, "shutting down".into())
        .await;
    let e = c.send(Message::text("late")).await.unwrap_err();
    match e {
        SendError::Closed(cause) | SendError::Unknown(cause) => {
            assert_eq!(cause.reason(), Some(ReasonCode::GoingAway), "{cause}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_second_address_is_tried_when_the_first_is_unreachable() {
    let (ka, kb) = (key(1), key(2));
    let server = transport(cfg());
    let mut listener = server.listen(&loopback(), auth(&ka, &[&kb])).await.unwrap();
    // A port nobody listens on: bind one, learn its number, close it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr: Address = dead.local_addr().unwrap().to_string().parse().unwrap();
    drop(dead);
    let peer = PeerInfo::new("server", vec![dead_addr, listener.local_addr().clone()]);
    let client = transport(cfg());
    let (c, s) = tokio::join!(client.connect(&peer, auth(&kb, &[&ka])), listener.accept());
    assert!(c.is_ok() && s.is_ok());
}

#[tokio::test]
async fn a_new_connection_from_the_same_peer_replaces_the_old_one() {
    let (ka, kb) = (key(1), key(2));
    let server = transport(cfg());
    let mut listener = server.listen(&loopback(), auth(&ka, &[&kb])).await.unwrap();
    let peer = PeerInfo::new("server", vec![listener.local_addr().clone()]);
    let client = transport(cfg());
    let (c1, s1) = tokio::join!(client.connect(&peer, auth(&kb, &[&ka])), listener.accept());
    let (mut c1, mut s1) = (c1.unwrap(), s1.unwrap());
    let (c2, s2) = tokio::join!(client.connect(&peer, auth(&kb, &[&ka])), listener.accept());
    let (c2, mut s2) = (c2.unwrap(), s2.unwrap());
    // The old connection ends with `replaced` on both sides; the new one works.
    let closed = s1.receive().await.unwrap_err();
    assert_eq!(
        closed.0.reason(),
        Some(ReasonCode::Replaced),
        "{}",
        closed.0
    );
    let closed = c1.receive().await.unwrap_err();
    assert!(
        matches!(closed.0, CloseCause::Peer(ReasonCode::Replaced, _)),
        "{}",
        closed.0
    );
    c2.send(Message::text("new")).await.unwrap();
    assert_eq!(
        s2.receive().await.unwrap().into_message().unwrap(),
        Message::text("new")
    );
}

/// Both peers dial each other at the same moment: one connection survives on both sides (the
/// one dialled by the peer with the smaller key), the other closes with reason 13.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dials_collapse_to_one_connection() {
    use clipsync::secure::Authenticator;
    for round in 0..5 {
        let (ka, kb) = (key(1), key(2));
        let (auth_a, auth_b) = (auth(&ka, &[&kb]), auth(&kb, &[&ka]));
        let (ta, tb) = (transport(cfg()), transport(cfg()));
        let mut la = ta.listen(&loopback(), auth_a.clone()).await.unwrap();
        let mut lb = tb.listen(&loopback(), auth_b.clone()).await.unwrap();
        let to_b = PeerInfo::new("b", vec![lb.local_addr().clone()]);
        let to_a = PeerInfo::new("a", vec![la.local_addr().clone()]);
        let a_smaller = auth_a.public_key() < auth_b.public_key();
        let (ca, cb) = tokio::join!(
            ta.connect(&to_b, auth_a.clone()),
            tb.connect(&to_a, auth_b.clone())
        );
        // The winner is the connection dialled by the smaller key: its dialer's connect is Ok
        // and stays up, and the other side's listener hands it out.
        let (winner_dial, winner_listener, loser_dial) = if a_smaller {
            (ca, &mut lb, cb)
        } else {
            (cb, &mut la, ca)
        };
        let winner_dial = winner_dial.unwrap_or_else(|e| panic!("round {round}: {e}"));
        let mut winner_accepted = winner_listener.accept().await.unwrap();
        winner_dial.send(Message::text("hello")).await.unwrap();
        assert_eq!(
            winner_accepted
                .receive()
                .await
                .unwrap()
                .into_message()
                .unwrap(),
            Message::text("hello")
        );
        // The loser is refused outright, or closed with reason 13 right after it opened.
        match loser_dial {
            Err(e) => assert_eq!(e.reason(), Some(ReasonCode::DuplicateConnection), "{e}"),
            Ok(mut c) => {
                let closed = c.receive().await.unwrap_err();
                assert_eq!(
                    closed.0.reason(),
                    Some(ReasonCode::DuplicateConnection),
                    "{}",
                    closed.0
                );
            }
        }
        assert_eq!(
            *winner_accepted.state().borrow(),
            ConnectionState::Connected
        );
    }
}

/// Dropping a `Connection` closes it, on either side: the transport's own bookkeeping (the
/// tie-break and replacement registries) must not keep it alive (it did, briefly).
#[tokio::test]
async fn dropping_a_connection_closes_it_on_both_sides() {
    let (ka, kb) = (key(1), key(2));
    let server = transport(cfg());
    let mut listener = server.listen(&loopback(), auth(&ka, &[&kb])).await.unwrap();
    let peer = PeerInfo::new("server", vec![listener.local_addr().clone()]);
    let client = transport(cfg());
    for drop_client in [true, false] {
        let (c, s) = tokio::join!(client.connect(&peer, auth(&kb, &[&ka])), listener.accept());
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        // Bounded, so a connection kept alive fails the test instead of hanging it.
        let bound = std::time::Duration::from_secs(5);
        let closed = if drop_client {
            drop(c);
            tokio::time::timeout(bound, s.receive())
                .await
                .expect("still open")
                .unwrap_err()
        } else {
            drop(s);
            tokio::time::timeout(bound, c.receive())
                .await
                .expect("still open")
                .unwrap_err()
        };
        assert_eq!(
            closed.0,
            CloseCause::Peer(
                ReasonCode::Normal,
                "connection dropped by the application".into()
            ),
            "{}",
            closed.0
        );
    }
}

/// A receiver that closes with messages delivered but not taken gets them back from
/// `close_and_drain`, in order: the sender was told each was delivered, so nothing it counts as
/// delivered is lost.
#[tokio::test]
async fn close_and_drain_returns_what_was_delivered_but_not_taken() {
    let (c, s, _transports) = connected_pair(cfg()).await;
    for i in 0..20 {
        // Each returns once the receiving transport acknowledged it.
        c.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    let drained: Vec<Message> = s
        .close_and_drain()
        .await
        .into_iter()
        .map(|i| i.into_message().unwrap())
        .collect();
    let want: Vec<Message> = (0..20).map(|i| Message::text(format!("m{i}"))).collect();
    assert_eq!(drained, want);
}

/// A send on a connection the peer has closed fails at once, even while the application has
/// not yet taken what the connection delivered before it ended (the transport hands those over
/// as the application reads; a send must not wait for that). Found by the simulator
/// (`swarm_mix` seed 98: a send back after a graceful restart never settled).
#[tokio::test]
async fn send_after_the_end_fails_while_deliveries_wait_for_the_application() {
    let (c, mut s, _transports) = connected_pair(cfg()).await;
    // More than the application's queue (16) and less than what the driver holds beside it
    // before it stops reading (16 more): the driver still holds deliveries at the end.
    for i in 0..24 {
        c.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    c.close().await;
    let sent = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        s.send(Message::text("too late")),
    )
    .await;
    assert!(
        matches!(sent, Ok(Err(_))),
        "a send after the end must fail at once, got {sent:?}"
    );
    // Nothing delivered is lost meanwhile.
    for i in 0..24 {
        let m = s.receive().await.unwrap().into_message().unwrap();
        assert_eq!(m, Message::text(format!("m{i}")));
    }
    assert!(s.receive().await.is_err());
}
