//! Helpers shared by the tests of the `clipsync` tool: fixtures, and `clipsync serve` as a
//! child whose output lines arrive on a channel.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // each test file uses a subset

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A fixture; a private key is made owner-only first (git checks it out 0644, and the tool
/// refuses a key others can read, as OpenSSH does).
pub fn fixture(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    #[cfg(unix)]
    if name.ends_with("_key") {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    path
}

/// Asserts that a finished `clipsync` child succeeded, showing its stderr if not.
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `clipsync serve` as a child, its stdout lines on a channel (drained, so the server never
/// writes into a closed pipe). Killed when dropped.
pub struct Server {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    pub addr: String,
}

impl Server {
    /// Serving on `listen` as the ed25519 fixture, trusting the ECDSA fixture.
    pub fn start(listen: &str) -> Server {
        Self::start_with(listen, &fixture("ecdsa_test_key.pub"), &[])
    }

    /// Serving on `listen` as the ed25519 fixture, trusting `trusted`, with `extra` flags.
    pub fn start_with(listen: &str, trusted: &Path, extra: &[&std::ffi::OsStr]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_clipsync"));
        cmd.args(["serve", "--listen", listen, "--identity"])
            .arg(fixture("ed25519_test_key"))
            .arg("--authorized-keys")
            .arg(trusted)
            .args(extra);
        Self::spawn(cmd)
    }

    /// Runs `cmd` (a `clipsync serve …`) and waits for its `listening on` line.
    pub fn spawn(mut cmd: Command) -> Server {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines.recv_timeout(Duration::from_secs(20)).unwrap();
        let addr = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_string();
        Server { child, lines, addr }
    }

    /// The next line mentioning `needle`, waiting at most 20 s (a bound, not a sleep).
    pub fn line_with(&self, needle: &str) -> String {
        loop {
            let line = self.lines.recv_timeout(Duration::from_secs(20)).unwrap();
            if line.contains(needle) {
                return line;
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
