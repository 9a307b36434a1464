//! Runs scenarios: one seed ([`run_one`]) or many in parallel ([`run_many`]).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use tracing_subscriber::layer::SubscriberExt;

use crate::host::{self, Log, Sabotage, SharedLog};
use crate::invariants::{self, Ending, Violation};
use crate::scenario::{FaultKind, Scenario};
use crate::trace::{self, Trace};

/// What one seed of one scenario did.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The scenario's name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// The event trace.
    pub trace: Vec<String>,
    /// The trace's hash: the determinism fingerprint.
    pub hash: String,
    /// Broken invariants (empty: passed).
    pub violations: Vec<Violation>,
    /// Simulated time the run covered.
    pub simulated: Duration,
    /// What the hosts observed.
    pub log: Log,
    /// Mesh scenarios: how long the peers took to converge after the last fault or copy.
    pub convergence: Option<Duration>,
    /// The run's figures ([`invariants::figures`]).
    pub figures: BTreeMap<String, f64>,
}

impl RunReport {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The command that replays one seed with its trace.
pub fn reproduce_command(s: &Scenario, seed: u64) -> String {
    format!(
        "cargo run --release -p clipsync-sim -- replay {} --seed {seed} --trace",
        s.path.display()
    )
}

thread_local! {
    static PANICS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Records panics of the current thread (a run's hosts all run on its thread), which the run
/// reports as `no-panic` violations, and prints each as one line naming the run.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // Also on stderr, with the run: a panic while a panicking task is torn down aborts
            // the process before any report (a mutant whose redials had no jitter ran turmoil
            // out of ports; tokio's teardown of the panicked task panicked again), and this
            // line is then all that says which seed did it.
            eprintln!(
                "clipsync-sim: panic in {}: {info}",
                crate::trace::current_run().unwrap_or_else(|| "no run".to_string())
            );
            let recorded = PANICS
                .try_with(|p| {
                    p.borrow_mut().push(info.to_string());
                })
                .is_ok();
            if !recorded {
                default(info);
            }
        }));
    });
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn apply(sim: &mut turmoil::Sim<'_>, s: &Scenario, fault: &FaultKind) {
    let others = |host: &str| {
        s.hosts
            .iter()
            .filter(|h| h.name != host)
            .map(|h| h.name.clone())
            .collect::<Vec<_>>()
    };
    match fault {
        FaultKind::Roam { host } => crate::roam::roam(sim.lookup(host.as_str())),
        FaultKind::Suspend { host } => {
            for other in others(host) {
                sim.hold(host.as_str(), other.as_str());
            }
        }
        FaultKind::Wake { host } => {
            for other in others(host) {
                sim.release(host.as_str(), other.as_str());
            }
        }
        FaultKind::Partition { a, b } => sim.partition(a.as_str(), b.as_str()),
        FaultKind::PartitionOneway { from, to } => sim.partition_oneway(from.as_str(), to.as_str()),
        FaultKind::Repair { a, b } => sim.repair(a.as_str(), b.as_str()),
        FaultKind::RepairOneway { from, to } => sim.repair_oneway(from.as_str(), to.as_str()),
        FaultKind::Hold { a, b } => sim.hold(a.as_str(), b.as_str()),
        FaultKind::Release { a, b } => sim.release(a.as_str(), b.as_str()),
        FaultKind::Crash { host } => sim.crash(host.as_str()),
        FaultKind::Kill { host } => {
            crate::process::kill(host);
            sim.crash(host.as_str());
        }
        FaultKind::GracefulRestart { host } => crate::process::request_restart(host),
        FaultKind::Bounce { host } => {
            crate::process::revive(host);
            sim.bounce(host.as_str());
        }
        FaultKind::Latency { a, b, ms: v } => sim.set_link_latency(a.as_str(), b.as_str(), ms(*v)),
        FaultKind::FailRate { rate } => sim.set_fail_rate(*rate),
    }
}

/// Runs one seed of `s`.
pub fn run_one(s: &Scenario, seed: u64, sabotage: Sabotage) -> RunReport {
    let s = &s.for_seed(seed);
    trace::set_run(format!(
        "{} seed {seed} (reproduce: {})",
        s.name,
        reproduce_command(s, seed)
    ));
    install_panic_hook();
    PANICS.with(|p| p.borrow_mut().clear());
    let trace = Trace::default();
    let log: SharedLog = Arc::new(Mutex::new(Log::default()));
    let roams = s
        .timeline
        .iter()
        .any(|f| matches!(f.kind, FaultKind::Roam { .. }));
    crate::roam::start_run(roams.then(Default::default));
    crate::process::start_run();
    clipsync::enable_self_checks();
    let subscriber = tracing_subscriber::registry().with(trace.layer());
    let (error, simulated, first_fault, last_heal) =
        tracing::subscriber::with_default(subscriber, || {
            let mut sim = turmoil::Builder::new()
                .rng_seed(seed)
                .epoch(crate::crypto::epoch())
                .simulation_duration(Duration::from_secs(s.duration_s))
                .tick_duration(s.tick_for(seed))
                .min_message_latency(ms(s.link.latency_ms[0]))
                .max_message_latency(ms(s.link.latency_ms[1]))
                .fail_rate(s.link.fail_rate)
                .repair_rate(s.link.repair_rate)
                .build();
            if !s.workload_draw.is_empty() {
                let w = &s.workload;
                let drawn = format!(
                    "WORKLOAD pipeline={} both_ways={} open={} close_every={} \
                     drop_stream_every={} stall_every={} stream_every={}",
                    w.pipeline,
                    w.both_ways,
                    w.open,
                    w.close_every,
                    w.drop_stream_every,
                    w.stall_every,
                    w.stream_every
                );
                trace.push(Duration::ZERO, "harness", &drawn);
            }
            host::register(&mut sim, s, seed, &log, sabotage);
            let timeline = s.timeline_for(seed);
            let mut next = 0;
            let mut first_fault = None;
            let mut last_heal = None;
            let result = catch_unwind(AssertUnwindSafe(|| {
                loop {
                    while next < timeline.len() && sim.elapsed() >= ms(timeline[next].at_ms) {
                        let fault = &timeline[next].kind;
                        apply(&mut sim, s, fault);
                        trace.push(sim.elapsed(), "harness", &format!("FAULT {fault:?}"));
                        // Which peers are down, for the mesh invariants.
                        let at = sim.elapsed();
                        let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
                        match fault {
                            FaultKind::Crash { host } | FaultKind::Kill { host } => {
                                l.mesh.crashed.insert(host.clone());
                                l.mesh.crashes.push((host.clone(), at));
                            }
                            FaultKind::GracefulRestart { host } => {
                                crate::process::request_restart(host)
                            }
                            FaultKind::Bounce { host } => {
                                // A bounce of a running host restarts it: a crash too.
                                let was_down = l.mesh.crashed.remove(host);
                                if !was_down {
                                    l.mesh.crashes.push((host.clone(), at));
                                }
                            }
                            _ => {}
                        }
                        drop(l);
                        first_fault.get_or_insert(sim.elapsed());
                        if fault.heals() {
                            last_heal = Some(sim.elapsed());
                        }
                        next += 1;
                    }
                    match sim.step() {
                        Ok(true) => return Ok(()),
                        Ok(false) => {}
                        Err(e) => return Err(e.to_string()),
                    }
                }
            }));
            let simulated = sim.elapsed();
            let error = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some("the simulation panicked".to_string()),
            };
            (error, simulated, first_fault, last_heal)
        });
    let panics = PANICS.with(|p| std::mem::take(&mut *p.borrow_mut()));
    let log = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let ending = Ending {
        error,
        panics,
        last_heal,
        first_fault,
    };
    let violations = invariants::check(s, &log, &ending);
    let convergence = invariants::convergence(&log, &ending);
    let figures = invariants::figures(s, &log, &ending);
    let lines = trace.lines();
    RunReport {
        scenario: s.name.clone(),
        seed,
        hash: trace::hash(&lines),
        trace: lines,
        violations,
        simulated,
        log,
        convergence,
        figures,
    }
}

/// One entry of a sweep's result.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Index of the scenario in the list given.
    pub scenario: usize,
    /// The seed.
    pub seed: u64,
    /// Broken invariants, including determinism when checked.
    pub violations: Vec<Violation>,
    /// Simulated time covered (of the first run, when run twice).
    pub simulated: Duration,
    /// Runs made (2 when checking determinism).
    pub runs: u32,
    /// Mesh scenarios: convergence time (of the first run).
    pub convergence: Option<Duration>,
    /// The run's figures (of the first run).
    pub figures: BTreeMap<String, f64>,
}

/// Where each run of a sweep executes.
#[derive(Clone, Debug)]
pub enum Isolation {
    /// In this process (fast; fine for scenarios without crashes).
    InProcess,
    /// In a fresh child process running this executable's hidden `child` command.
    ///
    /// Needed for a faithful determinism check: tokio numbers tasks with a process-wide
    /// counter and shuts a crashed host's tasks down in an order that depends on those
    /// numbers, so a crash scenario run twice *in one process* closes its sockets in a
    /// different order the second time. A fresh process starts every run from the same state,
    /// exactly as `replay` does.
    Process(std::path::PathBuf),
    /// A fresh child process for the runs that crash a host (the only ones whose trace
    /// depends on tokio's process-wide task numbering, see `Process`), this process for the
    /// rest: starting a child costs more than many a short run.
    Auto(std::path::PathBuf),
}

/// The essentials of one run, as a child process reports them.
#[derive(Clone, Debug, PartialEq)]
pub struct Essentials {
    /// Trace hash.
    pub hash: String,
    /// Simulated time.
    pub simulated: Duration,
    /// Broken invariants.
    pub violations: Vec<Violation>,
    /// Mesh scenarios: convergence time.
    pub convergence: Option<Duration>,
    /// The run's figures.
    pub figures: BTreeMap<String, f64>,
}

impl Essentials {
    /// What `child` prints: `hash H`, `simulated S`, then one `violation NAME<TAB>DETAIL` each.
    pub fn to_lines(&self) -> String {
        let mut out = format!(
            "hash {}\nsimulated {}\n",
            self.hash,
            self.simulated.as_nanos()
        );
        if let Some(c) = self.convergence {
            out.push_str(&format!("convergence {}\n", c.as_nanos()));
        }
        for (name, value) in &self.figures {
            out.push_str(&format!("figure {name} {value}\n"));
        }
        for v in &self.violations {
            out.push_str(&format!(
                "violation {}\t{}\n",
                v.invariant,
                v.detail.replace('\n', " ")
            ));
        }
        out
    }

    fn parse(text: &str) -> Result<Essentials, String> {
        let mut hash = None;
        let mut simulated = None;
        let mut convergence = None;
        let mut figures = BTreeMap::new();
        let mut violations = Vec::new();
        for line in text.lines() {
            if let Some(h) = line.strip_prefix("hash ") {
                hash = Some(h.to_string());
            } else if let Some(n) = line.strip_prefix("simulated ") {
                simulated = n.parse::<u64>().ok().map(Duration::from_nanos);
            } else if let Some(n) = line.strip_prefix("convergence ") {
                convergence = n.parse::<u64>().ok().map(Duration::from_nanos);
            } else if let Some((name, value)) =
                line.strip_prefix("figure ").and_then(|f| f.split_once(' '))
            {
                if let Ok(v) = value.parse::<f64>() {
                    figures.insert(name.to_string(), v);
                }
            } else if let Some(v) = line.strip_prefix("violation ") {
                let (name, detail) = v.split_once('\t').unwrap_or((v, ""));
                violations.push(Violation {
                    invariant: invariant_name(name),
                    detail: detail.to_string(),
                });
            }
        }
        Ok(Essentials {
            hash: hash.ok_or("child printed no hash")?,
            simulated: simulated.ok_or("child printed no simulated time")?,
            violations,
            convergence,
            figures,
        })
    }
}

/// The static name for an invariant name read back from a child.
fn invariant_name(name: &str) -> &'static str {
    const KNOWN: [&str; 19] = [
        "deliver-after-heal",
        "session-lost-reason",
        "single-connection",
        "single-link",
        "no-protocol-violation",
        "converged",
        "transport-exactly-once",
        "no-echo",
        "no-panic",
        "finished",
        "exactly-once-in-order",
        "settled",
        "max-send-time",
        "reconnected",
        "untrusted-refused",
        "all-delivered",
        "determinism",
        "child",
        "unknown",
    ];
    KNOWN.into_iter().find(|k| *k == name).unwrap_or("unknown")
}

fn run_essentials(
    s: &Scenario,
    seed: u64,
    isolation: &Isolation,
    sabotage: Sabotage,
) -> Essentials {
    let child = match isolation {
        Isolation::InProcess => None,
        Isolation::Process(exe) => Some(exe),
        Isolation::Auto(exe) => s.crashes_hosts(seed).then_some(exe),
    };
    match child {
        None => {
            let r = run_one(s, seed, sabotage);
            Essentials {
                hash: r.hash,
                simulated: r.simulated,
                violations: r.violations,
                convergence: r.convergence,
                figures: r.figures,
            }
        }
        Some(exe) => {
            let mut cmd = std::process::Command::new(exe);
            cmd.arg("child")
                .arg(&s.path)
                .arg("--seed")
                .arg(seed.to_string());
            if sabotage.drop_one_delivery {
                cmd.args(["--sabotage", "drop-one-delivery"]);
            }
            let out = cmd.output();
            let failed = |detail: String| Essentials {
                hash: String::from("-"),
                simulated: Duration::ZERO,
                violations: vec![Violation {
                    invariant: "child",
                    detail,
                }],
                convergence: None,
                figures: BTreeMap::new(),
            };
            match out {
                Ok(o) if o.status.success() => {
                    Essentials::parse(&String::from_utf8_lossy(&o.stdout)).unwrap_or_else(failed)
                }
                Ok(o) => failed(format!(
                    "child exited with {}: {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => failed(format!("cannot start child: {e}")),
            }
        }
    }
}

/// Runs every (scenario, seed) pair on `jobs` threads; with `check_determinism` each seed runs
/// twice and differing trace hashes are a violation. Results come back in input order.
pub fn run_many(
    scenarios: &[Scenario],
    pairs: &[(usize, u64)],
    jobs: usize,
    check_determinism: bool,
    isolation: &Isolation,
    sabotage: Sabotage,
) -> Vec<Outcome> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new(vec![None; pairs.len()]);
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(si, seed)) = pairs.get(i) else {
                        return;
                    };
                    let s = &scenarios[si];
                    let first = run_essentials(s, seed, isolation, sabotage);
                    let mut violations = first.violations.clone();
                    let mut runs = 1;
                    if check_determinism {
                        let second = run_essentials(s, seed, isolation, sabotage);
                        runs = 2;
                        if second.hash != first.hash {
                            violations.push(Violation {
                                invariant: "determinism",
                                detail: format!(
                                    "trace hash {} then {} (diff two `replay --trace` outputs)",
                                    first.hash, second.hash
                                ),
                            });
                        }
                    }
                    let outcome = Outcome {
                        scenario: si,
                        seed,
                        violations,
                        simulated: first.simulated,
                        runs,
                        convergence: first.convergence,
                        figures: first.figures,
                    };
                    results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(outcome);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .flatten()
        .collect()
}
