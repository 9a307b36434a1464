//! `clipsync demo`: the transport's promises, shown end to end in one process with nothing to
//! set up.
//!
//! Two peers with freshly generated ed25519 keys that trust each other talk over real
//! loopback TCP, TLS 1.3 and SSH-key authentication. Between them sits a small TCP relay that
//! the demo controls and the transport knows nothing about. One peer streams a payload of
//! random bytes (256 MiB by default) to the other with a live progress bar; once half of it is
//! acknowledged, the relay drops both TCP connections and refuses new ones for a moment (an
//! outage). Meanwhile small clipboard messages keep being sent: half before the cut, half
//! during the outage. The transport notices the broken connection, redials with backoff,
//! resumes the session and continues the stream from the receiver's offset.
//!
//! The report is one `name: value` per line. The exit status is 1 if a promise failed: the
//! stream did not verify, the receiver's own BLAKE3 of the bytes differs from the sender's, a
//! message was lost, duplicated or out of order, or the cut did not lead to a reconnection.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clipsync::config::TransportConfig;
use clipsync::secure::SshAuthenticator;
use clipsync::transport::{
    Address, Connection, ConnectionState, Incoming, Message, PeerInfo, Transport,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// What `clipsync demo` is asked to do.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Payload size: a number of bytes with an optional unit (KiB, MiB, GiB, KB, MB, GB).
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub(crate) size: u64,
    /// Cut the link when this fraction of the payload is acknowledged.
    #[arg(long, default_value_t = 0.5)]
    pub(crate) cut_at: f64,
    /// How long the relay refuses new connections after the cut, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub(crate) outage_ms: u64,
    /// Small clipboard messages: half sent before the cut, half during the outage.
    #[arg(long, default_value_t = 20)]
    pub(crate) messages: u32,
    /// Allow a payload above 16 GiB (memory stays bounded, but it runs for minutes).
    #[arg(long)]
    pub(crate) yes: bool,
}

/// The largest payload the demo runs without `--yes`.
const MAX_WITHOUT_YES: u64 = 16 << 30;

/// Parses `256MiB`, `64 MB`, `1GiB`, `4096`.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number of bytes, like 64MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    match n.checked_mul(mult) {
        Some(0) => Err("the size must be at least one byte".into()),
        Some(v) => Ok(v),
        None => Err(format!("{s:?} is too large")),
    }
}

/// A TCP relay the demo can cut: it forwards each accepted connection to `target` until
/// told to drop them all.
struct Relay {
    addr: std::net::SocketAddr,
    links: Arc<Mutex<Vec<AbortHandle>>>,
    refuse_until: Arc<Mutex<Option<Instant>>>,
    task: AbortHandle,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> std::io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let links: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let refuse_until: Arc<Mutex<Option<Instant>>> = Arc::default();
        let (l, r) = (links.clone(), refuse_until.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let refusing = lock(&r).is_some_and(|until| Instant::now() < until);
                if refusing {
                    drop(inbound);
                    continue;
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = outbound.set_nodelay(true);
                        let _ = inbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                lock(&l).push(link.abort_handle());
            }
        })
        .abort_handle();
        Ok(Relay {
            addr,
            links,
            refuse_until,
            task,
        })
    }

    /// Drops every relayed TCP connection (both sockets close under the transport) and
    /// refuses new ones for `outage`.
    fn cut(&self, outage: Duration) {
        *lock(&self.refuse_until) = Some(Instant::now() + outage);
        for link in lock(&self.links).drain(..) {
            link.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        for link in lock(&self.links).drain(..) {
            link.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the receiving peer observed.
#[derive(Debug, Default)]
struct Received {
    bytes: u64,
    hash: Option<blake3::Hash>,
    stream_error: Option<String>,
    messages: Vec<u32>,
}

/// Runs the demo; the report goes to standard output. `seconds` spans the whole stream,
/// outage and reconnection included (`cut_to_resumed_ms` of it).
pub(crate) async fn demo(args: DemoArgs) -> ExitCode {
    if !(args.cut_at > 0.0 && args.cut_at < 1.0) {
        eprintln!("clipsync: --cut-at must be between 0 and 1");
        return ExitCode::from(2);
    }
    if args.size > MAX_WITHOUT_YES && !args.yes {
        eprintln!(
            "clipsync: --size {} is above 16 GiB and would run for minutes; add --yes to run it",
            args.size
        );
        return ExitCode::from(2);
    }
    let budget = Duration::from_secs(120) + Duration::from_millis(args.size / 20_000);
    match tokio::time::timeout(budget, run(args)).await {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => {
            eprintln!("clipsync: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!(
                "clipsync: the demo did not finish within {} s",
                budget.as_secs()
            );
            ExitCode::FAILURE
        }
    }
}

async fn run(args: DemoArgs) -> Result<ExitCode, String> {
    let mut rng = ChaCha20Rng::from_os_rng();
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let server_key = SshAuthenticator::ed25519_from_seed(seed);
    rng.fill_bytes(&mut seed);
    let client_key = SshAuthenticator::ed25519_from_seed(seed);
    let auth = |own: &ssh_key::PrivateKey, peer: &ssh_key::PrivateKey| {
        SshAuthenticator::new(own.clone(), vec![peer.public_key().clone()])
            .map(Arc::new)
            .map_err(|e| e.to_string())
    };
    let cfg = TransportConfig::default();
    let server = Transport::new(cfg.clone()).map_err(|e| e.to_string())?;
    let client = Transport::new(cfg).map_err(|e| e.to_string())?;

    let mut listener = server
        .listen(
            &"127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
            auth(&server_key, &client_key)?,
        )
        .await
        .map_err(|e| e.to_string())?;
    let Address::Tcp(target) = listener.local_addr().clone() else {
        return Err("the listener is not on TCP".into());
    };
    let target: std::net::SocketAddr = target.parse().map_err(|e| format!("{target}: {e}"))?;
    let relay = Relay::start(target).await.map_err(|e| e.to_string())?;
    let peer = PeerInfo::new("demo-server", vec![Address::Tcp(relay.addr.to_string())])
        .with_key(server_key.public_key().clone());
    println!(
        "two peers on loopback TCP + TLS 1.3 + SSH keys ({} -> {}), relay {}",
        fingerprint(&client_key),
        fingerprint(&server_key),
        relay.addr
    );

    let (conn, accepted) = tokio::join!(
        client.connect(&peer, auth(&client_key, &server_key)?),
        listener.accept()
    );
    let conn = conn.map_err(|e| format!("connect: {e}"))?;
    let receiver = accepted.map_err(|e| format!("accept: {e}"))?;
    let receiving = tokio::spawn(receive_all(receiver));

    let cut = Arc::new(Notify::new());
    let started = Instant::now();
    let (sent, cut_info) = tokio::join!(
        send_payload(&conn, &args, &relay, &cut),
        send_messages(&conn, args.messages, &cut)
    );
    let seconds = started.elapsed().as_secs_f64();
    let (stream_result, sent_hash) = (sent.result, sent.hash);
    let message_results = cut_info;
    let health = *conn.health().borrow();
    conn.close().await;
    let (received, server_retransmitted) = receiving
        .await
        .map_err(|e| format!("receiver task failed: {e}"))?;

    let mut failures = Vec::new();
    if let Err(e) = &stream_result {
        failures.push(format!("the stream did not complete: {e}"));
    }
    if let Some(e) = &received.stream_error {
        failures.push(format!("the receiver's stream failed: {e}"));
    }
    let hash_ok = received.hash == Some(sent_hash) && received.bytes == args.size;
    if stream_result.is_ok() && !hash_ok {
        failures.push(format!(
            "the receiver got {} bytes hashing to {:?}, the sender sent {} hashing to {}",
            received.bytes,
            received.hash.map(|h| h.to_hex().to_string()),
            args.size,
            sent_hash.to_hex()
        ));
    }
    let expected: Vec<u32> = (1..=args.messages).collect();
    if received.messages != expected {
        failures.push(format!(
            "messages arrived as {:?}, expected 1..={} once each in order",
            received.messages, args.messages
        ));
    }
    let failed_sends = message_results.iter().filter(|r| r.is_err()).count();
    if failed_sends > 0 {
        failures.push(format!("{failed_sends} message sends failed"));
    }
    if health.reconnects == 0 {
        failures.push("the link was cut but the transport never reconnected".into());
    }

    println!("bytes: {}", args.size);
    println!("seconds: {seconds:.3}");
    println!(
        "throughput_mb_s: {:.1}",
        args.size as f64 / seconds / 1_000_000.0
    );
    println!("reconnects: {}", health.reconnects);
    println!("outage_ms: {}", args.outage_ms);
    match sent.reconnect {
        Some(d) => println!("cut_to_resumed_ms: {}", d.as_millis()),
        None => println!("cut_to_resumed_ms: unknown"),
    }
    println!(
        "retransmitted_bytes: {}",
        health.retransmitted_bytes + server_retransmitted
    );
    println!(
        "messages_delivered: {} of {}",
        received.messages.len(),
        args.messages
    );
    println!(
        "hash: {}",
        if hash_ok && stream_result.is_ok() {
            "verified"
        } else {
            "FAILED"
        }
    );
    if failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for f in &failures {
            eprintln!("promise failed: {f}");
        }
        Ok(ExitCode::FAILURE)
    }
}

fn fingerprint(k: &ssh_key::PrivateKey) -> String {
    k.public_key()
        .fingerprint(ssh_key::HashAlg::Sha256)
        .to_string()
}

/// Streams `args.size` random bytes with a progress bar, cutting the relay once `cut_at` of
/// them are acknowledged. Returns the stream's fate and the BLAKE3 of what was sent.
async fn send_payload(conn: &Connection, args: &DemoArgs, relay: &Relay, cut: &Notify) -> Sent {
    let mut hasher = blake3::Hasher::new();
    let mut s = match conn
        .open_stream("application/octet-stream", Some(args.size))
        .await
    {
        Ok(s) => s,
        Err(e) => {
            return Sent {
                result: Err(e.to_string()),
                hash: hasher.finalize(),
                reconnect: None,
            };
        }
    };
    let bar = crate::progress::stream_bar(Some(args.size));
    let cut_at = (args.size as f64 * args.cut_at) as u64;
    let outage = Duration::from_millis(args.outage_ms);
    let mut progress = s.progress();
    let mut state = conn.state();
    let mut cut_to_connected = None;
    // The bar follows the link (position, "reconnecting, attempt N, next in …", "resumed at
    // …"); this loop makes the cut and measures the time back to connected.
    let follow = crate::progress::follow(bar.clone(), s.progress(), conn.state(), conn.health());
    let watch = async {
        let mut was_cut = false;
        let mut cut_time = None;
        loop {
            let p = progress.borrow_and_update().clone();
            if !was_cut && p.acked >= cut_at {
                was_cut = true;
                relay.cut(outage);
                cut_time = Some(Instant::now());
                cut.notify_waiters();
            }
            if p.done {
                return;
            }
            tokio::select! {
                biased;
                r = progress.changed() => if r.is_err() { return },
                r = state.changed() => {
                    if r.is_err() { return }
                    let st = state.borrow_and_update().clone();
                    if let (ConnectionState::Connected, Some(t), None) = (&st, cut_time, cut_to_connected) {
                        cut_to_connected = Some(t.elapsed());
                    }
                }
            }
        }
    };
    let write = async {
        let mut rng = ChaCha20Rng::from_os_rng();
        let mut left = args.size;
        while left > 0 {
            let n = left.min(64 * 1024) as usize;
            let mut buf = vec![0u8; n];
            rng.fill_bytes(&mut buf);
            hasher.update(&buf);
            s.write(Bytes::from(buf)).await.map_err(|e| e.to_string())?;
            left -= n as u64;
        }
        s.finish().await.map_err(|e| e.to_string())
    };
    let (result, (), ()) = tokio::join!(write, watch, follow);
    bar.finish_and_clear();
    Sent {
        result,
        hash: hasher.finalize(),
        reconnect: cut_to_connected,
    }
}

/// What the sending peer observed of its stream.
struct Sent {
    result: Result<(), String>,
    hash: blake3::Hash,
    /// From the cut to connected again.
    reconnect: Option<Duration>,
}

/// Sends `n` small messages: the first half spread while the stream runs, the second half
/// right after the cut, while the link is down (they queue and go out after the resume).
async fn send_messages(
    conn: &Connection,
    n: u32,
    cut: &Notify,
) -> Vec<Result<(), clipsync::error::SendError>> {
    let notified = cut.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let mut results = Vec::new();
    let first = n / 2;
    for i in 1..=first {
        results.push(conn.send(Message::text(format!("clip {i}"))).await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    notified.await;
    let during = (first + 1..=n).map(|i| conn.send(Message::text(format!("clip {i}"))));
    results.extend(futures_util::future::join_all(during).await);
    results
}

/// The number in a `clip N` message (0 for anything else).
fn clip_number(m: &Message) -> u32 {
    std::str::from_utf8(&m.payload)
        .ok()
        .and_then(|t| t.strip_prefix("clip "))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

/// The receiving peer: reads the stream (hashing it) and the messages until the sender
/// closes. Returns what it saw and its own retransmitted bytes.
async fn receive_all(mut conn: Connection) -> (Received, u64) {
    let mut r = Received::default();
    while let Ok(item) = conn.receive().await {
        match item {
            Incoming::Message(m) => {
                r.messages.push(clip_number(&m));
            }
            Incoming::Stream(mut s) => {
                // Messages keep arriving beside the stream: take both.
                let mut hasher = blake3::Hasher::new();
                let mut bytes = 0u64;
                let result = loop {
                    tokio::select! {
                        biased;
                        chunk = s.chunk() => match chunk {
                            Ok(Some(c)) => {
                                bytes += c.len() as u64;
                                hasher.update(&c);
                            }
                            Ok(None) => break Ok(()),
                            Err(e) => break Err(e.to_string()),
                        },
                        item = conn.receive() => match item {
                            Ok(Incoming::Message(m)) => {
                                r.messages.push(clip_number(&m));
                            }
                            Ok(_) => {}
                            Err(e) => break Err(e.to_string()),
                        },
                    }
                };
                r.bytes = bytes;
                match result {
                    Ok(()) => r.hash = Some(hasher.finalize()),
                    Err(e) => r.stream_error = Some(e),
                }
            }
            _ => {}
        }
    }
    let retransmitted = conn.health().borrow().retransmitted_bytes;
    (r, retransmitted)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("64 MB"), Ok(64_000_000));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999GiB").is_err());
    }
}
