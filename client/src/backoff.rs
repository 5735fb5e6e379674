//! Retry delays: exponential, capped, with jitter so that many clients that lost the same
//! matcher do not come back in step. Pure: the randomness is passed in.

use std::time::Duration;

/// The first delay.
pub(crate) const BASE: Duration = Duration::from_millis(50);
/// The longest delay.
pub(crate) const CAP: Duration = Duration::from_secs(2);

/// The delay before retry number `attempt` (1 for the first retry): `BASE · 2^(attempt-1)`,
/// at most `CAP`, of which the upper half is scaled by `jitter` (in `[0, 1)`).
pub(crate) fn delay(attempt: u32, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(16);
    let full = BASE.saturating_mul(1u32 << exp).min(CAP);
    let half = full / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// [`delay`] with a random jitter.
pub(crate) fn random_delay(attempt: u32) -> Duration {
    delay(attempt, rand::random::<f64>())
}

/// The backoff state of one thing being retried (a matcher connection, the ring watch).
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    failures: u32,
}

impl Backoff {
    /// A failure: how long to wait before the next attempt.
    pub(crate) fn failed(&mut self, jitter: f64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        delay(self.failures, jitter)
    }

    /// A success: the next failure starts from the first delay again.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let upper: Vec<u64> = (1..=8).map(|a| delay(a, 1.0).as_millis() as u64).collect();
        assert_eq!(upper, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(delay(1_000_000, 1.0), CAP);
    }

    #[test]
    fn jitter_spreads_over_the_upper_half() {
        assert_eq!(delay(3, 0.0), Duration::from_millis(100));
        assert_eq!(delay(3, 0.5), Duration::from_millis(150));
        assert!(delay(3, 0.999) < Duration::from_millis(200));
        // Out-of-range jitter is clamped, never beyond the cap.
        assert_eq!(delay(20, 7.0), CAP);
    }

    #[test]
    fn success_resets_the_sequence() {
        let mut b = Backoff::default();
        assert_eq!(b.failed(1.0), Duration::from_millis(50));
        assert_eq!(b.failed(1.0), Duration::from_millis(100));
        b.reset();
        assert_eq!(b.failed(1.0), Duration::from_millis(50));
    }
}
