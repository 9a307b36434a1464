//! The reference clipboard sync (`examples/clipboard_sync.rs`) as the README runs it: three
//! processes on one machine, over Unix sockets. Copies converge everywhere, nothing echoes, and
//! a peer killed (SIGKILL) and started again catches up, declining the second offer of a large
//! clip it already took from the first peer.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The example's binary, which `cargo test` builds beside the test binaries.
fn example() -> PathBuf {
    let mut dir = std::env::current_exe().unwrap();
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("examples").join("clipboard_sync");
    assert!(bin.exists(), "{} not built", bin.display());
    bin
}

/// One running peer: its stdin, and its output lines as they come.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

const NAMES: [&str; 3] = ["a", "b", "c"];

fn sock(dir: &Path, name: &str) -> String {
    format!("unix:{}", dir.join(format!("{name}.sock")).display())
}

fn start(dir: &Path, i: usize) -> Peer {
    let mut args = vec![
        NAMES[i].to_string(),
        (i + 1).to_string(),
        sock(dir, NAMES[i]),
    ];
    for (j, other) in NAMES.iter().enumerate() {
        if j != i {
            args.push(format!("{other}={}={}", j + 1, sock(dir, other)));
        }
    }
    let mut child = Command::new(example())
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Peer {
        child,
        stdin,
        lines,
        seen: Vec::new(),
    }
}

impl Peer {
    fn copy(&mut self, text: &str) {
        writeln!(self.stdin, "{text}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Waits (at most 20 s) for an output line satisfying `f`.
    fn until(&mut self, what: &str, f: impl Fn(&str) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = f(&line);
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!("no {what} within 20 s; output so far: {:?}", self.seen),
            }
        }
    }

    /// Waits until the clipboard holds `text`.
    fn holds(&mut self, text: &str) {
        self.until(&format!("clipboard {text:?}"), |l| {
            l.starts_with("clipboard ") && l.ends_with(&format!(" {text}"))
        });
    }

    /// Every clipboard line seen so far.
    fn clipboards(&self) -> Vec<&String> {
        self.seen
            .iter()
            .filter(|l| l.starts_with("clipboard "))
            .collect()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn three_peers_converge_and_a_killed_peer_catches_up_when_restarted() {
    let dir = std::env::temp_dir().join(format!("clipsync-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut peers: Vec<Peer> = (0..3).map(|i| start(&dir, i)).collect();
    // Wait until everyone is linked to both others.
    for (i, p) in peers.iter_mut().enumerate() {
        for (j, other) in NAMES.iter().enumerate() {
            if i != j && !p.seen.iter().any(|l| l == &format!("linked {other}")) {
                p.until(&format!("linked {other}"), |l| {
                    l == format!("linked {other}")
                });
            }
        }
    }
    // A copy on a reaches b and c; then a copy on c wins everywhere (it is newer).
    peers[0].copy("hello from a");
    for p in peers.iter_mut() {
        p.holds("hello from a");
    }
    peers[2].copy("then c");
    for p in peers.iter_mut() {
        p.holds("then c");
    }
    // c is killed; a copy on b meanwhile; c starts again and catches up from its peers.
    peers[2].child.kill().unwrap();
    peers[2].child.wait().unwrap();
    peers[1].copy("b while c was away");
    peers[0].holds("b while c was away");
    peers[2] = start(&dir, 2);
    peers[2].holds("b while c was away");
    // a and b saw c come back with a new session.
    for p in peers.iter_mut().take(2) {
        p.until("c lost", |l| l == "lost c");
    }
    // And c's next copy reaches everyone.
    peers[2].copy("c is back");
    for p in peers.iter_mut() {
        p.holds("c is back");
    }
    // No echoes: each peer's clipboard changed once per distinct copy it saw, never back and
    // forth.
    for p in &peers[..2] {
        let texts: Vec<&str> = p
            .clipboards()
            .iter()
            .map(|l| l.splitn(4, ' ').nth(3).unwrap_or(""))
            .collect();
        assert_eq!(
            texts,
            ["hello from a", "then c", "b while c was away", "c is back"],
            "{:?}",
            p.seen
        );
    }
    // A large clip goes as an offer announcing its BLAKE3. b is killed and restarted: a and c
    // both send it their clip; b takes the first and declines the second unsent.
    let big = "x".repeat(100 << 10);
    peers[0].copy(&big);
    for p in peers.iter_mut() {
        p.holds(&big);
    }
    peers[1].child.kill().unwrap();
    peers[1].child.wait().unwrap();
    peers[1] = start(&dir, 1);
    peers[1].holds(&big);
    peers[1].until("declined", |l| l.starts_with("declined "));
    let taken = peers[1]
        .clipboards()
        .iter()
        .filter(|l| l.ends_with(&big))
        .count();
    assert_eq!(taken, 1, "the large clip was taken twice");
    let _ = std::fs::remove_dir_all(&dir);
}
