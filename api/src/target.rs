//! `ApiTarget`: one downstream HTTP API, reusable by many routes.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

pub use fanout_config::policy::HttpMethod;

use crate::policy::{AuthSpec, CircuitBreakerSpec, ConcurrencySpec, RateLimitSpec, RetrySpec};
use crate::rules;
use crate::status::{CircuitState, Condition};
use fanout_config::Duration;

/// An HTTP API that routes deliver events to, with how to authenticate, how long to
/// wait, when to retry, when to stop trying (circuit breaker) and how fast to send.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "fanout.dev",
    version = "v1alpha1",
    kind = "ApiTarget",
    doc = "An HTTP API that Fanout delivers events to: URL, auth, timeout, retry policy, circuit breaker and rate limit. Routes reference it by name.",
    plural = "apitargets",
    namespaced,
    status = "ApiTargetStatus",
    shortname = "apit",
    category = "fanout",
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".spec.url"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Circuit","type":"string","jsonPath":".status.circuit"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.auth) || !has(self.auth.tls) || self.url.lowerAscii().startsWith('https://')").message(rules::TLS_NEEDS_HTTPS).field_path(".auth.tls"))]
#[x_kube(validation = Rule::new("!has(self.auth) || !has(self.auth.header) || !has(self.headers) || !self.headers.exists(k, k.lowerAscii() == self.auth.header.name.lowerAscii())").message(rules::AUTH_HEADER_IN_HEADERS).field_path(".auth.header.name"))]
#[x_kube(validation = Rule::new("!has(self.concurrency) || !has(self.concurrency.minInFlight) || self.concurrency.minInFlight <= (has(self.maxInFlight) ? self.maxInFlight : 64)").message(rules::MIN_IN_FLIGHT_WITHIN_MAX).field_path(".concurrency.minInFlight"))]
pub struct ApiTargetSpec {
    /// Absolute http:// or https:// URL that events are sent to.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHost() != ''").message("url must be an absolute http:// or https:// URL with a host"))]
    pub url: String,

    /// HTTP method: POST, PUT or PATCH. Default: POST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,

    /// Static headers added to every request. Headers that Fanout sets itself
    /// (Authorization, Idempotency-Key, traceparent, webhook-*, Fanout-*) cannot be set here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[A-Za-z0-9!#$%&*+.^_|~-]{1,128}$'))").message("header names must be HTTP tokens of at most 128 characters"))]
    #[x_kube(validation = Rule::new("self.all(k, !(k.lowerAscii() in ['authorization', 'idempotency-key', 'traceparent', 'tracestate', 'content-type', 'host', 'content-length']) && !k.lowerAscii().startsWith('webhook-') && !k.lowerAscii().startsWith('fanout-'))").message("headers set by Fanout itself (Authorization, Idempotency-Key, traceparent, tracestate, Content-Type, Host, Content-Length, webhook-*, Fanout-*) cannot be overridden"))]
    pub headers: BTreeMap<String, String>,

    /// How long one attempt may take, from connecting to the end of the response
    /// headers; more than 0s. Default: 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message(rules::TIMEOUT_POSITIVE))]
    pub timeout: Option<Duration>,

    /// Credentials and payload signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,

    /// Retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,

    /// Circuit breaker policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerSpec>,

    /// Requests per second to this API, across all dispatcher replicas of a route.
    /// Default: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,

    /// Deliveries in flight at once per route, across all dispatcher replicas.
    /// Default: 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_in_flight: Option<u32>,

    /// How many of maxInFlight go at once: all of them, or as many as the target is
    /// found to take (adaptive). Default: maxInFlight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<ConcurrencySpec>,
}

/// What the operator observed about an `ApiTarget`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiTargetStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`: the URL is valid and every referenced Secret key exists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// Routes (in this namespace) that deliver to this target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,

    /// The worst circuit state among the routes that use this target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit: Option<CircuitState>,
}
