//! Issue 14: the tool refuses bad input before it connects, with one line on stderr and exit
//! status 2, and never reads an unbounded source into memory.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod cli_common;

use cli_common::{Server, assert_success, fixture};

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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

/// Runs `cmd` with `input` on its standard input (a writer that stops early is fine) and
/// collects its output.
fn with_input(mut cmd: Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = std::io::Write::write_all(&mut child.stdin.take().unwrap(), input);
    child.wait_with_output().unwrap()
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
    let server = Server::start("127.0.0.1:0");
    let addr = server.addr.clone();
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
    drop(server);
    println!(
        "send /dev/zero: peak RSS {} KiB after 256 MiB read",
        peak_kib
    );
    assert!(
        peak_kib > 0 && peak_kib < 32 * 1024,
        "peak RSS {peak_kib} KiB"
    );
}

/// Issue 14, item 3: an RSA identity (`ssh-keygen -t rsa`) signs and a peer that trusts it
/// takes its message; the help says RSA works.
#[test]
fn an_rsa_identity_sends() {
    let help = String::from_utf8_lossy(&clipsync(&["send", "--help"]).stdout).to_string();
    assert!(help.contains("RSA (signing rsa-sha2-512)"), "{help}");
    let server = Server::start_with("127.0.0.1:0", &fixture("rsa_test_key.pub"), &[]);
    let addr = server.addr.clone();
    let out = Command::new(env!("CARGO_BIN_EXE_clipsync"))
        .args(["send", "--connect", &addr, "--messages", "1", "--identity"])
        .arg(fixture("rsa_test_key"))
        .arg("--authorized-keys")
        .arg(fixture("ed25519_test_key.pub"))
        .output()
        .unwrap();
    assert_success(&out);
    let line = server.line_with("message from");
    assert!(line.contains("probe 1"), "{line}");
    drop(server);
}

/// `clipsync` with HOME (and so the default key locations) in `home`.
fn clipsync_at(home: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clipsync"))
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert_success(out);
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Issue 14, item 4: `id` prints what to copy to the other machine, `trust` adds it to
/// ClipSync's own file under the XDG config directory (created, owner-only), `untrust` takes
/// it out again; the defaults find `~/.ssh/id_ed25519` and that file.
#[test]
fn id_trust_untrust_round_trip_with_the_default_locations() {
    let home = tmp("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::copy(fixture("ed25519_test_key"), home.join(".ssh/id_ed25519")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let p = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(home.join(".ssh/id_ed25519"), p).unwrap();
    }
    let id = stdout(&clipsync_at(&home, &["id"]));
    let mut lines = id.lines();
    let key_line = lines.next().unwrap().to_string();
    let fp = lines.next().unwrap().to_string();
    assert!(key_line.starts_with("ssh-ed25519 "), "{id}");
    assert!(fp.starts_with("SHA256:"), "{id}");
    // Trust it (as the other machine would), by line and by file: the second is a no-op.
    let said = stdout(&clipsync_at(&home, &["trust", &key_line]));
    assert!(said.contains(&fp), "{said}");
    let pubfile = fixture("ed25519_test_key.pub").display().to_string();
    let said = stdout(&clipsync_at(&home, &["trust", &pubfile]));
    assert!(said.contains("already trusted"), "{said}");
    let ecdsa = fixture("ecdsa_test_key.pub").display().to_string();
    stdout(&clipsync_at(&home, &["trust", &ecdsa]));
    let file = home.join(".config/clipsync/trusted_keys");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // The defaults are used by send: identity from ~/.ssh, trust from the XDG file (it
    // fails to connect, past the key loading).
    let out = clipsync_at(
        &home,
        &["send", "--connect", "127.0.0.1:9", "--messages", "1"],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Untrust by fingerprint; an unknown fingerprint is refused.
    let said = stdout(&clipsync_at(&home, &["untrust", &fp]));
    assert!(said.contains("1 key(s) left"), "{said}");
    refused(&clipsync_at(&home, &["untrust", &fp]), "is not in");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("ecdsa-sha2-nistp256 "), "{text}");
    let leftovers: Vec<_> = std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "temporary files left: {leftovers:?}");
}

/// Issue 14, item 4: a private key others can read and a trusted-keys file others can write
/// are refused at start, as OpenSSH refuses them.
#[cfg(unix)]
#[test]
fn loose_permissions_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmp("perms");
    let key = dir.join("key");
    std::fs::copy(fixture("ecdsa_test_key"), &key).unwrap();
    let trusted = dir.join("trusted");
    std::fs::copy(fixture("ed25519_test_key.pub"), &trusted).unwrap();
    let set = |p: &PathBuf, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    set(&key, 0o644);
    set(&trusted, 0o644);
    let (k, t) = (key.display().to_string(), trusted.display().to_string());
    let args = [
        "send",
        "--connect",
        "127.0.0.1:9",
        "--identity",
        &k,
        "--authorized-keys",
        &t,
    ];
    refused(&clipsync(&args), "too open");
    set(&key, 0o600);
    set(&trusted, 0o666);
    refused(&clipsync(&args), "writable by others");
    set(&trusted, 0o644);
    let out = clipsync(&args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "past the keys, the connection fails"
    );
}

/// An ed25519 key `ssh-keygen` protected with `passphrase`, in `dir`: (private, public line).
fn protected_key(dir: &std::path::Path, passphrase: &str) -> (PathBuf, String) {
    let key = dir.join("protected");
    let _ = std::fs::remove_file(&key);
    let _ = std::fs::remove_file(dir.join("protected.pub"));
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", passphrase, "-C", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let public = std::fs::read_to_string(dir.join("protected.pub")).unwrap();
    (key, public.trim().to_string())
}

/// Issue 14, item 2: a passphrase-protected key is decrypted with a passphrase from a file or
/// a descriptor (never the command line); a wrong one is one clear line and exit 2; without a
/// source and without a terminal the tool says how to give one.
#[test]
fn a_passphrase_protected_key_is_decrypted() {
    let dir = tmp("passphrase");
    let (key, public) = protected_key(&dir, "correct horse");
    let k = key.display().to_string();
    let right = dir.join("right");
    std::fs::write(&right, "correct horse\n").unwrap();
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "battery staple\n").unwrap();
    let id = |env: &[(&str, &PathBuf)]| {
        let mut c = Command::new("setsid");
        c.arg(env!("CARGO_BIN_EXE_clipsync"))
            .args(["id", "--identity", &k])
            .stdin(Stdio::null())
            .env_remove("CLIPSYNC_PASSPHRASE_FILE")
            .env_remove("CLIPSYNC_PASSPHRASE_FD");
        for (name, value) in env {
            c.env(name, value);
        }
        c.output().unwrap()
    };
    let out = id(&[("CLIPSYNC_PASSPHRASE_FILE", &right)]);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&public));
    refused(
        &id(&[("CLIPSYNC_PASSPHRASE_FILE", &wrong)]),
        "wrong passphrase",
    );
    refused(&id(&[]), "CLIPSYNC_PASSPHRASE_FILE");
    // Through a descriptor, as a service manager would pass it.
    let script = format!(
        "CLIPSYNC_PASSPHRASE_FD=3 {} id --identity {k} 3< {}",
        env!("CARGO_BIN_EXE_clipsync"),
        right.display()
    );
    let out = Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&public));
}

/// Issue 14, item 1: with `SSH_AUTH_SOCK` naming a real `ssh-agent` that holds the identity's
/// key, the agent signs: `serve` authenticates although the private key file is gone (only
/// `KEY.pub` is left), and a peer talks to it.
#[test]
fn an_identity_held_by_ssh_agent_signs_without_its_private_file() {
    let dir = tmp("agent");
    let sock = dir.join("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "ssh-agent did not start");
        std::thread::yield_now();
    }
    let key = dir.join("agentkey");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let added = Command::new("ssh-add")
        .arg(&key)
        .env("SSH_AUTH_SOCK", &sock)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(added.success());
    std::fs::remove_file(&key).unwrap();
    let public = std::fs::read_to_string(dir.join("agentkey.pub")).unwrap();
    // `id` answers from the agent.
    let out = Command::new(env!("CARGO_BIN_EXE_clipsync"))
        .args(["id", "--identity"])
        .arg(&key)
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(public.trim()));
    // serve signs with the agent; send (the ECDSA fixture) trusts the agent's key.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clipsync"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--identity"])
        .arg(&key)
        .arg("--authorized-keys")
        .arg(fixture("ecdsa_test_key.pub"))
        .env("SSH_AUTH_SOCK", &sock);
    let server = Server::spawn(cmd);
    let addr = server.addr.clone();
    let trusted = dir.join("trusts_agent_key");
    std::fs::write(&trusted, &public).unwrap();
    let mut send = Command::new(env!("CARGO_BIN_EXE_clipsync"))
        .args(["send", "--connect", &addr, "--identity"])
        .arg(fixture("ecdsa_test_key"))
        .arg("--authorized-keys")
        .arg(&trusted)
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    send.stdin
        .take()
        .unwrap()
        .write_all(b"signed by the agent")
        .unwrap();
    let out = send.wait_with_output().unwrap();
    assert_success(&out);
    let line = server.line_with("message from");
    assert!(line.contains("signed by the agent"), "{line}");
    drop(server);
    let _ = agent.kill();
    let _ = agent.wait();
}

/// Issue 14, item 8: every TOML example in README.md is a valid configuration.
#[test]
fn every_toml_block_in_the_readme_is_a_valid_configuration() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let dir = tmp("readme");
    let mut blocks = 0;
    let mut lines = readme.lines();
    while lines.by_ref().any(|l| l.trim() == "```toml") {
        let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        blocks += 1;
        let file = dir.join(format!("block{blocks}.toml"));
        std::fs::write(&file, block.join("\n")).unwrap();
        let out = clipsync(&["config", "--file", &file.display().to_string()]);
        assert!(
            out.status.success(),
            "README TOML block {blocks}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(blocks > 0, "README has no TOML block");
}

/// Issue 14, item 8: configuration errors name the line of the key at fault (also for a
/// wrong type or an out-of-range value), in one line, and an unknown key is listed with the
/// valid ones, the tool's included.
#[test]
fn config_errors_point_at_the_line() {
    let dir = tmp("config");
    let cases = [
        (
            "identity = \"k\"\nack_delay_ms = 5\n\nheartbeat_intervall_ms = 100\n",
            "line 4",
            "unknown key",
        ),
        (
            "ack_delay_ms = 5\nheartbeat_timeout_ms = 999999999\n",
            "line 2",
            "out of range",
        ),
        (
            "ack_delay_ms = 5\nack_every = \"x\"\n",
            "line 2",
            "invalid type",
        ),
        ("\n\nidentity = 3\n", "line 3", "identity"),
        ("a = \n", "line 1", "quoted"),
    ];
    for (i, (text, line, what)) in cases.into_iter().enumerate() {
        let file = dir.join(format!("c{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let out = clipsync(&["config", "--file", &file.display().to_string()]);
        refused(&out, line);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(what), "{err}");
    }
    let out = clipsync(&[
        "config",
        "--file",
        &dir.join("c0.toml").display().to_string(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("identity") && err.contains("heartbeat_interval_ms"),
        "{err}"
    );
}

/// Issue 14, item 6: on a terminal (a pseudo-terminal from `script`), the demo's progress bar
/// names the outage while it lasts ("reconnecting, attempt N, next in …") and the resume
/// after it ("resumed at …"), instead of freezing on "connected".
#[test]
fn the_demo_bar_names_the_reconnection_on_a_terminal() {
    let cmd = format!(
        "{} demo --size 16MiB --outage-ms 3000 --messages 4",
        env!("CARGO_BIN_EXE_clipsync")
    );
    let out = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let screen = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    assert!(screen.contains("reconnecting, attempt 1"), "{screen}");
    assert!(screen.contains("next in"), "{screen}");
    assert!(screen.contains("resumed at"), "{screen}");
}

/// Issue 14, item 6: `send` says what it delivered in every mode.
#[test]
fn send_says_what_it_delivered() {
    let server = Server::start("127.0.0.1:0");
    let addr = server.addr.clone();
    let send = |input: &[u8], file: Option<&PathBuf>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_clipsync"));
        c.args(["send", "--connect", &addr]).args(keys());
        if let Some(f) = file {
            c.arg(f);
        }
        let o = with_input(c, input);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let said = send(b"hello", None);
    assert!(
        said.contains("delivered standard input as a message (5 bytes)"),
        "{said}"
    );
    let said = send(&vec![b'x'; 300_000], None);
    assert!(
        said.contains("delivered standard input as a stream (300000 bytes)"),
        "{said}"
    );
    let dir = tmp("delivered");
    let file = dir.join("f");
    std::fs::write(&file, b"0123456789").unwrap();
    let said = send(b"", Some(&file));
    assert!(said.contains("delivered file (10 bytes)"), "{said}");
    drop(server);
}

/// Issue 14, item 10: every error path prints exactly one line on stderr, starting
/// `clipsync: `, with the documented exit status: 1 for the network or the peer, 2 for usage,
/// configuration and keys. (More paths are checked by the tests above with `refused`.)
#[test]
fn every_error_is_one_line_with_its_documented_exit_status() {
    let dir = tmp("errors");
    let (id, trust) = (
        fixture("ecdsa_test_key").display().to_string(),
        fixture("ed25519_test_key.pub").display().to_string(),
    );
    let garbled = dir.join("garbled");
    std::fs::write(&garbled, "ssh-ed25519 !!!\n").unwrap();
    let g = garbled.display().to_string();
    let missing = dir.join("missing").display().to_string();
    // A listener that holds the port, so a second serve cannot bind it.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = held.local_addr().unwrap().to_string();
    let cases: Vec<(Vec<&str>, u8, &str)> = vec![
        (vec!["send", "--bogus"], 2, "unexpected argument"),
        (
            vec!["send", "--identity", &id, "--authorized-keys", &trust],
            2,
            "missing --connect",
        ),
        (vec!["send", "--connect", "nowhere"], 2, "invalid address"),
        (
            vec![
                "send",
                "--connect",
                "127.0.0.1:9",
                "--identity",
                &missing,
                "--authorized-keys",
                &trust,
            ],
            2,
            "cannot read",
        ),
        (
            vec![
                "send",
                "--connect",
                "127.0.0.1:9",
                "--identity",
                &id,
                "--authorized-keys",
                &g,
            ],
            2,
            "line 1",
        ),
        (
            vec![
                "send",
                "--connect",
                "127.0.0.1:9",
                "--identity",
                &id,
                "--authorized-keys",
                &trust,
                "--messages",
                "1",
            ],
            1,
            "cannot reach",
        ),
        (
            vec![
                "serve",
                "--listen",
                &busy,
                "--identity",
                &id,
                "--authorized-keys",
                &trust,
            ],
            1,
            "cannot listen",
        ),
        (vec!["demo", "--size", "12 parsecs"], 2, "parsecs"),
        (vec!["demo", "--cut-at", "2"], 2, "--cut-at"),
        (vec!["demo", "--size", "20GiB"], 2, "--yes"),
    ];
    for (args, code, needle) in cases {
        let out = clipsync_at(&dir, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(i32::from(code)), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
        assert!(err.starts_with("clipsync: "), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {needle:?} not in {err}");
    }
    // A public key given as the identity is named as such, before any permission check.
    let out = clipsync_at(
        &dir,
        &[
            "send",
            "--connect",
            "127.0.0.1:9",
            "--identity",
            &trust,
            "--authorized-keys",
            &trust,
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("this is a public key"), "{err}");
    drop(held);
}

/// Issue 12, item 11: `clipsync serve` on SIGTERM closes every connection with GOAWAY
/// `going away` (9): the peer learns the session ended (no resume attempt) and `serve` exits 0.
#[test]
fn serve_closes_with_going_away_on_sigterm() {
    use clipsync::transport::{ConnectionState, PeerInfo, Transport};
    use clipsync::wire::ReasonCode;
    let mut server = Server::start("127.0.0.1:0");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let auth = clipsync::secure::SshAuthenticator::from_files(
            &fixture("ecdsa_test_key"),
            &fixture("ed25519_test_key.pub"),
        )
        .unwrap();
        let transport = Transport::new(Default::default()).unwrap();
        let peer = PeerInfo::new("serve", vec![server.addr.parse().unwrap()]);
        let conn = transport
            .connect(&peer, std::sync::Arc::new(auth))
            .await
            .unwrap();
        server.line_with("connected");
        let killed = Command::new("kill")
            .args(["-TERM", &server.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let mut state = conn.state();
        let end = tokio::time::timeout(
            Duration::from_secs(10),
            state.wait_for(|s| matches!(s, ConnectionState::Closed(_))),
        )
        .await
        .expect("the connection did not end within 10 s")
        .unwrap()
        .clone();
        assert!(
            matches!(&end, ConnectionState::Closed(c) if c.reason() == Some(ReasonCode::GoingAway)),
            "{end:?}"
        );
    });
    server.line_with("shutting down");
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// One SIGTERM ends `serve` while its accept loop is busy: connections that fail their
/// handshake keep it turning as the signal arrives. `serve` used to make its signal listener
/// anew on every turn, and a signal that came while a turn ended for another branch was dropped
/// with the old listener (`cargo bench --bench e2e` hit it once in about 40 runs, as its
/// client's connection ended). That window is a few microseconds; this test did not hit it in
/// 5 runs against the old code, so it guards the behaviour under load, not that exact race.
#[test]
fn serve_never_loses_a_sigterm_while_connections_come_and_go() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    let mut server = Server::start("127.0.0.1:0");
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU32::new(0));
    let flood = {
        let (addr, stop, opened) = (server.addr.clone(), stop.clone(), opened.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // Connected and closed at once: a handshake failure for the accept loop.
                if std::net::TcpStream::connect(&addr).is_ok() {
                    opened.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    // The signal once the loop is busy with failing connections.
    let busy = Instant::now() + Duration::from_secs(20);
    while opened.load(Ordering::Relaxed) < 200 && Instant::now() < busy {
        std::thread::yield_now();
    }
    assert!(
        opened.load(Ordering::Relaxed) >= 200,
        "the flood did not get going"
    );
    let killed = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // Waiting for the exit, bounded; polling a child has no blocking form with a timeout.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    let status = status.expect("serve ignored SIGTERM for 10 s while connections came and went");
    assert!(status.success(), "{status:?}");
}

/// Issue 16 item 5: `send --peer-key` pins the server. With two trusted keys, `send` accepts
/// either as the server unless pinned; pinned to the other one, it refuses the server that
/// answers, and sends nothing.
#[test]
fn send_peer_key_pins_the_server() {
    let dir = tmp("peer-key");
    // The sender trusts the server's key (ed25519) and another key (RSA).
    let trusted = dir.join("trusted");
    let mut text = std::fs::read_to_string(fixture("ed25519_test_key.pub")).unwrap();
    text.push_str(&std::fs::read_to_string(fixture("rsa_test_key.pub")).unwrap());
    std::fs::write(&trusted, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&trusted, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let server = Server::start("127.0.0.1:0");
    let send = |pin: Option<&str>, text: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_clipsync"));
        c.args(["send", "--connect", &server.addr, "--identity"])
            .arg(fixture("ecdsa_test_key"))
            .arg("--authorized-keys")
            .arg(&trusted);
        if let Some(p) = pin {
            c.args(["--peer-key", p]);
        }
        with_input(c, text.as_bytes())
    };
    // Pinned to the RSA key: the ed25519 server is refused.
    let rsa_pub = fixture("rsa_test_key.pub").display().to_string();
    let out = send(Some(&rsa_pub), "secret meant for the RSA peer");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("key"), "{err}");
    // Pinned by fingerprint to the server's own key: delivered.
    let id = clipsync(&[
        "id",
        "--identity",
        &fixture("ed25519_test_key").display().to_string(),
    ]);
    let fp = String::from_utf8_lossy(&id.stdout)
        .lines()
        .find(|l| l.starts_with("SHA256:"))
        .unwrap()
        .to_string();
    assert_success(&send(Some(&fp), "pinned by fingerprint"));
    // Everything the server printed up to it: the refused secret is not there.
    let mut seen = Vec::new();
    while !seen
        .last()
        .is_some_and(|l: &String| l.contains("pinned by fingerprint"))
    {
        seen.push(server.lines.recv_timeout(Duration::from_secs(20)).unwrap());
    }
    assert!(!seen.iter().any(|l| l.contains("secret meant")), "{seen:?}");
    // A pin that is not a trusted key is a usage error.
    let ecdsa_pub = fixture("ecdsa_test_key.pub").display().to_string();
    let out = send(Some(&ecdsa_pub), "never sent");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such key in the trusted keys"));
    // No pin: any trusted key is accepted as the server (documented).
    assert_success(&send(None, "unpinned"));
    server.line_with("unpinned");
}

/// Issue 16 item 6: settings that would quietly weaken the tool are refused or warned about.
#[test]
fn dangerous_settings_are_refused_or_warned_about() {
    let dir = tmp("dangerous");
    // Plaintext on an address that leaves the machine: refused before anything is sent.
    let mut args: Vec<String> = ["send", "--plaintext", "--connect", "192.0.2.1:7070"]
        .map(String::from)
        .to_vec();
    args.extend(keys());
    let out = Command::new(env!("CARGO_BIN_EXE_clipsync"))
        .args(&args)
        .stdin(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("allow_plaintext is only for Unix sockets and loopback"),
        "{err}"
    );
    let mut args: Vec<String> = ["serve", "--plaintext", "--listen", "0.0.0.0:0"]
        .map(String::from)
        .to_vec();
    args.extend(keys());
    let out = clipsync(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // A fixed RNG seed (predictable nonces and session ids) in the tool's configuration.
    let config = dir.join("seeded.toml");
    std::fs::write(&config, "rng_seed = 7\n").unwrap();
    let mut args: Vec<String> = ["serve", "--listen", "127.0.0.1:0", "--config"]
        .map(String::from)
        .to_vec();
    args.push(config.display().to_string());
    args.extend(keys());
    let out = clipsync(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("rng_seed makes nonces"));
    // More descriptors needed than the limit allows: a loud warning at start.
    let config = dir.join("many.toml");
    std::fs::write(&config, "max_connections = 65536\nmax_streams = 1024\n").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clipsync"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--out"])
        .arg(dir.join("out"))
        .arg("--config")
        .arg(&config)
        .args(keys())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert!(first.starts_with("listening on"), "{first}");
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning: the open-file limit is"), "{err}");
}
