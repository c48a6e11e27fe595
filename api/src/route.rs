//! `FanOutRoute`: one stream of events and the targets it fans out to.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use fanout_config::route::AfterDeadLetter;

use crate::policy::{CircuitBreakerSpec, ConcurrencySpec, RateLimitSpec, RetrySpec, SecretKeyRef};
use crate::rules;
use crate::status::{CircuitState, Condition};
use fanout_config::Duration;

/// Events published to a route's subjects are stored once and delivered to every
/// target independently, with each target's retry, circuit breaker and rate limit.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "fanout.dev",
    version = "v1alpha1",
    kind = "FanOutRoute",
    doc = "A stream of events and the ApiTargets it fans out to. Each event is stored once in JetStream and delivered to every target independently.",
    plural = "fanoutroutes",
    namespaced,
    status = "FanOutRouteStatus",
    shortname = "fr",
    category = "fanout",
    validation = Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS label (lowercase letters, digits and '-', at most 63 characters, no dots): it becomes part of NATS stream and subject names"),
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Targets","type":"string","description":"healthy/total targets","jsonPath":".status.healthyTargets"}"#,
    printcolumn = r#"{"name":"Dispatchers","type":"string","description":"available/desired dispatcher pods","jsonPath":".status.dispatchers"}"#,
    printcolumn = r#"{"name":"Pending","type":"integer","description":"events waiting for delivery, summed over targets","jsonPath":".status.pending"}"#,
    printcolumn = r#"{"name":"Oldest-Undelivered","type":"date","description":"age of the oldest event some target has not received yet","jsonPath":".status.oldestUndeliveredTime"}"#,
    printcolumn = r#"{"name":"Delivered","type":"string","description":"events delivered per target since the dispatchers started","jsonPath":".status.deliveredSummary"}"#,
    printcolumn = r#"{"name":"Dead-Lettered","type":"integer","jsonPath":".status.deadLettered"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.source) && has(self.source.storage) ? self.source.storage : 'file') == (has(oldSelf.source) && has(oldSelf.source.storage) ? oldSelf.source.storage : 'file')").message(rules::STORAGE_IMMUTABLE).field_path(".source.storage"))]
pub struct FanOutRouteSpec {
    /// Where events come from and how long they are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceSpec>,

    /// The APIs each event is delivered to. Names are unique within the route.
    #[schemars(length(min = 1, max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub targets: Vec<RouteTargetSpec>,

    /// Where events go that could not be delivered to a target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterSpec>,

    /// The dispatcher pods that deliver this route's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatcher: Option<DispatcherSpec>,

    /// How the HTTP gateway accepts events for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewaySpec>,

    /// The delivery history: a record of every attempt (target, attempt number,
    /// time, status or error, latency, dead-lettered or not), which `fanout
    /// attempts` and `fanout events` read. On by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HistorySpec>,
}

/// The route's delivery history, kept in a JetStream stream of its own
/// (`fanout_<namespace>_<route>_attempts`) that drops its oldest records when full.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistorySpec {
    /// Record every attempt. Default: true. When false the history stream is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// How long and how much history is kept; the oldest records go first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<HistoryRetentionSpec>,
}

/// Limits of the history stream. It is always bounded in bytes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryRetentionSpec {
    /// Oldest record kept: 0s for no age limit (maxBytes still holds), else at least
    /// 100ms. Default: 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) == duration('0s') || duration(self) >= duration('100ms')").message(rules::MAX_AGE_MINIMUM))]
    pub max_age: Option<Duration>,
    /// Bytes kept at most, at least 1 MiB (1048576). Default: 128 MiB (134217728).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1048576))]
    pub max_bytes: Option<i64>,
}

/// Ingest through the HTTP gateway.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.allowUnauthenticated) && self.allowUnauthenticated) || !has(self.bearerTokens) || size(self.bearerTokens) == 0").message("allowUnauthenticated cannot be combined with bearerTokens"))]
pub struct GatewaySpec {
    /// Bearer tokens that may send events to this route (any one of them, so tokens
    /// can be rotated without downtime). Requests without a valid token get 401/403.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub bearer_tokens: Vec<SecretKeyRef>,

    /// Accept events without a token. Default: false, so a route without
    /// bearerTokens refuses every HTTP request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_unauthenticated: Option<bool>,
}

/// The route's JetStream stream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.retention) || !has(self.retention.maxAge) ? (!has(self.duplicateWindow) || duration(self.duplicateWindow) <= duration('72h')) : (duration(self.retention.maxAge) == duration('0s') || (has(self.duplicateWindow) ? duration(self.duplicateWindow) : duration('2m')) <= duration(self.retention.maxAge))").message(rules::DUPLICATE_WINDOW_WITHIN_MAX_AGE))]
pub struct SourceSpec {
    /// Extra NATS subjects captured by the stream, besides the route's own ingest
    /// subject `fanout.in.<namespace>.<route>.>` that the gateway publishes to.
    /// The first token must be literal and `fanout.` is reserved. JetStream refuses
    /// subjects that overlap (`shop.>` and `shop.orders`): the route reports
    /// `InvalidSource`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 255)))]
    #[x_kube(validation = Rule::new("self.all(s, s.matches('^[A-Za-z0-9_-]+([.]([A-Za-z0-9_-]+|[*]))*([.]>)?$'))").message("each subject must be a NATS subject of at most 255 characters: dot-separated tokens of letters, digits, '_' or '-', '*' for one token, a final '>' for the rest; the first token must be literal"))]
    #[x_kube(validation = Rule::new("self.all(s, s != 'fanout' && !s.startsWith('fanout.'))").message("subjects under 'fanout.' are reserved for Fanout's own ingest, redrive and dead-letter subjects"))]
    #[x_kube(validation = Rule::new("self.all(s, self.exists_one(t, t == s))").message(rules::SUBJECTS_UNIQUE))]
    pub subjects: Vec<String>,

    /// How long and how much the stream keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,

    /// Where JetStream keeps messages: file or memory. Default: file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageKind>,

    /// JetStream replicas of the stream: 1, or 3 on a clustered NATS. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == 1 || self == 3").message("replicas must be 1 or 3"))]
    pub replicas: Option<u8>,

    /// Window in which a repeated event id (Idempotency-Key or Nats-Msg-Id) is stored
    /// only once: at least 100ms and at most `retention.maxAge`. Default: 2m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('100ms')").message(rules::DUPLICATE_WINDOW_MINIMUM))]
    pub duplicate_window: Option<Duration>,
}

/// Retention limits of a stream; the oldest events are removed first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Oldest event kept: 0s for no age limit, else at least 100ms. Default: 72h for
    /// the route's stream, 336h for dead letters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) == duration('0s') || duration(self) >= duration('100ms')").message(rules::MAX_AGE_MINIMUM))]
    pub max_age: Option<Duration>,
    /// Bytes kept at most. Default: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_bytes: Option<i64>,
    /// Events kept at most. Default: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_messages: Option<i64>,
}

/// JetStream storage backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StorageKind {
    /// Survives a NATS restart.
    #[default]
    File,
    /// Faster, lost when NATS restarts.
    Memory,
}

/// One target of a route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteTargetSpec {
    /// Name of this target within the route; also the name of its JetStream consumer.
    #[schemars(length(min = 1, max = 48))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("target name must be lowercase letters, digits and '-', starting and ending with a letter or digit"))]
    pub name: String,

    /// The `ApiTarget` (in the route's namespace) that receives the events.
    pub api_target_ref: ApiTargetRef,

    /// Only events that match are delivered to this target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<FilterSpec>,

    /// What this target receives instead of the event's own body (and headers added
    /// to it), computed from the event with CEL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<TransformSpec>,

    /// Changes to the ApiTarget's policies for this route only; fields left out keep
    /// the ApiTarget's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<PolicyOverrides>,

    /// Deliver the events of one key in the order they were stored; events of
    /// different keys go in parallel. Default: no ordering, every event in parallel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<OrderingSpec>,
}

/// Per-key ordering of a route target (docs/dispatcher.md, "Per-key ordering").
///
/// Events of one key reach the target in the order the stream stored them, also
/// across retries, redeliveries, dispatcher crashes and several replicas: one
/// dispatcher replica at a time delivers the target, and another takes over within
/// the consumer's ack wait plus 15s when it stops. A key whose head event keeps
/// failing holds back only its own later events. Events without a key are
/// delivered without ordering.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderingSpec {
    /// Where each event's key comes from.
    pub key: OrderingKeySpec,

    /// What happens to a key after its head event was dead-lettered: continue (its
    /// next event goes on) or block (its later events wait until that dead letter is
    /// redriven with `fanout dlq redrive` and delivered; they count against
    /// maxWaiting meanwhile). Default: continue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_dead_letter: Option<AfterDeadLetter>,

    /// Events held back at most behind the heads of their keys, besides the
    /// requests in flight. When that many wait, no more events are fetched until a
    /// head is settled. Default: 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_waiting: Option<u32>,
}

/// The source of an event's ordering key: exactly one of `header`, `partitionKey`
/// and `cel`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.header) ? 1 : 0) + (has(self.partitionKey) && self.partitionKey ? 1 : 0) + (has(self.cel) ? 1 : 0) == 1").message(rules::ORDERING_KEY_ONE_SOURCE))]
pub struct OrderingKeySpec {
    /// An event header (case-insensitive), e.g. X-Customer-Id. The gateway stores it
    /// with each event it accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9!#$%&*+.^_|~-]{1,128}$') && !(self.lowerAscii() in ['authorization', 'proxy-authorization', 'cookie'])").message(rules::ORDERING_KEY_HEADER))]
    pub header: Option<String>,

    /// The CloudEvents `partitionkey` extension attribute: the `ce-partitionkey`
    /// header of a binary-mode event, or the `partitionkey` member of a
    /// structured-mode one (`application/cloudevents+json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<bool>,

    /// A CEL expression over the event (as in `filter.cel`) that yields its key: a
    /// string, or a number or bool as its text; null or "" for no key (delivered
    /// without waiting for other events). E.g. `event.data.customerId`. An event it
    /// cannot be evaluated on is dead-lettered with reason `ordering`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub cel: Option<String>,
}

/// Reference to an `ApiTarget` in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiTargetRef {
    /// Name of the ApiTarget.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Which events a target receives. All given conditions must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FilterSpec {
    /// NATS subject patterns; the event's subject must match one of them. Each must
    /// be within the route's subjects, and none may contain another (JetStream refuses
    /// that): the route reports `InvalidFilter`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 255)))]
    #[x_kube(validation = Rule::new("self.all(s, s.matches('^([A-Za-z0-9_-]+|[*])([.]([A-Za-z0-9_-]+|[*]))*([.]>)?$|^>$'))").message("each subject must be a NATS subject pattern: dot-separated tokens of letters, digits, '_' or '-', '*' for one token, a final '>' for the rest"))]
    #[x_kube(validation = Rule::new("self.all(s, self.exists_one(t, t == s))").message(rules::SUBJECTS_UNIQUE))]
    pub subjects: Vec<String>,

    /// Event headers that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub headers: BTreeMap<String, String>,

    /// A CEL expression over the event that must be true, e.g.
    /// `event.data.total > 100 && event.type == "order.placed"`. The event's fields:
    /// `id`, `subject`, `type` and `source` (CloudEvents), `ce` (every CloudEvents
    /// attribute), `headers` (lower-case names), `data` (the body parsed as JSON) and
    /// `body` (bytes). Checked when the route is applied (reason `InvalidExpression`);
    /// an event it cannot be evaluated on (a missing field, a body that is not JSON,
    /// a cost above the limit) is dead-lettered for this target with reason `filter`.
    /// See docs/dispatcher.md, "Filters and transforms".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub cel: Option<String>,
}

/// CEL expressions over the event (the same `event` as `filter.cel`) that compute
/// what the target receives. An event they cannot be evaluated on is dead-lettered
/// for this target with reason `transform`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.body) || has(self.headers)").message(rules::TRANSFORM_NOT_EMPTY))]
pub struct TransformSpec {
    /// Yields the request body: a map or a list is sent as JSON
    /// (`application/json`), a string as it is (`text/plain; charset=utf-8`), bytes
    /// as they are (`application/octet-stream`). Absent: the event's own body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub body: Option<String>,

    /// Header name to an expression that yields its value: a string, a number or a
    /// bool; null leaves the header out. These replace the event's headers of the
    /// same name (a `Content-Type` here replaces the body's); the ApiTarget's static
    /// headers and credentials win over them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16, "additionalProperties" = {"type": "string", "minLength": 1, "maxLength": 4096}))]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[A-Za-z0-9!#$%&*+.^_|~-]{1,128}$'))").message(rules::TRANSFORM_HEADER_TOKEN))]
    #[x_kube(validation = Rule::new("self.all(k, !(k.lowerAscii() in ['authorization', 'idempotency-key', 'traceparent', 'tracestate', 'host', 'content-length', 'transfer-encoding', 'connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade']) && !k.lowerAscii().startsWith('webhook-') && !k.lowerAscii().startsWith('fanout-'))").message(rules::TRANSFORM_HEADER_RESERVED))]
    pub headers: BTreeMap<String, String>,
}

/// Per-route changes to an ApiTarget's delivery policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.concurrency) || !has(self.concurrency.minInFlight) || !has(self.maxInFlight) || self.concurrency.minInFlight <= self.maxInFlight").message(rules::MIN_IN_FLIGHT_WITHIN_MAX).field_path(".concurrency.minInFlight"))]
pub struct PolicyOverrides {
    /// Replaces the ApiTarget's timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message(rules::TIMEOUT_POSITIVE))]
    pub timeout: Option<Duration>,
    /// Fields given here replace the ApiTarget's retry fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// Fields given here replace the ApiTarget's circuit breaker fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerSpec>,
    /// Replaces the ApiTarget's rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// Replaces the ApiTarget's maxInFlight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_in_flight: Option<u32>,
    /// Fields given here replace the ApiTarget's concurrency fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<ConcurrencySpec>,
}

/// The dead-letter stream of a route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterSpec {
    /// Keep undeliverable events in a dead-letter stream. When false they are
    /// discarded after the last attempt (and counted). Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// How long and how much the dead-letter stream keeps. Default maxAge: 336h. It
    /// deduplicates with the route's `source.duplicateWindow`, shortened to this maxAge
    /// if that is shorter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,
}

/// When the kubelet pulls the dispatcher image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// The Deployment of dispatcher pods for the route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.replicas) || !has(self.autoscaling)").message("set replicas or autoscaling, not both"))]
pub struct DispatcherSpec {
    /// Number of dispatcher pods. Rate limits and in-flight limits are shared among
    /// them. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 64))]
    pub replicas: Option<i32>,
    /// Scale the dispatcher pods with the route's backlog instead of a fixed
    /// `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
    /// CPU and memory for each dispatcher container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Dispatcher image. Default: the image the operator was installed with. Only
    /// that image and those the platform allows (the chart's
    /// `dispatcher.allowedImages`) are accepted; any other leaves the dispatcher
    /// Deployment as it is and sets `Ready=False` with reason `ImageNotAllowed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Pull policy of the dispatcher image. Default: the operator's setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,
}

/// Dispatcher replicas that follow the backlog: enough that each has at most
/// `targetPendingPerReplica` events of the most backlogged target to deliver. More
/// replicas are added at once; fewer only once the backlog has called for fewer
/// throughout `scaleDownDelay`. A target whose circuit is not closed does not count:
/// more pods would not make it answer. A target's rate limit holds for the route as a
/// whole: the pods running share it equally.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || self.minReplicas <= self.maxReplicas").message("minReplicas must be at most maxReplicas"))]
pub struct AutoscalingSpec {
    /// Fewest dispatcher pods. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub min_replicas: Option<i32>,
    /// Most dispatcher pods.
    #[schemars(range(min = 1, max = 64))]
    pub max_replicas: i32,
    /// Events not yet sent to a target (its `pending`) that one replica is expected to
    /// keep up with. Default: 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_pending_per_replica: Option<u64>,
    /// How long the backlog must have called for fewer replicas before they are
    /// removed, so that a dip between bursts does not stop pods that are needed
    /// again a minute later. Default: 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay: Option<Duration>,
}

/// What the operator observed about a route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FanOutRouteStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `StreamReady`, `DispatcherAvailable`, `TargetsHealthy`,
    /// `BacklogWithinRetention`, `IngestReady`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The route's stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamStatus>,

    /// The route's dead-letter stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_stream: Option<StreamStatus>,

    /// Delivery health of each target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetStatus>,

    /// Healthy targets out of all, e.g. "2/3" (shown by `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_targets: Option<String>,

    /// Dispatcher pods available out of those wanted, e.g. "2/4" (shown by
    /// `kubectl get`; with autoscaling, the wanted count follows the backlog).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatchers: Option<String>,

    /// Events delivered per target, e.g. "inventory=120 email=118" (shown by
    /// `kubectl get`; counted since the dispatcher pods started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_summary: Option<String>,

    /// Events waiting for delivery, summed over targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<u64>,

    /// Events dead-lettered, summed over targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_lettered: Option<u64>,

    /// When the oldest event that some target has not received yet (nor had
    /// dead-lettered) was stored; absent when every target is up to date. Undelivered
    /// events are dead-lettered with reason `expired` shortly before the stream's
    /// maxAge would remove them (docs/operations.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_undelivered_time: Option<Time>,

    /// The last time streams or consumers of this route were found missing (deleted
    /// behind Fanout's back, or lost with a NATS node's storage) and created again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recreated: Option<RecreatedStatus>,
}

/// JetStream objects of a route that had gone missing and were created again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecreatedStatus {
    /// When the operator created them again.
    pub time: Time,
    /// The streams and consumers that were missing.
    pub objects: Vec<String>,
    /// Events the route's stream held at the last status before it went missing:
    /// they are gone with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_events: Option<u64>,
    /// What happened and what it means, for people.
    pub message: String,
}

/// Size of a JetStream stream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamStatus {
    /// Stream name in JetStream.
    pub name: String,
    /// Messages stored.
    pub messages: u64,
    /// Bytes stored.
    pub bytes: u64,
}

/// Delivery health of one target of a route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    /// The target's name in the route.
    pub name: String,
    /// Worst circuit state reported by the dispatcher replicas.
    pub circuit: CircuitState,
    /// Events not yet delivered to this target.
    pub pending: u64,
    /// Deliveries currently in progress.
    pub in_flight: u64,
    /// Events delivered successfully.
    pub delivered: u64,
    /// Failed attempts (each retry counts).
    pub failed: u64,
    /// Events sent to the dead-letter stream.
    pub dead_lettered: u64,
    /// When an event was last delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_time: Option<Time>,
    /// The most recent delivery error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the oldest event this target has not received yet was stored (delivering,
    /// waiting for a retry or not fetched yet); absent when it is up to date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_undelivered_time: Option<Time>,
    /// Requests the dispatchers let go to the target at once now, summed over the
    /// replicas delivering to it: maxInFlight each, or with adaptive concurrency
    /// what the target was found to take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<u32>,
    /// Ordered targets: keys whose head event failed and waits to be tried again
    /// (or, with `afterDeadLetter: block`, to be redriven); their later events wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_keys: Option<u64>,
    /// Since when the longest-blocked key has been blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_blocked_time: Option<Time>,
}
