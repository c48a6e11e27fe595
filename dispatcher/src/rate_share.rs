//! A target's rate limit holds for the route as a whole, however many dispatcher
//! replicas run: each takes an equal share of the rate and burst, recomputed when
//! replicas come and go. The count comes from the health snapshots every replica
//! writes (see `health.rs`); until the first count, a replica assumes the most the
//! route may run (`RouteConfig::replicas`), so it never starts above its share.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fanout_config::policy::RateLimit;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Notify;

/// One replica's token bucket for one target, resized to its share.
pub struct SharedLimit {
    limit: RateLimit,
    current: Mutex<Share>,
    /// Wakes requests waiting on a bucket that was just replaced: they wait on the
    /// new one, or the old and the new would both let requests go for a while.
    resized: Notify,
}

struct Share {
    replicas: u32,
    bucket: Arc<DefaultDirectRateLimiter>,
}

impl SharedLimit {
    /// `None` when the rate is not a positive number of usable size for `replicas`
    /// (only a hand-written configuration can have that; rendering refuses it).
    pub fn new(limit: RateLimit, replicas: u32) -> Option<SharedLimit> {
        let replicas = replicas.max(1);
        let bucket = Arc::new(bucket(&limit, replicas)?);
        Some(SharedLimit {
            limit,
            current: Mutex::new(Share { replicas, bucket }),
            resized: Notify::new(),
        })
    }

    /// Lets one more request go if this replica's share allows it now. The common
    /// case: no future, no timer (see [`crate::worker`]'s admission).
    pub fn try_now(&self) -> bool {
        self.lock().bucket.check().is_ok()
    }

    /// Waits until this replica's share lets one more request go.
    pub async fn until_ready(&self) {
        loop {
            let (bucket, resized) = {
                let share = self.lock();
                // Created under the lock: a resize after it wakes it, polled or not.
                (share.bucket.clone(), self.resized.notified())
            };
            tokio::select! {
                _ = bucket.until_ready() => return,
                _ = resized => {}
            }
        }
    }

    /// How many replicas the rate is shared by now.
    pub fn replicas(&self) -> u32 {
        self.lock().replicas
    }

    /// `replicas` run now: resizes this replica's share if that changed. A new
    /// bucket starts full, with its share of the burst.
    pub fn set_replicas(&self, replicas: u32) {
        let replicas = replicas.max(1);
        let mut share = self.lock();
        if share.replicas == replicas {
            return;
        }
        // A share too small for the limiter keeps the previous bucket.
        if let Some(bucket) = bucket(&self.limit, replicas) {
            *share = Share {
                replicas,
                bucket: Arc::new(bucket),
            };
            self.resized.notify_waiters();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Share> {
        // Replaced whole under the lock: a panic elsewhere cannot leave it torn.
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A token bucket with an equal share of `limit` for each of `replicas`.
pub fn bucket(limit: &RateLimit, replicas: u32) -> Option<DefaultDirectRateLimiter> {
    let share = limit.requests_per_second / f64::from(replicas);
    let period = Duration::try_from_secs_f64(1.0 / share).ok()?;
    let burst = NonZeroU32::new((limit.burst / replicas).max(1))?;
    // The limiter counts the period times the burst in u64 nanoseconds and panics
    // beyond (584 years). The CRD's lowest rate stays far below that.
    u64::try_from(period.as_nanos() * u128::from(burst.get())).ok()?;
    Some(RateLimiter::direct(
        Quota::with_period(period)?.allow_burst(burst),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests_per_second: f64) -> RateLimit {
        RateLimit {
            requests_per_second,
            burst: 10,
        }
    }

    #[test]
    fn unusable_rates_are_refused_instead_of_panicking() {
        assert!(bucket(&limit(50.0), 2).is_some());
        assert!(bucket(&limit(1e-300), 1).is_none(), "period too long");
        assert!(
            bucket(&limit(1e-11), 1).is_none(),
            "period too long for the limiter"
        );
        let slow_and_bursty = RateLimit {
            requests_per_second: 1e-7,
            burst: 1_000_000,
        };
        assert!(bucket(&slow_and_bursty, 1).is_none());
        assert!(bucket(&limit(1e300), 1).is_none(), "period of zero");
        assert!(bucket(&limit(f64::NAN), 1).is_none());
    }

    #[test]
    fn the_slowest_rate_the_crd_allows_works_for_the_most_replicas() {
        // 0.001/s shared by 64 replicas: one request every 64000s for each.
        assert!(bucket(&limit(0.001), 64).is_some());
        let most_burst = RateLimit {
            requests_per_second: 0.001,
            burst: 1_000_000,
        };
        assert!(bucket(&most_burst, 1).is_some());
        assert!(bucket(&most_burst, 64).is_some());
    }

    #[test]
    fn each_replica_takes_an_equal_share_that_follows_the_count() {
        let shared = SharedLimit::new(limit(90.0), 3).unwrap();
        assert_eq!(shared.replicas(), 3);
        // A full bucket holds the share of the burst: 10 / 3.
        let taken = |s: &SharedLimit| {
            let bucket = s.lock().bucket.clone();
            (0..20).filter(|_| bucket.check().is_ok()).count()
        };
        assert_eq!(taken(&shared), 3);
        shared.set_replicas(1);
        assert_eq!(shared.replicas(), 1);
        assert_eq!(taken(&shared), 10, "alone, it takes the whole burst");
        shared.set_replicas(0);
        assert_eq!(shared.replicas(), 1, "at least itself");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waiting_when_the_share_changes_waits_on_the_new_one() {
        // Alone at 1/s with a burst of 1: the first token goes at once, the next in 1s.
        let shared = Arc::new(
            SharedLimit::new(
                RateLimit {
                    requests_per_second: 1.0,
                    burst: 1,
                },
                1,
            )
            .unwrap(),
        );
        shared.until_ready().await;
        let waiting = tokio::spawn({
            let shared = shared.clone();
            async move { shared.until_ready().await }
        });
        tokio::task::yield_now().await;
        // A second replica appears: the waiter now waits on a share of 0.5/s, whose
        // new bucket starts with its token.
        shared.set_replicas(2);
        tokio::time::timeout(std::time::Duration::from_millis(10), waiting)
            .await
            .expect("woken to the new bucket")
            .unwrap();
    }
}
