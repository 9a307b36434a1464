//! Streams inside a session: chunking, credit-based flow control, reassembly, verification
//! (PROTOCOL.md §5.2–§5.6, §6.2). Pure state; the [`super::Session`] feeds it frames and
//! sequence numbers and forwards what it produces.
//!
//! Memory is bounded by the windows, never by payload size:
//! - a sender never has more than the receiver's `limit` in flight per stream, nor more than
//!   the connection limit over all streams, and keeps at most that much for retransmission;
//! - a receiver grants `limit = consumed + window`, so at most one window per stream (and one
//!   connection window overall) is ever buffered between the network and the application.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use super::hash::StreamHasher;

use crate::wire::{Credit, Frame, ReasonCode, StreamAbort, StreamChunk, StreamEnd};

/// One outgoing stream.
#[derive(Debug)]
pub(crate) struct OutStream {
    pub(crate) total_len: Option<u64>,
    /// Bytes handed out as chunks.
    pub(crate) sent: u64,
    /// Bytes the receiver reported received in order.
    pub(crate) acked: u64,
    /// The receiver accepts bytes below this offset.
    pub(crate) limit: u64,
    /// What `STREAM_END` will say the BLAKE3 is.
    hash: OutHash,
    /// Chunks sent and not yet acknowledged, kept for retransmission after a resume.
    pub(crate) retained: VecDeque<(u64, Bytes)>,
    /// `STREAM_END` or `STREAM_ABORT` queued.
    pub(crate) ended: bool,
    /// Sequence number of its `STREAM_OPEN`.
    pub(crate) open_seq: u64,
    /// After a resume: waiting for the receiver's `CREDIT` to learn where to continue.
    awaiting_rewind: bool,
    /// After a resume: chunks to send again, in order, before any new data.
    resend: VecDeque<(u64, Bytes)>,
    /// The `STREAM_END` or `STREAM_ABORT` sent, to send again after a resume.
    tail: Option<Frame>,
    /// The tail must be sent again once `resend` is empty.
    resend_tail: bool,
    /// An offer (flag `OFFER`) the receiver has not accepted yet: no chunk and no
    /// `STREAM_END` leaves until its first `CREDIT` (PROTOCOL.md §5.2).
    pub(crate) awaiting_accept: bool,
}

/// The BLAKE3 an outgoing stream's `STREAM_END` carries.
#[derive(Debug)]
enum OutHash {
    /// Computed over the bytes as they are sent.
    Hashing(Box<StreamHasher>),
    /// Announced by the application at the open (PROTOCOL.md §5.4): the sender does not hash
    /// the bytes again; the receiver's check is the one pass over them, and bytes that do not
    /// match fail the stream there with `stream integrity`.
    Announced([u8; 32]),
}

/// One incoming stream.
#[derive(Debug)]
pub(crate) struct InStream {
    pub(crate) total_len: Option<u64>,
    pub(crate) announced_hash: Option<[u8; 32]>,
    /// Bytes received in order.
    pub(crate) received: u64,
    /// Bytes the application has taken.
    pub(crate) consumed: u64,
    /// The last limit we granted.
    pub(crate) granted: u64,
    hasher: StreamHasher,
    /// Ended (verified, failed or aborted); kept until the application lets go, so its
    /// unread bytes still count against the connection window.
    pub(crate) ended: bool,
    /// Its `STREAM_RESULT` has been sent (a failure at once; a verified stream when the
    /// application lets go of it).
    pub(crate) answered: bool,
    /// Bytes received on earlier connections and not yet consumed: the application takes these
    /// first, and they are not credited to the current connection's window (its accounting
    /// started afresh at the resume).
    pub(crate) carried: u64,
    /// An offer not accepted yet: no credit granted (`granted == 0`), and no `CREDIT` sent
    /// for it, also not at a resume, until the application accepts it.
    pub(crate) offer_pending: bool,
}

/// Why a stream operation was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamRefusal {
    /// No such open stream (finished, aborted, or never opened).
    Unknown,
    /// More data than the credit allows right now: wait for credit.
    NoCredit,
    /// More data than the announced total length.
    Overrun,
}

/// What a received stream frame means for the session.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Inbound {
    /// Nothing for the application.
    Nothing,
    /// Bytes for the application.
    Data(Bytes),
    /// The stream ended: verified (`Ok`, with the payload's BLAKE3) or failed, with the reason
    /// to answer in `STREAM_RESULT`.
    Ended(Result<[u8; 32], (ReasonCode, String)>),
    /// The peer broke flow control or the protocol: close the connection.
    Fatal(ReasonCode, String),
}

/// All streams of a session, both directions, and the connection-wide windows.
#[derive(Debug)]
pub(crate) struct Streams {
    /// Our receive window per stream, and overall.
    stream_window: u64,
    connection_window: u64,
    /// Most incoming streams open at once.
    max_incoming: usize,
    /// Largest chunk we send: min(our chunk size, peer frame limit − 24).
    pub(crate) max_chunk: u64,
    /// The peer's initial window per stream, and most streams it accepts.
    peer_stream_window: u64,
    pub(crate) peer_max_streams: usize,

    pub(crate) out: BTreeMap<u64, OutStream>,
    next_out_id: u64,
    /// Chunk bytes sent on this connection, and the peer's connection limit.
    conn_sent: u64,
    conn_limit: u64,

    pub(crate) incoming: BTreeMap<u64, InStream>,
    /// Highest incoming stream id opened so far (ids increase; lower unknown ids are finished).
    last_in_id: u64,
    /// Chunk bytes received on this connection, consumed (or discarded), and the limit granted.
    conn_received: u64,
    conn_consumed: u64,
    conn_granted: u64,
}

/// The parameters of [`Streams`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamParams {
    pub(crate) stream_window: u64,
    pub(crate) connection_window: u64,
    pub(crate) max_incoming: usize,
    pub(crate) max_chunk: u64,
    pub(crate) peer_stream_window: u64,
    pub(crate) peer_connection_window: u64,
    pub(crate) peer_max_streams: usize,
}

impl Streams {
    pub(crate) fn new(p: StreamParams) -> Self {
        Self {
            stream_window: p.stream_window,
            connection_window: p.connection_window,
            max_incoming: p.max_incoming,
            max_chunk: p.max_chunk.max(1),
            peer_stream_window: p.peer_stream_window,
            peer_max_streams: p.peer_max_streams,
            out: BTreeMap::new(),
            next_out_id: 1,
            conn_sent: 0,
            conn_limit: p.peer_connection_window,
            incoming: BTreeMap::new(),
            last_in_id: 0,
            conn_received: 0,
            conn_consumed: 0,
            conn_granted: p.connection_window,
        }
    }

    // ----- sending -----

    /// Whether another outgoing stream may open now.
    pub(crate) fn can_open(&self) -> bool {
        self.out.len() < self.peer_max_streams
    }

    /// Registers a new outgoing stream; returns its id.
    /// An `offer` starts without credit and waits for the receiver's first `CREDIT`.
    pub(crate) fn open(
        &mut self,
        total_len: Option<u64>,
        hash: Option<[u8; 32]>,
        seq: u64,
        offer: bool,
    ) -> u64 {
        let id = self.next_out_id;
        self.next_out_id += 1;
        self.out.insert(
            id,
            OutStream {
                total_len,
                sent: 0,
                acked: 0,
                limit: if offer { 0 } else { self.peer_stream_window },
                hash: match hash {
                    Some(h) => OutHash::Announced(h),
                    None => OutHash::Hashing(Box::default()),
                },
                retained: VecDeque::new(),
                ended: false,
                open_seq: seq,
                awaiting_rewind: false,
                resend: VecDeque::new(),
                tail: None,
                resend_tail: false,
                awaiting_accept: offer,
            },
        );
        id
    }

    /// How many bytes stream `id` may send right now (0: wait for credit), at most one chunk.
    pub(crate) fn capacity(&self, id: u64) -> u64 {
        let Some(s) = self.out.get(&id) else {
            return 0;
        };
        if s.ended || s.awaiting_rewind || s.awaiting_accept || !s.resend.is_empty() {
            return 0;
        }
        let stream = s.limit.saturating_sub(s.sent);
        let conn = self.conn_limit.saturating_sub(self.conn_sent);
        stream.min(conn).min(self.max_chunk)
    }

    /// Sends `data` (at most [`Streams::capacity`] bytes) on stream `id`.
    pub(crate) fn write(&mut self, id: u64, data: Bytes) -> Result<StreamChunk, StreamRefusal> {
        let cap = self.capacity(id);
        let s = self.out.get_mut(&id).ok_or(StreamRefusal::Unknown)?;
        if s.ended {
            return Err(StreamRefusal::Unknown);
        }
        let n = data.len() as u64;
        if n == 0 || n > cap {
            return Err(StreamRefusal::NoCredit);
        }
        if s.total_len.is_some_and(|t| s.sent + n > t) {
            return Err(StreamRefusal::Overrun);
        }
        if let OutHash::Hashing(h) = &mut s.hash {
            h.update(&data);
        }
        let offset = s.sent;
        s.sent += n;
        s.retained.push_back((offset, data.clone()));
        self.conn_sent += n;
        Ok(StreamChunk {
            stream_id: id,
            offset,
            data,
        })
    }

    /// Ends stream `id`: `STREAM_END` with length and hash, or, if fewer bytes were sent than
    /// `STREAM_OPEN` announced, `STREAM_ABORT` with `stream integrity` (the receiver would
    /// refuse them anyway; better say so than send a lie). The hash is the announced one if
    /// there was one: the sender does not hash the bytes again, and bytes that do not match it
    /// fail at the receiver's check, with the same reason.
    pub(crate) fn finish(
        &mut self,
        id: u64,
    ) -> Result<Result<StreamEnd, StreamAbort>, StreamRefusal> {
        let s = self.out.get_mut(&id).ok_or(StreamRefusal::Unknown)?;
        if s.ended {
            return Err(StreamRefusal::Unknown);
        }
        s.ended = true;
        let hash: [u8; 32] = match &s.hash {
            OutHash::Hashing(h) => h.finalize(),
            OutHash::Announced(h) => *h,
        };
        let problem = if s.total_len.is_some_and(|t| t != s.sent) {
            Some(format!(
                "announced {} bytes, sent {}",
                s.total_len.unwrap_or(0),
                s.sent
            ))
        } else {
            None
        };
        let result = match problem {
            None => Ok(StreamEnd {
                stream_id: id,
                total_len: s.sent,
                hash,
            }),
            Some(text) => Err(StreamAbort {
                stream_id: id,
                reason: ReasonCode::StreamIntegrity,
                text,
            }),
        };
        s.tail = Some(match &result {
            Ok(end) => Frame::StreamEnd(*end),
            Err(abort) => Frame::StreamAbort(abort.clone()),
        });
        // An offer not accepted yet keeps its end until the receiver's CREDIT
        // ([`Streams::poll_resend`] sends it then); an abort may always go.
        s.resend_tail = s.awaiting_accept && result.is_ok();
        Ok(result)
    }

    /// Gives up on stream `id`.
    pub(crate) fn abort(
        &mut self,
        id: u64,
        reason: ReasonCode,
        text: String,
    ) -> Result<StreamAbort, StreamRefusal> {
        let s = self.out.get_mut(&id).ok_or(StreamRefusal::Unknown)?;
        if s.ended {
            return Err(StreamRefusal::Unknown);
        }
        s.ended = true;
        let abort = StreamAbort {
            stream_id: id,
            reason,
            text,
        };
        s.tail = Some(Frame::StreamAbort(abort.clone()));
        Ok(abort)
    }

    /// The receiver's `STREAM_RESULT` settled stream `id`; forget it. Returns whether it was
    /// ours and open.
    pub(crate) fn settle(&mut self, id: u64) -> bool {
        self.out.remove(&id).is_some()
    }

    /// Applies a `CREDIT` from the peer. Returns the stream whose acknowledged offset moved, or
    /// an error for a credit that breaks the rules.
    pub(crate) fn credit(&mut self, c: Credit) -> Result<Option<(u64, u64)>, String> {
        if c.stream_id == 0 {
            if c.acked > self.conn_sent {
                return Err(format!(
                    "connection CREDIT acknowledges {} bytes, {} sent",
                    c.acked, self.conn_sent
                ));
            }
            self.conn_limit = self.conn_limit.max(c.limit);
            return Ok(None);
        }
        let Some(s) = self.out.get_mut(&c.stream_id) else {
            // A credit for a stream already settled: late, harmless.
            return Ok(None);
        };
        if c.acked > s.sent {
            return Err(format!(
                "CREDIT acknowledges {} bytes of stream {}, {} sent",
                c.acked, c.stream_id, s.sent
            ));
        }
        s.limit = s.limit.max(c.limit);
        // The first CREDIT for an offer accepts it.
        s.awaiting_accept = false;
        let moved = c.acked > s.acked;
        if moved {
            s.acked = c.acked;
            while s
                .retained
                .front()
                .is_some_and(|(off, d)| off + d.len() as u64 <= c.acked)
            {
                s.retained.pop_front();
            }
        }
        if s.awaiting_rewind {
            Self::rewind(s, c.acked);
        }
        Ok(moved.then_some((c.stream_id, c.acked)))
    }

    /// A new connection carries the session on, the peer having received our sequenced frames
    /// up to `peer_received` and granting `peer_connection_window`. Connection windows start
    /// afresh. Returns the `CREDIT`s to send: one per open incoming stream, telling its sender
    /// exactly where to continue (PROTOCOL.md §4). Outgoing streams whose `STREAM_OPEN` the
    /// peer has wait for its `CREDIT`; the others start again from offset 0 (their
    /// `STREAM_OPEN` is replayed).
    pub(crate) fn resume(
        &mut self,
        peer_received: u64,
        peer_connection_window: u64,
    ) -> Vec<Credit> {
        self.conn_sent = 0;
        self.conn_limit = peer_connection_window;
        self.conn_received = 0;
        self.conn_consumed = 0;
        self.conn_granted = self.connection_window;
        // What the application has not taken yet arrived on an earlier connection.
        for s in self.incoming.values_mut() {
            s.carried = s.received - s.consumed;
        }
        for s in self.out.values_mut() {
            if s.open_seq <= peer_received {
                s.awaiting_rewind = true;
                s.resend.clear();
            } else {
                Self::rewind(s, 0);
            }
        }
        self.incoming
            .iter()
            .filter(|(_, s)| !s.ended && !s.offer_pending)
            .map(|(id, s)| Credit {
                stream_id: *id,
                acked: s.received,
                limit: s.granted,
            })
            .collect()
    }

    /// Continue stream `s` from offset `to`: what it had sent beyond is sent again (from the
    /// retained chunks, not hashed twice), then its tail, if it had one.
    fn rewind(s: &mut OutStream, to: u64) {
        s.awaiting_rewind = false;
        s.resend = s
            .retained
            .iter()
            .filter(|(off, d)| off + d.len() as u64 > to)
            .map(|(off, d)| {
                let skip = to.saturating_sub(*off) as usize;
                (off + skip as u64, d.slice(skip..))
            })
            .collect();
        // Everything from `to` on is in `resend` (the retained chunks cover what was not
        // acknowledged), and goes out again before any new data.
        s.sent = to;
        s.resend_tail = s.tail.is_some();
    }

    /// Whether outgoing stream `id` is an offer the receiver has not accepted yet.
    pub(crate) fn awaiting_accept(&self, id: u64) -> bool {
        self.out.get(&id).is_some_and(|s| s.awaiting_accept)
    }

    /// The next retransmission after a resume (or the held end of an offer just accepted),
    /// within the connection's credit.
    pub(crate) fn poll_resend(&mut self) -> Option<Frame> {
        let conn_room = self.conn_limit.saturating_sub(self.conn_sent);
        for (id, s) in self.out.iter_mut() {
            if s.awaiting_rewind || s.awaiting_accept {
                continue;
            }
            if let Some((off, data)) = s.resend.front_mut() {
                let n = (data.len() as u64).min(conn_room).min(self.max_chunk) as usize;
                if n == 0 {
                    return None;
                }
                let chunk = data.split_to(n);
                let offset = *off;
                *off += n as u64;
                if data.is_empty() {
                    s.resend.pop_front();
                }
                s.sent = s.sent.max(offset + n as u64);
                self.conn_sent += n as u64;
                return Some(Frame::StreamChunk(StreamChunk {
                    stream_id: *id,
                    offset,
                    data: chunk,
                }));
            }
            if s.resend_tail {
                s.resend_tail = false;
                return s.tail.clone();
            }
        }
        None
    }

    /// Bytes kept for retransmission over all outgoing streams.
    pub(crate) fn retained_bytes(&self) -> u64 {
        self.out
            .values()
            .flat_map(|s| s.retained.iter())
            .map(|(_, d)| d.len() as u64)
            .sum()
    }

    /// The receive side's accounting for the current connection, for invariant checks:
    /// (bytes received, bytes consumed or discarded, limit granted, window).
    pub(crate) fn connection_accounting(&self) -> (u64, u64, u64, u64) {
        (
            self.conn_received,
            self.conn_consumed,
            self.conn_granted,
            self.connection_window,
        )
    }

    /// Our per-stream receive window.
    pub(crate) fn stream_window(&self) -> u64 {
        self.stream_window
    }

    // ----- receiving -----

    /// A `STREAM_OPEN` arrived. `Err` is a violation that closes the connection: an id that
    /// does not increase (`protocol error`), or a stream beyond our `max_streams`
    /// (`limit exceeded`).
    /// An `offer` gets no credit until [`Streams::accept`].
    pub(crate) fn on_open(
        &mut self,
        id: u64,
        total_len: Option<u64>,
        hash: Option<[u8; 32]>,
        offer: bool,
    ) -> Result<(), Inbound> {
        if id <= self.last_in_id {
            return Err(Inbound::Fatal(
                ReasonCode::ProtocolError,
                format!("stream id {id} not above {}", self.last_in_id),
            ));
        }
        self.last_in_id = id;
        // A sender counts a stream as open until its STREAM_RESULT arrives, the receiver only
        // until its STREAM_END: a correct sender never opens more than we announced.
        let open = self.incoming.values().filter(|s| !s.ended).count();
        if open >= self.max_incoming {
            return Err(Inbound::Fatal(
                ReasonCode::LimitExceeded,
                format!(
                    "STREAM_OPEN beyond the max_streams we announced ({} open)",
                    self.max_incoming
                ),
            ));
        }
        self.incoming.insert(
            id,
            InStream {
                total_len,
                announced_hash: hash,
                received: 0,
                consumed: 0,
                granted: if offer { 0 } else { self.stream_window },
                hasher: StreamHasher::default(),
                ended: false,
                answered: false,
                carried: 0,
                offer_pending: offer,
            },
        );
        Ok(())
    }

    /// A `STREAM_CHUNK` arrived.
    pub(crate) fn on_chunk(&mut self, c: StreamChunk) -> Inbound {
        let n = c.data.len() as u64;
        if self.conn_received + n > self.conn_granted {
            return Inbound::Fatal(
                ReasonCode::FlowControlError,
                format!(
                    "{} chunk bytes beyond the connection limit {}",
                    self.conn_received + n - self.conn_granted,
                    self.conn_granted
                ),
            );
        }
        self.conn_received += n;
        let Some(s) = self.incoming.get_mut(&c.stream_id).filter(|s| !s.ended) else {
            if c.stream_id <= self.last_in_id {
                // A stream we finished or refused: the chunk was in flight. Drop it, and
                // count it consumed so the connection window is not lost.
                self.conn_consumed += n;
                return Inbound::Nothing;
            }
            return Inbound::Fatal(
                ReasonCode::ProtocolError,
                format!("chunk for stream {} that was never opened", c.stream_id),
            );
        };
        let end = c.offset + n; // cannot overflow: the codec refuses such chunks
        if end > s.granted {
            return Inbound::Fatal(
                ReasonCode::FlowControlError,
                format!(
                    "stream {} chunk ends at {end}, beyond the limit {}",
                    c.stream_id, s.granted
                ),
            );
        }
        if end <= s.received {
            // Already have all of it (a retransmission after a resume).
            self.conn_consumed += n;
            return Inbound::Nothing;
        }
        if c.offset > s.received {
            return Inbound::Ended(Err((
                ReasonCode::StreamIntegrity,
                format!(
                    "stream {} chunk at {} leaves a gap after {}",
                    c.stream_id, c.offset, s.received
                ),
            )));
        }
        // Trim what we already have.
        let skip = (s.received - c.offset) as usize;
        self.conn_consumed += skip as u64;
        let data = c.data.slice(skip..);
        if s.total_len.is_some_and(|t| end > t) {
            return Inbound::Ended(Err((
                ReasonCode::StreamIntegrity,
                format!("stream {} runs past its announced length", c.stream_id),
            )));
        }
        s.hasher.update(&data);
        s.received = end;
        Inbound::Data(data)
    }

    /// A `STREAM_END` arrived: verify length and hash.
    pub(crate) fn on_end(&mut self, e: StreamEnd) -> Inbound {
        let Some(s) = self.incoming.get(&e.stream_id).filter(|s| !s.ended) else {
            return if e.stream_id <= self.last_in_id {
                Inbound::Nothing // already finished (a resend after a resume)
            } else {
                Inbound::Fatal(
                    ReasonCode::ProtocolError,
                    format!("end of stream {} that was never opened", e.stream_id),
                )
            };
        };
        if s.offer_pending {
            return Inbound::Fatal(
                ReasonCode::ProtocolError,
                format!(
                    "STREAM_END of stream {} before its offer was accepted",
                    e.stream_id
                ),
            );
        }
        let sha: [u8; 32] = s.hasher.finalize();
        let problem = if e.total_len != s.received {
            Some(format!(
                "end says {} bytes, {} received",
                e.total_len, s.received
            ))
        } else if s.total_len.is_some_and(|t| t != e.total_len) {
            Some(format!(
                "open announced {} bytes, end says {}",
                s.total_len.unwrap_or(0),
                e.total_len
            ))
        } else if e.hash != sha {
            Some("BLAKE3 of the bytes received does not match the end's".to_string())
        } else if s.announced_hash.is_some_and(|h| h != sha) {
            Some("BLAKE3 of the bytes received does not match the open's".to_string())
        } else {
            None
        };
        match problem {
            None => Inbound::Ended(Ok(sha)),
            Some(p) => Inbound::Ended(Err((ReasonCode::StreamIntegrity, p))),
        }
    }

    /// A `STREAM_ABORT` arrived.
    pub(crate) fn on_abort(&mut self, a: &StreamAbort) -> Inbound {
        if self.incoming.get(&a.stream_id).is_some_and(|s| !s.ended) {
            Inbound::Ended(Err((a.reason, a.text.clone())))
        } else if a.stream_id <= self.last_in_id {
            Inbound::Nothing
        } else {
            Inbound::Fatal(
                ReasonCode::ProtocolError,
                format!("abort of stream {} that was never opened", a.stream_id),
            )
        }
    }

    /// Forgets incoming stream `id` (ended, failed or cancelled). Its unconsumed bytes go back
    /// to the connection window: the application will never read them.
    pub(crate) fn close_incoming(&mut self, id: u64) -> bool {
        match self.incoming.remove(&id) {
            Some(s) => {
                // Only this connection's bytes return to this connection's window.
                self.conn_consumed += s.received - s.consumed - s.carried;
                true
            }
            None => false,
        }
    }

    /// The application accepts offer `id` (it starts reading): the `CREDIT` that grants its
    /// first window, which is the acceptance (PROTOCOL.md §5.2). `None` for a stream that is
    /// no pending offer.
    pub(crate) fn accept(&mut self, id: u64) -> Option<Credit> {
        let s = self.incoming.get_mut(&id).filter(|s| s.offer_pending)?;
        s.offer_pending = false;
        s.granted = s.consumed + self.stream_window;
        Some(Credit {
            stream_id: id,
            acked: s.received,
            limit: s.granted,
        })
    }

    /// The application took `n` bytes of stream `id`. Returns the `CREDIT` frames due: a new
    /// grant once a quarter of a window has been consumed since the last one.
    pub(crate) fn consumed(&mut self, id: u64, n: u64) -> Vec<Credit> {
        let mut out = Vec::new();
        // A report for a stream already let go of (or of an earlier session) changes nothing.
        let Some(s) = self.incoming.get_mut(&id).filter(|s| !s.offer_pending) else {
            return out;
        };
        let n = n.min(s.received - s.consumed);
        s.consumed += n;
        let old = n.min(s.carried);
        s.carried -= old;
        let limit = s.consumed + self.stream_window;
        if limit.saturating_sub(s.granted) >= self.stream_window / 4 {
            s.granted = limit;
            out.push(Credit {
                stream_id: id,
                acked: s.received,
                limit,
            });
        }
        self.conn_consumed += n - old;
        if let Some(c) = self.connection_credit(false) {
            out.push(c);
        }
        out
    }

    /// Connection credit beyond the connection window for a starved stream: when the
    /// application has taken everything of a stream that has not ended (it waits for more)
    /// while data of other streams it has not read yet fills the connection window, the
    /// stream's next chunk could never come — a deadlock for an application that reads in
    /// order (found by the simulator's `pipelined` scenario with drawn windows). The limit is
    /// raised by a stream window, never beyond `connection_window` plus a stream window per
    /// open incoming stream: every stream stays within its own window, so that is the bound
    /// on what is buffered (PROTOCOL.md §6.2).
    pub(crate) fn starved_credit(&mut self) -> Option<Credit> {
        let starved = self
            .incoming
            .values()
            .any(|s| !s.ended && !s.offer_pending && s.received == s.consumed);
        let room = self.conn_granted.saturating_sub(self.conn_received);
        if !starved || room >= self.max_chunk {
            return None;
        }
        let cap = self.conn_consumed
            + self.connection_window
            + self.incoming.len() as u64 * self.stream_window;
        let limit = (self.conn_granted + self.stream_window).min(cap);
        (limit > self.conn_granted).then(|| {
            self.conn_granted = limit;
            Credit {
                stream_id: 0,
                acked: self.conn_received,
                limit,
            }
        })
    }

    /// Open incoming streams (for the buffering bound).
    pub(crate) fn incoming_count(&self) -> usize {
        self.incoming.len()
    }

    /// The connection-wide `CREDIT`, when a quarter window is due (or always, if `force`).
    pub(crate) fn connection_credit(&mut self, force: bool) -> Option<Credit> {
        let limit = self.conn_consumed + self.connection_window;
        if force || limit.saturating_sub(self.conn_granted) >= self.connection_window / 4 {
            self.conn_granted = self.conn_granted.max(limit);
            Some(Credit {
                stream_id: 0,
                acked: self.conn_received,
                limit: self.conn_granted,
            })
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> StreamParams {
        StreamParams {
            stream_window: 100,
            connection_window: 150,
            max_incoming: 2,
            max_chunk: 40,
            peer_stream_window: 100,
            peer_connection_window: 150,
            peer_max_streams: 2,
        }
    }

    fn data(n: usize) -> Bytes {
        Bytes::from((0..n).map(|i| i as u8).collect::<Vec<_>>())
    }

    #[test]
    fn the_sender_never_exceeds_the_stream_window() {
        let mut s = Streams::new(params());
        let id = s.open(None, None, 1, false);
        let mut sent = 0;
        while s.capacity(id) > 0 {
            let n = s.capacity(id) as usize;
            assert!(n <= 40, "one chunk at most");
            s.write(id, data(n)).unwrap_or_else(|e| panic!("{e:?}"));
            sent += n;
        }
        assert_eq!(sent, 100);
        assert_eq!(s.write(id, data(1)), Err(StreamRefusal::NoCredit));
        // Acknowledgement alone frees retention, not credit.
        let moved = s.credit(Credit {
            stream_id: id,
            acked: 100,
            limit: 100,
        });
        assert_eq!(moved, Ok(Some((id, 100))));
        assert_eq!(s.capacity(id), 0);
        assert_eq!(s.retained_bytes(), 0);
        s.credit(Credit {
            stream_id: id,
            acked: 100,
            limit: 130,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.capacity(id), 30);
    }

    #[test]
    fn the_connection_window_caps_all_streams_together() {
        let mut s = Streams::new(params());
        let a = s.open(None, None, 1, false);
        let b = s.open(None, None, 1, false);
        for _ in 0..3 {
            let n = s.capacity(a) as usize;
            s.write(a, data(n)).unwrap_or_else(|e| panic!("{e:?}"));
        }
        // a took 100 of the 150 connection bytes; b gets at most 50.
        let mut b_sent = 0;
        while s.capacity(b) > 0 {
            let n = s.capacity(b) as usize;
            s.write(b, data(n)).unwrap_or_else(|e| panic!("{e:?}"));
            b_sent += n;
        }
        assert_eq!(b_sent, 50);
    }

    #[test]
    fn credit_is_granted_only_as_the_application_consumes() {
        let mut r = Streams::new(params());
        r.on_open(1, None, None, false)
            .unwrap_or_else(|e| panic!("{e:?}"));
        for off in [0u64, 40, 80] {
            let n = if off == 80 { 20 } else { 40 };
            let got = r.on_chunk(StreamChunk {
                stream_id: 1,
                offset: off,
                data: data(n),
            });
            assert!(matches!(got, Inbound::Data(_)));
        }
        // Window full: a byte more is a flow-control violation.
        let over = r.on_chunk(StreamChunk {
            stream_id: 1,
            offset: 100,
            data: data(1),
        });
        assert!(matches!(
            over,
            Inbound::Fatal(ReasonCode::FlowControlError, _)
        ));
        // Consuming less than a quarter window grants nothing.
        assert!(r.consumed(1, 10).iter().all(|c| c.stream_id != 1));
        // A quarter window consumed: a grant of consumed + window.
        let credits = r.consumed(1, 20);
        let c = credits.iter().find(|c| c.stream_id == 1).copied();
        assert_eq!(
            c,
            Some(Credit {
                stream_id: 1,
                acked: 100,
                limit: 130
            })
        );
    }

    #[test]
    fn a_gap_or_a_bad_hash_fails_the_stream_not_the_connection() {
        let mut r = Streams::new(params());
        r.on_open(1, None, None, false)
            .unwrap_or_else(|e| panic!("{e:?}"));
        let gap = r.on_chunk(StreamChunk {
            stream_id: 1,
            offset: 5,
            data: data(3),
        });
        assert!(matches!(
            gap,
            Inbound::Ended(Err((ReasonCode::StreamIntegrity, _)))
        ));
        r.on_open(2, Some(3), None, false)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(matches!(
            r.on_chunk(StreamChunk {
                stream_id: 2,
                offset: 0,
                data: Bytes::from_static(b"abc")
            }),
            Inbound::Data(_)
        ));
        let bad = r.on_end(StreamEnd {
            stream_id: 2,
            total_len: 3,
            hash: [0; 32],
        });
        assert!(matches!(
            bad,
            Inbound::Ended(Err((ReasonCode::StreamIntegrity, _)))
        ));
        let good = r.on_end(StreamEnd {
            stream_id: 2,
            total_len: 3,
            hash: crate::wire::examples::BLAKE3_ABC,
        });
        assert_eq!(good, Inbound::Ended(Ok(crate::wire::examples::BLAKE3_ABC)));
    }

    #[test]
    fn retransmitted_bytes_are_dropped_or_trimmed() {
        let mut r = Streams::new(params());
        r.on_open(1, None, None, false)
            .unwrap_or_else(|e| panic!("{e:?}"));
        let _ = r.on_chunk(StreamChunk {
            stream_id: 1,
            offset: 0,
            data: data(10),
        });
        assert_eq!(
            r.on_chunk(StreamChunk {
                stream_id: 1,
                offset: 0,
                data: data(10)
            }),
            Inbound::Nothing
        );
        let overlap = r.on_chunk(StreamChunk {
            stream_id: 1,
            offset: 5,
            data: data(10),
        });
        assert_eq!(overlap, Inbound::Data(data(10).slice(5..)));
        assert_eq!(r.incoming[&1].received, 15);
    }

    #[test]
    fn resume_offsets_are_tracked_exactly() {
        let mut s = Streams::new(params());
        let id = s.open(None, None, 1, false);
        for _ in 0..2 {
            let n = s.capacity(id) as usize;
            s.write(id, data(n)).unwrap_or_else(|e| panic!("{e:?}"));
        }
        // 80 sent; the receiver acknowledged 55: retained data covers exactly 40..80.
        s.credit(Credit {
            stream_id: id,
            acked: 55,
            limit: 100,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let out = &s.out[&id];
        assert_eq!(out.acked, 55);
        let offsets: Vec<u64> = out.retained.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, vec![40]);
        // An acknowledgement beyond what was sent is refused.
        assert!(
            s.credit(Credit {
                stream_id: id,
                acked: 81,
                limit: 100
            })
            .is_err()
        );
    }

    #[test]
    fn the_sender_refuses_to_overrun_or_misstate_its_length() {
        let mut s = Streams::new(params());
        let id = s.open(Some(5), None, 1, false);
        assert_eq!(s.write(id, data(6)), Err(StreamRefusal::Overrun));
        s.write(id, data(3)).unwrap_or_else(|e| panic!("{e:?}"));
        let ended = s.finish(id).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(matches!(
            ended,
            Err(StreamAbort {
                reason: ReasonCode::StreamIntegrity,
                ..
            })
        ));
    }

    /// A sender that announced the BLAKE3 ends with the announced one without hashing the
    /// bytes (the receiver's check is the one pass); one that did not ends with the bytes'.
    /// A wrong announcement then fails at the receiver, with `stream integrity`.
    #[test]
    fn an_announced_hash_is_what_the_end_carries_and_the_receiver_checks() {
        let bytes = data(3);
        let right = *blake3::hash(&bytes).as_bytes();
        for announced in [None, Some(right), Some([7; 32])] {
            let mut tx = Streams::new(params());
            let mut rx = Streams::new(params());
            let id = tx.open(Some(3), announced, 1, false);
            rx.on_open(id, Some(3), announced, false)
                .unwrap_or_else(|e| panic!("{e:?}"));
            let chunk = tx
                .write(id, bytes.clone())
                .unwrap_or_else(|e| panic!("{e:?}"));
            let Ok(end) = tx.finish(id).unwrap_or_else(|e| panic!("{e:?}")) else {
                panic!("{announced:?}: the sender aborted");
            };
            assert_eq!(end.hash, announced.unwrap_or(right), "{announced:?}");
            assert!(matches!(rx.on_chunk(chunk), Inbound::Data(_)));
            let verdict = rx.on_end(end);
            if announced == Some([7; 32]) {
                assert!(
                    matches!(
                        verdict,
                        Inbound::Ended(Err((ReasonCode::StreamIntegrity, _)))
                    ),
                    "{verdict:?}"
                );
            } else {
                assert!(
                    matches!(verdict, Inbound::Ended(Ok(h)) if h == right),
                    "{verdict:?}"
                );
            }
        }
    }

    #[test]
    fn a_stream_beyond_max_streams_is_a_violation() {
        let mut r = Streams::new(params());
        r.on_open(1, None, None, false)
            .unwrap_or_else(|e| panic!("{e:?}"));
        r.on_open(2, None, None, false)
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(matches!(
            r.on_open(3, None, None, false),
            Err(Inbound::Fatal(ReasonCode::LimitExceeded, _))
        ));
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Any payload, cut into any pieces by the writer and any chunk sizes by the credit,
        /// reassembles at the receiver to the same bytes and the same hash.
        #[test]
        fn any_chunking_reassembles_to_the_same_bytes_and_hash(
            payload in proptest::collection::vec(any::<u8>(), 0..20_000),
            cuts in proptest::collection::vec(1usize..3000, 1..40),
            max_chunk in 1u64..5000,
            window in 1u64..8000,
        ) {
            let p = StreamParams {
                stream_window: window,
                connection_window: window * 2,
                max_incoming: 4,
                max_chunk,
                peer_stream_window: window,
                peer_connection_window: window * 2,
                peer_max_streams: 4,
            };
            let (mut tx, mut rx) = (Streams::new(p), Streams::new(p));
            let id = tx.open(Some(payload.len() as u64), None, 1, false);
            rx.on_open(id, Some(payload.len() as u64), None, false).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            let mut pending: VecDeque<Bytes> = VecDeque::new();
            let mut at = 0;
            for c in cuts.iter().cycle() {
                if at >= payload.len() { break; }
                let end = (at + c).min(payload.len());
                pending.push_back(Bytes::copy_from_slice(&payload[at..end]));
                at = end;
            }
            let mut got = Vec::new();
            while let Some(mut piece) = pending.pop_front() {
                // Send as much as the credit allows, then let the receiver consume and grant.
                while !piece.is_empty() {
                    let cap = tx.capacity(id) as usize;
                    // Everything sent was consumed and its credit applied: the window is open.
                    prop_assert!(cap > 0, "no credit although the reader consumed everything");
                    let chunk = piece.split_to(cap.min(piece.len()));
                    prop_assert!(chunk.len() as u64 <= max_chunk);
                    let frame = tx.write(id, chunk).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                    match rx.on_chunk(frame) {
                        Inbound::Data(d) => {
                            got.extend_from_slice(&d);
                            // The application reads at once; the grants it earns go back.
                            for c in rx.consumed(id, d.len() as u64) {
                                tx.credit(c).map_err(TestCaseError::fail)?;
                            }
                        }
                        other => return Err(TestCaseError::fail(format!("{other:?}"))),
                    }
                }
            }
            let end = tx.finish(id).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            let end = end.map_err(|a| TestCaseError::fail(format!("{a:?}")))?;
            prop_assert_eq!(end.hash, *blake3::hash(&payload).as_bytes());
            let hash = end.hash;
            prop_assert_eq!(rx.on_end(end), Inbound::Ended(Ok(hash)));
            prop_assert_eq!(got, payload);
        }
    }
}
