//! What happens to one decoded delivery: wait for the employee's turn, decide
//! (`super::decisions`), provision in Okta, and say how the delivery settles
//! (`super::settlement`).
//!
//! The worker reads no header and publishes nothing itself: the AMQP adapter decoded
//! the delivery before (`crate::amqp::decode`) and settles it after
//! (`crate::amqp::settle`), publishing the copies and the outcome with confirms and only
//! then acknowledging. The one publish made before the end — a `retrying` outcome
//! between two attempts — goes through the [`OutcomeSink`] port. A delivery whose work
//! is abandoned (shutdown, lost connection) is handed back unsettled: the broker
//! redelivers it, and provisioning converges when it runs again.

use crate::domain::event::{printable, EventType, HrEvent, ValidationContext, ValidationError};
use crate::domain::outcome::{format_timestamp, ErrorKind, Failure, OutcomeStatus};
use crate::domain::plan::Action;
use crate::domain::schedule::{Scheduled, ScheduledKind};
use crate::okta::{pacing, OktaError};
use crate::pipeline::circuit::OktaCircuit;
use crate::pipeline::decisions::{self, About, Disposition, Recheck};
use crate::pipeline::deferral::Deferral;
use crate::pipeline::envelope::{Decoded, Envelope, Parsed};
use crate::pipeline::lanes::{self, Admission, Lanes};
use crate::pipeline::provisioner::{DeliveryFacts, ProvisionError, Provisioner, Purpose, Report};
use crate::pipeline::retry::RetryPolicy;
use crate::pipeline::sequencer::Turn;
use crate::pipeline::settlement::{CopyOf, Finished, OutcomeSink, Settlement, Tally, Verdict};
use crate::telemetry::metrics::{DeliveryTimer, Metrics};
use crate::trust::Trust;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// What every delivery task shares.
pub struct Worker {
    pub provisioner: Arc<Provisioner>,
    pub retry: RetryPolicy,
    /// Open while Okta is down: failing events wait for it instead of spending attempts.
    pub circuit: OktaCircuit,
    pub metrics: Metrics,
    /// Parks future-dated events and holds removals over the offboarding guard.
    pub deferral: Deferral,
    /// What the work and leavers lanes know of each other's removals.
    pub lanes: Lanes,
    /// Own headers only from own routes, trusted publishers, email domains.
    pub trust: Trust,
}

impl Worker {
    /// Takes one decoded delivery to its end. `turn` is its place in its employee's
    /// line; `hand_back` stops any waiting (for the turn, a backoff, Okta): the
    /// delivery is then handed back unsettled. The returned [`Finished`] keeps the turn,
    /// so the employee's next event waits until the delivery is settled.
    pub async fn run<S: OutcomeSink>(
        &self,
        decoded: Decoded,
        mut turn: Turn,
        sink: &S,
        hand_back: &CancellationToken,
    ) -> Finished<S::Error> {
        let Decoded { envelope, event } = decoded;
        self.trust.report_forged(
            &envelope.exchange,
            envelope.message_id.as_deref(),
            envelope.publisher.as_deref(),
            &envelope.forged_headers,
        );
        let (event, refused_for) = self.refuse_untrusted(&envelope, event);
        let timer = self.metrics.delivery_arrived(&envelope.routing_key);
        // A removal in both lanes counts as consumed in the lane that processes it.
        if !envelope.twin_routed {
            timer.count_consumed();
        }
        let verdict = match event {
            Err((error, context)) => match decisions::invalid(&envelope) {
                Disposition::Skip(_) => {
                    tracing::debug!(
                        event_type = printable(&envelope.routing_key),
                        "invalid removal left to the work lane's copy"
                    );
                    Verdict::settle(Settlement::skip())
                }
                _ => {
                    if envelope.twin_routed {
                        timer.count_consumed();
                    }
                    if let Some(reason) = refused_for {
                        self.trust.count_refusal(reason);
                    }
                    Verdict::settle(self.reject_invalid(&envelope, &error, &context))
                }
            },
            Ok(event) => {
                self.carry_out(&envelope, &event, &mut turn, &timer, sink, hand_back)
                    .await
            }
        };
        Finished {
            verdict,
            envelope,
            turn,
            timer,
        }
    }

    /// An event the trust rules refuse becomes a `validation` failure; returns the
    /// refusal's metric reason with it.
    fn refuse_untrusted(
        &self,
        envelope: &Envelope,
        event: Parsed,
    ) -> (Parsed, Option<&'static str>) {
        let Ok(valid) = &event else {
            return (event, None);
        };
        let Some((reason, error)) = self.trust.refusal(envelope.publisher.as_deref(), valid) else {
            return (event, None);
        };
        tracing::warn!(
            event_id = valid.event_id.as_str(),
            event_type = %valid.event_type(),
            reason = %error,
            "event refused by the trust rules"
        );
        let context = ValidationContext {
            event_id: Some(valid.event_id.as_str().to_owned()),
            employee_id: valid.employee_id().map(|i| i.as_str().to_owned()),
            email: valid.email().map(|e| e.as_str().to_owned()),
        };
        (Err((error, context)), Some(reason))
    }

    fn reject_invalid(
        &self,
        envelope: &Envelope,
        error: &ValidationError,
        context: &ValidationContext,
    ) -> Settlement {
        let failure = Failure::new(ErrorKind::Validation, error.to_string());
        let about = About::invalid(context, envelope);
        tracing::error!(
            event_id = about.source_event_id.as_deref().map(printable),
            event_type = printable(&envelope.routing_key),
            error_kind = "validation",
            reason = %crate::telemetry::pii::scrub_for_log(
                &failure.message,
                &[context.employee_id.as_deref(), context.email.as_deref()]
            ),
            "invalid message dead-lettered"
        );
        let outcome = decisions::build_outcome(
            &about,
            OutcomeStatus::Failed,
            1,
            None,
            Some(failure.clone()),
            self.provisioner.okta().is_dry_run(),
        );
        Settlement {
            copies: vec![CopyOf::DeadLetter {
                failure,
                attempts: 1,
                employee_id: context.employee_id.clone(),
            }],
            outcome: Some(outcome),
            tally: Tally::Failed(ErrorKind::Validation),
            twin: None,
            timed: true,
        }
    }

    /// A valid event, once its turn has come: decide, then provision, retrying as the
    /// decisions say.
    async fn carry_out<S: OutcomeSink>(
        &self,
        envelope: &Envelope,
        event: &HrEvent,
        turn: &mut Turn,
        timer: &DeliveryTimer,
        sink: &S,
        hand_back: &CancellationToken,
    ) -> Verdict<S::Error> {
        tokio::select! {
            // Biased: once the session hands back, a delivery whose predecessor gave up
            // its turn unfinished must not start either.
            biased;
            _ = hand_back.cancelled() => return Verdict::NotStarted,
            _ = turn.wait() => {}
        }
        // Fail safe: who is protected must be known before anything changes.
        tokio::select! {
            _ = self.provisioner.protected().wait_loaded() => {}
            _ = hand_back.cancelled() => return Verdict::NotStarted,
        }
        let admission = self.lanes.admit(
            envelope.lane,
            &envelope.exchange,
            &envelope.routing_key,
            event,
        );
        if admission == Admission::TwinSettled {
            tracing::debug!(
                event_id = event.event_id.as_str(),
                lane = envelope.lane.as_str(),
                "removal already settled by its copy in the other lane"
            );
            self.metrics.removal_copy_skipped(envelope.lane);
            return Verdict::settle(Settlement::skip());
        }
        if envelope.twin_routed {
            timer.count_consumed();
        }
        let overtaken = admission == Admission::OvertakenByRemoval;
        if overtaken {
            tracing::info!(
                event_id = event.event_id.as_str(),
                event_type = %event.event_type(),
                "a removal published after this hire was already carried out; the account \
                 is left offboarded"
            );
        }
        let mut next = decisions::schedule(
            event,
            envelope,
            self.deferral.rules(),
            OffsetDateTime::now_utc(),
            self.deferral.guard(),
        );
        let facts = |purpose| DeliveryFacts {
            purpose,
            overtaken_by_removal: overtaken,
            replay_count: envelope.replay_count,
        };
        let mut purpose = Purpose::Now;
        let mut attempt = 1u32;
        let mut failure: Option<Failure> = None;
        loop {
            next = match next {
                Disposition::Skip(_) => return Verdict::settle(Settlement::skip()),
                Disposition::Park {
                    schedule,
                    recheck_until,
                    copy,
                    announce,
                } => {
                    return Verdict::settle(self.park(
                        envelope,
                        event,
                        schedule,
                        recheck_until,
                        copy,
                        announce,
                    ))
                }
                Disposition::Hold { limits } => {
                    return Verdict::settle(self.hold(envelope, event, limits))
                }
                Disposition::DeadLetter { kind } => {
                    let failure = failure
                        .take()
                        .unwrap_or_else(|| Failure::new(kind, "dead-lettered"));
                    return Verdict::settle(self.dead_letter(envelope, event, failure, attempt));
                }
                Disposition::Provision { purpose: now_for } => {
                    purpose = now_for;
                    let provisioning = self.provisioner.provision(event, facts(purpose));
                    match pacing::with_priority(pacing_priority(event), provisioning).await {
                        Ok(report) => {
                            self.circuit.record_success();
                            return Verdict::settle(
                                self.succeeded(envelope, event, purpose, report, attempt),
                            );
                        }
                        Err(error) => {
                            let failed = error.to_failure();
                            let okta_down = self.okta_down_after(failed.kind);
                            let next = decisions::after_failure(
                                failed.kind,
                                rate_limit_wait(&error),
                                attempt,
                                &self.retry,
                                okta_down,
                                fastrand::f64(),
                            );
                            failure = Some(failed);
                            next
                        }
                    }
                }
                wait @ (Disposition::RetryAfter { .. } | Disposition::WaitForOkta) => {
                    let failed = failure
                        .take()
                        .unwrap_or_else(|| Failure::new(ErrorKind::Transient, "retrying"));
                    if let Err(e) = self
                        .report_retry(envelope, event, &failed, attempt, wait, sink)
                        .await
                    {
                        return Verdict::Unconfirmed(e);
                    }
                    match wait {
                        Disposition::RetryAfter {
                            delay,
                            counts_attempt,
                        } => {
                            tokio::select! {
                                _ = tokio::time::sleep(delay) => {}
                                _ = hand_back.cancelled() => return Verdict::HandedBack,
                            }
                            if counts_attempt {
                                attempt += 1;
                            }
                        }
                        _ => {
                            tokio::select! {
                                _ = self.circuit.wait_closed() => {}
                                _ = hand_back.cancelled() => return Verdict::HandedBack,
                            }
                        }
                    }
                    Disposition::Provision { purpose }
                }
            };
        }
    }

    /// Records a failed attempt with the circuit and says whether Okta is down. Recorded
    /// before deciding, so the failure that reveals an outage is itself held rather than
    /// dead-lettered.
    fn okta_down_after(&self, kind: ErrorKind) -> bool {
        match kind {
            ErrorKind::Transient => {
                self.circuit.record_transient_failure();
                self.circuit.is_open()
            }
            ErrorKind::RateLimited => false,
            _ => {
                // Okta answered (or the problem is ours): it is up.
                self.circuit.record_success();
                false
            }
        }
    }

    /// Publishes the `retrying` outcome of a failed attempt before the wait.
    async fn report_retry<S: OutcomeSink>(
        &self,
        envelope: &Envelope,
        event: &HrEvent,
        failure: &Failure,
        attempt: u32,
        wait: Disposition,
        sink: &S,
    ) -> Result<(), S::Error> {
        let shown_delay = match wait {
            Disposition::RetryAfter { delay, .. } => delay.as_millis() as u64,
            _ => 0,
        };
        tracing::warn!(
            event_id = event.event_id.as_str(),
            event_type = %event.event_type(),
            error_kind = failure.kind.as_str(),
            okta_request_id = failure.okta_request_id.as_deref(),
            attempt,
            retry_in_ms = shown_delay,
            waiting_for_okta = matches!(wait, Disposition::WaitForOkta),
            error = %crate::telemetry::pii::scrub_event(&failure.message, event),
            "event will be retried"
        );
        let outcome = decisions::build_outcome(
            &About::event(event),
            OutcomeStatus::Retrying,
            attempt,
            None,
            Some(failure.clone()),
            self.provisioner.okta().is_dry_run(),
        );
        sink.progress(&outcome).await?;
        self.metrics
            .event_retried(&envelope.routing_key, failure.kind);
        Ok(())
    }

    /// What the lanes remember of a twin-routed removal once it is settled.
    fn twin(
        envelope: &Envelope,
        event: &HrEvent,
        settlement: lanes::Settlement,
    ) -> Option<(HrEvent, lanes::Settlement)> {
        envelope.twin_routed.then(|| (event.clone(), settlement))
    }

    fn park(
        &self,
        envelope: &Envelope,
        event: &HrEvent,
        schedule: Scheduled,
        recheck_until: Option<OffsetDateTime>,
        copy: bool,
        announce: bool,
    ) -> Settlement {
        let outcome = announce.then(|| {
            tracing::info!(
                event_id = event.event_id.as_str(),
                due = %format_timestamp(schedule.due),
                "removal scheduled"
            );
            let report = Report {
                actions: vec![Action::RemovalScheduled(format_timestamp(schedule.due))],
                ..Report::default()
            };
            decisions::build_outcome(
                &About::event(event),
                OutcomeStatus::Succeeded,
                1,
                Some(report),
                None,
                self.deferral.dry_run(),
            )
        });
        Settlement {
            copies: copy
                .then_some(CopyOf::Parked {
                    schedule,
                    recheck_until,
                })
                .into_iter()
                .collect(),
            outcome,
            tally: Tally::Nothing,
            // Parked or held: its twin must not be parked or held too.
            twin: Self::twin(envelope, event, lanes::Settlement::Other),
            timed: true,
        }
    }

    fn hold(
        &self,
        envelope: &Envelope,
        event: &HrEvent,
        limits: crate::pipeline::guard::GuardLimits,
    ) -> Settlement {
        let report = Report {
            actions: vec![Action::RemovalHeld],
            ..Report::default()
        };
        let outcome = decisions::build_outcome(
            &About::event(event),
            OutcomeStatus::Held,
            1,
            Some(report),
            None,
            self.deferral.dry_run(),
        );
        Settlement {
            copies: vec![CopyOf::Held {
                event_id: event.event_id.as_str().to_owned(),
                employee_id: event.employee_id().map(|i| i.as_str().to_owned()),
                limits,
                at: OffsetDateTime::now_utc(),
            }],
            outcome: Some(outcome),
            tally: Tally::Nothing,
            twin: Self::twin(envelope, event, lanes::Settlement::Other),
            timed: true,
        }
    }

    fn dead_letter(
        &self,
        envelope: &Envelope,
        event: &HrEvent,
        failure: Failure,
        attempt: u32,
    ) -> Settlement {
        tracing::error!(
            event_id = event.event_id.as_str(),
            event_type = %event.event_type(),
            error_kind = failure.kind.as_str(),
            okta_error_code = failure.okta_error_code.as_deref(),
            okta_request_id = failure.okta_request_id.as_deref(),
            attempt,
            error = %crate::telemetry::pii::scrub_event(&failure.message, event),
            "event failed; dead-lettered"
        );
        let outcome = decisions::build_outcome(
            &About::event(event),
            OutcomeStatus::Failed,
            attempt,
            None,
            Some(failure.clone()),
            self.provisioner.okta().is_dry_run(),
        );
        Settlement {
            tally: Tally::Failed(failure.kind),
            copies: vec![CopyOf::DeadLetter {
                failure,
                attempts: attempt,
                employee_id: event.employee_id().map(|i| i.as_str().to_owned()),
            }],
            outcome: Some(outcome),
            twin: Self::twin(envelope, event, lanes::Settlement::Other),
            timed: true,
        }
    }

    /// A successful run: a staged hire parks its activation, and a removal that found
    /// nobody by a lagging search is checked again (its outcome then says `retrying`).
    fn succeeded(
        &self,
        envelope: &Envelope,
        event: &HrEvent,
        purpose: Purpose,
        mut report: Report,
        attempt: u32,
    ) -> Settlement {
        let dry_run = self.provisioner.okta().is_dry_run();
        let mut copies = Vec::new();
        if let Some(activation) = decisions::activation_after(purpose) {
            if !self.deferral.dry_run() {
                copies.push(CopyOf::Parked {
                    schedule: activation,
                    recheck_until: None,
                });
            }
            report
                .actions
                .push(Action::ActivationScheduled(format_timestamp(
                    activation.due,
                )));
        }
        let carried_out = Self::twin(envelope, event, lanes::Settlement::CarriedOut);
        let recheck = decisions::recheck(
            &report,
            envelope,
            self.deferral.removal_recheck(),
            self.deferral.dry_run(),
            OffsetDateTime::now_utc(),
        );
        match recheck {
            Recheck::NotNeeded => {}
            Recheck::NobodyHasTheId => report.actions.push(Action::UserNotFound),
            Recheck::Again { next, until } => {
                copies.push(CopyOf::Parked {
                    schedule: Scheduled {
                        kind: ScheduledKind::RemovalRecheck,
                        due: next,
                    },
                    recheck_until: Some(until),
                });
                report
                    .actions
                    .push(Action::RecheckScheduled(format_timestamp(next)));
                tracing::info!(
                    event_id = event.event_id.as_str(),
                    next = %format_timestamp(next),
                    until = %format_timestamp(until),
                    "removal by employee id found nobody yet; Okta's search lags, checking again"
                );
                let employee_id = event.employee_id().map(|i| printable(i.as_str()));
                let failure = Failure::new(
                    ErrorKind::Transient,
                    format!(
                        "no Okta user has employeeNumber '{}' yet; Okta's search lags writes, so the removal is checked again at {} (until {})",
                        employee_id.unwrap_or_default(),
                        format_timestamp(next),
                        format_timestamp(until)
                    ),
                );
                let outcome = decisions::build_outcome(
                    &About::event(event),
                    OutcomeStatus::Retrying,
                    attempt,
                    Some(report),
                    Some(failure),
                    dry_run,
                );
                return Settlement {
                    copies,
                    outcome: Some(outcome),
                    tally: Tally::Retried(ErrorKind::Transient),
                    twin: carried_out,
                    timed: true,
                };
            }
        }
        let outcome = decisions::build_outcome(
            &About::event(event),
            OutcomeStatus::Succeeded,
            attempt,
            Some(report),
            None,
            dry_run,
        );
        tracing::info!(
            event_id = event.event_id.as_str(),
            event_type = %event.event_type(),
            okta_user_id = outcome.okta_user_id.as_deref(),
            actions = ?outcome.actions,
            attempt,
            "event succeeded"
        );
        Settlement {
            copies,
            outcome: Some(outcome),
            tally: Tally::Succeeded,
            twin: carried_out,
            timed: true,
        }
    }
}

/// A removal's Okta calls go before hires' where they share a rate-limit bucket:
/// access must end quickly, whatever the backlog.
fn pacing_priority(event: &HrEvent) -> pacing::Priority {
    match event.event_type() {
        EventType::Removed => pacing::Priority::Leaver,
        _ => pacing::Priority::Normal,
    }
}

/// Okta's `Retry-After` of a rate-limited attempt.
fn rate_limit_wait(error: &ProvisionError) -> Option<Duration> {
    match error {
        ProvisionError::Okta(OktaError::RateLimited { retry_after, .. }) => Some(*retry_after),
        _ => None,
    }
}

