//! The reconnection backoff policy (DESIGN §2 "reconnection"): exponential growth, a cap,
//! jitter drawn from the caller's seeded RNG, kept per peer, reset after a stable period.
//!
//! Pure: the random draw and the time come in as arguments, so the simulator replays the same
//! delays for the same seed, and the bounds are testable in microseconds.

use std::time::Duration;

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
    /// The policy of a configuration.
    pub fn from_config(cfg: &crate::config::TransportConfig) -> Self {
        Self {
            initial: cfg.backoff_initial,
            multiplier: cfg.backoff_multiplier,
            max: cfg.backoff_max,
            jitter: cfg.backoff_jitter,
            reset_after: cfg.backoff_reset_after,
        }
    }

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
