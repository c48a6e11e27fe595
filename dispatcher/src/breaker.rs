//! The circuit breaker of one target: whether it is healthy enough to be sent to.
//!
//! Closed: every request goes; outcomes are counted over a sliding window. When at
//! least `minimumRequests` attempts in the window failed at `failureRatio` or more,
//! the circuit opens. Open: nothing goes (the dispatcher stops fetching, so the
//! backlog waits in the stream without using up attempts) until the open duration
//! has passed. Half-open: `halfOpenProbes` requests go; if all succeed the circuit
//! closes, any failure opens it again for twice as long, up to `maxOpenDuration`.
//!
//! Pure state machine: time is passed in, so tests need no clock.

use std::time::{Duration, Instant};

use fanout_config::health::Circuit;
use fanout_config::policy::BreakerPolicy;

/// Buckets the window is divided into; outcomes older than the window fall off one
/// bucket at a time.
const BUCKETS: u32 = 10;

#[derive(Debug)]
pub struct Breaker {
    policy: BreakerPolicy,
    state: State,
    window: Window,
    /// Openings since the circuit was last closed, for the growing open duration.
    consecutive_opens: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { admitted: u32, succeeded: u32 },
}

/// Whether a request may go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Ask again at this time (or when woken by a state change).
    Denied {
        until: Instant,
    },
}

impl Breaker {
    pub fn new(policy: BreakerPolicy, now: Instant) -> Self {
        let bucket = policy.window.as_std() / BUCKETS;
        Breaker {
            policy,
            state: State::Closed,
            window: Window::new(bucket.max(Duration::from_millis(1)), now),
            consecutive_opens: 0,
        }
    }

    pub fn state(&self, now: Instant) -> Circuit {
        match self.state {
            State::Closed => Circuit::Closed,
            State::Open { until } if now >= until => Circuit::HalfOpen,
            State::Open { .. } => Circuit::Open,
            State::HalfOpen { .. } => Circuit::HalfOpen,
        }
    }

    /// When an open circuit starts probing; `None` unless open.
    pub fn open_until(&self) -> Option<Instant> {
        match self.state {
            State::Open { until } => Some(until),
            _ => None,
        }
    }

    /// Asks to send one request. An allowed request must be followed by [`record`](Self::record).
    pub fn admit(&mut self, now: Instant) -> Admission {
        if let State::Open { until } = self.state {
            if now < until {
                return Admission::Denied { until };
            }
            self.state = State::HalfOpen {
                admitted: 0,
                succeeded: 0,
            };
        }
        match &mut self.state {
            State::Closed => Admission::Allowed,
            State::HalfOpen { admitted, .. } if *admitted < self.policy.half_open_probes => {
                *admitted += 1;
                Admission::Allowed
            }
            // All probes are out; their results decide. Check back shortly.
            State::HalfOpen { .. } => Admission::Denied {
                until: now + Duration::from_millis(100),
            },
            State::Open { .. } => unreachable!("handled above"),
        }
    }

    /// Records the outcome of an admitted request; returns the new state if it changed.
    pub fn record(&mut self, success: bool, now: Instant) -> Option<Circuit> {
        match &mut self.state {
            State::Closed => {
                self.window.record(success, now);
                let (total, failed) = self.window.totals(now);
                let tripped = total >= u64::from(self.policy.minimum_requests)
                    && failed as f64 >= self.policy.failure_ratio * total as f64;
                tripped.then(|| self.open(now))
            }
            State::HalfOpen { succeeded, .. } => {
                if !success {
                    return Some(self.open(now));
                }
                *succeeded += 1;
                if *succeeded >= self.policy.half_open_probes {
                    self.state = State::Closed;
                    self.consecutive_opens = 0;
                    self.window.clear(now);
                    return Some(Circuit::Closed);
                }
                None
            }
            // A request admitted before the circuit opened finished late; the window
            // is discarded on opening anyway.
            State::Open { .. } => None,
        }
    }

    fn open(&mut self, now: Instant) -> Circuit {
        self.consecutive_opens += 1;
        let doublings = (self.consecutive_opens - 1).min(16);
        let duration = self
            .policy
            .open_duration
            .as_std()
            .saturating_mul(1 << doublings)
            .min(self.policy.max_open_duration.as_std());
        self.state = State::Open {
            until: now + duration,
        };
        self.window.clear(now);
        Circuit::Open
    }
}

/// Success/failure counts over a sliding window, in fixed buckets.
#[derive(Debug)]
struct Window {
    bucket: Duration,
    /// (successes, failures) per bucket, oldest first; `start` is the oldest bucket's start.
    counts: std::collections::VecDeque<(u64, u64)>,
    start: Instant,
}

impl Window {
    fn new(bucket: Duration, now: Instant) -> Self {
        Window {
            bucket,
            counts: std::collections::VecDeque::from([(0, 0)]),
            start: now,
        }
    }

    fn advance(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.start);
        let needed = (elapsed.as_nanos() / self.bucket.as_nanos()) as u64 + 1;
        if needed > u64::from(BUCKETS) * 2 {
            // Idle for longer than the window: nothing in it is current.
            self.clear(now);
            return;
        }
        while (self.counts.len() as u64) < needed {
            self.counts.push_back((0, 0));
        }
        while self.counts.len() as u32 > BUCKETS {
            self.counts.pop_front();
            self.start += self.bucket;
        }
    }

    fn record(&mut self, success: bool, now: Instant) {
        self.advance(now);
        let last = self.counts.back_mut().expect("window has a bucket");
        if success {
            last.0 += 1;
        } else {
            last.1 += 1;
        }
    }

    /// (attempts, failures) within the window.
    fn totals(&mut self, now: Instant) -> (u64, u64) {
        self.advance(now);
        self.counts
            .iter()
            .fold((0, 0), |(t, f), (s, x)| (t + s + x, f + x))
    }

    fn clear(&mut self, now: Instant) {
        self.counts.clear();
        self.counts.push_back((0, 0));
        self.start = now;
    }
}

#[cfg(test)]
mod tests {
    use fanout_config::Duration as ConfigDuration;

    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            failure_ratio: 0.5,
            minimum_requests: 4,
            window: ConfigDuration::from_secs(10),
            open_duration: ConfigDuration::from_secs(30),
            max_open_duration: ConfigDuration::from_secs(100),
            half_open_probes: 2,
            count_pushback: false,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Sends one request through the breaker; returns whether it was allowed.
    fn attempt(b: &mut Breaker, success: bool, now: Instant) -> bool {
        match b.admit(now) {
            Admission::Allowed => {
                b.record(success, now);
                true
            }
            Admission::Denied { .. } => false,
        }
    }

    #[test]
    fn stays_closed_below_the_minimum_request_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy(), t0);
        for _ in 0..3 {
            assert!(attempt(&mut b, false, t0));
        }
        assert_eq!(b.state(t0), Circuit::Closed);
    }

    #[test]
    fn opens_at_the_failure_ratio_and_denies_until_the_open_duration_passed() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy(), t0);
        attempt(&mut b, true, t0);
        attempt(&mut b, true, t0);
        attempt(&mut b, false, t0);
        assert_eq!(b.state(t0), Circuit::Closed);
        attempt(&mut b, false, t0); // 2 of 4 failed = 0.5
        assert_eq!(b.state(t0), Circuit::Open);
        assert_eq!(
            b.admit(t0 + secs(29)),
            Admission::Denied {
                until: t0 + secs(30)
            }
        );
        assert_eq!(b.state(t0 + secs(30)), Circuit::HalfOpen);
    }

    #[test]
    fn old_failures_slide_out_of_the_window() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy(), t0);
        for _ in 0..3 {
            attempt(&mut b, false, t0);
        }
        // 11s later the three failures are outside the 10s window.
        let t1 = t0 + secs(11);
        attempt(&mut b, false, t1);
        attempt(&mut b, true, t1);
        attempt(&mut b, true, t1);
        attempt(&mut b, true, t1);
        assert_eq!(b.state(t1), Circuit::Closed);
    }

    #[test]
    fn half_open_lets_only_the_probes_through_and_closes_when_they_succeed() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy(), t0);
        for _ in 0..4 {
            attempt(&mut b, false, t0);
        }
        let t1 = t0 + secs(30);
        assert_eq!(b.admit(t1), Admission::Allowed);
        assert_eq!(b.admit(t1), Admission::Allowed);
        assert!(
            matches!(b.admit(t1), Admission::Denied { .. }),
            "only 2 probes"
        );
        assert_eq!(b.record(true, t1), None);
        assert_eq!(b.record(true, t1), Some(Circuit::Closed));
        assert_eq!(b.admit(t1), Admission::Allowed);
    }

    #[test]
    fn a_failed_probe_reopens_for_twice_as_long_capped() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy(), t0);
        for _ in 0..4 {
            attempt(&mut b, false, t0);
        }
        // 1st open: 30s. Failed probe -> 60s. Again -> 100s (cap), again -> 100s.
        let mut now = t0 + secs(30);
        for expected in [60, 100, 100] {
            assert_eq!(b.admit(now), Admission::Allowed);
            assert_eq!(b.record(false, now), Some(Circuit::Open));
            assert_eq!(
                b.admit(now + secs(expected - 1)),
                Admission::Denied {
                    until: now + secs(expected)
                }
            );
            now += secs(expected);
        }
        // Recovery resets the growth.
        assert_eq!(b.admit(now), Admission::Allowed);
        b.record(true, now);
        assert_eq!(b.admit(now), Admission::Allowed);
        assert_eq!(b.record(true, now), Some(Circuit::Closed));
        for _ in 0..4 {
            attempt(&mut b, false, now);
        }
        assert_eq!(
            b.admit(now + secs(29)),
            Admission::Denied {
                until: now + secs(30)
            }
        );
    }

    #[test]
    fn late_results_while_open_are_ignored() {
        let t0 = Instant::now();
        let mut b = Breaker::new(policy(), t0);
        for _ in 0..4 {
            attempt(&mut b, false, t0);
        }
        assert_eq!(b.record(true, t0), None);
        assert_eq!(b.state(t0), Circuit::Open);
    }
}
