//! Delivery policies shared by `ApiTarget` and a route's per-target overrides.
//!
//! Every field is optional in the schema: an override names only what it changes, and
//! the effective value is resolved field by field (route override, then the target,
//! then the default) in [`crate::settings`]. The defaults are listed in each field's
//! documentation, which is what `kubectl explain` shows.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

pub use fanout_config::policy::{BackoffKind, JitterKind};
pub use fanout_config::route::ClientAuthentication;

use fanout_config::Duration;

use crate::rules;

/// When and how a failed delivery is attempted again.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.initialDelay) || !has(self.maxDelay) || duration(self.maxDelay) >= duration(self.initialDelay)").message("maxDelay must be greater than or equal to initialDelay"))]
pub struct RetrySpec {
    /// Total number of attempts per event and target, the first one included
    /// (1 disables retries). When they are used up the event goes to the dead-letter
    /// stream. Default: 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_attempts: Option<u32>,

    /// Shape of the wait between attempts: exponential, linear or constant.
    /// Default: exponential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffKind>,

    /// Randomness applied to each wait: full, equal or none. Default: full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<JitterKind>,

    /// Wait before the second attempt, e.g. 500ms. Default: 500ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<Duration>,

    /// Upper bound of any computed wait, e.g. 5m. Default: 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<Duration>,

    /// Longest `Retry-After` (seconds or HTTP date) a target may ask for; a longer
    /// request is shortened to this. 0s ignores Retry-After. Default: 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_max: Option<Duration>,

    /// Response codes that are retried: exact codes ("503") or classes ("5xx").
    /// Network errors and timeouts are always retried; any other non-2xx response is a
    /// permanent failure and goes straight to the dead-letter stream.
    /// Default: ["408", "429", "5xx"].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), inner(length(max = 3)))]
    #[x_kube(validation = Rule::new("self.all(c, c.matches('^([3-5][0-9][0-9]|[3-5]xx)$'))").message("each entry must be a 3xx-5xx status code such as \"503\" or a class such as \"5xx\""))]
    pub retryable_status_codes: Option<Vec<String>>,

    /// Codes that are never retried even when they match retryableStatusCodes, written
    /// the same way. Default: ["501"] (Not Implemented will not start working).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), inner(length(max = 3)))]
    #[x_kube(validation = Rule::new("self.all(c, c.matches('^([3-5][0-9][0-9]|[3-5]xx)$'))").message("each entry must be a 3xx-5xx status code such as \"501\" or a class such as \"4xx\""))]
    pub non_retryable_status_codes: Option<Vec<String>>,
}

/// Stops sending to a target that keeps failing, so its backlog waits in the stream
/// instead of using up retry attempts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.openDuration) || !has(self.maxOpenDuration) || duration(self.maxOpenDuration) >= duration(self.openDuration)").message("maxOpenDuration must be greater than or equal to openDuration"))]
pub struct CircuitBreakerSpec {
    /// Whether the breaker is used at all. Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,

    /// Share of failed attempts within the window that opens the circuit, in (0, 1].
    /// Default: 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1.0").message("failureRatio must be greater than 0 and at most 1"))]
    pub failure_ratio: Option<f64>,

    /// Attempts that must have been made within the window before the ratio is
    /// judged, so a single early failure cannot open the circuit. Default: 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub minimum_requests: Option<u32>,

    /// Sliding window over which the failure ratio is computed; more than 0s.
    /// Default: 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s')").message(rules::WINDOW_POSITIVE))]
    pub window: Option<Duration>,

    /// How long the circuit stays open before probing. Repeated openings double it,
    /// up to maxOpenDuration. Default: 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_duration: Option<Duration>,

    /// Cap on the growing open duration. Default: 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_open_duration: Option<Duration>,

    /// Requests let through while half-open; all must succeed to close the circuit,
    /// any failure opens it again. Default: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub half_open_probes: Option<u32>,

    /// Whether pushback counts as a failure: a 429, or a 503 with Retry-After, says
    /// the target is busy, not broken. Default: false: pushback slows the target down
    /// instead (the event's next attempt waits for Retry-After and, with adaptive
    /// concurrency, fewer requests go at once) and never opens the circuit. A 503
    /// without Retry-After, timeouts and connection errors always count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count_pushback: Option<bool>,
}

/// How many requests go to the target at once, within maxInFlight.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConcurrencySpec {
    /// Find the concurrency the target can take instead of always allowing
    /// maxInFlight: fewer requests at once after a 429, a 503 or a timeout, or when
    /// answers get slower than latencyTolerance allows, and more again while answers
    /// come back fast (additive increase, multiplicative decrease; each dispatcher
    /// replica finds its own share). The effective limit is in the route's
    /// `status.targets[].concurrencyLimit`. Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<bool>,

    /// The fewest requests in flight adaptive concurrency goes down to, per
    /// dispatcher replica; at most maxInFlight. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub min_in_flight: Option<u32>,

    /// How many times slower than the target's usual answers (plus 10ms) answers may
    /// become before adaptive concurrency sends fewer at once, from 1.1 to 100.
    /// Default: 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1.1 && self <= 100.0").message(rules::LATENCY_TOLERANCE_RANGE))]
    pub latency_tolerance: Option<f64>,
}

/// A token bucket shared by all dispatcher replicas of a route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Sustained requests per second to this target, summed over all replicas: from
    /// 0.001 (one request every 1000s) to 1000000.
    #[x_kube(validation = Rule::new("self >= 0.001 && self <= 1000000.0").message(rules::REQUESTS_PER_SECOND_RANGE))]
    pub requests_per_second: f64,

    /// Requests that may be sent at once after an idle period. Default: the rate
    /// rounded up, at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub burst: Option<u32>,
}

/// A key in a Secret in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A Secret in the same namespace, by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// `Authorization: Bearer <token>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BearerAuth {
    /// The Secret key holding the token.
    pub secret_ref: SecretKeyRef,
}

/// `Authorization: Basic ...` from a username and password in one Secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    /// The Secret holding the credentials.
    pub secret_ref: SecretRef,
    /// Key of the username in the Secret. Default: username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_key: Option<String>,
    /// Key of the password in the Secret. Default: password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_key: Option<String>,
}

/// Payload signing with the Standard Webhooks scheme (`webhook-id`,
/// `webhook-timestamp`, `webhook-signature` headers, HMAC-SHA256).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SigningSpec {
    /// The Secret key holding the signing secret (`whsec_` followed by base64, or raw base64).
    pub secret_ref: SecretKeyRef,
}

/// A header whose value is read from a Secret, such as an API key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderAuth {
    /// Header name, e.g. X-Api-Key. Authorization is allowed when no other auth
    /// (bearer, basic, oauth2) sets it; the other headers Fanout sets itself
    /// (Idempotency-Key, traceparent, tracestate, Content-Type, Host, Content-Length,
    /// webhook-*, Fanout-*) are refused.
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9!#$%&*+.^_|~-]{1,128}$')").message(rules::AUTH_HEADER_TOKEN))]
    #[x_kube(validation = Rule::new("!(self.lowerAscii() in ['idempotency-key', 'traceparent', 'tracestate', 'content-type', 'host', 'content-length']) && !self.lowerAscii().startsWith('webhook-') && !self.lowerAscii().startsWith('fanout-')").message(rules::AUTH_HEADER_RESERVED))]
    pub name: String,
    /// The Secret key holding the header's value.
    pub secret_ref: SecretKeyRef,
}

/// A client certificate and its private key, in PEM, from one Secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertificate {
    /// The Secret holding the certificate and key, typically of type
    /// kubernetes.io/tls.
    pub secret_ref: SecretRef,
    /// Key of the certificate chain (PEM, leaf first). Default: tls.crt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub certificate_key: Option<String>,
    /// Key of the private key (PEM: PKCS#8, PKCS#1 or SEC1). Default: tls.key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub private_key_key: Option<String>,
}

/// CA certificates (PEM) from a Secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaBundle {
    /// The Secret holding the bundle.
    pub secret_ref: SecretRef,
    /// Key of the bundle in the Secret. Default: ca.crt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

/// TLS settings of the connection to the target; https URLs only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.clientCertificate) || has(self.caBundle)").message(rules::TLS_NOT_EMPTY))]
pub struct TlsAuth {
    /// Client certificate presented to the target (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientCertificate>,
    /// CAs that the target's certificate must chain to. When given, they replace
    /// the platform's trust store for this target: a certificate from any other CA,
    /// public ones included, is refused. Default: the platform's trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundle>,
}

/// `Authorization: Bearer <access token>`, the token obtained with the OAuth 2.0
/// client credentials grant (RFC 6749 section 4.4). It is kept until shortly before
/// it expires (expires_in) and fetched again when the target answers 401.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2Auth {
    /// The authorization server's token endpoint. https://, or http:// on a loopback
    /// address (127.0.0.0/8, ::1, localhost) only.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new(r"isURL(self) && url(self).getHostname() != '' && self.matches('^(https://|http://(localhost|127[.][0-9]{1,3}[.][0-9]{1,3}[.][0-9]{1,3}|\\[::1\\])(:[0-9]+)?([/?#]|$))')").message(rules::TOKEN_URL))]
    pub token_url: String,
    /// The Secret holding the client id and secret.
    pub secret_ref: SecretRef,
    /// Key of the client id in the Secret. Default: client-id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_id_key: Option<String>,
    /// Key of the client secret in the Secret. Default: client-secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_secret_key: Option<String>,
    /// Scopes requested (sent as the space-separated scope parameter). Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256)))]
    #[x_kube(validation = Rule::new("self.all(s, s.matches('^[!#-\\\\[\\\\]-~]+$'))").message(rules::SCOPE_CHARACTERS))]
    pub scopes: Vec<String>,
    /// The audience parameter some authorization servers require (e.g. the target
    /// API's identifier). Default: not sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub audience: Option<String>,
    /// basic or post. Default: basic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_authentication: Option<ClientAuthentication>,
    /// CAs that the token endpoint's certificate must chain to, replacing the
    /// platform's trust store for it. Default: the platform's trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundle>,
}

/// Credentials sent with each request. Secrets are read by the dispatcher at run
/// time; they are never copied into rendered configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.bearer) ? 1 : 0) + (has(self.basic) ? 1 : 0) + (has(self.oauth2) ? 1 : 0) + (has(self.header) && self.header.name.lowerAscii() == 'authorization' ? 1 : 0) <= 1").message(rules::ONE_AUTHORIZATION))]
pub struct AuthSpec {
    /// Bearer token authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer: Option<BearerAuth>,
    /// Basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuth>,
    /// OAuth 2.0 client credentials: a bearer token from the authorization server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Auth>,
    /// A header (such as an API key) whose value is read from a Secret; combines
    /// with the others unless it is Authorization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderAuth>,
    /// Client certificate (mutual TLS) and the CAs the target's certificate is
    /// verified with; combines with every other kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsAuth>,
    /// Standard Webhooks payload signature; combines with every other kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<SigningSpec>,
}
