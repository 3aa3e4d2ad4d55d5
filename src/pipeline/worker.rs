//! What happens to one delivery, from parse to acknowledgement.
//!
//! Parse; wait for the employee's turn; provision, retrying transient failures with
//! backoff and waiting out rate limits; publish the outcome (and, on failure, the
//! dead-letter copy) with confirms; only then acknowledge. A delivery whose work is
//! abandoned (shutdown, lost connection) is simply not acknowledged: the broker
//! redelivers it, and provisioning converges when it runs again. A publish that cannot
//! be confirmed ends the session with the employee's turn still held, so that no later
//! event of the employee is acknowledged before this one comes back.

use crate::amqp::publisher::{DeliveredMessage, PublishError, Publisher};
use crate::amqp::{headers, trace};
use crate::domain::event::{
    parse_message_bounded, printable, EventType, HrEvent, RawMessage, ValidationContext,
    ValidationError, DEFAULT_MAX_MESSAGE_BYTES,
};
use crate::domain::outcome::{ErrorKind, Failure, Outcome, OutcomeStatus};
use crate::okta::{pacing, OktaError};
use crate::pipeline::circuit::OktaCircuit;
use crate::pipeline::deferral::{Deferral, Gate};
use crate::pipeline::lanes::{Admission, Lane, Lanes, Settlement};
use crate::pipeline::provisioner::{DeliveryFacts, ProvisionError, Provisioner, Purpose, Report};
use crate::pipeline::retry::RetryPolicy;
use crate::pipeline::sequencer::Turn;
use crate::telemetry::metrics::Metrics;
use crate::trust::Trust;
use lapin::options::BasicAckOptions;
use lapin::types::FieldTable;
use lapin::Acker;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

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

/// What to do after a failed attempt.
enum Next {
    /// Try again after this delay; `counts` says whether the failed attempt counts
    /// against `MAX_ATTEMPTS` (a rate limit does not).
    RetryAfter { delay: Duration, counts: bool },
    /// Okta is down: wait until it answers again, then try without counting.
    RetryWhenOktaAnswers,
    /// Dead-letter.
    GiveUp,
}

/// One delivery, as the consumer loop hands it over.
pub struct Job {
    pub message: DeliveredMessage,
    pub acker: Acker,
    pub parsed: Result<HrEvent, (ValidationError, ValidationContext)>,
    pub turn: Turn,
    /// The queue it came from; [`Lane::Work`] unless the consumer loop says otherwise.
    pub lane: Lane,
}

impl Job {
    /// Reads a delivery; parsing happens here, in the consumer loop, because the
    /// ordering keys come from the body.
    pub fn parse(
        message: DeliveredMessage,
        acker: Acker,
        register: impl FnOnce(Vec<String>) -> Turn,
    ) -> Self {
        Self::parse_bounded(message, acker, DEFAULT_MAX_MESSAGE_BYTES, register)
    }

    /// As [`Job::parse`], refusing bodies over `max_body_bytes` (`MAX_MESSAGE_BYTES`).
    pub fn parse_bounded(
        message: DeliveredMessage,
        acker: Acker,
        max_body_bytes: usize,
        register: impl FnOnce(Vec<String>) -> Turn,
    ) -> Self {
        let parsed = parse_message_bounded(
            RawMessage {
                routing_key: &message.routing_key,
                content_type: message
                    .properties
                    .content_type()
                    .as_ref()
                    .map(|c| c.as_str()),
                body: &message.body,
            },
            max_body_bytes,
        );
        let keys = parsed
            .as_ref()
            .map(HrEvent::ordering_keys)
            .unwrap_or_default();
        let turn = register(keys);
        Self {
            message,
            acker,
            parsed,
            turn,
            lane: Lane::Work,
        }
    }

    /// The event id, as far as the message tells it.
    fn event_id(&self) -> Option<&str> {
        match &self.parsed {
            Ok(event) => Some(event.event_id.as_str()),
            Err((_, context)) => context.event_id.as_deref(),
        }
        .or_else(|| {
            self.message
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str())
        })
    }

    /// The same job, from another lane.
    pub fn in_lane(self, lane: Lane) -> Self {
        Self { lane, ..self }
    }
}

/// How a delivery that was carried out ended, once its outcome was confirmed.
enum Finished {
    Succeeded,
    Failed,
}

/// Why a delivery was left unacknowledged.
enum Abandoned {
    HandedBack,
    Publish(PublishError),
}

impl Worker {
    /// Processes one delivery to its end. `hand_back` stops any waiting (for a turn, a
    /// backoff, a rate-limit window): the delivery is then left for redelivery.
    pub async fn run(&self, job: Job, publisher: &Publisher, hand_back: &CancellationToken) {
        let span = trace::consumer_span(&job.message, job.event_id());
        self.process(job, publisher, hand_back)
            .instrument(span)
            .await
    }

    async fn process(&self, mut job: Job, publisher: &Publisher, hand_back: &CancellationToken) {
        let refused_for = self.admit(&mut job);
        let event_type = printable(&job.message.routing_key);
        let (exchange, routing_key) = (&job.message.exchange, &job.message.routing_key);
        // A removal in both lanes counts as consumed in the lane that processes it.
        let twin_routed = self.lanes.has_twin(exchange, routing_key);
        let timer = self.metrics.delivery_arrived(routing_key);
        if !twin_routed {
            timer.count_consumed();
        }
        let mut skipped_copy = false;
        let result = match job.parsed {
            Err(_)
                if self
                    .lanes
                    .leave_invalid_to_work_lane(job.lane, exchange, routing_key) =>
            {
                tracing::debug!(event_type, "invalid removal left to the work lane's copy");
                skipped_copy = true;
                Ok(())
            }
            Err((ref error, ref context)) => {
                if twin_routed {
                    timer.count_consumed();
                }
                if let Some(reason) = refused_for {
                    self.trust.count_refusal(reason);
                }
                self.reject_invalid(&job.message, error, context, publisher)
                    .await
            }
            Ok(ref event) => {
                tokio::select! {
                    // Biased: once the session hands back, a delivery whose predecessor
                    // gave up its turn unfinished must not start either.
                    biased;
                    _ = hand_back.cancelled() => return,
                    _ = job.turn.wait() => {}
                }
                // Fail safe: who is protected must be known before anything changes.
                tokio::select! {
                    _ = self.provisioner.protected().wait_loaded() => {}
                    _ = hand_back.cancelled() => return,
                }
                match self.lanes.admit(job.lane, exchange, routing_key, event) {
                    Admission::TwinSettled => {
                        tracing::debug!(
                            event_id = event.event_id.as_str(),
                            lane = job.lane.as_str(),
                            "removal already settled by its copy in the other lane"
                        );
                        self.metrics.removal_copy_skipped(job.lane);
                        skipped_copy = true;
                        Ok(())
                    }
                    admission => {
                        if twin_routed {
                            timer.count_consumed();
                        }
                        let overtaken = admission == Admission::OvertakenByRemoval;
                        if overtaken {
                            tracing::info!(
                                event_id = event.event_id.as_str(),
                                event_type = %event.event_type(),
                                "a removal published after this hire was already carried \
                                 out; the account is left offboarded"
                            );
                        }
                        match self.deferral.gate(event, &job.message, publisher).await {
                            Ok(Gate::Provision(purpose)) => self
                                .provision_with_retries(
                                    event,
                                    &job.message,
                                    publisher,
                                    hand_back,
                                    purpose,
                                    overtaken,
                                )
                                .await
                                .map(|finished| {
                                    let settlement = match finished {
                                        Finished::Succeeded => Settlement::CarriedOut,
                                        Finished::Failed => Settlement::Other,
                                    };
                                    self.lanes.settled(
                                        job.lane,
                                        exchange,
                                        routing_key,
                                        event,
                                        settlement,
                                    );
                                }),
                            Ok(Gate::Deferred) => {
                                // Parked or held: its twin must not be parked or held too.
                                self.lanes.settled(
                                    job.lane,
                                    exchange,
                                    routing_key,
                                    event,
                                    Settlement::Other,
                                );
                                Ok(())
                            }
                            Err(e) => Err(Abandoned::Publish(e)),
                        }
                    }
                }
            }
        };
        match result {
            Ok(()) => {
                // A skipped copy's time says nothing about its event.
                if !skipped_copy {
                    timer.completed();
                }
                if let Err(e) = job.acker.ack(BasicAckOptions::default()).await {
                    // The broker will redeliver; processing again converges.
                    tracing::warn!(event_type, error = %e, "acknowledgement failed; the message will be redelivered");
                }
            }
            Err(Abandoned::HandedBack) => {
                tracing::info!(event_type, "delivery handed back to the broker unfinished");
            }
            Err(Abandoned::Publish(e)) => {
                tracing::warn!(
                    event_type,
                    error = crate::telemetry::error_chain(&e),
                    "could not publish; the session ends and the broker returns the \
                     employee's deliveries in order"
                );
                // Releasing the turn now would let the employee's next event run and be
                // acknowledged before this one, which the broker then redelivers after
                // it. The turn is held until the session has handed everything back.
                if publisher.end_session(&e) {
                    hand_back.cancelled().await;
                }
            }
        }
        drop(job.turn);
    }

    /// The first contact with a delivery (`crate::trust`): the message as the service
    /// keeps it (forged own headers removed, publisher recorded, no `user_id` or
    /// `expiration` for any copy to inherit), and an event the trust rules refuse turned
    /// into a `validation` failure; returns the refusal's metric reason.
    fn admit(&self, job: &mut Job) -> Option<&'static str> {
        self.trust.admit_message(&mut job.message);
        let Ok(event) = &job.parsed else {
            return None;
        };
        let (reason, error) = self.trust.refusal(&job.message, event)?;
        tracing::warn!(
            event_id = event.event_id.as_str(),
            event_type = %event.event_type(),
            reason = %error,
            "event refused by the trust rules"
        );
        let context = ValidationContext {
            event_id: Some(event.event_id.as_str().to_owned()),
            employee_id: event.employee_id().map(|i| i.as_str().to_owned()),
            email: event.email().map(|e| e.as_str().to_owned()),
        };
        job.parsed = Err((error, context));
        Some(reason)
    }

    async fn reject_invalid(
        &self,
        message: &DeliveredMessage,
        error: &ValidationError,
        context: &ValidationContext,
        publisher: &Publisher,
    ) -> Result<(), Abandoned> {
        let failure = Failure::new(ErrorKind::Validation, error.to_string());
        let event_id = context.event_id.clone().or_else(|| {
            message
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string())
        });
        tracing::error!(
            event_id = event_id.as_deref().map(printable),
            event_type = printable(&message.routing_key),
            error_kind = "validation",
            reason = %crate::telemetry::pii::scrub_for_log(
                &failure.message,
                &[context.employee_id.as_deref(), context.email.as_deref()]
            ),
            "invalid message dead-lettered"
        );
        let outcome = Outcome {
            source_event_id: event_id,
            event_type: printable(&message.routing_key),
            status: OutcomeStatus::Failed,
            employee_id: context.employee_id.clone(),
            email: context.email.clone(),
            okta_user_id: None,
            actions: vec![],
            unmapped_groups: vec![],
            attempt: 1,
            error: Some(failure.clone()),
            completed_at: OffsetDateTime::now_utc(),
            dry_run: self.provisioner.okta().is_dry_run(),
        };
        publisher
            .dead_letter(message, &failure, 1, context.employee_id.as_deref())
            .await
            .map_err(Abandoned::Publish)?;
        publisher
            .publish_outcome(&outcome, trace_of(message))
            .await
            .map_err(Abandoned::Publish)
            .inspect(|()| {
                self.metrics
                    .event_failed(&message.routing_key, ErrorKind::Validation)
            })
    }

    async fn provision_with_retries(
        &self,
        event: &HrEvent,
        message: &DeliveredMessage,
        publisher: &Publisher,
        hand_back: &CancellationToken,
        purpose: Purpose,
        overtaken_by_removal: bool,
    ) -> Result<Finished, Abandoned> {
        let dry_run = self.provisioner.okta().is_dry_run();
        let facts = DeliveryFacts {
            purpose,
            overtaken_by_removal,
            replay_count: headers::get_u64(
                message.properties.headers().as_ref(),
                headers::REPLAY_COUNT,
            )
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
            .unwrap_or(0),
        };
        let mut attempt = 1u32;
        loop {
            let provisioning = self.provisioner.provision(event, facts);
            let error = match pacing::with_priority(pacing_priority(event), provisioning).await {
                Ok(mut report) => {
                    self.circuit.record_success();
                    self.deferral
                        .after_provisioning(purpose, message, &mut report, publisher)
                        .await
                        .map_err(Abandoned::Publish)?;
                    // A removal that found nobody by a lagging search is checked again.
                    let recheck = self
                        .deferral
                        .recheck_if_unproven(event, message, &mut report, publisher)
                        .await
                        .map_err(Abandoned::Publish)?;
                    if let Some(failure) = recheck {
                        let outcome = outcome_for(
                            event,
                            OutcomeStatus::Retrying,
                            attempt,
                            Some(report),
                            Some(failure),
                            dry_run,
                        );
                        return publisher
                            .publish_outcome(&outcome, trace_of(message))
                            .await
                            .map_err(Abandoned::Publish)
                            .inspect(|()| {
                                self.metrics
                                    .event_retried(&message.routing_key, ErrorKind::Transient)
                            })
                            .map(|()| Finished::Succeeded);
                    }
                    let outcome = outcome_for(
                        event,
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
                    return publisher
                        .publish_outcome(&outcome, trace_of(message))
                        .await
                        .map_err(Abandoned::Publish)
                        .inspect(|()| self.metrics.event_succeeded(&message.routing_key))
                        .map(|()| Finished::Succeeded);
                }
                Err(error) => error,
            };
            let failure = error.to_failure();
            let next = match failure.kind {
                ErrorKind::RateLimited => Next::RetryAfter {
                    delay: rate_limit_wait(&error),
                    counts: false,
                },
                ErrorKind::Transient => {
                    // Recorded before deciding, so the failure that reveals an outage is
                    // itself held rather than dead-lettered.
                    self.circuit.record_transient_failure();
                    if self.circuit.is_open() {
                        Next::RetryWhenOktaAnswers
                    } else if self.retry.allows_another_after(attempt) {
                        Next::RetryAfter {
                            delay: self.retry.backoff(attempt, fastrand::f64()),
                            counts: true,
                        }
                    } else {
                        Next::GiveUp
                    }
                }
                _ => {
                    // Okta answered (or the problem is ours): it is up.
                    self.circuit.record_success();
                    Next::GiveUp
                }
            };
            if matches!(next, Next::GiveUp) {
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
                let outcome = outcome_for(
                    event,
                    OutcomeStatus::Failed,
                    attempt,
                    None,
                    Some(failure.clone()),
                    dry_run,
                );
                publisher
                    .dead_letter(
                        message,
                        &failure,
                        attempt,
                        event.employee_id().map(|i| i.as_str()),
                    )
                    .await
                    .map_err(Abandoned::Publish)?;
                return publisher
                    .publish_outcome(&outcome, trace_of(message))
                    .await
                    .map_err(Abandoned::Publish)
                    .inspect(|()| {
                        self.metrics
                            .event_failed(&message.routing_key, failure.kind)
                    })
                    .map(|()| Finished::Failed);
            }
            let shown_delay = match next {
                Next::RetryAfter { delay, .. } => delay.as_millis() as u64,
                _ => 0,
            };
            tracing::warn!(
                event_id = event.event_id.as_str(),
                event_type = %event.event_type(),
                error_kind = failure.kind.as_str(),
                okta_request_id = failure.okta_request_id.as_deref(),
                attempt,
                retry_in_ms = shown_delay,
                waiting_for_okta = matches!(next, Next::RetryWhenOktaAnswers),
                error = %crate::telemetry::pii::scrub_event(&failure.message, event),
                "event will be retried"
            );
            let outcome = outcome_for(
                event,
                OutcomeStatus::Retrying,
                attempt,
                None,
                Some(failure.clone()),
                dry_run,
            );
            publisher
                .publish_outcome(&outcome, trace_of(message))
                .await
                .map_err(Abandoned::Publish)?;
            self.metrics
                .event_retried(&message.routing_key, failure.kind);
            match next {
                Next::RetryAfter { delay, counts } => {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = hand_back.cancelled() => return Err(Abandoned::HandedBack),
                    }
                    if counts {
                        attempt += 1;
                    }
                }
                Next::RetryWhenOktaAnswers => {
                    tokio::select! {
                        _ = self.circuit.wait_closed() => {}
                        _ = hand_back.cancelled() => return Err(Abandoned::HandedBack),
                    }
                }
                Next::GiveUp => {}
            }
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

fn rate_limit_wait(error: &ProvisionError) -> Duration {
    match error {
        ProvisionError::Okta(OktaError::RateLimited { retry_after, .. }) => *retry_after,
        _ => Duration::from_secs(1),
    }
}

fn trace_of(message: &DeliveredMessage) -> FieldTable {
    headers::trace_context(message.properties.headers().as_ref())
}

fn outcome_for(
    event: &HrEvent,
    status: OutcomeStatus,
    attempt: u32,
    report: Option<Report>,
    error: Option<Failure>,
    dry_run: bool,
) -> Outcome {
    let report = report.unwrap_or_default();
    Outcome {
        source_event_id: Some(event.event_id.as_str().to_owned()),
        event_type: event.event_type().as_str().to_owned(),
        status,
        employee_id: event.employee_id().map(|i| i.as_str().to_owned()),
        email: event.email().map(|e| e.as_str().to_owned()),
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
