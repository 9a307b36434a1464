//! Authentication: the [`Authenticator`] seam and its SSH-key implementation (PROTOCOL.md §3.2).
//!
//! Each side signs, in SSHSIG format with namespace [`NAMESPACE`], a transcript of its role,
//! both `HELLO` frames (nonces, keys, capabilities, limits) and the TLS channel binding
//! ([`transcript`]). The peer verifies the signature against the transcript *it* computed, so a
//! signature relayed from another TLS session, replayed with another nonce or reflected from
//! the other role does not verify.

use std::fmt;
use std::path::Path;

use bytes::Bytes;
use ssh_encoding::{Decode, Encode};
use ssh_key::{HashAlg, PrivateKey, PublicKey, SshSig};

use crate::wire::{ReasonCode, Role};

/// The SSHSIG namespace of ClipSync's handshake signatures.
pub const NAMESPACE: &str = "clipsync-auth-v1";
/// The first bytes of every transcript.
pub const TRANSCRIPT_LABEL: &[u8; 16] = b"clipsync-auth-v1";
/// The RFC 9266 exporter label used for the channel binding.
pub const CHANNEL_BINDING_LABEL: &[u8] = b"EXPORTER-Channel-Binding";

/// The bytes a side signs (PROTOCOL.md §3.2): label, signer role, both `HELLO` frames as sent
/// (each with a `u32` length), and the 32-byte channel binding.
pub fn transcript(
    signer: Role,
    dialer_hello: &[u8],
    listener_hello: &[u8],
    binding: &[u8; 32],
) -> Vec<u8> {
    let mut t = Vec::with_capacity(16 + 1 + 8 + dialer_hello.len() + listener_hello.len() + 32);
    t.extend_from_slice(TRANSCRIPT_LABEL);
    t.push(signer.byte());
    for hello in [dialer_hello, listener_hello] {
        // HELLO frames are at most 16 KiB (the pre-auth cap), so the length fits.
        t.extend_from_slice(&(hello.len() as u32).to_be_bytes());
        t.extend_from_slice(hello);
    }
    t.extend_from_slice(binding);
    t
}

/// Why authentication failed. Each variant maps to the reason code both sides see.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The peer's signature is malformed, made with another key, in another namespace, or
    /// over another transcript (relay, replay, reflection): `auth failed` (5).
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// The signature is good but the key is not trusted, or not the key expected for this
    /// peer: `key not authorized` (6). Add the key to the trusted-keys file if it is yours.
    #[error("key not authorized: {0}")]
    NotAuthorized(String),
    /// This side could not sign (a key the signer cannot use): `internal error` (19).
    #[error("cannot sign: {0}")]
    Sign(String),
}

impl AuthError {
    /// The reason code that carries this error on the wire.
    pub fn reason(&self) -> ReasonCode {
        match self {
            Self::BadSignature(_) => ReasonCode::AuthFailed,
            Self::NotAuthorized(_) => ReasonCode::KeyNotAuthorized,
            Self::Sign(_) => ReasonCode::InternalError,
        }
    }
}

/// The seam the handshake calls to prove this side's identity and check the peer's.
///
/// [`SshAuthenticator`] is the implementation for real use; tests plug others (a signer that
/// uses the wrong namespace, one that replays a captured signature) to check refusals.
pub trait Authenticator: Send + Sync + fmt::Debug + 'static {
    /// This side's public key in SSH wire encoding, announced in `HELLO`.
    fn public_key(&self) -> Bytes;
    /// Signs `transcript`; returns the binary SSHSIG blob sent in `AUTH`.
    fn sign(&self, transcript: &[u8]) -> Result<Bytes, AuthError>;
    /// Signs without blocking the runtime; the handshake calls this. The default calls
    /// [`Authenticator::sign`]; a signer that waits on something (an agent's socket, a
    /// hardware token) overrides it.
    fn sign_async(&self, transcript: Vec<u8>) -> BoxFuture<'static, Result<Bytes, AuthError>> {
        let signed = self.sign(&transcript);
        Box::pin(async move { signed })
    }
    /// Checks that `signature` is `peer_key`'s SSHSIG over `transcript` in [`NAMESPACE`], and
    /// that `peer_key` is trusted.
    fn verify(&self, peer_key: &[u8], transcript: &[u8], signature: &[u8])
    -> Result<(), AuthError>;
}

/// A future the authenticator returns.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Authentication with an SSH key (a private key in memory, or one `ssh-agent` holds) and a
/// list of trusted public keys.
///
/// ```
/// use clipsync::secure::SshAuthenticator;
/// // In an engine: SshAuthenticator::from_files(identity, trusted_keys_file), or
/// // with_agent for a key ssh-agent holds. Here: two keys made from seeds.
/// let mine = SshAuthenticator::ed25519_from_seed([1; 32]);
/// let laptop = SshAuthenticator::ed25519_from_seed([2; 32]).public_key().clone();
/// let auth = SshAuthenticator::new(mine, vec![laptop])?;
/// assert_eq!(auth.trusted_keys().len(), 1);
/// # Ok::<(), clipsync::secure::auth::KeyError>(())
/// ```
pub struct SshAuthenticator {
    key: Signer,
    public: Bytes,
    trusted: Vec<PublicKey>,
}

/// Who signs.
enum Signer {
    Key(Box<PrivateKey>),
    Agent(std::sync::Arc<super::agent::AgentSigner>),
}

impl Signer {
    fn public_key(&self) -> &PublicKey {
        match self {
            Self::Key(k) => k.public_key(),
            Self::Agent(a) => a.public(),
        }
    }
}

impl fmt::Debug for SshAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshAuthenticator")
            .field("key", &fingerprint(self.key.public_key()))
            .field("agent", &matches!(self.key, Signer::Agent(_)))
            .field("trusted", &self.trusted.len())
            .finish()
    }
}

/// Why keys could not be loaded. Nothing was started; fix the file and retry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not an OpenSSH key (or trusted-keys) file this build understands.
    #[error("cannot parse {path}: {detail}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message.
        detail: String,
    },
    /// The private key is passphrase-protected: decrypt it with [`decrypt_private_key`] (the
    /// `clipsync` tool asks on the terminal, or reads `CLIPSYNC_PASSPHRASE_FILE` or
    /// `CLIPSYNC_PASSPHRASE_FD`).
    #[error("{path} is protected by a passphrase")]
    Encrypted {
        /// The file.
        path: String,
    },
    /// The passphrase does not decrypt the key.
    #[error("wrong passphrase for {path}")]
    WrongPassphrase {
        /// The file.
        path: String,
    },
    /// `ssh-agent` could not be asked.
    #[error("ssh-agent at {socket}: {detail}")]
    Agent {
        /// The agent's socket.
        socket: String,
        /// What went wrong.
        detail: String,
    },
    /// The key parses but cannot sign with this build (an algorithm it does not sign with, or
    /// a key whose components do not form a valid key).
    #[error("a {algorithm} key cannot sign with this build ({detail})")]
    CannotSign {
        /// The key's algorithm.
        algorithm: String,
        /// The signer's error.
        detail: String,
    },
}

impl SshAuthenticator {
    /// The keys this authenticator trusts.
    pub fn trusted_keys(&self) -> &[PublicKey] {
        &self.trusted
    }

    /// An authenticator signing with `key` and trusting exactly `trusted`.
    ///
    /// Signs a test message once, so a key that cannot sign is refused here, at start-up,
    /// rather than in the middle of every handshake.
    pub fn new(key: PrivateKey, trusted: Vec<PublicKey>) -> Result<Self, KeyError> {
        if key.is_encrypted() {
            return Err(KeyError::Encrypted {
                path: "(in memory)".into(),
            });
        }
        if let Err(e) = sshsig(&key, b"clipsync key check") {
            return Err(KeyError::CannotSign {
                algorithm: key.algorithm().to_string(),
                detail: e.to_string(),
            });
        }
        let public = key.public_key().to_bytes().map_err(|e| KeyError::Parse {
            path: "(in memory)".into(),
            detail: e.to_string(),
        })?;
        Ok(Self {
            key: Signer::Key(Box::new(key)),
            public: Bytes::from(public),
            trusted,
        })
    }

    /// An authenticator whose signatures `ssh-agent` makes (the private key stays in the
    /// agent), trusting exactly `trusted`. Asks the agent for one test signature, so a key it
    /// cannot use is refused here, at start-up.
    pub fn with_agent(
        agent: super::agent::AgentSigner,
        trusted: Vec<PublicKey>,
    ) -> Result<Self, KeyError> {
        if let Err(e) = agent.sign_blocking(b"clipsync key check") {
            return Err(KeyError::CannotSign {
                algorithm: agent.public().algorithm().to_string(),
                detail: e.to_string(),
            });
        }
        let public = agent.public().to_bytes().map_err(|e| KeyError::Parse {
            path: "(agent)".into(),
            detail: e.to_string(),
        })?;
        Ok(Self {
            key: Signer::Agent(std::sync::Arc::new(agent)),
            public: Bytes::from(public),
            trusted,
        })
    }

    /// Loads an OpenSSH private key file and an `authorized_keys`-format file of trusted keys.
    pub fn from_files(identity: &Path, trusted_keys: &Path) -> Result<Self, KeyError> {
        let key = read_private_key(identity)?;
        let trusted = read_trusted_keys(trusted_keys)?;
        let mut key = key;
        key.set_comment("");
        Self::new(key, trusted)
    }

    /// An ed25519 key made from 32 seed bytes (the simulator derives them from its root seed;
    /// the demo from the operating system).
    pub fn ed25519_from_seed(seed: [u8; 32]) -> PrivateKey {
        PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&seed))
    }

    /// This side's public key.
    pub fn public(&self) -> &PublicKey {
        self.key.public_key()
    }
}

/// An SSHSIG by `key` over `message` in [`NAMESPACE`], SHA-512: RSA keys through
/// [`super::rsa_sign`] (`rsa-sha2-512`), the others through ssh-key.
fn sshsig(key: &PrivateKey, message: &[u8]) -> Result<ssh_key::SshSig, String> {
    match key.key_data() {
        ssh_key::private::KeypairData::Rsa(rsa) => {
            super::rsa_sign::sshsig(rsa, key.public_key(), NAMESPACE, message)
        }
        _ => key
            .sign(NAMESPACE, HashAlg::Sha512, message)
            .map_err(|e| e.to_string()),
    }
}

/// Reads an OpenSSH private key file; a passphrase-protected one is refused with
/// [`KeyError::Encrypted`] (see [`decrypt_private_key`]).
pub fn read_private_key(path: &Path) -> Result<PrivateKey, KeyError> {
    let key = parse_private_key(path)?;
    if key.is_encrypted() {
        return Err(KeyError::Encrypted {
            path: path.display().to_string(),
        });
    }
    Ok(key)
}

/// Reads a passphrase-protected OpenSSH private key file and decrypts it (bcrypt-pbkdf, as
/// `ssh-keygen` wrote it). A key without passphrase is returned as it is.
pub fn decrypt_private_key(path: &Path, passphrase: &[u8]) -> Result<PrivateKey, KeyError> {
    let key = parse_private_key(path)?;
    if !key.is_encrypted() {
        return Ok(key);
    }
    key.decrypt(passphrase)
        .map_err(|_| KeyError::WrongPassphrase {
            path: path.display().to_string(),
        })
}

/// Whether the private key file at `path` is passphrase-protected.
pub fn is_encrypted(path: &Path) -> Result<bool, KeyError> {
    parse_private_key(path).map(|k| k.is_encrypted())
}

/// Parses an OpenSSH private key file, encrypted or not.
fn parse_private_key(path: &Path) -> Result<PrivateKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    if !text.contains("-----BEGIN") && text.trim().parse::<PublicKey>().is_ok() {
        return Err(KeyError::Parse {
            path: path.display().to_string(),
            detail: "this is a public key; the identity is the private key file (usually the \
                     same name without .pub)"
                .into(),
        });
    }
    // ssh-key insists on OpenSSH's 70-column Base64 lines; other tools (Python's
    // cryptography, for one) wrap at 64. Re-wrap and try again before giving up.
    let key = PrivateKey::from_openssh(&text)
        .or_else(|first| PrivateKey::from_openssh(rewrap_openssh(&text)).map_err(|_| first))
        .map_err(|e| KeyError::Parse {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
    Ok(key)
}

/// The OpenSSH private key PEM `text` with its Base64 body re-wrapped at 70 columns.
fn rewrap_openssh(text: &str) -> String {
    const BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
    const END: &str = "-----END OPENSSH PRIVATE KEY-----";
    let body: String = text
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != BEGIN)
        .skip(1)
        .take_while(|l| *l != END)
        .collect();
    let mut out = String::from(BEGIN);
    out.push('\n');
    for line in body.as_bytes().chunks(70) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(END);
    out.push('\n');
    out
}

/// Reads an `authorized_keys`-format file (ClipSync's own, never `~/.ssh/authorized_keys`).
///
/// A line that does not parse is named (`line 3: …`); a file with no key at all is refused
/// ("trusts no one"), at start, rather than discovered peer by peer.
pub fn read_trusted_keys(path: &Path) -> Result<Vec<PublicKey>, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_trusted_keys(&path.display().to_string(), &text)
}

/// Parses the text of a trusted-keys file named `name` (for the errors); see
/// [`read_trusted_keys`].
pub fn parse_trusted_keys(name: &str, text: &str) -> Result<Vec<PublicKey>, KeyError> {
    let parse = |detail: String| KeyError::Parse {
        path: name.to_string(),
        detail,
    };
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let entry = line
            .parse::<ssh_key::authorized_keys::Entry>()
            .map_err(|e| parse(format!("line {}: not a public key ({e})", i + 1)))?;
        keys.push(entry.public_key().clone());
    }
    if keys.is_empty() {
        return Err(parse(
            "it trusts no one: no key in it (add one with `clipsync trust`, or one \
             `ssh-ed25519 AAAA…` line per peer)"
                .into(),
        ));
    }
    Ok(keys)
}

/// The `SHA256:…` fingerprint `ssh-keygen -l` prints, for logs and messages.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The fingerprint of a key in SSH wire encoding, or a note that it does not parse.
pub fn fingerprint_of_blob(blob: &[u8]) -> String {
    PublicKey::from_bytes(blob)
        .map(|k| fingerprint(&k))
        .unwrap_or_else(|_| "(unparseable key)".into())
}

impl Authenticator for SshAuthenticator {
    fn public_key(&self) -> Bytes {
        self.public.clone()
    }

    fn sign_async(&self, transcript: Vec<u8>) -> BoxFuture<'static, Result<Bytes, AuthError>> {
        match &self.key {
            Signer::Agent(agent) => {
                let agent = agent.clone();
                Box::pin(async move {
                    tokio::task::spawn_blocking(move || agent.sign_blocking(&transcript))
                        .await
                        .map_err(|e| AuthError::Sign(format!("agent task: {e}")))?
                })
            }
            Signer::Key(_) => {
                let signed = self.sign(&transcript);
                Box::pin(async move { signed })
            }
        }
    }

    fn sign(&self, transcript: &[u8]) -> Result<Bytes, AuthError> {
        let key = match &self.key {
            Signer::Key(k) => k,
            Signer::Agent(agent) => return agent.sign_blocking(transcript),
        };
        let sig = sshsig(key, transcript).map_err(AuthError::Sign)?;
        let mut blob = Vec::new();
        sig.encode(&mut blob)
            .map_err(|e| AuthError::Sign(e.to_string()))?;
        Ok(Bytes::from(blob))
    }

    fn verify(
        &self,
        peer_key: &[u8],
        transcript: &[u8],
        signature: &[u8],
    ) -> Result<(), AuthError> {
        verify_sshsig(peer_key, transcript, signature)?;
        let key = PublicKey::from_bytes(peer_key)
            .map_err(|e| AuthError::BadSignature(format!("peer key does not parse: {e}")))?;
        if self.trusted.iter().any(|t| t.key_data() == key.key_data()) {
            Ok(())
        } else {
            Err(AuthError::NotAuthorized(format!(
                "{} is not in the trusted keys",
                fingerprint(&key)
            )))
        }
    }
}

/// Checks an SSHSIG blob: it parses, its key is `peer_key`, its namespace is [`NAMESPACE`],
/// and it verifies over `transcript`. Trust is the caller's business.
pub fn verify_sshsig(
    peer_key: &[u8],
    transcript: &[u8],
    signature: &[u8],
) -> Result<(), AuthError> {
    let sig = SshSig::decode(&mut &signature[..])
        .map_err(|e| AuthError::BadSignature(format!("not an SSHSIG blob: {e}")))?;
    let key = PublicKey::from_bytes(peer_key)
        .map_err(|e| AuthError::BadSignature(format!("peer key does not parse: {e}")))?;
    if sig.public_key() != key.key_data() {
        return Err(AuthError::BadSignature(
            "signature made with another key than the one in HELLO".into(),
        ));
    }
    if sig.namespace() != NAMESPACE {
        return Err(AuthError::BadSignature(format!(
            "wrong namespace {:?} (expected {NAMESPACE:?})",
            sig.namespace()
        )));
    }
    key.verify(NAMESPACE, transcript, &sig).map_err(|_| {
        AuthError::BadSignature(
            "signature does not verify over this session's transcript (relayed, replayed or forged)"
                .into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(seed: u8) -> SshAuthenticator {
        let key = SshAuthenticator::ed25519_from_seed([seed; 32]);
        SshAuthenticator::new(key, vec![]).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn sign_then_verify_and_refusals() {
        let a = pair(1);
        let b = pair(2);
        let trusting_a = SshAuthenticator::new(
            SshAuthenticator::ed25519_from_seed([2; 32]),
            vec![a.public().clone()],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let t = transcript(Role::Dialer, b"hello-d", b"hello-l", &[7; 32]);
        let sig = a.sign(&t).unwrap_or_else(|e| panic!("{e}"));
        // Good signature, trusted key.
        assert_eq!(trusting_a.verify(&a.public_key(), &t, &sig), Ok(()));
        // Good signature, untrusted key.
        assert!(matches!(
            b.verify(&a.public_key(), &t, &sig),
            Err(AuthError::NotAuthorized(_))
        ));
        // Another channel binding: the relay attack.
        let other = transcript(Role::Dialer, b"hello-d", b"hello-l", &[8; 32]);
        let e = trusting_a.verify(&a.public_key(), &other, &sig);
        assert!(matches!(e, Err(AuthError::BadSignature(_))), "{e:?}");
        // The other role: reflection.
        let reflected = transcript(Role::Listener, b"hello-d", b"hello-l", &[7; 32]);
        assert!(matches!(
            trusting_a.verify(&a.public_key(), &reflected, &sig),
            Err(AuthError::BadSignature(_))
        ));
        // Signature by a key other than the announced one.
        assert!(matches!(
            trusting_a.verify(&b.public_key(), &t, &sig),
            Err(AuthError::BadSignature(_))
        ));
        // Wrong namespace.
        let Signer::Key(key) = &a.key else {
            panic!("a key in memory")
        };
        let wrong_ns = key
            .sign("file", HashAlg::Sha512, &t)
            .and_then(|s| {
                let mut v = Vec::new();
                s.encode(&mut v).map(|()| v).map_err(Into::into)
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let e = trusting_a.verify(&a.public_key(), &t, &wrong_ns);
        assert!(
            matches!(&e, Err(AuthError::BadSignature(m)) if m.contains("namespace")),
            "{e:?}"
        );
        // Garbage.
        assert!(matches!(
            trusting_a.verify(&a.public_key(), &t, b"junk"),
            Err(AuthError::BadSignature(_))
        ));
    }

    #[test]
    fn transcript_layout() {
        let t = transcript(Role::Listener, b"ab", b"c", &[9; 32]);
        let mut want = b"clipsync-auth-v1".to_vec();
        want.push(1);
        want.extend_from_slice(&[0, 0, 0, 2, b'a', b'b', 0, 0, 0, 1, b'c']);
        want.extend_from_slice(&[9; 32]);
        assert_eq!(t, want);
    }
}
