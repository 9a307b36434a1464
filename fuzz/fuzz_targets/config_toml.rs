//! The configuration parser, fed any text: an error or a configuration that validates, never a
//! panic; a configuration it accepts prints as TOML that parses back to the same values.
#![no_main]

use clipsync::config::TransportConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = TransportConfig::from_toml_str(text) {
        cfg.validate().expect("an accepted configuration validates");
        let again = TransportConfig::from_toml_str(&cfg.to_toml()).expect("printed config parses");
        assert_eq!(format!("{cfg:?}"), format!("{again:?}"));
    }
});
