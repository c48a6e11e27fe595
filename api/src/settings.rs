//! From a raw spec to the effective delivery policy of one route target.
//!
//! The schema refuses most bad input at `kubectl apply` time, but some checks need
//! values from two objects (a route's override against its ApiTarget), and the
//! standalone mode reads files that never passed through an apiserver. So everything
//! is checked once more here; code past [`DeliveryPolicy::resolve`] never re-checks.
//! All defaults live in [`defaults`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::policy::{BackoffKind, CircuitBreakerSpec, JitterKind, RateLimitSpec, RetrySpec};
use crate::route::PolicyOverrides;
use crate::target::{ApiTargetSpec, HttpMethod};

/// The defaults documented on each CRD field.
pub mod defaults {
    use super::*;

    pub const TIMEOUT: Duration = Duration::from_secs(10);
    pub const MAX_IN_FLIGHT: u32 = 64;

    pub const MAX_ATTEMPTS: u32 = 10;
    pub const BACKOFF: BackoffKind = BackoffKind::Exponential;
    pub const JITTER: JitterKind = JitterKind::Full;
    pub const INITIAL_DELAY: Duration = Duration::from_millis(500);
    pub const MAX_DELAY: Duration = Duration::from_secs(300);
    pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(600);
    pub const RETRYABLE_STATUS_CODES: &[&str] = &["408", "429", "5xx"];
    pub const NON_RETRYABLE_STATUS_CODES: &[&str] = &["501"];

    pub const BREAKER_ENABLED: bool = true;
    pub const FAILURE_RATIO: f64 = 0.5;
    pub const MINIMUM_REQUESTS: u32 = 20;
    pub const WINDOW: Duration = Duration::from_secs(30);
    pub const OPEN_DURATION: Duration = Duration::from_secs(30);
    pub const MAX_OPEN_DURATION: Duration = Duration::from_secs(300);
    pub const HALF_OPEN_PROBES: u32 = 3;

    pub const STREAM_MAX_AGE: Duration = Duration::from_secs(72 * 3600);
    pub const DEAD_LETTER_MAX_AGE: Duration = Duration::from_secs(336 * 3600);
    pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
    pub const DISPATCHER_REPLICAS: i32 = 1;
}

/// A spec value that cannot work, named by its field path.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("url: {value:?} is not a valid URL")]
    InvalidUrl {
        value: String,
        #[source]
        source: url::ParseError,
    },
    #[error("url: scheme {scheme:?} is not supported; use http or https")]
    UnsupportedScheme { scheme: String },
    #[error("{field}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

fn invalid(field: &'static str, problem: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        field,
        problem: problem.into(),
    }
}

/// Everything a dispatcher needs to know about delivering to one target of a route,
/// with every default applied and every value checked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryPolicy {
    pub url: String,
    pub method: HttpMethod,
    pub headers: BTreeMap<String, String>,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// `None` when the breaker is disabled.
    pub circuit_breaker: Option<BreakerPolicy>,
    /// `None` when unlimited. The rate is for all replicas together.
    pub rate_limit: Option<RateLimit>,
    pub max_in_flight: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff: BackoffKind,
    pub jitter: JitterKind,
    pub initial_delay: Duration,
    pub max_delay: Duration,
    pub retry_after_max: Duration,
    pub retryable_status_codes: StatusCodeSet,
    pub non_retryable_status_codes: StatusCodeSet,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerPolicy {
    pub failure_ratio: f64,
    pub minimum_requests: u32,
    pub window: Duration,
    pub open_duration: Duration,
    pub max_open_duration: Duration,
    pub half_open_probes: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    pub requests_per_second: f64,
    pub burst: u32,
}

impl DeliveryPolicy {
    /// The effective policy of an ApiTarget as used by one route: each field from the
    /// route's override if given, else from the ApiTarget, else the default.
    pub fn resolve(
        target: &ApiTargetSpec,
        overrides: Option<&PolicyOverrides>,
    ) -> Result<DeliveryPolicy, SettingsError> {
        let empty = PolicyOverrides::default();
        let overrides = overrides.unwrap_or(&empty);

        let url = check_url(&target.url)?;
        for name in target.headers.keys() {
            check_header_name(name)?;
        }

        let timeout = overrides
            .timeout
            .or(target.timeout)
            .unwrap_or(defaults::TIMEOUT);
        if timeout.as_std().is_zero() {
            return Err(invalid("timeout", "must be greater than 0s"));
        }

        let max_in_flight = overrides
            .max_in_flight
            .or(target.max_in_flight)
            .unwrap_or(defaults::MAX_IN_FLIGHT);
        if max_in_flight == 0 {
            return Err(invalid("maxInFlight", "must be at least 1"));
        }

        let rate_limit = overrides
            .rate_limit
            .as_ref()
            .or(target.rate_limit.as_ref())
            .map(RateLimit::resolve)
            .transpose()?;

        Ok(DeliveryPolicy {
            url,
            method: target.method.unwrap_or_default(),
            headers: target.headers.clone(),
            timeout,
            retry: RetryPolicy::resolve(overrides.retry.as_ref(), target.retry.as_ref())?,
            circuit_breaker: BreakerPolicy::resolve(
                overrides.circuit_breaker.as_ref(),
                target.circuit_breaker.as_ref(),
            )?,
            rate_limit,
            max_in_flight,
        })
    }
}

/// Picks a field from the override, then the target's spec, then the default.
macro_rules! layered {
    ($over:expr, $base:expr, $field:ident, $default:expr) => {
        $over
            .and_then(|o| o.$field.clone())
            .or_else(|| $base.and_then(|b| b.$field.clone()))
            .unwrap_or_else(|| $default)
    };
}

impl RetryPolicy {
    fn resolve(over: Option<&RetrySpec>, base: Option<&RetrySpec>) -> Result<Self, SettingsError> {
        let codes = |list: Vec<String>, field| StatusCodeSet::parse(&list, field);
        let policy = RetryPolicy {
            max_attempts: layered!(over, base, max_attempts, defaults::MAX_ATTEMPTS),
            backoff: layered!(over, base, backoff, defaults::BACKOFF),
            jitter: layered!(over, base, jitter, defaults::JITTER),
            initial_delay: layered!(over, base, initial_delay, defaults::INITIAL_DELAY),
            max_delay: layered!(over, base, max_delay, defaults::MAX_DELAY),
            retry_after_max: layered!(over, base, retry_after_max, defaults::RETRY_AFTER_MAX),
            retryable_status_codes: codes(
                layered!(
                    over,
                    base,
                    retryable_status_codes,
                    owned(defaults::RETRYABLE_STATUS_CODES)
                ),
                "retry.retryableStatusCodes",
            )?,
            non_retryable_status_codes: codes(
                layered!(
                    over,
                    base,
                    non_retryable_status_codes,
                    owned(defaults::NON_RETRYABLE_STATUS_CODES)
                ),
                "retry.nonRetryableStatusCodes",
            )?,
        };
        if policy.max_attempts == 0 {
            return Err(invalid("retry.maxAttempts", "must be at least 1"));
        }
        if policy.max_delay < policy.initial_delay {
            return Err(invalid(
                "retry.maxDelay",
                format!(
                    "{} is less than retry.initialDelay {} (after applying overrides)",
                    policy.max_delay, policy.initial_delay
                ),
            ));
        }
        Ok(policy)
    }
}

impl BreakerPolicy {
    fn resolve(
        over: Option<&CircuitBreakerSpec>,
        base: Option<&CircuitBreakerSpec>,
    ) -> Result<Option<Self>, SettingsError> {
        if !layered!(over, base, enabled, defaults::BREAKER_ENABLED) {
            return Ok(None);
        }
        let policy = BreakerPolicy {
            failure_ratio: layered!(over, base, failure_ratio, defaults::FAILURE_RATIO),
            minimum_requests: layered!(over, base, minimum_requests, defaults::MINIMUM_REQUESTS),
            window: layered!(over, base, window, defaults::WINDOW),
            open_duration: layered!(over, base, open_duration, defaults::OPEN_DURATION),
            max_open_duration: layered!(over, base, max_open_duration, defaults::MAX_OPEN_DURATION),
            half_open_probes: layered!(over, base, half_open_probes, defaults::HALF_OPEN_PROBES),
        };
        // Written as a negated range check so that NaN is refused too.
        if !(policy.failure_ratio > 0.0 && policy.failure_ratio <= 1.0) {
            return Err(invalid(
                "circuitBreaker.failureRatio",
                format!("{} is outside (0, 1]", policy.failure_ratio),
            ));
        }
        if policy.minimum_requests == 0 {
            return Err(invalid(
                "circuitBreaker.minimumRequests",
                "must be at least 1",
            ));
        }
        if policy.half_open_probes == 0 {
            return Err(invalid(
                "circuitBreaker.halfOpenProbes",
                "must be at least 1",
            ));
        }
        if policy.window.as_std().is_zero() {
            return Err(invalid("circuitBreaker.window", "must be greater than 0s"));
        }
        if policy.max_open_duration < policy.open_duration {
            return Err(invalid(
                "circuitBreaker.maxOpenDuration",
                format!(
                    "{} is less than circuitBreaker.openDuration {} (after applying overrides)",
                    policy.max_open_duration, policy.open_duration
                ),
            ));
        }
        Ok(Some(policy))
    }
}

impl RateLimit {
    fn resolve(spec: &RateLimitSpec) -> Result<Self, SettingsError> {
        let rps = spec.requests_per_second;
        if !(rps > 0.0 && rps.is_finite()) {
            return Err(invalid(
                "rateLimit.requestsPerSecond",
                format!("{rps} must be greater than 0"),
            ));
        }
        let burst = spec.burst.unwrap_or_else(|| rps.ceil().max(1.0) as u32);
        if burst == 0 {
            return Err(invalid("rateLimit.burst", "must be at least 1"));
        }
        Ok(RateLimit {
            requests_per_second: rps,
            burst,
        })
    }
}

fn owned(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn check_url(text: &str) -> Result<String, SettingsError> {
    let url = url::Url::parse(text).map_err(|source| SettingsError::InvalidUrl {
        value: text.to_string(),
        source,
    })?;
    match url.scheme() {
        "http" | "https" => Ok(text.to_string()),
        other => Err(SettingsError::UnsupportedScheme {
            scheme: other.to_string(),
        }),
    }
}

fn check_header_name(name: &str) -> Result<(), SettingsError> {
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(is_token_char) {
        return Err(invalid(
            "headers",
            format!("{name:?} is not a valid HTTP header name"),
        ));
    }
    let lower = name.to_ascii_lowercase();
    const RESERVED: &[&str] = &[
        "authorization",
        "idempotency-key",
        "traceparent",
        "tracestate",
        "content-type",
        "host",
        "content-length",
    ];
    if RESERVED.contains(&lower.as_str())
        || lower.starts_with("webhook-")
        || lower.starts_with("fanout-")
    {
        return Err(invalid(
            "headers",
            format!("{name:?} is set by Fanout itself and cannot be overridden"),
        ));
    }
    Ok(())
}

/// One entry of a status code list: an exact code or a class such as `5xx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusCodeMatch {
    Exact(u16),
    Class(u8),
}

impl StatusCodeMatch {
    pub fn matches(self, code: u16) -> bool {
        match self {
            StatusCodeMatch::Exact(c) => c == code,
            StatusCodeMatch::Class(class) => code / 100 == u16::from(class),
        }
    }
}

impl FromStr for StatusCodeMatch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        let class_ok = |b: u8| (b'3'..=b'5').contains(&b);
        match bytes {
            [c, b'x', b'x'] if class_ok(*c) => Ok(StatusCodeMatch::Class(c - b'0')),
            [c, d, e] if class_ok(*c) && d.is_ascii_digit() && e.is_ascii_digit() => Ok(
                StatusCodeMatch::Exact(s.parse().expect("three ASCII digits")),
            ),
            _ => Err(format!(
                "{s:?} is not a 3xx-5xx status code (\"503\") or class (\"5xx\")"
            )),
        }
    }
}

impl fmt::Display for StatusCodeMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusCodeMatch::Exact(c) => write!(f, "{c}"),
            StatusCodeMatch::Class(c) => write!(f, "{c}xx"),
        }
    }
}

/// A list of status codes and classes, written as strings in YAML.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusCodeSet(Vec<StatusCodeMatch>);

impl StatusCodeSet {
    fn parse(items: &[String], field: &'static str) -> Result<Self, SettingsError> {
        items
            .iter()
            .map(|s| s.parse().map_err(|problem: String| invalid(field, problem)))
            .collect::<Result<Vec<_>, _>>()
            .map(StatusCodeSet)
    }

    pub fn contains(&self, code: u16) -> bool {
        self.0.iter().any(|m| m.matches(code))
    }
}

impl Serialize for StatusCodeSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|m| m.to_string()))
    }
}

impl<'de> Deserialize<'de> for StatusCodeSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<String>::deserialize(deserializer)?
            .iter()
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .collect::<Result<Vec<_>, _>>()
            .map(StatusCodeSet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> ApiTargetSpec {
        ApiTargetSpec {
            url: url.to_string(),
            method: None,
            headers: BTreeMap::new(),
            timeout: None,
            auth: None,
            retry: None,
            circuit_breaker: None,
            rate_limit: None,
            max_in_flight: None,
        }
    }

    fn retry(f: impl FnOnce(&mut RetrySpec)) -> Option<RetrySpec> {
        let mut spec = RetrySpec::default();
        f(&mut spec);
        Some(spec)
    }

    fn d(s: &str) -> Duration {
        s.parse().unwrap()
    }

    #[test]
    fn an_empty_spec_gets_every_documented_default() {
        let p = DeliveryPolicy::resolve(&target("http://api.local/hook"), None).unwrap();
        assert_eq!(p.method, HttpMethod::Post);
        assert_eq!(p.timeout, d("10s"));
        assert_eq!(p.max_in_flight, 64);
        assert_eq!(p.retry.max_attempts, 10);
        assert_eq!(p.retry.backoff, BackoffKind::Exponential);
        assert_eq!(p.retry.jitter, JitterKind::Full);
        assert_eq!(p.retry.initial_delay, d("500ms"));
        assert_eq!(p.retry.max_delay, d("5m"));
        assert_eq!(p.retry.retry_after_max, d("10m"));
        let breaker = p.circuit_breaker.expect("breaker on by default");
        assert_eq!(breaker.failure_ratio, 0.5);
        assert_eq!(breaker.minimum_requests, 20);
        assert_eq!(breaker.half_open_probes, 3);
        assert!(p.rate_limit.is_none());
    }

    #[test]
    fn default_retryable_codes_are_408_429_and_5xx_except_501() {
        let p = DeliveryPolicy::resolve(&target("http://api.local"), None).unwrap();
        let retryable = |code| {
            p.retry.retryable_status_codes.contains(code)
                && !p.retry.non_retryable_status_codes.contains(code)
        };
        for code in [408, 429, 500, 502, 503, 504, 599] {
            assert!(retryable(code), "{code} should be retried");
        }
        for code in [400, 401, 403, 404, 409, 422, 501, 301] {
            assert!(!retryable(code), "{code} should be permanent");
        }
    }

    #[test]
    fn overrides_replace_single_fields_and_keep_the_rest_of_the_target() {
        let mut spec = target("http://api.local");
        spec.retry = retry(|r| {
            r.max_attempts = Some(5);
            r.initial_delay = Some(d("1s"));
        });
        spec.timeout = Some(d("3s"));
        let overrides = PolicyOverrides {
            retry: retry(|r| r.max_attempts = Some(2)),
            max_in_flight: Some(8),
            ..Default::default()
        };
        let p = DeliveryPolicy::resolve(&spec, Some(&overrides)).unwrap();
        assert_eq!(p.retry.max_attempts, 2, "from the override");
        assert_eq!(p.retry.initial_delay, d("1s"), "kept from the target");
        assert_eq!(p.retry.max_delay, d("5m"), "default");
        assert_eq!(p.timeout, d("3s"), "kept from the target");
        assert_eq!(p.max_in_flight, 8, "from the override");
    }

    #[test]
    fn max_delay_below_initial_delay_after_overrides_is_refused() {
        let mut spec = target("http://api.local");
        spec.retry = retry(|r| r.initial_delay = Some(d("10s")));
        let overrides = PolicyOverrides {
            retry: retry(|r| r.max_delay = Some(d("2s"))),
            ..Default::default()
        };
        let err = DeliveryPolicy::resolve(&spec, Some(&overrides)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "retry.maxDelay: 2s is less than retry.initialDelay 10s (after applying overrides)"
        );
    }

    #[test]
    fn urls_must_be_absolute_http_or_https() {
        assert!(DeliveryPolicy::resolve(&target("https://api.example.com/x"), None).is_ok());
        let err = DeliveryPolicy::resolve(&target("ftp://api.local"), None).unwrap_err();
        assert!(
            matches!(err, SettingsError::UnsupportedScheme { .. }),
            "{err}"
        );
        let err = DeliveryPolicy::resolve(&target("/relative"), None).unwrap_err();
        assert!(err.to_string().starts_with("url: \"/relative\""), "{err}");
    }

    #[test]
    fn reserved_and_malformed_header_names_are_refused() {
        for name in [
            "Authorization",
            "idempotency-key",
            "Webhook-Signature",
            "Fanout-Attempt",
            "bad header",
        ] {
            let mut spec = target("http://api.local");
            spec.headers.insert(name.to_string(), "x".to_string());
            let err = DeliveryPolicy::resolve(&spec, None).unwrap_err();
            assert!(err.to_string().starts_with("headers:"), "{name}: {err}");
        }
        let mut spec = target("http://api.local");
        spec.headers
            .insert("X-Source".to_string(), "fanout".to_string());
        assert!(DeliveryPolicy::resolve(&spec, None).is_ok());
    }

    #[test]
    fn breaker_can_be_disabled_and_bad_ratios_are_refused() {
        let mut spec = target("http://api.local");
        spec.circuit_breaker = Some(CircuitBreakerSpec {
            enabled: Some(false),
            ..Default::default()
        });
        assert!(
            DeliveryPolicy::resolve(&spec, None)
                .unwrap()
                .circuit_breaker
                .is_none()
        );

        for ratio in [0.0, 1.5, -0.1, f64::NAN] {
            spec.circuit_breaker = Some(CircuitBreakerSpec {
                failure_ratio: Some(ratio),
                ..Default::default()
            });
            let err = DeliveryPolicy::resolve(&spec, None).unwrap_err();
            assert!(
                err.to_string().starts_with("circuitBreaker.failureRatio"),
                "{err}"
            );
        }
    }

    #[test]
    fn rate_limit_burst_defaults_to_the_rate_rounded_up() {
        let mut spec = target("http://api.local");
        spec.rate_limit = Some(RateLimitSpec {
            requests_per_second: 2.5,
            burst: None,
        });
        let p = DeliveryPolicy::resolve(&spec, None).unwrap();
        assert_eq!(p.rate_limit.unwrap().burst, 3);

        spec.rate_limit = Some(RateLimitSpec {
            requests_per_second: -1.0,
            burst: None,
        });
        let err = DeliveryPolicy::resolve(&spec, None).unwrap_err();
        assert!(
            err.to_string().starts_with("rateLimit.requestsPerSecond"),
            "{err}"
        );
    }

    #[test]
    fn status_code_entries_parse_codes_and_classes() {
        assert_eq!("503".parse(), Ok(StatusCodeMatch::Exact(503)));
        assert_eq!("4xx".parse(), Ok(StatusCodeMatch::Class(4)));
        for bad in ["200", "2xx", "5x", "abc", "6xx", "5000"] {
            assert!(bad.parse::<StatusCodeMatch>().is_err(), "{bad}");
        }
        let set: StatusCodeSet = serde_json::from_str(r#"["429","5xx"]"#).unwrap();
        assert!(set.contains(429) && set.contains(503) && !set.contains(404));
        assert_eq!(serde_json::to_string(&set).unwrap(), r#"["429","5xx"]"#);
    }

    #[test]
    fn the_resolved_policy_round_trips_through_json() {
        let p = DeliveryPolicy::resolve(&target("http://api.local"), None).unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<DeliveryPolicy>(&json).unwrap(), p);
    }
}
