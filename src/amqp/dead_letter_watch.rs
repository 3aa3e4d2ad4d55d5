//! Outcomes for what the broker dead-letters by itself.
//!
//! The worker publishes a `failed` outcome for every message it dead-letters. The broker
//! can dead-letter a message of the work queue without the worker: a quorum queue past
//! its delivery limit (RabbitMQ 4.x sets 20 by default; a message returned unacknowledged
//! that often — crashes, lost sessions, consumer timeouts — is moved to the queue's
//! dead-letter exchange, the contract's), or a TTL or length limit an operator's policy
//! puts on it. The message then reaches the dead-letter queue with only RabbitMQ's
//! `x-death`, and without this module no outcome would say it failed.
//!
//! `<work queue>.dead-letter-watch` is bound to the dead-letter exchange beside the
//! dead-letter queue, so it receives a copy of everything dead-lettered. Each replica
//! consumes it (competing consumers: each copy is handled once). A copy the service
//! dead-lettered itself (it carries `x-error-kind`) is acknowledged at once; one the
//! broker dead-lettered from the work queue or one of its companions gets its `failed`
//! outcome, acknowledged only after the broker confirmed the outcome. The dead-letter
//! queue keeps its own copy for the operator (`dlq list` shows `broker:delivery_limit`).

use super::headers;
use super::publisher::dead_letter_headers as dl;
use super::publisher::{PublishError, Publisher};
use super::topology::TopologyNames;
use crate::domain::event::printable;
use crate::domain::outcome::{ErrorKind, Failure, Outcome, OutcomeStatus};
use crate::secret::Secret;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// Deliveries of the watch queue in flight at once.
const PREFETCH: u16 = 16;

/// Reasons for which the broker's dead-lettering gets an outcome. `rejected` does not: an
/// operator who rejects a message from the work queue decided its fate.
const REPORTED_REASONS: [&str; 3] = ["delivery_limit", "expired", "maxlen"];

/// Why a watch session ended.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("broker error while {doing}")]
    Broker {
        doing: &'static str,
        #[source]
        source: lapin::Error,
    },
    #[error("the broker cancelled the consumer of the dead-letter watch queue")]
    Cancelled,
    #[error("cannot publish the failed outcome of a message the broker dead-lettered; it will be redelivered")]
    Publish(#[from] PublishError),
}

/// RabbitMQ's own dead-lettering history: an array of tables, the most recent first.
pub const X_DEATH: &str = "x-death";

/// What RabbitMQ's latest `x-death` record says: why and from which queue the broker
/// itself dead-lettered a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerDeath {
    /// `delivery_limit`, `expired`, `maxlen` or `rejected`.
    pub reason: String,
    /// The queue the broker took it from.
    pub queue: String,
    /// The routing key it had there: its event type.
    pub routing_key: Option<String>,
}

/// The broker's latest dead-lettering of a message, when the last hand that put it in
/// the dead-letter queue was the broker's and not this service's (a copy the service
/// dead-lettered carries `x-error-kind`, even when an earlier `x-death` is kept).
pub fn broker_death(table: Option<&FieldTable>) -> Option<BrokerDeath> {
    if headers::get_str(table, dl::ERROR_KIND).is_some() {
        return None;
    }
    let death = last_death(table)?;
    Some(BrokerDeath {
        reason: table_str(death, "reason")?,
        queue: table_str(death, "queue")?,
        routing_key: death_routing_key(death),
    })
}

/// The most recent record of RabbitMQ's `x-death` header.
pub fn last_death(table: Option<&FieldTable>) -> Option<&FieldTable> {
    match table?.inner().get(X_DEATH)? {
        AMQPValue::FieldArray(records) => records.as_slice().iter().find_map(|r| match r {
            AMQPValue::FieldTable(record) => Some(record),
            _ => None,
        }),
        _ => None,
    }
}

/// A non-empty string field of an `x-death` record.
pub fn table_str(table: &FieldTable, name: &str) -> Option<String> {
    headers::get_str(Some(table), name)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The first routing key an `x-death` record names.
pub fn death_routing_key(death: &FieldTable) -> Option<String> {
    match death.inner().get("routing-keys")? {
        AMQPValue::FieldArray(keys) => keys.as_slice().iter().find_map(|k| match k {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            _ => None,
        }),
        _ => None,
    }
}

/// The `failed` outcome owed for a dead-lettered message, if the broker (not this
/// service) dead-lettered it from `names`' work queue or a queue named after it.
pub fn outcome_for_broker_dead_letter(
    names: &TopologyNames,
    delivered_routing_key: &str,
    properties: &BasicProperties,
    body: &[u8],
    now: OffsetDateTime,
) -> Option<Outcome> {
    let death = broker_death(properties.headers().as_ref())?;
    let ours = death.queue == names.work_queue
        || death.queue.starts_with(&format!("{}.", names.work_queue));
    if !ours || !REPORTED_REASONS.contains(&death.reason.as_str()) {
        return None;
    }
    let body: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let text = |pointer: &str| {
        body.as_ref()
            .and_then(|b| b.pointer(pointer))
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
            .map(printable)
    };
    let table = properties.headers().as_ref();
    // A held removal reached the hold queue under the queue's name; its event type is
    // in its own header.
    let event_type = headers::get_str(table, super::parking::ORIGINAL_ROUTING_KEY)
        .map(str::to_owned)
        .or_else(|| death.routing_key.clone())
        .unwrap_or_else(|| delivered_routing_key.to_owned());
    Some(Outcome {
        source_event_id: text("/event_id").or_else(|| {
            properties
                .message_id()
                .as_ref()
                .map(|id| printable(id.as_str()))
        }),
        event_type: printable(&event_type),
        status: OutcomeStatus::Failed,
        employee_id: text("/employee/id"),
        email: text("/employee/email"),
        okta_user_id: None,
        actions: vec![],
        unmapped_groups: vec![],
        attempt: 0,
        error: Some(Failure::new(ErrorKind::Transient, failure_message(&death))),
        completed_at: now,
        dry_run: false,
    })
}

fn failure_message(death: &BrokerDeath) -> String {
    let why = match death.reason.as_str() {
        "delivery_limit" => {
            "it was delivered more often than the queue's delivery limit allows without being \
             acknowledged (crashes, lost sessions or consumer timeouts)"
        }
        "expired" => "it expired (a message TTL on the queue)",
        _ => "the queue was over its length limit",
    };
    format!(
        "RabbitMQ dead-lettered the message from queue '{}' ({}): {why}; it is in the \
         dead-letter queue, whether Okta was changed is unknown — replay it",
        printable(&death.queue),
        death.reason
    )
}

/// Watches `<work queue>.dead-letter-watch` until `stop`, reconnecting after a lost
/// session.
pub async fn run(amqp_url: Secret, names: TopologyNames, stop: CancellationToken) {
    const FIRST_DELAY: Duration = Duration::from_millis(200);
    let mut delay = FIRST_DELAY;
    loop {
        let started = tokio::time::Instant::now();
        let ended = session(&amqp_url, &names, &stop).await;
        // A session that ran a while was a working one: the next wait starts short again.
        if started.elapsed() > Duration::from_secs(60) {
            delay = FIRST_DELAY;
        }
        match ended {
            Ok(()) => return,
            Err(error) => tracing::warn!(
                error = %error,
                source = ?std::error::Error::source(&error).map(ToString::to_string),
                "the watch of broker dead-letters stopped; reconnecting"
            ),
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

async fn session(
    amqp_url: &Secret,
    names: &TopologyNames,
    stop: &CancellationToken,
) -> Result<(), WatchError> {
    let broker = |doing| move |source| WatchError::Broker { doing, source };
    let connection = super::connect(
        amqp_url.expose(),
        &format!("{} dead-letter watch", names.work_queue),
    )
    .await
    .map_err(broker("connecting"))?;
    let result = watch(&connection, names, stop).await;
    let _ = connection.close(200, "dead-letter watch done".into()).await;
    result
}

async fn watch(
    connection: &lapin::Connection,
    names: &TopologyNames,
    stop: &CancellationToken,
) -> Result<(), WatchError> {
    let broker = |doing| move |source| WatchError::Broker { doing, source };
    let publisher = Publisher::open(
        connection,
        &names.results_exchange,
        &names.dead_letter_exchange,
    )
    .await
    .map_err(broker("opening the outcome channel"))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(broker("opening a channel"))?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .map_err(broker("setting the prefetch"))?;
    let mut consumer = channel
        .basic_consume(
            names.dead_letter_watch_queue().as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker("consuming the dead-letter watch queue"))?;
    loop {
        let delivery = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            next = consumer.next() => match next {
                Some(delivery) => delivery.map_err(broker("receiving"))?,
                None => return Err(WatchError::Cancelled),
            },
        };
        if let Some(outcome) = outcome_for_broker_dead_letter(
            names,
            delivery.routing_key.as_str(),
            &delivery.properties,
            &delivery.data,
            OffsetDateTime::now_utc(),
        ) {
            tracing::error!(
                event_id = outcome.source_event_id.as_deref().unwrap_or(""),
                event_type = %outcome.event_type,
                reason = outcome.error.as_ref().map(|f| f.message.as_str()).unwrap_or(""),
                "the broker dead-lettered a message by itself; publishing its failed outcome"
            );
            let trace = headers::trace_context(delivery.properties.headers().as_ref());
            publisher.publish_outcome(&outcome, trace).await?;
        }
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(broker("acknowledging"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, FieldArray};
    use time::macros::datetime;

    fn dead_lettered(reason: &str, queue: &str, error_kind: Option<&str>) -> BasicProperties {
        let mut death = FieldTable::default();
        headers::set_str(&mut death, "reason", reason);
        headers::set_str(&mut death, "queue", queue);
        death.insert(
            "routing-keys".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(
                "employee.added".into(),
            )])),
        );
        let mut table = FieldTable::default();
        table.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        if let Some(kind) = error_kind {
            headers::set_str(&mut table, "x-error-kind", kind);
        }
        BasicProperties::default()
            .with_message_id("msg-1".into())
            .with_headers(table)
    }

    const BODY: &[u8] = br#"{"event_id":"ev-1","employee":{"id":"E-1","email":"a@b.c"}}"#;

    fn outcome(properties: &BasicProperties, body: &[u8]) -> Option<Outcome> {
        outcome_for_broker_dead_letter(
            &TopologyNames::prefixed(""),
            "employee.added",
            properties,
            body,
            datetime!(2026-12-01 00:00 UTC),
        )
    }

    #[test]
    fn a_delivery_limit_on_the_work_queue_gets_a_failed_outcome() {
        let failed = outcome(
            &dead_lettered("delivery_limit", "iam-provisioner", None),
            BODY,
        )
        .expect("an outcome");
        assert_eq!(failed.routing_key(), "employee.added.failed");
        assert_eq!(failed.source_event_id.as_deref(), Some("ev-1"));
        assert_eq!(failed.employee_id.as_deref(), Some("E-1"));
        assert_eq!(failed.email.as_deref(), Some("a@b.c"));
        let error = failed.error.expect("error");
        assert_eq!(error.kind, ErrorKind::Transient);
        assert!(
            error.message.contains("delivery_limit"),
            "{}",
            error.message
        );
        // The leavers lane and partitions are named after the work queue.
        assert!(outcome(
            &dead_lettered("delivery_limit", "iam-provisioner.p3", None),
            b"not json"
        )
        .is_some_and(|o| o.source_event_id.as_deref() == Some("msg-1")));
    }

    #[test]
    fn the_services_own_copies_other_queues_and_rejects_get_none() {
        assert!(outcome(
            &dead_lettered("delivery_limit", "iam-provisioner", Some("okta")),
            BODY
        )
        .is_none());
        assert!(outcome(&dead_lettered("delivery_limit", "other-app", None), BODY).is_none());
        assert!(outcome(
            &dead_lettered("delivery_limit", "iam-provisioner-other", None),
            BODY
        )
        .is_none());
        assert!(outcome(&dead_lettered("rejected", "iam-provisioner", None), BODY).is_none());
        assert!(outcome(&BasicProperties::default(), BODY).is_none());
    }
}
