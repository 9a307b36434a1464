//! The simulator's own tests: every scenario passes a few seeds, runs are deterministic, a
//! broken invariant is reported with its reproduce command, and traces are snapshotted.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;

use clipsync_sim::host::Sabotage;
use clipsync_sim::runner::run_one;
use clipsync_sim::scenario::Scenario;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn scenario(name: &str) -> Scenario {
    Scenario::load(&root().join("scenarios").join(format!("{name}.toml"))).unwrap()
}

fn test_scenario(name: &str) -> Scenario {
    Scenario::load(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/scenarios")
            .join(format!("{name}.toml")),
    )
    .unwrap()
}

/// Every scenario CI sweeps, for two seeds each (the sweep itself runs in release in CI).
#[test]
fn every_scenario_passes_its_first_seeds() {
    let all = Scenario::load_dir(&root().join("scenarios")).unwrap();
    assert!(all.len() >= 5, "{} scenarios", all.len());
    for s in &all {
        for seed in 1..=2 {
            let r = run_one(s, seed, Sabotage::default());
            assert!(r.passed(), "{} seed {seed}: {:?}", s.name, r.violations);
            assert!(!r.trace.is_empty());
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_trace_in_one_process() {
    let s = scenario("partition");
    let a = run_one(&s, 7, Sabotage::default());
    let b = run_one(&s, 7, Sabotage::default());
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.hash, b.hash);
    // And another seed gives another trace: the seed really drives the run.
    let c = run_one(&s, 8, Sabotage::default());
    assert_ne!(a.hash, c.hash);
}

#[test]
fn a_crash_replays_identically_in_fresh_processes() {
    let child = || {
        Command::new(env!("CARGO_BIN_EXE_clipsync-sim"))
            .arg("child")
            .arg(root().join("scenarios/crash_bounce.toml"))
            .args(["--seed", "3"])
            .output()
            .unwrap()
    };
    let (a, b) = (child(), child());
    assert!(a.status.success());
    let text = String::from_utf8_lossy(&a.stdout);
    assert!(text.starts_with("hash "), "{text}");
    assert!(!text.contains("violation"), "{text}");
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn replay_prints_the_same_bytes_twice() {
    let replay = || {
        Command::new(env!("CARGO_BIN_EXE_clipsync-sim"))
            .arg("replay")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios/handshake.toml"))
            .args(["--seed", "5", "--trace"])
            .output()
            .unwrap()
    };
    let (a, b) = (replay(), replay());
    assert!(a.status.success());
    assert_eq!(a.stdout, b.stdout);
    assert!(String::from_utf8_lossy(&a.stdout).ends_with("verdict: pass\n"));
}

#[test]
fn a_broken_invariant_is_reported_with_its_reproduce_command() {
    // In process: the sabotaged run fails the exactly-once invariant.
    let s = test_scenario("handshake");
    let r = run_one(
        &s,
        1,
        Sabotage {
            drop_one_delivery: true,
            ..Sabotage::default()
        },
    );
    assert_eq!(r.violations.len(), 1, "{:?}", r.violations);
    assert_eq!(r.violations[0].invariant, "exactly-once-in-order");
    // Through the command line, as CI would print it.
    let out = run_handshake(&["--seeds", "2", "--sabotage", "drop-one-delivery"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL handshake seed 1: exactly-once-in-order: alice/3 acknowledged but delivered 0 times"),
        "{text}"
    );
    assert!(
        text.contains("reproduce: cargo run --release -p clipsync-sim -- replay ")
            && text.contains("handshake.toml --seed 2 --trace"),
        "{text}"
    );
    assert!(text.ends_with("0 passed, 2 failed\n"), "{text}");
}

/// `clipsync-sim run` of the test scenario `handshake` with `args`, as CI would run it.
fn run_handshake(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_clipsync-sim"))
        .arg("run")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios/handshake.toml"))
        .args(args)
        .output()
        .unwrap()
}

/// A panic fails the run with `no-panic`, and stderr names the run it happened in (scenario,
/// seed, replay command): when tearing down the panicked task panics again, the process aborts
/// before any report and that line is all that is left.
#[test]
fn a_panic_is_reported_with_its_run() {
    let out = run_handshake(&["--seed", "1", "--sabotage", "panic-on-delivery"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains("FAIL handshake seed 1: no-panic:"),
        "{stdout}"
    );
    assert!(
        stderr.contains("clipsync-sim: panic in handshake seed 1 (reproduce: ")
            && stderr.contains("the application panics on alice/3"),
        "{stderr}"
    );
}

#[test]
fn trace_of_a_short_exchange() {
    let r = run_one(&test_scenario("handshake"), 1, Sabotage::default());
    assert!(r.passed(), "{:?}", r.violations);
    insta::assert_snapshot!(r.trace.join("\n"));
}

#[test]
fn trace_of_a_refused_peer() {
    let r = run_one(&test_scenario("refused"), 1, Sabotage::default());
    assert!(r.passed(), "{:?}", r.violations);
    insta::assert_snapshot!(r.trace.join("\n"));
}
