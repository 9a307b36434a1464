//! The reconnection backoff policy (DESIGN §2 "reconnection"): exponential growth, a cap,
//! jitter drawn from the caller's seeded RNG, kept per peer, reset after a stable period.
//!
//! Pure: the random draw and the time come in as arguments, so the simulator replays the same
//! delays for the same seed, and the bounds are testable in microseconds.

use std::time::Duration;

use super::session::CloseCause;
use crate::wire::ReasonCode;

/// The policy's parameters (from `TransportConfig`'s `backoff_*` settings).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackoffPolicy {
    /// The first delay's upper end.
    pub initial: Duration,
    /// Growth per failed attempt (at least 1).
    pub multiplier: f64,
    /// The largest delay.
    pub max: Duration,
    /// Fraction of each delay drawn at random: 1.0 is "full jitter" (`rand(0, base)`), 0.0 is
    /// none.
    pub jitter: f64,
    /// A connection that stayed up this long resets the growth.
    pub reset_after: Duration,
}

impl BackoffPolicy {
    /// The delay range `[low, high]` before attempt number `attempt` (0-based): `high` is
    /// `min(max, initial × multiplier^attempt)`, `low` is `high × (1 − jitter)`.
    pub fn range(&self, attempt: u32) -> (Duration, Duration) {
        let growth = self.multiplier.max(1.0).powi(attempt.min(1000) as i32);
        let high_secs = (self.initial.as_secs_f64() * growth).min(self.max.as_secs_f64());
        let high = Duration::from_secs_f64(high_secs.max(0.0));
        let low = high.mul_f64((1.0 - self.jitter).clamp(0.0, 1.0));
        (low, high)
    }
}

/// Backoff state for one peer (across all its addresses: a per-address backoff lets a peer
/// with several dead addresses be hammered, Syncthing #4778).
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    attempt: u32,
    connected_since: Option<Duration>,
}

impl Backoff {
    /// Fresh state: the next delay is drawn from the first range.
    pub fn new(policy: BackoffPolicy) -> Self {
        Self {
            policy,
            attempt: 0,
            connected_since: None,
        }
    }

    /// Failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The delay before the next attempt. `draw` is a uniform number in `[0, 1)` from the
    /// seeded RNG; out-of-range draws are clamped.
    pub fn next_delay(&mut self, draw: f64) -> Duration {
        let (low, high) = self.policy.range(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let span = high.saturating_sub(low);
        low + span.mul_f64(draw.clamp(0.0, 1.0))
    }

    /// A connection came up at `now`.
    pub fn connected(&mut self, now: Duration) {
        self.connected_since = Some(now);
    }

    /// The connection went down at `now`: if it had stayed up for `reset_after`, the growth
    /// starts over.
    pub fn disconnected(&mut self, now: Duration) {
        if let Some(since) = self.connected_since.take() {
            if now.saturating_sub(since) >= self.policy.reset_after {
                self.attempt = 0;
            }
        }
    }
}

/// Why a dial attempt failed, as far as the redial policy cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DialFailure {
    /// The peer refused our key (`auth failed`, `key not authorized`): trying again will not
    /// help.
    Unauthorized(ReasonCode, String),
    /// Anything else (unreachable, timeout, reset, refused for another reason): try again.
    Other,
}

/// What the redial policy decides after a failure.
#[derive(Clone, Debug, PartialEq)]
pub enum RedialStep {
    /// Dial again after this delay.
    After(Duration),
    /// Stop: the session ends for this cause. `offline` says the attempts ran out (the state
    /// the application sees is then `Offline`).
    GiveUp {
        /// Why.
        cause: CloseCause,
        /// The attempts ran out (rather than the peer refusing us).
        offline: bool,
    },
}

/// The redial policy of one peer, across all its addresses (Syncthing #4778): when to dial
/// again, and when to give up. Used for a connection's first dial (`Transport::open`) and for
/// every reconnection; pure (the time and the random draw come in as arguments).
#[derive(Clone, Debug)]
pub struct RedialPolicy {
    backoff: Backoff,
    /// Give up after this many failed attempts in a row; 0 never.
    max_attempts: u32,
    failures: u32,
}

impl RedialPolicy {
    /// A policy with `backoff` and at most `max_attempts` failures in a row (0: no limit).
    pub fn new(policy: BackoffPolicy, max_attempts: u32) -> Self {
        Self {
            backoff: Backoff::new(policy),
            max_attempts,
            failures: 0,
        }
    }

    /// A connection stands, since `now`.
    pub fn connected(&mut self, now: Duration) {
        self.failures = 0;
        self.backoff.connected(now);
    }

    /// The connection was lost at `now`: the delay before the first redial (the backoff grows
    /// on from where it was, or starts over if the connection had been up for `reset_after`).
    pub fn lost(&mut self, now: Duration, draw: f64) -> Duration {
        self.backoff.disconnected(now);
        self.backoff.next_delay(draw)
    }

    /// A dial attempt failed: dial again after a delay, or give up.
    pub fn failed(&mut self, failure: &DialFailure, draw: f64) -> RedialStep {
        self.failures = self.failures.saturating_add(1);
        if let DialFailure::Unauthorized(reason, detail) = failure {
            return RedialStep::GiveUp {
                cause: CloseCause::Peer(*reason, detail.clone()),
                offline: false,
            };
        }
        if self.max_attempts > 0 && self.failures >= self.max_attempts {
            return RedialStep::GiveUp {
                cause: CloseCause::Lost(format!(
                    "gave up after {} connection attempts",
                    self.failures
                )),
                offline: true,
            };
        }
        RedialStep::After(self.backoff.next_delay(draw))
    }

    /// Failed attempts in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// One side's view of a link to a peer, for the simultaneous-dial tie-break.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkView {
    /// This side dialled it.
    pub dialed: bool,
    /// It carries a session that is only waiting for a new connection (reconnecting): the
    /// peer came back with a fresh session, so the peer cannot resume this one.
    pub stale: bool,
    /// It has stood longer than any simultaneous dial could take (the dial, TLS and
    /// authentication deadlines together). A peer dials only while it holds no link to us, so
    /// a fresh connection from it now means it lost this one: it is half-open (the peer
    /// restarted, or its network changed, before this side noticed).
    pub established: bool,
}

/// Which of two links to the same peer survives (PROTOCOL.md §7, reason 13): `true` keeps the
/// `new` one and closes `old`, `false` refuses `new`.
///
/// A fresh authenticated connection wins over a link that is only trying to reconnect (its
/// peer restarted: the new connection carries a new session, the old one can never resume)
/// and over an established one (the peer would not have dialled if it still held it: the old
/// link is half-open); otherwise — two young links, one dialled each way — the link dialled by
/// the peer with the smaller key wire encoding survives, so both sides choose the same one.
/// `own_key_smaller` is `own key < peer key` in that encoding.
pub fn tie_break(own_key_smaller: bool, old: LinkView, new: LinkView) -> bool {
    if (old.stale || old.established) && !new.stale {
        return true;
    }
    if old.dialed == new.dialed {
        // Not a simultaneous dial: the newer connection of the same direction replaces.
        return true;
    }
    // The link dialled by the smaller key survives.
    new.dialed == own_key_smaller
}

/// A uniform draw in `[0, 1)` from 64 random bits (53 bits of mantissa used).
pub fn unit_draw(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_chacha::rand_core::{RngCore, SeedableRng};

    use super::*;

    fn policy() -> BackoffPolicy {
        BackoffPolicy {
            initial: Duration::from_secs(1),
            multiplier: 1.6,
            max: Duration::from_secs(30),
            jitter: 1.0,
            reset_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn delays_stay_within_their_range_and_never_above_the_cap() {
        for jitter in [0.0, 0.2, 0.5, 1.0] {
            let p = BackoffPolicy { jitter, ..policy() };
            let mut b = Backoff::new(p);
            let mut rng = ChaCha20Rng::seed_from_u64(7);
            for attempt in 0..40 {
                let (low, high) = p.range(attempt);
                assert!(high <= p.max, "attempt {attempt}: {high:?} above the cap");
                assert_eq!(low, high.mul_f64(1.0 - jitter));
                let d = b.next_delay(unit_draw(rng.next_u64()));
                assert!(
                    d >= low && d <= high,
                    "attempt {attempt}: {d:?} not in {low:?}..{high:?}"
                );
            }
        }
        // The extremes of the draw give the ends of the range.
        let mut b = Backoff::new(BackoffPolicy {
            jitter: 0.5,
            ..policy()
        });
        assert_eq!(b.next_delay(0.0), Duration::from_millis(500));
        assert_eq!(b.next_delay(1.0), Duration::from_millis(1600));
    }

    #[test]
    fn growth_is_exponential_until_the_cap() {
        let p = BackoffPolicy {
            jitter: 0.0,
            ..policy()
        };
        let mut b = Backoff::new(p);
        let delays: Vec<u128> = (0..10).map(|_| b.next_delay(0.5).as_millis()).collect();
        assert_eq!(
            delays,
            vec![
                1000, 1600, 2560, 4096, 6553, 10485, 16777, 26843, 30000, 30000
            ]
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_delays_and_another_seed_others() {
        let run = |seed| {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let mut b = Backoff::new(policy());
            (0..20)
                .map(|_| b.next_delay(unit_draw(rng.next_u64())))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        // Full jitter spreads: over many draws of the first attempt, both halves are used.
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let firsts: Vec<Duration> = (0..1000)
            .map(|_| Backoff::new(policy()).next_delay(unit_draw(rng.next_u64())))
            .collect();
        let low = firsts
            .iter()
            .filter(|d| **d < Duration::from_millis(500))
            .count();
        assert!((400..600).contains(&low), "{low} of 1000 draws below half");
    }

    #[test]
    fn a_stable_connection_resets_the_growth_and_a_short_one_does_not() {
        let mut b = Backoff::new(BackoffPolicy {
            jitter: 0.0,
            ..policy()
        });
        for _ in 0..5 {
            b.next_delay(0.0);
        }
        b.connected(Duration::from_secs(100));
        b.disconnected(Duration::from_secs(110)); // 10 s up: not stable
        assert_eq!(b.attempts(), 5);
        b.connected(Duration::from_secs(200));
        b.disconnected(Duration::from_secs(260)); // 60 s up: stable
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.next_delay(0.0), Duration::from_secs(1));
    }

    #[test]
    fn draws_are_uniform_in_the_unit_interval() {
        assert_eq!(unit_draw(0), 0.0);
        assert!(unit_draw(u64::MAX) < 1.0);
    }
}
