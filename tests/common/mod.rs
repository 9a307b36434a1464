//! Helpers shared by the real-socket tests: keys, configurations, a scripted mock peer.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // each test file uses a subset; panics are failures

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clipsync::config::TransportConfig;
use clipsync::net::{Address, BoxStream, Network, TokioNet};
use clipsync::secure::{SshAuthenticator, TlsSetup};
use clipsync::transport::{AcceptError, Listener, Transport};
use clipsync::wire::{self, Frame, Hello, ReasonCode, Role};
use futures_util::{SinkExt, StreamExt};
use ssh_key::{PrivateKey, PublicKey};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A deterministic ed25519 key.
pub fn key(seed: u8) -> PrivateKey {
    SshAuthenticator::ed25519_from_seed([seed; 32])
}

/// An authenticator with `key` trusting `trusted`.
pub fn auth(key: &PrivateKey, trusted: &[&PrivateKey]) -> Arc<SshAuthenticator> {
    let trusted: Vec<PublicKey> = trusted.iter().map(|k| k.public_key().clone()).collect();
    Arc::new(SshAuthenticator::new(key.clone(), trusted).unwrap())
}

/// Defaults, with deadlines short enough that a test waiting on one finishes quickly.
pub fn cfg() -> TransportConfig {
    TransportConfig {
        auth_timeout: Duration::from_millis(500),
        handshake_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        ..TransportConfig::default()
    }
}

/// Heartbeats and backoff fast enough that a reconnection test finishes in well under a second.
pub fn fast() -> TransportConfig {
    TransportConfig {
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_millis(600),
        degraded_rtt: Duration::from_millis(300),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        ..cfg()
    }
}

/// Waits, at most 10 s, until `conn`'s state satisfies `pred`; panics otherwise.
pub async fn wait_state(
    state: &mut tokio::sync::watch::Receiver<clipsync::transport::ConnectionState>,
    pred: impl FnMut(&clipsync::transport::ConnectionState) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(10), state.wait_for(pred))
        .await
        .expect("state not reached within 10 s")
        .expect("connection task gone");
}

pub fn transport(cfg: TransportConfig) -> Transport {
    Transport::new(cfg).unwrap()
}

pub fn loopback() -> Address {
    "127.0.0.1:0".parse().unwrap()
}

/// One authenticated loopback connection, both ends: (dialer's, listener's), with the two
/// transports (dropping one shuts it down).
pub async fn connected_pair(
    cfg: TransportConfig,
) -> (
    clipsync::transport::Connection,
    clipsync::transport::Connection,
    (Transport, Transport),
) {
    let (ka, kb) = (key(1), key(2));
    let server = transport(cfg.clone());
    let client = transport(cfg);
    let mut listener = server.listen(&loopback(), auth(&ka, &[&kb])).await.unwrap();
    let peer = clipsync::transport::PeerInfo::new("server", vec![listener.local_addr().clone()])
        .with_key(ka.public_key().clone());
    let (c, s) = tokio::join!(client.connect(&peer, auth(&kb, &[&ka])), listener.accept());
    (c.unwrap(), s.unwrap(), (client, server))
}

/// The next handshake failure the listener reports.
pub async fn next_refusal(listener: &mut Listener) -> clipsync::error::ConnectError {
    match listener.accept().await {
        Err(AcceptError::Handshake { error, .. }) => error,
        Err(e) => panic!("listener failed: {e}"),
        Ok(c) => panic!("connection from {} accepted", c.peer_fingerprint()),
    }
}

/// A mock peer: real TLS (or none) and tokio-tungstenite used directly, no ClipSync code
/// above the codec, so it can break every rule.
pub type MockWs = WebSocketStream<BoxStream>;

/// Dials `addr` over TLS and upgrades, offering `clipsync.v1` if `subprotocol`.
pub async fn mock_dial(addr: &Address, tls: bool, subprotocol: bool) -> Result<MockWs, String> {
    let stream = TokioNet.dial(addr).await.map_err(|e| e.to_string())?;
    let stream: BoxStream = if tls {
        let setup = TlsSetup::with_defaults().unwrap();
        setup.connect(stream).await.map_err(|e| e.to_string())?.0
    } else {
        stream
    };
    let mut req = "ws://clipsync.invalid/clipsync"
        .into_client_request()
        .unwrap();
    if subprotocol {
        req.headers_mut()
            .insert("sec-websocket-protocol", wire::SUBPROTOCOL.parse().unwrap());
    }
    tokio_tungstenite::client_async(req, stream)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

/// A syntactically valid dialer `HELLO` with an arbitrary key.
pub fn mock_hello() -> Bytes {
    Frame::Hello(Hello {
        protocol_version: 1,
        role: Role::Dialer,
        nonce: [0x42; 32],
        capabilities: 0,
        limits: TransportConfig::default().peer_limits(),
        public_key: wire::examples::example_public_key(),
        extensions: vec![],
    })
    .encode()
    .unwrap()
}

pub async fn mock_send(ws: &mut MockWs, bytes: Bytes) {
    ws.send(WsMessage::Binary(bytes)).await.unwrap();
}

/// Reads until the peer closes; returns the WebSocket close code (None: no close frame).
pub async fn mock_close_code<S>(ws: &mut WebSocketStream<S>) -> Option<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(WsMessage::Close(f)) => return f.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
    None
}

/// The close code that carries `reason`.
pub fn code(reason: ReasonCode) -> Option<u16> {
    Some(reason.close_code())
}

pub fn refused(e: &clipsync::error::ConnectError) -> Option<(ReasonCode, bool)> {
    match e {
        clipsync::error::ConnectError::Refused {
            reason, by_peer, ..
        } => Some((*reason, *by_peer)),
        _ => None,
    }
}

/// A TCP forwarder for real-socket fault tests: new connections go to `target`; `cut` kills
/// every current one (both sockets close under the transport); `freeze` stops forwarding on
/// every current one but keeps its sockets open (a half-open connection: writes succeed, reads
/// hang, as after a laptop changed networks).
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    target: Arc<std::sync::Mutex<std::net::SocketAddr>>,
    links: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    freeze: tokio::sync::watch::Sender<u64>,
    _accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: std::net::SocketAddr) -> Proxy {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let target = Arc::new(std::sync::Mutex::new(target));
        let links: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (freeze, frozen) = tokio::sync::watch::channel(0u64);
        let (t, ls) = (target.clone(), links.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = l.accept().await else {
                    return;
                };
                let to = *t.lock().unwrap();
                let mut frozen = frozen.clone();
                frozen.mark_unchanged();
                let link = tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    tokio::select! {
                        biased;
                        _ = frozen.changed() => {
                            // Half-open: hold both sockets, forward nothing, for ever.
                            std::future::pending::<()>().await;
                        }
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                    drop((inbound, outbound));
                });
                ls.lock().unwrap().push(link);
            }
        });
        Proxy {
            addr,
            target,
            links,
            freeze,
            _accept: accept,
        }
    }

    /// Kills every forwarded connection.
    pub fn cut(&self) {
        for l in self.links.lock().unwrap().drain(..) {
            l.abort();
        }
    }

    /// Makes every current connection half-open; new ones forward normally.
    pub fn freeze(&self) {
        self.freeze.send_modify(|n| *n += 1);
    }

    pub fn retarget(&self, to: std::net::SocketAddr) {
        *self.target.lock().unwrap() = to;
    }

    /// The proxy as a peer address.
    pub fn peer(&self, name: &str) -> clipsync::transport::PeerInfo {
        clipsync::transport::PeerInfo::new(name, vec![self.addr.to_string().parse().unwrap()])
    }
}

/// The socket address of a TCP `Address`.
pub fn tcp_addr(a: &Address) -> std::net::SocketAddr {
    a.to_string().parse().unwrap()
}
