//! How many dispatcher pods a route runs: its fixed `replicas`, or, with
//! `autoscaling`, as many as its backlog calls for.
//!
//! The backlog is read from the route's last status (the targets' `pending`, from
//! JetStream consumer info), so a decision lags the backlog by at most one status
//! interval, about as much as a HorizontalPodAutoscaler's sync period. Scaling up is
//! immediate; scaling down takes the highest recommendation of the last
//! `scaleDownDelay`, so that pods are not stopped in a dip between bursts.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fanout_api::FanOutRoute;
use fanout_api::route::{AutoscalingSpec, TargetStatus};
use fanout_api::status::CircuitState;
use kube::runtime::reflector::ObjectRef;

/// Defaults of [`AutoscalingSpec`] fields.
pub const DEFAULT_MIN_REPLICAS: i32 = 1;
pub const DEFAULT_TARGET_PENDING_PER_REPLICA: u64 = 1000;
pub const DEFAULT_SCALE_DOWN_DELAY: Duration = Duration::from_secs(300);

/// Replicas for the backlog `targets` report: enough that each replica has at most
/// `targetPendingPerReplica` of the most backlogged target's pending events, within
/// `[minReplicas, maxReplicas]`. Targets whose circuit is not closed do not count:
/// their backlog waits for the target, not for pods. With the reason, for the Event.
pub fn recommend(spec: &AutoscalingSpec, targets: &[TargetStatus]) -> (i32, String) {
    let per_replica = spec
        .target_pending_per_replica
        .unwrap_or(DEFAULT_TARGET_PENDING_PER_REPLICA)
        .max(1);
    let busiest = targets
        .iter()
        .filter(|t| t.circuit == CircuitState::Closed)
        .max_by_key(|t| t.pending);
    let (pending, why) = match busiest {
        Some(t) => (
            t.pending,
            format!(
                "target {} has {} pending events ({per_replica} per replica)",
                t.name, t.pending
            ),
        ),
        None => (
            0,
            "no target with a closed circuit has a backlog".to_string(),
        ),
    };
    let wanted = i32::try_from(pending.div_ceil(per_replica)).unwrap_or(i32::MAX);
    (wanted.clamp(min_replicas(spec), spec.max_replicas), why)
}

fn min_replicas(spec: &AutoscalingSpec) -> i32 {
    spec.min_replicas
        .unwrap_or(DEFAULT_MIN_REPLICAS)
        .min(spec.max_replicas)
}

/// Recommendations of the last scale-down delay, oldest first.
type Recent = VecDeque<(Instant, i32)>;

/// The recent recommendations of each autoscaled route, kept by the operator that
/// leads. A new leader starts without them and holds the current replica count for
/// a whole delay before scaling down.
#[derive(Default)]
pub struct Autoscaler {
    history: Mutex<HashMap<ObjectRef<FanOutRoute>, Recent>>,
}

impl Autoscaler {
    /// Replicas to run now, given this reconcile's `recommended` count and the
    /// Deployment's `current` one (if it exists).
    pub fn decide(
        &self,
        route: &ObjectRef<FanOutRoute>,
        spec: &AutoscalingSpec,
        recommended: i32,
        current: Option<i32>,
        now: Instant,
    ) -> i32 {
        let delay = spec
            .scale_down_delay
            .map_or(DEFAULT_SCALE_DOWN_DELAY, |d| d.as_std());
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let recent = history.entry(route.clone()).or_default();
        if recent.is_empty()
            && let Some(current) = current
        {
            recent.push_back((now, current));
        }
        recent.push_back((now, recommended));
        while recent
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > delay)
        {
            recent.pop_front();
        }
        let highest = recent.iter().map(|(_, r)| *r).max().unwrap_or(recommended);
        highest.clamp(min_replicas(spec), spec.max_replicas)
    }

    /// Forgets a route (deleted, or no longer autoscaled).
    pub fn forget(&self, route: &ObjectRef<FanOutRoute>) {
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history.remove(route);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(min: i32, max: i32, per_replica: u64) -> AutoscalingSpec {
        AutoscalingSpec {
            min_replicas: Some(min),
            max_replicas: max,
            target_pending_per_replica: Some(per_replica),
            scale_down_delay: Some("5m".parse().unwrap()),
        }
    }

    fn target(name: &str, pending: u64, circuit: CircuitState) -> TargetStatus {
        TargetStatus {
            name: name.into(),
            pending,
            circuit,
            ..TargetStatus::default()
        }
    }

    #[test]
    fn the_most_backlogged_closed_target_sets_the_count_within_the_bounds() {
        let s = spec(1, 5, 10);
        let closed = |pending| target("a", pending, CircuitState::Closed);
        assert_eq!(recommend(&s, &[closed(0)]).0, 1, "never below min");
        assert_eq!(recommend(&s, &[closed(10)]).0, 1);
        assert_eq!(recommend(&s, &[closed(11)]).0, 2);
        let (n, why) = recommend(&s, &[closed(35), target("b", 12, CircuitState::Closed)]);
        assert_eq!(n, 4);
        assert!(why.contains("target a has 35 pending"), "{why}");
        assert_eq!(recommend(&s, &[closed(1_000_000)]).0, 5, "never above max");
        // An open circuit's backlog waits for the target; pods would not help.
        let open = target("a", 1_000, CircuitState::Open);
        assert_eq!(recommend(&s, &[open, closed(0)]).0, 1);
        assert_eq!(recommend(&s, &[]).0, 1);
    }

    #[test]
    fn scaling_up_is_at_once_and_down_only_after_the_delay() {
        let s = spec(1, 5, 10);
        let route = ObjectRef::new("orders").within("shop");
        let a = Autoscaler::default();
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(a.decide(&route, &s, 4, Some(1), at(0)), 4, "up at once");
        assert_eq!(a.decide(&route, &s, 1, Some(4), at(60)), 4, "a dip is held");
        assert_eq!(a.decide(&route, &s, 2, Some(4), at(299)), 4);
        // Five minutes after the last call for 4, the highest since is 2.
        assert_eq!(a.decide(&route, &s, 1, Some(4), at(301)), 2);
        assert_eq!(a.decide(&route, &s, 1, Some(2), at(600)), 1);
    }

    #[test]
    fn a_new_leader_holds_the_current_count_for_a_delay() {
        let s = spec(1, 5, 10);
        let route = ObjectRef::new("orders").within("shop");
        let a = Autoscaler::default();
        let t0 = Instant::now();
        assert_eq!(a.decide(&route, &s, 1, Some(3), t0), 3);
        assert_eq!(
            a.decide(&route, &s, 1, Some(3), t0 + Duration::from_secs(301)),
            1
        );
        a.forget(&route);
        assert_eq!(a.decide(&route, &s, 2, None, t0), 2, "no Deployment yet");
    }
}
