//! A mesh of N symmetric peers, each running a small clipboard engine on the peer-level API
//! ([`clipsync::transport::Peers`]): every host listens, dials every other, and keeps one
//! clipboard in step with the rest. What they do goes into [`MeshLog`]; the mesh invariants
//! (`crate::invariants`) read it.
//!
//! ## The engine
//!
//! A clip is `(ts, origin, id)`: the simulated millisecond it was copied, the peer
//! incarnation that copied it (`name#incarnation`), its number there. Clips are ordered by
//! that triple, and a peer's clipboard only moves forward (last writer wins). Three messages
//! travel, each with a header line as application metadata (kind, clip, send id) and, for
//! clips, the clip's content as payload: a line naming the clip, then filler up to its size, so
//! the same clip has the same BLAKE3 wherever it is sent from. A clip above `stream_threshold`
//! goes as an *offer* (a stream announcing that BLAKE3): a peer that holds the clip already
//! declines it before any byte flows (`already have`), and that counts as the peer having it.
//!
//! - `C`: a clip. Sent to every peer when copied locally, and in answer to `W`.
//! - `H`: "I have this clip" (or none). Sent to a peer whenever its link comes up
//!   (`Connected`, `Resumed`, `SessionLost`).
//! - `W`: "send me your clip". Sent to one peer whose `H` (or `C`) showed a newer clip than
//!   ours, one want at a time, so a peer that comes back is caught up once, not by everyone.
//!   A peer that has nothing newer answers `H` instead.
//!
//! A peer never forwards a clip it received except in answer to `W`, and never sends a clip
//! back to the peer incarnation it came from: no echo.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clipsync::secure::SshAuthenticator;
use clipsync::transport::{Incoming, Message, PeerEvent, PeerInfo, Peers, StreamSpec};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use crate::crypto::derive;
use crate::host::{PORT, Settled, SharedLog, build_transport, host_key, with_log};
use crate::scenario::Scenario;

/// The content type of the engine's messages.
const CONTENT_TYPE: &str = "application/x-clipsync-sim-clip";
/// The largest clip a peer reads.
const MAX_CLIP: usize = 64 << 20;
/// How often each peer writes its links into the log.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(50);
/// How often the observer looks.
const OBSERVE_EVERY: Duration = Duration::from_millis(100);
/// How long everything must stay converged before the observer ends the run (late
/// duplicates and echoes would show in it).
const QUIET: Duration = Duration::from_secs(3);

/// A clip: when, by which peer incarnation, its number there.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Clip {
    /// Simulated milliseconds when it was copied.
    pub ts: u64,
    /// `name#incarnation` of the peer that copied it.
    pub origin: String,
    /// Its number at the origin.
    pub id: u64,
    /// Its size in bytes (any peer forwards it with the filler it was copied with).
    pub size: usize,
}

impl std::fmt::Display for Clip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}", self.origin, self.id, self.ts)
    }
}

/// One engine message sent through the transport.
#[derive(Clone, Debug)]
pub struct MeshSend {
    /// `name#incarnation` of the sender.
    pub from: String,
    /// The receiving peer's name.
    pub to: String,
    /// `C`, `H` or `W`.
    pub kind: char,
    /// The clip it carries or names.
    pub clip: Option<Clip>,
    /// When it was issued.
    pub issued: Duration,
    /// How it settled.
    pub settled: Option<(Duration, Settled)>,
}

/// What a peer's links looked like at its last snapshot.
#[derive(Clone, Debug, Default)]
pub struct LinkSnap {
    /// Its incarnation.
    pub incarnation: u32,
    /// Per other peer: (linked, connections up).
    pub links: BTreeMap<String, (bool, usize)>,
}

/// Everything the peers of a mesh did.
#[derive(Clone, Debug, Default)]
pub struct MeshLog {
    /// Offers declined as held already: (decliner `name#incarnation`, send id, the clip it
    /// held then).
    pub declined: Vec<(String, String, Option<Clip>)>,
    /// The peers' names.
    pub names: Vec<String>,
    /// Every send by its unique id (`name#incarnation:n`).
    pub sends: BTreeMap<String, MeshSend>,
    /// Every receipt: (receiver `name#incarnation`, send id, when).
    pub receipts: Vec<(String, String, Duration)>,
    /// Clipboard changes: (peer `name#incarnation`, when, clip), in time order.
    pub adopted: Vec<(String, Duration, Clip)>,
    /// Clips copied: (when, clip).
    pub created: Vec<(Duration, Clip)>,
    /// Each peer's current incarnation.
    pub incarnation: BTreeMap<String, u32>,
    /// Peers crashed and not bounced (kept by the runner).
    pub crashed: BTreeSet<String>,
    /// Every crash, and every bounce of a running host (a restart): (host, when).
    pub crashes: Vec<(String, Duration)>,
    /// Peer incarnations that finished their workload.
    pub done: BTreeSet<String>,
    /// Each peer's links at its latest snapshot.
    pub links: BTreeMap<String, LinkSnap>,
    /// Clips received that were not newer than the clipboard (caught up twice, or a push
    /// that crossed a catch-up).
    pub redundant: u64,
    /// When the observer saw every live peer converged, settled and linked, and it stayed so.
    pub converged_at: Option<Duration>,
}

impl MeshLog {
    /// The peers alive at the end: not crashed.
    pub fn live(&self) -> Vec<String> {
        self.names
            .iter()
            .filter(|n| !self.crashed.contains(*n))
            .cloned()
            .collect()
    }

    /// `name#incarnation` of a peer's current incarnation.
    pub fn tag(&self, name: &str) -> String {
        format!(
            "{name}#{}",
            self.incarnation.get(name).copied().unwrap_or(0)
        )
    }

    /// The clip a peer incarnation holds: its last adoption.
    pub fn clipboard(&self, tag: &str) -> Option<&Clip> {
        self.adopted
            .iter()
            .rev()
            .find(|(t, _, _)| t == tag)
            .map(|(_, _, c)| c)
    }

    /// Why the mesh is not (yet) converged, settled and linked; `None` when it is.
    pub fn unsettled(&self) -> Option<String> {
        let live = self.live();
        let tags: Vec<String> = live.iter().map(|n| self.tag(n)).collect();
        if let Some(t) = tags.iter().find(|t| !self.done.contains(*t)) {
            return Some(format!("{t} has not finished its workload"));
        }
        let clips: BTreeSet<Option<&Clip>> = tags.iter().map(|t| self.clipboard(t)).collect();
        if clips.len() != 1 || clips.contains(&None) {
            let held: Vec<String> = tags
                .iter()
                .map(|t| {
                    let c = self.clipboard(t).map_or("nothing".into(), Clip::to_string);
                    format!("{t} holds {c}")
                })
                .collect();
            return Some(format!("not converged: {}", held.join(", ")));
        }
        for (id, s) in &self.sends {
            if s.settled.is_none() && tags.contains(&s.from) {
                return Some(format!("{id} ({} to {}) not settled", s.kind, s.to));
            }
        }
        for n in &live {
            let snap = self.links.get(n).cloned().unwrap_or_default();
            for other in live.iter().filter(|o| *o != n) {
                match snap.links.get(other) {
                    Some((true, 1)) => {}
                    got => {
                        return Some(format!(
                            "{n}'s link to {other}: {got:?} (linked, connections up)"
                        ));
                    }
                }
            }
        }
        None
    }
}

/// What one peer incarnation knows.
#[derive(Debug, Default)]
struct Engine {
    clip: Option<Clip>,
    /// The newest clip each peer is known to hold (this session of it).
    known: BTreeMap<String, Clip>,
    /// The outstanding want: what, from whom.
    want: Option<(Clip, String)>,
    next_clip: u64,
}

/// One peer incarnation.
struct Node {
    name: String,
    tag: String,
    log: SharedLog,
    peers: Peers,
    /// The other peers: name → (wire key, discovery record).
    others: BTreeMap<String, (Vec<u8>, PeerInfo)>,
    engine: Mutex<Engine>,
    sends: AtomicU64,
    /// Clips with more content than this go as offers (the transport's `stream_threshold`).
    threshold: usize,
    /// The last clip whose content was made, with that content and its BLAKE3: an engine
    /// hashes what it captures once, not per peer it sends it to (a copy goes to every peer).
    made: Mutex<Option<(Clip, Bytes, [u8; 32])>>,
}

/// A clip's content: a line naming it, then filler up to its size (the same bytes wherever it
/// is sent from, so the same BLAKE3).
fn content(c: &Clip) -> Bytes {
    let mut b = format!("{} {} {}\n", c.ts, c.origin, c.id).into_bytes();
    b.resize(b.len().max(c.size), b'.');
    Bytes::from(b)
}

/// Whether `payload` is [`content`]`(c)`, compared without making it.
fn is_content(payload: &[u8], c: &Clip) -> bool {
    let line = format!("{} {} {}\n", c.ts, c.origin, c.id);
    let len = line.len().max(c.size);
    let filler = [b'.'; 4096];
    payload.len() == len
        && payload.starts_with(line.as_bytes())
        && payload[line.len()..]
            .chunks(filler.len())
            .all(|p| p == &filler[..p.len()])
}

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

fn header(kind: char, clip: Option<&Clip>, uid: &str) -> String {
    match clip {
        Some(c) => format!("{kind} {} {} {} {} {uid}\n", c.ts, c.origin, c.id, c.size),
        None => format!("{kind} - - - - {uid}\n"),
    }
}

/// Reads a payload's header: kind, clip, send id.
fn parse(payload: &[u8]) -> Option<(char, Option<Clip>, String)> {
    let end = payload.iter().position(|b| *b == b'\n')?;
    let line = std::str::from_utf8(&payload[..end]).ok()?;
    let f: Vec<&str> = line.split(' ').collect();
    let [kind, ts, origin, id, size, uid] = f.as_slice() else {
        return None;
    };
    let kind = kind.chars().next()?;
    let clip = if *ts == "-" {
        None
    } else {
        Some(Clip {
            ts: ts.parse().ok()?,
            origin: (*origin).to_string(),
            id: id.parse().ok()?,
            size: size.parse().ok()?,
        })
    };
    Some((kind, clip, (*uid).to_string()))
}

impl Node {
    /// `c`'s content and BLAKE3, made once per clip.
    fn made(&self, c: &Clip) -> (Bytes, [u8; 32]) {
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        match &*made {
            Some((clip, bytes, hash)) if clip == c => (bytes.clone(), *hash),
            _ => {
                let bytes = content(c);
                let hash = *blake3::hash(&bytes).as_bytes();
                *made = Some((c.clone(), bytes.clone(), hash));
                (bytes, hash)
            }
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Engine) -> T) -> T {
        f(&mut self.engine.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Sends `kind` (with `clip`, padded to `size` bytes) to `to`, in a task; logs it and its
    /// outcome; `then` runs with the outcome.
    fn send(
        self: &Arc<Self>,
        to: &str,
        kind: char,
        clip: Option<Clip>,
        then: impl FnOnce(&Arc<Node>, bool) + Send + 'static,
    ) {
        let Some((key, _)) = self.others.get(to) else {
            return;
        };
        let Some(peer) = self.peers.get(key) else {
            tracing::debug!(target: "clipsync_sim", to, kind = %kind, "not a member now; not sent");
            return;
        };
        let n = self.sends.fetch_add(1, Ordering::Relaxed) + 1;
        let uid = format!("{}:{n}", self.tag);
        let meta = Bytes::from(header(kind, clip.as_ref(), &uid));
        let (payload, hash) = match (&clip, kind) {
            (Some(c), 'C') => {
                let (bytes, hash) = self.made(c);
                (bytes, Some(hash))
            }
            _ => (Bytes::from_static(b"-"), None),
        };
        let offer = payload.len() > self.threshold;
        let hash = hash.filter(|_| offer);
        let shown = clip.as_ref().map_or("-".to_string(), Clip::to_string);
        tracing::debug!(target: "clipsync_sim", to, kind = %kind, clip = %shown, size = payload.len(), offer, %uid, "mesh send");
        with_log(&self.log, |l| {
            l.mesh.sends.insert(
                uid.clone(),
                MeshSend {
                    from: self.tag.clone(),
                    to: to.to_string(),
                    kind,
                    clip: clip.clone(),
                    issued: now(),
                    settled: None,
                },
            )
        });
        let node = self.clone();
        tokio::spawn(async move {
            let result = if let Some(hash) = hash {
                let spec = StreamSpec::new(CONTENT_TYPE)
                    .len(payload.len() as u64)
                    .hash(hash)
                    .metadata(meta);
                match peer.open_stream_with(spec).await {
                    Ok(s) => s.send_all(&mut &payload[..]).await.map(|_| ()),
                    Err(e) => Err(e),
                }
            } else {
                let m = Message::new(CONTENT_TYPE, payload).with_metadata(meta);
                peer.send(m).await
            };
            let settled = match &result {
                Ok(()) => Settled::Delivered,
                Err(e) => Settled::Failed(e.to_string()),
            };
            // Declined as held already: the peer has the clip, though this send never arrived.
            let ok = result.as_ref().is_ok() || result.as_ref().is_err_and(|e| e.already_had());
            tracing::debug!(target: "clipsync_sim", %uid, ok = result.is_ok(), declined = ok && result.is_err(), "mesh send settled");
            with_log(&node.log, |l| {
                if let Some(s) = l.mesh.sends.get_mut(&uid) {
                    s.settled = Some((now(), settled));
                }
            });
            then(&node, ok);
        });
    }

    /// Sends our clip to `to`, unless it is known to have it (or something newer), or it is
    /// the clip's origin.
    fn push(self: &Arc<Self>, to: &str) {
        let Some(clip) = self.with(|e| e.clip.clone()) else {
            return;
        };
        let to = to.to_string();
        let known = self.with(|e| e.known.get(&to).cloned());
        if known.is_some_and(|k| k >= clip) {
            return;
        }
        let sent = clip.clone();
        self.send(&to.clone(), 'C', Some(clip), move |node, ok| {
            if ok {
                node.with(|e| raise(&mut e.known, &to, sent));
            }
        });
    }

    /// The application copied: a new clip, sent to every peer.
    fn copy(self: &Arc<Self>, size: usize) {
        let clip = self.with(|e| {
            e.next_clip += 1;
            let clip = Clip {
                ts: now().as_millis() as u64,
                origin: self.tag.clone(),
                id: e.next_clip,
                size,
            };
            e.clip = Some(clip.clone());
            clip
        });
        tracing::debug!(target: "clipsync_sim", clip = %clip, size, "copy");
        with_log(&self.log, |l| {
            l.mesh.created.push((now(), clip.clone()));
            l.mesh.adopted.push((self.tag.clone(), now(), clip.clone()));
        });
        for name in self.others.keys() {
            self.push(name);
        }
    }

    /// Tells `to` what we hold.
    fn have(self: &Arc<Self>, to: &str) {
        let clip = self.with(|e| e.clip.clone());
        self.send(to, 'H', clip, |_, _| {});
    }

    /// Asks for the newest clip a peer is known to hold, if it is newer than ours and no want
    /// is outstanding.
    fn maybe_want(self: &Arc<Self>) {
        let target = self.with(|e| {
            // A want our clipboard has overtaken (we copied, or a push arrived) is over.
            if e.want
                .as_ref()
                .is_some_and(|(w, _)| e.clip.as_ref().is_some_and(|c| c >= w))
            {
                e.want = None;
            }
            if e.want.is_some() {
                return None;
            }
            let best = e
                .known
                .iter()
                .filter(|(_, k)| e.clip.as_ref().is_none_or(|c| *k > c))
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|(n, k)| (k.clone(), n.clone()))?;
            e.want = Some(best.clone());
            Some(best)
        });
        if let Some((clip, from)) = target {
            let wanted = clip.clone();
            self.send(&from.clone(), 'W', Some(clip), move |node, ok| {
                if !ok {
                    node.drop_want(&from, &wanted);
                }
            });
        }
    }

    /// The want for `clip` from `from` is over (answered, failed, or the link went).
    fn drop_want(self: &Arc<Self>, from: &str, clip: &Clip) {
        let dropped = self.with(|e| {
            let ours = e.want.as_ref().is_some_and(|(c, f)| c == clip && f == from);
            if ours {
                e.want = None;
            }
            ours
        });
        if dropped {
            self.maybe_want();
        }
    }

    /// The link to `from` went away or is new: a want outstanding there is over.
    fn forget_want_from(self: &Arc<Self>, from: &str) {
        let want = self.with(|e| e.want.clone());
        if let Some((clip, f)) = want {
            if f == from {
                self.drop_want(from, &clip);
            }
        }
    }

    fn received(self: &Arc<Self>, from: &str, meta: &[u8], payload: &[u8]) {
        let Some((kind, clip, uid)) = parse(meta) else {
            tracing::warn!(target: "clipsync_sim", from, "unreadable payload");
            return;
        };
        tracing::debug!(target: "clipsync_sim", from, kind = %kind, %uid, "mesh receive");
        with_log(&self.log, |l| {
            l.mesh.receipts.push((self.tag.clone(), uid.clone(), now()))
        });
        match (kind, clip) {
            ('C', Some(clip)) if !is_content(payload, &clip) => {
                tracing::warn!(target: "clipsync_sim", from, %uid, "clip content differs from its clip");
            }
            ('C', Some(clip)) => {
                let newer = self.with(|e| {
                    raise(&mut e.known, from, clip.clone());
                    let newer = e.clip.as_ref().is_none_or(|c| clip > *c);
                    if newer {
                        e.clip = Some(clip.clone());
                    }
                    newer
                });
                with_log(&self.log, |l| {
                    if newer {
                        l.mesh.adopted.push((self.tag.clone(), now(), clip.clone()));
                    } else {
                        l.mesh.redundant += 1;
                    }
                });
                let want = self.with(|e| e.want.clone());
                if let Some((w, f)) = want {
                    if w <= clip || f == from {
                        self.drop_want(&f, &w);
                    }
                }
                self.maybe_want();
            }
            ('H', clip) => {
                let want = self.with(|e| e.want.clone());
                if let Some(c) = &clip {
                    self.with(|e| raise(&mut e.known, from, c.clone()));
                }
                // The peer we asked has nothing newer after all (it restarted): ask another.
                if let Some((w, f)) = want {
                    if f == from && clip.as_ref().is_none_or(|c| *c < w) {
                        self.with(|e| {
                            match &clip {
                                Some(c) => e.known.insert(from.to_string(), c.clone()),
                                None => e.known.remove(from),
                            };
                        });
                        self.drop_want(&f, &w);
                    }
                }
                self.maybe_want();
            }
            ('W', Some(wanted)) => {
                let ours = self.with(|e| e.clip.clone());
                // Our clip, if it is what was asked for or newer and the asker does not have
                // it already (the want may have crossed our clip, or be older than a clip the
                // asker copied and sent us itself: sending it back would echo); otherwise what
                // we hold, so the asker can ask elsewhere or drop its want. The asker's own
                // clip counts as had even when its copy of it has not reached us yet (we got
                // it through a third peer): mesh5_swarm seed 41 at a 10 ms step echoed so.
                let asker = uid.split(':').next().unwrap_or_default();
                let has_it = self.with(|e| {
                    ours.as_ref().is_some_and(|c| {
                        c.origin == asker || e.known.get(from).is_some_and(|k| k >= c)
                    })
                });
                match ours {
                    Some(c) if c >= wanted && !has_it => self.push(from),
                    _ => self.have(from),
                }
            }
            other => {
                tracing::warn!(target: "clipsync_sim", from, ?other, "unexpected payload")
            }
        }
    }

    /// Mesh churn: removes `victim` from the set, adds it back after `pause`.
    async fn churn(&self, victim: &str, pause: Duration) {
        let Some((key, info)) = self.others.get(victim) else {
            return;
        };
        tracing::debug!(target: "clipsync_sim", victim, "churn: remove");
        self.peers.remove(key);
        tokio::time::sleep(pause).await;
        tracing::debug!(target: "clipsync_sim", victim, "churn: add back");
        if let Err(e) = self.peers.add(info.clone()) {
            tracing::warn!(target: "clipsync_sim", victim, error = %e, "churn: add failed");
        }
    }

    fn event(self: &Arc<Self>, event: PeerEvent) {
        match event {
            PeerEvent::Received { peer, incoming } => {
                let from = peer.id().to_string();
                match incoming {
                    Incoming::Message(m) => self.received(&from, &m.metadata, &m.payload),
                    Incoming::Stream(s) => {
                        let meta = s.metadata().clone();
                        // An offer of the clip we hold: decline it, nothing flows.
                        let held = self.with(|e| e.clip.clone());
                        let offered = parse(&meta).and_then(|(_, c, uid)| Some((c?, uid)));
                        if let (Some((clip, uid)), Some(h)) = (&offered, s.hash()) {
                            if held.as_ref() == Some(clip) && h == self.made(clip).1 {
                                tracing::debug!(target: "clipsync_sim", from, %uid, clip = %clip, "offer declined: held");
                                with_log(&self.log, |l| {
                                    l.mesh.declined.push((
                                        self.tag.clone(),
                                        uid.clone(),
                                        held.clone(),
                                    ))
                                });
                                // The sender has this clip too; it is known to hold it.
                                self.with(|e| raise(&mut e.known, &from, clip.clone()));
                                s.decline();
                                return;
                            }
                        }
                        let node = self.clone();
                        tokio::spawn(async move {
                            match s.read_to_end(MAX_CLIP).await {
                                Ok(p) => node.received(&from, &meta, &p),
                                Err(e) => {
                                    tracing::debug!(target: "clipsync_sim", from, error = %e, "clip stream failed")
                                }
                            }
                        });
                    }
                    _ => {}
                }
            }
            PeerEvent::Connected(p) | PeerEvent::SessionLost(p) => {
                let name = p.id().to_string();
                tracing::debug!(target: "clipsync_sim", peer = %name, "new session");
                // A new session: the peer may have restarted and hold nothing.
                self.with(|e| e.known.remove(&name));
                self.forget_want_from(&name);
                self.have(&name);
            }
            PeerEvent::Resumed(p) => self.have(p.id()),
            PeerEvent::Disconnected { peer, .. } | PeerEvent::Removed(peer) => {
                self.forget_want_from(peer.id());
            }
            _ => {}
        }
    }
}

fn raise(known: &mut BTreeMap<String, Clip>, name: &str, clip: Clip) {
    let entry = known
        .entry(name.to_string())
        .or_insert_with(|| clip.clone());
    if clip > *entry {
        *entry = clip;
    }
}

/// Registers a mesh scenario's peers, and the observer that ends the run.
pub fn register(sim: &mut turmoil::Sim<'_>, s: &Scenario, seed: u64, log: &SharedLog) {
    let names: Vec<String> = s.peers().map(|h| h.name.clone()).collect();
    with_log(log, |l| l.mesh.names = names.clone());
    for name in &names {
        let incarnations = Arc::new(AtomicU32::new(0));
        let scenario = s.clone();
        let log = log.clone();
        let name = name.clone();
        let names = names.clone();
        sim.host(name.clone().as_str(), move || {
            let incarnation = incarnations.fetch_add(1, Ordering::Relaxed);
            run_peer(
                scenario.clone(),
                seed,
                log.clone(),
                name.clone(),
                names.clone(),
                incarnation,
            )
        });
    }
    let last_fault = s
        .timeline_for(seed)
        .last()
        .map_or(Duration::ZERO, |f| Duration::from_millis(f.at_ms));
    let log = log.clone();
    sim.client("observer", async move {
        observe(log, last_fault).await;
        Ok(())
    });
}

/// Ends the run once the last fault is behind, every live peer finished, converged, settled
/// and linked once to every other, and it stayed so for [`QUIET`].
async fn observe(log: SharedLog, last_fault: Duration) {
    let mut since: Option<Duration> = None;
    loop {
        tokio::time::sleep(OBSERVE_EVERY).await;
        let unsettled = with_log(&log, |l| l.mesh.unsettled());
        match (unsettled, since) {
            (None, None) if now() > last_fault => since = Some(now()),
            (None, Some(t)) if now().saturating_sub(t) >= QUIET => {
                with_log(&log, |l| l.mesh.converged_at = Some(t));
                tracing::info!(target: "clipsync_sim", at_ms = t.as_millis() as u64, "mesh settled");
                return;
            }
            (Some(_), Some(_)) => since = None,
            _ => {}
        }
    }
}

type HostResult = Result<(), Box<dyn std::error::Error>>;

async fn run_peer(
    s: Scenario,
    seed: u64,
    log: SharedLog,
    name: String,
    names: Vec<String>,
    incarnation: u32,
) -> HostResult {
    let tag = format!("{name}#{incarnation}");
    tracing::info!(target: "clipsync_sim", incarnation, "peer start");
    with_log(&log, |l| {
        l.mesh.incarnation.insert(name.clone(), incarnation);
    });
    let transport = build_transport(&s, seed, &name, incarnation)?;
    let others: BTreeMap<String, (Vec<u8>, PeerInfo)> = names
        .iter()
        .filter(|n| **n != name)
        .map(|n| {
            let key = host_key(seed, n).public_key().clone();
            let wire = key.to_bytes().unwrap_or_default();
            let info = PeerInfo::new(n.clone(), vec![format!("{n}:{PORT}").parse()?]).with_key(key);
            Ok((n.clone(), (wire, info)))
        })
        .collect::<Result<_, Box<dyn std::error::Error>>>()?;
    let trusted = others
        .values()
        .map(|(_, i)| host_key(seed, &i.id).public_key().clone())
        .collect();
    let auth = Arc::new(SshAuthenticator::new(host_key(seed, &name), trusted)?);
    let (peers, mut events) = transport.peers(auth);
    peers.listen(&format!("0.0.0.0:{PORT}").parse()?).await?;
    for (_, info) in others.values() {
        peers.add(info.clone())?;
    }
    let node = Arc::new(Node {
        name: name.clone(),
        tag: tag.clone(),
        log: log.clone(),
        peers: peers.clone(),
        others,
        engine: Mutex::new(Engine::default()),
        sends: AtomicU64::new(0),
        threshold: transport.config().stream_threshold as usize,
        made: Mutex::new(None),
    });
    tokio::spawn(snapshot_links(node.clone(), incarnation));
    tokio::spawn(workload(node.clone(), s.clone(), seed, incarnation));
    while let Some(event) = events.next().await {
        node.event(event);
    }
    Ok(())
}

/// Writes the peer's links into the log every [`SNAPSHOT_EVERY`].
async fn snapshot_links(node: Arc<Node>, incarnation: u32) {
    loop {
        let links = node
            .others
            .iter()
            .map(|(n, (key, _))| {
                let l = node
                    .peers
                    .get(key)
                    .map_or((false, 0), |p| (p.is_linked(), p.live_links()));
                (n.clone(), l)
            })
            .collect();
        with_log(&node.log, |l| {
            l.mesh
                .links
                .insert(node.name.clone(), LinkSnap { incarnation, links })
        });
        tokio::time::sleep(SNAPSHOT_EVERY).await;
    }
}

/// The application copying: `messages` clips (a quarter as many after a restart), sizes and
/// pauses drawn from the seed, every `stream_every`-th a large one; with churn, a peer
/// removed and added back now and then.
async fn workload(node: Arc<Node>, s: Scenario, seed: u64, incarnation: u32) {
    let w = &s.workload;
    let mut rng = ChaCha20Rng::from_seed(derive(seed, &format!("workload/{}", node.tag)));
    let mut pick = |r: [u64; 2]| r[0] + rng.next_u64() % (r[1] - r[0] + 1);
    let clips = if incarnation == 0 {
        w.messages
    } else {
        w.messages / 4
    };
    let names: Vec<String> = node.others.keys().cloned().collect();
    for n in 1..=clips {
        tokio::time::sleep(Duration::from_millis(pick(w.interval_ms))).await;
        let large = w.stream_every > 0 && n % w.stream_every == 0;
        let range = if large { w.stream_size } else { w.size };
        let size = pick([range[0] as u64, range[1] as u64]) as usize;
        node.copy(size);
        if w.churn_every > 0 && n % w.churn_every == 0 {
            let victim = names[pick([0, names.len() as u64 - 1]) as usize].clone();
            let pause = Duration::from_millis(pick(w.churn_ms));
            let node = node.clone();
            tokio::spawn(async move { node.churn(&victim, pause).await });
        }
    }
    with_log(&node.log, |l| {
        l.mesh.done.insert(node.tag.clone());
    });
    tracing::debug!(target: "clipsync_sim", "workload done");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_content_finds_one_wrong_byte_or_a_wrong_length() {
        for size in [0, 5, 30, 4096, 10_000] {
            let c = Clip {
                ts: 1234,
                origin: "p2#1".into(),
                id: 7,
                size,
            };
            let good = content(&c).to_vec();
            assert!(is_content(&good, &c), "size {size}");
            for at in [0, good.len() / 2, good.len() - 1] {
                let mut bad = good.clone();
                bad[at] ^= 1;
                assert!(!is_content(&bad, &c), "size {size}, byte {at}");
            }
            assert!(!is_content(&good[..good.len() - 1], &c), "size {size}");
            let mut longer = good.clone();
            longer.push(b'.');
            assert!(!is_content(&longer, &c), "size {size}");
        }
    }
}
