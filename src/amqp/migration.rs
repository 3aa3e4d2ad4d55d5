//! Upgrading the waiting rooms of earlier versions.
//!
//! Earlier versions parked future-dated events in classic queues
//! (`<work queue>.delay.<bucket>`) and held removals in a classic `<work queue>.held`.
//! A queue's type cannot change, so the at-least-once quorum queues have new names
//! (`super::parking`), and start-up moves what still waits in the old ones:
//! - an old delay queue is first unbound from the delay exchange (nothing new arrives),
//!   then each message is re-published to `<work queue>.retry` — back into the work
//!   queue, where the deferral gate parks it again by its `x-scheduled-for` in the
//!   bucket that fits the time left (moving it to a new bucket queue would restart
//!   that bucket's full TTL and make it late);
//! - the old hold queue's messages go, unchanged, to the new hold queue.
//!
//! Each copy is published `mandatory` and acknowledged only after the broker confirmed
//! it (ack-last): a crash in between leaves the original where it was and at worst
//! makes a duplicate, which converges. An old queue is deleted only when the broker
//! agrees it is empty and unused (`if-empty`, `if-unused`); otherwise it stays, and the
//! next start-up moves what arrived meanwhile (docs/upgrade-queues.md).

use super::parking::ParkingNames;
use super::publisher::{PublishError, Publisher};
use super::topology::{delay_binding, TopologyError, TopologyNames};
use crate::domain::schedule::BUCKETS;
use crate::telemetry::metrics::PublishedMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::Connection;

/// Where the messages of one old queue go.
enum Destination<'a> {
    /// To this exchange, under each message's own routing key (its event type).
    Exchange(&'a str),
    /// To this queue, through the default exchange.
    Queue(&'a str),
}

impl Destination<'_> {
    fn route<'r>(&'r self, routing_key: &'r str) -> (&'r str, &'r str) {
        match self {
            Self::Exchange(exchange) => (exchange, routing_key),
            Self::Queue(queue) => ("", queue),
        }
    }

    fn name(&self) -> &str {
        match self {
            Self::Exchange(name) | Self::Queue(name) => name,
        }
    }
}

/// Moves every message still waiting in an earlier version's queues into the current
/// ones; returns how many were moved.
///
/// # Errors
/// [`TopologyError::Migration`] or [`TopologyError::MigrationPublish`]: the message
/// concerned and every one after it stay in the old queue.
pub async fn migrate_legacy_queues(
    connection: &Connection,
    names: &TopologyNames,
) -> Result<u64, TopologyError> {
    let parking = ParkingNames::for_work_queue(&names.work_queue);
    let mut moved = 0;
    for bucket in &BUCKETS {
        moved += drain(
            connection,
            &parking.legacy_delay_queue(bucket),
            Some((&parking.delay_exchange, delay_binding(bucket))),
            Destination::Exchange(&parking.retry_exchange),
        )
        .await?;
    }
    moved += migrate_legacy_hold_queue(connection, &names.work_queue).await?;
    Ok(moved)
}

/// Moves what waits in the classic hold queue of an earlier version into the current
/// one (which must exist); `held` runs it too, so that during a rolling upgrade it sees
/// removals an older replica held. Returns how many were moved.
///
/// # Errors
/// As [`migrate_legacy_queues`].
pub async fn migrate_legacy_hold_queue(
    connection: &Connection,
    work_queue: &str,
) -> Result<u64, TopologyError> {
    let parking = ParkingNames::for_work_queue(work_queue);
    drain(
        connection,
        &parking.legacy_held_queue,
        None,
        Destination::Queue(&parking.held_queue),
    )
    .await
}

fn broker(queue: &str, doing: &'static str) -> impl FnOnce(lapin::Error) -> TopologyError {
    let queue = queue.to_owned();
    move |source| TopologyError::Migration {
        queue,
        doing,
        source,
    }
}

fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e) if e.get_id() == 404)
}

/// Moves the messages of `legacy`, if it exists, to `destination`, after unbinding it
/// from `unbind`'s exchange; deletes it when it is then empty.
async fn drain(
    connection: &Connection,
    legacy: &str,
    unbind: Option<(&str, FieldTable)>,
    destination: Destination<'_>,
) -> Result<u64, TopologyError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(broker(legacy, "opening a channel"))?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    // A passive declare of a missing queue closes the channel: nothing to move.
    let depth = match channel
        .queue_declare(legacy.into(), passive, FieldTable::default())
        .await
    {
        Ok(queue) => queue.message_count(),
        Err(error) if is_not_found(&error) => return Ok(0),
        Err(error) => return Err(broker(legacy, "looking for it")(error)),
    };
    if let Some((exchange, binding)) = unbind {
        channel
            .queue_unbind(legacy.into(), exchange.into(), "".into(), binding)
            .await
            .map_err(broker(legacy, "unbinding it from the delay exchange"))?;
    }
    let publisher = Publisher::open(connection, "", "")
        .await
        .map_err(broker(legacy, "opening a confirm channel"))?;
    let moved = move_messages(&channel, &publisher, legacy, depth, &destination).await;
    publisher.close().await;
    let moved = moved?;
    if moved > 0 {
        tracing::info!(
            queue = legacy,
            to = destination.name(),
            moved,
            "moved waiting messages out of a queue of an earlier version"
        );
    }
    // The broker refuses to delete a queue that is not empty (or has a consumer): then
    // it stays, and the next start-up moves what is there.
    let deleted = channel
        .queue_delete(
            legacy.into(),
            QueueDeleteOptions {
                if_empty: true,
                if_unused: true,
                ..QueueDeleteOptions::default()
            },
        )
        .await;
    match deleted {
        Ok(_) => {
            tracing::info!(
                queue = legacy,
                "deleted the empty queue of an earlier version"
            );
            let _ = channel.close(200, "migrated".into()).await;
        }
        Err(error) => tracing::warn!(
            queue = legacy,
            error = %error,
            "kept the queue of an earlier version: it is not empty or in use; the next start-up moves its messages"
        ),
    }
    Ok(moved)
}

/// Takes at most `depth` messages (the queue may be filled meanwhile by a replica of an
/// earlier version; the next start-up takes those) and moves each, ack-last.
async fn move_messages(
    channel: &lapin::Channel,
    publisher: &Publisher,
    legacy: &str,
    depth: u32,
    destination: &Destination<'_>,
) -> Result<u64, TopologyError> {
    let mut moved = 0;
    for _ in 0..depth {
        let got = channel
            .basic_get(legacy.into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(broker(legacy, "reading it"))?;
        let Some(got) = got else { break };
        let delivery = got.delivery;
        let (exchange, routing_key) = destination.route(delivery.routing_key.as_str());
        publisher
            .publish(
                PublishedMessage::Parked,
                exchange,
                routing_key,
                &delivery.data,
                delivery.properties.clone(),
                true,
            )
            .await
            .map_err(|source: PublishError| TopologyError::MigrationPublish {
                queue: legacy.to_owned(),
                destination: destination.name().to_owned(),
                source,
            })?;
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(broker(legacy, "acknowledging a moved message"))?;
        moved += 1;
    }
    Ok(moved)
}
