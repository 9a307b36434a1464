//! The event trace: every transport event (and every workload and harness event) with its
//! simulated time and host, one line each. Its hash is the run's determinism fingerprint.
//!
//! The transport logs its events with `tracing`; [`TraceLayer`] records those of targets
//! `clipsync…` (the transport and this crate) at DEBUG and above, finds the host from
//! turmoil's `node` span, and stamps the simulated time.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// More events than this at one simulated instant is a livelock: something loops without
/// letting simulated time pass (a redial with no delay against a host that refuses at once),
/// and the step it loops in would never end. A busy instant of a real run has hundreds.
pub const LIVELOCK_EVENTS: usize = 100_000;

/// The lines of one run's trace.
#[derive(Clone, Debug, Default)]
pub struct Trace(Arc<Mutex<TraceInner>>);

#[derive(Debug, Default)]
struct TraceInner {
    lines: Vec<String>,
    /// The last line's instant and how many lines it has.
    instant: (std::time::Duration, usize),
}

impl TraceInner {
    /// Counts a line at `at`; whether it is the [`LIVELOCK_EVENTS`]th at that instant.
    fn count_instant(&mut self, at: std::time::Duration) -> bool {
        if self.instant.0 == at {
            self.instant.1 += 1;
        } else {
            self.instant = (at, 1);
        }
        self.instant.1 == LIVELOCK_EVENTS
    }
}

thread_local! {
    /// The run on this thread, for the livelock message: scenario, seed, replay command.
    static RUN: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Names the run on this thread (a run is one thread), for the livelock message.
pub fn set_run(description: String) {
    RUN.with(|r| *r.borrow_mut() = Some(description));
}

/// The run on this thread, as [`set_run`] named it.
pub fn current_run() -> Option<String> {
    RUN.try_with(|r| r.borrow().clone()).ok().flatten()
}

impl Trace {
    /// Appends a line stamped with `at` for `host` (used by the harness, outside any host).
    ///
    /// On the [`LIVELOCK_EVENTS`]th line at one instant the process ends (status 3) with the
    /// run's scenario and seed, the looping event and the command that replays it: the step
    /// it loops in would never end, and unwinding out of it is not safe (a task's destructors
    /// run inside the step; with a panic here, one of them panicked again and aborted).
    pub fn push(&self, at: std::time::Duration, host: &str, text: &str) {
        let line = format!("{:>11.6} {:<8} {}", at.as_secs_f64(), host, text);
        let mut t = self.lock();
        t.lines.push(line);
        if t.count_instant(at) {
            drop(t);
            let run = RUN.with(|r| r.borrow().clone()).unwrap_or_default();
            eprintln!(
                "clipsync-sim: livelock in {run}: {LIVELOCK_EVENTS} events at {:.6} s without \
                 simulated time passing; the last: {host} {text}",
                at.as_secs_f64()
            );
            std::process::exit(3);
        }
    }

    /// A copy of the lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lock().lines.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TraceInner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The layer that feeds this trace.
    pub fn layer(&self) -> TraceLayer {
        TraceLayer(self.clone())
    }
}

/// SHA-256 of the lines (each followed by a newline), as 16 hex digits.
pub fn hash(lines: &[String]) -> String {
    let mut h = Sha256::new();
    for l in lines {
        h.update(l.as_bytes());
        h.update(b"\n");
    }
    h.finalize()[..8].iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A `tracing` layer writing into a [`Trace`].
#[derive(Debug)]
pub struct TraceLayer(Trace);

/// Fields of a span, formatted once.
struct SpanFields(String);

/// The host a turmoil `node` span stands for (its `name` field).
struct NodeName(String);

impl Visit for NodeName {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "name" {
            let _ = write!(self.0, "{value:?}");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "name" {
            self.0.push_str(value);
        }
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }
}

impl<S> Layer<S> for TraceLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        // Turmoil opens a `node` span around every host's every step: take its one field
        // straight, without the formatting the other spans get (it was 2% of a CI mix).
        if attrs.metadata().name() == "node" {
            let mut name = NodeName(String::new());
            attrs.record(&mut name);
            if let Some(span) = ctx.span(id) {
                span.extensions_mut().insert(name);
            }
            return;
        }
        let mut f = Fields::default();
        attrs.record(&mut f);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut()
                .insert(SpanFields(f.rest.trim_start().to_string()));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        values.record(&mut f);
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(SpanFields(s)) = ext.get_mut::<SpanFields>() {
                s.push_str(&f.rest);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        if !meta.target().starts_with("clipsync") || *meta.level() > Level::DEBUG {
            return;
        }
        let mut host = String::from("-");
        let mut path = String::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(NodeName(name)) = ext.get::<NodeName>() {
                    host.clone_from(name);
                } else {
                    let fields = ext.get::<SpanFields>().map_or("", |f| f.0.as_str());
                    let _ = write!(path, "{}{{{fields}}}: ", span.name());
                }
            }
        }
        let mut f = Fields::default();
        event.record(&mut f);
        let at = turmoil::sim_elapsed().unwrap_or_default();
        let text = format!("{:<5} {path}{}{}", meta.level(), f.message, f.rest);
        self.0.push(at, &host, &text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_livelock_is_the_limit_th_line_at_one_instant_only() {
        let mut t = TraceInner::default();
        // Many lines, but time passes: never.
        for i in 0..(2 * LIVELOCK_EVENTS) {
            assert!(!t.count_instant(Duration::from_micros(i as u64 / 1000)));
        }
        // At one instant: exactly at the limit.
        let at = Duration::from_secs(7);
        for _ in 1..LIVELOCK_EVENTS {
            assert!(!t.count_instant(at));
        }
        assert!(t.count_instant(at));
    }
}
