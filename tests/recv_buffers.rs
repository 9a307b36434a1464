//! A stream reuses its buffers at both ends: the allocations of chunk size a stream of N chunks
//! costs stay bounded by the windows, not by N.
//!
//! Before `src/driver/pool.rs`, every received chunk kept tungstenite's read buffer alive until
//! the application read it, so tungstenite allocated a fresh buffer for every message (1030
//! large allocations for this test's 1024 chunks with the pool disabled); and the sender
//! encoded every chunk into a fresh buffer while the writer still held the previous ones (827
//! with the pool but one encoding buffer, `Driver::encode`). glibc handed that memory back to
//! the kernel and it was page-faulted again: 108-127 page faults per MiB in
//! `cargo bench --bench throughput`. A counting global allocator counts the allocations of at
//! least half a chunk made while one stream runs.
#![allow(unsafe_code)] // the counting allocator below; the crate itself has none
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use clipsync::transport::Incoming;

struct Counting;

/// Allocations of at least [`LARGE`] bytes so far, process-wide.
static LARGE_ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
const LARGE: usize = 32 * 1024;

// SAFETY: delegates every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= LARGE {
            LARGE_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= LARGE {
            LARGE_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[tokio::test]
async fn a_stream_reuses_its_buffers_instead_of_allocating_per_chunk() {
    let cfg = common::cfg();
    let chunks = 1024;
    let payload = Bytes::from(vec![0x5au8; chunks * cfg.chunk_size as usize]);
    let (client, mut server, _transports) = common::connected_pair(cfg).await;
    let reader = tokio::spawn(async move {
        let Incoming::Stream(mut s) = server.receive().await.unwrap() else {
            panic!("expected a stream");
        };
        let mut n = 0usize;
        while let Some(chunk) = s.chunk().await.unwrap() {
            n += chunk.len();
        }
        (n, server)
    });
    let before = LARGE_ALLOCATIONS.load(Ordering::Relaxed);
    let mut s = client
        .open_stream("application/octet-stream", Some(payload.len() as u64))
        .await
        .unwrap();
    s.write(payload.clone()).await.unwrap();
    s.finish().await.unwrap();
    let (received, _server) = reader.await.unwrap();
    let large = LARGE_ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(received, payload.len());
    eprintln!("{large} allocations of at least {LARGE} bytes for {chunks} chunks");
    // Both ends, every buffer: bounded by the windows (a connection window of chunks in
    // flight and the pool's idle buffers), far below one per chunk.
    assert!(
        large < chunks / 4,
        "{large} allocations of at least {LARGE} bytes for a stream of {chunks} chunks"
    );
}
