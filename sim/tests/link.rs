//! The link model in the socket seam: a stream takes the time its bandwidth says, and loss
//! only delays bytes (never drops, reorders or corrupts them).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clipsync::net::Network;
use clipsync_sim::TurmoilNet;
use clipsync_sim::link::{LinkModel, Shaper};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SIZE: usize = 1_250_000; // one second at 10 Mbit/s

fn net(loss: f64, seed: u8) -> TurmoilNet {
    TurmoilNet::shaped(Shaper::new(
        LinkModel {
            bandwidth_bps: Some(10e6),
            queue: Duration::from_millis(100),
            loss,
            max_latency: Duration::from_millis(1),
        },
        [seed; 32],
    ))
}

fn payload() -> Vec<u8> {
    (0..SIZE).map(|i| (i % 251) as u8).collect()
}

/// Sends `SIZE` bytes from client to server over the model; returns the simulated time from
/// the first write to the last byte read, and whether the bytes arrived intact.
fn transfer(loss: f64) -> (Duration, bool) {
    let result = Arc::new(Mutex::new(None));
    let mut sim = turmoil::Builder::new()
        .rng_seed(3)
        .min_message_latency(Duration::ZERO)
        .max_message_latency(Duration::from_millis(1))
        .simulation_duration(Duration::from_secs(120))
        .build();
    let out = result.clone();
    sim.host("server", move || {
        let out = out.clone();
        async move {
            let n = net(loss, 1);
            let mut l = n.bind(&"0.0.0.0:7070".parse()?).await?;
            let (mut s, _) = l.accept().await?;
            let start = tokio::time::Instant::now();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await?;
            *out.lock().unwrap() = Some((start.elapsed(), got == payload()));
            drop(s);
            Ok(())
        }
    });
    sim.client("client", async move {
        let n = net(loss, 2);
        let mut s = n.dial(&"server:7070".parse()?).await?;
        for piece in payload().chunks(16 * 1024) {
            s.write_all(piece).await?;
        }
        s.shutdown().await?;
        // The run ends with the client: wait for the server's end after it read everything.
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await?;
        Ok(())
    });
    sim.run().unwrap();
    result.lock().unwrap().take().unwrap()
}

#[test]
fn a_stream_takes_the_time_its_bandwidth_says() {
    let (took, intact) = transfer(0.0);
    assert!(intact, "bytes changed on a lossless link");
    assert!(
        took >= Duration::from_millis(990) && took <= Duration::from_millis(1100),
        "1.25 MB at 10 Mbit/s took {took:?}"
    );
}

#[test]
fn loss_delays_bytes_but_never_changes_them() {
    let (clean, _) = transfer(0.0);
    let (some, intact) = transfer(0.05);
    assert!(intact, "bytes changed under 5% loss");
    assert!(some >= clean, "5% loss took {some:?}, no loss {clean:?}");
    // Half the segments lost: every chunk waits for repairs, the last one too.
    let (heavy, intact) = transfer(0.5);
    assert!(intact, "bytes changed under 50% loss");
    assert!(heavy > clean, "50% loss took {heavy:?}, no loss {clean:?}");
}
