//! The peer-level API ([`Peers`]) as a sync engine uses it: every peer listens and dials
//! every other, both send at once, a peer restarts, a peer is removed, the transport shuts
//! down.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod common;

use std::time::{Duration, Instant};

use clipsync::config::TransportConfig;
use clipsync::error::{ConnectError, SendError};
use clipsync::transport::{
    Address, ConnectionState, Incoming, Message, PeerEvent, PeerEvents, PeerInfo, Peers, Transport,
};
use common::*;
use ssh_key::PrivateKey;

/// One machine: its transport, its set of peers, their events.
struct Node {
    name: String,
    key: PrivateKey,
    transport: Transport,
    peers: Peers,
    events: PeerEvents,
    addr: Address,
}

/// Starts a node with key `seed` trusting `others`, listening on `addr` (port 0: any).
async fn node(name: &str, seed: u8, others: &[u8], addr: Address) -> Node {
    node_with(config(), name, seed, others, addr).await
}

async fn node_with(
    cfg: TransportConfig,
    name: &str,
    seed: u8,
    others: &[u8],
    addr: Address,
) -> Node {
    let key = key(seed);
    let trusted: Vec<PrivateKey> = others.iter().map(|s| common::key(*s)).collect();
    let trusted: Vec<&PrivateKey> = trusted.iter().collect();
    let transport = transport(cfg);
    let (peers, events) = transport.peers(auth(&key, &trusted));
    let addr = peers.listen(&addr).await.unwrap();
    Node {
        name: name.into(),
        key,
        transport,
        peers,
        events,
        addr,
    }
}

fn config() -> TransportConfig {
    fast()
}

impl Node {
    fn info(&self) -> PeerInfo {
        PeerInfo::new(self.name.clone(), vec![self.addr.clone()])
            .with_key(self.key.public_key().clone())
    }

    fn wire_key(&self) -> Vec<u8> {
        self.key.public_key().to_bytes().unwrap()
    }

    /// The next event that `pick` takes (others are kept in `seen`), within 10 s.
    async fn until<T>(
        &mut self,
        seen: &mut Vec<String>,
        mut pick: impl FnMut(&PeerEvent) -> Option<T>,
    ) -> (T, PeerEvent) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("{}: no such event within 10 s; saw {seen:?}", self.name)
                })
                .expect("events ended");
            seen.push(describe(&event));
            if let Some(t) = pick(&event) {
                return (t, event);
            }
        }
    }
}

fn describe(e: &PeerEvent) -> String {
    format!("{} {}", e.name(), e.peer().id())
}

/// Three nodes, each knowing the other two.
async fn three() -> Vec<Node> {
    let mut nodes = vec![
        node("a", 1, &[2, 3], loopback()).await,
        node("b", 2, &[1, 3], loopback()).await,
        node("c", 3, &[1, 2], loopback()).await,
    ];
    let infos: Vec<PeerInfo> = nodes.iter().map(Node::info).collect();
    for (i, n) in nodes.iter_mut().enumerate() {
        for (j, info) in infos.iter().enumerate() {
            if i != j {
                n.peers.add(info.clone()).unwrap();
            }
        }
    }
    nodes
}

/// Reads `n`'s events until it has seen `Connected` from every id in `ids`.
async fn connected_to(n: &mut Node, ids: &[&str], seen: &mut Vec<String>) {
    let mut missing: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    while !missing.is_empty() {
        let (id, _) = n
            .until(seen, |e| match e {
                PeerEvent::Connected(p) => Some(p.id().to_string()),
                _ => None,
            })
            .await;
        missing.retain(|m| *m != id);
    }
}

/// Two nodes that know each other, linked; with the events each saw so far.
async fn linked_pair() -> (Node, Node, Vec<String>, Vec<String>) {
    let mut a = node("a", 1, &[2], loopback()).await;
    let mut b = node("b", 2, &[1], loopback()).await;
    a.peers.add(b.info()).unwrap();
    b.peers.add(a.info()).unwrap();
    let (mut la, mut lb) = (Vec::new(), Vec::new());
    connected_to(&mut a, &["b"], &mut la).await;
    connected_to(&mut b, &["a"], &mut lb).await;
    (a, b, la, lb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_link_once_and_a_broadcast_arrives_exactly_once_everywhere() {
    let mut nodes = three().await;
    let names = ["a", "b", "c"];
    let mut logs = [Vec::new(), Vec::new(), Vec::new()];
    for (i, n) in nodes.iter_mut().enumerate() {
        let others: Vec<&str> = names.iter().copied().filter(|x| *x != names[i]).collect();
        connected_to(n, &others, &mut logs[i]).await;
    }
    // Everyone sends at once.
    let sends = nodes.iter().map(|n| {
        let peers = n.peers.clone();
        let text = format!("clip from {}", n.name);
        async move { peers.broadcast(Message::text(text)).await }
    });
    for outcomes in futures_util::future::join_all(sends).await {
        assert_eq!(outcomes.len(), 2);
        for (peer, outcome) in outcomes {
            assert!(outcome.is_ok(), "to {}: {outcome:?}", peer.id());
        }
    }
    for (i, n) in nodes.iter_mut().enumerate() {
        let mut got = Vec::new();
        while got.len() < 2 {
            let (text, _) = n
                .until(&mut logs[i], |e| match e {
                    PeerEvent::Received {
                        peer,
                        incoming: Incoming::Message(m),
                    } => Some(format!(
                        "{}:{}",
                        peer.id(),
                        String::from_utf8_lossy(&m.payload)
                    )),
                    _ => None,
                })
                .await;
            got.push(text);
        }
        got.sort();
        let mut want: Vec<String> = names
            .iter()
            .filter(|x| **x != n.name)
            .map(|x| format!("{x}:clip from {x}"))
            .collect();
        want.sort();
        assert_eq!(got, want, "{}", n.name);
        // One session per pair: nothing was lost, nothing reconnected.
        assert!(
            logs[i]
                .iter()
                .all(|e| e.starts_with("connected") || e.starts_with("received")),
            "{}: {:?}",
            n.name,
            logs[i]
        );
        for p in n.peers.list() {
            assert_eq!(
                *p.state().borrow(),
                ConnectionState::Connected,
                "{}",
                p.id()
            );
            assert_eq!(p.health().borrow().reconnects, 0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_is_linked_again_at_once_and_reported_as_session_lost() {
    let (mut a, b, mut la, mut lb) = linked_pair().await;

    // b goes away (its process ends: the transport shuts down) and comes back on its address.
    let b_addr = b.addr.clone();
    b.transport.shutdown().await;
    drop(b);
    a.until(&mut la, |e| {
        matches!(e, PeerEvent::Disconnected { .. }).then_some(())
    })
    .await;
    let restarted = Instant::now();
    let mut b = node("b", 2, &[1], b_addr).await;
    b.peers.add(a.info()).unwrap();
    // a had a session with b: the new one is a loss (b may have missed things); b starts
    // afresh.
    a.until(&mut la, |e| {
        matches!(e, PeerEvent::SessionLost(_)).then_some(())
    })
    .await;
    let relinked = restarted.elapsed();
    connected_to(&mut b, &["a"], &mut lb).await;
    eprintln!("restarted peer linked again {relinked:?} after it started");
    // And the link carries.
    let peer_a = b.peers.get(&a.wire_key()).unwrap();
    peer_a.send(Message::text("back")).await.unwrap();
    let (text, _) = a
        .until(&mut la, |e| match e {
            PeerEvent::Received {
                incoming: Incoming::Message(m),
                ..
            } => Some(m.payload.clone()),
            _ => None,
        })
        .await;
    assert_eq!(&text[..], b"back");
}

/// The survivor's link to a peer goes half-open (a laptop's network froze mid-session), the
/// peer restarts and dials: its fresh connection wins at once, although the survivor has the
/// smaller key and its old link still looks up (it would time out only after the idle timeout,
/// a minute here). Before the tie-break knew established links, the fresh connection was
/// refused with `duplicate connection` until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_restarted_behind_a_half_open_link_is_linked_again_at_once() {
    let cfg = TransportConfig {
        connect_timeout: Duration::from_millis(200),
        handshake_timeout: Duration::from_millis(200),
        auth_timeout: Duration::from_millis(100),
        first_byte_timeout: Duration::from_millis(100),
        heartbeat_interval: Duration::from_secs(20),
        heartbeat_timeout: Duration::from_secs(60),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        ..cfg()
    };
    // The survivor has the smaller key: its dial is the link the tie-break keeps.
    let wire = |s: u8| key(s).public_key().to_bytes().unwrap();
    let (small, large) = if wire(1) < wire(2) { (1, 2) } else { (2, 1) };
    let mut survivor = node_with(cfg.clone(), "survivor", small, &[large], loopback()).await;
    let mut peer = node_with(cfg.clone(), "peer", large, &[small], loopback()).await;
    let proxy = Proxy::start(tcp_addr(&peer.addr)).await;
    let via_proxy = PeerInfo::new("peer", vec![proxy.addr.to_string().parse().unwrap()])
        .with_key(peer.key.public_key().clone());
    survivor.peers.add(via_proxy).unwrap();
    peer.peers.add(survivor.info()).unwrap();
    let (mut ls, mut lp) = (Vec::new(), Vec::new());
    connected_to(&mut survivor, &["peer"], &mut ls).await;
    connected_to(&mut peer, &["survivor"], &mut lp).await;
    // The link has stood longer than any simultaneous dial could take (200 + 200 + 100 ms):
    // the age of the link is what this test is about, not a synchronisation.
    tokio::time::sleep(Duration::from_millis(700)).await;

    proxy.freeze();
    let peer_addr = peer.addr.clone();
    peer.transport.shutdown().await;
    drop(peer);
    let mut peer = node_with(cfg, "peer", large, &[small], peer_addr).await;
    peer.peers.add(survivor.info()).unwrap();
    survivor
        .until(&mut ls, |e| {
            matches!(e, PeerEvent::SessionLost(_)).then_some(())
        })
        .await;
    connected_to(&mut peer, &["survivor"], &mut lp).await;
    let to_peer = survivor.peers.get(&peer.wire_key()).unwrap();
    to_peer.send(Message::text("welcome back")).await.unwrap();
    assert_eq!(to_peer.live_links(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_peer_is_closed_told_last_and_refused() {
    let (mut a, mut b, mut la, mut lb) = linked_pair().await;
    assert!(a.peers.remove(&b.wire_key()));
    assert!(!a.peers.remove(&b.wire_key()), "removed twice");
    a.until(&mut la, |e| {
        matches!(e, PeerEvent::Removed(_)).then_some(())
    })
    .await;
    assert!(a.peers.get(&b.wire_key()).is_none());
    let (cause, _) = b
        .until(&mut lb, |e| match e {
            PeerEvent::Disconnected { cause, .. } => Some(cause.clone()),
            _ => None,
        })
        .await;
    assert!(cause.contains("normal"), "{cause}");
    // b's connections are refused now; once a adds b again, the two are linked again, and b
    // learns that its session with a was lost.
    a.peers.add(b.info()).unwrap();
    connected_to(&mut a, &["b"], &mut la).await;
    b.until(&mut lb, |e| {
        matches!(e, PeerEvent::SessionLost(_)).then_some(())
    })
    .await;
    let to_b = a.peers.get(&b.wire_key()).unwrap();
    to_b.send(Message::text("welcome back")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_settles_every_send_and_tells_the_peers_going_away() {
    let (a, mut b, _la, mut lb) = linked_pair().await;
    let b_key = b.wire_key();
    let b_info = b.info();
    let to_b = a.peers.get(&b_key).unwrap();
    // b's engine reads all the time, as a sync engine does: what it received, and why a left.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let (cause, _) = b
            .until(&mut lb, |e| match e {
                PeerEvent::Received {
                    incoming: Incoming::Message(m),
                    ..
                } => {
                    got.push(m.payload.clone());
                    None
                }
                PeerEvent::Disconnected { cause, .. } => Some(cause.clone()),
                _ => None,
            })
            .await;
        (got, cause, b)
    });
    // a queues sends faster than they can go until its queue is full, then shuts down.
    let mut pending = Vec::new();
    for i in 0.. {
        let payload = format!("{i:08}").repeat(125);
        match to_b.try_send(Message::text(payload.clone())) {
            Ok(f) => pending.push((payload, tokio::spawn(f))),
            Err(_) => break,
        }
        assert!(pending.len() < 100_000, "the queue never filled");
    }
    a.transport.shutdown().await;
    assert!(a.transport.is_shut_down());
    let mut delivered = Vec::new();
    for (payload, p) in pending {
        let outcome = tokio::time::timeout(Duration::from_secs(5), p)
            .await
            .expect("a send did not settle at shutdown")
            .unwrap();
        match outcome {
            Ok(()) => delivered.push(payload),
            Err(SendError::Unknown(_) | SendError::Closed(_)) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    let (got, cause, _b) = reader.await.unwrap();
    assert!(cause.contains("going away"), "{cause}");
    // Nothing duplicated, and what a calls delivered, b has.
    let got: Vec<String> = got
        .iter()
        .map(|p| String::from_utf8(p.to_vec()).unwrap())
        .collect();
    // In the order sent (the payloads sort as they were numbered), none twice.
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order or twice");
    for d in &delivered {
        assert!(got.binary_search(d).is_ok(), "delivered but never received");
    }
    let e = a.transport.connect(&b_info, auth(&a.key, &[&key(2)])).await;
    assert!(matches!(e, Err(ConnectError::ShutDown)), "{e:?}");
    assert!(matches!(a.peers.add(b_info), Err(ConnectError::ShutDown)));
}

#[tokio::test]
async fn dropping_the_transport_closes_its_connections_with_going_away() {
    let (ka, kb) = (key(1), key(2));
    let server = transport(cfg());
    let mut listener = server.listen(&loopback(), auth(&ka, &[&kb])).await.unwrap();
    let peer = PeerInfo::new("server", vec![listener.local_addr().clone()]);
    let client = transport(cfg());
    let (c, s) = tokio::join!(client.connect(&peer, auth(&kb, &[&ka])), listener.accept());
    let (c, mut s) = (c.unwrap(), s.unwrap());
    drop(client);
    let mut state = s.state();
    wait_state(&mut state, |st| matches!(st, ConnectionState::Closed(_))).await;
    assert!(s.receive().await.is_err());
    let ConnectionState::Closed(cause) = state.borrow().clone() else {
        unreachable!()
    };
    assert!(cause.to_string().contains("going away"), "{cause}");
    assert!(matches!(
        c.send(Message::text("late")).await,
        Err(SendError::Closed(_) | SendError::Unknown(_))
    ));
}

#[tokio::test]
async fn an_unknown_but_trusted_key_is_refused_by_a_peer_set() {
    // a trusts b's key, but b is not a peer of a's set.
    let a = node("a", 1, &[2], loopback()).await;
    let b_key = key(2);
    let stranger = transport(cfg());
    let e = stranger
        .connect(&a.info(), auth(&b_key, &[&a.key]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ConnectError::Refused {
                reason: clipsync::wire::ReasonCode::KeyNotAuthorized,
                ..
            }
        ),
        "{e:?}"
    );
}
