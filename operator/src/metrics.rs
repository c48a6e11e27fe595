//! The operator's Prometheus metrics: reconciles by controller and result, errors by
//! category, reconcile duration, and whether this replica leads.

use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Every controller that counts errors.
const CONTROLLERS: [&str; 4] = [
    crate::route_controller::CONTROLLER,
    crate::target_controller::CONTROLLER,
    crate::replay_controller::CONTROLLER,
    crate::gateway_sync::CONTROLLER,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reconcile {
    controller: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    controller: &'static str,
    category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Controller {
    controller: &'static str,
}

pub struct Metrics {
    registry: Registry,
    reconciles: Family<Reconcile, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: Family<Controller, Histogram>,
    leader: Gauge<i64, AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("fanout_operator");
        let reconciles = Family::<Reconcile, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles by controller and result (ok: everything applied; degraded: status reports a problem; error: the reconcile failed and is retried)",
            reconciles.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "errors",
            "Problems met while reconciling, by controller and category (kubernetes, nats, build, shutdown)",
            errors.clone(),
        );
        for controller in CONTROLLERS {
            for category in crate::error::CATEGORIES {
                let _ = errors.get_or_create(&ErrorLabels {
                    controller,
                    category,
                });
            }
        }
        let duration = Family::<Controller, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 12))
        });
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            duration.clone(),
        );
        let leader = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "leader",
            "1 while this replica holds the Lease and runs the controllers",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
            leader,
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, controller: &'static str, result: &'static str, took: Duration) {
        self.reconciles
            .get_or_create(&Reconcile { controller, result })
            .inc();
        self.duration
            .get_or_create(&Controller { controller })
            .observe(took.as_secs_f64());
    }

    pub fn error(&self, controller: &'static str, category: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels {
                controller,
                category,
            })
            .inc();
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_category_of_every_controller_starts_at_zero() {
        let m = Metrics::default();
        let text = m.encode();
        for controller in CONTROLLERS {
            for category in crate::error::CATEGORIES {
                let line = format!(
                    r#"fanout_operator_errors_total{{controller="{controller}",category="{category}"}} 0"#
                );
                assert!(text.contains(&line), "{line} in {text}");
            }
        }
        m.error(crate::route_controller::CONTROLLER, "nats");
        assert!(m.encode().contains(
            r#"fanout_operator_errors_total{controller="fanoutroute",category="nats"} 1"#
        ));
    }
}
