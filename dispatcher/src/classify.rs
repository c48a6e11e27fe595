//! What a response (or the lack of one) means: delivered, worth another attempt, or
//! a permanent failure that goes straight to the dead-letter stream.

use std::fmt;
use std::time::Duration;

use fanout_config::policy::RetryPolicy;

/// Why an attempt did not deliver the event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The target answered with a non-2xx status; `body` is the start of its response.
    Status { code: u16, body: String },
    /// No complete response within the target's timeout.
    Timeout,
    /// The connection could not be made or broke.
    Connection(String),
    /// The egress policy refused the target's address: nothing was sent.
    Refused(String),
    /// No access token for the request (OAuth 2.0): the token endpoint failed or
    /// refused, as said here.
    Token(String),
}

impl Failure {
    /// The HTTP status, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Failure::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// A fixed label for metrics (never formatted text).
    pub fn category(&self) -> &'static str {
        match self {
            Failure::Status { code, .. } if *code >= 500 => "status_5xx",
            Failure::Status { code, .. } if *code >= 400 => "status_4xx",
            Failure::Status { .. } => "status_other",
            Failure::Timeout => "timeout",
            Failure::Connection(_) => "connection",
            Failure::Refused(_) => "egress",
            Failure::Token(_) => "token",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Status { code, body } if body.is_empty() => write!(f, "HTTP {code}"),
            Failure::Status { code, body } => write!(f, "HTTP {code}: {body}"),
            Failure::Timeout => f.write_str("timed out"),
            Failure::Connection(detail) => write!(f, "connection failed: {detail}"),
            Failure::Refused(detail) => f.write_str(detail),
            Failure::Token(detail) => write!(f, "no access token: {detail}"),
        }
    }
}

/// The verdict on one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Delivered {
        status: u16,
    },
    Retryable {
        failure: Failure,
        retry_after: Option<Duration>,
    },
    Permanent {
        failure: Failure,
    },
}

impl Verdict {
    /// Whether the circuit breaker should count this as the target failing. A
    /// permanent 4xx says the event is bad, not that the target is unhealthy; and
    /// unless `count_pushback`, neither does [pushback](Self::is_pushback).
    pub fn counts_against_target(&self, count_pushback: bool) -> bool {
        matches!(self, Verdict::Retryable { .. }) && (count_pushback || !self.is_pushback())
    }

    /// The target said it is busy, not broken: a 429, or a 503 with Retry-After.
    pub fn is_pushback(&self) -> bool {
        match self {
            Verdict::Retryable {
                failure: Failure::Status { code: 429, .. },
                ..
            } => true,
            Verdict::Retryable {
                failure: Failure::Status { code: 503, .. },
                retry_after,
            } => retry_after.is_some(),
            _ => false,
        }
    }
}

/// Classifies a response status. `retry_after` is only kept for retryable answers.
pub fn classify_status(
    policy: &RetryPolicy,
    code: u16,
    body: String,
    retry_after: Option<Duration>,
) -> Verdict {
    if (200..300).contains(&code) {
        return Verdict::Delivered { status: code };
    }
    let failure = Failure::Status { code, body };
    if policy.is_retryable_status(code) {
        Verdict::Retryable {
            failure,
            retry_after,
        }
    } else {
        Verdict::Permanent { failure }
    }
}

/// Timeouts, connection errors and a token endpoint that failed are always worth
/// another attempt.
pub fn classify_transport(failure: Failure) -> Verdict {
    Verdict::Retryable {
        failure,
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use fanout_config::Duration as ConfigDuration;
    use fanout_config::policy::{BackoffKind, JitterKind, StatusCodeSet};

    use super::*;

    fn default_policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            backoff: BackoffKind::Exponential,
            jitter: JitterKind::Full,
            initial_delay: ConfigDuration::from_millis(500),
            max_delay: ConfigDuration::from_secs(300),
            retry_after_max: ConfigDuration::from_secs(600),
            retryable_status_codes: StatusCodeSet::parse(&["408", "429", "5xx"]).unwrap(),
            non_retryable_status_codes: StatusCodeSet::parse(&["501"]).unwrap(),
        }
    }

    fn verdict(code: u16) -> Verdict {
        classify_status(&default_policy(), code, String::new(), None)
    }

    #[test]
    fn every_2xx_is_delivered() {
        for code in [200, 201, 202, 204, 299] {
            assert_eq!(verdict(code), Verdict::Delivered { status: code });
        }
    }

    #[test]
    fn throttling_timeouts_and_server_errors_are_retried() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(matches!(verdict(code), Verdict::Retryable { .. }), "{code}");
        }
        assert!(matches!(
            classify_transport(Failure::Timeout),
            Verdict::Retryable { .. }
        ));
        assert!(matches!(
            classify_transport(Failure::Connection("reset".into())),
            Verdict::Retryable { .. }
        ));
    }

    #[test]
    fn client_errors_redirects_and_501_are_permanent() {
        for code in [301, 302, 400, 401, 403, 404, 409, 410, 422, 501] {
            assert!(matches!(verdict(code), Verdict::Permanent { .. }), "{code}");
        }
    }

    #[test]
    fn retry_after_is_kept_with_retryable_answers() {
        let v = classify_status(
            &default_policy(),
            429,
            String::new(),
            Some(Duration::from_secs(3)),
        );
        assert_eq!(
            v,
            Verdict::Retryable {
                failure: Failure::Status {
                    code: 429,
                    body: String::new()
                },
                retry_after: Some(Duration::from_secs(3))
            }
        );
    }

    #[test]
    fn only_retryable_failures_count_against_the_target() {
        assert!(verdict(503).counts_against_target(false));
        assert!(!verdict(400).counts_against_target(false));
        assert!(!verdict(200).counts_against_target(false));
    }

    #[test]
    fn pushback_counts_against_the_target_only_when_asked_to() {
        let with_retry_after = |code| {
            classify_status(
                &default_policy(),
                code,
                String::new(),
                Some(Duration::from_secs(1)),
            )
        };
        for busy in [verdict(429), with_retry_after(429), with_retry_after(503)] {
            assert!(busy.is_pushback(), "{busy:?}");
            assert!(!busy.counts_against_target(false), "{busy:?}");
            assert!(busy.counts_against_target(true), "{busy:?}");
        }
        // A 503 without Retry-After is what a broken backend answers, too.
        assert!(!verdict(503).is_pushback());
        assert!(verdict(503).counts_against_target(false));
    }

    #[test]
    fn failures_describe_themselves_for_status_and_dead_letters() {
        let f = Failure::Status {
            code: 400,
            body: "missing sku".into(),
        };
        assert_eq!(f.to_string(), "HTTP 400: missing sku");
        assert_eq!(f.category(), "status_4xx");
        assert_eq!(Failure::Timeout.to_string(), "timed out");
        assert_eq!(Failure::Timeout.status(), None);
    }
}
