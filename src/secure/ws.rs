//! The WebSocket upgrade over any byte stream (TLS or, when configured, plain), with the
//! `clipsync.v1` subprotocol required on both sides.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::budget::Budgeted;
use crate::config::TransportConfig;
use crate::error::ConnectError;
use crate::net::BoxStream;
use crate::wire::SUBPROTOCOL;

/// A WebSocket over a budgeted byte stream: what the handshake and the driver talk to.
pub type Ws = WebSocketStream<Budgeted<BoxStream>>;

/// WebSocket limits from the transport's: one ClipSync frame per message, so a message and a
/// WebSocket frame are both bounded by `max_frame_size` (PROTOCOL.md §8).
pub fn ws_config(cfg: &TransportConfig) -> WebSocketConfig {
    let max = cfg.max_frame_size as usize;
    WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        .read_buffer_size(READ_BUFFER)
}

/// tungstenite zero-fills `read_buffer_size` bytes before every socket read, while a read
/// from TLS returns at most a record or two; with its 128 KiB default, zeroing took 12% of a
/// stream's CPU here (perf, 512 MiB stream). 32 KiB keeps reads large and the zeroing small.
const READ_BUFFER: usize = 32 * 1024;

/// The dialer's upgrade: offers `clipsync.v1` and refuses a response that does not select it.
pub async fn upgrade_dialer(
    stream: Budgeted<BoxStream>,
    cfg: &TransportConfig,
) -> Result<Ws, ConnectError> {
    let mut request = "ws://clipsync.invalid/clipsync"
        .into_client_request()
        .map_err(|e| ConnectError::Upgrade(e.to_string()))?;
    request.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let (ws, response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config(cfg)))
            .await
            .map_err(|e| {
                match e {
        tokio_tungstenite::tungstenite::Error::Protocol(
            tokio_tungstenite::tungstenite::error::ProtocolError::SecWebSocketSubProtocolError(_),
        ) => ConnectError::NoSubprotocol,
        tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == StatusCode::BAD_REQUEST => {
            ConnectError::NoSubprotocol
        }
        other => ConnectError::Upgrade(other.to_string()),
    }
            })?;
    let selected = response
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok());
    if selected != Some(SUBPROTOCOL) {
        return Err(ConnectError::NoSubprotocol);
    }
    Ok(ws)
}

/// The listener's upgrade: requires `clipsync.v1` among the offered subprotocols; a request
/// without it gets HTTP 400 with a body saying why.
pub async fn upgrade_listener(
    stream: Budgeted<BoxStream>,
    cfg: &TransportConfig,
) -> Result<Ws, ConnectError> {
    let missing = Arc::new(AtomicBool::new(false));
    let flag = missing.clone();
    // The callback's signature is tungstenite's; its error type is what it is.
    #[allow(clippy::result_large_err)]
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let offered = req
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == SUBPROTOCOL);
        if !offered {
            flag.store(true, Ordering::Relaxed);
            let mut err = ErrorResponse::new(Some(format!(
                "clipsync: the subprotocol {SUBPROTOCOL} is required\n"
            )));
            *err.status_mut() = StatusCode::BAD_REQUEST;
            return Err(err);
        }
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
        Ok(resp)
    };
    let result =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config(cfg)))
            .await;
    match result {
        Ok(ws) => Ok(ws),
        Err(_) if missing.load(Ordering::Relaxed) => Err(ConnectError::NoSubprotocol),
        Err(e) => Err(ConnectError::Upgrade(e.to_string())),
    }
}
