//! The dead-letter rules of the queue walk: which messages `dlq list`, `replay` and
//! `dlq purge` take, and what becomes of them — a replayed copy (its original routing
//! key, replay properties and replay count) on the replay exchange, or deletion. The
//! walk itself, and how it never loses a message, is [`crate::ops::walker`]'s.
//!
//! A replayed message leaves the dead-letter queue only after the broker confirmed its
//! copy; a purged one only when the operator confirmed with `--yes`.

use super::record::{replay_copy, DeadLetter};
use super::selection::{Selection, Selector};
use crate::amqp::parking::Outgoing;
use crate::amqp::publisher::PublishError;
use crate::amqp::topology::TopologyError;
use crate::ops::walker::{
    self, BrokerError, CopyOptions, Doing, OpsBroker, QueueWalker, Step, WalkError, WalkRules,
};
use lapin::message::Delivery;
use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;
use time::OffsetDateTime;

/// What happens to the selected messages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Disposal {
    /// Nothing: they are listed and stay (`dlq list`, `replay --dry-run`, `dlq purge`
    /// without `--yes`).
    Keep,
    /// Re-published to the replay exchange, then removed; at most one every `pace`.
    Replay { pace: Option<Duration> },
    /// Removed.
    Delete,
}

/// Why a dead-letter command failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("cannot connect to the broker at {url}")]
    Connect {
        url: String,
        #[source]
        source: lapin::Error,
    },
    #[error("cannot connect to the broker at {url}: no answer within {}s", walker::CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout { url: String },
    #[error("the dead-letter queue '{queue}' does not exist (check DEAD_LETTER_QUEUE and the vhost in AMQP_URL)")]
    MissingQueue { queue: String },
    #[error("broker error while {doing}")]
    Broker {
        doing: &'static str,
        #[source]
        source: lapin::Error,
    },
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(
        "cannot re-publish message #{position} (event {event}); it stays in the dead-letter queue"
    )]
    Republish {
        position: u64,
        event: String,
        #[source]
        source: PublishError,
    },
    #[error(
        "cannot remove message #{position} (event {event}) from the dead-letter queue; it stays there{}",
        if *replayed { " although its copy was re-published (replaying it again makes a harmless duplicate)" } else { "" }
    )]
    Remove {
        position: u64,
        event: String,
        /// Whether its copy was re-published (and confirmed) before.
        replayed: bool,
        #[source]
        source: lapin::Error,
    },
    #[error("stopped by the operator; what was not done stays in the dead-letter queue")]
    Stopped,
}

impl From<BrokerError> for DlqError {
    fn from(error: BrokerError) -> Self {
        match error {
            BrokerError::Connect { url, source } => DlqError::Connect { url, source },
            BrokerError::ConnectTimeout { url } => DlqError::ConnectTimeout { url },
            BrokerError::Queue { queue, source } if is_not_found(&source) => {
                DlqError::MissingQueue { queue }
            }
            BrokerError::Queue { source, .. } => DlqError::Broker {
                doing: "reading the dead-letter queue's depth",
                source,
            },
            BrokerError::Broker { doing, source } => DlqError::Broker {
                doing: match doing {
                    Doing::OpeningChannel => "opening a channel",
                    Doing::EnablingConfirms => "enabling publisher confirms",
                    Doing::ReadingQueue => "reading the dead-letter queue",
                },
                source,
            },
            BrokerError::Topology(error) => DlqError::Topology(error),
        }
    }
}

impl From<WalkError<DeadLetter, Infallible>> for DlqError {
    fn from(error: WalkError<DeadLetter, Infallible>) -> Self {
        match error {
            WalkError::Broker(error) => error.into(),
            WalkError::Refused {
                position,
                message,
                source,
            } => DlqError::Republish {
                position,
                event: event_label(&message),
                source,
            },
            WalkError::Remove {
                position,
                message,
                copied,
                source,
            } => DlqError::Remove {
                position,
                event: event_label(&message),
                replayed: copied,
                source,
            },
            WalkError::Rule(never) => match never {},
            WalkError::Stopped => DlqError::Stopped,
        }
    }
}

/// What a walk of the dead-letter queue did.
pub type Walk = walker::Walk<DeadLetter>;

/// A walk that stopped on an error, with what it had done by then.
#[derive(Debug, thiserror::Error)]
#[error("the walk of the dead-letter queue stopped after {} of {} message(s)", walk.scanned, walk.depth)]
pub struct Interrupted {
    pub walk: Walk,
    #[source]
    pub error: DlqError,
}

/// A connection to the broker for the dead-letter commands.
pub struct DeadLetterQueue {
    walker: QueueWalker,
    broker: OpsBroker,
}

impl DeadLetterQueue {
    /// Connects, and checks that the dead-letter queue exists (without creating it).
    ///
    /// # Errors
    /// [`DlqError::Connect`], [`DlqError::ConnectTimeout`] or [`DlqError::MissingQueue`].
    pub async fn open(broker: &OpsBroker, purpose: &str) -> Result<Self, DlqError> {
        let queue = Self {
            walker: QueueWalker::connect(broker, purpose).await?,
            broker: broker.clone(),
        };
        queue.depth().await?;
        Ok(queue)
    }

    /// Messages ready in the dead-letter queue now.
    ///
    /// # Errors
    /// [`DlqError::MissingQueue`], or the broker's error.
    pub async fn depth(&self) -> Result<u64, DlqError> {
        Ok(self
            .walker
            .depth(&self.broker.topology.dead_letter_queue)
            .await?)
    }

    /// Walks the messages present now, in queue order, applying `disposal` to those
    /// `selection` picks. `progress` is called after each message; the walk stops early
    /// when `stop` completes.
    ///
    /// # Errors
    /// [`Interrupted`] with what was done before the error; whatever was not done stays
    /// in the queue.
    pub async fn walk(
        &self,
        selection: Selection,
        disposal: Disposal,
        progress: impl FnMut(&Walk),
        stop: impl Future<Output = ()>,
    ) -> Result<Walk, Interrupted> {
        let topology = &self.broker.topology;
        let copies = match disposal {
            Disposal::Replay { pace } => Some(CopyOptions {
                // The replay exchange may be newer than the running service: declare the
                // topology (idempotent; it never deletes) so the copies have their route.
                declare: Some(topology.clone()),
                pace,
            }),
            Disposal::Keep | Disposal::Delete => None,
        };
        let mut rules = DeadLetterRules {
            selector: Selector::new(selection),
            disposal,
            replay_exchange: topology.replay_exchange(),
        };
        self.walker
            .walk(
                &topology.dead_letter_queue,
                copies,
                &mut rules,
                progress,
                stop,
            )
            .await
            .map_err(|stopped| Interrupted {
                walk: stopped.walk,
                error: stopped.error.into(),
            })
    }

    /// Closes the connection.
    pub async fn close(self) {
        self.walker.close().await;
    }
}

/// Selects with the operator's filters and limit; a selected message is listed, replayed
/// or deleted as `disposal` says.
struct DeadLetterRules {
    selector: Selector,
    disposal: Disposal,
    replay_exchange: String,
}

impl WalkRules for DeadLetterRules {
    type Message = DeadLetter;
    type Error = Infallible;

    fn wants_more(&self) -> bool {
        !self.selector.is_full()
    }

    fn step(&mut self, position: u64, delivery: &Delivery) -> Result<Step<DeadLetter>, Infallible> {
        let record = DeadLetter::read(
            position,
            delivery.routing_key.as_str(),
            &delivery.properties,
            &delivery.data,
        );
        if !self.selector.offer(&record) {
            return Ok(Step::Leave);
        }
        Ok(match self.disposal {
            Disposal::Keep => Step::List(record),
            Disposal::Delete => Step::Remove(record),
            Disposal::Replay { .. } => {
                let (routing_key, properties) = replay_copy(
                    &delivery.properties,
                    delivery.routing_key.as_str(),
                    OffsetDateTime::now_utc(),
                );
                let copy = Outgoing {
                    exchange: self.replay_exchange.clone(),
                    routing_key,
                    body: delivery.data.clone(),
                    properties,
                };
                Step::Move(record, Box::new(copy))
            }
        })
    }
}

fn event_label(record: &DeadLetter) -> String {
    record
        .event_id
        .clone()
        .unwrap_or_else(|| "without id".to_owned())
}

fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e) if e.get_id() == 404)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::headers;
    use crate::ops::dlq::selection::Filter;
    use lapin::types::FieldTable;

    fn dead_letter(event: &str, kind: &str) -> Delivery {
        let mut table = FieldTable::default();
        headers::set_str(&mut table, "x-original-routing-key", "employee.added");
        headers::set_str(&mut table, "x-error-kind", kind);
        let mut delivery = Delivery::mock(
            1,
            "iam.dlx".into(),
            "employee.added".into(),
            false,
            format!(r#"{{"event_id":"{event}"}}"#).into_bytes(),
        );
        delivery.properties = lapin::BasicProperties::default().with_headers(table);
        delivery
    }

    fn rules(disposal: Disposal, kind: Option<&str>, limit: Option<u64>) -> DeadLetterRules {
        DeadLetterRules {
            selector: Selector::new(Selection {
                filter: Filter {
                    error_kind: kind.map(str::to_owned),
                    ..Filter::default()
                },
                limit,
            }),
            disposal,
            replay_exchange: "iam.replay".into(),
        }
    }

    fn label(step: Step<DeadLetter>) -> String {
        match step {
            Step::Leave => "leave".into(),
            Step::List(m) => format!("list {}", event_label(&m)),
            Step::Remove(m) => format!("remove {}", event_label(&m)),
            Step::Move(m, copy) => format!(
                "move {} to {} {} count={:?}",
                event_label(&m),
                copy.exchange,
                copy.routing_key,
                headers::get_u64(copy.properties.headers().as_ref(), headers::REPLAY_COUNT)
            ),
        }
    }

    #[test]
    fn a_selected_dead_letter_is_listed_deleted_or_moved_as_a_replayed_copy() {
        let mapping = dead_letter("ev-1", "mapping");
        let okta = dead_letter("ev-2", "okta");
        let walk = |mut rules: DeadLetterRules| -> Vec<String> {
            [&mapping, &okta]
                .iter()
                .zip(1..)
                .map(|(d, position)| match rules.step(position, d) {
                    Ok(step) => label(step),
                    Err(never) => match never {},
                })
                .collect()
        };
        assert_eq!(
            walk(rules(Disposal::Keep, Some("okta"), None)),
            ["leave", "list ev-2"]
        );
        assert_eq!(
            walk(rules(Disposal::Delete, None, None)),
            ["remove ev-1", "remove ev-2"]
        );
        assert_eq!(
            walk(rules(
                Disposal::Replay { pace: None },
                Some("mapping"),
                None
            )),
            [
                "move ev-1 to iam.replay employee.added count=Some(1)",
                "leave"
            ]
        );
    }

    #[test]
    fn the_walk_stops_once_the_limit_is_reached() {
        let mut rules = rules(Disposal::Keep, None, Some(1));
        assert!(rules.wants_more());
        let first = rules.step(1, &dead_letter("ev-1", "okta"));
        assert!(matches!(first, Ok(Step::List(_))));
        assert!(!rules.wants_more(), "no message is taken past the limit");
    }
}
