//! The decoder never allocates beyond its declared bounds, whatever bytes it is fed.
//!
//! A counting global allocator records the bytes allocated by the current thread while one
//! `Frame::decode` runs. Payloads are zero-copy slices, so the only allocations are the small
//! bounded fields: content type (≤ 255 B), text (≤ 1024 B) and the extension list (≤ 8
//! entries). Oversized input is refused before anything is allocated.
#![allow(unsafe_code)] // the counting allocator below; the crate itself has none
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use clipsync::wire::*;
use proptest::prelude::*;

struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: delegates every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATED.try_with(|a| a.set(a.get() + layout.size()));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATED.try_with(|a| a.set(a.get() + new_size));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes allocated by this thread while `f` runs.
fn allocated_by<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = ALLOCATED.with(Cell::get);
    let out = f();
    (ALLOCATED.with(Cell::get) - before, out)
}

/// The most a single decode may allocate: a text or content type, plus the extension vector
/// (8 entries of `Extension`), plus slack for error values.
const BOUND: usize = MAX_TEXT_LEN + MAX_CONTENT_TYPE_LEN + MAX_EXTENSIONS * 64 + 256;

const LIMITS: DecodeLimits = DecodeLimits {
    max_frame_size: 1 << 20,
};

fn with_header(ty: u8, flags: u16, body: &[u8]) -> Bytes {
    let mut msg = vec![PROTOCOL_VERSION, ty];
    msg.extend_from_slice(&flags.to_be_bytes());
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes());
    msg.extend_from_slice(body);
    Bytes::from(msg)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn decoding_arbitrary_bodies_allocates_a_bounded_amount(
        ty in prop::sample::select(FrameType::ALL.to_vec()),
        body in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let msg = with_header(ty.byte(), 0, &body);
        let (n, _) = allocated_by(|| Frame::decode(msg, LIMITS));
        prop_assert!(n <= BOUND, "decode allocated {} bytes (bound {})", n, BOUND);
    }
}

#[test]
fn a_large_payload_is_not_copied() {
    let payload = vec![7u8; 512 * 1024];
    let msg = Frame::Message(MessageFrame {
        seq: 1,
        content_type: "application/octet-stream".into(),
        metadata: Bytes::new(),
        payload: Bytes::from(payload),
    })
    .encode()
    .expect("valid");
    let (n, frame) = allocated_by(|| Frame::decode(msg, LIMITS));
    assert!(matches!(frame, Ok(Frame::Message(_))));
    assert!(n <= BOUND, "decoding a 512 KiB message allocated {n} bytes");
}

#[test]
fn an_oversized_frame_is_refused_without_allocating() {
    let msg = Bytes::from(vec![0u8; 64 * 1024]);
    let (n, r) = allocated_by(|| Frame::decode(msg, DecodeLimits::PRE_AUTH));
    assert!(matches!(r, Err(DecodeError::FrameTooLarge { .. })));
    assert_eq!(n, 0);
}

#[test]
fn the_largest_hello_fits_the_bound() {
    let hello = Frame::Hello(Hello {
        protocol_version: 1,
        role: Role::Dialer,
        nonce: [1; 32],
        capabilities: 0,
        limits: examples::example_limits(),
        public_key: Bytes::from(vec![1; MAX_KEY_LEN]),
        extensions: (0..MAX_EXTENSIONS as u16)
            .map(|kind| Extension {
                kind,
                data: Bytes::from(vec![2; MAX_EXTENSION_LEN]),
            })
            .collect(),
    });
    let msg = hello.encode().expect("valid");
    assert!(
        msg.len() <= DecodeLimits::PRE_AUTH.max_frame_size,
        "the largest HELLO ({} bytes) must fit the pre-auth cap",
        msg.len()
    );
    let (n, r) = allocated_by(|| Frame::decode(msg, LIMITS));
    assert_eq!(r, Ok(hello));
    assert!(n <= BOUND, "decoding the largest HELLO allocated {n} bytes");
}
