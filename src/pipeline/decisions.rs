//! What to do with a delivery, decided by plain functions over plain types: no broker,
//! no network, no clock of their own (the caller passes `now`).
//!
//! Each answers with one [`Disposition`]; the worker carries it out (an Okta call, a
//! wait) and the AMQP adapter settles what it returns (`crate::amqp::settle`). The
//! rules:
//!
//! - an unreadable removal's copy in the leavers lane is left to its work-lane twin;
//!   any other unreadable message is dead-lettered as `validation`;
//! - a removal twin whose copy in the other lane has settled is skipped
//!   (`crate::pipeline::lanes` decides that);
//! - an event not due yet is parked: a removal until its `effective_at`, a parked copy
//!   until its schedule; a hire whose start date is ahead is provisioned staged and its
//!   activation parked after it;
//! - a removal over the offboarding guard's limit is held for an operator, unless an
//!   operator released it;
//! - after a failed attempt: a rate limit waits for Okta's `Retry-After` and never
//!   counts an attempt nor dead-letters; a transient failure waits for Okta while the
//!   circuit is open, retries with backoff while attempts remain, and is dead-lettered
//!   after the last; anything else is dead-lettered at once.
//!
//! [`build_outcome`] is the one place an outcome event is made.

use crate::domain::event::{EventBody, HrEvent, ValidationContext};
use crate::domain::outcome::{ErrorKind, Failure, Outcome, OutcomeStatus};
use crate::domain::plan::{Purpose, Report};
use crate::domain::schedule::{self, Scheduled, ScheduledKind};
use crate::pipeline::envelope::Envelope;
use crate::pipeline::guard::{GuardLimits, OffboardingGuard};
use crate::pipeline::lanes::Lane;
use crate::pipeline::retry::RetryPolicy;
use std::time::Duration;
use time::{OffsetDateTime, Time};

/// Why a delivery is acknowledged without any work or outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Its twin in the other lane has settled the removal.
    TwinSettled,
    /// The leavers lane's copy of an unreadable removal: the work lane's copy reports it.
    InvalidLeftToWorkLane,
}

/// What happens to a delivery next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Acknowledge it, publish nothing.
    Skip(Skip),
    /// Not due yet: park a copy until `schedule.due`.
    Park {
        schedule: Scheduled,
        /// A removal re-check's last check, carried by its copy.
        recheck_until: Option<OffsetDateTime>,
        /// Whether a copy is published at all: a dry run parks nothing (a re-check is
        /// still parked; a dry run never starts one).
        copy: bool,
        /// The first parking of a removal: its outcome says `removal.scheduled`.
        announce: bool,
    },
    /// A removal over the offboarding guard's limit: held for an operator.
    Hold { limits: GuardLimits },
    /// Run it in Okta now, for this purpose.
    Provision { purpose: Purpose },
    /// Try again after `delay`; `counts_attempt` says whether the failed attempt counts
    /// against `MAX_ATTEMPTS` (a rate limit does not).
    RetryAfter {
        delay: Duration,
        counts_attempt: bool,
    },
    /// Okta is down (the circuit is open): wait until it answers, then try again
    /// without counting.
    WaitForOkta,
    /// Give up: dead-letter it with this kind.
    DeadLetter { kind: ErrorKind },
}

/// What to do with a message that has no valid event.
pub fn invalid(envelope: &Envelope) -> Disposition {
    // An invalid message has no event id to match twins by, nor keys to order them by,
    // so one lane must own it: the work lane, which sees every event type.
    if envelope.lane == Lane::Leavers && envelope.twin_routed {
        Disposition::Skip(Skip::InvalidLeftToWorkLane)
    } else {
        Disposition::DeadLetter {
            kind: ErrorKind::Validation,
        }
    }
}

/// The scheduling rules: when hires are activated, and whether this is a dry run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleRules {
    /// `ACTIVATION_TIME_OF_DAY` (UTC) on a hire's start date.
    pub activation_time: Time,
    /// `DRY_RUN`: nothing is parked.
    pub dry_run: bool,
}

/// Whether `event` runs now, is parked, or is held. The offboarding `guard` (`None`:
/// off) is asked only for a due removal that no operator released, and counts it when
/// it lets it run.
pub fn schedule(
    event: &HrEvent,
    envelope: &Envelope,
    rules: ScheduleRules,
    now: OffsetDateTime,
    guard: Option<&OffboardingGuard>,
) -> Disposition {
    let scheduled = envelope.scheduled;
    let not_due = |due: OffsetDateTime| schedule::remaining(due, now).is_some();
    match &event.body {
        EventBody::Removed { effective_at, .. } => {
            if let Some(recheck) = scheduled.filter(|s| s.kind == ScheduledKind::RemovalRecheck) {
                // A re-check already passed the guard (or was released) on its first
                // run: it waits for its time, then runs.
                if not_due(recheck.due) {
                    return Disposition::Park {
                        schedule: recheck,
                        recheck_until: Some(envelope.recheck_until.unwrap_or(recheck.due)),
                        copy: true,
                        announce: false,
                    };
                }
                return provision(Purpose::Now);
            }
            let parked_before = scheduled.filter(|s| s.kind == ScheduledKind::Removal);
            let due = parked_before.map(|s| s.due).or(*effective_at);
            if let Some(due) = due.filter(|due| not_due(*due)) {
                return Disposition::Park {
                    schedule: Scheduled {
                        kind: ScheduledKind::Removal,
                        due,
                    },
                    recheck_until: None,
                    copy: !rules.dry_run,
                    announce: parked_before.is_none(),
                };
            }
            if let Some(guard) = guard.filter(|_| !envelope.guard_bypass) {
                if !guard.admit() {
                    return Disposition::Hold {
                        limits: guard.limits(),
                    };
                }
            }
            provision(Purpose::Now)
        }
        EventBody::Added(record) => {
            if let Some(parked) = scheduled.filter(|s| s.kind == ScheduledKind::Activation) {
                if not_due(parked.due) {
                    return Disposition::Park {
                        schedule: parked,
                        recheck_until: None,
                        copy: !rules.dry_run,
                        announce: false,
                    };
                }
                return provision(Purpose::Activate);
            }
            let start = record
                .start_date
                .map(|date| schedule::activation_instant(date, rules.activation_time));
            match start {
                Some(at) if not_due(at) => provision(Purpose::Stage { activate_at: at }),
                _ => provision(Purpose::Now),
            }
        }
        EventBody::Updated(_) => provision(Purpose::Now),
    }
}

fn provision(purpose: Purpose) -> Disposition {
    Disposition::Provision { purpose }
}

/// The activation a staged hire parks after it was provisioned: a copy of the hire,
/// marked as such, due at its start.
pub fn activation_after(purpose: Purpose) -> Option<Scheduled> {
    match purpose {
        Purpose::Stage { activate_at } => Some(Scheduled {
            kind: ScheduledKind::Activation,
            due: activate_at,
        }),
        Purpose::Now | Purpose::Activate => None,
    }
}

/// What a removal that found nobody by employee id alone does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recheck {
    /// It found someone, or was not by employee id alone: nothing to check.
    NotNeeded,
    /// The re-check time is over (or none is configured, or a dry run): nobody has the
    /// id, the removal is done with `user.not_found`.
    NobodyHasTheId,
    /// Okta's search lags writes: park it to run again at `next`, until `until`.
    Again {
        next: OffsetDateTime,
        until: OffsetDateTime,
    },
}

/// After a removal ran: whether its "nobody found" is proof yet. `window` is
/// `REMOVAL_RECHECK_SECS`. The deadline is set by the first run and travels with the
/// parked copy; a copy claiming more than the window is held to it.
pub fn recheck(
    report: &Report,
    envelope: &Envelope,
    window: Duration,
    dry_run: bool,
    now: OffsetDateTime,
) -> Recheck {
    if !report.nobody_by_employee_id {
        return Recheck::NotNeeded;
    }
    let rechecking = envelope
        .scheduled
        .is_some_and(|s| s.kind == ScheduledKind::RemovalRecheck);
    let until = rechecking
        .then_some(envelope.recheck_until)
        .flatten()
        .map_or(now + window, |until| until.min(now + window));
    match schedule::next_recheck(window, until, now).filter(|_| !dry_run) {
        Some(next) => Recheck::Again { next, until },
        None => Recheck::NobodyHasTheId,
    }
}

/// What happens after a failed attempt (`attempt` counts from 1). `retry_after` is
/// Okta's wait for a rate limit; `okta_down` whether the circuit is open (recorded with
/// this failure, so the failure that reveals an outage is itself held); `jitter` a
/// number in `[0, 1)` for the backoff.
pub fn after_failure(
    kind: ErrorKind,
    retry_after: Option<Duration>,
    attempt: u32,
    retry: &RetryPolicy,
    okta_down: bool,
    jitter: f64,
) -> Disposition {
    match kind {
        // Okta said when: wait that long. A rate limit never spends an attempt, so a
        // long throttle cannot dead-letter a valid event.
        ErrorKind::RateLimited => Disposition::RetryAfter {
            delay: retry_after.unwrap_or(Duration::from_secs(1)),
            counts_attempt: false,
        },
        ErrorKind::Transient if okta_down => Disposition::WaitForOkta,
        ErrorKind::Transient if retry.allows_another_after(attempt) => Disposition::RetryAfter {
            delay: retry.backoff(attempt, jitter),
            counts_attempt: true,
        },
        kind => Disposition::DeadLetter { kind },
    }
}

/// Whom an outcome is about: an event, or what could be read of an invalid message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct About {
    pub source_event_id: Option<String>,
    pub event_type: String,
    pub employee_id: Option<String>,
    pub email: Option<String>,
}

impl About {
    /// A valid event.
    pub fn event(event: &HrEvent) -> Self {
        Self {
            source_event_id: Some(event.event_id.as_str().to_owned()),
            event_type: event.event_type().as_str().to_owned(),
            employee_id: event.employee_id().map(|i| i.as_str().to_owned()),
            email: event.email().map(|e| e.as_str().to_owned()),
        }
    }

    /// An invalid message: what its body told, else its `message_id`; its routing key
    /// (printable) as its type.
    pub fn invalid(context: &ValidationContext, envelope: &Envelope) -> Self {
        Self {
            source_event_id: context
                .event_id
                .clone()
                .or_else(|| envelope.message_id.clone()),
            event_type: crate::domain::event::printable(&envelope.routing_key),
            employee_id: context.employee_id.clone(),
            email: context.email.clone(),
        }
    }
}

/// The outcome event (contract section 4) of `about`, completed now.
pub fn build_outcome(
    about: &About,
    status: OutcomeStatus,
    attempt: u32,
    report: Option<Report>,
    error: Option<Failure>,
    dry_run: bool,
) -> Outcome {
    let report = report.unwrap_or_default();
    Outcome {
        source_event_id: about.source_event_id.clone(),
        event_type: about.event_type.clone(),
        status,
        employee_id: about.employee_id.clone(),
        email: about.email.clone(),
        // A dry run's "created" user does not exist.
        okta_user_id: report
            .okta_user_id
            .filter(|id| !crate::okta::dry_run::is_synthetic_id(id)),
        actions: report.actions.iter().map(ToString::to_string).collect(),
        unmapped_groups: report.unmapped_groups,
        attempt,
        error,
        completed_at: OffsetDateTime::now_utc(),
        dry_run,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{parse_message, RawMessage};
    use crate::domain::plan::Action;
    use serde_json::json;
    use time::macros::{datetime, time};

    const NOW: OffsetDateTime = datetime!(2026-12-01 12:00 UTC);
    const RULES: ScheduleRules = ScheduleRules {
        activation_time: time!(09:00),
        dry_run: false,
    };

    fn event(routing_key: &str, extra: serde_json::Value) -> HrEvent {
        let mut body = json!({
            "event_id": "ev-1",
            "occurred_at": "2026-11-28T09:00:00Z",
            "employee": {"id": "E-1", "email": "a@example.com", "first_name": "A", "last_name": "B"}
        });
        if let (Some(target), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                if k == "start_date" {
                    target["employee"]["start_date"] = v.clone();
                } else {
                    target.insert(k.clone(), v.clone());
                }
            }
        }
        parse_message(RawMessage {
            routing_key,
            content_type: None,
            body: body.to_string().as_bytes(),
        })
        .expect("valid event")
    }

    fn removal() -> HrEvent {
        event("employee.removed", json!({}))
    }

    fn removal_effective(at: &str) -> HrEvent {
        event("employee.removed", json!({ "effective_at": at }))
    }

    fn hire(start_date: Option<&str>) -> HrEvent {
        match start_date {
            Some(date) => event("employee.added", json!({ "start_date": date })),
            None => event("employee.added", json!({})),
        }
    }

    fn envelope() -> Envelope {
        Envelope::plain(Lane::Work, "hr.events", "employee.removed")
    }

    fn scheduled(kind: ScheduledKind, due: OffsetDateTime) -> Envelope {
        Envelope {
            scheduled: Some(Scheduled { kind, due }),
            from_own_route: true,
            ..envelope()
        }
    }

    /// No guard.
    const NO_GUARD: Option<&OffboardingGuard> = None;

    /// A guard that holds every removal.
    fn holding() -> OffboardingGuard {
        OffboardingGuard::new(GuardLimits {
            max: 0,
            window: Duration::from_secs(60),
        })
    }

    /// A guard that lets `max` removals run.
    fn admitting(max: u32) -> OffboardingGuard {
        OffboardingGuard::new(GuardLimits {
            max,
            window: Duration::from_secs(60),
        })
    }

    #[test]
    fn an_invalid_message_is_dead_lettered_except_the_leavers_copy_of_a_twin() {
        let dead_letter = Disposition::DeadLetter {
            kind: ErrorKind::Validation,
        };
        let work = envelope();
        assert_eq!(invalid(&work), dead_letter);
        let twin_in_work = Envelope {
            twin_routed: true,
            ..envelope()
        };
        assert_eq!(invalid(&twin_in_work), dead_letter);
        let leavers_twin = Envelope {
            lane: Lane::Leavers,
            twin_routed: true,
            ..envelope()
        };
        assert_eq!(
            invalid(&leavers_twin),
            Disposition::Skip(Skip::InvalidLeftToWorkLane)
        );
        let leavers_alone = Envelope {
            lane: Lane::Leavers,
            ..envelope()
        };
        assert_eq!(invalid(&leavers_alone), dead_letter);
    }

    #[test]
    fn a_due_removal_asks_the_guard_and_runs_when_admitted() {
        let now = Disposition::Provision {
            purpose: Purpose::Now,
        };
        assert_eq!(schedule(&removal(), &envelope(), RULES, NOW, NO_GUARD), now);
        let past = removal_effective("2026-11-30T00:00:00Z");
        let guard = admitting(2);
        assert_eq!(schedule(&past, &envelope(), RULES, NOW, Some(&guard)), now);
        assert_eq!(
            schedule(&removal(), &envelope(), RULES, NOW, Some(&guard)),
            now
        );
        assert_eq!(
            schedule(&removal(), &envelope(), RULES, NOW, Some(&guard)),
            Disposition::Hold {
                limits: guard.limits()
            },
            "the third within the window is held"
        );
    }

    #[test]
    fn a_removal_over_the_guard_is_held_unless_an_operator_released_it() {
        let guard = holding();
        assert_eq!(
            schedule(&removal(), &envelope(), RULES, NOW, Some(&guard)),
            Disposition::Hold {
                limits: guard.limits()
            }
        );
        let released = Envelope {
            guard_bypass: true,
            ..envelope()
        };
        assert_eq!(
            schedule(&removal(), &released, RULES, NOW, Some(&guard)),
            Disposition::Provision {
                purpose: Purpose::Now
            }
        );
        // A released removal is not counted: the next one still gets its place.
        let guard = admitting(1);
        let _ = schedule(&removal(), &released, RULES, NOW, Some(&guard));
        assert_eq!(
            schedule(&removal(), &envelope(), RULES, NOW, Some(&guard)),
            Disposition::Provision {
                purpose: Purpose::Now
            }
        );
    }

    #[test]
    fn a_future_removal_is_parked_and_announced_once() {
        let future = removal_effective("2026-12-24T00:00:00Z");
        let due = datetime!(2026-12-24 00:00 UTC);
        let parked = |announce, copy| Disposition::Park {
            schedule: Scheduled {
                kind: ScheduledKind::Removal,
                due,
            },
            recheck_until: None,
            copy,
            announce,
        };
        assert_eq!(
            schedule(&future, &envelope(), RULES, NOW, Some(&holding())),
            parked(true, true)
        );
        // Back from a delay queue before its time: parked again, not announced again.
        let again = scheduled(ScheduledKind::Removal, due);
        assert_eq!(
            schedule(&future, &again, RULES, NOW, Some(&holding())),
            parked(false, true)
        );
        // The schedule it carries wins over the body's.
        assert_eq!(
            schedule(&removal(), &again, RULES, NOW, Some(&holding())),
            parked(false, true)
        );
        let dry = ScheduleRules {
            dry_run: true,
            ..RULES
        };
        assert_eq!(
            schedule(&future, &envelope(), dry, NOW, Some(&holding())),
            parked(true, false),
            "a dry run parks nothing but still says it is scheduled"
        );
    }

    #[test]
    fn a_parked_removal_that_is_due_goes_to_the_guard() {
        let due = scheduled(ScheduledKind::Removal, datetime!(2026-12-01 11:00 UTC));
        let guard = holding();
        assert_eq!(
            schedule(&removal(), &due, RULES, NOW, Some(&guard)),
            Disposition::Hold {
                limits: guard.limits()
            }
        );
    }

    #[test]
    fn a_removal_recheck_waits_for_its_time_then_runs_past_the_guard() {
        let next = datetime!(2026-12-01 12:00:30 UTC);
        let until = datetime!(2026-12-01 12:02 UTC);
        let waiting = Envelope {
            recheck_until: Some(until),
            ..scheduled(ScheduledKind::RemovalRecheck, next)
        };
        let park = |until| Disposition::Park {
            schedule: Scheduled {
                kind: ScheduledKind::RemovalRecheck,
                due: next,
            },
            recheck_until: Some(until),
            copy: true,
            announce: false,
        };
        assert_eq!(
            schedule(&removal(), &waiting, RULES, NOW, Some(&holding())),
            park(until)
        );
        let dry = ScheduleRules {
            dry_run: true,
            ..RULES
        };
        assert_eq!(
            schedule(&removal(), &waiting, dry, NOW, Some(&holding())),
            park(until)
        );
        let without_deadline = scheduled(ScheduledKind::RemovalRecheck, next);
        assert_eq!(
            schedule(&removal(), &without_deadline, RULES, NOW, Some(&holding())),
            park(next)
        );
        let due = scheduled(
            ScheduledKind::RemovalRecheck,
            datetime!(2026-12-01 11:59 UTC),
        );
        assert_eq!(
            schedule(&removal(), &due, RULES, NOW, Some(&holding())),
            Disposition::Provision {
                purpose: Purpose::Now
            }
        );
    }

    #[test]
    fn a_hire_with_a_future_start_is_staged_and_its_activation_parked_later() {
        let staged = schedule(
            &hire(Some("2026-12-24")),
            &envelope(),
            RULES,
            NOW,
            Some(&holding()),
        );
        let activate_at = datetime!(2026-12-24 09:00 UTC);
        assert_eq!(
            staged,
            Disposition::Provision {
                purpose: Purpose::Stage { activate_at }
            }
        );
        assert_eq!(
            activation_after(Purpose::Stage { activate_at }),
            Some(Scheduled {
                kind: ScheduledKind::Activation,
                due: activate_at
            })
        );
        assert_eq!(activation_after(Purpose::Now), None);
        assert_eq!(activation_after(Purpose::Activate), None);
        for start in [None, Some("2026-12-01"), Some("2026-01-01")] {
            assert_eq!(
                schedule(&hire(start), &envelope(), RULES, NOW, Some(&holding())),
                Disposition::Provision {
                    purpose: Purpose::Now
                },
                "{start:?}"
            );
        }
    }

    #[test]
    fn a_parked_activation_waits_for_its_time_then_activates() {
        let due = datetime!(2026-12-24 09:00 UTC);
        let parked = scheduled(ScheduledKind::Activation, due);
        assert_eq!(
            schedule(
                &hire(Some("2026-12-24")),
                &parked,
                RULES,
                NOW,
                Some(&holding())
            ),
            Disposition::Park {
                schedule: Scheduled {
                    kind: ScheduledKind::Activation,
                    due
                },
                recheck_until: None,
                copy: true,
                announce: false,
            }
        );
        let come = scheduled(ScheduledKind::Activation, datetime!(2026-12-01 09:00 UTC));
        assert_eq!(
            schedule(
                &hire(Some("2026-12-01")),
                &come,
                RULES,
                NOW,
                Some(&holding())
            ),
            Disposition::Provision {
                purpose: Purpose::Activate
            }
        );
    }

    #[test]
    fn updates_always_run_now() {
        let update = event("employee.updated", json!({}));
        let parked = scheduled(ScheduledKind::Removal, datetime!(2027-01-01 00:00 UTC));
        for envelope in [envelope(), parked] {
            assert_eq!(
                schedule(&update, &envelope, RULES, NOW, Some(&holding())),
                Disposition::Provision {
                    purpose: Purpose::Now
                }
            );
        }
    }

    #[test]
    fn a_rate_limit_waits_for_okta_and_never_counts_or_dead_letters() {
        let retry = RetryPolicy::default();
        for attempt in [1, retry.max_attempts, u32::MAX] {
            for okta_down in [false, true] {
                assert_eq!(
                    after_failure(
                        ErrorKind::RateLimited,
                        Some(Duration::from_secs(7)),
                        attempt,
                        &retry,
                        okta_down,
                        0.5
                    ),
                    Disposition::RetryAfter {
                        delay: Duration::from_secs(7),
                        counts_attempt: false
                    }
                );
            }
        }
        assert_eq!(
            after_failure(ErrorKind::RateLimited, None, 1, &retry, false, 0.5),
            Disposition::RetryAfter {
                delay: Duration::from_secs(1),
                counts_attempt: false
            }
        );
    }

    #[test]
    fn a_transient_failure_backs_off_until_the_last_attempt_then_dead_letters() {
        let retry = RetryPolicy::default();
        for attempt in 1..retry.max_attempts {
            assert_eq!(
                after_failure(ErrorKind::Transient, None, attempt, &retry, false, 0.25),
                Disposition::RetryAfter {
                    delay: retry.backoff(attempt, 0.25),
                    counts_attempt: true
                },
                "attempt {attempt}"
            );
        }
        assert_eq!(
            after_failure(
                ErrorKind::Transient,
                None,
                retry.max_attempts,
                &retry,
                false,
                0.25
            ),
            Disposition::DeadLetter {
                kind: ErrorKind::Transient
            }
        );
    }

    #[test]
    fn while_okta_is_down_a_transient_failure_waits_however_many_attempts_were_made() {
        let retry = RetryPolicy::default();
        for attempt in [1, retry.max_attempts, u32::MAX] {
            assert_eq!(
                after_failure(ErrorKind::Transient, None, attempt, &retry, true, 0.0),
                Disposition::WaitForOkta
            );
        }
    }

    #[test]
    fn every_other_failure_is_dead_lettered_at_once() {
        let retry = RetryPolicy::default();
        for kind in [
            ErrorKind::Validation,
            ErrorKind::Mapping,
            ErrorKind::Okta,
            ErrorKind::Conflict,
        ] {
            for okta_down in [false, true] {
                assert_eq!(
                    after_failure(kind, None, 1, &retry, okta_down, 0.0),
                    Disposition::DeadLetter { kind }
                );
            }
        }
    }

    fn nobody() -> Report {
        Report {
            nobody_by_employee_id: true,
            ..Report::default()
        }
    }

    #[test]
    fn a_removal_that_found_somebody_needs_no_recheck() {
        let window = Duration::from_secs(120);
        assert_eq!(
            recheck(&Report::default(), &envelope(), window, false, NOW),
            Recheck::NotNeeded
        );
    }

    #[test]
    fn a_first_run_that_found_nobody_is_checked_again_within_the_window() {
        let window = Duration::from_secs(120);
        let until = NOW + window;
        assert_eq!(
            recheck(&nobody(), &envelope(), window, false, NOW),
            Recheck::Again {
                next: schedule::next_recheck(window, until, NOW).expect("within the window"),
                until
            }
        );
        assert_eq!(
            recheck(&nobody(), &envelope(), window, true, NOW),
            Recheck::NobodyHasTheId,
            "a dry run never re-checks"
        );
        assert_eq!(
            recheck(&nobody(), &envelope(), Duration::ZERO, false, NOW),
            Recheck::NobodyHasTheId,
            "a zero window never re-checks"
        );
    }

    #[test]
    fn a_recheck_keeps_its_deadline_but_never_beyond_the_window() {
        let window = Duration::from_secs(120);
        let rechecking = |until| Envelope {
            recheck_until: Some(until),
            ..scheduled(ScheduledKind::RemovalRecheck, NOW)
        };
        let until = NOW + Duration::from_secs(30);
        assert!(matches!(
            recheck(&nobody(), &rechecking(until), window, false, NOW),
            Recheck::Again { until: u, .. } if u == until
        ));
        let forged_far = NOW + Duration::from_secs(86_400);
        assert!(matches!(
            recheck(&nobody(), &rechecking(forged_far), window, false, NOW),
            Recheck::Again { until: u, .. } if u == NOW + window
        ));
        assert_eq!(
            recheck(&nobody(), &rechecking(NOW), window, false, NOW),
            Recheck::NobodyHasTheId,
            "the deadline has come"
        );
        // A deadline carried by anything but a re-check copy is not its own.
        let not_a_recheck = Envelope {
            recheck_until: Some(until),
            ..envelope()
        };
        assert!(matches!(
            recheck(&nobody(), &not_a_recheck, window, false, NOW),
            Recheck::Again { until: u, .. } if u == NOW + window
        ));
    }

    #[test]
    fn one_outcome_builder_for_events_and_invalid_messages() {
        let report = Report {
            okta_user_id: Some("00u1".into()),
            actions: vec![Action::UserNotFound],
            unmapped_groups: vec!["Nope".into()],
            nobody_by_employee_id: false,
        };
        let outcome = build_outcome(
            &About::event(&removal()),
            OutcomeStatus::Succeeded,
            2,
            Some(report),
            None,
            false,
        );
        assert_eq!(outcome.source_event_id.as_deref(), Some("ev-1"));
        assert_eq!(outcome.event_type, "employee.removed");
        assert_eq!(outcome.employee_id.as_deref(), Some("E-1"));
        assert_eq!(outcome.email.as_deref(), Some("a@example.com"));
        assert_eq!(outcome.okta_user_id.as_deref(), Some("00u1"));
        assert_eq!(outcome.actions, vec![Action::UserNotFound.to_string()]);
        assert_eq!(outcome.unmapped_groups, vec!["Nope".to_owned()]);
        assert_eq!(outcome.attempt, 2);

        let context = ValidationContext {
            event_id: None,
            employee_id: Some("E-2".into()),
            email: None,
        };
        let envelope = Envelope {
            message_id: Some("m-1".into()),
            ..Envelope::plain(Lane::Work, "hr.events", "employee.\u{7}odd")
        };
        let failure = Failure::new(ErrorKind::Validation, "bad");
        let outcome = build_outcome(
            &About::invalid(&context, &envelope),
            OutcomeStatus::Failed,
            1,
            None,
            Some(failure.clone()),
            true,
        );
        assert_eq!(outcome.source_event_id.as_deref(), Some("m-1"));
        assert_eq!(
            outcome.event_type,
            crate::domain::event::printable("employee.\u{7}odd")
        );
        assert_eq!(outcome.employee_id.as_deref(), Some("E-2"));
        assert_eq!(outcome.error, Some(failure));
        assert!(outcome.dry_run);
        assert!(outcome.actions.is_empty());
    }
}
