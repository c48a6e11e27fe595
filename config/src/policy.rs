//! The effective delivery policy of one route target: every default applied, every
//! value checked (by `fanout_api::settings::resolve`), ready for the dispatcher.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// HTTP method used to deliver events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum HttpMethod {
    #[default]
    #[serde(rename = "POST")]
    Post,
    #[serde(rename = "PUT")]
    Put,
    #[serde(rename = "PATCH")]
    Patch,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
        }
    }
}

/// How the wait between attempts grows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BackoffKind {
    /// initialDelay * 2^(attempt-1), capped at maxDelay.
    #[default]
    Exponential,
    /// initialDelay * attempt, capped at maxDelay.
    Linear,
    /// Always initialDelay.
    Constant,
}

/// How much randomness is applied to each computed delay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum JitterKind {
    /// A uniformly random delay between 0 and the computed delay ("full jitter"):
    /// spreads retries of many events apart so a recovering API is not hit in lockstep.
    #[default]
    Full,
    /// Half the computed delay plus a random part of up to the other half.
    Equal,
    /// Exactly the computed delay.
    None,
}

/// The defaults documented on each CRD field.
pub mod defaults {
    use super::{BackoffKind, Duration, JitterKind};

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
    pub const COUNT_PUSHBACK: bool = false;

    pub const ADAPTIVE_CONCURRENCY: bool = false;
    pub const MIN_IN_FLIGHT: u32 = 1;
    pub const LATENCY_TOLERANCE: f64 = 2.0;

    pub const ORDERING_MAX_WAITING: u32 = 1000;

    pub const STREAM_MAX_AGE: Duration = Duration::from_secs(72 * 3600);
    pub const DEAD_LETTER_MAX_AGE: Duration = Duration::from_secs(336 * 3600);
    pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
    pub const DISPATCHER_REPLICAS: i32 = 1;

    pub const HISTORY_ENABLED: bool = true;
    pub const HISTORY_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
    pub const HISTORY_MAX_BYTES: i64 = 128 * 1024 * 1024;
    /// JetStream's default; history records carry no message id, so it costs nothing.
    pub const HISTORY_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
}

/// Everything a dispatcher needs to know about delivering to one target of a route.
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
    /// For all replicas together (enforced by the consumer's max_ack_pending).
    pub max_in_flight: u32,
    /// `None`: requests go up to `max_in_flight` at once. `Some`: each dispatcher
    /// finds how many the target takes, between the minimum and `max_in_flight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive_concurrency: Option<AdaptiveConcurrency>,
}

/// How a dispatcher finds the concurrency a target can take (see the dispatcher's
/// `concurrency` module).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdaptiveConcurrency {
    /// The fewest requests in flight it goes down to.
    pub min_in_flight: u32,
    /// Answers this many times slower than the target's usual ones mean it is
    /// getting busy.
    pub latency_tolerance: f64,
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

impl RetryPolicy {
    /// Whether a response with this status is worth another attempt.
    pub fn is_retryable_status(&self, code: u16) -> bool {
        self.retryable_status_codes.contains(code)
            && !self.non_retryable_status_codes.contains(code)
    }
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
    /// Whether pushback (429, or 503 with Retry-After: the target is busy, not
    /// broken) counts as a failure.
    #[serde(default)]
    pub count_pushback: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    pub requests_per_second: f64,
    pub burst: u32,
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
        let class_ok = |b: u8| (b'3'..=b'5').contains(&b);
        match s.as_bytes() {
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
    /// Parses entries such as `"503"` and `"5xx"`; the error names the bad entry.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, String> {
        items
            .iter()
            .map(|s| s.as_ref().parse())
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
        StatusCodeSet::parse(&Vec::<String>::deserialize(deserializer)?)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_code_entries_parse_codes_and_classes() {
        assert_eq!("503".parse(), Ok(StatusCodeMatch::Exact(503)));
        assert_eq!("4xx".parse(), Ok(StatusCodeMatch::Class(4)));
        for bad in ["200", "2xx", "5x", "abc", "6xx", "5000"] {
            assert!(bad.parse::<StatusCodeMatch>().is_err(), "{bad}");
        }
    }

    #[test]
    fn status_code_sets_round_trip_as_strings() {
        let set: StatusCodeSet = serde_json::from_str(r#"["429","5xx"]"#).unwrap();
        assert!(set.contains(429) && set.contains(503) && !set.contains(404));
        assert_eq!(serde_json::to_string(&set).unwrap(), r#"["429","5xx"]"#);
        assert!(serde_json::from_str::<StatusCodeSet>(r#"["2xx"]"#).is_err());
    }

    #[test]
    fn non_retryable_codes_win_over_retryable_classes() {
        let policy = RetryPolicy {
            max_attempts: 3,
            backoff: BackoffKind::Exponential,
            jitter: JitterKind::Full,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            retry_after_max: Duration::ZERO,
            retryable_status_codes: StatusCodeSet::parse(&["5xx", "429"]).unwrap(),
            non_retryable_status_codes: StatusCodeSet::parse(&["501"]).unwrap(),
        };
        assert!(policy.is_retryable_status(503));
        assert!(policy.is_retryable_status(429));
        assert!(!policy.is_retryable_status(501));
        assert!(!policy.is_retryable_status(404));
    }
}
