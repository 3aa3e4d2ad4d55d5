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
        // The last attempt's failure: set whenever the decisions answer after one, which
        // is the only time they say retry, wait or dead-letter.
        let mut failure: Option<Failure> = None;
        // Each turn of the loop carries out one disposition; only provisioning leads to
        // another one (after a failure), and only a wait leads back to provisioning.
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

// Against the fake Okta, so built with its feature only.
#[cfg(all(test, feature = "okta-sim"))]
mod tests {
    //! The worker against the in-process fake Okta and a fake outcome sink: no broker.

    use super::*;
    use crate::config::secret::Secret;
    use crate::domain::event::{parse_message, RawMessage};
    use crate::domain::mapping::GroupMapping;
    use crate::domain::outcome::Outcome;
    use crate::domain::plan::OffboardingMode;
    use crate::okta::groups::GroupDirectory;
    use crate::okta::{OktaClient, OktaClientSettings};
    use crate::okta_sim::{Fault, FaultKind, OktaSim, RateLimit, SimConfig, UserStatus};
    use crate::pipeline::guard::GuardLimits;
    use crate::pipeline::lanes::Lane;
    use crate::pipeline::provisioner::SharedMapping;
    use crate::pipeline::sequencer::Sequencer;
    use crate::trust::{OwnRoutes, TrustMetrics, TrustSettings};
    use serde_json::json;
    use std::sync::Mutex;
    use time::macros::time;

    const INPUT: &str = "hr.events";

    /// Records the progress outcomes; refuses them when told to.
    #[derive(Default)]
    struct FakeSink {
        published: Mutex<Vec<Outcome>>,
        refuse: bool,
        /// Cancelled once a progress outcome is published: the session ends mid-retry.
        hand_back_on_progress: Option<CancellationToken>,
    }

    impl FakeSink {
        fn published(&self) -> Vec<Outcome> {
            self.published.lock().expect("lock").clone()
        }
    }

    impl OutcomeSink for FakeSink {
        type Error = &'static str;

        fn progress(
            &self,
            outcome: &Outcome,
        ) -> impl std::future::Future<Output = Result<(), &'static str>> + Send {
            let result = if self.refuse {
                Err("not confirmed")
            } else {
                self.published.lock().expect("lock").push(outcome.clone());
                Ok(())
            };
            if let Some(hand_back) = &self.hand_back_on_progress {
                hand_back.cancel();
            }
            std::future::ready(result)
        }
    }

    struct World {
        sim: OktaSim,
        worker: Worker,
        sequencer: Sequencer,
    }

    #[derive(Default)]
    struct Setup {
        max_attempts: Option<u32>,
        guard: Option<GuardLimits>,
        trust: TrustSettings,
        /// Transient failures in a row that open the circuit (default: never).
        outage_threshold: Option<u32>,
    }

    async fn world(setup: Setup) -> World {
        // Okta's own limits, in 1 s windows: a 429 is waited out until its window's
        // reset, which a test should not spend a minute on.
        let sim = OktaSim::start(SimConfig {
            rate_limit: Some(RateLimit::workforce().with_window(Duration::from_secs(1))),
            ..SimConfig::default()
        })
        .await
        .expect("fake Okta starts");
        let client = OktaClient::new(
            reqwest::Url::parse(&sim.base_url()).expect("url"),
            &Secret::new(sim.api_token()),
            OktaClientSettings::default(),
        )
        .expect("client");
        let groups = GroupDirectory::new(client.clone(), Duration::from_secs(60));
        let provisioner = Provisioner::new(
            client,
            groups,
            SharedMapping::new(GroupMapping::from_pairs([])),
            OffboardingMode::Deactivate,
        );
        let retry = RetryPolicy {
            max_attempts: setup.max_attempts.unwrap_or(5),
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        };
        let worker = Worker {
            provisioner: Arc::new(provisioner),
            retry,
            circuit: OktaCircuit::new(setup.outage_threshold.unwrap_or(1000)),
            metrics: Metrics::new(),
            deferral: Deferral::new("wq", time!(09:00), setup.guard, false),
            lanes: Lanes::new(INPUT),
            trust: Trust::new(
                OwnRoutes::new(vec!["wq.retry".into()]),
                setup.trust,
                TrustMetrics::new(),
            ),
        };
        World {
            sim,
            worker,
            sequencer: Sequencer::new(),
        }
    }

    fn hire_body(event_id: &str) -> String {
        json!({
            "event_id": event_id,
            "occurred_at": "2026-11-28T09:00:00Z",
            "employee": {"id": "E-1", "email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace"}
        })
        .to_string()
    }

    fn removal_body(extra: serde_json::Value) -> String {
        let mut body = json!({
            "event_id": "r-1",
            "occurred_at": "2026-11-28T09:00:00Z",
            "employee": {"id": "E-1", "email": "ada@example.com"}
        });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        body.to_string()
    }

    fn decoded(envelope: Envelope, body: &str) -> Decoded {
        let event = parse_message(RawMessage {
            routing_key: &envelope.routing_key,
            content_type: None,
            body: body.as_bytes(),
        });
        Decoded { envelope, event }
    }

    fn hire() -> Decoded {
        decoded(
            Envelope::plain(Lane::Work, INPUT, "employee.added"),
            &hire_body("h-1"),
        )
    }

    fn removal(lane: Lane, extra: serde_json::Value) -> Decoded {
        let envelope = Envelope {
            twin_routed: true,
            ..Envelope::plain(lane, INPUT, "employee.removed")
        };
        decoded(envelope, &removal_body(extra))
    }

    impl World {
        async fn run_with(&self, decoded: Decoded, sink: &FakeSink) -> Finished<&'static str> {
            let turn = self.sequencer.register(decoded.ordering_keys());
            self.worker
                .run(decoded, turn, sink, &CancellationToken::new())
                .await
        }

        async fn settle(&self, decoded: Decoded, sink: &FakeSink) -> Settlement {
            match self.run_with(decoded, sink).await.verdict {
                Verdict::Settle(settlement) => *settlement,
                other => panic!("expected a settlement, got {other:?}"),
            }
        }

        fn api_requests(&self) -> usize {
            self.sim.request_log().len()
        }

        fn fail_next(&self, times: u32, status: u16, error_code: &str) {
            self.sim.inject_fault(Fault {
                method: None,
                path_contains: None,
                times,
                kind: FaultKind::Status {
                    status,
                    error_code: error_code.into(),
                },
            });
        }
    }

    fn outcome(settlement: &Settlement) -> &Outcome {
        settlement.outcome.as_ref().expect("an outcome")
    }

    #[tokio::test]
    async fn a_hire_is_provisioned_and_settles_with_a_succeeded_outcome() {
        let world = world(Setup::default()).await;
        let sink = FakeSink::default();
        let settlement = world.settle(hire(), &sink).await;
        assert!(settlement.copies.is_empty());
        assert_eq!(settlement.tally, Tally::Succeeded);
        assert!(settlement.timed);
        assert!(settlement.twin.is_none(), "a hire has no twin");
        let outcome = outcome(&settlement);
        assert_eq!(outcome.status, OutcomeStatus::Succeeded);
        assert_eq!(outcome.attempt, 1);
        assert_eq!(outcome.source_event_id.as_deref(), Some("h-1"));
        assert!(outcome.actions.contains(&"user.created".to_owned()));
        assert!(sink.published().is_empty(), "nothing is published mid-way");
        let user = world.sim.user("ada@example.com").expect("created in Okta");
        assert_eq!(
            user.profile.get("employeeNumber").and_then(|v| v.as_str()),
            Some("E-1")
        );
    }

    #[tokio::test]
    async fn an_invalid_message_is_dead_lettered_without_calling_okta() {
        let world = world(Setup::default()).await;
        let sink = FakeSink::default();
        let envelope = Envelope {
            message_id: Some("m-1".into()),
            ..Envelope::plain(Lane::Work, INPUT, "employee.added")
        };
        let settlement = world.settle(decoded(envelope, "{not json"), &sink).await;
        let [CopyOf::DeadLetter {
            failure, attempts, ..
        }] = settlement.copies.as_slice()
        else {
            panic!("one dead-letter copy: {:?}", settlement.copies);
        };
        assert_eq!((failure.kind, *attempts), (ErrorKind::Validation, 1));
        assert_eq!(settlement.tally, Tally::Failed(ErrorKind::Validation));
        let outcome = outcome(&settlement);
        assert_eq!(outcome.status, OutcomeStatus::Failed);
        assert_eq!(outcome.source_event_id.as_deref(), Some("m-1"));
        assert_eq!(world.api_requests(), 0);
    }

    #[tokio::test]
    async fn an_event_the_trust_rules_refuse_is_a_validation_failure() {
        let world = world(Setup {
            trust: TrustSettings {
                trusted_publishers: Some(["hr".to_owned()].into()),
                ..TrustSettings::default()
            },
            ..Setup::default()
        })
        .await;
        let sink = FakeSink::default();
        let settlement = world.settle(hire(), &sink).await;
        assert_eq!(settlement.tally, Tally::Failed(ErrorKind::Validation));
        let outcome = outcome(&settlement);
        assert_eq!(outcome.source_event_id.as_deref(), Some("h-1"));
        assert_eq!(outcome.employee_id.as_deref(), Some("E-1"));
        assert!(outcome
            .error
            .as_ref()
            .is_some_and(|e| e.message.contains("TRUSTED_PUBLISHERS")));
        assert_eq!(world.api_requests(), 0);
        // The same event from a listed publisher runs.
        let mut trusted = hire();
        trusted.envelope.publisher = Some("hr".into());
        assert_eq!(world.settle(trusted, &sink).await.tally, Tally::Succeeded);
    }

    #[tokio::test]
    async fn a_transient_failure_is_reported_retrying_then_succeeds() {
        let world = world(Setup::default()).await;
        world.fail_next(1, 503, "E0000009");
        let sink = FakeSink::default();
        let settlement = world.settle(hire(), &sink).await;
        let progress = sink.published();
        assert_eq!(progress.len(), 1);
        assert_eq!(progress[0].status, OutcomeStatus::Retrying);
        assert_eq!(progress[0].attempt, 1);
        assert_eq!(
            progress[0].error.as_ref().map(|e| e.kind),
            Some(ErrorKind::Transient)
        );
        let outcome = outcome(&settlement);
        assert_eq!(outcome.status, OutcomeStatus::Succeeded);
        assert_eq!(outcome.attempt, 2);
    }

    #[tokio::test]
    async fn the_last_transient_failure_dead_letters_with_the_attempts_made() {
        let world = world(Setup {
            max_attempts: Some(2),
            ..Setup::default()
        })
        .await;
        world.fail_next(100, 503, "E0000009");
        let sink = FakeSink::default();
        let settlement = world.settle(hire(), &sink).await;
        assert_eq!(sink.published().len(), 1, "one retry, then the end");
        let [CopyOf::DeadLetter {
            failure,
            attempts,
            employee_id,
        }] = settlement.copies.as_slice()
        else {
            panic!("one dead-letter copy: {:?}", settlement.copies);
        };
        assert_eq!((failure.kind, *attempts), (ErrorKind::Transient, 2));
        assert_eq!(employee_id.as_deref(), Some("E-1"));
        assert_eq!(settlement.tally, Tally::Failed(ErrorKind::Transient));
        let outcome = outcome(&settlement);
        assert_eq!(
            (outcome.status, outcome.attempt),
            (OutcomeStatus::Failed, 2)
        );
    }

    #[tokio::test]
    async fn a_rate_limit_never_counts_an_attempt_nor_dead_letters() {
        let world = world(Setup {
            max_attempts: Some(1),
            ..Setup::default()
        })
        .await;
        world.fail_next(3, 429, "E0000047");
        let sink = FakeSink::default();
        let settlement = world.settle(hire(), &sink).await;
        let progress = sink.published();
        assert_eq!(progress.len(), 3);
        for retrying in &progress {
            assert_eq!(retrying.status, OutcomeStatus::Retrying);
            assert_eq!(retrying.attempt, 1);
            assert_eq!(
                retrying.error.as_ref().map(|e| e.kind),
                Some(ErrorKind::RateLimited)
            );
        }
        let outcome = outcome(&settlement);
        assert_eq!(
            (outcome.status, outcome.attempt),
            (OutcomeStatus::Succeeded, 1)
        );
    }

    #[tokio::test]
    async fn a_future_removal_is_parked_and_announced_without_calling_okta() {
        let world = world(Setup::default()).await;
        let sink = FakeSink::default();
        let future = removal(Lane::Work, json!({"effective_at": "2999-01-01T00:00:00Z"}));
        let settlement = world.settle(future, &sink).await;
        let [CopyOf::Parked {
            schedule,
            recheck_until: None,
        }] = settlement.copies.as_slice()
        else {
            panic!("one parked copy: {:?}", settlement.copies);
        };
        assert_eq!(schedule.kind, ScheduledKind::Removal);
        let outcome = outcome(&settlement);
        assert_eq!(outcome.status, OutcomeStatus::Succeeded);
        assert_eq!(
            outcome.actions,
            vec!["removal.scheduled:2999-01-01T00:00:00Z".to_owned()]
        );
        assert_eq!(settlement.tally, Tally::Nothing);
        assert!(matches!(
            settlement.twin,
            Some((_, lanes::Settlement::Other))
        ));
        assert_eq!(world.api_requests(), 0);
    }

    #[tokio::test]
    async fn a_removal_over_the_guard_is_held_and_a_released_one_runs() {
        let world = world(Setup {
            guard: Some(GuardLimits {
                max: 0,
                window: Duration::from_secs(60),
            }),
            ..Setup::default()
        })
        .await;
        let user = world.sim.create_user(
            json!({"login": "ada@example.com", "email": "ada@example.com", "employeeNumber": "E-1", "firstName": "Ada", "lastName": "Lovelace"}),
            UserStatus::Active,
        );
        let sink = FakeSink::default();
        let settlement = world.settle(removal(Lane::Work, json!({})), &sink).await;
        let [CopyOf::Held {
            event_id,
            employee_id,
            limits,
            ..
        }] = settlement.copies.as_slice()
        else {
            panic!("one held copy: {:?}", settlement.copies);
        };
        assert_eq!(event_id, "r-1");
        assert_eq!(employee_id.as_deref(), Some("E-1"));
        assert_eq!(limits.max, 0);
        let outcome = outcome(&settlement);
        assert_eq!(outcome.status, OutcomeStatus::Held);
        assert_eq!(outcome.actions, vec!["removal.held".to_owned()]);
        assert_eq!(world.api_requests(), 0);
        assert_eq!(
            world.sim.user(&user).map(|u| u.status),
            Some(UserStatus::Active)
        );

        let mut released = removal(Lane::Work, json!({}));
        released.envelope.guard_bypass = true;
        released.envelope.twin_routed = false;
        let settlement = world.settle(released, &sink).await;
        assert_eq!(settlement.tally, Tally::Succeeded);
        assert_eq!(
            world.sim.user(&user).map(|u| u.status),
            Some(UserStatus::Deprovisioned)
        );
    }

    #[tokio::test]
    async fn the_later_twin_of_a_settled_removal_is_skipped() {
        let world = world(Setup::default()).await;
        let sink = FakeSink::default();
        let first = removal(Lane::Leavers, json!({}));
        let envelope = first.envelope.clone();
        let settlement = world.settle(first, &sink).await;
        assert!(settlement.outcome.is_some());
        // What the settle step does once the outcome is confirmed.
        let Some((event, settled)) = settlement.twin else {
            panic!("a twin-routed removal is remembered");
        };
        world.worker.lanes.settled(
            envelope.lane,
            &envelope.exchange,
            &envelope.routing_key,
            &event,
            settled,
        );
        let requests = world.api_requests();
        let skipped = world.settle(removal(Lane::Work, json!({})), &sink).await;
        assert!(skipped.outcome.is_none() && skipped.copies.is_empty());
        assert!(!skipped.timed);
        assert_eq!(world.api_requests(), requests, "no Okta call for the twin");
    }

    #[tokio::test]
    async fn the_leavers_copy_of_an_invalid_removal_is_left_to_the_work_lane() {
        let world = world(Setup::default()).await;
        let sink = FakeSink::default();
        let envelope = Envelope {
            twin_routed: true,
            ..Envelope::plain(Lane::Leavers, INPUT, "employee.removed")
        };
        let skipped = world.settle(decoded(envelope.clone(), "{}"), &sink).await;
        assert!(skipped.outcome.is_none() && skipped.copies.is_empty());
        let work = Envelope {
            lane: Lane::Work,
            ..envelope
        };
        let reported = world.settle(decoded(work, "{}"), &sink).await;
        assert_eq!(reported.tally, Tally::Failed(ErrorKind::Validation));
    }

    #[tokio::test]
    async fn a_delivery_handed_back_before_its_turn_is_left_unsettled() {
        let world = world(Setup::default()).await;
        let sink = FakeSink::default();
        let hand_back = CancellationToken::new();
        hand_back.cancel();
        let decoded = hire();
        let turn = world.sequencer.register(decoded.ordering_keys());
        let finished = world.worker.run(decoded, turn, &sink, &hand_back).await;
        assert!(matches!(finished.verdict, Verdict::NotStarted));
        assert_eq!(world.api_requests(), 0);
    }

    #[tokio::test]
    async fn an_unconfirmed_progress_outcome_ends_the_delivery_unsettled() {
        let world = world(Setup::default()).await;
        world.fail_next(1, 503, "E0000009");
        let sink = FakeSink {
            refuse: true,
            ..FakeSink::default()
        };
        let finished = world.run_with(hire(), &sink).await;
        assert!(matches!(
            finished.verdict,
            Verdict::Unconfirmed("not confirmed")
        ));
    }

    #[tokio::test]
    async fn a_delivery_handed_back_while_it_waits_for_okta_is_left_unsettled() {
        // The first failure opens the circuit: the delivery waits for Okta, which
        // nothing here brings back.
        let world = world(Setup {
            outage_threshold: Some(1),
            ..Setup::default()
        })
        .await;
        world.fail_next(1, 503, "E0000009");
        let hand_back = CancellationToken::new();
        let sink = FakeSink {
            hand_back_on_progress: Some(hand_back.clone()),
            ..FakeSink::default()
        };
        let decoded = hire();
        let turn = world.sequencer.register(decoded.ordering_keys());
        let finished = world.worker.run(decoded, turn, &sink, &hand_back).await;
        assert!(matches!(finished.verdict, Verdict::HandedBack));
        assert_eq!(
            sink.published().len(),
            1,
            "its retrying outcome was published"
        );
        assert!(
            world.sim.user("ada@example.com").is_none(),
            "no second attempt"
        );
    }
}
