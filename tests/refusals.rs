//! Every refusal, with the right reason code on both sides, and misbehaving peers answered
//! with a typed error and the documented close code; nothing panics or hangs.

#![allow(clippy::unwrap_used, clippy::result_large_err)] // tests: a panic is the failure report

mod common;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use clipsync::error::ConnectError;
use clipsync::secure::auth::{AuthError, Authenticator, NAMESPACE};
use clipsync::transport::PeerInfo;
use clipsync::wire::{Frame, MessageFrame, ReasonCode};
use common::*;
use futures_util::SinkExt;
use ssh_encoding::Encode;
use ssh_key::{HashAlg, PrivateKey};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Runs a connect against a listener trusting `trusted_by_server`; returns both sides' errors.
async fn refused_pair(
    server_key: &PrivateKey,
    trusted_by_server: &[&PrivateKey],
    client_auth: Arc<dyn Authenticator>,
    peer: impl FnOnce(clipsync::transport::Address) -> PeerInfo,
) -> (ConnectError, ConnectError) {
    let server = transport(cfg());
    let mut listener = server
        .listen(&loopback(), auth(server_key, trusted_by_server))
        .await
        .unwrap();
    let peer = peer(listener.local_addr().clone());
    let client = transport(cfg());
    let (c, s) = tokio::join!(
        client.connect(&peer, client_auth),
        next_refusal(&mut listener)
    );
    (c.expect_err("the client must be refused"), s)
}

#[tokio::test]
async fn an_untrusted_client_key_is_refused_on_both_sides() {
    let (ka, kb) = (key(1), key(2));
    let (c, s) = refused_pair(&ka, &[], auth(&kb, &[&ka]), |a| PeerInfo::new("s", vec![a])).await;
    assert_eq!(
        refused(&c),
        Some((ReasonCode::KeyNotAuthorized, true)),
        "{c}"
    );
    assert_eq!(
        refused(&s),
        Some((ReasonCode::KeyNotAuthorized, false)),
        "{s}"
    );
}

#[tokio::test]
async fn a_server_key_other_than_expected_is_refused_on_both_sides() {
    let (ka, kb, other) = (key(1), key(2), key(3));
    // The client trusts the server's key, but the peer info pins another one.
    let (c, s) = refused_pair(&ka, &[&kb], auth(&kb, &[&ka]), |a| {
        PeerInfo::new("s", vec![a]).with_key(other.public_key().clone())
    })
    .await;
    assert_eq!(
        refused(&c),
        Some((ReasonCode::KeyNotAuthorized, false)),
        "{c}"
    );
    assert_eq!(
        refused(&s),
        Some((ReasonCode::KeyNotAuthorized, true)),
        "{s}"
    );
}

#[tokio::test]
async fn an_untrusted_server_key_is_refused_on_both_sides() {
    let (ka, kb) = (key(1), key(2));
    let (c, s) = refused_pair(&ka, &[&kb], auth(&kb, &[]), |a| PeerInfo::new("s", vec![a])).await;
    assert_eq!(
        refused(&c),
        Some((ReasonCode::KeyNotAuthorized, false)),
        "{c}"
    );
    assert_eq!(
        refused(&s),
        Some((ReasonCode::KeyNotAuthorized, true)),
        "{s}"
    );
}

/// Signs like the real authenticator, but captures its first signature and replays it in
/// every later session: what a relay attacker holding a signature from another TLS session
/// would try.
#[derive(Debug)]
struct Replayer {
    inner: Arc<clipsync::secure::SshAuthenticator>,
    captured: Mutex<Option<Bytes>>,
}

impl Authenticator for Replayer {
    fn public_key(&self) -> Bytes {
        self.inner.public_key()
    }
    fn sign(&self, transcript: &[u8]) -> Result<Bytes, AuthError> {
        let mut captured = self.captured.lock().unwrap();
        if let Some(sig) = captured.as_ref() {
            return Ok(sig.clone());
        }
        let sig = self.inner.sign(transcript)?;
        *captured = Some(sig.clone());
        Ok(sig)
    }
    fn verify(&self, k: &[u8], t: &[u8], s: &[u8]) -> Result<(), AuthError> {
        self.inner.verify(k, t, s)
    }
}

#[tokio::test]
async fn a_signature_from_another_tls_session_is_refused() {
    let (ka, kb) = (key(1), key(2));
    let server = transport(cfg());
    let mut listener = server.listen(&loopback(), auth(&ka, &[&kb])).await.unwrap();
    let peer = PeerInfo::new("s", vec![listener.local_addr().clone()]);
    let replayer = Arc::new(Replayer {
        inner: auth(&kb, &[&ka]),
        captured: Mutex::new(None),
    });
    let client = transport(cfg());
    // Session 1: a genuine signature, accepted (and captured).
    let (c1, s1) = tokio::join!(client.connect(&peer, replayer.clone()), listener.accept());
    assert!(c1.is_ok() && s1.is_ok());
    // Session 2: the same signature, relayed into a new TLS session.
    let (c2, s2) = tokio::join!(client.connect(&peer, replayer), next_refusal(&mut listener));
    let c2 = c2.expect_err("refused");
    assert_eq!(refused(&c2), Some((ReasonCode::AuthFailed, true)), "{c2}");
    assert_eq!(refused(&s2), Some((ReasonCode::AuthFailed, false)), "{s2}");
}

/// Signs with a namespace other than ClipSync's.
#[derive(Debug)]
struct WrongNamespace(PrivateKey, Arc<clipsync::secure::SshAuthenticator>);

impl Authenticator for WrongNamespace {
    fn public_key(&self) -> Bytes {
        self.1.public_key()
    }
    fn sign(&self, transcript: &[u8]) -> Result<Bytes, AuthError> {
        assert_ne!(NAMESPACE, "file");
        let sig = self.0.sign("file", HashAlg::Sha512, transcript).unwrap();
        let mut v = Vec::new();
        sig.encode(&mut v).unwrap();
        Ok(Bytes::from(v))
    }
    fn verify(&self, k: &[u8], t: &[u8], s: &[u8]) -> Result<(), AuthError> {
        self.1.verify(k, t, s)
    }
}

#[tokio::test]
async fn a_signature_in_the_wrong_namespace_is_refused() {
    let (ka, kb) = (key(1), key(2));
    let client_auth = Arc::new(WrongNamespace(kb.clone(), auth(&kb, &[&ka])));
    let (c, s) = refused_pair(&ka, &[&kb], client_auth, |a| PeerInfo::new("s", vec![a])).await;
    assert_eq!(refused(&c), Some((ReasonCode::AuthFailed, true)), "{c}");
    assert_eq!(refused(&s), Some((ReasonCode::AuthFailed, false)), "{s}");
    assert!(s.to_string().contains("namespace"), "{s}");
}

/// A listener and a mock dialer; returns the listener's error and the close code the mock saw.
async fn against_mock<F, Fut>(tls: bool, script: F) -> (ConnectError, Option<u16>)
where
    F: FnOnce(MockWs) -> Fut,
    Fut: Future<Output = Option<u16>>,
{
    let (ka, kb) = (key(1), key(2));
    let server = transport(clipsync::config::TransportConfig {
        allow_plaintext: !tls,
        ..cfg()
    });
    let mut listener = server.listen(&loopback(), auth(&ka, &[&kb])).await.unwrap();
    let addr = listener.local_addr().clone();
    let mock = async move {
        let ws = mock_dial(&addr, tls, true).await.unwrap();
        script(ws).await
    };
    let (close, err) = tokio::join!(mock, next_refusal(&mut listener));
    (err, close)
}

#[tokio::test]
async fn data_frames_before_auth_are_refused_with_protocol_error() {
    let (err, close) = against_mock(true, |mut ws| async move {
        mock_send(&mut ws, mock_hello()).await;
        let msg = Frame::Message(MessageFrame {
            seq: 1,
            content_type: "text/plain".into(),
            metadata: Bytes::new(),
            payload: Bytes::from_static(b"sneaky"),
        });
        mock_send(&mut ws, msg.encode().unwrap()).await;
        mock_close_code(&mut ws).await
    })
    .await;
    assert_eq!(
        refused(&err),
        Some((ReasonCode::ProtocolError, false)),
        "{err}"
    );
    assert!(
        err.to_string().contains("MESSAGE before authentication"),
        "{err}"
    );
    assert_eq!(close, code(ReasonCode::ProtocolError));
}

#[tokio::test]
async fn a_peer_that_never_finishes_the_handshake_hits_the_deadline() {
    let (err, close) = against_mock(true, |mut ws| async move {
        // Stay silent after the upgrade; the listener's auth_timeout (500 ms) ends it.
        mock_close_code(&mut ws).await
    })
    .await;
    assert_eq!(
        refused(&err),
        Some((ReasonCode::HandshakeTimeout, false)),
        "{err}"
    );
    assert_eq!(close, code(ReasonCode::HandshakeTimeout));
}

#[tokio::test]
async fn a_peer_that_stops_after_hello_hits_the_deadline() {
    let (err, close) = against_mock(true, |mut ws| async move {
        mock_send(&mut ws, mock_hello()).await;
        mock_close_code(&mut ws).await
    })
    .await;
    assert_eq!(
        refused(&err),
        Some((ReasonCode::HandshakeTimeout, false)),
        "{err}"
    );
    assert_eq!(close, code(ReasonCode::HandshakeTimeout));
}

#[tokio::test]
async fn a_peer_closing_mid_handshake_is_a_typed_error() {
    let (err, _) = against_mock(true, |mut ws| async move {
        mock_send(&mut ws, mock_hello()).await;
        drop(ws); // TCP closes without a WebSocket close
        None
    })
    .await;
    assert!(matches!(err, ConnectError::Closed(_)), "{err}");
}

#[tokio::test]
async fn garbage_after_the_upgrade_is_refused_with_its_reason() {
    let (err, close) = against_mock(true, |mut ws| async move {
        mock_send(
            &mut ws,
            Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 1]),
        )
        .await;
        mock_close_code(&mut ws).await
    })
    .await;
    // 0xde is not protocol version 1.
    assert_eq!(
        refused(&err),
        Some((ReasonCode::UnsupportedVersion, false)),
        "{err}"
    );
    assert_eq!(close, code(ReasonCode::UnsupportedVersion));
}

#[tokio::test]
async fn a_truncated_hello_is_refused_with_protocol_error() {
    let (err, close) = against_mock(true, |mut ws| async move {
        let hello = mock_hello();
        let mut cut = hello[..40].to_vec();
        cut[4..8].copy_from_slice(&32u32.to_be_bytes());
        mock_send(&mut ws, Bytes::from(cut)).await;
        mock_close_code(&mut ws).await
    })
    .await;
    assert_eq!(
        refused(&err),
        Some((ReasonCode::ProtocolError, false)),
        "{err}"
    );
    assert_eq!(close, code(ReasonCode::ProtocolError));
}

#[tokio::test]
async fn a_text_message_is_refused_with_protocol_error() {
    let (err, close) = against_mock(true, |mut ws| async move {
        ws.send(WsMessage::text("hello?")).await.unwrap();
        mock_close_code(&mut ws).await
    })
    .await;
    assert_eq!(
        refused(&err),
        Some((ReasonCode::ProtocolError, false)),
        "{err}"
    );
    assert_eq!(close, code(ReasonCode::ProtocolError));
}

#[tokio::test]
async fn a_frame_over_the_pre_auth_cap_is_refused() {
    let (err, close) = against_mock(true, |mut ws| async move {
        // 20 KiB: under max_frame_size, over the 16 KiB pre-auth cap.
        mock_send(&mut ws, Bytes::from(vec![1u8; 20 * 1024])).await;
        mock_close_code(&mut ws).await
    })
    .await;
    assert_eq!(
        refused(&err),
        Some((ReasonCode::FrameTooLarge, false)),
        "{err}"
    );
    assert_eq!(close, code(ReasonCode::FrameTooLarge));
}

#[tokio::test]
async fn a_flood_before_auth_is_cut_off_by_the_read_budget() {
    let (err, _) = against_mock(true, |mut ws| async move {
        // 512 KiB in one message: the WebSocket layer would buffer it (max_frame_size is
        // 1 MiB), the pre-auth read budget stops it long before.
        let _ = ws
            .send(WsMessage::Binary(Bytes::from(vec![1u8; 512 * 1024])))
            .await;
        mock_close_code(&mut ws).await
    })
    .await;
    assert_eq!(
        refused(&err),
        Some((ReasonCode::FrameTooLarge, false)),
        "{err}"
    );
    // The budget, not the frame decoder after buffering the whole message, stopped it.
    assert!(err.to_string().contains("pre-auth allowance"), "{err}");
}

#[tokio::test]
async fn a_websocket_peer_without_the_subprotocol_is_refused() {
    let (ka, kb) = (key(1), key(2));
    let server = transport(cfg());
    let mut listener = server.listen(&loopback(), auth(&ka, &[&kb])).await.unwrap();
    let addr = listener.local_addr().clone();
    let (mock, err) = tokio::join!(mock_dial(&addr, true, false), next_refusal(&mut listener));
    let Err(mock_err) = mock else {
        panic!("the upgrade must fail")
    };
    assert!(mock_err.contains("400"), "{mock_err}");
    assert!(matches!(err, ConnectError::NoSubprotocol), "{err}");
}

#[tokio::test]
async fn a_server_that_does_not_select_the_subprotocol_is_refused() {
    // A bare tokio-tungstenite server that accepts any upgrade without a subprotocol.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let _ = tokio_tungstenite::accept_async(s).await;
    });
    let plain = clipsync::config::TransportConfig {
        allow_plaintext: true,
        ..cfg()
    };
    let (ka, kb) = (key(1), key(2));
    let peer = PeerInfo::new("s", vec![addr.parse().unwrap()]);
    let e = transport(plain)
        .connect(&peer, auth(&kb, &[&ka]))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, ConnectError::NoSubprotocol), "{e}");
    server.await.unwrap();
}

#[tokio::test]
async fn plain_websocket_to_a_tls_listener_fails_fast_and_clearly() {
    let (ka, kb) = (key(1), key(2));
    let server = transport(cfg());
    let mut listener = server.listen(&loopback(), auth(&ka, &[&kb])).await.unwrap();
    let peer = PeerInfo::new("s", vec![listener.local_addr().clone()]);
    let plain = transport(clipsync::config::TransportConfig {
        allow_plaintext: true,
        ..cfg()
    });
    let (c, s) = tokio::join!(
        plain.connect(&peer, auth(&kb, &[&ka])),
        next_refusal(&mut listener)
    );
    let c = c.err().unwrap();
    // Not a timeout: the mismatch is detected from the bytes, at once.
    assert!(
        matches!(c, ConnectError::Upgrade(ref d) if d.contains("TLS")),
        "{c}"
    );
    assert!(matches!(s, ConnectError::Tls(_)), "{s}");
}

#[tokio::test]
async fn tls_to_a_plaintext_listener_fails_fast_and_clearly() {
    let (ka, kb) = (key(1), key(2));
    let server = transport(clipsync::config::TransportConfig {
        allow_plaintext: true,
        ..cfg()
    });
    let mut listener = server.listen(&loopback(), auth(&ka, &[&kb])).await.unwrap();
    let peer = PeerInfo::new("s", vec![listener.local_addr().clone()]);
    let client = transport(cfg());
    let (c, s) = tokio::join!(
        client.connect(&peer, auth(&kb, &[&ka])),
        next_refusal(&mut listener)
    );
    let c = c.err().unwrap();
    assert!(
        matches!(c, ConnectError::Tls(_) | ConnectError::ClosedDuringTls(_)),
        "{c}"
    );
    assert!(c.to_string().contains("TLS"), "{c}");
    assert!(matches!(s, ConnectError::Upgrade(_)), "{s}");
}

#[tokio::test]
async fn a_server_sending_garbage_after_the_upgrade_is_refused() {
    // A bare server that upgrades with the subprotocol, then sends a text message.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let cb =
            |_: &tokio_tungstenite::tungstenite::handshake::server::Request,
             mut r: tokio_tungstenite::tungstenite::handshake::server::Response| {
                r.headers_mut()
                    .insert("sec-websocket-protocol", "clipsync.v1".parse().unwrap());
                Ok(r)
            };
        let mut ws = tokio_tungstenite::accept_hdr_async(s, cb).await.unwrap();
        ws.send(WsMessage::Binary(Bytes::from_static(b"\x01\x99garbage")))
            .await
            .unwrap();
        mock_close_code(&mut ws).await
    });
    let plain = clipsync::config::TransportConfig {
        allow_plaintext: true,
        ..cfg()
    };
    let (ka, kb) = (key(1), key(2));
    let peer = PeerInfo::new("s", vec![addr.parse().unwrap()]);
    let e = transport(plain)
        .connect(&peer, auth(&kb, &[&ka]))
        .await
        .err()
        .unwrap();
    assert_eq!(refused(&e), Some((ReasonCode::ProtocolError, false)), "{e}");
    assert_eq!(server.await.unwrap(), code(ReasonCode::ProtocolError));
}
