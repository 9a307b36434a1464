//! The `clipsync` command-line tool.
//!
//! - `clipsync serve --listen ADDR --identity KEY --authorized-keys FILE`: accepts
//!   authenticated connections and prints one line per received message.
//! - `clipsync send --connect ADDR --identity KEY --authorized-keys FILE [FILE|-]`: sends one
//!   message and exits 0 once the peer has acknowledged it.
//! - `clipsync frames`: the wire codec's round trip over one example of every frame.
//! - `clipsync config [--file F]`: prints the effective configuration as TOML.
//!
//! `ADDR` is `HOST:PORT` or `unix:PATH`. Errors are one line on stderr with a non-zero exit
//! status: 1 for a failed connection or send, 2 for bad usage, keys or configuration.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use clipsync::config::TransportConfig;
use clipsync::secure::SshAuthenticator;
use clipsync::transport::{AcceptError, Address, Incoming, Message, PeerInfo, Transport};
use clipsync::wire::{DecodeLimits, Frame, examples};

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
    /// OpenSSH private key file (ed25519, ecdsa or rsa; no passphrase).
    #[arg(long)]
    identity: PathBuf,
    /// Trusted peer keys, `authorized_keys` format (ClipSync's own file).
    #[arg(long)]
    authorized_keys: PathBuf,
    /// TOML configuration file (see `clipsync config`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run WebSocket without TLS (both ends must say so; for Unix sockets and tests).
    #[arg(long)]
    plaintext: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Accept connections and print each received message, one line each.
    Serve {
        /// Where to listen: HOST:PORT or unix:PATH.
        #[arg(long)]
        listen: Address,
        #[command(flatten)]
        common: Common,
    },
    /// Send one message (a file, or standard input) and wait until the peer has it.
    Send {
        /// Where the peer listens: HOST:PORT or unix:PATH.
        #[arg(long)]
        connect: Address,
        #[command(flatten)]
        common: Common,
        /// Content type (default: text/plain for standard input, octet-stream for files).
        #[arg(long)]
        content_type: Option<String>,
        /// The file to send; `-` or nothing for standard input.
        file: Option<PathBuf>,
    },
    /// Encode, print and decode one example of every wire frame (the codec round trip).
    Frames,
    /// Print the effective configuration as TOML.
    Config {
        /// A TOML file whose keys override the defaults.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Command::Frames => frames(),
        Command::Config { file } => match load_config(file.as_ref()) {
            Ok(cfg) => {
                print!("{}", cfg.to_toml());
                ExitCode::SUCCESS
            }
            Err(e) => fail(2, &e),
        },
        Command::Serve { listen, common } => run(serve(listen, common)),
        Command::Send {
            connect,
            common,
            content_type,
            file,
        } => run(send(connect, common, content_type, file)),
    }
}

fn run(f: impl Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => fail(1, &format!("cannot start the runtime: {e}")),
    }
}

fn fail(code: u8, msg: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("clipsync: {msg}");
    ExitCode::from(code)
}

fn load_config(file: Option<&PathBuf>) -> Result<TransportConfig, String> {
    match file {
        Some(path) => TransportConfig::from_file(path).map_err(|e| e.to_string()),
        None => Ok(TransportConfig::default()),
    }
}

fn setup(common: &Common) -> Result<(Transport, Arc<SshAuthenticator>), String> {
    let mut cfg = load_config(common.config.as_ref())?;
    if common.plaintext {
        cfg.allow_plaintext = true;
    }
    let auth = SshAuthenticator::from_files(&common.identity, &common.authorized_keys)
        .map_err(|e| e.to_string())?;
    let transport = Transport::new(cfg).map_err(|e| e.to_string())?;
    Ok((transport, Arc::new(auth)))
}

async fn serve(listen: Address, common: Common) -> ExitCode {
    let (transport, auth) = match setup(&common) {
        Ok(x) => x,
        Err(e) => return fail(2, &e),
    };
    let mut listener = match transport.listen(&listen, auth).await {
        Ok(l) => l,
        Err(e) => return fail(1, &e),
    };
    println!("listening on {}", listener.local_addr());
    loop {
        match listener.accept().await {
            Ok(mut conn) => {
                tokio::spawn(async move {
                    let peer = conn.peer_fingerprint().to_string();
                    println!("connected {peer}");
                    loop {
                        match conn.receive().await {
                            Ok(Incoming::Message(m)) => println!("{}", describe(&peer, &m)),
                            Ok(Incoming::Stream(s)) => {
                                // Streams are written under --out in a later step; for now
                                // read them whole up to a bound and describe them.
                                match s.read_to_end(64 << 20).await {
                                    Ok(_) => println!("stream from {peer}"),
                                    Err(e) => println!("stream from {peer} failed: {e}"),
                                }
                            }
                            Ok(_) => {}
                            Err(closed) => {
                                println!("disconnected {peer}: {}", closed.0);
                                break;
                            }
                        }
                    }
                });
            }
            Err(AcceptError::Closed) => return fail(1, &"listener closed"),
            Err(e) => eprintln!("clipsync: {e}"),
        }
    }
}

/// One line per message: peer, content type, size, and the text where it is text.
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
    line
}

async fn send(
    connect: Address,
    common: Common,
    content_type: Option<String>,
    file: Option<PathBuf>,
) -> ExitCode {
    let (transport, auth) = match setup(&common) {
        Ok(x) => x,
        Err(e) => return fail(2, &e),
    };
    let (payload, default_type) = match file.as_ref().filter(|f| f.as_os_str() != "-") {
        Some(path) => match std::fs::read(path) {
            Ok(b) => (b, "application/octet-stream"),
            Err(e) => return fail(2, &format!("cannot read {}: {e}", path.display())),
        },
        None => {
            let mut b = Vec::new();
            if let Err(e) = std::io::stdin().read_to_end(&mut b) {
                return fail(2, &format!("cannot read standard input: {e}"));
            }
            (b, "text/plain; charset=utf-8")
        }
    };
    let peer = PeerInfo::new(connect.to_string(), vec![connect]);
    let conn = match transport.connect(&peer, auth).await {
        Ok(c) => c,
        Err(e) => return fail(1, &e),
    };
    let message = Message::new(content_type.as_deref().unwrap_or(default_type), payload);
    let result = conn.send(message).await;
    conn.close().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, &e),
    }
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
