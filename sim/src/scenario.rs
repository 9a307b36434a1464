//! Scenario files (`scenarios/*.toml`): hosts, link, fault timeline, workload, invariants.
//! `scenarios/README.md` documents every key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// One scenario, as read from its TOML file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in reports.
    pub name: String,
    /// What the scenario shows, in a sentence or two.
    pub purpose: String,
    /// Simulated time after which an unfinished run fails, in seconds.
    pub duration_s: u64,
    /// Simulated time per simulation step, in milliseconds (default 1).
    #[serde(default = "one")]
    pub tick_ms: u64,
    /// Seeds CI runs (`clipsync-sim run` without `--seeds`): 1 to `seeds`.
    pub seeds: u64,
    /// Seeds that once found a bug, run in every sweep besides `1..=seeds`.
    #[serde(default)]
    pub regressions: Vec<u64>,
    /// The step the `regressions` seeds run with (default `tick_ms`): the one they found
    /// their bug with, so that a scenario moved to another step size still replays them as
    /// they were found (a different step makes a seed a different run).
    #[serde(default)]
    pub regression_tick_ms: Option<u64>,
    /// The network between hosts.
    #[serde(default)]
    pub link: Link,
    /// The hosts: one server, one or more clients.
    pub hosts: Vec<HostSpec>,
    /// `TransportConfig` keys applied to every host (TOML keys, e.g. `heartbeat_timeout_ms`).
    #[serde(default)]
    pub config: toml::Table,
    /// `TransportConfig` keys drawn per seed: key → `[min, max]` (integers), the same draw
    /// for every host of a run, applied over `config`. Limits get exercised, not only
    /// defaults; a draw the configuration refuses fails the run at start.
    #[serde(default)]
    pub config_draw: std::collections::BTreeMap<String, [i64; 2]>,
    /// `[workload]` keys drawn per seed: key → `[min, max]`, applied over `workload`, so one
    /// scenario walks many workloads. Integer keys (`pipeline`, `stream_every`,
    /// `drop_stream_every`, `stall_every`, `close_every`) take the number drawn; boolean keys
    /// (`both_ways`, `open`) are true when it is not 0.
    #[serde(default)]
    pub workload_draw: std::collections::BTreeMap<String, [u64; 2]>,
    /// Faults at simulated times.
    #[serde(default)]
    pub timeline: Vec<Fault>,
    /// Swarm mode: each seed draws its own faults (added to `timeline`).
    #[serde(default)]
    pub swarm: Option<Swarm>,
    /// What the clients send.
    pub workload: Workload,
    /// What must hold at the end.
    #[serde(default)]
    pub invariants: Invariants,
    /// The file it came from (set by [`Scenario::load`]).
    #[serde(skip)]
    pub path: PathBuf,
}

fn one() -> u64 {
    1
}

/// Link properties for every pair of hosts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// Per-message latency range `[min, max]` in milliseconds.
    pub latency_ms: [u64; 2],
    /// Probability that a link fails (turmoil's fail rate: behaves like random partitions).
    #[serde(default)]
    pub fail_rate: f64,
    /// Probability that a failed link repairs itself at each step.
    #[serde(default)]
    pub repair_rate: f64,
    /// The link model ([`crate::link`]): bandwidth each way, in Mbit/s (unlimited if absent).
    #[serde(default)]
    pub bandwidth_mbit: Option<f64>,
    /// The bottleneck queue, in milliseconds at that bandwidth.
    #[serde(default = "default_queue_ms")]
    pub queue_ms: u64,
    /// Probability that a TCP segment is lost (a pause of the byte stream, never a gap).
    #[serde(default)]
    pub loss: f64,
}

fn default_queue_ms() -> u64 {
    100
}

impl Default for Link {
    fn default() -> Self {
        Self {
            latency_ms: [0, 100],
            fail_rate: 0.0,
            repair_rate: 0.0,
            bandwidth_mbit: None,
            queue_ms: default_queue_ms(),
            loss: 0.0,
        }
    }
}

impl Link {
    /// The link model these keys describe.
    pub fn model(&self) -> crate::link::LinkModel {
        crate::link::LinkModel {
            bandwidth_bps: self.bandwidth_mbit.map(|m| m * 1e6),
            queue: Duration::from_millis(self.queue_ms),
            loss: self.loss,
            max_latency: Duration::from_millis(self.latency_ms[1]),
        }
    }
}

/// What a host does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Listens; a turmoil host, so it can crash and bounce.
    Server,
    /// Dials the server and runs the workload.
    Client,
    /// A mesh: every host is a peer that listens, dials every other through the peer-level
    /// API (`Transport::peers`) and runs a clipboard engine; any peer can crash and bounce.
    Peer,
}

/// One host.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    /// Host name (also its address in the simulated network).
    pub name: String,
    /// Server or client.
    pub role: Role,
    /// Clients: whether the server trusts this client's key (default true).
    #[serde(default = "yes")]
    pub trusted: bool,
}

fn yes() -> bool {
    true
}

/// A fault at a simulated time.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "RawFault")]
pub struct Fault {
    /// When, in simulated milliseconds from the start.
    pub at_ms: u64,
    /// What.
    pub kind: FaultKind,
}

/// A `[[timeline]]` entry as written: `at_ms`, `fault`, and the keys that fault takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    at_ms: u64,
    fault: String,
    a: Option<String>,
    b: Option<String>,
    from: Option<String>,
    to: Option<String>,
    host: Option<String>,
    ms: Option<u64>,
    rate: Option<f64>,
}

impl TryFrom<RawFault> for Fault {
    type Error = String;

    fn try_from(r: RawFault) -> Result<Self, String> {
        let need = |v: Option<String>, key: &str| {
            v.ok_or_else(|| format!("fault {:?} needs `{key}`", r.fault))
        };
        let kind = match r.fault.as_str() {
            "partition" => FaultKind::Partition {
                a: need(r.a, "a")?,
                b: need(r.b, "b")?,
            },
            "partition_oneway" => FaultKind::PartitionOneway {
                from: need(r.from, "from")?,
                to: need(r.to, "to")?,
            },
            "repair" => FaultKind::Repair {
                a: need(r.a, "a")?,
                b: need(r.b, "b")?,
            },
            "repair_oneway" => FaultKind::RepairOneway {
                from: need(r.from, "from")?,
                to: need(r.to, "to")?,
            },
            "hold" => FaultKind::Hold {
                a: need(r.a, "a")?,
                b: need(r.b, "b")?,
            },
            "release" => FaultKind::Release {
                a: need(r.a, "a")?,
                b: need(r.b, "b")?,
            },
            "crash" => FaultKind::Crash {
                host: need(r.host, "host")?,
            },
            "kill" => FaultKind::Kill {
                host: need(r.host, "host")?,
            },
            "bounce" => FaultKind::Bounce {
                host: need(r.host, "host")?,
            },
            "latency" => FaultKind::Latency {
                a: need(r.a, "a")?,
                b: need(r.b, "b")?,
                ms: r.ms.ok_or("fault \"latency\" needs `ms`")?,
            },
            "roam" => FaultKind::Roam {
                host: need(r.host, "host")?,
            },
            "suspend" => FaultKind::Suspend {
                host: need(r.host, "host")?,
            },
            "wake" => FaultKind::Wake {
                host: need(r.host, "host")?,
            },
            "graceful_restart" => FaultKind::GracefulRestart {
                host: need(r.host, "host")?,
            },
            "fail_rate" => FaultKind::FailRate {
                rate: r.rate.ok_or("fault \"fail_rate\" needs `rate`")?,
            },
            other => return Err(format!("unknown fault {other:?}")),
        };
        Ok(Fault {
            at_ms: r.at_ms,
            kind,
        })
    }
}

/// The faults turmoil can make.
#[derive(Clone, Debug, PartialEq)]
pub enum FaultKind {
    /// Drop everything between `a` and `b`, both ways.
    Partition {
        /// One side.
        a: String,
        /// The other.
        b: String,
    },
    /// Drop everything from `from` to `to`.
    PartitionOneway {
        /// Sender side.
        from: String,
        /// Receiver side.
        to: String,
    },
    /// Undo a partition both ways.
    Repair {
        /// One side.
        a: String,
        /// The other.
        b: String,
    },
    /// Undo a one-way partition.
    RepairOneway {
        /// Sender side.
        from: String,
        /// Receiver side.
        to: String,
    },
    /// Queue everything between `a` and `b` (delay without loss).
    Hold {
        /// One side.
        a: String,
        /// The other.
        b: String,
    },
    /// Deliver what `hold` queued.
    Release {
        /// One side.
        a: String,
        /// The other.
        b: String,
    },
    /// Stop a host's software (peers see a clean end of stream).
    Crash {
        /// The host.
        host: String,
    },
    /// Kill a host's process on a machine that stays up ([`crate::process`]): as `crash`,
    /// but dials to it are refused at once instead of hanging.
    Kill {
        /// The host.
        host: String,
    },
    /// The server's application shuts its transport down gracefully (`Transport::shutdown`:
    /// `GOAWAY` with `going away`, every send settled) and starts a new one at once, as a
    /// service restarted by its manager: a new incarnation, while its old connections' queued
    /// deliveries are still taken by the application.
    GracefulRestart {
        /// The host (the server).
        host: String,
    },
    /// Restart a crashed host's software from scratch.
    Bounce {
        /// The host.
        host: String,
    },
    /// The host's network changes (roaming, [`crate::roam`]): its open connections go
    /// half-open at both ends; new ones work at once.
    Roam {
        /// The host.
        host: String,
    },
    /// The host stops running, as a laptop whose lid closes: nothing goes in or out of it
    /// (turmoil holds everything between it and every other host) until `wake`. Its own timers
    /// keep running, where a suspended machine's stop: see scenarios/README.md.
    Suspend {
        /// The host.
        host: String,
    },
    /// A suspended host runs again: what was held is delivered.
    Wake {
        /// The host.
        host: String,
    },
    /// Set the latency of the link between `a` and `b`.
    Latency {
        /// One side.
        a: String,
        /// The other.
        b: String,
        /// The new latency, in milliseconds.
        ms: u64,
    },
    /// Set the fail rate of every link.
    FailRate {
        /// The new rate.
        rate: f64,
    },
}

impl FaultKind {
    /// Whether this fault ends a disturbance (the reconnection bound counts from the last).
    pub fn heals(&self) -> bool {
        matches!(
            self,
            Self::Repair { .. }
                | Self::RepairOneway { .. }
                | Self::Release { .. }
                | Self::Bounce { .. }
                | Self::GracefulRestart { .. }
                | Self::Roam { .. }
                | Self::Wake { .. }
        ) || matches!(self, Self::FailRate { rate } if *rate == 0.0)
    }
}

/// Swarm mode (DESIGN §4): each seed draws its own mix of faults with random times, so faults
/// do not mask each other the way one fixed timeline would.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Swarm {
    /// The kinds to draw from: `partition`, `partition_oneway`, `hold`, `crash`,
    /// `graceful_restart` (two of the server, at the start and the end), `latency`.
    pub faults: Vec<String>,
    /// How many faults per seed, `[min, max]`.
    pub count: [u64; 2],
    /// When they start, `[min, max]` ms.
    pub start_ms: [u64; 2],
    /// How long each lasts before its healing counterpart, `[min, max]` ms.
    pub duration_ms: [u64; 2],
}

impl Scenario {
    /// Whether this is a mesh of peers (every host `role = "peer"`).
    pub fn is_mesh(&self) -> bool {
        self.hosts.iter().any(|h| h.role == Role::Peer)
    }

    /// The peers of a mesh, in file order.
    pub fn peers(&self) -> impl Iterator<Item = &HostSpec> {
        self.hosts.iter().filter(|h| h.role == Role::Peer)
    }

    /// This scenario as `seed` runs it: its `[workload_draw]` keys drawn (the same draw every
    /// time for a seed).
    pub fn for_seed(&self, seed: u64) -> Scenario {
        use rand_chacha::rand_core::{RngCore, SeedableRng};
        let mut s = self.clone();
        let mut rng =
            rand_chacha::ChaCha20Rng::from_seed(crate::crypto::derive(seed, "workload_draw"));
        let w = &mut s.workload;
        for (key, [lo, hi]) in &self.workload_draw {
            let v = lo + rng.next_u64() % (hi - lo + 1);
            match key.as_str() {
                "pipeline" => w.pipeline = v as usize,
                "stream_every" => w.stream_every = v,
                "drop_stream_every" => w.drop_stream_every = v,
                "stall_every" => w.stall_every = v,
                "close_every" => w.close_every = v,
                "both_ways" => w.both_ways = v != 0,
                "open" => w.open = v != 0,
                _ => {} // refused by `check`
            }
        }
        s
    }

    /// The simulated time per step for `seed`: `regression_tick_ms` for a regression seed,
    /// `tick_ms` otherwise.
    pub fn tick_for(&self, seed: u64) -> Duration {
        let ms = match self.regression_tick_ms {
            Some(t) if self.regressions.contains(&seed) => t,
            _ => self.tick_ms,
        };
        Duration::from_millis(ms)
    }

    /// Whether the run of `seed` crashes or restarts a host (`crash`, `kill`, `bounce`).
    pub fn crashes_hosts(&self, seed: u64) -> bool {
        self.timeline_for(seed).iter().any(|f| {
            matches!(
                f.kind,
                FaultKind::Crash { .. } | FaultKind::Kill { .. } | FaultKind::Bounce { .. }
            )
        })
    }

    /// The timeline for `seed`: the fixed one plus, in swarm mode, the seed's own faults and
    /// their heals, in time order.
    pub fn timeline_for(&self, seed: u64) -> Vec<Fault> {
        let mut t = self.timeline.clone();
        if let Some(sw) = &self.swarm {
            use rand_chacha::rand_core::{RngCore, SeedableRng};
            let mut rng = rand_chacha::ChaCha20Rng::from_seed(crate::crypto::derive(seed, "swarm"));
            let mut pick = |r: [u64; 2]| r[0] + rng.next_u64() % (r[1] - r[0] + 1);
            let server = self.server().to_string();
            let clients: Vec<String> = self.clients().map(|c| c.name.clone()).collect();
            let peers: Vec<String> = self.peers().map(|c| c.name.clone()).collect();
            let n = pick(sw.count);
            for _ in 0..n {
                let kind = &sw.faults[pick([0, sw.faults.len() as u64 - 1]) as usize];
                // A mesh: any pair of peers, and any peer crashes; otherwise a client and
                // the server, and the server crashes.
                let (a, b, server) = if self.is_mesh() {
                    let i = pick([0, peers.len() as u64 - 1]) as usize;
                    let j = (i + 1 + pick([0, peers.len() as u64 - 2]) as usize) % peers.len();
                    (peers[i].clone(), peers[j].clone(), peers[i].clone())
                } else {
                    let client = clients[pick([0, clients.len() as u64 - 1]) as usize].clone();
                    (client, server.clone(), server.clone())
                };
                let start = pick(sw.start_ms);
                let end = start + pick(sw.duration_ms);
                let (fault, heal) = match kind.as_str() {
                    "partition" => (
                        FaultKind::Partition {
                            a: a.clone(),
                            b: b.clone(),
                        },
                        FaultKind::Repair { a, b },
                    ),
                    "partition_oneway" => {
                        let (from, to) = if pick([0, 1]) == 0 { (a, b) } else { (b, a) };
                        (
                            FaultKind::PartitionOneway {
                                from: from.clone(),
                                to: to.clone(),
                            },
                            FaultKind::RepairOneway { from, to },
                        )
                    }
                    "hold" => (
                        FaultKind::Hold {
                            a: a.clone(),
                            b: b.clone(),
                        },
                        FaultKind::Release { a, b },
                    ),
                    "crash" => (
                        FaultKind::Crash {
                            host: server.clone(),
                        },
                        FaultKind::Bounce {
                            host: server.clone(),
                        },
                    ),
                    "graceful_restart" => (
                        FaultKind::GracefulRestart {
                            host: server.clone(),
                        },
                        FaultKind::GracefulRestart {
                            host: server.clone(),
                        },
                    ),
                    _ => (
                        FaultKind::Latency {
                            a: a.clone(),
                            b: b.clone(),
                            ms: pick([200, 1500]),
                        },
                        FaultKind::Latency {
                            a,
                            b,
                            ms: self.link.latency_ms[1],
                        },
                    ),
                };
                t.push(Fault {
                    at_ms: start,
                    kind: fault,
                });
                t.push(Fault {
                    at_ms: end,
                    kind: heal,
                });
            }
        }
        t.sort_by_key(|f| f.at_ms);
        t
    }
}

/// What each client sends.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Messages per client (for untrusted clients: connection attempts).
    pub messages: u64,
    /// Payload size range `[min, max]` in bytes.
    pub size: [usize; 2],
    /// Pause between sends, `[min, max]` milliseconds.
    pub interval_ms: [u64; 2],
    /// Pause before dialling again after a failure, in milliseconds.
    pub retry_ms: u64,
    /// Every `stream_every`-th message goes as a stream instead (0: never).
    #[serde(default)]
    pub stream_every: u64,
    /// Stream size range `[min, max]` in bytes.
    #[serde(default = "default_stream_size")]
    pub stream_size: [usize; 2],
    /// Simultaneous dial: the server dials the client too, at the same moment as the client
    /// dials it (both listen). The client sends its workload on the connection the tie-break
    /// keeps ([`clipsync::transport::Connection::wins_tie_break`]); the `single-link`
    /// invariant checks each side ends with exactly that one connection. One client only.
    #[serde(default)]
    pub mutual: bool,
    /// Traffic both ways: on every connection it accepts, the server runs this same workload
    /// back to the client (messages and streams, its own seeded sizes and pauses) while the
    /// client sends; each side receives while it sends. The server's sends are logged as
    /// `server#I.N>client` (incarnation I, the client's N-th connection to it) and checked by
    /// the same invariants; a client finishes only once the current incarnation's sends to it
    /// have settled. Sends of an incarnation that crashed are exempt from `settled` (the
    /// process that would settle them is gone).
    #[serde(default)]
    pub both_ways: bool,
    /// Mesh churn: after every `churn_every`-th clip a peer removes one other peer (drawn
    /// from its seed) from its set and adds it back after a pause drawn from `churn_ms`
    /// (0: never).
    #[serde(default)]
    pub churn_every: u64,
    /// The pause of mesh churn, `[min, max]` ms.
    #[serde(default = "default_churn_ms")]
    pub churn_ms: [u64; 2],
    /// Pipelined sends (clients): up to this many sends in flight at once, each issued with
    /// `try_send` (a payload above `stream_threshold` streams) the moment the pause after the
    /// previous one ends; a full send queue (`SendError::Full`) waits for the oldest send in
    /// flight to settle, then tries again. 0 or 1: one send at a time, each awaited.
    #[serde(default)]
    pub pipeline: usize,
    /// A slow receiving application (the server): after each message or stream it takes, it
    /// pauses `[min, max]` ms (drawn from the seed) before it receives again, so the
    /// connection backs up into the windows and the send queue.
    #[serde(default)]
    pub read_delay_ms: [u64; 2],
    /// An application that does not want everything (the server): it drops every n-th
    /// stream it receives unread (0: never), so its sender's stream settles `cancelled`.
    #[serde(default)]
    pub drop_stream_every: u64,
    /// An application that stalls (the server): after every n-th item it takes, it pauses
    /// `stall_ms` (drawn from the seed) before it receives again (0: never), longer than the
    /// heartbeat timeout if it likes: the connection must survive a stalled application.
    #[serde(default)]
    pub stall_every: u64,
    /// The stall, `[min, max]` ms.
    #[serde(default)]
    pub stall_ms: [u64; 2],
    /// A stream of this many bytes that each client sends, as message id 0, from its first
    /// connection on while its messages go (0: none), as `clipsync send --messages N FILE`
    /// does: the messages are probes of the latency behind a stream (the run's figures).
    #[serde(default)]
    pub background_stream: usize,
    /// Clients open their connection with `Transport::open` (it dials in the background,
    /// queues sends while it connects and reconnects by itself) instead of
    /// `Transport::connect`; a client dials again only once that connection has closed.
    /// Trusted clients only.
    #[serde(default)]
    pub open: bool,
    /// A clean close mid-traffic: after every n-th send, the client closes its connection
    /// (`Connection::close`) with its pipelined sends and background stream still in flight,
    /// and dials a new one (0: never).
    #[serde(default)]
    pub close_every: u64,
}

/// The `[workload]` keys `[workload_draw]` can draw.
const DRAWABLE: [&str; 7] = [
    "pipeline",
    "stream_every",
    "drop_stream_every",
    "stall_every",
    "close_every",
    "both_ways",
    "open",
];

fn default_churn_ms() -> [u64; 2] {
    [200, 2000]
}

fn default_stream_size() -> [usize; 2] {
    [10, 10]
}

/// Checks beyond those every run gets (no panic, finished in time, exactly-once in order,
/// every send settled).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invariants {
    /// Every send settles (delivered or failed) within this many milliseconds of being issued.
    pub max_send_ms: Option<u64>,
    /// After the last healing fault, every client that had lost its connection is connected
    /// again within this many milliseconds.
    pub reconnect_within_ms: Option<u64>,
    /// After the last healing fault, some message is acknowledged within this many
    /// milliseconds (the `heal_to_delivery_ms` figure): the transport came back by itself
    /// without waiting out a grown backoff.
    pub deliver_after_heal_ms: Option<u64>,
    /// Every connection attempt by an untrusted client is refused with `key not authorized`,
    /// and nothing of theirs is delivered.
    #[serde(default)]
    pub untrusted_refused: bool,
    /// Every message is delivered (no send may fail).
    #[serde(default)]
    pub all_delivered: bool,
    /// Each client connects exactly once: the faults must not cause a disconnect.
    #[serde(default)]
    pub single_connection: bool,
    /// Mesh: after the later of the last healing fault and the last clip created, every live
    /// peer holds the same latest clip within this many milliseconds.
    pub converge_within_ms: Option<u64>,
    /// Every send that failed because the peer lost the session names this reason code (as
    /// `SESSION_LOST` gave it): 16 `session unknown` after a restart, 17 `session expired`
    /// after the resume window ran out.
    pub session_lost_reason: Option<u16>,
}

/// Why a scenario file cannot be used.
#[derive(Debug)]
pub struct ScenarioError(pub String);

impl std::fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ScenarioError {}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ScenarioError(format!("cannot read {}: {e}", path.display())))?;
        let mut s: Scenario =
            toml::from_str(&text).map_err(|e| ScenarioError(format!("{}: {e}", path.display())))?;
        s.path = path.to_path_buf();
        s.check()
            .map_err(|e| ScenarioError(format!("{}: {e}", path.display())))?;
        Ok(s)
    }

    /// Every `*.toml` in `dir`, in name order.
    pub fn load_dir(dir: &Path) -> Result<Vec<Scenario>, ScenarioError> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| ScenarioError(format!("cannot read {}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        paths.iter().map(|p| Scenario::load(p)).collect()
    }

    /// The server's name.
    pub fn server(&self) -> &str {
        self.hosts
            .iter()
            .find(|h| h.role == Role::Server)
            .map_or("server", |h| h.name.as_str())
    }

    /// The clients.
    pub fn clients(&self) -> impl Iterator<Item = &HostSpec> {
        self.hosts.iter().filter(|h| h.role == Role::Client)
    }

    fn check(&self) -> Result<(), String> {
        let mesh = self.is_mesh();
        let servers = self.hosts.iter().filter(|h| h.role == Role::Server).count();
        if mesh {
            if self.peers().count() != self.hosts.len() || self.hosts.len() < 2 {
                return Err("a mesh has two or more hosts, all of role \"peer\"".into());
            }
            let w = &self.workload;
            if w.mutual || w.both_ways {
                return Err("mutual and both_ways are for client/server workloads".into());
            }
        } else {
            if servers != 1 {
                return Err(format!("needs exactly one server host, has {servers}"));
            }
            if self.clients().count() == 0 {
                return Err("needs at least one client host".into());
            }
            if self.workload.churn_every > 0 || self.invariants.converge_within_ms.is_some() {
                return Err("churn_every and converge_within_ms are for meshes".into());
            }
        }
        if self.workload.churn_ms[0] > self.workload.churn_ms[1] {
            return Err("workload churn_ms must be [min, max]".into());
        }
        let names: std::collections::BTreeSet<_> = self.hosts.iter().map(|h| &h.name).collect();
        if names.len() != self.hosts.len() {
            return Err("host names must be distinct".into());
        }
        let known = |n: &String| -> Result<(), String> {
            if names.contains(n) {
                Ok(())
            } else {
                Err(format!("timeline names unknown host {n:?}"))
            }
        };
        for f in &self.timeline {
            match &f.kind {
                FaultKind::Partition { a, b }
                | FaultKind::Repair { a, b }
                | FaultKind::Hold { a, b }
                | FaultKind::Release { a, b }
                | FaultKind::Latency { a, b, .. } => {
                    known(a)?;
                    known(b)?;
                }
                FaultKind::PartitionOneway { from, to } | FaultKind::RepairOneway { from, to } => {
                    known(from)?;
                    known(to)?;
                }
                FaultKind::Crash { host }
                | FaultKind::Kill { host }
                | FaultKind::Bounce { host } => {
                    known(host)?;
                    if !mesh && host != self.server() {
                        return Err(format!("only the server can crash or bounce, not {host:?}"));
                    }
                }
                FaultKind::GracefulRestart { host } => {
                    if mesh || host != self.server() || self.workload.mutual {
                        return Err(format!(
                            "graceful_restart restarts the server of a client/server \
                             scenario, not {host:?}"
                        ));
                    }
                }
                FaultKind::Roam { host }
                | FaultKind::Suspend { host }
                | FaultKind::Wake { host } => {
                    known(host)?;
                }
                FaultKind::FailRate { rate } if !(0.0..=1.0).contains(rate) => {
                    return Err(format!("fail rate {rate} not within 0 and 1"));
                }
                FaultKind::FailRate { .. } => {}
            }
            if f.at_ms >= self.duration_s * 1000 {
                return Err(format!("fault at {} ms is after the end", f.at_ms));
            }
        }
        if let Some(sw) = &self.swarm {
            let known = [
                "partition",
                "partition_oneway",
                "hold",
                "crash",
                "graceful_restart",
                "latency",
            ];
            if sw.faults.is_empty() || sw.faults.iter().any(|f| !known.contains(&f.as_str())) {
                return Err(format!("swarm faults must be among {known:?}"));
            }
            if (mesh || self.workload.mutual) && sw.faults.iter().any(|f| f == "graceful_restart") {
                return Err(
                    "graceful_restart restarts the server of a client/server scenario".into(),
                );
            }
            let ranges = [sw.count, sw.start_ms, sw.duration_ms];
            if ranges.iter().any(|r| r[0] > r[1]) {
                return Err("swarm ranges must be [min, max]".into());
            }
            if (sw.start_ms[1] + sw.duration_ms[1]) >= self.duration_s * 1000 {
                return Err("swarm faults must heal before the end".into());
            }
        }
        let w = &self.workload;
        if w.size[0] > w.size[1] || w.interval_ms[0] > w.interval_ms[1] {
            return Err("workload ranges must be [min, max]".into());
        }
        if w.stream_size[0] > w.stream_size[1] || w.stream_size[0] < 10 {
            return Err("workload stream_size must be [min, max], at least 10".into());
        }
        if w.mutual && (self.clients().count() != 1 || self.clients().any(|c| !c.trusted)) {
            return Err("a mutual workload needs exactly one client, trusted".into());
        }
        if w.mutual && w.both_ways {
            return Err("both_ways is for client/server workloads, not mutual ones".into());
        }
        if w.size[0] < 10 {
            return Err("workload sizes start at 10 bytes (message id and client index)".into());
        }
        if self.link.latency_ms[0] > self.link.latency_ms[1] {
            return Err("link latency must be [min, max]".into());
        }
        if let Some(m) = self.link.bandwidth_mbit {
            if !(0.01..=100_000.0).contains(&m) {
                return Err("[link] bandwidth_mbit must be within 0.01..=100000".into());
            }
        }
        if self.link.queue_ms > 10_000 {
            return Err("[link] queue_ms must be at most 10000".into());
        }
        if !(0.0..=0.5).contains(&self.link.loss) {
            return Err("[link] loss must be within 0..=0.5".into());
        }
        for (key, [lo, hi]) in &self.workload_draw {
            if !DRAWABLE.contains(&key.as_str()) {
                return Err(format!(
                    "[workload_draw] cannot draw {key:?} (it draws {})",
                    DRAWABLE.join(", ")
                ));
            }
            if lo > hi {
                return Err(format!("[workload_draw] {key}: min above max"));
            }
        }
        if self.tick_ms == 0 || self.regression_tick_ms == Some(0) {
            return Err("tick_ms and regression_tick_ms must be at least 1".into());
        }
        // The transport configuration must be valid as well.
        crate::host::transport_config(self, 0, "check").map(|_| ())
    }
}
