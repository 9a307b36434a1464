//! `clipsync-sim`: run seeded failure scenarios against the real transport, replay one seed.
//!
//! ```text
//! clipsync-sim run [SCENARIO...] [--seeds N | --seed S | --seed-range A..B] [--jobs J] [--check-determinism]
//! clipsync-sim sweep [SCENARIO...] --minutes M [--from S] [--jobs J] [--check-determinism]
//! clipsync-sim replay SCENARIO --seed S [--trace]
//! ```
//!
//! `run` prints one line per failing seed, with the broken invariant and the command that
//! reproduces it, then `N passed, M failed`; it exits 1 if any run failed. `--seed-range A..B`
//! runs seeds A to B−1 of every scenario given (a long sweep beyond CI's seeds in one command).
//! `sweep` runs fresh seeds (from `--from`, default 1000) of every scenario given, a batch at a
//! time, until `--minutes` of wall time are spent, then reports as `run` does plus the seeds
//! per minute. `replay` prints the event trace (with `--trace`) and the verdict; two replays of
//! one seed print the same bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use clipsync_sim::host::Sabotage;
use clipsync_sim::runner::{Essentials, Isolation, reproduce_command, run_many, run_one};
use clipsync_sim::scenario::Scenario;

#[derive(Parser)]
#[command(
    name = "clipsync-sim",
    version,
    about = "Deterministic network simulator for the ClipSync transport"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run scenarios for many seeds.
    Run {
        /// Scenario files or names (default: every file in scenarios/).
        scenarios: Vec<String>,
        /// Seeds per scenario (default: each scenario's own `seeds`).
        #[arg(long)]
        seeds: Option<u64>,
        /// Run only this seed.
        #[arg(long, conflicts_with = "seeds")]
        seed: Option<u64>,
        /// Run seeds A to B−1 (`A..B`) of every scenario, instead of its own seeds.
        #[arg(long, conflicts_with_all = ["seeds", "seed"], value_parser = parse_range)]
        seed_range: Option<(u64, u64)>,
        /// Worker threads (default: the number of cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Run each seed twice; a differing trace hash is a failure.
        #[arg(long)]
        check_determinism: bool,
        /// Test only: break the harness on purpose (`drop-one-delivery`, `panic-on-delivery`).
        #[arg(long, hide = true)]
        sabotage: Option<String>,
    },
    /// Run fresh seeds until a time budget is spent; report seeds per minute.
    Sweep {
        /// Scenario files or names (default: every file in scenarios/).
        scenarios: Vec<String>,
        /// Wall-time budget, in minutes.
        #[arg(long)]
        minutes: f64,
        /// First seed (each scenario runs seeds from here upward).
        #[arg(long, default_value_t = 1000)]
        from: u64,
        /// Worker threads (default: the number of cores).
        #[arg(long)]
        jobs: Option<usize>,
        /// Run each seed twice; a differing trace hash is a failure.
        #[arg(long)]
        check_determinism: bool,
    },
    /// Run one seed in this process and print its essentials (what `run` workers call).
    #[command(hide = true)]
    Child {
        /// Scenario file.
        scenario: PathBuf,
        /// The seed.
        #[arg(long)]
        seed: u64,
        /// Test only: break the harness on purpose.
        #[arg(long)]
        sabotage: Option<String>,
    },
    /// Run one seed and print its verdict (and trace).
    Replay {
        /// Scenario file or name.
        scenario: String,
        /// The seed.
        #[arg(long)]
        seed: u64,
        /// Print the event trace.
        #[arg(long)]
        trace: bool,
    },
}

/// The scenarios directory: `./scenarios`, else the one in the source tree.
fn scenarios_dir() -> PathBuf {
    let local = PathBuf::from("scenarios");
    if local.is_dir() {
        local
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
    }
}

fn resolve(arg: &str) -> PathBuf {
    let p = PathBuf::from(arg);
    if p.is_file() {
        return p;
    }
    let named = scenarios_dir().join(format!("{arg}.toml"));
    if named.is_file() { named } else { p }
}

fn load(args: &[String]) -> Result<Vec<Scenario>, String> {
    if args.is_empty() {
        return Scenario::load_dir(&scenarios_dir()).map_err(|e| e.to_string());
    }
    args.iter()
        .map(|a| Scenario::load(&resolve(a)).map_err(|e| e.to_string()))
        .collect()
}

/// `A..B`, A < B.
fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once("..").ok_or("expected A..B")?;
    let (a, b): (u64, u64) = (
        a.parse().map_err(|e| format!("{a}: {e}"))?,
        b.parse().map_err(|e| format!("{b}: {e}"))?,
    );
    if a >= b {
        return Err(format!("empty range {a}..{b}"));
    }
    Ok((a, b))
}

fn parse_sabotage(s: Option<&str>) -> Result<Sabotage, String> {
    match s {
        None => Ok(Sabotage::default()),
        Some("drop-one-delivery") => Ok(Sabotage {
            drop_one_delivery: true,
            ..Sabotage::default()
        }),
        Some("panic-on-delivery") => Ok(Sabotage {
            panic_on_delivery: true,
            ..Sabotage::default()
        }),
        Some(other) => Err(format!("unknown sabotage {other:?}")),
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    match Cli::parse().command {
        Command::Run {
            scenarios,
            seeds,
            seed,
            seed_range,
            jobs,
            check_determinism,
            sabotage,
        } => {
            let sabotage = match parse_sabotage(sabotage.as_deref()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("clipsync-sim: {e}");
                    return ExitCode::from(2);
                }
            };
            let scenarios = match load(&scenarios) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("clipsync-sim: {e}");
                    return ExitCode::from(2);
                }
            };
            let mut pairs = Vec::new();
            for (i, s) in scenarios.iter().enumerate() {
                match (seed, seed_range) {
                    (Some(one), _) => pairs.push((i, one)),
                    (None, Some((a, b))) => pairs.extend((a..b).map(|k| (i, k))),
                    (None, None) => {
                        let mut all: Vec<u64> = (1..=seeds.unwrap_or(s.seeds)).collect();
                        all.extend(&s.regressions);
                        all.sort_unstable();
                        all.dedup();
                        pairs.extend(all.into_iter().map(|k| (i, k)));
                    }
                }
            }
            let jobs = jobs_or_cores(jobs);
            // Wall time of the sweep, for the figures printed at the end (the harness's own
            // clock; nothing simulated reads it).
            let started = std::time::Instant::now();
            let outcomes = run_many(
                &scenarios,
                &pairs,
                jobs,
                check_determinism,
                &isolation(),
                sabotage,
            );
            report(&scenarios, &outcomes, started.elapsed().as_secs_f64(), jobs)
        }
        Command::Sweep {
            scenarios,
            minutes,
            from,
            jobs,
            check_determinism,
        } => {
            let scenarios = match load(&scenarios) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("clipsync-sim: {e}");
                    return ExitCode::from(2);
                }
            };
            let jobs = jobs_or_cores(jobs);
            // The sweep's budget is wall time, on the harness's own clock: it decides how many
            // seeds run, never what happens inside one (each run is simulated and seeded).
            let budget = std::time::Duration::from_secs_f64(minutes.max(0.0) * 60.0);
            let started = std::time::Instant::now();
            let isolation = isolation();
            let mut outcomes = Vec::new();
            let mut next = from;
            // Batches of a few seeds per worker and scenario: short enough to stop near the
            // budget, long enough to keep every worker busy.
            let per_batch = (jobs as u64 * 2)
                .div_ceil(scenarios.len().max(1) as u64)
                .max(1);
            while started.elapsed() < budget {
                let pairs: Vec<(usize, u64)> = (0..scenarios.len())
                    .flat_map(|i| (next..next + per_batch).map(move |k| (i, k)))
                    .collect();
                next += per_batch;
                let batch = run_many(
                    &scenarios,
                    &pairs,
                    jobs,
                    check_determinism,
                    &isolation,
                    Sabotage::default(),
                );
                for o in batch.iter().filter(|o| !o.violations.is_empty()) {
                    let s = &scenarios[o.scenario];
                    println!("FAIL {} seed {}: {}", s.name, o.seed, o.violations[0]);
                }
                outcomes.extend(batch);
            }
            let wall = started.elapsed().as_secs_f64();
            println!(
                "swept seeds {from}..{next} of {} scenarios: {} seeds in {wall:.0} s, {:.0} seeds per minute",
                scenarios.len(),
                outcomes.len(),
                outcomes.len() as f64 * 60.0 / wall.max(1e-9)
            );
            report(&scenarios, &outcomes, wall, jobs)
        }
        Command::Child {
            scenario,
            seed,
            sabotage,
        } => match (
            Scenario::load(&scenario),
            parse_sabotage(sabotage.as_deref()),
        ) {
            (Ok(s), Ok(sabotage)) => {
                let r = run_one(&s, seed, sabotage);
                let e = Essentials {
                    hash: r.hash,
                    simulated: r.simulated,
                    violations: r.violations,
                    convergence: r.convergence,
                    figures: r.figures,
                };
                print!("{}", e.to_lines());
                ExitCode::SUCCESS
            }
            (Err(e), _) => {
                eprintln!("clipsync-sim: {e}");
                ExitCode::from(2)
            }
            (_, Err(e)) => {
                eprintln!("clipsync-sim: {e}");
                ExitCode::from(2)
            }
        },
        Command::Replay {
            scenario,
            seed,
            trace,
        } => {
            let s = match Scenario::load(&resolve(&scenario)) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("clipsync-sim: {e}");
                    return ExitCode::from(2);
                }
            };
            let report = run_one(&s, seed, Sabotage::default());
            if trace {
                for line in &report.trace {
                    println!("{line}");
                }
            }
            println!("scenario: {}", s.name);
            println!("seed: {seed}");
            println!("simulated: {:.3} s", report.simulated.as_secs_f64());
            println!("trace: {} events, hash {}", report.trace.len(), report.hash);
            if let Some(c) = report.convergence {
                println!(
                    "converged: {} ms after the last fault or copy",
                    c.as_millis()
                );
            }
            for (name, value) in &report.figures {
                println!("figure: {name} {value}");
            }
            if report.passed() {
                println!("verdict: pass");
                ExitCode::SUCCESS
            } else {
                for v in &report.violations {
                    println!("violation: {v}");
                }
                println!("verdict: FAIL");
                ExitCode::FAILURE
            }
        }
    }
}

/// Tells glibc's allocator to keep the memory runs free: blocks up to 64 MiB come from the heap
/// and a heap gives its top back only above 256 MiB free. By default every payload above 128 KiB
/// (stream payloads, clip contents) was mapped and unmapped afresh, and its pages faulted in
/// again each time: the kernel's page-fault and unmapping work was about 10% of
/// `peer_restart_streams` (perf), more on a virtual machine that hands freed pages to its host.
/// Nothing a run does depends on where its memory comes from.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn keep_freed_memory() {
    // SAFETY: mallopt only sets allocator parameters; called first thing in `main`, before any
    // other thread exists. A refusal (return 0) leaves the defaults, which are correct too.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn jobs_or_cores(jobs: Option<usize>) -> usize {
    jobs.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    })
}

/// Each run that crashes a host in a fresh process, the others here: see `Isolation::Auto`.
fn isolation() -> Isolation {
    match std::env::current_exe() {
        Ok(exe) => Isolation::Auto(exe),
        Err(_) => Isolation::InProcess,
    }
}

/// Prints the failures with their reproduce commands, a line per scenario, the speed and the
/// totals; the exit status says whether everything passed.
fn report(
    scenarios: &[Scenario],
    outcomes: &[clipsync_sim::runner::Outcome],
    wall: f64,
    jobs: usize,
) -> ExitCode {
    let mut failed = 0;
    for o in outcomes {
        if o.violations.is_empty() {
            continue;
        }
        failed += 1;
        let s = &scenarios[o.scenario];
        for v in &o.violations {
            println!("FAIL {} seed {}: {v}", s.name, o.seed);
        }
        println!("  reproduce: {}", reproduce_command(s, o.seed));
    }
    for (i, s) in scenarios.iter().enumerate() {
        let mine: Vec<_> = outcomes.iter().filter(|o| o.scenario == i).collect();
        let bad = mine.iter().filter(|o| !o.violations.is_empty()).count();
        let mut conv: Vec<u128> = mine
            .iter()
            .filter_map(|o| o.convergence.map(|c| c.as_millis()))
            .collect();
        conv.sort_unstable();
        let figures = match (conv.get(conv.len() / 2), conv.last()) {
            (Some(median), Some(max)) => {
                format!(
                    ", converged after the last fault or copy in {median} ms median, {max} ms max"
                )
            }
            _ => String::new(),
        };
        println!(
            "{:<24} {:>4} seeds, {:>4} failed{figures}",
            s.name,
            mine.len(),
            bad
        );
        let mut by_name: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for o in &mine {
            for (name, value) in &o.figures {
                by_name.entry(name).or_default().push(*value);
            }
        }
        for (name, mut values) in by_name {
            values.sort_by(f64::total_cmp);
            println!(
                "  figure {name}: median {} max {} min {} ({} seeds)",
                values[values.len() / 2],
                values[values.len() - 1],
                values[0],
                values.len()
            );
        }
    }
    let runs: u32 = outcomes.iter().map(|o| o.runs).sum();
    let simulated: f64 = outcomes
        .iter()
        .map(|o| o.simulated.as_secs_f64() * f64::from(o.runs))
        .sum();
    println!(
        "{runs} runs in {wall:.1} s on {jobs} threads: {:.1} runs/s, {:.0} simulated s per wall s",
        f64::from(runs) / wall,
        simulated / wall
    );
    println!("{} passed, {failed} failed", outcomes.len() - failed);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
