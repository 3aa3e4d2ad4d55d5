//! `iam-provisioner held release|discard`: what an operator does with removals the
//! offboarding guard held (`<work queue>.holding`).
//!
//! The hold queue is read with `basic.get` up to the number of messages it had when the
//! command started. A selected message is released — re-published to the work queue
//! through `<work queue>.retry`, under its event type, with a header that lets it past
//! the guard — and acknowledged only after the broker confirmed the copy; or discarded
//! (acknowledged). Messages not selected are returned to the queue when the channel
//! closes. A crash in between loses nothing; a duplicate release is harmless (offboarding
//! converges).
//!
//! The filters are `replay`'s where they apply to a message that has not failed:
//! routing key, employee id, event id, a time window (on when it was held rather than
//! when it failed) and a limit.

use crate::amqp::headers;
use crate::amqp::parking::{self, ParkingNames};
use crate::amqp::publisher::{PublishError, Publisher};
use crate::secret::{redact_url_password, Secret};
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

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
    /// `event_id` of the event.
    pub event_id: Option<String>,
    /// Held strictly before this time; a message without a hold time never matches.
    pub held_before: Option<OffsetDateTime>,
    /// Held at or after this time; a message without a hold time never matches.
    pub held_after: Option<OffsetDateTime>,
    /// At most this many messages.
    pub limit: Option<usize>,
    /// List what would be acted on; change nothing.
    pub dry_run: bool,
}

impl HeldSelection {
    /// Whether `message` meets every filter given.
    pub fn matches(&self, message: &HeldMessage) -> bool {
        let wanted = |filter: &Option<String>, value: Option<&str>| {
            filter.as_deref().is_none_or(|f| Some(f) == value)
        };
        let held_at = message
            .held_at
            .as_deref()
            .and_then(|at| OffsetDateTime::parse(at, &Rfc3339).ok());
        let before_ok = self
            .held_before
            .is_none_or(|limit| held_at.is_some_and(|at| at < limit));
        let after_ok = self
            .held_after
            .is_none_or(|limit| held_at.is_some_and(|at| at >= limit));
        let routing_key = (!message.routing_key.is_empty()).then_some(message.routing_key.as_str());
        wanted(&self.routing_key, routing_key)
            && wanted(&self.employee_id, message.employee_id.as_deref())
            && wanted(&self.event_id, message.event_id.as_deref())
            && before_ok
            && after_ok
    }
}

/// One message acted on (or that would be, in a dry run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldMessage {
    pub routing_key: String,
    pub employee_id: Option<String>,
    /// The body's `event_id`, when the body is JSON that has one.
    pub event_id: Option<String>,
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
    #[error(transparent)]
    Upgrade(#[from] crate::amqp::topology::TopologyError),
}

/// A `held` run that stopped on an error: what it had done by then (acted on and
/// confirmed, so it stays done and must be audited), and why it stopped.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct HeldStopped {
    /// The messages released or discarded before the error.
    pub done: HeldReport,
    #[source]
    pub error: HeldError,
}

/// Releases or discards the selected held messages of `work_queue`.
///
/// # Errors
/// [`HeldStopped`]: whatever was acted on before the error stays done (and is in its
/// `done`), the rest stays held.
pub async fn run(
    amqp_url: &Secret,
    work_queue: &str,
    action: HeldAction,
    selection: &HeldSelection,
) -> Result<HeldReport, HeldStopped> {
    let mut report = HeldReport::default();
    match run_into(amqp_url, work_queue, action, selection, &mut report).await {
        Ok(()) => Ok(report),
        Err(error) => Err(HeldStopped {
            done: report,
            error,
        }),
    }
}

async fn run_into(
    amqp_url: &Secret,
    work_queue: &str,
    action: HeldAction,
    selection: &HeldSelection,
    report: &mut HeldReport,
) -> Result<(), HeldError> {
    let names = ParkingNames::for_work_queue(work_queue);
    let connection = crate::amqp::connect(amqp_url.expose(), &format!("{work_queue} held"))
        .await
        .map_err(|source| HeldError::Connect {
            url: redact_url_password(amqp_url.expose()),
            source,
        })?;
    let result = act(&connection, &names, action, selection, report).await;
    let _ = connection.close(200, "held done".into()).await;
    result
}

async fn act(
    connection: &lapin::Connection,
    names: &ParkingNames,
    action: HeldAction,
    selection: &HeldSelection,
    report: &mut HeldReport,
) -> Result<(), HeldError> {
    let channel = connection.create_channel().await?;
    channel
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
    // Removals an older replica held in the classic hold queue are moved first
    // (confirmed, ack-last), so that a rolling upgrade hides none of them.
    crate::amqp::migration::migrate_legacy_hold_queue(connection, names.work_queue()).await?;
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
            event_id: event_id_of(&message.delivery.data),
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
        if !room || !selection.matches(&held) {
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
    Ok(())
}

/// The `event_id` of a JSON body; `None` for anything else (a held message is one the
/// service already parsed, so this is for display and selection only).
fn event_id_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Head {
        event_id: Option<String>,
    }
    serde_json::from_slice::<Head>(body).ok()?.event_id
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn held(employee: &str, event: &str, at: Option<&str>) -> HeldMessage {
        HeldMessage {
            routing_key: "employee.removed".into(),
            employee_id: Some(employee.into()),
            event_id: Some(event.into()),
            message_id: None,
            held_at: at.map(str::to_owned),
        }
    }

    #[test]
    fn each_filter_selects_exactly_its_messages() {
        let early = held("E-1", "ev-1", Some("2026-12-01T10:00:00Z"));
        let late = held("E-2", "ev-2", Some("2026-12-01T12:00:00Z"));
        let undated = held("E-3", "ev-3", None);
        let all = [&early, &late, &undated];
        let picked = |selection: HeldSelection| -> Vec<String> {
            all.iter()
                .filter(|m| selection.matches(m))
                .filter_map(|m| m.event_id.clone())
                .collect()
        };
        assert_eq!(picked(HeldSelection::default()), ["ev-1", "ev-2", "ev-3"]);
        assert_eq!(
            picked(HeldSelection {
                event_id: Some("ev-2".into()),
                ..HeldSelection::default()
            }),
            ["ev-2"]
        );
        assert_eq!(
            picked(HeldSelection {
                employee_id: Some("E-3".into()),
                ..HeldSelection::default()
            }),
            ["ev-3"]
        );
        let noon = datetime!(2026-12-01 12:00 UTC);
        assert_eq!(
            picked(HeldSelection {
                held_before: Some(noon),
                ..HeldSelection::default()
            }),
            ["ev-1"]
        );
        assert_eq!(
            picked(HeldSelection {
                held_after: Some(noon),
                ..HeldSelection::default()
            }),
            ["ev-2"]
        );
        assert_eq!(
            picked(HeldSelection {
                routing_key: Some("employee.added".into()),
                ..HeldSelection::default()
            }),
            Vec::<String>::new()
        );
    }

    #[test]
    fn the_event_id_comes_from_a_json_body_only() {
        assert_eq!(
            event_id_of(br#"{"event_id":"ev-9","x":1}"#).as_deref(),
            Some("ev-9")
        );
        assert_eq!(event_id_of(b"not json"), None);
    }
}
