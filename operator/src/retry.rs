//! The one error policy of every controller. A failed reconcile is counted by
//! category, logged, told as a Warning Event on the object (folded into one series
//! while it repeats), and retried after a backoff that doubles from 1 s up to the
//! status interval (at most a minute); the object's next clean reconcile resets it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fanout_config::error_chain;
use kube::Resource;
use kube::api::DynamicObject;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;

use crate::context::Context;
use crate::error::Error;

/// The Event reason of a failed reconcile.
pub const RECONCILE_FAILED: &str = "ReconcileFailed";

/// What `controller` does when reconciling `object` failed with `error`.
pub fn on_error<K>(
    controller: &'static str,
    object: Arc<K>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action
where
    K: Resource<DynamicType = ()> + Send + Sync + 'static,
{
    ctx.metrics.error(controller, error.category());
    let oref = ObjectRef::from_obj(object.as_ref());
    let message = error_chain(error);
    tracing::warn!(controller, object = %oref, error = %message, "reconcile failed; retrying");
    let delay = ctx.backoff(&oref);
    // The policy is not async; the Event must not hold the retry up.
    tokio::spawn(async move {
        let event = Event {
            type_: EventType::Warning,
            reason: RECONCILE_FAILED.into(),
            // The Events API caps notes at 1 kB.
            note: Some(message.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        ctx.publish(&event, &object.object_ref(&()), true).await;
    });
    Action::requeue(delay)
}

/// Consecutive failed reconciles per object (of any kind).
#[derive(Default)]
pub struct Failures(Mutex<HashMap<ObjectRef<DynamicObject>, u32>>);

impl Failures {
    /// Counts a failure of `object`; the wait before its next reconcile: 1 s, doubling
    /// with each failure in a row, up to `interval` (at least 1 s, at most a minute).
    pub fn failed<K: Resource<DynamicType = ()>>(
        &self,
        object: &ObjectRef<K>,
        interval: Duration,
    ) -> Duration {
        let mut failures = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(object.clone().erase()).or_insert(0);
        *n = n.saturating_add(1);
        let cap = interval.clamp(Duration::from_secs(1), Duration::from_secs(60));
        Duration::from_secs(1u64 << (*n - 1).min(6)).min(cap)
    }

    /// Forgets the failures of `object`.
    pub fn succeeded<K: Resource<DynamicType = ()>>(&self, object: &ObjectRef<K>) {
        let mut failures = self.0.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(&object.clone().erase());
    }
}

#[cfg(test)]
mod tests {
    use fanout_api::{ApiTarget, FanOutRoute};

    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn the_wait_doubles_per_failure_up_to_the_interval_and_a_success_resets_it() {
        let failures = Failures::default();
        let route = ObjectRef::<FanOutRoute>::new("orders").within("shop");
        let waits: Vec<u64> = (0..8)
            .map(|_| failures.failed(&route, MINUTE).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        failures.succeeded(&route);
        assert_eq!(failures.failed(&route, MINUTE), Duration::from_secs(1));
        let short = ObjectRef::<FanOutRoute>::new("short").within("shop");
        let waits: Vec<u64> = (0..4)
            .map(|_| failures.failed(&short, Duration::from_secs(5)).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 5]);
    }

    #[test]
    fn objects_of_different_kinds_with_one_name_back_off_apart() {
        let failures = Failures::default();
        let route = ObjectRef::<FanOutRoute>::new("crm").within("shop");
        let target = ObjectRef::<ApiTarget>::new("crm").within("shop");
        failures.failed(&route, MINUTE);
        failures.failed(&route, MINUTE);
        assert_eq!(failures.failed(&target, MINUTE), Duration::from_secs(1));
        failures.succeeded(&target);
        assert_eq!(failures.failed(&route, MINUTE), Duration::from_secs(4));
    }
}
