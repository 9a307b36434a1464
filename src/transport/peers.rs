//! [`Peers`]: the transport as a sync engine needs it (see its docs).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::Instrument;

use super::{Connection, ConnectionSender, PeerInfo, Transport};
use crate::core::{Backoff, unit_draw};
use crate::driver::{ConnectionState, Health, Incoming, Message, StreamSender, StreamSpec};
use crate::error::{CloseCause, ConnectError, SendError};
use crate::net::Address;
use crate::secure::Authenticator;
use crate::secure::auth::BoxFuture;
use crate::secure::auth::{AuthError, fingerprint_of_blob};
use crate::wire::ReasonCode;

/// How many received items and events one peer may have waiting for the application before
/// its link stops reading (backpressure reaches the sender through the windows).
const PENDING: usize = 64;

/// Events waiting in the shared queue, across peers.
const INBOX: usize = 64;

/// The transport as a sync engine needs it: a set of peers kept linked. The engine says which peers it should
/// be linked to ([`Peers::add`], [`Peers::remove`], at any time) and where to listen
/// ([`Peers::listen`]); the transport keeps exactly one live, authenticated link per peer,
/// whichever side dialled, and gives back one ordered stream of what happens
/// ([`PeerEvents`]): messages and streams from every peer, and each peer's link events.
///
/// ```no_run
/// # async fn demo(
/// #     transport: clipsync::transport::Transport,
/// #     auth: std::sync::Arc<dyn clipsync::secure::Authenticator>,
/// #     laptop: clipsync::transport::PeerInfo,
/// # ) -> Result<(), Box<dyn std::error::Error>> {
/// use clipsync::transport::{Incoming, Message, PeerEvent};
/// let (peers, mut events) = transport.peers(auth);
/// peers.listen(&"127.0.0.1:7700".parse()?).await?;
/// peers.add(laptop)?; // from discovery: id, addresses and SSH key
/// for (peer, outcome) in peers.broadcast(Message::text("copied text")).await {
///     println!("{}: {outcome:?}", peer.id());
/// }
/// while let Some(event) = events.next().await {
///     match event {
///         PeerEvent::Received { peer, incoming: Incoming::Message(m) } => {
///             println!("{} sent {} bytes", peer.id(), m.payload.len());
///         }
///         PeerEvent::Received { incoming: Incoming::Stream(s), .. } => {
///             let _image = s.read_to_end(64 << 20).await?;
///         }
///         // The peer may have missed what we sent before: push the current state again.
///         PeerEvent::Connected(peer) | PeerEvent::SessionLost(peer) => {
///             peer.send(Message::text("current clipboard")).await?;
///         }
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
///
/// ## How the one link is kept
///
/// Both sides dial every peer they were given an address for (the side with the smaller key
/// at once, the other after `backoff_initial`, so that at start both seldom dial at once; then
/// with the per-peer backoff) and accept the peer's dials. When both dials succeed, the
/// simultaneous-dial tie-break (`PROTOCOL.md` §7, reason 13) keeps the connection dialled by
/// the peer with the smaller key on both sides; the other side then waits for that connection
/// instead of dialling again. A side that holds an accepted link does not dial while the link
/// stands or waits for its peer to resume it; it dials again once the link has ended (the
/// resume window ran out, or the peer closed it). A restarted peer's fresh connection replaces
/// the old link at once (reason 12). Incoming connections from keys that are not peers of this
/// set are refused at authentication with `key not authorized` (6).
///
/// ## Events
///
/// Per peer, in order with its messages: [`PeerEvent::Connected`] for the first session,
/// [`PeerEvent::Resumed`] when a broken link came back with its session (nothing lost),
/// [`PeerEvent::SessionLost`] when a new session replaced an earlier one (the peer restarted,
/// the session expired, or a link ended and a new one began): what was sent before may be
/// missing, so an engine pushes its state again; [`PeerEvent::Disconnected`] when the link
/// broke; [`PeerEvent::Removed`] last, after [`Peers::remove`].
///
/// A send settles on the link it went out on. If that link ends before the peer acknowledged
/// it — it broke, or another connection of the same peer replaced it, as when a restarted peer
/// and this side dial each other at once — the send fails with
/// [`SendError::Unknown`](crate::error::SendError::Unknown): the peer may or may not have it,
/// and the transport does not guess (resending could deliver it twice). An engine whose data is
/// idempotent (a clipboard: the newest clip wins, a held one is declined) sends it again; the
/// reference sync (`examples/clipboard_sync.rs`) does. Sends that never left are carried to
/// the next link by the transport itself.
///
/// Cheap to clone; when the last clone is dropped the set shuts down as [`Peers::shutdown`]
/// does, without waiting.
#[derive(Clone, Debug)]
pub struct Peers {
    mesh: Arc<Mesh>,
    _owner: Arc<MeshOwner>,
}

/// Everything that happens to a [`Peers`] set, in one ordered stream: per peer, events and
/// received items in the order they happened. Read it steadily: a peer whose items wait here
/// stops being read (its sender slows down), and the others go on.
#[derive(Debug)]
pub struct PeerEvents {
    rx: mpsc::Receiver<PeerEvent>,
}

impl PeerEvents {
    /// The next event; `None` once the set has shut down and every event was read.
    pub async fn next(&mut self) -> Option<PeerEvent> {
        self.rx.recv().await
    }
}

/// One thing that happened to a peer of a [`Peers`] set.
#[derive(Debug)]
#[non_exhaustive]
pub enum PeerEvent {
    /// A message or stream from `peer`, in the order it sent them.
    Received {
        /// Who sent it.
        peer: Peer,
        /// What it is.
        incoming: Incoming,
    },
    /// The first session with this peer is up.
    Connected(Peer),
    /// The link came back with its session: nothing was lost either way.
    Resumed(Peer),
    /// A new session replaced an earlier one (the peer restarted, or the old session ended
    /// or expired): what was sent before may be missing at the peer. Sends of the old session
    /// have settled (on the wire and unacknowledged: of unknown fate).
    SessionLost(Peer),
    /// The link broke or ended; the transport redials (or waits for the peer to).
    Disconnected {
        /// The peer.
        peer: Peer,
        /// Why, in words.
        cause: String,
    },
    /// The peer was removed ([`Peers::remove`]); its last event.
    Removed(Peer),
}

impl PeerEvent {
    /// What kind of event it is, in words (`received`, `connected`, `resumed`, `session
    /// lost`, `disconnected`, `removed`), for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Received { .. } => "received",
            Self::Connected(_) => "connected",
            Self::Resumed(_) => "resumed",
            Self::SessionLost(_) => "session lost",
            Self::Disconnected { .. } => "disconnected",
            Self::Removed(_) => "removed",
        }
    }

    /// The peer it is about.
    pub fn peer(&self) -> &Peer {
        match self {
            Self::Received { peer, .. } | Self::Disconnected { peer, .. } => peer,
            Self::Connected(p) | Self::Resumed(p) | Self::SessionLost(p) | Self::Removed(p) => p,
        }
    }
}

/// One peer of a [`Peers`] set: send to it and watch its link, whichever connection carries
/// it at the moment. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Peer {
    slot: Arc<Slot>,
}

#[derive(Debug)]
struct Slot {
    id: String,
    key: Bytes,
    fingerprint: String,
    /// What discovery says of the peer; each dial attempt reads the addresses afresh.
    info: Arc<Mutex<PeerInfo>>,
    /// The current link's sending half, with a number that changes with the link and with
    /// its session; `None` between links.
    link: watch::Sender<Option<(u64, ConnectionSender)>>,
    state: watch::Sender<ConnectionState>,
    health: watch::Sender<Health>,
    /// Accepted connections of this peer, to its task.
    accepted: mpsc::Sender<Connection>,
    /// Set when the peer is removed.
    removed: watch::Sender<bool>,
    /// Connections to the peer that are up, both directions ([`Peer::live_links`]).
    live_links: std::sync::atomic::AtomicUsize,
}

impl Peer {
    /// The application's name for the peer ([`PeerInfo::new`]).
    pub fn id(&self) -> &str {
        &self.slot.id
    }

    /// The peer's SSH public key, wire encoding.
    pub fn key(&self) -> &Bytes {
        &self.slot.key
    }

    /// The key's `SHA256:…` fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.slot.fingerprint
    }

    /// The link's state, to watch: connecting while no link stands (dialling, or waiting for
    /// the peer), then as [`crate::transport::Connection::state`] says of the current link;
    /// closed once the peer is removed or the set shut down.
    ///
    /// ```no_run
    /// # async fn demo(peer: clipsync::transport::Peer) -> Result<(), Box<dyn std::error::Error>> {
    /// use clipsync::transport::ConnectionState;
    /// let mut state = peer.state();
    /// state.wait_for(|s| matches!(s, ConnectionState::Connected)).await?;
    /// println!("{} is linked; round trip {:?}", peer.id(), peer.health().borrow().rtt);
    /// # Ok(()) }
    /// ```
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.slot.state.subscribe()
    }

    /// The current link's health, to watch.
    pub fn health(&self) -> watch::Receiver<Health> {
        self.slot.health.subscribe()
    }

    /// Whether a link stands now (connected or degraded).
    pub fn is_linked(&self) -> bool {
        matches!(
            *self.slot.state.borrow(),
            ConnectionState::Connected | ConnectionState::Degraded
        )
    }

    /// How many connections to the peer are up now (connected or degraded), the one this
    /// side dialled and the one the peer dialled together: 1 once the tie-break has settled,
    /// 2 only while it is being decided. For checks (the simulator's one-link-per-pair
    /// invariant), not for deciding anything.
    #[doc(hidden)]
    pub fn live_links(&self) -> usize {
        self.slot
            .live_links
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The current link's sender (another than link `not`), waiting for one while the peer
    /// has none; fails once the peer is removed or the set shut down.
    async fn sender(&self, not: Option<u64>) -> Result<(u64, ConnectionSender), SendError> {
        let mut link = self.slot.link.subscribe();
        let mut state = self.slot.state.subscribe();
        let ended = |state: &watch::Receiver<ConnectionState>| match &*state.borrow() {
            ConnectionState::Closed(cause) => Some(SendError::Closed(cause.clone())),
            _ => None,
        };
        loop {
            if let Some(e) = ended(&state) {
                return Err(e);
            }
            if let Some((g, s)) = link.borrow_and_update().clone() {
                if Some(g) != not {
                    return Ok((g, s));
                }
            }
            let gone = tokio::select! {
                biased;
                r = state.changed() => r.is_err(),
                r = link.changed() => r.is_err(),
            };
            if gone {
                return Err(ended(&state).unwrap_or(SendError::NotConnected));
            }
        }
    }

    /// Runs `op` on the current link; when the link ended before `op` sent anything
    /// ([`SendError::Closed`]: nothing left this side), runs it on the next link.
    async fn on_link<T, F, Fut>(&self, op: F) -> Result<T, SendError>
    where
        F: Fn(ConnectionSender) -> Fut,
        Fut: Future<Output = Result<T, SendError>>,
    {
        let mut tried = None;
        loop {
            let (generation, sender) = self.sender(tried).await?;
            match op(sender).await {
                Err(SendError::Closed(cause)) => {
                    tracing::debug!(%cause, "not sent; waiting for the next link");
                    tried = Some(generation);
                }
                other => return other,
            }
        }
    }

    /// Sends `message` to the peer and waits until the peer has it, as
    /// [`ConnectionSender::send`] does (a payload above `stream_threshold` goes as a stream).
    /// While no link stands the send waits for one (queued in the dialling connection), as
    /// long as the peer is in the set; a send that never left a link that ended goes out on
    /// the next one. Fails with [`SendError::Closed`] once the peer is removed or the set shut
    /// down, and as [`ConnectionSender::send`] does otherwise (of unknown fate if its link
    /// ended after it left).
    ///
    /// ```no_run
    /// # async fn demo(peer: clipsync::transport::Peer) -> Result<(), Box<dyn std::error::Error>> {
    /// use clipsync::transport::Message;
    /// match peer.send(Message::text("copied text")).await {
    ///     Ok(()) => println!("{} has it", peer.id()),
    ///     Err(e) => println!("{} may not have it: {e}", peer.id()),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn send(&self, message: Message) -> Result<(), SendError> {
        self.on_link(|s| {
            let m = message.clone();
            async move { s.send(m).await }
        })
        .await
    }

    /// Like [`Peer::send`], but fails with [`SendError::Full`] at once when the current link's
    /// queue is full (and with [`SendError::NotConnected`] when there is no link at all);
    /// the future resolves when the peer has the payload.
    ///
    /// ```no_run
    /// # async fn demo(peer: clipsync::transport::Peer) -> Result<(), Box<dyn std::error::Error>> {
    /// use clipsync::transport::Message;
    /// // Queue without waiting for room; the future settles when the peer has it.
    /// let delivered = peer.try_send(Message::text("copied text"))?;
    /// tokio::spawn(delivered);
    /// # Ok(()) }
    /// ```
    pub fn try_send(
        &self,
        message: Message,
    ) -> Result<impl Future<Output = Result<(), SendError>> + use<>, SendError> {
        let link = self.slot.link.borrow().clone();
        match link {
            Some((_, sender)) => sender.try_send(message),
            None if *self.slot.removed.borrow() => Err(SendError::Closed(CloseCause::Local(
                ReasonCode::Normal,
                "the peer was removed".into(),
            ))),
            None => Err(SendError::NotConnected),
        }
    }

    /// Opens a stream to the peer on the current link ([`ConnectionSender::open_stream`]).
    pub async fn open_stream(
        &self,
        content_type: impl Into<String>,
        total_len: Option<u64>,
    ) -> Result<StreamSender, SendError> {
        let content_type = content_type.into();
        self.on_link(|s| {
            let ct = content_type.clone();
            async move { s.open_stream(ct, total_len).await }
        })
        .await
    }

    /// Opens a stream of a payload whose length and BLAKE3 are known, on the current link
    /// ([`ConnectionSender::open_stream_hashed`]): an offer the peer can decline before any
    /// byte flows, when it already has the payload ([`SendError::already_had`]).
    pub async fn open_stream_hashed(
        &self,
        content_type: impl Into<String>,
        total_len: u64,
        hash: [u8; 32],
    ) -> Result<StreamSender, SendError> {
        self.open_stream_with(StreamSpec::new(content_type).len(total_len).hash(hash))
            .await
    }

    /// Opens a stream as `spec` describes it (length, BLAKE3, application metadata), on the
    /// current link ([`ConnectionSender::open_stream_with`]).
    ///
    /// ```no_run
    /// # async fn demo(peer: clipsync::transport::Peer, png: bytes::Bytes)
    /// # -> Result<(), clipsync::error::SendError> {
    /// use clipsync::transport::StreamSpec;
    /// let spec = StreamSpec::new("image/png")
    ///     .len(png.len() as u64)
    ///     .hash(*blake3::hash(&png).as_bytes())
    ///     .metadata(&b"clip=42"[..]);
    /// let s = peer.open_stream_with(spec).await?;
    /// match s.send_all(&mut &png[..]).await {
    ///     Err(e) if e.already_had() => Ok(()), // the peer had it: nothing was sent
    ///     other => other.map(|_| ()),
    /// }
    /// # }
    /// ```
    pub async fn open_stream_with(&self, spec: StreamSpec) -> Result<StreamSender, SendError> {
        self.on_link(|s| {
            let spec = spec.clone();
            async move { s.open_stream_with(spec).await }
        })
        .await
    }

    /// Streams everything `reader` yields to the peer and waits until it verified it
    /// ([`ConnectionSender::send_stream`]); returns the bytes sent.
    ///
    /// ```no_run
    /// # async fn demo(peer: clipsync::transport::Peer) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut file = tokio::fs::File::open("screenshot.png").await?;
    /// let len = file.metadata().await?.len();
    /// let sent = peer.send_stream("image/png", Some(len), &mut file).await?;
    /// assert_eq!(sent, len);
    /// # Ok(()) }
    /// ```
    pub async fn send_stream<R: tokio::io::AsyncRead + Unpin>(
        &self,
        content_type: impl Into<String>,
        total_len: Option<u64>,
        reader: &mut R,
    ) -> Result<u64, SendError> {
        let s = self.open_stream(content_type, total_len).await?;
        s.send_all(reader).await
    }
}

/// The set's shared state. Tasks hold it; the application's handles hold [`MeshOwner`] too.
#[derive(Debug)]
struct Mesh {
    transport: Transport,
    auth: Arc<dyn Authenticator>,
    own_key: Bytes,
    members: Arc<RwLock<BTreeSet<Bytes>>>,
    slots: Mutex<BTreeMap<Bytes, Arc<Slot>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    inbox: mpsc::Sender<PeerEvent>,
    stop: watch::Sender<bool>,
}

/// Shuts the set down when the application's last [`Peers`] goes; keeps the transport alive
/// until then.
#[derive(Debug)]
struct MeshOwner {
    mesh: Arc<Mesh>,
    _transport: Transport,
}

impl Drop for MeshOwner {
    fn drop(&mut self) {
        self.mesh.stop.send_replace(true);
    }
}

/// The application's authenticator, refusing keys that are not peers of the set.
#[derive(Debug)]
struct MemberAuth {
    inner: Arc<dyn Authenticator>,
    members: Arc<RwLock<BTreeSet<Bytes>>>,
}

impl Authenticator for MemberAuth {
    fn public_key(&self) -> Bytes {
        self.inner.public_key()
    }

    fn sign(&self, transcript: &[u8]) -> Result<Bytes, AuthError> {
        self.inner.sign(transcript)
    }

    fn sign_async(&self, transcript: Vec<u8>) -> BoxFuture<'static, Result<Bytes, AuthError>> {
        self.inner.sign_async(transcript)
    }

    fn verify(
        &self,
        peer_key: &[u8],
        transcript: &[u8],
        signature: &[u8],
    ) -> Result<(), AuthError> {
        self.inner.verify(peer_key, transcript, signature)?;
        let known = self
            .members
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(peer_key);
        if known {
            Ok(())
        } else {
            Err(AuthError::NotAuthorized(format!(
                "{} is not a peer of this set",
                fingerprint_of_blob(peer_key)
            )))
        }
    }
}

impl Transport {
    /// A set of peers to keep linked, authenticating with `auth` (whose trusted keys still
    /// apply; a peer must also be [`Peers::add`]ed), and the stream of its events. See
    /// [`Peers`].
    pub fn peers(&self, auth: Arc<dyn Authenticator>) -> (Peers, PeerEvents) {
        let members: Arc<RwLock<BTreeSet<Bytes>>> = Arc::default();
        let own_key = auth.public_key();
        let auth: Arc<dyn Authenticator> = Arc::new(MemberAuth {
            inner: auth,
            members: members.clone(),
        });
        let (inbox, rx) = mpsc::channel(INBOX);
        let mesh = Arc::new(Mesh {
            transport: self.internal(),
            auth,
            own_key,
            members,
            slots: Mutex::default(),
            tasks: Mutex::default(),
            inbox,
            stop: watch::channel(false).0,
        });
        let owner = Arc::new(MeshOwner {
            mesh: mesh.clone(),
            _transport: self.clone(),
        });
        (
            Peers {
                mesh,
                _owner: owner,
            },
            PeerEvents { rx },
        )
    }
}

impl Peers {
    /// Listens on `addr` for the peers' connections; returns the bound address (with the real
    /// port when port 0 was asked for). May be called for several addresses.
    pub async fn listen(&self, addr: &Address) -> Result<Address, ConnectError> {
        let mut listener = self
            .mesh
            .transport
            .listen(addr, self.mesh.auth.clone())
            .await?;
        let local = listener.local_addr().clone();
        let mesh = self.mesh.clone();
        let mut stop = self.mesh.stop.subscribe();
        let task = tokio::spawn(
            async move {
                loop {
                    let accepted = tokio::select! {
                        biased;
                        _ = stop.wait_for(|s| *s) => return,
                        a = listener.accept() => a,
                    };
                    match accepted {
                        Ok(conn) => mesh.route(conn).await,
                        Err(super::AcceptError::Closed) => return,
                        Err(e) => tracing::info!(error = %e, "incoming connection failed"),
                    }
                }
            }
            .in_current_span(),
        );
        self.mesh.keep(task);
        Ok(local)
    }

    /// Adds a peer (its key is required: [`PeerInfo::with_key`]) and starts keeping a link to
    /// it; returns its handle. A peer with no address is never dialled: it is linked when it
    /// dials us. Adding a peer again updates its addresses (the next dial attempt uses them)
    /// and returns the same handle.
    ///
    /// ```no_run
    /// # async fn demo(peers: clipsync::transport::Peers, laptop: clipsync::transport::PeerInfo)
    /// # -> Result<(), Box<dyn std::error::Error>> {
    /// let peer = peers.add(laptop)?; // from discovery: id, addresses, SSH key
    /// println!("keeping a link to {} ({})", peer.id(), peer.fingerprint());
    /// # Ok(()) }
    /// ```
    pub fn add(&self, info: PeerInfo) -> Result<Peer, ConnectError> {
        self.mesh.transport.check_running()?;
        if *self.mesh.stop.borrow() {
            return Err(ConnectError::ShutDown);
        }
        let key = info.key.as_ref().ok_or(ConnectError::KeyRequired)?;
        let key = Bytes::from(
            key.to_bytes()
                .map_err(|e| ConnectError::Internal(e.to_string()))?,
        );
        if key == self.mesh.own_key {
            return Err(ConnectError::Internal(
                "a peer cannot be this side itself".into(),
            ));
        }
        self.mesh.transport.check_plaintext(&info.addresses)?;
        let mut slots = self.mesh.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get(&key) {
            let mut known = slot.info.lock().unwrap_or_else(|p| p.into_inner());
            known.addresses = info.addresses;
            return Ok(Peer { slot: slot.clone() });
        }
        let (accepted, accepted_rx) = mpsc::channel(4);
        let slot = Arc::new(Slot {
            id: info.id.clone(),
            fingerprint: fingerprint_of_blob(&key),
            key: key.clone(),
            info: Arc::new(Mutex::new(info)),
            link: watch::channel(None).0,
            state: watch::channel(ConnectionState::Connecting).0,
            health: watch::channel(Health::default()).0,
            accepted,
            removed: watch::channel(false).0,
            live_links: std::sync::atomic::AtomicUsize::new(0),
        });
        self.mesh
            .members
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
        slots.insert(key, slot.clone());
        drop(slots);
        let peer = Peer { slot };
        let span = tracing::info_span!("peer", peer = %peer.id());
        let task = tokio::spawn(
            Keeper::new(self.mesh.clone(), peer.clone(), accepted_rx)
                .run()
                .instrument(span),
        );
        self.mesh.keep(task);
        Ok(peer)
    }

    /// Removes the peer with this key (wire encoding): its link closes with `normal`, its
    /// pending sends settle, its connections are refused from now on, and
    /// [`PeerEvent::Removed`] is its last event. Returns whether it was a peer.
    ///
    /// ```no_run
    /// # async fn demo(peers: clipsync::transport::Peers, laptop: clipsync::transport::PeerInfo)
    /// # -> Result<(), Box<dyn std::error::Error>> {
    /// let key = peers.add(laptop)?.key().clone();
    /// // The user unpaired the laptop: close its link and refuse it from now on.
    /// assert!(peers.remove(&key));
    /// assert!(peers.get(&key).is_none());
    /// # Ok(()) }
    /// ```
    pub fn remove(&self, key: &[u8]) -> bool {
        let slot = self
            .mesh
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        self.mesh
            .members
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        match slot {
            Some(slot) => {
                slot.removed.send_replace(true);
                true
            }
            None => false,
        }
    }

    /// The peer with this key (wire encoding), if it is one.
    pub fn get(&self, key: &[u8]) -> Option<Peer> {
        let slots = self.mesh.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.get(key).map(|slot| Peer { slot: slot.clone() })
    }

    /// Every peer, ordered by key.
    pub fn list(&self) -> Vec<Peer> {
        let slots = self.mesh.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .values()
            .map(|slot| Peer { slot: slot.clone() })
            .collect()
    }

    /// Sends `message` to every peer that has a link (connected, degraded, or reconnecting:
    /// a send then waits for the resume) at once, and waits for every outcome. Peers without
    /// a link get [`SendError::NotConnected`] and nothing is sent to them: an engine brings
    /// them up to date when they connect ([`PeerEvent::Connected`],
    /// [`PeerEvent::SessionLost`]). Ordered by key.
    ///
    /// ```no_run
    /// # async fn demo(peers: clipsync::transport::Peers, laptop: clipsync::transport::PeerInfo)
    /// # -> Result<(), Box<dyn std::error::Error>> {
    /// use clipsync::transport::Message;
    /// for (peer, outcome) in peers.broadcast(Message::text("copied text")).await {
    ///     if outcome.is_err() {
    ///         // Not linked now: catch it up on its next Connected or SessionLost event.
    ///         println!("{} missed it", peer.id());
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn broadcast(&self, message: Message) -> Vec<(Peer, Result<(), SendError>)> {
        let peers = self.list();
        let sends = peers.iter().map(|peer| {
            let message = message.clone();
            async move {
                let linked = matches!(
                    *peer.slot.state.borrow(),
                    ConnectionState::Connected
                        | ConnectionState::Degraded
                        | ConnectionState::Reconnecting
                );
                if linked {
                    peer.send(message).await
                } else {
                    Err(SendError::NotConnected)
                }
            }
        });
        let outcomes = futures_util::future::join_all(sends).await;
        peers.into_iter().zip(outcomes).collect()
    }

    /// Shuts the set down and returns when it is done: every link closes with `going away`
    /// (9), every pending send settles, dials and listeners stop; the event stream ends after
    /// the last events. The transport itself goes on (see [`Transport::shutdown`]).
    ///
    /// ```no_run
    /// # async fn demo(peers: clipsync::transport::Peers, laptop: clipsync::transport::PeerInfo)
    /// # -> Result<(), Box<dyn std::error::Error>> {
    /// peers.shutdown().await; // every link says GOAWAY `going away`, every send settles
    /// assert!(peers.list().iter().all(|p| !p.is_linked()));
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self) {
        self.mesh.stop.send_replace(true);
        let tasks = std::mem::take(&mut *self.mesh.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }
}

impl Mesh {
    fn keep(&self, task: tokio::task::JoinHandle<()>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Hands an accepted connection to its peer's keeper (the tie-break already kept it).
    async fn route(&self, conn: Connection) {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(conn.peer_key())
            .cloned();
        match slot {
            Some(slot) => {
                if let Err(mpsc::error::SendError(conn)) = slot.accepted.send(conn).await {
                    conn.close_with(ReasonCode::GoingAway, "the peer was removed".into())
                        .await;
                }
            }
            None => {
                conn.close_with(
                    ReasonCode::KeyNotAuthorized,
                    "not a peer of this set (removed)".into(),
                )
                .await;
            }
        }
    }
}

/// What the keeper tells the application, from what it observes of the peer's links: pure,
/// so its rules are tested on their own.
#[derive(Debug, Default)]
struct Announcer {
    /// A session with this peer was announced before (the next new one is a loss).
    had_session: bool,
    /// The peer was announced as linked.
    linked: bool,
    /// The link announced last.
    link: Option<LinkSeen>,
    /// When the peer was last announced as linked (time is an argument).
    linked_at: Duration,
    /// How long after a link came up a link of the other direction may still be the
    /// simultaneous-dial tie-break settling (later, it is the peer's new session).
    tie_window: Duration,
}

/// A link as the announcer last saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LinkSeen {
    generation: u64,
    dialed: bool,
    reconnects: u32,
    sessions_lost: u32,
}

/// What an [`Announcer`] concludes.
#[derive(Debug, PartialEq, Eq)]
enum Announce {
    Connected,
    Resumed,
    SessionLost,
    Disconnected(String),
}

impl Announcer {
    /// The current link now: `None` if no link is up (with why, if one was), else which one
    /// and its counters.
    fn observe(&mut self, link: Result<LinkSeen, String>, now: Duration) -> Option<Announce> {
        let (seen, cause) = match link {
            Ok(seen) => (Some(seen), String::new()),
            Err(cause) => (None, cause),
        };
        let before = self.link;
        let was_linked = self.linked;
        self.linked = seen.is_some();
        let Some(seen) = seen else {
            return was_linked.then_some(Announce::Disconnected(cause));
        };
        self.link = Some(seen);
        let linked_at = if was_linked { self.linked_at } else { now };
        let settling =
            now.saturating_sub(std::mem::replace(&mut self.linked_at, linked_at)) < self.tie_window;
        let had_session = std::mem::replace(&mut self.had_session, true);
        let same = before.filter(|b| b.generation == seen.generation);
        if let Some(b) = same {
            // The same connection: its counters tell what happened since.
            if seen.sessions_lost > b.sessions_lost {
                return Some(Announce::SessionLost);
            }
            if seen.reconnects > b.reconnects || !was_linked {
                return Some(Announce::Resumed);
            }
            return None;
        }
        // Another connection carries the peer now.
        if seen.sessions_lost > 0 {
            return Some(Announce::SessionLost);
        }
        match before {
            // A link that stood was replaced by one of the other direction at once: the
            // simultaneous-dial tie-break settling. Same moment, same peer state.
            Some(b) if was_linked && b.dialed != seen.dialed && settling => None,
            _ if had_session => Some(Announce::SessionLost),
            _ => Some(Announce::Connected),
        }
    }
}

/// A connection that may carry a peer.
struct Link {
    conn: Connection,
    generation: u64,
    dialed: bool,
    state: watch::Receiver<ConnectionState>,
    health: watch::Receiver<Health>,
}

impl Link {
    fn up(&self) -> bool {
        matches!(
            *self.state.borrow(),
            ConnectionState::Connected | ConnectionState::Degraded
        )
    }

    fn seen(&self) -> LinkSeen {
        let h = self.health.borrow();
        LinkSeen {
            generation: self.generation,
            dialed: self.dialed,
            reconnects: h.reconnects,
            sessions_lost: h.sessions_lost,
        }
    }
}

/// Waits for the next item of `conn`; never resolves without one.
async fn receive(conn: Option<&mut Connection>) -> Option<Incoming> {
    match conn {
        Some(c) => c.receive().await.ok(),
        None => std::future::pending().await,
    }
}

/// What happened on a link (short-lived: one per wake-up, so its size does not matter).
#[allow(clippy::large_enum_variant)]
enum LinkStep {
    Changed,
    Item(Option<Incoming>),
}

/// Waits for a change of `link`'s state or health, or (with `read`) its next item; never
/// resolves without a link.
async fn watch_link(link: Option<&mut Link>, read: bool) -> LinkStep {
    let Some(Link {
        conn,
        state,
        health,
        ..
    }) = link
    else {
        return std::future::pending().await;
    };
    // A watch whose sender is gone never changes again (the link's items then end).
    let state = async {
        if state.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let health = async {
        if health.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        biased;
        () = state => LinkStep::Changed,
        () = health => LinkStep::Changed,
        item = conn.receive(), if read => LinkStep::Item(item.ok()),
    }
}

/// The task that keeps one peer linked: it holds at most one connection it dialled and one
/// the peer dialled, follows the transport's tie-break between them, and reads both.
struct Keeper {
    mesh: Arc<Mesh>,
    peer: Peer,
    accepted_rx: mpsc::Receiver<Connection>,
    dialed: Option<Link>,
    accepted: Option<Link>,
    /// Links that ended or were replaced, read to their end (before the others).
    draining: VecDeque<Connection>,
    pending: VecDeque<PeerEvent>,
    /// Events about the current links, held while an old link is still being read: its
    /// items happened before them.
    held: VecDeque<PeerEvent>,
    announcer: Announcer,
    /// The link sends go to, and the sessions it lost so far.
    current: Option<(u64, u32)>,
    generations: u64,
    /// Published carriers of sends (link and session), numbered for `Peer::on_link`.
    epochs: u64,
    backoff: Backoff,
    /// When to dial next while no link stands.
    dial_at: Option<Instant>,
    /// Why the last link went away, for the `Disconnected` event.
    last_cause: String,
    /// The last link lost the simultaneous-dial tie-break: the peer's winning connection is
    /// on its way, so no link for a moment is not a disconnection (until we dial again).
    tie_lost: bool,
    own_smaller: bool,
    start: Instant,
}

impl Keeper {
    fn new(mesh: Arc<Mesh>, peer: Peer, accepted_rx: mpsc::Receiver<Connection>) -> Self {
        let backoff = Backoff::new(mesh.transport.inner.cfg.backoff_policy());
        let tie_window = mesh.transport.inner.cfg.handshake_timeout;
        let yield_time = mesh.transport.inner.cfg.backoff_initial;
        let own_smaller = mesh.own_key.as_ref() < peer.key().as_ref();
        Self {
            mesh,
            peer,
            accepted_rx,
            dialed: None,
            accepted: None,
            draining: VecDeque::new(),
            pending: VecDeque::new(),
            held: VecDeque::new(),
            announcer: Announcer {
                tie_window,
                ..Announcer::default()
            },
            current: None,
            generations: 0,
            epochs: 0,
            backoff,
            // The peer with the smaller key dials first; the other gives its dial a moment to
            // arrive, so that at start both seldom dial at once. (Both dialling at once linked
            // a restarted larger-key peer up to backoff_initial sooner, but under load the
            // tie-break settling then showed: a broadcast found no link for a moment, and a
            // removed peer's refused redial became its disconnection cause.)
            dial_at: Some(
                Instant::now()
                    + if own_smaller {
                        Duration::ZERO
                    } else {
                        yield_time
                    },
            ),
            last_cause: String::new(),
            tie_lost: false,
            own_smaller,
            start: Instant::now(),
        }
    }

    fn slot(&self) -> &Slot {
        &self.peer.slot
    }

    fn link(&mut self, conn: Connection, dialed: bool) -> Link {
        self.generations += 1;
        Link {
            state: conn.state(),
            health: conn.health(),
            generation: self.generations,
            dialed,
            conn,
        }
    }

    fn draw(&self) -> f64 {
        unit_draw(u64::from_be_bytes(self.mesh.transport.random()))
    }

    /// A connection the peer dialled, kept by the transport's tie-break.
    fn accept(&mut self, conn: Connection) {
        let link = self.link(conn, false);
        if let Some(old) = self.accepted.replace(link) {
            // The transport replaced it (a new session from the same peer).
            self.draining.push_back(old.conn);
        }
        // Our own dial, not up yet, would lose to this one (we have the larger key): stop it.
        if !self.own_smaller && self.dialed.as_ref().is_some_and(|d| !d.up()) {
            if let Some(d) = self.dialed.take() {
                self.draining.push_back(d.conn);
            }
        }
        self.dial_at = None;
        self.review();
    }

    /// Whether a retired link that has closed still has items to hand over: they happened
    /// before anything announced since, so announcements wait for them. (A retired dial that
    /// never connected has none, and is not waited for.)
    fn old_items_pending(&self) -> bool {
        self.draining
            .iter()
            .any(|c| matches!(*c.state().borrow(), ConnectionState::Closed(_)))
    }

    /// Looks at the links after any change: retires ended ones, picks the one sends go to,
    /// announces what changed, and schedules a dial when none is left.
    fn review(&mut self) {
        for which in [true, false] {
            let slot = if which {
                &mut self.dialed
            } else {
                &mut self.accepted
            };
            let closed = slot
                .as_ref()
                .is_some_and(|l| matches!(*l.state.borrow(), ConnectionState::Closed(_)));
            if closed {
                if let Some(l) = slot.take() {
                    self.last_cause = super::cause_of(&l.state).to_string();
                    let reason = super::cause_of(&l.state).reason();
                    self.tie_lost = reason == Some(ReasonCode::DuplicateConnection);
                    self.draining.push_back(l.conn);
                    if self.dialed.is_none() && self.accepted.is_none() {
                        self.schedule_dial(reason);
                    }
                }
            }
        }
        let up = [&self.dialed, &self.accepted]
            .into_iter()
            .flatten()
            .filter(|l| l.up())
            .count();
        self.slot()
            .live_links
            .store(up, std::sync::atomic::Ordering::Relaxed);
        // A dial of ours that keeps failing while the peer's connection stands: stop it.
        let accepted_up = self.accepted.as_ref().is_some_and(Link::up);
        let failing = self.dialed.as_ref().is_some_and(|d| {
            matches!(*d.state.borrow(), ConnectionState::Connecting)
                && d.health.borrow().dial_failures > 0
        });
        if accepted_up && failing {
            if let Some(d) = self.dialed.take() {
                self.draining.push_back(d.conn);
            }
        }
        // The link sends go to: an up one (the tie-break's favourite if both are), else one
        // that waits to resume or to connect.
        let (first, second) = if self.own_smaller {
            (&self.dialed, &self.accepted)
        } else {
            (&self.accepted, &self.dialed)
        };
        // While our own dial is under way and has not failed, a connection the peer dialled
        // may still lose the tie-break to it (we have the smaller key): sends wait in the dial.
        let dial_pending = self.own_smaller
            && self.dialed.as_ref().is_some_and(|d| {
                matches!(*d.state.borrow(), ConnectionState::Connecting)
                    && d.health.borrow().dial_failures == 0
            });
        let chosen = if dial_pending {
            self.dialed.as_ref()
        } else {
            [first, second]
                .into_iter()
                .flatten()
                .find(|l| l.up())
                .or_else(|| [first, second].into_iter().flatten().next())
        };
        if let Some(l) = chosen {
            if matches!(*l.state.borrow(), ConnectionState::Reconnecting) {
                self.last_cause = "the connection broke; waiting to resume".into();
            }
        }
        let seen = match chosen.filter(|l| l.up()) {
            Some(l) => {
                self.tie_lost = false;
                Ok(l.seen())
            }
            None => Err(self.last_cause.clone()),
        };
        // What sends go to changes with the link, and with the session on it: a send that
        // never left a session the peer lost goes again on the next one (`Peer::on_link`),
        // which may be on the same connection.
        let carrier = chosen.map(|l| (l.generation, l.health.borrow().sessions_lost));
        if carrier != self.current {
            self.current = carrier;
            self.epochs += 1;
            let sender = chosen.map(|l| (self.epochs, l.conn.sender()));
            self.slot().link.send_replace(sender);
        }
        let state = chosen.map_or(ConnectionState::Connecting, |l| match &*l.state.borrow() {
            ConnectionState::Closed(_) | ConnectionState::Offline => ConnectionState::Connecting,
            s => s.clone(),
        });
        let health = chosen.map_or_else(Health::default, |l| *l.health.borrow());
        self.slot().state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
        self.slot().health.send_if_modified(|h| {
            let changed = *h != health;
            *h = health;
            changed
        });
        if seen.is_err() && self.tie_lost {
            // The tie-break is settling: the winner arrives within the handshake deadline (or
            // we dial again, and then say the link is gone).
            return;
        }
        let announce = self.announcer.observe(seen, self.start.elapsed());
        self.announce(announce);
    }

    fn announce(&mut self, a: Option<Announce>) {
        let peer = self.peer.clone();
        let event = match a {
            None => return,
            Some(Announce::Connected) => PeerEvent::Connected(peer),
            Some(Announce::Resumed) => PeerEvent::Resumed(peer),
            Some(Announce::SessionLost) => PeerEvent::SessionLost(peer),
            Some(Announce::Disconnected(cause)) => PeerEvent::Disconnected { peer, cause },
        };
        tracing::info!(event = event.name(), "peer event");
        if self.old_items_pending() {
            self.held.push_back(event);
        } else {
            self.pending.push_back(event);
        }
    }

    /// No link is left: dial again after a pause that depends on why the last one ended.
    fn schedule_dial(&mut self, reason: Option<ReasonCode>) {
        self.backoff.disconnected(self.start.elapsed());
        let delay = match reason {
            // The peer's own connection won or replaced ours and is on its way: dial again
            // only if it does not come.
            Some(ReasonCode::DuplicateConnection | ReasonCode::Replaced) => {
                self.mesh.transport.inner.cfg.handshake_timeout
            }
            _ => self.backoff.next_delay(self.draw()),
        };
        tracing::info!(?delay, "no link left; dialling again later");
        self.dial_at = Some(Instant::now() + delay);
    }

    /// Opens a dialling connection, if the peer has an address.
    fn dial(&mut self) {
        self.dial_at = None;
        if std::mem::take(&mut self.tie_lost) {
            // The peer's winning connection did not come: the link is gone after all.
            let announce = self
                .announcer
                .observe(Err(self.last_cause.clone()), self.start.elapsed());
            self.announce(announce);
        }
        if self.dialed.is_some() || self.accepted.is_some() {
            return;
        }
        let has_address = !self
            .slot()
            .info
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .addresses
            .is_empty();
        if !has_address {
            // Accept-only: wait for the peer; look again later for an address.
            self.dial_at = Some(Instant::now() + self.mesh.transport.inner.cfg.backoff_max);
            return;
        }
        let opened = self
            .mesh
            .transport
            .open_shared(self.slot().info.clone(), self.mesh.auth.clone());
        match opened {
            Ok(conn) => {
                self.backoff.connected(self.start.elapsed());
                let link = self.link(conn, true);
                self.dialed = Some(link);
                self.review();
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot dial");
                let delay = self.backoff.next_delay(self.draw());
                self.dial_at = Some(Instant::now() + delay);
            }
        }
    }

    async fn run(mut self) {
        let mut stop = self.mesh.stop.subscribe();
        let mut removed = self.slot().removed.subscribe();
        let mut transport_stop = self.mesh.transport.inner.stop.subscribe();
        let reason = loop {
            if self.dial_at.is_some_and(|t| t <= Instant::now()) {
                self.dial();
            }
            enum Step {
                Stop(ReasonCode, &'static str),
                Deliver(mpsc::OwnedPermit<PeerEvent>),
                InboxGone,
                Accepted(Connection),
                Drained(Option<Incoming>),
                Link(LinkStep),
                Dial,
            }
            let room = self.pending.len() < PENDING;
            let drained = self.draining.is_empty();
            // Closed links first: they end at once, and announcements wait for them; a
            // retired dial still connecting ends when the transport's tie-break closes it.
            let next_old = self
                .draining
                .iter()
                .position(|c| matches!(*c.state().borrow(), ConnectionState::Closed(_)))
                .unwrap_or(0);
            let dial_at = self.dial_at;
            let inbox = self.mesh.inbox.clone();
            let Self {
                dialed,
                accepted,
                draining,
                accepted_rx,
                pending,
                ..
            } = &mut self;
            let step = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => Step::Stop(ReasonCode::GoingAway, "the peer set shuts down"),
                _ = transport_stop.wait_for(|s| *s) => Step::Stop(ReasonCode::GoingAway, "the transport shuts down"),
                _ = removed.wait_for(|r| *r) => Step::Stop(ReasonCode::Normal, "the peer was removed"),
                permit = inbox.reserve_owned(), if !pending.is_empty() => match permit {
                    Ok(p) => Step::Deliver(p),
                    Err(_) => Step::InboxGone,
                },
                Some(conn) = accepted_rx.recv() => Step::Accepted(conn),
                item = receive(draining.get_mut(next_old)), if room && !drained => Step::Drained(item),
                s = watch_link(dialed.as_mut(), room && drained), if dialed.is_some() => Step::Link(s),
                s = watch_link(accepted.as_mut(), room && drained), if accepted.is_some() => Step::Link(s),
                () = async { if let Some(t) = dial_at { tokio::time::sleep_until(t).await } }, if dial_at.is_some() => Step::Dial,
            };
            match step {
                Step::Stop(reason, detail) => break (reason, detail),
                Step::Deliver(permit) => {
                    if let Some(event) = self.pending.pop_front() {
                        permit.send(event);
                    }
                }
                Step::InboxGone => {
                    // Nobody reads the events any more: received items are dropped (an unread
                    // stream fails for its sender) and events forgotten.
                    self.pending.clear();
                }
                Step::Accepted(conn) => self.accept(conn),
                Step::Drained(Some(incoming)) | Step::Link(LinkStep::Item(Some(incoming))) => {
                    let peer = self.peer.clone();
                    self.pending
                        .push_back(PeerEvent::Received { peer, incoming });
                }
                Step::Drained(None) => {
                    self.draining.remove(next_old);
                    if !self.old_items_pending() {
                        // The old links' items are all out: what happened since follows.
                        self.pending.extend(self.held.drain(..));
                    }
                }
                // A link's items ended: it is closed; `review` retires it.
                Step::Link(LinkStep::Item(None) | LinkStep::Changed) => self.review(),
                Step::Dial => self.dial(),
            }
        };
        self.finish(reason).await;
    }

    /// Closes the links, settles what is left and says goodbye.
    async fn finish(mut self, (reason, detail): (ReasonCode, &'static str)) {
        self.slot().link.send_replace(None);
        let was_removed = *self.slot().removed.borrow();
        let links = [self.dialed.take(), self.accepted.take()];
        // What the peer already counts as delivered still reaches the application, in order:
        // the old links' items, the events held behind them, the current links' items.
        let old: Vec<Connection> = self.draining.drain(..).collect();
        let current: Vec<Connection> = links.into_iter().flatten().map(|l| l.conn).collect();
        for (i, conns) in [old, current].into_iter().enumerate() {
            if i == 1 {
                self.pending.extend(self.held.drain(..));
            }
            for conn in conns {
                for incoming in conn.close_collecting(reason, detail.into()).await {
                    let peer = self.peer.clone();
                    self.pending
                        .push_back(PeerEvent::Received { peer, incoming });
                }
            }
        }
        let cause = CloseCause::Local(reason, detail.into());
        let announce = self
            .announcer
            .observe(Err(cause.to_string()), self.start.elapsed());
        self.announce(announce);
        self.slot()
            .state
            .send_replace(ConnectionState::Closed(cause));
        if was_removed {
            self.pending
                .push_back(PeerEvent::Removed(self.peer.clone()));
        }
        // What is left goes to the application, unless it stopped reading.
        let inbox = self.mesh.inbox.clone();
        for event in self.pending.drain(..) {
            let sent = tokio::time::timeout(Duration::from_secs(1), inbox.send(event)).await;
            if !matches!(sent, Ok(Ok(()))) {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(generation: u64, dialed: bool, reconnects: u32, sessions_lost: u32) -> LinkSeen {
        LinkSeen {
            generation,
            dialed,
            reconnects,
            sessions_lost,
        }
    }

    fn down() -> Result<LinkSeen, String> {
        Err("reset".into())
    }

    fn announcer() -> Announcer {
        Announcer {
            tie_window: Duration::from_secs(10),
            ..Announcer::default()
        }
    }

    const T0: Duration = Duration::ZERO;

    #[test]
    fn the_first_session_is_connected_and_a_resume_is_resumed() {
        let mut a = announcer();
        assert_eq!(a.observe(down(), T0), None, "nothing was up");
        assert_eq!(
            a.observe(Ok(seen(1, true, 0, 0)), T0),
            Some(Announce::Connected)
        );
        assert_eq!(a.observe(Ok(seen(1, true, 0, 0)), T0), None);
        assert!(matches!(
            a.observe(down(), T0),
            Some(Announce::Disconnected(_))
        ));
        assert_eq!(
            a.observe(Ok(seen(1, true, 1, 0)), T0),
            Some(Announce::Resumed)
        );
        // A resume and a loss that happened between two looks are still told.
        assert_eq!(
            a.observe(Ok(seen(1, true, 2, 0)), T0),
            Some(Announce::Resumed)
        );
        assert_eq!(
            a.observe(Ok(seen(1, true, 3, 1)), T0),
            Some(Announce::SessionLost)
        );
    }

    #[test]
    fn a_tie_break_between_directions_is_not_a_loss_but_a_replacement_is() {
        let mut a = announcer();
        assert_eq!(
            a.observe(Ok(seen(1, true, 0, 0)), T0),
            Some(Announce::Connected)
        );
        // The peer's dial of the same moment wins the tie-break: nothing to tell.
        assert_eq!(a.observe(Ok(seen(2, false, 0, 0)), T0), None);
        // The peer restarted and dialled again: its new session replaced the old one.
        assert_eq!(
            a.observe(Ok(seen(3, false, 0, 0)), T0),
            Some(Announce::SessionLost)
        );
    }

    #[test]
    fn a_switch_of_direction_long_after_the_link_came_up_is_a_new_session() {
        let mut a = announcer();
        assert_eq!(
            a.observe(Ok(seen(1, true, 0, 0)), T0),
            Some(Announce::Connected)
        );
        let later = Duration::from_secs(60);
        assert_eq!(a.observe(Ok(seen(1, true, 0, 0)), later), None);
        // A restarted peer's fresh dial replaced a link that looked alive.
        assert_eq!(
            a.observe(Ok(seen(2, false, 0, 0)), later),
            Some(Announce::SessionLost)
        );
    }

    #[test]
    fn a_new_link_after_a_gap_is_a_loss() {
        let mut a = announcer();
        assert_eq!(
            a.observe(Ok(seen(1, false, 0, 0)), T0),
            Some(Announce::Connected)
        );
        assert!(a.observe(down(), T0).is_some());
        assert_eq!(a.observe(down(), T0), None, "told once");
        assert_eq!(
            a.observe(Ok(seen(2, true, 0, 0)), T0),
            Some(Announce::SessionLost)
        );
    }
}
