//! [`ConnectionSender`]: the cloneable sending half of a [`super::Connection`].

use tokio::sync::{mpsc, oneshot, watch};

use crate::config::TransportConfig;
use crate::driver::{
    Command, ConnectionState, Handles, Message, StreamSender, StreamSpec, cause_of,
};
use crate::error::{CloseCause, SendError};

/// The sending half of a [`super::Connection`] ([`super::Connection::sender`]): send messages
/// and streams from any task while another one receives. Cheap to clone.
///
/// ```no_run
/// # async fn demo(tx: clipsync::transport::ConnectionSender) -> Result<(), clipsync::error::SendError> {
/// use clipsync::error::SendError;
/// use clipsync::transport::Message;
/// tx.send(Message::text("small: one MESSAGE")).await?;
/// tx.send(Message::new("image/png", vec![0u8; 8 << 20])).await?; // large: streamed
/// match tx.try_send(Message::text("if there is room")) {
///     Ok(delivered) => { tokio::spawn(delivered); }
///     Err(SendError::Full) => println!("queue full: try later"),
///     Err(e) => return Err(e),
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ConnectionSender {
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<ConnectionState>,
    stream_threshold: usize,
}

impl ConnectionSender {
    pub(super) fn new(handles: &Handles, cfg: &TransportConfig) -> Self {
        Self {
            commands: handles.commands.clone(),
            state: handles.state.clone(),
            stream_threshold: cfg.stream_threshold as usize,
        }
    }

    fn cause(&self) -> CloseCause {
        cause_of(&self.state)
    }

    /// Sends `message` and waits until the peer has it: acknowledged, or for a payload larger
    /// than `stream_threshold`, streamed in chunks and verified by the peer (which then
    /// receives it as an [`crate::transport::Incoming::Stream`]).
    ///
    /// Waits while the send queue is full. Fails with [`SendError::TooLarge`] for a payload
    /// the peer cannot take (nothing sent, connection unaffected), and with
    /// [`SendError::Unknown`] if the connection ends before the acknowledgement.
    pub async fn send(&self, message: Message) -> Result<(), SendError> {
        if message.payload.len() > self.stream_threshold {
            let len = message.payload.len() as u64;
            let spec = StreamSpec::new(message.content_type.clone())
                .len(len)
                .metadata(message.metadata.clone());
            let mut s = match self.open_stream_with(spec).await {
                Ok(s) => s,
                Err(SendError::StreamsUnsupported) => return self.send_message(message).await,
                Err(e) => return Err(e),
            };
            s.write(message.payload).await?;
            return s.finish().await;
        }
        self.send_message(message).await
    }

    /// Sends `message` as one `MESSAGE` frame whatever its size (up to the peer's
    /// `max_message_size`), and waits for the acknowledgement.
    pub async fn send_message(&self, message: Message) -> Result<(), SendError> {
        let (done, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Send { message, done })
            .await
            .is_err()
        {
            return Err(SendError::Closed(self.cause()));
        }
        rx.await
            .unwrap_or_else(|_| Err(SendError::Unknown(self.cause())))
    }

    /// Like [`ConnectionSender::send`] (a payload above `stream_threshold` goes as a stream),
    /// but fails with [`SendError::Full`] at once instead of waiting for room in the send
    /// queue. The returned future still resolves when the peer has the payload; for a stream
    /// it also carries the bytes, so keep polling it (spawn it) until it resolves.
    pub fn try_send(
        &self,
        message: Message,
    ) -> Result<impl Future<Output = Result<(), SendError>> + use<>, SendError> {
        let streamed = message.payload.len() > self.stream_threshold;
        let (done, done_rx) = oneshot::channel();
        let (reply, reply_rx) = oneshot::channel();
        let cmd = if streamed {
            Command::OpenStream {
                spec: Box::new(
                    StreamSpec::new(message.content_type.clone())
                        .len(message.payload.len() as u64)
                        .metadata(message.metadata.clone()),
                ),
                reply,
            }
        } else {
            Command::Send {
                message: message.clone(),
                done,
            }
        };
        match self.commands.try_send(cmd) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(SendError::Full),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(SendError::Closed(self.cause()));
            }
        }
        let this = self.clone();
        Ok(async move {
            if !streamed {
                return done_rx
                    .await
                    .unwrap_or_else(|_| Err(SendError::Unknown(this.cause())));
            }
            let mut stream = match reply_rx.await {
                Ok(Ok(s)) => s,
                Ok(Err(SendError::StreamsUnsupported)) => return this.send_message(message).await,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(SendError::Closed(this.cause())),
            };
            stream.write(message.payload).await?;
            stream.finish().await
        })
    }

    /// Opens a stream of `content_type` (with its length, if known). Waits while the peer's
    /// `max_streams` are open. Write to the returned [`StreamSender`], then `finish` it.
    pub async fn open_stream(
        &self,
        content_type: impl Into<String>,
        total_len: Option<u64>,
    ) -> Result<StreamSender, SendError> {
        let mut spec = StreamSpec::new(content_type);
        spec.total_len = total_len;
        self.open_stream_with(spec).await
    }

    /// Opens a stream of a payload whose length and BLAKE3 the application already knows (a
    /// clipboard engine hashes what it captures anyway). Both go in `STREAM_OPEN`, so the
    /// receiver sees them ([`crate::transport::IncomingStream::hash`]) before any byte. The
    /// stream is an *offer* (PROTOCOL.md §5.2): its bytes wait until the receiver starts
    /// reading, and a receiver that already has the payload declines it
    /// ([`crate::transport::IncomingStream::decline`]) before any byte flows; the stream then
    /// settles for this side with [`SendError::Stream`] `already have` (20)
    /// ([`SendError::already_had`]). The bytes written must be exactly that payload, or the
    /// stream fails with `stream integrity` (14). This side trusts the hash: it does not hash
    /// the bytes again (`STREAM_END` carries the announced one), so the receiver's check is the
    /// one pass over them, and it is the receiver that fails a payload that does not match.
    ///
    /// ```no_run
    /// # async fn demo(to: clipsync::transport::ConnectionSender, png: bytes::Bytes)
    /// # -> Result<(), clipsync::error::SendError> {
    /// let hash = *blake3::hash(&png).as_bytes();
    /// let mut s = to.open_stream_hashed("image/png", png.len() as u64, hash).await?;
    /// match s.send_all(&mut &png[..]).await {
    ///     Ok(_) => println!("sent"),
    ///     Err(e) if e.already_had() => println!("the peer had it; nothing was sent"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn open_stream_hashed(
        &self,
        content_type: impl Into<String>,
        total_len: u64,
        hash: [u8; 32],
    ) -> Result<StreamSender, SendError> {
        self.open_stream_with(StreamSpec::new(content_type).len(total_len).hash(hash))
            .await
    }

    /// Opens a stream as `spec` describes it: content type, and the length, BLAKE3 and
    /// application metadata the application knows in advance (see
    /// [`ConnectionSender::open_stream_hashed`] for what a hash changes). Waits while the
    /// peer's `max_streams` are open.
    ///
    /// ```no_run
    /// # async fn demo(to: clipsync::transport::ConnectionSender, png: bytes::Bytes)
    /// # -> Result<(), clipsync::error::SendError> {
    /// use clipsync::transport::StreamSpec;
    /// let spec = StreamSpec::new("image/png")
    ///     .len(png.len() as u64)
    ///     .metadata(&b"origin=laptop;clip=42"[..]);
    /// let mut s = to.open_stream_with(spec).await?;
    /// s.write(png).await?;
    /// s.finish().await
    /// # }
    /// ```
    pub async fn open_stream_with(&self, spec: StreamSpec) -> Result<StreamSender, SendError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::OpenStream {
            spec: Box::new(spec),
            reply,
        };
        if self.commands.send(cmd).await.is_err() {
            return Err(SendError::Closed(self.cause()));
        }
        rx.await
            .unwrap_or_else(|_| Err(SendError::Closed(self.cause())))
    }

    /// Streams everything `reader` yields (a file, a pipe, a buffer) and waits until the peer
    /// verified it; returns the bytes sent. Memory stays bounded by the windows whatever the
    /// size; watch progress with [`ConnectionSender::open_stream`] and [`StreamSender::progress`]
    /// instead when it matters.
    pub async fn send_stream<R: tokio::io::AsyncRead + Unpin>(
        &self,
        content_type: impl Into<String>,
        total_len: Option<u64>,
        reader: &mut R,
    ) -> Result<u64, SendError> {
        let s = self.open_stream(content_type, total_len).await?;
        s.send_all(reader).await
    }
}
