//! Audit events of operator actions: every command that changes what the service will do
//! (`replay`, `dlq purge --yes`, `held release|discard`, and later `reconcile --fix`)
//! publishes `operator.<action>` on the results exchange, with publisher confirms, saying
//! who ran it (OS user, uid and host), what it selected and which events it touched.
//!
//! Why here and not in the commands' loops: the event describes the command as a whole,
//! once it has finished, from the report the command already prints; the loops stay as they
//! are. Why the results exchange: whoever watches outcomes (dashboards, a SIEM) already
//! consumes it, and a binding on `operator.#` selects exactly these events.
//!
//! The "who" is what the operator's machine says; it is evidence, not authentication (the
//! broker user, checked by RabbitMQ, is the authenticated part: see
//! docs/security-operations.md).

use crate::amqp::publisher::{PublishError, Publisher};
use crate::amqp::BrokerSettings;
use crate::domain::event::printable;
use crate::domain::outcome::format_timestamp;
use crate::secret::redact_url_password;
use crate::telemetry::metrics::PublishedMessage;
use lapin::types::ShortString;
use lapin::BasicProperties;
use serde::Serialize;
use time::OffsetDateTime;

/// The operator actions that are audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorAction {
    /// `replay` / `dlq replay`: dead letters sent back to processing.
    Replay,
    /// `dlq purge --yes`: dead letters deleted.
    Purge,
    /// `held release --yes`: held removals sent past the guard.
    HeldRelease,
    /// `held discard --yes`: held removals dropped.
    HeldDiscard,
    /// `reconcile --fix` (not yet a command): Okta changed to match HR.
    ReconcileFix,
}

impl OperatorAction {
    /// The name in the routing key and `event_type`: `operator.<name>`.
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorAction::Replay => "replay",
            OperatorAction::Purge => "purge",
            OperatorAction::HeldRelease => "held_release",
            OperatorAction::HeldDiscard => "held_discard",
            OperatorAction::ReconcileFix => "reconcile_fix",
        }
    }
}

/// Who ran a command, as the operator's machine reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Operator {
    /// `USER`, else `LOGNAME`, else `unknown`.
    pub user: String,
    /// The numeric user id of the process (Unix), which `USER` cannot fake.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The host name (`/proc/sys/kernel/hostname`, else `HOSTNAME`), else `unknown`.
    pub host: String,
    /// The broker user of `AMQP_URL`: the one identity here the broker authenticated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_user: Option<String>,
}

impl Operator {
    /// The operator running this process.
    pub fn current() -> Self {
        let from_env = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
        };
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| from_env(&["HOSTNAME"]))
            .unwrap_or_else(|| "unknown".to_owned());
        Self {
            user: printable(&from_env(&["USER", "LOGNAME"]).unwrap_or_else(|| "unknown".into())),
            uid: current_uid(),
            host: printable(&host),
            broker_user: None,
        }
    }
}

#[cfg(unix)]
fn current_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    // The owner of this process's /proc entry is its real user id; no libc call needed.
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

#[cfg(not(unix))]
fn current_uid() -> Option<u32> {
    None
}

/// The most event ids listed in one audit event; `count` always has the full number.
pub const MAX_LISTED_EVENT_IDS: usize = 1000;

/// One audit event, serialised as the body of `operator.<action>`.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// `operator.<action>`.
    pub event_type: String,
    pub action: OperatorAction,
    pub operator: Operator,
    /// The queue acted on.
    pub queue: String,
    /// The filters given, as `name=value` (e.g. `error_kind=okta`).
    pub selection: Vec<String>,
    /// How many messages were acted on.
    pub count: u64,
    /// The event ids (else message ids) of those messages, at most
    /// [`MAX_LISTED_EVENT_IDS`].
    pub event_ids: Vec<String>,
    /// Whether `event_ids` was cut short.
    pub event_ids_truncated: bool,
    /// Whether the command stopped on an error after acting on `count` messages.
    pub interrupted: bool,
    #[serde(serialize_with = "serialize_time")]
    pub occurred_at: OffsetDateTime,
}

impl AuditEvent {
    /// An event for `action` by the current operator, now.
    pub fn new(
        action: OperatorAction,
        queue: &str,
        selection: Vec<String>,
        count: u64,
        event_ids: impl IntoIterator<Item = String>,
    ) -> Self {
        let mut ids: Vec<String> = event_ids
            .into_iter()
            .take(MAX_LISTED_EVENT_IDS + 1)
            .map(|id| printable(&id))
            .collect();
        let truncated = ids.len() > MAX_LISTED_EVENT_IDS;
        ids.truncate(MAX_LISTED_EVENT_IDS);
        Self {
            event_type: format!("operator.{}", action.as_str()),
            action,
            operator: Operator::current(),
            queue: queue.to_owned(),
            selection,
            count,
            event_ids: ids,
            event_ids_truncated: truncated,
            interrupted: false,
            occurred_at: OffsetDateTime::now_utc(),
        }
    }

    /// The routing key: the event type.
    pub fn routing_key(&self) -> &str {
        &self.event_type
    }
}

fn serialize_time<S: serde::Serializer>(at: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_timestamp(*at))
}

/// `name=value` for each filter that is set, for [`AuditEvent::selection`].
pub fn selection_of<'a>(
    filters: impl IntoIterator<Item = (&'a str, Option<String>)>,
) -> Vec<String> {
    filters
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| format!("{name}={}", printable(&v))))
        .collect()
}

/// Why an audit event was not published; the action it describes is done either way.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit: cannot connect to the broker at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: lapin::Error,
    },
    #[error("audit: cannot open a channel: {0}")]
    Channel(#[source] lapin::Error),
    #[error("audit: the event {event_type} was not confirmed: {source}")]
    Publish {
        event_type: String,
        #[source]
        source: PublishError,
    },
}

/// Publishes `event` on the results exchange of `settings` and waits for the broker's
/// confirm, on a connection of its own (the command's is closed by then).
///
/// # Errors
/// [`AuditError`]; the caller reports it and exits non-zero, so an unaudited action is
/// noticed.
pub async fn publish(settings: &BrokerSettings, event: &AuditEvent) -> Result<(), AuditError> {
    let connection = crate::amqp::connect(settings.amqp_url.expose(), "audit")
        .await
        .map_err(|source| AuditError::Connect {
            url: redact_url_password(settings.amqp_url.expose()),
            source,
        })?;
    let result = async {
        let publisher = Publisher::open(&connection, &settings.topology.results_exchange, "")
            .await
            .map_err(AuditError::Channel)?;
        let mut event = event.clone();
        event.operator.broker_user = url::Url::parse(settings.amqp_url.expose())
            .ok()
            .map(|url| printable(url.username()))
            .filter(|user| !user.is_empty());
        let body = serde_json::to_vec(&event).unwrap_or_default();
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_app_id("iam-provisioner".into())
            .with_type(ShortString::from(event.event_type.as_str()))
            .with_timestamp(event.occurred_at.unix_timestamp().max(0) as u64);
        let published = publisher
            .publish(
                PublishedMessage::Outcome,
                &settings.topology.results_exchange,
                event.routing_key(),
                &body,
                properties,
                false,
            )
            .await
            .map_err(|source| AuditError::Publish {
                event_type: event.event_type.clone(),
                source,
            });
        publisher.close().await;
        published
    }
    .await;
    let _ = connection.close(200, "audit done".into()).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audit_event_says_who_what_and_which() {
        let event = AuditEvent::new(
            OperatorAction::HeldRelease,
            "iam-provisioner.holding",
            selection_of([("employee_id", Some("E-1".to_owned())), ("event_id", None)]),
            2,
            ["ev-1".to_owned(), "ev-2\n".to_owned()],
        );
        let json = serde_json::to_value(&event).expect("serialise");
        assert_eq!(json["event_type"], "operator.held_release");
        assert_eq!(event.routing_key(), "operator.held_release");
        assert_eq!(json["action"], "held_release");
        assert_eq!(json["count"], 2);
        assert_eq!(json["selection"], serde_json::json!(["employee_id=E-1"]));
        assert_eq!(json["event_ids"], serde_json::json!(["ev-1", "ev-2\\n"]));
        assert!(json["operator"]["user"].is_string());
        assert!(json["operator"]["host"].is_string());
    }

    #[test]
    fn the_list_of_ids_is_bounded_but_the_count_is_not() {
        let ids = (0..MAX_LISTED_EVENT_IDS + 5).map(|n| format!("ev-{n}"));
        let event = AuditEvent::new(OperatorAction::Replay, "q", vec![], 1005, ids);
        assert_eq!(event.event_ids.len(), MAX_LISTED_EVENT_IDS);
        assert!(event.event_ids_truncated);
        assert_eq!(event.count, 1005);
    }
}
