//! Signing with a key held by `ssh-agent`, so the private key never needs to be readable by
//! ClipSync. The agent signs the SSHSIG "signed data" (magic preamble, namespace, hash of the
//! transcript); ClipSync wraps its signature into the SSHSIG blob. The agent protocol is
//! synchronous (`ssh-agent-client-rs`): the handshake runs it on the blocking pool
//! ([`crate::secure::Authenticator::sign_async`]), never on the runtime's threads.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use ssh_encoding::Encode;
use ssh_key::{HashAlg, PublicKey, SshSig};

use super::auth::{AuthError, KeyError, NAMESPACE};

/// A key the agent at `socket` holds.
#[derive(Clone, Debug)]
pub struct AgentSigner {
    socket: PathBuf,
    public: PublicKey,
}

impl AgentSigner {
    /// The agent at `socket` (usually `$SSH_AUTH_SOCK`) if it holds `public`; `None` if it
    /// does not.
    pub fn find(socket: &Path, public: &PublicKey) -> Result<Option<Self>, KeyError> {
        let agent_error = |detail: String| KeyError::Agent {
            socket: socket.display().to_string(),
            detail,
        };
        let mut client =
            ssh_agent_client_rs::Client::connect(socket).map_err(|e| agent_error(e.to_string()))?;
        let held = client
            .list_all_identities()
            .map_err(|e| agent_error(e.to_string()))?;
        Ok(held
            .iter()
            .any(|id| {
                matches!(id, ssh_agent_client_rs::Identity::PublicKey(k)
                    if k.key_data() == public.key_data())
            })
            .then(|| Self {
                socket: socket.to_path_buf(),
                public: public.clone(),
            }))
    }

    /// The key's public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Asks the agent for an SSHSIG (namespace [`NAMESPACE`], SHA-512) over `transcript`;
    /// blocks on the agent's socket.
    pub fn sign_blocking(&self, transcript: &[u8]) -> Result<Bytes, AuthError> {
        let fail = |e: String| AuthError::Sign(format!("ssh-agent: {e}"));
        let data = SshSig::signed_data(NAMESPACE, HashAlg::Sha512, transcript)
            .map_err(|e| fail(e.to_string()))?;
        let mut client =
            ssh_agent_client_rs::Client::connect(&self.socket).map_err(|e| fail(e.to_string()))?;
        let signature = client
            .sign(self.public.clone(), &data)
            .map_err(|e| fail(e.to_string()))?;
        let sig = SshSig::new(
            self.public.key_data().clone(),
            NAMESPACE,
            HashAlg::Sha512,
            signature,
        )
        .map_err(|e| fail(e.to_string()))?;
        let mut blob = Vec::new();
        sig.encode(&mut blob).map_err(|e| fail(e.to_string()))?;
        Ok(Bytes::from(blob))
    }
}
