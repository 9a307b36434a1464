//! Issue 14: the tool refuses bad input before it connects, with one line on stderr and exit
//! status 2, and never reads an unbounded source into memory.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn clipsync(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clipsync"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn keys() -> Vec<String> {
    vec![
        "--identity".into(),
        fixture("ecdsa_test_key").display().to_string(),
        "--authorized-keys".into(),
        fixture("ed25519_test_key.pub").display().to_string(),
    ]
}

/// Exit status 2 and exactly one line on stderr containing `needle`.
fn refused(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("clipsync-inputs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_directory_is_refused_before_connecting() {
    let dir = tmp("dir");
    let mut args = vec!["send", "--connect", "127.0.0.1:9"];
    let k = keys();
    args.extend(k.iter().map(String::as_str));
    let d = dir.display().to_string();
    args.push(&d);
    refused(&clipsync(&args), "is a directory");
}

#[test]
fn an_invalid_content_type_is_refused_before_connecting() {
    let mut args = vec![
        "send",
        "--connect",
        "127.0.0.1:9",
        "--content-type",
        "text/plain\n",
    ];
    let k = keys();
    args.extend(k.iter().map(String::as_str));
    refused(&clipsync(&args), "--content-type");
}

#[test]
fn out_must_be_a_directory_and_is_not_created_by_a_failed_start() {
    let dir = tmp("out");
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let f = file.display().to_string();
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--out", &f];
    let k = keys();
    args.extend(k.iter().map(String::as_str));
    refused(&clipsync(&args), "is not a directory");
    // A start that fails (a missing identity) leaves no directory behind.
    let never = dir.join("never");
    let n = never.display().to_string();
    let missing = dir.join("missing-key").display().to_string();
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--out",
        &n,
        "--identity",
        &missing,
        "--authorized-keys",
        &k[3],
    ];
    let out = clipsync(&args);
    assert_eq!(out.status.code(), Some(2));
    assert!(!never.exists(), "--out was created by a start that failed");
}

#[test]
fn a_unix_path_too_long_names_the_limit() {
    let long = format!("unix:/tmp/{}", "s".repeat(120));
    let mut args = vec!["send", "--connect", &long];
    let k = keys();
    args.extend(k.iter().map(String::as_str));
    let out = clipsync(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("at most 107"), "{err}");
}

/// `send /dev/zero` streams (length unknown) instead of reading the device into memory: after
/// the sender has read 256 MiB its peak resident memory is still under 32 MiB.
#[test]
fn an_endless_source_streams_in_bounded_memory() {
    let mut server = Command::new(env!("CARGO_BIN_EXE_clipsync"))
        .args(["serve", "--listen", "127.0.0.1:0", "--identity"])
        .arg(fixture("ed25519_test_key"))
        .arg("--authorized-keys")
        .arg(fixture("ecdsa_test_key.pub"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(server.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    // Keep draining the server's output, or its next line hits a closed pipe.
    std::thread::spawn(move || for _ in out.lines() {});
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    let mut send = Command::new(env!("CARGO_BIN_EXE_clipsync"))
        .args(["send", "--connect", &addr])
        .args(keys())
        .arg("/dev/zero")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = send.id();
    let read = |field: &str, file: &str| -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while read("rchar:", "io") < 256 << 20 {
        assert!(send.try_wait().unwrap().is_none(), "send exited early");
        assert!(
            Instant::now() < deadline,
            "send read less than 256 MiB in 60 s"
        );
        std::thread::yield_now();
    }
    let peak_kib = read("VmHWM:", "status");
    let _ = send.kill();
    let _ = send.wait();
    let _ = server.kill();
    let _ = server.wait();
    println!(
        "send /dev/zero: peak RSS {} KiB after 256 MiB read",
        peak_kib
    );
    assert!(
        peak_kib > 0 && peak_kib < 32 * 1024,
        "peak RSS {peak_kib} KiB"
    );
}

/// Issue 14, item 3: the help says what the tool does with RSA keys, and the tool does it.
#[test]
fn the_identity_help_tells_the_truth_about_rsa() {
    let help = String::from_utf8_lossy(&clipsync(&["send", "--help"]).stdout).to_string();
    assert!(help.contains("RSA keys cannot be"), "{help}");
    let args = [
        "send",
        "--connect",
        "127.0.0.1:9",
        "--identity",
        &fixture("rsa_test_key").display().to_string(),
        "--authorized-keys",
        &fixture("ed25519_test_key.pub").display().to_string(),
    ];
    refused(&clipsync(&args), "cannot sign");
}
