//! The soak (issue 16): one `clipsync serve` on loopback held under the loads that used to
//! exhaust it, each case bounded in count and time. One line per case with its figures, then
//! `N passed, M failed`; exit 1 on a failure.
//!
//! Run: `cargo bench --bench soak` (release build; about two minutes). `SOAK_SESSIONS` changes
//! the number of sequential sessions (default 10,000).
//!
//! Cases:
//! 1. `idle`: 1,000 authenticated idle connections (1,000 keys): the server's memory per
//!    connection and its CPU while they idle.
//! 2. `flood`: 1,000 unauthenticated sockets that never speak, reopened as soon as they are
//!    closed, while a trusted peer sends 20 messages, each on a new connection: success rate
//!    and latency (connect, authenticate, deliver).
//! 3. `sessions`: thousands of sequential sessions (connect, one message, close): the server's
//!    memory after them against a baseline taken after the first 500.
//! 4. `resume`: 200 connections resume one session at once: every one is
//!    answered (resumed, or refused or shed) within the handshake deadline, and the server's
//!    open descriptors stay bounded.
//! 5. `no-ack`: an authorized peer that opens and aborts streams and never acknowledges: the
//!    server must close it with `replay overflow` (4018) before its memory grows by more than a
//!    few MiB.

#![allow(clippy::unwrap_used)] // a benchmark: a panic is the failure report

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clipsync::config::TransportConfig;
use clipsync::net::{Address, TokioNet};
use clipsync::secure::{self, ChannelParams, SshAuthenticator, TlsSetup};
use clipsync::transport::{ConnectionState, Message, PeerInfo, Transport};
use clipsync::wire::{Frame, SessionId, StreamAbort, StreamOpen};
use futures_util::{SinkExt, StreamExt};
use ssh_key::PrivateKey;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const PEERS: usize = 1000;

fn key(i: usize) -> PrivateKey {
    let mut seed = [0x5a; 32];
    seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
    SshAuthenticator::ed25519_from_seed(seed)
}

/// `clipsync serve` with a fresh key, trusting `PEERS` client keys, with `config` (TOML).
struct Server {
    child: Child,
    addr: String,
    key: PrivateKey,
}

impl Server {
    fn start(dir: &std::path::Path, config: &str) -> Server {
        let own = key(usize::MAX >> 1);
        let identity = dir.join("server");
        std::fs::write(
            &identity,
            own.to_openssh(ssh_key::LineEnding::LF).unwrap().as_bytes(),
        )
        .unwrap();
        let mut trusted = String::new();
        for i in 0..PEERS {
            trusted.push_str(&key(i).public_key().to_openssh().unwrap());
            trusted.push('\n');
        }
        let trusted_file = dir.join("trusted");
        std::fs::write(&trusted_file, trusted).unwrap();
        let config_file = dir.join("serve.toml");
        std::fs::write(&config_file, config).unwrap();
        #[cfg(unix)]
        for f in [&identity, &trusted_file] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_clipsync"))
            .args(std::env::var("SOAK_VERBOSE").map(|_| "-v"))
            .args(["serve", "--listen", "127.0.0.1:0", "--identity"])
            .arg(&identity)
            .arg("--authorized-keys")
            .arg(&trusted_file)
            .arg("--config")
            .arg(&config_file)
            .stdout(Stdio::piped())
            .stderr(match std::env::var("SOAK_VERBOSE") {
                Ok(path) => Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .unwrap(),
                ),
                Err(_) => Stdio::null(),
            })
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        let addr = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap()
            .to_string();
        // Drain the server's output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in out.lines() {});
        Server {
            child,
            addr,
            key: own,
        }
    }

    /// Resident memory (bytes) and CPU time used so far (user + system).
    fn usage(&self) -> (u64, Duration) {
        let pid = self.child.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss_kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        let ticks: u64 = fields
            .get(11..13)
            .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
            .unwrap_or(0);
        (rss_kb * 1024, Duration::from_millis(ticks * 10))
    }

    fn peer(&self) -> PeerInfo {
        PeerInfo::new("serve", vec![self.addr.parse().unwrap()])
            .with_key(self.key.public_key().clone())
    }

    fn auth(&self, i: usize) -> Arc<SshAuthenticator> {
        Arc::new(SshAuthenticator::new(key(i), vec![self.key.public_key().clone()]).unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Report {
    passed: usize,
    failed: usize,
}

impl Report {
    fn case(&mut self, name: &str, ok: bool, figures: String) {
        println!("{} {name:<10} {figures}", if ok { "ok  " } else { "FAIL" });
        let _ = std::io::stdout().flush();
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
    }
}

fn mib(b: i64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

/// Returns the connections with their transport, which owns them.
async fn idle(
    server: &Server,
    report: &mut Report,
) -> (Transport, Vec<clipsync::transport::Connection>) {
    let (rss0, _) = server.usage();
    let transport = Transport::new(TransportConfig::default()).unwrap();
    let mut conns = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..PEERS {
        let (t, peer, auth) = (transport.clone(), server.peer(), server.auth(i));
        tasks.spawn(async move { t.connect(&peer, auth).await });
        // A handful in setup at a time, as machines that start at different moments.
        if tasks.len() >= 8 {
            if let Some(Ok(Ok(c))) = tasks.join_next().await {
                conns.push(c);
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        if let Ok(Ok(c)) = r {
            conns.push(c);
        }
    }
    let (rss1, cpu1) = server.usage();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, cpu2) = server.usage();
    let live = conns
        .iter()
        .filter(|c| *c.state().borrow() == ConnectionState::Connected)
        .count();
    let per = (rss1 as i64 - rss0 as i64) / PEERS as i64;
    let cpu = (cpu2 - cpu1).as_secs_f64() / 5.0 * 100.0;
    report.case(
        "idle",
        live == PEERS && per < 128 * 1024,
        format!(
            "{live} of {PEERS} authenticated connections idle; server {} → {} ({} KiB per \
             connection); {cpu:.1}% of a core while idle",
            mib(rss0 as i64),
            mib(rss1 as i64),
            per / 1024
        ),
    );
    (transport, conns)
}

/// `PEERS` sockets that never speak, each reopened as soon as the server closes it, from
/// `sources` loopback addresses starting at 127.0.0.`first`.
fn churn(addr: std::net::SocketAddr, first: u8, sources: u8) -> tokio::task::JoinSet<()> {
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..PEERS {
        let source = std::net::Ipv4Addr::new(127, 0, 0, first + (i % usize::from(sources)) as u8);
        flood.spawn(async move {
            loop {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                let _ = socket.bind(std::net::SocketAddr::from((source, 0)));
                if let Ok(mut s) = socket.connect(addr).await {
                    let mut b = [0u8; 1];
                    let _ = s.read(&mut b).await;
                } else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });
    }
    flood
}

/// 20 legitimate sends (from 127.0.0.1), each on a new connection (one `connect`, which
/// dials again twice when the listener sheds it during TLS), during a flood: how many were
/// delivered, their latencies, the first failure.
async fn sends_through(server: &Server) -> (usize, Vec<Duration>, Option<String>) {
    let transport = Transport::new(TransportConfig::default()).unwrap();
    let (mut ok, mut latencies, mut first_error) = (0, Vec::new(), None);
    for i in 0..20 {
        let started = Instant::now();
        let sent = tokio::time::timeout(Duration::from_secs(5), async {
            let c = transport.connect(&server.peer(), server.auth(i)).await?;
            c.send(Message::text("through the flood"))
                .await
                .map_err(|e| clipsync::error::ConnectError::Internal(e.to_string()))?;
            c.close().await;
            Ok::<_, clipsync::error::ConnectError>(())
        })
        .await;
        match sent {
            Ok(Ok(())) => {
                ok += 1;
                latencies.push(started.elapsed());
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e.to_string());
            }
            Err(_) => {
                first_error.get_or_insert("not delivered within 5 s".into());
            }
        }
    }
    latencies.sort();
    (ok, latencies, first_error)
}

async fn flood(server: &Server, report: &mut Report) {
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();
    // 1,000 sockets from 10 other addresses, from one other address, and from the sender's
    // own address (a flood sharing its address: behind the same NAT).
    for (name, first, sources) in [
        ("flood-10", 2u8, 10u8),
        ("flood-1", 2, 1),
        ("flood-own", 1, 1),
    ] {
        let mut flood = churn(addr, first, sources);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (ok, latencies, first_error) = sends_through(server).await;
        flood.abort_all();
        while flood.join_next().await.is_some() {}
        let max = latencies.last().copied().unwrap_or_default();
        let p50 = latencies
            .get(latencies.len() / 2)
            .copied()
            .unwrap_or_default();
        let from = if first == 1 {
            "the sender's own address".to_string()
        } else {
            format!("{sources} other address(es)")
        };
        report.case(
            name,
            ok == 20 && max < Duration::from_secs(1),
            format!(
                "{ok} of 20 legitimate sends delivered (one connect each) while {PEERS} \
                 unauthenticated sockets from {from} churned; latency p50 {} ms, max {} ms{}",
                p50.as_millis(),
                max.as_millis(),
                first_error.map_or(String::new(), |e| format!("; first failure: {e}"))
            ),
        );
    }
}

async fn sessions(server: &Server, report: &mut Report) {
    let n: usize = std::env::var("SOAK_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let warm = 500.min(n);
    let transport = Transport::new(TransportConfig::default()).unwrap();
    let (peer, auth) = (server.peer(), server.auth(0));
    let mut baseline = 0;
    let started = Instant::now();
    let mut failed = 0;
    let mut samples = Vec::new();
    for i in 1..=n {
        match transport.connect(&peer, auth.clone()).await {
            Ok(c) => {
                if c.send(Message::text("one clip")).await.is_err() {
                    failed += 1;
                }
                c.close().await;
            }
            Err(_) => failed += 1,
        }
        if i == warm {
            baseline = server.usage().0;
        }
        if i % 2500 == 0 {
            samples.push(format!("{i}: {}", mib(server.usage().0 as i64)));
        }
    }
    // The server ends each session after our close; give it its last ones' lingering closes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = server.usage().0;
    let growth = after as i64 - baseline as i64;
    report.case(
        "sessions",
        failed == 0 && growth < 8 << 20,
        format!(
            "{n} sequential sessions in {:.1} s, {failed} failed; server {} after {warm}, {} after \
             {n} ({} growth; {})",
            started.elapsed().as_secs_f64(),
            mib(baseline as i64),
            mib(after as i64),
            mib(growth),
            samples.join(", ")
        ),
    );
}

/// Dials the server with key `i` as a raw channel (TLS, WebSocket, authentication), resuming
/// `resume` (`NONE` for a new session).
async fn raw_dial(
    server: &Server,
    i: usize,
    resume: (SessionId, u64),
) -> Result<secure::Channel, clipsync::error::ConnectError> {
    let target = ServerRef {
        addr: server.addr.clone(),
        key: server.key.clone(),
    };
    raw_dial_ref(&target, i, resume).await
}

/// Open file descriptors of the server process.
fn fds(server: &Server) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.child.id())).map_or(0, |d| d.count())
}

/// 200 connections resume one session at once: each must be answered (or shed)
/// within the handshake deadline, none left hanging, and the server's descriptors bounded.
async fn resume_storm(server: &Server, report: &mut Report) {
    let first = raw_dial(server, 2, (SessionId::NONE, 0)).await.unwrap();
    let session = first.handshake.session;
    let fds0 = fds(server);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (addr, key) = (server.addr.clone(), server.key.clone());
        tasks.spawn(async move {
            let server = ServerRef { addr, key };
            let t = Instant::now();
            let r = tokio::time::timeout(
                Duration::from_secs(15),
                raw_dial_ref(&server, 2, (session, 0)),
            )
            .await;
            // The answer is all it waits for; its connection closes after it.
            (
                t.elapsed(),
                r.map(|r| r.map(|c| c.handshake.session == session)),
            )
        });
    }
    let mut peak_fds = fds0;
    let (mut resumed, mut refused, mut hung) = (0, 0, 0);
    let mut slowest = Duration::ZERO;
    while let Some(r) = tasks.join_next().await {
        peak_fds = peak_fds.max(fds(server));
        let Ok((took, r)) = r else { continue };
        slowest = slowest.max(took);
        match r {
            Ok(Ok(true)) => resumed += 1,
            Ok(_) => refused += 1,
            Err(_) => hung += 1,
        }
    }
    drop(first);
    report.case(
        "resume",
        hung == 0 && slowest < Duration::from_secs(11) && peak_fds < fds0 + 100,
        format!(
            "200 connections resuming one session at once: {resumed} resumed, {refused} refused \
             or shed, {hung} unanswered after 15 s; slowest answer {} ms; server descriptors \
             {fds0} → peak {peak_fds}; {:.1} s in all",
            slowest.as_millis(),
            started.elapsed().as_secs_f64()
        ),
    );
}

/// What a task needs of [`Server`] to dial it.
struct ServerRef {
    addr: String,
    key: PrivateKey,
}

/// See [`raw_dial`].
async fn raw_dial_ref(
    server: &ServerRef,
    i: usize,
    resume: (SessionId, u64),
) -> Result<secure::Channel, clipsync::error::ConnectError> {
    let cfg = TransportConfig::default();
    let tls = TlsSetup::with_defaults().unwrap();
    let auth =
        Arc::new(SshAuthenticator::new(key(i), vec![server.key.public_key().clone()]).unwrap());
    let mut nonce = [0u8; 32];
    nonce[..8].copy_from_slice(&(i as u64).to_be_bytes());
    nonce[8] = 2;
    secure::dial(
        &TokioNet,
        &server.addr.parse::<Address>().unwrap(),
        ChannelParams {
            cfg: &cfg,
            tls: &tls,
            auth: auth.as_ref(),
            nonce,
            new_session: SessionId::NONE,
            expected_key: None,
            resume,
        },
    )
    .await
}

async fn no_ack(server: &Server, report: &mut Report) {
    let (rss0, _) = server.usage();
    let channel = raw_dial(server, 1, (SessionId::NONE, 0)).await.unwrap();
    let (mut sink, mut stream) = channel.ws.split();
    // Read (and never acknowledge) what the server sends, until its close.
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            if let WsMessage::Close(Some(f)) = m {
                return Some(u16::from(f.code));
            }
        }
        None
    });
    let started = Instant::now();
    let mut sent = 0u64;
    let mut peak = rss0;
    for id in 1..=200_000u64 {
        let open = Frame::StreamOpen(StreamOpen {
            seq: id,
            stream_id: id,
            total_len: None,
            hash: None,
            content_type: "a/b".into(),
            offer: false,
            metadata: bytes::Bytes::new(),
        });
        let abort = Frame::StreamAbort(StreamAbort {
            stream_id: id,
            reason: clipsync::wire::ReasonCode::Cancelled,
            text: String::new(),
        });
        if sink
            .send(WsMessage::Binary(open.encode().unwrap()))
            .await
            .is_err()
            || sink
                .send(WsMessage::Binary(abort.encode().unwrap()))
                .await
                .is_err()
        {
            break;
        }
        sent = id;
        if reader.is_finished() || started.elapsed() > Duration::from_secs(20) {
            break;
        }
        if id % 1000 == 0 {
            peak = peak.max(server.usage().0);
        }
    }
    let code = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    peak = peak.max(server.usage().0);
    let growth = peak as i64 - rss0 as i64;
    report.case(
        "no-ack",
        code == Some(4018) && growth < 16 << 20,
        format!(
            "a peer that opened and aborted {sent} streams without one ACK was closed with {} \
             after {:.1} s; server peak growth {}",
            code.map_or("nothing".to_string(), |c| c.to_string()),
            started.elapsed().as_secs_f64(),
            mib(growth)
        ),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let dir = std::env::temp_dir().join(format!("clipsync-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut report = Report {
        passed: 0,
        failed: 0,
    };
    rt.block_on(async {
        // A fresh server per case, so each case's memory figures are its own; defaults but
        // for the idle case, which needs room for 1,000 sessions.
        let server = Server::start(&dir, "max_connections = 2000\n");
        let conns = idle(&server, &mut report).await;
        drop(conns);
        drop(server);
        let server = Server::start(&dir, "");
        flood(&server, &mut report).await;
        drop(server);
        let server = Server::start(&dir, "");
        sessions(&server, &mut report).await;
        drop(server);
        let server = Server::start(&dir, "");
        resume_storm(&server, &mut report).await;
        drop(server);
        let server = Server::start(&dir, "");
        no_ack(&server, &mut report).await;
    });
    let _ = std::fs::remove_dir_all(&dir);
    println!("{} passed, {} failed", report.passed, report.failed);
    std::process::exit(i32::from(report.failed > 0));
}
