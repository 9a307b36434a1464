//! Layer 2, the secure channel: TLS 1.3 over the socket seam, the WebSocket upgrade with the
//! `clipsync.v1` subprotocol, and the authentication handshake behind [`Authenticator`].
//!
//! [`dial`] and [`accept`] run the whole setup with the configured deadlines:
//! `connect_timeout` for the socket, `handshake_timeout` for TLS plus the upgrade,
//! `auth_timeout` for `HELLO` … `RESUMED`. What they return is an authenticated WebSocket
//! ready for the driver.

pub mod agent;
pub mod auth;
#[doc(hidden)]
pub mod budget;
#[doc(hidden)]
pub mod handshake;
mod rsa_sign;
pub mod tls;
#[doc(hidden)]
pub mod ws;

pub use agent::AgentSigner;
pub use auth::{Authenticator, SshAuthenticator};
pub use tls::TlsSetup;

use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::time::{Instant, timeout, timeout_at};

use self::budget::{Budgeted, PRE_AUTH_BUDGET};
use self::handshake::{Handshaked, close_frame};
use self::ws::Ws;
use crate::config::TransportConfig;
use crate::error::{ConnectError, Stage};
use crate::net::{Address, BoxStream, Network};
use crate::wire::{ReasonCode, Role, SessionId};

/// An authenticated channel: the WebSocket and what the handshake established.
#[doc(hidden)]
pub struct Channel {
    /// The WebSocket, past the handshake.
    pub ws: Ws,
    /// Peer key, limits, session.
    pub handshake: Handshaked,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("handshake", &self.handshake)
            .finish_non_exhaustive()
    }
}

/// What the setup needs besides the stream.
#[doc(hidden)]
#[derive(Debug)]
pub struct ChannelParams<'a> {
    /// Limits and deadlines.
    pub cfg: &'a TransportConfig,
    /// TLS configuration (ignored when `cfg.allow_plaintext`).
    pub tls: &'a TlsSetup,
    /// Our identity and trust.
    pub auth: &'a dyn Authenticator,
    /// A fresh nonce for our `HELLO`.
    pub nonce: [u8; 32],
    /// Listener: the id for a new session.
    pub new_session: SessionId,
    /// Dialer: the key the peer must have, in SSH wire encoding.
    pub expected_key: Option<Bytes>,
    /// Dialer: the session to resume and what was received in it (`NONE`, 0: a new one).
    pub resume: (SessionId, u64),
}

/// Dials `addr` and runs the whole setup as the dialer.
#[doc(hidden)]
pub async fn dial(
    net: &dyn Network,
    addr: &Address,
    p: ChannelParams<'_>,
) -> Result<Channel, ConnectError> {
    tracing::debug!(%addr, "dial");
    let stream = match timeout(p.cfg.connect_timeout, net.dial(addr)).await {
        Err(_) => return Err(timed_out(Stage::Connect, p.cfg.connect_timeout)),
        Ok(Err(source)) => {
            return Err(ConnectError::Dial {
                addr: addr.to_string(),
                source,
            });
        }
        Ok(Ok(s)) => s,
    };
    setup(stream, Role::Dialer, p).await
}

/// Runs the whole setup as the listener on an accepted stream.
#[doc(hidden)]
pub async fn accept(stream: BoxStream, p: ChannelParams<'_>) -> Result<Channel, ConnectError> {
    setup(stream, Role::Listener, p).await
}

async fn setup(
    stream: BoxStream,
    role: Role,
    p: ChannelParams<'_>,
) -> Result<Channel, ConnectError> {
    let cfg = p.cfg;
    let deadline = Instant::now() + cfg.handshake_timeout;
    let (stream, binding) = if cfg.allow_plaintext {
        (stream, [0u8; 32])
    } else {
        let tls = match role {
            Role::Dialer => timeout_at(deadline, p.tls.connect(stream)).await,
            Role::Listener => timeout_at(deadline, p.tls.accept(stream)).await,
        };
        match tls {
            Err(_) => return Err(timed_out(Stage::Tls, cfg.handshake_timeout)),
            // The listener closed the socket before TLS completed: it sheds load (its pool of
            // connections in setup is full), restarts, or does not speak TLS.
            Ok(Err(e))
                if role == Role::Dialer
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::UnexpectedEof
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionAborted
                    ) =>
            {
                return Err(ConnectError::ClosedDuringTls(e.to_string()));
            }
            Ok(Err(e)) => return Err(ConnectError::Tls(e.to_string())),
            Ok(Ok(s)) => s,
        }
    };
    tracing::debug!(plaintext = cfg.allow_plaintext, "tls done");
    let (stream, lifter) = Budgeted::new(stream, PRE_AUTH_BUDGET);
    let upgrade = match role {
        Role::Dialer => timeout_at(deadline, ws::upgrade_dialer(stream, cfg)).await,
        Role::Listener => timeout_at(deadline, ws::upgrade_listener(stream, cfg)).await,
    };
    let mut ws = match upgrade {
        Err(_) => return Err(timed_out(Stage::Upgrade, cfg.handshake_timeout)),
        Ok(Err(e)) => return Err(hint_plaintext_mismatch(e, cfg)),
        Ok(Ok(ws)) => ws,
    };
    tracing::debug!("websocket upgraded");
    let input = handshake::HandshakeInput {
        role,
        auth: p.auth,
        cfg,
        binding,
        nonce: p.nonce,
        expected_key: p.expected_key,
        new_session: p.new_session,
        resume: p.resume,
        lifter,
    };
    match timeout(cfg.auth_timeout, handshake::run(&mut ws, input)).await {
        Ok(Ok(handshake)) => Ok(Channel { ws, handshake }),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            let detail = format!(
                "handshake not complete after {} ms",
                cfg.auth_timeout.as_millis()
            );
            tracing::warn!(%detail, "handshake timeout");
            let close = ws.close(Some(close_frame(ReasonCode::HandshakeTimeout, &detail)));
            let _ = timeout(Duration::from_secs(1), close).await;
            let _ = timeout(Duration::from_secs(1), ws.flush()).await;
            handshake::linger(&mut ws).await;
            Err(ConnectError::Refused {
                reason: ReasonCode::HandshakeTimeout,
                by_peer: false,
                detail,
            })
        }
    }
}

fn timed_out(stage: Stage, after: Duration) -> ConnectError {
    ConnectError::Timeout { stage, after }
}

/// A failed upgrade on a plaintext connection is most often a TLS peer: say so.
fn hint_plaintext_mismatch(e: ConnectError, cfg: &TransportConfig) -> ConnectError {
    match e {
        ConnectError::Upgrade(detail) if cfg.allow_plaintext => ConnectError::Upgrade(format!(
            "{detail} (this side runs without TLS: does the peer expect TLS?)"
        )),
        other => other,
    }
}
