//! When to try a failed event again: exponential backoff with full jitter, a bounded
//! number of attempts. Pure, so the timing is unit-tested without sleeping.

use std::time::Duration;

/// The retry rules for transient failures (`MAX_ATTEMPTS`, `RETRY_BASE_DELAY_MS`,
/// `RETRY_MAX_DELAY_MS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; after the last, the event is dead-lettered.
    pub max_attempts: u32,
    /// The backoff cap of the first retry; it doubles with each attempt.
    pub base_delay: Duration,
    /// The largest backoff cap.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Whether a transient failure of attempt `attempt` (1-based) gets another try.
    pub fn allows_another_after(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// The cap of the backoff after failed attempt `attempt`: `base × 2^(attempt−1)`,
    /// at most `max_delay`.
    pub fn backoff_cap(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(31);
        self.base_delay
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay)
    }

    /// The delay before the next attempt: uniformly random in `[0, cap]` ("full
    /// jitter"), so that events failing together do not retry together. `unit` is a
    /// random number in `[0, 1)`.
    pub fn backoff(&self, attempt: u32, unit: f64) -> Duration {
        self.backoff_cap(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
        }
    }

    #[test]
    fn caps_double_until_the_maximum() {
        let caps: Vec<u128> = (1..=5)
            .map(|a| policy().backoff_cap(a).as_millis())
            .collect();
        assert_eq!(caps, vec![100, 200, 400, 500, 500]);
        assert_eq!(policy().backoff_cap(u32::MAX), Duration::from_millis(500));
    }

    #[test]
    fn full_jitter_spans_zero_to_the_cap() {
        assert_eq!(policy().backoff(3, 0.0), Duration::ZERO);
        assert_eq!(policy().backoff(3, 0.5), Duration::from_millis(200));
        assert!(policy().backoff(3, 0.999) < Duration::from_millis(400));
    }

    #[test]
    fn attempts_are_bounded() {
        assert!(policy().allows_another_after(3));
        assert!(!policy().allows_another_after(4));
    }
}
