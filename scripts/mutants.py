#!/usr/bin/env python3
"""Mutation run with the simulator as the only test (issue 17, item 5).

Usage: scripts/mutants.py [--seeds N] [MUTANT_ID ...]
       scripts/mutants.py --check

`--check` (run by `.ci/run`, no build) only verifies that every mutant's text occurs exactly
once in its file, so a refactoring cannot silently turn a mutant stale.

Each mutant below is one realistic single-point bug in `src/core` or `src/driver` (one in the
API, `src/transport`, where the simulator's harness uses `close_and_drain`): the script applies
it, builds the simulator in release, runs every scenario for N seeds (5 by default: `clipsync-sim
run --seeds N`, with each scenario's regression seeds), restores the file, and prints one
line per mutant: `caught` (some invariant failed, with the first failure), `MISSED` (every
scenario passed), `equivalent` (every scenario passed, and EQUIVALENT says why no run can tell
it from the original), or `not viable` (it did not compile). Then the kill rate over the viable
ones (compiled, not equivalent), and over all that compiled. Exits 1 if any viable one was
missed. The checkout must be clean in the mutated files; they are restored even on Ctrl-C.
"""

import os
import re
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

# (id, file, original text (must occur exactly once), replacement, the bug it plants)
MUTANTS = [
    ("ack-keeps-last", "src/core/session.rs",
     "while self.unacked.front().is_some_and(|(s, _, _)| *s <= last_seq) {",
     "while self.unacked.front().is_some_and(|(s, _, _)| *s < last_seq) {",
     "an ACK releases every acknowledged frame but the last"),
    ("ack-every-late", "src/core/session.rs",
     "if self.unacked_received >= self.p.ack_every {",
     "if self.unacked_received > self.p.ack_every {",
     "the count-triggered ACK comes one frame late"),
    ("replay-skips-first", "src/core/session.rs",
     ".extend(self.unacked.iter().map(|(_, _, f)| f.clone()));",
     ".extend(self.unacked.iter().skip(1).map(|(_, _, f)| f.clone()));",
     "a resume replays all unacknowledged frames but the first"),
    ("duplicate-check", "src/core/session.rs",
     "if seq <= self.received {",
     "if seq < self.received {",
     "a replayed frame equal to the last one received is taken again"),
    ("retained-leak", "src/core/session.rs",
     "                self.retained -= retained_cost(&f);\n",
     "",
     "acknowledged frames are never subtracted from the replay buffer's cost"),
    ("idle-while-not-reading", "src/core/session.rs",
     "if !self.not_reading && now.saturating_sub(self.last_recv) >= self.p.idle_timeout {",
     "if now.saturating_sub(self.last_recv) >= self.p.idle_timeout {",
     "a receiver that stopped reading for its application times the peer out"),
    ("carried-reversed", "src/core/connection.rs",
     "for m in carried.into_iter().rev() {",
     "for m in carried.into_iter() {",
     "messages carried to a new session go in reverse order"),
    ("on-wire-off-by-one", "src/core/connection.rs",
     "            let failure = if seq <= on_wire {",
     "            let failure = if seq < on_wire {",
     "the last send on the wire is reported as never sent"),
    ("announced-hash-inverted", "src/core/streams.rs",
     "} else if s.announced_hash.is_some_and(|h| h != sha) {",
     "} else if s.announced_hash.is_some_and(|h| h == sha) {",
     "a stream whose announced hash matches is refused"),
    ("chunk-overlap-not-skipped", "src/core/streams.rs",
     "let skip = (s.received - c.offset) as usize;",
     "let skip = 0usize;",
     "a chunk overlapping what was received (after a resume) is taken whole"),
    ("no-starved-credit", "src/core/streams.rs",
     "if !starved || room >= self.max_chunk {",
     "if !starved || room < u64::MAX {",
     "a stream starved by the connection window never gets room"),
    ("backoff-never-resets", "src/core/backoff.rs",
     "                self.attempt = 0;\n",
     "",
     "the redial backoff never starts over after a long connection"),
    ("backoff-no-jitter", "src/core/backoff.rs",
     "low + span.mul_f64(draw.clamp(0.0, 1.0))",
     "low + span.mul_f64(0.0)",
     "the redial delay has no jitter"),
    ("resume-point-plus-one", "src/driver/connection/dial.rs",
     "redial(self.session_id, self.core.received())",
     "redial(self.session_id, self.core.received() + 1)",
     "a redial claims one frame more than it received"),
    ("writer-bulk-first", "src/driver/writer.rs",
     "                Some(cmd) = urgent.recv() => cmd,\n                Some(cmd) = bulk.recv() => cmd,",
     "                Some(cmd) = bulk.recv() => cmd,\n                Some(cmd) = urgent.recv() => cmd,",
     "the writer drains stream data before messages"),
    ("teardown-waits", "src/driver/connection.rs",
     "if replacement.is_some() || suspended {",
     "if replacement.is_some() {",
     "a broken connection's redial waits for its stuck writer"),
    ("ended-send-waits", "src/driver/connection.rs",
     "Some(cmd) = self.commands.recv() => settle_unsent(cmd, &cause),",
     "Some(cmd) = std::future::pending::<Option<Command>>() => settle_unsent(cmd, &cause),",
     "a send on a connection closed for good waits out its teardown"),
    ("deliveries-before-settle", "src/driver/connection.rs",
     "        self.commands.close();\n"
     "        while let Ok(cmd) = self.commands.try_recv() {\n"
     "            settle_unsent(cmd, &cause);\n"
     "        }\n"
     "        let _ = self.state.send(ConnectionState::Closed(cause));\n"
     "        // Messages received before the end are still the application's.\n"
     "        for m in self.deliveries.drain(..) {\n"
     "            if self.incoming.send(m).await.is_err() {\n"
     "                break;\n"
     "            }\n"
     "        }\n",
     "        for m in self.deliveries.drain(..) {\n"
     "            if self.incoming.send(m).await.is_err() {\n"
     "                break;\n"
     "            }\n"
     "        }\n"
     "        self.commands.close();\n"
     "        while let Ok(cmd) = self.commands.try_recv() {\n"
     "            settle_unsent(cmd, &cause);\n"
     "        }\n"
     "        let _ = self.state.send(ConnectionState::Closed(cause));\n",
     "sends on a connection that ended wait until its application took every delivery"),
    ("drain-returns-nothing", "src/transport/mod.rs",
     "        self.closing(ReasonCode::Normal, String::new(), true).await\n",
     "        self.closing(ReasonCode::Normal, String::new(), false).await\n",
     "close_and_drain drops what the peer delivered instead of returning it"),
    ("no-starved-reading", "src/driver/connection.rs",
     "|| (self.core.incoming_starved() && self.held_bytes < self.starved_budget)\n",
     "|| false\n",
     "a reader waiting for a stream's data stops reading behind queued messages"),
]


# Mutants no simulated run can tell from the original, and why. A miss listed here prints
# "equivalent" and counts apart; any other miss needs the workload or invariant that catches it.
EQUIVALENT = {
    "ack-every-late": "the ACK that waits for one more frame is sent by the ack_delay timer "
    "(5 ms) anyway: only the replay buffer's occupancy moves, by at most ack_delay; no "
    "delivery, order or settlement changes (a throughput benchmark could see it, no invariant "
    "can)",
    "duplicate-check": "a ClipSync sender replays from exactly the peer's last_received + 1, so "
    "no frame equal to the last received ever arrives from it; the rule is for other "
    "implementations (PROTOCOL.md 4) and is checked by tests/malformed.rs and the fuzzers",
    "chunk-overlap-not-skipped": "a ClipSync sender resumes a stream exactly at the receiver's "
    "CREDIT offset, so no chunk overlaps what was received; trimming is for other "
    "implementations (PROTOCOL.md 5.3), checked by the unit test in src/core/streams.rs and "
    "the independent Python client",
}


def run(cmd, timeout):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def check():
    """Exit 1 naming every mutant whose original text does not occur exactly once."""
    stale = []
    for mid, path, old, _new, _what in MUTANTS:
        with open(os.path.join(ROOT, path)) as f:
            n = f.read().count(old)
        if n != 1:
            stale.append(f"{mid}: its text occurs {n} times in {path}")
    for line in stale:
        print(f"stale mutant {line}")
    print(f"{len(MUTANTS) - len(stale)} of {len(MUTANTS)} mutants apply")
    sys.exit(1 if stale else 0)


def main():
    args = sys.argv[1:]
    if args == ["--check"]:
        check()
    seeds = 5
    if "--seeds" in args:
        i = args.index("--seeds")
        seeds = int(args[i + 1])
        del args[i:i + 2]
    chosen = [m for m in MUTANTS if not args or m[0] in args]
    sim = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
                       "release", "clipsync-sim")
    results = []
    for mid, path, old, new, what in chosen:
        full = os.path.join(ROOT, path)
        with open(full) as f:
            original = f.read()
        if original.count(old) != 1:
            results.append((mid, "stale", f"the text to mutate occurs {original.count(old)} times"))
            print(f"{mid:<26} stale: the text to mutate occurs {original.count(old)} times", flush=True)
            continue
        t0 = time.monotonic()
        try:
            with open(full, "w") as f:
                f.write(original.replace(old, new))
            b = run(["cargo", "build", "--quiet", "--release", "-p", "clipsync-sim"], 1800)
            if b.returncode != 0:
                verdict, detail = "not viable", b.stderr.strip().splitlines()[0] if b.stderr else ""
            else:
                r = run([sim, "run", "--seeds", str(seeds)], 3600)
                fails = [l for l in r.stdout.splitlines() if l.startswith("FAIL ")]
                if r.returncode != 0:
                    verdict = "caught"
                    last = (r.stdout.strip() or r.stderr.strip() or "(no output)").splitlines()
                    detail = fails[0] if fails else last[-1]
                elif mid in EQUIVALENT:
                    verdict, detail = "equivalent", EQUIVALENT[mid]
                else:
                    verdict, detail = "MISSED", "every scenario passed"
        finally:
            with open(full, "w") as f:
                f.write(original)
        results.append((mid, verdict, detail))
        print(f"{mid:<26} {verdict:<10} {what} -- {detail[:160]} ({time.monotonic() - t0:.0f} s)",
              flush=True)
    compiled = [r for r in results if r[1] in ("caught", "MISSED", "equivalent")]
    viable = [r for r in compiled if r[1] != "equivalent"]
    caught = [r for r in viable if r[1] == "caught"]
    if viable:
        print(f"kill rate: {len(caught)}/{len(viable)} = {100 * len(caught) / len(viable):.0f}% "
              f"of viable mutants, {len(compiled) - len(viable)} equivalent apart "
              f"({len(caught)}/{len(compiled)} = {100 * len(caught) / len(compiled):.0f}% of all "
              f"that compiled; {seeds} seeds per scenario)")
    # Leave the tree built as it is checked in.
    run(["cargo", "build", "--quiet", "--release", "-p", "clipsync-sim"], 1800)
    sys.exit(0 if viable and len(caught) == len(viable) else 1)


if __name__ == "__main__":
    main()
