//! The application's ends of streams: [`StreamSender`] to send a large payload in chunks with
//! backpressure, [`IncomingStream`] to read one at the application's own pace, [`Progress`]
//! to watch either.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::sync::{mpsc, oneshot, watch};

use super::types::{ConnectionState, Message};
use crate::core::StreamKey;
use crate::error::{CloseCause, SendError};
use crate::wire::ReasonCode;

/// What [`crate::transport::Connection::receive`] returns: the peer's messages and streams,
/// in the order the peer sent them.
///
/// ```no_run
/// # async fn demo(incoming: clipsync::transport::Incoming) -> Result<(), clipsync::transport::StreamError> {
/// use clipsync::transport::Incoming;
/// match incoming {
///     Incoming::Message(m) => println!("{} bytes of {}", m.payload.len(), m.content_type),
///     // Read it (or `into_bytes` for both kinds at once); dropping it cancels it.
///     Incoming::Stream(s) => println!("{} bytes", s.read_to_end(64 << 20).await?.len()),
///     _ => {}
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Incoming {
    /// A whole message.
    Message(Message),
    /// A stream; read it (or drop it to cancel).
    Stream(IncomingStream),
}

/// How far a stream has got. Updated per chunk; cheap to watch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    /// Sender: bytes handed to the connection.
    pub sent: u64,
    /// Sender: bytes the receiver acknowledged.
    pub acked: u64,
    /// Receiver: bytes received in order.
    pub received: u64,
    /// The payload's length, if announced.
    pub total: Option<u64>,
    /// Average rate since the stream opened, in bytes per second (acknowledged bytes for a
    /// sender, received bytes for a receiver).
    pub bytes_per_sec: f64,
    /// The stream has settled (either way).
    pub done: bool,
}

/// What a [`StreamSender`] hands the driver.
#[derive(Debug)]
pub(crate) enum OutCmd {
    Data(Bytes),
    Finish,
    Abort(ReasonCode, String),
}

/// What the driver hands an [`IncomingStream`].
#[derive(Debug)]
pub(crate) enum InItem {
    Data(Bytes),
    /// The end: verified, with the payload's BLAKE3, or failed.
    End(Result<[u8; 32], StreamError>),
}

/// What stream handles tell the driver. Unbounded on purpose: each message stands for at most
/// one chunk in flight, so the credit window already bounds how many can be queued.
#[derive(Debug)]
pub(crate) enum StreamSignal {
    Consumed {
        key: StreamKey,
        n: u64,
    },
    /// The application accepts an offer: it started reading (PROTOCOL.md §5.2).
    Accept {
        key: StreamKey,
    },
    /// The application let go, with its verdict on a verified stream (`None`: kept).
    Released {
        key: StreamKey,
        verdict: Option<(ReasonCode, String)>,
    },
}

/// Why an incoming stream did not complete.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The stream failed: the sender aborted it (with its reason), or its bytes did not match
    /// the announced length or BLAKE3 (`stream integrity`). The connection is unaffected.
    #[error("stream failed with {reason}: {detail}")]
    Failed {
        /// The reason code.
        reason: ReasonCode,
        /// Details.
        detail: String,
    },
    /// The connection ended before the stream did.
    #[error("connection closed: {0}")]
    Closed(CloseCause),
    /// `read_to_end` was given a limit and the stream is longer.
    #[error("stream longer than the {max} bytes allowed")]
    TooLarge {
        /// The limit given.
        max: usize,
    },
}

impl From<StreamError> for io::Error {
    fn from(e: StreamError) -> io::Error {
        io::Error::other(e)
    }
}

/// Sends one stream. Write chunks (waiting when the window or queue is full), then
/// [`StreamSender::finish`], which resolves once the receiver verified the whole payload.
///
/// Dropping it without finishing aborts the stream with `cancelled`.
///
/// ```no_run
/// # async fn demo(conn: clipsync::transport::Connection, chunks: Vec<bytes::Bytes>)
/// # -> Result<(), clipsync::error::SendError> {
/// let total: u64 = chunks.iter().map(|c| c.len() as u64).sum();
/// let mut s = conn.open_stream("application/octet-stream", Some(total)).await?;
/// let mut progress = s.progress();
/// tokio::spawn(async move {
///     while progress.changed().await.is_ok() {
///         let p = progress.borrow().clone();
///         println!("{} of {:?} acknowledged", p.acked, p.total);
///     }
/// });
/// for c in chunks {
///     s.write(c).await?; // waits while the receiver's window is full
/// }
/// s.finish().await // the receiver has verified length and BLAKE3
/// # }
/// ```
#[derive(Debug)]
pub struct StreamSender {
    pub(crate) id: u64,
    pub(crate) data: mpsc::Sender<OutCmd>,
    pub(crate) progress: watch::Receiver<Progress>,
    pub(crate) done: oneshot::Receiver<Result<(), SendError>>,
    pub(crate) chunk: usize,
    pub(crate) state: watch::Receiver<ConnectionState>,
    /// The settlement, once taken from `done` early (a write found the stream settled).
    pub(crate) settled: Option<Result<(), SendError>>,
}

/// [`StreamSender::try_write`] found the queue full; the data comes back.
#[derive(Debug)]
pub struct Full(pub Bytes);

impl StreamSender {
    /// The stream's id on this connection.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Progress, to watch.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Why the driver no longer takes data: the stream settled (the receiver cancelled or
    /// failed it), or the connection ended.
    fn closed(&mut self) -> SendError {
        if self.settled.is_none() {
            if let Ok(r) = self.done.try_recv() {
                self.settled = Some(r);
            }
        }
        match &self.settled {
            Some(Err(e)) => e.clone(),
            _ => SendError::Closed(super::types::cause_of(&self.state)),
        }
    }

    /// Queues `data`, waiting while the stream's queue is full (backpressure: a slow receiver
    /// slows the writer, memory does not grow). `data` is not copied: the connection cuts
    /// chunks from it as credit allows, so a large `Bytes` costs one queue slot, and the
    /// caller's memory is what it already holds.
    pub async fn write(&mut self, data: Bytes) -> Result<(), SendError> {
        if data.is_empty() {
            return Ok(());
        }
        if self.data.send(OutCmd::Data(data)).await.is_err() {
            return Err(self.closed());
        }
        Ok(())
    }

    /// Queues `data` if there is room now; otherwise hands it back as [`Full`] at once.
    /// At most one chunk (`chunk_size`) is taken per call; a longer `data` is cut there and the
    /// rest returned as `Full` only if nothing fit.
    pub fn try_write(&mut self, mut data: Bytes) -> Result<Option<Bytes>, Full> {
        let rest = if data.len() > self.chunk {
            Some(data.split_off(self.chunk))
        } else {
            None
        };
        match self.data.try_send(OutCmd::Data(data)) {
            Ok(()) => Ok(rest),
            Err(mpsc::error::TrySendError::Full(OutCmd::Data(mut d)))
            | Err(mpsc::error::TrySendError::Closed(OutCmd::Data(mut d))) => {
                if let Some(r) = rest {
                    let mut whole = d.to_vec();
                    whole.extend_from_slice(&r);
                    d = Bytes::from(whole);
                }
                Err(Full(d))
            }
            Err(_) => Err(Full(Bytes::new())),
        }
    }

    /// Copies `reader` to the stream until its end, in `chunk_size` pieces; returns the bytes
    /// copied. A read error aborts the stream and is returned as [`SendError::Source`].
    pub async fn copy_from<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> Result<u64, SendError> {
        let mut total = 0u64;
        loop {
            let mut buf = Vec::with_capacity(self.chunk);
            let n = match (&mut *reader)
                .take(self.chunk as u64)
                .read_to_end(&mut buf)
                .await
            {
                Ok(n) => n,
                Err(e) => {
                    let _ = self
                        .data
                        .send(OutCmd::Abort(
                            ReasonCode::Cancelled,
                            format!("source failed: {e}"),
                        ))
                        .await;
                    return Err(SendError::Source(e.to_string()));
                }
            };
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
            if self
                .data
                .send(OutCmd::Data(Bytes::from(buf)))
                .await
                .is_err()
            {
                return Err(self.closed());
            }
        }
    }

    /// Writes everything `reader` yields, then finishes: the bytes sent once the peer has
    /// verified them. If the receiver settles the stream early (it declined an offer with
    /// `already have`, or cancelled), that outcome is returned as soon as it is known.
    ///
    /// ```no_run
    /// # async fn demo(to: clipsync::transport::ConnectionSender) -> Result<(), clipsync::error::SendError> {
    /// let mut file = tokio::io::empty(); // a tokio::fs::File in practice
    /// let s = to.open_stream("application/octet-stream", None).await?;
    /// let n = s.send_all(&mut file).await?;
    /// println!("{n} bytes delivered and verified");
    /// # Ok(()) }
    /// ```
    pub async fn send_all<R: AsyncRead + Unpin>(
        mut self,
        reader: &mut R,
    ) -> Result<u64, SendError> {
        let n = self.copy_from(reader).await?;
        self.finish().await?;
        Ok(n)
    }

    /// Ends the stream and waits until the receiver has verified it (length and BLAKE3), or
    /// failed it (then [`SendError::Stream`] says why), or the connection ended (delivery
    /// unknown).
    pub async fn finish(mut self) -> Result<(), SendError> {
        if let Some(r) = self.settled.take() {
            return r;
        }
        // If the stream already settled, the driver no longer listens; the settlement waits
        // in `done` either way.
        let _ = self.data.send(OutCmd::Finish).await;
        let state = self.state.clone();
        self.done
            .await
            .unwrap_or_else(|_| Err(SendError::Unknown(super::types::cause_of(&state))))
    }

    /// Gives up on the stream; the receiver discards what it got.
    pub async fn abort(self, reason: ReasonCode, detail: String) {
        let _ = self.data.send(OutCmd::Abort(reason, detail)).await;
    }
}

/// A stream from the peer. Read it with [`IncomingStream::chunk`], as an [`AsyncRead`], or
/// whole with [`IncomingStream::read_to_end`]. The sender can only get a window ahead of the
/// reader, so reading slowly slows the sender instead of filling memory.
///
/// Dropping it with bytes unread cancels the stream (the sender is told `cancelled`);
/// [`IncomingStream::decline`] tells it `already have` instead. Dropping it after taking every
/// byte but before reading its end (`Ok(None)`) settles it as delivered if its end had
/// arrived and verified by then, and as cancelled if not: read to the end to know.
///
/// A stream whose sender announced its BLAKE3 ([`IncomingStream::hash`]) arrives as an
/// *offer* (PROTOCOL.md §5.2): none of its bytes flow until this side starts reading, so
/// declining it costs the link nothing but the `STREAM_OPEN`.
///
/// ```no_run
/// # async fn demo(mut conn: clipsync::transport::Connection,
/// #               have: impl Fn(&[u8; 32]) -> bool) -> Result<(), Box<dyn std::error::Error>> {
/// use clipsync::transport::Incoming;
/// if let Ok(Incoming::Stream(s)) = conn.receive().await {
///     if s.hash().is_some_and(|h| have(&h)) {
///         s.decline(); // the sender's stream fails with `already have`; no byte was sent
///     } else {
///         let origin = s.metadata().clone(); // what the sender's engine attached
///         let image = s.read_to_end(64 << 20).await?; // reading accepts the offer
///         println!("{} bytes from {origin:?}", image.len());
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct IncomingStream {
    pub(crate) key: StreamKey,
    /// What its `STREAM_OPEN` said (boxed: an `Incoming` stays small to move around).
    pub(crate) head: Box<StreamHead>,
    /// An offer this side has not accepted yet: the first read accepts it.
    pub(crate) offer_pending: bool,
    pub(crate) rx: mpsc::UnboundedReceiver<InItem>,
    pub(crate) signals: mpsc::UnboundedSender<StreamSignal>,
    pub(crate) progress: watch::Receiver<Progress>,
    pub(crate) current: Bytes,
    pub(crate) ended: Option<Result<(), StreamError>>,
    /// The payload's BLAKE3, once its end was read and verified.
    pub(crate) verified: Option<[u8; 32]>,
    /// Bytes taken but not yet reported to the driver as consumed.
    pub(crate) unreported: u64,
    /// The release (with a verdict) was reported already.
    pub(crate) released: bool,
    /// The application decides the verdict itself ([`IncomingStream::hold_verdict`]).
    pub(crate) hold: bool,
}

/// What a `STREAM_OPEN` said about an incoming stream.
#[derive(Debug)]
pub(crate) struct StreamHead {
    pub(crate) content_type: String,
    pub(crate) total_len: Option<u64>,
    pub(crate) hash: Option<[u8; 32]>,
    pub(crate) metadata: Bytes,
    pub(crate) offer: bool,
}

/// Consumption is reported to the driver (which grants credit from it) in batches of this
/// many bytes, or sooner when the reader has taken everything queued: one report per chunk
/// cost a wake-up of the connection task per 64 KiB. Well under a quarter of the smallest
/// window, so credit flows as before.
const REPORT_EVERY: u64 = 256 * 1024;

impl IncomingStream {
    pub(crate) fn new(
        key: StreamKey,
        head: StreamHead,
        rx: mpsc::UnboundedReceiver<InItem>,
        signals: mpsc::UnboundedSender<StreamSignal>,
        progress: watch::Receiver<Progress>,
    ) -> Self {
        Self {
            key,
            offer_pending: head.offer,
            head: Box::new(head),
            rx,
            signals,
            progress,
            current: Bytes::new(),
            ended: None,
            verified: None,
            unreported: 0,
            released: false,
            hold: false,
        }
    }

    /// Keeps the sender waiting after the verified end until this side decides: `accept` (or
    /// dropping the stream) settles it as delivered, `reject` as failed with a reason. Without
    /// it, the stream is settled as delivered the moment the application reads its verified end
    /// (`chunk` returning `Ok(None)`). Use it when "delivered" must mean "kept", e.g. written to
    /// disk and renamed into place.
    pub fn hold_verdict(&mut self) {
        self.hold = true;
    }

    /// Settles a stream held with [`IncomingStream::hold_verdict`] as delivered (the same as
    /// dropping it after its verified end).
    pub fn accept(self) {}

    /// Declines the stream because this side already has its payload: the sender's stream
    /// fails with [`ReasonCode::AlreadyHave`] (20), which an engine takes as "the peer has
    /// it". For an offer (the sender announced the hash) no byte of the payload was sent;
    /// for any other stream the bytes in flight are dropped, as on a cancel.
    pub fn decline(self) {
        self.reject(ReasonCode::AlreadyHave, "already have it");
    }

    /// The application metadata the sender attached (empty if none).
    pub fn metadata(&self) -> &Bytes {
        &self.head.metadata
    }

    /// The peer's id for this stream (unique within the peer's session).
    pub fn id(&self) -> u64 {
        self.key.id
    }

    /// Refuses the stream: the sender's `finish` fails with `reason` (e.g. `cancelled`, or
    /// `internal error` when the payload could not be stored) instead of succeeding. After the
    /// verified end this takes effect only with [`IncomingStream::hold_verdict`]; before the
    /// end it cancels the stream. Dropping the stream instead means: kept if it was read to
    /// its verified end, cancelled otherwise.
    pub fn reject(mut self, reason: ReasonCode, detail: impl Into<String>) {
        if self.released {
            return;
        }
        let reason = if reason == ReasonCode::Normal {
            ReasonCode::Cancelled
        } else {
            reason
        };
        self.release(Some((reason, detail.into())));
    }

    /// Reports what was taken and lets go, once.
    fn release(&mut self, verdict: Option<(ReasonCode, String)>) {
        if self.released {
            return;
        }
        self.released = true;
        if self.unreported > 0 {
            let _ = self.signals.send(StreamSignal::Consumed {
                key: self.key,
                n: std::mem::take(&mut self.unreported),
            });
        }
        let _ = self.signals.send(StreamSignal::Released {
            key: self.key,
            verdict,
        });
    }

    /// Its content type.
    pub fn content_type(&self) -> &str {
        &self.head.content_type
    }

    /// Its length, if the sender announced it.
    pub fn total_len(&self) -> Option<u64> {
        self.head.total_len
    }

    /// Its BLAKE3, if the sender announced it up front (it is always checked at the end).
    pub fn hash(&self) -> Option<[u8; 32]> {
        self.head.hash
    }

    /// The payload's BLAKE3 as this side computed and verified it, once the end has been read
    /// ([`IncomingStream::chunk`] returned `Ok(None)`, or a read returned 0); `None` before
    /// that and for a failed stream. An application that names or indexes content by its hash
    /// takes it from here instead of hashing the bytes a second time.
    pub fn verified_hash(&self) -> Option<[u8; 32]> {
        self.verified
    }

    /// Progress, to watch.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>> {
        if std::mem::take(&mut self.offer_pending) {
            // Reading an offer accepts it: only now does the sender send its bytes.
            let _ = self.signals.send(StreamSignal::Accept { key: self.key });
        }
        if !self.current.is_empty() {
            return Poll::Ready(Ok(Some(std::mem::take(&mut self.current))));
        }
        if let Some(end) = &self.ended {
            return Poll::Ready(end.clone().map(|()| None));
        }
        match ready!(self.rx.poll_recv(cx)) {
            Some(InItem::Data(b)) => {
                self.unreported += b.len() as u64;
                // Report before the reader can wait for more: the driver needs the credit.
                if self.unreported >= REPORT_EVERY || self.rx.is_empty() {
                    let _ = self.signals.send(StreamSignal::Consumed {
                        key: self.key,
                        n: std::mem::take(&mut self.unreported),
                    });
                }
                Poll::Ready(Ok(Some(b)))
            }
            Some(InItem::End(result)) => {
                let result = result.map(|hash| {
                    self.verified = Some(hash);
                });
                self.ended = Some(result.clone());
                if result.is_ok() && !self.hold {
                    // The application has the whole verified payload: the sender may settle.
                    self.release(None);
                }
                Poll::Ready(result.map(|()| None))
            }
            None => {
                let e = StreamError::Closed(CloseCause::Lost("connection task ended".into()));
                self.ended = Some(Err(e.clone()));
                Poll::Ready(Err(e))
            }
        }
    }

    /// The next piece of the stream; `Ok(None)` once the whole payload arrived and its length
    /// and BLAKE3 were verified.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, StreamError> {
        std::future::poll_fn(|cx| self.poll_item(cx)).await
    }

    /// Reads the whole stream into memory, refusing more than `max` bytes.
    pub async fn read_to_end(mut self, max: usize) -> Result<Bytes, StreamError> {
        let mut out = Vec::new();
        while let Some(b) = self.chunk().await? {
            if out.len() + b.len() > max {
                return Err(StreamError::TooLarge { max });
            }
            out.extend_from_slice(&b);
        }
        Ok(Bytes::from(out))
    }
}

impl AsyncRead for IncomingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.current.is_empty() {
            match ready!(self.poll_item(cx)) {
                Ok(Some(b)) => self.current = b,
                Ok(None) => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
        let n = self.current.len().min(buf.remaining());
        let piece = self.current.split_to(n);
        buf.put_slice(&piece);
        Poll::Ready(Ok(()))
    }
}

impl Drop for IncomingStream {
    fn drop(&mut self) {
        self.release(None);
    }
}
