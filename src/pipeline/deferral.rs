//! What happens to an event before it is provisioned: one that is not due yet is parked
//! on the broker, and a removal over the offboarding guard's limit is held for an
//! operator. Everything else goes on to the provisioner, told what kind of run it is.
//!
//! Parking and holding follow the service's one rule: the copy is confirmed by the
//! broker, then the outcome, and only then is the delivery acknowledged (by the
//! worker). A crash in between leaves the delivery to be redelivered and parked again;
//! a duplicate parked copy is harmless, because a due event converges when it runs.

use crate::amqp::headers;
use crate::amqp::parking::{self, ParkingNames};
use crate::amqp::publisher::{DeliveredMessage, PublishError, Publisher};
use crate::domain::event::printable;
use crate::domain::event::{EventBody, HrEvent};
use crate::domain::outcome::{format_timestamp, ErrorKind, Failure, Outcome, OutcomeStatus};
use crate::domain::plan::Action;
use crate::domain::schedule::{self, Scheduled, ScheduledKind};
use crate::pipeline::guard::{GuardLimits, OffboardingGuard};
use crate::pipeline::provisioner::{Purpose, Report};
use std::time::Duration;
use time::{OffsetDateTime, Time};

/// What the worker does next with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Provision it now, for this purpose.
    Provision(Purpose),
    /// It was parked or held, and its outcome (if any) confirmed: acknowledge it.
    Deferred,
}

/// The scheduler and the guard, as the worker uses them.
pub struct Deferral {
    names: ParkingNames,
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
    /// For the work queue `work_queue`; hires are activated at `activation_time` (UTC)
    /// on their start date; `guard` is off when `None`. In a dry run nothing is parked.
    pub fn new(
        work_queue: &str,
        activation_time: Time,
        guard: Option<GuardLimits>,
        dry_run: bool,
    ) -> Self {
        Self {
            names: ParkingNames::for_work_queue(work_queue),
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

    /// Decides whether `event` runs now; parks or holds it otherwise.
    ///
    /// # Errors
    /// [`PublishError`] when the parked or held copy, or its outcome, was not confirmed;
    /// the delivery must then stay unacknowledged.
    pub async fn gate(
        &self,
        event: &HrEvent,
        message: &DeliveredMessage,
        publisher: &Publisher,
    ) -> Result<Gate, PublishError> {
        let now = OffsetDateTime::now_utc();
        let scheduled = parking::scheduled_of(message);
        match &event.body {
            EventBody::Removed { effective_at, .. } => {
                if let Some(recheck) = scheduled.filter(|s| s.kind == ScheduledKind::RemovalRecheck)
                {
                    // A re-check already passed the guard (or was released) on its first
                    // run: it waits for its time, then runs.
                    if schedule::remaining(recheck.due, now).is_some() {
                        let until = parking::recheck_until_of(message).unwrap_or(recheck.due);
                        self.park_recheck(message, recheck.due, until, now, publisher)
                            .await?;
                        return Ok(Gate::Deferred);
                    }
                    return Ok(Gate::Provision(Purpose::Now));
                }
                let parked_before = scheduled.filter(|s| s.kind == ScheduledKind::Removal);
                let due = parked_before.map(|s| s.due).or(*effective_at);
                if let Some(due) = due.filter(|due| schedule::remaining(*due, now).is_some()) {
                    let schedule = Scheduled {
                        kind: ScheduledKind::Removal,
                        due,
                    };
                    self.park(message, schedule, now, publisher).await?;
                    if parked_before.is_none() {
                        tracing::info!(
                            event_id = event.event_id.as_str(),
                            due = %format_timestamp(due),
                            "removal scheduled"
                        );
                        let report = Report {
                            actions: vec![Action::RemovalScheduled(format_timestamp(due))],
                            ..Report::default()
                        };
                        self.publish_outcome(
                            event,
                            message,
                            OutcomeStatus::Succeeded,
                            report,
                            publisher,
                        )
                        .await?;
                    }
                    return Ok(Gate::Deferred);
                }
                if let Some(guard) = &self.guard {
                    if !parking::bypasses_guard(message) && !guard.admit() {
                        self.hold(event, message, guard.limits(), now, publisher)
                            .await?;
                        return Ok(Gate::Deferred);
                    }
                }
                Ok(Gate::Provision(Purpose::Now))
            }
            EventBody::Added(record) => {
                if let Some(parked) = scheduled.filter(|s| s.kind == ScheduledKind::Activation) {
                    if schedule::remaining(parked.due, now).is_some() {
                        self.park(message, parked, now, publisher).await?;
                        return Ok(Gate::Deferred);
                    }
                    return Ok(Gate::Provision(Purpose::Activate));
                }
                let start = record
                    .start_date
                    .map(|date| schedule::activation_instant(date, self.activation_time));
                match start {
                    Some(at) if schedule::remaining(at, now).is_some() => {
                        Ok(Gate::Provision(Purpose::Stage { activate_at: at }))
                    }
                    _ => Ok(Gate::Provision(Purpose::Now)),
                }
            }
            EventBody::Updated(_) => Ok(Gate::Provision(Purpose::Now)),
        }
    }

    /// After a staged hire was provisioned: parks its activation (a copy of the hire
    /// marked as such) and records it in the report.
    ///
    /// # Errors
    /// [`PublishError`] when the parked copy was not confirmed.
    pub async fn after_provisioning(
        &self,
        purpose: Purpose,
        message: &DeliveredMessage,
        report: &mut Report,
        publisher: &Publisher,
    ) -> Result<(), PublishError> {
        if let Purpose::Stage { activate_at } = purpose {
            let schedule = Scheduled {
                kind: ScheduledKind::Activation,
                due: activate_at,
            };
            self.park(message, schedule, OffsetDateTime::now_utc(), publisher)
                .await?;
            report
                .actions
                .push(Action::ActivationScheduled(format_timestamp(activate_at)));
        }
        Ok(())
    }

    /// After a removal ran: when it found nobody by employee id alone, Okta's lagging
    /// search is not yet proof that nobody has the id. The removal is parked to run
    /// again (`schedule::next_recheck`) until `REMOVAL_RECHECK_SECS` after its first
    /// run; the returned failure makes its outcome `retrying`. When that time is over,
    /// it is done, with the action `user.not_found`.
    ///
    /// # Errors
    /// [`PublishError`] when the parked copy was not confirmed.
    pub async fn recheck_if_unproven(
        &self,
        event: &HrEvent,
        message: &DeliveredMessage,
        report: &mut Report,
        publisher: &Publisher,
    ) -> Result<Option<Failure>, PublishError> {
        if !report.nobody_by_employee_id {
            return Ok(None);
        }
        let now = OffsetDateTime::now_utc();
        let window = self.removal_recheck;
        // The deadline is set by the first run and travels with the parked copy; a
        // header claiming more than the window is held to it.
        let rechecking =
            parking::scheduled_of(message).is_some_and(|s| s.kind == ScheduledKind::RemovalRecheck);
        let until = rechecking
            .then(|| parking::recheck_until_of(message))
            .flatten()
            .map_or(now + window, |until| until.min(now + window));
        let next = schedule::next_recheck(window, until, now).filter(|_| !self.dry_run);
        let Some(next) = next else {
            report.actions.push(Action::UserNotFound);
            return Ok(None);
        };
        self.park_recheck(message, next, until, now, publisher)
            .await?;
        report
            .actions
            .push(Action::RecheckScheduled(format_timestamp(next)));
        let employee_id = event.employee_id().map(|i| printable(i.as_str()));
        tracing::info!(
            event_id = event.event_id.as_str(),
            next = %format_timestamp(next),
            until = %format_timestamp(until),
            "removal by employee id found nobody yet; Okta's search lags, checking again"
        );
        Ok(Some(Failure::new(
            ErrorKind::Transient,
            format!(
                "no Okta user has employeeNumber '{}' yet; Okta's search lags writes, so the removal is checked again at {} (until {})",
                employee_id.unwrap_or_default(),
                format_timestamp(next),
                format_timestamp(until)
            ),
        )))
    }

    async fn park_recheck(
        &self,
        message: &DeliveredMessage,
        due: OffsetDateTime,
        until: OffsetDateTime,
        now: OffsetDateTime,
        publisher: &Publisher,
    ) -> Result<(), PublishError> {
        let left = schedule::remaining(due, now).unwrap_or_default();
        let bucket = schedule::bucket_for(left);
        parking::recheck_copy(&self.names, message, due, until, bucket)
            .send(publisher)
            .await
    }

    async fn park(
        &self,
        message: &DeliveredMessage,
        schedule: Scheduled,
        now: OffsetDateTime,
        publisher: &Publisher,
    ) -> Result<(), PublishError> {
        if self.dry_run {
            return Ok(());
        }
        let left = schedule::remaining(schedule.due, now).unwrap_or_default();
        let bucket = schedule::bucket_for(left);
        tracing::debug!(
            kind = schedule.kind.as_str(),
            bucket = bucket.name,
            left_s = left.as_secs(),
            "parked until due"
        );
        parking::parked_copy(&self.names, message, schedule, bucket)
            .send(publisher)
            .await
    }

    async fn hold(
        &self,
        event: &HrEvent,
        message: &DeliveredMessage,
        limits: GuardLimits,
        now: OffsetDateTime,
        publisher: &Publisher,
    ) -> Result<(), PublishError> {
        let employee_id = event.employee_id().map(|i| i.as_str());
        tracing::error!(
            event_id = event.event_id.as_str(),
            employee_id = employee_id.map(crate::telemetry::pii::for_log).as_deref(),
            max = limits.max,
            window_s = limits.window.as_secs(),
            held_queue = %self.names.held_queue,
            "offboarding guard: too many removals at once; removal held for an operator (iam-provisioner held release|discard)"
        );
        parking::held_copy(&self.names, message, employee_id, now)
            .send(publisher)
            .await?;
        let report = Report {
            actions: vec![Action::RemovalHeld],
            ..Report::default()
        };
        self.publish_outcome(event, message, OutcomeStatus::Held, report, publisher)
            .await
    }

    async fn publish_outcome(
        &self,
        event: &HrEvent,
        message: &DeliveredMessage,
        status: OutcomeStatus,
        report: Report,
        publisher: &Publisher,
    ) -> Result<(), PublishError> {
        let outcome = Outcome {
            source_event_id: Some(event.event_id.as_str().to_owned()),
            event_type: event.event_type().as_str().to_owned(),
            status,
            employee_id: event.employee_id().map(|i| i.as_str().to_owned()),
            email: event.email().map(|e| e.as_str().to_owned()),
            okta_user_id: report.okta_user_id,
            actions: report.actions.iter().map(ToString::to_string).collect(),
            unmapped_groups: report.unmapped_groups,
            attempt: 1,
            error: None,
            completed_at: OffsetDateTime::now_utc(),
            dry_run: self.dry_run,
        };
        publisher
            .publish_outcome(
                &outcome,
                headers::trace_context(message.properties.headers().as_ref()),
            )
            .await
    }
}
