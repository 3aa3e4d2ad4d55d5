//! Partitioned mode's intake: moves messages from the contract's work queue to the
//! partitions exchange, each with its employee's hash key, in order, acknowledging a
//! message only after the broker confirmed its copy (ack-last).
//!
//! Exactly one replica is the intake at a time, or per-employee order would be lost
//! before partitioning (two intakes would race each other's messages to the partitions).
//! The work queue's arguments are the contract's and cannot gain single-active-consumer,
//! so the intake is elected with an exclusive queue, `<work queue>.intake-lock`: the
//! broker lets one connection own it and deletes it when that connection ends, and the
//! intake consumes on that same connection, so a replica that lost the lock has lost its
//! consumer too. The others try again every [`LOCK_RETRY`].
//!
//! If anything fails, the intake stops and closes its channels: what was not acknowledged
//! goes back to the work queue, ahead of newer messages, and is moved again in order. A
//! copy may then reach its partition twice; processing converges, so a duplicate is
//! harmless, and the last event of an employee stays the last.

use super::headers;
use super::publisher::dead_letter_headers::ORIGINAL_EXCHANGE;
use super::topology::{TopologyNames, PARTITION_KEY_HEADER};
use crate::domain::event::printable;
use crate::domain::partition::{hash_key, HashKey};
use crate::trust::Trust;
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Confirmation, Connection};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a replica that is not the intake asks for the lock again: the longest the
/// work queue waits for a new intake after the old one died.
pub const LOCK_RETRY: Duration = Duration::from_secs(1);

/// Messages moved but not yet confirmed, at most (the intake channel's prefetch).
pub const INTAKE_PREFETCH: u16 = 256;

/// How long a stopping intake waits for the confirms of what it already moved.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the intake stopped moving messages.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("broker error in the intake")]
    Broker(#[from] lapin::Error),
    #[error("the broker did not accept a message re-published to '{exchange}' ({reason})")]
    NotConfirmed {
        exchange: String,
        reason: &'static str,
    },
}

/// What the intake needs to know.
#[derive(Debug, Clone)]
pub struct Intake {
    pub names: TopologyNames,
    /// Bodies over this size are not parsed for a key (`MAX_MESSAGE_BYTES`).
    pub max_body_bytes: usize,
    /// After the intake every delivery comes from the partitions exchange, an own route,
    /// so the intake is where a message from outside loses forged own headers (and its
    /// `user_id`, recorded, and `expiration`): `crate::trust`.
    pub trust: Trust,
}

/// RabbitMQ's reply code when another connection owns an exclusive queue.
const RESOURCE_LOCKED: u16 = 405;

fn is_resource_locked(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == RESOURCE_LOCKED)
}

impl Intake {
    /// Waits until this connection owns the intake lock, then moves messages until `stop`
    /// or a failure. Returns `Ok` when stopped.
    ///
    /// # Errors
    /// [`IntakeError`] when the connection or a publish failed; the caller may try again.
    pub async fn run(
        &self,
        connection: &Connection,
        stop: &CancellationToken,
    ) -> Result<(), IntakeError> {
        let mut waiting_logged = false;
        loop {
            let channel = connection.create_channel().await?;
            match channel
                .queue_declare(
                    self.names.intake_lock_queue().as_str().into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
            {
                Ok(_) => break,
                Err(e) if is_resource_locked(&e) => {
                    if !waiting_logged {
                        tracing::info!("another replica is the intake; standing by");
                        waiting_logged = true;
                    }
                }
                Err(e) => return Err(e.into()),
            }
            tokio::select! {
                _ = tokio::time::sleep(LOCK_RETRY) => {}
                _ = stop.cancelled() => return Ok(()),
            }
        }
        tracing::info!(
            work_queue = %self.names.work_queue,
            exchange = %self.names.partitions_exchange(),
            "this replica is the intake: moving the work queue to the partitions"
        );
        let input = connection.create_channel().await?;
        let output = connection.create_channel().await?;
        let moved = self.move_messages(&input, &output, stop).await;
        // Whatever was not acknowledged goes back to the work queue, in order.
        let _ = input.close(200, "intake stopped".into()).await;
        let _ = output.close(200, "intake stopped".into()).await;
        moved
    }

    async fn move_messages(
        &self,
        input: &Channel,
        output: &Channel,
        stop: &CancellationToken,
    ) -> Result<(), IntakeError> {
        input
            .basic_qos(INTAKE_PREFETCH, BasicQosOptions::default())
            .await?;
        output
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut consumer = input
            .basic_consume(
                self.names.work_queue.as_str().into(),
                "iam-provisioner intake".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let exchange = self.names.partitions_exchange();
        // Confirms complete in publish order; each acknowledges its delivery.
        let mut pending = FuturesOrdered::new();
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Some(confirmed) = pending.next(), if !pending.is_empty() => {
                    acknowledge(confirmed, &exchange).await?;
                }
                next = consumer.next(), if pending.len() < usize::from(INTAKE_PREFETCH) => {
                    let Some(delivery) = next else {
                        return Err(IntakeError::NotConfirmed {
                            exchange,
                            reason: "the broker cancelled the intake's consumer",
                        });
                    };
                    let delivery = delivery?;
                    let key = hash_key(
                        &delivery.data,
                        delivery.properties.message_id().as_ref().map(|m| m.as_str()),
                        self.max_body_bytes,
                    );
                    if !matches!(key, HashKey::EmployeeId(_)) {
                        tracing::info!(
                            key_kind = key.kind(),
                            event_type = printable(delivery.routing_key.as_str()),
                            "message without an employee id: partitioned by its {}",
                            if matches!(key, HashKey::Email(_)) { "email" } else { "event id" }
                        );
                    }
                    let admitted = super::decode::admit_from(&self.trust, delivery.exchange.as_str(), &delivery.properties);
                    let mut table = admitted.headers().clone().unwrap_or_default();
                    headers::set_str(&mut table, PARTITION_KEY_HEADER, &key.header_value());
                    if headers::get_str(Some(&table), ORIGINAL_EXCHANGE).is_none() {
                        headers::set_str(&mut table, ORIGINAL_EXCHANGE, delivery.exchange.as_str());
                    }
                    let properties = admitted.with_headers(table);
                    let confirm = output
                        .basic_publish(
                            exchange.as_str().into(),
                            delivery.routing_key.as_str().into(),
                            BasicPublishOptions {
                                mandatory: true,
                                ..BasicPublishOptions::default()
                            },
                            &delivery.data,
                            properties,
                        )
                        .await?;
                    let acker = delivery.acker;
                    pending.push_back(async move { (acker, confirm.await) });
                }
            }
        }
        // Stopping: take nothing more, and acknowledge what the broker confirms in time.
        let _ = input
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await;
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while let Some(confirmed) = pending.next().await {
                acknowledge(confirmed, &exchange).await?;
            }
            Ok::<(), IntakeError>(())
        })
        .await;
        match drained {
            Ok(result) => result,
            // Unacknowledged messages return to the work queue when the channel closes.
            Err(_) => Ok(()),
        }
    }
}

async fn acknowledge(
    (acker, confirmation): (lapin::Acker, Result<Confirmation, lapin::Error>),
    exchange: &str,
) -> Result<(), IntakeError> {
    let not_confirmed = |reason| IntakeError::NotConfirmed {
        exchange: exchange.to_owned(),
        reason,
    };
    match confirmation? {
        Confirmation::Ack(None) | Confirmation::NotRequested => {}
        Confirmation::Ack(Some(_)) => {
            return Err(not_confirmed(
                "no partition queue is bound; the message was returned",
            ))
        }
        Confirmation::Nack(_) => return Err(not_confirmed("nack")),
    }
    acker.ack(BasicAckOptions::default()).await?;
    Ok(())
}
