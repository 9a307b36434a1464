//! The `clipsync` command-line tool.
//!
//! - `clipsync demo [--size 256MiB]`: the main job, with nothing to set up: two peers in one
//!   process stream a payload over loopback TCP, the link is cut midway, the transport
//!   reconnects and resumes; prints a report (see `demo.rs`).
//! - `clipsync serve --listen ADDR --identity KEY --authorized-keys FILE`: accepts
//!   authenticated connections and prints one line per received message.
//! - `clipsync send --connect ADDR --identity KEY --authorized-keys FILE [FILE|-]`: sends one
//!   message and exits 0 once the peer has acknowledged it.
//! - `clipsync frames`: the wire codec's round trip over one example of every frame.
//! - `clipsync config [--file F]`: prints the effective configuration as TOML.
//!
//! `ADDR` is `HOST:PORT` or `unix:PATH`. Errors are one line on stderr with a non-zero exit
//! status: 1 for a failed connection or send, 2 for bad usage, keys or configuration.

mod demo;
mod files;
mod keys;
mod progress;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use clipsync::config::TransportConfig;
use clipsync::secure::SshAuthenticator;
use clipsync::transport::{
    AcceptError, Address, Incoming, IncomingStream, Message, PeerInfo, Transport,
};
use clipsync::wire::{DecodeLimits, Frame, ReasonCode, examples};

#[derive(Parser)]
#[command(name = "clipsync", version, about = "ClipSync transport")]
struct Cli {
    /// Log connection events to stderr (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Common {
    /// OpenSSH private key file: ed25519, ecdsa or RSA (signing rsa-sha2-512); with a
    /// passphrase, asked on the terminal or read from CLIPSYNC_PASSPHRASE_FILE /
    /// CLIPSYNC_PASSPHRASE_FD; held by ssh-agent if SSH_AUTH_SOCK is set and the agent has the
    /// key of KEY.pub. Default: ~/.ssh/id_ed25519. Overrides `identity` in the configuration
    /// file.
    #[arg(long)]
    identity: Option<PathBuf>,
    /// Trusted peer keys, `authorized_keys` format (ClipSync's own file). Overrides
    /// `authorized_keys` in the configuration file.
    #[arg(long)]
    authorized_keys: Option<PathBuf>,
    /// TOML configuration file: the tool's keys (`identity`, `authorized_keys`, `listen`,
    /// `connect`, `out`) and the transport's (see `clipsync config`). Flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run WebSocket without TLS (both ends must say so; for Unix sockets and tests).
    #[arg(long)]
    plaintext: bool,
}

/// Numbered messages beside the payload, to check delivery over a bad network.
#[derive(clap::Args, Clone, Copy)]
struct Probes {
    /// Also send N small text messages `probe 1` … `probe N`, one every `--interval-ms`,
    /// printing one line per settled send (`t=MS delivered probe I in MS ms` or `t=MS failed
    /// probe I in MS ms: REASON`); exit 1 if any failed.
    #[arg(long, default_value_t = 0, value_name = "N")]
    messages: u32,
    /// Pause between two probe messages, in milliseconds.
    #[arg(long, default_value_t = 100, value_name = "MS")]
    interval_ms: u64,
}

#[derive(Subcommand)]
enum Command {
    /// The transport's promises in one process: two peers, a large stream with a progress
    /// bar, the TCP link cut midway, reconnection, resume, messages sent during the outage;
    /// ends with a report (exit 1 if a promise failed).
    Demo(demo::DemoArgs),
    /// Accept connections and print each received message or stream, one line each.
    Serve {
        /// Where to listen: HOST:PORT or unix:PATH (or `listen` in the configuration file).
        #[arg(long)]
        listen: Option<Address>,
        /// Write each received stream to a file in DIR named by its BLAKE3 hash (never a name
        /// the peer chose); without it streams are verified and discarded.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// Send a file (streamed, any size, with a progress bar on a terminal) or standard input,
    /// and wait until the peer has it.
    Send {
        /// Where the peer listens: HOST:PORT or unix:PATH (or `connect` in the configuration
        /// file).
        #[arg(long)]
        connect: Option<Address>,
        #[command(flatten)]
        common: Common,
        /// Content type (default: text/plain for standard input, octet-stream for files).
        #[arg(long)]
        content_type: Option<String>,
        /// The file to send; `-` or nothing for standard input (with `--messages` and no
        /// file: nothing but the messages).
        file: Option<PathBuf>,
        #[command(flatten)]
        probes: Probes,
        /// The server's key: a public key line, a .pub file or a fingerprint (`SHA256:…`) of a
        /// trusted key (or `peer_key` in the configuration file). Without it, any key in the
        /// trusted keys is accepted as the server.
        #[arg(long)]
        peer_key: Option<String>,
    },
    /// Encode, print and decode one example of every wire frame (the codec round trip).
    Frames,
    /// Print this machine's identity: its public key line (to paste into a peer's trusted
    /// keys, or `clipsync trust` there) and its fingerprint.
    Id {
        /// The private key (default: ~/.ssh/id_ed25519, then ~/.ssh/id_ecdsa).
        #[arg(long)]
        identity: Option<PathBuf>,
    },
    /// Trust a peer's key: a public key line or a .pub file. Prints its fingerprint.
    Trust {
        /// `ssh-ed25519 AAAA…` or a file holding it.
        key: String,
        /// The trusted-keys file (default: $XDG_CONFIG_HOME/clipsync/trusted_keys).
        #[arg(long)]
        authorized_keys: Option<PathBuf>,
    },
    /// Stop trusting a key, by its fingerprint (`SHA256:…`, as `id` and `trust` print it).
    Untrust {
        /// The key's fingerprint.
        fingerprint: String,
        /// The trusted-keys file (default: $XDG_CONFIG_HOME/clipsync/trusted_keys).
        #[arg(long)]
        authorized_keys: Option<PathBuf>,
    },
    /// Print the effective configuration as TOML.
    Config {
        /// A TOML file whose keys override the defaults.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
            }
            // One line, like every other error: clap's first line, without its usage block.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            return fail(
                2,
                &format!("{} (see --help)", first.trim_start_matches("error: ")),
            );
        }
    };
    if cli.verbose > 0 {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_max_level(if cli.verbose > 1 {
                tracing::Level::DEBUG
            } else {
                tracing::Level::INFO
            })
            .init();
    }
    match cli.command {
        Command::Demo(args) => run(demo::demo(args), false),
        Command::Frames => frames(),
        Command::Id { identity } => {
            let identity = identity.or_else(keys::default_identity);
            match identity
                .ok_or_else(|| "no identity: --identity, or ~/.ssh/id_ed25519".into())
                .and_then(|i| keys::id(&i))
            {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(2, &e),
            }
        }
        Command::Trust {
            key,
            authorized_keys,
        } => trusted_file(authorized_keys)
            .and_then(|f| keys::trust(&f, &key))
            .map_or_else(|e| fail(2, &e), done),
        Command::Untrust {
            fingerprint,
            authorized_keys,
        } => trusted_file(authorized_keys)
            .and_then(|f| keys::untrust(&f, &fingerprint))
            .map_or_else(|e| fail(2, &e), done),
        Command::Config { file } => match load_config(file.as_ref()) {
            Ok((tool, cfg)) => {
                print!("{}{}", tool.to_toml(), cfg.to_toml());
                ExitCode::SUCCESS
            }
            Err(e) => fail(2, &e),
        },
        Command::Serve {
            listen,
            out,
            common,
        } => match Resolved::new(&common, listen, "listen") {
            Ok(r) => {
                let out = out.or(r.tool.out.clone());
                run(serve(r, out), true)
            }
            Err(e) => fail(2, &e),
        },
        Command::Send {
            connect,
            common,
            content_type,
            file,
            probes,
            peer_key,
        } => match Resolved::new(&common, connect, "connect") {
            Ok(r) => {
                let peer_key = peer_key.or(r.tool.peer_key.clone());
                run(send(r, content_type, file, probes, peer_key), true)
            }
            Err(e) => fail(2, &e),
        },
    }
}

/// Tells glibc's allocator to keep memory it gets back instead of returning it to the kernel at
/// once: blocks up to 4 MiB come from the heap (a stream's 64 KiB messages and 1 MiB file
/// blocks are allocated and freed thousands of times per GiB), and the heap gives back its top
/// only above 16 MiB free. By default glibc trims and re-grows its heaps all the time, and every
/// re-grown page faults again (tens of thousands of page faults per GiB; on a virtual machine
/// that hands freed pages to its host, each of them costs a host fault as well). Measured with
/// `cargo bench --bench e2e`: 7% less CPU per byte, peak RSS still about 21 MiB per side.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn keep_freed_memory() {
    // SAFETY: mallopt only sets allocator parameters; called first thing in `main`, before any
    // other thread exists. A refusal (return 0) leaves the defaults, which are correct too.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// Runs `f` on a tokio runtime: on this thread alone for `send` and `serve` (every hand-off
/// between a connection's tasks is then a queue push instead of a cross-thread wake-up), a
/// multi-threaded one for `demo`. For `serve` that measured 981 instead of 762 MB/s and 1.95
/// instead of 2.22 CPU-s/GiB (both processes) against the multi-threaded build in one
/// interleaved run of `cargo bench --bench e2e` (`E2E_BASELINE`, 4 rounds, medians). A
/// one-thread `serve` once failed the soak's `flood-own` case (2 of 4 runs: a legitimate
/// connection from the flooding address was shed during its TLS handshake); at this commit
/// it passed all of `cargo bench --bench soak` in 3 of 3 runs (flood latencies p50 51–89 ms,
/// max 85–157 ms).
fn run(f: impl Future<Output = ExitCode>, one_thread: bool) -> ExitCode {
    let mut builder = if one_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    match builder.enable_all().build() {
        Ok(rt) => rt.block_on(f),
        Err(e) => fail(1, &format!("cannot start the runtime: {e}")),
    }
}

/// The trusted-keys file: the flag, or ClipSync's default.
fn trusted_file(flag: Option<PathBuf>) -> Result<PathBuf, String> {
    flag.or_else(keys::default_trusted_keys)
        .ok_or_else(|| "no trusted-keys file: --authorized-keys (HOME is not set)".into())
}

/// Prints `line` and exits 0.
fn done(line: String) -> ExitCode {
    println!("{line}");
    ExitCode::SUCCESS
}

fn fail(code: u8, msg: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("clipsync: {msg}");
    ExitCode::from(code)
}

/// The tool's own keys in a configuration file, beside the transport's.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct ToolConfig {
    /// OpenSSH private key file.
    identity: Option<PathBuf>,
    /// Trusted peer keys, `authorized_keys` format.
    authorized_keys: Option<PathBuf>,
    /// `serve`: where to listen.
    listen: Option<String>,
    /// `send`: where the peer listens.
    connect: Option<String>,
    /// `serve`: where to write received streams.
    out: Option<PathBuf>,
    /// `send`: the one key the server must have.
    peer_key: Option<String>,
}

impl ToolConfig {
    const KEYS: [&str; 6] = [
        "identity",
        "authorized_keys",
        "listen",
        "connect",
        "out",
        "peer_key",
    ];

    fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

/// The 1-based line of the file where top-level `key` is set, if any (configurations are flat
/// tables of `key = value` lines).
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

/// Every key a configuration file may hold: the tool's and the transport's.
fn valid_keys() -> Vec<String> {
    let transport: toml::Table = TransportConfig::default()
        .to_toml()
        .parse()
        .unwrap_or_default();
    ToolConfig::KEYS
        .iter()
        .map(|k| k.to_string())
        .chain(transport.keys().cloned())
        .chain(std::iter::once("rng_seed".to_string()))
        .collect()
}

/// Reads a configuration file: the tool's keys, then the transport's. Every error is one line
/// naming the file and the line of the key at fault (unknown keys listed with the valid ones).
fn load_config(file: Option<&PathBuf>) -> Result<(ToolConfig, TransportConfig), String> {
    let Some(path) = file else {
        return Ok((ToolConfig::default(), TransportConfig::default()));
    };
    let p = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {p}: {e}"))?;
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e.span().map_or(1, |s| {
            text[..s.start.min(text.len())].lines().count().max(1)
        });
        format!("{p} line {line}: {}", e.message().trim())
    })?;
    let at = |key: &str, message: String| match line_of(&text, key) {
        Some(n) => format!("{p} line {n}: {message}"),
        None => format!("{p}: {message}"),
    };
    let valid = valid_keys();
    if let Some(unknown) = table.keys().find(|k| !valid.contains(k)) {
        return Err(at(
            unknown,
            format!("unknown key `{unknown}`; valid keys: {}", valid.join(", ")),
        ));
    }
    let mut tool = toml::Table::new();
    for key in ToolConfig::KEYS {
        if let Some(v) = table.remove(key) {
            tool.insert(key.to_string(), v);
        }
    }
    // A key whose value has the wrong type: the first key the deserializer names.
    let named = |message: &str| {
        valid
            .iter()
            .find(|k| message.contains(&format!("`{k}`")))
            .cloned()
    };
    let tool: ToolConfig = toml::Value::Table(tool)
        .try_into()
        .map_err(|e: toml::de::Error| {
            let message = e.to_string().replace('\n', " ");
            match named(&message) {
                Some(k) => at(&k, message),
                None => format!("{p}: {message}"),
            }
        })?;
    let rest = toml::to_string(&table).map_err(|e| e.to_string())?;
    let cfg = TransportConfig::from_toml_str(&rest).map_err(|e| {
        let message = match &e {
            clipsync::error::ConfigError::Parse { message } => message
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .to_string(),
            other => other.to_string(),
        };
        // The key at the line the parser names, in the text it parsed.
        let at_line = |m: &str| {
            let n: usize = m
                .split("at line ")
                .nth(1)?
                .split(',')
                .next()?
                .trim()
                .parse()
                .ok()?;
            let line = rest.lines().nth(n.checked_sub(1)?)?;
            Some(line.split('=').next()?.trim().to_string())
        };
        let field = match &e {
            clipsync::error::ConfigError::Invalid { field, .. } => Some(field.to_string()),
            clipsync::error::ConfigError::Parse { message: m } => {
                named(&message).or_else(|| at_line(m))
            }
            _ => named(&message),
        };
        match field {
            Some(k) => at(&k, message),
            None => format!("{p}: {message}"),
        }
    })?;
    Ok((tool, cfg))
}

/// Flags and configuration file merged: flags win.
struct Resolved {
    tool: ToolConfig,
    cfg: TransportConfig,
    identity: PathBuf,
    authorized_keys: PathBuf,
    address: Address,
}

impl Resolved {
    /// `address` is the `--listen`/`--connect` flag, `key` the file's key for it.
    fn new(common: &Common, address: Option<Address>, key: &str) -> Result<Self, String> {
        let (tool, mut cfg) = load_config(common.config.as_ref())?;
        if common.plaintext {
            cfg.allow_plaintext = true;
        }
        if cfg.rng_seed.is_some() {
            return Err(
                "rng_seed makes nonces and session ids predictable: it is for tests and \
                        the simulator, not for this tool; remove it from the configuration"
                    .into(),
            );
        }
        let missing = |k: &str| {
            format!(
                "missing --{} (or `{k}` in the configuration file)",
                k.replace('_', "-")
            )
        };
        let identity = common
            .identity
            .clone()
            .or(tool.identity.clone())
            .or_else(keys::default_identity)
            .ok_or_else(|| {
                missing("identity") + "; the default ~/.ssh/id_ed25519 does not exist either"
            })?;
        let authorized_keys = common
            .authorized_keys
            .clone()
            .or(tool.authorized_keys.clone())
            .or_else(|| keys::default_trusted_keys().filter(|p| p.exists()))
            .ok_or_else(|| {
                missing("authorized_keys")
                    + "; the default $XDG_CONFIG_HOME/clipsync/trusted_keys does not exist \
                       either (add a peer with `clipsync trust`)"
            })?;
        let from_file = if key == "listen" {
            tool.listen.clone()
        } else {
            tool.connect.clone()
        };
        let address = match (address, from_file) {
            (Some(a), _) => a,
            (None, Some(s)) => s
                .parse()
                .map_err(|e| format!("`{key}` in the configuration file: {e}"))?,
            (None, None) => return Err(missing(key)),
        };
        Ok(Self {
            tool,
            cfg,
            identity,
            authorized_keys,
            address,
        })
    }

    fn setup(&self) -> Result<(Transport, Arc<SshAuthenticator>), String> {
        keys::check_trusted_keys(&self.authorized_keys)?;
        let trusted = clipsync::secure::auth::read_trusted_keys(&self.authorized_keys)
            .map_err(|e| e.to_string())?;
        let auth = keys::authenticator(&self.identity, trusted)?;
        let transport = Transport::new(self.cfg.clone()).map_err(|e| e.to_string())?;
        Ok((transport, Arc::new(auth)))
    }
}

async fn serve(r: Resolved, out: Option<PathBuf>) -> ExitCode {
    let listen = r.address.clone();
    if let Some(dir) = out.as_ref().filter(|d| d.exists() && !d.is_dir()) {
        return fail(2, &format!("--out {} is not a directory", dir.display()));
    }
    let (transport, auth) = match r.setup() {
        Ok(x) => x,
        Err(e) => return fail(2, &e),
    };
    let mut listener = match transport.listen(&listen, auth).await {
        Ok(l) => l,
        Err(e @ clipsync::error::ConnectError::PlaintextNotLocal(_)) => return fail(2, &e),
        Err(e) => return fail(1, &e),
    };
    if let Some(warning) = descriptor_shortage(&r.cfg, out.is_some()) {
        eprintln!("clipsync: warning: {warning}");
    }
    // Created only once everything else stood: a failed start leaves nothing behind.
    if let Some(dir) = &out {
        if let Err(e) = std::fs::create_dir_all(dir) {
            return fail(2, &format!("cannot create {}: {e}", dir.display()));
        }
    }
    println!("listening on {}", listener.local_addr());
    // SIGINT or SIGTERM: every connection says GOAWAY `going away` (9) and closes cleanly, so
    // its peer knows the session ended instead of trying to resume it.
    let (shutdown, shutting_down) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    // One signal listener for the whole loop: a listener made anew on every turn dropped a
    // signal that arrived while the turn ended for another branch (a connection ended), and
    // the server ran on (`cargo bench --bench e2e` hit it once in about 40 runs).
    let signalled = shutdown_signal();
    tokio::pin!(signalled);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut signalled => break,
            // Reap ended connections: a JoinSet keeps every finished task until it is joined
            // (the soak measured 1.6 KB kept per session, linearly, without this).
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            a = listener.accept() => a,
        };
        match accepted {
            Ok(conn) => {
                let out = out.clone();
                connections.spawn(serve_connection(conn, out, shutting_down.clone()));
            }
            Err(AcceptError::Closed) => return fail(1, &"listener closed"),
            Err(e) => eprintln!("clipsync: {e}"),
        }
    }
    println!("shutting down");
    drop(listener);
    let _ = shutdown.send(true);
    // Bounded: a peer that does not answer the close does not keep us.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    ExitCode::SUCCESS
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                biased;
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// A warning if this process may open more files than its descriptor limit allows at the
/// configured limits: one socket per session and per connection in setup, plus, with `--out`,
/// one file per incoming stream (Linux: the soft limit from `/proc/self/limits`).
fn descriptor_shortage(cfg: &TransportConfig, files: bool) -> Option<String> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let soft: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    let sessions = u64::from(cfg.max_connections);
    let streams = if files {
        sessions * u64::from(cfg.max_streams)
    } else {
        0
    };
    let need = sessions + u64::from(cfg.max_startups) + streams + 32;
    (soft < need).then(|| {
        format!(
            "the open-file limit is {soft}, but max_connections ({sessions}) sessions, \
             max_startups ({}) connections in setup{} may need {need}: raise it (ulimit -n) or \
             lower those settings",
            cfg.max_startups,
            if files {
                format!(" and max_streams ({}) files per session", cfg.max_streams)
            } else {
                String::new()
            }
        )
    })
}

/// One accepted connection of `serve`: prints what arrives, saves streams, and closes with
/// `going away` when the server shuts down.
async fn serve_connection(
    mut conn: clipsync::transport::Connection,
    out: Option<PathBuf>,
    mut shutting_down: tokio::sync::watch::Receiver<bool>,
) {
    let peer = conn.peer_fingerprint().to_string();
    println!("connected {peer}");
    loop {
        let incoming = tokio::select! {
            biased;
            _ = shutting_down.changed() => {
                conn.close_with(ReasonCode::GoingAway, "the server shuts down".into()).await;
                println!("disconnected {peer}: server shutting down");
                return;
            }
            i = conn.receive() => i,
        };
        match incoming {
            Ok(Incoming::Message(m)) => println!("{}", describe(&peer, &m)),
            Ok(Incoming::Stream(s)) => {
                // Each stream in its own task: messages keep flowing meanwhile.
                let (peer, out) = (peer.clone(), out.clone());
                tokio::spawn(async move {
                    println!("{}", save_stream(&peer, s, out.as_deref()).await);
                });
            }
            Ok(_) => {}
            Err(closed) => {
                println!("disconnected {peer}: {}", closed.0);
                return;
            }
        }
    }
}

/// Part files get unique names: stream ids restart on every connection, so two peers sending
/// at once must never share one.
static PART: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Creates a new part file in `dir`, exclusively (never an existing file), readable by its
/// owner only (clipboard data).
async fn create_part(dir: &std::path::Path) -> std::io::Result<(PathBuf, tokio::fs::File)> {
    loop {
        let n = PART.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!(".incoming-{}-{n}.part", std::process::id()));
        let mut options = tokio::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        options.mode(0o600);
        match options.open(&path).await {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Reads a stream to its verified end, writing it under `out` (in a part file of its own,
/// renamed to `<blake3>` once verified); returns the line to print. The sender is told
/// "delivered" only once the file is in place: the verdict is held until then, and a stream
/// that could not be saved is refused with `internal error`. The name is the BLAKE3 the
/// transport verified ([`IncomingStream::verified_hash`]): the bytes are not hashed again.
async fn save_stream(peer: &str, mut s: IncomingStream, out: Option<&std::path::Path>) -> String {
    use futures_util::FutureExt;
    let content_type = s.content_type().to_string();
    // An offer of content saved already (files are named by their BLAKE3): declined, unsent.
    if let (Some(dir), Some(hash)) = (out, s.hash()) {
        let dest = dir.join(blake3::Hash::from(hash).to_hex().as_str());
        if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            s.decline();
            return format!(
                "stream from {peer} type={content_type} declined: already saved={}",
                dest.display()
            );
        }
    }
    if out.is_some() {
        s.hold_verdict();
    }
    let (part, mut writer) = match out {
        Some(dir) => match create_part(dir).await {
            Ok((p, f)) => (Some(p), Some(files::WriteBehind::new(f.into_std().await))),
            Err(e) => {
                let line = format!("stream from {peer} not saved: {}: {e}", dir.display());
                s.reject(ReasonCode::InternalError, line.clone());
                return line;
            }
        },
        None => (None, None),
    };
    let mut size = 0u64;
    let result: Result<(), String> = async {
        while let Some(first) = s.chunk().await.map_err(|e| e.to_string())? {
            size += first.len() as u64;
            let Some(w) = writer.as_mut() else { continue };
            // The chunks already here go to the writer thread together: one wake-up per batch,
            // not per chunk. A batch never waits for a chunk that has not arrived.
            let mut batched = first.len();
            let mut batch = vec![first];
            while batched < files::BLOCK {
                match s.chunk().now_or_never() {
                    Some(Ok(Some(b))) => {
                        size += b.len() as u64;
                        batched += b.len();
                        batch.push(b);
                    }
                    Some(Err(e)) => return Err(e.to_string()),
                    // The end is read again by the loop's next `chunk`.
                    Some(Ok(None)) | None => break,
                }
            }
            w.write(batch).await.map_err(|e| e.to_string())?;
        }
        if let Some(w) = writer.take() {
            w.finish().await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
    .await;
    drop(writer);
    let hash = s.verified_hash().map(|h| blake3::Hash::from(h).to_hex());
    let result = result.and_then(|()| hash.ok_or_else(|| "ended without a verified hash".into()));
    match (result, part, out) {
        (Err(e), part, _) => {
            if let Some(p) = part {
                let _ = tokio::fs::remove_file(p).await;
            }
            s.reject(ReasonCode::InternalError, format!("not saved: {e}"));
            format!("stream from {peer} type={content_type} failed after {size} bytes: {e}")
        }
        (Ok(hash), Some(part), Some(dir)) => {
            let dest = dir.join(hash.as_str());
            match tokio::fs::rename(&part, &dest).await {
                Ok(()) => {
                    s.accept();
                    format!(
                        "stream from {peer} type={content_type} size={size} blake3={hash} saved={}",
                        dest.display()
                    )
                }
                Err(e) => {
                    let _ = tokio::fs::remove_file(&part).await;
                    s.reject(ReasonCode::InternalError, format!("not saved: {e}"));
                    format!("stream from {peer} verified but not saved: {e}")
                }
            }
        }
        (Ok(hash), _, _) => {
            format!("stream from {peer} type={content_type} size={size} blake3={hash}")
        }
    }
}

/// One line per message: peer, content type, size, the text where it is text, and the
/// metadata (hex) where there is some.
fn describe(peer: &str, m: &Message) -> String {
    let mut line = format!(
        "message from {peer} type={} size={}",
        m.content_type,
        m.payload.len()
    );
    if m.content_type.starts_with("text/") {
        if let Ok(text) = std::str::from_utf8(&m.payload) {
            line.push_str(&format!(" text={text:?}"));
        }
    }
    if !m.metadata.is_empty() {
        let hex: String = m.metadata.iter().map(|b| format!("{b:02x}")).collect();
        line.push_str(&format!(" metadata={hex}"));
    }
    line
}

async fn send(
    r: Resolved,
    content_type: Option<String>,
    file: Option<PathBuf>,
    probes: Probes,
    peer_key: Option<String>,
) -> ExitCode {
    let (transport, auth) = match r.setup() {
        Ok(x) => x,
        Err(e) => return fail(2, &e),
    };
    let connect = r.address.clone();
    let mut peer = PeerInfo::new(connect.to_string(), vec![connect]);
    if let Some(pin) = peer_key {
        match keys::pin_peer(&pin, auth.trusted_keys()) {
            Ok(key) => peer = peer.with_key(key),
            Err(e) => return fail(2, &e),
        }
    }
    let file = file.filter(|f| f.as_os_str() != "-");
    if let Some(problem) = content_type
        .as_deref()
        .and_then(|ct| clipsync::wire::content_type_problem(ct.as_bytes()))
    {
        return fail(
            2,
            &format!("--content-type {problem}: it must be 1 to 255 printable ASCII bytes"),
        );
    }
    // Open the source before connecting, so a missing file fails fast. Only a regular file
    // has a length to announce; a pipe, a device or a FIFO streams until its end.
    let source = match &file {
        Some(path) if path.is_dir() => {
            return fail(2, &format!("{} is a directory", path.display()));
        }
        Some(path) => match std::fs::File::open(path) {
            Ok(f) => {
                let meta = f.metadata().ok();
                let len = meta.filter(|m| m.is_file()).map(|m| m.len());
                Source::File(f, len)
            }
            Err(e) => return fail(2, &format!("cannot read {}: {e}", path.display())),
        },
        None if probes.messages > 0 => Source::Nothing,
        None => Source::Stdin,
    };
    let threshold = transport.config().stream_threshold as u64;
    let conn = match transport.connect(&peer, auth).await {
        Ok(c) => c,
        Err(e @ clipsync::error::ConnectError::PlaintextNotLocal(_)) => return fail(2, &e),
        Err(e) => return fail(1, &e),
    };
    let started = tokio::time::Instant::now();
    let payload = async {
        // What was delivered, for the closing line: (bytes, how).
        let result = match source {
            Source::Nothing => Ok(None),
            // A file is always saved as a file by `serve --out`, whatever its size: it goes as
            // a stream (a message would only be printed).
            Source::File(f, len) => {
                let ct = content_type
                    .as_deref()
                    .unwrap_or("application/octet-stream");
                stream_with_progress(
                    &conn,
                    ct,
                    len,
                    Feed::<tokio::io::Empty>::Blocks(files::read_ahead(f)),
                )
                .await
                .map(|n| Some((n, "file")))
            }
            Source::Stdin => {
                let ct = content_type
                    .as_deref()
                    .unwrap_or("text/plain; charset=utf-8");
                let mut stdin = tokio::io::stdin();
                let mut head = Vec::new();
                let n = tokio::io::AsyncReadExt::read_to_end(
                    &mut tokio::io::AsyncReadExt::take(&mut stdin, threshold + 1),
                    &mut head,
                )
                .await;
                match n {
                    Err(e) => Err(clipsync::error::SendError::Source(e.to_string())),
                    Ok(n) if (n as u64) <= threshold => conn
                        .send(Message::new(ct, head))
                        .await
                        .map(|()| Some((n as u64, "standard input as a message"))),
                    Ok(_) => {
                        // Longer than a message: stream it, length unknown.
                        let mut chained = tokio::io::AsyncReadExt::chain(&head[..], stdin);
                        stream_with_progress(&conn, ct, None, Feed::Reader(&mut chained))
                            .await
                            .map(|n| Some((n, "standard input as a stream")))
                    }
                }
            }
        };
        if let Ok(Some((n, how))) = &result {
            let t = started.elapsed().as_millis();
            if *how == "file" {
                println!("t={t} delivered file ({n} bytes)");
            } else {
                println!("t={t} delivered {how} ({n} bytes)");
            }
        }
        result.map(|_| ())
    };
    let probing = async {
        let mut failed = 0u32;
        for i in 1..=probes.messages {
            if i > 1 {
                tokio::time::sleep(std::time::Duration::from_millis(probes.interval_ms)).await;
            }
            let issued = started.elapsed();
            let r = conn.send(Message::text(format!("probe {i}"))).await;
            let t = started.elapsed();
            let took = (t - issued).as_millis();
            let t = t.as_millis();
            match r {
                Ok(()) => println!("t={t} delivered probe {i} in {took} ms"),
                Err(e) => {
                    failed += 1;
                    println!("t={t} failed probe {i} in {took} ms: {e}");
                }
            }
        }
        failed
    };
    let (result, failed) = tokio::join!(payload, probing);
    if probes.messages > 0 {
        let h = *conn.health().borrow();
        println!(
            "t={} reconnects={} retransmitted_bytes={}",
            started.elapsed().as_millis(),
            h.reconnects,
            h.retransmitted_bytes
        );
    }
    conn.close().await;
    match result {
        Ok(()) if failed == 0 => ExitCode::SUCCESS,
        Ok(()) => fail(
            1,
            &format!("{failed} of {} messages failed", probes.messages),
        ),
        Err(e) => fail(1, &e),
    }
}

enum Source {
    File(std::fs::File, Option<u64>),
    Stdin,
    /// Only probe messages.
    Nothing,
}

/// Where a stream's bytes come from.
enum Feed<'a, R> {
    /// Any reader, in chunk-sized reads.
    Reader(&'a mut R),
    /// Blocks read ahead by a thread of their own (a file: [`files::read_ahead`]).
    Blocks(tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>),
}

/// Streams `feed`, with a progress bar on stderr when it is a terminal.
async fn stream_with_progress<R: tokio::io::AsyncRead + Unpin>(
    conn: &clipsync::transport::Connection,
    content_type: &str,
    len: Option<u64>,
    feed: Feed<'_, R>,
) -> Result<u64, clipsync::error::SendError> {
    let mut s = conn.open_stream(content_type, len).await?;
    let bar = progress::stream_bar(len);
    let ticker = tokio::spawn(progress::follow(
        bar.clone(),
        s.progress(),
        conn.state(),
        conn.health(),
    ));
    let copied = match feed {
        Feed::Reader(reader) => s.copy_from(reader).await,
        Feed::Blocks(mut blocks) => {
            async {
                let mut n = 0u64;
                while let Some(block) = blocks.recv().await {
                    match block {
                        Ok(b) => {
                            n += b.len() as u64;
                            // Not copied: the connection cuts its chunks from the block.
                            s.write(b).await?;
                        }
                        // The stream is dropped unfinished below: the peer is told `cancelled`.
                        Err(e) => return Err(clipsync::error::SendError::Source(e.to_string())),
                    }
                }
                Ok(n)
            }
            .await
        }
    };
    let result = match copied {
        Ok(n) => s.finish().await.map(|()| n),
        Err(e) => Err(e),
    };
    ticker.abort();
    bar.finish_and_clear();
    result
}

fn frames() -> ExitCode {
    let limits = DecodeLimits {
        max_frame_size: TransportConfig::default().max_frame_size as usize,
    };
    let all = examples::all();
    let mut failed = 0;
    for (name, frame) in &all {
        let ok = match frame.encode() {
            Ok(bytes) => {
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                println!("{:<28} {:>4} bytes  {hex}", name, bytes.len());
                Frame::decode(bytes, limits).as_ref() == Ok(frame)
            }
            Err(e) => {
                println!("{name:<28} cannot encode: {e}");
                false
            }
        };
        if !ok {
            println!("{name:<28} ROUND TRIP FAILED");
            failed += 1;
        }
    }
    println!("{} passed, {} failed", all.len() - failed, failed);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
