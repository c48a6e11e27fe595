//! Prometheus metrics. Label values come from fixed sets (outcomes, endpoints) or
//! from the configured routes, never from request data, so cardinality is bounded.

use std::sync::Arc;
use std::time::Duration;

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
/// nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RouteLabel(Arc<str>);

impl RouteLabel {
    pub fn new(namespace: &str, name: &str) -> Self {
        RouteLabel(format!("{namespace}/{name}").into())
    }

    /// The label of requests for routes that are not configured (the requested
    /// name never becomes a label).
    pub fn unknown() -> Self {
        RouteLabel(UNKNOWN_ROUTE.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RouteLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl EncodeLabelValue for RouteLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, &self.0)
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
struct ReloadLabels {
    result: &'static str,
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    events: Family<EventLabels, Counter>,
    publish_latency: Histogram,
    in_flight: Gauge,
    reloads: Family<ReloadLabels, Counter>,
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
        // 50µs .. ~3.3s
        let publish_latency = Histogram::new(exponential_buckets(0.000_05, 2.0, 17));
        registry.register(
            "publish_duration_seconds",
            "Time from sending an event to NATS to JetStream's acknowledgement",
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
        Metrics {
            registry,
            requests,
            events,
            publish_latency,
            in_flight,
            reloads,
        }
    }

    pub fn request(&self, route: &RouteLabel, endpoint: Endpoint, outcome: Outcome) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                endpoint: endpoint.as_str(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub fn event(&self, route: &RouteLabel, outcome: Outcome) {
        self.events
            .get_or_create(&EventLabels {
                route: route.clone(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub fn publish_latency(&self, elapsed: Duration) {
        self.publish_latency.observe(elapsed.as_secs_f64());
    }

    pub fn set_in_flight(&self, n: usize) {
        self.in_flight.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
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
        m.publish_latency(Duration::from_millis(1));
        let text = m.encode();
        assert!(
            text.contains(
                r#"fanout_gateway_requests_total{route="shop/orders",endpoint="single",outcome="accepted"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"outcome="route-not-found""#), "{text}");
        assert!(
            text.contains("fanout_gateway_publish_duration_seconds_count 1"),
            "{text}"
        );
    }
}
