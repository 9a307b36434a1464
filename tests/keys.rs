//! Key files as OpenSSH writes them. The fixtures in `tests/fixtures/` were made with
//! `ssh-keygen` for these tests only (they protect nothing): keys of each algorithm, and
//! `ssh-keygen -Y sign -n clipsync-auth-v1` signatures over `transcript.bin`, so ClipSync's
//! verifier is checked against OpenSSH's own SSHSIG writer.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::PathBuf;

use clipsync::secure::SshAuthenticator;
use clipsync::secure::auth::{
    AuthError, Authenticator, KeyError, read_private_key, read_trusted_keys, transcript,
    verify_sshsig,
};
use clipsync::wire::Role;
use ssh_encoding::Encode;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn public_blob(name: &str) -> Vec<u8> {
    read_trusted_keys(&fixture(&format!("{name}.pub"))).unwrap()[0]
        .to_bytes()
        .unwrap()
}

#[test]
fn openssh_signatures_of_every_algorithm_verify() {
    let message = std::fs::read(fixture("transcript.bin")).unwrap();
    for name in ["ed25519_test_key", "ecdsa_test_key", "rsa_test_key"] {
        let pem = std::fs::read_to_string(fixture(&format!("{name}.transcript.sig"))).unwrap();
        let sig = ssh_key::SshSig::from_pem(pem).unwrap();
        let mut blob = Vec::new();
        sig.encode(&mut blob).unwrap();
        let key = public_blob(name);
        assert_eq!(verify_sshsig(&key, &message, &blob), Ok(()), "{name}");
        let mut other = message.clone();
        other[0] ^= 1;
        assert!(
            matches!(
                verify_sshsig(&key, &other, &blob),
                Err(AuthError::BadSignature(_))
            ),
            "{name}"
        );
    }
}

#[test]
fn ed25519_and_ecdsa_identities_sign_and_verify() {
    for name in ["ed25519_test_key", "ecdsa_test_key"] {
        let signer =
            SshAuthenticator::from_files(&fixture(name), &fixture(&format!("{name}.pub"))).unwrap();
        let t = transcript(Role::Dialer, b"d", b"l", &[3; 32]);
        let sig = signer.sign(&t).unwrap();
        // The signer trusts its own key (its .pub is the trusted-keys file).
        assert_eq!(
            signer.verify(&signer.public_key(), &t, &sig),
            Ok(()),
            "{name}"
        );
        let other = transcript(Role::Dialer, b"d", b"l", &[4; 32]);
        assert!(
            matches!(
                signer.verify(&signer.public_key(), &other, &sig),
                Err(AuthError::BadSignature(_))
            ),
            "{name}"
        );
    }
}

#[test]
fn an_rsa_identity_signs_and_openssh_verifies_it() {
    // Issue 14, item 3: RSA identities sign (rsa-sha2-512), and OpenSSH's own
    // `ssh-keygen -Y verify` accepts a signature ClipSync made.
    let auth = SshAuthenticator::from_files(&fixture("rsa_test_key"), &fixture("rsa_test_key.pub"))
        .unwrap();
    let message = std::fs::read(fixture("transcript.bin")).unwrap();
    let blob = auth.sign(&message).unwrap();
    let key = public_blob("rsa_test_key");
    assert_eq!(verify_sshsig(&key, &message, &blob), Ok(()));
    let sig = <ssh_key::SshSig as ssh_encoding::Decode>::decode(&mut &blob[..]).unwrap();
    assert_eq!(
        sig.algorithm(),
        ssh_key::Algorithm::Rsa {
            hash: Some(ssh_key::HashAlg::Sha512)
        }
    );
    let dir = std::env::temp_dir().join(format!("clipsync-rsa-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = dir.join("sig");
    std::fs::write(&pem, sig.to_pem(ssh_key::LineEnding::LF).unwrap()).unwrap();
    let public = std::fs::read_to_string(fixture("rsa_test_key.pub")).unwrap();
    let allowed = dir.join("allowed_signers");
    std::fs::write(&allowed, format!("peer@clipsync {}", public.trim())).unwrap();
    // OpenSSH's verifier over `message`: (accepted, what it printed).
    let openssh_verify = |message: &[u8]| {
        use std::io::Write;
        let mut verify = std::process::Command::new("ssh-keygen")
            .args([
                "-Y",
                "verify",
                "-n",
                "clipsync-auth-v1",
                "-I",
                "peer@clipsync",
                "-f",
            ])
            .arg(&allowed)
            .arg("-s")
            .arg(&pem)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        verify.stdin.take().unwrap().write_all(message).unwrap();
        let out = verify.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), said)
    };
    let (ok, said) = openssh_verify(&message);
    assert!(ok, "ssh-keygen -Y verify: {said}");
    // A tampered message fails OpenSSH's check too.
    assert!(!openssh_verify(b"not the transcript").0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn trusted_keys_files_hold_several_algorithms_and_comments() {
    let dir = std::env::temp_dir().join(format!("clipsync-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("trusted");
    let mut text = String::from("# ClipSync trusted keys\n\n");
    for name in [
        "rsa_test_key.pub",
        "ecdsa_test_key.pub",
        "ed25519_test_key.pub",
    ] {
        text.push_str(&std::fs::read_to_string(fixture(name)).unwrap());
    }
    std::fs::write(&file, text).unwrap();
    assert_eq!(read_trusted_keys(&file).unwrap().len(), 3);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_encrypted_key_is_refused_with_a_clear_message() {
    let e = read_private_key(&fixture("encrypted_test_key")).unwrap_err();
    assert!(matches!(e, KeyError::Encrypted { .. }), "{e}");
    assert!(e.to_string().contains("passphrase"), "{e}");
}

#[test]
fn a_missing_or_malformed_file_names_the_file() {
    let e = read_private_key(&fixture("nope")).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    let e = read_trusted_keys(&fixture("rsa_test_key")).unwrap_err();
    assert!(matches!(e, KeyError::Parse { .. }), "{e}");
}

/// Keys written by other tools wrap their Base64 at 64 columns (Python's `cryptography`
/// wrote this fixture); OpenSSH wraps at 70, and ssh-key only reads the latter.
#[test]
fn a_key_wrapped_at_64_columns_is_read() {
    let key = read_private_key(&fixture("pyca_ed25519_key")).unwrap();
    assert_eq!(key.algorithm(), ssh_key::Algorithm::Ed25519);
}

/// Issue 14, item 5: key-file errors say what is wrong and where.
#[test]
fn key_file_errors_name_the_line_and_the_mistake() {
    let dir = std::env::temp_dir().join(format!("clipsync-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read_to_string(fixture("ed25519_test_key.pub")).unwrap();
    // A garbled third line is named.
    let garbled = dir.join("garbled");
    let good = good.trim();
    std::fs::write(
        &garbled,
        format!("# peers\n{good}\nssh-ed25519 AAAA!!!not-base64\n"),
    )
    .unwrap();
    let e = read_trusted_keys(&garbled).unwrap_err().to_string();
    assert!(e.contains("line 3"), "{e}");
    // A file with only comments trusts no one, and says so at start.
    let empty = dir.join("empty");
    std::fs::write(&empty, "# nobody yet\n\n").unwrap();
    let e = read_trusted_keys(&empty).unwrap_err().to_string();
    assert!(e.contains("trusts no one"), "{e}");
    // A public key given as the identity is recognised as such.
    let e = read_private_key(&fixture("ed25519_test_key.pub"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("this is a public key"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
