//! `iam-provisioner held release|discard`: what an operator does with removals the
//! offboarding guard held (`<work queue>.holding`).
//!
//! The hold queue is walked by [`crate::ops::walker`], as the dead-letter queue is: up to
//! the number of messages it had when the command started. What is particular to `held`
//! is here: a selected message is released — its released copy re-published to the work
//! queue through `<work queue>.retry`, under its event type, with a header that lets it
//! past the guard — and acknowledged only after the broker confirmed the copy; or
//! discarded (acknowledged). Messages not selected return to the queue. A crash in
//! between loses nothing; a duplicate release is harmless (offboarding converges).
//!
//! The filters are `replay`'s where they apply to a message that has not failed:
//! routing key, employee id, event id, a time window (on when it was held rather than
//! when it failed) and a limit.

use crate::amqp::headers;
use crate::amqp::parking::{self, ParkingNames};
use crate::amqp::publisher::PublishError;
use crate::ops::walker::{BrokerError, OpsBroker, QueueWalker, Step, Walk, WalkError, WalkRules};
use lapin::message::Delivery;
use std::future::Future;
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
    #[error("cannot connect to the broker at {url}: no answer within {}s", crate::ops::walker::CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout { url: String },
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
    #[error("stopped by the operator; what was not done stays held")]
    Stopped,
}

impl From<BrokerError> for HeldError {
    fn from(error: BrokerError) -> Self {
        match error {
            BrokerError::Connect { url, source } => HeldError::Connect { url, source },
            BrokerError::ConnectTimeout { url } => HeldError::ConnectTimeout { url },
            BrokerError::Queue { queue, source } => HeldError::NoQueue { queue, source },
            BrokerError::Broker { source, .. } => HeldError::Broker(source),
            BrokerError::Topology(error) => HeldError::Upgrade(error),
        }
    }
}

impl From<WalkError<HeldMessage, HeldError>> for HeldError {
    fn from(error: WalkError<HeldMessage, HeldError>) -> Self {
        match error {
            WalkError::Broker(error) => error.into(),
            WalkError::Refused { source, .. } => HeldError::Publish(source),
            WalkError::Remove { source, .. } => HeldError::Broker(source),
            WalkError::Rule(error) => error,
            WalkError::Stopped => HeldError::Stopped,
        }
    }
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

/// Releases or discards the selected held messages of `work_queue` on `broker`, until
/// done or `stop` (the operator's Ctrl-C).
///
/// # Errors
/// [`HeldStopped`]: whatever was acted on before the error stays done (and is in its
/// `done`), the rest stays held.
pub async fn run(
    broker: &OpsBroker,
    work_queue: &str,
    action: HeldAction,
    selection: &HeldSelection,
    stop: impl Future<Output = ()>,
) -> Result<HeldReport, HeldStopped> {
    let names = ParkingNames::for_work_queue(work_queue);
    let walker = QueueWalker::connect(broker, &format!("{work_queue} held"))
        .await
        .map_err(nothing_done)?;
    let result = async {
        walker
            .depth(&names.held_queue)
            .await
            .map_err(nothing_done)?;
        // Removals an older replica held in the classic hold queue are moved first
        // (confirmed, ack-last), so that a rolling upgrade hides none of them.
        crate::amqp::migration::migrate_legacy_hold_queue(walker.connection(), work_queue)
            .await
            .map_err(nothing_done)?;
        let mut rules = HeldRules {
            names: &names,
            action,
            selection,
            taken: 0,
        };
        // No topology is declared for the copies: the retry exchange is the service's own.
        match walker
            .walk(&names.held_queue, None, &mut rules, |_| {}, stop)
            .await
        {
            Ok(walk) => Ok(report(walk)),
            Err(stopped) => Err(HeldStopped {
                done: report(stopped.walk),
                error: stopped.error.into(),
            }),
        }
    }
    .await;
    walker.close().await;
    result
}

fn nothing_done(error: impl Into<HeldError>) -> HeldStopped {
    HeldStopped {
        done: HeldReport::default(),
        error: error.into(),
    }
}

fn report(walk: Walk<HeldMessage>) -> HeldReport {
    HeldReport {
        kept: usize::try_from(walk.scanned - walk.done).unwrap_or(usize::MAX),
        selected: walk.messages,
    }
}

/// Selects with the operator's filters, up to the limit, looking at every message (so
/// that the summary can say how many stay held); a selected message is listed (dry
/// run), released or discarded.
struct HeldRules<'a> {
    names: &'a ParkingNames,
    action: HeldAction,
    selection: &'a HeldSelection,
    /// Messages selected so far.
    taken: usize,
}

impl WalkRules for HeldRules<'_> {
    type Message = HeldMessage;
    type Error = HeldError;

    fn step(
        &mut self,
        _position: u64,
        delivery: &Delivery,
    ) -> Result<Step<HeldMessage>, HeldError> {
        let table = delivery.properties.headers().as_ref();
        let held = HeldMessage {
            routing_key: headers::get_str(table, parking::ORIGINAL_ROUTING_KEY)
                .unwrap_or_default()
                .to_owned(),
            employee_id: headers::get_str(table, parking::EMPLOYEE_ID).map(str::to_owned),
            event_id: event_id_of(&delivery.data),
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string()),
            held_at: headers::get_str(table, parking::HELD_AT).map(str::to_owned),
        };
        let room = self.selection.limit.is_none_or(|limit| self.taken < limit);
        if !room || !self.selection.matches(&held) {
            return Ok(Step::Leave);
        }
        if self.selection.dry_run {
            self.taken += 1;
            return Ok(Step::List(held));
        }
        let step = match self.action {
            HeldAction::Discard => Step::Remove(held),
            HeldAction::Release => {
                if held.routing_key.is_empty() {
                    return Err(HeldError::NoRoutingKey {
                        message_id: held.message_id,
                    });
                }
                let copy = parking::released_copy(
                    self.names,
                    &held.routing_key,
                    &delivery.data,
                    &delivery.properties,
                );
                Step::Move(held, Box::new(copy))
            }
        };
        self.taken += 1;
        Ok(step)
    }
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

    /// A removal as the guard holds it; `routing_key` `None` leaves its header out.
    fn held_delivery(routing_key: Option<&str>, employee: &str) -> Delivery {
        let mut table = lapin::types::FieldTable::default();
        if let Some(key) = routing_key {
            headers::set_str(&mut table, parking::ORIGINAL_ROUTING_KEY, key);
        }
        headers::set_str(&mut table, parking::EMPLOYEE_ID, employee);
        headers::set_str(&mut table, parking::HELD_AT, "2026-12-01T10:00:00Z");
        let mut delivery = Delivery::mock(
            1,
            "".into(),
            "iam.holding".into(),
            false,
            br#"{"event_id":"ev-1"}"#.to_vec(),
        );
        delivery.properties = lapin::BasicProperties::default()
            .with_message_id("msg-1".into())
            .with_headers(table);
        delivery
    }

    fn step(action: HeldAction, selection: &HeldSelection, deliveries: &[Delivery]) -> Vec<String> {
        let names = ParkingNames::for_work_queue("iam");
        let mut rules = HeldRules {
            names: &names,
            action,
            selection,
            taken: 0,
        };
        deliveries
            .iter()
            .zip(1..)
            .map(
                |(delivery, position)| match rules.step(position, delivery) {
                    Ok(Step::Leave) => "leave".to_owned(),
                    Ok(Step::List(m)) => format!("list {}", m.employee_id.unwrap_or_default()),
                    Ok(Step::Remove(m)) => format!("remove {}", m.employee_id.unwrap_or_default()),
                    Ok(Step::Move(m, copy)) => {
                        let bypass = headers::get_str(
                            copy.properties.headers().as_ref(),
                            parking::GUARD_BYPASS,
                        );
                        format!(
                            "move {} to {} {} bypass={}",
                            m.employee_id.unwrap_or_default(),
                            copy.exchange,
                            copy.routing_key,
                            bypass.unwrap_or("-")
                        )
                    }
                    Err(error) => format!("error {error}"),
                },
            )
            .collect()
    }

    #[test]
    fn release_moves_a_released_copy_discard_removes_and_a_dry_run_lists_within_the_limit() {
        let three = [
            held_delivery(Some("employee.removed"), "E-1"),
            held_delivery(Some("employee.removed"), "E-2"),
            held_delivery(Some("employee.removed"), "E-3"),
        ];
        let two = HeldSelection {
            limit: Some(2),
            ..HeldSelection::default()
        };
        let names = ParkingNames::for_work_queue("iam");
        let moved = |e: &str| {
            format!(
                "move {e} to {} employee.removed bypass=released",
                names.retry_exchange
            )
        };
        assert_eq!(
            step(HeldAction::Release, &two, &three),
            [moved("E-1"), moved("E-2"), "leave".to_owned()]
        );
        assert_eq!(
            step(HeldAction::Discard, &two, &three),
            ["remove E-1", "remove E-2", "leave"]
        );
        let dry = HeldSelection {
            dry_run: true,
            employee_id: Some("E-2".into()),
            ..HeldSelection::default()
        };
        assert_eq!(
            step(HeldAction::Release, &dry, &three),
            ["leave", "list E-2", "leave"]
        );
    }

    #[test]
    fn a_held_message_without_its_routing_key_is_not_released() {
        let without = [held_delivery(None, "E-1")];
        let all = HeldSelection::default();
        let released = step(HeldAction::Release, &all, &without);
        assert!(
            released[0]
                .starts_with("error held message Some(\"msg-1\") has no x-original-routing-key"),
            "{released:?}"
        );
        // Discarding needs no routing key.
        assert_eq!(step(HeldAction::Discard, &all, &without), ["remove E-1"]);
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
