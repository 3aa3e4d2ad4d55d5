//! Publishing with publisher confirms: outcome events to the results exchange, and
//! dead-letter copies to the dead-letter exchange. A publish returns only once the broker
//! has confirmed it, so the caller may then acknowledge the delivery that caused it.
//!
//! In the service's session ([`Publisher::for_session`]) a publish the broker refuses
//! (nack, or a `mandatory` copy returned) is sent again with backoff until it is
//! confirmed or the session ends, so the delivery that caused it keeps its employee's
//! turn; a publish whose channel cannot be trusted (an error, or a confirm that never
//! came) ends the session instead. Why: docs/broker.md, "Publish failures".

use super::{headers, trace};
use crate::domain::outcome::{format_timestamp, Failure, Outcome};
use crate::http::Health;
use crate::telemetry::metrics::{Metrics, PublishResult, PublishedMessage};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionStatus};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long a confirm may take before the publish counts as failed, unless the broker
/// has said it blocks the connection (then waiting is the right thing to do).
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Between two attempts at a refused publish: from this, doubling, to [`REFUSED_MAX_DELAY`].
const REFUSED_FIRST_DELAY: Duration = Duration::from_millis(200);
const REFUSED_MAX_DELAY: Duration = Duration::from_secs(10);

/// The headers a dead-letter copy gains (contract section 6).
pub mod dead_letter_headers {
    pub const ORIGINAL_EXCHANGE: &str = "x-original-exchange";
    pub const ORIGINAL_ROUTING_KEY: &str = "x-original-routing-key";
    pub const ERROR_KIND: &str = "x-error-kind";
    pub const ERROR_MESSAGE: &str = "x-error-message";
    pub const ATTEMPTS: &str = "x-attempts";
    pub const FAILED_AT: &str = "x-failed-at";
    pub const OKTA_ERROR_CODE: &str = "x-okta-error-code";
    pub const OKTA_REQUEST_ID: &str = "x-okta-request-id";
    /// Added by this service: the employee id, when the message had a readable one.
    pub const EMPLOYEE_ID: &str = "x-employee-id";
}

/// The longest `x-error-message`; headers are not the place for essays.
const MAX_ERROR_MESSAGE: usize = 1000;

/// Why a publish was not confirmed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker error while publishing to '{exchange}'")]
    Broker {
        exchange: String,
        #[source]
        source: lapin::Error,
    },
    #[error("the broker refused (nack) the message published to '{exchange}'")]
    Nacked { exchange: String },
    #[error("no queue is bound to '{exchange}' for routing key '{routing_key}'; the message was returned")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
    #[error("the broker did not confirm the message published to '{exchange}' within {} ms", after.as_millis())]
    ConfirmTimeout { exchange: String, after: Duration },
}

impl PublishError {
    /// Whether the broker answered and refused (nack or return): the channel is sound,
    /// and the same publish may be confirmed later (a queue drained, a binding restored).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            PublishError::Nacked { .. } | PublishError::Unroutable { .. }
        )
    }
}

/// What ties a publisher to the service's session: refused publishes wait (with
/// backoff) until `hand_back`; a channel that cannot be trusted ends the session by
/// `broken`; `/readyz` and `/metrics` learn both through `health`.
pub struct SessionLink {
    pub health: Health,
    /// Cancelled by the publisher when a publish failed in a way that ends the session.
    pub broken: CancellationToken,
    /// Cancelled by the session when it ends: refused publishes stop waiting.
    pub hand_back: CancellationToken,
    /// Why the session was ended by a publish, for the session's log line.
    pub reason: Mutex<Option<String>>,
}

/// Counts one refused publish as waiting for as long as it lives (even when its task is
/// aborted).
struct Waiting<'a>(&'a Health);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.publish_waiting(false);
    }
}

/// A message as it was delivered, kept to build its dead-letter copy.
#[derive(Debug, Clone)]
pub struct DeliveredMessage {
    pub exchange: String,
    pub routing_key: String,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

/// Publishes on its own confirm-mode channel.
pub struct Publisher {
    channel: Channel,
    results_exchange: String,
    dead_letter_exchange: String,
    metrics: Metrics,
    /// Outcomes say `"okta": "simulated"` when the service runs against the fake Okta.
    simulated_okta: bool,
    /// Whether the broker blocks the connection (resource alarm).
    connection_status: ConnectionStatus,
    confirm_timeout: Duration,
    session: Option<SessionLink>,
}

impl Publisher {
    /// Opens a confirm-mode channel on `connection`.
    ///
    /// # Errors
    /// The broker's error.
    pub async fn open(
        connection: &Connection,
        results_exchange: &str,
        dead_letter_exchange: &str,
    ) -> Result<Self, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            results_exchange: results_exchange.to_owned(),
            dead_letter_exchange: dead_letter_exchange.to_owned(),
            metrics: Metrics::default(),
            simulated_okta: false,
            connection_status: connection.status().clone(),
            confirm_timeout: DEFAULT_CONFIRM_TIMEOUT,
            session: None,
        })
    }

    /// Bounds the wait for each confirm (outside a broker-announced block).
    pub fn with_confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// Ties the publisher to the service's session (see [`SessionLink`]).
    pub fn for_session(mut self, link: SessionLink) -> Self {
        self.session = Some(link);
        self
    }

    /// Whether the publishing channel is still open.
    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    /// Ends the session because a publish could not be confirmed; `false` when the
    /// publisher serves no session (a command), which then simply returns its error.
    pub fn end_session(&self, error: &PublishError) -> bool {
        let Some(link) = &self.session else {
            return false;
        };
        let mut reason = match link.reason.lock() {
            Ok(reason) => reason,
            Err(poisoned) => poisoned.into_inner(),
        };
        reason.get_or_insert_with(|| crate::telemetry::error_chain(error));
        link.broken.cancel();
        true
    }

    /// Why a publish ended the session, once one did.
    pub fn session_failure(&self) -> Option<String> {
        let link = self.session.as_ref()?;
        match link.reason.lock() {
            Ok(reason) => reason.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Records the broker's answers (and confirmed dead-letter copies) in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Marks every outcome as produced against the fake Okta (`run --okta-sim`): a
    /// consumer of outcomes must never mistake a trial run for real provisioning.
    pub fn with_simulated_okta(mut self, simulated: bool) -> Self {
        self.simulated_okta = simulated;
        self
    }

    /// Closes the channel once nothing more will be published.
    pub async fn close(&self) {
        let _ = self.channel.close(200, "done".into()).await;
    }

    /// Publishes an outcome event and waits for the broker's confirm. It carries the
    /// context of its producer span, or, without one, `trace_context` (the input's). An outcome nobody has bound a queue for is still confirmed:
    /// dashboards are optional.
    ///
    /// # Errors
    /// [`PublishError`] when the broker did not confirm.
    pub async fn publish_outcome(
        &self,
        outcome: &Outcome,
        trace_context: FieldTable,
    ) -> Result<(), PublishError> {
        let body = if self.simulated_okta {
            simulated_outcome_body(outcome)
        } else {
            serde_json::to_vec(outcome).unwrap_or_default()
        };
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_app_id("iam-provisioner".into())
            .with_type(ShortString::from(outcome.event_type.as_str()))
            .with_timestamp(OffsetDateTime::now_utc().unix_timestamp().max(0) as u64)
            .with_headers(trace_context);
        if let Some(event_id) = &outcome.source_event_id {
            if let Ok(id) = ShortString::try_new(event_id.clone()) {
                properties = properties.with_correlation_id(id);
            }
        }
        self.publish(
            PublishedMessage::Outcome,
            &self.results_exchange,
            &outcome.routing_key(),
            &body,
            properties,
            false,
        )
        .await
    }

    /// Publishes the dead-letter copy of `message`: its body and properties, plus the
    /// failure headers. `mandatory`, so a missing dead-letter queue is an error, never a
    /// silent loss.
    ///
    /// # Errors
    /// [`PublishError`] when the broker did not confirm, or could not route the copy.
    pub async fn dead_letter(
        &self,
        message: &DeliveredMessage,
        failure: &Failure,
        attempts: u32,
        employee_id: Option<&str>,
    ) -> Result<(), PublishError> {
        use dead_letter_headers::*;
        let original = message.properties.headers().as_ref();
        let mut table: BTreeMap<ShortString, lapin::types::AMQPValue> =
            original.map(|t| t.inner().clone()).unwrap_or_default();
        // A message that failed before (and was replayed) must not keep the details of
        // its earlier failure.
        for stale in [OKTA_ERROR_CODE, OKTA_REQUEST_ID] {
            table.remove(stale);
        }
        let mut headers_out = FieldTable::from(table);
        if headers::get_str(original, ORIGINAL_EXCHANGE).is_none() {
            headers::set_str(&mut headers_out, ORIGINAL_EXCHANGE, &message.exchange);
        }
        headers::set_str(&mut headers_out, ORIGINAL_ROUTING_KEY, &message.routing_key);
        headers::set_str(&mut headers_out, ERROR_KIND, failure.kind.as_str());
        headers::set_str(
            &mut headers_out,
            ERROR_MESSAGE,
            &bounded(&failure.message, MAX_ERROR_MESSAGE),
        );
        headers::set_int(&mut headers_out, ATTEMPTS, i64::from(attempts));
        headers::set_str(
            &mut headers_out,
            FAILED_AT,
            &format_timestamp(OffsetDateTime::now_utc()),
        );
        if let Some(code) = &failure.okta_error_code {
            headers::set_str(&mut headers_out, OKTA_ERROR_CODE, code);
        }
        if let Some(id) = &failure.okta_request_id {
            headers::set_str(&mut headers_out, OKTA_REQUEST_ID, id);
        }
        if let Some(id) = employee_id {
            // Taken from a body: bounded and printable, like every such header value.
            headers::set_str(
                &mut headers_out,
                EMPLOYEE_ID,
                &crate::domain::event::printable(id),
            );
        }
        // No `user_id` (refused from this connection's user) and no `expiration` (a
        // dead letter waits for an operator, not a publisher's TTL): `headers::clean_properties`.
        let mut properties =
            headers::clean_properties(&message.properties).with_headers(headers_out);
        // A failure waiting for an operator must survive a broker restart.
        if properties.delivery_mode() != &Some(2) {
            properties = properties.with_delivery_mode(2);
        }
        self.publish(
            PublishedMessage::DeadLetter,
            &self.dead_letter_exchange,
            &message.routing_key,
            &message.body,
            properties,
            true,
        )
        .await
        .inspect(|()| {
            self.metrics
                .dead_lettered(&message.routing_key, failure.kind)
        })
    }

    /// Publishes one message and waits for the broker's confirm; with `mandatory`, an
    /// unroutable message is an error. In a session, a refused message is sent again
    /// with backoff until confirmed or the session ends.
    ///
    /// # Errors
    /// [`PublishError`] when the broker did not confirm, or returned the message (in a
    /// session: a channel error or confirm timeout, or a refusal when the session ends).
    pub async fn publish(
        &self,
        kind: PublishedMessage,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), PublishError> {
        let mut delay = REFUSED_FIRST_DELAY;
        let mut waiting = None;
        loop {
            let result = self
                .publish_once(
                    kind,
                    exchange,
                    routing_key,
                    body,
                    properties.clone(),
                    mandatory,
                )
                .await;
            let Err(error) = result else {
                return Ok(());
            };
            let Some(link) = &self.session else {
                return Err(error);
            };
            link.health.publish_failed();
            if !error.is_refusal() {
                // The channel cannot be trusted (closed, or a confirm lost): the session
                // ends and the broker returns every unacknowledged delivery, in order.
                self.end_session(&error);
                return Err(error);
            }
            if waiting.is_none() {
                link.health.publish_waiting(true);
                waiting = Some(Waiting(&link.health));
            }
            tracing::warn!(
                error = crate::telemetry::error_chain(&error),
                retry_in_ms = delay.as_millis() as u64,
                "the broker refused a publish; the delivery keeps its turn and the publish is sent again"
            );
            tokio::select! {
                biased;
                _ = link.hand_back.cancelled() => return Err(error),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(REFUSED_MAX_DELAY);
        }
    }

    /// One publish and its confirm, traced and counted.
    async fn publish_once(
        &self,
        kind: PublishedMessage,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), PublishError> {
        let span = trace::producer_span(exchange, routing_key);
        let properties = trace::inject_context(&span, properties);
        let result = self
            .publish_bounded(exchange, routing_key, body, properties, mandatory)
            .instrument(span.clone())
            .await;
        self.metrics.published(
            kind,
            match &result {
                Ok(()) => PublishResult::Confirmed,
                Err(PublishError::Nacked { .. }) => PublishResult::Nacked,
                Err(PublishError::Unroutable { .. }) => PublishResult::Returned,
                Err(PublishError::Broker { .. }) => PublishResult::Error,
                Err(PublishError::ConfirmTimeout { .. }) => PublishResult::TimedOut,
            },
        );
        if result.is_err() {
            span.record("otel.status_code", "error");
        }
        result
    }

    /// [`Publisher::publish_confirmed`], bounded by the confirm timeout, except while
    /// the broker blocks the connection: it said why no confirm comes, and a timeout
    /// then would only end the session and run the deliveries again for nothing.
    async fn publish_bounded(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), PublishError> {
        let publish = self.publish_confirmed(exchange, routing_key, body, properties, mandatory);
        tokio::pin!(publish);
        loop {
            match tokio::time::timeout(self.confirm_timeout, &mut publish).await {
                Ok(result) => return result,
                Err(_) if self.connection_status.blocked() => {
                    tracing::warn!(
                        exchange,
                        "the broker blocks the connection (resource alarm); still waiting for a confirm"
                    );
                }
                Err(_) => {
                    return Err(PublishError::ConfirmTimeout {
                        exchange: exchange.to_owned(),
                        after: self.confirm_timeout,
                    })
                }
            }
        }
    }

    async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), PublishError> {
        let broker = |source| PublishError::Broker {
            exchange: exchange.to_owned(),
            source,
        };
        let confirmation = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .map_err(broker)?
            .await
            .map_err(broker)?;
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_returned)) => Err(PublishError::Unroutable {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            }),
            Confirmation::Nack(_) => Err(PublishError::Nacked {
                exchange: exchange.to_owned(),
            }),
        }
    }
}

/// The outcome's JSON with `"okta": "simulated"` added (additive to contract section 4).
fn simulated_outcome_body(outcome: &Outcome) -> Vec<u8> {
    let mut value = serde_json::to_value(outcome).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("okta".into(), "simulated".into());
    }
    serde_json::to_vec(&value).unwrap_or_default()
}

fn bounded(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(limit).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_are_sent_again_in_place() {
        let exchange = "identity.results".to_owned();
        assert!(PublishError::Nacked {
            exchange: exchange.clone()
        }
        .is_refusal());
        assert!(PublishError::Unroutable {
            exchange: exchange.clone(),
            routing_key: "employee.added.succeeded".into()
        }
        .is_refusal());
        // A lost confirm or a broken channel leaves the channel in doubt: the session
        // ends instead.
        assert!(!PublishError::ConfirmTimeout {
            exchange,
            after: Duration::from_secs(30)
        }
        .is_refusal());
    }
}
