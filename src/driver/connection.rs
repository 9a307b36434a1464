//! The connection task.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tracing::Instrument;

use crate::config::TransportConfig;
use crate::core::{CloseCause, Event, SendRefusal, Session, SessionParams};
use crate::error::SendError;
use crate::secure::Channel;
use crate::secure::handshake::{LINGER, close_frame};
use crate::secure::ws::Ws;
use crate::wire::{Frame, ReasonCode};

/// One application message: bytes and what they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// A MIME type such as `text/plain; charset=utf-8` or `image/png` (1–255 printable
    /// ASCII bytes).
    pub content_type: String,
    /// The payload.
    pub payload: Bytes,
}

impl Message {
    /// A message of `content_type` carrying `payload`.
    pub fn new(content_type: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            content_type: content_type.into(),
            payload: payload.into(),
        }
    }

    /// A UTF-8 text message (`text/plain; charset=utf-8`).
    pub fn text(text: impl Into<String>) -> Self {
        Self::new("text/plain; charset=utf-8", Bytes::from(text.into()))
    }
}

/// Where a connection stands. Watch it with `Connection::state`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Authenticated; messages flow.
    Connected,
    /// Ended, for this cause. Final.
    Closed(CloseCause),
}

/// What the application's handle sends to the driver.
#[derive(Debug)]
pub(crate) enum Command {
    Send {
        message: Message,
        done: oneshot::Sender<Result<(), SendError>>,
    },
    Close {
        reason: ReasonCode,
        detail: String,
    },
}

/// The application's ends of a running connection.
#[derive(Debug)]
pub(crate) struct Handles {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) incoming: mpsc::Receiver<Message>,
    pub(crate) state: watch::Receiver<ConnectionState>,
    pub(crate) task: JoinHandle<()>,
}

/// Messages delivered but not yet taken by the application. With one more held by the driver,
/// at most `(INCOMING + 1) × max_message_size` bytes wait; then the driver stops reading and
/// TCP pushes back on the peer.
const INCOMING: usize = 16;
/// Encoded frames waiting for the writer.
const OUTGOING: usize = 64;

/// Starts the driver and writer tasks of an authenticated channel.
pub(crate) fn spawn(
    channel: Channel,
    cfg: &TransportConfig,
    span: tracing::Span,
    permit: Option<OwnedSemaphorePermit>,
) -> Handles {
    let params = SessionParams {
        ack_every: cfg.ack_every,
        ack_delay: cfg.ack_delay,
        heartbeat_interval: cfg.heartbeat_interval,
        idle_timeout: cfg.heartbeat_timeout,
        replay_buffer_bytes: cfg.replay_buffer_bytes,
        peer_limits: channel.handshake.peer_limits,
    };
    let (commands, command_rx) = mpsc::channel(cfg.send_queue as usize);
    let (incoming_tx, incoming) = mpsc::channel(INCOMING);
    let (state_tx, state) = watch::channel(ConnectionState::Connected);
    let driver = Driver {
        session: Session::new(params, Duration::ZERO),
        start: Instant::now(),
        decode_limits: cfg.decode_limits(),
        write_timeout: cfg.write_timeout,
        send_queue: cfg.send_queue as usize,
        commands: command_rx,
        incoming: incoming_tx,
        state: state_tx,
        waiting_ack: BTreeMap::new(),
        blocked: VecDeque::new(),
        deliveries: VecDeque::new(),
    };
    let task = tokio::spawn(
        async move {
            driver.run(channel.ws).await;
            drop(permit);
        }
        .instrument(span),
    );
    Handles {
        commands,
        incoming,
        state,
        task,
    }
}

struct Driver {
    session: Session,
    start: Instant,
    decode_limits: crate::wire::DecodeLimits,
    write_timeout: Duration,
    send_queue: usize,
    commands: mpsc::Receiver<Command>,
    incoming: mpsc::Sender<Message>,
    state: watch::Sender<ConnectionState>,
    /// Sends handed to the session, by sequence number, waiting for the peer's ACK.
    waiting_ack: BTreeMap<u64, oneshot::Sender<Result<(), SendError>>>,
    /// Sends the session refused as Blocked (replay bound), in order.
    blocked: VecDeque<(Message, oneshot::Sender<Result<(), SendError>>)>,
    /// Messages received, waiting for room in `incoming`.
    deliveries: VecDeque<Message>,
}

/// One thing the driver's `select!` woke up for.
enum Input {
    WriterFailed(String),
    Deliver(Option<mpsc::OwnedPermit<Message>>),
    Command(Option<Command>),
    Ws(Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>),
    Timer,
}

enum WriterCmd {
    Frame(Bytes),
    Close(CloseFrame),
}

impl Driver {
    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.start)
    }

    async fn run(mut self, ws: Ws) {
        let (sink, mut stream) = ws.split();
        let (writer_tx, writer_rx) = mpsc::channel::<WriterCmd>(OUTGOING);
        let (failed_tx, mut failed_rx) = oneshot::channel::<String>();
        let writer = tokio::spawn(
            write_loop(sink, writer_rx, self.write_timeout, failed_tx).in_current_span(),
        );
        tracing::info!("connected");
        let cause = loop {
            // 1. Drain the session's outputs.
            let now = self.now();
            while let Some(frame) = self.session.poll_transmit(now) {
                match frame.encode() {
                    Ok(bytes) => {
                        if writer_tx.send(WriterCmd::Frame(bytes)).await.is_err() {
                            self.session.connection_lost("writer stopped".into());
                        }
                    }
                    Err(e) => self
                        .session
                        .close(ReasonCode::InternalError, format!("cannot encode: {e}")),
                }
            }
            let mut closed = None;
            while let Some(event) = self.session.poll_event() {
                match event {
                    Event::Message {
                        content_type,
                        payload,
                        ..
                    } => self.deliveries.push_back(Message {
                        content_type,
                        payload,
                    }),
                    Event::Acked { up_to } => self.acked(up_to),
                    Event::Rtt(rtt) => tracing::trace!(rtt_us = rtt.as_micros() as u64, "rtt"),
                    Event::Closed(cause) => closed = Some(cause),
                }
            }
            if let Some(cause) = closed {
                // Flush what the session queued last (the GOAWAY) before leaving.
                while let Some(frame) = self.session.poll_transmit(now) {
                    if let Ok(bytes) = frame.encode() {
                        let _ = writer_tx.send(WriterCmd::Frame(bytes)).await;
                    }
                }
                break cause;
            }
            // 2. Wait for input.
            let deadline = self.session.poll_timeout().map(|d| self.start + d);
            let can_read = self.deliveries.is_empty();
            let can_take = self.blocked.len() < self.send_queue;
            let input = tokio::select! {
                biased;
                reason = &mut failed_rx => {
                    Input::WriterFailed(reason.unwrap_or_else(|_| "writer stopped".into()))
                }
                permit = self.incoming.clone().reserve_owned(), if !self.deliveries.is_empty() => {
                    Input::Deliver(permit.ok())
                }
                cmd = self.commands.recv(), if can_take => Input::Command(cmd),
                msg = stream.next(), if can_read => Input::Ws(msg),
                () = async { if let Some(d) = deadline { sleep_until(d).await } }, if deadline.is_some() => {
                    Input::Timer
                }
            };
            self.input(input);
        };
        match &cause {
            CloseCause::Lost(d) => tracing::warn!(detail = %d, "connection lost"),
            c => tracing::info!(cause = %c, "connection closed"),
        }
        // Say goodbye with the reason, unless the connection is already gone.
        match &cause {
            CloseCause::Local(r, d) => {
                let _ = writer_tx.send(WriterCmd::Close(close_frame(*r, d))).await;
            }
            CloseCause::Peer(..) => {
                let _ = writer_tx
                    .send(WriterCmd::Close(close_frame(ReasonCode::Normal, "")))
                    .await;
            }
            CloseCause::Lost(_) => {}
        }
        drop(writer_tx);
        // Every send settles now, before any lingering below.
        self.settle_sends(&cause);
        let _ = timeout(self.write_timeout, writer).await;
        if let CloseCause::Local(..) = cause {
            // Let the peer read our GOAWAY and close frame before the socket goes (see
            // `handshake::LINGER`): read until its close, bounded.
            let _ = timeout(LINGER, async {
                while let Some(Ok(m)) = stream.next().await {
                    if matches!(m, WsMessage::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
        // Messages received before the end are still the application's.
        for m in self.deliveries.drain(..) {
            if self.incoming.send(m).await.is_err() {
                break;
            }
        }
    }

    fn input(&mut self, input: Input) {
        let now = self.now();
        match input {
            Input::WriterFailed(detail) => self.session.connection_lost(detail),
            Input::Deliver(Some(permit)) => {
                if let Some(m) = self.deliveries.pop_front() {
                    permit.send(m);
                }
            }
            // The application dropped its receiving end: the messages reached the transport's
            // user as far as it cares; keep acknowledging.
            Input::Deliver(None) => self.deliveries.clear(),
            Input::Command(cmd) => self.command(cmd),
            Input::Ws(msg) => match msg {
                Some(Ok(WsMessage::Binary(b))) => match Frame::decode(b, self.decode_limits) {
                    Ok(frame) => self.session.handle_frame(frame, now),
                    Err(e) if e.is_ignorable() => {}
                    Err(e) => self.session.close(e.reason(), e.to_string()),
                },
                Some(Ok(WsMessage::Close(frame))) => {
                    let (code, text) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    match ReasonCode::from_close_code(code) {
                        Some(r) => self.session.peer_closed(r, text),
                        None => self
                            .session
                            .connection_lost(format!("peer closed with code {code} {text}")),
                    }
                }
                Some(Ok(WsMessage::Text(_))) => self.session.close(
                    ReasonCode::ProtocolError,
                    "text message (ClipSync frames are binary)".into(),
                ),
                Some(Ok(_)) => {}
                Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(e))) => {
                    self.session.close(ReasonCode::FrameTooLarge, e.to_string());
                }
                Some(Err(e)) => self.session.connection_lost(format!("read failed: {e}")),
                None => self
                    .session
                    .connection_lost("peer ended the connection".into()),
            },
            Input::Timer => self.session.handle_timeout(now),
        }
    }

    fn command(&mut self, cmd: Option<Command>) {
        match cmd {
            Some(Command::Send { message, done }) => {
                if self.blocked.is_empty() {
                    self.try_send(message, done);
                } else {
                    self.blocked.push_back((message, done));
                }
            }
            Some(Command::Close { reason, detail }) => self.session.close(reason, detail),
            None => self.session.close(
                ReasonCode::Normal,
                "connection dropped by the application".into(),
            ),
        }
    }

    fn try_send(&mut self, message: Message, done: oneshot::Sender<Result<(), SendError>>) {
        let now = self.now();
        match self
            .session
            .send_message(message.content_type.clone(), message.payload.clone(), now)
        {
            Ok(seq) => {
                self.waiting_ack.insert(seq, done);
            }
            Err(SendRefusal::Blocked) => self.blocked.push_front((message, done)),
            Err(SendRefusal::TooLarge { size, max }) => {
                let _ = done.send(Err(SendError::TooLarge { size, max }));
            }
            Err(SendRefusal::Closed) => {
                let _ = done.send(Err(SendError::Closed(CloseCause::Local(
                    ReasonCode::Normal,
                    "closed".into(),
                ))));
            }
        }
    }

    fn acked(&mut self, up_to: u64) {
        tracing::debug!(up_to, "acked");
        let rest = self.waiting_ack.split_off(&(up_to + 1));
        for (_, done) in std::mem::replace(&mut self.waiting_ack, rest) {
            let _ = done.send(Ok(()));
        }
        // Room in the replay bound: hand blocked sends to the session, in order.
        while let Some((message, done)) = self.blocked.pop_front() {
            let before = self.blocked.len();
            self.try_send(message, done);
            if self.blocked.len() > before {
                break;
            }
        }
    }

    /// Every send settles: unacknowledged ones are of unknown fate, never-sent ones failed;
    /// then the state says closed.
    fn settle_sends(&mut self, cause: &CloseCause) {
        for (_, done) in std::mem::take(&mut self.waiting_ack) {
            let _ = done.send(Err(SendError::Unknown(cause.clone())));
        }
        for (_, done) in self.blocked.drain(..) {
            let _ = done.send(Err(SendError::Closed(cause.clone())));
        }
        self.commands.close();
        while let Ok(cmd) = self.commands.try_recv() {
            if let Command::Send { done, .. } = cmd {
                let _ = done.send(Err(SendError::Closed(cause.clone())));
            }
        }
        let _ = self.state.send(ConnectionState::Closed(cause.clone()));
    }
}

/// Writes queued frames, flushing when the queue runs dry; each write is bounded by
/// `write_timeout`, and a failure is reported once through `failed`.
async fn write_loop(
    mut sink: SplitSink<Ws, WsMessage>,
    mut rx: mpsc::Receiver<WriterCmd>,
    write_timeout: Duration,
    failed: oneshot::Sender<String>,
) {
    let result: Result<(), String> = async {
        while let Some(cmd) = rx.recv().await {
            let mut next = Some(cmd);
            while let Some(cmd) = next.take() {
                let msg = match cmd {
                    WriterCmd::Frame(b) => WsMessage::Binary(b),
                    WriterCmd::Close(f) => WsMessage::Close(Some(f)),
                };
                let closing = matches!(msg, WsMessage::Close(_));
                timeout(write_timeout, sink.feed(msg))
                    .await
                    .map_err(|_| format!("write blocked for {} ms", write_timeout.as_millis()))?
                    .map_err(|e| format!("write failed: {e}"))?;
                if closing {
                    break;
                }
                next = rx.try_recv().ok();
            }
            timeout(write_timeout, sink.flush())
                .await
                .map_err(|_| format!("write blocked for {} ms", write_timeout.as_millis()))?
                .map_err(|e| format!("write failed: {e}"))?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = failed.send(e);
    }
}
