//! The retry schedule: how long a message stays invisible after a transient failure.
//!
//! The schedule is a pure function of `ApproximateReceiveCount`, so it survives restarts and
//! needs no state: the n-th receive that fails waits about `base * 2^(n-1)`, capped, with
//! "equal jitter" (half fixed, half random) so that a burst of failures does not come back as
//! a burst.

use std::time::Duration;

/// SQS's upper bound for a visibility timeout (12 hours).
pub const MAX_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(12 * 60 * 60);

/// Exponential backoff with jitter, computed from a receive count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySchedule {
    /// Delay after the first failed receive (before jitter).
    pub base: Duration,
    /// No delay is longer than this (and never longer than [`MAX_VISIBILITY_TIMEOUT`]).
    pub cap: Duration,
}

impl RetrySchedule {
    /// The delay before the capped exponential is jittered, for receive number `receive_count`
    /// (1 for the first delivery).
    pub fn ceiling(&self, receive_count: u32) -> Duration {
        let cap = self.cap.min(MAX_VISIBILITY_TIMEOUT);
        let exponent = receive_count.saturating_sub(1).min(30);
        self.base
            .checked_mul(1u32 << exponent)
            .map_or(cap, |d| d.min(cap))
    }

    /// The jittered delay: uniformly in `[ceiling / 2, ceiling]`. `unit` is a random number in
    /// `[0, 1)`; pass [`fastrand::f64()`] in production and fixed values in tests.
    pub fn delay(&self, receive_count: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(receive_count);
        let half = ceiling / 2;
        half + (ceiling - half).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The delay as SQS wants it: whole seconds, at least 1, within SQS's maximum.
    pub fn visibility_secs(&self, receive_count: u32, unit: f64) -> i32 {
        let secs = self.delay(receive_count, unit).as_secs_f64().ceil() as i64;
        secs.clamp(1, MAX_VISIBILITY_TIMEOUT.as_secs() as i64) as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> RetrySchedule {
        RetrySchedule {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(60),
        }
    }

    #[test]
    fn ceiling_doubles_per_receive_then_caps() {
        let s = schedule();
        let got: Vec<u64> = (1..=7).map(|n| s.ceiling(n).as_secs()).collect();
        assert_eq!(got, vec![2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn receive_count_zero_is_treated_as_first() {
        assert_eq!(schedule().ceiling(0), Duration::from_secs(2));
    }

    #[test]
    fn huge_receive_counts_do_not_overflow() {
        assert_eq!(schedule().ceiling(u32::MAX), Duration::from_secs(60));
        let big = RetrySchedule {
            base: Duration::from_secs(u64::MAX / 4),
            cap: Duration::from_secs(u64::MAX),
        };
        assert_eq!(big.ceiling(40), MAX_VISIBILITY_TIMEOUT);
    }

    #[test]
    fn jitter_stays_between_half_and_full_ceiling() {
        let s = schedule();
        for n in 1..10 {
            let ceiling = s.ceiling(n);
            assert_eq!(s.delay(n, 0.0), ceiling / 2);
            assert_eq!(s.delay(n, 1.0), ceiling);
            for _ in 0..100 {
                let d = s.delay(n, fastrand::f64());
                assert!(d >= ceiling / 2 && d <= ceiling, "{d:?} outside for n={n}");
            }
        }
    }

    #[test]
    fn visibility_seconds_are_whole_and_bounded() {
        let s = RetrySchedule {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(100_000),
        };
        assert_eq!(
            s.visibility_secs(1, 0.0),
            1,
            "sub-second delays round up to 1 s"
        );
        assert_eq!(s.visibility_secs(3, 1.0), 1);
        assert_eq!(s.visibility_secs(5, 1.0), 2);
        assert_eq!(s.visibility_secs(40, 1.0), 43_200, "capped at SQS's 12 h");
    }
}
