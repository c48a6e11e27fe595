//! Prometheus metrics. Label values come from fixed sets (outcomes, endpoints) or
//! from the configured routes, never from request data, so cardinality is bounded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::problem::ProblemKind;

/// Route label of requests whose route is not configured.
pub const UNKNOWN_ROUTE: &str = "unknown";

/// A route's label, `<namespace>/<name>`: shared, so counting a request allocates
/// nothing. It also carries the route's counters for the outcomes of nearly every
/// request, looked up on first use: a family lookup hashes the labels under a lock
/// that every shard shares, and costs several times an increment.
#[derive(Clone)]
pub struct RouteLabel(Arc<LabelInner>);

struct LabelInner {
    text: Box<str>,
    /// The counters, and the [`Metrics`] they belong to.
    counters: OnceLock<(u64, RouteCounters)>,
}

/// A route's counters for stored events.
struct RouteCounters {
    single_accepted: Counter,
    single_duplicate: Counter,
    event_accepted: Counter,
    event_duplicate: Counter,
}

impl RouteLabel {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self::from_text(format!("{namespace}/{name}"))
    }

    /// The label of requests for routes that are not configured (the requested
    /// name never becomes a label).
    pub fn unknown() -> Self {
        Self::from_text(UNKNOWN_ROUTE.into())
    }

    fn from_text(text: String) -> Self {
        RouteLabel(Arc::new(LabelInner {
            text: text.into(),
            counters: OnceLock::new(),
        }))
    }

    pub fn as_str(&self) -> &str {
        &self.0.text
    }
}

// Labels are their text: the cached counters are not part of what a label is.
impl PartialEq for RouteLabel {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RouteLabel {}

impl std::hash::Hash for RouteLabel {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl std::fmt::Debug for RouteLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for RouteLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EncodeLabelValue for RouteLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Endpoint {
    Single,
    Batch,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Single => "single",
            Endpoint::Batch => "batch",
        }
    }
}

/// How a request (or one batch item) ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Outcome {
    /// Stored: a new event.
    Accepted,
    /// Stored before: JetStream recognised the id.
    Duplicate,
    /// A batch where some items were stored and some not.
    Partial,
    Failed(ProblemKind),
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Partial => "partial",
            Outcome::Failed(kind) => kind.slug(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: RouteLabel,
    endpoint: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    route: RouteLabel,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabels {
    shard: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

/// Every metric the gateway exports.
pub struct Metrics {
    /// Tells this instance's cached route counters from another's (tests run several
    /// gateways in one process).
    id: u64,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    events: Family<EventLabels, Counter>,
    publish_latency: Family<ShardLabels, Histogram>,
    in_flight: Gauge,
    reloads: Family<ReloadLabels, Counter>,
    connections_open: Gauge,
    connections_max: Gauge,
    connections_refused: Counter,
    tls_reloads: Family<ReloadLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fanout_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP ingest requests by route, endpoint and outcome",
            requests.clone(),
        );
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "events",
            "Events (single or batch items) by route and outcome",
            events.clone(),
        );
        // 50µs .. ~3.3s. One histogram per shard, so that shards never write to the
        // same one (sum them by `le` for the gateway's).
        let publish_latency = Family::<ShardLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.000_05, 2.0, 17))) as fn() -> Histogram,
        );
        registry.register(
            "publish_duration_seconds",
            "Time from sending an event to NATS to JetStream's acknowledgement, by shard",
            publish_latency.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "publishes_in_flight",
            "Publishes sent and not yet acknowledged",
            in_flight.clone(),
        );
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads by result (success, failure)",
            reloads.clone(),
        );
        // From zero, so that an alert on failures fires on the first one.
        for result in ["success", "failure"] {
            let _ = reloads.get_or_create(&ReloadLabels { result });
        }
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Connections open on the events port",
            connections_open.clone(),
        );
        let connections_max = Gauge::default();
        registry.register(
            "connections_max",
            "Most connections the events port keeps open (--max-connections)",
            connections_max.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections closed as soon as they were accepted, because the maximum were open",
            connections_refused.clone(),
        );
        let tls_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "tls_reloads",
            "Changes to the TLS certificate and key files by result (success: now served; failure: the previous pair is kept)",
            tls_reloads.clone(),
        );
        for result in ["success", "failure"] {
            let _ = tls_reloads.get_or_create(&ReloadLabels { result });
        }
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Metrics {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            registry,
            requests,
            events,
            publish_latency,
            in_flight,
            reloads,
            connections_open,
            connections_max,
            connections_refused,
            tls_reloads,
        }
    }

    pub fn request(&self, route: &RouteLabel, endpoint: Endpoint, outcome: Outcome) {
        if endpoint == Endpoint::Single
            && let Some(counters) = self.cached(route, outcome)
        {
            match outcome {
                Outcome::Duplicate => counters.single_duplicate.inc(),
                _ => counters.single_accepted.inc(),
            };
            return;
        }
        self.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                endpoint: endpoint.as_str(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub fn event(&self, route: &RouteLabel, outcome: Outcome) {
        if let Some(counters) = self.cached(route, outcome) {
            match outcome {
                Outcome::Duplicate => counters.event_duplicate.inc(),
                _ => counters.event_accepted.inc(),
            };
            return;
        }
        self.events
            .get_or_create(&EventLabels {
                route: route.clone(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// The route's counters for a stored event's outcome, once looked up; `None` for
    /// other outcomes, and for a label whose counters belong to another instance.
    fn cached<'a>(&self, route: &'a RouteLabel, outcome: Outcome) -> Option<&'a RouteCounters> {
        if !matches!(outcome, Outcome::Accepted | Outcome::Duplicate) {
            return None;
        }
        let (id, counters) = route.0.counters.get_or_init(|| {
            let request = |outcome: Outcome| RequestLabels {
                route: route.clone(),
                endpoint: Endpoint::Single.as_str(),
                outcome: outcome.as_str(),
            };
            let event = |outcome: Outcome| EventLabels {
                route: route.clone(),
                outcome: outcome.as_str(),
            };
            let counters = RouteCounters {
                single_accepted: self
                    .requests
                    .get_or_create_owned(&request(Outcome::Accepted)),
                single_duplicate: self
                    .requests
                    .get_or_create_owned(&request(Outcome::Duplicate)),
                event_accepted: self.events.get_or_create_owned(&event(Outcome::Accepted)),
                event_duplicate: self.events.get_or_create_owned(&event(Outcome::Duplicate)),
            };
            (self.id, counters)
        });
        (*id == self.id).then_some(counters)
    }

    /// Starts the event counters of configured routes at zero: stored, and not stored
    /// for a reason on the gateway's or NATS's side. An alert on an increase then
    /// fires on the first refusal, not the second. Refusals of bad requests (which
    /// are the producer's to see) still appear when they first happen.
    pub fn routes_configured<'a>(&self, routes: impl IntoIterator<Item = &'a RouteLabel>) {
        const COUNTED_FROM_ZERO: [Outcome; 6] = [
            Outcome::Accepted,
            Outcome::Duplicate,
            Outcome::Failed(ProblemKind::Unavailable),
            Outcome::Failed(ProblemKind::StreamFull),
            Outcome::Failed(ProblemKind::StorageRejected),
            Outcome::Failed(ProblemKind::Internal),
        ];
        for route in routes {
            for outcome in COUNTED_FROM_ZERO {
                let _ = self.events.get_or_create(&EventLabels {
                    route: route.clone(),
                    outcome: outcome.as_str(),
                });
            }
            // A route waiting for an ingest token: its alert fires on the first 503.
            for endpoint in [Endpoint::Single, Endpoint::Batch] {
                let _ = self.requests.get_or_create(&RequestLabels {
                    route: route.clone(),
                    endpoint: endpoint.as_str(),
                    outcome: Outcome::Failed(ProblemKind::RouteNotReady).as_str(),
                });
            }
        }
    }

    /// Shard `shard`'s publish-latency histogram, for it alone to observe.
    pub fn publish_latency(&self, shard: usize) -> Histogram {
        self.publish_latency.get_or_create_owned(&ShardLabels {
            shard: u32::try_from(shard).unwrap_or(u32::MAX),
        })
    }

    pub fn set_in_flight(&self, n: usize) {
        self.in_flight.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
    }

    pub fn set_connections(&self, open: usize, max: usize) {
        self.connections_open
            .set(i64::try_from(open).unwrap_or(i64::MAX));
        self.connections_max
            .set(i64::try_from(max).unwrap_or(i64::MAX));
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    pub fn tls_reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.tls_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_route_endpoint_and_outcome() {
        let m = Metrics::new();
        let route = RouteLabel::new("shop", "orders");
        m.request(&route, Endpoint::Single, Outcome::Accepted);
        m.request(&route, Endpoint::Single, Outcome::Accepted);
        m.request(
            &RouteLabel::unknown(),
            Endpoint::Batch,
            Outcome::Failed(ProblemKind::RouteNotFound),
        );
        m.publish_latency(0).observe(0.001);
        let text = m.encode();
        assert!(
            text.contains(
                r#"fanout_gateway_requests_total{route="shop/orders",endpoint="single",outcome="accepted"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"outcome="route-not-found""#), "{text}");
        assert!(
            text.contains(r#"fanout_gateway_publish_duration_seconds_count{shard="0"} 1"#),
            "{text}"
        );
    }

    /// A label caches its counters for the instance that counted it first; another
    /// instance (tests run several gateways in one process) still counts its own.
    #[test]
    fn a_label_counted_by_two_instances_counts_in_each() {
        let route = RouteLabel::new("shop", "orders");
        let (first, second) = (Metrics::new(), Metrics::new());
        first.request(&route, Endpoint::Single, Outcome::Accepted);
        second.request(&route, Endpoint::Single, Outcome::Accepted);
        second.request(&route, Endpoint::Single, Outcome::Accepted);
        first.event(&route, Outcome::Duplicate);
        second.event(&route.clone(), Outcome::Accepted);
        let accepted = |n| {
            format!(
                r#"fanout_gateway_requests_total{{route="shop/orders",endpoint="single",outcome="accepted"}} {n}"#
            )
        };
        let (first, second) = (first.encode(), second.encode());
        assert!(first.contains(&accepted(1)), "{first}");
        assert!(second.contains(&accepted(2)), "{second}");
        assert!(
            first.contains(
                r#"fanout_gateway_events_total{route="shop/orders",outcome="duplicate"} 1"#
            ),
            "{first}"
        );
        assert!(
            second.contains(
                r#"fanout_gateway_events_total{route="shop/orders",outcome="accepted"} 1"#
            ),
            "{second}"
        );
    }

    #[test]
    fn reload_results_start_at_zero() {
        let m = Metrics::new();
        let text = m.encode();
        assert!(
            text.contains(r#"fanout_gateway_config_reloads_total{result="failure"} 0"#),
            "{text}"
        );
        m.reload(false);
        assert!(
            m.encode()
                .contains(r#"fanout_gateway_config_reloads_total{result="failure"} 1"#)
        );
    }

    #[test]
    fn a_configured_routes_storage_outcomes_start_at_zero() {
        let m = Metrics::new();
        let route = RouteLabel::new("shop", "orders");
        m.routes_configured([&route]);
        let text = m.encode();
        for outcome in ["accepted", "unavailable", "stream-full", "storage-rejected"] {
            let line = format!(
                r#"fanout_gateway_events_total{{route="shop/orders",outcome="{outcome}"}} 0"#
            );
            assert!(text.contains(&line), "{line} in {text}");
        }
        m.event(&route, Outcome::Failed(ProblemKind::Unavailable));
        assert!(m.encode().contains(
            r#"fanout_gateway_events_total{route="shop/orders",outcome="unavailable"} 1"#
        ));
    }
}
