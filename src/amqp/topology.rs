//! The broker topology of contract section 1, declared idempotently at start-up.
//!
//! A declaration never deletes anything: when an object exists with other arguments the
//! broker refuses (`PRECONDITION_FAILED`), and start-up stops with a message naming the
//! object and the broker's description of the differing argument.
//!
//! The waiting rooms of `super::parking` (delay and hold queues, the retry exchange) are
//! declared here too, from the names `parking` gives them, so that the declaration
//! depends on the names and never the other way round.

use super::parking::{ParkingNames, HOLD_DELIVERY_LIMIT};
use crate::domain::schedule::{DelayBucket, BUCKETS, DELAY_BUCKET};
use crate::trust::OwnRoutes;
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

    /// Partitioned mode: the consistent-hash exchange the intake re-publishes to,
    /// `<work queue>.partitions`.
    pub fn partitions_exchange(&self) -> String {
        format!("{}.partitions", self.work_queue)
    }

    /// Partitioned mode: partition queue `index`, `<work queue>.p<index>`.
    pub fn partition_queue(&self, index: u16) -> String {
        format!("{}.p{index}", self.work_queue)
    }

    /// Partitioned mode: the exclusive queue whose owner is the intake,
    /// `<work queue>.intake-lock`. It lives as long as its owner's connection.
    pub fn intake_lock_queue(&self) -> String {
        format!("{}.intake-lock", self.work_queue)
    }

    /// `<work queue>.dead-letter-watch`: a classic queue bound to the dead-letter
    /// exchange beside the dead-letter queue, so that the service sees what the broker
    /// dead-letters by itself (a delivery limit) and publishes its `failed` outcome
    /// (`super::dead_letter_watch`). Operators never need to read it.
    pub fn dead_letter_watch_queue(&self) -> String {
        format!("{}.dead-letter-watch", self.work_queue)
    }

    /// The leavers lane: `<work queue>.leavers`, a second queue bound to the input
    /// exchange for `employee.removed` only, so that a removal never waits behind a
    /// backlog of hires. The work queue keeps its `employee.*` binding (contract §1), so
    /// every removal published there is in both queues; see `crate::pipeline::lanes`.
    pub fn leavers_queue(&self) -> String {
        format!("{}.leavers", self.work_queue)
    }
}

/// The exchange type of the partitions exchange, from the plugin
/// `rabbitmq_consistent_hash_exchange` (shipped with RabbitMQ, not enabled by default).
pub const CONSISTENT_HASH_EXCHANGE: &str = "x-consistent-hash";

/// The header the partitions exchange hashes (`hash-header`); the intake sets it to the
/// employee's key, so the routing key can stay the event type.
pub const PARTITION_KEY_HEADER: &str = "x-partition-key";

/// Points on the hash ring per partition queue (the binding key of a consistent-hash
/// binding is its weight). More points spread keys more evenly; a few dozen is plenty.
pub const PARTITION_WEIGHT: &str = "50";

/// The binding key of the work queue on the input exchange.
pub const WORK_BINDING_KEY: &str = "employee.*";

/// The binding key of the leavers queue on the input exchange.
pub const LEAVERS_BINDING_KEY: &str = "employee.removed";

/// The binding key of the work queue on the replay exchange: everything, because the
/// operator chose what to replay and the worker judges the routing key itself.
pub const REPLAY_BINDING_KEY: &str = "#";

/// Why the topology could not be declared.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(
        "cannot declare {object} '{name}' (it may exist with other arguments; nothing was changed)"
    )]
    Refused {
        object: &'static str,
        name: String,
        #[source]
        source: lapin::Error,
    },
    #[error("cannot upgrade queue '{queue}' of an earlier version while {doing}; its messages stay there")]
    Migration {
        queue: String,
        doing: &'static str,
        #[source]
        source: lapin::Error,
    },
    #[error(
        "cannot move a message from queue '{queue}' of an earlier version to '{destination}'; it stays there"
    )]
    MigrationPublish {
        queue: String,
        destination: String,
        #[source]
        source: super::publisher::PublishError,
    },
    #[error(
        "PARTITIONS is set but the broker has no exchange type '{exchange_type}': enable the \
         plugin with `rabbitmq-plugins enable rabbitmq_consistent_hash_exchange` on every node \
         (see the README, Scaling out)"
    )]
    PluginMissing {
        exchange_type: String,
        #[source]
        source: lapin::Error,
    },
}

impl TopologyError {
    fn refused(object: &'static str, name: impl Into<String>) -> impl FnOnce(lapin::Error) -> Self {
        let name = name.into();
        move |source| TopologyError::Refused {
            object,
            name,
            source,
        }
    }
}

/// Whether the broker refused an exchange declaration because it does not know the
/// exchange type: RabbitMQ closes the connection with 503 `COMMAND_INVALID` and "invalid
/// exchange type" (or "unknown exchange type", depending on the version).
fn is_unknown_exchange_type(error: &lapin::Error) -> bool {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => {
            let text = amqp.get_message().as_str().to_ascii_lowercase();
            amqp.get_id() == 503 && text.contains("exchange type")
        }
        _ => false,
    }
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
            .map_err(TopologyError::refused("exchange", exchange.as_str()))?;
    }

    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    // The dead-letter queue is a classic queue: operators browse it by consuming and
    // returning messages, which classic queues allow any number of times, in order. A
    // quorum queue would count each return as a delivery and, past its delivery limit
    // (20 by default on RabbitMQ 4.x), drop the message. Said explicitly, so that a vhost
    // whose default queue type is quorum cannot choose otherwise; RabbitMQ treats an
    // existing classic queue declared without the argument as equivalent.
    channel
        .queue_declare(
            names.dead_letter_queue.as_str().into(),
            durable_queue,
            dead_letter_queue_arguments(),
        )
        .await
        .map_err(TopologyError::refused("queue", &names.dead_letter_queue))?;
    bind(
        channel,
        &names.dead_letter_queue,
        &names.dead_letter_exchange,
        "#",
    )
    .await?;
    let watch = names.dead_letter_watch_queue();
    channel
        .queue_declare(
            watch.as_str().into(),
            durable_queue,
            dead_letter_queue_arguments(),
        )
        .await
        .map_err(TopologyError::refused("queue", &watch))?;
    bind(channel, &watch, &names.dead_letter_exchange, "#").await?;

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
    // The leavers queue has the work queue's arguments: same type, same dead-lettering.
    for queue in [names.work_queue.clone(), names.leavers_queue()] {
        channel
            .queue_declare(queue.as_str().into(), durable_queue, work_arguments.clone())
            .await
            .map_err(TopologyError::refused("queue", &queue))?;
    }
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
    // Replays go to the work queue alone (above): a replayed removal has no twin.
    bind(
        channel,
        &names.leavers_queue(),
        &names.input_exchange,
        LEAVERS_BINDING_KEY,
    )
    .await?;
    // Delay queues, the hold queue and the way back into the work queue.
    declare_waiting_rooms(channel, &names.work_queue, &names.dead_letter_exchange).await?;
    Ok(())
}

/// The arguments of the dead-letter queue: an explicit classic type (see [`declare`]).
pub fn dead_letter_queue_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    arguments
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
        .map_err(TopologyError::refused(
            "binding of queue",
            format!("{queue}' to exchange '{exchange}' with key '{key}"),
        ))
}

/// Partitioned mode: declares the partitions exchange (consistent hash on
/// [`PARTITION_KEY_HEADER`]) and `partitions` queues, each with single active consumer and
/// dead-lettering like the work queue, bound with weight [`PARTITION_WEIGHT`]. Like
/// [`declare`], it never deletes anything: lowering `PARTITIONS` leaves the higher queues
/// bound (the README says how to retire them).
///
/// # Errors
/// [`TopologyError::PluginMissing`] when the broker lacks the exchange type, else
/// [`TopologyError::Refused`] for the first object the broker refused.
pub async fn declare_partitions(
    channel: &Channel,
    names: &TopologyNames,
    partitions: u16,
) -> Result<(), TopologyError> {
    declare_partitions_of_type(channel, names, partitions, CONSISTENT_HASH_EXCHANGE).await
}

/// [`declare_partitions`] with another exchange type; tests use a type no broker has to
/// see the missing-plugin error without disabling the plugin on a shared broker.
#[doc(hidden)]
pub async fn declare_partitions_of_type(
    channel: &Channel,
    names: &TopologyNames,
    partitions: u16,
    exchange_type: &str,
) -> Result<(), TopologyError> {
    let exchange = names.partitions_exchange();
    let mut arguments = FieldTable::default();
    arguments.insert(
        "hash-header".into(),
        AMQPValue::LongString(PARTITION_KEY_HEADER.into()),
    );
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Custom(exchange_type.to_owned()),
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            arguments,
        )
        .await
        .map_err(|source| {
            if is_unknown_exchange_type(&source) {
                TopologyError::PluginMissing {
                    exchange_type: exchange_type.to_owned(),
                    source,
                }
            } else {
                TopologyError::Refused {
                    object: "exchange",
                    name: exchange.clone(),
                    source,
                }
            }
        })?;
    for index in 0..partitions {
        let queue = names.partition_queue(index);
        let mut arguments = FieldTable::default();
        if names.queue_type == QueueType::Quorum {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(names.dead_letter_exchange.as_str().into()),
        );
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .map_err(TopologyError::refused("queue", &queue))?;
        bind(channel, &queue, &exchange, PARTITION_WEIGHT).await?;
    }
    Ok(())
}

/// The arguments every quorum waiting-room queue shares: an explicit type, and
/// at-least-once dead-lettering to `dead_letter_exchange`, which needs `reject-publish`.
fn at_least_once_arguments(dead_letter_exchange: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(dead_letter_exchange.into()),
    );
    arguments.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString("at-least-once".into()),
    );
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    arguments
}

/// The arguments of the queue of `bucket`.
pub fn delay_queue_arguments(names: &ParkingNames, bucket: &DelayBucket) -> FieldTable {
    let mut arguments = at_least_once_arguments(&names.retry_exchange);
    // A queue TTL expires messages in order, head first (quorum queues since 3.10).
    arguments.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(i64::try_from(bucket.ttl.as_millis()).unwrap_or(i64::MAX)),
    );
    arguments
}

/// The arguments of the hold queue: a held removal the broker ever dead-letters (past
/// [`HOLD_DELIVERY_LIMIT`]) goes to the contract's dead-letter exchange, never nowhere.
pub fn hold_queue_arguments(dead_letter_exchange: &str) -> FieldTable {
    let mut arguments = at_least_once_arguments(dead_letter_exchange);
    arguments.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(HOLD_DELIVERY_LIMIT),
    );
    arguments
}

fn declare_error(object: &'static str, name: &str) -> impl FnOnce(lapin::Error) -> TopologyError {
    let name = name.to_owned();
    move |source| TopologyError::Refused {
        object,
        name,
        source,
    }
}

/// Declares the waiting-room objects of `work_queue` (`super::parking`) (which must exist); idempotent.
/// `dead_letter_exchange` receives what the broker dead-letters from the hold queue.
///
/// # Errors
/// [`TopologyError`] for the first object the broker refused.
pub async fn declare_waiting_rooms(
    channel: &Channel,
    work_queue: &str,
    dead_letter_exchange: &str,
) -> Result<(), TopologyError> {
    let names = ParkingNames::for_work_queue(work_queue);
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            names.retry_exchange.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(declare_error("exchange", &names.retry_exchange))?;
    channel
        .exchange_declare(
            names.delay_exchange.as_str().into(),
            ExchangeKind::Headers,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(declare_error("exchange", &names.delay_exchange))?;
    channel
        .queue_bind(
            work_queue.into(),
            names.retry_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(declare_error(
            "binding of the work queue to",
            &names.retry_exchange,
        ))?;

    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    for bucket in &BUCKETS {
        let queue = names.delay_queue(bucket);
        channel
            .queue_declare(
                queue.as_str().into(),
                durable_queue,
                delay_queue_arguments(&names, bucket),
            )
            .await
            .map_err(declare_error("queue", &queue))?;
        channel
            .queue_bind(
                queue.as_str().into(),
                names.delay_exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                delay_binding(bucket),
            )
            .await
            .map_err(declare_error("binding of delay queue", &queue))?;
    }
    channel
        .queue_declare(
            names.held_queue.as_str().into(),
            durable_queue,
            hold_queue_arguments(dead_letter_exchange),
        )
        .await
        .map_err(declare_error("queue", &names.held_queue))?;
    Ok(())
}

/// The binding arguments of a bucket's queue on the delay exchange.
pub fn delay_binding(bucket: &DelayBucket) -> FieldTable {
    let mut binding = FieldTable::default();
    binding.insert("x-match".into(), AMQPValue::LongString("all".into()));
    binding.insert(
        DELAY_BUCKET.into(),
        AMQPValue::LongString(bucket.name.into()),
    );
    binding
}

/// The service's own exchanges for the trust rules: `<wq>.retry`, `<wq>.delay`,
/// `<wq>.replay` and `<wq>.partitions`.
impl From<&TopologyNames> for OwnRoutes {
    fn from(topology: &TopologyNames) -> Self {
        let work_queue = &topology.work_queue;
        OwnRoutes::new(vec![
            format!("{work_queue}.retry"),
            format!("{work_queue}.delay"),
            topology.replay_exchange(),
            topology.partitions_exchange(),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_routes_are_the_service_exchanges_and_never_the_input_or_default() {
        let topology = TopologyNames::prefixed("t.");
        let own = OwnRoutes::from(&topology);
        let wq = &topology.work_queue;
        for exchange in [
            format!("{wq}.retry"),
            format!("{wq}.delay"),
            format!("{wq}.replay"),
            format!("{wq}.partitions"),
        ] {
            assert!(own.contains(&exchange), "{exchange}");
        }
        assert!(!own.contains(&topology.input_exchange));
        assert!(!own.contains(""));
        assert!(!own.contains(&topology.dead_letter_exchange));
        assert!(!own.contains(&format!("{wq}.retry.evil")));
    }

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
        assert_eq!(names.partitions_exchange(), "hr-sync.partitions");
        assert_eq!(names.partition_queue(3), "hr-sync.p3");
        assert_eq!(names.intake_lock_queue(), "hr-sync.intake-lock");
        assert_eq!(names.leavers_queue(), "hr-sync.leavers");
    }
}
