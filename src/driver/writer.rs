//! The writer task: drains the urgent and bulk lanes into the WebSocket, each write bounded by
//! `write_timeout`.

use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::secure::ws::Ws;

/// What the driver hands the writer.
#[derive(Debug)]
pub(crate) enum WriterCmd {
    /// A frame, with the chunk slot it holds (for stream chunks).
    Frame(Bytes, Option<OwnedSemaphorePermit>),
    /// The WebSocket close, last.
    Close(CloseFrame),
}

/// Writes queued frames, flushing when both queues run dry; each write is bounded by
/// `write_timeout`, and a failure is reported once through `failed`. Gives the sink back when
/// both queues closed without a failure, so the connection can be shut down cleanly
/// ([`crate::secure::handshake::finish`]).
///
/// Frames in `urgent` (messages, acks, credit, pings, stream opens and results) go out before
/// anything waiting in `bulk` (stream data, `STREAM_END`, `STREAM_ABORT`, `GOAWAY`, the close),
/// so a message waits behind at most the chunk being written and what the socket holds, not
/// behind the chunks queued for the writer (PROTOCOL.md §5.3). Each lane keeps its order.
pub(crate) async fn write_loop(
    mut sink: SplitSink<Ws, WsMessage>,
    mut urgent: mpsc::Receiver<WriterCmd>,
    mut bulk: mpsc::Receiver<WriterCmd>,
    write_timeout: Duration,
    failed: oneshot::Sender<String>,
) -> Option<SplitSink<Ws, WsMessage>> {
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
    match result {
        Ok(()) => Some(sink),
        Err(e) => {
            let _ = failed.send(e);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::net::BoxStream;
    use crate::secure::budget::Budgeted;
    use futures_util::StreamExt;
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
