//! Carrying out the core's outputs: settling the application's sends, handing it stream
//! senders and incoming streams, feeding their data and progress, reporting state and health.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::super::stream::Incoming;
use super::super::stream::{InItem, IncomingStream, OutCmd, Progress, StreamError, StreamSender};
use super::super::types::{ConnectionState, Message};
use super::{Driver, STREAM_QUEUE, hex};
use crate::core::{CloseCause, Failure, InFailure, Output};
use crate::error::SendError;
use crate::wire::ReasonCode;

/// What the driver keeps for a send until the core settles it.
pub(super) enum Waiting {
    Message(oneshot::Sender<Result<(), SendError>>),
    Open {
        reply: oneshot::Sender<Result<StreamSender, SendError>>,
        total_len: Option<u64>,
    },
}

/// The driver's side of an outgoing stream.
pub(super) struct OutHandle {
    pub(super) rx: mpsc::Receiver<OutCmd>,
    pub(super) progress: watch::Sender<Progress>,
    pub(super) done: Option<oneshot::Sender<Result<(), SendError>>>,
    pub(super) opened: Duration,
}

/// The driver's side of an incoming stream.
pub(super) struct InHandle {
    pub(super) tx: mpsc::UnboundedSender<InItem>,
    pub(super) progress: watch::Sender<Progress>,
    pub(super) opened: Duration,
}

pub(super) fn failure_to_error(f: Failure) -> SendError {
    match f {
        Failure::Unknown(c) => SendError::Unknown(c),
        Failure::NotSent(c) => SendError::Closed(c),
        Failure::TooLarge { size, max } => SendError::TooLarge { size, max },
        Failure::InvalidContentType(d) => SendError::InvalidContentType(d),
        Failure::StreamsUnsupported => SendError::StreamsUnsupported,
        Failure::InvalidMetadata(d) => SendError::InvalidMetadata(d),
        Failure::MetadataUnsupported => SendError::MetadataUnsupported,
        Failure::Stream { reason, detail } => SendError::Stream { reason, detail },
    }
}

fn rate(bytes: u64, since: Duration, now: Duration) -> f64 {
    let secs = now.saturating_sub(since).as_secs_f64();
    if secs > 0.0 { bytes as f64 / secs } else { 0.0 }
}

impl Driver {
    /// Carries out what the core said.
    pub(super) fn outputs(&mut self) {
        let now = self.now();
        while let Some(output) = self.core.poll_output() {
            self.output(output, now);
        }
    }

    fn output(&mut self, output: Output, now: Duration) {
        match output {
            Output::Connected { resumed } => {
                if resumed {
                    let s = self.core.session();
                    tracing::info!(
                        session = %hex(&self.session_id.0),
                        replayed_frames = s.map_or(0, |s| s.unacked_frames()),
                        replayed_bytes = s.map_or(0, |s| s.unacked_bytes()),
                        stream_bytes_retained = s.map_or(0, |s| s.stream_retained_bytes()),
                        "session resumed"
                    );
                }
                let _ = self.state.send(ConnectionState::Connected);
            }
            Output::SessionLost { unknown } => {
                tracing::warn!(unknown, "session lost; a new one starts");
            }
            Output::Suspended(cause) => {
                tracing::warn!(cause = %cause, "connection lost; the session waits to resume");
                let _ = self.state.send(ConnectionState::Reconnecting);
            }
            Output::Closed(cause) => {
                match &cause {
                    CloseCause::Lost(d) => tracing::warn!(detail = %d, "connection lost"),
                    c => tracing::info!(cause = %c, "connection closed"),
                }
                let _ = self.state.send(ConnectionState::Closed(cause.clone()));
                self.closed = Some(cause);
            }
            Output::Delivered(id) => {
                if let Some(Waiting::Message(done)) = self.waiting.remove(&id) {
                    let _ = done.send(Ok(()));
                }
            }
            Output::Failed(id, f) => match self.waiting.remove(&id) {
                Some(Waiting::Message(done)) => {
                    let _ = done.send(Err(failure_to_error(f)));
                }
                Some(Waiting::Open { reply, .. }) => {
                    let _ = reply.send(Err(failure_to_error(f)));
                }
                None => {}
            },
            Output::StreamReady { open, key } => {
                if let Some(Waiting::Open { reply, total_len }) = self.waiting.remove(&open) {
                    let (data, rx) = mpsc::channel(STREAM_QUEUE);
                    let (progress, progress_rx) = watch::channel(Progress {
                        total: total_len,
                        ..Progress::default()
                    });
                    let (done_tx, done) = oneshot::channel();
                    let sender = StreamSender {
                        id: key.id,
                        data,
                        progress: progress_rx,
                        done,
                        chunk: self.chunk,
                        state: self.state.subscribe(),
                        settled: None,
                    };
                    if reply.send(Ok(sender)).is_ok() {
                        let h = OutHandle {
                            rx,
                            progress,
                            done: Some(done_tx),
                            opened: now,
                        };
                        self.out.insert(key, h);
                    } else {
                        self.core
                            .stream_abort(key, ReasonCode::Cancelled, "nobody took it".into());
                    }
                }
            }
            Output::StreamSent { key, n } => {
                if let Some(h) = self.out.get(&key) {
                    h.progress.send_modify(|p| p.sent += n);
                }
            }
            Output::StreamAcked { key, acked } => {
                if let Some(h) = self.out.get(&key) {
                    let opened = h.opened;
                    h.progress.send_modify(|p| {
                        p.acked = acked;
                        p.bytes_per_sec = rate(acked, opened, now);
                    });
                }
            }
            Output::StreamSettled { key, result } => {
                tracing::debug!(id = key.id, ok = result.is_ok(), "stream settled");
                if let Some(mut h) = self.out.remove(&key) {
                    h.progress.send_modify(|p| {
                        p.done = true;
                        if result.is_ok() {
                            p.acked = p.sent;
                        }
                    });
                    if let Some(done) = h.done.take() {
                        let _ = done.send(result.map_err(failure_to_error));
                    }
                }
            }
            Output::Message {
                content_type,
                metadata,
                payload,
            } => {
                self.held_bytes += payload.len() + metadata.len();
                self.deliveries.push_back(Incoming::Message(Message {
                    content_type,
                    metadata,
                    payload,
                }));
            }
            Output::Incoming {
                key,
                content_type,
                total_len,
                hash,
                metadata,
                offer,
            } => {
                tracing::debug!(id = key.id, %content_type, ?total_len, "stream incoming");
                let (tx, rx) = mpsc::unbounded_channel();
                let (progress, progress_rx) = watch::channel(Progress {
                    total: total_len,
                    ..Progress::default()
                });
                let opened = now;
                self.incoming_streams.insert(
                    key,
                    InHandle {
                        tx,
                        progress,
                        opened,
                    },
                );
                let stream = IncomingStream::new(
                    key,
                    super::super::stream::StreamHead {
                        content_type,
                        total_len,
                        hash,
                        metadata,
                        offer,
                    },
                    rx,
                    self.signals_tx.clone(),
                    progress_rx,
                );
                self.deliveries.push_back(Incoming::Stream(stream));
            }
            Output::Data { key, data } => {
                if let Some(h) = self.incoming_streams.get(&key) {
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
            Output::Ended { key, result } => {
                tracing::debug!(id = key.id, ok = result.is_ok(), "stream ended");
                if let Some(h) = self.incoming_streams.remove(&key) {
                    h.progress.send_modify(|p| p.done = true);
                    let _ = h.tx.send(InItem::End(result.map_err(|f| match f {
                        InFailure::Failed(reason, detail) => StreamError::Failed { reason, detail },
                        InFailure::Closed(c) => StreamError::Closed(c),
                    })));
                }
            }
            Output::Rtt(rtt) => {
                tracing::trace!(rtt_us = rtt.as_micros() as u64, "rtt");
                let srtt = self.core.session().and_then(|s| s.rtt());
                self.health.send_if_modified(|h| {
                    let changed = h.rtt != srtt;
                    h.rtt = srtt;
                    changed
                });
            }
            Output::Health { degraded, rtt, why } => {
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
        }
    }
}
