//! The connection task: a pump between the application's handles, the socket, the timers and
//! the sans-I/O [`crate::core::Connection`], which decides everything. This file only moves
//! bytes, commands and deadlines in, and carries out what the core's outputs say.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tracing::Instrument;

use super::stream::Incoming;
use super::stream::StreamSignal;
use super::stream::{OutCmd, StreamSender};
use super::types::{ConnectionState, Health, Message, StreamSpec};
use super::writer::{WriterCmd, write_loop};
use crate::config::TransportConfig;
use crate::core::{
    self, Attach, CloseCause, Lane, Phase, RedialPolicy, Resume, Resumption, SendId, StreamKey,
};
use crate::error::{ConnectError, SendError};
use crate::secure::Channel;
use crate::secure::handshake::{self, ResumeAnswer, close_frame, drain, finish};
use crate::secure::ws::Ws;
use crate::wire::{Frame, PeerLimits, ReasonCode, SessionId};

/// What the application's handle sends to the driver.
#[derive(Debug)]
pub(crate) enum Command {
    Send {
        message: Message,
        done: oneshot::Sender<Result<(), SendError>>,
    },
    OpenStream {
        spec: Box<StreamSpec>,
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
/// bytes of messages wait for the application. Streams are bounded by their windows instead.
/// One exception: while the application has consumed everything of a stream that has not
/// ended (it is likely waiting for more), the driver reads on until the messages it holds
/// reach `connection_window` bytes, since the stream's chunks may be behind them on the wire.
const HELD: usize = 16;
/// Encoded frames waiting for the writer, per lane.
const OUTGOING: usize = 64;
/// Stream chunks queued for the writer at once. Messages do not wait behind them: they take
/// the urgent lane, so a message waits behind at most the chunk being written and what the
/// socket holds (`TCP_NOTSENT_LOWAT`).
const CHUNK_SLOTS: usize = 4;
/// Encoding buffers per connection: a frame's buffer is busy until the writer has handed it to
/// the WebSocket, so the chunk slots plus room for the urgent lane's frames.
const ENCODE_BUFS: usize = CHUNK_SLOTS + 4;
/// Frames already received that the driver takes in one turn of its loop.
const READ_BATCH: usize = 8;
/// Data items a [`StreamSender`] may queue ahead of the driver (each at most one chunk).
const STREAM_QUEUE: usize = 2;

/// How the session gets its next connection (the rule of *when* is the core's).
pub(crate) enum Reconnect {
    /// It does not.
    Never,
    /// Dialer: dial the peer (all its addresses) with the redial policy.
    Dial {
        redial: Redial,
        policy: RedialPolicy,
        /// Uniform draws in `[0, 1)` from the transport's seeded RNG.
        draw: Box<dyn FnMut() -> f64 + Send>,
    },
    /// Listener: the dialer comes back through the listener, which hands the connection here
    /// (also while the current connection still looks alive: it is then half-open).
    Await {
        resumptions: mpsc::Receiver<Channel>,
        window: Duration,
    },
}

/// Dials the peer, asking to resume `(session, last received)`.
pub(crate) type Redial = Box<
    dyn FnMut(
            SessionId,
            u64,
        ) -> futures_util::future::BoxFuture<'static, Result<Channel, ConnectError>>
        + Send,
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

/// How a connection made by `Transport::open` gets going.
pub(crate) struct Pending {
    /// Dials the peer (a [`Reconnect::Dial`]), for the first connection whatever the
    /// configuration says of reconnecting.
    pub(crate) dial: Reconnect,
    /// Whether the session reconnects after its first connection.
    pub(crate) reconnect: bool,
    /// Registers the first connection for the simultaneous-dial tie-break; false when the
    /// peer's own connection wins it.
    pub(crate) register:
        Box<dyn FnOnce(mpsc::WeakSender<Command>, watch::Receiver<ConnectionState>) -> bool + Send>,
}

/// Starts the connection task of an authenticated channel.
pub(crate) fn spawn(
    channel: Channel,
    cfg: &TransportConfig,
    span: tracing::Span,
    permit: Option<OwnedSemaphorePermit>,
    reconnect: Reconnect,
    stop: watch::Receiver<bool>,
) -> Handles {
    let (driver, handles) = Driver::new(cfg, ConnectionState::Connected, reconnect, stop);
    spawn_task(handles, span, async move {
        driver.run(Some(channel)).await;
        drop(permit);
    })
}

/// Starts a connection that is not connected yet: state [`ConnectionState::Connecting`] while
/// the task dials the peer with the redial policy; sends queue meanwhile.
pub(crate) fn spawn_pending(
    cfg: &TransportConfig,
    span: tracing::Span,
    pending: Pending,
    stop: watch::Receiver<bool>,
) -> Handles {
    let mut cfg = cfg.clone();
    cfg.reconnect = pending.reconnect;
    let (mut driver, mut handles) =
        Driver::new(&cfg, ConnectionState::Connecting, pending.dial, stop);
    let (closer, closer_rx) = oneshot::channel();
    handles.closer = Some(closer);
    driver.closer = Some(closer_rx);
    let weak = handles.commands.downgrade();
    let state = handles.state.clone();
    let register = pending.register;
    driver.register = Some(Box::new(move || register(weak, state)));
    spawn_task(handles, span, driver.run(None))
}

fn spawn_task(
    mut handles: Handles,
    span: tracing::Span,
    task: impl Future<Output = ()> + Send + 'static,
) -> Handles {
    handles.task = Some(tokio::spawn(task.instrument(span)));
    handles
}

/// One thing the driver's `select!` woke up for.
enum Input {
    WriterFailed(String),
    Deliver(Option<mpsc::OwnedPermit<Incoming>>),
    Command(Option<Command>),
    Signal(Option<StreamSignal>),
    Ws(Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>),
    ChunkSlot(OwnedSemaphorePermit),
    Stream(StreamKey, Option<OutCmd>),
    Replaced(Box<Channel>),
    Timer,
}

mod dial;
mod outputs;

use outputs::{InHandle, OutHandle, Waiting, failure_to_error};

struct Driver {
    core: core::Connection,
    start: Instant,
    decode_limits: crate::wire::DecodeLimits,
    /// Buffers for received chunks (see `pool`).
    recv_pool: super::pool::RecvPool,
    write_timeout: Duration,
    chunk_size: u32,
    commands: mpsc::Receiver<Command>,
    incoming: mpsc::Sender<Incoming>,
    state: watch::Sender<ConnectionState>,
    health: watch::Sender<Health>,
    next_id: SendId,
    waiting: BTreeMap<SendId, Waiting>,
    /// Messages and streams received, waiting for room in `incoming`.
    deliveries: VecDeque<Incoming>,
    /// Payload and metadata bytes of the messages in `deliveries`.
    held_bytes: usize,
    /// How many bytes of messages `deliveries` may hold while the application waits for
    /// stream data (the connection window): see [`HELD`].
    starved_budget: usize,
    signals: mpsc::UnboundedReceiver<StreamSignal>,
    signals_tx: mpsc::UnboundedSender<StreamSignal>,
    out: BTreeMap<StreamKey, OutHandle>,
    incoming_streams: BTreeMap<StreamKey, InHandle>,
    /// Chunks the current connection's writer may have queued (renewed per connection).
    chunk_slots: Arc<Semaphore>,
    chunk_permit: Option<OwnedSemaphorePermit>,
    /// Bytes per chunk on the current connection.
    chunk: usize,
    /// Buffers frames are encoded in, used in turn; see [`Driver::encode`].
    encode_bufs: [bytes::BytesMut; ENCODE_BUFS],
    /// The next of `encode_bufs` to use when none is free.
    encode_next: usize,
    session_id: SessionId,
    reconnect: Reconnect,
    /// While connecting: the application's immediate close.
    closer: Option<oneshot::Receiver<(ReasonCode, String)>>,
    /// The transport's shutdown (true, or its sender dropped with the last `Transport`);
    /// `None` once acted on.
    stop: Option<watch::Receiver<bool>>,
    /// The simultaneous-dial registration, at the first connection of `Transport::open`.
    register: Option<Box<dyn FnOnce() -> bool + Send>>,
    connections: u32,
    closed: Option<CloseCause>,
}

/// Resolves when the transport shuts down: its flag turns true, or its sender is gone (the
/// last `Transport` was dropped).
async fn stopped(stop: &mut Option<watch::Receiver<bool>>) {
    match stop {
        Some(rx) => {
            let _ = rx.wait_for(|s| *s).await;
        }
        None => std::future::pending().await,
    }
}

/// What the driver does when the transport shuts down: close with `going away`.
fn shutdown_close() -> Input {
    Input::Command(Some(Command::Close {
        reason: ReasonCode::GoingAway,
        detail: "the transport shuts down".into(),
    }))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Driver {
    /// Whether to read the next frame: while the application keeps up (fewer than `HELD`
    /// deliveries waiting), or, behind, while it waits for the data of a stream it holds and
    /// what is held stays within `starved_budget`. Such an application cannot take what is
    /// queued behind its stream: reading on is what lets the stream's chunks arrive. Not
    /// reading then deadlocked a slow reader behind a pipelining sender (simulator scenario
    /// `pipelined`).
    fn can_read(&self) -> bool {
        self.deliveries.len() < HELD
            || (self.core.incoming_starved() && self.held_bytes < self.starved_budget)
    }

    fn new(
        cfg: &TransportConfig,
        initial: ConnectionState,
        reconnect: Reconnect,
        stop: watch::Receiver<bool>,
    ) -> (Self, Handles) {
        let (commands, command_rx) = mpsc::channel(cfg.send_queue as usize);
        let (incoming_tx, incoming) = mpsc::channel(INCOMING);
        let (state_tx, state) = watch::channel(initial);
        let (health_tx, health) = watch::channel(Health::default());
        let (signals_tx, signals) = mpsc::unbounded_channel();
        let resume = match (&reconnect, cfg.reconnect) {
            (Reconnect::Await { window, .. }, _) => Resume::Await(*window),
            (Reconnect::Dial { .. }, true) => Resume::Redial,
            _ => Resume::Never,
        };
        let core = core::Connection::new(core::ConnectionParams {
            ack_every: cfg.ack_every,
            ack_delay: cfg.ack_delay,
            heartbeat_interval: cfg.heartbeat_interval,
            idle_timeout: cfg.heartbeat_timeout,
            degraded_rtt: cfg.degraded_rtt,
            replay_buffer_bytes: cfg.replay_buffer_bytes,
            chunk_size: cfg.chunk_size,
            stream_window: cfg.stream_window,
            connection_window: cfg.connection_window,
            max_streams: cfg.max_streams,
            max_message_size: cfg.max_message_size,
            send_queue: cfg.send_queue as usize,
            resume,
        });
        let driver = Driver {
            core,
            start: Instant::now(),
            decode_limits: cfg.decode_limits(),
            recv_pool: super::pool::RecvPool::new(cfg.chunk_size as usize),
            write_timeout: cfg.write_timeout,
            chunk_size: cfg.chunk_size,
            commands: command_rx,
            incoming: incoming_tx,
            state: state_tx,
            health: health_tx,
            next_id: 0,
            waiting: BTreeMap::new(),
            deliveries: VecDeque::new(),
            held_bytes: 0,
            starved_budget: cfg.connection_window as usize,
            signals,
            signals_tx,
            out: BTreeMap::new(),
            incoming_streams: BTreeMap::new(),
            chunk_slots: Arc::new(Semaphore::new(CHUNK_SLOTS)),
            chunk_permit: None,
            chunk: cfg.chunk_size.max(1) as usize,
            encode_bufs: Default::default(),
            encode_next: 0,
            session_id: SessionId::NONE,
            reconnect,
            closer: None,
            stop: Some(stop),
            register: None,
            connections: 0,
            closed: None,
        };
        let handles = Handles {
            commands,
            incoming,
            state,
            health,
            task: None,
            closer: None,
        };
        (driver, handles)
    }

    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.start)
    }

    /// Connections come and go; the core, the session and the application's handles stay.
    async fn run(mut self, first: Option<Channel>) {
        let mut next = first;
        while self.closed.is_none() {
            let channel = match next.take() {
                Some(c) => c,
                None => match self.next_connection().await {
                    Some(c) => c,
                    None => break,
                },
            };
            let Some(ws) = self.attach(channel).await else {
                continue;
            };
            next = self.run_connection(ws).await;
        }
        self.outputs();
        let cause = self
            .closed
            .clone()
            .unwrap_or_else(|| CloseCause::Lost("connection task ended".into()));
        // Sends settle first: a send on a connection that has ended fails at once, not after
        // the application took what was delivered before the end (it may be stalled).
        self.commands.close();
        while let Ok(cmd) = self.commands.try_recv() {
            settle_unsent(cmd, &cause);
        }
        let _ = self.state.send(ConnectionState::Closed(cause));
        // Messages received before the end are still the application's.
        for m in self.deliveries.drain(..) {
            if self.incoming.send(m).await.is_err() {
                break;
            }
        }
    }

    /// Serves commands, stream signals and the core's timers until `fut` is ready; `None` if
    /// the session ends first (the application closed it, or the resume window ran out).
    async fn serve_until<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            self.outputs();
            if self.core.phase() == Phase::Closed {
                return None;
            }
            let deadline = self.core.poll_timeout().map(|d| self.start + d);
            let can_take = self.core.can_take();
            let closer = async {
                match self.closer.as_mut() {
                    Some(c) => c.await.ok(),
                    None => std::future::pending().await,
                }
            };
            let input = tokio::select! {
                biased;
                c = closer => Some(Input::Command(Some(Command::Close {
                    reason: c.as_ref().map_or(ReasonCode::Normal, |c| c.0),
                    detail: c.map_or_else(|| "connection dropped by the application".into(), |c| c.1),
                }))),
                () = stopped(&mut self.stop), if self.stop.is_some() => {
                    self.stop = None;
                    Some(shutdown_close())
                }
                () = async { if let Some(d) = deadline { sleep_until(d).await } }, if deadline.is_some() => Some(Input::Timer),
                cmd = self.commands.recv(), if can_take => Some(Input::Command(cmd)),
                signal = self.signals.recv() => Some(Input::Signal(signal)),
                out = &mut fut => return Some(out),
            };
            if let Some(input) = input {
                self.input(input);
            }
        }
    }

    /// Takes a new connection: answers a listener-side `RESUME`, tells the core what became of
    /// the session, registers the first connection of `Transport::open` for the tie-break.
    async fn attach(&mut self, mut channel: Channel) -> Option<Ws> {
        let now = self.now();
        let first = self.core.phase() == Phase::Connecting;
        let session = match channel.handshake.resume {
            _ if first => Resumption::New,
            ResumeAnswer::Resumed { peer_received } => Resumption::Resumed { peer_received },
            ResumeAnswer::Lost(reason) => Resumption::Lost(reason),
            ResumeAnswer::Asked(r) if !self.core.resume_point_valid(r.last_received) => {
                let detail = format!(
                    "RESUME says {} of our frames received; impossible for this session",
                    r.last_received
                );
                tracing::warn!(%detail, "resume refused");
                handshake::refuse_resume(&mut channel.ws, ReasonCode::ProtocolError, detail).await;
                return None;
            }
            ResumeAnswer::Asked(r) => {
                // The dialer is back for this session: say where we are.
                let answer = Frame::Resumed(crate::wire::Resumed {
                    session: self.session_id,
                    last_received: self.core.received(),
                });
                if let Err(e) = handshake::answer_resume(&mut channel.ws, answer).await {
                    tracing::warn!(error = %e, "resume answer failed");
                    return None;
                }
                Resumption::Resumed {
                    peer_received: r.last_received,
                }
            }
        };
        if first || matches!(session, Resumption::Lost(_)) {
            self.session_id = channel.handshake.session;
        }
        if !first {
            let lost = u32::from(matches!(session, Resumption::Lost(_)));
            self.health.send_modify(|h| {
                h.reconnects += 1;
                h.sessions_lost += lost;
            });
        }
        let limits: PeerLimits = channel.handshake.peer_limits;
        self.chunk = self
            .chunk_size
            .min(
                limits
                    .max_frame_size
                    .saturating_sub(PeerLimits::CHUNK_OVERHEAD),
            )
            .max(1) as usize;
        self.core.attach(
            Attach {
                peer_limits: limits,
                streams: channel.handshake.peer_capabilities & crate::wire::CAP_STREAMS != 0,
                metadata: channel.handshake.peer_capabilities & crate::wire::CAP_METADATA != 0,
                offers: channel.handshake.peer_capabilities & crate::wire::CAP_OFFERS != 0,
                session,
            },
            now,
        );
        if let Some(register) = self.register.take() {
            if !register() {
                tracing::info!("simultaneous dial: the peer's connection wins the tie-break");
                self.core.close(
                    ReasonCode::DuplicateConnection,
                    "the peer dialled us too and its connection wins the tie-break".into(),
                    now,
                );
            }
        }
        Some(channel.ws)
    }

    /// Runs one connection until it ends; returns the connection that replaces it, if a
    /// resuming dialer came back while this one still looked alive.
    async fn run_connection(&mut self, ws: Ws) -> Option<Channel> {
        let (sink, mut stream) = ws.split();
        // The chunk slots are this connection's writer's: a replaced connection's writer may
        // hold its slots until write_timeout, and the new connection must not wait for them.
        self.chunk_slots = Arc::new(Semaphore::new(CHUNK_SLOTS));
        self.chunk_permit = None;
        let (bulk_tx, bulk_rx) = mpsc::channel::<WriterCmd>(OUTGOING);
        let (urgent_tx, urgent_rx) = mpsc::channel::<WriterCmd>(OUTGOING);
        let (failed_tx, mut failed_rx) = oneshot::channel::<String>();
        let writer = tokio::spawn(
            write_loop(sink, urgent_rx, bulk_rx, self.write_timeout, failed_tx).in_current_span(),
        );
        tracing::info!(session = %hex(&self.session_id.0), "connected");
        self.connections += 1;
        let mut replacement = None;
        loop {
            self.transmit(&urgent_tx, &bulk_tx).await;
            self.outputs();
            if self.core.phase() != Phase::Connected {
                // Flush what the core queued last (the GOAWAY) before leaving.
                self.transmit(&urgent_tx, &bulk_tx).await;
                break;
            }
            let can_read = self.can_read();
            // Not reading because the application is behind is not the peer's silence.
            self.core.set_reading(can_read, self.now());
            let deadline = self.core.poll_timeout().map(|d| self.start + d);
            let can_take = self.core.can_take();
            let want_slot = self.chunk_permit.is_none() && self.core.wants_chunk_slot();
            let want_data = self.out.keys().any(|k| self.core.accepts_data(*k));
            let slots = self.chunk_slots.clone();
            let resumptions = async {
                match &mut self.reconnect {
                    Reconnect::Await { resumptions, .. } => resumptions.recv().await,
                    _ => std::future::pending().await,
                }
            };
            let (core, out) = (&self.core, &mut self.out);
            let input = tokio::select! {
                biased;
                reason = &mut failed_rx => {
                    Input::WriterFailed(reason.unwrap_or_else(|_| "writer stopped".into()))
                }
                () = stopped(&mut self.stop), if self.stop.is_some() => {
                    self.stop = None;
                    shutdown_close()
                }
                () = async { if let Some(d) = deadline { sleep_until(d).await } }, if deadline.is_some() => Input::Timer,
                Some(ch) = resumptions => Input::Replaced(Box::new(ch)),
                cmd = self.commands.recv(), if can_take => Input::Command(cmd),
                signal = self.signals.recv() => Input::Signal(signal),
                permit = self.incoming.clone().reserve_owned(), if !self.deliveries.is_empty() => {
                    Input::Deliver(permit.ok())
                }
                (key, cmd) = std::future::poll_fn(|cx| poll_streams(core, out, cx)), if want_data => Input::Stream(key, cmd),
                msg = stream.next(), if can_read => Input::Ws(msg),
                permit = slots.acquire_owned(), if want_slot => match permit {
                    Ok(p) => Input::ChunkSlot(p),
                    Err(_) => Input::WriterFailed("chunk slots closed".into()),
                },
            };
            if let Input::Replaced(channel) = input {
                tracing::info!("the peer resumes on a new connection; replacing this one");
                if let Some(goaway) = self.core.replace(self.now()) {
                    if let Ok(b) = goaway.encode() {
                        let _ = bulk_tx.try_send(WriterCmd::Frame(b, None));
                    }
                    let close = close_frame(ReasonCode::Replaced, "replaced");
                    let _ = bulk_tx.try_send(WriterCmd::Close(close));
                }
                replacement = Some(*channel);
                break;
            }
            let read = matches!(input, Input::Ws(Some(Ok(_))));
            self.input(input);
            // Frames that are here already are taken without a turn of the whole loop each (a
            // select over nine sources, the timer armed anew): up to READ_BATCH, while reading
            // is allowed and the connection stands, with the same accounting as the loop's.
            let mut batch = 1;
            while read && batch < READ_BATCH && self.core.phase() == Phase::Connected {
                self.outputs();
                if !self.can_read() {
                    break;
                }
                match futures_util::FutureExt::now_or_never(stream.next()) {
                    Some(msg @ Some(Ok(_))) => self.input(Input::Ws(msg)),
                    Some(msg) => {
                        self.input(Input::Ws(msg));
                        break;
                    }
                    None => break,
                }
                batch += 1;
            }
        }
        let cause = self.closed.clone();
        // The network broke (the peer fell silent) and the session waits for the next
        // connection: this one may be half-open with its writer stuck on a full socket.
        let suspended = self.core.phase() == Phase::Suspended;
        // Say goodbye with the reason, unless the connection is already gone.
        if replacement.is_none() {
            let close = match &cause {
                Some(CloseCause::Local(r, d)) => Some(close_frame(*r, d)),
                Some(CloseCause::Peer(..)) => Some(close_frame(ReasonCode::Normal, "")),
                _ => None,
            };
            if let Some(f) = close {
                if suspended {
                    // Best effort: a writer stuck on a dead path must not hold the redial.
                    let _ = bulk_tx.try_send(WriterCmd::Close(f));
                } else {
                    let _ = bulk_tx.send(WriterCmd::Close(f)).await;
                }
            }
        }
        drop((bulk_tx, urgent_tx));
        self.chunk_permit = None;
        let write_timeout = self.write_timeout;
        let writer_done = async move {
            timeout(write_timeout, writer)
                .await
                .ok()
                .and_then(|r| r.ok().flatten())
                .and_then(|sink| sink.reunite(stream).ok())
        };
        if replacement.is_some() || suspended {
            // A replaced or broken connection may be half-open: its writer may be stuck on a
            // peer that no longer reads (a stream was flowing when the laptop slept or the
            // path died) until write_timeout. Its teardown happens in the background; the new
            // connection takes over now, or the redial starts now. Waiting here held the
            // redial for write_timeout (30 s) whenever the socket was full at the break
            // (simulator scenario `conform_blackhole`, with the link model).
            tokio::spawn(
                async move {
                    if let Some(ws) = writer_done.await {
                        drain(finish(ws).await).await;
                    }
                }
                .in_current_span(),
            );
            return replacement;
        }
        // A closed connection (not one the network broke) ends cleanly: the closing handshake,
        // TLS close_notify and FIN here, so the peer has read our close before we move on; then
        // reading until the peer's end in the background, so unread input never turns into a
        // reset (PROTOCOL.md §6.4).
        let closed = matches!(cause, Some(CloseCause::Local(..) | CloseCause::Peer(..)));
        let teardown = async move {
            if let Some(ws) = writer_done.await
                && closed
            {
                let ws = finish(ws).await;
                tokio::spawn(drain(ws).in_current_span());
            }
        };
        tokio::pin!(teardown);
        let Some(cause) = cause else {
            teardown.await;
            return None;
        };
        // The connection is over for good: meanwhile a send on it fails at once, with the
        // cause, instead of waiting for the teardown (up to write_timeout; simulator
        // `swarm_mix` seed 98: a send right after a graceful shutdown never settled).
        loop {
            tokio::select! {
                biased;
                () = &mut teardown => break,
                Some(cmd) = self.commands.recv() => settle_unsent(cmd, &cause),
            }
        }
        None
    }

    /// Encodes `frame` in a buffer whose previous frame is gone (written), so a stream of chunks
    /// reuses a few allocations. One buffer alone would not do: the frames the writer has not
    /// taken yet still hold theirs, and `BytesMut` then allocates afresh for every chunk
    /// (`tests/recv_buffers.rs` counts these allocations).
    fn encode(&mut self, frame: &Frame) -> Result<bytes::Bytes, crate::wire::EncodeError> {
        let want = self.chunk + 256;
        let i = match self
            .encode_bufs
            .iter_mut()
            .position(|b| b.try_reclaim(want))
        {
            Some(i) => i,
            None => {
                let i = self.encode_next;
                self.encode_next = (i + 1) % ENCODE_BUFS;
                i
            }
        };
        frame.encode_into(&mut self.encode_bufs[i])
    }

    /// Writes what the core has for the wire, each frame on its lane.
    async fn transmit(&mut self, urgent: &mpsc::Sender<WriterCmd>, bulk: &mpsc::Sender<WriterCmd>) {
        let now = self.now();
        while let Some((frame, lane)) = self.core.poll_transmit(now, self.chunk_permit.is_some()) {
            let permit = if matches!(frame, Frame::StreamChunk(_)) {
                self.chunk_permit.take()
            } else {
                None
            };
            let lane = if lane == Lane::Urgent { urgent } else { bulk };
            match self.encode(&frame) {
                Ok(bytes) => {
                    if lane.send(WriterCmd::Frame(bytes, permit)).await.is_err() {
                        self.core.connection_lost("writer stopped".into(), now);
                    }
                }
                Err(e) => self.core.close(
                    ReasonCode::InternalError,
                    format!("cannot encode: {e}"),
                    now,
                ),
            }
        }
        let retransmitted = self.core.session().map_or(0, |s| s.retransmitted_bytes());
        self.health.send_if_modified(|h| {
            let changed = h.retransmitted_bytes != retransmitted;
            h.retransmitted_bytes = retransmitted;
            changed
        });
    }

    fn input(&mut self, input: Input) {
        self.step(input);
        // The simulator turns self-checks on (`crate::enable_self_checks`): every promise the
        // core can check about itself (credit, buffering, the replay buffer) is checked after
        // every step of every simulated run, and a broken one ends the connection with
        // `internal error`, which the simulator's `no-protocol-violation` invariant reports.
        if crate::SELF_CHECKS.load(std::sync::atomic::Ordering::Relaxed)
            && let Err(e) = self.core.check_invariants()
        {
            tracing::error!(error = %e, "core invariant broken");
            let now = self.now();
            self.core.close(
                ReasonCode::InternalError,
                format!("core invariant: {e}"),
                now,
            );
        }
    }

    fn step(&mut self, input: Input) {
        let now = self.now();
        match input {
            Input::WriterFailed(detail) => self.core.connection_lost(detail, now),
            Input::Deliver(Some(permit)) => {
                if let Some(m) = self.deliveries.pop_front() {
                    if let Incoming::Message(msg) = &m {
                        self.held_bytes -= msg.payload.len() + msg.metadata.len();
                    }
                    permit.send(m);
                }
            }
            // The application dropped its receiving end: it no longer cares.
            Input::Deliver(None) => {
                self.deliveries.clear();
                self.held_bytes = 0;
            }
            Input::Command(Some(cmd)) => self.command(cmd, now),
            Input::Command(None) => self.core.close(
                ReasonCode::Normal,
                "connection dropped by the application".into(),
                now,
            ),
            Input::Signal(Some(StreamSignal::Consumed { key, n })) => {
                self.core.stream_consumed(key, n, now);
            }
            Input::Signal(Some(StreamSignal::Accept { key })) => {
                self.core.stream_accept(key, now);
            }
            Input::Signal(Some(StreamSignal::Released { key, verdict })) => {
                self.incoming_streams.remove(&key);
                self.core.stream_release(key, verdict, now);
            }
            // The driver holds a sender itself, so the channel never closes.
            Input::Signal(None) => {}
            Input::ChunkSlot(permit) => self.chunk_permit = Some(permit),
            Input::Stream(key, cmd) => match cmd {
                Some(OutCmd::Data(b)) => self.core.stream_data(key, b),
                Some(OutCmd::Finish) => self.core.stream_finish(key),
                Some(OutCmd::Abort(r, t)) => self.core.stream_abort(key, r, t),
                None => self.core.stream_abort(
                    key,
                    ReasonCode::Cancelled,
                    "the sender dropped the stream".into(),
                ),
            },
            Input::Ws(msg) => match msg {
                Some(Ok(WsMessage::Binary(b))) => {
                    match Frame::decode(self.recv_pool.adopt(b), self.decode_limits) {
                        Ok(frame) => self.core.handle_frame(frame, now),
                        Err(e) if e.is_ignorable() => {}
                        Err(e) => self.core.close(e.reason(), e.to_string(), now),
                    }
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    let (code, text) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    match ReasonCode::from_close_code(code) {
                        Some(r) => self.core.peer_closed(r, text, now),
                        None => self
                            .core
                            .connection_lost(format!("peer closed with code {code} {text}"), now),
                    }
                }
                Some(Ok(WsMessage::Text(_))) => self.core.close(
                    ReasonCode::ProtocolError,
                    "text message (ClipSync frames are binary)".into(),
                    now,
                ),
                Some(Ok(_)) => {}
                Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(e))) => {
                    self.core.close(
                        ReasonCode::FrameTooLarge,
                        format!("frame too large: {e}"),
                        now,
                    );
                }
                Some(Err(e)) => self.core.connection_lost(format!("read failed: {e}"), now),
                None => self
                    .core
                    .connection_lost("peer ended the connection".into(), now),
            },
            Input::Replaced(_) => {}
            Input::Timer => self.core.handle_timeout(now),
        }
    }

    fn command(&mut self, cmd: Command, now: Duration) {
        self.next_id += 1;
        let id = self.next_id;
        match cmd {
            Command::Send { message, done } => {
                match self.core.send(
                    id,
                    message.content_type,
                    message.metadata,
                    message.payload,
                    now,
                ) {
                    Ok(()) => {
                        self.waiting.insert(id, Waiting::Message(done));
                    }
                    Err(f) => {
                        let _ = done.send(Err(failure_to_error(f)));
                    }
                }
            }
            Command::OpenStream { spec, reply } => match self.core.open_stream_with(
                id,
                spec.content_type,
                spec.total_len,
                spec.hash,
                spec.metadata,
                now,
            ) {
                Ok(()) => {
                    self.waiting.insert(
                        id,
                        Waiting::Open {
                            reply,
                            total_len: spec.total_len,
                        },
                    );
                }
                Err(f) => {
                    let _ = reply.send(Err(failure_to_error(f)));
                }
            },
            Command::Close { reason, detail } => self.core.close(reason, detail, now),
        }
    }
}

/// The next command of an outgoing stream whose core side takes data now (`None`: the
/// application dropped its sender).
fn poll_streams(
    core: &core::Connection,
    out: &mut BTreeMap<StreamKey, OutHandle>,
    cx: &mut std::task::Context<'_>,
) -> Poll<(StreamKey, Option<OutCmd>)> {
    for (key, h) in out.iter_mut() {
        if core.accepts_data(*key) {
            if let Poll::Ready(cmd) = h.rx.poll_recv(cx) {
                return Poll::Ready((*key, cmd));
            }
        }
    }
    Poll::Pending
}

/// Fails a command that never reached the core: nothing of it was sent.
pub(crate) fn settle_unsent(cmd: Command, cause: &CloseCause) {
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
