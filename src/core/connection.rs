//! The whole connection, sans I/O: which session is current and what replaces it, the ledger of
//! sends awaiting their fate, the queues in front of the session (replay bound, `max_streams`),
//! the scheduling of stream data against credit and which frame may overtake which, the resume
//! window, and the one rule for "may this session continue on a new connection?".
//!
//! The [`Session`] below it knows one session's sequence numbers, acknowledgements, streams and
//! heartbeats. This machine knows the *connection*: it outlives sessions (a peer that restarted
//! gets a fresh session, and everything of the old one settles), and it outlives connections
//! (a broken one suspends the session until the next one attaches).
//!
//! Like the session: no tokio, no sockets, no clock, no randomness. The driver feeds it
//! ([`Connection::attach`], [`Connection::handle_frame`], [`Connection::send`], …, always with
//! `now`), then drains [`Connection::poll_transmit`] and [`Connection::poll_output`], and sleeps
//! until [`Connection::poll_timeout`] or the next input.
//!
//! Every send given to [`Connection::send`] or [`Connection::open_stream`] settles exactly once,
//! with a truthful outcome: [`Output::Delivered`] once the peer acknowledged it, or
//! [`Output::Failed`] with [`Failure::Unknown`] only if it was on the wire and never
//! acknowledged, [`Failure::NotSent`] if it never left this side, or the reason it was refused.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;

use super::session::{CloseCause, Event, SendRefusal, Session, SessionParams};
use crate::wire::{Frame, GoAway, MessageFrame, PeerLimits, ReasonCode};

/// The application's name for one send (a message or a stream open), chosen by the caller;
/// outcomes refer to it.
pub type SendId = u64;

/// A stream as the application knows it: the session's epoch (it changes when the peer loses the
/// session) and the stream id within it. A key of an earlier epoch names nothing any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamKey {
    /// Sessions replaced before this one on this connection.
    pub epoch: u32,
    /// The stream's id on the wire (ours for outgoing streams, the peer's for incoming).
    pub id: u64,
}

/// How a suspended session gets its next connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// It does not: the session ends with its connection.
    Never,
    /// This side redials (the driver, with the [`super::RedialPolicy`]).
    Redial,
    /// This side waits for the peer to come back, up to this long (the resume window).
    Await(Duration),
}

/// The local settings of a [`Connection`] (the peer's come with each [`Attach`]).
#[derive(Clone, Debug)]
pub struct ConnectionParams {
    /// Acknowledge after this many sequenced frames at most.
    pub ack_every: u32,
    /// … or after this delay at most.
    pub ack_delay: Duration,
    /// Ping when nothing was sent for this long.
    pub heartbeat_interval: Duration,
    /// Close with `idle timeout` when nothing was received for this long.
    pub idle_timeout: Duration,
    /// Report the connection degraded above this round-trip time.
    pub degraded_rtt: Duration,
    /// Bytes of unacknowledged payload this side may have outstanding.
    pub replay_buffer_bytes: u64,
    /// Bytes of stream data per chunk we send (capped by the peer's frame limit).
    pub chunk_size: u32,
    /// Credit we grant each incoming stream.
    pub stream_window: u32,
    /// Credit we grant all incoming streams together.
    pub connection_window: u32,
    /// Most incoming streams open at once.
    pub max_streams: u16,
    /// Largest `MESSAGE` payload we accept (announced in our `HELLO`).
    pub max_message_size: u32,
    /// Sends (messages and stream opens) held in front of the session at most; beyond it the
    /// caller must wait ([`Connection::can_take`]).
    pub send_queue: usize,
    /// How the session continues after a network failure.
    pub resume: Resume,
}

/// What the handshake of a new connection established.
#[derive(Clone, Copy, Debug)]
pub struct Attach {
    /// The peer's announced limits (its `HELLO`).
    pub peer_limits: PeerLimits,
    /// Both sides announced the STREAMS capability.
    pub streams: bool,
    /// Both sides announced the METADATA capability.
    pub metadata: bool,
    /// Both sides announced the OFFERS capability.
    pub offers: bool,
    /// What became of the session.
    pub session: Resumption,
}

/// What became of the session at a new connection's handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resumption {
    /// A new session (the first connection).
    New,
    /// The session continues; the peer received our sequenced frames up to this number
    /// (from its `RESUME` or `RESUMED`).
    Resumed {
        /// The peer's `last_received`.
        peer_received: u64,
    },
    /// The peer does not have the session (`SESSION_LOST`, with its reason): a fresh one
    /// replaces it.
    Lost(ReasonCode),
}

/// Which writer queue a frame takes. Each keeps its order; the urgent one is drained first, so
/// a message never waits behind queued stream data (PROTOCOL.md §5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Messages and control frames.
    Urgent,
    /// Stream data and what must follow it (`STREAM_END`, `STREAM_ABORT`, `GOAWAY`).
    Bulk,
}

/// Why a send did not become [`Output::Delivered`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// It was on the wire and the connection ended (or the peer lost the session) before it
    /// was acknowledged: the peer may or may not have it.
    Unknown(CloseCause),
    /// It never left this side: the peer does not have it.
    NotSent(CloseCause),
    /// The payload exceeds the peer's `max_message_size`.
    TooLarge {
        /// The payload size.
        size: usize,
        /// The peer's limit.
        max: u32,
    },
    /// The content type is not 1–255 printable ASCII bytes. Nothing was queued.
    InvalidContentType(String),
    /// The peer did not announce the STREAMS capability.
    StreamsUnsupported,
    /// Metadata longer than 1024 bytes. Nothing was queued.
    InvalidMetadata(String),
    /// Metadata for a peer that did not announce the METADATA capability. Nothing was sent.
    MetadataUnsupported,
    /// The receiver failed or refused the stream (its `STREAM_RESULT`).
    Stream {
        /// The receiver's reason.
        reason: ReasonCode,
        /// Its detail.
        detail: String,
    },
}

/// Why an incoming stream did not end verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InFailure {
    /// The sender aborted it, or its bytes did not verify.
    Failed(ReasonCode, String),
    /// The session ended (or the peer lost it) before the stream did.
    Closed(CloseCause),
}

/// What the connection tells the driver, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// A connection is attached: the session is new (`resumed == false`) or continues.
    Connected {
        /// The session continued from before.
        resumed: bool,
    },
    /// The peer had lost the session: a fresh one replaced it. Everything of the old one has
    /// settled (outputs before this one); `unknown` sends are of unknown fate.
    SessionLost {
        /// How many sends and streams were of unknown fate.
        unknown: usize,
    },
    /// The connection ended; the session waits for the next one ([`Resume`]).
    Suspended(CloseCause),
    /// The session ended for good; every send and stream has settled before this.
    Closed(CloseCause),
    /// The peer acknowledged this send (a message).
    Delivered(SendId),
    /// This send (message or stream open) failed.
    Failed(SendId, Failure),
    /// A stream open became a stream.
    StreamReady {
        /// The open.
        open: SendId,
        /// The stream.
        key: StreamKey,
    },
    /// Bytes of an outgoing stream went out as a chunk.
    StreamSent {
        /// The stream.
        key: StreamKey,
        /// Bytes.
        n: u64,
    },
    /// The receiver acknowledged bytes of an outgoing stream.
    StreamAcked {
        /// The stream.
        key: StreamKey,
        /// Bytes received in order by the peer.
        acked: u64,
    },
    /// An outgoing stream settled: verified and kept by the receiver, or why not.
    StreamSettled {
        /// The stream.
        key: StreamKey,
        /// The outcome.
        result: Result<(), Failure>,
    },
    /// A message from the peer, in order, exactly once.
    Message {
        /// Its content type.
        content_type: String,
        /// Its application metadata (empty if none).
        metadata: Bytes,
        /// Its payload.
        payload: Bytes,
    },
    /// The peer opened a stream (in order with messages).
    Incoming {
        /// The stream.
        key: StreamKey,
        /// Its content type.
        content_type: String,
        /// Its length, if announced.
        total_len: Option<u64>,
        /// Its BLAKE3, if announced.
        hash: Option<[u8; 32]>,
        /// Its application metadata (empty if none).
        metadata: Bytes,
        /// An offer: its bytes wait for [`Connection::stream_accept`] (reading it accepts).
        offer: bool,
    },
    /// Bytes of an incoming stream, in order.
    Data {
        /// The stream.
        key: StreamKey,
        /// The bytes.
        data: Bytes,
    },
    /// An incoming stream ended: verified (answer it by releasing it) or failed.
    Ended {
        /// The stream.
        key: StreamKey,
        /// The outcome: verified, with the payload's BLAKE3, or failed.
        result: Result<[u8; 32], InFailure>,
    },
    /// A `PONG` measured this round-trip time.
    Rtt(Duration),
    /// The connection's health changed.
    Health {
        /// Degraded now.
        degraded: bool,
        /// The smoothed round-trip time.
        rtt: Option<Duration>,
        /// Why, in words.
        why: String,
    },
}

/// Where the connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No connection yet.
    Connecting,
    /// A connection is attached.
    Connected,
    /// The connection broke; the session waits for the next one.
    Suspended,
    /// Over.
    Closed,
}

/// A message waiting in front of the session.
#[derive(Debug)]
struct QueuedMessage {
    id: SendId,
    content_type: String,
    metadata: Bytes,
    payload: Bytes,
}

/// A send waiting in front of the session.
#[derive(Debug)]
enum Queued {
    Message(QueuedMessage),
    Open(QueuedOpen),
}

impl Queued {
    fn id(&self) -> SendId {
        match self {
            Self::Message(m) => m.id,
            Self::Open(o) => o.id,
        }
    }
}

/// A stream open waiting for the peer's `max_streams`.
#[derive(Debug)]
struct QueuedOpen {
    id: SendId,
    content_type: String,
    total_len: Option<u64>,
    hash: Option<[u8; 32]>,
    metadata: Bytes,
}

/// What the application asked of an outgoing stream and the session has not taken yet.
#[derive(Debug, Default)]
struct OutStream {
    /// Data waiting for credit (cut into chunks as credit allows).
    pending: Option<Bytes>,
    /// Finish or abort, once `pending` has gone.
    closing: Option<Closing>,
    /// Finish or abort handed to the session.
    ended: bool,
}

#[derive(Debug)]
enum Closing {
    Finish,
    Abort(ReasonCode, String),
}

/// The connection state machine. See the [module docs](super) for the run loop.
#[derive(Debug)]
pub struct Connection {
    p: ConnectionParams,
    phase: Phase,
    /// When the session was suspended (for the resume window).
    suspended_at: Duration,
    session: Option<Session>,
    epoch: u32,
    /// Messages and stream opens waiting for a session, for room under the replay bound or
    /// for the peer's `max_streams`, in the order they were handed in: one queue, so neither
    /// kind overtakes the other and the peer receives them in that order.
    pending: VecDeque<Queued>,
    /// Sends in the current session awaiting acknowledgement, by sequence number.
    awaiting: BTreeMap<u64, SendId>,
    /// Outgoing streams of the current session, by id.
    out: BTreeMap<u64, OutStream>,
    /// Incoming streams of the current session the application holds, by id: whether they
    /// ended.
    incoming: BTreeMap<u64, bool>,
    /// The outgoing stream served last (round robin).
    last_served: u64,
    outputs: VecDeque<Output>,
}

impl Connection {
    /// A connection with no connection attached yet ([`Phase::Connecting`]): sends queue until
    /// the first [`Connection::attach`].
    pub fn new(p: ConnectionParams) -> Self {
        Self {
            p,
            phase: Phase::Connecting,
            suspended_at: Duration::ZERO,
            session: None,
            epoch: 0,
            pending: VecDeque::new(),
            awaiting: BTreeMap::new(),
            out: BTreeMap::new(),
            incoming: BTreeMap::new(),
            last_served: 0,
            outputs: VecDeque::new(),
        }
    }

    /// Where the connection stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The session, once there is one (for its figures: round-trip time, retransmissions).
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// Highest sequence number received in order in the current session (for `RESUME` and
    /// `RESUMED`).
    pub fn received(&self) -> u64 {
        self.session.as_ref().map_or(0, Session::received)
    }

    /// Whether a `RESUME` (or `RESUMED`) saying the peer received our sequenced frames up to
    /// `peer_received` can come from a correct peer (PROTOCOL.md §4); one that cannot is refused
    /// with `protocol error`, the session left as it was.
    pub fn resume_point_valid(&self, peer_received: u64) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.resume_point_valid(peer_received))
    }

    /// Whether another send or stream open may be handed in now (the queues in front of the
    /// session hold at most `send_queue`).
    pub fn can_take(&self) -> bool {
        self.phase != Phase::Closed && self.pending.len() < self.p.send_queue
    }

    fn session_params(&self, a: &Attach) -> SessionParams {
        SessionParams {
            ack_every: self.p.ack_every,
            ack_delay: self.p.ack_delay,
            heartbeat_interval: self.p.heartbeat_interval,
            idle_timeout: self.p.idle_timeout,
            degraded_rtt: self.p.degraded_rtt,
            replay_buffer_bytes: self.p.replay_buffer_bytes,
            peer_limits: a.peer_limits,
            streams: a.streams,
            metadata: a.metadata,
            offers: a.offers,
            chunk_size: self.p.chunk_size,
            stream_window: self.p.stream_window,
            connection_window: self.p.connection_window,
            max_streams: self.p.max_streams,
            max_message_size: self.p.max_message_size,
        }
    }

    // ----- connections -----

    /// A new connection authenticated and its handshake decided the session's fate.
    pub fn attach(&mut self, a: Attach, now: Duration) {
        match self.phase {
            Phase::Closed => {}
            Phase::Connecting => {
                self.session = Some(Session::new(self.session_params(&a), now));
                self.connected(false);
            }
            Phase::Connected | Phase::Suspended => {
                if self.phase == Phase::Connected {
                    // Not through `replace`: the old connection is gone without a word.
                    self.replace(now);
                }
                let resumed = match (a.session, self.session.as_mut()) {
                    (Resumption::Resumed { peer_received }, Some(s)) => {
                        s.resume(peer_received, a.peer_limits, now).is_ok()
                    }
                    _ => false,
                };
                if resumed {
                    self.connected(true);
                } else {
                    self.session_lost(&a, now);
                }
            }
        }
        self.absorb(now);
    }

    fn connected(&mut self, resumed: bool) {
        self.phase = Phase::Connected;
        self.outputs.push_back(Output::Connected { resumed });
        self.pump_sends();
    }

    /// The listener took a new connection for this session while the current one still
    /// looks alive (it is half-open: the peer would not come back otherwise). Returns the
    /// `GOAWAY` (`replaced`) to write on the old connection; the session is suspended and
    /// waits for [`Connection::attach`].
    pub fn replace(&mut self, now: Duration) -> Option<Frame> {
        if self.phase != Phase::Connected {
            return None;
        }
        let s = self.session.as_mut()?;
        let goaway = Frame::GoAway(GoAway {
            reason: ReasonCode::Replaced,
            last_seq: s.received(),
            text: "a new connection from the same peer resumes the session".into(),
        });
        s.connection_lost("replaced by a new connection".into());
        while s
            .poll_event()
            .is_some_and(|e| !matches!(e, Event::Closed(_)))
        {}
        s.suspend();
        self.phase = Phase::Suspended;
        self.suspended_at = now;
        Some(goaway)
    }

    /// The peer lost the session: settle everything of the old one truthfully, carry the
    /// messages that never left over to a fresh session with the new peer's limits.
    fn session_lost(&mut self, a: &Attach, now: Duration) {
        // What the peer said (PROTOCOL.md §4), so a failed send tells the truth about why.
        let cause = match a.session {
            Resumption::Lost(ReasonCode::SessionExpired) => CloseCause::Peer(
                ReasonCode::SessionExpired,
                "the peer dropped the session when its resume window ran out".into(),
            ),
            Resumption::Lost(r @ ReasonCode::ReplayOverflow) => CloseCause::Peer(
                r,
                "the peer could not keep what the session needed to resume".into(),
            ),
            _ => CloseCause::Peer(
                ReasonCode::SessionUnknown,
                "the peer does not know the session (it restarted, or the session ended)".into(),
            ),
        };
        let old = match self.session.as_mut() {
            Some(s) => s.abandon(),
            None => Default::default(),
        };
        let mut unknown = 0;
        for seq in old.unknown {
            if let Some(id) = self.awaiting.remove(&seq) {
                unknown += 1;
                self.fail(id, Failure::Unknown(cause.clone()));
            }
        }
        // Messages that never left go first on the new session, in their order.
        let mut carried: Vec<QueuedMessage> = Vec::new();
        for (seq, m) in old.unsent {
            let MessageFrame {
                content_type,
                metadata,
                payload,
                ..
            } = m;
            if let Some(id) = self.awaiting.remove(&seq) {
                carried.push(QueuedMessage {
                    id,
                    content_type,
                    metadata,
                    payload,
                });
            }
        }
        for m in carried.into_iter().rev() {
            self.pending.push_front(Queued::Message(m));
        }
        for (_, id) in std::mem::take(&mut self.awaiting) {
            unknown += 1;
            self.fail(id, Failure::Unknown(cause.clone()));
        }
        let epoch = self.epoch;
        for (id, on_wire) in old.out_streams {
            self.out.remove(&id);
            let failure = if on_wire {
                unknown += 1;
                Failure::Unknown(cause.clone())
            } else {
                Failure::NotSent(cause.clone())
            };
            self.outputs.push_back(Output::StreamSettled {
                key: StreamKey { epoch, id },
                result: Err(failure),
            });
        }
        self.out.clear();
        for (id, ended) in std::mem::take(&mut self.incoming) {
            if !ended {
                self.outputs.push_back(Output::Ended {
                    key: StreamKey { epoch, id },
                    result: Err(InFailure::Closed(cause.clone())),
                });
            }
        }
        self.epoch += 1;
        self.last_served = 0;
        self.session = Some(Session::new(self.session_params(a), now));
        self.outputs.push_back(Output::SessionLost { unknown });
        self.connected(false);
    }

    /// The connection broke underneath (end of stream, reset, write failure). After a close,
    /// what was still queued for it (its `GOAWAY` and the frames before) goes nowhere.
    pub fn connection_lost(&mut self, detail: String, now: Duration) {
        match (self.phase, self.session.as_mut()) {
            (Phase::Connected, Some(s)) => {
                s.connection_lost(detail);
                self.absorb(now);
            }
            (Phase::Closed, Some(s)) => s.connection_lost(detail),
            _ => {}
        }
    }

    /// The peer closed the WebSocket with this reason.
    pub fn peer_closed(&mut self, reason: ReasonCode, detail: String, now: Duration) {
        if let (Phase::Connected, Some(s)) = (self.phase, self.session.as_mut()) {
            s.peer_closed(reason, detail);
            self.absorb(now);
        }
    }

    /// Closes the connection: with a `GOAWAY` if one is attached, at once otherwise. The session
    /// ends; everything settles.
    pub fn close(&mut self, reason: ReasonCode, detail: String, now: Duration) {
        match (self.phase, self.session.as_mut()) {
            (Phase::Connected, Some(s)) => {
                s.close(reason, detail);
                self.absorb(now);
            }
            (Phase::Closed, _) => {}
            _ => self.finish(CloseCause::Local(reason, detail)),
        }
    }

    /// The dialer gave up on getting a (next) connection.
    pub fn give_up(&mut self, cause: CloseCause) {
        if self.phase != Phase::Connected {
            self.finish(cause);
        }
    }

    // ----- the application's sends -----

    /// Queues a message with its application `metadata` (empty: none). Refused at once
    /// (nothing queued, the connection unaffected) when its content type or metadata is
    /// invalid, it is larger than the peer accepts, the peer takes no metadata, or the
    /// connection is over.
    pub fn send(
        &mut self,
        id: SendId,
        content_type: String,
        metadata: Bytes,
        payload: Bytes,
        now: Duration,
    ) -> Result<(), Failure> {
        self.check_new_send(&content_type, &metadata)?;
        if let Some(s) = &self.session {
            let max = s.peer_limits().max_message_size;
            let size = super::session::message_size(&metadata, &payload);
            if size as u64 > u64::from(max) {
                return Err(Failure::TooLarge { size, max });
            }
        }
        self.pending.push_back(Queued::Message(QueuedMessage {
            id,
            content_type,
            metadata,
            payload,
        }));
        self.pump_sends();
        self.absorb(now);
        Ok(())
    }

    /// Queues a stream open; [`Output::StreamReady`] follows once the peer's `max_streams`
    /// allows it.
    pub fn open_stream(
        &mut self,
        id: SendId,
        content_type: String,
        total_len: Option<u64>,
        now: Duration,
    ) -> Result<(), Failure> {
        self.open_stream_with(id, content_type, total_len, None, Bytes::new(), now)
    }

    /// [`Connection::open_stream`], announcing the payload's BLAKE3 in `STREAM_OPEN` (flag
    /// HASH_KNOWN) and carrying application `metadata` (empty: none). With a hash the
    /// receiver knows the payload before any byte; when both sides set OFFERS the stream is an
    /// offer, whose bytes wait until the receiver accepts and which it may decline (`already
    /// have`). Bytes that do not match the hash abort the stream with `stream integrity` at
    /// its end (PROTOCOL.md §5.2).
    pub fn open_stream_with(
        &mut self,
        id: SendId,
        content_type: String,
        total_len: Option<u64>,
        hash: Option<[u8; 32]>,
        metadata: Bytes,
        now: Duration,
    ) -> Result<(), Failure> {
        self.check_new_send(&content_type, &metadata)?;
        if self.session.as_ref().is_some_and(|s| !s.streams_enabled()) {
            return Err(Failure::StreamsUnsupported);
        }
        self.pending.push_back(Queued::Open(QueuedOpen {
            id,
            content_type,
            total_len,
            hash,
            metadata,
        }));
        self.pump_sends();
        self.absorb(now);
        Ok(())
    }

    fn check_new_send(&self, content_type: &str, metadata: &Bytes) -> Result<(), Failure> {
        if let Some(problem) = crate::wire::content_type_problem(content_type.as_bytes()) {
            return Err(Failure::InvalidContentType(format!(
                "content type {:?} {problem}",
                crate::wire::truncate_utf8(content_type, 64)
            )));
        }
        if metadata.len() > crate::wire::MAX_METADATA_LEN {
            return Err(Failure::InvalidMetadata(format!(
                "metadata of {} bytes, at most {} allowed",
                metadata.len(),
                crate::wire::MAX_METADATA_LEN
            )));
        }
        if !metadata.is_empty() && self.session.as_ref().is_some_and(|s| !s.metadata_enabled()) {
            return Err(Failure::MetadataUnsupported);
        }
        if self.phase == Phase::Closed {
            return Err(Failure::NotSent(CloseCause::Local(
                ReasonCode::Normal,
                "the connection is closed".into(),
            )));
        }
        Ok(())
    }

    /// Hands queued messages and stream opens to the session, in order, while the replay
    /// bound and the peer's `max_streams` allow; stops at the first that must wait.
    fn pump_sends(&mut self) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if self.phase == Phase::Closed {
            return;
        }
        while let Some(q) = self.pending.pop_front() {
            let (id, refused) = match q {
                Queued::Message(m) => match s.send_message(
                    m.content_type.clone(),
                    m.metadata.clone(),
                    m.payload.clone(),
                    Duration::ZERO,
                ) {
                    Ok(seq) => {
                        self.awaiting.insert(seq, m.id);
                        continue;
                    }
                    Err(SendRefusal::Blocked | SendRefusal::Closed) => {
                        self.pending.push_front(Queued::Message(m));
                        return;
                    }
                    Err(r) => (m.id, r),
                },
                Queued::Open(o) => match s.open_stream(
                    o.content_type.clone(),
                    o.total_len,
                    o.hash,
                    o.metadata.clone(),
                ) {
                    Ok(id) => {
                        self.out.insert(id, OutStream::default());
                        self.outputs.push_back(Output::StreamReady {
                            open: o.id,
                            key: StreamKey {
                                epoch: self.epoch,
                                id,
                            },
                        });
                        continue;
                    }
                    Err(SendRefusal::Blocked | SendRefusal::Closed) => {
                        self.pending.push_front(Queued::Open(o));
                        return;
                    }
                    Err(r) => (o.id, r),
                },
            };
            let failure = match refused {
                SendRefusal::TooLarge { size, max } => Failure::TooLarge { size, max },
                SendRefusal::StreamsUnsupported => Failure::StreamsUnsupported,
                SendRefusal::MetadataUnsupported => Failure::MetadataUnsupported,
                // Both wait above; never here.
                SendRefusal::Blocked | SendRefusal::Closed => Failure::NotSent(CloseCause::Local(
                    ReasonCode::InternalError,
                    "refused while waiting".into(),
                )),
            };
            self.outputs.push_back(Output::Failed(id, failure));
        }
    }

    fn fail(&mut self, id: SendId, failure: Failure) {
        self.outputs.push_back(Output::Failed(id, failure));
    }

    // ----- outgoing streams -----

    fn out_mut(&mut self, key: StreamKey) -> Option<&mut OutStream> {
        if key.epoch != self.epoch {
            return None;
        }
        self.out.get_mut(&key.id)
    }

    /// Whether outgoing stream `key` takes more from the application now (it holds at most one
    /// piece of data ahead of the credit).
    pub fn accepts_data(&self, key: StreamKey) -> bool {
        key.epoch == self.epoch
            && self
                .out
                .get(&key.id)
                .is_some_and(|o| o.pending.is_none() && o.closing.is_none() && !o.ended)
    }

    /// The application's next piece of stream `key` (only when [`Connection::accepts_data`]).
    pub fn stream_data(&mut self, key: StreamKey, data: Bytes) {
        if let Some(o) = self
            .out_mut(key)
            .filter(|o| !o.ended && o.closing.is_none())
        {
            if !data.is_empty() {
                o.pending = Some(data);
            }
        }
    }

    /// The application finished stream `key`: `STREAM_END` once its data has gone.
    pub fn stream_finish(&mut self, key: StreamKey) {
        if let Some(o) = self
            .out_mut(key)
            .filter(|o| !o.ended && o.closing.is_none())
        {
            o.closing = Some(Closing::Finish);
        }
    }

    /// The application gave up on stream `key`: `STREAM_ABORT`, data not sent yet dropped.
    /// `normal` is no reason to abort (PROTOCOL.md §5.5): it goes out as `cancelled`.
    pub fn stream_abort(&mut self, key: StreamKey, reason: ReasonCode, text: String) {
        let reason = if reason == ReasonCode::Normal {
            ReasonCode::Cancelled
        } else {
            reason
        };
        if let Some(o) = self.out_mut(key).filter(|o| !o.ended) {
            o.pending = None;
            o.closing = Some(Closing::Abort(reason, text));
        }
    }

    /// Whether a stream has data that credit allows to send now (the driver then finds a writer
    /// slot for a chunk).
    pub fn wants_chunk_slot(&self) -> bool {
        let Some(s) = self
            .session
            .as_ref()
            .filter(|_| self.phase == Phase::Connected)
        else {
            return false;
        };
        self.out
            .iter()
            .any(|(id, o)| o.pending.is_some() && s.stream_capacity(*id) > 0)
    }

    /// Gives the session the next piece of stream work, round robin: a chunk (only if
    /// `chunk_slot`), or a finish/abort whose data has gone. Returns whether it did.
    fn schedule_streams(&mut self, chunk_slot: bool) -> bool {
        let Some(s) = self.session.as_mut() else {
            return false;
        };
        let after = self.last_served;
        let order: Vec<u64> = self
            .out
            .range(after + 1..)
            .chain(self.out.range(..=after))
            .map(|(id, _)| *id)
            .collect();
        for id in order {
            let Some(o) = self.out.get_mut(&id) else {
                continue;
            };
            if let Some(p) = o.pending.as_mut() {
                if !chunk_slot {
                    continue;
                }
                let cap = s.stream_capacity(id) as usize;
                if cap == 0 {
                    continue;
                }
                let chunk = if p.len() <= cap {
                    o.pending.take().unwrap_or_default()
                } else {
                    p.split_to(cap)
                };
                let n = chunk.len() as u64;
                match s.stream_write(id, chunk) {
                    Ok(()) => self.outputs.push_back(Output::StreamSent {
                        key: StreamKey {
                            epoch: self.epoch,
                            id,
                        },
                        n,
                    }),
                    Err(_) => {
                        // More than the announced length: the bytes cannot go out as written,
                        // and dropping some would corrupt the stream. It fails, truthfully.
                        o.pending = None;
                        o.closing = None;
                        o.ended = true;
                        let _ = s.stream_abort(
                            id,
                            ReasonCode::StreamIntegrity,
                            "the application wrote more than the announced length".into(),
                        );
                    }
                }
                self.last_served = id;
                return true;
            }
            if let Some(c) = o.closing.take() {
                o.ended = true;
                let _ = match c {
                    Closing::Finish => s.stream_finish(id),
                    Closing::Abort(r, t) => s.stream_abort(id, r, t),
                };
                self.last_served = id;
                return true;
            }
        }
        false
    }

    // ----- incoming streams -----

    /// Whether the application has taken every byte received of an incoming stream that has
    /// not ended (and is no pending offer): it may be waiting for more, which only reading the
    /// connection brings.
    pub fn incoming_starved(&self) -> bool {
        self.session.as_ref().is_some_and(Session::incoming_starved)
    }

    /// The application accepts incoming offer `key` (it starts reading it): its bytes may
    /// flow. Nothing for a stream that is no pending offer.
    pub fn stream_accept(&mut self, key: StreamKey, now: Duration) {
        if key.epoch != self.epoch || self.phase == Phase::Closed {
            return;
        }
        if let Some(s) = self.session.as_mut() {
            s.stream_accept(key.id);
            self.absorb(now);
        }
    }

    /// The application took `n` bytes of incoming stream `key`: credit may be due.
    pub fn stream_consumed(&mut self, key: StreamKey, n: u64, now: Duration) {
        if key.epoch != self.epoch || self.phase == Phase::Closed {
            return;
        }
        if let Some(s) = self.session.as_mut() {
            s.stream_consumed(key.id, n);
            self.absorb(now);
        }
    }

    /// The application let go of incoming stream `key`, with its verdict on a verified stream
    /// (`None`: kept). See [`Session::stream_release`].
    pub fn stream_release(
        &mut self,
        key: StreamKey,
        verdict: Option<(ReasonCode, String)>,
        now: Duration,
    ) {
        if key.epoch != self.epoch || self.phase == Phase::Closed {
            return;
        }
        self.incoming.remove(&key.id);
        if let Some(s) = self.session.as_mut() {
            s.stream_release(key.id, verdict);
            self.absorb(now);
        }
    }

    // ----- the wire -----

    /// Processes one frame from the peer.
    pub fn handle_frame(&mut self, frame: Frame, now: Duration) {
        if let (Phase::Connected, Some(s)) = (self.phase, self.session.as_mut()) {
            s.handle_frame(frame, now);
            self.absorb(now);
        }
    }

    /// The driver stops reading the connection because its application is behind (`false`),
    /// or reads again (`true`); see [`Session::set_reading`]. Idempotent.
    pub fn set_reading(&mut self, reading: bool, now: Duration) {
        if let (Phase::Connected, Some(s)) = (self.phase, self.session.as_mut()) {
            s.set_reading(reading, now);
        }
    }

    /// Advances timers: acks, pings, the idle timeout, the resume window.
    pub fn handle_timeout(&mut self, now: Duration) {
        match (self.phase, self.session.as_mut(), self.p.resume) {
            (Phase::Connected, Some(s), _) => {
                s.handle_timeout(now);
                self.absorb(now);
            }
            (Phase::Suspended, _, Resume::Await(window))
                if now.saturating_sub(self.suspended_at) >= window =>
            {
                self.finish(CloseCause::Local(
                    ReasonCode::SessionExpired,
                    format!(
                        "the peer did not come back within {} ms",
                        window.as_millis()
                    ),
                ));
            }
            _ => {}
        }
    }

    /// When [`Connection::handle_timeout`] next has work, if ever.
    pub fn poll_timeout(&self) -> Option<Duration> {
        match (self.phase, &self.session, self.p.resume) {
            (Phase::Connected, Some(s), _) => s.poll_timeout(),
            (Phase::Suspended, _, Resume::Await(window)) => Some(self.suspended_at + window),
            _ => None,
        }
    }

    /// The next frame to write, and its lane. `chunk_slot`: the writer has room for a stream
    /// chunk (stream data is cut only then; retransmissions after a resume go regardless).
    pub fn poll_transmit(&mut self, now: Duration, chunk_slot: bool) -> Option<(Frame, Lane)> {
        if !matches!(self.phase, Phase::Connected | Phase::Closed) {
            return None;
        }
        let mut frame = self.session.as_mut()?.poll_transmit(now);
        if frame.is_none() && self.phase == Phase::Connected && self.schedule_streams(chunk_slot) {
            frame = self.session.as_mut()?.poll_transmit(now);
            self.absorb(now);
        }
        frame.map(|f| {
            let lane = match f {
                Frame::StreamChunk(_)
                | Frame::StreamEnd(_)
                | Frame::StreamAbort(_)
                | Frame::GoAway(_) => Lane::Bulk,
                _ => Lane::Urgent,
            };
            (f, lane)
        })
    }

    /// The next output for the driver, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    // ----- from the session's events to the connection's outputs -----

    /// Translates what the session produced.
    fn absorb(&mut self, now: Duration) {
        let epoch = self.epoch;
        while let Some(event) = self.session.as_mut().and_then(Session::poll_event) {
            let key = |id| StreamKey { epoch, id };
            match event {
                Event::Message {
                    content_type,
                    metadata,
                    payload,
                    ..
                } => self.outputs.push_back(Output::Message {
                    content_type,
                    metadata,
                    payload,
                }),
                Event::Acked { up_to } => {
                    let rest = self.awaiting.split_off(&(up_to + 1));
                    for (_, id) in std::mem::replace(&mut self.awaiting, rest) {
                        self.outputs.push_back(Output::Delivered(id));
                    }
                    self.pump_sends();
                }
                Event::Rtt(rtt) => self.outputs.push_back(Output::Rtt(rtt)),
                Event::Health { degraded, rtt, why } => {
                    self.outputs
                        .push_back(Output::Health { degraded, rtt, why })
                }
                Event::StreamOpened {
                    id,
                    content_type,
                    total_len,
                    hash,
                    metadata,
                    offer,
                } => {
                    self.incoming.insert(id, false);
                    self.outputs.push_back(Output::Incoming {
                        key: key(id),
                        content_type,
                        total_len,
                        hash,
                        metadata,
                        offer,
                    });
                }
                Event::StreamData { id, data } => {
                    self.outputs.push_back(Output::Data { key: key(id), data });
                }
                Event::StreamEnded { id, result } => {
                    if let Some(ended) = self.incoming.get_mut(&id) {
                        *ended = true;
                    }
                    self.outputs.push_back(Output::Ended {
                        key: key(id),
                        result: result.map_err(|(r, t)| InFailure::Failed(r, t)),
                    });
                }
                Event::StreamAcked { id, acked } => {
                    self.outputs.push_back(Output::StreamAcked {
                        key: key(id),
                        acked,
                    });
                }
                Event::StreamSettled { id, result } => {
                    self.out.remove(&id);
                    self.outputs.push_back(Output::StreamSettled {
                        key: key(id),
                        result: result
                            .map_err(|(reason, detail)| Failure::Stream { reason, detail }),
                    });
                    self.pump_sends();
                }
                Event::Closed(cause) => self.connection_ended(cause, now),
            }
        }
    }

    /// The attached connection ended: suspend the session if it may continue, end it if not.
    fn connection_ended(&mut self, cause: CloseCause, now: Duration) {
        let may_resume = self.p.resume != Resume::Never && cause.resumable();
        if may_resume && self.session.as_mut().is_some_and(Session::suspend) {
            self.phase = Phase::Suspended;
            self.suspended_at = now;
            self.outputs.push_back(Output::Suspended(cause));
        } else {
            self.finish(cause);
        }
    }

    /// The session is over: every send and stream settles, then [`Output::Closed`].
    fn finish(&mut self, cause: CloseCause) {
        if self.phase == Phase::Closed {
            return;
        }
        self.phase = Phase::Closed;
        let on_wire = self.session.as_ref().map_or(0, Session::wire_seq);
        for (seq, id) in std::mem::take(&mut self.awaiting) {
            let failure = if seq <= on_wire {
                Failure::Unknown(cause.clone())
            } else {
                Failure::NotSent(cause.clone())
            };
            self.fail(id, failure);
        }
        for q in std::mem::take(&mut self.pending) {
            self.fail(q.id(), Failure::NotSent(cause.clone()));
        }
        let epoch = self.epoch;
        for (id, _) in std::mem::take(&mut self.out) {
            let opened_on_wire = self
                .session
                .as_ref()
                .and_then(|s| s.out_open_seq(id))
                .is_some_and(|seq| seq <= on_wire);
            let failure = if opened_on_wire {
                Failure::Unknown(cause.clone())
            } else {
                Failure::NotSent(cause.clone())
            };
            self.outputs.push_back(Output::StreamSettled {
                key: StreamKey { epoch, id },
                result: Err(failure),
            });
        }
        for (id, ended) in std::mem::take(&mut self.incoming) {
            if !ended {
                self.outputs.push_back(Output::Ended {
                    key: StreamKey { epoch, id },
                    result: Err(InFailure::Closed(cause.clone())),
                });
            }
        }
        self.outputs.push_back(Output::Closed(cause));
    }

    /// Checks the memory and credit promises (for tests and fuzzing): the credit this side
    /// granted never exceeds its windows, and no accounting ran backwards.
    pub fn check_invariants(&self) -> Result<(), String> {
        match &self.session {
            Some(s) if self.phase == Phase::Connected => s.check_invariants(),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
