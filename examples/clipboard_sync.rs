//! A reference clipboard sync on the peer-level API ([`clipsync::transport::Peers`]).
//!
//! Each process is one machine with one clipboard (a value in memory, fed from stdin: every
//! line typed is a copy). A change is fanned out to every peer; a peer keeps the newest clip by
//! `(clock, origin)` (a Lamport clock, so last writer wins the same way everywhere); a clip
//! already held (same BLAKE3) is not taken again — a large one goes as an offer that announces
//! its hash, and a peer that has it declines before any byte flows — and a clip received is
//! never sent on, so there are no echo loops. When a peer links for the first time, or comes back having lost
//! its session (it restarted), each side sends it the current clip: a restarted peer catches
//! up at once.
//!
//! Three on one machine (each in its own terminal; keys come from `--seed`, a stand-in for
//! the SSH keys a real engine loads):
//!
//! ```sh
//! cargo run --example clipboard_sync -- a 1 unix:/tmp/cs-a.sock b=2=unix:/tmp/cs-b.sock c=3=unix:/tmp/cs-c.sock
//! cargo run --example clipboard_sync -- b 2 unix:/tmp/cs-b.sock a=1=unix:/tmp/cs-a.sock c=3=unix:/tmp/cs-c.sock
//! cargo run --example clipboard_sync -- c 3 unix:/tmp/cs-c.sock a=1=unix:/tmp/cs-a.sock b=2=unix:/tmp/cs-b.sock
//! ```
//!
//! Arguments: `NAME SEED LISTEN [PEER=SEED=ADDRESS]...`. Output, one line each:
//! `clipboard CLOCK ORIGIN TEXT` when the clipboard changes, `linked PEER` / `lost PEER`
//! (session lost: it restarted) / `down PEER` as links come and go; `declined PEER` when a
//! peer offered a clip this one already holds (no byte of it was sent).

use std::sync::Arc;

use bytes::Bytes;
use clipsync::config::TransportConfig;
use clipsync::error::SendError;
use clipsync::secure::SshAuthenticator;
use clipsync::transport::{
    Address, Incoming, Message, Peer, PeerEvent, PeerInfo, StreamSpec, Transport,
};
use tokio::io::AsyncBufReadExt;

/// How clips travel: this content type, the content as payload, `CLOCK ORIGIN` as metadata.
const CLIP: &str = "application/x-clipsync-clip";

/// Clips larger than this go as offers (a stream announcing its BLAKE3) that a peer holding
/// the same content declines unsent.
const OFFER_ABOVE: usize = 64 << 10;

/// The largest clip taken (a stream above it is refused, the sender told so).
const MAX_CLIP: usize = 64 << 20;

/// One clipboard value and where it comes from.
#[derive(Clone, Debug, Default)]
struct Clip {
    clock: u64,
    origin: String,
    hash: [u8; 32],
    content: Bytes,
}

impl Clip {
    /// Last writer wins: the larger `(clock, origin)`.
    fn newer_than(&self, other: &Clip) -> bool {
        (self.clock, &self.origin) > (other.clock, &other.origin)
    }

    fn metadata(&self) -> Bytes {
        Bytes::from(format!("{} {}", self.clock, self.origin))
    }

    /// A clip from its metadata and hash; the content comes with it or is already held.
    fn decode(metadata: &[u8], hash: [u8; 32], content: Bytes) -> Option<Clip> {
        let (clock, origin) = std::str::from_utf8(metadata).ok()?.split_once(' ')?;
        Some(Clip {
            clock: clock.parse().ok()?,
            origin: origin.to_string(),
            hash,
            content,
        })
    }
}

/// The machine's clipboard and its Lamport clock.
struct Board {
    name: String,
    clip: Clip,
}

impl Board {
    /// A local copy: a new clip, newer than anything seen.
    fn copy(&mut self, content: Bytes) -> Option<Clip> {
        let hash = *blake3::hash(&content).as_bytes();
        if hash == self.clip.hash && !self.clip.content.is_empty() {
            return None;
        }
        self.clip = Clip {
            clock: self.clip.clock + 1,
            origin: self.name.clone(),
            hash,
            content,
        };
        self.show();
        Some(self.clip.clone())
    }

    /// A clip from a peer: taken if newer and not already held. Never sent on.
    fn take(&mut self, clip: Clip) {
        if clip.hash == self.clip.hash || !clip.newer_than(&self.clip) {
            // Keep the clock ahead of everything seen, so the next local copy wins.
            self.clip.clock = self.clip.clock.max(clip.clock);
            return;
        }
        self.clip = clip;
        self.show();
    }

    fn show(&self) {
        println!(
            "clipboard {} {} {}",
            self.clip.clock,
            self.clip.origin,
            String::from_utf8_lossy(&self.clip.content)
        );
    }
}

fn key_of(seed: u8) -> clipsync::ssh_key::PrivateKey {
    SshAuthenticator::ed25519_from_seed([seed; 32])
}

/// Sends the current clip to one peer, in the background (the event loop goes on). A send
/// whose delivery is unknown (its link broke or was replaced first) is sent again: a clip is
/// idempotent here (a peer that has it declines or ignores it), so at-least-once is right.
fn push(peer: &Peer, clip: &Clip) {
    if clip.content.is_empty() {
        return;
    }
    let (peer, clip) = (peer.clone(), clip.clone());
    tokio::spawn(async move {
        for _attempt in 0..3 {
            match send_clip(&peer, &clip).await {
                Err(SendError::Unknown(_)) => continue,
                Err(e) if !e.already_had() => eprintln!("to {}: {e}", peer.id()),
                _ => {}
            }
            return;
        }
    });
}

async fn send_clip(peer: &Peer, clip: &Clip) -> Result<(), SendError> {
    if clip.content.len() <= OFFER_ABOVE {
        let m = Message::new(CLIP, clip.content.clone()).with_metadata(clip.metadata());
        return peer.send(m).await;
    }
    let spec = StreamSpec::new(CLIP)
        .len(clip.content.len() as u64)
        .hash(clip.hash)
        .metadata(clip.metadata());
    let s = peer.open_stream_with(spec).await?;
    s.send_all(&mut &clip.content[..]).await.map(|_| ())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [name, seed, listen, peers @ ..] = args.as_slice() else {
        return Err("usage: clipboard_sync NAME SEED LISTEN [PEER=SEED=ADDRESS]...".into());
    };
    let mut infos = Vec::new();
    let mut trusted = Vec::new();
    for p in peers {
        let mut parts = p.splitn(3, '=');
        let (Some(id), Some(seed), Some(addr)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("bad peer {p}: expected PEER=SEED=ADDRESS").into());
        };
        let key = key_of(seed.parse()?).public_key().clone();
        trusted.push(key.clone());
        infos.push(PeerInfo::new(id, vec![addr.parse::<Address>()?]).with_key(key));
    }
    let listen: Address = listen.parse()?;
    if let Address::Unix(path) = &listen {
        // A socket file left by a previous run of this peer.
        let _ = std::fs::remove_file(path);
    }
    let auth = Arc::new(SshAuthenticator::new(key_of(seed.parse()?), trusted)?);
    let transport = Transport::new(TransportConfig::default())?;
    let (set, mut events) = transport.peers(auth);
    set.listen(&listen).await?;
    for info in infos {
        set.add(info)?;
    }
    let mut board = Board {
        name: name.clone(),
        clip: Clip::default(),
    };
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            biased;
            line = lines.next_line(), if stdin_open => match line? {
                Some(line) => {
                    if let Some(clip) = board.copy(Bytes::from(line)) {
                        for peer in set.list() {
                            push(&peer, &clip);
                        }
                    }
                }
                None => stdin_open = false,
            },
            event = events.next() => match event {
                Some(PeerEvent::Received { incoming, peer }) => {
                    let (metadata, content) = match incoming {
                        Incoming::Message(m) if m.content_type == CLIP => (m.metadata, m.payload),
                        Incoming::Stream(s) if s.content_type() == CLIP => {
                            if s.hash() == Some(board.clip.hash) {
                                // Held already: decline it unsent; the clock still counts.
                                let clip = Clip::decode(s.metadata(), board.clip.hash, Bytes::new());
                                s.decline();
                                println!("declined {}", peer.id());
                                board.take(clip.unwrap_or_default());
                                continue;
                            }
                            let meta = s.metadata().clone();
                            match s.read_to_end(MAX_CLIP).await {
                                Ok(b) => (meta, b),
                                Err(e) => {
                                    eprintln!("from {}: {e}", peer.id());
                                    continue;
                                }
                            }
                        }
                        _ => continue,
                    };
                    let hash = *blake3::hash(&content).as_bytes();
                    if let Some(clip) = Clip::decode(&metadata, hash, content) {
                        board.take(clip);
                    }
                }
                Some(PeerEvent::Connected(peer)) => {
                    println!("linked {}", peer.id());
                    push(&peer, &board.clip);
                }
                Some(PeerEvent::SessionLost(peer)) => {
                    println!("lost {}", peer.id());
                    push(&peer, &board.clip);
                }
                Some(PeerEvent::Disconnected { peer, .. }) => println!("down {}", peer.id()),
                Some(_) => {}
                None => break,
            },
        }
    }
    Ok(())
}
