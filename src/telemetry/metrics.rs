//! Prometheus metrics: what on-call engineers graph and alert on.
//!
//! It follows vector's internal-event habit: one method per thing that happens (a
//! delivery arrives, an event succeeds, Okta answers, the broker confirms a publish),
//! called from the one place where it happens, recording the metric there — and, for
//! the outcome of a delivery, the bounded `outcome.status` attribute of its span.
//! Callers already log at those places, so these methods do not log.
//!
//! Labels come only from small fixed sets — event type, error kind, Okta operation,
//! HTTP status class, published message kind and result — never from an email, an id
//! or a group name: the number of series is bounded by the code, not by the data.
//! Label values are `&'static str`s produced by `match`es below, so nothing read from a
//! message can become a label.
//!
//! [`Metrics`] holds the recording handles (cheap to clone, passed explicitly to the
//! parts that record). [`MetricsRegistry`] adds what is read at scrape time (group
//! cache counters, Okta's last `X-Rate-Limit-Remaining`, the paused and connected
//! flags) and renders the OpenMetrics text served on `/metrics`.

use crate::domain::event::EventType;
use crate::domain::outcome::ErrorKind;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The label value for a routing key the contract does not name.
const OTHER_EVENT_TYPE: &str = "other";

/// Every value the `event_type` label takes.
pub const EVENT_TYPE_LABELS: [&str; 4] = [
    "employee.added",
    "employee.updated",
    "employee.removed",
    OTHER_EVENT_TYPE,
];

/// Every value the `error_kind` label takes.
pub const ERROR_KINDS: [ErrorKind; 6] = [
    ErrorKind::Validation,
    ErrorKind::Mapping,
    ErrorKind::Okta,
    ErrorKind::Transient,
    ErrorKind::RateLimited,
    ErrorKind::Conflict,
];

/// End-to-end processing, from delivery to acknowledgement: milliseconds for a cached
/// hire, minutes when retries and rate limits are waited out.
const EVENT_DURATION_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// One Okta request; the client's timeout is 15 s by default.
const OKTA_DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0,
];

/// The bounded label of an event type: the contract's three, or `other`.
pub fn event_type_label(routing_key: &str) -> &'static str {
    EventType::from_routing_key(routing_key)
        .map(EventType::as_str)
        .unwrap_or(OTHER_EVENT_TYPE)
}

/// The bounded label of an HTTP answer: `2xx` … `5xx`, or `error` when no answer came.
pub fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "other",
        None => "error",
    }
}

/// Which message the service published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishedMessage {
    /// An outcome event on the results exchange.
    Outcome,
    /// A dead-letter copy on the dead-letter exchange.
    DeadLetter,
    /// A future-dated or held event parked on a delay or hold queue, or sent back from one.
    Parked,
}

impl PublishedMessage {
    fn as_str(self) -> &'static str {
        match self {
            PublishedMessage::Outcome => "outcome",
            PublishedMessage::DeadLetter => "dead_letter",
            PublishedMessage::Parked => "parked",
        }
    }
}

/// What the broker said about a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishResult {
    /// Confirmed (ack) and routed.
    Confirmed,
    /// Refused (nack).
    Nacked,
    /// A `mandatory` message no queue was bound for, returned.
    Returned,
    /// The channel or connection failed before a confirm came.
    Error,
    /// No confirm came within the confirm timeout.
    TimedOut,
}

impl PublishResult {
    fn as_str(self) -> &'static str {
        match self {
            PublishResult::Confirmed => "confirmed",
            PublishResult::Nacked => "nacked",
            PublishResult::Returned => "returned",
            PublishResult::Error => "error",
            PublishResult::TimedOut => "timed_out",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LaneLabels {
    lane: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventErrorLabels {
    event_type: &'static str,
    error_kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OktaRequestLabels {
    operation: &'static str,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OktaOperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PublishLabels {
    message: &'static str,
    result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn event_duration_histogram() -> Histogram {
    Histogram::new(EVENT_DURATION_BUCKETS)
}

fn okta_duration_histogram() -> Histogram {
    Histogram::new(OKTA_DURATION_BUCKETS)
}

struct Families {
    events_consumed: Family<EventLabels, Counter>,
    events_succeeded: Family<EventLabels, Counter>,
    events_failed: Family<EventErrorLabels, Counter>,
    events_retried: Family<EventErrorLabels, Counter>,
    events_dead_lettered: Family<EventErrorLabels, Counter>,
    event_duration: HistogramFamily<EventLabels>,
    deliveries_in_flight: Gauge,
    removal_copies_skipped: Family<LaneLabels, Counter>,
    okta_requests: Family<OktaRequestLabels, Counter>,
    okta_request_duration: HistogramFamily<OktaOperationLabels>,
    okta_rate_limited: Family<OktaOperationLabels, Counter>,
    publishes: Family<PublishLabels, Counter>,
}

/// The recording handles. Cheap to clone; every clone records into the same series.
///
/// A `Metrics` that no [`MetricsRegistry`] was built from records into series nobody
/// reads (the `replay` command and unit tests use one so).
#[derive(Clone)]
pub struct Metrics {
    families: Arc<Families>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Fresh series, every counter at zero. The known label sets are created at once,
    /// so that `/metrics` shows zeros before the first event (an alert on
    /// `increase(…) == 0` needs the series to exist).
    pub fn new() -> Self {
        let families = Families {
            events_consumed: Family::default(),
            events_succeeded: Family::default(),
            events_failed: Family::default(),
            events_retried: Family::default(),
            events_dead_lettered: Family::default(),
            event_duration: Family::new_with_constructor(event_duration_histogram),
            deliveries_in_flight: Gauge::default(),
            removal_copies_skipped: Family::default(),
            okta_requests: Family::default(),
            okta_request_duration: Family::new_with_constructor(okta_duration_histogram),
            okta_rate_limited: Family::default(),
            publishes: Family::default(),
        };
        for event_type in EVENT_TYPE_LABELS {
            let labels = EventLabels { event_type };
            let _ = families.events_consumed.get_or_create(&labels);
            let _ = families.events_succeeded.get_or_create(&labels);
            let _ = families.event_duration.get_or_create(&labels);
            for kind in ERROR_KINDS {
                let labels = EventErrorLabels {
                    event_type,
                    error_kind: kind.as_str(),
                };
                let _ = families.events_failed.get_or_create(&labels);
                let _ = families.events_retried.get_or_create(&labels);
                let _ = families.events_dead_lettered.get_or_create(&labels);
            }
        }
        for lane in LANE_LABELS {
            let _ = families
                .removal_copies_skipped
                .get_or_create(&LaneLabels { lane });
        }
        for message in [PublishedMessage::Outcome, PublishedMessage::DeadLetter] {
            for result in [
                PublishResult::Confirmed,
                PublishResult::Nacked,
                PublishResult::Returned,
                PublishResult::Error,
                PublishResult::TimedOut,
            ] {
                let _ = families.publishes.get_or_create(&PublishLabels {
                    message: message.as_str(),
                    result: result.as_str(),
                });
            }
        }
        Self {
            families: Arc::new(families),
        }
    }

    /// A delivery arrived that may be the later copy of a removal routed to both lanes
    /// (`crate::pipeline::lanes`): held in the in-flight gauge at once, counted as consumed only
    /// by [`DeliveryTimer::count_consumed`] once it is known to be processed.
    pub fn delivery_arrived(&self, routing_key: &str) -> DeliveryTimer {
        self.families.deliveries_in_flight.inc();
        DeliveryTimer {
            metrics: self.clone(),
            event_type: event_type_label(routing_key),
            started: Instant::now(),
        }
    }

    /// A removal's copy in `lane` was acknowledged without processing: its twin in the
    /// other lane had settled the event.
    pub fn removal_copy_skipped(&self, lane: impl LaneLabel) {
        self.families
            .removal_copies_skipped
            .get_or_create(&LaneLabels {
                lane: lane.lane_label(),
            })
            .inc();
    }

    /// The `succeeded` outcome of an event was confirmed by the broker.
    pub fn event_succeeded(&self, routing_key: &str) {
        let event_type = event_type_label(routing_key);
        self.families
            .events_succeeded
            .get_or_create(&EventLabels { event_type })
            .inc();
        tracing::Span::current().record("outcome.status", "succeeded");
    }

    /// A transient failure or a rate limit: the `retrying` outcome was confirmed and
    /// another attempt is scheduled.
    pub fn event_retried(&self, routing_key: &str, kind: ErrorKind) {
        self.families
            .events_retried
            .get_or_create(&error_labels(routing_key, kind))
            .inc();
        tracing::Span::current().record("outcome.status", "retrying");
    }

    /// The `failed` outcome of an event was confirmed: the event failed for good and its
    /// copy is in the dead-letter queue.
    pub fn event_failed(&self, routing_key: &str, kind: ErrorKind) {
        self.families
            .events_failed
            .get_or_create(&error_labels(routing_key, kind))
            .inc();
        let span = tracing::Span::current();
        span.record("outcome.status", "failed");
        span.record("otel.status_code", "error");
    }

    /// The dead-letter copy of a message was confirmed by the broker.
    pub fn dead_lettered(&self, routing_key: &str, kind: ErrorKind) {
        self.families
            .events_dead_lettered
            .get_or_create(&error_labels(routing_key, kind))
            .inc();
    }

    /// Okta answered `operation` with `status` (`None`: no answer — a network error or a
    /// timeout) after `elapsed`.
    pub fn okta_response(&self, operation: &'static str, status: Option<u16>, elapsed: Duration) {
        self.families
            .okta_requests
            .get_or_create(&OktaRequestLabels {
                operation,
                status_class: status_class(status),
            })
            .inc();
        let labels = OktaOperationLabels { operation };
        self.families
            .okta_request_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        // The series exists (at zero) from the operation's first request, so that
        // `rate()` over it works before the first 429.
        let rate_limited = self.families.okta_rate_limited.get_or_create(&labels);
        if status == Some(429) {
            rate_limited.inc();
        }
    }

    /// The broker answered a publish.
    pub fn published(&self, message: PublishedMessage, result: PublishResult) {
        self.families
            .publishes
            .get_or_create(&PublishLabels {
                message: message.as_str(),
                result: result.as_str(),
            })
            .inc();
    }
}

fn error_labels(routing_key: &str, kind: ErrorKind) -> EventErrorLabels {
    EventErrorLabels {
        event_type: event_type_label(routing_key),
        error_kind: kind.as_str(),
    }
}

/// One delivery in progress. Dropping it takes the delivery out of the in-flight gauge
/// (whatever happened: acknowledged, handed back, task aborted).
pub struct DeliveryTimer {
    metrics: Metrics,
    event_type: &'static str,
    started: Instant,
}

impl DeliveryTimer {
    /// Counts the delivery in `events_consumed`.
    pub fn count_consumed(&self) {
        self.metrics
            .families
            .events_consumed
            .get_or_create(&EventLabels {
                event_type: self.event_type,
            })
            .inc();
    }

    /// The delivery's outcome is final and it was acknowledged: records its end-to-end
    /// duration, retries and waits included.
    pub fn completed(self) {
        self.metrics
            .families
            .event_duration
            .get_or_create(&EventLabels {
                event_type: self.event_type,
            })
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for DeliveryTimer {
    fn drop(&mut self) {
        self.metrics.families.deliveries_in_flight.dec();
    }
}

/// The label values of the lanes (`crate::pipeline::lanes`), created at zero up front.
pub const LANE_LABELS: [&str; 2] = ["work", "leavers"];

/// A lane as a metric label: one of [`LANE_LABELS`]. A trait rather than the lane type,
/// so that telemetry, which every part records into, depends on none of them.
pub trait LaneLabel {
    fn lane_label(self) -> &'static str;
}

impl LaneLabel for &'static str {
    fn lane_label(self) -> &'static str {
        self
    }
}

/// The group cache's counters, as `/metrics` shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounts {
    pub hits: u64,
    pub misses: u64,
    pub refreshes: u64,
}

/// What `/metrics` reads at scrape time rather than counting as it happens: state that
/// other parts already keep (the group cache, the Okta client, the service's health).
/// The composition root implements it over those parts, so this module depends on none.
pub trait ScrapedState: Send + Sync + 'static {
    fn group_cache(&self) -> CacheCounts;
    /// The `X-Rate-Limit-Remaining` Okta sent with its last answer, if any yet.
    fn okta_rate_limit_remaining(&self) -> Option<i64>;
    fn consumer_paused(&self) -> bool;
    fn broker_connected(&self) -> bool;
    fn broker_blocked(&self) -> bool;
    fn publishes_waiting(&self) -> u64;
    fn publish_failures(&self) -> u64;
    fn sessions_lost(&self) -> u64;
}

/// Encodes a [`ScrapedState`] at each scrape.
struct Scraped(Box<dyn ScrapedState>);

impl std::fmt::Debug for Scraped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scraped").finish_non_exhaustive()
    }
}

fn encode_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
    gauge.encode(metric)
}

fn encode_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let counter = ConstCounter::new(value);
    let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
    counter.encode(metric)
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = self.0.as_ref();
        let cache = state.group_cache();
        encode_counter(
            &mut encoder,
            "iam_provisioner_group_cache_hits",
            "Mapped Okta group lookups answered from the cache.",
            cache.hits,
        )?;
        encode_counter(
            &mut encoder,
            "iam_provisioner_group_cache_misses",
            "Mapped Okta group lookups that had to ask Okta (first use or expired entry).",
            cache.misses,
        )?;
        encode_counter(
            &mut encoder,
            "iam_provisioner_group_cache_refreshes",
            "Cached group entries looked up again because their TTL had expired.",
            cache.refreshes,
        )?;
        if let Some(remaining) = state.okta_rate_limit_remaining() {
            encode_gauge(
                &mut encoder,
                "iam_provisioner_okta_rate_limit_remaining",
                "The X-Rate-Limit-Remaining Okta sent with its last answer.",
                remaining,
            )?;
        }
        encode_gauge(
            &mut encoder,
            "iam_provisioner_consumer_paused",
            "1 while consumption is paused because Okta is failing, else 0.",
            i64::from(state.consumer_paused()),
        )?;
        encode_gauge(
            &mut encoder,
            "iam_provisioner_broker_connected",
            "1 while the service holds a broker connection, else 0.",
            i64::from(state.broker_connected()),
        )?;
        encode_broker_state(&mut encoder, state)
    }
}

/// What the broker does to publishing (the health's broker state): a blocked
/// connection, refused publishes waiting, publishes not confirmed, sessions lost.
fn encode_broker_state(
    encoder: &mut DescriptorEncoder,
    health: &dyn ScrapedState,
) -> Result<(), std::fmt::Error> {
    encode_gauge(
        encoder,
        "iam_provisioner_broker_blocked",
        "1 while the broker holds the connection blocked (memory or disk alarm), else 0.",
        i64::from(health.broker_blocked()),
    )?;
    encode_gauge(
        encoder,
        "iam_provisioner_publishes_waiting",
        "Publishes the broker refused that wait, holding their delivery unacknowledged, to be sent again.",
        i64::try_from(health.publishes_waiting()).unwrap_or(i64::MAX),
    )?;
    encode_counter(
        encoder,
        "iam_provisioner_publish_failures",
        "Publishes the broker did not confirm: refused, returned, timed out or failed.",
        health.publish_failures(),
    )?;
    encode_counter(
        encoder,
        "iam_provisioner_broker_sessions_lost",
        "Broker sessions ended because a channel or the connection failed under them (consumer timeout included).",
        health.sessions_lost(),
    )?;
    Ok(())
}

/// Everything `/metrics` shows, in one registry.
pub struct MetricsRegistry {
    registry: Registry,
}

impl std::fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsRegistry").finish_non_exhaustive()
    }
}

impl MetricsRegistry {
    /// Registers the series of `metrics` and the state read at scrape time. Other
    /// parts add their own families with [`MetricsRegistry::register`].
    pub fn new(metrics: &Metrics, scraped: impl ScrapedState) -> Self {
        let f = &metrics.families;
        let mut registry = Registry::default();
        registry.register(
            "iam_provisioner_events_consumed",
            "Deliveries received, redeliveries included; of a removal in both lanes, the copy processed",
            f.events_consumed.clone(),
        );
        registry.register(
            "iam_provisioner_events_succeeded",
            "Events whose succeeded outcome the broker confirmed",
            f.events_succeeded.clone(),
        );
        registry.register(
            "iam_provisioner_events_failed",
            "Events that failed for good: failed outcome confirmed, message dead-lettered",
            f.events_failed.clone(),
        );
        registry.register(
            "iam_provisioner_events_retried",
            "Attempts that failed transiently or hit Okta's rate limit and were scheduled again",
            f.events_retried.clone(),
        );
        registry.register(
            "iam_provisioner_events_dead_lettered",
            "Dead-letter copies the broker confirmed",
            f.events_dead_lettered.clone(),
        );
        registry.register_with_unit(
            "iam_provisioner_event_duration",
            "Time from delivery to acknowledgement of an event, retries and waits included",
            Unit::Seconds,
            f.event_duration.clone(),
        );
        registry.register(
            "iam_provisioner_deliveries_in_flight",
            "Deliveries received and not yet acknowledged or handed back",
            f.deliveries_in_flight.clone(),
        );
        registry.register(
            "iam_provisioner_removal_copies_skipped",
            "Removal copies acknowledged unprocessed because the other lane's copy settled the event",
            f.removal_copies_skipped.clone(),
        );
        registry.register(
            "iam_provisioner_okta_requests",
            "Okta API requests by operation and HTTP status class (error: no answer)",
            f.okta_requests.clone(),
        );
        registry.register_with_unit(
            "iam_provisioner_okta_request_duration",
            "Duration of one Okta API request, waiting for an in-flight slot excluded",
            Unit::Seconds,
            f.okta_request_duration.clone(),
        );
        registry.register(
            "iam_provisioner_okta_rate_limited",
            "Okta answers with status 429 (rate limited)",
            f.okta_rate_limited.clone(),
        );
        registry.register(
            "iam_provisioner_publishes",
            "Outcome events and dead-letter copies published, by the broker's answer",
            f.publishes.clone(),
        );
        registry.register_collector(Box::new(Scraped(Box::new(scraped))));
        Self { registry }
    }

    /// Lets a part register the families it keeps itself (the trust rules' series).
    pub fn register(&mut self, families: impl FnOnce(&mut Registry)) {
        families(&mut self.registry);
    }

    /// The OpenMetrics text exposition.
    ///
    /// # Errors
    /// Only if formatting fails, which writing to a `String` does not.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// The content type of [`MetricsRegistry::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Metric;

    fn text_of(metric: impl Metric) -> String {
        let mut registry = Registry::default();
        registry.register("x", "help", metric);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        text
    }

    #[test]
    fn event_type_labels_are_the_contracts_or_other() {
        assert_eq!(event_type_label("employee.added"), "employee.added");
        assert_eq!(event_type_label("employee.removed"), "employee.removed");
        assert_eq!(event_type_label("ada@example.com"), "other");
        assert_eq!(event_type_label(""), "other");
        for event_type in EventType::ALL {
            assert!(EVENT_TYPE_LABELS.contains(&event_type_label(event_type.as_str())));
        }
    }

    #[test]
    fn status_classes_are_bounded() {
        assert_eq!(status_class(Some(201)), "2xx");
        assert_eq!(status_class(Some(429)), "4xx");
        assert_eq!(status_class(Some(503)), "5xx");
        assert_eq!(status_class(Some(999)), "other");
        assert_eq!(status_class(None), "error");
    }

    #[test]
    fn in_flight_gauge_follows_the_timer() {
        let metrics = Metrics::new();
        let first = metrics.delivery_arrived("employee.added");
        first.count_consumed();
        let second = metrics.delivery_arrived("nonsense");
        second.count_consumed();
        assert_eq!(metrics.families.deliveries_in_flight.get(), 2);
        first.completed();
        drop(second);
        assert_eq!(metrics.families.deliveries_in_flight.get(), 0);
        let consumed = |event_type| {
            metrics
                .families
                .events_consumed
                .get_or_create(&EventLabels { event_type })
                .get()
        };
        assert_eq!(consumed("employee.added"), 1);
        assert_eq!(consumed("other"), 1);
        let text = text_of(metrics.families.event_duration.clone());
        assert!(
            text.contains("x_count{event_type=\"employee.added\"} 1\n"),
            "only a completed delivery is timed: {text}"
        );
        assert!(text.contains("x_count{event_type=\"other\"} 0\n"), "{text}");
    }

    #[test]
    fn a_removal_copy_counts_as_consumed_only_when_processed() {
        let metrics = Metrics::new();
        let skipped = metrics.delivery_arrived("employee.removed");
        let processed = metrics.delivery_arrived("employee.removed");
        processed.count_consumed();
        metrics.removal_copy_skipped("work");
        assert_eq!(metrics.families.deliveries_in_flight.get(), 2);
        drop(skipped);
        processed.completed();
        assert_eq!(metrics.families.deliveries_in_flight.get(), 0);
        let consumed = metrics
            .families
            .events_consumed
            .get_or_create(&EventLabels {
                event_type: "employee.removed",
            })
            .get();
        assert_eq!(consumed, 1);
        let skipped_in = |lane| {
            metrics
                .families
                .removal_copies_skipped
                .get_or_create(&LaneLabels { lane })
                .get()
        };
        assert_eq!((skipped_in("work"), skipped_in("leavers")), (1, 0));
    }

    #[test]
    fn a_429_counts_as_a_request_and_as_rate_limited() {
        let metrics = Metrics::new();
        metrics.okta_response("createUser", Some(429), Duration::from_millis(3));
        metrics.okta_response("createUser", Some(200), Duration::from_millis(3));
        metrics.okta_response("createUser", None, Duration::from_millis(3));
        let f = &metrics.families;
        let requests = |status_class| {
            f.okta_requests
                .get_or_create(&OktaRequestLabels {
                    operation: "createUser",
                    status_class,
                })
                .get()
        };
        assert_eq!(requests("4xx"), 1);
        assert_eq!(requests("2xx"), 1);
        assert_eq!(requests("error"), 1);
        let op = OktaOperationLabels {
            operation: "createUser",
        };
        assert_eq!(f.okta_rate_limited.get_or_create(&op).get(), 1);
        let text = text_of(f.okta_request_duration.clone());
        assert!(
            text.contains("x_count{operation=\"createUser\"} 3\n"),
            "{text}"
        );
    }
}
