//! How long to wait before the next attempt: the backoff schedule, its jitter, and
//! the target's `Retry-After`, clamped to the configured bounds.
//!
//! The wait is carried out by JetStream (a negative ack with this delay), so it
//! survives a dispatcher crash.

use std::time::{Duration, SystemTime};

use fanout_config::policy::{BackoffKind, JitterKind, RetryPolicy};
use rand::Rng;

/// The delay before attempt `attempts_made + 1`, given what the last response asked for.
pub fn next_delay(
    policy: &RetryPolicy,
    attempts_made: u32,
    retry_after: Option<Duration>,
    rng: &mut impl Rng,
) -> Duration {
    let base = schedule(policy, attempts_made);
    let jittered = match policy.jitter {
        JitterKind::Full => random_up_to(base, rng),
        JitterKind::Equal => base / 2 + random_up_to(base - base / 2, rng),
        JitterKind::None => base,
    };
    match retry_after {
        // The target knows best when it can take the event again, within the bound we
        // accept; our own backoff still applies when it is longer.
        Some(asked) if !policy.retry_after_max.as_std().is_zero() => {
            jittered.max(asked.min(policy.retry_after_max.as_std()))
        }
        _ => jittered,
    }
}

/// The un-jittered delay after `attempts_made` attempts, capped at `maxDelay`.
pub fn schedule(policy: &RetryPolicy, attempts_made: u32) -> Duration {
    let initial = policy.initial_delay.as_std();
    let cap = policy.max_delay.as_std();
    let n = attempts_made.max(1);
    let uncapped = match policy.backoff {
        // 2^(n-1) overflows quickly; past 2^31 the cap has long been reached.
        BackoffKind::Exponential => initial.checked_mul(1u32 << (n - 1).min(31)),
        BackoffKind::Linear => initial.checked_mul(n),
        BackoffKind::Constant => Some(initial),
    };
    uncapped.map_or(cap, |d| d.min(cap))
}

fn random_up_to(max: Duration, rng: &mut impl Rng) -> Duration {
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.random_range(0..=nanos))
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
/// A date in the past means "now"; anything unparseable is ignored.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use fanout_config::Duration as ConfigDuration;
    use fanout_config::policy::StatusCodeSet;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn policy(backoff: BackoffKind, jitter: JitterKind) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            backoff,
            jitter,
            initial_delay: ConfigDuration::from_millis(500),
            max_delay: ConfigDuration::from_secs(60),
            retry_after_max: ConfigDuration::from_secs(600),
            retryable_status_codes: StatusCodeSet::parse(&["5xx"]).unwrap(),
            non_retryable_status_codes: StatusCodeSet::default(),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn exponential_doubles_from_the_initial_delay_and_stops_at_the_cap() {
        let p = policy(BackoffKind::Exponential, JitterKind::None);
        let delays: Vec<_> = (1..=9).map(|n| schedule(&p, n)).collect();
        assert_eq!(
            delays,
            [
                ms(500),
                ms(1000),
                ms(2000),
                ms(4000),
                ms(8000),
                ms(16000),
                ms(32000),
                ms(60000),
                ms(60000)
            ]
        );
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let p = policy(BackoffKind::Exponential, JitterKind::None);
        assert_eq!(schedule(&p, u32::MAX), ms(60000));
        let p = policy(BackoffKind::Linear, JitterKind::None);
        assert_eq!(schedule(&p, u32::MAX), ms(60000));
    }

    #[test]
    fn linear_and_constant_schedules() {
        let p = policy(BackoffKind::Linear, JitterKind::None);
        assert_eq!(
            [1, 2, 3].map(|n| schedule(&p, n)),
            [ms(500), ms(1000), ms(1500)]
        );
        let p = policy(BackoffKind::Constant, JitterKind::None);
        assert_eq!(
            [1, 5, 50].map(|n| schedule(&p, n)),
            [ms(500), ms(500), ms(500)]
        );
    }

    #[test]
    fn full_jitter_stays_within_zero_and_the_schedule_and_spreads_out() {
        let p = policy(BackoffKind::Exponential, JitterKind::Full);
        let mut rng = StdRng::seed_from_u64(7);
        let samples: Vec<_> = (0..1000)
            .map(|_| next_delay(&p, 4, None, &mut rng))
            .collect();
        assert!(samples.iter().all(|d| *d <= ms(4000)));
        let below_half = samples.iter().filter(|d| **d < ms(2000)).count();
        // Uniform on [0, 4s]: about half below 2s.
        assert!((400..600).contains(&below_half), "{below_half}");
    }

    #[test]
    fn equal_jitter_keeps_at_least_half_the_schedule() {
        let p = policy(BackoffKind::Exponential, JitterKind::Equal);
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..1000 {
            let d = next_delay(&p, 3, None, &mut rng);
            assert!(d >= ms(1000) && d <= ms(2000), "{d:?}");
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_its_cap() {
        let p = policy(BackoffKind::Exponential, JitterKind::None);
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            next_delay(&p, 1, Some(Duration::from_secs(30)), &mut rng),
            Duration::from_secs(30)
        );
        assert_eq!(
            next_delay(&p, 1, Some(Duration::from_secs(3600)), &mut rng),
            Duration::from_secs(600)
        );
        // A Retry-After shorter than our own backoff does not shorten it.
        assert_eq!(
            next_delay(&p, 5, Some(Duration::from_secs(1)), &mut rng),
            ms(8000)
        );
    }

    #[test]
    fn retry_after_is_ignored_when_its_cap_is_zero() {
        let mut p = policy(BackoffKind::Exponential, JitterKind::None);
        p.retry_after_max = ConfigDuration::ZERO;
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            next_delay(&p, 1, Some(Duration::from_secs(30)), &mut rng),
            ms(500)
        );
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
