//! The trusted-keys parser (and, through it, OpenSSH public key parsing), fed any text: keys or
//! an error naming the line, never a panic.
#![no_main]

use clipsync::secure::auth::parse_trusted_keys;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = parse_trusted_keys("fuzz", text) {
        let _ = e.to_string();
    }
});
