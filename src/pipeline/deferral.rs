//! The rules that defer an event instead of running it now: a hire's activation time,
//! the offboarding guard, the removal re-check window, and whether this is a dry run.
//!
//! Which event is parked, held or run is decided by `super::decisions`; the parked and
//! held copies are published by the AMQP adapter's settle step. This struct only keeps
//! the settings and the guard's count together, as the worker uses them.

use crate::pipeline::decisions::ScheduleRules;
use crate::pipeline::guard::{GuardLimits, OffboardingGuard};
use std::time::Duration;
use time::Time;

/// The scheduler's and the guard's settings, as the worker uses them.
#[derive(Debug)]
pub struct Deferral {
    work_queue: String,
    activation_time: Time,
    guard: Option<OffboardingGuard>,
    dry_run: bool,
    /// `REMOVAL_RECHECK_SECS`: how long a removal by employee id alone that finds
    /// nobody is checked again before it is declared done; zero: never.
    removal_recheck: Duration,
}

/// `REMOVAL_RECHECK_SECS` when unset: Okta's search usually catches up within seconds;
/// two minutes covers a slow index without keeping a leaver's removal open for long.
pub const DEFAULT_REMOVAL_RECHECK: Duration = Duration::from_secs(120);

impl Deferral {
    /// For the work queue `work_queue` (whose waiting rooms receive the copies); hires
    /// are activated at `activation_time` (UTC) on their start date; `guard` is off when
    /// `None`. In a dry run nothing is parked.
    pub fn new(
        work_queue: &str,
        activation_time: Time,
        guard: Option<GuardLimits>,
        dry_run: bool,
    ) -> Self {
        Self {
            work_queue: work_queue.to_owned(),
            activation_time,
            guard: guard.map(OffboardingGuard::new),
            dry_run,
            removal_recheck: DEFAULT_REMOVAL_RECHECK,
        }
    }

    /// The same, checking a removal that found nobody by employee id alone again for
    /// `window` (`REMOVAL_RECHECK_SECS`; zero: never).
    pub fn with_removal_recheck(self, window: Duration) -> Self {
        Self {
            removal_recheck: window,
            ..self
        }
    }

    /// The work queue whose waiting rooms (delay and hold queues) receive the copies.
    pub fn work_queue(&self) -> &str {
        &self.work_queue
    }

    /// The rules `super::decisions::schedule` applies.
    pub fn rules(&self) -> ScheduleRules {
        ScheduleRules {
            activation_time: self.activation_time,
            dry_run: self.dry_run,
        }
    }

    /// The offboarding guard; `None` when it is off.
    pub fn guard(&self) -> Option<&OffboardingGuard> {
        self.guard.as_ref()
    }

    /// `REMOVAL_RECHECK_SECS`.
    pub fn removal_recheck(&self) -> Duration {
        self.removal_recheck
    }

    /// `DRY_RUN`.
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }
}
