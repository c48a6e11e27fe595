//! The JetStream objects one route needs, as plain data: rendered from the CRDs,
//! created by the provisioning code, compared against what exists.

use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// The shortest maximum age and duplicate window JetStream accepts on a stream. A
/// maximum age of 0 means no age limit; a duplicate window of 0 is replaced by
/// JetStream's default (2m, or the maximum age if shorter), so it cannot turn
/// deduplication off.
pub const MIN_STREAM_WINDOW: Duration = Duration::from_millis(100);

/// Desired state of a route's streams and consumers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStreams {
    pub stream: StreamPlan,
    /// `None` when dead-lettering is disabled.
    pub dead_letter: Option<StreamPlan>,
    /// One durable consumer per target, on `stream`.
    pub consumers: Vec<ConsumerPlan>,
    /// The delivery history (every attempt); `None` when the route records none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<StreamPlan>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Storage {
    File,
    Memory,
}

/// One JetStream stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamPlan {
    pub name: String,
    pub subjects: Vec<String>,
    pub max_age: Duration,
    /// `None`: unlimited.
    pub max_bytes: Option<i64>,
    /// `None`: unlimited.
    pub max_messages: Option<i64>,
    pub storage: Storage,
    pub replicas: u8,
    pub duplicate_window: Duration,
    /// When full: refuse new messages (`false`, events are never dropped unseen) or
    /// remove the oldest (`true`, for the delivery history, which is a bounded log).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discard_old: bool,
}

/// One durable pull consumer (one per target).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerPlan {
    pub name: String,
    /// The route's subjects (or the target's filter subjects) plus its redrive subject.
    pub filter_subjects: Vec<String>,
    /// How long a delivery may stay unacknowledged before JetStream redelivers it:
    /// longer than the target's timeout, so a slow success is not sent twice.
    pub ack_wait: Duration,
    /// The target's maxInFlight, enforced by JetStream across all replicas (plus,
    /// for an ordered target, the events waiting behind the heads of their keys).
    pub max_ack_pending: i64,
    /// For an ordered target: one dispatcher at a time is delivering (JetStream pins
    /// it), and another takes over after it stopped pulling for this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<Duration>,
}

/// The priority group ordered consumers pin their one active client in.
pub const ORDERED_GROUP: &str = "fanout";
