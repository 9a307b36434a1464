//! What runs inside the simulated hosts: the production transport, configured from the
//! scenario and the seed, and the workload that drives it. What the hosts observe goes into
//! the [`Log`], which the invariants read after the run.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clipsync::config::TransportConfig;
use clipsync::error::SendError;
use clipsync::secure::SshAuthenticator;
use clipsync::transport::{
    AcceptError, Connection, ConnectionSender, ConnectionState, Incoming, Message, PeerInfo,
    Transport,
};
use clipsync::wire::ReasonCode;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use tokio::sync::watch;

use crate::TurmoilNet;
use crate::crypto::{SimTime, derive, derive_u64, seeded_provider};
use crate::link::Shaper;
use crate::scenario::Scenario;

/// The port every simulated server listens on.
pub const PORT: u16 = 7070;
/// The content type of workload messages.
pub const CONTENT_TYPE: &str = "application/x-clipsync-sim";
/// The largest stream the server reads into memory.
const MAX_STREAM: usize = 64 << 20;

/// The fate of one send, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Acknowledged by the peer.
    Delivered,
    /// Failed, with the transport's reason.
    Failed(String),
}

/// One send.
#[derive(Clone, Debug)]
pub struct SendRecord {
    /// When `send` was called.
    pub issued: Duration,
    /// When and how it settled (None: still pending when the run ended).
    pub settled: Option<(Duration, Settled)>,
}

/// One connection attempt by a client.
#[derive(Clone, Debug)]
pub struct ConnectRecord {
    /// When it ended.
    pub at: Duration,
    /// Ok, or the reason code (if a refusal) and the message.
    pub result: Result<(), (Option<ReasonCode>, String)>,
}

/// Everything the hosts observed.
#[derive(Clone, Debug, Default)]
pub struct Log {
    /// Sends by (client, message id).
    pub sent: BTreeMap<(String, u64), SendRecord>,
    /// Deliveries at the server, in arrival order: (client, message id, time).
    pub delivered: Vec<(String, u64, Duration)>,
    /// Client sends: which of the client's connections (counted from 1) each was issued on.
    /// Order is promised within one connection, across all its reconnects and resumes, not
    /// between two connections the application made one after the other (after a clean close,
    /// the server's application may still be taking the old one's messages).
    pub connection_of: BTreeMap<(String, u64), u32>,
    /// Connection attempts by client, in order.
    pub connects: BTreeMap<String, Vec<ConnectRecord>>,
    /// Mutual workloads: each host's connections to the other at the end of the run.
    pub links: BTreeMap<String, Vec<LinkRecord>>,
    /// `both_ways` workloads: the server's senders back to clients, by name: (incarnation,
    /// client, finished).
    pub back: BTreeMap<String, (u32, String, bool)>,
    /// How many times the server started.
    pub server_incarnations: u32,
    /// The server's incarnations that ended in a graceful restart (the others that ended,
    /// ended in a crash).
    pub graceful: std::collections::BTreeSet<u32>,
    /// How connections ended: (host, cause), for every connection either side held.
    pub closes: Vec<(String, clipsync::error::CloseCause)>,
    /// Mesh scenarios: what the peers did.
    pub mesh: crate::mesh::MeshLog,
}

/// How long a client waits at its end for the server's application to take one more of its
/// acknowledged messages (longer than any stall a scenario draws).
const SERVED_PATIENCE: Duration = Duration::from_secs(10);

/// Waits (in simulated time) until the server's application has taken every message of
/// `client`'s that the transport acknowledged (but those a later server crash excuses), so
/// that a run does not end while a slow or stalled application still holds them. It gives up
/// once the application has taken none for [`SERVED_PATIENCE`]: a message the transport lost
/// is then reported by `exactly-once-in-order`, not as a run that never finished.
async fn wait_until_served(log: &SharedLog, client: &str) {
    let mut last_progress = (now(), usize::MAX);
    loop {
        let (taken_count, pending) = with_log(log, |l| {
            let taken: std::collections::BTreeSet<u64> = l
                .delivered
                .iter()
                .filter(|(c, _, _)| c == client)
                .map(|(_, id, _)| *id)
                .collect();
            let pending = l.sent.iter().any(|((c, id), rec)| {
                c == client
                    && matches!(rec.settled, Some((_, Settled::Delivered)))
                    && !taken.contains(id)
                    && !l.mesh.crashes.iter().any(|(_, at)| *at >= rec.issued)
            });
            (taken.len(), pending)
        });
        if !pending {
            return;
        }
        if taken_count != last_progress.1 {
            last_progress = (now(), taken_count);
        } else if now().saturating_sub(last_progress.0) >= SERVED_PATIENCE {
            tracing::debug!(target: "clipsync_sim", "acknowledged messages still untaken");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Records how `state`'s connection ends, at `host`.
fn watch_close(log: &SharedLog, host: &str, mut state: watch::Receiver<ConnectionState>) {
    let (log, host) = (log.clone(), host.to_string());
    tokio::spawn(async move {
        loop {
            if let ConnectionState::Closed(cause) = &*state.borrow_and_update() {
                let cause = cause.clone();
                with_log(&log, |l| l.closes.push((host, cause)));
                return;
            }
            if state.changed().await.is_err() {
                return;
            }
        }
    });
}

/// One connection between the two hosts of a mutual workload, as it stood at the end.
#[derive(Clone, Debug)]
pub struct LinkRecord {
    /// This host dialled it.
    pub dialed: bool,
    /// The tie-break keeps it.
    pub preferred: bool,
    /// Not closed.
    pub live: bool,
}

/// The shared [`Log`].
pub type SharedLog = Arc<Mutex<Log>>;

pub(crate) fn with_log<T>(log: &SharedLog, f: impl FnOnce(&mut Log) -> T) -> T {
    f(&mut log.lock().unwrap_or_else(|p| p.into_inner()))
}

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// Test-only switches that break the harness on purpose, to prove the invariants catch it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sabotage {
    /// The server forgets to record the delivery of the first client's message 3.
    pub drop_one_delivery: bool,
    /// The server's application panics when the first client's message 3 arrives.
    pub panic_on_delivery: bool,
}

/// The transport configuration for `host`: defaults, the scenario's overrides, a seed
/// derived from the root seed.
pub fn transport_config(s: &Scenario, seed: u64, host: &str) -> Result<TransportConfig, String> {
    let mut table = s.config.clone();
    for (key, [lo, hi]) in &s.config_draw {
        let span = hi.saturating_sub(*lo).max(0) as u64 + 1;
        let v = lo + (derive_u64(seed, &format!("config/{key}")) % span) as i64;
        table.insert(key.clone(), toml::Value::Integer(v));
    }
    let mut cfg =
        TransportConfig::from_toml_str(&toml::to_string(&table).map_err(|e| e.to_string())?)
            .map_err(|e| format!("[config] with [config_draw]: {e}"))?;
    cfg.rng_seed = Some(derive_u64(seed, &format!("rng/{host}")));
    Ok(cfg)
}

/// The host's key, derived from the seed and its name.
pub fn host_key(seed: u64, host: &str) -> ssh_key::PrivateKey {
    SshAuthenticator::ed25519_from_seed(derive(seed, &format!("key/{host}")))
}

pub(crate) fn build_transport(
    s: &Scenario,
    seed: u64,
    host: &str,
    incarnation: u32,
) -> Result<Transport, String> {
    let cfg = transport_config(s, seed, &format!("{host}#{incarnation}"))?;
    let model = s.link.model();
    let net = if model.is_active() {
        TurmoilNet::shaped(Shaper::new(
            model,
            derive(seed, &format!("link/{host}#{incarnation}")),
        ))
    } else {
        TurmoilNet::default()
    };
    Transport::builder(cfg)
        .network(Arc::new(net))
        .crypto_provider(seeded_provider(derive(
            seed,
            &format!("tls/{host}#{incarnation}"),
        )))
        .time_provider(Arc::new(SimTime))
        .build()
        .map_err(|e| e.to_string())
}

/// Registers the scenario's hosts on `sim`.
pub fn register(
    sim: &mut turmoil::Sim<'_>,
    s: &Scenario,
    seed: u64,
    log: &SharedLog,
    sabotage: Sabotage,
) {
    if s.is_mesh() {
        crate::mesh::register(sim, s, seed, log);
        return;
    }
    if s.workload.mutual {
        register_mutual(sim, s, seed, log, sabotage);
        return;
    }
    let server = s.server().to_string();
    let server_key = host_key(seed, &server);
    let clients: Vec<(usize, String, bool)> = s
        .clients()
        .enumerate()
        .map(|(i, h)| (i, h.name.clone(), h.trusted))
        .collect();
    let trusted: Vec<ssh_key::PublicKey> = clients
        .iter()
        .filter(|(_, _, t)| *t)
        .map(|(_, n, _)| host_key(seed, n).public_key().clone())
        .collect();
    let names: Vec<String> = clients.iter().map(|(_, n, _)| n.clone()).collect();
    let trusted_names: Vec<String> = clients
        .iter()
        .filter(|(_, _, t)| *t)
        .map(|(_, n, _)| n.clone())
        .collect();

    // The server: a host, so it can crash and bounce. Each start is a new incarnation with
    // fresh state, as a restarted process would have.
    let incarnations = Arc::new(AtomicU32::new(0));
    let scenario = s.clone();
    let slog = log.clone();
    let sname = server.clone();
    let skey = server_key.clone();
    sim.host(server.as_str(), move || {
        let scenario = scenario.clone();
        let log = slog.clone();
        let name = sname.clone();
        let key = skey.clone();
        let trusted = trusted.clone();
        let names = names.clone();
        let trusted_names = trusted_names.clone();
        let incarnations = incarnations.clone();
        async move {
            let wire_keys: Vec<Vec<u8>> = trusted
                .iter()
                .map(|k| k.to_bytes().unwrap_or_default())
                .collect();
            let mut restarts = crate::process::restart_requests(&name);
            // One round per incarnation; a graceful restart starts the next one at once.
            loop {
                let incarnation = incarnations.fetch_add(1, Ordering::Relaxed);
                tracing::info!(target: "clipsync_sim", incarnation, "server start");
                with_log(&log, |l| l.server_incarnations = incarnation + 1);
                let transport = build_transport(&scenario, seed, &name, incarnation)?;
                let auth = Arc::new(SshAuthenticator::new(key.clone(), trusted.clone())?);
                let addr = format!("0.0.0.0:{PORT}").parse()?;
                let mut listener = transport.listen(&addr, auth).await?;
                let mut accepted: BTreeMap<String, u32> = BTreeMap::new();
                loop {
                    let accepted_conn = tokio::select! {
                        biased;
                        _ = restarts.changed() => break,
                        r = listener.accept() => r,
                    };
                    match accepted_conn {
                        Ok(conn) => {
                            watch_close(&log, &name, conn.state());
                            let client = wire_keys
                                .iter()
                                .position(|k| k.as_slice() == conn.peer_key().as_ref())
                                .and_then(|i| trusted_names.get(i).cloned());
                            if let (true, Some(client)) = (scenario.workload.both_ways, client) {
                                let n = accepted.entry(client.clone()).or_default();
                                *n += 1;
                                let back = Back {
                                    name: back_name(&name, incarnation, *n, &client),
                                    index: back_index(incarnation, *n),
                                    incarnation,
                                    client,
                                };
                                let w = scenario.workload.clone();
                                let sender = conn.sender();
                                let state = conn.state();
                                tokio::spawn(send_back(sender, state, w, seed, log.clone(), back));
                            }
                            spawn_reader(conn, &scenario, seed, &log, &names, sabotage);
                        }
                        Err(AcceptError::Closed) => return Ok(()),
                        Err(_) => {} // logged by the transport
                    }
                }
                // A graceful restart: every connection says GOAWAY and every send settles; the
                // application keeps taking what its old connections delivered (their tasks run
                // on) while the next incarnation starts.
                tracing::info!(target: "clipsync_sim", incarnation, "server shuts down to restart");
                transport.shutdown().await;
                drop(listener);
                with_log(&log, |l| l.graceful.insert(incarnation));
            }
        }
    });

    for (index, name, trusted_client) in clients {
        let scenario = s.clone();
        let log = log.clone();
        let server = server.clone();
        let own = host_key(seed, &name);
        let server_public = server_key.public_key().clone();
        sim.client(name.clone().as_str(), async move {
            let transport = build_transport(&scenario, seed, &name, 0)?;
            let auth = Arc::new(SshAuthenticator::new(own, vec![server_public.clone()])?);
            let peer = PeerInfo::new(server.clone(), vec![format!("{server}:{PORT}").parse()?])
                .with_key(server_public);
            let w = &scenario.workload;
            let mut rng = ChaCha20Rng::from_seed(derive(seed, &format!("workload/{name}")));
            let mut pick = |r: [u64; 2]| r[0] + rng.next_u64() % (r[1] - r[0] + 1);
            let mut conn = None;
            // Connections made so far (order is promised within one).
            let mut connections = 0u32;
            let mut attempts = 0;
            let mut id = 1;
            let mut in_flight: VecDeque<tokio::task::JoinHandle<bool>> = VecDeque::new();
            let mut background = None;
            while id <= w.messages {
                if !trusted_client && attempts >= w.messages {
                    break;
                }
                if conn.is_none() {
                    attempts += 1;
                    let result = if w.open && trusted_client {
                        transport.open(&peer, auth.clone())
                    } else {
                        transport.connect(&peer, auth.clone()).await
                    };
                    let record = ConnectRecord {
                        at: now(),
                        result: match &result {
                            Ok(_) => Ok(()),
                            Err(e) => Err((e.reason(), e.to_string())),
                        },
                    };
                    tracing::debug!(target: "clipsync_sim", ok = record.result.is_ok(), "connect attempt");
                    with_log(&log, |l| l.connects.entry(name.clone()).or_default().push(record));
                    match result {
                        Ok(c) if trusted_client => {
                            connections += 1;
                            watch_close(&log, &name, c.state());
                            let cc = ClientConn::new(c, w.both_ways, &log, &server, &name);
                            if w.background_stream > 0 && background.is_none() {
                                let (log, name, sender, size) =
                                    (log.clone(), name.clone(), cc.sender.clone(), w.background_stream);
                                with_log(&log, |l| l.connection_of.insert((name.clone(), 0), connections));
                                background = Some(tokio::spawn(async move {
                                    let send = send_stream(&sender, index, 0, size);
                                    logged_send(&log, &name, 0, send).await.is_ok()
                                }));
                            }
                            conn = Some(cc)
                        }
                        Ok(c) => c.close().await,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(w.retry_ms)).await;
                            continue;
                        }
                    }
                    if !trusted_client {
                        tokio::time::sleep(Duration::from_millis(w.retry_ms)).await;
                        continue;
                    }
                }
                tokio::time::sleep(Duration::from_millis(pick(w.interval_ms))).await;
                let as_stream = w.stream_every > 0 && id % w.stream_every == 0;
                let range = if as_stream { w.stream_size } else { w.size };
                let size = pick([range[0] as u64, range[1] as u64]) as usize;
                let Some(c) = conn.as_ref() else { continue };
                tracing::debug!(target: "clipsync_sim", id, size, as_stream, "send");
                with_log(&log, |l| l.connection_of.insert((name.clone(), id), connections));
                // A clean close after this send, with it (pipelined) and others in flight.
                let close_after = w.close_every > 0 && id % w.close_every == 0 && id < w.messages;
                if w.pipeline > 1 {
                    let payload = make_payload(index, id, size);
                    let failed =
                        pipelined_send(&log, &name, id, c, payload, w.pipeline, &mut in_flight)
                            .await;
                    id += 1;
                    if failed && c.is_closed() {
                        // The connection is over (its sends in flight settle by themselves).
                        if let Some(c) = conn.take() {
                            c.let_go().await;
                        }
                        tokio::time::sleep(Duration::from_millis(w.retry_ms)).await;
                    }
                } else {
                    let result = if as_stream {
                        logged_send(&log, &name, id, send_stream(&c.sender, index, id, size)).await
                    } else {
                        let payload = make_payload(index, id, size);
                        let send = c.sender.send_message(Message::new(CONTENT_TYPE, payload));
                        logged_send(&log, &name, id, send).await
                    };
                    id += 1;
                    // A both-ways or `open` client keeps its connection while the transport
                    // does (it resumes, replaces the session or redials by itself, as an
                    // engine relies on); the others drop it on a failed send and dial again.
                    let keep = (w.both_ways || w.open) && !c.is_closed();
                    if result.is_err() && !keep {
                        if let Some(c) = conn.take() {
                            c.let_go().await;
                        }
                        tokio::time::sleep(Duration::from_millis(w.retry_ms)).await;
                    }
                }
                if close_after && let Some(c) = conn.take() {
                    tracing::debug!(target: "clipsync_sim", in_flight = in_flight.len(), "close mid-traffic");
                    c.close().await;
                }
            }
            // Pipelined sends and the background stream settle before the client goes.
            for h in in_flight.into_iter().chain(background) {
                let _ = h.await;
            }
            if w.both_ways {
                // The server's sends to this client settle before the client goes.
                wait_for_back(&log, &name).await;
            }
            if let Some(c) = conn {
                c.close().await;
            }
            wait_until_served(&log, &name).await;
            tracing::info!(target: "clipsync_sim", "client done");
            Ok(())
        });
    }
}

/// The name of the server's sends back to `client` on its `n`-th connection to incarnation
/// `incarnation` (and of their deliveries at the client).
fn back_name(server: &str, incarnation: u32, n: u32, client: &str) -> String {
    format!("{server}#{incarnation}.{n}>{client}")
}

/// The payload's index field for such sends: incarnation and connection, a byte each.
fn back_index(incarnation: u32, n: u32) -> usize {
    (((incarnation & 0xff) << 8) | (n & 0xff)) as usize
}

/// One sender of the server back to a client.
struct Back {
    name: String,
    index: usize,
    incarnation: u32,
    client: String,
}

/// The server's side of a `both_ways` workload on one connection: the scenario's workload,
/// sent to the client with its own seeded sizes and pauses, every send logged.
async fn send_back(
    sender: ConnectionSender,
    state: watch::Receiver<ConnectionState>,
    w: crate::scenario::Workload,
    seed: u64,
    log: SharedLog,
    back: Back,
) {
    with_log(&log, |l| {
        l.back.insert(
            back.name.clone(),
            (back.incarnation, back.client.clone(), false),
        )
    });
    let mut rng = ChaCha20Rng::from_seed(derive(seed, &format!("workload/{}", back.name)));
    let mut pick = |r: [u64; 2]| r[0] + rng.next_u64() % (r[1] - r[0] + 1);
    for id in 1..=w.messages {
        if matches!(*state.borrow(), ConnectionState::Closed(_)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(pick(w.interval_ms))).await;
        let as_stream = w.stream_every > 0 && id % w.stream_every == 0;
        let range = if as_stream { w.stream_size } else { w.size };
        let size = pick([range[0] as u64, range[1] as u64]) as usize;
        tracing::debug!(target: "clipsync_sim", to = %back.client, id, size, as_stream, "send back");
        let _ = if as_stream {
            let send = send_stream(&sender, back.index, id, size);
            logged_send(&log, &back.name, id, send).await
        } else {
            let send = sender.send_message(Message::new(
                CONTENT_TYPE,
                make_payload(back.index, id, size),
            ));
            logged_send(&log, &back.name, id, send).await
        };
    }
    with_log(&log, |l| {
        if let Some(e) = l.back.get_mut(&back.name) {
            e.2 = true;
        }
    });
}

/// Waits (in simulated time) until every sender of the server's current incarnation back to
/// `client` has finished; the run's own deadline bounds it.
async fn wait_for_back(log: &SharedLog, client: &str) {
    loop {
        let pending = with_log(log, |l| {
            let current = l.server_incarnations.saturating_sub(1);
            l.back
                .values()
                .any(|(inc, c, done)| *inc == current && c == client && !done)
        });
        if !pending {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client's connection: its sending half, and, in a `both_ways` workload, a task receiving
/// the server's sends meanwhile.
struct ClientConn {
    sender: ConnectionSender,
    log: SharedLog,
    server: String,
    client: String,
    state: watch::Receiver<ConnectionState>,
    conn: Option<Connection>,
    receiver: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Connection>,
    )>,
}

impl ClientConn {
    fn new(c: Connection, both_ways: bool, log: &SharedLog, server: &str, client: &str) -> Self {
        let (sender, state) = (c.sender(), c.state());
        let (log, server, client) = (log.clone(), server.to_string(), client.to_string());
        if !both_ways {
            return Self {
                sender,
                log,
                server,
                client,
                state,
                conn: Some(c),
                receiver: None,
            };
        }
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(receive_back(
            c,
            stop_rx,
            log.clone(),
            server.clone(),
            client.clone(),
        ));
        Self {
            sender,
            log,
            server,
            client,
            state,
            conn: None,
            receiver: Some((stop, task)),
        }
    }

    fn is_closed(&self) -> bool {
        matches!(*self.state.borrow(), ConnectionState::Closed(_))
    }

    /// Lets go of a connection that failed: a both-ways client closes it to take what it
    /// delivered ([`ClientConn::close`]); the others drop it (the transport closes it).
    async fn let_go(self) {
        if self.receiver.is_some() {
            self.close().await;
        }
    }

    /// Closes cleanly; a both-ways client takes what the server delivered that it had not
    /// taken yet (the server's sends of it settled as delivered).
    async fn close(self) {
        let (conn, receiving) = match (self.conn, self.receiver) {
            (Some(c), _) => (Some(c), false),
            (None, Some((stop, task))) => {
                let _ = stop.send(());
                (task.await.ok(), true)
            }
            (None, None) => (None, false),
        };
        drop(self.sender);
        let Some(c) = conn else { return };
        if !receiving {
            c.close().await;
            return;
        }
        for item in c.close_and_drain().await {
            take_back(item, &self.log, &self.server, &self.client).await;
        }
    }
}

/// The client's receiving half in a `both_ways` workload: checks and logs the server's sends
/// until told to stop or the connection ends; hands the connection back.
async fn receive_back(
    mut conn: Connection,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    log: SharedLog,
    server: String,
    client: String,
) -> Connection {
    loop {
        let incoming = tokio::select! {
            biased;
            _ = &mut stop => break,
            r = conn.receive() => match r {
                Ok(i) => i,
                Err(_) => break,
            },
        };
        take_back(incoming, &log, &server, &client).await;
    }
    conn
}

/// Checks and logs one of the server's sends, as the client's application takes it.
async fn take_back(incoming: Incoming, log: &SharedLog, server: &str, client: &str) {
    let Some((index, id)) = take_payload(incoming, None).await else {
        return;
    };
    let name = back_name(
        server,
        u32::from(index >> 8),
        u32::from(index & 0xff),
        client,
    );
    tracing::debug!(target: "clipsync_sim", from = %name, id, "delivered back");
    with_log(log, |l| l.delivered.push((name, id, now())));
}

/// How the server's application reads (`[workload] read_delay_ms`, `drop_stream_every`).
#[derive(Clone, Copy)]
struct Reader {
    seed: u64,
    delay_ms: [u64; 2],
    drop_every: u64,
    stall_every: u64,
    stall_ms: [u64; 2],
}

impl Reader {
    fn new(s: &Scenario, seed: u64) -> Self {
        Self {
            seed,
            delay_ms: s.workload.read_delay_ms,
            drop_every: s.workload.drop_stream_every,
            stall_every: s.workload.stall_every,
            stall_ms: s.workload.stall_ms,
        }
    }
}

/// The server's application on `conn`: [`serve_connection`] as the scenario's reader.
fn spawn_reader(
    conn: Connection,
    s: &Scenario,
    seed: u64,
    log: &SharedLog,
    names: &[String],
    sabotage: Sabotage,
) {
    let reader = Reader::new(s, seed);
    tokio::spawn(serve_connection(
        conn,
        log.clone(),
        names.to_vec(),
        sabotage,
        reader,
    ));
}

/// Receives on `conn` until it ends, checking every payload and logging its delivery.
async fn serve_connection(
    mut conn: Connection,
    log: SharedLog,
    names: Vec<String>,
    sabotage: Sabotage,
    reader: Reader,
) {
    let [lo, hi] = reader.delay_ms;
    let mut rng = ChaCha20Rng::from_seed(derive(
        reader.seed,
        &format!("reader/{}", conn.peer_fingerprint()),
    ));
    let mut streams = 0u64;
    let mut first = true;
    let mut taken = 0u64;
    loop {
        if !std::mem::take(&mut first) && hi > 0 {
            let pause = lo + rng.next_u64() % (hi - lo + 1);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        if reader.stall_every > 0 && taken > 0 && taken % reader.stall_every == 0 {
            let [slo, shi] = reader.stall_ms;
            let stall = slo + rng.next_u64() % (shi.saturating_sub(slo) + 1);
            tracing::debug!(target: "clipsync_sim", stall_ms = stall, "application stalls");
            tokio::time::sleep(Duration::from_millis(stall)).await;
        }
        taken += 1;
        let Ok(incoming) = conn.receive().await else {
            break;
        };
        // Every n-th stream is dropped after a part drawn from the seed (possibly nothing,
        // possibly all but its end).
        let stop_after = match &incoming {
            Incoming::Stream(s) => {
                streams += 1;
                (reader.drop_every > 0 && streams % reader.drop_every == 0)
                    .then(|| rng.next_u64() % (s.total_len().unwrap_or(0) + 1))
            }
            _ => None,
        };
        let Some((index, id)) = take_payload(incoming, stop_after).await else {
            continue;
        };
        let Some(client) = names.get(usize::from(index)).cloned() else {
            tracing::error!(target: "clipsync_sim", index, "workload payload of no client");
            continue;
        };
        tracing::debug!(target: "clipsync_sim", %client, id, "delivered");
        if sabotage.drop_one_delivery && id == 3 && client == names[0] {
            continue;
        }
        if sabotage.panic_on_delivery && id == 3 && client == names[0] {
            panic!("sabotage: the application panics on {client}/{id}");
        }
        with_log(&log, |l| l.delivered.push((client, id, now())));
    }
}

/// The connections of a mutual workload, both hosts': (host, dialled, preferred, state).
type Links = Arc<Mutex<Vec<(String, bool, bool, watch::Receiver<ConnectionState>)>>>;

fn add_link(links: &Links, host: &str, dialed: bool, conn: &Connection) {
    tracing::info!(target: "clipsync_sim", host, dialed, preferred = conn.wins_tie_break(), "link");
    links.lock().unwrap_or_else(|p| p.into_inner()).push((
        host.to_string(),
        dialed,
        conn.wins_tie_break(),
        conn.state(),
    ));
}

/// Keeps a connection the tie-break does not keep until the transport closes it (if it
/// never does, it stays live and `single-link` fails).
async fn hold_until_closed(conn: Connection) {
    let mut state = conn.state();
    while !matches!(*state.borrow_and_update(), ConnectionState::Closed(_)) {
        if state.changed().await.is_err() {
            break;
        }
    }
}

/// Dials `peer` until a connection stands or the tie-break says the peer's dial wins.
/// Returns the connection, if this side's dial produced one.
async fn dial_mutual(
    transport: &Transport,
    peer: &PeerInfo,
    auth: Arc<SshAuthenticator>,
    retry: Duration,
) -> Option<Connection> {
    loop {
        match transport.connect(peer, auth.clone()).await {
            Ok(c) => return Some(c),
            Err(e) if e.reason() == Some(ReasonCode::DuplicateConnection) => return None,
            Err(e) => {
                tracing::debug!(target: "clipsync_sim", error = %e, "mutual dial failed");
                tokio::time::sleep(retry).await;
            }
        }
    }
}

/// One side of a mutual workload: its transport and authenticator (trusting the peer), a
/// listener on [`PORT`], and the peer to dial.
async fn mutual_endpoint(
    scenario: &Scenario,
    seed: u64,
    name: &str,
    peer_name: &str,
) -> Result<
    (
        Transport,
        Arc<SshAuthenticator>,
        clipsync::transport::Listener,
        PeerInfo,
    ),
    Box<dyn std::error::Error>,
> {
    let transport = build_transport(scenario, seed, name, 0)?;
    let peer_key = host_key(seed, peer_name).public_key().clone();
    let auth = Arc::new(SshAuthenticator::new(
        host_key(seed, name),
        vec![peer_key.clone()],
    )?);
    let listener = transport
        .listen(&format!("0.0.0.0:{PORT}").parse()?, auth.clone())
        .await?;
    let peer =
        PeerInfo::new(peer_name, vec![format!("{peer_name}:{PORT}").parse()?]).with_key(peer_key);
    Ok((transport, auth, listener, peer))
}

/// Simultaneous dial: both hosts listen and dial each other at nearly the same moment (a
/// jitter drawn from the seed), the server with `Transport::open`, the client with
/// `Transport::connect`; the client sends its workload on the connection the
/// tie-break keeps, the server receives on all of its connections.
fn register_mutual(
    sim: &mut turmoil::Sim<'_>,
    s: &Scenario,
    seed: u64,
    log: &SharedLog,
    sabotage: Sabotage,
) {
    let server = s.server().to_string();
    let Some(client) = s.clients().next().map(|c| c.name.clone()) else {
        return;
    };
    let links: Links = Arc::default();
    let names = vec![client.clone()];
    let retry = Duration::from_millis(s.workload.retry_ms);
    let jitter = |host: &str| Duration::from_millis(derive_u64(seed, &format!("dial/{host}")) % 40);

    let (scenario, slog, slinks) = (s.clone(), log.clone(), links.clone());
    let (sname, cname) = (server.clone(), client.clone());
    let server_delay = jitter(&server);
    sim.host(server.as_str(), move || {
        let (scenario, log, links, names) = (
            scenario.clone(),
            slog.clone(),
            slinks.clone(),
            names.clone(),
        );
        let (name, peer_name) = (sname.clone(), cname.clone());
        async move {
            let (transport, auth, mut listener, peer) =
                mutual_endpoint(&scenario, seed, &name, &peer_name).await?;
            // The server opens its connection (state `Connecting`, dialling with backoff in
            // the background); the client uses `connect`: both APIs meet in the tie-break.
            tokio::time::sleep(server_delay).await;
            let opened = transport.open(&peer, auth)?;
            add_link(&links, &name, true, &opened);
            spawn_reader(opened, &scenario, seed, &log, &names, sabotage);
            loop {
                match listener.accept().await {
                    Ok(conn) => {
                        add_link(&links, &name, false, &conn);
                        spawn_reader(conn, &scenario, seed, &log, &names, sabotage);
                    }
                    Err(AcceptError::Closed) => return Ok(()),
                    Err(_) => {}
                }
            }
        }
    });

    let (scenario, log, server_name) = (s.clone(), log.clone(), server.clone());
    let client_delay = jitter(&client);
    sim.client(client.clone().as_str(), async move {
        let name = client;
        let (transport, auth, mut listener, peer) =
            mutual_endpoint(&scenario, seed, &name, &server_name).await?;
        // The connection the tie-break keeps, whichever side dialled it.
        let (keep_tx, mut keep_rx) = tokio::sync::mpsc::channel::<Connection>(4);
        let (alinks, aname, atx) = (links.clone(), name.clone(), keep_tx.clone());
        tokio::spawn(async move {
            while let Ok(conn) = listener.accept().await {
                add_link(&alinks, &aname, false, &conn);
                if conn.wins_tie_break() {
                    let _ = atx.send(conn).await;
                } else {
                    tokio::spawn(hold_until_closed(conn));
                }
            }
        });
        let (dlinks, dname) = (links.clone(), name.clone());
        let dialer = transport.clone();
        tokio::spawn(async move {
            tokio::time::sleep(client_delay).await;
            if let Some(c) = dial_mutual(&dialer, &peer, auth, retry).await {
                add_link(&dlinks, &dname, true, &c);
                if c.wins_tie_break() {
                    let _ = keep_tx.send(c).await;
                } else {
                    hold_until_closed(c).await;
                }
            }
        });
        let conn = keep_rx
            .recv()
            .await
            .ok_or("no connection survived the tie-break")?;
        let w = &scenario.workload;
        let mut rng = ChaCha20Rng::from_seed(derive(seed, &format!("workload/{name}")));
        for id in 1..=w.messages {
            let pause =
                w.interval_ms[0] + rng.next_u64() % (w.interval_ms[1] - w.interval_ms[0] + 1);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            let size = w.size[0] + (rng.next_u64() % (w.size[1] - w.size[0] + 1) as u64) as usize;
            let send = conn.send_message(Message::new(CONTENT_TYPE, make_payload(0, id, size)));
            let _ = logged_send(&log, &name, id, send).await;
        }
        // What each side holds now, before this side closes anything.
        let snapshot: Vec<_> = links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(host, dialed, preferred, state)| {
                let live = !matches!(*state.borrow(), ConnectionState::Closed(_));
                (
                    host.clone(),
                    LinkRecord {
                        dialed: *dialed,
                        preferred: *preferred,
                        live,
                    },
                )
            })
            .collect();
        with_log(&log, |l| {
            for (host, rec) in snapshot {
                l.links.entry(host).or_default().push(rec);
            }
        });
        conn.close().await;
        Ok(())
    });
}

/// Issues send `id` with `try_send`, keeping at most `depth` in flight: waits for the oldest
/// while `depth` are, or while the send queue is full. Returns whether a send settled as failed
/// in the meantime (this one, refused at once, or an older one).
async fn pipelined_send(
    log: &SharedLog,
    name: &str,
    id: u64,
    c: &ClientConn,
    payload: Bytes,
    depth: usize,
    in_flight: &mut VecDeque<tokio::task::JoinHandle<bool>>,
) -> bool {
    let mut failed = false;
    let message = Message::new(CONTENT_TYPE, payload);
    let issued = now();
    let record = |log: &SharedLog| {
        with_log(log, |l| {
            l.sent.insert(
                (name.to_string(), id),
                SendRecord {
                    issued,
                    settled: None,
                },
            )
        })
    };
    loop {
        if in_flight.len() >= depth {
            if let Some(h) = in_flight.pop_front() {
                failed |= !h.await.unwrap_or(false);
            }
            continue;
        }
        match c.sender.try_send(message.clone()) {
            Ok(settles) => {
                record(log);
                let (log, name) = (log.clone(), name.to_string());
                in_flight.push_back(tokio::spawn(async move {
                    logged_settle(&log, &name, id, settles.await).is_ok()
                }));
                return failed;
            }
            Err(SendError::Full) if !in_flight.is_empty() => {
                tracing::debug!(target: "clipsync_sim", id, "send queue full");
                if let Some(h) = in_flight.pop_front() {
                    failed |= !h.await.unwrap_or(false);
                }
            }
            Err(e) => {
                record(log);
                let _ = logged_settle(log, name, id, Err(e));
                return true;
            }
        }
    }
}

/// Logs how send `id` settled.
fn logged_settle(
    log: &SharedLog,
    name: &str,
    id: u64,
    result: Result<(), SendError>,
) -> Result<(), SendError> {
    let settled = match &result {
        Ok(()) => Settled::Delivered,
        Err(e) => Settled::Failed(describe(e)),
    };
    tracing::debug!(target: "clipsync_sim", id, ?settled, "settled");
    with_log(log, |l| {
        if let Some(r) = l.sent.get_mut(&(name.to_string(), id)) {
            r.settled = Some((now(), settled));
        }
    });
    result
}

/// Runs one workload send, logging when it was issued and how it settled.
async fn logged_send(
    log: &SharedLog,
    name: &str,
    id: u64,
    send: impl Future<Output = Result<(), SendError>>,
) -> Result<(), SendError> {
    let record = SendRecord {
        issued: now(),
        settled: None,
    };
    with_log(log, |l| l.sent.insert((name.to_string(), id), record));
    logged_settle(log, name, id, send.await)
}

fn describe(e: &SendError) -> String {
    e.to_string()
}

/// Sends the payload [`make_payload`] would make as a stream, in pieces of 50,000 bytes (as a
/// reader would hand them over), made as they go: the filler pieces are slices of one block.
async fn send_stream(
    c: &ConnectionSender,
    index: usize,
    id: u64,
    size: usize,
) -> Result<(), SendError> {
    const PIECE: usize = 50_000;
    let size = size.max(10);
    let mut s = c.open_stream(CONTENT_TYPE, Some(size as u64)).await?;
    let first = make_payload(index, id, size.min(PIECE));
    let mut left = size - first.len();
    s.write(first).await?;
    let block = Bytes::from(vec![filler(id); left.min(PIECE)]);
    while left > 0 {
        let piece = block.slice(..left.min(PIECE));
        left -= piece.len();
        s.write(piece).await?;
    }
    s.finish().await
}

/// A workload payload: message id (8 bytes), client index (2 bytes), filler.
fn make_payload(client: usize, id: u64, size: usize) -> Bytes {
    let mut p = Vec::with_capacity(size.max(10));
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&(client as u16).to_be_bytes());
    p.resize(size.max(10), filler(id));
    Bytes::from(p)
}

/// The filler byte of message `id`, so the receiver can check every byte.
fn filler(id: u64) -> u8 {
    (id % 251) as u8
}

/// Whether every byte of `p` is `byte`, compared a block at a time (a byte-wise loop was 12% of
/// a stream scenario's run time).
fn filled_with(p: &[u8], byte: u8) -> bool {
    let block = [byte; 4096];
    p.chunks(block.len()).all(|c| c == &block[..c.len()])
}

/// Takes one incoming item as a workload application does: a message whole, a stream a chunk
/// at a time ([`read_stream`], dropped after `stop_after` bytes if given). Its (index, id) if
/// it was taken whole and intact; `None` otherwise (a stream dropped on purpose or failed, or
/// a malformed or corrupted payload, logged).
async fn take_payload(incoming: Incoming, stop_after: Option<u64>) -> Option<(u16, u64)> {
    let header = match incoming {
        Incoming::Message(m) => check_payload(&m.payload),
        Incoming::Stream(s) => match read_stream(s, stop_after).await {
            Ok(h) => h?,
            Err(e) => {
                tracing::debug!(target: "clipsync_sim", error = %e, "stream failed");
                return None;
            }
        },
        _ => return None,
    };
    if header.is_none() {
        tracing::error!(target: "clipsync_sim", "malformed or corrupted workload payload");
    }
    header
}

/// The (index, id) of a whole workload payload, if every byte is as [`make_payload`] made it.
fn check_payload(p: &[u8]) -> Option<(u16, u64)> {
    let id = u64::from_be_bytes(p.get(..8)?.try_into().ok()?);
    let index = u16::from_be_bytes(p.get(8..10)?.try_into().ok()?);
    filled_with(&p[10..], filler(id)).then_some((index, id))
}

/// Reads a workload stream a chunk at a time, checking every byte as it comes (no copy of the
/// whole), up to its end: `Some(header)` as [`check_payload`] gives it. With `stop_after`, the
/// application drops the stream once it has read that many bytes (its sender's stream settles
/// `cancelled`): `None`, unless the stream ended first.
async fn read_stream(
    mut s: clipsync::transport::IncomingStream,
    stop_after: Option<u64>,
) -> Result<Option<Option<(u16, u64)>>, clipsync::transport::StreamError> {
    let id = s.id();
    let mut head = Vec::with_capacity(10);
    let mut ok = true;
    let mut read = 0u64;
    loop {
        // Only while some byte is unread: an application that took every byte and drops the
        // stream before its end settles it as delivered if the transport had verified the end
        // by then, and as cancelled if not (IncomingStream's doc), a race no log can follow.
        if stop_after.is_some_and(|n| read >= n) && s.total_len().is_none_or(|t| read < t) {
            tracing::debug!(target: "clipsync_sim", id, read, "stream dropped after a part");
            return Ok(None);
        }
        let Some(mut chunk) = s.chunk().await? else {
            break;
        };
        read += chunk.len() as u64;
        if read > MAX_STREAM as u64 {
            return Err(clipsync::transport::StreamError::TooLarge { max: MAX_STREAM });
        }
        if head.len() < 10 {
            let take = chunk.len().min(10 - head.len());
            head.extend_from_slice(&chunk.split_to(take));
        }
        if head.len() == 10 {
            let id = u64::from_be_bytes(head[..8].try_into().unwrap_or_default());
            ok &= filled_with(&chunk, filler(id));
        }
    }
    if stop_after.is_some() {
        tracing::debug!(target: "clipsync_sim", id, "stream read to its end before the drop");
    }
    Ok(Some(if ok { check_payload(&head) } else { None }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_check_finds_one_wrong_byte_anywhere() {
        let p = make_payload(1, 300, 10_000);
        let body = &p[10..];
        assert!(filled_with(body, filler(300)));
        assert!(!filled_with(body, filler(301)));
        for at in [0, 4095, 4096, body.len() - 1] {
            let mut bad = body.to_vec();
            bad[at] ^= 1;
            assert!(!filled_with(&bad, filler(300)), "flip at {at} missed");
        }
        assert!(filled_with(&[], 7));
    }
}
