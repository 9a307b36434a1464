//! The `clipsync` tool's codec round trip and configuration printer, run as a user would.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod cli_common;

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

/// The main job, small: the link is cut under the transport, it reconnects and resumes, and
/// the report says every promise held.
#[test]
fn demo_cuts_the_link_resumes_and_reports() {
    let out = Command::new(env!("CARGO_BIN_EXE_clipsync"))
        .args([
            "demo",
            "--size",
            "32MiB",
            "--outage-ms",
            "200",
            "--messages",
            "10",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let report: std::collections::BTreeMap<&str, &str> =
        stdout.lines().filter_map(|l| l.split_once(": ")).collect();
    assert_eq!(report.get("bytes"), Some(&"33554432"), "{stdout}");
    assert_eq!(report.get("hash"), Some(&"verified"), "{stdout}");
    assert_eq!(
        report.get("messages_delivered"),
        Some(&"10 of 10"),
        "{stdout}"
    );
    let reconnects: u32 = report["reconnects"].parse().unwrap();
    assert!(reconnects >= 1, "{stdout}");
    // A resume sends again at most what was in flight: the stream window plus the
    // messages, never the whole payload.
    let retransmitted: u64 = report["retransmitted_bytes"].parse().unwrap();
    let window = u64::from(clipsync::config::TransportConfig::default().stream_window);
    assert!(retransmitted <= window + 4096, "{stdout}");
    for key in ["seconds", "throughput_mb_s"] {
        let v: f64 = report[key].parse().unwrap();
        assert!(v > 0.0, "{key}: {stdout}");
    }
}

#[test]
fn demo_refuses_a_bad_size() {
    let out = Command::new(env!("CARGO_BIN_EXE_clipsync"))
        .args(["demo", "--size", "12 parsecs"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("parsecs"));
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

mod serve_send {
    use std::io::Write;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};

    use super::cli_common::{Server, assert_success, fixture};

    fn send(addr: &str, identity: &str, trusted: &str, input: &[u8]) -> std::process::Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_clipsync"))
            .args(["send", "--connect", addr, "--identity"])
            .arg(fixture(identity))
            .arg("--authorized-keys")
            .arg(fixture(trusted))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A refused send may exit before reading: a broken pipe here is not the failure.
        let _ = child.stdin.take().unwrap().write_all(input);
        child.wait_with_output().unwrap()
    }

    /// Issue 11, item 7: two peers sending files to one `serve --out` at once each get their
    /// own part file; both files are saved whole under their own BLAKE3, no part file is left,
    /// and a small file is saved as a file too (not printed as a message).
    #[test]
    fn concurrent_sends_to_serve_out_each_save_their_own_file() {
        let dir = std::env::temp_dir().join(format!("clipsync-out-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        // Two peers: the fixture's ECDSA key and a second ed25519 key written here.
        let second = clipsync::secure::SshAuthenticator::ed25519_from_seed([5; 32]);
        let second_path = dir.join("second_key");
        second
            .write_openssh_file(&second_path, ssh_key::LineEnding::LF)
            .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let owner_only = std::fs::Permissions::from_mode(0o600);
            std::fs::set_permissions(&second_path, owner_only).unwrap();
        }
        let trusted = dir.join("trusted");
        let ecdsa_pub = std::fs::read_to_string(fixture("ecdsa_test_key.pub")).unwrap();
        let second_pub = second.public_key().to_openssh().unwrap();
        std::fs::write(&trusted, format!("{}\n{second_pub}\n", ecdsa_pub.trim())).unwrap();
        let server = Server::start_with(
            "127.0.0.1:0",
            &trusted,
            &["--out".as_ref(), out.as_os_str()],
        );
        let files: Vec<(PathBuf, Vec<u8>)> = [(7u8, 6 << 20), (9u8, 6 << 20), (11u8, 1000)]
            .into_iter()
            .map(|(seed, len)| {
                let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect();
                let path = dir.join(format!("in-{seed}"));
                std::fs::write(&path, &data).unwrap();
                (path, data)
            })
            .collect();
        let send_file = |identity: &std::path::Path, path: &std::path::Path| {
            Command::new(env!("CARGO_BIN_EXE_clipsync"))
                .args(["send", "--connect", &server.addr, "--identity"])
                .arg(identity)
                .arg("--authorized-keys")
                .arg(fixture("ed25519_test_key.pub"))
                .arg(path)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let check = |child: Child| {
            let o = child.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            assert!(String::from_utf8_lossy(&o.stdout).contains("delivered file"));
        };
        // Both peers at once, then the small file.
        let a = send_file(&fixture("ecdsa_test_key"), &files[0].0);
        let b = send_file(&second_path, &files[1].0);
        check(a);
        check(b);
        check(send_file(&fixture("ecdsa_test_key"), &files[2].0));
        for _ in &files {
            server.line_with("saved=");
        }
        for (_, data) in &files {
            let path = out.join(blake3::hash(data).to_hex().as_str());
            let saved = std::fs::read(&path).unwrap();
            assert!(saved == *data, "a saved file differs from what was sent");
            // Clipboard data is readable by its owner only, whatever the directory allows.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", path.display());
            }
        }
        let left: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".part"))
            .collect();
        assert!(left.is_empty(), "part files left: {left:?}");
        drop(server);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn send_reaches_serve_and_an_untrusted_key_is_refused() {
        let server = Server::start("127.0.0.1:0");
        let out = send(
            &server.addr,
            "ecdsa_test_key",
            "ed25519_test_key.pub",
            b"hello from the cli",
        );
        assert_success(&out);
        let line = server.line_with("message from");
        assert!(line.contains("text=\"hello from the cli\""), "{line}");
        assert!(line.contains("size=18"), "{line}");

        // The ed25519 key is not in the server's trusted keys.
        let out = send(
            &server.addr,
            "ed25519_test_key",
            "ed25519_test_key.pub",
            b"let me in",
        );
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("key not authorized"), "{err}");
    }

    /// `send` takes its keys, its peer's address and transport settings from `--config`;
    /// a flag given beside it wins over the file.
    #[test]
    fn send_reads_a_config_file_and_flags_override_it() {
        let server = Server::start("127.0.0.1:0");
        let dir = std::env::temp_dir().join(format!("clipsync-cli-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("send.toml");
        let toml = format!(
            "identity = {:?}\nauthorized_keys = {:?}\nconnect = {:?}\nack_delay_ms = 1\n",
            fixture("ecdsa_test_key"),
            fixture("ed25519_test_key.pub"),
            server.addr,
        );
        std::fs::write(&cfg, toml).unwrap();
        let run = |extra: &[&str]| {
            let mut child = Command::new(env!("CARGO_BIN_EXE_clipsync"))
                .arg("send")
                .arg("--config")
                .arg(&cfg)
                // No default keys from the machine running the tests.
                .env("HOME", &dir)
                .env_remove("XDG_CONFIG_HOME")
                .args(extra)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // A usage error exits before reading: a broken pipe here is not the failure.
            let _ = child.stdin.take().unwrap().write_all(b"from the file");
            child.wait_with_output().unwrap()
        };
        let out = run(&[]);
        assert_success(&out);
        assert!(server.line_with("message from").contains("from the file"));
        // The flag's identity (not trusted by the server) overrides the file's.
        let id = fixture("ed25519_test_key");
        let out = run(&["--identity", id.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("key not authorized"));
        // An unknown key in the file is refused by name.
        std::fs::write(&cfg, "identiy = \"x\"\n").unwrap();
        let out = run(&[]);
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("identiy"));
        // Without keys anywhere: a clear usage error.
        std::fs::write(&cfg, "").unwrap();
        let out = run(&["--connect", &server.addr]);
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("missing --identity"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[cfg(unix)]
    #[test]
    fn send_over_a_unix_socket() {
        let path = std::env::temp_dir().join(format!("clipsync-cli-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let server = Server::start(&format!("unix:{}", path.display()));
        let out = send(
            &server.addr,
            "ecdsa_test_key",
            "ed25519_test_key.pub",
            b"via unix",
        );
        assert_success(&out);
        assert!(server.line_with("message from").contains("via unix"));
        drop(server);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn an_unreachable_peer_is_a_one_line_error() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = dead.local_addr().unwrap().to_string();
        drop(dead);
        let out = send(&addr, "ecdsa_test_key", "ed25519_test_key.pub", b"x");
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot reach"), "{err}");
    }
}
