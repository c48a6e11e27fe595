//! Health snapshots: what each dispatcher pod reports about each target, every few
//! seconds, into the `fanout_health` KV bucket. The operator combines the snapshots
//! of all pods with consumer info into the route's status.

use serde::{Deserialize, Serialize};

/// Circuit state as the dispatcher sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Circuit {
    #[default]
    Closed,
    HalfOpen,
    Open,
}

/// One pod's view of one target. Counters are totals since the pod started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthSnapshot {
    pub namespace: String,
    pub route: String,
    pub target: String,
    pub pod: String,
    pub circuit: Circuit,
    pub delivered: u64,
    /// Failed attempts (each retry counts once).
    pub failed: u64,
    pub dead_lettered: u64,
    pub in_flight: u64,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// RFC 3339; when this snapshot was written.
    pub reported_at: String,
    /// Requests this pod lets go to the target at once now: its maxInFlight, or
    /// what adaptive concurrency found. `None` for a pod that stands by for an
    /// ordered target another pod delivers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<u32>,
    /// Ordered targets: keys whose head event has failed and is waiting to be
    /// tried again (or, with `afterDeadLetter: Block`, to be redriven).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub blocked_keys: u64,
    /// RFC 3339; since when the longest-blocked of them has been blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_blocked_since: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
