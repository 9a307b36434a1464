//! The sans-I/O connection core, fed any sequence of peer frames, timer events, application
//! sends and streams, connection losses and resumes: its invariants hold after every step
//! (`Connection::check_invariants`) and nothing panics.
//!
//! The input is read as operations: one byte picks the operation, the next bytes are its
//! arguments. Peer frames are decoded from the input as a real peer's bytes would be, so the
//! core meets every frame the decoder lets through, in any state.
#![no_main]

use std::time::Duration;

use bytes::Bytes;
use clipsync::core::{
    Attach, Connection, ConnectionParams, Output, Phase, Resume, Resumption, StreamKey,
};
use clipsync::wire::{DecodeLimits, Frame, PeerLimits, ReasonCode};
use libfuzzer_sys::fuzz_target;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        b
    }
    fn u64(&mut self) -> u64 {
        let b = self.bytes(8);
        b.iter().fold(0, |a, x| (a << 8) | u64::from(*x))
    }
}

fn limits() -> PeerLimits {
    PeerLimits {
        max_frame_size: 1 << 20,
        max_message_size: 4096,
        stream_window: 64 * 1024,
        connection_window: 128 * 1024,
        max_streams: 4,
        heartbeat_interval_ms: 1000,
        idle_timeout_ms: 3000,
    }
}

fuzz_target!(|data: &[u8]| {
    let ms = Duration::from_millis(1);
    let mut core = Connection::new(ConnectionParams {
        ack_every: 4,
        ack_delay: 20 * ms,
        heartbeat_interval: 1000 * ms,
        idle_timeout: 3000 * ms,
        degraded_rtt: 500 * ms,
        replay_buffer_bytes: 16 * 1024,
        chunk_size: 4096,
        stream_window: 64 * 1024,
        connection_window: 128 * 1024,
        max_streams: 4,
        max_message_size: 4096,
        send_queue: 8,
        resume: Resume::Redial,
    });
    let mut now = Duration::ZERO;
    let attach = |session| Attach {
        peer_limits: limits(),
        streams: true,
        metadata: true,
        offers: true,
        session,
    };
    core.attach(attach(Resumption::New), now);
    let mut input = Input(data);
    let mut next_id = 0u64;
    let mut out_streams: Vec<StreamKey> = Vec::new();
    let mut in_streams: Vec<StreamKey> = Vec::new();
    while let Some(op) = input.byte() {
        match op % 12 {
            0 | 1 | 2 => {
                let n = usize::from(input.byte().unwrap_or(0)) * 2;
                let msg = Bytes::copy_from_slice(input.bytes(n));
                if let Ok(f) = Frame::decode(msg, DecodeLimits { max_frame_size: 1 << 20 }) {
                    core.handle_frame(f, now);
                }
            }
            3 => {
                now += ms * u32::from(input.byte().unwrap_or(0)) * 20;
                core.handle_timeout(now);
            }
            4 => {
                next_id += 1;
                let n = usize::from(input.byte().unwrap_or(0)) * 20;
                let meta = Bytes::from(vec![3; n % 64]);
                let _ = core.send(next_id, "text/plain".into(), meta, Bytes::from(vec![7; n]), now);
            }
            5 => {
                next_id += 1;
                let len = u64::from(input.byte().unwrap_or(0)) * 1000;
                // An odd length announces a hash: an offer, whose bytes wait for acceptance.
                let hash = (len % 2000 != 0).then_some([9; 32]);
                let meta = Bytes::from(vec![4; (len % 100) as usize]);
                let _ = core.open_stream_with(next_id, "a/b".into(), Some(len), hash, meta, now);
            }
            6 => {
                if let Some(&key) = out_streams.first() {
                    let n = usize::from(input.byte().unwrap_or(0)) * 100;
                    core.stream_data(key, Bytes::from(vec![1; n]));
                    if input.byte().unwrap_or(0) % 2 == 0 {
                        core.stream_finish(key);
                    } else {
                        core.stream_abort(key, ReasonCode::Cancelled, String::new());
                    }
                    out_streams.remove(0);
                }
            }
            7 => {
                if let Some(&key) = in_streams.first() {
                    core.stream_accept(key, now);
                    core.stream_consumed(key, u64::from(input.byte().unwrap_or(0)) * 100, now);
                    if input.byte().unwrap_or(0) % 3 == 0 {
                        core.stream_release(key, None, now);
                        in_streams.remove(0);
                    }
                }
            }
            8 => {
                if core.phase() == Phase::Connected {
                    core.connection_lost("cut".into(), now);
                }
            }
            9 => {
                // A new connection, as the driver attaches one: resumed at a point the peer
                // says (checked as the driver checks it), or the session lost.
                if core.phase() != Phase::Connected && core.phase() != Phase::Closed {
                    let peer_received = input.u64();
                    let session = if input.byte().unwrap_or(0) % 2 == 0
                        && core.resume_point_valid(peer_received)
                    {
                        Resumption::Resumed { peer_received }
                    } else {
                        Resumption::Lost(ReasonCode::SessionExpired)
                    };
                    core.attach(attach(session), now);
                }
            }
            10 => core.close(ReasonCode::Normal, String::new(), now),
            _ => {}
        }
        // What the driver does after every input: take what the core has for the wire and
        // for the application.
        while core.poll_transmit(now, true).is_some() {}
        while let Some(o) = core.poll_output() {
            match o {
                Output::StreamReady { key, .. } => out_streams.push(key),
                Output::Incoming { key, .. } => in_streams.push(key),
                _ => {}
            }
        }
        if let Err(e) = core.check_invariants() {
            panic!("invariant broken: {e}");
        }
    }
});
