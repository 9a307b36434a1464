#!/usr/bin/env python3
"""An independent ClipSync client, written from PROTOCOL.md alone.

It uses no ClipSync code: TLS from pyOpenSSL (for the RFC 9266 exporter), WebSocket from the
`websockets` package's sans-I/O client, ed25519 and SHA-512 from `cryptography`, and the frame
layouts and the SSHSIG transcript as PROTOCOL.md describes them. It starts `clipsync serve`
and checks:

1. the upgrade negotiates the `clipsync.v1` subprotocol;
2. a handshake whose signature is wrong (made over another channel binding) is refused with
   AUTH_RESULT reason 5 and WebSocket close code 4005;
3. a correct handshake is accepted, the server's own AUTH verifies, RESUME gets RESUMED, a
   MESSAGE is acknowledged, and `clipsync serve` prints it;
4. in the listener role, dialled by `clipsync send`: the upgrade, the handshake with roles
   reversed (its AUTH verifies over this TLS session, ours is accepted), RESUME answered, then
   the receiver's duties: messages acknowledged and received in order, a 3 MiB stream taken
   under a 256 KiB window with CREDIT granted as it is consumed (the sender must stay within
   it), its BLAKE3 verified and answered with STREAM_RESULT, and `clipsync send` reports
   everything delivered.

Usage: independent_client.py PATH_TO_CLIPSYNC_BINARY. Prints one line per check and ends with
`N passed, M failed`; exits 1 on any failure.
"""

import hashlib
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import datetime

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
CAP_STREAMS, CAP_RESUME = 1, 2


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

    def __init__(self, port):
        cert, key = client_certificate()
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        ctx.use_certificate(cert)
        ctx.use_privatekey(key)
        ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        # pyOpenSSL wants a blocking socket; main() bounds the whole run with an alarm.
        sock.settimeout(None)
        self.tls = SSL.Connection(ctx, sock)
        self.tls.set_tlsext_host_name(b"clipsync.invalid")
        self.tls.set_connect_state()
        self.tls.do_handshake()
        # RFC 9266: label EXPORTER-Channel-Binding, no context, 32 bytes.
        self.binding = self.tls.export_keying_material(b"EXPORTER-Channel-Binding", 32)
        self.ws = ClientProtocol(parse_uri("wss://clipsync.invalid/clipsync"),
                                 subprotocols=[Subprotocol("clipsync.v1")])
        self.ws.send_request(self.ws.connect())
        self.flush()
        while self.ws.handshake_exc is None and self.ws.state.name == "CONNECTING":
            self.pump()
        if self.ws.handshake_exc is not None:
            raise self.ws.handshake_exc
        self.pending = []

    def flush(self):
        for data in self.ws.data_to_send():
            if data:
                self.tls.sendall(data)

    def pump(self):
        try:
            data = self.tls.recv(65536)
        except (SSL.ZeroReturnError, SSL.SysCallError):
            data = b""
        if data:
            self.ws.receive_data(data)
        else:
            self.ws.receive_eof()
        self.flush()

    def send(self, payload):
        self.ws.send_binary(payload)
        self.flush()

    def recv(self):
        """The next binary message, or None once the peer closed."""
        while True:
            for event in self.ws.events_received():
                if getattr(event, "opcode", None) == Opcode.BINARY:
                    self.pending.append(bytes(event.data))
            if self.pending:
                return self.pending.pop(0)
            if self.ws.close_rcvd is not None or self.ws.state.name == "CLOSED":
                return None
            self.pump()

    def close_code(self):
        while self.recv() is not None:
            pass
        return self.ws.close_rcvd.code if self.ws.close_rcvd else None


def open_session(port, client_key):
    """Dials `clipsync serve` and completes the handshake (STREAMS and RESUME announced) up to
    RESUMED; returns the connection."""
    c = Connection(port)
    mine = hello(0, os.urandom(32), key_blob(client_key.public_key()), CAP_STREAMS | CAP_RESUME)
    c.send(mine)
    theirs = c.recv()
    sig = sshsig(client_key, transcript(0, mine, theirs, c.binding))
    c.send(frame(AUTH, struct.pack(">H", len(sig)) + sig))
    assert parse(c.recv())[0] == AUTH
    assert parse(c.recv())[0] == AUTH_RESULT
    c.send(frame(AUTH_RESULT, struct.pack(">HH", 0, 0)))
    c.send(frame(RESUME, b"\x00" * 16 + struct.pack(">Q", 0)))
    assert parse(c.recv())[0] == RESUMED
    return c


def item_checks(port, client_key, check):
    """One check per PROTOCOL.md rule an outside implementation can provoke (issue 12)."""
    # §2: the IGNORABLE bit on a known type changes nothing: a PING with it gets its PONG.
    c = open_session(port, client_key)
    c.send(frame(PING, struct.pack(">Q", 424242), flags=0x8000))
    pong = None
    while pong is None:
        msg = c.recv()
        if msg is None:
            break
        ftype, body = parse(msg)
        if ftype == PONG:
            pong = struct.unpack(">Q", body)[0]
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

    def send(self, payload):
        """Sends, unless the peer already closed (then what we would say no longer matters)."""
        if self.ws.state.name == "OPEN":
            super().send(payload)


def listener_role(binary, workdir, check):
    """Plays the listener that `clipsync send` dials: handshake in the listener role, then the
    receiver's duties — ACK every sequenced frame, grant CREDIT as the stream is consumed,
    verify the stream's BLAKE3 and answer STREAM_RESULT, answer PING (PROTOCOL.md §3–§6)."""
    import threading
    import blake3

    own_key = ed25519.Ed25519PrivateKey.generate()
    dialer_key = ed25519.Ed25519PrivateKey.generate()
    own_blob, dialer_blob = key_blob(own_key.public_key()), key_blob(dialer_key.public_key())
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
    payload = os.urandom(3 << 20)  # 3 MiB: more than our 256 KiB window, so credit must flow
    data_file = os.path.join(workdir, "payload")
    with open(data_file, "wb") as f:
        f.write(payload)
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(1)
    port = listening.getsockname()[1]
    sender = subprocess.Popen([binary, "send", "--connect", f"127.0.0.1:{port}", "--identity",
                               key_file, "--authorized-keys", trusted, "--messages", "3",
                               "--interval-ms", "10", data_file],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = {}
    reader = threading.Thread(target=lambda: out.update(
        zip(("stdout", "stderr"), sender.communicate())), daemon=True)
    reader.start()
    sock, _ = listening.accept()
    c = ServerConnection(sock)
    check("listener: the upgrade selects clipsync.v1",
          c.ws.state.name == "OPEN", c.ws.state.name)

    # Handshake, listener role: both HELLOs, then both AUTHs, then both AUTH_RESULTs.
    window, conn_window = 256 * 1024, 512 * 1024
    own_hello = hello(1, os.urandom(32), own_blob, CAP_STREAMS | CAP_RESUME, window, conn_window)
    c.send(own_hello)
    peer_hello = c.recv()
    ftype, body = parse(peer_hello)
    # version 1, role 1, nonce 32, capabilities 4, five limits 4+4+4+4+2, two timers 4+4: the
    # public key's bytes16 starts at body offset 64.
    (blen,) = struct.unpack(">H", body[64:66])
    peer_blob = body[66:66 + blen]
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
        check("listener: the dialer's AUTH verifies over this TLS session", ftype == AUTH)
    except Exception as e:  # noqa: BLE001 - reported as a failed check
        check("listener: the dialer's AUTH verifies over this TLS session", False, repr(e))
    c.send(frame(AUTH_RESULT, struct.pack(">HH", 0, 0)))
    ftype, body = parse(c.recv())
    check("listener: our AUTH accepted (AUTH_RESULT 0)",
          ftype == AUTH_RESULT and body[:2] == b"\x00\x00", body[:2].hex())
    ftype, body = parse(c.recv())
    check("listener: the dialer asks RESUME for a new session",
          ftype == RESUME and body[:16] == b"\x00" * 16, f"type {ftype}")
    c.send(frame(RESUMED, os.urandom(16) + struct.pack(">Q", 0)))

    # The receiver's duties until the dialer says GOAWAY.
    received, own_seq = 0, 0
    messages, streams = [], {}
    conn_received = conn_granted = 0
    conn_granted = conn_window
    credits, overruns = 0, []
    while True:
        msg = c.recv()
        if msg is None:
            break
        ftype, body = parse(msg)
        if ftype in (MESSAGE, STREAM_OPEN, STREAM_RESULT):
            (seq,) = struct.unpack(">Q", body[:8])
            if seq != received + 1:
                check("listener: sequence numbers without gaps", False, f"{seq} after {received}")
            received = seq
            c.send(frame(ACK, struct.pack(">Q", received)))
        if ftype == MESSAGE:
            n = body[8]
            messages.append(body[9 + n:].decode(errors="replace"))
        elif ftype == STREAM_OPEN:
            (sid, total) = struct.unpack(">QQ", body[8:24])
            streams[sid] = {"data": bytearray(), "total": total, "granted": window,
                            "hasher": blake3.blake3()}
        elif ftype == STREAM_CHUNK:
            (sid, offset) = struct.unpack(">QQ", body[:16])
            data = body[16:]
            st = streams[sid]
            assert offset == len(st["data"]), f"chunk at {offset}, have {len(st['data'])}"
            if offset + len(data) > st["granted"] or conn_received + len(data) > conn_granted:
                overruns.append(f"stream {offset + len(data)} > {st['granted']}")
            st["data"] += data
            st["hasher"].update(data)
            conn_received += len(data)
            # We consume at once; grant more when a quarter window was used.
            if len(st["data"]) + window - st["granted"] >= window // 4:
                st["granted"] = len(st["data"]) + window
                c.send(frame(CREDIT, struct.pack(">QQQ", sid, len(st["data"]), st["granted"])))
                credits += 1
            if conn_received + conn_window - conn_granted >= conn_window // 4:
                conn_granted = conn_received + conn_window
                c.send(frame(CREDIT, struct.pack(">QQQ", 0, conn_received, conn_granted)))
        elif ftype == STREAM_END:
            (sid, total) = struct.unpack(">QQ", body[:16])
            st = streams[sid]
            ok = total == len(st["data"]) and st["hasher"].digest() == body[16:48]
            st["verified"] = ok
            own_seq += 1
            c.send(frame(STREAM_RESULT, struct.pack(">QQHH", own_seq, sid, 0 if ok else 14, 0)))
        elif ftype == PING:
            c.send(frame(PONG, body))
        elif ftype == GOAWAY:
            # The dialer is done: answer with the close (PROTOCOL.md §6.4).
            if c.ws.state.name == "OPEN":
                c.ws.send_close(4000, "normal")
                c.flush()
            break
    reader.join(timeout=30)
    check("listener: the dialer stayed within the credit granted, which had to flow",
          not overruns and credits >= 8, f"{credits} stream CREDITs, overruns {overruns[:3]}")
    stdout = out.get("stdout", "")
    check("listener: the three probe messages arrived in order",
          messages == ["probe 1", "probe 2", "probe 3"], repr(messages))
    verified = [s for s in streams.values() if s.get("verified")]
    check("listener: the 3 MiB stream arrived whole, under credit, and verified",
          len(verified) == 1 and bytes(verified[0]["data"]) == payload,
          f"{len(streams)} streams")
    check("listener: clipsync send says the file and the probes were delivered",
          sender.returncode == 0 and "delivered file (3145728 bytes)" in stdout
          and stdout.count("delivered probe") == 3, stdout + out.get("stderr", ""))


def main():
    binary = sys.argv[1]
    signal.alarm(120)  # a hung peer fails the run instead of hanging CI
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
        printed = False
        deadline = time.time() + 10
        while time.time() < deadline:
            line = server.stdout.readline()
            if 'text="hello from python"' in line:
                printed = True
                break
        check("clipsync serve printed the message", printed)
        item_checks(port, client_key, check)
    finally:
        server.kill()
        server.wait()
    try:
        listener_role(binary, workdir, check)
    except Exception as e:  # noqa: BLE001 - a crash of the role is a failed check
        check("listener role ran to its end", False, repr(e))
    failed = results.count(False)
    print(f"{len(results) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
