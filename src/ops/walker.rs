//! The one queue walk every operator command makes: `dlq list|replay|purge` over the
//! dead-letter queue and `held release|discard` over the hold queue. The commands differ
//! only in which messages they pick and what copy they make ([`WalkRules`]); how a
//! message is taken, copied and removed without ever being lost is decided here, once.
//!
//! How nothing is lost:
//! - Messages are taken with `basic.get` and not acknowledged, so each one stays the
//!   broker's until this process says otherwise; if the process dies, they all return.
//! - A message that is moved is acknowledged (removed) only after its copy was published
//!   `mandatory` on a confirm-mode channel and confirmed by the broker. Up to
//!   [`CONFIRM_WINDOW`] copies may await their confirms at once (one when paced); a
//!   crash then duplicates at most those, never loses them.
//! - Everything not acknowledged returns, in its order, when the channel closes (a
//!   returned message goes back where it was).
//! - The walk reads the queue's depth first and takes at most that many messages, so a
//!   queue that grows meanwhile (the service dead-lettering or holding, or a copy failing
//!   again) cannot make it loop.
//! - A walk that stops early — a broker error, a refused copy, the operator's Ctrl-C —
//!   still settles the copies already sent and reports what it did ([`Interrupted`]), so
//!   the command can print and audit it.

use crate::amqp::parking::Outgoing;
use crate::amqp::publisher::{PublishError, DEFAULT_CONFIRM_TIMEOUT};
use crate::amqp::topology::{self, TopologyError, TopologyNames};
use futures_util::FutureExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Acker, Channel, Confirmation, Connection, PublisherConfirm};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::time::{Interval, MissedTickBehavior};

/// How long to wait for the broker to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Copies whose confirms may be outstanding at once. Waiting for each confirm before the
/// next publish would cost a broker round trip — for a quorum work queue, a disk write —
/// per message; a bounded window keeps memory and the number of possible duplicates after
/// a crash small.
pub const CONFIRM_WINDOW: usize = 64;

/// The broker an operator command works on, as `main` read it from the environment.
/// Plain values, so that the commands do not depend on how configuration is loaded.
#[derive(Clone)]
pub struct OpsBroker {
    /// The AMQP URL; it holds the broker password, so it is never printed.
    url: String,
    /// The URL with its password hidden, for messages.
    shown_url: String,
    /// The service's exchange and queue names.
    pub topology: TopologyNames,
}

impl OpsBroker {
    /// `url` is the full AMQP URL; `shown_url` the same with the password hidden.
    pub fn new(url: &str, shown_url: String, topology: TopologyNames) -> Self {
        Self {
            url: url.to_owned(),
            shown_url,
            topology,
        }
    }

    /// The URL with its password: only for connecting.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL as it may be shown.
    pub fn shown_url(&self) -> &str {
        &self.shown_url
    }
}

impl std::fmt::Debug for OpsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpsBroker")
            .field("url", &self.shown_url)
            .field("topology", &self.topology)
            .finish()
    }
}

/// What a broker operation was doing when it failed; each command words it its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doing {
    OpeningChannel,
    EnablingConfirms,
    ReadingQueue,
}

impl std::fmt::Display for Doing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Doing::OpeningChannel => "opening a channel",
            Doing::EnablingConfirms => "enabling publisher confirms",
            Doing::ReadingQueue => "reading the queue",
        })
    }
}

/// Why a walk could not start or go on, independent of any one message.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot connect to the broker at {url}")]
    Connect {
        url: String,
        #[source]
        source: lapin::Error,
    },
    #[error("cannot connect to the broker at {url}: no answer within {}s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout { url: String },
    /// The passive declare of the walked queue failed: missing (404), or not readable.
    #[error("cannot read the queue '{queue}'")]
    Queue {
        queue: String,
        #[source]
        source: lapin::Error,
    },
    #[error("broker error while {doing}")]
    Broker {
        doing: Doing,
        #[source]
        source: lapin::Error,
    },
    #[error(transparent)]
    Topology(#[from] TopologyError),
}

/// Why a walk stopped early; `M` is a message as the command describes it, `E` the
/// command's own refusal of a message. Not shown as such: each command turns it into its
/// own error, in its own words.
#[derive(Debug)]
pub enum WalkError<M, E> {
    Broker(BrokerError),
    /// The copy of the message at `position` was not confirmed; the message stays.
    Refused {
        position: u64,
        message: M,
        source: PublishError,
    },
    /// The message at `position` could not be acknowledged; it stays.
    Remove {
        position: u64,
        message: M,
        /// Whether its copy was published and confirmed before.
        copied: bool,
        source: lapin::Error,
    },
    /// The command's rules refused a message.
    Rule(E),
    /// The operator asked the command to stop (Ctrl-C).
    Stopped,
}

impl<M, E> From<BrokerError> for WalkError<M, E> {
    fn from(error: BrokerError) -> Self {
        WalkError::Broker(error)
    }
}

/// What to do with one message taken from the queue.
#[derive(Debug)]
pub enum Step<M> {
    /// Not selected: it returns to the queue when the walk ends.
    Leave,
    /// Selected and listed, and it stays in the queue (a dry run).
    List(M),
    /// Selected and removed (acknowledged) now.
    Remove(M),
    /// Selected: `copy` is published, and the message removed once the broker confirmed
    /// the copy.
    Move(M, Box<Outgoing>),
}

/// What a command decides about the messages of its queue; the walker does the rest.
pub trait WalkRules {
    /// A message as the command reports it.
    type Message;
    /// Why the command refuses to go on with a message.
    type Error;

    /// Whether to take another message; asked before each one, so that a walk that
    /// has all it wants stops without taking more.
    fn wants_more(&self) -> bool {
        true
    }

    /// Decides about the message at `position` (from 1, the head of the queue).
    ///
    /// # Errors
    /// The command's refusal: the walk stops, and the message stays.
    fn step(
        &mut self,
        position: u64,
        delivery: &Delivery,
    ) -> Result<Step<Self::Message>, Self::Error>;
}

/// How copies are published.
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// Declared (idempotently) before the first copy, so that copies have their route
    /// even when the running service is older than this command.
    pub declare: Option<TopologyNames>,
    /// At most one copy every `pace`; one confirm awaited at a time then.
    pub pace: Option<Duration>,
}

/// What a walk did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walk<M> {
    /// Messages ready in the queue when the walk began.
    pub depth: u64,
    /// Messages taken and looked at.
    pub scanned: u64,
    /// Messages selected (listed, removed or moved, or about to be).
    pub selected: u64,
    /// Messages removed, or moved and removed.
    pub done: u64,
    /// In queue order: the messages listed, removed, or moved and removed.
    pub messages: Vec<M>,
}

impl<M> Default for Walk<M> {
    fn default() -> Self {
        Self {
            depth: 0,
            scanned: 0,
            selected: 0,
            done: 0,
            messages: Vec::new(),
        }
    }
}

/// A walk that stopped early, with what it had done by then.
#[derive(Debug)]
pub struct Interrupted<M, E> {
    pub walk: Walk<M>,
    pub error: WalkError<M, E>,
}

/// A connection to the broker for one operator command.
pub struct QueueWalker {
    connection: Connection,
}

impl QueueWalker {
    /// Connects, within [`CONNECT_TIMEOUT`]; `purpose` names the connection in the
    /// broker's management UI.
    ///
    /// # Errors
    /// [`BrokerError::Connect`] or [`BrokerError::ConnectTimeout`], with the URL shown
    /// without its password.
    pub async fn connect(broker: &OpsBroker, purpose: &str) -> Result<Self, BrokerError> {
        let url = || broker.shown_url().to_owned();
        let connection =
            tokio::time::timeout(CONNECT_TIMEOUT, crate::amqp::connect(broker.url(), purpose))
                .await
                .map_err(|_| BrokerError::ConnectTimeout { url: url() })?
                .map_err(|source| BrokerError::Connect { url: url(), source })?;
        Ok(Self { connection })
    }

    /// The connection, for a command's own preparations (such as moving what an older
    /// version left in another queue).
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Messages ready in `queue` now; checks that it exists without creating it (a
    /// mistyped name or vhost must not leave an empty queue behind).
    ///
    /// # Errors
    /// [`BrokerError::Queue`] when the broker refused the passive declare.
    pub async fn depth(&self, queue: &str) -> Result<u64, BrokerError> {
        let channel = self.channel().await?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|source| BrokerError::Queue {
                queue: queue.to_owned(),
                source,
            })?;
        // A failed passive declare closes the channel; otherwise close it.
        let _ = channel.close(200, "depth read".into()).await;
        Ok(u64::from(declared.message_count()))
    }

    /// Walks the messages present in `queue` now, in queue order, doing what `rules`
    /// decide for each. `progress` is called after each message and once at the end;
    /// the walk stops early, settling what it sent, when `stop` completes.
    ///
    /// # Errors
    /// [`Interrupted`] with what was done before the walk stopped; whatever was not done
    /// stays in the queue.
    pub async fn walk<R: WalkRules>(
        &self,
        queue: &str,
        copies: Option<CopyOptions>,
        rules: &mut R,
        mut progress: impl FnMut(&Walk<R::Message>),
        stop: impl Future<Output = ()>,
    ) -> Result<Walk<R::Message>, Interrupted<R::Message, R::Error>> {
        let mut walk = Walk::default();
        match self
            .walk_into(&mut walk, queue, copies, rules, &mut progress, stop)
            .await
        {
            Ok(()) => Ok(walk),
            Err(error) => Err(Interrupted { walk, error }),
        }
    }

    async fn walk_into<R: WalkRules>(
        &self,
        walk: &mut Walk<R::Message>,
        queue: &str,
        copies: Option<CopyOptions>,
        rules: &mut R,
        progress: &mut impl FnMut(&Walk<R::Message>),
        stop: impl Future<Output = ()>,
    ) -> Result<(), WalkError<R::Message, R::Error>> {
        let mut copier = match copies {
            Some(options) => Some(Copier::open(self, options).await?),
            None => None,
        };
        // Read the depth first: the walk covers only the messages present now.
        walk.depth = self.depth(queue).await?;
        let browser = self.channel().await?;
        let mut stop = StopSignal::new(stop);
        let scanned = take_all(
            &browser,
            self,
            queue,
            rules,
            &mut copier,
            &mut stop,
            walk,
            progress,
        )
        .await;
        // Copies already sent are settled even after an error: those the broker
        // confirmed have their originals removed, so a retry does not duplicate them.
        let settled = match copier.as_mut() {
            Some(copier) => copier.settle_all(walk).await,
            None => Ok(()),
        };
        progress(walk);
        // Whatever was taken and not acknowledged goes back, in its order.
        let _ = browser.close(200, "walk done".into()).await;
        if let Some(copier) = copier {
            let _ = copier.channel.close(200, "walk done".into()).await;
        }
        scanned.and(settled)
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }

    async fn channel(&self) -> Result<Channel, BrokerError> {
        self.connection
            .create_channel()
            .await
            .map_err(|source| BrokerError::Broker {
                doing: Doing::OpeningChannel,
                source,
            })
    }
}

/// The operator's request to stop, heeded only where a wait can be abandoned without
/// losing track of a message: before one is taken, and while a paced copy waits for its
/// turn. A copy already sent is always settled.
struct StopSignal<F> {
    request: Pin<Box<F>>,
    heard: bool,
}

impl<F: Future<Output = ()>> StopSignal<F> {
    fn new(request: F) -> Self {
        Self {
            request: Box::pin(request),
            heard: false,
        }
    }

    /// `work`'s output, or `None` when the stop request came first (or before).
    async fn unless_stopped<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        if self.heard {
            return None;
        }
        tokio::select! {
            biased;
            () = &mut self.request => {
                self.heard = true;
                None
            }
            output = work => Some(output),
        }
    }
}

/// Takes messages one by one until the depth read at the start, the queue running dry,
/// the rules having all they want, or a stop request.
#[allow(clippy::too_many_arguments)]
async fn take_all<R: WalkRules, F: Future<Output = ()>>(
    browser: &Channel,
    walker: &QueueWalker,
    queue: &str,
    rules: &mut R,
    copier: &mut Option<Copier<R::Message>>,
    stop: &mut StopSignal<F>,
    walk: &mut Walk<R::Message>,
    progress: &mut impl FnMut(&Walk<R::Message>),
) -> Result<(), WalkError<R::Message, R::Error>> {
    while walk.scanned < walk.depth && rules.wants_more() {
        let got = stop
            .unless_stopped(browser.basic_get(queue.into(), BasicGetOptions { no_ack: false }))
            .await
            .ok_or(WalkError::Stopped)?
            .map_err(|source| BrokerError::Broker {
                doing: Doing::ReadingQueue,
                source,
            })?;
        // Another client took the rest: the walk is over.
        let Some(got) = got else { break };
        walk.scanned += 1;
        let position = walk.scanned;
        let delivery = got.delivery;
        match rules.step(position, &delivery).map_err(WalkError::Rule)? {
            Step::Leave => {}
            Step::List(message) => {
                walk.selected += 1;
                walk.messages.push(message);
            }
            Step::Remove(message) => {
                walk.selected += 1;
                let message = remove(&delivery.acker, message, position, false).await?;
                walk.done += 1;
                walk.messages.push(message);
            }
            Step::Move(message, copy) => {
                walk.selected += 1;
                if copier.is_none() {
                    *copier = Some(Copier::open(walker, CopyOptions::default()).await?);
                }
                if let Some(copier) = copier.as_mut() {
                    copier
                        .send(delivery.acker, message, position, copy, stop, walk)
                        .await?;
                }
            }
        }
        progress(walk);
    }
    Ok(())
}

/// A copy sent, waiting for the broker's confirm before its original is removed.
struct Pending<M> {
    confirm: PublisherConfirm,
    acker: Acker,
    message: M,
    position: u64,
    exchange: String,
    routing_key: String,
}

/// Publishes copies on a confirm-mode channel and removes each original once its copy
/// is confirmed.
struct Copier<M> {
    channel: Channel,
    pace: Option<Interval>,
    /// Copies that may await their confirms at once: [`CONFIRM_WINDOW`], or 1 when
    /// paced (speed is not the point then, and a crash duplicates nothing but the copy
    /// in flight).
    window: usize,
    pending: VecDeque<Pending<M>>,
}

impl<M> Copier<M> {
    async fn open(walker: &QueueWalker, options: CopyOptions) -> Result<Self, BrokerError> {
        let channel = walker.channel().await?;
        if let Some(names) = &options.declare {
            topology::declare(&channel, names).await?;
        }
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|source| BrokerError::Broker {
                doing: Doing::EnablingConfirms,
                source,
            })?;
        Ok(Self {
            channel,
            pace: options.pace.map(|every| {
                let mut interval = tokio::time::interval(every);
                interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
                interval
            }),
            window: if options.pace.is_some() {
                1
            } else {
                CONFIRM_WINDOW
            },
            pending: VecDeque::new(),
        })
    }

    /// Publishes `copy` (`mandatory`, so a copy no queue receives is an error, not a
    /// loss); settles the oldest copies while the window is full.
    async fn send<E, F: Future<Output = ()>>(
        &mut self,
        acker: Acker,
        message: M,
        position: u64,
        copy: Box<Outgoing>,
        stop: &mut StopSignal<F>,
        walk: &mut Walk<M>,
    ) -> Result<(), WalkError<M, E>> {
        if let Some(pace) = self.pace.as_mut() {
            // Stopping here sends nothing; the message returns with the others.
            stop.unless_stopped(pace.tick())
                .await
                .ok_or(WalkError::Stopped)?;
        }
        let sent = self
            .channel
            .basic_publish(
                copy.exchange.as_str().into(),
                copy.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &copy.body,
                copy.properties,
            )
            .await;
        let confirm = match sent {
            Ok(confirm) => confirm,
            Err(source) => {
                return Err(WalkError::Refused {
                    position,
                    message,
                    source: PublishError::Broker {
                        exchange: copy.exchange,
                        source,
                    },
                })
            }
        };
        self.pending.push_back(Pending {
            confirm,
            acker,
            message,
            position,
            exchange: copy.exchange,
            routing_key: copy.routing_key,
        });
        // Originals whose copies are confirmed leave the queue as soon as possible, so
        // that the queue shrinks as the walk goes and a crash duplicates little.
        while let Some(oldest) = self.pending.front_mut() {
            let Some(confirmation) = (&mut oldest.confirm).now_or_never() else {
                break;
            };
            if let Some(pending) = self.pending.pop_front() {
                finish(pending, Ok(confirmation), walk).await?;
            }
        }
        while self.pending.len() >= self.window {
            self.settle_oldest(walk).await?;
        }
        Ok(())
    }

    /// Waits (within the confirm timeout) for the oldest copy's confirm, then removes
    /// its original.
    async fn settle_oldest<E>(&mut self, walk: &mut Walk<M>) -> Result<(), WalkError<M, E>> {
        let Some(mut pending) = self.pending.pop_front() else {
            return Ok(());
        };
        let confirmation =
            tokio::time::timeout(DEFAULT_CONFIRM_TIMEOUT, &mut pending.confirm).await;
        finish(pending, confirmation, walk).await
    }

    /// Settles every copy still pending; returns the first error, having removed every
    /// original whose copy was confirmed.
    async fn settle_all<E>(&mut self, walk: &mut Walk<M>) -> Result<(), WalkError<M, E>> {
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

/// Removes the original of a copy the broker confirmed; an error for any other answer
/// (or none in time), leaving the original in the queue.
async fn finish<M, E>(
    pending: Pending<M>,
    confirmation: Result<lapin::Result<Confirmation>, tokio::time::error::Elapsed>,
    walk: &mut Walk<M>,
) -> Result<(), WalkError<M, E>> {
    let exchange = pending.exchange;
    let refused = match confirmation {
        Ok(Ok(Confirmation::Ack(None))) => None,
        Ok(Ok(Confirmation::Ack(Some(_returned)))) => Some(PublishError::Unroutable {
            exchange,
            routing_key: pending.routing_key,
        }),
        // The channel is in confirm mode, so "not requested" does not happen; if it did,
        // nothing would prove the copy arrived, so it is not taken as success.
        Ok(Ok(Confirmation::Nack(_) | Confirmation::NotRequested)) => {
            Some(PublishError::Nacked { exchange })
        }
        Ok(Err(source)) => Some(PublishError::Broker { exchange, source }),
        Err(_elapsed) => Some(PublishError::ConfirmTimeout {
            exchange,
            after: DEFAULT_CONFIRM_TIMEOUT,
        }),
    };
    if let Some(source) = refused {
        return Err(WalkError::Refused {
            position: pending.position,
            message: pending.message,
            source,
        });
    }
    let message = remove(&pending.acker, pending.message, pending.position, true).await?;
    walk.done += 1;
    walk.messages.push(message);
    Ok(())
}

/// Acknowledges a taken message: it leaves the queue.
async fn remove<M, E>(
    acker: &Acker,
    message: M,
    position: u64,
    copied: bool,
) -> Result<M, WalkError<M, E>> {
    match acker.ack(BasicAckOptions::default()).await {
        Ok(_) => Ok(message),
        Err(source) => Err(WalkError::Remove {
            position,
            message,
            copied,
            source,
        }),
    }
}
