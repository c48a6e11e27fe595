//! `FanOutReplay`: the events a route's stream still holds for a window, sent again to
//! one of its targets, declared as a resource (for GitOps); `kubectl fanout replay` does
//! the same from a terminal, with the same code.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::status::Condition;
use fanout_config::Duration;

/// Sends the events of a window again to one target of a FanOutRoute, and to no other.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "fanout.dev",
    version = "v1alpha1",
    kind = "FanOutReplay",
    doc = "Sends the events a FanOutRoute's stream still holds for a window again to one of its targets, and to no other, with their original Idempotency-Keys and at the target's rate limit. Its status shows the progress; deleting it stops the replay.",
    plural = "fanoutreplays",
    namespaced,
    status = "FanOutReplayStatus",
    shortname = "frp",
    category = "fanout",
    printcolumn = r#"{"name":"Route","type":"string","jsonPath":".spec.route"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.target"}"#,
    printcolumn = r#"{"name":"Sent","type":"string","description":"events sent of the window's total","jsonPath":".status.progress"}"#,
    printcolumn = r#"{"name":"Last-Sequence","type":"integer","description":"the last stream sequence done with","jsonPath":".status.position","priority":1}"#,
    printcolumn = r#"{"name":"Complete","type":"string","jsonPath":".status.conditions[?(@.type==\"Complete\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Complete\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message(REPLAY_IMMUTABLE))]
pub struct FanOutReplaySpec {
    /// The FanOutRoute, in this namespace, whose events are sent again.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("route must be the name of a FanOutRoute: lowercase letters, digits and '-'"))]
    pub route: String,

    /// The route's target (its name in the route) that receives them. The route's
    /// other targets receive nothing.
    #[schemars(length(min = 1, max = 48))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("target must be the name of one of the route's targets: lowercase letters, digits and '-'"))]
    pub target: String,

    /// Which events: those the route's stream still holds, stored from `since`,
    /// `fromTime` or `fromSequence` up to `untilTime`, `untilSequence`, or the stream's
    /// last event when the replay starts. Only events the target's consumer reads and
    /// its filter passes are sent.
    pub window: ReplayWindow,
}

/// A window of a route's stream. Exactly one of since, fromTime and fromSequence; at
/// most one of untilTime and untilSequence.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.since) ? 1 : 0) + (has(self.fromTime) ? 1 : 0) + (has(self.fromSequence) ? 1 : 0) == 1").message(WINDOW_ONE_START))]
#[x_kube(validation = Rule::new("!has(self.untilTime) || !has(self.untilSequence)").message(WINDOW_ONE_END))]
pub struct ReplayWindow {
    /// Events stored within this long before the FanOutReplay was created, e.g. 2h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message("since must be greater than 0s"))]
    pub since: Option<Duration>,

    /// Events stored at or after this time (RFC 3339, e.g. 2026-11-27T02:00:00Z).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_time: Option<Time>,

    /// Events from this stream sequence on (as `kubectl fanout dlq list` and the
    /// dead letters' Fanout-Original-Sequence show them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub from_sequence: Option<u64>,

    /// Events stored at or before this time. Default: up to the stream's last event
    /// when the replay starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_time: Option<Time>,

    /// Events up to this stream sequence, included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub until_sequence: Option<u64>,
}

/// On `spec`, when a FanOutReplay is updated.
pub const REPLAY_IMMUTABLE: &str =
    "a FanOutReplay cannot be changed once created; delete it (which stops it) and create another";
/// On `spec.window`.
pub const WINDOW_ONE_START: &str = "set exactly one of since, fromTime and fromSequence";
/// On `spec.window`.
pub const WINDOW_ONE_END: &str = "set at most one of untilTime and untilSequence";

/// How far the replay got.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FanOutReplayStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Complete`: True once every event of the window is sent (or was removed by the
    /// stream's retention first); False while it runs (reason `Running`) or cannot
    /// run (the reason says why: `RouteNotFound`, `TargetNotFound`, `ReplayFailed`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// Its progress record in the NATS KV bucket `fanout_replays`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_id: Option<String>,

    /// The first stream sequence of the window, fixed when the replay started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_sequence: Option<u64>,

    /// The last stream sequence of the window, fixed when the replay started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sequence: Option<u64>,

    /// Events of the window for the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,

    /// Events sent again so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<u64>,

    /// "sent/total", e.g. 120/361 (shown by `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,

    /// The last stream sequence done with; the replay resumes after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,

    /// Events of the window the stream's retention removed before they were sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<u64>,

    /// When the replay started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}
