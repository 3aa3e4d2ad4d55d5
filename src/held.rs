//! `iam-provisioner held release|discard`: what an operator does with removals the
//! offboarding guard held (`<work queue>.held`).
//!
//! The hold queue is read with `basic.get` up to the number of messages it had when the
//! command started. A selected message is released — re-published to the work queue
//! through `<work queue>.retry`, under its event type, with a header that lets it past
//! the guard — and acknowledged only after the broker confirmed the copy; or discarded
//! (acknowledged). Messages not selected are returned to the queue when the channel
//! closes. A crash in between loses nothing; a duplicate release is harmless (offboarding
//! converges).
//!
//! The filters mirror `replay`'s; the two should share one filter type.

use crate::amqp::headers;
use crate::amqp::parking::{self, ParkingNames};
use crate::amqp::publisher::{PublishError, Publisher};
use crate::secret::{redact_url_password, Secret};
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

/// What to do with the selected messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldAction {
    /// Back to processing, past the guard.
    Release,
    /// Drop: the removal will not happen.
    Discard,
}

/// Which held messages to act on; every filter given must match.
#[derive(Debug, Clone, Default)]
pub struct HeldSelection {
    /// Event type, e.g. `employee.removed`.
    pub routing_key: Option<String>,
    /// `employee.id` of the event.
    pub employee_id: Option<String>,
    /// At most this many messages.
    pub limit: Option<usize>,
    /// List what would be acted on; change nothing.
    pub dry_run: bool,
}

impl HeldSelection {
    fn matches(&self, routing_key: Option<&str>, employee_id: Option<&str>) -> bool {
        let wanted = |filter: &Option<String>, value: Option<&str>| {
            filter.as_deref().is_none_or(|f| Some(f) == value)
        };
        wanted(&self.routing_key, routing_key) && wanted(&self.employee_id, employee_id)
    }
}

/// One message acted on (or that would be, in a dry run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldMessage {
    pub routing_key: String,
    pub employee_id: Option<String>,
    pub message_id: Option<String>,
    pub held_at: Option<String>,
}

/// What `held` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldReport {
    /// The messages selected, in queue order.
    pub selected: Vec<HeldMessage>,
    /// Messages left in the hold queue.
    pub kept: usize,
}

/// Why `held` stopped.
#[derive(Debug, thiserror::Error)]
pub enum HeldError {
    #[error("cannot connect to the broker at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: lapin::Error,
    },
    #[error(
        "hold queue '{queue}' is not there (has the service run with this WORK_QUEUE?): {source}"
    )]
    NoQueue {
        queue: String,
        #[source]
        source: lapin::Error,
    },
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("held message {message_id:?} has no x-original-routing-key; left in the queue")]
    NoRoutingKey { message_id: Option<String> },
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// Releases or discards the selected held messages of `work_queue`.
///
/// # Errors
/// [`HeldError`]; whatever was acted on before the error stays done, the rest stays
/// held.
pub async fn run(
    amqp_url: &Secret,
    work_queue: &str,
    action: HeldAction,
    selection: &HeldSelection,
) -> Result<HeldReport, HeldError> {
    let names = ParkingNames::for_work_queue(work_queue);
    let connection = crate::amqp::connect(amqp_url.expose(), &format!("{work_queue} held"))
        .await
        .map_err(|source| HeldError::Connect {
            url: redact_url_password(amqp_url.expose()),
            source,
        })?;
    let result = act(&connection, &names, action, selection).await;
    let _ = connection.close(200, "held done".into()).await;
    result
}

async fn act(
    connection: &lapin::Connection,
    names: &ParkingNames,
    action: HeldAction,
    selection: &HeldSelection,
) -> Result<HeldReport, HeldError> {
    let channel = connection.create_channel().await?;
    let queue = channel
        .queue_declare(
            names.held_queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|source| HeldError::NoQueue {
            queue: names.held_queue.clone(),
            source,
        })?;
    // Only the results and dead-letter names are unused here: nothing is published there.
    let publisher = Publisher::open(connection, "", "").await?;
    let mut report = HeldReport::default();
    for _ in 0..queue.message_count() {
        let Some(message) = channel
            .basic_get(
                names.held_queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await?
        else {
            break;
        };
        let table = message.delivery.properties.headers().as_ref();
        let held = HeldMessage {
            routing_key: headers::get_str(table, parking::ORIGINAL_ROUTING_KEY)
                .unwrap_or_default()
                .to_owned(),
            employee_id: headers::get_str(table, parking::EMPLOYEE_ID).map(str::to_owned),
            message_id: message
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string()),
            held_at: headers::get_str(table, parking::HELD_AT).map(str::to_owned),
        };
        let room = selection
            .limit
            .is_none_or(|limit| report.selected.len() < limit);
        let routing_key = (!held.routing_key.is_empty()).then_some(held.routing_key.as_str());
        if !room || !selection.matches(routing_key, held.employee_id.as_deref()) {
            report.kept += 1;
            continue;
        }
        if !selection.dry_run {
            if action == HeldAction::Release {
                let Some(routing_key) = routing_key else {
                    return Err(HeldError::NoRoutingKey {
                        message_id: held.message_id,
                    });
                };
                parking::released_copy(
                    names,
                    routing_key,
                    &message.delivery.data,
                    &message.delivery.properties,
                )
                .send(&publisher)
                .await?;
            }
            message
                .delivery
                .acker
                .ack(BasicAckOptions::default())
                .await?;
        } else {
            report.kept += 1;
        }
        report.selected.push(held);
    }
    publisher.close().await;
    // Closing returns every message not acknowledged to the hold queue.
    let _ = channel.close(200, "held done".into()).await;
    Ok(report)
}
