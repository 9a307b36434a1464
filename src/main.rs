//! The `clipsync` command-line tool.
//!
//! - `clipsync frames`: encodes one example of every frame of PROTOCOL.md, prints its bytes,
//!   decodes them back and checks the round trip (exit status 1 if any differs).
//! - `clipsync config [--file F]`: prints the effective configuration as TOML, every key with
//!   its value (the defaults, or F's values over them), after validating it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use clipsync::config::TransportConfig;
use clipsync::wire::{DecodeLimits, Frame, examples};

#[derive(Parser)]
#[command(name = "clipsync", version, about = "ClipSync transport")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    match Cli::parse().command {
        Command::Frames => frames(),
        Command::Config { file } => {
            let cfg = match file {
                Some(path) => TransportConfig::from_file(&path),
                None => Ok(TransportConfig::default()),
            };
            match cfg {
                Ok(cfg) => {
                    print!("{}", cfg.to_toml());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("clipsync: {e}");
                    ExitCode::from(2)
                }
            }
        }
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
