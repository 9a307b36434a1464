//! The frame decoder, fed any bytes: it never panics, and whatever it accepts re-encodes to a
//! frame that decodes to the same value.
#![no_main]

use bytes::Bytes;
use clipsync::wire::{DecodeLimits, Frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits {
        max_frame_size: 1 << 20,
    };
    if let Ok(frame) = Frame::decode(Bytes::copy_from_slice(data), limits) {
        let again = frame.encode().expect("a decoded frame encodes");
        let back = Frame::decode(again, limits).expect("an encoded frame decodes");
        assert_eq!(frame, back);
    }
});
