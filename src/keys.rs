//! The command-line tool's keys as people hold them: default locations, OpenSSH's permission
//! rules, and the trusted-keys file managed by `clipsync id`, `trust` and `untrust`.
//!
//! - The identity defaults to `~/.ssh/id_ed25519` (then `~/.ssh/id_ecdsa`).
//! - Trusted keys live in ClipSync's own file, `$XDG_CONFIG_HOME/clipsync/trusted_keys`
//!   (`~/.config/clipsync/trusted_keys`), never `~/.ssh/authorized_keys`.
//! - A private key readable by group or others is refused, as OpenSSH refuses it; a
//!   trusted-keys file writable by group or others likewise (anyone could add their key).
//! - With `SSH_AUTH_SOCK` set, an identity whose public key (`KEY.pub`, or `--identity
//!   KEY.pub` itself) the agent holds is signed for by the agent: the private key file is
//!   never read (it need not exist or be readable).
//! - A passphrase-protected identity is decrypted with a passphrase from
//!   `CLIPSYNC_PASSPHRASE_FILE` (a file), `CLIPSYNC_PASSPHRASE_FD` (an open descriptor, for
//!   services), or the terminal (no echo); never from the command line.
//! - `trust` and `untrust` rewrite the file atomically: a temporary file beside it, then a
//!   rename, so a crash never leaves half a file.

use std::path::{Path, PathBuf};

use clipsync::secure::auth::{
    decrypt_private_key, fingerprint, is_encrypted, read_private_key, read_trusted_keys,
};
use clipsync::secure::{AgentSigner, SshAuthenticator};
use ssh_key::{PrivateKey, PublicKey};

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// The identity used when none is given: the first of `~/.ssh/id_ed25519`, `~/.ssh/id_ecdsa`
/// that exists (as a private key, or as a `.pub` whose key the agent may hold).
pub(crate) fn default_identity() -> Option<PathBuf> {
    let ssh = home()?.join(".ssh");
    // The private file, or (for a key the agent holds) its .pub.
    ["id_ed25519", "id_ecdsa"]
        .into_iter()
        .map(|n| ssh.join(n))
        .find(|p| p.exists() || p.with_extension("pub").exists())
}

/// ClipSync's own trusted-keys file.
pub(crate) fn default_trusted_keys() -> Option<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|c| !c.is_empty())
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".config")))?;
    Some(config.join("clipsync").join("trusted_keys"))
}

#[cfg(unix)]
fn mode(path: &Path) -> Result<u32, String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Refuses a private key that group or others may read (OpenSSH: "UNPROTECTED PRIVATE KEY
/// FILE").
pub(crate) fn check_private_key(path: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        let m = mode(path)?;
        if m & 0o077 != 0 {
            return Err(format!(
                "permissions {m:04o} for {} are too open: a private key must be readable by \
                 its owner only (chmod 600 {})",
                path.display(),
                path.display()
            ));
        }
    }
    Ok(())
}

/// Refuses a trusted-keys file that group or others may write: they could trust themselves.
pub(crate) fn check_trusted_keys(path: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        let m = mode(path)?;
        if m & 0o022 != 0 {
            return Err(format!(
                "{} is writable by others ({m:04o}): anyone could add their key (chmod go-w {})",
                path.display(),
                path.display()
            ));
        }
    }
    Ok(())
}

/// The agent's key for `identity`, if `SSH_AUTH_SOCK` names an agent that holds the key in
/// `identity`'s `.pub` file (or in `identity` itself, when it is the `.pub`).
fn agent_for(identity: &Path) -> Result<Option<AgentSigner>, String> {
    let Some(socket) = std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let public_file = if identity.extension().is_some_and(|e| e == "pub") {
        identity.to_path_buf()
    } else {
        let mut name = identity.as_os_str().to_owned();
        name.push(".pub");
        PathBuf::from(name)
    };
    let Ok(text) = std::fs::read_to_string(&public_file) else {
        return Ok(None);
    };
    let Ok(public) = text.trim().parse::<PublicKey>() else {
        return Ok(None);
    };
    AgentSigner::find(Path::new(&socket), &public).map_err(|e| e.to_string())
}

/// The authenticator for `identity`: the agent if it holds the key, the key file otherwise
/// (decrypted if it has a passphrase).
pub(crate) fn authenticator(
    identity: &Path,
    trusted: Vec<PublicKey>,
) -> Result<SshAuthenticator, String> {
    let agent = agent_for(identity);
    if let Ok(Some(agent)) = agent {
        return SshAuthenticator::with_agent(agent, trusted).map_err(|e| e.to_string());
    }
    let mut key = match load_identity(identity) {
        Ok(k) => k,
        // The file cannot be used: say why the agent could not either, if it was asked.
        Err(e) => {
            return Err(match agent {
                Err(agent) => format!("{e} (and {agent})"),
                _ => e,
            });
        }
    };
    key.set_comment("");
    SshAuthenticator::new(key, trusted).map_err(|e| e.to_string())
}

/// Reads the identity (refusing loose permissions), decrypting it if it has a passphrase.
pub(crate) fn load_identity(path: &Path) -> Result<PrivateKey, String> {
    // Parse first: a missing file or a public key given by mistake is named as such.
    let encrypted = is_encrypted(path).map_err(|e| e.to_string())?;
    check_private_key(path)?;
    if !encrypted {
        return read_private_key(path).map_err(|e| e.to_string());
    }
    let passphrase = passphrase_for(path)?;
    decrypt_private_key(path, passphrase.as_bytes()).map_err(|e| e.to_string())
}

/// One line of a passphrase source, without its line ending.
fn first_line(text: String) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

/// The passphrase for `path`: from `CLIPSYNC_PASSPHRASE_FILE`, `CLIPSYNC_PASSPHRASE_FD`, or
/// the terminal.
fn passphrase_for(path: &Path) -> Result<String, String> {
    if let Some(file) = std::env::var_os("CLIPSYNC_PASSPHRASE_FILE") {
        let file = PathBuf::from(file);
        return std::fs::read_to_string(&file)
            .map(first_line)
            .map_err(|e| format!("CLIPSYNC_PASSPHRASE_FILE {}: {e}", file.display()));
    }
    if let Ok(fd) = std::env::var("CLIPSYNC_PASSPHRASE_FD") {
        let n: u32 = fd
            .parse()
            .map_err(|_| format!("CLIPSYNC_PASSPHRASE_FD {fd:?} is not a descriptor number"))?;
        return std::fs::read_to_string(format!("/dev/fd/{n}"))
            .map(first_line)
            .map_err(|e| format!("CLIPSYNC_PASSPHRASE_FD {n}: {e}"));
    }
    rpassword::prompt_password(format!("passphrase for {}: ", path.display())).map_err(|_| {
        format!(
            "{} is protected by a passphrase and there is no terminal to ask on: set \
             CLIPSYNC_PASSPHRASE_FILE or CLIPSYNC_PASSPHRASE_FD",
            path.display()
        )
    })
}

/// `clipsync id`: the identity's public key line, then its fingerprint.
pub(crate) fn id(identity: &Path) -> Result<String, String> {
    let key;
    let public = match agent_for(identity) {
        Ok(Some(agent)) => {
            key = agent.public().clone();
            &key
        }
        _ => {
            key = load_identity(identity)?.public_key().clone();
            &key
        }
    };
    let line = public.to_openssh().map_err(|e| e.to_string())?;
    Ok(format!("{line}\n{}", fingerprint(public)))
}

/// A key given on the command line: a public key line, or a file holding one.
fn parse_key(arg: &str) -> Result<PublicKey, String> {
    if let Ok(k) = arg.trim().parse::<PublicKey>() {
        return Ok(k);
    }
    let path = Path::new(arg);
    if path.exists() {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        return text
            .trim()
            .parse::<PublicKey>()
            .map_err(|e| format!("{} is not a public key: {e}", path.display()));
    }
    Err(format!(
        "{arg:?} is neither a public key (`ssh-ed25519 AAAA…`) nor a file holding one"
    ))
}

fn lines_of(file: &Path) -> Result<Vec<String>, String> {
    match std::fs::read_to_string(file) {
        Ok(t) => Ok(t.lines().map(str::to_string).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("cannot read {}: {e}", file.display())),
    }
}

/// Replaces `file` with `lines`, atomically (owner read/write only).
fn write_atomically(file: &Path, lines: &[String]) -> Result<(), String> {
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = file.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let mut text = lines.join("\n");
    text.push('\n');
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()).map(|()| f))
        .and_then(|f| f.sync_all());
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, file)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("cannot write {}: {e}", file.display()));
    }
    Ok(())
}

/// The key of a trusted-keys line, if it holds one.
fn key_of(line: &str) -> Option<PublicKey> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    line.parse::<ssh_key::authorized_keys::Entry>()
        .ok()
        .map(|e| e.public_key().clone())
}

/// `send --peer-key KEY|PUBFILE|FINGERPRINT`: the one key the server must have, among the
/// `trusted` ones. Without a pin, every trusted key is accepted as the server.
pub(crate) fn pin_peer(arg: &str, trusted: &[PublicKey]) -> Result<PublicKey, String> {
    let found = if arg.trim().starts_with("SHA256:") {
        trusted.iter().find(|k| fingerprint(k) == arg.trim())
    } else {
        let key = parse_key(arg).map_err(|e| format!("--peer-key: {e}"))?;
        trusted.iter().find(|k| k.key_data() == key.key_data())
    };
    found.cloned().ok_or_else(|| {
        format!(
            "--peer-key {}: no such key in the trusted keys; trust it first (`clipsync trust`)",
            arg.trim()
        )
    })
}

/// `clipsync trust KEY|PUBFILE`: adds the key to `file` (created if missing); says what it did.
pub(crate) fn trust(file: &Path, arg: &str) -> Result<String, String> {
    let key = parse_key(arg)?;
    let fp = fingerprint(&key);
    if file.exists() {
        check_trusted_keys(file)?;
    }
    let mut lines = lines_of(file)?;
    if lines
        .iter()
        .filter_map(|l| key_of(l))
        .any(|k| k.key_data() == key.key_data())
    {
        return Ok(format!("{fp} is already trusted in {}", file.display()));
    }
    lines.push(key.to_openssh().map_err(|e| e.to_string())?);
    write_atomically(file, &lines)?;
    Ok(format!(
        "trusting {fp} ({}) in {}",
        key.algorithm(),
        file.display()
    ))
}

/// `clipsync untrust FINGERPRINT`: removes every line holding that key from `file`.
pub(crate) fn untrust(file: &Path, fp: &str) -> Result<String, String> {
    check_trusted_keys(file)?;
    let lines = lines_of(file)?;
    let keep: Vec<String> = lines
        .iter()
        .filter(|l| key_of(l).is_none_or(|k| fingerprint(&k) != fp))
        .cloned()
        .collect();
    if keep.len() == lines.len() {
        return Err(format!("{fp} is not in {}", file.display()));
    }
    write_atomically(file, &keep)?;
    let left = read_trusted_keys(file).map(|k| k.len()).unwrap_or(0);
    Ok(format!(
        "no longer trusting {fp}; {left} key(s) left in {}",
        file.display()
    ))
}
