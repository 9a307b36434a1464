//! The socket seam is implementable on turmoil, and the whole production stack runs on it:
//! TLS, WebSocket, SSH-key authentication and the Transport API, over a simulated network.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::Arc;
use std::time::Duration;

use clipsync::config::TransportConfig;
use clipsync::secure::SshAuthenticator;
use clipsync::transport::{Message, PeerInfo, Transport};
use clipsync_sim::TurmoilNet;

fn auth(own: u8, trusted: u8) -> Arc<SshAuthenticator> {
    let key = SshAuthenticator::ed25519_from_seed([own; 32]);
    let peer = SshAuthenticator::ed25519_from_seed([trusted; 32]);
    Arc::new(SshAuthenticator::new(key, vec![peer.public_key().clone()]).unwrap())
}

fn transport(seed: u64) -> Transport {
    let cfg = TransportConfig {
        rng_seed: Some(seed),
        ..TransportConfig::default()
    };
    Transport::builder(cfg)
        .network(Arc::new(TurmoilNet::default()))
        .build()
        .unwrap()
}

#[test]
fn the_full_stack_runs_over_turmoil() {
    let mut sim = turmoil::Builder::new()
        .rng_seed(7)
        .simulation_duration(Duration::from_secs(60))
        .min_message_latency(Duration::from_millis(5))
        .max_message_latency(Duration::from_millis(20))
        .build();
    sim.host("server", || async {
        let t = transport(1);
        let mut listener = t.listen(&"0.0.0.0:7070".parse()?, auth(1, 2)).await?;
        let mut conn = listener.accept().await?;
        let m = conn
            .receive()
            .await?
            .into_message()
            .ok_or("not a message")?;
        conn.send(Message::text(format!(
            "echo: {}",
            String::from_utf8_lossy(&m.payload)
        )))
        .await?;
        // Wait for the client's goodbye before the host ends.
        let _ = conn.receive().await;
        Ok(())
    });
    sim.client("client", async {
        let t = transport(2);
        let peer = PeerInfo::new("server", vec!["server:7070".parse()?]);
        let mut conn = t.connect(&peer, auth(2, 1)).await?;
        conn.send(Message::text("hi")).await?;
        let reply = conn
            .receive()
            .await?
            .into_message()
            .ok_or("not a message")?;
        assert_eq!(reply, Message::text("echo: hi"));
        conn.close().await;
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn an_untrusted_key_is_refused_over_turmoil() {
    let mut sim = turmoil::Builder::new().rng_seed(8).build();
    sim.host("server", || async {
        let t = transport(1);
        let mut listener = t.listen(&"0.0.0.0:7070".parse()?, auth(1, 9)).await?;
        let refused = listener.accept().await.err().unwrap();
        assert!(
            refused.to_string().contains("key not authorized"),
            "{refused}"
        );
        Ok(())
    });
    sim.client("client", async {
        let t = transport(2);
        let peer = PeerInfo::new("server", vec!["server:7070".parse()?]);
        let e = t.connect(&peer, auth(2, 1)).await.err().unwrap();
        assert_eq!(
            e.reason(),
            Some(clipsync::wire::ReasonCode::KeyNotAuthorized),
            "{e}"
        );
        Ok(())
    });
    sim.run().unwrap();
}
