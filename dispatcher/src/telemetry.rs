//! Everything the dispatcher reports about a target, from one place: each delivery
//! event updates the Prometheus metric, the counters behind the health snapshot and
//! the log line together, so logs, metrics and status never disagree.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use fanout_config::health::{Circuit, HealthSnapshot};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::classify::Failure;
use crate::delivery::DeadLetterReason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    route: String,
    target: String,
}

/// The exemplar of a latency observation: the attempt's trace, so a dashboard can go
/// from a slow bucket to the trace (OpenMetrics exemplars).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TraceExemplar {
    trace_id: String,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Outcome {
    Delivered,
    Retried,
    DeadLettered,
    Discarded,
    Filtered,
}

impl EncodeLabelValue for Outcome {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Outcome::Delivered => "delivered",
            Outcome::Retried => "retried",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Discarded => "discarded",
            Outcome::Filtered => "filtered",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    route: String,
    target: String,
    outcome: Outcome,
}

/// Every value [`Failure::category`] returns.
const FAILURE_CATEGORIES: [&str; 7] = [
    "status_5xx",
    "status_4xx",
    "status_other",
    "timeout",
    "connection",
    "egress",
    "token",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExpressionLabels {
    route: String,
    target: String,
    /// `filter`, `transform` or `ordering` (the ordering key).
    expression: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    route: String,
    target: String,
    /// From [`Failure::category`]: a fixed set of values.
    reason: &'static str,
}

/// The process's metrics registry and metric families.
pub struct Metrics {
    pub registry: Registry,
    outcomes: Family<OutcomeLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    expression_errors: Family<ExpressionLabels, Counter>,
    latency: Family<TargetLabels, HistogramWithExemplars<TraceExemplar>>,
    in_flight: Family<TargetLabels, Gauge>,
    circuit: Family<TargetLabels, Gauge>,
    oldest_undelivered: Family<TargetLabels, Gauge<f64, AtomicU64>>,
    retention: Family<TargetLabels, Gauge<f64, AtomicU64>>,
    history_dropped: Family<TargetLabels, Counter>,
    concurrency: Family<TargetLabels, Gauge>,
    blocked_keys: Family<TargetLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("fanout");
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "deliveries",
            "Events finished per target, by outcome (delivered, retried, dead_lettered, discarded, filtered)",
            outcomes.clone(),
        );
        let failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "delivery_failures",
            "Failed delivery attempts per target, by reason",
            failures.clone(),
        );
        let expression_errors = Family::<ExpressionLabels, Counter>::default();
        registry.register(
            "expression_errors",
            "Events a target's CEL filter, transform or ordering key could not be evaluated on (each dead-lettered), per target, by expression",
            expression_errors.clone(),
        );
        let latency =
            Family::<TargetLabels, HistogramWithExemplars<TraceExemplar>>::new_with_constructor(
                || {
                    // 1 ms .. ~33 s
                    HistogramWithExemplars::new(
                        [
                            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                            10.0, 30.0,
                        ]
                        .into_iter(),
                    )
                },
            );
        registry.register(
            "delivery_duration_seconds",
            "Duration of delivery attempts per target, request sent to response headers",
            latency.clone(),
        );
        let in_flight = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "deliveries_in_flight",
            "Delivery requests in progress per target",
            in_flight.clone(),
        );
        let circuit = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "circuit_state",
            "Circuit breaker state per target: 0 closed, 1 half-open, 2 open",
            circuit.clone(),
        );
        let oldest_undelivered = Family::<TargetLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "oldest_undelivered_age_seconds",
            "Age of the oldest event not yet delivered, dead-lettered or filtered out per target (0 when there is none)",
            oldest_undelivered.clone(),
        );
        let retention = Family::<TargetLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "retention_max_age_seconds",
            "The route stream's maxAge, per target: undelivered events are dead-lettered as expired shortly before it (absent when the stream keeps events for ever)",
            retention.clone(),
        );
        let history_dropped = Family::<TargetLabels, Counter>::default();
        registry.register(
            "history_dropped_records",
            "Delivery history records not stored, per target: the writer's queue was full or JetStream did not take them (deliveries never wait for the history)",
            history_dropped.clone(),
        );
        let concurrency = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "target_concurrency_limit",
            "Requests this dispatcher lets go to the target at once: its maxInFlight, or what adaptive concurrency found it takes (absent while standing by for an ordered target)",
            concurrency.clone(),
        );
        let blocked_keys = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "ordering_blocked_keys",
            "Ordered targets: keys whose head event failed and waits to be tried again or redriven; their later events wait",
            blocked_keys.clone(),
        );
        Metrics {
            history_dropped,
            registry,
            concurrency,
            blocked_keys,
            outcomes,
            failures,
            expression_errors,
            latency,
            in_flight,
            circuit,
            oldest_undelivered,
            retention,
        }
    }
}

impl Metrics {
    /// The counter of `target`'s history records that were not stored.
    pub fn history_dropped(&self, namespace: &str, route: &str, target: &str) -> Counter {
        self.history_dropped
            .get_or_create(&TargetLabels {
                route: format!("{namespace}/{route}"),
                target: target.to_string(),
            })
            .clone()
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The reporting handle of one target; metric handles are resolved once here so the
/// delivery path does no label lookups.
pub struct TargetTelemetry {
    /// `namespace/name`, the metric label.
    route: String,
    namespace: String,
    route_name: String,
    target: String,
    /// One counter per [`Failure::category`], in [`FAILURE_CATEGORIES`] order.
    failures_total: Vec<Counter>,
    delivered_total: Counter,
    retried_total: Counter,
    dead_lettered_total: Counter,
    discarded_total: Counter,
    filtered_total: Counter,
    /// Filter, then transform errors.
    expression_errors_total: [Counter; 3],
    latency: HistogramWithExemplars<TraceExemplar>,
    in_flight_gauge: Gauge,
    circuit_gauge: Gauge,
    oldest_undelivered_gauge: Gauge<f64, AtomicU64>,
    concurrency_gauge: Gauge,
    blocked_keys_gauge: Gauge,
    // Totals for the health snapshot.
    delivered: AtomicU64,
    failed: AtomicU64,
    dead_lettered: AtomicU64,
    in_flight: AtomicU64,
    last_success_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl TargetTelemetry {
    /// `max_age`: the stream's maxAge, if it has one.
    pub fn new(
        metrics: &Metrics,
        namespace: &str,
        route_name: &str,
        target: &str,
        max_age: Option<Duration>,
    ) -> Self {
        let route = format!("{namespace}/{route_name}");
        let route = route.as_str();
        let outcome = |outcome| {
            metrics
                .outcomes
                .get_or_create(&OutcomeLabels {
                    route: route.to_string(),
                    target: target.to_string(),
                    outcome,
                })
                .clone()
        };
        let labels = TargetLabels {
            route: route.to_string(),
            target: target.to_string(),
        };
        let expression_errors_total = ["filter", "transform", "ordering"].map(|expression| {
            metrics
                .expression_errors
                .get_or_create(&ExpressionLabels {
                    route: route.to_string(),
                    target: target.to_string(),
                    expression,
                })
                .clone()
        });
        let latency = metrics.latency.get_or_create(&labels).clone();
        let in_flight_gauge = metrics.in_flight.get_or_create(&labels).clone();
        let circuit_gauge = metrics.circuit.get_or_create(&labels).clone();
        let oldest_undelivered_gauge = metrics.oldest_undelivered.get_or_create(&labels).clone();
        let concurrency_gauge = metrics.concurrency.get_or_create(&labels).clone();
        let blocked_keys_gauge = metrics.blocked_keys.get_or_create(&labels).clone();
        if let Some(max_age) = max_age {
            metrics
                .retention
                .get_or_create(&labels)
                .set(max_age.as_secs_f64());
        }
        let failures_total = FAILURE_CATEGORIES
            .iter()
            .map(|reason| {
                metrics
                    .failures
                    .get_or_create(&FailureLabels {
                        route: route.to_string(),
                        target: target.to_string(),
                        reason,
                    })
                    .clone()
            })
            .collect();
        TargetTelemetry {
            failures_total,
            namespace: namespace.to_string(),
            route_name: route_name.to_string(),
            delivered_total: outcome(Outcome::Delivered),
            retried_total: outcome(Outcome::Retried),
            dead_lettered_total: outcome(Outcome::DeadLettered),
            discarded_total: outcome(Outcome::Discarded),
            filtered_total: outcome(Outcome::Filtered),
            expression_errors_total,
            latency,
            in_flight_gauge,
            circuit_gauge,
            oldest_undelivered_gauge,
            concurrency_gauge,
            blocked_keys_gauge,
            route: route.to_string(),
            target: target.to_string(),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            last_success_ms: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.in_flight_gauge.inc();
    }

    /// `trace_id`: the attempt's trace when it was sampled, kept as the bucket's
    /// exemplar.
    pub fn request_finished(&self, took: Duration, trace_id: Option<String>) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.in_flight_gauge.dec();
        let exemplar = trace_id.map(|trace_id| TraceExemplar { trace_id });
        let at = exemplar.as_ref().map(|_| SystemTime::now());
        self.latency.observe(took.as_secs_f64(), exemplar, at);
    }

    /// A request that was counted as started was never sent (the egress policy
    /// refused its connection): in flight no more, and no duration to record.
    pub fn request_not_sent(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.in_flight_gauge.dec();
    }

    pub fn delivered(&self, event_id: &str, attempt: u32, status: u16) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.delivered_total.inc();
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_success_ms.store(now_ms, Ordering::Relaxed);
        tracing::debug!(route = %self.route, target = %self.target, event_id, attempt, status, "delivered");
    }

    /// An attempt failed; `retry_in` is `Some` when another attempt is scheduled.
    pub fn attempt_failed(
        &self,
        event_id: &str,
        attempt: u32,
        failure: &Failure,
        retry_in: Option<Duration>,
    ) {
        self.count_failure(failure);
        if let Some(delay) = retry_in {
            self.retried_total.inc();
            tracing::info!(route = %self.route, target = %self.target, event_id, attempt, error = %failure, retry_in = ?delay, "attempt failed; will retry");
        }
    }

    /// The egress policy refused the target's address (`failure` says why); `held`
    /// when this starts holding its events.
    pub fn egress_refused(&self, event_id: &str, failure: &Failure, held: bool) {
        self.count_failure(failure);
        if held {
            tracing::warn!(route = %self.route, target = %self.target, event_id, error = %failure, "the egress policy refuses the target's address: its events wait (circuit reported open) and the address is checked again every 30s");
        } else {
            tracing::debug!(route = %self.route, target = %self.target, event_id, error = %failure, "the egress policy still refuses the target's address");
        }
    }

    /// A failed attempt in the snapshot's count, its category's counter and the last
    /// error.
    fn count_failure(&self, failure: &Failure) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let category = FAILURE_CATEGORIES
            .iter()
            .position(|c| *c == failure.category())
            .expect("every category is listed");
        self.failures_total[category].inc();
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(failure.to_string());
    }

    /// The target's URL is an address (or a host) the egress policy refuses: shown
    /// in status from the start, before any event tries.
    pub fn refused_at_start(&self, failure: &Failure) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(failure.to_string());
        tracing::warn!(route = %self.route, target = %self.target, error = %failure, "the egress policy refuses the target's address: its events will wait (circuit reported open)");
    }

    /// A held target's address is allowed again (its DNS answer changed).
    pub fn egress_allowed(&self) {
        tracing::info!(route = %self.route, target = %self.target, "the egress policy allows the target's address now: delivering");
    }

    pub fn dead_lettered(&self, event_id: &str, attempts: u32, reason: &str, error: &str) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
        self.dead_lettered_total.inc();
        tracing::warn!(route = %self.route, target = %self.target, event_id, attempts, reason, error, "event dead-lettered");
    }

    /// Dead-lettering is disabled for the route: the event is dropped, loudly.
    pub fn discarded(&self, event_id: &str, attempts: u32, reason: &str, error: &str) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
        self.discarded_total.inc();
        tracing::error!(route = %self.route, target = %self.target, event_id, attempts, reason, error, "event discarded: dead-lettering is disabled for this route");
    }

    pub fn dead_letter_failed(&self, event_id: &str, error: &dyn std::error::Error) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
            "dead-letter publish failed: {}",
            fanout_config::error_chain(error)
        ));
        tracing::error!(route = %self.route, target = %self.target, event_id, error = %fanout_config::error_chain(&error), "dead-letter publish failed; the event stays in the stream and is retried");
    }

    /// The age of the oldest event not settled for this target, `None` when there is
    /// none.
    pub fn oldest_undelivered(&self, age: Option<Duration>) {
        self.oldest_undelivered_gauge
            .set(age.map_or(0.0, |a| a.as_secs_f64()));
    }

    /// The requests let go at once are `limit` now.
    pub fn concurrency_changed(&self, limit: u32) {
        let before = self.concurrency_gauge.set(i64::from(limit));
        if before != 0 && before != i64::from(limit) {
            tracing::debug!(route = %self.route, target = %self.target, limit, "concurrency limit changed");
        }
    }

    /// Ordered targets: `count` keys are blocked now.
    pub fn blocked_keys(&self, count: u64) {
        self.blocked_keys_gauge
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn filtered(&self) {
        self.filtered_total.inc();
    }

    /// The target's filter (`transform` false) or transform could not be evaluated
    /// on an event, which is dead-lettered next (and logged then): counted, and the
    /// error shown in status.
    /// An expression could not be evaluated on an event; `reason` says which.
    pub fn expression_failed(&self, reason: DeadLetterReason, error: &str) {
        let index = match reason {
            DeadLetterReason::Transform => 1,
            DeadLetterReason::OrderingKey => 2,
            _ => 0,
        };
        self.expression_errors_total[index].inc();
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
    }

    pub fn circuit_changed(&self, state: Circuit) {
        self.set_circuit_gauge(state);
        match state {
            Circuit::Open => {
                tracing::warn!(route = %self.route, target = %self.target, "circuit opened: fetching paused")
            }
            Circuit::HalfOpen => {
                tracing::info!(route = %self.route, target = %self.target, "circuit half-open: probing")
            }
            Circuit::Closed => {
                tracing::info!(route = %self.route, target = %self.target, "circuit closed: delivering")
            }
        }
    }

    pub fn set_circuit_gauge(&self, state: Circuit) {
        self.circuit_gauge.set(match state {
            Circuit::Closed => 0,
            Circuit::HalfOpen => 1,
            Circuit::Open => 2,
        });
    }

    pub fn snapshot(&self, pod: &str, circuit: Circuit) -> HealthSnapshot {
        let last_success_ms = self.last_success_ms.load(Ordering::Relaxed);
        HealthSnapshot {
            namespace: self.namespace.clone(),
            route: self.route_name.clone(),
            target: self.target.clone(),
            pod: pod.to_string(),
            circuit,
            delivered: self.delivered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            last_success_time: (last_success_ms > 0)
                .then(|| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(last_success_ms))),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            reported_at: rfc3339(SystemTime::now()),
            concurrency_limit: None,
            blocked_keys: 0,
            oldest_blocked_since: None,
        }
    }
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn every_failure_category_has_a_counter() {
        let failures = [
            Failure::Status {
                code: 503,
                body: String::new(),
            },
            Failure::Status {
                code: 404,
                body: String::new(),
            },
            Failure::Status {
                code: 302,
                body: String::new(),
            },
            Failure::Timeout,
            Failure::Connection("reset".into()),
            Failure::Refused("connection refused by egress policy".into()),
            Failure::Token("HTTP 503".into()),
        ];
        for failure in failures {
            assert!(
                FAILURE_CATEGORIES.contains(&failure.category()),
                "{failure}"
            );
        }
    }

    #[test]
    fn counters_feed_both_the_snapshot_and_the_metrics() {
        let metrics = Arc::new(Metrics::default());
        let t = TargetTelemetry::new(&metrics, "shop", "orders", "email", None);
        t.request_started();
        t.request_finished(
            Duration::from_millis(3),
            Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        );
        t.delivered("e1", 1, 200);
        let failure = Failure::Status {
            code: 503,
            body: String::new(),
        };
        t.attempt_failed("e2", 1, &failure, Some(Duration::from_secs(1)));
        t.dead_lettered("e3", 5, "exhausted", &failure.to_string());

        let s = t.snapshot("pod-1", Circuit::Closed);
        assert_eq!(
            (s.delivered, s.failed, s.dead_lettered, s.in_flight),
            (1, 1, 1, 0)
        );
        assert_eq!(s.route, "orders");
        assert_eq!(s.last_error.as_deref(), Some("HTTP 503"));
        assert!(s.last_success_time.is_some());

        let text = metrics.encode();
        assert!(text.contains(r#"fanout_deliveries_total{route="shop/orders",target="email",outcome="delivered"} 1"#), "{text}");
        assert!(text.contains(r#"fanout_delivery_failures_total{route="shop/orders",target="email",reason="status_5xx"} 1"#), "{text}");
        assert!(text.contains(r#"fanout_deliveries_total{route="shop/orders",target="email",outcome="dead_lettered"} 1"#), "{text}");
        // The slow bucket links to the attempt's trace.
        assert!(text.contains(r#"le="0.005",route="shop/orders",target="email"} 1 # {trace_id="4bf92f3577b34da6a3ce929d0e0e4736"} 0.003 "#), "{text}");
    }
}
