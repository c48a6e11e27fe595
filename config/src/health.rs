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
}
