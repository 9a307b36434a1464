//! The tool's file I/O for streams, on threads of its own and in large blocks.
//!
//! `tokio::fs` runs every read and write as a job on tokio's blocking pool: one hand-off to a
//! pool thread and one back per call, which for a stream read in 64 KiB pieces is two context
//! switches per chunk (about 55,000 per GiB at the sender, measured with `perf stat`). Here a
//! file is read by one thread of its own in [`BLOCK`]-byte blocks, a little ahead of the
//! connection, and written by one thread of its own from batches of chunks: a wake-up per MiB
//! instead of two per 64 KiB, and the connection's thread never waits for the disk.

use std::io::{Read, Write};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

/// The size of a read, and of a batch of chunks handed to the writer thread.
pub(crate) const BLOCK: usize = 1 << 20;
/// Blocks the reader may be ahead of the connection: memory is bounded by `AHEAD + 1` blocks,
/// plus what the stream's own queue holds.
const AHEAD: usize = 2;

/// Reads `file` to its end on a thread of its own, in blocks of [`BLOCK`] bytes (the last may be
/// shorter), at most [`AHEAD`] blocks ahead of the receiver. A read error ends the sequence with
/// that error; dropping the receiver stops the thread at its next block.
pub(crate) fn read_ahead(mut file: std::fs::File) -> mpsc::Receiver<std::io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(AHEAD);
    std::thread::spawn(move || {
        loop {
            // `read_to_end` fills the spare capacity without zeroing it first.
            let mut block = Vec::with_capacity(BLOCK);
            let item = match (&mut file).take(BLOCK as u64).read_to_end(&mut block) {
                Ok(0) => return,
                Ok(_) => Ok(Bytes::from(block)),
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// Writes batches of chunks to a file on a thread of its own.
pub(crate) struct WriteBehind {
    tx: mpsc::Sender<Vec<Bytes>>,
    done: oneshot::Receiver<std::io::Result<()>>,
}

impl WriteBehind {
    /// Starts the thread. At most two batches wait for it (about 2 × [`BLOCK`] bytes).
    pub(crate) fn new(mut file: std::fs::File) -> WriteBehind {
        let (tx, mut rx) = mpsc::channel::<Vec<Bytes>>(2);
        let (done_tx, done) = oneshot::channel();
        std::thread::spawn(move || {
            let result = (|| {
                while let Some(batch) = rx.blocking_recv() {
                    for b in batch {
                        file.write_all(&b)?;
                    }
                }
                file.flush()
            })();
            let _ = done_tx.send(result);
        });
        WriteBehind { tx, done }
    }

    /// Queues `batch`, waiting while two batches are queued. A write that failed already is
    /// returned here (the thread stopped at it).
    pub(crate) async fn write(&mut self, batch: Vec<Bytes>) -> std::io::Result<()> {
        if self.tx.send(batch).await.is_err() {
            return Err(self.stopped().await);
        }
        Ok(())
    }

    /// Waits until every batch is written.
    pub(crate) async fn finish(self) -> std::io::Result<()> {
        drop(self.tx);
        self.done
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("the writer thread ended")))
    }

    async fn stopped(&mut self) -> std::io::Error {
        match (&mut self.done).await {
            Ok(Err(e)) => e,
            _ => std::io::Error::other("the writer thread ended"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn temp_file(name: &str, content: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("clipsync-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    /// Every byte, in order, in blocks of BLOCK bytes but the last; nothing for an empty file.
    #[tokio::test]
    async fn read_ahead_yields_the_file_in_blocks() {
        for len in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 17] {
            let content: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let path = temp_file(&format!("read-{len}"), &content);
            let mut blocks = read_ahead(std::fs::File::open(&path).unwrap());
            let mut got = Vec::new();
            let mut sizes = Vec::new();
            while let Some(b) = blocks.recv().await {
                let b = b.unwrap();
                sizes.push(b.len());
                got.extend_from_slice(&b);
            }
            assert_eq!(got, content, "len {len}");
            let full = sizes.iter().take(sizes.len().saturating_sub(1));
            assert!(full.clone().all(|&s| s == BLOCK), "len {len}: {sizes:?}");
            assert!(sizes.iter().all(|&s| s > 0), "len {len}: {sizes:?}");
            std::fs::remove_file(path).unwrap();
        }
    }

    /// Batches land in the file in the order given; `finish` returns once all are written.
    #[tokio::test]
    async fn write_behind_writes_every_batch_in_order() {
        let path = temp_file("write", b"");
        let mut w = WriteBehind::new(std::fs::File::create(&path).unwrap());
        let mut expected = Vec::new();
        for i in 0..50u8 {
            let batch: Vec<Bytes> = (0..(i % 4))
                .map(|j| Bytes::from(vec![i ^ j; 1000 + usize::from(j)]))
                .collect();
            for b in &batch {
                expected.extend_from_slice(b);
            }
            w.write(batch).await.unwrap();
        }
        w.finish().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        std::fs::remove_file(path).unwrap();
    }

    /// A write that fails is reported, not lost: the file is read-only.
    #[tokio::test]
    async fn write_behind_reports_a_failed_write() {
        let path = temp_file("read-only", b"");
        let file = std::fs::File::open(&path).unwrap(); // opened for reading only
        let mut w = WriteBehind::new(file);
        let mut failed = None;
        for _ in 0..10 {
            if let Err(e) = w.write(vec![Bytes::from_static(b"data")]).await {
                failed = Some(e);
                break;
            }
        }
        let result = match failed {
            Some(e) => Err(e),
            None => w.finish().await,
        };
        assert!(result.is_err(), "a write to a read-only file succeeded");
        std::fs::remove_file(path).unwrap();
    }
}
