//! The broker topology of contract section 1, declared idempotently at start-up.
//!
//! A declaration never deletes anything: when an object exists with other arguments the
//! broker refuses (`PRECONDITION_FAILED`), and start-up stops with a message naming the
//! object and the broker's description of the differing argument.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

/// The type of the work queue (`QUEUE_TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// Replicated, durable, the default; RabbitMQ's recommendation for work queues.
    Quorum,
    /// A single-node classic queue, for brokers or tests that want it.
    Classic,
}

impl QueueType {
    /// Parses the configuration value.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "quorum" => Some(Self::Quorum),
            "classic" => Some(Self::Classic),
            _ => None,
        }
    }
}

/// The names of every broker object (contract sections 1 and 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyNames {
    pub input_exchange: String,
    pub work_queue: String,
    pub results_exchange: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub queue_type: QueueType,
}

impl TopologyNames {
    /// The contract's default names, every one with `prefix` in front (tests use a
    /// unique prefix so they can run in parallel on one broker).
    pub fn prefixed(prefix: &str) -> Self {
        Self {
            input_exchange: format!("{prefix}hr.events"),
            work_queue: format!("{prefix}iam-provisioner"),
            results_exchange: format!("{prefix}identity.results"),
            dead_letter_exchange: format!("{prefix}iam-provisioner.dlx"),
            dead_letter_queue: format!("{prefix}iam-provisioner.dlq"),
            queue_type: QueueType::Quorum,
        }
    }

    /// The exchange `iam-provisioner replay` publishes to: `<work queue>.replay`, bound to
    /// the work queue alone, so a replayed message reaches this service and no other
    /// subscriber of the input exchange. Derived from the work queue's name (the
    /// contract names extra objects with that prefix), hence not configurable on its own.
    pub fn replay_exchange(&self) -> String {
        format!("{}.replay", self.work_queue)
    }
}

/// The binding key of the work queue on the input exchange.
pub const WORK_BINDING_KEY: &str = "employee.*";

/// The binding key of the work queue on the replay exchange: everything, because the
/// operator chose what to replay and the worker judges the routing key itself.
pub const REPLAY_BINDING_KEY: &str = "#";

/// Why the topology could not be declared.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot declare {object} '{name}' (it may exist with other arguments; nothing was changed)"
)]
pub struct TopologyError {
    pub object: &'static str,
    pub name: String,
    #[source]
    pub source: lapin::Error,
}

/// Declares every exchange, queue and binding; idempotent.
///
/// # Errors
/// [`TopologyError`] for the first object the broker refused.
pub async fn declare(channel: &Channel, names: &TopologyNames) -> Result<(), TopologyError> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    for exchange in [
        &names.input_exchange,
        &names.results_exchange,
        &names.dead_letter_exchange,
        &names.replay_exchange(),
    ] {
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                durable_exchange,
                FieldTable::default(),
            )
            .await
            .map_err(|source| TopologyError {
                object: "exchange",
                name: exchange.clone(),
                source,
            })?;
    }

    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    // The dead-letter queue is a classic queue: operators browse it by consuming and
    // returning messages, which classic queues allow any number of times, in order.
    channel
        .queue_declare(
            names.dead_letter_queue.as_str().into(),
            durable_queue,
            FieldTable::default(),
        )
        .await
        .map_err(|source| TopologyError {
            object: "queue",
            name: names.dead_letter_queue.clone(),
            source,
        })?;
    bind(
        channel,
        &names.dead_letter_queue,
        &names.dead_letter_exchange,
        "#",
    )
    .await?;

    let mut work_arguments = FieldTable::default();
    if names.queue_type == QueueType::Quorum {
        work_arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    // Anything the broker itself dead-letters (an operator's reject, a delivery limit)
    // lands with the rest of the failures.
    work_arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(names.dead_letter_exchange.as_str().into()),
    );
    channel
        .queue_declare(
            names.work_queue.as_str().into(),
            durable_queue,
            work_arguments,
        )
        .await
        .map_err(|source| TopologyError {
            object: "queue",
            name: names.work_queue.clone(),
            source,
        })?;
    bind(
        channel,
        &names.work_queue,
        &names.input_exchange,
        WORK_BINDING_KEY,
    )
    .await?;
    bind(
        channel,
        &names.work_queue,
        &names.replay_exchange(),
        REPLAY_BINDING_KEY,
    )
    .await?;
    // Delay queues, the hold queue and the way back into the work queue.
    super::parking::declare(channel, &names.work_queue).await?;
    Ok(())
}

async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
) -> Result<(), TopologyError> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|source| TopologyError {
            object: "binding of queue",
            name: format!("{queue}' to exchange '{exchange}' with key '{key}"),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_exchange_carries_the_work_queues_name() {
        assert_eq!(
            TopologyNames::prefixed("").replay_exchange(),
            "iam-provisioner.replay"
        );
        let names = TopologyNames {
            work_queue: "hr-sync".into(),
            ..TopologyNames::prefixed("")
        };
        assert_eq!(names.replay_exchange(), "hr-sync.replay");
    }
}
