//! How fast a replay publishes: no faster than the target's rate limit (its burst
//! first, then the sustained rate), so that a replay of hours of events neither floods
//! the target's backlog nor gets ahead of what the target is sent. The dispatchers
//! hold the target to its limit anyway; pacing here keeps the replay's progress close
//! to what was delivered.

use std::num::NonZeroU32;
use std::time::Duration;

use fanout_config::policy::RateLimit;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Most events read from the stream at once.
const MAX_BATCH: usize = 256;

pub struct Pacer {
    limiter: Option<DefaultDirectRateLimiter>,
    /// Events to read from the stream at once: about two seconds' worth at this
    /// pace, so that the reading consumer is never idle for long.
    pub batch: usize,
}

impl Pacer {
    pub fn new(limit: Option<&RateLimit>) -> Pacer {
        let quota = limit.and_then(|l| {
            let period = Duration::try_from_secs_f64(1.0 / l.requests_per_second).ok()?;
            let burst = NonZeroU32::new(l.burst.max(1))?;
            Some((Quota::with_period(period)?.allow_burst(burst), l))
        });
        match quota {
            Some((quota, l)) => Pacer {
                limiter: Some(RateLimiter::direct(quota)),
                batch: ((l.requests_per_second * 2.0).ceil() as usize).clamp(1, MAX_BATCH),
            },
            None => Pacer {
                limiter: None,
                batch: MAX_BATCH,
            },
        }
    }

    /// Takes the next event's turn if it may be published now.
    pub fn now(&self) -> bool {
        self.limiter.as_ref().is_none_or(|l| l.check().is_ok())
    }

    /// Waits until the next event may be published.
    pub async fn ready(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.until_ready().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_follow_the_rate() {
        let limit = |rps| RateLimit {
            requests_per_second: rps,
            burst: 1,
        };
        assert_eq!(Pacer::new(None).batch, MAX_BATCH);
        assert_eq!(Pacer::new(Some(&limit(20.0))).batch, 40);
        assert_eq!(Pacer::new(Some(&limit(0.001))).batch, 1);
        assert_eq!(Pacer::new(Some(&limit(1_000_000.0))).batch, MAX_BATCH);
    }

    #[tokio::test]
    async fn after_the_burst_events_follow_the_rate() {
        let pacer = Pacer::new(Some(&RateLimit {
            requests_per_second: 50.0,
            burst: 5,
        }));
        let started = std::time::Instant::now();
        for _ in 0..15 {
            pacer.ready().await;
        }
        // Five at once, ten more at 20 ms each.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(180), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
}
