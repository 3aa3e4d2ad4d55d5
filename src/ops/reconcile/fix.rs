//! `--fix`: repairing drift through the pipeline, not around it.
//!
//! A repair is an ordinary HR event (`employee.added` / `updated` / `removed`) published
//! to the input exchange with publisher confirms, so that ordering, outcomes,
//! dead-lettering, the trust rules and the offboarding guard all apply as they do to
//! HR's own events. Each is checked by the service's own parser before it is sent; its
//! `event_id` is `reconcile-<run id>-<employee id>` (one event per employee per run, so a
//! run repeated with the same `--run-id` is a duplicate the service handles), and it
//! carries `x-reconcile-run` (informational: not one of the headers that relax a rule).
//! The `user_id` property is the broker user, so `TRUSTED_PUBLISHERS` can admit
//! reconciliation like an HR publisher.

use crate::amqp::publisher::{PublishError, Publisher};
use crate::config::BrokerSettings;
use crate::domain::event::{parse_message, printable, EventType, RawMessage, ValidationError};
use crate::telemetry::metrics::PublishedMessage;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The header naming the reconciliation run that published an event.
pub const RECONCILE_RUN: &str = "x-reconcile-run";

/// A corrective event, validated and ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Corrective {
    pub event_type: EventType,
    pub event_id: String,
    pub employee_id: String,
    pub body: Vec<u8>,
}

/// The deterministic event id of a run's repair of one employee.
pub fn event_id(run_id: &str, employee_id: &str) -> String {
    format!("reconcile-{run_id}-{employee_id}")
}

/// Builds a corrective event and checks it with the service's own parser.
///
/// # Errors
/// The [`ValidationError`] the service would dead-letter it with.
pub fn build(
    event_type: EventType,
    run_id: &str,
    employee_id: &str,
    occurred_at: &str,
    employee: Map<String, Value>,
) -> Result<Corrective, ValidationError> {
    let event_id = event_id(run_id, employee_id);
    let body = json!({
        "event_id": event_id,
        "occurred_at": occurred_at,
        "employee": employee,
    });
    let body = serde_json::to_vec(&body).unwrap_or_default();
    parse_message(RawMessage {
        routing_key: event_type.as_str(),
        content_type: Some("application/json"),
        body: &body,
    })
    .map_err(|(error, _)| error)?;
    Ok(Corrective {
        event_type,
        event_id,
        employee_id: employee_id.to_owned(),
        body,
    })
}

/// The `employee` of a removal: the id, and the login as email when Okta has one.
pub fn removal_employee(employee_id: &str, login: &str) -> Map<String, Value> {
    let mut employee = Map::new();
    employee.insert("id".into(), json!(employee_id));
    if !login.is_empty() {
        employee.insert("email".into(), json!(login));
    }
    employee
}

/// The `employee` of a groups-only update (`--only groups`): the name and email Okta
/// already has, so that the update writes no profile change, and the roster's groups.
/// Optional fields are left out: an update changes only the fields it gives.
pub fn groups_only_employee(
    employee_id: &str,
    okta_profile: &Map<String, Value>,
    hr_groups: &[String],
) -> Map<String, Value> {
    let field = |key: &str| okta_profile.get(key).cloned().unwrap_or(Value::Null);
    let email = match field("email") {
        Value::String(email) if !email.is_empty() => json!(email),
        _ => field("login"),
    };
    let mut employee = Map::new();
    employee.insert("id".into(), json!(employee_id));
    employee.insert("email".into(), email);
    employee.insert("first_name".into(), field("firstName"));
    employee.insert("last_name".into(), field("lastName"));
    employee.insert("groups".into(), json!(hr_groups));
    employee
}

/// Why corrective or summary events were not all published.
#[derive(Debug, thiserror::Error)]
pub enum FixError {
    #[error("cannot connect to the broker at {url}")]
    Connect {
        url: String,
        #[source]
        source: lapin::Error,
    },
    #[error("cannot open a confirm channel on the broker")]
    Channel(#[source] lapin::Error),
    #[error("{published} corrective events were confirmed; event {event_id} was not")]
    Publish {
        published: u64,
        event_id: String,
        #[source]
        source: PublishError,
    },
    #[error("the reconcile.completed event was not confirmed")]
    Summary(#[source] PublishError),
}

/// A connection and confirm channel for one run's publishing.
pub struct BrokerLink {
    connection: Connection,
    publisher: Publisher,
    settings: BrokerSettings,
    /// The broker user, set as `user_id` (the broker checks it is the connection's).
    user: Option<String>,
}

impl BrokerLink {
    /// Connects to the broker of `settings`.
    ///
    /// # Errors
    /// [`FixError::Connect`] or [`FixError::Channel`].
    pub async fn connect(settings: &BrokerSettings) -> Result<Self, FixError> {
        let url = settings.amqp_url.expose();
        let connection = crate::amqp::connect(url, "reconcile")
            .await
            .map_err(|source| FixError::Connect {
                url: redacted(url),
                source,
            })?;
        let publisher = match Publisher::open(
            &connection,
            &settings.topology.results_exchange,
            &settings.topology.dead_letter_exchange,
        )
        .await
        {
            Ok(publisher) => publisher,
            Err(e) => {
                let _ = connection.close(200, "reconcile done".into()).await;
                return Err(FixError::Channel(e));
            }
        };
        let user = url::Url::parse(url)
            .ok()
            .map(|u| u.username().to_owned())
            .filter(|u| !u.is_empty());
        Ok(Self {
            connection,
            publisher,
            settings: settings.clone(),
            user,
        })
    }

    /// Publishes `events` one by one to the input exchange, each confirmed before the
    /// next (an unroutable one is an error: no queue is bound). `on_published` is told
    /// the count after each.
    ///
    /// # Errors
    /// [`FixError::Publish`], naming how many were confirmed before.
    pub async fn publish_events(
        &self,
        run_id: &str,
        events: &[Corrective],
        mut on_published: impl FnMut(u64),
    ) -> Result<BTreeMap<&'static str, u64>, FixError> {
        let mut published: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut total = 0u64;
        for event in events {
            let mut headers = FieldTable::default();
            headers.insert(
                ShortString::from(RECONCILE_RUN),
                AMQPValue::LongString(run_id.into()),
            );
            let mut properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_message_id(event.event_id.as_str().into())
                .with_app_id("iam-provisioner-reconcile".into())
                .with_timestamp(time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64)
                .with_headers(headers);
            if let Some(user) = &self.user {
                properties = properties.with_user_id(user.as_str().into());
            }
            self.publisher
                .publish(
                    PublishedMessage::Outcome,
                    &self.settings.topology.input_exchange,
                    event.event_type.as_str(),
                    &event.body,
                    properties,
                    true,
                )
                .await
                .map_err(|source| FixError::Publish {
                    published: total,
                    event_id: printable(&event.event_id),
                    source,
                })?;
            total += 1;
            *published.entry(event.event_type.as_str()).or_default() += 1;
            on_published(total);
        }
        Ok(published)
    }

    /// Publishes the run's `reconcile.completed` event on the results exchange.
    ///
    /// # Errors
    /// [`FixError::Summary`].
    pub async fn publish_summary(&self, summary: &Value) -> Result<(), FixError> {
        let body = serde_json::to_vec(summary).unwrap_or_default();
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_app_id("iam-provisioner".into())
            .with_type(ShortString::from(SUMMARY_EVENT))
            .with_timestamp(time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64);
        self.publisher
            .publish(
                PublishedMessage::Outcome,
                &self.settings.topology.results_exchange,
                SUMMARY_EVENT,
                &body,
                properties,
                false,
            )
            .await
            .map_err(FixError::Summary)
    }

    /// Closes the channel and the connection.
    pub async fn close(self) {
        self.publisher.close().await;
        let _ = self.connection.close(200, "reconcile done".into()).await;
    }
}

/// The summary event's type and routing key.
pub const SUMMARY_EVENT: &str = "reconcile.completed";

/// A broker URL without its password, for messages.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "(unparseable URL)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn corrective_events_pass_the_services_own_validation() {
        let hire = build(
            EventType::Added,
            "run1",
            "E-1",
            "2026-12-04T10:00:00Z",
            object(json!({"id": "E-1", "email": "ada@example.com", "first_name": "Ada", "last_name": "L", "groups": ["Sales"]})),
        )
        .expect("valid");
        assert_eq!(hire.event_id, "reconcile-run1-E-1");
        let body: Value = serde_json::from_slice(&hire.body).expect("json");
        assert_eq!(body["event_id"], "reconcile-run1-E-1");
        assert_eq!(body["employee"]["groups"], json!(["Sales"]));

        let leaver = build(
            EventType::Removed,
            "run1",
            "E-2",
            "2026-12-04T10:00:00Z",
            removal_employee("E-2", "grace@example.com"),
        )
        .expect("valid");
        assert_eq!(leaver.event_type, EventType::Removed);

        let broken = build(
            EventType::Updated,
            "run1",
            "E-3",
            "2026-12-04T10:00:00Z",
            object(json!({"id": "E-3", "email": "x@example.com"})),
        );
        assert!(
            broken.is_err(),
            "an update without names is refused before it is sent"
        );
    }

    #[test]
    fn a_groups_only_update_repeats_what_okta_has() {
        let okta = object(
            json!({"login": "ada@example.com", "email": "ada@example.com", "firstName": "Ada", "lastName": "Byron", "title": "Old"}),
        );
        let employee = groups_only_employee("E-1", &okta, &["Sales".to_owned()]);
        assert_eq!(
            Value::Object(employee),
            json!({"id": "E-1", "email": "ada@example.com", "first_name": "Ada", "last_name": "Byron", "groups": ["Sales"]})
        );
    }

    #[test]
    fn the_password_never_reaches_a_message() {
        assert_eq!(
            redacted("amqp://user:secret@broker:5672/%2f"),
            "amqp://user:***@broker:5672/%2f"
        );
    }
}
