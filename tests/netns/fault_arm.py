#!/usr/bin/env python3
"""The real-network fault arm: `clipsync serve` and `clipsync send` in two network namespaces
joined by a veth pair, with faults made by the real kernel.

Usage: fault_arm.py PATH/TO/clipsync [CASE ...]

Cases (each next to the simulator scenario that models the same fault):
  blackhole       nftables drops everything between the two for 6 s (> the 3 s heartbeat
                  timeout), then the rule goes: a real half-open TCP connection; a 16 MiB
                  stream over a 20 mbit link is in flight (sim: resume_partition, stream_flap)
  link_down       the client's veth set down for 6 s, then up, the same stream in flight
                  (sim: resume_partition, stream_flap)
  server_restart  the server process killed (SIGKILL) and restarted 2 s later: the session is
                  lost (sim: resume_bounce)
  loss5           5% random packet loss each way (nft numgen) under a 32 MiB stream and probes
                  (the simulator has no packet-loss model: TCP hides loss from it)
  rate10mbit      a 10 mbit tbf qdisc on the client's veth under an 8 MiB stream and probes
                  (sim: slow_link / streams, bandwidth is not modelled either)

For each case the tools' output is checked against the simulator's invariants: every probe
message settled, each delivered one printed by the server exactly once and in order, no send
failed (after a restart: only as "delivery unknown"), the file saved under its BLAKE3 name with
the same bytes, and delivery back within a bound after the fault healed. Needs root, iproute2's
`ip netns`, `nft` and `tc`; without them it says SKIP with the reason and exits 0. Exits 1 if a
case failed.
"""

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures")
SUFFIX = str(os.getpid())
NS_S, NS_C = f"cs{SUFFIX}s", f"cs{SUFFIX}c"
DEV_S, DEV_C = f"vs{SUFFIX}"[:15], f"vc{SUFFIX}"[:15]
ADDR_S, ADDR_C = "10.77.0.1", "10.77.0.2"
PORT = 7070
# The reconnection bound after a fault heals: the largest backoff delay (2 s) plus the
# handshake and one probe interval, with room for a loaded CI machine.
RECONNECT_BOUND_MS = 5000
CONFIG = """heartbeat_interval_ms = 1000
heartbeat_timeout_ms = 3000
connect_timeout_ms = 2000
handshake_timeout_ms = 3000
backoff_initial_ms = 200
backoff_max_ms = 2000
"""


def skip(reason):
    print(f"SKIP real-network fault arm: {reason}")
    sys.exit(0)


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def preflight():
    if os.geteuid() != 0:
        skip("needs root for network namespaces")
    for tool in ("ip", "nft", "tc"):
        if shutil.which(tool) is None:
            skip(f"`{tool}` is not installed")
    probe = f"cs{SUFFIX}p"
    r = sh("ip", "netns", "add", probe, check=False)
    if r.returncode != 0:
        skip(f"cannot create a network namespace: {r.stderr.strip()}")
    try:
        # Everything a case needs, tried once: a veth pair, an nftables table, a tbf qdisc.
        steps = [
            ("ip", "link", "add", f"pa{SUFFIX}"[:15], "type", "veth", "peer", "name", f"pb{SUFFIX}"[:15]),
            ("ip", "link", "set", f"pa{SUFFIX}"[:15], "netns", probe),
            ("ip", "netns", "exec", probe, "nft", "add", "table", "inet", "probe"),
            ("tc", "-n", probe, "qdisc", "add", "dev", f"pa{SUFFIX}"[:15], "root", "tbf",
             "rate", "10mbit", "burst", "32kbit", "latency", "400ms"),
        ]
        for step in steps:
            r = sh(*step, check=False)
            if r.returncode != 0:
                skip(f"`{' '.join(step)}` failed: {r.stderr.strip()}")
    finally:
        sh("ip", "netns", "del", probe, check=False)
        sh("ip", "link", "del", f"pb{SUFFIX}"[:15], check=False)


def setup():
    sh("ip", "netns", "add", NS_S)
    sh("ip", "netns", "add", NS_C)
    sh("ip", "link", "add", DEV_S, "type", "veth", "peer", "name", DEV_C)
    sh("ip", "link", "set", DEV_S, "netns", NS_S)
    sh("ip", "link", "set", DEV_C, "netns", NS_C)
    for ns, dev, addr in ((NS_S, DEV_S, ADDR_S), (NS_C, DEV_C, ADDR_C)):
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")


def teardown():
    for ns in (NS_S, NS_C):
        sh("ip", "netns", "del", ns, check=False)


def nft(ns, *rule):
    sh("ip", "netns", "exec", ns, "nft", *rule)


class Proc:
    """A tool in a namespace; its output lines, each stamped with when it was read."""

    def __init__(self, ns, args):
        self.lines = []
        self.p = subprocess.Popen(
            ["ip", "netns", "exec", ns, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, pattern, timeout=30):
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            for t, line in list(self.lines):
                if rx.search(line):
                    return t
            if self.p.poll() is not None and not self.t.is_alive():
                break
            time.sleep(0.02)
        raise RuntimeError(f"no line matching {pattern!r}; output: {self.text()[-2000:]}")

    def wait(self, timeout):
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise RuntimeError(f"did not finish within {timeout} s; output: {self.text()[-2000:]}")
        self.t.join(5)
        return self.p.returncode

    def kill(self, sig=signal.SIGTERM):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.t.join(5)

    def text(self):
        return "\n".join(line for _, line in self.lines)


class Case:
    def __init__(self, binary, work, name, messages=60, interval_ms=100, file_size=0):
        self.binary, self.work, self.name = binary, work, name
        self.messages, self.interval_ms, self.file_size = messages, interval_ms, file_size
        self.servers = []
        self.fault_at = self.heal_at = None
        self.notes = []

    def serve(self):
        s = Proc(NS_S, [self.binary, "serve", "--listen", f"{ADDR_S}:{PORT}",
                        "--identity", os.path.join(FIXTURES, "ed25519_test_key"),
                        "--authorized-keys", os.path.join(self.work, "server_trusts"),
                        "--config", os.path.join(self.work, "config.toml"),
                        "--out", os.path.join(self.work, "out")])
        s.wait_for("^listening on")
        self.servers.append(s)
        return s

    def send(self):
        args = [self.binary, "send", "--connect", f"{ADDR_S}:{PORT}",
                "--identity", os.path.join(FIXTURES, "ecdsa_test_key"),
                "--authorized-keys", os.path.join(self.work, "client_trusts"),
                "--config", os.path.join(self.work, "config.toml"),
                "--messages", str(self.messages), "--interval-ms", str(self.interval_ms)]
        if self.file_size:
            self.file = os.path.join(self.work, f"{self.name}.bin")
            with open(self.file, "wb") as f:
                f.write(os.urandom(self.file_size))
            args.append(self.file)
        self.sender = Proc(NS_C, args)
        self.started = time.monotonic()
        return self.sender

    def check(self, unknown_allowed=False):
        """The simulator's invariants, from the tools' output. Returns (ok, metrics)."""
        problems, metrics = [], {}
        settled = {}
        latencies = []  # (issued at, ms since the sender started; took, ms)
        file_done = None
        for t, line in self.sender.lines:
            m = re.match(r"t=(\d+) (delivered|failed) probe (\d+) in (\d+) ms(?:: (.*))?", line)
            if m:
                i = int(m.group(3))
                if i in settled:
                    problems.append(f"probe {i} settled twice")
                settled[i] = (t, m.group(2), m.group(5) or "")
                if m.group(2) == "delivered":
                    took = int(m.group(4))
                    latencies.append((int(m.group(1)) - took, took))
            m = re.match(r"t=(\d+) delivered file", line)
            if m:
                file_done = int(m.group(1))
        for i in range(1, self.messages + 1):
            if i not in settled:
                problems.append(f"probe {i} never settled (settled: every send)")
        failed = {i: why for i, (_, how, why) in settled.items() if how == "failed"}
        for i, why in failed.items():
            if not (unknown_allowed and "delivery unknown" in why):
                problems.append(f"probe {i} failed: {why}")
        received = []
        for s in self.servers:
            received += [int(m.group(1)) for m in
                         (re.search(r'text="probe (\d+)"', line) for _, line in s.lines) if m]
        if len(received) != len(set(received)):
            dups = sorted({i for i in received if received.count(i) > 1})
            problems.append(f"delivered more than once: {dups}")
        if received != sorted(received):
            problems.append(f"out of order: {received}")
        for i, (_, how, _) in settled.items():
            if how == "delivered" and i not in received:
                problems.append(f"probe {i} acknowledged but the server never printed it")
        metrics["delivered"] = f"{sum(1 for v in settled.values() if v[1] == 'delivered')}/{self.messages}"
        for _, line in self.sender.lines:
            m = re.search(r"reconnects=(\d+) retransmitted_bytes=(\d+)", line)
            if m:
                metrics["reconnects"] = int(m.group(1))
                metrics["retransmitted_bytes"] = int(m.group(2))
        if failed:
            metrics["unknown_fate"] = len(failed)
            metrics["unknown_that_arrived"] = sum(1 for i in failed if i in received)
        def pct(xs, q):
            xs = sorted(xs)
            return xs[min(len(xs) - 1, int(len(xs) * q))]
        if latencies:
            took = [t for _, t in latencies]
            metrics["probe_p50_ms"] = pct(took, 0.5)
            metrics["probe_p99_ms"] = pct(took, 0.99)
        # Probes sent while the stream was on the wire and no fault was active: how long a
        # small message waits behind a stream on this link.
        if file_done is not None and self.fault_at is None:
            under = [t for issued, t in latencies if issued < file_done]
            if under:
                metrics["probe_under_stream_p50_ms"] = pct(under, 0.5)
                metrics["probe_under_stream_max_ms"] = max(under)
                metrics["probes_under_stream"] = len(under)
        if self.file_size:
            saved = [re.search(r"size=(\d+) blake3=(\w+) saved=(\S+)", line) for s in self.servers
                     for _, line in s.lines]
            saved = [m for m in saved if m]
            if not saved:
                problems.append("the file was never saved by the server")
            else:
                with open(self.file, "rb") as a, open(saved[-1].group(3), "rb") as b:
                    if a.read() != b.read():
                        problems.append("the saved file differs from the one sent")
                metrics["file"] = "verified"
            done = [t for t, line in self.sender.lines if " delivered file" in line]
            if done:
                secs = done[0] - self.started
                metrics["file_mbit_s"] = round(self.file_size * 8 / secs / 1e6, 2)
        if self.heal_at is not None:
            after = sorted(t for t, how, _ in settled.values() if how == "delivered" and t > self.heal_at)
            if after:
                ms = int((after[0] - self.heal_at) * 1000)
                metrics["heal_to_delivery_ms"] = ms
                if ms > RECONNECT_BOUND_MS:
                    problems.append(f"delivery resumed {ms} ms after the heal (bound {RECONNECT_BOUND_MS})")
            else:
                problems.append("nothing delivered after the fault healed")
        return problems, metrics


def slow_link(rate="20mbit"):
    """A bandwidth limit on the client's side, so a stream is still in flight at the fault."""
    sh("tc", "-n", NS_C, "qdisc", "add", "dev", DEV_C, "root", "tbf",
       "rate", rate, "burst", "32kbit", "latency", "400ms")


def run_case(binary, work, name):
    if name == "blackhole":
        slow_link()
        c = Case(binary, work, name, file_size=16 << 20)
        c.serve()
        c.send().wait_for("delivered probe 5 ")
        nft(NS_S, "add", "table", "inet", "fault")
        nft(NS_S, "add", "chain", "inet", "fault", "in", "{ type filter hook input priority 0; }")
        nft(NS_S, "add", "chain", "inet", "fault", "out", "{ type filter hook output priority 0; }")
        nft(NS_S, "add", "rule", "inet", "fault", "in", "ip", "saddr", ADDR_C, "drop")
        nft(NS_S, "add", "rule", "inet", "fault", "out", "ip", "daddr", ADDR_C, "drop")
        c.fault_at = time.monotonic()
        time.sleep(6)
        nft(NS_S, "delete", "table", "inet", "fault")
        c.heal_at = time.monotonic()
        code = c.sender.wait(120)
        problems, metrics = c.check()
    elif name == "link_down":
        slow_link()
        c = Case(binary, work, name, file_size=16 << 20)
        c.serve()
        c.send().wait_for("delivered probe 5 ")
        sh("ip", "-n", NS_C, "link", "set", DEV_C, "down")
        c.fault_at = time.monotonic()
        time.sleep(6)
        sh("ip", "-n", NS_C, "link", "set", DEV_C, "up")
        c.heal_at = time.monotonic()
        code = c.sender.wait(120)
        problems, metrics = c.check()
    elif name == "server_restart":
        c = Case(binary, work, name)
        first = c.serve()
        c.send().wait_for("delivered probe 10 ")
        first.kill(signal.SIGKILL)
        c.fault_at = time.monotonic()
        time.sleep(2)
        c.serve()
        c.heal_at = time.monotonic()
        code = c.sender.wait(120)
        problems, metrics = c.check(unknown_allowed=True)
        # Nothing is silently lost: what failed was reported, and the exit status says so.
        if "unknown_fate" in metrics and code == 0:
            problems.append("sends failed but `clipsync send` exited 0")
        code = 0 if not problems else code
    elif name == "loss5":
        for ns in (NS_S, NS_C):
            nft(ns, "add", "table", "inet", "loss")
            nft(ns, "add", "chain", "inet", "loss", "in", "{ type filter hook input priority 0; }")
            nft(ns, "add", "rule", "inet", "loss", "in", "meta", "l4proto", "tcp",
                "numgen", "random", "mod", "100", "<", "5", "drop")
        try:
            c = Case(binary, work, name, messages=40, file_size=32 << 20)
            c.serve()
            code = c.send().wait(180)
            problems, metrics = c.check()
        finally:
            for ns in (NS_S, NS_C):
                nft(ns, "delete", "table", "inet", "loss")
    elif name == "rate10mbit":
        sh("tc", "-n", NS_C, "qdisc", "add", "dev", DEV_C, "root", "tbf",
           "rate", "10mbit", "burst", "32kbit", "latency", "400ms")
        try:
            c = Case(binary, work, name, messages=40, interval_ms=200, file_size=8 << 20)
            c.serve()
            code = c.send().wait(180)
            problems, metrics = c.check()
        finally:
            sh("tc", "-n", NS_C, "qdisc", "del", "dev", DEV_C, "root", check=False)
    else:
        raise SystemExit(f"unknown case {name}")
    for s in c.servers:
        s.kill()
    if code != 0 and not problems:
        problems.append(f"`clipsync send` exited {code}: {c.sender.text()[-500:]}")
    return problems, metrics, c


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    binary = os.path.abspath(sys.argv[1])
    cases = sys.argv[2:] or ["blackhole", "link_down", "server_restart", "loss5", "rate10mbit"]
    preflight()
    work = tempfile.mkdtemp(prefix="clipsync-netns-")
    with open(os.path.join(work, "config.toml"), "w") as f:
        f.write(CONFIG)
    # Git checks the fixtures out 0644; a private key must be the owner's alone (clipsync
    # refuses it otherwise, as OpenSSH does).
    for key in ("ed25519_test_key", "ecdsa_test_key"):
        os.chmod(os.path.join(FIXTURES, key), 0o600)
    shutil.copy(os.path.join(FIXTURES, "ecdsa_test_key.pub"), os.path.join(work, "server_trusts"))
    shutil.copy(os.path.join(FIXTURES, "ed25519_test_key.pub"), os.path.join(work, "client_trusts"))
    os.makedirs(os.path.join(work, "out"))
    failed = 0
    try:
        for name in cases:
            teardown()
            t0 = time.monotonic()
            try:
                setup()
                problems, metrics, c = run_case(binary, work, name)
            except Exception as e:  # a hung tool or a missing line is a failure of the case
                problems, metrics, c = [str(e)], {}, None
            finally:
                teardown()
            took = time.monotonic() - t0
            verdict = "pass" if not problems else "FAIL"
            figures = " ".join(f"{k}={v}" for k, v in metrics.items())
            print(f"{name:<15} {verdict}  {figures}  ({took:.1f} s)")
            for p in problems:
                print(f"    {p}")
            if c is not None and os.environ.get("FAULT_ARM_VERBOSE"):
                print(c.sender.text())
                for s in c.servers:
                    print(s.text())
            failed += bool(problems)
    finally:
        teardown()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(cases) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
