//! Layer 5, the public API: [`Transport`] dials and listens, [`Connection`] sends and
//! receives [`Message`]s, [`Listener`] hands out authenticated incoming connections.
//!
//! ```no_run
//! use std::sync::Arc;
//! use clipsync::transport::{Message, PeerInfo, Transport};
//! use clipsync::config::TransportConfig;
//! use clipsync::secure::SshAuthenticator;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let auth = Arc::new(SshAuthenticator::from_files(
//!     "id_ed25519".as_ref(),
//!     "trusted_keys".as_ref(),
//! )?);
//! let transport = Transport::new(TransportConfig::default())?;
//! let peer = PeerInfo::new("laptop", vec!["192.0.2.7:7070".parse()?]);
//! let conn = transport.connect(&peer, auth).await?;
//! conn.send(Message::text("hello")).await?; // returns once the peer acknowledged it
//! conn.close().await;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rustls::crypto::CryptoProvider;
use rustls::time_provider::TimeProvider;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tracing::Instrument;

use crate::config::TransportConfig;
use crate::core::{LinkView, RedialPolicy, tie_break, unit_draw};
use crate::driver::{self, Command, Handles, Reconnect, Redial, cause_of};
pub use crate::driver::{
    ConnectionState, Full, Health, Incoming, IncomingStream, Message, Progress, StreamError,
    StreamSender, StreamSpec,
};
use crate::error::{CloseCause, ConfigError, ConnectError, ConnectionClosed, SendError};
pub use crate::net::Address;
use crate::net::{NetListener, Network, TokioNet};
use crate::secure::auth::fingerprint_of_blob;
use crate::secure::handshake::ResumeAnswer;
use crate::secure::tls::TlsSetupError;
use crate::secure::{self, Authenticator, ChannelParams, TlsSetup};
use crate::wire::Frame;
use crate::wire::{ReasonCode, SessionId};

mod peers;
mod sender;
mod sessions;
mod startups;
pub use peers::{Peer, PeerEvent, PeerEvents, Peers};
pub use sender::ConnectionSender;

/// A peer as the discovery component hands it in: a name, where it can be reached, and
/// optionally the SSH key it must present.
///
/// ```
/// use clipsync::secure::SshAuthenticator;
/// use clipsync::transport::{Address, PeerInfo};
/// let key = SshAuthenticator::ed25519_from_seed([2; 32]).public_key().clone();
/// let laptop = PeerInfo::new("laptop", vec!["192.168.1.20:7700".parse::<Address>()?])
///     .with_key(key); // required by Transport::open and Peers::add
/// assert_eq!(laptop.addresses.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// A name for logs (the peer's id in the sync engine).
    pub id: String,
    /// Addresses to try, in order.
    pub addresses: Vec<Address>,
    /// The key the peer must authenticate with, if known; any trusted key otherwise.
    pub key: Option<ssh_key::PublicKey>,
}

impl PeerInfo {
    /// A peer reachable at `addresses`, accepted with any trusted key.
    pub fn new(id: impl Into<String>, addresses: Vec<Address>) -> Self {
        Self {
            id: id.into(),
            addresses,
            key: None,
        }
    }

    /// Requires the peer to authenticate with `key`.
    pub fn with_key(mut self, key: ssh_key::PublicKey) -> Self {
        self.key = Some(key);
        self
    }
}

/// Why a [`Transport`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

/// Builds a [`Transport`] with a non-default network, crypto provider or clock (the
/// simulator uses all three).
#[derive(Debug)]
pub struct TransportBuilder {
    cfg: TransportConfig,
    network: Arc<dyn Network>,
    provider: Option<Arc<CryptoProvider>>,
    time: Option<Arc<dyn TimeProvider>>,
}

impl TransportBuilder {
    /// Uses `network` instead of real TCP and Unix sockets.
    pub fn network(mut self, network: Arc<dyn Network>) -> Self {
        self.network = network;
        self
    }

    /// Uses `provider` for TLS instead of rustls's `ring` provider.
    pub fn crypto_provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.provider = Some(provider);
        self
    }

    /// Uses `time` as TLS's clock instead of the system clock.
    pub fn time_provider(mut self, time: Arc<dyn TimeProvider>) -> Self {
        self.time = Some(time);
        self
    }

    /// Validates the configuration and builds the transport.
    pub fn build(self) -> Result<Transport, TransportError> {
        self.cfg.validate()?;
        let tls = TlsSetup::new(
            self.provider
                .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider())),
            self.time
                .unwrap_or_else(|| Arc::new(rustls::time_provider::DefaultTimeProvider)),
        )?;
        let rng = match self.cfg.rng_seed {
            Some(seed) => ChaCha20Rng::seed_from_u64(seed),
            None => ChaCha20Rng::from_os_rng(),
        };
        let inner = Arc::new(Inner {
            cfg: self.cfg,
            network: self.network,
            tls,
            rng: Mutex::new(rng),
            links: Mutex::default(),
            stop: watch::channel(false).0,
            tracked: Mutex::default(),
            listeners: Mutex::default(),
        });
        Ok(Transport {
            _owner: Some(Arc::new(Owner(inner.clone()))),
            inner,
        })
    }
}

/// The entry point: dials peers and listens for them.
///
/// Cheap to clone; clones share the configuration, the TLS certificate, the RNG and the
/// connections. The transport owns its connections, listeners and dials: when the last clone
/// is dropped (or on [`Transport::shutdown`]) every connection closes with `going away`, every
/// pending send settles and every dial and listener stops. Keep it alive as long as you use
/// its connections.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use clipsync::config::TransportConfig;
/// use clipsync::secure::SshAuthenticator;
/// use clipsync::transport::{Message, PeerInfo, Transport};
/// let auth = Arc::new(SshAuthenticator::from_files(
///     "/home/me/.ssh/id_ed25519".as_ref(),
///     "/home/me/.config/clipsync/trusted_keys".as_ref(),
/// )?);
/// let transport = Transport::new(TransportConfig::default())?;
/// // One side listens…
/// let mut listener = transport.listen(&"0.0.0.0:7700".parse()?, auth.clone()).await?;
/// tokio::spawn(async move {
///     while let Ok(mut conn) = listener.accept().await {
///         tokio::spawn(async move { while conn.receive().await.is_ok() {} });
///     }
/// });
/// // …the other dials (one attempt; `open` keeps redialling with backoff instead).
/// let peer = PeerInfo::new("desktop", vec!["192.168.1.10:7700".parse()?]);
/// let conn = transport.connect(&peer, auth).await?;
/// conn.send(Message::text("copied on the laptop")).await?; // acknowledged by the peer
/// transport.shutdown().await; // GOAWAY `going away` on every connection
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Transport {
    inner: Arc<Inner>,
    /// Held by the application's clones only (internal tasks hold `inner` alone): its drop is
    /// the transport's.
    _owner: Option<Arc<Owner>>,
}

/// Shuts the transport down when the application's last [`Transport`] goes.
#[derive(Debug)]
struct Owner(Arc<Inner>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.stop.send_replace(true);
    }
}

/// Every connection's state, to wait for at shutdown; ended ones are pruned as it grows.
#[derive(Default)]
struct Tracked {
    states: Vec<watch::Receiver<ConnectionState>>,
    prune_at: usize,
}

impl Tracked {
    fn push(&mut self, state: watch::Receiver<ConnectionState>) {
        if self.states.len() >= self.prune_at {
            self.states.retain(|s| {
                s.has_changed().is_ok() && !matches!(*s.borrow(), ConnectionState::Closed(_))
            });
            self.prune_at = (2 * self.states.len()).max(64);
        }
        self.states.push(state);
    }
}

struct Inner {
    cfg: TransportConfig,
    network: Arc<dyn Network>,
    tls: TlsSetup,
    rng: Mutex<ChaCha20Rng>,
    /// Live connections by peer key, both directions, for the simultaneous-dial tie-break.
    links: Mutex<BTreeMap<Bytes, Vec<Link>>>,
    /// True once shut down: every connection task and accept loop watches it.
    stop: watch::Sender<bool>,
    /// Every connection started, for shutdown to wait on.
    tracked: Mutex<Tracked>,
    /// The listeners' accept tasks, for shutdown to wait on (their sockets close with them).
    listeners: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// A live connection as the tie-break sees it.
struct Link {
    /// This side dialled it.
    dialed: bool,
    /// Weak, so the registry never keeps a dropped connection alive.
    commands: mpsc::WeakSender<Command>,
    /// Its state: a reconnecting link loses to a fresh one.
    state: watch::Receiver<ConnectionState>,
    /// When it was registered (its first connection authenticated).
    since: tokio::time::Instant,
}

impl Link {
    /// The tie-break's view: a link that is reconnecting carries a session only waiting for
    /// a new connection; one older than `tie_window` is established.
    fn view(&self, tie_window: std::time::Duration) -> LinkView {
        LinkView {
            dialed: self.dialed,
            stale: matches!(
                *self.state.borrow(),
                ConnectionState::Reconnecting | ConnectionState::Offline
            ),
            established: self.since.elapsed() > tie_window,
        }
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("network", &self.network)
            .field("plaintext", &self.cfg.allow_plaintext)
            .finish()
    }
}

impl Transport {
    /// A transport on real sockets with rustls's `ring` provider.
    pub fn new(cfg: TransportConfig) -> Result<Self, TransportError> {
        Self::builder(cfg).build()
    }

    /// A builder, to replace the network, crypto provider or clock.
    pub fn builder(cfg: TransportConfig) -> TransportBuilder {
        TransportBuilder {
            cfg,
            network: Arc::new(TokioNet),
            provider: None,
            time: None,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &TransportConfig {
        &self.inner.cfg
    }

    /// A handle for the transport's own tasks: it does not keep the transport alive.
    fn internal(&self) -> Transport {
        Transport {
            inner: self.inner.clone(),
            _owner: None,
        }
    }

    fn track(&self, state: &watch::Receiver<ConnectionState>) {
        self.inner
            .tracked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(state.clone());
    }

    /// Whether the transport has shut down (see [`Transport::shutdown`]).
    pub fn is_shut_down(&self) -> bool {
        *self.inner.stop.borrow()
    }

    fn check_running(&self) -> Result<(), ConnectError> {
        if self.is_shut_down() {
            return Err(ConnectError::ShutDown);
        }
        Ok(())
    }

    /// Shuts the transport down and returns when it is done: every connection says `GOAWAY`
    /// with `going away` (9) and closes, every pending send and stream settles (as delivered,
    /// or failed, or of unknown fate), every dial and redial stops, every listener stops
    /// accepting. Later `connect`, `open` and `listen` fail with [`ConnectError::ShutDown`].
    ///
    /// Each connection's close is bounded by `write_timeout` (a peer that reads nothing cannot
    /// hold it). Dropping the last clone of the transport does the same without waiting.
    ///
    /// ```no_run
    /// # async fn demo(transport: clipsync::transport::Transport) {
    /// transport.shutdown().await;
    /// assert!(transport.is_shut_down());
    /// # }
    /// ```
    pub async fn shutdown(&self) {
        self.inner.stop.send_replace(true);
        let listeners = std::mem::take(
            &mut *self
                .inner
                .listeners
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for task in listeners {
            let _ = task.await;
        }
        let states = std::mem::take(
            &mut self
                .inner
                .tracked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .states,
        );
        for mut state in states {
            let _ = state
                .wait_for(|s| matches!(s, ConnectionState::Closed(_)))
                .await;
        }
    }

    fn random<const N: usize>(&self) -> [u8; N] {
        let mut b = [0u8; N];
        // A poisoned lock only means another thread panicked mid-draw; the RNG is still fine.
        let mut rng = self.inner.rng.lock().unwrap_or_else(|p| p.into_inner());
        rng.fill_bytes(&mut b);
        b
    }

    /// Refuses plaintext (`allow_plaintext`) on an address that leaves this machine.
    fn check_plaintext(&self, addresses: &[Address]) -> Result<(), ConnectError> {
        match addresses.iter().find(|a| !a.is_local()) {
            Some(a) if self.inner.cfg.allow_plaintext => {
                Err(ConnectError::PlaintextNotLocal(a.to_string()))
            }
            _ => Ok(()),
        }
    }

    /// Connects to `peer`, trying its addresses in order, and authenticates with `auth`.
    ///
    /// A listener that closes the connection during TLS (it sheds load under a flood of
    /// connections in setup) is dialled again twice, 50 and 100 ms later.
    ///
    /// A refusal (untrusted key, bad signature) ends the attempt at once: another address of
    /// the same peer would give the same answer.
    pub async fn connect(
        &self,
        peer: &PeerInfo,
        auth: Arc<dyn Authenticator>,
    ) -> Result<Connection, ConnectError> {
        self.check_running()?;
        self.check_plaintext(&peer.addresses)?;
        let span = tracing::info_span!("connection", peer = %peer.id, role = "dialer");
        async {
            let expected_key = match &peer.key {
                Some(k) => Some(Bytes::from(
                    k.to_bytes()
                        .map_err(|e| ConnectError::Internal(e.to_string()))?,
                )),
                None => None,
            };
            // A listener that sheds load closes new connections during TLS: try again, briefly.
            let mut attempt = 0;
            let channel = loop {
                let dialled = self
                    .dial_any(
                        peer,
                        auth.as_ref(),
                        expected_key.clone(),
                        (SessionId::NONE, 0),
                    )
                    .await;
                match dialled {
                    Err(ConnectError::ClosedDuringTls(_)) if attempt < SHED_RETRIES => {
                        attempt += 1;
                        tokio::time::sleep(SHED_PAUSE * (1 << (attempt - 1))).await;
                    }
                    other => break other?,
                }
            };
            let reconnect = self.redialer(peer, &auth, expected_key);
            let mut conn =
                Connection::start(channel, self, tracing::Span::current(), None, reconnect);
            if !self.tie_break(&mut conn, &auth.public_key(), true) {
                let detail = "the peer dialled us too and its connection wins the tie-break";
                conn.close_with(ReasonCode::DuplicateConnection, detail.into())
                    .await;
                return Err(ConnectError::Refused {
                    reason: ReasonCode::DuplicateConnection,
                    by_peer: false,
                    detail: detail.into(),
                });
            }
            Ok(conn)
        }
        .instrument(span)
        .await
    }

    /// Dials `peer`'s addresses in order until one gives an authenticated channel, asking to
    /// resume `resume` (`SessionId::NONE` for a new session). A refusal (untrusted key, bad
    /// signature) ends the attempt at once: another address of the same peer would give the
    /// same answer.
    async fn dial_any(
        &self,
        peer: &PeerInfo,
        auth: &dyn Authenticator,
        expected_key: Option<Bytes>,
        resume: (SessionId, u64),
    ) -> Result<secure::Channel, ConnectError> {
        let mut last = ConnectError::NoAddress;
        for addr in &peer.addresses {
            let params = ChannelParams {
                cfg: &self.inner.cfg,
                tls: &self.inner.tls,
                auth,
                nonce: self.random(),
                new_session: SessionId::NONE,
                expected_key: expected_key.clone(),
                resume,
            };
            match secure::dial(self.inner.network.as_ref(), addr, params).await {
                Ok(channel) => return Ok(channel),
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "address failed");
                    let refused = matches!(e, ConnectError::Refused { .. });
                    last = e;
                    if refused {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    /// Registers a new connection with `peer_key` and settles simultaneous dials: when the
    /// two peers have dialled each other, the connection dialled by the peer with the smaller
    /// key (wire encoding) survives, on both sides alike (PROTOCOL.md §7, reason 13). Returns
    /// whether `conn` survives; a losing older connection is closed here.
    fn tie_break(&self, conn: &mut Connection, own_key: &Bytes, dialed: bool) -> bool {
        conn.preferred = dialed == (own_key.as_ref() < conn.peer_key.as_ref());
        let weak = conn.handles.commands.downgrade();
        let state = conn.handles.state.clone();
        self.register_link(&conn.peer_key, own_key, dialed, weak, state)
    }

    /// Registers a fresh authenticated link to a peer and applies the tie-break
    /// ([`crate::core::tie_break`]) against a link of the other direction, or a stale one:
    /// returns false if the new link loses (the caller closes it with `duplicate connection`),
    /// closes the old one if it loses (`replaced` when it was only reconnecting: the peer
    /// restarted, so its session can never resume; `duplicate connection` otherwise).
    fn register_link(
        &self,
        peer_key: &Bytes,
        own_key: &Bytes,
        dialed: bool,
        commands: mpsc::WeakSender<Command>,
        state: watch::Receiver<ConnectionState>,
    ) -> bool {
        let mut links = self.inner.links.lock().unwrap_or_else(|p| p.into_inner());
        let list = links.entry(peer_key.clone()).or_default();
        list.retain(|l| {
            l.commands.strong_count() > 0
                && !matches!(*l.state.borrow(), ConnectionState::Closed(_))
        });
        let new = LinkView {
            dialed,
            stale: false,
            established: false,
        };
        // The longest a simultaneous dial can take: a dial started just before the other link
        // stood completes within these deadlines, or not at all.
        let cfg = &self.inner.cfg;
        let tie_window = cfg.connect_timeout + cfg.handshake_timeout + cfg.auth_timeout;
        let own_smaller = own_key.as_ref() < peer_key.as_ref();
        if let Some(i) = list
            .iter()
            .position(|l| l.dialed != dialed || l.view(tie_window).stale)
        {
            let old_view = list[i].view(tie_window);
            if !tie_break(own_smaller, old_view, new) {
                return false;
            }
            let old = list.remove(i);
            let (reason, detail) = if old_view.stale || old_view.established {
                tracing::info!("the peer is back with a fresh session; closing the stale link");
                (
                    ReasonCode::Replaced,
                    "the peer came back with a new session; this one cannot resume",
                )
            } else {
                tracing::info!("simultaneous dial: closing the duplicate connection");
                (
                    ReasonCode::DuplicateConnection,
                    "both peers dialled; the other connection wins the tie-break",
                )
            };
            let _ = old.commands.upgrade().map(|c| {
                c.try_send(Command::Close {
                    reason,
                    detail: detail.into(),
                })
            });
        }
        list.push(Link {
            dialed,
            commands,
            state,
            since: tokio::time::Instant::now(),
        });
        true
    }

    /// How a dialled connection reconnects: all of `peer`'s addresses, with the per-peer
    /// backoff, resuming the session.
    fn redialer(
        &self,
        peer: &PeerInfo,
        auth: &Arc<dyn Authenticator>,
        expected_key: Option<Bytes>,
    ) -> Reconnect {
        if !self.inner.cfg.reconnect {
            return Reconnect::Never;
        }
        self.dialer(Arc::new(Mutex::new(peer.clone())), auth, expected_key)
    }

    /// Dials `peer` (all its addresses) with the per-peer backoff, asking to resume the
    /// session it is given.
    ///
    /// Each attempt reads `peer` afresh, so new addresses (a peer that moved) count from the
    /// next attempt on.
    fn dialer(
        &self,
        peer: Arc<Mutex<PeerInfo>>,
        auth: &Arc<dyn Authenticator>,
        expected_key: Option<Bytes>,
    ) -> Reconnect {
        let cfg = &self.inner.cfg;
        let (this, auth) = (self.internal(), auth.clone());
        let redial: Redial = Box::new(move |session, received| {
            let (this, peer, auth, expected_key) = (
                this.clone(),
                peer.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                auth.clone(),
                expected_key.clone(),
            );
            Box::pin(async move {
                this.dial_any(&peer, auth.as_ref(), expected_key, (session, received))
                    .await
            })
        });
        let rng = self.internal();
        let mut policy = RedialPolicy::new(cfg.backoff_policy(), cfg.max_reconnect_attempts);
        policy.connected(std::time::Duration::ZERO);
        Reconnect::Dial {
            redial,
            policy,
            draw: Box::new(move || unit_draw(u64::from_be_bytes(rng.random()))),
        }
    }

    /// Opens a connection to `peer` without waiting for it, for an application that wants a
    /// standing link to a peer rather than one connection attempt: the connection starts in
    /// [`ConnectionState::Connecting`] and dials in the background, the first attempt at once
    /// and the next ones with the configured backoff (across all of `peer`'s addresses), until
    /// one authenticates; then it behaves like one from [`Transport::connect`], reconnecting
    /// and resuming as configured.
    ///
    /// Sends and stream opens queue while it connects (`send_queue` of them, then `send`
    /// waits and `try_send` says [`SendError::Full`]) and go out, in order, once connected.
    /// It ends as [`ConnectionState::Closed`] if the peer refuses our key, and as
    /// [`ConnectionState::Offline`] then closed after `max_reconnect_attempts` failed attempts
    /// (0: it never gives up); queued sends then fail with [`SendError::Closed`] — nothing of
    /// them was sent. Closing or dropping it stops the attempts at once.
    ///
    /// `peer` must carry its key ([`PeerInfo::with_key`]): the connection stands for that
    /// peer before any handshake says who answers. Fails only without key or address.
    pub fn open(
        &self,
        peer: &PeerInfo,
        auth: Arc<dyn Authenticator>,
    ) -> Result<Connection, ConnectError> {
        self.check_running()?;
        if peer.key.is_none() {
            return Err(ConnectError::KeyRequired);
        }
        if peer.addresses.is_empty() {
            return Err(ConnectError::NoAddress);
        }
        self.open_shared(Arc::new(Mutex::new(peer.clone())), auth)
    }

    /// [`Transport::open`] of a peer whose addresses may change: each attempt reads them.
    pub(crate) fn open_shared(
        &self,
        info: Arc<Mutex<PeerInfo>>,
        auth: Arc<dyn Authenticator>,
    ) -> Result<Connection, ConnectError> {
        self.check_running()?;
        let peer = info.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let key = peer.key.as_ref().ok_or(ConnectError::KeyRequired)?;
        self.check_plaintext(&peer.addresses)?;
        let peer_key = Bytes::from(
            key.to_bytes()
                .map_err(|e| ConnectError::Internal(e.to_string()))?,
        );
        let own_key = auth.public_key();
        let peer_fingerprint = fingerprint_of_blob(&peer_key);
        let span = tracing::info_span!("connection", peer = %peer.id, role = "dialer");
        let this = self.internal();
        let (pk, ok) = (peer_key.clone(), own_key.clone());
        let pending = driver::Pending {
            dial: self.dialer(info, &auth, Some(peer_key.clone())),
            reconnect: self.inner.cfg.reconnect,
            register: Box::new(move |commands, state| {
                this.register_link(&pk, &ok, true, commands, state)
            }),
        };
        let handles =
            driver::spawn_pending(&self.inner.cfg, span, pending, self.inner.stop.subscribe());
        self.track(&handles.state);
        Ok(Connection {
            sender: ConnectionSender::new(&handles, &self.inner.cfg),
            handles,
            preferred: own_key.as_ref() < peer_key.as_ref(),
            peer_key,
            peer_fingerprint,
        })
    }

    /// Listens on `addr`; incoming connections authenticate with `auth` and come out of
    /// [`Listener::accept`].
    ///
    /// Resources are bounded in two separate budgets. Connections still in setup (TLS,
    /// upgrade, authentication) share a pool of `max_startups`, at most
    /// `per_source_max_startups` from one address, with random early drop from
    /// `max_startups_start` on; a newcomer evicts the oldest connection in setup for over a
    /// second rather than be refused, and a socket silent for `first_byte_timeout` is closed.
    /// Authenticated sessions — live, or waiting for their peer to resume — are at most
    /// `max_connections`; a resume uses its session's place, and a new session beyond the
    /// limit is refused with `limit exceeded` (a restarted peer's fresh session first replaces
    /// its old one). A flood of unauthenticated sockets therefore never locks out a peer that
    /// can authenticate, nor a session that resumes.
    pub async fn listen(
        &self,
        addr: &Address,
        auth: Arc<dyn Authenticator>,
    ) -> Result<Listener, ConnectError> {
        self.check_running()?;
        self.check_plaintext(std::slice::from_ref(addr))?;
        let mut listener =
            self.inner
                .network
                .bind(addr)
                .await
                .map_err(|source| ConnectError::Bind {
                    addr: addr.to_string(),
                    source,
                })?;
        let local = listener.local_addr().map_err(|source| ConnectError::Bind {
            addr: addr.to_string(),
            source,
        })?;
        tracing::info!(%local, "listening");
        let (tx, rx) = mpsc::channel(16);
        let transport = self.internal();
        let limit = Arc::new(Semaphore::new(self.inner.cfg.max_connections as usize));
        let cfg = &self.inner.cfg;
        let startups = Arc::new(Mutex::new(startups::Startups::new(startups::Limits {
            start: cfg.max_startups_start,
            rate: cfg.max_startups_rate,
            full: cfg.max_startups,
            per_source: cfg.per_source_max_startups,
        })));
        let mut stop = self.inner.stop.subscribe();
        let task = tokio::spawn(
            async move {
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => tracing::info!("the transport shuts down; listener stops"),
                    () = transport.accept_loop(listener.as_mut(), auth, limit, startups, tx) => {}
                }
            }
            .in_current_span(),
        );
        let abort = task.abort_handle();
        {
            let mut listeners = self
                .inner
                .listeners
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            listeners.retain(|t| !t.is_finished());
            listeners.push(task);
        }
        Ok(Listener {
            rx,
            local,
            task: abort,
        })
    }

    async fn accept_loop(
        &self,
        listener: &mut dyn NetListener,
        auth: Arc<dyn Authenticator>,
        limit: Arc<Semaphore>,
        startups: Arc<Mutex<startups::Startups<oneshot::Sender<()>>>>,
        tx: mpsc::Sender<Result<Connection, AcceptError>>,
    ) {
        // The live connection of each peer key: a new authenticated connection from the same
        // key replaces the old one, which is most likely half-dead (a laptop that slept and
        // came back on another network; Syncthing #9337 kept such "already connected"
        // sessions and refused the live one).
        // Weak senders: the map must not keep a dropped connection alive.
        let live: Arc<std::sync::Mutex<BTreeMap<Bytes, mpsc::WeakSender<Command>>>> =
            Arc::default();
        // Sessions that may be resumed: id → (peer key, where to hand a new connection).
        let sessions: Arc<std::sync::Mutex<sessions::Sessions>> = Arc::default();
        loop {
            let (stream, peer_addr) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    if tx.is_closed() {
                        return;
                    }
                    // Transient (EMFILE, aborted connection): pause briefly, keep serving.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            // A place in the pool of connections in setup, or an immediate close.
            let (evict_tx, evicted) = oneshot::channel();
            let draw = f64::from(u32::from_be_bytes(self.random())) / (f64::from(u32::MAX) + 1.0);
            let (stream, first_byte) = startups::FirstByte::new(stream);
            let admission = startups.lock().unwrap_or_else(|p| p.into_inner()).admit(
                startups::source_of(&peer_addr),
                tokio::time::Instant::now(),
                draw,
                first_byte.clone(),
                evict_tx,
            );
            let in_setup = match admission {
                startups::Admission::Refuse(why) => {
                    tracing::info!(%peer_addr, "connection closed on arrival: {why}");
                    drop(stream);
                    continue;
                }
                startups::Admission::Admit { id, evicted } => {
                    if let Some(evict) = evicted {
                        let _ = evict.send(());
                    }
                    startups::InSetup {
                        startups: startups.clone(),
                        id,
                    }
                }
            };
            let limit = limit.clone();
            let this = self.internal();
            let auth = auth.clone();
            let tx = tx.clone();
            let live = live.clone();
            let sessions = sessions.clone();
            let span = tracing::info_span!("connection", peer = %peer_addr, role = "listener");
            tokio::spawn(
                async move {
                    let params = ChannelParams {
                        cfg: &this.inner.cfg,
                        tls: &this.inner.tls,
                        auth: auth.as_ref(),
                        nonce: this.random(),
                        new_session: SessionId(this.random()),
                        expected_key: None,
                        resume: (SessionId::NONE, 0),
                    };
                    let new_session = params.new_session;
                    let cfg = &this.inner.cfg;
                    let setup = secure::accept(Box::new(stream), params);
                    let setup = async {
                        tokio::pin!(setup);
                        tokio::select! {
                            biased;
                            r = &mut setup => return Some(r),
                            () = tokio::time::sleep(cfg.first_byte_timeout) => {}
                        }
                        if first_byte.has_spoken() {
                            Some(setup.await)
                        } else {
                            tracing::info!("no byte within first_byte_timeout; closed");
                            None
                        }
                    };
                    let accepted = tokio::select! {
                        biased;
                        _ = evicted => {
                            tracing::info!("evicted from setup by a newer connection");
                            return;
                        }
                        r = setup => match r {
                            Some(r) => r,
                            None => return,
                        },
                    };
                    let result = match accepted {
                        Ok(mut channel) => {
                            let asked = match channel.handshake.resume {
                                ResumeAnswer::Asked(r) => r.session,
                                _ => SessionId::NONE,
                            };
                            // A known session from the same key: hand the connection over.
                            let resumer = (!asked.is_none()).then(|| {
                                sessions
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .resumer(asked, &channel.handshake.peer_key)
                            });
                            let lost_reason = match resumer {
                                Some(Err(reason)) => reason,
                                _ => ReasonCode::SessionUnknown,
                            };
                            if let Some(Ok(tx)) = resumer {
                                // The session's task takes the connection (its own place in
                                // `max_connections` covers it), within the handshake deadline;
                                // meanwhile this connection keeps its place in setup.
                                tracing::info!("session resumes on a new connection");
                                match tokio::time::timeout(cfg.handshake_timeout, tx.reserve()).await {
                                    Ok(Ok(slot)) => slot.send(channel),
                                    _ => {
                                        secure::handshake::refuse_resume(
                                            &mut channel.ws,
                                            ReasonCode::HandshakeTimeout,
                                            "the session did not take the connection in time".into(),
                                        )
                                        .await;
                                    }
                                }
                                drop(in_setup);
                                return;
                            }
                            // A new session needs a place among the authenticated ones. A
                            // restarted peer's old session gives its place to the new one.
                            let permit = match limit.clone().try_acquire_owned() {
                                Ok(p) => Some(p),
                                Err(_) => {
                                    let old = live
                                        .lock()
                                        .unwrap_or_else(|p| p.into_inner())
                                        .get(&channel.handshake.peer_key)
                                        .and_then(mpsc::WeakSender::upgrade);
                                    match old {
                                        Some(old) => {
                                            let _ = old
                                                .send(Command::Close {
                                                    reason: ReasonCode::Replaced,
                                                    detail: "a new session from the same peer".into(),
                                                })
                                                .await;
                                            tokio::time::timeout(
                                                cfg.handshake_timeout,
                                                limit.clone().acquire_owned(),
                                            )
                                            .await
                                            .ok()
                                            .and_then(Result::ok)
                                        }
                                        None => None,
                                    }
                                }
                            };
                            let Some(permit) = permit else {
                                let detail = format!(
                                    "the listener holds its limit of {} sessions",
                                    cfg.max_connections
                                );
                                tracing::warn!("{detail}; new session refused");
                                secure::handshake::refuse_resume(
                                    &mut channel.ws,
                                    ReasonCode::LimitExceeded,
                                    detail.clone(),
                                )
                                .await;
                                let error = ConnectError::Refused {
                                    reason: ReasonCode::LimitExceeded,
                                    by_peer: false,
                                    detail,
                                };
                                let _ = tx.send(Err(AcceptError::Handshake { peer_addr, error })).await;
                                return;
                            };
                            drop(in_setup);
                            let answer = if asked.is_none() {
                                Frame::Resumed(crate::wire::Resumed {
                                    session: new_session,
                                    last_received: 0,
                                })
                            } else {
                                Frame::SessionLost(crate::wire::SessionLost {
                                    old_session: asked,
                                    new_session,
                                    reason: lost_reason,
                                })
                            };
                            if let Err(error) =
                                secure::handshake::answer_resume(&mut channel.ws, answer).await
                            {
                                let _ = tx
                                    .send(Err(AcceptError::Handshake { peer_addr, error }))
                                    .await;
                                return;
                            }
                            channel.handshake.session = new_session;
                            let peer_key = channel.handshake.peer_key.clone();
                            let (reconnect, resumer) = if this.inner.cfg.reconnect {
                                let (rtx, resumptions) = mpsc::channel(1);
                                let await_ = Reconnect::Await {
                                    resumptions,
                                    window: this.inner.cfg.resume_window,
                                };
                                (await_, Some(rtx))
                            } else {
                                (Reconnect::Never, None)
                            };
                            let mut conn = Connection::start(
                                channel,
                                &this,
                                tracing::Span::current(),
                                Some(permit),
                                reconnect,
                            );
                            if let Some(rtx) = resumer {
                                sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(
                                    new_session,
                                    peer_key,
                                    rtx,
                                    conn.state(),
                                );
                            }
                            if !this.tie_break(&mut conn, &auth.public_key(), false) {
                                tracing::info!("simultaneous dial: this incoming connection loses the tie-break");
                                conn.close_with(
                                    ReasonCode::DuplicateConnection,
                                    "both peers dialled; our own connection wins the tie-break".into(),
                                )
                                .await;
                                return;
                            }
                            let old = {
                                let mut live = live.lock().unwrap_or_else(|p| p.into_inner());
                                live.retain(|_, c| c.strong_count() > 0);
                                live.insert(conn.peer_key.clone(), conn.handles.commands.downgrade())
                            };
                            if let Some(old) = old.and_then(|w| w.upgrade()) {
                                tracing::info!("replacing the previous connection of this peer");
                                let _ = old
                                    .send(Command::Close {
                                        reason: ReasonCode::Replaced,
                                        detail: "a new connection from the same peer".into(),
                                    })
                                    .await;
                            }
                            Ok(conn)
                        }
                        Err(error) => {
                            tracing::warn!(error = %error, "incoming connection refused");
                            Err(AcceptError::Handshake { peer_addr, error })
                        }
                    };
                    let _ = tx.send(result).await;
                }
                .instrument(span),
            );
            // Let the new connection's task read its socket before the next accept: under a
            // flood the accept loop would otherwise outrun the setup tasks, and connections
            // whose task has not read yet can be neither heard nor taken for silent.
            tokio::task::yield_now().await;
        }
    }
}

/// How often [`Transport::connect`] dials again after the listener closed the connection during
/// TLS (it sheds load), and the pause before the first retry (doubled for the next).
const SHED_RETRIES: u32 = 2;
const SHED_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Why [`Listener::accept`] returned no connection this time. The listener keeps running
/// after a [`AcceptError::Handshake`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// An incoming connection failed its setup (TLS, upgrade, authentication).
    #[error("connection from {peer_addr} refused: {error}")]
    Handshake {
        /// Where it came from.
        peer_addr: String,
        /// Why it failed; for refusals, the reason code the peer was told.
        error: ConnectError,
    },
    /// The listener has stopped.
    #[error("listener closed")]
    Closed,
}

/// Incoming authenticated connections. Dropping it stops listening; connections already
/// accepted live on.
///
/// ```no_run
/// # async fn demo(mut listener: clipsync::transport::Listener) {
/// println!("listening on {}", listener.local_addr());
/// while let Ok(conn) = listener.accept().await {
///     println!("{} connected", conn.peer_fingerprint());
///     tokio::spawn(async move {
///         let (_tx, mut rx) = conn.split();
///         while let Ok(incoming) = rx.receive().await { /* ... */ }
///     });
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct Listener {
    rx: mpsc::Receiver<Result<Connection, AcceptError>>,
    local: Address,
    task: tokio::task::AbortHandle,
}

impl Listener {
    /// The next incoming connection, or why one failed.
    pub async fn accept(&mut self) -> Result<Connection, AcceptError> {
        self.rx.recv().await.unwrap_or(Err(AcceptError::Closed))
    }

    /// The bound address (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> &Address {
        &self.local
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A connection to one peer: authenticated (from [`Transport::connect`] or
/// [`Listener::accept`]), or on its way to be (from [`Transport::open`]).
///
/// Dropping it closes the connection (reason `normal`); messages not yet acknowledged are
/// reported as of unknown fate to their senders.
///
/// ```no_run
/// # async fn demo(mut conn: clipsync::transport::Connection) -> Result<(), Box<dyn std::error::Error>> {
/// use clipsync::transport::{ConnectionState, Incoming, Message};
/// let mut state = conn.state();
/// tokio::spawn(async move {
///     while state.changed().await.is_ok() {
///         if let ConnectionState::Closed(cause) = &*state.borrow() {
///             println!("closed: {cause}");
///         }
///     }
/// });
/// conn.send(Message::text("hello")).await?;
/// match conn.receive().await? {
///     Incoming::Message(m) => println!("{}: {} bytes", m.content_type, m.payload.len()),
///     Incoming::Stream(s) => println!("a stream of {:?} bytes", s.total_len()),
///     _ => {} // non_exhaustive: later versions may add kinds
/// }
/// conn.close().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Connection {
    handles: Handles,
    sender: ConnectionSender,
    peer_key: Bytes,
    peer_fingerprint: String,
    /// Set by the tie-break: whether this is the connection it keeps.
    preferred: bool,
}

impl Connection {
    fn start(
        channel: secure::Channel,
        transport: &Transport,
        span: tracing::Span,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
        reconnect: Reconnect,
    ) -> Self {
        let peer_key = channel.handshake.peer_key.clone();
        let peer_fingerprint = fingerprint_of_blob(&peer_key);
        span.record("peer_key", peer_fingerprint.as_str());
        let cfg = &transport.inner.cfg;
        let stop = transport.inner.stop.subscribe();
        let handles = driver::spawn(channel, cfg, span, permit, reconnect, stop);
        transport.track(&handles.state);
        Self {
            sender: ConnectionSender::new(&handles, cfg),
            handles,
            peer_key,
            peer_fingerprint,
            preferred: true,
        }
    }

    /// A sending half of this connection: cloneable, so one task can send (messages and
    /// streams) while another [`Connection::receive`]s. The connection stays open while a
    /// sender lives, even after the `Connection` is dropped; [`Connection::close`] ends it for
    /// all of them.
    ///
    /// ```no_run
    /// # async fn demo(mut conn: clipsync::transport::Connection) {
    /// use clipsync::transport::Message;
    /// let sender = conn.sender();
    /// tokio::spawn(async move { sender.send(Message::text("from another task")).await });
    /// while let Ok(incoming) = conn.receive().await { /* ... */ }
    /// # }
    /// ```
    pub fn sender(&self) -> ConnectionSender {
        self.sender.clone()
    }

    /// Splits the connection into a cloneable sending half and the receiving half, to send
    /// and receive from different tasks at the same time.
    ///
    /// ```no_run
    /// # async fn demo(conn: clipsync::transport::Connection) {
    /// use clipsync::transport::{Incoming, Message};
    /// let (tx, mut rx) = conn.split();
    /// tokio::spawn(async move { tx.send(Message::text("hello")).await });
    /// while let Ok(incoming) = rx.receive().await {
    ///     if let Incoming::Message(m) = incoming {
    ///         println!("{} bytes of {}", m.payload.len(), m.content_type);
    ///     }
    /// }
    /// # }
    /// ```
    pub fn split(self) -> (ConnectionSender, ConnectionReceiver) {
        (self.sender(), ConnectionReceiver { conn: self })
    }

    /// See [`ConnectionSender::send`].
    pub async fn send(&self, message: Message) -> Result<(), SendError> {
        self.sender.send(message).await
    }

    /// See [`ConnectionSender::send_message`].
    pub async fn send_message(&self, message: Message) -> Result<(), SendError> {
        self.sender.send_message(message).await
    }

    /// See [`ConnectionSender::try_send`].
    pub fn try_send(
        &self,
        message: Message,
    ) -> Result<impl Future<Output = Result<(), SendError>> + use<>, SendError> {
        self.sender.try_send(message)
    }

    /// See [`ConnectionSender::open_stream`].
    pub async fn open_stream(
        &self,
        content_type: impl Into<String>,
        total_len: Option<u64>,
    ) -> Result<StreamSender, SendError> {
        self.sender.open_stream(content_type, total_len).await
    }

    /// See [`ConnectionSender::open_stream_hashed`].
    pub async fn open_stream_hashed(
        &self,
        content_type: impl Into<String>,
        total_len: u64,
        hash: [u8; 32],
    ) -> Result<StreamSender, SendError> {
        self.sender
            .open_stream_hashed(content_type, total_len, hash)
            .await
    }

    /// See [`ConnectionSender::open_stream_with`].
    pub async fn open_stream_with(&self, spec: StreamSpec) -> Result<StreamSender, SendError> {
        self.sender.open_stream_with(spec).await
    }

    /// See [`ConnectionSender::send_stream`].
    pub async fn send_stream<R: tokio::io::AsyncRead + Unpin>(
        &self,
        content_type: impl Into<String>,
        total_len: Option<u64>,
        reader: &mut R,
    ) -> Result<u64, SendError> {
        self.sender
            .send_stream(content_type, total_len, reader)
            .await
    }

    /// The next message or stream from the peer, in the order the peer sent them; after the
    /// last one, why the connection ended.
    pub async fn receive(&mut self) -> Result<Incoming, ConnectionClosed> {
        match self.handles.incoming.recv().await {
            Some(m) => Ok(m),
            None => Err(ConnectionClosed(self.cause())),
        }
    }

    /// The connection's state, to watch: connecting (from [`Transport::open`]), connected,
    /// degraded, reconnecting, offline, closed (with its cause).
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.handles.state.clone()
    }

    /// Round-trip time and degradation, to watch.
    pub fn health(&self) -> watch::Receiver<Health> {
        self.handles.health.clone()
    }

    /// The peer's SSH public key, wire encoding.
    pub fn peer_key(&self) -> &Bytes {
        &self.peer_key
    }

    /// The peer key's `SHA256:…` fingerprint.
    pub fn peer_fingerprint(&self) -> &str {
        &self.peer_fingerprint
    }

    /// Whether this connection is the one the simultaneous-dial tie-break keeps: the one
    /// dialled by the peer whose key (wire encoding) is smaller (PROTOCOL.md §7, reason 13).
    ///
    /// Two peers that dial each other at the same time each hold two connections for a moment;
    /// the transport closes the other one with reason 13 as soon as it sees both. An
    /// application that dials a peer which also dials it should send on the preferred one: a
    /// send on the other may end as of unknown fate when that connection is closed.
    pub fn wins_tie_break(&self) -> bool {
        self.preferred
    }

    /// Closes gracefully with reason `normal`: says `GOAWAY` to the peer, closes the
    /// WebSocket with code 4000, and waits for the connection's task to finish.
    ///
    /// What the peer delivered that the application has not taken yet is dropped, although
    /// the peer's sends of it settled as delivered (the transport had it): an application that
    /// must not lose it closes with [`Connection::close_and_drain`] instead.
    pub async fn close(self) {
        self.close_with(ReasonCode::Normal, String::new()).await;
    }

    /// Closes with a given reason and detail (as [`Connection::close`]).
    pub async fn close_with(self, reason: ReasonCode, detail: String) {
        self.closing(reason, detail, false).await;
    }

    /// Closes as [`Connection::close`] does, and returns what the peer delivered that the
    /// application had not taken yet, in the order the peer sent it: the peer counts those as
    /// delivered (its sends settled, and the `GOAWAY` acknowledges the rest), so they are the
    /// application's. A stream among them that had arrived whole still reads to its verified
    /// end; one cut short by the close ends with an error.
    ///
    /// ```no_run
    /// # async fn demo(conn: clipsync::transport::Connection) {
    /// for item in conn.close_and_drain().await {
    ///     if let Some(m) = item.into_message() {
    ///         println!("{} bytes taken on the way out", m.payload.len());
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn close_and_drain(self) -> Vec<Incoming> {
        self.closing(ReasonCode::Normal, String::new(), true).await
    }

    /// Closes as [`Connection::close_with`] does, and returns what the peer delivered that the
    /// application had not taken yet, in order (see [`Connection::close_and_drain`]).
    pub(crate) async fn close_collecting(
        self,
        reason: ReasonCode,
        detail: String,
    ) -> Vec<Incoming> {
        self.closing(reason, detail, true).await
    }

    /// Says `GOAWAY` with `reason`, lets the task end, and waits for it; with `collect`, takes
    /// what it still hands over on the way, otherwise lets it deliver to nobody.
    async fn closing(mut self, reason: ReasonCode, detail: String, collect: bool) -> Vec<Incoming> {
        if let Some(closer) = self.handles.closer.take() {
            // Still connecting: stop at once, whatever is queued.
            let _ = closer.send((reason, detail.clone()));
        }
        let _ = self
            .handles
            .commands
            .send(Command::Close { reason, detail })
            .await;
        let Handles {
            commands,
            mut incoming,
            task,
            ..
        } = self.handles;
        // Senders still held elsewhere must not keep the task waiting for more commands.
        drop(self.sender);
        drop(commands);
        let mut items = Vec::new();
        if collect {
            // The task ends once the connection closed and its deliveries are handed over.
            while let Some(item) = incoming.recv().await {
                items.push(item);
            }
        }
        drop(incoming);
        if let Some(task) = task {
            let _ = task.await;
        }
        items
    }

    fn cause(&self) -> CloseCause {
        cause_of(&self.handles.state)
    }
}

/// The receiving half of a [`Connection`], from [`Connection::split`]: receive in one task
/// while [`ConnectionSender`]s send from others. Dropping it closes the connection for all of
/// them, as dropping the `Connection` would.
#[derive(Debug)]
pub struct ConnectionReceiver {
    conn: Connection,
}

impl ConnectionReceiver {
    /// See [`Connection::receive`].
    pub async fn receive(&mut self) -> Result<Incoming, ConnectionClosed> {
        self.conn.receive().await
    }

    /// See [`Connection::state`].
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.conn.state()
    }

    /// See [`Connection::health`].
    pub fn health(&self) -> watch::Receiver<Health> {
        self.conn.health()
    }

    /// See [`Connection::peer_key`].
    pub fn peer_key(&self) -> &Bytes {
        self.conn.peer_key()
    }

    /// See [`Connection::peer_fingerprint`].
    pub fn peer_fingerprint(&self) -> &str {
        self.conn.peer_fingerprint()
    }

    /// See [`Connection::close`].
    pub async fn close(self) {
        self.conn.close().await;
    }

    /// See [`Connection::close_with`].
    pub async fn close_with(self, reason: ReasonCode, detail: String) {
        self.conn.close_with(reason, detail).await;
    }

    /// See [`Connection::close_and_drain`].
    pub async fn close_and_drain(self) -> Vec<Incoming> {
        self.conn.close_and_drain().await
    }
}

impl Incoming {
    /// The message, if this is one.
    pub fn into_message(self) -> Option<Message> {
        match self {
            Incoming::Message(m) => Some(m),
            Incoming::Stream(_) => None,
        }
    }

    /// The payload as a message, reading a stream whole (refusing more than `max` bytes).
    pub async fn into_bytes(self, max: usize) -> Result<Message, StreamError> {
        match self {
            Incoming::Message(m) => Ok(m),
            Incoming::Stream(s) => {
                let content_type = s.content_type().to_string();
                let metadata = s.metadata().clone();
                let payload = s.read_to_end(max).await?;
                Ok(Message {
                    content_type,
                    metadata,
                    payload,
                })
            }
        }
    }
}
