//! The broker side of the dead-letter commands: one walk over the dead-letter queue
//! that lists, re-publishes or deletes the selected messages.
//!
//! How nothing is lost:
//! - The walk takes messages with `basic.get` and does not acknowledge them, so each one
//!   stays the broker's until this process says otherwise; if the process dies, they
//!   all return to the queue.
//! - A selected message is acknowledged (removed) only after its copy was published
//!   `mandatory` to the replay exchange and confirmed by the broker; for a purge, only
//!   when the operator confirmed with `--yes`. Up to `CONFIRM_WINDOW` (64) copies may await
//!   their confirms at once; a crash then duplicates at most those, never loses them.
//! - Everything not acknowledged returns, in its order, when the channel closes (the
//!   dead-letter queue is a classic queue, which puts returned messages back where they
//!   were).
//! - The walk reads the queue's depth first and takes at most that many messages, so a
//!   queue that grows meanwhile (the service dead-lettering, or a replayed copy failing
//!   again) cannot make it loop.

use super::record::{replay_copy, DeadLetter};
use super::selection::{Selection, Selector};
use crate::amqp::publisher::PublishError;
use crate::amqp::topology::{self, TopologyError};
use crate::amqp::BrokerSettings;
use crate::secret::redact_url_password;
use futures_util::FutureExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Acker, Channel, Confirmation, Connection, PublisherConfirm};
use std::collections::VecDeque;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::time::{Interval, MissedTickBehavior};

/// How long to wait for the broker to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

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
    #[error("cannot connect to the broker at {url}: no answer within {}s", CONNECT_TIMEOUT.as_secs())]
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
}

/// What a walk did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Walk {
    /// Messages ready in the queue when the walk began.
    pub depth: u64,
    /// Messages looked at.
    pub scanned: u64,
    /// Messages selected.
    pub selected: u64,
    /// Messages re-published and removed, or deleted.
    pub done: u64,
    /// In queue order: the selected messages when the queue is left as it is, else the
    /// ones re-published or deleted.
    pub messages: Vec<DeadLetter>,
}

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
    connection: Connection,
    settings: BrokerSettings,
}

impl DeadLetterQueue {
    /// Connects, and checks that the dead-letter queue exists (without creating it: a
    /// mistyped name or vhost must not leave an empty queue behind).
    ///
    /// # Errors
    /// [`DlqError::Connect`], [`DlqError::ConnectTimeout`] or [`DlqError::MissingQueue`].
    pub async fn open(settings: &BrokerSettings, purpose: &str) -> Result<Self, DlqError> {
        let url = || redact_url_password(settings.amqp_url.expose());
        let connection = tokio::time::timeout(
            CONNECT_TIMEOUT,
            crate::amqp::connect(settings.amqp_url.expose(), purpose),
        )
        .await
        .map_err(|_| DlqError::ConnectTimeout { url: url() })?
        .map_err(|source| DlqError::Connect { url: url(), source })?;
        let queue = Self {
            connection,
            settings: settings.clone(),
        };
        queue.depth().await?;
        Ok(queue)
    }

    /// Messages ready in the dead-letter queue now.
    ///
    /// # Errors
    /// [`DlqError::MissingQueue`], or the broker's error.
    pub async fn depth(&self) -> Result<u64, DlqError> {
        let channel = self.channel("opening a channel").await?;
        let queue = &self.settings.topology.dead_letter_queue;
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|source| {
                if is_not_found(&source) {
                    DlqError::MissingQueue {
                        queue: queue.clone(),
                    }
                } else {
                    DlqError::Broker {
                        doing: "reading the dead-letter queue's depth",
                        source,
                    }
                }
            })?;
        // A passive declare of a missing queue closes the channel; otherwise close it.
        let _ = channel.close(200, "depth read".into()).await;
        Ok(u64::from(declared.message_count()))
    }

    /// Walks the messages present now, in queue order, applying `disposal` to those
    /// `selection` picks. `progress` is called after each message.
    ///
    /// # Errors
    /// [`Interrupted`] with what was done before the error; whatever was not done stays
    /// in the queue.
    pub async fn walk(
        &self,
        selection: Selection,
        disposal: Disposal,
        mut progress: impl FnMut(&Walk),
    ) -> Result<Walk, Interrupted> {
        let mut walk = Walk::default();
        let result = self
            .walk_into(&mut walk, selection, disposal, &mut progress)
            .await;
        match result {
            Ok(()) => Ok(walk),
            Err(error) => Err(Interrupted { walk, error }),
        }
    }

    async fn walk_into(
        &self,
        walk: &mut Walk,
        selection: Selection,
        disposal: Disposal,
        progress: &mut impl FnMut(&Walk),
    ) -> Result<(), DlqError> {
        let mut replayer = match disposal {
            Disposal::Replay { pace } => Some(Replayer::open(self, pace).await?),
            Disposal::Keep | Disposal::Delete => None,
        };

        // Read the depth first: the walk covers only the messages present now.
        walk.depth = self.depth().await?;
        let browser = self.channel("opening a channel").await?;
        let queue = self.settings.topology.dead_letter_queue.as_str();
        let mut selector = Selector::new(selection);
        let scanned = async {
            while walk.scanned < walk.depth && !selector.is_full() {
                let got = browser
                    .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                    .await
                    .map_err(|source| DlqError::Broker {
                        doing: "reading the dead-letter queue",
                        source,
                    })?;
                // Another client took the rest: the walk is over.
                let Some(got) = got else { break };
                walk.scanned += 1;
                let delivery = got.delivery;
                let record = DeadLetter::read(
                    walk.scanned,
                    delivery.routing_key.as_str(),
                    &delivery.properties,
                    &delivery.data,
                );
                if selector.offer(&record) {
                    walk.selected += 1;
                    match (disposal, replayer.as_mut()) {
                        (Disposal::Replay { .. }, Some(replayer)) => {
                            replayer.send(delivery, record, walk).await?;
                        }
                        (Disposal::Delete, _) => {
                            remove(&delivery.acker, &record, false).await?;
                            walk.done += 1;
                            walk.messages.push(record);
                        }
                        _ => walk.messages.push(record),
                    }
                }
                progress(walk);
            }
            Ok(())
        }
        .await;
        // Copies already sent are settled even after an error: those the broker
        // confirmed are removed from the queue, so a retry does not duplicate them.
        let settled = match replayer.as_mut() {
            Some(replayer) => replayer.settle_all(walk).await,
            None => Ok(()),
        };
        progress(walk);
        // Whatever was taken and not acknowledged goes back, in its order.
        let _ = browser.close(200, "walk done".into()).await;
        if let Some(replayer) = replayer {
            let _ = replayer.channel.close(200, "walk done".into()).await;
        }
        scanned.and(settled)
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }

    async fn channel(&self, doing: &'static str) -> Result<Channel, DlqError> {
        self.connection
            .create_channel()
            .await
            .map_err(|source| DlqError::Broker { doing, source })
    }
}

/// Re-published copies whose confirms may be outstanding at once. Waiting for each
/// confirm before the next publish would cost a broker round trip — for a quorum work
/// queue, a disk write — per message; a bounded window keeps memory and the number of
/// possible duplicates after a crash small.
const CONFIRM_WINDOW: usize = 64;

/// A copy sent, waiting for the broker's confirm before its original is removed.
struct Pending {
    confirm: PublisherConfirm,
    acker: Acker,
    record: DeadLetter,
    routing_key: String,
}

/// Publishes replayed copies on a confirm-mode channel and removes each original once
/// its copy is confirmed.
struct Replayer {
    channel: Channel,
    exchange: String,
    pace: Option<Interval>,
    /// Copies that may await their confirms at once: [`CONFIRM_WINDOW`], or 1 when
    /// paced (speed is not the point then, and a crash duplicates nothing but the copy
    /// in flight).
    window: usize,
    pending: VecDeque<Pending>,
}

impl Replayer {
    async fn open(queue: &DeadLetterQueue, pace: Option<Duration>) -> Result<Self, DlqError> {
        let channel = queue.channel("opening a channel").await?;
        // The replay exchange may be newer than the running service: declare the
        // topology (idempotent; it never deletes) so the copies have their route.
        topology::declare(&channel, &queue.settings.topology).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|source| DlqError::Broker {
                doing: "enabling publisher confirms",
                source,
            })?;
        Ok(Self {
            channel,
            exchange: queue.settings.topology.replay_exchange(),
            pace: pace.map(|every| {
                let mut interval = tokio::time::interval(every);
                interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
                interval
            }),
            window: if pace.is_some() { 1 } else { CONFIRM_WINDOW },
            pending: VecDeque::new(),
        })
    }

    /// Publishes the copy of `delivery` (`mandatory`, so a copy no queue receives is an
    /// error, not a loss); settles the oldest copies while the window is full.
    async fn send(
        &mut self,
        delivery: Delivery,
        record: DeadLetter,
        walk: &mut Walk,
    ) -> Result<(), DlqError> {
        if let Some(pace) = self.pace.as_mut() {
            pace.tick().await;
        }
        let (routing_key, properties) = replay_copy(
            &delivery.properties,
            delivery.routing_key.as_str(),
            OffsetDateTime::now_utc(),
        );
        let sent = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &delivery.data,
                properties,
            )
            .await;
        let confirm = match sent {
            Ok(confirm) => confirm,
            Err(source) => {
                return Err(republish_error(
                    &record,
                    PublishError::Broker {
                        exchange: self.exchange.clone(),
                        source,
                    },
                ))
            }
        };
        self.pending.push_back(Pending {
            confirm,
            acker: delivery.acker,
            record,
            routing_key,
        });
        // Originals whose copies are confirmed leave the queue as soon as possible, so
        // that the queue shrinks as the replay goes and a crash duplicates little.
        while let Some(oldest) = self.pending.front_mut() {
            let Some(confirmation) = (&mut oldest.confirm).now_or_never() else {
                break;
            };
            if let Some(pending) = self.pending.pop_front() {
                self.finish(pending, confirmation, walk).await?;
            }
        }
        while self.pending.len() >= self.window {
            self.settle_oldest(walk).await?;
        }
        Ok(())
    }

    /// Waits for the oldest copy's confirm, then removes its original.
    async fn settle_oldest(&mut self, walk: &mut Walk) -> Result<(), DlqError> {
        let Some(mut pending) = self.pending.pop_front() else {
            return Ok(());
        };
        let confirmation = (&mut pending.confirm).await;
        self.finish(pending, confirmation, walk).await
    }

    /// Removes the original of a copy the broker confirmed; an error for any other
    /// answer, leaving the original in the queue.
    async fn finish(
        &self,
        pending: Pending,
        confirmation: lapin::Result<Confirmation>,
        walk: &mut Walk,
    ) -> Result<(), DlqError> {
        let refused = match confirmation {
            Ok(Confirmation::Ack(None)) => None,
            Ok(Confirmation::Ack(Some(_returned))) => Some(PublishError::Unroutable {
                exchange: self.exchange.clone(),
                routing_key: pending.routing_key.clone(),
            }),
            // The channel is in confirm mode, so "not requested" does not happen; if it
            // did, nothing would prove the copy arrived, so it is not taken as success.
            Ok(Confirmation::Nack(_) | Confirmation::NotRequested) => Some(PublishError::Nacked {
                exchange: self.exchange.clone(),
            }),
            Err(source) => Some(PublishError::Broker {
                exchange: self.exchange.clone(),
                source,
            }),
        };
        if let Some(refused) = refused {
            return Err(republish_error(&pending.record, refused));
        }
        remove(&pending.acker, &pending.record, true).await?;
        walk.done += 1;
        walk.messages.push(pending.record);
        Ok(())
    }

    /// Settles every copy still pending; returns the first error, having removed every
    /// original whose copy was confirmed.
    async fn settle_all(&mut self, walk: &mut Walk) -> Result<(), DlqError> {
        let mut first = Ok(());
        while !self.pending.is_empty() {
            if let Err(error) = self.settle_oldest(walk).await {
                if first.is_ok() {
                    first = Err(error);
                }
            }
        }
        first
    }
}

/// Acknowledges a taken message: it leaves the dead-letter queue.
async fn remove(acker: &Acker, record: &DeadLetter, replayed: bool) -> Result<(), DlqError> {
    acker
        .ack(BasicAckOptions::default())
        .await
        .map(|_| ())
        .map_err(|source| DlqError::Remove {
            position: record.position,
            event: event_label(record),
            replayed,
            source,
        })
}

fn republish_error(record: &DeadLetter, source: PublishError) -> DlqError {
    DlqError::Republish {
        position: record.position,
        event: event_label(record),
        source,
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
