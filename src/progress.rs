//! Progress bars that tell the truth about the link, shared by `send` and `demo`: bytes the
//! receiver acknowledged, the rate, an ETA only when the length is known, and what the link
//! is doing ("reconnecting, attempt 3, next in 1.6 s", "resumed at 113.0 MiB"), redrawn
//! several times a second so an outage never looks like a frozen "connected".

use std::time::Duration;

use clipsync::transport::{ConnectionState, Health, Progress};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;

/// A bar for a stream of `len` bytes (unknown: bytes and rate only, no total, no ETA).
pub(crate) fn stream_bar(len: Option<u64>) -> ProgressBar {
    let (bar, template) = match len {
        Some(n) => (
            ProgressBar::new(n),
            "{bytes}/{total_bytes} acknowledged  {bytes_per_sec}  eta {eta}  [{bar:24}]  {msg}",
        ),
        None => (
            ProgressBar::no_length(),
            "{bytes} acknowledged  {bytes_per_sec}  {msg}",
        ),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// The link's state in words. `resumed_at`: the acknowledged offset when the link came back
/// after an outage, if it did.
pub(crate) fn link_message(
    state: &ConnectionState,
    health: &Health,
    resumed_at: Option<u64>,
) -> String {
    match state {
        ConnectionState::Connecting | ConnectionState::Reconnecting => {
            let verb = if matches!(state, ConnectionState::Connecting) {
                "connecting"
            } else {
                "reconnecting"
            };
            let attempt = health.dial_failures + 1;
            match health.next_dial_at {
                Some(at) if at > tokio::time::Instant::now() => {
                    let left = at - tokio::time::Instant::now();
                    format!(
                        "{verb}, attempt {attempt}, next in {:.1} s",
                        left.as_secs_f64()
                    )
                }
                _ => format!("{verb}, attempt {attempt}"),
            }
        }
        ConnectionState::Connected => match resumed_at {
            Some(at) => format!("resumed at {}", HumanBytes(at)),
            None => "connected".into(),
        },
        ConnectionState::Degraded => match health.rtt {
            Some(rtt) => format!("degraded, round trip {} ms", rtt.as_millis()),
            None => "degraded".into(),
        },
        ConnectionState::Offline => "offline: gave up reconnecting".into(),
        ConnectionState::Closed(cause) => format!("closed: {cause}"),
        _ => String::new(),
    }
}

/// Keeps `bar` current until the stream settles or the link closes: position from `progress`,
/// message from the link's state and health (refreshed every 200 ms for the countdown).
pub(crate) async fn follow(
    bar: ProgressBar,
    mut progress: watch::Receiver<Progress>,
    mut state: watch::Receiver<ConnectionState>,
    health: watch::Receiver<Health>,
) {
    let mut was_down = false;
    let mut resumed_at = None;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let p = progress.borrow_and_update().clone();
        bar.set_position(p.acked);
        let st = state.borrow_and_update().clone();
        match st {
            ConnectionState::Reconnecting | ConnectionState::Offline => was_down = true,
            ConnectionState::Connected if was_down => {
                was_down = false;
                resumed_at = Some(p.acked);
            }
            _ => {}
        }
        bar.set_message(link_message(&st, &health.borrow(), resumed_at));
        if p.done || matches!(st, ConnectionState::Closed(_)) {
            return;
        }
        tokio::select! {
            biased;
            r = progress.changed() => if r.is_err() { return },
            r = state.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}
