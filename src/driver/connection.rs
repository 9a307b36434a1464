//! The connection task.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tracing::Instrument;

use super::stream::{
    InItem, IncomingStream, OutCmd, Progress, StreamError, StreamSender, StreamSignal,
};
use crate::config::TransportConfig;
use crate::core::Backoff;
use crate::core::{CloseCause, Event, SendRefusal, Session, SessionParams};
use crate::error::SendError;
use crate::secure::Channel;
use crate::secure::handshake::{self, LINGER, ResumeAnswer, close_frame};
use crate::secure::ws::Ws;
use crate::wire::SessionId;
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
    /// Not connected yet (a connection from `Transport::open`): dialling the peer, with
    /// backoff between attempts. Sends queue meanwhile.
    Connecting,
    /// Authenticated; messages flow.
    Connected,
    /// Still up, but a heartbeat went unanswered for an interval or the round-trip time is
    /// above `degraded_rtt`: expect delays; the idle timeout may follow.
    Degraded,
    /// The connection broke; the session waits for a new one (the dialer redials with
    /// backoff, the listener waits for it). Sends queue meanwhile.
    Reconnecting,
    /// The dialer gave up after `max_reconnect_attempts` (for a connection from
    /// `Transport::open`, also before the first connection); the session ends.
    Offline,
    /// Ended, for this cause. Final.
    Closed(CloseCause),
}

/// What [`crate::transport::Connection::receive`] returns: the peer's messages and streams,
/// in the order the peer sent them.
#[derive(Debug)]
#[non_exhaustive]
pub enum Incoming {
    /// A whole message.
    Message(Message),
    /// A stream; read it (or drop it to cancel).
    Stream(IncomingStream),
}

/// A connection's measured health. Watch it with `Connection::health`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Smoothed round-trip time of `PING`/`PONG`, once measured.
    pub rtt: Option<Duration>,
    /// Whether the connection is degraded (see [`ConnectionState::Degraded`]).
    pub degraded: bool,
    /// New connections the session has taken after its first one (resumed or not).
    pub reconnects: u32,
    /// Payload bytes sent again because of resumes: replayed messages and stream data beyond
    /// the receiver's offset. Compare with the windows: a resume retransmits at most what was
    /// in flight.
    pub retransmitted_bytes: u64,
}

/// What the application's handle sends to the driver.
#[derive(Debug)]
pub(crate) enum Command {
    Send {
        message: Message,
        done: oneshot::Sender<Result<(), SendError>>,
    },
    OpenStream {
        content_type: String,
        total_len: Option<u64>,
        reply: oneshot::Sender<Result<StreamSender, SendError>>,
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
    pub(crate) incoming: mpsc::Receiver<Incoming>,
    pub(crate) state: watch::Receiver<ConnectionState>,
    pub(crate) health: watch::Receiver<Health>,
    pub(crate) task: Option<JoinHandle<()>>,
    /// While connecting: ends the attempts at once (a `Close` command could wait behind a
    /// full queue). Dropped with the handles, which ends them too.
    pub(crate) closer: Option<oneshot::Sender<(ReasonCode, String)>>,
}

/// Messages and streams delivered but not yet taken by the application.
const INCOMING: usize = 16;
/// Delivered items the driver holds beyond that before it stops reading the socket (and TCP
/// pushes back on the peer): with `INCOMING`, at most `(INCOMING + HELD) × max_message_size`
/// bytes of messages wait for the application. Streams are not held back this way: their
/// windows bound them, and stopping the socket would stall a stream the application is
/// reading while it does not call `receive`.
const HELD: usize = 16;
/// Encoded frames waiting for the writer.
const OUTGOING: usize = 64;
/// Stream chunks queued for the writer at once (memory, and a steady supply for the socket).
/// Messages do not wait behind them: they take the writer's urgent lane, so a message waits
/// behind at most the chunk being written and what the socket holds (`TCP_NOTSENT_LOWAT`).
const CHUNK_SLOTS: usize = 4;
/// Data items a [`StreamSender`] may queue ahead of the driver (each at most one chunk).
const STREAM_QUEUE: usize = 2;

/// The driver's ends of the channels to the application.
struct Ends {
    commands: mpsc::Receiver<Command>,
    incoming: mpsc::Sender<Incoming>,
    state: watch::Sender<ConnectionState>,
    health: watch::Sender<Health>,
}

/// The channels between the application's handle and the driver, the state starting at
/// `initial`.
fn channels(cfg: &TransportConfig, initial: ConnectionState) -> (Ends, Handles) {
    let (commands, command_rx) = mpsc::channel(cfg.send_queue as usize);
    let (incoming_tx, incoming) = mpsc::channel(INCOMING);
    let (state_tx, state) = watch::channel(initial);
    let (health_tx, health) = watch::channel(Health::default());
    let ends = Ends {
        commands: command_rx,
        incoming: incoming_tx,
        state: state_tx,
        health: health_tx,
    };
    let handles = Handles {
        commands,
        incoming,
        state,
        health,
        task: None,
        closer: None,
    };
    (ends, handles)
}

/// Starts the driver and writer tasks of an authenticated channel.
pub(crate) fn spawn(
    channel: Channel,
    cfg: &TransportConfig,
    span: tracing::Span,
    permit: Option<OwnedSemaphorePermit>,
    reconnect: Reconnect,
) -> Handles {
    let (ends, mut handles) = channels(cfg, ConnectionState::Connected);
    let driver = Driver::new(&channel, cfg, ends, reconnect);
    handles.task = Some(tokio::spawn(
        async move {
            driver.run(channel.ws).await;
            drop(permit);
        }
        .instrument(span),
    ));
    handles
}

/// How a connection made by `Transport::open` gets going.
pub(crate) struct Pending {
    /// Dials the peer (a [`Reconnect::Dial`]); used for the first connection whatever the
    /// configuration says of reconnecting.
    pub(crate) dial: Reconnect,
    /// Whether the session reconnects after its first connection (`reconnect` in the
    /// configuration).
    pub(crate) reconnect: bool,
    /// Registers the first connection for the simultaneous-dial tie-break; false when the
    /// peer's own connection wins it.
    pub(crate) register: Box<dyn FnOnce(mpsc::WeakSender<Command>) -> bool + Send>,
}

/// Starts a connection that is not connected yet: its state is
/// [`ConnectionState::Connecting`] while the driver dials the peer with backoff; commands
/// queue meanwhile (up to `send_queue` taken by the driver, as many again in the channel).
pub(crate) fn spawn_pending(
    cfg: &TransportConfig,
    span: tracing::Span,
    pending: Pending,
) -> Handles {
    let (mut ends, mut handles) = channels(cfg, ConnectionState::Connecting);
    let (closer, closer_rx) = oneshot::channel();
    handles.closer = Some(closer);
    let weak = handles.commands.downgrade();
    let cfg = cfg.clone();
    handles.task = Some(tokio::spawn(
        async move {
            let mut early = VecDeque::new();
            let mut dial = pending.dial;
            let first = first_connection(
                &mut ends,
                &mut early,
                closer_rx,
                &mut dial,
                cfg.send_queue as usize,
            )
            .await;
            match first {
                Ok(channel) => {
                    let reconnect = if pending.reconnect {
                        dial
                    } else {
                        Reconnect::Never
                    };
                    let mut driver = Driver::new(&channel, &cfg, ends, reconnect);
                    if !(pending.register)(weak) {
                        tracing::info!(
                            "simultaneous dial: the peer's connection wins the tie-break"
                        );
                        driver.command(Some(Command::Close {
                            reason: ReasonCode::DuplicateConnection,
                            detail: "the peer dialled us too and its connection wins the tie-break"
                                .into(),
                        }));
                    }
                    for cmd in early {
                        driver.command(Some(cmd));
                    }
                    driver.run(channel.ws).await;
                }
                Err(cause) => {
                    tracing::warn!(cause = %cause, "connection ended before it was made");
                    for cmd in early {
                        settle_unsent(cmd, &cause);
                    }
                    ends.commands.close();
                    while let Ok(cmd) = ends.commands.try_recv() {
                        settle_unsent(cmd, &cause);
                    }
                    let _ = ends.state.send(ConnectionState::Closed(cause));
                }
            }
        }
        .instrument(span),
    ));
    handles
}

/// Fails a command that never reached a session: nothing of it was sent.
fn settle_unsent(cmd: Command, cause: &CloseCause) {
    match cmd {
        Command::Send { done, .. } => {
            let _ = done.send(Err(SendError::Closed(cause.clone())));
        }
        Command::OpenStream { reply, .. } => {
            let _ = reply.send(Err(SendError::Closed(cause.clone())));
        }
        Command::Close { .. } => {}
    }
}

/// Dials until a first connection stands, with backoff between attempts (the first one at
/// once), taking the application's commands into `early` meanwhile. Ends early when the
/// application closes or drops the connection, the peer refuses our key, or
/// `max_reconnect_attempts` attempts failed (state [`ConnectionState::Offline`]).
async fn first_connection(
    ends: &mut Ends,
    early: &mut VecDeque<Command>,
    mut closer: oneshot::Receiver<(ReasonCode, String)>,
    dial: &mut Reconnect,
    cap: usize,
) -> Result<Channel, CloseCause> {
    let Reconnect::Dial {
        redial,
        backoff,
        draw,
        max_attempts,
    } = dial
    else {
        return Err(CloseCause::Lost("nothing to dial".into()));
    };
    let start = Instant::now();
    let dropped = || {
        CloseCause::Local(
            ReasonCode::Normal,
            "connection dropped by the application".into(),
        )
    };
    let mut delay = Duration::ZERO;
    let mut failures = 0u32;
    loop {
        let attempt = redial(SessionId::NONE, 0);
        let attempt = async move {
            sleep(delay).await;
            attempt.await
        };
        tokio::pin!(attempt);
        let result = loop {
            tokio::select! {
                biased;
                c = &mut closer => return Err(match c {
                    Ok((reason, detail)) => CloseCause::Local(reason, detail),
                    Err(_) => dropped(),
                }),
                cmd = ends.commands.recv(), if early.len() < cap => match cmd {
                    None => return Err(dropped()),
                    Some(Command::Close { reason, detail }) => return Err(CloseCause::Local(reason, detail)),
                    Some(cmd) => early.push_back(cmd),
                },
                r = &mut attempt => break r,
            }
        };
        match result {
            Ok(channel) => {
                backoff.connected(Instant::now().saturating_duration_since(start));
                return Ok(channel);
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, attempt = failures, "connect failed");
                if let crate::error::ConnectError::Refused { reason, detail, .. } = e {
                    if matches!(
                        reason,
                        ReasonCode::AuthFailed | ReasonCode::KeyNotAuthorized
                    ) {
                        return Err(CloseCause::Peer(reason, detail));
                    }
                }
                if *max_attempts > 0 && failures >= *max_attempts {
                    tracing::warn!(attempts = failures, "offline: giving up");
                    let _ = ends.state.send(ConnectionState::Offline);
                    return Err(CloseCause::Lost(format!(
                        "gave up after {failures} connection attempts"
                    )));
                }
                delay = backoff.next_delay(draw());
                tracing::info!(delay_ms = delay.as_millis() as u64, "connecting again");
            }
        }
    }
}

struct Driver {
    session: Session,
    start: Instant,
    decode_limits: crate::wire::DecodeLimits,
    write_timeout: Duration,
    send_queue: usize,
    commands: mpsc::Receiver<Command>,
    incoming: mpsc::Sender<Incoming>,
    state: watch::Sender<ConnectionState>,
    health: watch::Sender<Health>,
    /// Sends handed to the session, by sequence number, waiting for the peer's ACK.
    waiting_ack: BTreeMap<u64, oneshot::Sender<Result<(), SendError>>>,
    /// Sends the session refused as Blocked (replay bound), in order.
    blocked: VecDeque<(Message, oneshot::Sender<Result<(), SendError>>)>,
    /// Messages and streams received, waiting for room in `incoming`.
    deliveries: VecDeque<Incoming>,
    /// Consumption and release reports from incoming stream handles.
    signals: mpsc::UnboundedReceiver<StreamSignal>,
    signals_tx: mpsc::UnboundedSender<StreamSignal>,
    /// Outgoing streams, by id.
    out: BTreeMap<u64, OutHandle>,
    /// Stream opens waiting for the peer's `max_streams` to allow them.
    pending_opens: VecDeque<PendingOpen>,
    /// The outgoing stream served last (round robin).
    last_served: u64,
    chunk_slots: Arc<Semaphore>,
    /// A writer slot for the next chunk, once acquired.
    chunk_permit: Option<OwnedSemaphorePermit>,
    /// Incoming streams, by id.
    incoming_streams: BTreeMap<u64, InHandle>,
    /// Bytes per chunk.
    chunk: usize,
    /// Where frames are encoded; its allocation comes back when the writer is done with a
    /// frame (see `Frame::encode_into`).
    encode_buf: bytes::BytesMut,
    /// The session in force.
    session_id: SessionId,
    /// How to get the next connection.
    reconnect: Reconnect,
}

/// How a connection's session gets its next connection after a network failure.
pub(crate) enum Reconnect {
    /// It does not: the session ends with the connection.
    Never,
    /// Dialer: dial again (all the peer's addresses), with backoff.
    Dial {
        redial: Redial,
        backoff: Backoff,
        /// Uniform draws in `[0, 1)` from the transport's seeded RNG.
        draw: Box<dyn FnMut() -> f64 + Send>,
        /// Give up (offline) after this many failed attempts; 0 never.
        max_attempts: u32,
    },
    /// Listener: wait for the dialer to come back with this session.
    Await {
        resumptions: mpsc::Receiver<Channel>,
        window: Duration,
    },
}

/// Dials the peer again, asking to resume `(session, last received)`.
pub(crate) type Redial = Box<
    dyn FnMut(
            SessionId,
            u64,
        ) -> futures_util::future::BoxFuture<
            'static,
            Result<Channel, crate::error::ConnectError>,
        > + Send,
>;

impl std::fmt::Debug for Reconnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Never => "Never",
            Self::Dial { .. } => "Dial",
            Self::Await { .. } => "Await",
        })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A stream open waiting for a slot: content type, length, where to answer.
type PendingOpen = (
    String,
    Option<u64>,
    oneshot::Sender<Result<StreamSender, SendError>>,
);

/// The driver's side of an outgoing stream.
struct OutHandle {
    rx: mpsc::Receiver<OutCmd>,
    /// Data taken from the queue, waiting for credit.
    pending: Option<Bytes>,
    /// `Finish` or `Abort`, waiting for `pending` to go.
    closing: Option<OutCmd>,
    progress: watch::Sender<Progress>,
    done: Option<oneshot::Sender<Result<(), SendError>>>,
    opened: Duration,
}

/// The driver's side of an incoming stream.
struct InHandle {
    tx: mpsc::UnboundedSender<InItem>,
    progress: watch::Sender<Progress>,
    opened: Duration,
}

/// Work an outgoing stream has for the session.
enum StreamWork {
    Chunk(Bytes),
    Finish,
    Abort(ReasonCode, String),
}

fn rate(bytes: u64, since: Duration, now: Duration) -> f64 {
    let secs = now.saturating_sub(since).as_secs_f64();
    if secs > 0.0 { bytes as f64 / secs } else { 0.0 }
}

/// Finds the next outgoing stream with work, round robin after `after`: a chunk it has credit
/// for, or its finish/abort once its data has gone.
fn poll_streams(
    out: &mut BTreeMap<u64, OutHandle>,
    session: &Session,
    after: u64,
    cx: &mut Context<'_>,
) -> Poll<(u64, StreamWork)> {
    for pass in 0..2 {
        let range = if pass == 0 {
            out.range_mut(after + 1..)
        } else {
            out.range_mut(..=after)
        };
        if let Some(work) = range
            .map(|(&id, h)| (id, stream_work(id, h, session, cx)))
            .find_map(|(id, w)| w.map(|w| (id, w)))
        {
            return Poll::Ready(work);
        }
    }
    Poll::Pending
}

/// What stream `id` can do now, if anything.
fn stream_work(
    id: u64,
    h: &mut OutHandle,
    session: &Session,
    cx: &mut Context<'_>,
) -> Option<StreamWork> {
    {
        if h.pending.is_none() && h.closing.is_none() {
            match h.rx.poll_recv(cx) {
                Poll::Ready(Some(OutCmd::Data(b))) => h.pending = Some(b),
                Poll::Ready(Some(c)) => h.closing = Some(c),
                Poll::Ready(None) => {
                    h.closing = Some(OutCmd::Abort(
                        ReasonCode::Cancelled,
                        "the sender dropped the stream".into(),
                    ));
                }
                Poll::Pending => {}
            }
        }
        if let Some(OutCmd::Abort(..)) = h.closing {
            h.pending = None;
        }
        if let Some(p) = h.pending.as_mut() {
            let cap = session.stream_capacity(id) as usize;
            if cap > 0 {
                let chunk = if p.len() <= cap {
                    h.pending.take().unwrap_or_default()
                } else {
                    p.split_to(cap)
                };
                return Some(StreamWork::Chunk(chunk));
            }
        } else if let Some(c) = h.closing.take() {
            return Some(match c {
                OutCmd::Abort(r, t) => StreamWork::Abort(r, t),
                _ => StreamWork::Finish,
            });
        }
    }
    None
}

/// One thing the driver's `select!` woke up for.
enum Input {
    WriterFailed(String),
    Deliver(Option<mpsc::OwnedPermit<Incoming>>),
    Command(Option<Command>),
    Signal(Option<StreamSignal>),
    Ws(Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>),
    ChunkSlot(OwnedSemaphorePermit),
    Stream(u64, StreamWork),
    Timer,
}

enum WriterCmd {
    /// A frame, with the chunk slot it holds (for stream chunks).
    Frame(Bytes, Option<OwnedSemaphorePermit>),
    Close(CloseFrame),
}

impl Driver {
    fn new(channel: &Channel, cfg: &TransportConfig, ends: Ends, reconnect: Reconnect) -> Self {
        let params = SessionParams {
            ack_every: cfg.ack_every,
            ack_delay: cfg.ack_delay,
            heartbeat_interval: cfg.heartbeat_interval,
            idle_timeout: cfg.heartbeat_timeout,
            degraded_rtt: cfg.degraded_rtt,
            replay_buffer_bytes: cfg.replay_buffer_bytes,
            peer_limits: channel.handshake.peer_limits,
            streams: channel.handshake.peer_capabilities & crate::wire::CAP_STREAMS != 0,
            chunk_size: cfg.chunk_size,
            stream_window: cfg.stream_window,
            connection_window: cfg.connection_window,
            max_streams: cfg.max_streams,
        };
        let (signals_tx, signals) = mpsc::unbounded_channel();
        let chunk = cfg
            .chunk_size
            .min(
                channel
                    .handshake
                    .peer_limits
                    .max_frame_size
                    .saturating_sub(crate::config::CHUNK_OVERHEAD),
            )
            .max(1) as usize;
        Driver {
            session: Session::new(params, Duration::ZERO),
            start: Instant::now(),
            decode_limits: cfg.decode_limits(),
            write_timeout: cfg.write_timeout,
            send_queue: cfg.send_queue as usize,
            commands: ends.commands,
            incoming: ends.incoming,
            state: ends.state,
            health: ends.health,
            waiting_ack: BTreeMap::new(),
            blocked: VecDeque::new(),
            deliveries: VecDeque::new(),
            signals,
            signals_tx,
            out: BTreeMap::new(),
            pending_opens: VecDeque::new(),
            last_served: 0,
            chunk_slots: Arc::new(Semaphore::new(CHUNK_SLOTS)),
            chunk_permit: None,
            incoming_streams: BTreeMap::new(),
            chunk,
            encode_buf: bytes::BytesMut::new(),
            session_id: channel.handshake.session,
            reconnect,
        }
    }

    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.start)
    }

    /// The connection task: connections come and go (when the session can resume on a new
    /// one), the session and the application's handles stay.
    async fn run(mut self, ws: Ws) {
        let mut ws = ws;
        let cause = loop {
            let cause = self.run_connection(ws).await;
            if !self.may_resume(&cause) || !self.session.suspend() {
                break cause;
            }
            tracing::warn!(cause = %cause, "connection lost; the session waits to resume");
            let _ = self.state.send(ConnectionState::Reconnecting);
            match self.next_connection().await {
                Ok(next) => ws = next,
                Err(end) => break end,
            }
        };
        self.settle_sends(&cause);
        // Messages received before the end are still the application's.
        for m in self.deliveries.drain(..) {
            if self.incoming.send(m).await.is_err() {
                break;
            }
        }
    }

    /// Whether the session should wait for another connection after `cause`: the network
    /// broke it (not either application), and this side can get a new one.
    fn may_resume(&self, cause: &CloseCause) -> bool {
        let by_network = match cause {
            CloseCause::Lost(_) => true,
            CloseCause::Local(r, _) | CloseCause::Peer(r, _) => *r == ReasonCode::IdleTimeout,
        };
        by_network && !matches!(self.reconnect, Reconnect::Never)
    }

    /// Gets the session's next connection: the dialer dials again with backoff, the listener
    /// waits for the dialer to come back (up to the resume window). Sends keep queueing
    /// meanwhile. Returns the ended session's cause when there will be none.
    async fn next_connection(&mut self) -> Result<Ws, CloseCause> {
        let mut reconnect = std::mem::replace(&mut self.reconnect, Reconnect::Never);
        if let Reconnect::Dial { backoff, .. } = &mut reconnect {
            // A connection that had stayed up long enough resets the backoff.
            backoff.disconnected(self.now());
        }
        let result = match &mut reconnect {
            Reconnect::Never => Err(CloseCause::Lost("no reconnection".into())),
            Reconnect::Dial {
                redial,
                backoff,
                draw,
                max_attempts,
            } => loop {
                let delay = backoff.next_delay(draw());
                tracing::info!(
                    delay_ms = delay.as_millis() as u64,
                    attempt = backoff.attempts(),
                    "reconnecting"
                );
                if let Some(end) = self.wait_handling_commands(sleep(delay)).await {
                    break Err(end);
                }
                let received = self.session.received();
                let dial = redial(self.session_id, received);
                let attempt = tokio::select! {
                    biased;
                    r = dial => Some(r),
                    end = self.commands_until_close() => { break Err(end); }
                };
                match attempt {
                    Some(Ok(channel)) => match self.adopt(channel).await {
                        Ok(ws) => {
                            backoff.connected(self.now());
                            break Ok(ws);
                        }
                        Err(end) => break Err(end),
                    },
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "reconnect failed");
                        if let crate::error::ConnectError::Refused { reason, detail, .. } = e {
                            // The peer no longer accepts us: trying again will not help.
                            if matches!(
                                reason,
                                ReasonCode::AuthFailed | ReasonCode::KeyNotAuthorized
                            ) {
                                break Err(CloseCause::Peer(reason, detail));
                            }
                        }
                        if *max_attempts > 0 && backoff.attempts() >= *max_attempts {
                            tracing::warn!(attempts = backoff.attempts(), "offline: giving up");
                            let _ = self.state.send(ConnectionState::Offline);
                            break Err(CloseCause::Lost(format!(
                                "gave up after {} reconnection attempts",
                                backoff.attempts()
                            )));
                        }
                    }
                    None => {}
                }
            },
            Reconnect::Await {
                resumptions,
                window,
            } => {
                let window = *window;
                let next = tokio::select! {
                    biased;
                    ch = resumptions.recv() => ch,
                    () = sleep(window) => None,
                    end = self.commands_until_close() => { self.reconnect = reconnect; return Err(end); }
                };
                match next {
                    Some(channel) => self.adopt(channel).await,
                    None => Err(CloseCause::Local(
                        ReasonCode::SessionExpired,
                        format!(
                            "the peer did not come back within {} ms",
                            window.as_millis()
                        ),
                    )),
                }
            }
        };
        self.reconnect = reconnect;
        result
    }

    /// Processes application commands while `fut` runs; returns the session's end if the
    /// application closes it meanwhile.
    async fn wait_handling_commands(
        &mut self,
        fut: impl Future<Output = ()>,
    ) -> Option<CloseCause> {
        tokio::pin!(fut);
        tokio::select! {
            biased;
            () = &mut fut => None,
            end = self.commands_until_close() => Some(end),
        }
    }

    /// Handles commands (sends queue into the suspended session) until the application
    /// closes or drops the connection.
    async fn commands_until_close(&mut self) -> CloseCause {
        loop {
            let cmd = self.commands.recv().await;
            let closing = matches!(cmd, None | Some(Command::Close { .. }));
            if closing {
                let (reason, detail) = match cmd {
                    Some(Command::Close { reason, detail }) => (reason, detail),
                    _ => (
                        ReasonCode::Normal,
                        "connection dropped by the application".into(),
                    ),
                };
                return CloseCause::Local(reason, detail);
            }
            self.command(cmd);
        }
    }

    /// Takes a new connection for the suspended session: resumes it where the peer says it
    /// is, or starts over if the peer lost it (the sends it had not acknowledged are of
    /// unknown fate).
    async fn adopt(&mut self, mut channel: Channel) -> Result<Ws, CloseCause> {
        let now = self.now();
        self.health.send_modify(|h| h.reconnects += 1);
        let peer_received = match channel.handshake.resume {
            ResumeAnswer::Resumed { peer_received } => Some(peer_received),
            ResumeAnswer::Lost => None,
            ResumeAnswer::Asked(r) => {
                // Listener: the dialer is back for this session; say where we are.
                let answer = Frame::Resumed(crate::wire::Resumed {
                    session: self.session_id,
                    last_received: self.session.received(),
                });
                if let Err(e) = handshake::answer_resume(&mut channel.ws, answer).await {
                    return Err(CloseCause::Lost(e.to_string()));
                }
                Some(r.last_received)
            }
        };
        let limits = channel.handshake.peer_limits;
        match peer_received.map(|p| self.session.resume(p, limits, now)) {
            Some(Ok(())) => {
                tracing::info!(
                    session = %hex(&self.session_id.0),
                    replayed_frames = self.session.unacked_frames(),
                    replayed_bytes = self.session.unacked_bytes(),
                    stream_bytes_retained = self.session.stream_retained_bytes(),
                    "session resumed"
                );
            }
            other => {
                if let Some(Err(e)) = other {
                    tracing::warn!(error = %e, "cannot resume");
                }
                let unknown = self.session.session_lost(now);
                self.session_id = channel.handshake.session;
                tracing::warn!(unknown = unknown.len(), "session lost; a new one starts");
                let cause = CloseCause::Peer(
                    ReasonCode::SessionUnknown,
                    "the peer lost the session".into(),
                );
                for seq in unknown {
                    if let Some(done) = self.waiting_ack.remove(&seq) {
                        let _ = done.send(Err(SendError::Unknown(cause.clone())));
                    }
                }
            }
        }
        Ok(channel.ws)
    }

    /// Runs one connection until it ends; returns why. Sends are settled here only when the
    /// session cannot continue on another connection.
    async fn run_connection(&mut self, ws: Ws) -> CloseCause {
        let (sink, mut stream) = ws.split();
        let (writer_tx, writer_rx) = mpsc::channel::<WriterCmd>(OUTGOING);
        let (urgent_tx, urgent_rx) = mpsc::channel::<WriterCmd>(OUTGOING);
        let (failed_tx, mut failed_rx) = oneshot::channel::<String>();
        let writer = tokio::spawn(
            write_loop(sink, urgent_rx, writer_rx, self.write_timeout, failed_tx).in_current_span(),
        );
        tracing::info!(session = %hex(&self.session_id.0), "connected");
        let _ = self.state.send(ConnectionState::Connected);
        let cause = loop {
            // 1. Drain the session's outputs.
            let now = self.now();
            let retransmitted = self.session.retransmitted_bytes();
            self.health.send_if_modified(|h| {
                let changed = h.retransmitted_bytes != retransmitted;
                h.retransmitted_bytes = retransmitted;
                changed
            });
            while let Some(frame) = self.session.poll_transmit(now) {
                let permit = if matches!(frame, Frame::StreamChunk(_)) {
                    self.chunk_permit.take()
                } else {
                    None
                };
                // Stream data and what must follow it (END, ABORT, GOAWAY) take the bulk lane;
                // messages and control frames the urgent one, which the writer drains first.
                let lane = if matches!(
                    frame,
                    Frame::StreamChunk(_)
                        | Frame::StreamEnd(_)
                        | Frame::StreamAbort(_)
                        | Frame::GoAway(_)
                ) {
                    &writer_tx
                } else {
                    &urgent_tx
                };
                match frame.encode_into(&mut self.encode_buf) {
                    Ok(bytes) => {
                        if lane.send(WriterCmd::Frame(bytes, permit)).await.is_err() {
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
                    } => self.deliveries.push_back(Incoming::Message(Message {
                        content_type,
                        payload,
                    })),
                    Event::Acked { up_to } => self.acked(up_to),
                    Event::Rtt(rtt) => {
                        tracing::trace!(rtt_us = rtt.as_micros() as u64, "rtt");
                        let srtt = self.session.rtt();
                        self.health.send_if_modified(|h| {
                            let changed = h.rtt != srtt;
                            h.rtt = srtt;
                            changed
                        });
                    }
                    Event::Health { degraded, rtt, why } => {
                        if degraded {
                            tracing::warn!(%why, "connection degraded");
                        } else {
                            tracing::info!(%why, "connection healthy again");
                        }
                        self.health.send_modify(|h| {
                            h.rtt = rtt;
                            h.degraded = degraded;
                        });
                        let _ = self.state.send(if degraded {
                            ConnectionState::Degraded
                        } else {
                            ConnectionState::Connected
                        });
                    }
                    Event::Closed(cause) => closed = Some(cause),
                    other => self.stream_event(other, now),
                }
            }
            if let Some(cause) = closed {
                // Flush what the session queued last (the GOAWAY) before leaving.
                while let Some(frame) = self.session.poll_transmit(now) {
                    if let Ok(bytes) = frame.encode() {
                        let _ = writer_tx.send(WriterCmd::Frame(bytes, None)).await;
                    }
                }
                break cause;
            }
            // 2. Wait for input.
            let deadline = self.session.poll_timeout().map(|d| self.start + d);
            let can_read = self.deliveries.len() < HELD;
            let can_take = self.blocked.len() < self.send_queue;
            let want_slot = self.chunk_permit.is_none() && !self.out.is_empty();
            let can_pump = self.chunk_permit.is_some();
            let slots = self.chunk_slots.clone();
            let after = self.last_served;
            let input = tokio::select! {
                biased;
                reason = &mut failed_rx => {
                    Input::WriterFailed(reason.unwrap_or_else(|_| "writer stopped".into()))
                }
                () = async { if let Some(d) = deadline { sleep_until(d).await } }, if deadline.is_some() => {
                    Input::Timer
                }
                cmd = self.commands.recv(), if can_take => Input::Command(cmd),
                signal = self.signals.recv() => Input::Signal(signal),
                permit = self.incoming.clone().reserve_owned(), if !self.deliveries.is_empty() => {
                    Input::Deliver(permit.ok())
                }
                (id, work) = std::future::poll_fn(|cx| poll_streams(&mut self.out, &self.session, after, cx)), if can_pump => {
                    Input::Stream(id, work)
                }
                msg = stream.next(), if can_read => Input::Ws(msg),
                permit = slots.acquire_owned(), if want_slot => match permit {
                    Ok(p) => Input::ChunkSlot(p),
                    Err(_) => Input::WriterFailed("chunk slots closed".into()),
                },
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
        drop(urgent_tx);
        // Every send settles now, before any lingering below, unless the session goes on.
        if !self.may_resume(&cause) {
            self.settle_sends(&cause);
        }
        let _ = timeout(self.write_timeout, writer).await;
        if matches!(cause, CloseCause::Local(..)) && !self.may_resume(&cause) {
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
        cause
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
            Input::Signal(Some(StreamSignal::Consumed { id, n })) => {
                self.session.stream_consumed(id, n);
            }
            Input::Signal(Some(StreamSignal::Released { id })) => {
                self.incoming_streams.remove(&id);
                self.session.stream_release(id);
            }
            // The driver holds a sender itself, so the channel never closes.
            Input::Signal(None) => {}
            Input::ChunkSlot(permit) => self.chunk_permit = Some(permit),
            Input::Stream(id, work) => {
                self.last_served = id;
                match work {
                    StreamWork::Chunk(data) => {
                        let n = data.len() as u64;
                        if self.session.stream_write(id, data).is_ok() {
                            if let Some(h) = self.out.get(&id) {
                                h.progress.send_modify(|p| p.sent += n);
                            }
                        }
                    }
                    StreamWork::Finish => {
                        let _ = self.session.stream_finish(id);
                    }
                    StreamWork::Abort(reason, text) => {
                        let _ = self.session.stream_abort(id, reason, text);
                    }
                }
            }
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
            Some(Command::OpenStream {
                content_type,
                total_len,
                reply,
            }) => {
                if self.pending_opens.is_empty() {
                    self.try_open(content_type, total_len, reply);
                } else {
                    self.pending_opens
                        .push_back((content_type, total_len, reply));
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
            Err(SendRefusal::StreamsUnsupported) => {
                let _ = done.send(Err(SendError::StreamsUnsupported));
            }
        }
    }

    fn try_open(
        &mut self,
        content_type: String,
        total_len: Option<u64>,
        reply: oneshot::Sender<Result<StreamSender, SendError>>,
    ) {
        match self
            .session
            .open_stream(content_type.clone(), total_len, None)
        {
            Ok(id) => {
                let (data, rx) = mpsc::channel(STREAM_QUEUE);
                let (progress_tx, progress) = watch::channel(Progress {
                    total: total_len,
                    ..Progress::default()
                });
                let (done_tx, done) = oneshot::channel();
                self.out.insert(
                    id,
                    OutHandle {
                        rx,
                        pending: None,
                        closing: None,
                        progress: progress_tx,
                        done: Some(done_tx),
                        opened: self.now(),
                    },
                );
                tracing::debug!(id, %content_type, ?total_len, "stream opened");
                let _ = reply.send(Ok(StreamSender {
                    id,
                    data,
                    progress,
                    done,
                    chunk: self.chunk,
                    state: self.state.subscribe(),
                    settled: None,
                }));
            }
            Err(SendRefusal::Blocked) => {
                self.pending_opens
                    .push_front((content_type, total_len, reply))
            }
            Err(SendRefusal::StreamsUnsupported) => {
                let _ = reply.send(Err(SendError::StreamsUnsupported));
            }
            Err(_) => {
                let _ = reply.send(Err(SendError::Closed(CloseCause::Local(
                    ReasonCode::Normal,
                    "closed".into(),
                ))));
            }
        }
    }

    /// Acts on a stream event from the session.
    fn stream_event(&mut self, event: Event, now: Duration) {
        match event {
            Event::StreamOpened {
                id,
                content_type,
                total_len,
                hash,
            } => {
                tracing::debug!(id, %content_type, ?total_len, "stream incoming");
                let (tx, rx) = mpsc::unbounded_channel();
                let (progress_tx, progress) = watch::channel(Progress {
                    total: total_len,
                    ..Progress::default()
                });
                self.incoming_streams.insert(
                    id,
                    InHandle {
                        tx,
                        progress: progress_tx,
                        opened: now,
                    },
                );
                self.deliveries.push_back(Incoming::Stream(IncomingStream {
                    id,
                    content_type,
                    total_len,
                    hash,
                    rx,
                    signals: self.signals_tx.clone(),
                    progress,
                    current: Bytes::new(),
                    ended: None,
                    unreported: 0,
                }));
            }
            Event::StreamData { id, data } => {
                if let Some(h) = self.incoming_streams.get(&id) {
                    let n = data.len() as u64;
                    let opened = h.opened;
                    h.progress.send_modify(|p| {
                        p.received += n;
                        p.bytes_per_sec = rate(p.received, opened, now);
                    });
                    // A dropped reader reports its release; nothing to do here.
                    let _ = h.tx.send(InItem::Data(data));
                }
            }
            Event::StreamEnded { id, result } => {
                tracing::debug!(id, ok = result.is_ok(), "stream ended");
                if let Some(h) = self.incoming_streams.remove(&id) {
                    h.progress.send_modify(|p| p.done = true);
                    let _ =
                        h.tx.send(InItem::End(result.map_err(|(reason, detail)| {
                            StreamError::Failed { reason, detail }
                        })));
                }
            }
            Event::StreamAcked { id, acked } => {
                if let Some(h) = self.out.get(&id) {
                    let opened = h.opened;
                    h.progress.send_modify(|p| {
                        p.acked = acked;
                        p.bytes_per_sec = rate(acked, opened, now);
                    });
                }
            }
            Event::StreamSettled { id, result } => {
                tracing::debug!(id, ok = result.is_ok(), "stream settled");
                if let Some(mut h) = self.out.remove(&id) {
                    h.progress.send_modify(|p| {
                        p.done = true;
                        if result.is_ok() {
                            p.acked = p.sent;
                        }
                    });
                    if let Some(done) = h.done.take() {
                        let _ = done.send(
                            result.map_err(|(reason, detail)| SendError::Stream { reason, detail }),
                        );
                    }
                }
                // A stream slot freed: open what waits.
                while let Some((ct, len, reply)) = self.pending_opens.pop_front() {
                    let before = self.pending_opens.len();
                    self.try_open(ct, len, reply);
                    if self.pending_opens.len() > before {
                        break;
                    }
                }
            }
            _ => {}
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
        for (_, mut h) in std::mem::take(&mut self.out) {
            h.progress.send_modify(|p| p.done = true);
            if let Some(done) = h.done.take() {
                let _ = done.send(Err(SendError::Unknown(cause.clone())));
            }
        }
        for (_, _, reply) in self.pending_opens.drain(..) {
            let _ = reply.send(Err(SendError::Closed(cause.clone())));
        }
        for (_, h) in std::mem::take(&mut self.incoming_streams) {
            h.progress.send_modify(|p| p.done = true);
            let _ =
                h.tx.send(InItem::End(Err(StreamError::Closed(cause.clone()))));
        }
        self.commands.close();
        while let Ok(cmd) = self.commands.try_recv() {
            settle_unsent(cmd, cause);
        }
        let _ = self.state.send(ConnectionState::Closed(cause.clone()));
    }
}

/// Writes queued frames, flushing when both queues run dry; each write is bounded by
/// `write_timeout`, and a failure is reported once through `failed`.
///
/// Frames in `urgent` (messages, acks, credit, pings, stream opens and results) go out before
/// anything waiting in `bulk` (stream data, `STREAM_END`, `STREAM_ABORT`, `GOAWAY`, the close),
/// so a message waits behind at most the chunk being written and what the socket holds, not
/// behind the chunks queued for the writer (PROTOCOL.md §5.3). Each lane keeps its order.
async fn write_loop(
    mut sink: SplitSink<Ws, WsMessage>,
    mut urgent: mpsc::Receiver<WriterCmd>,
    mut bulk: mpsc::Receiver<WriterCmd>,
    write_timeout: Duration,
    failed: oneshot::Sender<String>,
) {
    let result: Result<(), String> = async {
        loop {
            let cmd = tokio::select! {
                biased;
                Some(cmd) = urgent.recv() => cmd,
                Some(cmd) = bulk.recv() => cmd,
                else => break,
            };
            let mut next = Some(cmd);
            while let Some(cmd) = next.take() {
                let (msg, slot) = match cmd {
                    WriterCmd::Frame(b, slot) => (WsMessage::Binary(b), slot),
                    WriterCmd::Close(f) => (WsMessage::Close(Some(f)), None),
                };
                let closing = matches!(msg, WsMessage::Close(_));
                timeout(write_timeout, sink.feed(msg))
                    .await
                    .map_err(|_| format!("write blocked for {} ms", write_timeout.as_millis()))?
                    .map_err(|e| format!("write failed: {e}"))?;
                // The chunk is in the WebSocket's buffer: its slot is free for the next.
                drop(slot);
                if closing {
                    break;
                }
                next = urgent.try_recv().or_else(|_| bulk.try_recv()).ok();
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

/// The cause a closed connection reports (or a loss, if the task ended without one).
pub(crate) fn cause_of(state: &watch::Receiver<ConnectionState>) -> CloseCause {
    match &*state.borrow() {
        ConnectionState::Closed(c) => c.clone(),
        ConnectionState::Connecting
        | ConnectionState::Connected
        | ConnectionState::Degraded
        | ConnectionState::Reconnecting
        | ConnectionState::Offline => CloseCause::Lost("connection task ended".into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::net::BoxStream;
    use crate::secure::budget::Budgeted;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// The writer takes a message queued after stream chunks before those chunks, and keeps
    /// each lane's order (so `STREAM_END` still follows its chunks).
    #[tokio::test]
    async fn the_writer_sends_urgent_frames_before_queued_bulk_frames() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (a, lifter) = Budgeted::new(Box::new(a) as BoxStream, 1 << 20);
        lifter.lift();
        let writer_ws = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let mut reader_ws = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
        let (sink, _) = writer_ws.split();
        let (urgent_tx, urgent) = mpsc::channel(8);
        let (bulk_tx, bulk) = mpsc::channel(8);
        for name in ["chunk 1", "chunk 2", "end"] {
            let f = WriterCmd::Frame(Bytes::from_static(name.as_bytes()), None);
            bulk_tx.send(f).await.unwrap();
        }
        for name in ["message", "ack"] {
            let f = WriterCmd::Frame(Bytes::from_static(name.as_bytes()), None);
            urgent_tx.send(f).await.unwrap();
        }
        drop((urgent_tx, bulk_tx));
        let (failed, _) = oneshot::channel();
        write_loop(sink, urgent, bulk, Duration::from_secs(5), failed).await;
        let mut order = Vec::new();
        while let Some(Ok(WsMessage::Binary(b))) = reader_ws.next().await {
            order.push(String::from_utf8(b.to_vec()).unwrap());
        }
        assert_eq!(order, ["message", "ack", "chunk 1", "chunk 2", "end"]);
    }
}
