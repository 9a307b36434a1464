//! The checks every run must pass. Each is a function from what happened to the violations
//! it found; later issues (streams, resumption) add theirs to [`check`].

use std::collections::BTreeMap;
use std::time::Duration;

use clipsync::wire::ReasonCode;

use crate::host::{Log, SendRecord, Settled};
use crate::scenario::Scenario;

/// One broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The invariant's name.
    pub invariant: &'static str,
    /// What broke it.
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

/// How the simulation itself ended.
#[derive(Clone, Debug)]
pub struct Ending {
    /// turmoil's error, if the run did not complete (timeout, host error).
    pub error: Option<String>,
    /// Panics caught in any host.
    pub panics: Vec<String>,
    /// When the last healing fault happened.
    pub last_heal: Option<Duration>,
    /// When the first fault happened.
    pub first_fault: Option<Duration>,
}

/// Runs every invariant that applies to `s`.
pub fn check(s: &Scenario, log: &Log, end: &Ending) -> Vec<Violation> {
    let mut v = Vec::new();
    no_panic(end, &mut v);
    finished(s, end, &mut v);
    exactly_once_in_order(log, &mut v);
    settled(log, &mut v);
    no_protocol_violation(log, &mut v);
    if let Some(ms) = s.invariants.max_send_ms {
        max_send_time(s, log, Duration::from_millis(ms), &mut v);
    }
    if let Some(ms) = s.invariants.reconnect_within_ms {
        reconnected(s, log, end, Duration::from_millis(ms), &mut v);
    }
    if s.invariants.untrusted_refused {
        untrusted_refused(s, log, &mut v);
    }
    if s.invariants.all_delivered {
        all_delivered(log, &mut v);
    }
    if let Some(ms) = s.invariants.deliver_after_heal_ms {
        let took = figures(s, log, end).get("heal_to_delivery_ms").copied();
        match took {
            Some(t) if t <= ms as f64 => {}
            Some(t) => violation(
                &mut v,
                "deliver-after-heal",
                format!("first delivery {t} ms after the last heal, bound {ms} ms"),
            ),
            None => violation(
                &mut v,
                "deliver-after-heal",
                "nothing delivered after the last heal".into(),
            ),
        }
    }
    if let Some(code) = s.invariants.session_lost_reason {
        session_lost_reason(log, code, &mut v);
    }
    if s.invariants.single_connection {
        single_connection(s, log, &mut v);
    }
    if s.workload.mutual {
        single_link(s, log, &mut v);
    }
    if s.is_mesh() {
        mesh(s, log, end, &mut v);
    }
    v
}

/// The mesh invariants (scenarios/README.md): converged, settled and linked at the end,
/// convergence within the bound, clipboards only move forward, every engine message received
/// at most once per peer incarnation (exactly once when acknowledged), no echo.
fn mesh(s: &Scenario, log: &Log, end: &Ending, v: &mut Vec<Violation>) {
    let m = &log.mesh;
    if end.error.is_some() || m.converged_at.is_none() {
        let why = m
            .unsettled()
            .unwrap_or_else(|| "never stayed settled".into());
        let name = if why.starts_with("not converged") {
            "converged"
        } else if why.contains("link to") {
            "single-link"
        } else {
            "settled"
        };
        violation(v, name, why);
    }
    if let (Some(bound), Some(took)) = (s.invariants.converge_within_ms, convergence(log, end)) {
        if took > Duration::from_millis(bound) {
            violation(
                v,
                "converged",
                format!(
                    "converged {} ms after the last fault or copy, bound {bound} ms",
                    took.as_millis()
                ),
            );
        }
    }
    // Each incarnation's clipboard only moves forward.
    let mut last: BTreeMap<&str, &crate::mesh::Clip> = BTreeMap::new();
    for (tag, at, clip) in &m.adopted {
        if let Some(prev) = last.insert(tag, clip) {
            if clip <= prev {
                violation(
                    v,
                    "converged",
                    format!(
                        "{tag} went from {prev} back to {clip} at {:.3} s",
                        at.as_secs_f64()
                    ),
                );
            }
        }
    }
    // Receipts: at most once per incarnation, only by the addressee.
    let mut count: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut received_by: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (tag, uid, _) in &m.receipts {
        *count.entry((tag, uid)).or_default() += 1;
        received_by.entry(uid).or_default().push(tag);
        match m.sends.get(uid) {
            Some(send) if tag.split('#').next() == Some(send.to.as_str()) => {}
            other => violation(
                v,
                "transport-exactly-once",
                format!("{tag} received {uid}, sent as {other:?}"),
            ),
        }
    }
    for ((tag, uid), n) in &count {
        if *n > 1 {
            violation(
                v,
                "transport-exactly-once",
                format!("{tag} received {uid} {n} times"),
            );
        }
    }
    // A decline is truthful: an offer settles `already have` only where the addressee
    // declined it holding that very clip.
    for (uid, send) in &m.sends {
        let Some((_, Settled::Failed(why))) = &send.settled else {
            continue;
        };
        if !why.contains("already have") {
            continue;
        }
        let by = m.declined.iter().find(|(_, u, _)| u == uid);
        match by {
            Some((tag, _, held))
                if tag.split('#').next() == Some(send.to.as_str())
                    && held.is_some()
                    && held == &send.clip => {}
            other => violation(
                v,
                "transport-exactly-once",
                format!("{uid} settled `already have`, declined as {other:?}"),
            ),
        }
    }
    for (uid, send) in &m.sends {
        let acked = matches!(send.settled, Some((_, Settled::Delivered)));
        let crashed_after = m
            .crashes
            .iter()
            .any(|(h, at)| *h == send.to && *at >= send.issued);
        if acked && !received_by.contains_key(uid.as_str()) && !crashed_after {
            violation(
                v,
                "transport-exactly-once",
                format!(
                    "{uid} ({} to {}) acknowledged, never received",
                    send.kind, send.to
                ),
            );
        }
    }
    // No echo: a clip never goes to the incarnation that copied it, nor back to one it came
    // from.
    let mut got_from: BTreeMap<(&str, &crate::mesh::Clip), Vec<(&str, Duration)>> = BTreeMap::new();
    for (tag, uid, at) in &m.receipts {
        if let Some(send) = m.sends.get(uid) {
            if let (Some(clip), 'C') = (&send.clip, send.kind) {
                got_from
                    .entry((tag, clip))
                    .or_default()
                    .push((send.from.as_str(), *at));
            }
        }
    }
    for (tag, uid, _) in &m.receipts {
        let Some(send) = m.sends.get(uid) else {
            continue;
        };
        let (Some(clip), 'C') = (&send.clip, send.kind) else {
            continue;
        };
        let echoed = clip.origin == *tag
            || got_from
                .get(&(send.from.as_str(), clip))
                .is_some_and(|froms| froms.iter().any(|(f, at)| f == tag && *at <= send.issued));
        if echoed {
            violation(
                v,
                "no-echo",
                format!(
                    "{} sent {clip} to {tag}, which had sent it or copied it",
                    send.from
                ),
            );
        }
    }
}

/// How long the mesh took to converge: from the later of the last healing fault and the last
/// copy, until the last live peer held the clip they all ended with. `None` if they did not
/// converge.
pub fn convergence(log: &Log, end: &Ending) -> Option<Duration> {
    let m = &log.mesh;
    m.converged_at?;
    let tags: Vec<String> = m.live().iter().map(|n| m.tag(n)).collect();
    let last = m.clipboard(tags.first()?)?;
    let reached = tags
        .iter()
        .map(|t| {
            m.adopted
                .iter()
                .find(|(tag, _, c)| tag == t && c == last)
                .map(|(_, at, _)| *at)
        })
        .collect::<Option<Vec<Duration>>>()?
        .into_iter()
        .max()?;
    let last_copy = m
        .created
        .iter()
        .map(|(at, _)| *at)
        .max()
        .unwrap_or_default();
    let from = end.last_heal.unwrap_or_default().max(last_copy);
    Some(reached.saturating_sub(from))
}

/// Simultaneous dial: at the end each side holds exactly one live connection to the other,
/// the one the tie-break keeps.
fn single_link(s: &Scenario, log: &Log, v: &mut Vec<Violation>) {
    let hosts = std::iter::once(s.server()).chain(s.clients().map(|c| c.name.as_str()));
    for host in hosts {
        let Some(links) = log.links.get(host) else {
            violation(v, "single-link", format!("{host} reported no connections"));
            continue;
        };
        let live: Vec<_> = links.iter().filter(|l| l.live).collect();
        if live.len() != 1 || !live[0].preferred {
            violation(
                v,
                "single-link",
                format!(
                    "{host} ends with these connections: {links:?}; expected one live, preferred"
                ),
            );
        }
    }
}

fn single_connection(s: &Scenario, log: &Log, v: &mut Vec<Violation>) {
    for client in s.clients().filter(|c| c.trusted) {
        let n = log.connects.get(&client.name).map_or(0, Vec::len);
        if n != 1 {
            violation(
                v,
                "single-connection",
                format!("{} made {n} connection attempts, expected 1", client.name),
            );
        }
    }
}

/// Two correct peers never close a connection on each other for breaking the protocol: a
/// close with one of these reasons, on either side, is a bug in one of them.
fn no_protocol_violation(log: &Log, v: &mut Vec<Violation>) {
    for (host, cause) in &log.closes {
        if cause.reason().is_some_and(|r| {
            matches!(
                r,
                ReasonCode::ProtocolError
                    | ReasonCode::FrameTooLarge
                    | ReasonCode::UnknownFrameType
                    | ReasonCode::UnsupportedVersion
                    | ReasonCode::FlowControlError
                    | ReasonCode::InternalError
                    | ReasonCode::ReplayOverflow
            )
        }) {
            violation(v, "no-protocol-violation", format!("{host}: {cause}"));
        }
    }
}

fn violation(v: &mut Vec<Violation>, invariant: &'static str, detail: String) {
    v.push(Violation { invariant, detail });
}

fn no_panic(end: &Ending, v: &mut Vec<Violation>) {
    for p in &end.panics {
        violation(v, "no-panic", p.clone());
    }
}

fn finished(s: &Scenario, end: &Ending, v: &mut Vec<Violation>) {
    if let Some(e) = &end.error {
        violation(
            v,
            "finished",
            format!("did not complete within {} s: {e}", s.duration_s),
        );
    }
}

/// Per client connection: deliveries in increasing id order; per client: no duplicate, every
/// acknowledged send delivered exactly once, nothing delivered that was not sent.
fn exactly_once_in_order(log: &Log, v: &mut Vec<Violation>) {
    let mut last: BTreeMap<(&str, u32), u64> = BTreeMap::new();
    let mut count: BTreeMap<(&str, u64), usize> = BTreeMap::new();
    for (client, id, at) in &log.delivered {
        let conn = log
            .connection_of
            .get(&(client.clone(), *id))
            .copied()
            .unwrap_or(0);
        let prev = last.insert((client, conn), *id);
        if let Some(prev) = prev.filter(|prev| id <= prev) {
            violation(
                v,
                "exactly-once-in-order",
                format!(
                    "{client}/{id} delivered at {:.3} s after {client}/{prev}",
                    at.as_secs_f64()
                ),
            );
        }
        *count.entry((client, *id)).or_default() += 1;
        if !log.sent.contains_key(&(client.clone(), *id)) {
            violation(
                v,
                "exactly-once-in-order",
                format!("{client}/{id} delivered but never sent"),
            );
        }
    }
    for ((client, id), rec) in &log.sent {
        let n = count.get(&(client.as_str(), *id)).copied().unwrap_or(0);
        let acked = matches!(rec.settled, Some((_, Settled::Delivered)));
        // An acknowledgement says the receiving transport has the message; a receiver that
        // crashes before its application took it loses it with the rest of its memory (as the
        // mesh invariants allow too). Only a crash after the send was issued excuses it.
        let lost_in_crash = n == 0 && log.mesh.crashes.iter().any(|(_, at)| *at >= rec.issued);
        if acked && n != 1 && !lost_in_crash {
            violation(
                v,
                "exactly-once-in-order",
                format!("{client}/{id} acknowledged but delivered {n} times"),
            );
        } else if n > 1 {
            violation(
                v,
                "exactly-once-in-order",
                format!("{client}/{id} delivered {n} times"),
            );
        }
    }
}

fn settled(log: &Log, v: &mut Vec<Violation>) {
    let current = log.server_incarnations.saturating_sub(1);
    for ((client, id), rec) in &log.sent {
        // The server's sends of an incarnation that crashed died with it.
        let crashed = log
            .back
            .get(client)
            .is_some_and(|(inc, _, _)| *inc < current && !log.graceful.contains(inc));
        if rec.settled.is_none() && !crashed {
            violation(
                v,
                "settled",
                format!(
                    "{client}/{id} sent at {:.3} s never settled",
                    rec.issued.as_secs_f64()
                ),
            );
        }
    }
}

/// Every message settles within the bound (a background stream, id 0, takes what its size
/// takes: the bound is for the messages beside it).
/// Sends failed by a lost session say why the peer lost it, with the reason it gave.
fn session_lost_reason(log: &Log, code: u16, v: &mut Vec<Violation>) {
    let want = format!("({code})");
    for ((client, id), rec) in &log.sent {
        if let Some((_, Settled::Failed(why))) = &rec.settled {
            if why.contains("closed by peer with session") && !why.contains(&want) {
                violation(
                    v,
                    "session-lost-reason",
                    format!("{client}/{id} failed with {why:?}, expected reason {code}"),
                );
            }
        }
    }
}

fn max_send_time(s: &Scenario, log: &Log, bound: Duration, v: &mut Vec<Violation>) {
    for ((client, id), rec) in &log.sent {
        if *id == 0 && s.workload.background_stream > 0 {
            continue;
        }
        if let Some((at, how)) = &rec.settled {
            let took = at.saturating_sub(rec.issued);
            if took > bound {
                violation(
                    v,
                    "max-send-time",
                    format!(
                        "{client}/{id} took {} ms to settle ({how:?}), bound {} ms",
                        took.as_millis(),
                        bound.as_millis()
                    ),
                );
            }
        }
    }
}

/// After a client lost its connection (a failed send or connect), it connects again within
/// the bound, counted from the later of the loss and the last healing fault.
fn reconnected(s: &Scenario, log: &Log, end: &Ending, bound: Duration, v: &mut Vec<Violation>) {
    for client in s.clients().filter(|c| c.trusted) {
        let name = &client.name;
        let mut failures: Vec<Duration> = log
            .sent
            .iter()
            .filter(|((c, _), _)| c == name)
            .filter_map(|(_, r)| match &r.settled {
                Some((at, Settled::Failed(_))) => Some(*at),
                _ => None,
            })
            .collect();
        let connects = log.connects.get(name).map(Vec::as_slice).unwrap_or(&[]);
        failures.extend(connects.iter().filter(|c| c.result.is_err()).map(|c| c.at));
        let Some(&lost) = failures.iter().max() else {
            continue;
        };
        // A loss on the very last message needs no reconnection.
        let last_send = log
            .sent
            .iter()
            .filter(|((c, _), _)| c == name)
            .filter_map(|(_, r)| r.settled.as_ref().map(|(at, _)| *at))
            .max();
        if last_send == Some(lost) && !connects.iter().any(|c| c.at > lost) {
            continue;
        }
        let from = end.last_heal.map_or(lost, |h| h.max(lost));
        let back = connects
            .iter()
            .filter(|c| c.result.is_ok() && c.at > lost)
            .map(|c| c.at)
            .min();
        match back {
            Some(t) if t.saturating_sub(from) <= bound => {}
            Some(t) => violation(
                v,
                "reconnected",
                format!(
                    "{name} reconnected {} ms after {:.3} s, bound {} ms",
                    t.saturating_sub(from).as_millis(),
                    from.as_secs_f64(),
                    bound.as_millis()
                ),
            ),
            None => violation(
                v,
                "reconnected",
                format!("{name} never reconnected after {:.3} s", lost.as_secs_f64()),
            ),
        }
    }
}

fn untrusted_refused(s: &Scenario, log: &Log, v: &mut Vec<Violation>) {
    for client in s.clients().filter(|c| !c.trusted) {
        let connects = log
            .connects
            .get(&client.name)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if connects.is_empty() {
            violation(
                v,
                "untrusted-refused",
                format!("{} never tried to connect", client.name),
            );
        }
        for c in connects {
            match &c.result {
                Err((Some(ReasonCode::KeyNotAuthorized), _)) => {}
                other => violation(
                    v,
                    "untrusted-refused",
                    format!(
                        "{} at {:.3} s: {other:?}, expected key not authorized",
                        client.name,
                        c.at.as_secs_f64()
                    ),
                ),
            }
        }
        if log.delivered.iter().any(|(c, _, _)| *c == client.name) {
            violation(
                v,
                "untrusted-refused",
                format!("{} had a message delivered", client.name),
            );
        }
    }
}

fn all_delivered(log: &Log, v: &mut Vec<Violation>) {
    for ((client, id), rec) in &log.sent {
        if let Some((_, Settled::Failed(reason))) = &rec.settled {
            violation(
                v,
                "all-delivered",
                format!("{client}/{id} failed: {reason}"),
            );
        }
    }
}

/// The run's figures, for comparison with the real network (`tests/netns/conformance.py`)
/// and for the report: with a background stream, the probes' latency behind it
/// (`probe_under_stream_p50_ms`, `..._max_ms`: messages issued while it was on the way, runs
/// without faults only) and its throughput (`stream_mbit_s`); every run, the message latency
/// (`probe_p50_ms`); after a fault, the time from the last heal to the first message
/// delivered after it (`heal_to_delivery_ms`).
pub fn figures(s: &Scenario, log: &Log, end: &Ending) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let pct = |xs: &mut Vec<f64>, q: f64| -> Option<f64> {
        xs.sort_by(f64::total_cmp);
        let i = ((xs.len() as f64 * q) as usize).min(xs.len().checked_sub(1)?);
        Some(xs[i])
    };
    let delivered = |rec: &SendRecord| match &rec.settled {
        Some((at, Settled::Delivered)) => Some(*at),
        _ => None,
    };
    let mut took: Vec<f64> = Vec::new();
    let mut under: Vec<f64> = Vec::new();
    let faultless = s.timeline.is_empty() && s.swarm.is_none();
    for ((client, id), rec) in &log.sent {
        let Some(at) = delivered(rec) else { continue };
        if *id == 0 && s.workload.background_stream > 0 {
            let secs = at.saturating_sub(rec.issued).as_secs_f64();
            if secs > 0.0 {
                let mbit = s.workload.background_stream as f64 * 8.0 / secs / 1e6;
                out.insert("stream_mbit_s".to_string(), round2(mbit));
            }
            continue;
        }
        let ms = at.saturating_sub(rec.issued).as_secs_f64() * 1000.0;
        took.push(ms);
        let stream_done = log
            .sent
            .get(&(client.clone(), 0))
            .and_then(|r| r.settled.as_ref().map(|(t, _)| *t));
        if faultless
            && s.workload.background_stream > 0
            && stream_done.is_some_and(|d| rec.issued < d)
        {
            under.push(ms);
        }
    }
    if let Some(p) = pct(&mut took, 0.5) {
        out.insert("probe_p50_ms".into(), round2(p));
    }
    if let Some(p) = pct(&mut under, 0.5) {
        out.insert("probe_under_stream_p50_ms".into(), round2(p));
        out.insert(
            "probe_under_stream_max_ms".into(),
            round2(under[under.len() - 1]),
        );
    }
    if let Some(heal) = end.last_heal {
        let first = log
            .sent
            .iter()
            .filter(|((_, id), _)| *id > 0)
            .filter_map(|(_, r)| delivered(r))
            .filter(|at| *at > heal)
            .min();
        if let Some(at) = first {
            out.insert(
                "heal_to_delivery_ms".into(),
                round2((at - heal).as_secs_f64() * 1000.0),
            );
        }
    }
    out
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
