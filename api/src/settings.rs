//! From a raw spec to the effective delivery policy of one route target, and to the
//! time limits of a route's streams.
//!
//! The schema refuses most bad input at `kubectl apply` time, but some checks need
//! values from two objects (a route's override against its ApiTarget), and the
//! standalone mode reads files that never passed through an apiserver. So everything
//! is checked once more here; code past [`resolve`] and [`resolve_streams`] never
//! re-checks. The defaults live in [`fanout_config::policy::defaults`].

use fanout_config::Duration;
use fanout_config::expiry::Expiry;
use fanout_config::jetstream::MIN_STREAM_WINDOW;
use fanout_config::policy::{
    AdaptiveConcurrency, BreakerPolicy, DeliveryPolicy, RateLimit, RetryPolicy, StatusCodeSet,
    defaults,
};

use crate::policy::{AuthSpec, CircuitBreakerSpec, ConcurrencySpec, RateLimitSpec, RetrySpec};
use crate::route::{DeadLetterSpec, HistorySpec, PolicyOverrides, SourceSpec};
use crate::rules;
use crate::target::ApiTargetSpec;

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
    if let Some(auth) = &target.auth {
        check_auth(target, auth)?;
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
        .map(resolve_rate_limit)
        .transpose()?;
    let adaptive_concurrency = resolve_concurrency(
        overrides.concurrency.as_ref(),
        target.concurrency.as_ref(),
        max_in_flight,
    )?;

    Ok(DeliveryPolicy {
        url,
        method: target.method.unwrap_or_default(),
        headers: target.headers.clone(),
        timeout,
        retry: resolve_retry(overrides.retry.as_ref(), target.retry.as_ref())?,
        circuit_breaker: resolve_breaker(
            overrides.circuit_breaker.as_ref(),
            target.circuit_breaker.as_ref(),
        )?,
        rate_limit,
        max_in_flight,
        adaptive_concurrency,
    })
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

fn resolve_retry(
    over: Option<&RetrySpec>,
    base: Option<&RetrySpec>,
) -> Result<RetryPolicy, SettingsError> {
    let codes = |list: Vec<String>, field| {
        StatusCodeSet::parse(&list).map_err(|problem| invalid(field, problem))
    };
    let owned = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
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
    not_below(
        "retry.maxDelay",
        policy.max_delay,
        "retry.initialDelay",
        policy.initial_delay,
    )?;
    Ok(policy)
}

fn resolve_breaker(
    over: Option<&CircuitBreakerSpec>,
    base: Option<&CircuitBreakerSpec>,
) -> Result<Option<BreakerPolicy>, SettingsError> {
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
        count_pushback: layered!(over, base, count_pushback, defaults::COUNT_PUSHBACK),
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
    not_below(
        "circuitBreaker.maxOpenDuration",
        policy.max_open_duration,
        "circuitBreaker.openDuration",
        policy.open_duration,
    )?;
    Ok(Some(policy))
}

/// Bounds of `concurrency.latencyTolerance`, as in the CRD.
const MIN_LATENCY_TOLERANCE: f64 = 1.1;
const MAX_LATENCY_TOLERANCE: f64 = 100.0;

fn resolve_concurrency(
    over: Option<&ConcurrencySpec>,
    base: Option<&ConcurrencySpec>,
    max_in_flight: u32,
) -> Result<Option<AdaptiveConcurrency>, SettingsError> {
    if !layered!(over, base, adaptive, defaults::ADAPTIVE_CONCURRENCY) {
        return Ok(None);
    }
    let policy = AdaptiveConcurrency {
        min_in_flight: layered!(over, base, min_in_flight, defaults::MIN_IN_FLIGHT),
        latency_tolerance: layered!(over, base, latency_tolerance, defaults::LATENCY_TOLERANCE),
    };
    if policy.min_in_flight == 0 {
        return Err(invalid("concurrency.minInFlight", "must be at least 1"));
    }
    if policy.min_in_flight > max_in_flight {
        return Err(invalid(
            "concurrency.minInFlight",
            format!(
                "{} is more than maxInFlight {max_in_flight} (after applying overrides)",
                policy.min_in_flight
            ),
        ));
    }
    // Written as a negated range check so that NaN is refused too.
    if !(policy.latency_tolerance >= MIN_LATENCY_TOLERANCE
        && policy.latency_tolerance <= MAX_LATENCY_TOLERANCE)
    {
        return Err(invalid(
            "concurrency.latencyTolerance",
            format!(
                "{} must be at least {MIN_LATENCY_TOLERANCE} and at most {MAX_LATENCY_TOLERANCE}",
                policy.latency_tolerance
            ),
        ));
    }
    Ok(Some(policy))
}

/// Refuses an upper bound below its lower bound, once overrides are applied (the CRD
/// checks each object alone and cannot see the combination).
fn not_below(
    field: &'static str,
    value: Duration,
    lower_field: &str,
    lower: Duration,
) -> Result<(), SettingsError> {
    if value < lower {
        return Err(invalid(
            field,
            format!("{value} is less than {lower_field} {lower} (after applying overrides)"),
        ));
    }
    Ok(())
}

/// Bounds of `rateLimit.requestsPerSecond`, as in the CRD. Below the lower one, the
/// dispatcher's rate limiter could not hold the wait between two requests.
const MIN_REQUESTS_PER_SECOND: f64 = 0.001;
const MAX_REQUESTS_PER_SECOND: f64 = 1_000_000.0;

fn resolve_rate_limit(spec: &RateLimitSpec) -> Result<RateLimit, SettingsError> {
    let rps = spec.requests_per_second;
    // The same bounds as the CRD's rule; files read by standalone mode skip the apiserver.
    if !(MIN_REQUESTS_PER_SECOND..=MAX_REQUESTS_PER_SECOND).contains(&rps) {
        return Err(invalid(
            "rateLimit.requestsPerSecond",
            format!(
                "{rps} must be at least {MIN_REQUESTS_PER_SECOND} and at most {MAX_REQUESTS_PER_SECOND}"
            ),
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

/// How long a JetStream stream keeps events and remembers their ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamWindows {
    /// 0: no age limit.
    pub max_age: Duration,
    pub duplicate_window: Duration,
}

/// The windows of a route's stream and of its dead-letter stream, with the defaults
/// applied and JetStream's rules checked, so that provisioning cannot fail on them.
pub fn resolve_streams(
    source: Option<&SourceSpec>,
    dead_letter: Option<&DeadLetterSpec>,
) -> Result<(StreamWindows, StreamWindows), SettingsError> {
    let given_age = source
        .and_then(|s| s.retention.as_ref())
        .and_then(|r| r.max_age);
    let max_age = given_age.unwrap_or(defaults::STREAM_MAX_AGE);
    check_max_age("source.retention.maxAge", max_age)?;
    let given_window = source.and_then(|s| s.duplicate_window);
    let duplicate_window = given_window.unwrap_or(defaults::DUPLICATE_WINDOW);
    if duplicate_window < MIN_STREAM_WINDOW {
        return Err(invalid(
            "source.duplicateWindow",
            format!(
                "{duplicate_window} is below JetStream's minimum of {MIN_STREAM_WINDOW} (deduplication cannot be turned off)"
            ),
        ));
    }
    if !max_age.as_std().is_zero() && duplicate_window > max_age {
        let shown = |value: Duration, given: bool| {
            if given {
                value.to_string()
            } else {
                format!("{value} (the default)")
            }
        };
        return Err(invalid(
            "source.duplicateWindow",
            format!(
                "{} is longer than source.retention.maxAge {}; JetStream refuses a stream whose duplicate window exceeds its maximum age",
                shown(duplicate_window, given_window.is_some()),
                shown(max_age, given_age.is_some()),
            ),
        ));
    }

    let dead_letter_age = dead_letter
        .and_then(|d| d.retention.as_ref())
        .and_then(|r| r.max_age)
        .unwrap_or(defaults::DEAD_LETTER_MAX_AGE);
    check_max_age("deadLetter.retention.maxAge", dead_letter_age)?;
    // Dead letters deduplicate with the route's window (a dispatcher that crashed
    // after publishing one publishes it again), or longer where an expiring event may
    // be dead-lettered twice, by a sweep and by the worker that fetches it before the
    // stream drops it (see `fanout_config::expiry`); but never for longer than they
    // are kept: JetStream refuses that, and a user who keeps dead letters briefly
    // should not have to shorten the route's window for it.
    let wanted = match Expiry::new(max_age) {
        Some(expiry) => duplicate_window.max(expiry.dedup_window().into()),
        None => duplicate_window,
    };
    let dead_letter_window = if dead_letter_age.as_std().is_zero() {
        wanted
    } else {
        wanted.min(dead_letter_age)
    };
    Ok((
        StreamWindows {
            max_age,
            duplicate_window,
        },
        StreamWindows {
            max_age: dead_letter_age,
            duplicate_window: dead_letter_window,
        },
    ))
}

/// The limits of a route's history stream, with the defaults applied; `None` when the
/// route keeps no history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    pub windows: StreamWindows,
    pub max_bytes: i64,
}

/// The smallest history stream: a few thousand records.
pub const HISTORY_MIN_BYTES: i64 = 1024 * 1024;

pub fn resolve_history(
    history: Option<&HistorySpec>,
) -> Result<Option<HistoryLimits>, SettingsError> {
    if !history
        .and_then(|h| h.enabled)
        .unwrap_or(defaults::HISTORY_ENABLED)
    {
        return Ok(None);
    }
    let retention = history.and_then(|h| h.retention.as_ref());
    let max_age = retention
        .and_then(|r| r.max_age)
        .unwrap_or(defaults::HISTORY_MAX_AGE);
    check_max_age("history.retention.maxAge", max_age)?;
    let max_bytes = retention
        .and_then(|r| r.max_bytes)
        .unwrap_or(defaults::HISTORY_MAX_BYTES);
    if max_bytes < HISTORY_MIN_BYTES {
        return Err(invalid(
            "history.retention.maxBytes",
            format!("{max_bytes} is below the minimum of {HISTORY_MIN_BYTES} (1 MiB)"),
        ));
    }
    let duplicate_window = if max_age.as_std().is_zero() {
        defaults::HISTORY_DUPLICATE_WINDOW
    } else {
        defaults::HISTORY_DUPLICATE_WINDOW
            .min(max_age)
            .max(MIN_STREAM_WINDOW)
    };
    Ok(Some(HistoryLimits {
        windows: StreamWindows {
            max_age,
            duplicate_window,
        },
        max_bytes,
    }))
}

fn check_max_age(field: &'static str, max_age: Duration) -> Result<(), SettingsError> {
    if !max_age.as_std().is_zero() && max_age < MIN_STREAM_WINDOW {
        return Err(invalid(
            field,
            format!(
                "{max_age} is below JetStream's minimum of {MIN_STREAM_WINDOW} (0s means no age limit)"
            ),
        ));
    }
    Ok(())
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

/// Headers that Fanout sets on every delivery and a target's static headers may not replace.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "idempotency-key",
    "traceparent",
    "tracestate",
    "content-type",
    "host",
    "content-length",
];

fn check_header_name(name: &str) -> Result<(), SettingsError> {
    match header_name_problem(name, false) {
        Some(problem) => Err(invalid("headers", problem)),
        None => Ok(()),
    }
}

/// What is wrong with a header name a user sets, if anything. `Authorization` is
/// allowed only for `auth.header`, which sets it on purpose.
fn header_name_problem(name: &str, allow_authorization: bool) -> Option<String> {
    if !is_header_token(name) {
        return Some(format!("{name:?} is not a valid HTTP header name"));
    }
    let lower = name.to_ascii_lowercase();
    let reserved = RESERVED_HEADERS.contains(&lower.as_str())
        && !(allow_authorization && lower == "authorization");
    if reserved || lower.starts_with("webhook-") || lower.starts_with("fanout-") {
        return Some(format!(
            "{name:?} is set by Fanout itself and cannot be overridden"
        ));
    }
    None
}

/// The auth rules of the CRD, for specs that did not pass through an apiserver.
fn check_auth(target: &ApiTargetSpec, auth: &AuthSpec) -> Result<(), SettingsError> {
    match auth_rules_broken(target, auth).first() {
        Some((field, rule)) => Err(invalid(field, *rule)),
        None => Ok(()),
    }
}

/// The CRD's rules on `auth` (and on `url` with `auth.tls`) that `target` breaks:
/// (field below `spec`, the rule's message). `fanout standalone` reports them all.
pub fn auth_rules_broken(
    target: &ApiTargetSpec,
    auth: &AuthSpec,
) -> Vec<(&'static str, &'static str)> {
    let mut broken = Vec::new();
    let header_is_authorization = auth
        .header
        .as_ref()
        .is_some_and(|h| h.name.eq_ignore_ascii_case("authorization"));
    let setting_authorization = [
        auth.bearer.is_some(),
        auth.basic.is_some(),
        auth.oauth2.is_some(),
        header_is_authorization,
    ];
    if setting_authorization.iter().filter(|set| **set).count() > 1 {
        broken.push(("auth", rules::ONE_AUTHORIZATION));
    }
    if let Some(header) = &auth.header {
        let name = &header.name;
        if !is_header_token(name) {
            broken.push(("auth.header.name", rules::AUTH_HEADER_TOKEN));
        } else if header_name_problem(name, true).is_some() {
            broken.push(("auth.header.name", rules::AUTH_HEADER_RESERVED));
        }
        if target.headers.keys().any(|k| k.eq_ignore_ascii_case(name)) {
            broken.push(("auth.header.name", rules::AUTH_HEADER_IN_HEADERS));
        }
    }
    if let Some(tls) = &auth.tls {
        if tls.client_certificate.is_none() && tls.ca_bundle.is_none() {
            broken.push(("auth.tls", rules::TLS_NOT_EMPTY));
        }
        if !target.url.to_ascii_lowercase().starts_with("https://") {
            broken.push(("auth.tls", rules::TLS_NEEDS_HTTPS));
        }
    }
    if let Some(oauth2) = &auth.oauth2 {
        if !token_url_allowed(&oauth2.token_url) {
            broken.push(("auth.oauth2.tokenUrl", rules::TOKEN_URL));
        }
        if !oauth2.scopes.iter().all(|s| is_scope(s)) {
            broken.push(("auth.oauth2.scopes", rules::SCOPE_CHARACTERS));
        }
    }
    broken
}

fn is_header_token(name: &str) -> bool {
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    !name.is_empty() && name.chars().all(is_token_char)
}

/// https://, or http:// to this machine: the client secret is sent there.
fn token_url_allowed(text: &str) -> bool {
    let Ok(url) = url::Url::parse(text) else {
        return false;
    };
    let loopback = match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => url.host().is_some(),
        "http" => loopback,
        _ => false,
    }
}

/// RFC 6749's scope-token: %x21 / %x23-5B / %x5D-7E.
fn is_scope(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use fanout_config::Duration;
    use fanout_config::policy::{BackoffKind, HttpMethod, JitterKind};

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
            concurrency: None,
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
        let p = resolve(&target("http://api.local/hook"), None).unwrap();
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
        let p = resolve(&target("http://api.local"), None).unwrap();
        for code in [408, 429, 500, 502, 503, 504, 599] {
            assert!(
                p.retry.is_retryable_status(code),
                "{code} should be retried"
            );
        }
        for code in [400, 401, 403, 404, 409, 422, 501, 301] {
            assert!(
                !p.retry.is_retryable_status(code),
                "{code} should be permanent"
            );
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
        let p = resolve(&spec, Some(&overrides)).unwrap();
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
        let err = resolve(&spec, Some(&overrides)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "retry.maxDelay: 2s is less than retry.initialDelay 10s (after applying overrides)"
        );
    }

    #[test]
    fn urls_must_be_absolute_http_or_https() {
        assert!(resolve(&target("https://api.example.com/x"), None).is_ok());
        let err = resolve(&target("ftp://api.local"), None).unwrap_err();
        assert!(
            matches!(err, SettingsError::UnsupportedScheme { .. }),
            "{err}"
        );
        let err = resolve(&target("/relative"), None).unwrap_err();
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
            let err = resolve(&spec, None).unwrap_err();
            assert!(err.to_string().starts_with("headers:"), "{name}: {err}");
        }
        let mut spec = target("http://api.local");
        spec.headers
            .insert("X-Source".to_string(), "fanout".to_string());
        assert!(resolve(&spec, None).is_ok());
    }

    fn with_auth(url: &str, auth: serde_json::Value) -> ApiTargetSpec {
        let mut spec = target(url);
        spec.auth = Some(serde_json::from_value(auth).unwrap());
        spec
    }

    fn auth_error(spec: &ApiTargetSpec) -> String {
        resolve(spec, None).unwrap_err().to_string()
    }

    #[test]
    fn only_one_auth_kind_may_set_authorization() {
        let key = serde_json::json!({"name": "k", "key": "k"});
        let oauth2 =
            serde_json::json!({"tokenUrl": "https://idp/token", "secretRef": {"name": "c"}});
        let header = |name: &str| serde_json::json!({"name": name, "secretRef": key});
        for auth in [
            serde_json::json!({"bearer": {"secretRef": key}, "basic": {"secretRef": {"name": "b"}}}),
            serde_json::json!({"bearer": {"secretRef": key}, "oauth2": oauth2}),
            serde_json::json!({"oauth2": oauth2, "header": header("Authorization")}),
        ] {
            let err = auth_error(&with_auth("https://api.local", auth));
            assert_eq!(err, format!("auth: {}", rules::ONE_AUTHORIZATION));
        }
        for auth in [
            serde_json::json!({"oauth2": oauth2, "header": header("X-Api-Key")}),
            serde_json::json!({"header": header("authorization")}),
            serde_json::json!({"basic": {"secretRef": {"name": "b"}}, "header": header("X-Api-Key"), "signing": {"secretRef": key}}),
        ] {
            assert!(
                resolve(&with_auth("https://api.local", auth.clone()), None).is_ok(),
                "{auth}"
            );
        }
    }

    #[test]
    fn an_auth_header_cannot_be_one_fanout_sets_or_a_static_one() {
        let header = |name: &str| serde_json::json!({"header": {"name": name, "secretRef": {"name": "k", "key": "k"}}});
        for name in [
            "Idempotency-Key",
            "traceparent",
            "Fanout-Route",
            "webhook-id",
            "Host",
        ] {
            let err = auth_error(&with_auth("https://api.local", header(name)));
            assert_eq!(
                err,
                format!("auth.header.name: {}", rules::AUTH_HEADER_RESERVED),
                "{name}"
            );
        }
        let err = auth_error(&with_auth("https://api.local", header("bad name")));
        assert_eq!(
            err,
            format!("auth.header.name: {}", rules::AUTH_HEADER_TOKEN)
        );
        let mut spec = with_auth("https://api.local", header("X-Api-Key"));
        spec.headers.insert("x-api-key".into(), "static".into());
        assert_eq!(
            auth_error(&spec),
            format!("auth.header.name: {}", rules::AUTH_HEADER_IN_HEADERS)
        );
    }

    #[test]
    fn tls_needs_an_https_url_and_something_to_use() {
        let tls = serde_json::json!({"tls": {"clientCertificate": {"secretRef": {"name": "c"}}}});
        assert!(resolve(&with_auth("https://api.local", tls.clone()), None).is_ok());
        let err = auth_error(&with_auth("http://api.local", tls));
        assert_eq!(err, format!("auth.tls: {}", rules::TLS_NEEDS_HTTPS));
        let err = auth_error(&with_auth(
            "https://api.local",
            serde_json::json!({"tls": {}}),
        ));
        assert_eq!(err, format!("auth.tls: {}", rules::TLS_NOT_EMPTY));
    }

    #[test]
    fn token_urls_are_https_or_loopback_and_scopes_are_scope_tokens() {
        let oauth2 = |url: &str, scopes: &[&str]| serde_json::json!({"oauth2": {"tokenUrl": url, "secretRef": {"name": "c"}, "scopes": scopes}});
        for url in [
            "https://idp.example.com/token",
            "http://127.0.0.1:8080/token",
            "http://127.9.9.9/token",
            "http://[::1]:8080/token",
            "http://localhost/token",
        ] {
            assert!(
                resolve(&with_auth("https://api.local", oauth2(url, &[])), None).is_ok(),
                "{url}"
            );
        }
        for url in [
            "http://idp.example.com/token",
            "http://10.0.0.1/token",
            "http://169.254.169.254/token",
            "ftp://idp/token",
            "token",
        ] {
            let err = auth_error(&with_auth("https://api.local", oauth2(url, &[])));
            assert_eq!(
                err,
                format!("auth.oauth2.tokenUrl: {}", rules::TOKEN_URL),
                "{url}"
            );
        }
        let ok = oauth2(
            "https://idp/token",
            &["contacts.write", "https://api/.default", "a:b"],
        );
        assert!(resolve(&with_auth("https://api.local", ok), None).is_ok());
        for scope in ["two words", "quote\"", "back\\slash", ""] {
            let err = auth_error(&with_auth(
                "https://api.local",
                oauth2("https://idp/token", &[scope]),
            ));
            assert_eq!(
                err,
                format!("auth.oauth2.scopes: {}", rules::SCOPE_CHARACTERS),
                "{scope:?}"
            );
        }
    }

    #[test]
    fn breaker_can_be_disabled_and_bad_ratios_are_refused() {
        let mut spec = target("http://api.local");
        spec.circuit_breaker = Some(CircuitBreakerSpec {
            enabled: Some(false),
            ..Default::default()
        });
        assert!(resolve(&spec, None).unwrap().circuit_breaker.is_none());

        for ratio in [0.0, 1.5, -0.1, f64::NAN] {
            spec.circuit_breaker = Some(CircuitBreakerSpec {
                failure_ratio: Some(ratio),
                ..Default::default()
            });
            let err = resolve(&spec, None).unwrap_err();
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
        assert_eq!(resolve(&spec, None).unwrap().rate_limit.unwrap().burst, 3);

        for rps in [-1.0, 0.0, 1e-11, 0.0009, 2e6, f64::INFINITY, f64::NAN] {
            spec.rate_limit = Some(RateLimitSpec {
                requests_per_second: rps,
                burst: None,
            });
            let err = resolve(&spec, None).unwrap_err();
            assert!(
                err.to_string().starts_with("rateLimit.requestsPerSecond"),
                "{rps}: {err}"
            );
        }
        spec.rate_limit = Some(RateLimitSpec {
            requests_per_second: -1.0,
            burst: None,
        });
        let err = resolve(&spec, None).unwrap_err();
        assert!(
            err.to_string().starts_with("rateLimit.requestsPerSecond"),
            "{err}"
        );
    }

    #[test]
    fn the_slowest_rate_is_one_request_every_1000_seconds() {
        let mut spec = target("http://api.local");
        spec.rate_limit = Some(RateLimitSpec {
            requests_per_second: 0.001,
            burst: None,
        });
        assert_eq!(resolve(&spec, None).unwrap().rate_limit.unwrap().burst, 1);
        spec.rate_limit = Some(RateLimitSpec {
            requests_per_second: 1e-11,
            burst: None,
        });
        assert_eq!(
            resolve(&spec, None).unwrap_err().to_string(),
            "rateLimit.requestsPerSecond: 0.00000000001 must be at least 0.001 and at most 1000000"
        );
    }

    #[test]
    fn a_zero_timeout_or_breaker_window_is_refused_by_name() {
        let mut spec = target("http://api.local");
        spec.timeout = Some(d("0s"));
        let err = resolve(&spec, None).unwrap_err();
        assert_eq!(err.to_string(), "timeout: must be greater than 0s");

        let overrides = PolicyOverrides {
            timeout: Some(d("0s")),
            ..Default::default()
        };
        let err = resolve(&target("http://api.local"), Some(&overrides)).unwrap_err();
        assert_eq!(err.to_string(), "timeout: must be greater than 0s");

        let mut spec = target("http://api.local");
        spec.circuit_breaker = Some(CircuitBreakerSpec {
            window: Some(d("0s")),
            ..Default::default()
        });
        let err = resolve(&spec, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "circuitBreaker.window: must be greater than 0s"
        );
    }

    fn source(max_age: Option<&str>, duplicate_window: Option<&str>) -> SourceSpec {
        SourceSpec {
            retention: max_age.map(|a| crate::route::RetentionSpec {
                max_age: Some(d(a)),
                ..Default::default()
            }),
            duplicate_window: duplicate_window.map(d),
            ..Default::default()
        }
    }

    fn dead_letter(max_age: &str) -> DeadLetterSpec {
        DeadLetterSpec {
            enabled: None,
            retention: Some(crate::route::RetentionSpec {
                max_age: Some(d(max_age)),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn streams_get_the_documented_defaults() {
        let (stream, dead_letters) = resolve_streams(None, None).unwrap();
        assert_eq!(stream.max_age, d("72h"));
        assert_eq!(stream.duplicate_window, d("2m"));
        assert_eq!(dead_letters.max_age, d("336h"));
        // Long enough for an event expiring from a 72h stream: its margin (1h) and a
        // sweep interval (30s).
        assert_eq!(dead_letters.duplicate_window, d("3630s"));
    }

    #[test]
    fn a_duplicate_window_longer_than_the_max_age_is_refused_naming_both() {
        for (max_age, window, message) in [
            (
                Some("2h"),
                Some("3h"),
                "source.duplicateWindow: 3h is longer than source.retention.maxAge 2h",
            ),
            (
                None,
                Some("73h"),
                "source.duplicateWindow: 73h is longer than source.retention.maxAge 72h (the default)",
            ),
            (
                Some("1m"),
                None,
                "source.duplicateWindow: 2m (the default) is longer than source.retention.maxAge 1m",
            ),
        ] {
            let err = resolve_streams(Some(&source(max_age, window)), None).unwrap_err();
            assert!(err.to_string().starts_with(message), "{err}");
            assert!(
                err.to_string().ends_with(
                    "JetStream refuses a stream whose duplicate window exceeds its maximum age"
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn a_duplicate_window_equal_to_the_max_age_or_without_age_limit_is_accepted() {
        let (stream, _) = resolve_streams(Some(&source(Some("5m"), Some("5m"))), None).unwrap();
        assert_eq!(
            (stream.max_age, stream.duplicate_window),
            (d("5m"), d("5m"))
        );
        let (stream, _) = resolve_streams(Some(&source(Some("0s"), Some("100h"))), None).unwrap();
        assert_eq!(stream.max_age, Duration::ZERO, "0s: no age limit");
    }

    #[test]
    fn windows_below_jetstreams_minimum_are_refused() {
        let err = resolve_streams(Some(&source(Some("50ms"), None)), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "source.retention.maxAge: 50ms is below JetStream's minimum of 100ms (0s means no age limit)"
        );
        let err = resolve_streams(Some(&source(None, Some("0s"))), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "source.duplicateWindow: 0s is below JetStream's minimum of 100ms (deduplication cannot be turned off)"
        );
        let err = resolve_streams(None, Some(&dead_letter("99ms"))).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("deadLetter.retention.maxAge: 99ms is below"),
            "{err}"
        );
    }

    #[test]
    fn dead_letters_deduplicate_for_at_most_as_long_as_they_are_kept() {
        let (_, dead_letters) = resolve_streams(None, Some(&dead_letter("1m"))).unwrap();
        assert_eq!(dead_letters.max_age, d("1m"));
        assert_eq!(dead_letters.duplicate_window, d("1m"));
        let (_, dead_letters) =
            resolve_streams(Some(&source(Some("0s"), Some("400h"))), None).unwrap();
        assert_eq!(dead_letters.duplicate_window, d("336h"));
        let (_, dead_letters) =
            resolve_streams(Some(&source(None, Some("10m"))), Some(&dead_letter("0s"))).unwrap();
        assert_eq!(dead_letters.duplicate_window, d("3630s"));
    }

    #[test]
    fn dead_letters_of_expiring_events_deduplicate_across_the_expiry_margin() {
        // maxAge 1h: dead-lettered 6m before, swept every 30s.
        let (_, dead_letters) =
            resolve_streams(Some(&source(Some("1h"), Some("1m"))), None).unwrap();
        assert_eq!(dead_letters.duplicate_window, d("390s"));
        // The route's own window when it is longer.
        let (_, dead_letters) =
            resolve_streams(Some(&source(Some("20s"), Some("5s"))), None).unwrap();
        assert_eq!(dead_letters.duplicate_window, d("5s"));
    }

    #[test]
    fn the_resolved_policy_round_trips_through_json() {
        let p = resolve(&target("http://api.local"), None).unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<DeliveryPolicy>(&json).unwrap(), p);
    }
}
