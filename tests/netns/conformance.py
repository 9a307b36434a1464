#!/usr/bin/env python3
"""The simulator against the real kernel: each case of the real-network fault arm
(`fault_arm.py`) next to the simulator scenario with the same parameters
(`scenarios/conform_*.toml`), their figures side by side with a verdict per figure.

Usage: conformance.py PATH/TO/clipsync PATH/TO/clipsync-sim [--seeds N]
       conformance.py --self-test   (the verdict rules on recorded figures; no root needed)

The simulator gives each figure over N seeds (20 by default): a median and a range. A figure
passes when the real one is within 2x of that range (from half its minimum to twice its
maximum: a figure that depends on where the backoff timer stood at the heal varies as much
between real runs as between seeds, so one real run is compared with the spread, not with one
value; for the heal-to-delivery delay, drawn from the backoff's jitter, only the upper end
counts), or, for latencies, when both are below 20 ms (timer and scheduling noise on a real
machine: a 7 ms against a 2 ms probe is the same answer). A p50 taken over one or two probes
(the arm's `probes_under_stream`) is their maximum, and is compared with the simulator's
maximum instead. The table shows the median's ratio too. A figure that differs for a reason the model
leaves out on purpose is listed in EXPLAINED with the reason, which scenarios/README.md ("The
link model") gives in full; it prints "explained" instead of failing. Exits 1 if a figure
fails, 0 otherwise; without root, namespaces, `nft` or `tc` it prints the simulator's column
alone and says SKIP for the real one (the fault arm's own reason).
"""

import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")

# (real case, simulator scenario, [(real figure, simulator figure)])
CASES = [
    ("rate10mbit", "conform_10mbit", [
        ("probe_under_stream_p50_ms", "probe_under_stream_p50_ms"),
        ("probe_under_stream_max_ms", "probe_under_stream_max_ms"),
        ("file_mbit_s", "stream_mbit_s"),
    ]),
    ("loss5", "conform_loss5", [
        ("probe_under_stream_p50_ms", "probe_under_stream_p50_ms"),
        ("probe_under_stream_max_ms", "probe_under_stream_max_ms"),
        ("file_mbit_s", "stream_mbit_s"),
    ]),
    ("blackhole", "conform_blackhole", [("heal_to_delivery_ms", "heal_to_delivery_ms")]),
    ("link_down", "conform_blackhole", [("heal_to_delivery_ms", "heal_to_delivery_ms")]),
    ("server_restart", "conform_restart", [("heal_to_delivery_ms", "heal_to_delivery_ms")]),
]

# Differences the model leaves out on purpose: (case, figure) -> why.
EXPLAINED = {
    ("rate10mbit", "probe_under_stream_p50_ms"): "the model's bottleneck queue is full whenever "
    "the stream is backlogged, so its median is its maximum; a real sender's congestion window "
    "keeps the tbf queue fuller or emptier between runs (real medians 238-347 ms, maxima "
    "471-525 ms, which the model's maximum matches)",
    ("loss5", "file_mbit_s"): "under 5% loss the real rate is set by TCP's congestion control "
    "(the window halves at each loss) and by the CPU: 51-919 Mbit/s between real runs on this "
    "machine; the model leaves congestion control out and keeps the link's rate (scenarios/"
    "README.md, The link model), so only the order of magnitude is predicted",
}

NOISE_MS = 20.0

# A percentile figure and the figure its small samples collapse into: the percentile is the
# upper one (index int(n * q)), so a p50 over one or two probes is their maximum. A run whose
# probes each wait for the last to settle puts few of them under a fast stream (loss5 at
# 260 Mbit/s: one or two, one of them behind a retransmission timeout, measured 861 ms in a CI
# run), and such a "p50" is compared with the simulator's maximum, which is what it is.
SMALL_SAMPLE = {"probe_under_stream_p50_ms": ("probes_under_stream", "probe_under_stream_max_ms")}

# Figures drawn from the redial backoff's full jitter (uniform from zero up): a real run can
# land anywhere from near zero, below the least of a few seeds (a CI run measured 40 ms against
# the simulator's 96-1444), so only the upper end is compared.
ANY_LOWER = {"heal_to_delivery_ms"}


def real_figures(binary):
    cases = sorted({c for c, _, _ in CASES})
    r = subprocess.run([sys.executable, os.path.join(HERE, "fault_arm.py"), binary, *cases],
                       capture_output=True, text=True)
    out = r.stdout
    if out.startswith("SKIP"):
        return None, out.strip()
    figures = {}
    for line in out.splitlines():
        m = re.match(r"(\w+)\s+(pass|FAIL)\s+(.*?)\s+\(\d", line)
        if m:
            figures[m.group(1)] = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", m.group(3))}
            figures[m.group(1)]["_verdict"] = m.group(2)
    return figures, out.strip()


def sim_figures(sim, seeds):
    scenarios = sorted({s for _, s, _ in CASES})
    paths = [os.path.join(ROOT, "scenarios", f"{s}.toml") for s in scenarios]
    r = subprocess.run([sim, "run", *paths, "--seeds", str(seeds)], capture_output=True, text=True)
    figures, current = {}, None
    for line in r.stdout.splitlines():
        m = re.match(r"(\w+)\s+\d+ seeds,\s+(\d+) failed", line)
        if m:
            current = m.group(1)
            figures[current] = {"_failed": int(m.group(2))}
        m = re.match(r"\s+figure (\w+): median ([\d.]+) max ([\d.]+) min ([\d.]+)", line)
        if m and current:
            figures[current][m.group(1)] = float(m.group(2))
            figures[current][m.group(1) + "_range"] = (float(m.group(4)), float(m.group(3)))
    return figures, r.stdout.strip()


def verdict(case, figure, real, sim, span):
    """pass when the real figure is within 2x of what the simulator gave over its seeds."""
    if real is None or sim is None:
        return "missing"
    if figure.endswith("_ms") and real < NOISE_MS and sim < NOISE_MS:
        return "pass (both below noise)"
    lo, hi = span or (sim, sim)
    if figure in ANY_LOWER:
        lo = 0.0
    ratio = f"{sim / real:.2f}x" if real > 0 else "-"
    if lo / 2 <= real <= hi * 2:
        return f"pass ({ratio}; simulator {lo:g}-{hi:g})"
    if (case, figure) in EXPLAINED:
        return f"explained ({ratio}): {EXPLAINED[(case, figure)]}"
    return f"FAIL ({ratio}; simulator {lo:g}-{hi:g})"


def self_test():
    """The verdict rules on recorded figures, without root or binaries (`--self-test`, run by
    .ci/run): the CI run that failed on loss5 (a p50 of 2 probes, 861 ms, is their maximum and
    passes against the simulator's maximum) and the same figure over 7 probes (a true median,
    compared with the simulator's medians: it fails). Exits 1 if a rule gives another answer."""
    global real_figures, sim_figures
    sim = {"conform_loss5": {"_failed": 0,
                             "probe_under_stream_p50_ms": 165.0,
                             "probe_under_stream_p50_ms_range": (19.0, 385.0),
                             "probe_under_stream_max_ms": 363.0,
                             "probe_under_stream_max_ms_range": (22.0, 803.0),
                             "stream_mbit_s": 329.0, "stream_mbit_s_range": (151.0, 976.0)},
           "conform_10mbit": {"_failed": 0,
                              "probe_under_stream_p50_ms": 603.0,
                              "probe_under_stream_p50_ms_range": (603.0, 603.0),
                              "probe_under_stream_max_ms": 605.0,
                              "probe_under_stream_max_ms_range": (605.0, 605.0),
                              "stream_mbit_s": 9.95, "stream_mbit_s_range": (9.95, 9.95)},
           "conform_blackhole": {"_failed": 0, "heal_to_delivery_ms": 651.0,
                                 "heal_to_delivery_ms_range": (0.0, 1444.0)},
           "conform_restart": {"_failed": 0, "heal_to_delivery_ms": 415.0,
                               "heal_to_delivery_ms_range": (0.0, 1754.0)}}
    heal = {"heal_to_delivery_ms": 300.0, "_verdict": "pass"}

    def real(probes):
        return {"loss5": {"probe_under_stream_p50_ms": 861.0, "probe_under_stream_max_ms": 861.0,
                          "probes_under_stream": probes, "file_mbit_s": 262.0,
                          "_verdict": "pass"},
                "rate10mbit": {"probe_under_stream_p50_ms": 348.0,
                               "probe_under_stream_max_ms": 457.0, "probes_under_stream": 20,
                               "file_mbit_s": 9.53, "_verdict": "pass"},
                "blackhole": heal, "link_down": heal, "server_restart": heal}

    failures = 0
    for probes, expected in [(2, 0), (7, 1)]:
        real_figures = lambda _binary, r=real(probes): (r, "")
        sim_figures = lambda _sim, _seeds: (sim, "")
        sys.argv = ["conformance.py", "clipsync", "clipsync-sim"]
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code
        if code != expected:
            print(f"SELF-TEST FAIL: loss5 p50 861 ms over {probes} probes exited {code}, "
                  f"expected {expected}")
            failures += 1
    print(f"self-test: {'pass' if not failures else f'{failures} failed'}")
    sys.exit(1 if failures else 0)


def main():
    args = sys.argv[1:]
    seeds = 20
    if "--seeds" in args:
        i = args.index("--seeds")
        seeds = int(args[i + 1])
        del args[i:i + 2]
    if len(args) != 2:
        raise SystemExit(__doc__)
    binary, sim = (os.path.abspath(a) for a in args)
    sim_fig, sim_out = sim_figures(sim, seeds)
    real_fig, real_out = real_figures(binary)
    failed = 0
    for _, scenario, _ in CASES:
        if sim_fig.get(scenario, {}).get("_failed", 1):
            print(f"FAIL simulator scenario {scenario} failed or did not run:\n{sim_out}")
            failed += 1
    if real_fig is None:
        print(real_out)
    print(f"{'case':<15} {'figure':<27} {'real':>9} {'simulator':>10}  verdict")
    for case, scenario, pairs in CASES:
        for real_name, sim_name in pairs:
            s = sim_fig.get(scenario, {}).get(sim_name)
            span = sim_fig.get(scenario, {}).get(sim_name + "_range")
            r = None if real_fig is None else real_fig.get(case, {}).get(real_name)
            note = ""
            if real_name in SMALL_SAMPLE and real_fig is not None:
                count, instead = SMALL_SAMPLE[real_name]
                n = real_fig.get(case, {}).get(count)
                if n is not None and n <= 2:
                    s = sim_fig.get(scenario, {}).get(instead)
                    span = sim_fig.get(scenario, {}).get(instead + "_range")
                    note = f" [{n:g} probe(s) under the stream: the p50 is their max, against the simulator's max]"
            v = "real arm skipped" if real_fig is None else verdict(case, real_name, r, s, span)
            if v.startswith("FAIL") or v == "missing":
                failed += 1
            fmt = lambda x: "-" if x is None else f"{x:g}"
            print(f"{case:<15} {real_name:<27} {fmt(r):>9} {fmt(s):>10}  {v}{note}")
    if real_fig is not None:
        for case in {c for c, _, _ in CASES}:
            if real_fig.get(case, {}).get("_verdict") != "pass":
                print(f"FAIL real case {case} did not pass:\n{real_out}")
                failed += 1
    print(f"conformance: {'pass' if not failed else f'{failed} failed'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        self_test()
    main()
