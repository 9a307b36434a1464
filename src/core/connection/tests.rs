//! Model tests of the connection core: two [`Connection`]s, a dialer and a listener, joined by
//! an in-memory link in virtual time. Every frame goes through the real codec (encode, then
//! decode with the receiver's limits), as on a socket. A property test draws random sequences of
//! application operations (messages with valid and invalid content types, streams opened,
//! written, finished, aborted, read slowly, partially or dropped), link cuts (both sides notice,
//! or only the dialer: a half-open connection), reconnections and resumptions, restarts of
//! either peer (its session lost), timers and closes, and checks the connection's promises
//! after every step:
//!
//! - every send settles exactly once, truthfully: delivered only if the peer's application got
//!   it; `unknown` only if it was on the wire; `not sent` only if the peer never got it;
//! - messages arrive at most once and in order, exactly once if reported delivered;
//! - credit granted never exceeds the windows and no accounting runs backwards
//!   ([`Connection::check_invariants`]), unread stream bytes stay within a window;
//! - an invalid send never harms the connection; a stream reported delivered arrived whole;
//! - a resuming dialer is taken at once even if the listener still holds a half-open
//!   connection; after the final heal and close, everything has settled.
//!
//! `CLIPSYNC_MODEL_CASES` sets the number of cases (default 16,000: about 25 s in a debug build);
//! run with a few thousand before changing the core.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;

use super::*;
use crate::wire::DecodeLimits;

const MS: Duration = Duration::from_millis(1);
const STREAM_WINDOW: u32 = 64 * 1024;
const CONNECTION_WINDOW: u32 = 96 * 1024;
const CHUNK: u32 = 16 * 1024;
const MAX_FRAME: u32 = 32 * 1024;
const MAX_MESSAGE: u32 = 8 * 1024;

fn params(resume: Resume) -> ConnectionParams {
    ConnectionParams {
        ack_every: 4,
        ack_delay: 20 * MS,
        heartbeat_interval: 1000 * MS,
        idle_timeout: 3000 * MS,
        degraded_rtt: 500 * MS,
        replay_buffer_bytes: 24 * 1024,
        chunk_size: CHUNK,
        stream_window: STREAM_WINDOW,
        connection_window: CONNECTION_WINDOW,
        max_streams: 3,
        max_message_size: MAX_MESSAGE,
        send_queue: 8,
        resume,
    }
}

fn limits() -> PeerLimits {
    PeerLimits {
        max_frame_size: MAX_FRAME,
        max_message_size: MAX_MESSAGE,
        stream_window: STREAM_WINDOW,
        connection_window: CONNECTION_WINDOW,
        max_streams: 3,
        heartbeat_interval_ms: 1000,
        idle_timeout_ms: 3000,
    }
}

/// The byte at `offset` of the stream tagged `tag`: a receiver can check every byte.
fn pattern(tag: u64, offset: u64) -> u8 {
    (tag.wrapping_mul(31).wrapping_add(offset.wrapping_mul(7)) % 251) as u8
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    A,
    B,
}

#[derive(Clone, Debug)]
enum Op {
    Send {
        from: Side,
        size: u16,
        bad_type: bool,
        /// Carries metadata (the tag, repeated): the receiver checks it.
        meta: bool,
    },
    Open {
        from: Side,
        len: Option<u32>,
        /// With a length: announce the BLAKE3 of the pattern, an offer.
        hashed: bool,
        meta: bool,
    },
    /// The receiver declines an incoming stream (`already have`).
    Decline {
        side: Side,
        pick: u8,
    },
    Write {
        from: Side,
        pick: u8,
        n: u32,
    },
    Finish {
        from: Side,
        pick: u8,
    },
    Abort {
        from: Side,
        pick: u8,
    },
    Read {
        side: Side,
        pick: u8,
        n: u32,
    },
    Drop {
        side: Side,
        pick: u8,
    },
    Pump(u8),
    Tick(u16),
    Cut {
        half_open: bool,
    },
    Reconnect,
    Restart(Side),
    Close(Side),
    /// The side's application falls behind (`on: false`: its driver stops reading the
    /// connection, frames for it wait on the link) or catches up.
    Reading {
        side: Side,
        on: bool,
    },
}

/// Stream lengths: empty and small ones often (an offer's held `STREAM_END`), large ones too.
fn stream_len() -> impl Strategy<Value = u32> {
    prop_oneof![1 => Just(0u32), 1 => 1u32..5000, 2 => 0u32..200_000]
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::A), Just(Side::B)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (side(), 0u16..9000, prop::bool::weighted(0.1), prop::bool::weighted(0.3))
            .prop_map(|(from, size, bad_type, meta)| Op::Send { from, size, bad_type, meta }),
        3 => (side(), prop::option::of(stream_len()), any::<bool>(), any::<bool>())
            .prop_map(|(from, len, hashed, meta)| Op::Open { from, len, hashed, meta }),
        1 => (side(), any::<u8>()).prop_map(|(side, pick)| Op::Decline { side, pick }),
        6 => (side(), any::<u8>(), 1u32..60_000).prop_map(|(from, pick, n)| Op::Write { from, pick, n }),
        2 => (side(), any::<u8>()).prop_map(|(from, pick)| Op::Finish { from, pick }),
        1 => (side(), any::<u8>()).prop_map(|(from, pick)| Op::Abort { from, pick }),
        5 => (side(), any::<u8>(), 1u32..80_000).prop_map(|(side, pick, n)| Op::Read { side, pick, n }),
        1 => (side(), any::<u8>()).prop_map(|(side, pick)| Op::Drop { side, pick }),
        8 => (1u8..20).prop_map(Op::Pump),
        3 => prop_oneof![8 => 1u16..200, 1 => 1000u16..5000].prop_map(Op::Tick),
        2 => any::<bool>().prop_map(|half_open| Op::Cut { half_open }),
        3 => Just(Op::Reconnect),
        1 => side().prop_map(Op::Restart),
        1 => side().prop_map(Op::Close),
        2 => (side(), any::<bool>()).prop_map(|(side, on)| Op::Reading { side, on }),
    ]
}

/// What a peer's application knows and the model checks.
#[derive(Default)]
struct App {
    /// Sends by id: (message payload tag, or stream tag).
    sent_messages: BTreeMap<SendId, u64>,
    /// Settled sends (messages and opens): delivered or the failure.
    settled: BTreeMap<SendId, Result<(), Failure>>,
    /// Outgoing streams: key → (tag, bytes written, finished).
    out: BTreeMap<StreamKey, (u64, u64, bool)>,
    out_settled: BTreeMap<u64, Result<(), Failure>>,
    /// Opens waiting: id → tag.
    opening: BTreeMap<SendId, u64>,
    /// Streams that announced their BLAKE3, by tag: the length announced. The application
    /// writes exactly that many bytes (as one that hashed its payload does).
    hashed_len: BTreeMap<u64, u64>,
    /// Messages and stream opens received: tags, in order.
    received: Vec<u64>,
    /// Incoming streams: key → (tag, bytes read, unread data, end).
    incoming: BTreeMap<StreamKey, InModel>,
    /// Incoming streams that ended verified and were read whole: tags.
    verified: BTreeSet<u64>,
    next_id: SendId,
}

#[derive(Default)]
struct InModel {
    tag: Option<u64>,
    read: u64,
    unread: VecDeque<Bytes>,
    end: Option<Result<(), InFailure>>,
    /// An offer the application has not started reading: the first read accepts it.
    offer_pending: bool,
}

/// Metadata the model attaches for `tag`: the tag, repeated, so the receiver can check it.
fn meta_of(tag: u64) -> Bytes {
    Bytes::from(tag.to_be_bytes().repeat(1 + (tag % 5) as usize))
}

/// The BLAKE3 of `len` bytes of stream `tag`'s pattern.
fn pattern_hash(tag: u64, len: u64) -> [u8; 32] {
    let data: Vec<u8> = (0..len).map(|o| pattern(tag, o)).collect();
    *blake3::hash(&data).as_bytes()
}

struct Peer {
    core: Connection,
    app: App,
    /// Cores replaced by a restart or a new session, kept until their outputs are checked.
    restarts: u32,
}

struct Model {
    a: Peer,
    b: Peer,
    now: Duration,
    /// Frames in flight, already encoded.
    a_to_b: VecDeque<Bytes>,
    b_to_a: VecDeque<Bytes>,
    link_up: bool,
    /// Tags of messages whose frame went to the wire, per sender.
    on_wire: BTreeSet<u64>,
    /// Tags the receivers got (both directions; tags are unique).
    got: BTreeSet<u64>,
    next_tag: u64,
    /// A's side believes in a session the listener can resume.
    shared_session: bool,
    /// Whether each side's driver reads the connection (A, B).
    reading: [bool; 2],
    /// Tags of messages reported not sent: they must never arrive.
    not_sent: BTreeSet<u64>,
}

fn new_peer(side: Side) -> Peer {
    let resume = match side {
        Side::A => Resume::Redial,
        Side::B => Resume::Await(10_000 * MS),
    };
    Peer {
        core: Connection::new(params(resume)),
        app: App::default(),
        restarts: 0,
    }
}

fn attach(session: Resumption) -> Attach {
    Attach {
        peer_limits: limits(),
        streams: true,
        metadata: true,
        offers: true,
        session,
    }
}

impl Model {
    fn new() -> Self {
        let mut m = Model {
            a: new_peer(Side::A),
            b: new_peer(Side::B),
            now: Duration::ZERO,
            a_to_b: VecDeque::new(),
            b_to_a: VecDeque::new(),
            link_up: true,
            on_wire: BTreeSet::new(),
            got: BTreeSet::new(),
            next_tag: 1,
            shared_session: true,
            reading: [true, true],
            not_sent: BTreeSet::new(),
        };
        m.a.core.attach(attach(Resumption::New), m.now);
        m.b.core.attach(attach(Resumption::New), m.now);
        m
    }

    fn peer(&mut self, s: Side) -> &mut Peer {
        match s {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    fn tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }

    fn apply(&mut self, op: &Op) -> Result<(), String> {
        let now = self.now;
        match *op {
            Op::Send {
                from,
                size,
                bad_type,
                meta,
            } => {
                let tag = self.tag();
                let p = self.peer(from);
                if !p.core.can_take() {
                    return Ok(());
                }
                p.app.next_id += 1;
                let id = p.app.next_id;
                let mut payload = tag.to_be_bytes().to_vec();
                payload.resize(8 + usize::from(size), 0);
                let ct = if bad_type {
                    "text/plain\n"
                } else {
                    "text/plain"
                };
                let phase = p.core.phase();
                let metadata = if meta { meta_of(tag) } else { Bytes::new() };
                let wire_size =
                    u32::from(size) + 8 + if meta { 2 + metadata.len() as u32 } else { 0 };
                match p
                    .core
                    .send(id, ct.into(), metadata, Bytes::from(payload), now)
                {
                    Ok(()) if bad_type => return Err("an invalid content type was queued".into()),
                    Ok(()) => {
                        p.app.sent_messages.insert(id, tag);
                    }
                    Err(Failure::InvalidContentType(_)) if bad_type => {
                        if p.core.phase() != phase {
                            return Err("an invalid send changed the connection".into());
                        }
                    }
                    Err(Failure::TooLarge { .. }) if wire_size > MAX_MESSAGE => {}
                    Err(Failure::NotSent(_)) if phase == Phase::Closed => {}
                    Err(e) => return Err(format!("send refused: {e:?}")),
                }
            }
            Op::Open {
                from,
                len,
                hashed,
                meta,
            } => {
                let tag = self.tag();
                let p = self.peer(from);
                if !p.core.can_take() {
                    return Ok(());
                }
                p.app.next_id += 1;
                let id = p.app.next_id;
                let ct = format!("test/{tag}");
                let len = len.map(u64::from);
                let hash = len.filter(|_| hashed).map(|l| pattern_hash(tag, l));
                let metadata = if meta { meta_of(tag) } else { Bytes::new() };
                if p.core
                    .open_stream_with(id, ct, len, hash, metadata, now)
                    .is_ok()
                {
                    p.app.opening.insert(id, tag);
                    if let (Some(l), Some(_)) = (len, hash) {
                        p.app.hashed_len.insert(tag, l);
                    }
                }
            }
            Op::Decline { side, pick } => {
                let p = self.peer(side);
                let keys: Vec<_> = p.app.incoming.keys().copied().collect();
                if let Some(key) = pick_of(&keys, pick) {
                    p.app.incoming.remove(&key);
                    let verdict = (ReasonCode::AlreadyHave, "model".to_string());
                    p.core.stream_release(key, Some(verdict), now);
                }
            }
            Op::Write { from, pick, n } => {
                let p = self.peer(from);
                let keys: Vec<_> = p.app.out.keys().copied().collect();
                if let Some(key) = pick_of(&keys, pick) {
                    let (tag, written, finished) = p.app.out[&key];
                    let n = match p.app.hashed_len.get(&tag) {
                        Some(len) => u32::try_from(len - written).unwrap_or(u32::MAX).min(n),
                        None => n,
                    };
                    if !finished && n > 0 && p.core.accepts_data(key) {
                        let data: Vec<u8> = (written..written + u64::from(n))
                            .map(|o| pattern(tag, o))
                            .collect();
                        p.core.stream_data(key, Bytes::from(data));
                        p.app.out.insert(key, (tag, written + u64::from(n), false));
                    }
                }
            }
            Op::Finish { from, pick } | Op::Abort { from, pick } => {
                let p = self.peer(from);
                let keys: Vec<_> = p.app.out.keys().copied().collect();
                if let Some(key) = pick_of(&keys, pick) {
                    if let Some(entry) = p.app.out.get_mut(&key) {
                        if !entry.2 {
                            entry.2 = true;
                            if matches!(op, Op::Finish { .. }) {
                                p.core.stream_finish(key);
                            } else {
                                p.core
                                    .stream_abort(key, ReasonCode::Cancelled, "model".into());
                            }
                        }
                    }
                }
            }
            Op::Read { side, pick, n } => {
                let p = self.peer(side);
                let keys: Vec<_> = p.app.incoming.keys().copied().collect();
                if let Some(key) = pick_of(&keys, pick) {
                    let m = p.app.incoming.get_mut(&key).unwrap();
                    if std::mem::take(&mut m.offer_pending) {
                        // As the driver does at the first read: accept the offer.
                        p.core.stream_accept(key, now);
                    }
                    let mut taken = 0u64;
                    while taken < u64::from(n) {
                        let Some(mut b) = m.unread.pop_front() else {
                            break;
                        };
                        let want = (u64::from(n) - taken).min(b.len() as u64) as usize;
                        let piece = b.split_to(want);
                        if !b.is_empty() {
                            m.unread.push_front(b);
                        }
                        for (i, x) in piece.iter().enumerate() {
                            let tag = m.tag.unwrap_or(0);
                            if *x != pattern(tag, m.read + i as u64) {
                                return Err(format!("stream {key:?}: byte {} corrupt", m.read));
                            }
                        }
                        m.read += piece.len() as u64;
                        taken += piece.len() as u64;
                    }
                    let fully = m.unread.is_empty();
                    let ended_ok = matches!(m.end, Some(Ok(())));
                    let tag = m.tag;
                    if taken > 0 {
                        p.core.stream_consumed(key, taken, now);
                    }
                    if fully && ended_ok {
                        // The application read the verified end: it lets go (kept).
                        p.app.incoming.remove(&key);
                        if let Some(t) = tag {
                            p.app.verified.insert(t);
                        }
                        p.core.stream_release(key, None, now);
                    }
                }
            }
            Op::Drop { side, pick } => {
                let p = self.peer(side);
                let keys: Vec<_> = p.app.incoming.keys().copied().collect();
                if let Some(key) = pick_of(&keys, pick) {
                    p.app.incoming.remove(&key);
                    p.core.stream_release(key, None, now);
                }
            }
            Op::Pump(n) => {
                for _ in 0..n {
                    self.pump()?;
                }
            }
            Op::Tick(ms) => {
                self.now += u32::from(ms) * MS;
                let now = self.now;
                let before = [self.a.core.phase(), self.b.core.phase()];
                self.a.core.handle_timeout(now);
                self.b.core.handle_timeout(now);
                // A side that does not read hears nothing, and that is not the peer's silence:
                // no timer may end its connection (PROTOCOL.md §6.3).
                for (i, s) in [Side::A, Side::B].into_iter().enumerate() {
                    let after = self.peer(s).core.phase();
                    if !self.reading[i] && before[i] == Phase::Connected && after != before[i] {
                        return Err(format!("{s:?} left Connected on a timer while not reading"));
                    }
                }
            }
            Op::Cut { half_open } => {
                self.a_to_b.clear();
                self.b_to_a.clear();
                self.a.core.connection_lost("cut".into(), now);
                if !half_open {
                    self.b.core.connection_lost("cut".into(), now);
                }
            }
            Op::Reconnect => self.reconnect()?,
            Op::Restart(s) => {
                let old = std::mem::replace(self.peer(s), new_peer(s));
                self.peer(s).restarts = old.restarts + 1;
                self.reading[s as usize] = true;
                self.a_to_b.clear();
                self.b_to_a.clear();
                // The survivor's connection breaks (the process is gone).
                let other = if s == Side::A { Side::B } else { Side::A };
                self.peer(other)
                    .core
                    .connection_lost("peer restarted".into(), now);
                self.shared_session = false;
                if s == Side::A {
                    // The listener will see a fresh session from this key: the old one is
                    // closed (PROTOCOL.md §4), everything of it settles.
                    self.b
                        .core
                        .close(ReasonCode::Replaced, "new session".into(), now);
                }
            }
            Op::Close(s) => {
                self.peer(s)
                    .core
                    .close(ReasonCode::Normal, "model".into(), now);
            }
            Op::Reading { side, on } => self.reading[side as usize] = on,
        }
        // As the driver does before every wait: tell each core whether it reads.
        for (i, s) in [Side::A, Side::B].into_iter().enumerate() {
            let on = self.reading[i];
            self.peer(s).core.set_reading(on, now);
        }
        self.drain_outputs()?;
        self.check()
    }

    /// The dialer gets a new connection: resumed if both still hold the session, lost if the
    /// listener restarted, new if the dialer restarted. The listener takes it at once, even if
    /// its old connection still looks alive.
    fn reconnect(&mut self) -> Result<(), String> {
        let now = self.now;
        let a_phase = self.a.core.phase();
        if !matches!(a_phase, Phase::Suspended | Phase::Connecting) {
            return Ok(());
        }
        self.a_to_b.clear();
        self.b_to_a.clear();
        if self.b.core.phase() == Phase::Closed {
            // The listener closed its session for good: a fresh listener-side session.
            self.retire_b()?;
            self.shared_session = false;
        }
        let b_phase = self.b.core.phase();
        if a_phase == Phase::Connecting {
            // A restarted: a new session on a new listener-side connection.
            if b_phase != Phase::Connecting {
                self.b
                    .core
                    .close(ReasonCode::Replaced, "new session".into(), now);
                self.drain_outputs()?;
                self.retire_b()?;
            }
            self.a.core.attach(attach(Resumption::New), now);
            self.b.core.attach(attach(Resumption::New), now);
        } else if b_phase == Phase::Connecting || !self.shared_session {
            // The listener does not have the session: SESSION_LOST, a fresh one on both sides.
            self.a
                .core
                .attach(attach(Resumption::Lost(ReasonCode::SessionUnknown)), now);
            if b_phase != Phase::Connecting {
                self.b
                    .core
                    .close(ReasonCode::Replaced, "new session".into(), now);
                self.drain_outputs()?;
                self.retire_b()?;
            }
            self.b.core.attach(attach(Resumption::New), now);
        } else {
            let (a_recv, b_recv) = (self.a.core.received(), self.b.core.received());
            self.b.core.attach(
                attach(Resumption::Resumed {
                    peer_received: a_recv,
                }),
                now,
            );
            self.a.core.attach(
                attach(Resumption::Resumed {
                    peer_received: b_recv,
                }),
                now,
            );
        }
        self.shared_session = true;
        self.drain_outputs()?;
        if self.a.core.phase() == Phase::Connected && self.b.core.phase() != Phase::Connected {
            return Err(format!(
                "the listener did not take the resuming dialer: {:?}",
                self.b.core.phase()
            ));
        }
        Ok(())
    }

    /// The listener's side of a session that ended: everything of it must have settled; a new
    /// listener-side connection takes its place.
    fn retire_b(&mut self) -> Result<(), String> {
        all_settled(&self.b.app).map_err(|e| format!("retired listener: {e}"))?;
        self.b = Peer {
            restarts: self.b.restarts + 1,
            ..new_peer(Side::B)
        };
        Ok(())
    }

    /// One round: each side writes what it has, then reads what arrived.
    fn pump(&mut self) -> Result<(), String> {
        let now = self.now;
        for s in [Side::A, Side::B] {
            let (p, q) = match s {
                Side::A => (&mut self.a, &mut self.a_to_b),
                Side::B => (&mut self.b, &mut self.b_to_a),
            };
            let mut frames = 0;
            while let Some((frame, _lane)) = p.core.poll_transmit(now, true) {
                if let Frame::Message(m) = &frame {
                    self.on_wire.insert(tag_of(&m.payload));
                }
                match frame.encode() {
                    Ok(b) if self.link_up => q.push_back(b),
                    Ok(_) => {}
                    Err(e) => {
                        let detail = format!("cannot encode: {e}");
                        p.core.close(ReasonCode::InternalError, detail, now);
                    }
                }
                frames += 1;
                if frames > 10_000 {
                    return Err("a side transmits without end".into());
                }
            }
        }
        let limits = DecodeLimits {
            max_frame_size: MAX_FRAME as usize,
        };
        for s in [Side::A, Side::B] {
            if !self.reading[s as usize] {
                // Its frames wait on the link until it reads again.
                continue;
            }
            let q = if s == Side::A {
                std::mem::take(&mut self.b_to_a)
            } else {
                std::mem::take(&mut self.a_to_b)
            };
            for b in q {
                match Frame::decode(b, limits) {
                    Ok(f) => self.peer(s).core.handle_frame(f, now),
                    Err(e) => return Err(format!("undecodable frame on the link: {e}")),
                }
            }
        }
        self.now += MS;
        self.drain_outputs()
    }

    fn drain_outputs(&mut self) -> Result<(), String> {
        for s in [Side::A, Side::B] {
            while let Some(o) = self.peer(s).core.poll_output() {
                self.output(s, o)?;
            }
        }
        Ok(())
    }

    fn output(&mut self, s: Side, o: Output) -> Result<(), String> {
        let now = self.now;
        let p = self.peer(s);
        let settle = |app: &mut App, id: SendId, r: Result<(), Failure>| -> Result<(), String> {
            if app.settled.insert(id, r.clone()).is_some() {
                return Err(format!("send {id} settled twice (now {r:?})"));
            }
            Ok(())
        };
        match o {
            Output::Delivered(id) => {
                let tag = p.app.sent_messages[&id];
                settle(&mut p.app, id, Ok(()))?;
                if !self.got.contains(&tag) {
                    return Err(format!("message {tag} reported delivered, never received"));
                }
            }
            Output::Failed(id, f) => {
                if let Some(&tag) = p.app.sent_messages.get(&id) {
                    match &f {
                        Failure::Unknown(_) if !self.on_wire.contains(&tag) => {
                            return Err(format!(
                                "message {tag} reported unknown, never on the wire"
                            ));
                        }
                        Failure::NotSent(_) if self.got.contains(&tag) => {
                            return Err(format!("message {tag} reported not sent, but received"));
                        }
                        Failure::NotSent(_) => {
                            self.not_sent.insert(tag);
                        }
                        _ => {}
                    }
                }
                let p = self.peer(s);
                p.app.opening.remove(&id);
                settle(&mut p.app, id, Err(f))?;
            }
            Output::StreamReady { open, key } => {
                let tag = p
                    .app
                    .opening
                    .remove(&open)
                    .ok_or("ready for an unknown open")?;
                settle(&mut p.app, open, Ok(()))?;
                if p.app.out.insert(key, (tag, 0, false)).is_some() {
                    return Err(format!("stream key {key:?} reused"));
                }
            }
            Output::StreamSettled { key, result } => {
                let (tag, written, finished) = p
                    .app
                    .out
                    .remove(&key)
                    .ok_or(format!("settled unknown stream {key:?}"))?;
                if p.app.out_settled.insert(tag, result.clone()).is_some() {
                    return Err(format!("stream {tag} settled twice"));
                }
                if result.is_ok() {
                    if !finished {
                        return Err(format!("stream {tag} delivered before it was finished"));
                    }
                    let other = if s == Side::A { &self.b } else { &self.a };
                    if !other.app.verified.contains(&tag) {
                        return Err(format!(
                            "stream {tag} ({written} bytes) delivered, but the receiver's \
                             application did not read it whole"
                        ));
                    }
                }
            }
            Output::Message {
                payload, metadata, ..
            } => {
                let tag = tag_of(&payload);
                if !metadata.is_empty() && metadata != meta_of(tag) {
                    return Err(format!("message {tag} arrived with foreign metadata"));
                }
                if self.not_sent.contains(&tag) {
                    return Err(format!(
                        "message {tag} received after it was reported not sent"
                    ));
                }
                if !self.got.insert(tag) {
                    return Err(format!("message {tag} delivered twice"));
                }
                let p = self.peer(s);
                if p.app.received.last().is_some_and(|l| *l > tag) {
                    return Err(format!(
                        "message {tag} out of order after {:?}",
                        p.app.received.last()
                    ));
                }
                p.app.received.push(tag);
            }
            Output::Incoming {
                key,
                content_type,
                metadata,
                offer,
                hash,
                total_len,
            } => {
                let tag: Option<u64> = content_type
                    .strip_prefix("test/")
                    .and_then(|t| t.parse().ok());
                if let Some(t) = tag {
                    if !metadata.is_empty() && metadata != meta_of(t) {
                        return Err(format!("stream {t} arrived with foreign metadata"));
                    }
                    if offer != hash.is_some() {
                        return Err(format!("stream {t}: offer {offer} but hash {hash:?}"));
                    }
                    if let (Some(h), Some(l)) = (hash, total_len) {
                        if h != pattern_hash(t, l) {
                            return Err(format!("stream {t} arrived with a foreign hash"));
                        }
                    }
                }
                // Streams and messages arrive in the order their sends were handed in.
                if let Some(t) = tag {
                    if p.app.received.last().is_some_and(|l| *l > t) {
                        return Err(format!(
                            "stream {t} arrived after {:?}, sent later",
                            p.app.received.last()
                        ));
                    }
                    p.app.received.push(t);
                }
                let m = InModel {
                    tag,
                    offer_pending: offer,
                    ..InModel::default()
                };
                if p.app.incoming.insert(key, m).is_some() {
                    return Err(format!("incoming stream {key:?} twice"));
                }
            }
            Output::Data { key, data } => {
                if let Some(m) = p.app.incoming.get_mut(&key) {
                    if m.offer_pending {
                        return Err(format!("bytes of offer {key:?} before it was accepted"));
                    }
                    m.unread.push_back(data);
                    let unread: u64 = m.unread.iter().map(|b| b.len() as u64).sum();
                    if unread > u64::from(STREAM_WINDOW) + u64::from(CHUNK) {
                        return Err(format!("{unread} unread bytes buffered on {key:?}"));
                    }
                }
            }
            Output::Ended { key, result } => {
                if let Some(m) = p.app.incoming.get_mut(&key) {
                    if m.end.is_some() {
                        return Err(format!("stream {key:?} ended twice"));
                    }
                    if m.offer_pending && result.is_ok() {
                        return Err(format!("offer {key:?} ended before it was accepted"));
                    }
                    m.end = Some(result.clone().map(|_| ()));
                    if result.is_err() {
                        p.app.incoming.remove(&key);
                        p.core.stream_release(key, None, now);
                    } else if m.unread.is_empty() {
                        let tag = m.tag;
                        p.app.incoming.remove(&key);
                        p.app.verified.extend(tag);
                        p.core.stream_release(key, None, now);
                    }
                }
            }
            Output::Closed(cause) => {
                if cause.reason() == Some(ReasonCode::InternalError) {
                    return Err(format!("{s:?} closed with an internal error: {cause}"));
                }
                if cause.reason() == Some(ReasonCode::ProtocolError)
                    || cause.reason() == Some(ReasonCode::FlowControlError)
                {
                    return Err(format!("{s:?} closed: {cause}"));
                }
            }
            Output::Connected { .. }
            | Output::SessionLost { .. }
            | Output::Suspended(_)
            | Output::StreamSent { .. }
            | Output::StreamAcked { .. }
            | Output::Rtt(_)
            | Output::Health { .. } => {}
        }
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        self.a
            .core
            .check_invariants()
            .map_err(|e| format!("A: {e}"))?;
        self.b
            .core
            .check_invariants()
            .map_err(|e| format!("B: {e}"))
    }

    /// Heal, let everything flow, close both sides: every send must have settled.
    fn finish(&mut self) -> Result<(), String> {
        self.link_up = true;
        self.reading = [true, true];
        self.apply(&Op::Reconnect)?;
        for _ in 0..200 {
            // The applications read everything and finish their streams.
            for s in [Side::A, Side::B] {
                let keys: Vec<_> = self.peer(s).app.incoming.keys().copied().collect();
                for (i, _) in keys.iter().enumerate() {
                    self.apply(&Op::Read {
                        side: s,
                        pick: i as u8,
                        n: u32::MAX,
                    })?;
                }
            }
            self.apply(&Op::Pump(2))?;
            self.apply(&Op::Tick(25))?;
        }
        self.apply(&Op::Close(Side::A))?;
        self.apply(&Op::Pump(5))?;
        self.apply(&Op::Close(Side::B))?;
        self.apply(&Op::Pump(1))?;
        all_settled(&self.a.app)?;
        all_settled(&self.b.app)
    }
}

fn all_settled(app: &App) -> Result<(), String> {
    for id in app.sent_messages.keys() {
        if !app.settled.contains_key(id) {
            return Err(format!("send {id} never settled"));
        }
    }
    if let Some(id) = app.opening.keys().next() {
        return Err(format!("stream open {id} never settled"));
    }
    if let Some(key) = app.out.keys().next() {
        return Err(format!("stream {key:?} never settled"));
    }
    Ok(())
}

fn tag_of(payload: &Bytes) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&payload[..8]);
    u64::from_be_bytes(b)
}

fn pick_of<T: Copy>(v: &[T], pick: u8) -> Option<T> {
    (!v.is_empty()).then(|| v[usize::from(pick) % v.len()])
}

fn run(ops: &[Op]) -> Result<(), String> {
    let mut m = Model::new();
    for (i, op) in ops.iter().enumerate() {
        m.apply(op).map_err(|e| format!("step {i} {op:?}: {e}"))?;
    }
    m.finish().map_err(|e| format!("at the end: {e}"))
}

fn cases() -> u32 {
    std::env::var("CLIPSYNC_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16_000)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn the_connection_keeps_its_promises(ops in prop::collection::vec(op(), 1..120)) {
        if let Err(e) = run(&ops) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// Part 1, item 1: a restarted listener's fresh session starts from clean stream state; the
/// dialer's streams of the old session settle.
#[test]
fn a_restarted_peer_gets_a_clean_session() {
    let ops = [
        Op::Open {
            from: Side::B,
            len: None,
            hashed: false,
            meta: false,
        },
        Op::Pump(3),
        Op::Write {
            from: Side::B,
            pick: 0,
            n: 40_000,
        },
        Op::Open {
            from: Side::A,
            len: None,
            hashed: false,
            meta: false,
        },
        Op::Pump(3),
        Op::Write {
            from: Side::A,
            pick: 0,
            n: 1000,
        },
        Op::Pump(3),
        Op::Restart(Side::B),
        Op::Reconnect,
        Op::Open {
            from: Side::B,
            len: Some(10),
            hashed: false,
            meta: false,
        },
        Op::Pump(3),
        Op::Write {
            from: Side::B,
            pick: 0,
            n: 10,
        },
        Op::Finish {
            from: Side::B,
            pick: 0,
        },
        Op::Pump(10),
    ];
    run(&ops).unwrap();
}

/// Part 1, item 2: an incoming stream dropped unread after a resume returns only the current
/// connection's bytes to its window.
#[test]
fn dropping_a_stream_after_a_resume_keeps_the_windows() {
    let ops = [
        Op::Open {
            from: Side::A,
            len: None,
            hashed: false,
            meta: false,
        },
        Op::Pump(2),
        Op::Write {
            from: Side::A,
            pick: 0,
            n: 50_000,
        },
        Op::Pump(8),
        Op::Cut { half_open: false },
        Op::Reconnect,
        Op::Pump(4),
        Op::Drop {
            side: Side::B,
            pick: 0,
        },
        Op::Pump(4),
    ];
    run(&ops).unwrap();
}

/// Part 1, items 3 and 4: an invalid content type is refused alone; sends queued while the
/// peer was away never left, so after SESSION_LOST they go out on the new session.
#[test]
fn queued_sends_survive_a_lost_session_and_bad_types_harm_nothing() {
    let ops = [
        Op::Send {
            from: Side::A,
            size: 10,
            bad_type: true,
            meta: false,
        },
        Op::Cut { half_open: false },
        Op::Send {
            from: Side::A,
            size: 10,
            bad_type: false,
            meta: false,
        },
        Op::Send {
            from: Side::A,
            size: 10,
            bad_type: false,
            meta: false,
        },
        Op::Restart(Side::B),
        Op::Reconnect,
        Op::Pump(5),
        Op::Tick(50),
        Op::Pump(5),
    ];
    let mut m = Model::new();
    for op in &ops {
        m.apply(op).unwrap();
    }
    assert_eq!(m.b.app.received.len(), 2, "both queued messages arrive");
    assert!(m.a.app.settled.values().filter(|r| r.is_ok()).count() >= 2);
}

/// Part 1, item 6: a resuming dialer is taken at once although the listener still holds its
/// half-open connection.
#[test]
fn a_resume_replaces_a_half_open_connection_at_once() {
    let ops = [
        Op::Send {
            from: Side::A,
            size: 10,
            bad_type: false,
            meta: false,
        },
        Op::Pump(3),
        Op::Cut { half_open: true },
        Op::Reconnect,
        Op::Send {
            from: Side::B,
            size: 10,
            bad_type: false,
            meta: false,
        },
        Op::Pump(5),
    ];
    run(&ops).unwrap();
}

/// Part 1, item 5: the tie-break lets a fresh connection win over a stale one.
#[test]
fn a_fresh_link_wins_over_a_reconnecting_one() {
    use crate::core::{LinkView, tie_break};
    let view = |dialed, stale| LinkView {
        dialed,
        stale,
        established: false,
    };
    let fresh = view(false, false);
    assert!(
        tie_break(true, view(true, true), fresh),
        "the stale link loses"
    );
    assert!(
        !tie_break(true, view(true, false), fresh),
        "a live link keeps the key rule"
    );
    assert!(tie_break(false, view(true, false), fresh));
}

/// A link that has stood longer than any simultaneous dial could take loses to a fresh
/// connection from the peer whatever the keys say: the peer dialled because it no longer holds
/// that link (it restarted before this side noticed; the old link is half-open). Before this
/// rule the fresh connection was refused with `duplicate connection` until the half-open link
/// timed out.
#[test]
fn a_fresh_link_wins_over_an_established_one_of_the_other_direction() {
    use crate::core::{LinkView, tie_break};
    let old = LinkView {
        dialed: true,
        stale: false,
        established: true,
    };
    let fresh = LinkView {
        dialed: false,
        stale: false,
        established: false,
    };
    assert!(tie_break(true, old, fresh), "own key smaller");
    assert!(tie_break(false, old, fresh), "own key larger");
    let young = LinkView {
        established: false,
        ..old
    };
    assert!(
        !tie_break(true, young, fresh),
        "two young links: the key rule"
    );
}

/// Found by the model: a stream written beyond its announced length fails with `stream
/// integrity` instead of silently dropping chunks (the bytes after them then went out at the
/// wrong offset, and the receiver read corrupt data).
#[test]
fn writing_past_the_announced_length_fails_the_stream() {
    let ops = [
        Op::Open {
            from: Side::A,
            len: Some(216),
            hashed: false,
            meta: false,
        },
        Op::Write {
            from: Side::A,
            pick: 0,
            n: 49153,
        },
        Op::Pump(10),
    ];
    let mut m = Model::new();
    for op in &ops {
        m.apply(op).unwrap();
    }
    m.finish().unwrap();
    let failed = m.a.app.out_settled.values().next().cloned();
    assert!(
        matches!(
            failed,
            Some(Err(Failure::Stream {
                reason: ReasonCode::StreamIntegrity,
                ..
            }))
        ),
        "{failed:?}"
    );
}

/// A dialer told `SESSION_LOST` fails the sends the peer may or may not have got with the
/// reason the peer gave (PROTOCOL.md §4), not with a guess: found by the simulator's `suspend`
/// scenario, whose expired session was reported as `session unknown`.
#[test]
fn a_lost_session_fails_unacknowledged_sends_with_the_peers_reason() {
    for reason in [
        ReasonCode::SessionExpired,
        ReasonCode::SessionUnknown,
        ReasonCode::ReplayOverflow,
    ] {
        let mut a = Connection::new(params(Resume::Redial));
        let now = Duration::ZERO;
        a.attach(attach(Resumption::New), now);
        a.send(
            1,
            "text/plain".into(),
            Bytes::new(),
            Bytes::from_static(b"x"),
            now,
        )
        .unwrap();
        // The message goes out and is never acknowledged.
        while a.poll_transmit(now, false).is_some() {}
        a.connection_lost("cut".into(), now);
        a.attach(attach(Resumption::Lost(reason)), now);
        let mut failed = None;
        while let Some(o) = a.poll_output() {
            if let Output::Failed(1, f) = o {
                failed = Some(f);
            }
        }
        match failed {
            Some(Failure::Unknown(cause)) => assert_eq!(cause.reason(), Some(reason)),
            other => panic!("{reason:?}: the send settled as {other:?}"),
        }
    }
}
