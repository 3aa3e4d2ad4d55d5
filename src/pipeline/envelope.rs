//! What the pipeline knows of a delivery besides its event: the facts its AMQP headers
//! and routing carried, decoded once at the edge (`crate::amqp::decode`) into plain Rust
//! types.
//!
//! Every later stage — lanes, deferral, trust, retry, the outcome's trace context —
//! reads these fields instead of the broker's header table, so no broker type travels
//! past the adapter and a header is interpreted in exactly one place.

use crate::domain::event::{HrEvent, ValidationContext, ValidationError};
use crate::domain::schedule::Scheduled;
use crate::pipeline::lanes::Lane;
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// The typed facts of one delivery, after its first contact (`crate::trust`): forged own
/// headers are already gone, so every field here may be believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The queue it came from.
    pub lane: Lane,
    /// The exchange it was delivered from (the broker sets it; nobody can forge it).
    pub exchange: String,
    /// Its routing key: the event type, as the publisher said it (not yet validated).
    pub routing_key: String,
    /// The AMQP `message_id`, if any.
    pub message_id: Option<String>,
    /// A removal routed by the input exchange, which puts a copy in both lanes
    /// (`crate::pipeline::lanes`).
    pub twin_routed: bool,
    /// The schedule a parked copy carries (`x-scheduled-kind`, `x-scheduled-for`).
    pub scheduled: Option<Scheduled>,
    /// The last moment a parked removal re-check is checked again (`x-recheck-until`).
    pub recheck_until: Option<OffsetDateTime>,
    /// `x-replay-count` of a message replayed from the dead-letter queue; 0 otherwise.
    pub replay_count: u32,
    /// An operator released it from the hold queue (`x-offboarding-guard-bypass`).
    pub guard_bypass: bool,
    /// The W3C trace headers (`traceparent`, `tracestate`) it carried, to carry onward.
    pub trace_context: BTreeMap<String, String>,
    /// Where it was first published, when a copy of the service recorded it
    /// (`x-original-exchange`).
    pub original_exchange: Option<String>,
    /// The broker-validated publisher of the original (`x-original-user-id` once
    /// admitted), if it had one.
    pub publisher: Option<String>,
    /// It came back through one of the service's own exchanges.
    pub from_own_route: bool,
    /// The own-route headers a delivery from outside carried, and lost at decoding.
    pub forged_headers: Vec<&'static str>,
}

impl Envelope {
    /// An envelope with nothing but a lane, an exchange and a routing key: what a
    /// message straight from a publisher, with no headers, decodes to.
    pub fn plain(lane: Lane, exchange: &str, routing_key: &str) -> Self {
        Self {
            lane,
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            message_id: None,
            twin_routed: false,
            scheduled: None,
            recheck_until: None,
            replay_count: 0,
            guard_bypass: false,
            trace_context: BTreeMap::new(),
            original_exchange: None,
            publisher: None,
            from_own_route: false,
            forged_headers: Vec::new(),
        }
    }
}

/// The event of a delivery, or why it has none.
pub type Parsed = Result<HrEvent, (ValidationError, ValidationContext)>;

/// One delivery as the pipeline sees it: its envelope and its event.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub envelope: Envelope,
    pub event: Parsed,
}

impl Decoded {
    /// The keys that order it behind earlier events of the same employee; none for an
    /// unreadable message.
    pub fn ordering_keys(&self) -> Vec<String> {
        self.event
            .as_ref()
            .map(HrEvent::ordering_keys)
            .unwrap_or_default()
    }

    /// The event id, as far as the message tells it: its body, else its `message_id`.
    pub fn event_id(&self) -> Option<&str> {
        match &self.event {
            Ok(event) => Some(event.event_id.as_str()),
            Err((_, context)) => context.event_id.as_deref(),
        }
        .or(self.envelope.message_id.as_deref())
    }
}
