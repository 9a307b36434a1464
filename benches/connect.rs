//! Connection setup time on loopback: ClipSync (TCP + TLS 1.3 + WebSocket + SSH-key auth +
//! session) next to a bare tokio-tungstenite wss connection (TCP + TLS 1.3 + WebSocket),
//! measured in the same process, same run. Prints medians and p90 over N connections.
//!
//! `cargo bench --bench connect` (N = 200; `CONNECT_BENCH_N` changes it).

#![allow(clippy::unwrap_used, clippy::print_stdout)] // a benchmark: panics are failures

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clipsync::config::TransportConfig;
use clipsync::secure::SshAuthenticator;
use clipsync::transport::{PeerInfo, Transport};
use common::tls_pair;
use rustls::pki_types::ServerName;

fn stats(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let pct = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{name:<44} n={:<4} p50 {:>7.3} ms   p90 {:>7.3} ms   min {:>7.3} ms",
        v.len(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.9).as_secs_f64() * 1e3,
        v[0].as_secs_f64() * 1e3
    );
}

async fn clipsync_setup(n: usize) -> Vec<Duration> {
    let ka = SshAuthenticator::ed25519_from_seed([1; 32]);
    let kb = SshAuthenticator::ed25519_from_seed([2; 32]);
    let server_auth =
        Arc::new(SshAuthenticator::new(ka.clone(), vec![kb.public_key().clone()]).unwrap());
    let client_auth = Arc::new(SshAuthenticator::new(kb, vec![ka.public_key().clone()]).unwrap());
    let server = Transport::new(TransportConfig::default()).unwrap();
    let mut listener = server
        .listen(&"127.0.0.1:0".parse().unwrap(), server_auth)
        .await
        .unwrap();
    let peer = PeerInfo::new("bench", vec![listener.local_addr().clone()]);
    tokio::spawn(async move {
        while let Ok(c) = listener.accept().await {
            drop(c);
        }
    });
    let client = Transport::new(TransportConfig::default()).unwrap();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let conn = client.connect(&peer, client_auth.clone()).await.unwrap();
        out.push(t.elapsed());
        drop(conn);
    }
    out
}

async fn bare_wss_setup(n: usize) -> Vec<Duration> {
    let (acceptor, connector) = tls_pair();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(s).await {
                    let _ = tokio_tungstenite::accept_async(tls).await;
                }
            });
        }
    });
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), s)
            .await
            .unwrap();
        let (ws, _) = tokio_tungstenite::client_async("wss://localhost/", tls)
            .await
            .unwrap();
        out.push(t.elapsed());
        drop(ws);
    }
    out
}

fn main() {
    let n = std::env::var("CONNECT_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Warm up both paths (page faults, lazy statics), then measure alternately.
        let _ = clipsync_setup(5).await;
        let _ = bare_wss_setup(5).await;
        let bare = bare_wss_setup(n).await;
        let clip = clipsync_setup(n).await;
        let p50 = |v: &Vec<Duration>| {
            let mut s = v.clone();
            s.sort();
            s[s.len() / 2]
        };
        let ratio = p50(&clip).as_secs_f64() / p50(&bare).as_secs_f64();
        stats("tokio-tungstenite wss (TCP+TLS+WS)", bare);
        stats("clipsync (TCP+TLS+WS+SSH auth+session)", clip);
        println!("ratio clipsync/bare-wss-setup {ratio:.2}");
    });
}
