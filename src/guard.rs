//! The mass-offboarding guard: a safety rail against a bad HR export or a broken
//! integration that announces many leavers at once (Entra's accidental-deletion
//! threshold, Okta's import safeguard).
//!
//! When more than `OFFBOARDING_GUARD_MAX` removals come due within
//! `OFFBOARDING_GUARD_WINDOW`, further ones are held for an operator instead of being
//! executed. The count is kept per process: with several replicas, each counts the
//! removals it executes, so the service-wide threshold is up to replicas × MAX. Held
//! removals do not count; a removal released by an operator bypasses the guard.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// The guard's limits (`OFFBOARDING_GUARD_MAX`, `OFFBOARDING_GUARD_WINDOW`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardLimits {
    /// Removals allowed within the window; the next one is held. 0 holds every removal.
    pub max: u32,
    /// The sliding window.
    pub window: Duration,
}

/// Counts removals executed in a sliding window.
#[derive(Debug)]
pub struct OffboardingGuard {
    limits: GuardLimits,
    admitted: Mutex<VecDeque<Instant>>,
}

impl OffboardingGuard {
    /// A guard with the given limits.
    pub fn new(limits: GuardLimits) -> Self {
        Self {
            limits,
            admitted: Mutex::new(VecDeque::new()),
        }
    }

    /// The limits, for outcome messages.
    pub fn limits(&self) -> GuardLimits {
        self.limits
    }

    /// Whether one more removal may run now; if so, it is counted.
    pub fn admit(&self) -> bool {
        let now = Instant::now();
        let mut admitted = match self.admitted.lock() {
            Ok(admitted) => admitted,
            Err(poisoned) => poisoned.into_inner(),
        };
        while admitted
            .front()
            .is_some_and(|at| now.duration_since(*at) >= self.limits.window)
        {
            admitted.pop_front();
        }
        if admitted.len() >= self.limits.max as usize {
            return false;
        }
        admitted.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_removal_after_max_within_the_window_is_held_until_the_window_slides() {
        let guard = OffboardingGuard::new(GuardLimits {
            max: 2,
            window: Duration::from_secs(60),
        });
        assert!(guard.admit());
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(guard.admit());
        assert!(!guard.admit(), "the third within 60 s is held");
        assert!(!guard.admit(), "held removals do not count, but stay held");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(guard.admit(), "the first has left the window");
        assert!(!guard.admit());
    }

    #[tokio::test(start_paused = true)]
    async fn max_zero_holds_every_removal() {
        let guard = OffboardingGuard::new(GuardLimits {
            max: 0,
            window: Duration::from_secs(1),
        });
        assert!(!guard.admit());
    }
}
