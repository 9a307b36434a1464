//! Throughput and latency on loopback, the competitors side by side in one process:
//! raw TCP, raw rustls TLS 1.3, tokio-tungstenite wss (one message, and 64 KiB messages),
//! wss in 64 KiB messages with BLAKE3 computed at both ends (the per-byte work ClipSync's
//! protocol requires beyond TLS: its ceiling), and ClipSync streaming over TLS with SSH-key
//! authentication. Then small-message round trips on a ClipSync connection, alone and while a
//! large stream is in flight. Beside each path's MB/s: the process's minor page faults per MiB
//! moved (both ends are in this process), which show memory the allocator gave back to the
//! kernel and faulted in again.
//!
//! `cargo bench --bench throughput` (payloads 64 MiB and 512 MiB; `THROUGHPUT_SIZES_MIB=64`
//! to choose, `THROUGHPUT_RUNS=3` repetitions, median reported; `THROUGHPUT_ONLY=clipsync,TLS`
//! runs only the paths whose names contain these words, `THROUGHPUT_SKIP_LATENCY=1` skips the
//! round trips, `THROUGHPUT_CHUNK_KIB` and `THROUGHPUT_WINDOW_MIB` change ClipSync's chunk size
//! and stream window). The last lines are machine-readable: `ratio NAME VALUE` and
//! `p99-under-load-ms VALUE`.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // a benchmark: panics are failures
// `getrusage` (page faults) has no safe wrapper in std.
#![allow(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clipsync::config::TransportConfig;
use clipsync::secure::SshAuthenticator;
use clipsync::transport::{Connection, Incoming, Message, PeerInfo, Transport};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

mod common;

use common::tls_pair;

const PIECE: usize = 64 * 1024;

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
    let c = c.unwrap();
    let s = s.unwrap().0;
    c.set_nodelay(true).unwrap();
    s.set_nodelay(true).unwrap();
    (c, s)
}

/// Writes `payload` into `c` in 64 KiB pieces while a task reads `s` until it has it all;
/// returns the time until the last byte was read.
async fn timed_copy<W, R>(mut c: W, mut s: R, payload: &Bytes) -> Duration
where
    W: tokio::io::AsyncWrite + Unpin,
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let len = payload.len();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0;
        while got < len {
            got += s.read(&mut buf).await.unwrap();
        }
    });
    let t = Instant::now();
    for p in payload.chunks(PIECE) {
        c.write_all(p).await.unwrap();
    }
    c.flush().await.unwrap();
    reader.await.unwrap();
    t.elapsed()
}

/// A TLS 1.3 pair over loopback TCP: (client, server).
async fn tls_streams() -> (
    tokio_rustls::client::TlsStream<TcpStream>,
    tokio_rustls::server::TlsStream<TcpStream>,
) {
    let (acceptor, connector) = tls_pair();
    let (c, s) = tcp_pair().await;
    let (c, s) = tokio::join!(
        connector.connect(ServerName::try_from("localhost").unwrap(), c),
        acceptor.accept(s)
    );
    (c.unwrap(), s.unwrap())
}

/// Raw TCP: write in 64 KiB pieces, the other side reads until it has everything.
async fn raw_tcp(payload: &Bytes) -> Duration {
    let (c, s) = tcp_pair().await;
    timed_copy(c, s, payload).await
}

/// Raw rustls TLS 1.3, the same way.
async fn raw_tls(payload: &Bytes) -> Duration {
    let (c, s) = tls_streams().await;
    timed_copy(c, s, payload).await
}

/// tokio-tungstenite over rustls: the payload as one message, or in `piece`-byte messages;
/// with `hash`, both ends also compute the payload's BLAKE3 as they go (and compare) — the
/// per-byte work ClipSync's protocol requires beyond TLS: WebSocket framing and masking, and
/// the whole-payload hash at the sender and the receiver.
async fn wss(payload: &Bytes, piece: Option<usize>, hash: bool) -> Duration {
    let (c, s) = tls_streams().await;
    let cfg = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    let (c, s) = tokio::join!(
        tokio_tungstenite::client_async_with_config("wss://localhost/", c, Some(cfg)),
        tokio_tungstenite::accept_async_with_config(s, Some(cfg))
    );
    let (mut c, mut s) = (c.unwrap().0, s.unwrap());
    let len = payload.len();
    let reader = tokio::spawn(async move {
        let mut got = 0;
        let mut hasher = blake3::Hasher::new();
        while got < len {
            if let WsMessage::Binary(b) = s.next().await.unwrap().unwrap() {
                got += b.len();
                if hash {
                    hasher.update(&b);
                }
            }
        }
        hasher.finalize()
    });
    let t = Instant::now();
    let mut hasher = blake3::Hasher::new();
    match piece {
        None => c.send(WsMessage::Binary(payload.clone())).await.unwrap(),
        Some(n) => {
            let mut off = 0;
            while off < len {
                let end = (off + n).min(len);
                let piece = payload.slice(off..end);
                if hash {
                    hasher.update(&piece);
                }
                c.feed(WsMessage::Binary(piece)).await.unwrap();
                off = end;
            }
            c.flush().await.unwrap();
        }
    }
    let received = reader.await.unwrap();
    if hash {
        assert_eq!(received, hasher.finalize());
    }
    t.elapsed()
}

/// The transport's defaults, or `chunk_size` from `THROUGHPUT_CHUNK_KIB` (for experiments).
fn bench_config() -> TransportConfig {
    let mut cfg = TransportConfig::default();
    if let Some(kib) = std::env::var("THROUGHPUT_CHUNK_KIB")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        cfg.chunk_size = kib * 1024;
        cfg.max_frame_size = cfg.max_frame_size.max(cfg.chunk_size + 1024);
    }
    // THROUGHPUT_WINDOW_MIB=8: stream window (the connection window four times it).
    if let Some(mib) = std::env::var("THROUGHPUT_WINDOW_MIB")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        cfg.stream_window = mib << 20;
        cfg.connection_window = cfg.connection_window.max(4 * (mib << 20));
    }
    cfg
}

/// A ClipSync pair; the server side drains streams and echoes messages.
async fn clipsync_pair() -> Connection {
    let ka = SshAuthenticator::ed25519_from_seed([1; 32]);
    let kb = SshAuthenticator::ed25519_from_seed([2; 32]);
    let sa = Arc::new(SshAuthenticator::new(ka.clone(), vec![kb.public_key().clone()]).unwrap());
    let ca = Arc::new(SshAuthenticator::new(kb, vec![ka.public_key().clone()]).unwrap());
    let server = Transport::new(bench_config()).unwrap();
    let mut listener = server
        .listen(&"127.0.0.1:0".parse().unwrap(), sa)
        .await
        .unwrap();
    let peer = PeerInfo::new("bench", vec![listener.local_addr().clone()]);
    let client = Transport::new(bench_config()).unwrap();
    let (c, s) = tokio::join!(client.connect(&peer, ca), listener.accept());
    let mut s = s.unwrap();
    // The transports own the connections: they live with the server side's task.
    let transports = (server, client);
    tokio::spawn(async move {
        let _keep = (listener, transports);
        let echo = Arc::new(tokio::sync::Mutex::new(()));
        loop {
            match s.receive().await {
                Ok(Incoming::Stream(mut st)) => {
                    tokio::spawn(async move { while let Ok(Some(_)) = st.chunk().await {} });
                }
                Ok(Incoming::Message(m)) => {
                    let _g = echo.lock().await;
                    let _ = s.try_send(m);
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    c.unwrap()
}

async fn clipsync_stream(conn: &Connection, payload: &Bytes) -> Duration {
    let t = Instant::now();
    let mut s = conn
        .open_stream("application/octet-stream", Some(payload.len() as u64))
        .await
        .unwrap();
    s.write(payload.clone()).await.unwrap();
    s.finish().await.unwrap();
    t.elapsed()
}

/// The process's minor page faults so far. Per MiB moved, they show buffers that the
/// allocator handed back to the kernel and took again: received chunks in fresh allocations
/// cost 108-127 faults per MiB here before `src/driver/pool.rs`, 0.6-0.8 after.
fn minor_faults() -> i64 {
    // SAFETY: `rusage` is plain data for getrusage to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_minflt
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mbps(len: usize, d: Duration) -> f64 {
    len as f64 / d.as_secs_f64() / 1e6
}

/// Round trips of a 100-byte message on `conn`; `n` of them.
async fn rtts(conn: &mut Connection, n: usize) -> Vec<Duration> {
    let body = Bytes::from(vec![b'x'; 100]);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let _ack = conn
            .try_send(Message::new("text/plain", body.clone()))
            .unwrap();
        loop {
            match conn.receive().await.unwrap() {
                Incoming::Message(_) => break,
                _ => continue,
            }
        }
        out.push(t.elapsed());
    }
    out
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

fn main() {
    let sizes: Vec<usize> = std::env::var("THROUGHPUT_SIZES_MIB")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![64, 512]);
    // THROUGHPUT_ONLY=clipsync,TLS runs only the paths whose names contain these words.
    let only: Vec<String> = std::env::var("THROUGHPUT_ONLY")
        .ok()
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let runs: usize = std::env::var("THROUGHPUT_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut ratios = Vec::new();
        println!(
            "{:<34} {:>10} {:>12} {:>14}   (median of {runs} runs, loopback, one process)",
            "path", "payload", "MB/s", "faults/MiB"
        );
        let conn = clipsync_pair().await;
        for &mib in &sizes {
            let payload = Bytes::from(
                (0..mib << 20)
                    .map(|i| (i * 31 % 251) as u8)
                    .collect::<Vec<u8>>(),
            );
            let len = payload.len();
            macro_rules! measure {
                ($name:expr, $run:expr) => {{
                    if !only.is_empty() && !only.iter().any(|o| $name.contains(o.as_str())) {
                        f64::NAN
                    } else {
                        let mut v = Vec::new();
                        let faults = minor_faults();
                        for _ in 0..runs {
                            v.push($run.await);
                        }
                        let per_mib = (minor_faults() - faults) as f64 / (runs * mib) as f64;
                        let m = mbps(len, median(v));
                        println!("{:<34} {:>6} MiB {m:>12.0} {per_mib:>14.1}", $name, mib);
                        m
                    }
                }};
            }
            let tcp = measure!("raw TCP", raw_tcp(&payload));
            let tls = measure!("raw rustls TLS 1.3", raw_tls(&payload));
            let one = measure!(
                "tokio-tungstenite wss, 1 message",
                wss(&payload, None, false)
            );
            let many = measure!(
                "tokio-tungstenite wss, 64 KiB msgs",
                wss(&payload, Some(PIECE), false)
            );
            let floor = measure!(
                "wss 64 KiB msgs + BLAKE3 both ends",
                wss(&payload, Some(PIECE), true)
            );
            let clip = measure!(
                "clipsync stream (TLS+auth)",
                clipsync_stream(&conn, &payload)
            );
            let _ = tcp;
            ratios.push((format!("clipsync/rustls-tls@{mib}MiB"), clip / tls));
            ratios.push((
                format!("clipsync/tungstenite-one-message@{mib}MiB"),
                clip / one,
            ));
            ratios.push((
                format!("clipsync/tungstenite-64k-messages@{mib}MiB"),
                clip / many,
            ));
            // The ceiling the protocol's own per-byte work leaves, against raw TLS.
            ratios.push((format!("wss-64k-blake3/rustls-tls@{mib}MiB"), floor / tls));
            ratios.push((format!("clipsync/wss-64k-blake3@{mib}MiB"), clip / floor));
        }
        drop(conn);

        if std::env::var("THROUGHPUT_SKIP_LATENCY").is_ok() {
            return;
        }
        // Latency: alone, then under a large stream on the same connection.
        let mut conn = clipsync_pair().await;
        let _ = rtts(&mut conn, 100).await; // warm-up
        let mut alone = rtts(&mut conn, 2000).await;
        // Under load: streams of the largest size back to back (four of them), and round
        // trips measured only while a stream is in flight.
        let big = *sizes.iter().max().unwrap_or(&512);
        let payload = Bytes::from(vec![7u8; big << 20]);
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let started = Arc::new(tokio::sync::Notify::new());
        let mut senders = Vec::new();
        for _ in 0..4 {
            let s = conn
                .open_stream("application/octet-stream", Some(payload.len() as u64))
                .await
                .unwrap();
            senders.push(s);
        }
        let streamer = {
            let (done, started, payload) = (done.clone(), started.clone(), payload.clone());
            tokio::spawn(async move {
                started.notify_one();
                for mut s in senders {
                    s.write(payload.clone()).await.unwrap();
                    s.finish().await.unwrap();
                }
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            })
        };
        started.notified().await;
        let mut loaded = Vec::new();
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            loaded.extend(rtts(&mut conn, 1).await);
        }
        streamer.await.unwrap();
        assert!(loaded.len() >= 20, "only {} round trips under load", loaded.len());
        println!();
        println!(
            "small-message round trip, alone:              p50 {:.3} ms  p99 {:.3} ms",
            pct(&mut alone, 0.5),
            pct(&mut alone, 0.99)
        );
        println!(
            "small-message round trip, {big} MiB streams in flight: p50 {:.3} ms  p99 {:.3} ms  ({} samples)",
            pct(&mut loaded, 0.5),
            pct(&mut loaded, 0.99),
            loaded.len()
        );
        println!();
        for (name, v) in ratios {
            println!("ratio {name} {v:.2}");
        }
        println!("p99-alone-ms {:.3}", pct(&mut alone, 0.99));
        println!("p99-under-load-ms {:.3}", pct(&mut loaded, 0.99));
    });
}
