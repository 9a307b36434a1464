//! The `clipsync` tool's codec round trip and configuration printer, run as a user would.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::process::Command;

#[test]
fn frames_round_trips_every_example() {
    let out = Command::new(env!("CARGO_BIN_EXE_clipsync"))
        .arg("frames")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let n = clipsync::wire::examples::all().len();
    assert!(
        stdout.ends_with(&format!("{n} passed, 0 failed\n")),
        "{stdout}"
    );
}

#[test]
fn config_refuses_a_bad_file_naming_the_key() {
    let path = std::env::temp_dir().join(format!("clipsync-cli-{}.toml", std::process::id()));
    std::fs::write(&path, "chunk_size = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_clipsync"))
        .args(["config", "--file"])
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chunk_size"));
}
