//! Settling a delivery: the one place that carries out what the worker decided.
//!
//! The copies a delivery causes (dead letter, parked, held, re-check) are published
//! first, then its outcome, each with the broker's confirm; the lanes then remember a
//! settled removal twin, and only then is the delivery acknowledged. A publish that
//! could not be confirmed leaves the delivery unacknowledged and ends the session with
//! the employee's turn still held, so that no later event of the employee is
//! acknowledged before this one comes back. A crash in between leaves the delivery to
//! be redelivered; a duplicate copy is harmless, because a due event converges when it
//! runs.
//!
//! [`deliver`] is the whole path of one delivery after decoding: the consumer span,
//! the worker, then [`settle`]. [`Progress`] is the worker's [`OutcomeSink`] for the
//! `retrying` outcomes it publishes between attempts.

use super::decode::{trace_table, Inbound};
use super::parking::{self, ParkingNames};
use super::publisher::{DeliveredMessage, PublishError, Publisher};
use super::trace;
use crate::domain::event::printable;
use crate::domain::outcome::Outcome;
use crate::domain::schedule;
use crate::pipeline::envelope::{Decoded, Envelope};
use crate::pipeline::lanes::Lanes;
use crate::pipeline::sequencer::Turn;
use crate::pipeline::settlement::{CopyOf, Finished, OutcomeSink, Settlement, Tally, Verdict};
use crate::pipeline::worker::Worker;
use crate::telemetry::metrics::Metrics;
use lapin::options::BasicAckOptions;
use lapin::types::FieldTable;
use std::future::Future;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Publishes the worker's `retrying` outcomes, with the delivery's trace context.
pub struct Progress<'a> {
    publisher: &'a Publisher,
    trace_context: FieldTable,
}

impl OutcomeSink for Progress<'_> {
    type Error = PublishError;

    fn progress(&self, outcome: &Outcome) -> impl Future<Output = Result<(), PublishError>> + Send {
        self.publisher
            .publish_outcome(outcome, self.trace_context.clone())
    }
}

/// What settling needs besides the delivery.
pub struct Settler<'a> {
    pub publisher: &'a Publisher,
    /// The work queue whose waiting rooms parked and held copies go to.
    pub work_queue: &'a str,
    pub lanes: &'a Lanes,
    pub metrics: &'a Metrics,
}

/// One delivery from its decoding to its acknowledgement: `worker` takes it to its end
/// inside its consumer span, then it is settled. `hand_back` stops any waiting; the
/// delivery is then left for redelivery.
pub async fn deliver(
    worker: &Worker,
    inbound: Inbound,
    decoded: Decoded,
    turn: Turn,
    publisher: &Publisher,
    hand_back: &CancellationToken,
) {
    let span = trace::consumer_span(&decoded.envelope, decoded.event_id());
    async {
        let sink = Progress {
            publisher,
            trace_context: trace_table(&decoded.envelope),
        };
        let finished = worker.run(decoded, turn, &sink, hand_back).await;
        let settler = Settler {
            publisher,
            work_queue: worker.deferral.work_queue(),
            lanes: &worker.lanes,
            metrics: &worker.metrics,
        };
        settle(&settler, inbound, finished, hand_back).await;
    }
    .instrument(span)
    .await
}

/// Why a delivery is left unacknowledged.
enum Unsettled {
    HandedBack,
    Unconfirmed(PublishError),
}

/// Carries out `finished`: publishes, records, acknowledges; or leaves the delivery
/// unacknowledged (see the module documentation).
pub async fn settle(
    settler: &Settler<'_>,
    inbound: Inbound,
    finished: Finished<PublishError>,
    hand_back: &CancellationToken,
) {
    let Finished {
        verdict,
        envelope,
        turn,
        timer,
    } = finished;
    let Inbound { message, acker } = inbound;
    let event_type = printable(&envelope.routing_key);
    let settled = match verdict {
        Verdict::Settle(settlement) => publish(settler, &message, &envelope, *settlement)
            .await
            .map_err(Unsettled::Unconfirmed),
        // Nothing began: the broker redelivers it, nothing to say.
        Verdict::NotStarted => return,
        Verdict::HandedBack => Err(Unsettled::HandedBack),
        Verdict::Unconfirmed(e) => Err(Unsettled::Unconfirmed(e)),
    };
    match settled {
        Ok(timed) => {
            // A skipped copy's time says nothing about its event.
            if timed {
                timer.completed();
            }
            if let Err(e) = acker.ack(BasicAckOptions::default()).await {
                // The broker will redeliver; processing again converges.
                tracing::warn!(event_type, error = %e, "acknowledgement failed; the message will be redelivered");
            }
        }
        Err(Unsettled::HandedBack) => {
            tracing::info!(event_type, "delivery handed back to the broker unfinished");
        }
        Err(Unsettled::Unconfirmed(e)) => {
            tracing::warn!(
                event_type,
                error = crate::telemetry::error_chain(&e),
                "could not publish; the session ends and the broker returns the \
                 employee's deliveries in order"
            );
            // Releasing the turn now would let the employee's next event run and be
            // acknowledged before this one, which the broker then redelivers after
            // it. The turn is held until the session has handed everything back.
            if settler.publisher.end_session(&e) {
                hand_back.cancelled().await;
            }
        }
    }
    drop(turn);
}

/// Publishes a settlement's copies and outcome, each confirmed, then records it;
/// returns whether the delivery's time counts.
async fn publish(
    settler: &Settler<'_>,
    message: &DeliveredMessage,
    envelope: &Envelope,
    settlement: Settlement,
) -> Result<bool, PublishError> {
    let Settlement {
        copies,
        outcome,
        tally,
        twin,
        timed,
    } = settlement;
    for copy in &copies {
        publish_copy(settler, message, copy).await?;
    }
    if let Some(outcome) = &outcome {
        settler
            .publisher
            .publish_outcome(outcome, trace_table(envelope))
            .await?;
    }
    let routing_key = &envelope.routing_key;
    match tally {
        Tally::Nothing => {}
        Tally::Succeeded => settler.metrics.event_succeeded(routing_key),
        Tally::Retried(kind) => settler.metrics.event_retried(routing_key, kind),
        Tally::Failed(kind) => settler.metrics.event_failed(routing_key, kind),
    }
    if let Some((event, settled)) = twin {
        settler.lanes.settled(
            envelope.lane,
            &envelope.exchange,
            routing_key,
            &event,
            settled,
        );
    }
    Ok(timed)
}

async fn publish_copy(
    settler: &Settler<'_>,
    message: &DeliveredMessage,
    copy: &CopyOf,
) -> Result<(), PublishError> {
    // Named only for a delivery that has copies to park or hold.
    let names = &ParkingNames::for_work_queue(settler.work_queue);
    match copy {
        CopyOf::DeadLetter {
            failure,
            attempts,
            employee_id,
        } => {
            settler
                .publisher
                .dead_letter(message, failure, *attempts, employee_id.as_deref())
                .await
        }
        CopyOf::Parked {
            schedule: scheduled,
            recheck_until,
        } => {
            let left =
                schedule::remaining(scheduled.due, OffsetDateTime::now_utc()).unwrap_or_default();
            let bucket = schedule::bucket_for(left);
            let out = match recheck_until {
                Some(until) => parking::recheck_copy(names, message, scheduled.due, *until, bucket),
                None => {
                    tracing::debug!(
                        kind = scheduled.kind.as_str(),
                        bucket = bucket.name,
                        left_s = left.as_secs(),
                        "parked until due"
                    );
                    parking::parked_copy(names, message, *scheduled, bucket)
                }
            };
            out.send(settler.publisher).await
        }
        CopyOf::Held {
            event_id,
            employee_id,
            limits,
            at,
        } => {
            tracing::error!(
                event_id = event_id.as_str(),
                employee_id = employee_id.as_deref().map(crate::telemetry::pii::for_log).as_deref(),
                max = limits.max,
                window_s = limits.window.as_secs(),
                held_queue = %names.held_queue,
                "offboarding guard: too many removals at once; removal held for an operator (iam-provisioner held release|discard)"
            );
            parking::held_copy(names, message, employee_id.as_deref(), *at)
                .send(settler.publisher)
                .await
        }
    }
}
