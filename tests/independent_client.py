#!/usr/bin/env python3
"""An independent ClipSync client, written from PROTOCOL.md alone.

It uses no ClipSync code: TLS from pyOpenSSL (for the RFC 9266 exporter), WebSocket from the
`websockets` package's sans-I/O client, ed25519 and SHA-512 from `cryptography`, and the frame
layouts and the SSHSIG transcript as PROTOCOL.md describes them. It plays both roles.

As a dialer it starts `clipsync serve` and checks the handshake (a signature over another
channel binding is refused with reason 5 and close 4005; a correct one works and the server's
own AUTH verifies), a MESSAGE, one rule per PROTOCOL.md item it can provoke (each check is
named after its section), and a session across connections: a 20 MiB stream under credit, cut
by a TCP reset and then left half-open, resumed each time with messages in flight, every
message delivered once, the stream continuing from the listener's offset and verified; a clean
close (4000, TLS close_notify) ends the session, and one whose resume window ran out is
answered `session expired`. With the METADATA and OFFERS capabilities it sends metadata, and
offers a stream (no byte until the listener's CREDIT), then offers the same content again to a
`serve --out` that saved it and sees it declined with `already have` and never credited.

As a listener that `clipsync send` dials it does the receiver's duties — ACK, CREDIT under a
256 KiB window, BLAKE3 verification, STREAM_RESULT, PONG — resets the connection under a
20 MiB stream, answers the dialer's RESUME, and checks that the stream continues at its offset
and every probe message arrives once, in order.

Usage: independent_client.py PATH_TO_CLIPSYNC_BINARY. Prints one line per check and ends with
`N passed, M failed`; exits 1 on any failure.
"""

import hashlib
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import datetime

import blake3
from OpenSSL import SSL
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from websockets.client import ClientProtocol
from websockets.server import ServerProtocol
from websockets.frames import Opcode
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

NAMESPACE = b"clipsync-auth-v1"
LABEL = b"clipsync-auth-v1"

# Frame types (PROTOCOL.md section 2).
HELLO, AUTH, AUTH_RESULT = 0x01, 0x02, 0x03
RESUME, RESUMED, SESSION_LOST = 0x10, 0x11, 0x12
MESSAGE, ACK, GOAWAY = 0x20, 0x30, 0x34
STREAM_OPEN, STREAM_CHUNK, STREAM_END, STREAM_ABORT, STREAM_RESULT = 0x21, 0x22, 0x23, 0x24, 0x25
CREDIT, PING, PONG = 0x31, 0x32, 0x33
CAP_STREAMS, CAP_RESUME, CAP_METADATA, CAP_OFFERS = 1, 2, 4, 8
FLAG_METADATA, FLAG_OFFER = 0x0004, 0x0008


def frame(ftype, body, flags=0):
    """Header: version 1, type, flags (u16), body length (u32), all big-endian."""
    return struct.pack(">BBHI", 1, ftype, flags, len(body)) + body


def parse(msg):
    version, ftype, flags, length = struct.unpack(">BBHI", msg[:8])
    assert version == 1, f"version {version}"
    assert length == len(msg) - 8, "length field disagrees with the message"
    return ftype, msg[8:]


def ssh_string(b):
    return struct.pack(">I", len(b)) + b


def key_blob(public_key):
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return ssh_string(b"ssh-ed25519") + ssh_string(raw)


def hello(role, nonce, blob, capabilities=0, stream_window=2097152, connection_window=8388608,
          heartbeat_ms=15000, idle_ms=30000):
    body = struct.pack(">BB", 1, role) + nonce + struct.pack(">I", capabilities)
    # max_frame_size, max_message_size, stream_window, connection_window, max_streams,
    # heartbeat_interval_ms, idle_timeout_ms
    body += struct.pack(">IIIIHII", 1049600, 1048576, stream_window, connection_window, 16,
                        heartbeat_ms, idle_ms)
    body += struct.pack(">H", len(blob)) + blob + b"\x00"  # no extensions
    return frame(HELLO, body)


def transcript(signer_role, dialer_hello, listener_hello, binding):
    return (LABEL + bytes([signer_role]) + struct.pack(">I", len(dialer_hello)) + dialer_hello
            + struct.pack(">I", len(listener_hello)) + listener_hello + binding)


def sshsig(private_key, message):
    """OpenSSH PROTOCOL.sshsig, binary form, hash algorithm sha512."""
    digest = hashlib.sha512(message).digest()
    signed = b"SSHSIG" + ssh_string(NAMESPACE) + ssh_string(b"") + ssh_string(b"sha512") + ssh_string(digest)
    sig = private_key.sign(signed)
    blob = key_blob(private_key.public_key())
    return (b"SSHSIG" + struct.pack(">I", 1) + ssh_string(blob) + ssh_string(NAMESPACE)
            + ssh_string(b"") + ssh_string(b"sha512")
            + ssh_string(ssh_string(b"ssh-ed25519") + ssh_string(sig)))


def read_string(b, at):
    (n,) = struct.unpack(">I", b[at:at + 4])
    return b[at + 4:at + 4 + n], at + 4 + n


def verify_sshsig(blob, expected_key_blob, message):
    assert blob[:6] == b"SSHSIG", "not an SSHSIG blob"
    at = 10
    key, at = read_string(blob, at)
    ns, at = read_string(blob, at)
    _reserved, at = read_string(blob, at)
    alg, at = read_string(blob, at)
    sig, at = read_string(blob, at)
    assert key == expected_key_blob, "signature key differs from the HELLO key"
    assert ns == NAMESPACE, f"namespace {ns!r}"
    digest = hashlib.new(alg.decode(), message).digest()
    signed = b"SSHSIG" + ssh_string(ns) + ssh_string(b"") + ssh_string(alg) + ssh_string(digest)
    _kind, at2 = read_string(sig, 0)
    raw, _ = read_string(sig, at2)
    k, _ = read_string(key, 4 + len(b"ssh-ed25519"))
    ed25519.Ed25519PublicKey.from_public_bytes(k).verify(raw, signed)


def client_certificate():
    """An ephemeral self-signed certificate: ClipSync's TLS is mutual, identity is the SSH key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "independent-client")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return cert, key


class Connection:
    """TLS (pyOpenSSL) + WebSocket (websockets, sans-I/O) on a blocking socket."""

    def __init__(self, port, path="/clipsync", deflate=False, certificate=True):
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        if certificate:
            cert, key = client_certificate()
            ctx.use_certificate(cert)
            ctx.use_privatekey(key)
        ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        # pyOpenSSL wants a blocking socket; main() bounds the whole run with an alarm.
        sock.settimeout(None)
        self.sock = sock
        self.eof = None
        self.tls = SSL.Connection(ctx, sock)
        self.tls.set_tlsext_host_name(b"clipsync.invalid")
        self.tls.set_connect_state()
        self.tls.do_handshake()
        # RFC 9266: label EXPORTER-Channel-Binding, no context, 32 bytes.
        self.binding = self.tls.export_keying_material(b"EXPORTER-Channel-Binding", 32)
        self.ws = ClientProtocol(parse_uri("wss://clipsync.invalid" + path),
                                 subprotocols=[Subprotocol("clipsync.v1")])
        request = self.ws.connect()
        if deflate:
            request.headers["Sec-WebSocket-Extensions"] = "permessage-deflate; client_max_window_bits"
        self.ws.send_request(request)
        self.flush()
        while self.ws.handshake_exc is None and self.ws.state.name == "CONNECTING":
            self.pump()
        if self.ws.handshake_exc is not None:
            raise ConnectionError(f"upgrade failed: {self.ws.handshake_exc!r}; TLS: {self.eof}")
        self.response, self.pending = None, []
        for event in self.ws.events_received():
            if hasattr(event, "status_code"):
                self.response = event
            elif getattr(event, "opcode", None) == Opcode.BINARY:
                self.pending.append(bytes(event.data))

    def flush(self):
        try:
            for data in self.ws.data_to_send():
                if data:
                    self.tls.sendall(data)
        except (SSL.SysCallError, SSL.Error, OSError) as e:
            # The peer closed or reset while we wrote: what it said before is still readable.
            self.write_error = repr(e)

    def pump(self):
        if self.eof is not None:
            self.ws.receive_eof()
            return
        try:
            data = self.tls.recv(65536)
        except SSL.ZeroReturnError:
            data, self.eof = b"", "close_notify"  # TLS closed cleanly (RFC 8446 §6.1)
        except (SSL.SysCallError, SSL.Error, OSError) as e:
            data, self.eof = b"", f"bare end ({e!r})"
        if data:
            self.ws.receive_data(data)
        else:
            self.eof = self.eof or "bare end"
            self.ws.receive_eof()
        self.flush()

    def send(self, payload):
        if self.ws.state.name == "OPEN":
            self.ws.send_binary(payload)
            self.flush()

    def _take_events(self):
        for event in self.ws.events_received():
            if getattr(event, "opcode", None) == Opcode.BINARY:
                self.pending.append(bytes(event.data))

    def recv(self):
        """The next binary message, or None once the peer closed."""
        while True:
            self._take_events()
            if self.pending:
                return self.pending.pop(0)
            if self.ws.close_rcvd is not None or self.ws.state.name == "CLOSED":
                return None
            self.pump()

    def poll(self, timeout):
        """The next binary message if bytes arrive within `timeout` seconds; `b""` when nothing
        came (yet), None once the peer closed."""
        self._take_events()
        if self.pending:
            return self.pending.pop(0)
        if self.ws.close_rcvd is not None or self.ws.state.name == "CLOSED":
            return None
        if self.tls.pending() == 0:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return b""
        self.pump()
        self._take_events()
        return self.pending.pop(0) if self.pending else b""

    def reset(self):
        """An abrupt cut: a TCP reset, no WebSocket close, no TLS close_notify."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close_code(self):
        while self.recv() is not None:
            pass
        return self.ws.close_rcvd.code if self.ws.close_rcvd else None


def authenticate(c, client_key, capabilities=CAP_STREAMS | CAP_RESUME):
    """The dialer's side of §3 on connection `c`: both HELLOs, both AUTHs, both AUTH_RESULTs.
    Returns the listener's HELLO."""
    mine = hello(0, os.urandom(32), key_blob(client_key.public_key()), capabilities)
    c.send(mine)
    theirs = c.recv()
    sig = sshsig(client_key, transcript(0, mine, theirs, c.binding))
    c.send(frame(AUTH, struct.pack(">H", len(sig)) + sig))
    assert parse(c.recv())[0] == AUTH
    assert parse(c.recv())[0] == AUTH_RESULT
    c.send(frame(AUTH_RESULT, struct.pack(">HH", 0, 0)))
    return theirs


def open_session(port, client_key):
    """Dials `clipsync serve` and completes the handshake (STREAMS and RESUME announced) up to
    RESUMED; returns the connection."""
    c = Connection(port)
    authenticate(c, client_key)
    c.send(frame(RESUME, b"\x00" * 16 + struct.pack(">Q", 0)))
    assert parse(c.recv())[0] == RESUMED
    return c


def hello_limits(hello_frame):
    """The limits a HELLO announces (§3.1): max_frame_size, max_message_size, stream_window,
    connection_window, max_streams, heartbeat_interval_ms, idle_timeout_ms."""
    body = parse(hello_frame)[1]
    # version 1, role 1, nonce 32, capabilities 4: the limits start at body offset 38.
    names = ("max_frame_size", "max_message_size", "stream_window", "connection_window",
             "max_streams", "heartbeat_ms", "idle_ms")
    return dict(zip(names, struct.unpack(">IIIIHII", body[38:64])))


class Dialer:
    """A dialer's session with `clipsync serve`, kept across connections (PROTOCOL.md §4–§6):
    its replay buffer (sequenced frames sent and not yet acknowledged), what it received, its
    outgoing streams and the flow-control limits the listener granted."""

    def __init__(self, port, key, capabilities=CAP_STREAMS | CAP_RESUME):
        self.port, self.key, self.capabilities = port, key, capabilities
        self.session = b"\x00" * 16
        self.next_seq, self.unacked = 1, {}
        self.received = 0  # the listener's sequenced frames received in order
        self.results = {}  # stream id -> STREAM_RESULT reason
        self.streams = {}  # stream id -> {"data", "sent", "limit", "open_seq", "ended"}
        self.retransmitted = 0  # stream bytes sent again after resumes
        self.goaway = None
        self.c = None
        self.connect()

    def connect(self, resume_point=None):
        """A new connection: handshake, RESUME, then what §4 says follows RESUMED. Returns the
        RESUMED/SESSION_LOST frame type and body."""
        c = Connection(self.port)
        self.limits = hello_limits(authenticate(c, self.key, self.capabilities))
        last = self.received if resume_point is None else resume_point
        c.send(frame(RESUME, self.session + struct.pack(">Q", last)))
        msg = c.recv()
        if msg is None:
            self.c = c
            return None, None
        ftype, body = parse(msg)
        self.c = c
        self.conn_sent, self.conn_limit = 0, self.limits["connection_window"]
        if ftype == RESUMED:
            self.session = body[:16]
            (peer_last,) = struct.unpack(">Q", body[16:24])
            self.acknowledge(peer_last)
            # Retransmit every sequenced frame above the peer's last_received, in order.
            for seq in sorted(self.unacked):
                c.send(self.unacked[seq])
            for sid, st in self.streams.items():
                if st["ended"]:
                    continue
                if st["open_seq"] <= peer_last:
                    st["limit"] = None  # wait for the post-resume CREDIT (§4)
                else:
                    self.retransmitted += st["sent"]
                    st["sent"], st["limit"] = 0, self.limits["stream_window"]
        return ftype, body

    def acknowledge(self, upto):
        for seq in [s for s in self.unacked if s <= upto]:
            del self.unacked[seq]

    def send_sequenced(self, ftype, rest, flags=0):
        seq = self.next_seq
        self.next_seq += 1
        f = frame(ftype, struct.pack(">Q", seq) + rest, flags)
        self.unacked[seq] = f
        self.c.send(f)
        return seq

    def message(self, text, ct=b"text/plain; charset=utf-8"):
        return self.send_sequenced(MESSAGE, bytes([len(ct)]) + ct + text.encode())

    def open_stream(self, sid, data, ct=b"application/octet-stream"):
        digest = blake3.blake3(data).digest()
        seq = self.send_sequenced(STREAM_OPEN, struct.pack(">QQ", sid, len(data)) + digest
                                  + bytes([len(ct)]) + ct, flags=0x0003)
        self.streams[sid] = {"data": data, "sent": 0, "limit": self.limits["stream_window"],
                             "open_seq": seq, "ended": False, "hash": digest}

    def handle(self, msg):
        ftype, body = parse(msg)
        if ftype == ACK:
            self.acknowledge(struct.unpack(">Q", body)[0])
        elif ftype == CREDIT:
            sid, acked, limit = struct.unpack(">QQQ", body)
            if sid == 0:
                self.conn_limit = max(self.conn_limit, limit)
            elif sid in self.streams:
                st = self.streams[sid]
                if st["limit"] is None:  # the post-resume CREDIT: continue from `acked`
                    self.retransmitted += max(0, st["sent"] - acked)
                    st["sent"] = acked
                    st["resumed_from"] = acked
                    st["limit"] = limit
                else:
                    st["limit"] = max(st["limit"], limit)
        elif ftype == STREAM_RESULT:
            seq, sid, reason = struct.unpack(">QQH", body[:18])
            if seq == self.received + 1:
                self.received = seq
                self.results[sid] = reason
            self.c.send(frame(ACK, struct.pack(">Q", self.received)))
        elif ftype == PING:
            self.c.send(frame(PONG, body))
        elif ftype == GOAWAY:
            self.goaway = struct.unpack(">H", body[:2])[0]
        return ftype

    def step(self, timeout=0.0):
        """Handles what arrived within `timeout`; False once the connection is gone."""
        msg = self.c.poll(timeout)
        if msg is None:
            return False
        if msg:
            self.handle(msg)
        return True

    def wait(self, done, what):
        deadline = time.time() + 30
        while not done():
            if time.time() > deadline or not self.step(1.0):
                raise AssertionError(f"waiting for {what}: connection ended or 30 s passed")

    def send_stream_data(self, sid, upto):
        """Sends chunks of stream `sid` until `upto` bytes are sent, within both credits."""
        st = self.streams[sid]
        chunk = 65536
        while st["sent"] < upto:
            self.step(0.0)
            room = 0 if st["limit"] is None else min(st["limit"] - st["sent"],
                                                       self.conn_limit - self.conn_sent)
            if room <= 0:
                if not self.step(1.0):
                    raise AssertionError("connection ended while waiting for CREDIT")
                continue
            n = min(chunk, room, upto - st["sent"])
            off = st["sent"]
            self.c.send(frame(STREAM_CHUNK, struct.pack(">QQ", sid, off) + st["data"][off:off + n]))
            st["sent"] += n
            self.conn_sent += n

    def end_stream(self, sid):
        st = self.streams[sid]
        st["ended"] = True
        self.c.send(frame(STREAM_END, struct.pack(">QQ", sid, len(st["data"])) + st["hash"]))


class ServeOutput:
    """`clipsync serve`'s stdout, read by a thread, so a check can wait for a line."""

    def __init__(self, proc):
        import threading
        self.lines, self.cond = [], threading.Condition()
        self.proc = proc
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_for(self, pred, timeout=30):
        """The first line (from the start) that satisfies `pred`, or None after `timeout`."""
        deadline = time.time() + timeout
        with self.cond:
            while True:
                for line in self.lines:
                    if pred(line):
                        return line
                left = deadline - time.time()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def count(self, needle):
        with self.cond:
            return sum(needle in line for line in self.lines)


def resume_checks(port, client_key, out, check):
    """§4 as a dialer: a 20 MiB stream under credit, cut twice — once by a TCP reset, once left
    half-open — and resumed each time, with messages in flight; every message is delivered once,
    the stream continues from the listener's offset and verifies (PROTOCOL.md §4, §5, §6.2)."""
    size = 20 << 20
    payload = os.urandom(size)
    d = Dialer(port, client_key)
    first_session = d.session
    d.message("resume m1")
    d.open_stream(1, payload)
    d.send_stream_data(1, 6 << 20)
    d.message("resume m2")  # in flight when the connection is reset
    d.reset_cut = d.c
    d.c.reset()
    ftype, body = d.connect()
    check("§4: after a TCP reset, RESUME is answered RESUMED with the same session",
          ftype == RESUMED and body[:16] == first_session, f"type {ftype}")
    d.wait(lambda: d.streams[1]["limit"] is not None, "the post-resume CREDIT for stream 1")
    resumed_from = d.streams[1].get("resumed_from")
    check("§4: the post-resume CREDIT says where the stream continues (at most what was sent)",
          resumed_from is not None and 0 < resumed_from <= 6 << 20, str(resumed_from))
    d.send_stream_data(1, 13 << 20)
    d.message("resume m3")
    # Half-open: the old connection stays, unread; the listener must not wait for its timeout.
    old = d.c
    ftype, body = d.connect()
    check("§4: RESUME over a half-open connection is answered RESUMED",
          ftype == RESUMED and body[:16] == first_session, f"type {ftype}")
    old_code = old.close_code()
    check("§4: the half-open connection is closed with replaced (4012)", old_code == 4012,
          str(old_code))
    d.wait(lambda: d.streams[1]["limit"] is not None, "the post-resume CREDIT for stream 1")
    d.send_stream_data(1, size)
    d.end_stream(1)
    d.message("resume m4")
    d.wait(lambda: 1 in d.results and not d.unacked, "STREAM_RESULT and every ACK")
    check("§5.6: the resumed 20 MiB stream is answered STREAM_RESULT normal (verified)",
          d.results.get(1) == 0, str(d.results.get(1)))
    digest = blake3.blake3(payload).hexdigest()
    line = out.wait_for(lambda l: f"blake3={digest}" in l)
    check("§5: clipsync serve has the 20 MiB stream whole", line is not None
          and f"size={size}" in line, str(line))
    last = out.wait_for(lambda l: 'text="resume m4"' in l)
    counts = [out.count(f'text="resume m{i}"') for i in (1, 2, 3, 4)]
    check("§4: every message delivered exactly once across a reset and a half-open cut",
          last is not None and counts == [1, 1, 1, 1], f"printed {counts}")
    check("§4: at most one stream window sent again per resume",
          d.retransmitted <= 2 * d.limits["stream_window"], f"{d.retransmitted} bytes")
    # A clean close: GOAWAY, the WebSocket close, and TLS close_notify after it (§6.4, §1).
    d.c.send(frame(GOAWAY, struct.pack(">HQH", 0, d.received, 0)))
    d.c.ws.send_close(4000, "normal")
    d.c.flush()
    code = d.c.close_code()
    while d.c.eof is None:
        d.c.pump()
    check("§6.4: a clean close is answered 4000 and ends with TLS close_notify",
          code == 4000 and d.c.eof == "close_notify", f"code {code}, end {d.c.eof}")
    # §4: a close ended the session: RESUME for it now gets SESSION_LOST 16.
    ftype, body = d.connect()
    reason = struct.unpack(">H", body[32:34])[0] if ftype == SESSION_LOST else None
    check("§4: a session ended by a normal close is not resumed (SESSION_LOST 16)",
          ftype == SESSION_LOST and body[:16] == first_session and reason == 16,
          f"type {ftype} reason {reason}")


def first_of(c, wanted):
    """The body of the next frame of type `wanted` on `c` (others are read past), or None once
    the peer closed."""
    while True:
        msg = c.recv()
        if msg is None:
            return None
        ftype, body = parse(msg)
        if ftype == wanted:
            return body


def item_checks(port, client_key, check):
    """One check per PROTOCOL.md rule an outside implementation can provoke (issue 12)."""
    # §2: the IGNORABLE bit on a known type changes nothing: a PING with it gets its PONG.
    c = open_session(port, client_key)
    c.send(frame(PING, struct.pack(">Q", 424242), flags=0x8000))
    body = first_of(c, PONG)
    pong = struct.unpack(">Q", body)[0] if body else None
    check("§2: a PING with the IGNORABLE bit is answered", pong == 424242, str(pong))
    # §5.1: a MESSAGE over the receiver's max_message_size (1 MiB) closes with 4011.
    c = open_session(port, client_key)
    c.send(frame(MESSAGE, struct.pack(">Q", 1) + b"\x01a" + b"x" * (1048576 + 1)))
    code = c.close_code()
    check("§5.1: a MESSAGE over max_message_size closes with 4011", code == 4011, str(code))
    # §5.5: STREAM_ABORT with reason 0 is malformed: 4001.
    c = open_session(port, client_key)
    ct = b"a/b"
    c.send(frame(STREAM_OPEN, struct.pack(">QQQ", 1, 1, 0) + b"\x00" * 32 + bytes([len(ct)]) + ct))
    c.send(frame(STREAM_ABORT, struct.pack(">QHH", 1, 0, 0)))
    code = c.close_code()
    check("§5.5: STREAM_ABORT with reason 0 closes with 4001", code == 4001, str(code))
    # §3.1: a HELLO outside the ranges (heartbeat 1 ms, idle 2 ms) is refused with 4001.
    c = Connection(port)
    c.send(hello(0, os.urandom(32), key_blob(client_key.public_key()), CAP_STREAMS | CAP_RESUME,
                 heartbeat_ms=1, idle_ms=2))
    code = c.close_code()
    check("§3.1: a HELLO with heartbeat 1 ms is refused with 4001", code == 4001, str(code))
    # §4 (item 3): a RESUME whose last_received is above anything the listener sent is refused
    # with GOAWAY protocol error and 4001, and the session still waits for a correct RESUME.
    d = Dialer(port, client_key)
    sid = d.session
    d.message("item 3")
    d.wait(lambda: not d.unacked, "the ACK of the message")
    d.c.reset()
    ftype, _ = d.connect(resume_point=5)
    code = d.c.close_code()
    check("§4: a RESUME with last_received above what the listener sent gets GOAWAY and 4001",
          ftype == GOAWAY and code == 4001, f"type {ftype}, close {code}")
    ftype, body = d.connect()
    check("§4: the session still resumes with a correct RESUME after that",
          ftype == RESUMED and body[:16] == sid, f"type {ftype}")
    # §5.2 (item 14): a STREAM_OPEN whose id is not above the previous one: 4001.
    c = open_session(port, client_key)
    ct = b"a/b"
    c.send(frame(STREAM_OPEN, struct.pack(">QQQ", 1, 2, 0) + b"\x00" * 32 + bytes([len(ct)]) + ct))
    c.send(frame(STREAM_OPEN, struct.pack(">QQQ", 2, 2, 0) + b"\x00" * 32 + bytes([len(ct)]) + ct))
    code = c.close_code()
    check("§5.2: a STREAM_OPEN reusing a stream id closes with 4001", code == 4001, str(code))
    # §5.3 (item 15): a chunk for a never-opened stream is a protocol error...
    c = open_session(port, client_key)
    c.send(frame(STREAM_CHUNK, struct.pack(">QQ", 7, 0) + b"abc"))
    code = c.close_code()
    check("§5.3: a STREAM_CHUNK for a never-opened stream closes with 4001", code == 4001, str(code))
    # ...while one for a stream that ended (aborted, answered) is dropped and credited back.
    c = open_session(port, client_key)
    c.send(frame(STREAM_OPEN, struct.pack(">QQQ", 1, 1, 0) + b"\x00" * 32 + bytes([len(ct)]) + ct))
    c.send(frame(STREAM_ABORT, struct.pack(">QHH", 1, 15, 0)))
    c.send(frame(STREAM_CHUNK, struct.pack(">QQ", 1, 0) + b"late"))
    c.send(frame(PING, struct.pack(">Q", 77)))
    seen = {}
    while PONG not in seen:
        msg = c.recv()
        if msg is None:
            break
        ftype, body = parse(msg)
        seen.setdefault(ftype, body)
        if ftype == CREDIT and struct.unpack(">Q", body[:8])[0] == 0:
            seen["conn_acked"] = struct.unpack(">Q", body[8:16])[0]
    result = seen.get(STREAM_RESULT)
    check("§5.3: a chunk for an aborted stream is dropped: STREAM_RESULT 15, then the PONG",
          result is not None and struct.unpack(">H", result[16:18])[0] == 15 and PONG in seen,
          f"frames {sorted(k for k in seen if isinstance(k, int))}")
    # §3.1 (item 13): a stream frame on a connection without the STREAMS capability: 4001.
    d = Dialer(port, client_key, capabilities=CAP_RESUME)
    d.c.send(frame(STREAM_OPEN, struct.pack(">QQQ", 1, 1, 0) + b"\x00" * 32 + bytes([len(ct)]) + ct))
    code = d.c.close_code()
    check("§3.1: STREAM_OPEN without the STREAMS capability closes with 4001", code == 4001,
          str(code))
    # §3.1 (item 16): a dialer whose HELLO says listener: 4001; a HELLO protocol_version 0: 4004;
    # a header version 2: 4004.
    blob = key_blob(client_key.public_key())
    c = Connection(port)
    c.send(hello(1, os.urandom(32), blob, CAP_STREAMS | CAP_RESUME))
    code = c.close_code()
    check("§3.1: a role mismatch in HELLO closes with 4001", code == 4001, str(code))
    c = Connection(port)
    h = bytearray(hello(0, os.urandom(32), blob, CAP_STREAMS | CAP_RESUME))
    h[8] = 0  # protocol_version, the first body byte
    c.send(bytes(h))
    code = c.close_code()
    check("§3.1: a HELLO protocol_version below 1 closes with 4004", code == 4004, str(code))
    c = Connection(port)
    h = bytearray(hello(0, os.urandom(32), blob, CAP_STREAMS | CAP_RESUME))
    h[0] = 2  # header version
    c.send(bytes(h))
    code = c.close_code()
    check("§2: a header version other than 1 closes with 4004", code == 4004, str(code))
    # §1 (item 6): TLS is mutual: a dialer without a certificate is refused by the TLS layer.
    try:
        Connection(port, certificate=False)
        refused = "the connection was accepted"
    except Exception as e:  # noqa: BLE001 - the refusal is what we want to see
        refused = repr(e)
    check("§1: a dialer without a TLS certificate is refused (certificate required)",
          "certificate required" in refused, refused)
    # §3, §2 (item 7): an unknown IGNORABLE frame before authentication is skipped; §1 (item
    # 18): any request path, a permessage-deflate offer left unanswered, a fragmented message.
    c = Connection(port, path="/any/path", deflate=True)
    extensions = c.response.headers.get("Sec-WebSocket-Extensions") if c.response else "?"
    check("§1: any path is accepted and permessage-deflate is not negotiated",
          c.ws.state.name == "OPEN" and extensions is None, str(extensions))
    c.send(frame(0x7e, b"future", flags=0x8000))
    mine = hello(0, os.urandom(32), blob, CAP_STREAMS | CAP_RESUME)
    c.ws.send_binary(mine[:20], fin=False)
    c.ws.send_continuation(mine[20:], fin=True)
    c.flush()
    theirs = c.recv()
    ok = theirs is not None and parse(theirs)[0] == HELLO
    if ok:
        sig = sshsig(client_key, transcript(0, mine, theirs, c.binding))
        c.send(frame(AUTH, struct.pack(">H", len(sig)) + sig))
        c.recv()
        result = c.recv()
        ok = result is not None and parse(result)[0] == AUTH_RESULT and parse(result)[1][:2] == b"\0\0"
    check("§2/§3: an IGNORABLE unknown frame before auth is skipped; a fragmented HELLO counts",
          ok)
    # §3 (item 10): the handshake deadline covers RESUME: authenticated, never sending RESUME,
    # the dialer is closed with handshake timeout.
    c.send(frame(AUTH_RESULT, struct.pack(">HH", 0, 0)))
    code = c.close_code()
    check("§3: the handshake deadline covers RESUME (4007 without one)", code == 4007, str(code))
    # §8 (item 17): a whole frame over max_frame_size, written at once: the listener answers
    # 4002 with a reason text naming it, readable by the writer (not only a TCP reset).
    c = open_session(port, client_key)
    c.send(frame(MESSAGE, struct.pack(">Q", 1) + b"\x01a" + b"x" * (2 << 20)))
    code = c.close_code()
    text = c.ws.close_rcvd.reason if c.ws.close_rcvd else None
    check("§8: a frame over max_frame_size closes with 4002 'frame too large: …'",
          code == 4002 and text is not None and text.startswith("frame too large"),
          f"close {code} {text!r}, end {c.eof}")


def concurrent_resume_checks(port, client_key, check):
    """§4 (issue 16 item 4): several connections RESUME one session at once. Each is answered —
    RESUMED (then replaced by the next, 4012) or refused — none is left hanging, and one holds
    the session. Eight: more than `per_source_max_startups` (10) in setup at once from one
    address would be turned away by design."""
    d = Dialer(port, client_key)
    d.message("before the storm")
    d.wait(lambda: not d.unacked, "the ACK of the message")
    conns = []
    for _ in range(8):
        c = Connection(port)
        authenticate(c, client_key)
        c.send(frame(RESUME, d.session + struct.pack(">Q", d.received)))
        conns.append(c)
    firsts = []
    for c in conns:
        first = c.recv()
        firsts.append(parse(first)[0] if first else None)
    # Every connection but the one that holds the session in the end is closed.
    open_ = set(range(len(conns)))
    codes = []
    while len(open_) > 1:
        for i in sorted(open_):
            if conns[i].poll(0.05) is None:
                codes.append(conns[i].ws.close_rcvd.code if conns[i].ws.close_rcvd else None)
                open_.discard(i)
    holder = conns[open_.pop()]
    ct = b"text/plain"
    holder.send(frame(MESSAGE, struct.pack(">Q", d.next_seq) + bytes([len(ct)]) + ct + b"after"))
    body = first_of(holder, ACK)
    acked = struct.unpack(">Q", body)[0] if body else None
    check("§4: 8 RESUMEs of one session at once are each answered; one holds the session",
          all(f in (RESUMED, GOAWAY) for f in firsts) and acked == d.next_seq
          and all(c in (4012, 4007) for c in codes),
          f"first frames {sorted(set(firsts), key=str)}, closes {sorted(set(codes), key=str)}, "
          f"ack {acked}")


def start_serve(binary, workdir, *extra):
    """Starts `clipsync serve` on a free loopback port with the test keys and `extra`
    arguments; returns (process, port, its output)."""
    server = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", *extra,
                               "--identity", os.path.join(workdir, "server"),
                               "--authorized-keys", os.path.join(workdir, "trusted")],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port = int(server.stdout.readline().strip().rsplit(":", 1)[1])
    return server, port, ServeOutput(server)


def offer_checks(binary, workdir, client_key, check):
    """§3.1, §5.1, §5.2, §5.6 with the METADATA and OFFERS capabilities, against a
    `clipsync serve --out DIR` (which names saved files by their BLAKE3 and so declines an offer
    of content it saved already): metadata on a MESSAGE; an offer that gets no byte until its
    CREDIT, then is sent and verified; a second offer of the same content declined with
    `already have` (20) and no CREDIT at all; either flag without its capability: 4001."""
    out_dir = os.path.join(workdir, "offers")
    os.makedirs(out_dir, exist_ok=True)
    server, port, out = start_serve(binary, workdir, "--out", out_dir)
    try:
        all_caps = CAP_STREAMS | CAP_RESUME | CAP_METADATA | CAP_OFFERS
        c = Connection(port)
        theirs = authenticate(c, client_key, all_caps)
        caps = struct.unpack(">I", theirs[8 + 34:8 + 38])[0]
        check("§3.1: clipsync announces METADATA and OFFERS", caps & 0xC == 0xC, hex(caps))
        c.send(frame(RESUME, b"\x00" * 16 + struct.pack(">Q", 0)))
        assert parse(c.recv())[0] == RESUMED
        ct = b"text/plain"
        meta = b"clip-7"
        c.send(frame(MESSAGE, struct.pack(">Q", 1) + bytes([len(ct)]) + ct
                     + struct.pack(">H", len(meta)) + meta + b"hello", flags=FLAG_METADATA))
        line = out.wait_for(lambda l: "metadata=" in l, timeout=10)
        check("§5.1: a MESSAGE with metadata is delivered with it",
              line is not None and line.endswith("metadata=" + meta.hex()), repr(line))

        def frames_until(done):
            """Frames until `done(ftype, body)`; PINGs answered. None if the peer closed."""
            seen = []
            while True:
                msg = c.recv()
                if msg is None:
                    return None
                ftype, body = parse(msg)
                if ftype == PING:
                    c.send(frame(PONG, body))
                seen.append((ftype, body))
                if done(ftype, body):
                    return seen

        def offer(seq, sid, data):
            ct = b"image/png"
            c.send(frame(STREAM_OPEN, struct.pack(">QQQ", seq, sid, len(data))
                         + blake3.blake3(data).digest() + bytes([len(ct)]) + ct
                         + struct.pack(">H", len(meta)) + meta,
                         flags=0x0003 | FLAG_METADATA | FLAG_OFFER))

        def is_credit(sid):
            return lambda t, b: t == CREDIT and struct.unpack(">Q", b[:8])[0] == sid

        def is_result(sid):
            return lambda t, b: t == STREAM_RESULT and struct.unpack(">Q", b[8:16])[0] == sid

        data = os.urandom(300_000)
        offer(2, 1, data)
        seen = frames_until(is_credit(1))
        limit = struct.unpack(">Q", seen[-1][1][16:24])[0] if seen else 0
        check("§5.2: an offer is accepted with a CREDIT for it (no byte sent before)",
              seen is not None and limit > 0, f"limit {limit}")
        sent = 0
        while sent < len(data):
            n = min(65536, len(data) - sent, limit - sent)
            c.send(frame(STREAM_CHUNK, struct.pack(">QQ", 1, sent) + data[sent:sent + n]))
            sent += n
        c.send(frame(STREAM_END, struct.pack(">QQ", 1, len(data)) + blake3.blake3(data).digest()))
        seen = frames_until(is_result(1))
        reason = struct.unpack(">H", seen[-1][1][16:18])[0] if seen else None
        check("§5.2: the accepted offer is verified and saved (STREAM_RESULT 0)", reason == 0,
              f"reason {reason}")
        offer(3, 2, data)
        seen = frames_until(is_result(2))
        reason = struct.unpack(">H", seen[-1][1][16:18])[0] if seen else None
        credited = seen is not None and any(is_credit(2)(t, b) for t, b in seen)
        check("§5.6: an offer of content held already is declined with 20 (already have), "
              "never credited", reason == 20 and not credited,
              f"reason {reason}, credited {credited}")
        line = out.wait_for(lambda l: "declined" in l, timeout=10)
        check("§5.2: serve --out says it declined the offer", line is not None, repr(line))
        c.send(frame(MESSAGE, struct.pack(">Q", 4) + bytes([len(ct)]) + ct + b"still up"))
        line = out.wait_for(lambda l: 'text="still up"' in l, timeout=10)
        check("§5.6: the connection carries on after the decline", line is not None)
        # Either flag without its capability: a protocol error.
        for flag, what in ((FLAG_METADATA, "METADATA"), (FLAG_OFFER, "OFFER")):
            c = Connection(port)
            authenticate(c, client_key, CAP_STREAMS | CAP_RESUME)
            c.send(frame(RESUME, b"\x00" * 16 + struct.pack(">Q", 0)))
            parse(c.recv())
            if flag == FLAG_METADATA:
                c.send(frame(MESSAGE, struct.pack(">Q", 1) + bytes([len(ct)]) + ct
                             + struct.pack(">H", 1) + b"m" + b"x", flags=FLAG_METADATA))
            else:
                c.send(frame(STREAM_OPEN, struct.pack(">QQQ", 1, 1, 0) + b"\x00" * 32
                             + bytes([len(ct)]) + ct, flags=FLAG_OFFER))
            code = c.close_code()
            check(f"§3.1: the {what} flag without its capability closes with 4001",
                  code == 4001, str(code))
    finally:
        server.kill()
        server.wait()


def expiry_checks(binary, workdir, client_key, check):
    """§4 (item 4): a session whose resume window ran out is answered SESSION_LOST with
    `session expired` (17), by a `clipsync serve` whose resume window is 300 ms."""
    config = os.path.join(workdir, "short-window.toml")
    with open(config, "w") as f:
        f.write("resume_window_ms = 300\n")
    server, port, out = start_serve(binary, workdir, "--config", config)
    try:
        d = Dialer(port, client_key)
        old = d.session
        d.message("expiry")
        d.wait(lambda: not d.unacked, "the ACK of the message")
        d.c.reset()
        # serve prints "disconnected" when the session ends: here, when its window ran out.
        ended = out.wait_for(lambda l: l.startswith("disconnected"))
        ftype, body = d.connect()
        reason = struct.unpack(">H", body[32:34])[0] if ftype == SESSION_LOST else None
        check("§4: RESUME after the resume window ran out gets SESSION_LOST 17",
              ended is not None and ftype == SESSION_LOST and body[:16] == old and reason == 17,
              f"type {ftype} reason {reason}; serve said {ended!r}")
    finally:
        server.kill()
        server.wait()


class ServerConnection(Connection):
    """The listener's side: TLS server requiring (and not verifying) a client certificate,
    then the WebSocket upgrade answered with the clipsync.v1 subprotocol (PROTOCOL.md §1)."""

    def __init__(self, sock):
        cert, key = client_certificate()
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        ctx.use_certificate(cert)
        ctx.use_privatekey(key)
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *a: True)
        sock.settimeout(None)
        self.sock = sock
        self.eof = None
        self.tls = SSL.Connection(ctx, sock)
        self.tls.set_accept_state()
        self.tls.do_handshake()
        self.binding = self.tls.export_keying_material(b"EXPORTER-Channel-Binding", 32)
        self.ws = ServerProtocol(subprotocols=[Subprotocol("clipsync.v1")])
        request = None
        while request is None:
            self.pump()
            for event in self.ws.events_received():
                request = event
        self.ws.send_response(self.ws.accept(request))
        self.flush()
        self.pending = []


def listener_handshake(listening, own_key, dialer_blob, check, first):
    """Accepts a connection and does the handshake in the listener role (PROTOCOL.md §1, §3):
    both HELLOs, both AUTHs, both AUTH_RESULTs; returns the connection and the dialer's RESUME.
    The checks are made on the first connection."""
    own_blob = key_blob(own_key.public_key())
    sock, _ = listening.accept()
    c = ServerConnection(sock)
    if first:
        check("listener: the upgrade selects clipsync.v1", c.ws.state.name == "OPEN",
              c.ws.state.name)
    own_hello = hello(1, os.urandom(32), own_blob, CAP_STREAMS | CAP_RESUME, WINDOW, CONN_WINDOW)
    c.send(own_hello)
    peer_hello = c.recv()
    ftype, body = parse(peer_hello)
    # version 1, role 1, nonce 32, capabilities 4, five limits 4+4+4+4+2, two timers 4+4: the
    # public key's bytes16 starts at body offset 64.
    (blen,) = struct.unpack(">H", body[64:66])
    peer_blob = body[66:66 + blen]
    if first:
        check("listener: the dialer's HELLO says dialer, with our expected key",
              ftype == HELLO and body[1] == 0 and peer_blob == dialer_blob)
    ours = transcript(1, peer_hello, own_hello, c.binding)
    theirs = transcript(0, peer_hello, own_hello, c.binding)
    sig = sshsig(own_key, ours)
    c.send(frame(AUTH, struct.pack(">H", len(sig)) + sig))
    ftype, body = parse(c.recv())
    try:
        (n,) = struct.unpack(">H", body[:2])
        verify_sshsig(body[2:2 + n], dialer_blob, theirs)
        verified = ftype == AUTH
    except Exception as e:  # noqa: BLE001 - reported as a failed check
        verified = repr(e)
    if first or verified is not True:
        check("listener: the dialer's AUTH verifies over this TLS session", verified is True,
              str(verified))
    c.send(frame(AUTH_RESULT, struct.pack(">HH", 0, 0)))
    ftype, body = parse(c.recv())
    if first:
        check("listener: our AUTH accepted (AUTH_RESULT 0)",
              ftype == AUTH_RESULT and body[:2] == b"\x00\x00", body[:2].hex())
    ftype, body = parse(c.recv())
    return c, ftype, body


WINDOW, CONN_WINDOW = 256 * 1024, 512 * 1024


class Receiver:
    """The listener's session state across connections: what it received in order, its own
    sequenced frames (STREAM_RESULTs) not yet acknowledged, the incoming streams."""

    def __init__(self):
        self.session = os.urandom(16)
        self.received, self.own_seq, self.unacked = 0, 0, {}
        self.messages, self.streams = [], {}
        self.credits, self.overruns, self.duplicates = 0, [], 0

    def serve(self, c, cut_after=None):
        """The receiver's duties on one connection until the dialer's GOAWAY ("done"), the
        peer's end ("gone"), or, with `cut_after`, once that many stream bytes are in ("cut")."""
        conn_received, conn_granted = 0, CONN_WINDOW
        while True:
            msg = c.recv()
            if msg is None:
                return "gone"
            ftype, body = parse(msg)
            if ftype in (MESSAGE, STREAM_OPEN, STREAM_RESULT):
                (seq,) = struct.unpack(">Q", body[:8])
                if seq <= self.received:
                    self.duplicates += 1  # a retransmission after a resume: dropped (§5)
                    c.send(frame(ACK, struct.pack(">Q", self.received)))
                    continue
                if seq != self.received + 1:
                    self.overruns.append(f"sequence gap: {seq} after {self.received}")
                self.received = seq
                c.send(frame(ACK, struct.pack(">Q", self.received)))
            if ftype == MESSAGE:
                n = body[8]
                self.messages.append(body[9 + n:].decode(errors="replace"))
            elif ftype == STREAM_OPEN:
                (sid, total) = struct.unpack(">QQ", body[8:24])
                self.streams[sid] = {"data": bytearray(), "total": total, "granted": WINDOW,
                                     "hasher": blake3.blake3(), "offsets_after_resume": []}
            elif ftype == STREAM_CHUNK:
                (sid, offset) = struct.unpack(">QQ", body[:16])
                data = body[16:]
                st = self.streams[sid]
                if st.get("resumed_at") is not None and not st["offsets_after_resume"]:
                    st["offsets_after_resume"].append(offset)
                if offset + len(data) > st["granted"] or conn_received + len(data) > conn_granted:
                    self.overruns.append(f"stream {offset + len(data)} > {st['granted']}")
                conn_received += len(data)
                have = len(st["data"])
                if offset > have:
                    self.overruns.append(f"gap: chunk at {offset}, have {have}")
                data = data[have - offset:] if offset < have else data  # §5.3: trim overlap
                st["data"] += data
                st["hasher"].update(data)
                # We consume at once; grant more when a quarter window was used.
                if len(st["data"]) + WINDOW - st["granted"] >= WINDOW // 4:
                    st["granted"] = len(st["data"]) + WINDOW
                    c.send(frame(CREDIT, struct.pack(">QQQ", sid, len(st["data"]), st["granted"])))
                    self.credits += 1
                if conn_received + CONN_WINDOW - conn_granted >= CONN_WINDOW // 4:
                    conn_granted = conn_received + CONN_WINDOW
                    c.send(frame(CREDIT, struct.pack(">QQQ", 0, conn_received, conn_granted)))
                if cut_after is not None and len(st["data"]) >= cut_after:
                    c.reset()
                    return "cut"
            elif ftype == STREAM_END:
                (sid, total) = struct.unpack(">QQ", body[:16])
                st = self.streams[sid]
                ok = total == len(st["data"]) and st["hasher"].digest() == body[16:48]
                st["verified"] = ok
                self.own_seq += 1
                f = frame(STREAM_RESULT, struct.pack(">QQHH", self.own_seq, sid, 0 if ok else 14, 0))
                self.unacked[self.own_seq] = f
                c.send(f)
            elif ftype == ACK:
                (upto,) = struct.unpack(">Q", body)
                self.unacked = {s: f for s, f in self.unacked.items() if s > upto}
            elif ftype == PING:
                c.send(frame(PONG, body))
            elif ftype == GOAWAY:
                # The dialer is done: answer with the close (PROTOCOL.md §6.4).
                if c.ws.state.name == "OPEN":
                    c.ws.send_close(4000, "normal")
                    c.flush()
                return "done"

    def resume(self, c, last_received):
        """After RESUMED (§4): our unacknowledged sequenced frames above the dialer's
        last_received, then a CREDIT per open incoming stream with the exact bytes received."""
        for seq in sorted(self.unacked):
            if seq > last_received:
                c.send(self.unacked[seq])
        for sid, st in self.streams.items():
            if "verified" not in st:
                st["resumed_at"] = len(st["data"])
                st["granted"] = len(st["data"]) + WINDOW
                c.send(frame(CREDIT, struct.pack(">QQQ", sid, len(st["data"]), st["granted"])))


def listener_role(binary, workdir, check):
    """Plays the listener that `clipsync send` dials: handshake in the listener role, then the
    receiver's duties — ACK every sequenced frame, grant CREDIT as the stream is consumed,
    verify the stream's BLAKE3 and answer STREAM_RESULT, answer PING (PROTOCOL.md §3–§6) — and
    a resume: the connection is reset under a 20 MiB stream with probe messages in flight, the
    dialer comes back with RESUME, and the stream continues from our offset."""
    import threading

    own_key = ed25519.Ed25519PrivateKey.generate()
    dialer_key = ed25519.Ed25519PrivateKey.generate()
    dialer_blob = key_blob(dialer_key.public_key())
    key_file = os.path.join(workdir, "dialer")
    with open(key_file, "wb") as f:
        f.write(dialer_key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.OpenSSH,
                                         serialization.NoEncryption()))
    os.chmod(key_file, 0o600)
    trusted = os.path.join(workdir, "dialer_trusts")
    with open(trusted, "wb") as f:
        f.write(own_key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                  serialization.PublicFormat.OpenSSH) + b" py\n")
    config = os.path.join(workdir, "dialer.toml")
    with open(config, "w") as f:
        f.write("backoff_initial_ms = 100\nbackoff_max_ms = 1000\n")
    size = 20 << 20  # more than our 256 KiB window many times over, so credit must flow
    payload = os.urandom(size)
    data_file = os.path.join(workdir, "payload")
    with open(data_file, "wb") as f:
        f.write(payload)
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(4)
    port = listening.getsockname()[1]
    probes = 6
    sender = subprocess.Popen([binary, "send", "--connect", f"127.0.0.1:{port}", "--config",
                               config, "--identity", key_file, "--authorized-keys", trusted,
                               "--messages", str(probes), "--interval-ms", "100", data_file],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = {}
    reader = threading.Thread(target=lambda: out.update(
        zip(("stdout", "stderr"), sender.communicate())), daemon=True)
    reader.start()

    r = Receiver()
    c, ftype, body = listener_handshake(listening, own_key, dialer_blob, check, first=True)
    check("listener: the dialer asks RESUME for a new session",
          ftype == RESUME and body[:16] == b"\x00" * 16, f"type {ftype}")
    c.send(frame(RESUMED, r.session + struct.pack(">Q", 0)))
    ended = r.serve(c, cut_after=8 << 20)
    check("listener: the connection is reset under the stream", ended == "cut", ended)
    cut_at = len(r.streams[1]["data"]) if 1 in r.streams else None

    c, ftype, body = listener_handshake(listening, own_key, dialer_blob, check, first=False)
    last = struct.unpack(">Q", body[16:24])[0] if ftype == RESUME else None
    check("listener: the dialer comes back with RESUME for our session",
          ftype == RESUME and body[:16] == r.session and last == r.own_seq,
          f"type {ftype} last_received {last}")
    c.send(frame(RESUMED, r.session + struct.pack(">Q", r.received)))
    r.resume(c, last or 0)
    ended = r.serve(c)
    reader.join(timeout=30)

    check("listener: the dialer stayed within the credit granted, which had to flow",
          not r.overruns and r.credits >= 64, f"{r.credits} stream CREDITs, {r.overruns[:3]}")
    wanted = [f"probe {i}" for i in range(1, probes + 1)]
    check("listener: the probe messages arrived once each, in order, across the resume",
          r.messages == wanted, f"{r.messages}, {r.duplicates} retransmissions dropped")
    st = r.streams.get(1, {})
    check("listener: after the resume the stream continued at our offset",
          st.get("resumed_at") == cut_at and st.get("offsets_after_resume") == [cut_at],
          f"cut at {cut_at}, first chunk after resume at {st.get('offsets_after_resume')}")
    check("listener: the 20 MiB stream arrived whole, under credit, and verified",
          len(r.streams) == 1 and st.get("verified") and bytes(st["data"]) == payload,
          f"{len(r.streams)} streams")
    stdout = out.get("stdout", "")
    check("listener: clipsync send says the file and every probe were delivered, one reconnect",
          ended == "done" and sender.returncode == 0
          and f"delivered file ({size} bytes)" in stdout
          and stdout.count("delivered probe") == probes and "reconnects=1" in stdout,
          stdout + out.get("stderr", ""))


def main():
    binary = sys.argv[1]
    signal.alarm(240)  # a hung peer fails the run instead of hanging CI
    results = []

    def check(name, ok, detail=""):
        results.append(ok)
        print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)

    workdir = tempfile.mkdtemp(prefix="clipsync-independent-")
    server_key = ed25519.Ed25519PrivateKey.generate()
    client_key = ed25519.Ed25519PrivateKey.generate()
    with open(os.path.join(workdir, "server"), "wb") as f:
        f.write(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                         serialization.NoEncryption()))
    # A private key must be readable by its owner only, as OpenSSH insists.
    os.chmod(os.path.join(workdir, "server"), 0o600)
    with open(os.path.join(workdir, "trusted"), "wb") as f:
        f.write(client_key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + b" python\n")
    server = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--identity",
                               os.path.join(workdir, "server"), "--authorized-keys",
                               os.path.join(workdir, "trusted")],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        first = server.stdout.readline().strip()
        port = int(first.rsplit(":", 1)[1])
        out = ServeOutput(server)
        blob = key_blob(client_key.public_key())
        server_blob = key_blob(server_key.public_key())

        # 1 and 2: subprotocol, and a signature over another channel binding.
        c = Connection(port)
        check("subprotocol clipsync.v1 negotiated", c.ws.subprotocol == "clipsync.v1",
              str(c.ws.subprotocol))
        mine = hello(0, os.urandom(32), blob)
        c.send(mine)
        theirs = c.recv()
        bad = sshsig(client_key, transcript(0, mine, theirs, b"\x00" * 32))
        c.send(frame(AUTH, struct.pack(">H", len(bad)) + bad))
        seen_reason = None
        while True:
            msg = c.recv()
            if msg is None:
                break
            ftype, body = parse(msg)
            if ftype == AUTH_RESULT:
                (seen_reason,) = struct.unpack(">H", body[:2])
        code = c.ws.close_rcvd.code if c.ws.close_rcvd else None
        check("wrong signature refused with AUTH_RESULT 5 (auth failed)", seen_reason == 5, f"reason {seen_reason}")
        check("wrong signature closed with code 4005", code == 4005, f"close code {code}")

        # 3: a correct handshake and one message.
        c = Connection(port)
        mine = hello(0, os.urandom(32), blob)
        c.send(mine)
        theirs = c.recv()
        ftype, body = parse(theirs)
        check("server HELLO received", ftype == HELLO and body[1] == 1, f"type {ftype}")
        good = sshsig(client_key, transcript(0, mine, theirs, c.binding))
        c.send(frame(AUTH, struct.pack(">H", len(good)) + good))
        ftype, body = parse(c.recv())
        (n,) = struct.unpack(">H", body[:2])
        try:
            verify_sshsig(body[2:2 + n], server_blob, transcript(1, mine, theirs, c.binding))
            check("server AUTH verifies over this TLS session", ftype == AUTH)
        except Exception as e:  # noqa: BLE001 - report any verification failure
            check("server AUTH verifies over this TLS session", False, repr(e))
        ftype, body = parse(c.recv())
        check("our AUTH accepted (AUTH_RESULT 0)", ftype == AUTH_RESULT and body[:2] == b"\x00\x00",
              f"type {ftype} body {body[:2].hex()}")
        c.send(frame(AUTH_RESULT, struct.pack(">HH", 0, 0)))
        c.send(frame(RESUME, b"\x00" * 16 + struct.pack(">Q", 0)))
        ftype, body = parse(c.recv())
        check("RESUME answered with RESUMED", ftype == RESUMED, f"type {ftype}")
        ct = b"text/plain; charset=utf-8"
        c.send(frame(MESSAGE, struct.pack(">Q", 1) + bytes([len(ct)]) + ct + b"hello from python"))
        acked = None
        deadline = time.time() + 10
        while acked is None and time.time() < deadline:
            ftype, body = parse(c.recv())
            if ftype == ACK:
                (acked,) = struct.unpack(">Q", body)
        check("MESSAGE acknowledged", acked == 1, f"ack {acked}")
        c.send(frame(GOAWAY, struct.pack(">HQH", 0, 0, 0)))
        c.ws.send_close(4000, "normal")
        c.flush()
        printed = out.wait_for(lambda l: 'text="hello from python"' in l)
        check("clipsync serve printed the message", printed is not None)
        item_checks(port, client_key, check)
        resume_checks(port, client_key, out, check)
        concurrent_resume_checks(port, client_key, check)
    finally:
        server.kill()
        server.wait()
    expiry_checks(binary, workdir, client_key, check)
    offer_checks(binary, workdir, client_key, check)
    try:
        listener_role(binary, workdir, check)
    except Exception as e:  # noqa: BLE001 - a crash of the role is a failed check
        check("listener role ran to its end", False, repr(e))
    failed = results.count(False)
    print(f"{len(results) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
