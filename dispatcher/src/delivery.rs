//! The fate of one event at one target after an attempt: acknowledge it, try again
//! later (through JetStream, so the wait survives a crash), or dead-letter it.

use std::time::Duration;

use fanout_config::policy::RetryPolicy;
use rand::Rng;

use crate::backoff;
use crate::classify::{Failure, Verdict};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Delivered: acknowledge.
    Ack,
    /// Negative-acknowledge with this delay; JetStream redelivers after it.
    Retry { delay: Duration, failure: Failure },
    /// Give up: publish to the dead-letter stream, then terminate the message.
    DeadLetter {
        reason: DeadLetterReason,
        failure: Failure,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// The target refused the event in a way retrying cannot fix (e.g. 400).
    Permanent,
    /// Every allowed attempt failed.
    Exhausted,
    /// Not delivered before the stream would remove it (its maxAge): kept as a dead
    /// letter instead of disappearing (see `fanout_config::expiry`).
    Expired,
    /// The target's CEL filter could not be evaluated on it (see `expressions`).
    Filter,
    /// The target's CEL transform could not be evaluated on it.
    Transform,
    /// The ordered target's `ordering.key.cel` could not be evaluated on it.
    OrderingKey,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Permanent => "permanent",
            DeadLetterReason::Exhausted => "exhausted",
            DeadLetterReason::Expired => "expired",
            DeadLetterReason::Filter => "filter",
            DeadLetterReason::Transform => "transform",
            DeadLetterReason::OrderingKey => "ordering",
        }
    }
}

/// Decides after attempt number `attempt` (1-based) ended with `verdict`.
pub fn decide(
    policy: &RetryPolicy,
    attempt: u32,
    verdict: Verdict,
    rng: &mut impl Rng,
) -> Decision {
    match verdict {
        Verdict::Delivered { .. } => Decision::Ack,
        Verdict::Permanent { failure } => Decision::DeadLetter {
            reason: DeadLetterReason::Permanent,
            failure,
        },
        Verdict::Retryable { failure, .. } if attempt >= policy.max_attempts => {
            Decision::DeadLetter {
                reason: DeadLetterReason::Exhausted,
                failure,
            }
        }
        Verdict::Retryable {
            failure,
            retry_after,
        } => Decision::Retry {
            delay: backoff::next_delay(policy, attempt, retry_after, rng),
            failure,
        },
    }
}

#[cfg(test)]
mod tests {
    use fanout_config::Duration as ConfigDuration;
    use fanout_config::policy::{BackoffKind, JitterKind, StatusCodeSet};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            backoff: BackoffKind::Exponential,
            jitter: JitterKind::None,
            initial_delay: ConfigDuration::from_millis(100),
            max_delay: ConfigDuration::from_secs(10),
            retry_after_max: ConfigDuration::from_secs(60),
            retryable_status_codes: StatusCodeSet::parse(&["5xx"]).unwrap(),
            non_retryable_status_codes: StatusCodeSet::default(),
        }
    }

    fn unavailable() -> Failure {
        Failure::Status {
            code: 503,
            body: String::new(),
        }
    }

    #[test]
    fn a_delivered_event_is_acknowledged() {
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(
            decide(&policy(3), 1, Verdict::Delivered { status: 200 }, &mut rng),
            Decision::Ack
        );
    }

    #[test]
    fn a_retryable_failure_is_retried_with_the_backoff_until_attempts_run_out() {
        let mut rng = StdRng::seed_from_u64(0);
        let retry = |attempt| {
            decide(
                &policy(3),
                attempt,
                Verdict::Retryable {
                    failure: unavailable(),
                    retry_after: None,
                },
                &mut StdRng::seed_from_u64(0),
            )
        };
        assert_eq!(
            retry(1),
            Decision::Retry {
                delay: Duration::from_millis(100),
                failure: unavailable()
            }
        );
        assert_eq!(
            retry(2),
            Decision::Retry {
                delay: Duration::from_millis(200),
                failure: unavailable()
            }
        );
        assert_eq!(
            retry(3),
            Decision::DeadLetter {
                reason: DeadLetterReason::Exhausted,
                failure: unavailable()
            }
        );
        // Redeliveries past the limit (e.g. after a crash) are dead-lettered too.
        assert!(matches!(
            decide(
                &policy(3),
                7,
                Verdict::Retryable {
                    failure: Failure::Timeout,
                    retry_after: None
                },
                &mut rng
            ),
            Decision::DeadLetter {
                reason: DeadLetterReason::Exhausted,
                ..
            }
        ));
    }

    #[test]
    fn retry_after_sets_the_delay() {
        let mut rng = StdRng::seed_from_u64(0);
        let v = Verdict::Retryable {
            failure: unavailable(),
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(
            decide(&policy(3), 1, v, &mut rng),
            Decision::Retry {
                delay: Duration::from_secs(7),
                failure: unavailable()
            }
        );
    }

    #[test]
    fn a_permanent_failure_is_dead_lettered_at_once() {
        let mut rng = StdRng::seed_from_u64(0);
        let failure = Failure::Status {
            code: 400,
            body: "bad".into(),
        };
        assert_eq!(
            decide(
                &policy(10),
                1,
                Verdict::Permanent {
                    failure: failure.clone()
                },
                &mut rng
            ),
            Decision::DeadLetter {
                reason: DeadLetterReason::Permanent,
                failure
            }
        );
    }
}
