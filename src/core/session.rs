//! One connection's session state: sequence numbers, cumulative acknowledgements, the replay
//! accounting that bounds unacknowledged bytes, heartbeats and the idle deadline
//! (PROTOCOL.md §5, §6).

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use super::streams::{Inbound, StreamParams, StreamRefusal, Streams};
use crate::wire::{
    Ack, Frame, GoAway, MessageFrame, PeerLimits, Ping, Pong, ReasonCode, StreamOpen, StreamResult,
};

/// Settings of a [`Session`], from the local configuration and the peer's `HELLO`.
#[derive(Clone, Debug)]
pub struct SessionParams {
    /// Acknowledge after this many sequenced frames at most.
    pub ack_every: u32,
    /// … or after this delay at most.
    pub ack_delay: Duration,
    /// Ping when nothing was sent for this long.
    pub heartbeat_interval: Duration,
    /// Close with `idle timeout` when nothing was received for this long.
    pub idle_timeout: Duration,
    /// Report the connection degraded when the smoothed round-trip time exceeds this (or a
    /// ping goes unanswered for a heartbeat interval).
    pub degraded_rtt: Duration,
    /// Bytes of unacknowledged payload this side may have outstanding.
    pub replay_buffer_bytes: u64,
    /// What the peer announced it enforces.
    pub peer_limits: PeerLimits,
    /// Whether both sides announced the STREAMS capability.
    pub streams: bool,
    /// Whether both sides announced METADATA: only then may frames carry metadata.
    pub metadata: bool,
    /// Whether both sides announced OFFERS: a stream whose BLAKE3 is announced goes as an
    /// offer, and the peer may send offers.
    pub offers: bool,
    /// Bytes of stream data per chunk we send (capped by the peer's frame limit).
    pub chunk_size: u32,
    /// Credit we grant each incoming stream.
    pub stream_window: u32,
    /// Credit we grant all incoming streams together.
    pub connection_window: u32,
    /// Most incoming streams open at once.
    pub max_streams: u16,
    /// Largest `MESSAGE` payload we accept (what our `HELLO` announced); a larger one closes
    /// the connection with `limit exceeded` (PROTOCOL.md §5.1).
    pub max_message_size: u32,
}

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseCause {
    /// This side closed it, for this reason.
    Local(ReasonCode, String),
    /// The peer closed it, for this reason.
    Peer(ReasonCode, String),
    /// The connection broke underneath (reset, end of stream, write failure).
    Lost(String),
}

impl CloseCause {
    /// Whether the session may continue on a new connection after this cause: the network
    /// broke the connection (end of stream, reset, write failure, or an idle timeout on either
    /// side). A close either application asked for, or a protocol violation, ends the session.
    /// This is the one place the rule lives (PROTOCOL.md §4).
    pub fn resumable(&self) -> bool {
        match self {
            Self::Lost(_) => true,
            Self::Local(r, _) | Self::Peer(r, _) => *r == ReasonCode::IdleTimeout,
        }
    }

    /// The reason code, when one was given.
    pub fn reason(&self) -> Option<ReasonCode> {
        match self {
            Self::Local(r, _) | Self::Peer(r, _) => Some(*r),
            Self::Lost(_) => None,
        }
    }
}

impl fmt::Display for CloseCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let detail = |d: &str| {
            if d.is_empty() {
                String::new()
            } else {
                format!(": {d}")
            }
        };
        match self {
            Self::Local(r, d) => write!(f, "closed locally with {r}{}", detail(d)),
            Self::Peer(r, d) => write!(f, "closed by peer with {r}{}", detail(d)),
            Self::Lost(d) => write!(f, "connection lost: {d}"),
        }
    }
}

/// What the session tells the application (through the driver).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A message arrived, in order, exactly once.
    Message {
        /// Its sequence number.
        seq: u64,
        /// Its content type.
        content_type: String,
        /// Its application metadata (empty if none).
        metadata: Bytes,
        /// Its payload.
        payload: Bytes,
    },
    /// The peer acknowledged every sequence number up to and including `up_to`.
    Acked {
        /// The new cumulative acknowledgement.
        up_to: u64,
    },
    /// A `PONG` measured this round-trip time.
    Rtt(Duration),
    /// The connection's health changed: degraded (a ping unanswered for a heartbeat
    /// interval, or the smoothed round-trip time above the threshold) or healthy again.
    Health {
        /// Whether it is degraded now.
        degraded: bool,
        /// The smoothed round-trip time, once measured.
        rtt: Option<Duration>,
        /// Why, in words (for the log).
        why: String,
    },
    /// The peer opened a stream (in sequence order with messages).
    StreamOpened {
        /// The peer's stream id.
        id: u64,
        /// Its content type.
        content_type: String,
        /// Its length, if announced.
        total_len: Option<u64>,
        /// Its BLAKE3, if announced.
        hash: Option<[u8; 32]>,
        /// Its application metadata (empty if none).
        metadata: Bytes,
        /// An offer: no bytes come until [`Session::stream_accept`].
        offer: bool,
    },
    /// Bytes of an incoming stream, in order.
    StreamData {
        /// The stream.
        id: u64,
        /// The bytes.
        data: Bytes,
    },
    /// An incoming stream ended: whole and verified (with the payload's BLAKE3), or failed
    /// (reason, detail).
    StreamEnded {
        /// The stream.
        id: u64,
        /// The outcome.
        result: Result<[u8; 32], (ReasonCode, String)>,
    },
    /// The peer acknowledged bytes of one of our streams (for progress, and resumption).
    StreamAcked {
        /// Our stream.
        id: u64,
        /// Bytes received in order by the peer.
        acked: u64,
    },
    /// The peer settled one of our streams (`STREAM_RESULT`).
    StreamSettled {
        /// Our stream.
        id: u64,
        /// Delivered and verified, or why not.
        result: Result<(), (ReasonCode, String)>,
    },
    /// The session ended; nothing more will be sent or delivered.
    Closed(CloseCause),
}

/// Why [`Session::send_message`] did not take a message. Nothing was queued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendRefusal {
    /// The payload exceeds the peer's `max_message_size`: send it as a stream.
    TooLarge {
        /// The payload size.
        size: usize,
        /// The peer's limit.
        max: u32,
    },
    /// Unacknowledged bytes would exceed the replay bound: retry after an [`Event::Acked`].
    Blocked,
    /// The session is closed.
    Closed,
    /// The peer did not announce the STREAMS capability.
    StreamsUnsupported,
    /// Metadata for a peer that did not announce the METADATA capability.
    MetadataUnsupported,
}

/// The session core of one connection. See the [module docs](super) for the run loop.
#[derive(Debug)]
pub struct Session {
    p: SessionParams,
    /// Highest sequence number assigned to an outgoing frame.
    sent_seq: u64,
    /// Highest sequence number the peer acknowledged.
    peer_acked: u64,
    /// The replay buffer: outgoing sequenced frames not yet acknowledged, with their payload
    /// bytes (bounded by `replay_buffer_bytes`; payloads are shared `Bytes`, not copies).
    unacked: VecDeque<(u64, usize, Frame)>,
    unacked_bytes: u64,
    /// What the replay buffer costs: every retained frame's encoded size, header included, and
    /// its bookkeeping ([`retained_cost`]); bounded by `replay_buffer_bytes`.
    retained: u64,
    /// Highest sequence number received in order.
    received: u64,
    /// Sequenced frames received since the last `ACK` we sent.
    unacked_received: u32,
    ack_due: Option<Duration>,
    last_recv: Duration,
    last_send: Duration,
    outbox: VecDeque<Frame>,
    events: VecDeque<Event>,
    closed: bool,
    streams: Streams,
    /// When the oldest unanswered `PING` left.
    ping_sent_at: Option<Duration>,
    /// Smoothed round-trip time (RFC 6298 weights: 7/8 old, 1/8 new).
    srtt: Option<Duration>,
    /// The latest round-trip sample.
    last_rtt: Option<Duration>,
    /// When the last `PING` left.
    last_ping: Duration,
    /// The connection is gone but the session is kept for resumption.
    suspended: bool,
    /// Why the last connection ended (decides whether the session may be resumed).
    last_cause: Option<CloseCause>,
    degraded: bool,
    /// Payload bytes queued again by resumes: replayed sequenced frames and stream data.
    retransmitted: u64,
    /// Highest sequence number handed to the connection by [`Session::poll_transmit`]:
    /// sequenced frames above it never left this side (their fate is known).
    wire_seq: u64,
    /// The driver does not read the connection (its application is behind): silence is
    /// ours, not the peer's ([`Session::set_reading`]).
    not_reading: bool,
    /// Pongs echoing a ping sent before this instant waited behind a pause in our reading:
    /// they prove life but measure no round trip.
    rtt_from: Duration,
}

/// What a session that the peer lost leaves behind ([`Session::abandon`]).
#[derive(Debug, Default)]
pub struct Abandoned {
    /// Sequence numbers that were on the wire and never acknowledged: fate unknown.
    pub unknown: Vec<u64>,
    /// `MESSAGE`s that never left this side, in order: they may go on a new session.
    pub unsent: Vec<(u64, MessageFrame)>,
    /// Outgoing streams still open: id, and whether their `STREAM_OPEN` was on the wire.
    pub out_streams: Vec<(u64, bool)>,
    /// Incoming streams the application still holds.
    pub in_streams: Vec<u64>,
}

impl Session {
    /// A fresh session (sequence numbers from 1) starting at `now`.
    pub fn new(p: SessionParams, now: Duration) -> Self {
        let streams = Streams::new(StreamParams {
            stream_window: u64::from(p.stream_window),
            connection_window: u64::from(p.connection_window),
            max_incoming: usize::from(p.max_streams),
            max_chunk: u64::from(p.chunk_size).min(u64::from(
                p.peer_limits
                    .max_frame_size
                    .saturating_sub(PeerLimits::CHUNK_OVERHEAD),
            )),
            peer_stream_window: u64::from(p.peer_limits.stream_window),
            peer_connection_window: u64::from(p.peer_limits.connection_window),
            peer_max_streams: usize::from(p.peer_limits.max_streams),
        });
        Self {
            streams,
            p,
            sent_seq: 0,
            peer_acked: 0,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            retained: 0,
            received: 0,
            unacked_received: 0,
            ack_due: None,
            last_recv: now,
            last_send: now,
            outbox: VecDeque::new(),
            retransmitted: 0,
            events: VecDeque::new(),
            closed: false,
            ping_sent_at: None,
            srtt: None,
            last_rtt: None,
            last_ping: now,
            suspended: false,
            last_cause: None,
            degraded: false,
            wire_seq: 0,
            not_reading: false,
            rtt_from: now,
        }
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The peer's announced limits.
    pub fn peer_limits(&self) -> PeerLimits {
        self.p.peer_limits
    }

    /// Whether both sides announced the METADATA capability.
    pub fn metadata_enabled(&self) -> bool {
        self.p.metadata
    }

    /// Whether both sides announced STREAMS.
    pub fn streams_enabled(&self) -> bool {
        self.p.streams
    }

    /// Highest sequence number that went to the connection ([`Session::poll_transmit`]).
    pub fn wire_seq(&self) -> u64 {
        self.wire_seq
    }

    /// The sequence number of outgoing stream `id`'s `STREAM_OPEN`, while it is open.
    pub fn out_open_seq(&self, id: u64) -> Option<u64> {
        self.streams.out.get(&id).map(|s| s.open_seq)
    }

    /// Checks the session's promises: the replay buffer holds only unacknowledged frames;
    /// credit granted on this connection never exceeds what was consumed plus the window,
    /// nothing consumed that was not received, and each stream's grant stays within consumed
    /// plus its window.
    pub fn check_invariants(&self) -> Result<(), String> {
        // The replay buffer holds only what the peer has not acknowledged.
        if let Some((seq, _, _)) = self.unacked.front() {
            if *seq <= self.peer_acked {
                return Err(format!(
                    "replay buffer holds frame {seq}, acknowledged up to {}",
                    self.peer_acked
                ));
            }
        }
        let (received, consumed, granted, window) = self.streams.connection_accounting();
        if consumed > received {
            return Err(format!(
                "connection: consumed {consumed} > received {received}"
            ));
        }
        if received > granted {
            return Err(format!(
                "connection: received {received} > granted {granted}"
            ));
        }
        // What is buffered stays within the window, plus (only for starved streams, see
        // `Streams::starved_credit`) a stream window per open incoming stream.
        let starved_room = self.streams.incoming_count() as u64 * self.streams.stream_window();
        if received - consumed > window + starved_room {
            return Err(format!(
                "connection: {} bytes buffered > window {window} + {starved_room}",
                received - consumed
            ));
        }
        let sw = self.streams.stream_window();
        for (id, st) in &self.streams.incoming {
            if st.consumed > st.received || st.received > st.granted {
                return Err(format!(
                    "stream {id}: consumed {} received {} granted {}",
                    st.consumed, st.received, st.granted
                ));
            }
            if st.granted > st.consumed + sw {
                return Err(format!(
                    "stream {id}: granted {} > consumed {} + window {sw}",
                    st.granted, st.consumed
                ));
            }
            if st.carried > st.received - st.consumed {
                return Err(format!("stream {id}: carried {} > unread", st.carried));
            }
        }
        Ok(())
    }

    /// Highest sequence number received in order.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Bytes of payload sent and not yet acknowledged (after a resume: what is being
    /// retransmitted).
    pub fn unacked_bytes(&self) -> u64 {
        self.unacked_bytes
    }

    /// Sequenced frames sent and not yet acknowledged.
    pub fn unacked_frames(&self) -> usize {
        self.unacked.len()
    }

    /// Queues a message; returns its sequence number. It is delivered when an
    /// [`Event::Acked`] covers that number.
    ///
    /// `metadata` (empty: none) counts against the peer's `max_message_size` with its 2-byte
    /// length (PROTOCOL.md §5.1).
    pub fn send_message(
        &mut self,
        content_type: String,
        metadata: Bytes,
        payload: Bytes,
        _now: Duration,
    ) -> Result<u64, SendRefusal> {
        if self.closed {
            return Err(SendRefusal::Closed);
        }
        if !metadata.is_empty() && !self.p.metadata {
            return Err(SendRefusal::MetadataUnsupported);
        }
        let max = self.p.peer_limits.max_message_size;
        let size = message_size(&metadata, &payload);
        if size as u64 > u64::from(max) {
            return Err(SendRefusal::TooLarge { size, max });
        }
        // One message always fits, however large, so the bound can never wedge the sender.
        let cost = (RETAINED_OVERHEAD + 17 + content_type.len() + size) as u64;
        if !self.unacked.is_empty() && !self.has_room(cost) {
            return Err(SendRefusal::Blocked);
        }
        let seq = self.next_seq();
        self.sequenced(
            size,
            Frame::Message(MessageFrame {
                seq,
                content_type,
                metadata,
                payload,
            }),
        );
        Ok(seq)
    }

    /// Processes one frame from the peer.
    pub fn handle_frame(&mut self, frame: Frame, now: Duration) {
        if self.closed {
            return;
        }
        // Any frame is proof of life (PROTOCOL.md §6.3).
        self.last_recv = now;
        let streams_frame = matches!(
            frame,
            Frame::StreamOpen(_)
                | Frame::StreamChunk(_)
                | Frame::StreamEnd(_)
                | Frame::StreamAbort(_)
                | Frame::StreamResult(_)
                | Frame::Credit(_)
        );
        if streams_frame && !self.p.streams {
            self.close(
                ReasonCode::ProtocolError,
                "stream frames without the STREAMS capability".into(),
            );
            return;
        }
        let (metadata, offer) = match &frame {
            Frame::Message(m) => (!m.metadata.is_empty(), false),
            Frame::StreamOpen(o) => (!o.metadata.is_empty(), o.offer),
            _ => (false, false),
        };
        if (metadata && !self.p.metadata) || (offer && !self.p.offers) {
            let what = if metadata { "METADATA" } else { "OFFERS" };
            self.close(
                ReasonCode::ProtocolError,
                format!("{} flag without the {what} capability", frame.frame_type()),
            );
            return;
        }
        if let Frame::Message(m) = &frame {
            let size = message_size(&m.metadata, &m.payload);
            if size as u64 > u64::from(self.p.max_message_size) {
                self.close(
                    ReasonCode::LimitExceeded,
                    format!(
                        "MESSAGE of {size} bytes over our max_message_size {}",
                        self.p.max_message_size
                    ),
                );
                return;
            }
        }
        // Sequenced frames: take the next, drop a retransmission, close on a gap.
        if let Some(seq) = frame.seq() {
            if seq <= self.received {
                // A retransmission of something we have: drop it, but acknowledge again.
                self.note_received(now);
                return;
            }
            if seq != self.received + 1 {
                self.close(
                    ReasonCode::ProtocolError,
                    format!("sequence gap: expected {}, got {seq}", self.received + 1),
                );
                return;
            }
            self.received = seq;
            self.note_received(now);
        }
        match frame {
            Frame::Message(m) => self.events.push_back(Event::Message {
                seq: m.seq,
                content_type: m.content_type,
                metadata: m.metadata,
                payload: m.payload,
            }),
            Frame::StreamOpen(o) => {
                match self
                    .streams
                    .on_open(o.stream_id, o.total_len, o.hash, o.offer)
                {
                    Ok(()) => self.events.push_back(Event::StreamOpened {
                        id: o.stream_id,
                        content_type: o.content_type,
                        total_len: o.total_len,
                        hash: o.hash,
                        metadata: o.metadata,
                        offer: o.offer,
                    }),
                    // A violation (an id not above the last, more than max_streams): fatal.
                    Err(fatal) => self.inbound(o.stream_id, fatal),
                }
            }
            Frame::StreamChunk(c) => {
                let id = c.stream_id;
                let inbound = self.streams.on_chunk(c);
                self.inbound(id, inbound);
                if let Some(c) = self.streams.starved_credit() {
                    self.outbox.push_back(Frame::Credit(c));
                }
            }
            Frame::StreamEnd(e) => {
                let inbound = self.streams.on_end(e);
                self.inbound(e.stream_id, inbound);
            }
            Frame::StreamAbort(a) => {
                let inbound = self.streams.on_abort(&a);
                self.inbound(a.stream_id, inbound);
            }
            Frame::StreamResult(r) => {
                if self.streams.settle(r.stream_id) {
                    let result = if r.reason == ReasonCode::Normal {
                        Ok(())
                    } else {
                        Err((r.reason, r.text))
                    };
                    self.events.push_back(Event::StreamSettled {
                        id: r.stream_id,
                        result,
                    });
                } else {
                    self.close(
                        ReasonCode::ProtocolError,
                        format!("STREAM_RESULT for unknown stream {}", r.stream_id),
                    );
                }
            }
            Frame::Credit(c) => {
                match self.streams.credit(c) {
                    Ok(Some((id, acked))) => {
                        self.events.push_back(Event::StreamAcked { id, acked });
                    }
                    Ok(None) => {}
                    Err(e) => self.close(ReasonCode::ProtocolError, e),
                }
                self.pump_resends();
            }
            Frame::Ack(a) => self.apply_ack(a.last_seq),
            Frame::Ping(p) => self.outbox.push_back(Frame::Pong(Pong {
                timestamp_us: p.timestamp_us,
            })),
            Frame::Pong(p) => {
                let now_us = micros(now);
                if p.timestamp_us <= now_us && p.timestamp_us >= micros(self.rtt_from) {
                    let rtt = Duration::from_micros(now_us - p.timestamp_us);
                    self.srtt = Some(match self.srtt {
                        None => rtt,
                        Some(s) => s.mul_f64(0.875) + rtt.mul_f64(0.125),
                    });
                    self.last_rtt = Some(rtt);
                    self.ping_sent_at = None;
                    self.events.push_back(Event::Rtt(rtt));
                    self.update_health(now);
                }
            }
            Frame::GoAway(g) => {
                // What the peer received before leaving counts as delivered.
                self.apply_ack(g.last_seq.min(self.sent_seq));
                if !self.closed {
                    self.end(CloseCause::Peer(g.reason, g.text));
                }
            }
            other => self.close(
                ReasonCode::ProtocolError,
                format!("{} after the handshake", other.frame_type()),
            ),
        }
    }

    /// Opens an outgoing stream; returns its id. Its `STREAM_OPEN` is sequenced with messages.
    /// [`SendRefusal::Blocked`] while the peer's `max_streams` are open.
    ///
    /// A stream whose BLAKE3 is announced goes as an offer when both sides set OFFERS: its
    /// bytes wait until the receiver accepts, and the receiver may decline it (`already
    /// have`) before any byte flows.
    pub fn open_stream(
        &mut self,
        content_type: String,
        total_len: Option<u64>,
        hash: Option<[u8; 32]>,
        metadata: Bytes,
    ) -> Result<u64, SendRefusal> {
        if self.closed {
            return Err(SendRefusal::Closed);
        }
        if !self.p.streams {
            return Err(SendRefusal::StreamsUnsupported);
        }
        if !metadata.is_empty() && !self.p.metadata {
            return Err(SendRefusal::MetadataUnsupported);
        }
        let cost = RETAINED_OVERHEAD + 67 + content_type.len() + metadata.len();
        if !self.streams.can_open() || !self.has_room(cost as u64) {
            return Err(SendRefusal::Blocked);
        }
        let offer = hash.is_some() && self.p.offers;
        let seq = self.next_seq();
        let id = self.streams.open(total_len, hash, seq, offer);
        self.sequenced(
            0,
            Frame::StreamOpen(StreamOpen {
                seq,
                stream_id: id,
                total_len,
                hash,
                offer,
                content_type,
                metadata,
            }),
        );
        Ok(id)
    }

    /// How many bytes stream `id` may send now (at most one chunk; 0 means wait for credit).
    pub fn stream_capacity(&self, id: u64) -> u64 {
        if self.closed {
            0
        } else {
            self.streams.capacity(id)
        }
    }

    /// Queues a chunk of at most [`Session::stream_capacity`] bytes on stream `id`.
    pub fn stream_write(&mut self, id: u64, data: Bytes) -> Result<(), StreamRefusal> {
        if self.closed {
            return Err(StreamRefusal::Unknown);
        }
        let chunk = self.streams.write(id, data)?;
        self.outbox.push_back(Frame::StreamChunk(chunk));
        Ok(())
    }

    /// Ends stream `id`: `STREAM_END` with its length and BLAKE3. The stream settles when the
    /// peer's `STREAM_RESULT` arrives ([`Event::StreamSettled`]).
    pub fn stream_finish(&mut self, id: u64) -> Result<(), StreamRefusal> {
        if self.closed {
            return Err(StreamRefusal::Unknown);
        }
        let held = self.streams.awaiting_accept(id);
        match self.streams.finish(id)? {
            // An offer not accepted yet: its end goes after the receiver's CREDIT.
            Ok(_) if held => {}
            Ok(end) => self.outbox.push_back(Frame::StreamEnd(end)),
            Err(abort) => self.outbox.push_back(Frame::StreamAbort(abort)),
        }
        Ok(())
    }

    /// Gives up on outgoing stream `id`; it settles with the peer's `STREAM_RESULT`.
    pub fn stream_abort(
        &mut self,
        id: u64,
        reason: ReasonCode,
        text: String,
    ) -> Result<(), StreamRefusal> {
        if self.closed {
            return Err(StreamRefusal::Unknown);
        }
        let abort = self.streams.abort(id, reason, text)?;
        self.outbox.push_back(Frame::StreamAbort(abort));
        Ok(())
    }

    /// Whether an incoming stream that has not ended (and is no pending offer) has every byte
    /// received taken by the application.
    pub fn incoming_starved(&self) -> bool {
        self.streams
            .incoming
            .values()
            .any(|s| !s.ended && !s.offer_pending && s.received == s.consumed)
    }

    /// The application accepts incoming offer `id`: the `CREDIT` that lets its bytes flow.
    /// Nothing for a stream that is no pending offer.
    pub fn stream_accept(&mut self, id: u64) {
        if self.closed {
            return;
        }
        if let Some(c) = self.streams.accept(id) {
            self.outbox.push_back(Frame::Credit(c));
        }
    }

    /// The application took `n` bytes of incoming stream `id`: credit may be due.
    pub fn stream_consumed(&mut self, id: u64, n: u64) {
        if self.closed {
            return;
        }
        for c in self.streams.consumed(id, n) {
            self.outbox.push_back(Frame::Credit(c));
        }
        if let Some(c) = self.streams.starved_credit() {
            self.outbox.push_back(Frame::Credit(c));
        }
    }

    /// The application let go of incoming stream `id`, with its verdict: `None` if it kept a
    /// verified stream, `Some((reason, text))` if it refused it. A stream that had not ended,
    /// or whose bytes the application did not all take, is answered `cancelled` (or the
    /// verdict's reason); a verified one read whole is answered now, `normal` or the verdict's
    /// reason; a failed one was answered when it failed. Its unread bytes return to the connection window. Allowed while suspended (the
    /// answer waits in the replay buffer).
    pub fn stream_release(&mut self, id: u64, verdict: Option<(ReasonCode, String)>) {
        if self.closed {
            return;
        }
        let Some((ended, answered, unread)) = self
            .streams
            .incoming
            .get(&id)
            .map(|s| (s.ended, s.answered, s.received - s.consumed))
        else {
            return;
        };
        self.streams.close_incoming(id);
        if !answered {
            let result = match verdict {
                Some((r, t)) if r != ReasonCode::Normal => Err((r, t)),
                _ if !ended => Err((ReasonCode::Cancelled, "the receiver let go".into())),
                _ if unread > 0 => Err((
                    ReasonCode::Cancelled,
                    format!("the receiver let go with {unread} bytes unread"),
                )),
                _ => Ok(()),
            };
            self.settle_incoming(id, result);
        }
        if let Some(c) = self.streams.connection_credit(false) {
            self.outbox.push_back(Frame::Credit(c));
        }
    }

    /// Bytes of outgoing stream data kept for retransmission.
    pub fn stream_retained_bytes(&self) -> u64 {
        self.streams.retained_bytes()
    }

    fn next_seq(&mut self) -> u64 {
        self.sent_seq += 1;
        self.sent_seq
    }

    /// Whether a frame costing `cost` fits in the replay buffer now: within
    /// `replay_buffer_bytes` and [`MAX_RETAINED_FRAMES`].
    fn has_room(&self, cost: u64) -> bool {
        self.retained + cost <= self.p.replay_buffer_bytes
            && self.unacked.len() < MAX_RETAINED_FRAMES
    }

    /// Sends a sequenced frame and keeps it in the replay buffer until acknowledged, counting
    /// `size` payload bytes (for the retransmission figures) and its [`retained_cost`]
    /// against the replay bound.
    fn sequenced(&mut self, size: usize, frame: Frame) {
        self.retained += retained_cost(&frame);
        self.unacked.push_back((self.sent_seq, size, frame.clone()));
        self.unacked_bytes += size as u64;
        self.outbox.push_back(frame);
    }

    /// Acts on what a stream frame meant.
    fn inbound(&mut self, id: u64, inbound: Inbound) {
        match inbound {
            Inbound::Nothing => {}
            Inbound::Data(data) => self.events.push_back(Event::StreamData { id, data }),
            Inbound::Ended(result) => {
                if let Some(s) = self.streams.incoming.get_mut(&id) {
                    s.ended = true;
                }
                self.events.push_back(Event::StreamEnded {
                    id,
                    result: result.clone(),
                });
                // A verified stream is answered when the application lets go of it (it decides
                // whether it kept the payload); a failed one at once.
                if let Err(failure) = result {
                    self.answer_incoming(id, Err(failure));
                }
            }
            Inbound::Fatal(reason, detail) => self.close(reason, detail),
        }
    }

    /// Marks incoming stream `id` answered and sends its `STREAM_RESULT`.
    fn answer_incoming(&mut self, id: u64, result: Result<(), (ReasonCode, String)>) {
        if let Some(s) = self.streams.incoming.get_mut(&id) {
            s.answered = true;
        }
        self.settle_incoming(id, result);
    }

    /// Answers an incoming stream's end with a sequenced `STREAM_RESULT`.
    fn settle_incoming(&mut self, id: u64, result: Result<(), (ReasonCode, String)>) {
        let (reason, text) = match result {
            Ok(()) => (ReasonCode::Normal, String::new()),
            Err((r, t)) => (
                r,
                crate::wire::truncate_utf8(&t, crate::wire::MAX_TEXT_LEN).to_string(),
            ),
        };
        let seq = self.next_seq();
        self.sequenced(
            0,
            Frame::StreamResult(StreamResult {
                seq,
                stream_id: id,
                reason,
                text,
            }),
        );
        // A STREAM_RESULT is owed, not chosen: the peer's streams force it into the replay
        // buffer. A peer that lets the buffer overflow (it opens streams and acknowledges
        // nothing) ends the session rather than grow our memory (PROTOCOL.md §8).
        if self.retained > self.p.replay_buffer_bytes + FORCED_HEADROOM
            || self.unacked.len() > MAX_RETAINED_FRAMES + FORCED_FRAMES
        {
            self.close(
                ReasonCode::ReplayOverflow,
                format!(
                    "the peer acknowledged nothing of {} sequenced frames ({} bytes retained)",
                    self.unacked.len(),
                    self.retained
                ),
            );
        }
    }

    /// The connection broke but the session is to be kept for resumption (PROTOCOL.md §4):
    /// what was queued for the wire is dropped (the replay buffer keeps every unacknowledged
    /// sequenced frame), timers stop, sends keep queueing into the replay buffer.
    ///
    /// Returns false, and keeps nothing, if the session cannot be resumed (it was closed on
    /// purpose) — treat it as ended. Open streams are kept and continue from where the
    /// receiver is after [`Session::resume`].
    ///
    /// A session whose connection was lost (end of stream, reset, idle timeout on either side)
    /// may be suspended even though [`Session::is_closed`] said so; one closed on purpose may
    /// not.
    pub fn suspend(&mut self) -> bool {
        self.outbox.clear();
        if !self.last_cause.as_ref().is_none_or(CloseCause::resumable) {
            return false;
        }
        self.closed = false;
        self.last_cause = None;
        self.suspended = true;
        true
    }

    /// Whether the session waits for a new connection.
    pub fn is_suspended(&self) -> bool {
        self.suspended
    }

    /// Whether a peer that says it received our sequenced frames up to `peer_received` can be
    /// right: not beyond what we sent, not below what it had already acknowledged.
    pub fn resume_point_valid(&self, peer_received: u64) -> bool {
        peer_received <= self.sent_seq && peer_received >= self.peer_acked
    }

    /// Resumes on a new connection at `now`, the peer having received our sequenced frames up
    /// to `peer_received` (from its `RESUME` or `RESUMED`): those count as acknowledged, the
    /// rest of the replay buffer is queued again, in order. The peer drops what it already
    /// has, so nothing is lost or duplicated.
    ///
    /// Fails, changing nothing, when `peer_received` cannot be right: beyond what was sent, or
    /// below what the peer had already acknowledged (it lost state) — the session is lost.
    pub fn resume(
        &mut self,
        peer_received: u64,
        peer_limits: PeerLimits,
        now: Duration,
    ) -> Result<(), String> {
        if !self.suspended {
            return Err("the session is not suspended".into());
        }
        if peer_received > self.sent_seq {
            return Err(format!(
                "peer claims {peer_received} received, {} sent",
                self.sent_seq
            ));
        }
        if peer_received < self.peer_acked {
            return Err(format!(
                "peer claims {peer_received} received after acknowledging {}",
                self.peer_acked
            ));
        }
        self.suspended = false;
        self.p.peer_limits = peer_limits;
        self.apply_ack(peer_received);
        self.outbox.clear();
        self.outbox
            .extend(self.unacked.iter().map(|(_, _, f)| f.clone()));
        self.retransmitted += self.unacked_bytes;
        let credits = self
            .streams
            .resume(peer_received, u64::from(peer_limits.connection_window));
        self.outbox.extend(credits.into_iter().map(Frame::Credit));
        self.pump_resends();
        self.restart_timers(now);
        Ok(())
    }

    /// Queues retransmissions of stream data after a resume, as far as credit allows.
    fn pump_resends(&mut self) {
        while let Some(f) = self.streams.poll_resend() {
            if let Frame::StreamChunk(c) = &f {
                self.retransmitted += c.data.len() as u64;
            }
            self.outbox.push_back(f);
        }
    }

    /// Payload bytes sent again because of resumes so far: the replayed messages (and other
    /// sequenced frames) and the stream data beyond the receiver's offset.
    pub fn retransmitted_bytes(&self) -> u64 {
        self.retransmitted
    }

    /// The peer does not have the session any more (`SESSION_LOST`, or a resume that failed):
    /// this session is over. Says what became of everything in it, for the
    /// [`super::Connection`] to settle and carry over to a fresh session: which sends were on
    /// the wire unacknowledged (fate unknown), which messages never left (they may be sent on
    /// the new session), and which streams were open in either direction. The session is
    /// closed afterwards.
    pub fn abandon(&mut self) -> Abandoned {
        let mut out = Abandoned::default();
        for (seq, _, frame) in self.unacked.drain(..) {
            match frame {
                Frame::Message(m) if seq > self.wire_seq => out.unsent.push((seq, m)),
                _ if seq > self.wire_seq => {}
                _ => out.unknown.push(seq),
            }
        }
        out.out_streams = self
            .streams
            .out
            .iter()
            .map(|(id, s)| (*id, s.open_seq <= self.wire_seq))
            .collect();
        out.in_streams = self.streams.incoming.keys().copied().collect();
        self.unacked_bytes = 0;
        self.retained = 0;
        self.outbox.clear();
        self.suspended = false;
        self.closed = true;
        out
    }

    fn restart_timers(&mut self, now: Duration) {
        self.last_recv = now;
        self.last_send = now;
        self.last_ping = now;
        self.ping_sent_at = None;
        self.unacked_received = 0;
        self.ack_due = None;
        self.not_reading = false;
        self.rtt_from = now;
    }

    /// The driver stops reading the connection (`false`: its application holds as many
    /// deliveries as it may, and TCP pushes back on the peer) or reads again (`true`).
    ///
    /// Time spent not reading is not the peer's silence (PROTOCOL.md §6.3): the idle timeout
    /// and the missed-pong check are off while we do not read, the idle clock starts afresh
    /// when we read again, and a pong for a ping sent before that measures our pause, not the
    /// round trip, so it is no sample. Pings still go out: they are the peer's proof of our
    /// life. Calling it again with the same value changes nothing.
    pub fn set_reading(&mut self, reading: bool, now: Duration) {
        if reading != self.not_reading {
            return;
        }
        self.not_reading = !reading;
        self.ping_sent_at = None;
        if reading {
            self.last_recv = self.last_recv.max(now);
            self.rtt_from = now;
        }
    }

    /// The connection broke underneath: the session ends without a goodbye, and nothing
    /// still queued for the wire (also after a close: its `GOAWAY`) can leave on it.
    pub fn connection_lost(&mut self, detail: String) {
        self.outbox.clear();
        if !self.closed {
            self.end(CloseCause::Lost(detail));
        }
    }

    /// Marks the session ended for `cause` and tells the application.
    fn end(&mut self, cause: CloseCause) {
        self.closed = true;
        self.last_cause = Some(cause.clone());
        self.events.push_back(Event::Closed(cause));
    }

    /// The peer closed the WebSocket with this reason (without a `GOAWAY` first).
    pub fn peer_closed(&mut self, reason: ReasonCode, detail: String) {
        if !self.closed {
            self.outbox.clear();
            self.end(CloseCause::Peer(reason, detail));
        }
    }

    /// Closes the session: queues a `GOAWAY` with `reason`; the driver then closes the
    /// WebSocket with `4000 + reason`.
    pub fn close(&mut self, reason: ReasonCode, detail: String) {
        if self.closed {
            return;
        }
        // Sequenced frames not yet handed to the connection stay here: the session settles
        // them as never sent, so they must not go out before the GOAWAY either.
        let wire = self.wire_seq;
        self.outbox.retain(|f| f.seq().is_none_or(|s| s <= wire));
        self.outbox.push_back(Frame::GoAway(GoAway {
            reason,
            last_seq: self.received,
            text: crate::wire::truncate_utf8(&detail, crate::wire::MAX_TEXT_LEN).to_string(),
        }));
        self.end(CloseCause::Local(reason, detail));
    }

    /// Advances timers: sends a due `ACK` or `PING`, or closes on idle timeout.
    pub fn handle_timeout(&mut self, now: Duration) {
        if self.closed || self.suspended {
            return;
        }
        if !self.not_reading && now.saturating_sub(self.last_recv) >= self.p.idle_timeout {
            self.close(
                ReasonCode::IdleTimeout,
                format!(
                    "nothing received for {} ms",
                    self.p.idle_timeout.as_millis()
                ),
            );
            return;
        }
        if self.ack_due.is_some_and(|d| d <= now) {
            self.queue_ack();
        }
        // A ping every interval, busy or idle: liveness for the peer when we are idle, and a
        // fresh round-trip sample when we are busy (a stale sample would leave a connection
        // reported degraded long after it recovered).
        if now.saturating_sub(self.last_ping) >= self.ping_interval() {
            self.outbox.push_back(Frame::Ping(Ping {
                timestamp_us: micros(now),
            }));
            if !self.not_reading {
                self.ping_sent_at.get_or_insert(now);
            }
            self.last_ping = now;
            self.last_send = now;
        }
        self.update_health(now);
    }

    /// The smoothed round-trip time, once a `PONG` measured it.
    pub fn rtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// Whether the connection is degraded.
    pub fn is_degraded(&self) -> bool {
        self.degraded
    }

    fn update_health(&mut self, now: Duration) {
        let missed = self
            .ping_sent_at
            .is_some_and(|t| now.saturating_sub(t) >= self.p.heartbeat_interval);
        // The latest sample decides: a round trip above the threshold degrades at once, the
        // next fast one recovers (the smoothed value, reported alongside, lags by design).
        let slow = self.last_rtt.is_some_and(|l| l > self.p.degraded_rtt);
        let degraded = missed || slow;
        if degraded != self.degraded {
            self.degraded = degraded;
            let why = if missed {
                format!(
                    "no pong for {} ms",
                    self.ping_sent_at
                        .map_or(0, |t| now.saturating_sub(t).as_millis())
                )
            } else if slow {
                format!(
                    "round trip {} ms above {} ms",
                    self.last_rtt.unwrap_or_default().as_millis(),
                    self.p.degraded_rtt.as_millis()
                )
            } else {
                "pong received, round trip back under the threshold".to_string()
            };
            self.events.push_back(Event::Health {
                degraded,
                rtt: self.srtt,
                why,
            });
        }
    }

    /// When [`Session::handle_timeout`] next has work, if ever.
    pub fn poll_timeout(&self) -> Option<Duration> {
        if self.closed || self.suspended {
            return None;
        }
        let ping = self.last_ping + self.ping_interval();
        let idle = if self.not_reading {
            ping
        } else {
            self.last_recv + self.p.idle_timeout
        };
        Some(
            self.ack_due
                .map_or(idle.min(ping), |a| a.min(idle).min(ping)),
        )
    }

    /// The next frame to send, if any.
    pub fn poll_transmit(&mut self, now: Duration) -> Option<Frame> {
        if self.suspended {
            return None;
        }
        let f = self.outbox.pop_front()?;
        self.last_send = now;
        if let Some(seq) = f.seq() {
            self.wire_seq = self.wire_seq.max(seq);
        }
        Some(f)
    }

    /// The next event for the application, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// We ping at our own interval, but at least twice per peer idle timeout, so a peer with a
    /// shorter timeout than ours never declares us dead (aspnetcore #44197).
    fn ping_interval(&self) -> Duration {
        let peer_half = Duration::from_millis(u64::from(self.p.peer_limits.idle_timeout_ms) / 2);
        // Never faster than the smallest heartbeat a HELLO may announce (PROTOCOL.md §6.3):
        // a peer cannot make us ping hundreds of times a second.
        let floor = Duration::from_millis(u64::from(PeerLimits::HEARTBEAT_MS.0));
        self.p.heartbeat_interval.min(peer_half).max(floor)
    }

    fn note_received(&mut self, now: Duration) {
        self.unacked_received += 1;
        if self.unacked_received >= self.p.ack_every {
            self.queue_ack();
        } else if self.ack_due.is_none() {
            self.ack_due = Some(now + self.p.ack_delay);
        }
    }

    fn queue_ack(&mut self) {
        self.unacked_received = 0;
        self.ack_due = None;
        self.outbox.push_back(Frame::Ack(Ack {
            last_seq: self.received,
        }));
    }

    fn apply_ack(&mut self, last_seq: u64) {
        if last_seq > self.sent_seq {
            self.close(
                ReasonCode::ProtocolError,
                format!("ACK of {last_seq} but only {} sent", self.sent_seq),
            );
            return;
        }
        if last_seq <= self.peer_acked {
            return;
        }
        self.peer_acked = last_seq;
        while self.unacked.front().is_some_and(|(s, _, _)| *s <= last_seq) {
            if let Some((_, size, f)) = self.unacked.pop_front() {
                self.unacked_bytes -= size as u64;
                self.retained -= retained_cost(&f);
            }
        }
        self.events.push_back(Event::Acked { up_to: last_seq });
    }
}

/// Bookkeeping of one retained frame beyond its encoding: its entry in the replay buffer.
const RETAINED_OVERHEAD: usize = std::mem::size_of::<(u64, usize, Frame)>();

/// Most sequenced frames kept unacknowledged; sends beyond wait for an `ACK`.
const MAX_RETAINED_FRAMES: usize = 4096;

/// How far frames the peer forces on us (`STREAM_RESULT`s) may take the replay buffer beyond
/// its bounds before the session ends with `replay overflow`: a correct peer acknowledges
/// within `ack_delay`, and while disconnected at most its `max_streams` results wait.
const FORCED_HEADROOM: u64 = 256 * 1024;
const FORCED_FRAMES: usize = 1024;

/// What retaining `frame` in the replay buffer costs: its encoded size (header included) and
/// its bookkeeping. Only sequenced frames are retained.
fn retained_cost(frame: &Frame) -> u64 {
    let encoded = crate::wire::HEADER_LEN
        + match frame {
            Frame::Message(m) => 9 + m.content_type.len() + m.payload.len(),
            Frame::StreamOpen(o) => 57 + o.content_type.len(),
            Frame::StreamResult(r) => 20 + r.text.len(),
            _ => 0,
        };
    (encoded + RETAINED_OVERHEAD) as u64
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A message's size against `max_message_size`: its payload, plus its metadata and the
/// metadata's 2-byte length when there is metadata (PROTOCOL.md §5.1).
pub(crate) fn message_size(metadata: &Bytes, payload: &Bytes) -> usize {
    payload.len()
        + if metadata.is_empty() {
            0
        } else {
            2 + metadata.len()
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::StreamChunk;
    use crate::wire::examples::example_limits;

    const MS: Duration = Duration::from_millis(1);

    fn params() -> SessionParams {
        SessionParams {
            ack_every: 3,
            ack_delay: 100 * MS,
            heartbeat_interval: 1000 * MS,
            idle_timeout: 3000 * MS,
            degraded_rtt: 500 * MS,
            replay_buffer_bytes: 64 * 1024,
            peer_limits: example_limits(),
            streams: true,
            metadata: true,
            offers: true,
            chunk_size: 64 * 1024,
            stream_window: 2 * 1024 * 1024,
            connection_window: 8 * 1024 * 1024,
            max_streams: 16,
            max_message_size: 1 << 20,
        }
    }

    fn msg(seq: u64, body: &'static [u8]) -> Frame {
        Frame::Message(MessageFrame {
            seq,
            content_type: "text/plain".into(),
            metadata: Bytes::new(),
            payload: Bytes::from_static(body),
        })
    }

    fn drain(s: &mut Session, now: Duration) -> Vec<Frame> {
        std::iter::from_fn(|| s.poll_transmit(now)).collect()
    }

    fn events(s: &mut Session) -> Vec<Event> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    /// Two sessions wired back to back: every frame one sends, the other receives.
    #[test]
    fn messages_flow_in_order_and_are_acknowledged() {
        let mut a = Session::new(params(), Duration::ZERO);
        let mut b = Session::new(params(), Duration::ZERO);
        for (i, body) in [&b"one"[..], b"two", b"six"].into_iter().enumerate() {
            let seq = a
                .send_message(
                    "text/plain".into(),
                    Bytes::new(),
                    Bytes::from_static(body),
                    Duration::ZERO,
                )
                .unwrap_or_else(|e| panic!("{e:?}"));
            assert_eq!(seq, i as u64 + 1);
        }
        for f in drain(&mut a, Duration::ZERO) {
            b.handle_frame(f, MS);
        }
        let got: Vec<_> = events(&mut b)
            .into_iter()
            .filter_map(|e| match e {
                Event::Message { seq, payload, .. } => Some((seq, payload)),
                _ => None,
            })
            .collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[2], (3, Bytes::from_static(b"six")));
        // ack_every = 3: the third message triggers an ACK at once.
        let acks = drain(&mut b, MS);
        assert_eq!(acks, vec![Frame::Ack(Ack { last_seq: 3 })]);
        for f in acks {
            a.handle_frame(f, 2 * MS);
        }
        assert_eq!(events(&mut a), vec![Event::Acked { up_to: 3 }]);
        assert_eq!(a.unacked_bytes(), 0);
    }

    /// Issue 12, item 2 (PROTOCOL.md §5.1): the receiver enforces its own `max_message_size`.
    #[test]
    fn a_message_over_our_limit_closes_with_limit_exceeded() {
        let mut b = Session::new(
            SessionParams {
                max_message_size: 4,
                ..params()
            },
            Duration::ZERO,
        );
        b.handle_frame(msg(1, b"four"), MS);
        assert!(!b.is_closed(), "at the limit is fine");
        b.handle_frame(msg(2, b"five!"), MS);
        let closed = events(&mut b).into_iter().find_map(|e| match e {
            Event::Closed(c) => Some(c),
            _ => None,
        });
        assert!(
            matches!(
                &closed,
                Some(CloseCause::Local(ReasonCode::LimitExceeded, _))
            ),
            "{closed:?}"
        );
    }

    /// Issue 12, item 8 (PROTOCOL.md §6.3): however short the peer's idle timeout, we ping at
    /// most every 100 ms.
    #[test]
    fn the_ping_interval_has_a_floor() {
        let mut p = params();
        p.peer_limits.idle_timeout_ms = 2;
        p.peer_limits.heartbeat_interval_ms = 1;
        let mut s = Session::new(p, Duration::ZERO);
        let mut pings = 0;
        for ms in 1..=1000u32 {
            s.handle_frame(Frame::Pong(Pong { timestamp_us: 0 }), ms * MS);
            s.handle_timeout(ms * MS);
            pings += drain(&mut s, ms * MS)
                .iter()
                .filter(|f| matches!(f, Frame::Ping(_)))
                .count();
        }
        assert!(pings <= 10, "{pings} pings in one second");
        assert!(pings >= 9, "{pings} pings in one second");
    }

    #[test]
    fn a_lone_message_is_acknowledged_after_the_delay() {
        let mut b = Session::new(params(), Duration::ZERO);
        b.handle_frame(msg(1, b"x"), 10 * MS);
        assert!(drain(&mut b, 10 * MS).is_empty());
        assert_eq!(b.poll_timeout(), Some(110 * MS));
        b.handle_timeout(109 * MS);
        assert!(drain(&mut b, 109 * MS).is_empty());
        b.handle_timeout(110 * MS);
        assert_eq!(
            drain(&mut b, 110 * MS),
            vec![Frame::Ack(Ack { last_seq: 1 })]
        );
    }

    #[test]
    fn duplicates_are_dropped_and_gaps_close() {
        let mut b = Session::new(params(), Duration::ZERO);
        b.handle_frame(msg(1, b"x"), MS);
        b.handle_frame(msg(1, b"x"), MS);
        let delivered = events(&mut b)
            .iter()
            .filter(|e| matches!(e, Event::Message { .. }))
            .count();
        assert_eq!(delivered, 1);
        b.handle_frame(msg(3, b"z"), MS);
        assert!(b.is_closed());
        let ev = events(&mut b);
        assert!(
            matches!(&ev[..], [Event::Closed(CloseCause::Local(ReasonCode::ProtocolError, d))] if d.contains("gap")),
            "{ev:?}"
        );
        assert!(matches!(
            drain(&mut b, MS).last(),
            Some(Frame::GoAway(GoAway {
                reason: ReasonCode::ProtocolError,
                last_seq: 1,
                ..
            }))
        ));
    }

    #[test]
    fn the_replay_bound_blocks_then_releases() {
        // Room for an 8-byte and a 2-byte message of type "a/b", each charged its encoded
        // size and bookkeeping.
        let cost = |n: usize| (RETAINED_OVERHEAD + 17 + 3 + n) as u64;
        let mut p = params();
        p.replay_buffer_bytes = cost(8) + cost(2);
        let mut a = Session::new(p, Duration::ZERO);
        let send = |a: &mut Session, n: usize| {
            a.send_message(
                "a/b".into(),
                Bytes::new(),
                Bytes::from(vec![0; n]),
                Duration::ZERO,
            )
        };
        assert_eq!(send(&mut a, 8), Ok(1));
        assert_eq!(send(&mut a, 3), Err(SendRefusal::Blocked));
        assert_eq!(send(&mut a, 2), Ok(2));
        a.handle_frame(Frame::Ack(Ack { last_seq: 1 }), MS);
        assert_eq!(send(&mut a, 3), Ok(3));
        let too_big = example_limits().max_message_size as usize + 1;
        assert!(matches!(
            send(&mut a, too_big),
            Err(SendRefusal::TooLarge { .. })
        ));
    }

    /// A peer that opens and aborts streams and never acknowledges forces a STREAM_RESULT
    /// into our replay buffer each time: the session ends with `replay overflow` instead of
    /// growing (it grew by 184 MiB in 10 s before the bound counted such frames).
    #[test]
    fn a_peer_that_acknowledges_nothing_overflows_the_replay_buffer() {
        let mut p = params();
        p.replay_buffer_bytes = 1 << 20;
        let mut s = Session::new(p.clone(), Duration::ZERO);
        for id in 1..=100_000u64 {
            // One STREAM_OPEN per stream: its sequence number is its id.
            let seq = id;
            s.handle_frame(
                Frame::StreamOpen(StreamOpen {
                    seq,
                    stream_id: id,
                    total_len: None,
                    hash: None,
                    content_type: "a/b".into(),
                    offer: false,
                    metadata: Bytes::new(),
                }),
                MS,
            );
            s.handle_frame(
                Frame::StreamAbort(crate::wire::StreamAbort {
                    stream_id: id,
                    reason: ReasonCode::Cancelled,
                    text: String::new(),
                }),
                MS,
            );
            drain(&mut s, MS);
            assert!(
                s.retained <= p.replay_buffer_bytes + FORCED_HEADROOM + 1024,
                "{} bytes retained",
                s.retained
            );
            if s.is_closed() {
                break;
            }
        }
        assert!(
            matches!(
                &s.last_cause,
                Some(CloseCause::Local(ReasonCode::ReplayOverflow, _))
            ),
            "{:?} after {} frames",
            s.last_cause,
            s.unacked_frames()
        );
    }

    #[test]
    fn an_ack_beyond_what_was_sent_is_a_protocol_error() {
        let mut a = Session::new(params(), Duration::ZERO);
        a.handle_frame(Frame::Ack(Ack { last_seq: 1 }), MS);
        assert!(a.is_closed());
    }

    #[test]
    fn heartbeats_ping_then_idle_timeout_closes() {
        let mut a = Session::new(params(), Duration::ZERO);
        assert_eq!(a.poll_timeout(), Some(1000 * MS));
        a.handle_timeout(1000 * MS);
        assert_eq!(
            drain(&mut a, 1000 * MS),
            vec![Frame::Ping(Ping {
                timestamp_us: 1_000_000
            })]
        );
        // A pong measures the round trip.
        a.handle_frame(
            Frame::Pong(Pong {
                timestamp_us: 1_000_000,
            }),
            1040 * MS,
        );
        assert_eq!(events(&mut a), vec![Event::Rtt(40 * MS)]);
        // Silence for the idle timeout after the last frame received closes.
        a.handle_timeout(4039 * MS);
        assert!(!a.is_closed());
        a.handle_timeout(4040 * MS);
        assert!(a.is_closed());
        assert!(matches!(
            drain(&mut a, 4040 * MS).last(),
            Some(Frame::GoAway(GoAway {
                reason: ReasonCode::IdleTimeout,
                ..
            }))
        ));
    }

    #[test]
    fn an_unanswered_ping_degrades_before_the_idle_timeout_kills() {
        let mut a = Session::new(params(), Duration::ZERO);
        a.handle_timeout(1000 * MS); // ping leaves
        let _ = drain(&mut a, 1000 * MS);
        assert_eq!(
            a.poll_timeout(),
            Some(2000 * MS),
            "wakes when the pong is overdue"
        );
        a.handle_timeout(2000 * MS);
        let ev = events(&mut a);
        assert!(
            matches!(
                &ev[..],
                [Event::Health {
                    degraded: true,
                    rtt: None,
                    ..
                }]
            ),
            "{ev:?}"
        );
        assert!(a.is_degraded() && !a.is_closed());
        // The pong arrives late (1.5 s): healthy again, but the round trip is recorded.
        a.handle_frame(
            Frame::Pong(Pong {
                timestamp_us: 1_000_000,
            }),
            2500 * MS,
        );
        let ev = events(&mut a);
        assert!(matches!(ev[0], Event::Rtt(d) if d == 1500 * MS), "{ev:?}");
        // 1.5 s is above the 500 ms threshold: still degraded, now for slowness.
        assert!(a.is_degraded());
        // Fast pongs bring the smoothed round trip down and the connection back.
        let mut t: u64 = 2500;
        while a.is_degraded() {
            t += 10;
            let now = Duration::from_millis(t);
            a.handle_frame(Frame::Ping(Ping { timestamp_us: 0 }), now);
            a.ping_sent_at = None;
            a.handle_frame(
                Frame::Pong(Pong {
                    timestamp_us: (t - 5) * 1000,
                }),
                now,
            );
            assert!(t < 5000, "never healthy again");
        }
        let last = events(&mut a)
            .into_iter()
            .rev()
            .find(|e| matches!(e, Event::Health { .. }));
        assert!(matches!(
            last,
            Some(Event::Health {
                degraded: false,
                ..
            })
        ));
    }

    #[test]
    fn any_frame_counts_as_liveness() {
        let mut p = params();
        p.idle_timeout = 3000 * MS;
        let mut b = Session::new(p, Duration::ZERO);
        // A long stream of frames, none of them a pong: never an idle timeout.
        for t in (0..20_000u64).step_by(500) {
            let now = Duration::from_millis(t);
            b.handle_frame(Frame::Ack(Ack { last_seq: 0 }), now);
            b.handle_timeout(now);
            assert!(!b.is_closed(), "closed at {t} ms");
        }
    }

    #[test]
    fn pings_come_at_least_twice_per_peer_idle_timeout() {
        let mut p = params();
        p.peer_limits.idle_timeout_ms = 600;
        let a = Session::new(p, Duration::ZERO);
        assert_eq!(a.poll_timeout(), Some(300 * MS));
    }

    /// The session queues exactly what it is given, in order, one chunk per write: a message
    /// handed over between two chunk writes leaves right after the chunks already written.
    /// (The driver takes commands before stream work and holds at most `CHUNK_SLOTS` chunks in
    /// its writer, which bounds how many chunks can precede a message on the wire.)
    #[test]
    fn a_message_leaves_after_at_most_the_chunks_already_written() {
        let mut a = Session::new(params(), Duration::ZERO);
        let id = a
            .open_stream("application/octet-stream".into(), None, None, Bytes::new())
            .unwrap_or_else(|e| panic!("{e:?}"));
        let chunk = |a: &mut Session| {
            let n = a.stream_capacity(id) as usize;
            assert_eq!(n, 64 * 1024, "one chunk per write, never more");
            a.stream_write(id, Bytes::from(vec![0u8; n]))
                .unwrap_or_else(|e| panic!("{e:?}"));
        };
        chunk(&mut a);
        chunk(&mut a);
        a.send_message(
            "text/plain".into(),
            Bytes::new(),
            Bytes::from_static(b"clip"),
            Duration::ZERO,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        for _ in 0..10 {
            chunk(&mut a);
        }
        let frames = drain(&mut a, Duration::ZERO);
        let pos = frames
            .iter()
            .position(|f| matches!(f, Frame::Message(_)))
            .unwrap_or(usize::MAX);
        assert_eq!(pos, 3, "STREAM_OPEN, two chunks, then the message");
    }

    #[test]
    fn stream_frames_need_the_capability() {
        let mut p = params();
        p.streams = false;
        let mut a = Session::new(p, Duration::ZERO);
        assert_eq!(
            a.open_stream("a/b".into(), None, None, Bytes::new()),
            Err(SendRefusal::StreamsUnsupported)
        );
        a.handle_frame(
            Frame::Credit(crate::wire::Credit {
                stream_id: 1,
                acked: 0,
                limit: 1,
            }),
            MS,
        );
        assert!(a.is_closed());
    }

    fn message_ids(events: &[Event]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Message { payload, .. } => Some(u64::from(payload[0])),
                _ => None,
            })
            .collect()
    }

    fn params_big_replay() -> SessionParams {
        SessionParams {
            replay_buffer_bytes: 1 << 20,
            ..params()
        }
    }

    /// Six messages; the first three arrive, the ack of the third and messages four to six
    /// are lost with the connection. After resuming with each other's counters, four to six
    /// arrive once, in order, and one to three are not delivered again.
    #[test]
    fn messages_survive_a_disconnect_exactly_once_and_in_order() {
        let mut a = Session::new(params_big_replay(), Duration::ZERO);
        let mut b = Session::new(params_big_replay(), Duration::ZERO);
        for i in 1..=6u8 {
            a.send_message(
                "t/x".into(),
                Bytes::new(),
                Bytes::from(vec![i]),
                Duration::ZERO,
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        }
        let frames = drain(&mut a, Duration::ZERO);
        for f in frames.into_iter().take(3) {
            b.handle_frame(f, MS);
        }
        let mut delivered = message_ids(&events(&mut b));
        assert_eq!(delivered, vec![1, 2, 3]);
        // B's ack (of 3, by ack_every) is lost with the connection.
        let _ = drain(&mut b, MS);
        assert!(a.suspend() && b.suspend());
        // Sends while disconnected queue up in the replay buffer.
        a.send_message("t/x".into(), Bytes::new(), Bytes::from(vec![7u8]), 2 * MS)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(
            a.poll_transmit(2 * MS).is_none(),
            "nothing leaves while suspended"
        );
        // RESUME / RESUMED exchange the counters.
        a.resume(b.received(), example_limits(), 10 * MS)
            .unwrap_or_else(|e| panic!("{e}"));
        b.resume(a.received(), example_limits(), 10 * MS)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(events(&mut a).contains(&Event::Acked { up_to: 3 }));
        let replayed = drain(&mut a, 10 * MS);
        let seqs: Vec<u64> = replayed
            .iter()
            .filter_map(|f| match f {
                Frame::Message(m) => Some(m.seq),
                _ => None,
            })
            .collect();
        assert_eq!(seqs, vec![4, 5, 6, 7], "only what B lacks is replayed");
        for f in replayed {
            b.handle_frame(f, 11 * MS);
        }
        delivered.extend(message_ids(&events(&mut b)));
        assert_eq!(delivered, vec![1, 2, 3, 4, 5, 6, 7]);
        // A replay of something B has (a stale resume point elsewhere) is dropped.
        b.handle_frame(msg(5, b"\x05"), 12 * MS);
        assert!(message_ids(&events(&mut b)).is_empty());
    }

    #[test]
    fn an_impossible_resume_point_means_the_session_is_lost() {
        let mut a = Session::new(params_big_replay(), Duration::ZERO);
        for i in 1..=3u8 {
            let _ = a.send_message(
                "t/x".into(),
                Bytes::new(),
                Bytes::from(vec![i]),
                Duration::ZERO,
            );
        }
        a.handle_frame(Frame::Ack(Ack { last_seq: 2 }), MS);
        // Issue 12, item 3: what a listener checks before answering RESUMED.
        assert!(!a.resume_point_valid(4), "more than was sent");
        assert!(!a.resume_point_valid(1), "less than it acknowledged");
        assert!(a.resume_point_valid(2) && a.resume_point_valid(3));
        assert!(a.suspend());
        assert!(
            a.resume(4, example_limits(), 2 * MS).is_err(),
            "more than was sent"
        );
        assert!(
            a.resume(1, example_limits(), 2 * MS).is_err(),
            "less than it acknowledged"
        );
        assert!(a.is_suspended(), "a refused resume changes nothing");
        // The peer lost the session. Messages 1-3 were never polled for the wire here, so
        // they are "unsent" (known fate: they can go on a new session); after transmitting,
        // the unacknowledged one is of unknown fate.
        let left = a.abandon();
        assert!(left.unknown.is_empty());
        assert_eq!(
            left.unsent.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![3]
        );
        assert_eq!(a.unacked_bytes(), 0);
        assert!(a.is_closed());
        let mut b = Session::new(params_big_replay(), Duration::ZERO);
        for i in 1..=2u8 {
            let _ = b.send_message(
                "t/x".into(),
                Bytes::new(),
                Bytes::from(vec![i]),
                Duration::ZERO,
            );
        }
        let _ = b.poll_transmit(MS);
        let left = b.abandon();
        assert_eq!(left.unknown, vec![1]);
        assert_eq!(
            left.unsent.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![2]
        );
    }

    /// A stream cut in the middle continues after the resume from the receiver's offset, not
    /// from zero, and still verifies.
    #[test]
    fn a_stream_resumes_from_the_receivers_offset() {
        let mut p = params_big_replay();
        p.chunk_size = 1000;
        let mut a = Session::new(p.clone(), Duration::ZERO);
        let mut b = Session::new(p, Duration::ZERO);
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let id = a
            .open_stream("a/b".into(), Some(payload.len() as u64), None, Bytes::new())
            .unwrap_or_else(|e| panic!("{e:?}"));
        let mut off = 0;
        while off < 6000 {
            let n = a.stream_capacity(id) as usize;
            a.stream_write(id, Bytes::copy_from_slice(&payload[off..off + n]))
                .unwrap_or_else(|e| panic!("{e:?}"));
            off += n;
        }
        // The open and the first 3500 bytes arrive; the rest dies with the connection.
        let mut got = Vec::new();
        for f in drain(&mut a, MS) {
            if let Frame::StreamChunk(c) = &f {
                if c.offset >= 3000 && c.offset < 3500 {
                    let cut = c.data.slice(..500);
                    b.handle_frame(
                        Frame::StreamChunk(StreamChunk {
                            stream_id: c.stream_id,
                            offset: c.offset,
                            data: cut,
                        }),
                        MS,
                    );
                    break;
                }
            }
            b.handle_frame(f, MS);
        }
        let take = |b: &mut Session, got: &mut Vec<u8>| {
            for e in events(b) {
                if let Event::StreamData { data, .. } = e {
                    got.extend_from_slice(&data);
                }
            }
        };
        take(&mut b, &mut got);
        assert_eq!(got.len(), 3500);
        let _ = drain(&mut b, MS);
        assert!(a.suspend() && b.suspend());
        a.resume(b.received(), example_limits(), 2 * MS)
            .unwrap_or_else(|e| panic!("{e}"));
        b.resume(a.received(), example_limits(), 2 * MS)
            .unwrap_or_else(|e| panic!("{e}"));
        // B tells A where it is; A sends from 3500, not from 0.
        for f in drain(&mut b, 3 * MS) {
            a.handle_frame(f, 3 * MS);
        }
        let resent = drain(&mut a, 3 * MS);
        let first = resent.iter().find_map(|f| match f {
            Frame::StreamChunk(c) => Some(c.offset),
            _ => None,
        });
        assert_eq!(first, Some(3500), "resumed from the receiver's offset");
        for f in resent {
            b.handle_frame(f, 4 * MS);
        }
        // The rest of the payload, then the end.
        let mut off = 6000;
        while off < payload.len() {
            for f in drain(&mut b, 5 * MS) {
                a.handle_frame(f, 5 * MS);
            }
            let n = (a.stream_capacity(id) as usize).min(payload.len() - off);
            assert!(n > 0, "the window (2 MiB) is larger than the payload");
            a.stream_write(id, Bytes::copy_from_slice(&payload[off..off + n]))
                .unwrap_or_else(|e| panic!("{e:?}"));
            off += n;
            for f in drain(&mut a, 5 * MS) {
                b.handle_frame(f, 5 * MS);
            }
        }
        a.stream_finish(id).unwrap_or_else(|e| panic!("{e:?}"));
        for f in drain(&mut a, 6 * MS) {
            b.handle_frame(f, 6 * MS);
        }
        let evs = events(&mut b);
        for e in &evs {
            if let Event::StreamData { data, .. } = e {
                got.extend_from_slice(data);
            }
        }
        assert!(
            evs.iter()
                .any(|e| matches!(e, Event::StreamEnded { result: Ok(_), .. })),
            "{:?}",
            evs.iter()
                .filter(|e| !matches!(e, Event::StreamData { .. }))
                .collect::<Vec<_>>()
        );
        assert_eq!(got, payload);
    }

    #[test]
    fn a_session_closed_on_purpose_is_not_resumable() {
        let mut a = Session::new(params_big_replay(), Duration::ZERO);
        a.close(ReasonCode::Normal, String::new());
        assert!(!a.suspend());
        assert!(!a.is_suspended());
    }

    #[test]
    fn goaway_acknowledges_what_the_peer_received() {
        let mut a = Session::new(params(), Duration::ZERO);
        let _ = a.send_message(
            "a/b".into(),
            Bytes::new(),
            Bytes::from_static(b"1"),
            Duration::ZERO,
        );
        let _ = a.send_message(
            "a/b".into(),
            Bytes::new(),
            Bytes::from_static(b"2"),
            Duration::ZERO,
        );
        a.handle_frame(
            Frame::GoAway(GoAway {
                reason: ReasonCode::GoingAway,
                last_seq: 1,
                text: String::new(),
            }),
            MS,
        );
        assert_eq!(
            events(&mut a),
            vec![
                Event::Acked { up_to: 1 },
                Event::Closed(CloseCause::Peer(ReasonCode::GoingAway, String::new()))
            ]
        );
    }
}
