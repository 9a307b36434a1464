//! The ClipSync handshake over an upgraded WebSocket (PROTOCOL.md §3–§4): `HELLO`, `AUTH`,
//! `AUTH_RESULT`, then `RESUME` and its answer.
//!
//! Until it completes only handshake frames are accepted, each at most 16 KiB
//! ([`DecodeLimits::PRE_AUTH`]), the byte stream under the WebSocket is on a read budget, and
//! the caller bounds the whole exchange with `auth_timeout`. A refusal is sent to the peer
//! (`AUTH_RESULT` or `GOAWAY`, then a WebSocket close with `4000 + reason`) and returned as
//! [`ConnectError::Refused`] with `by_peer: false`; a refusal received from the peer comes back
//! with `by_peer: true`.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::auth::{Authenticator, fingerprint_of_blob, transcript};
use super::budget::{BudgetLifter, is_budget_error};
use super::ws::Ws;
use crate::config::TransportConfig;
use crate::error::ConnectError;
use crate::wire::{
    Auth, AuthResult, CAP_METADATA, CAP_OFFERS, CAP_RESUME, CAP_STREAMS, DecodeLimits, Frame,
    FrameType, GoAway, Hello, PROTOCOL_VERSION, PeerLimits, ReasonCode, Resume, Role, SessionId,
    truncate_utf8,
};

/// What one side brings to the handshake.
#[derive(Debug)]
pub struct HandshakeInput<'a> {
    /// Dialer or listener.
    pub role: Role,
    /// Proves our identity, checks the peer's.
    pub auth: &'a dyn Authenticator,
    /// Limits we announce.
    pub cfg: &'a TransportConfig,
    /// The TLS channel binding (zeros on an explicitly plaintext connection).
    pub binding: [u8; 32],
    /// Our fresh nonce.
    pub nonce: [u8; 32],
    /// Dialer only: the key the peer must have (from `PeerInfo`), in SSH wire encoding.
    pub expected_key: Option<Bytes>,
    /// Listener only: the id to give a new session.
    pub new_session: SessionId,
    /// Dialer only: the session to resume and the last sequence number received in it
    /// (`SessionId::NONE`, 0 for a new session).
    pub resume: (SessionId, u64),
    /// Lifts the pre-auth read budget once authenticated.
    pub lifter: BudgetLifter,
}

/// The outcome of a successful handshake.
#[derive(Clone, Debug)]
pub struct Handshaked {
    /// The peer's SSH public key, wire encoding.
    pub peer_key: Bytes,
    /// What the peer announced it enforces.
    pub peer_limits: PeerLimits,
    /// The peer's capability bits.
    pub peer_capabilities: u32,
    /// The session in force (dialer: from `RESUMED` or `SESSION_LOST`; listener: the one the
    /// dialer asked for, or none).
    pub session: SessionId,
    /// Dialer: what the listener answered. Listener: always `Asked`.
    pub resume: ResumeAnswer,
}

/// How the session step went (PROTOCOL.md §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResumeAnswer {
    /// Dialer: `RESUMED` — the listener has the session and received our frames up to
    /// `peer_received` (0 for a new session).
    Resumed {
        /// The listener's `last_received`.
        peer_received: u64,
    },
    /// Dialer: `SESSION_LOST` — a fresh session replaces the one asked for; the listener's
    /// reason (16 `session unknown`, 17 `session expired`, 18 `replay overflow`).
    Lost(ReasonCode),
    /// Listener: the dialer's `RESUME`, not answered yet (the caller decides, knowing its
    /// sessions, and sends `RESUMED` or `SESSION_LOST`).
    Asked(Resume),
}

/// Runs the handshake. The caller bounds it with a timeout.
pub async fn run(ws: &mut Ws, input: HandshakeInput<'_>) -> Result<Handshaked, ConnectError> {
    let role = input.role;
    let own_hello = Frame::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        role,
        nonce: input.nonce,
        capabilities: CAP_STREAMS | CAP_RESUME | CAP_METADATA | CAP_OFFERS,
        limits: input.cfg.peer_limits(),
        public_key: input.auth.public_key(),
        extensions: vec![],
    })
    .encode()
    .map_err(|e| ConnectError::Internal(e.to_string()))?;
    send(ws, own_hello.clone()).await?;
    tracing::debug!("hello sent");

    let (peer_hello_bytes, peer_hello) = match recv(ws).await? {
        (bytes, Frame::Hello(h)) => (bytes, h),
        (_, other) => return unexpected(ws, FrameType::Hello, other.frame_type()).await,
    };
    if let Some((reason, detail)) = hello_problem(&peer_hello, role, &input.nonce) {
        return refuse(ws, reason, detail, true).await;
    }
    tracing::debug!(peer_key = %fingerprint_of_blob(&peer_hello.public_key), "hello received");

    let (dialer_hello, listener_hello) = match role {
        Role::Dialer => (&own_hello[..], &peer_hello_bytes[..]),
        Role::Listener => (&peer_hello_bytes[..], &own_hello[..]),
    };
    let peer_role = match role {
        Role::Dialer => Role::Listener,
        Role::Listener => Role::Dialer,
    };
    let ours = transcript(role, dialer_hello, listener_hello, &input.binding);
    let theirs = transcript(peer_role, dialer_hello, listener_hello, &input.binding);
    let signature = match input.auth.sign_async(ours.clone()).await {
        Ok(s) => s,
        Err(e) => return refuse(ws, e.reason(), e.to_string(), true).await,
    };
    send_frame(ws, Frame::Auth(Auth { signature })).await?;

    let peer_sig = match recv(ws).await? {
        (_, Frame::Auth(a)) => a.signature,
        (_, other) => return unexpected(ws, FrameType::Auth, other.frame_type()).await,
    };
    let verdict = input
        .auth
        .verify(&peer_hello.public_key, &theirs, &peer_sig)
        .map_err(|e| (e.reason(), e.to_string()))
        .and_then(|()| match &input.expected_key {
            Some(k) if *k != peer_hello.public_key => Err((
                ReasonCode::KeyNotAuthorized,
                format!(
                    "peer key {} is not the expected {}",
                    fingerprint_of_blob(&peer_hello.public_key),
                    fingerprint_of_blob(k)
                ),
            )),
            _ => Ok(()),
        });
    if let Err((reason, detail)) = verdict {
        return refuse(ws, reason, detail, true).await;
    }
    send_frame(
        ws,
        Frame::AuthResult(AuthResult {
            reason: ReasonCode::Normal,
            text: String::new(),
        }),
    )
    .await?;

    match recv(ws).await? {
        (_, Frame::AuthResult(r)) if r.reason == ReasonCode::Normal => {}
        (_, Frame::AuthResult(r)) => {
            return Err(ConnectError::Refused {
                reason: r.reason,
                by_peer: true,
                detail: r.text,
            });
        }
        (_, other) => return unexpected(ws, FrameType::AuthResult, other.frame_type()).await,
    }
    input.lifter.lift();
    tracing::info!(peer_key = %fingerprint_of_blob(&peer_hello.public_key), "authenticated");

    let (session, resume) = match role {
        Role::Dialer => {
            send_frame(
                ws,
                Frame::Resume(Resume {
                    session: input.resume.0,
                    last_received: input.resume.1,
                }),
            )
            .await?;
            match recv(ws).await? {
                (_, Frame::Resumed(r)) => (
                    r.session,
                    ResumeAnswer::Resumed {
                        peer_received: r.last_received,
                    },
                ),
                (_, Frame::SessionLost(l)) => (l.new_session, ResumeAnswer::Lost(l.reason)),
                (_, other) => return unexpected(ws, FrameType::Resumed, other.frame_type()).await,
            }
        }
        Role::Listener => match recv(ws).await? {
            (_, Frame::Resume(r)) => (r.session, ResumeAnswer::Asked(r)),
            (_, other) => return unexpected(ws, FrameType::Resume, other.frame_type()).await,
        },
    };
    Ok(Handshaked {
        peer_key: peer_hello.public_key,
        peer_limits: peer_hello.limits,
        peer_capabilities: peer_hello.capabilities,
        session,
        resume,
    })
}

/// Listener: answers the dialer's `RESUME` (PROTOCOL.md §4).
pub async fn answer_resume(ws: &mut Ws, answer: Frame) -> Result<(), ConnectError> {
    send_frame(ws, answer).await
}

/// Refuses a `RESUME` after authentication (listener): `GOAWAY` and the close with `reason`.
/// Best effort, bounded by `LINGER`.
pub async fn refuse_resume(ws: &mut Ws, reason: ReasonCode, detail: String) {
    let _ = tokio::time::timeout(LINGER, refuse::<()>(ws, reason, detail, false)).await;
}

/// What is wrong with the peer's `HELLO`, if anything (PROTOCOL.md §3.1).
fn hello_problem(h: &Hello, own_role: Role, own_nonce: &[u8; 32]) -> Option<(ReasonCode, String)> {
    if h.protocol_version < PROTOCOL_VERSION {
        return Some((
            ReasonCode::UnsupportedVersion,
            format!("peer speaks version {}", h.protocol_version),
        ));
    }
    if h.role == own_role {
        return Some((ReasonCode::ProtocolError, "peer claims our own role".into()));
    }
    if h.nonce == *own_nonce {
        return Some((ReasonCode::AuthFailed, "peer reflected our nonce".into()));
    }
    h.limits
        .problem()
        .map(|p| (ReasonCode::ProtocolError, format!("peer HELLO limits: {p}")))
}

async fn send(ws: &mut Ws, bytes: Bytes) -> Result<(), ConnectError> {
    ws.send(WsMessage::Binary(bytes))
        .await
        .map_err(|e| ConnectError::Closed(format!("write failed: {e}")))
}

async fn send_frame(ws: &mut Ws, frame: Frame) -> Result<(), ConnectError> {
    let bytes = frame
        .encode()
        .map_err(|e| ConnectError::Internal(e.to_string()))?;
    send(ws, bytes).await
}

/// The next frame, with its raw bytes (the transcript needs `HELLO` exactly as received).
async fn recv(ws: &mut Ws) -> Result<(Bytes, Frame), ConnectError> {
    loop {
        let msg = match ws.next().await {
            None => return Err(ConnectError::Closed("peer ended the connection".into())),
            Some(Err(tokio_tungstenite::tungstenite::Error::Io(e))) if is_budget_error(&e) => {
                return refuse(
                    ws,
                    ReasonCode::FrameTooLarge,
                    "more than the pre-auth allowance sent before authentication".into(),
                    false,
                )
                .await;
            }
            Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(e))) => {
                return refuse(ws, ReasonCode::FrameTooLarge, e.to_string(), false).await;
            }
            Some(Err(e)) => return Err(ConnectError::Closed(format!("read failed: {e}"))),
            Some(Ok(m)) => m,
        };
        match msg {
            WsMessage::Binary(b) => match Frame::decode(b.clone(), DecodeLimits::PRE_AUTH) {
                Ok(Frame::GoAway(g)) => {
                    return Err(ConnectError::Refused {
                        reason: g.reason,
                        by_peer: true,
                        detail: g.text,
                    });
                }
                Ok(f) if f.frame_type().is_handshake() || is_session_frame(f.frame_type()) => {
                    return Ok((b, f));
                }
                Ok(f) => {
                    return refuse(
                        ws,
                        ReasonCode::ProtocolError,
                        format!("{} before authentication", f.frame_type()),
                        false,
                    )
                    .await;
                }
                Err(e) if e.is_ignorable() => continue,
                Err(e) => return refuse(ws, e.reason(), e.to_string(), false).await,
            },
            WsMessage::Close(frame) => {
                let (code, text) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return Err(match ReasonCode::from_close_code(code) {
                    Some(reason) => ConnectError::Refused {
                        reason,
                        by_peer: true,
                        detail: text,
                    },
                    None => ConnectError::Closed(format!("peer closed with code {code} {text}")),
                });
            }
            WsMessage::Text(_) => {
                return refuse(
                    ws,
                    ReasonCode::ProtocolError,
                    "text message (ClipSync frames are binary)".into(),
                    false,
                )
                .await;
            }
            WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => continue,
        }
    }
}

fn is_session_frame(t: FrameType) -> bool {
    matches!(
        t,
        FrameType::Resume | FrameType::Resumed | FrameType::SessionLost
    )
}

async fn unexpected<T>(ws: &mut Ws, want: FrameType, got: FrameType) -> Result<T, ConnectError> {
    refuse(
        ws,
        ReasonCode::ProtocolError,
        format!("expected {want}, got {got}"),
        false,
    )
    .await
}

/// Tells the peer why we refuse (`AUTH_RESULT` for authentication verdicts, `GOAWAY`
/// otherwise), closes with `4000 + reason`, and returns the refusal.
async fn refuse<T>(
    ws: &mut Ws,
    reason: ReasonCode,
    detail: String,
    auth_verdict: bool,
) -> Result<T, ConnectError> {
    tracing::warn!(%reason, %detail, "handshake refused");
    let frame = if auth_verdict {
        Frame::AuthResult(AuthResult {
            reason,
            text: truncate_utf8(&detail, crate::wire::MAX_TEXT_LEN).to_string(),
        })
    } else {
        Frame::GoAway(GoAway {
            reason,
            last_seq: 0,
            text: truncate_utf8(&detail, crate::wire::MAX_TEXT_LEN).to_string(),
        })
    };
    // Best effort: the peer may already be gone. The caller's deadline bounds these writes.
    if let Ok(bytes) = frame.encode() {
        let _ = ws.send(WsMessage::Binary(bytes)).await;
    }
    let _ = ws.close(Some(close_frame(reason, &detail))).await;
    linger(ws).await;
    Err(ConnectError::Refused {
        reason,
        by_peer: false,
        detail,
    })
}

/// How long a side that closed waits for the peer to read its last frames and close too.
///
/// Dropping a TCP socket with unread input makes the kernel (and turmoil) send a reset,
/// and a reset can destroy data the peer has not read yet: the refusal itself. So the
/// closing side reads (and discards) until the peer's close or end of stream, bounded by this.
pub const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Completes the WebSocket closing handshake after our close frame: reads until the peer
/// closes or [`LINGER`] passes.
pub async fn linger(ws: &mut Ws) {
    let _ = tokio::time::timeout(LINGER, async {
        while let Some(Ok(m)) = ws.next().await {
            if matches!(m, WsMessage::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// Ends a connection after our WebSocket close frame went out (PROTOCOL.md §1, §6.4):
/// completes the closing handshake (reads until the peer's close, or an error), then shuts the
/// socket down cleanly — TLS `close_notify`, then a TCP FIN. Bounded by [`LINGER`]. Returns the
/// stream for [`drain`].
pub async fn finish(mut ws: Ws) -> Ws {
    let _ = tokio::time::timeout(LINGER, async {
        while let Some(Ok(m)) = ws.next().await {
            if matches!(m, WsMessage::Close(_)) {
                break;
            }
        }
        let _ = tokio::io::AsyncWriteExt::shutdown(ws.get_mut()).await;
    })
    .await;
    ws
}

/// The lingering half of a clean close: reads and discards what the peer still sends until its
/// end of stream, bounded by [`LINGER`] and one fixed buffer. Closing a socket with unread input
/// makes the kernel send a reset, which can destroy our close frame before the peer reads it —
/// for example at a peer still writing a whole frame over the limit, which must read
/// `frame too large` (PROTOCOL.md §8), not a reset.
pub async fn drain(mut ws: Ws) {
    let _ = tokio::time::timeout(LINGER, async {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = tokio::io::AsyncReadExt::read(ws.get_mut(), &mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// A WebSocket close frame carrying `reason` (code `4000 + reason`, text at most 123 bytes).
pub fn close_frame(reason: ReasonCode, detail: &str) -> CloseFrame {
    let text = if detail.is_empty() {
        reason.name()
    } else {
        truncate_utf8(detail, 123)
    };
    CloseFrame {
        code: CloseCode::from(reason.close_code()),
        reason: text.to_string().into(),
    }
}
