//! `TransportConfig`: defaults are valid, TOML overrides them, bad values name their key.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use clipsync::config::TransportConfig;
use clipsync::error::ConfigError;

#[test]
fn defaults_are_valid_and_documented_values() {
    let cfg = TransportConfig::default();
    cfg.validate().expect("defaults validate");
    assert_eq!(cfg.chunk_size, 64 * 1024);
    assert_eq!(cfg.heartbeat_interval, Duration::from_secs(15));
    assert_eq!(cfg.heartbeat_timeout, Duration::from_secs(30));
    assert!(!cfg.allow_plaintext);
    // The example HELLO in PROTOCOL.md announces exactly these defaults.
    assert_eq!(
        cfg.peer_limits(),
        clipsync::wire::examples::example_limits()
    );
}

#[test]
fn an_empty_file_gives_the_defaults() {
    assert_eq!(
        TransportConfig::from_toml_str("").expect("empty TOML is valid"),
        TransportConfig::default()
    );
}

#[test]
fn toml_overrides_defaults() {
    let cfg = TransportConfig::from_toml_str(
        r#"
        chunk_size = 32768
        heartbeat_interval_ms = 2000
        heartbeat_timeout_ms = 5000
        backoff_multiplier = 2.0
        rng_seed = 42
        allow_plaintext = true
        "#,
    )
    .expect("valid");
    assert_eq!(cfg.chunk_size, 32768);
    assert_eq!(cfg.heartbeat_interval, Duration::from_millis(2000));
    assert_eq!(cfg.heartbeat_timeout, Duration::from_millis(5000));
    assert_eq!(cfg.backoff_multiplier, 2.0);
    assert_eq!(cfg.rng_seed, Some(42));
    assert!(cfg.allow_plaintext);
    assert_eq!(cfg.max_streams, TransportConfig::default().max_streams);
}

#[test]
fn printed_config_reads_back_identically() {
    let cfg = TransportConfig {
        rng_seed: Some(7),
        ..TransportConfig::default()
    };
    let text = cfg.to_toml();
    assert!(text.contains("heartbeat_interval_ms = 15000"), "{text}");
    assert_eq!(TransportConfig::from_toml_str(&text).expect("valid"), cfg);
}

#[test]
fn a_file_is_read() {
    let dir = std::env::temp_dir().join(format!("clipsync-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("c.toml");
    std::fs::write(&path, "max_streams = 3\n").expect("write");
    assert_eq!(
        TransportConfig::from_file(&path)
            .expect("valid")
            .max_streams,
        3
    );
    let missing = TransportConfig::from_file(&dir.join("missing.toml")).unwrap_err();
    assert!(matches!(missing, ConfigError::Io { .. }), "{missing}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Every value outside its range is refused with an error naming the key.
#[test]
fn each_invalid_value_names_its_field() {
    let cases = [
        ("max_frame_size = 100", "max_frame_size"),
        ("max_frame_size = 99999999", "max_frame_size"),
        ("max_message_size = 0", "max_message_size"),
        ("max_message_size = 1049500", "max_message_size"),
        ("stream_threshold = 0", "stream_threshold"),
        ("stream_threshold = 2000000", "stream_threshold"),
        ("chunk_size = 10", "chunk_size"),
        ("chunk_size = 2000000", "chunk_size"),
        ("stream_window = 1024", "stream_window"),
        ("connection_window = 1024", "connection_window"),
        ("max_streams = 0", "max_streams"),
        ("max_streams = 5000", "max_streams"),
        ("replay_buffer_bytes = 10", "replay_buffer_bytes"),
        ("send_queue = 0", "send_queue"),
        ("ack_every = 0", "ack_every"),
        ("ack_delay_ms = 0", "ack_delay_ms"),
        ("heartbeat_interval_ms = 10", "heartbeat_interval_ms"),
        ("heartbeat_timeout_ms = 20000", "heartbeat_timeout_ms"),
        ("degraded_rtt_ms = 0", "degraded_rtt_ms"),
        ("backoff_initial_ms = 0", "backoff_initial_ms"),
        ("backoff_initial_ms = 60000", "backoff_initial_ms"),
        ("backoff_max_ms = 0", "backoff_max_ms"),
        ("backoff_multiplier = 0.5", "backoff_multiplier"),
        ("backoff_multiplier = nan", "backoff_multiplier"),
        ("backoff_jitter = 1.5", "backoff_jitter"),
        ("backoff_jitter = -0.1", "backoff_jitter"),
        (
            "backoff_reset_after_ms = 99999999999",
            "backoff_reset_after_ms",
        ),
        ("resume_window_ms = 99999999999", "resume_window_ms"),
        ("connect_timeout_ms = 0", "connect_timeout_ms"),
        ("handshake_timeout_ms = 0", "handshake_timeout_ms"),
        ("auth_timeout_ms = 0", "auth_timeout_ms"),
        ("write_timeout_ms = 0", "write_timeout_ms"),
        ("max_connections = 0", "max_connections"),
        ("max_startups = 5", "max_startups"),
        ("max_startups_start = 0", "max_startups_start"),
        ("max_startups_rate = 101", "max_startups_rate"),
        ("per_source_max_startups = 101", "per_source_max_startups"),
        ("first_byte_timeout_ms = 0", "first_byte_timeout_ms"),
        ("first_byte_timeout_ms = 20000", "first_byte_timeout_ms"),
    ];
    for (toml, field) in cases {
        let err = TransportConfig::from_toml_str(toml).unwrap_err();
        match &err {
            ConfigError::Invalid { field: f, .. } => assert_eq!(*f, field, "{toml}: {err}"),
            other => panic!("{toml}: expected Invalid {field}, got {other}"),
        }
        assert!(
            err.to_string().contains(field),
            "message lacks the key: {err}"
        );
    }
}

#[test]
fn unknown_keys_and_wrong_types_name_the_key() {
    let err = TransportConfig::from_toml_str("chunk_sise = 4096").unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }));
    assert!(err.to_string().contains("chunk_sise"), "{err}");
    let err = TransportConfig::from_toml_str("max_streams = \"many\"").unwrap_err();
    assert!(err.to_string().contains("max_streams"), "{err}");
    let err = TransportConfig::from_toml_str("max_streams = -1").unwrap_err();
    assert!(err.to_string().contains("max_streams"), "{err}");
}

/// README's configuration table lists every key with its default.
#[test]
fn readme_lists_every_key_with_its_default() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md is at the crate root");
    let defaults = TransportConfig::default().to_toml();
    let mut keys = 0;
    for line in defaults.lines() {
        let (key, value) = line.split_once(" = ").expect("key = value");
        let cell = format!("| `{key}` | {value}");
        assert!(readme.contains(&cell), "README lacks `{cell}`");
        keys += 1;
    }
    assert!(keys >= 25, "only {keys} keys printed");
    assert!(readme.contains("| `rng_seed` |"));
}
