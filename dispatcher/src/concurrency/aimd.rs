//! The adaptive concurrency controller: additive increase, multiplicative decrease
//! (the scheme TCP's congestion control made standard), with a memory of where the
//! target last pushed back so that it is probed rarely instead of every few rounds.
//!
//! - **Signals.** Pushback (a 429, a 503, a timeout) and answers that are much slower
//!   than usual mean "fewer". Fast answers while the limit was in use mean "more".
//!   Errors that say nothing about load (a refused connection, a 500) say nothing.
//! - **Decrease.** The limit becomes [`BACKOFF`] times the concurrency at which the
//!   target pushed back, at most once per round trip: pushback for a request sent
//!   before the last decrease was caused by the old limit and is not counted again.
//! - **Increase.** Slow start first (+1 per answer: the limit doubles every round),
//!   until the first decrease; then +1 per round (+1/limit per answer). Only while
//!   the limit is in use: a target sent few events has not shown it can take more.
//! - **Ceiling.** The limit at which the target pushed back is remembered. Growth
//!   stops just below it until a probe is due: after [`FIRST_PROBE`], doubling each
//!   time a probe fails at the same level, up to [`MAX_PROBE`]. A probe that lasts a
//!   round without pushback lifts the ceiling. So a target that answers 429 above 8
//!   requests is held at 8 and sees a 9th request now and then, not every round.
//! - **Latency.** Each round's mean answer time is compared with the target's usual
//!   one (a baseline that follows faster rounds quickly and slower ones slowly, so a
//!   target that became slower for good is accepted after a few dozen rounds).
//!   A round slower than `tolerance` times the baseline plus [`LATENCY_SLACK`] is a
//!   decrease, like pushback.
//!
//! Pure: time is passed in, so tests need no clock.

use std::time::{Duration, Instant};

/// The limit is multiplied by this on a decrease.
pub const BACKOFF: f64 = 0.75;
/// Where the limit starts (within the target's bounds), growing by slow start.
pub const INITIAL: u32 = 10;
/// Growth past a ceiling is first tried this long after the pushback.
pub const FIRST_PROBE: Duration = Duration::from_secs(1);
/// The longest wait between probes of a ceiling the target keeps pushing back at.
pub const MAX_PROBE: Duration = Duration::from_secs(60);
/// Latency differences below this are noise, whatever the ratio.
pub const LATENCY_SLACK: Duration = Duration::from_millis(10);

/// What one finished request says about the target's load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// An answer that came back after this long (2xx, or an error that is not
    /// pushback).
    Answer(Duration),
    /// 429, 503 or a timeout: the target is busy.
    Pushback,
    /// Nothing about load (the connection failed, the egress policy refused it).
    Neutral,
}

#[derive(Debug, Clone, Copy)]
struct Ceiling {
    /// The (whole) limit at which the target pushed back.
    at: u32,
    /// When growing to it may be tried again.
    probe_at: Instant,
    /// The wait before that probe; doubles while probes fail at the same level.
    wait: Duration,
}

#[derive(Debug, Default, Clone, Copy)]
struct Round {
    /// Answers that make this round: the limit when it began.
    size: u32,
    answers: u32,
    total: Duration,
    /// The most requests in flight as any of its answers' requests went.
    peak: u32,
    /// The ceiling was being probed during this whole round.
    probing: bool,
}

#[derive(Debug)]
pub struct Aimd {
    limit: f64,
    min: f64,
    max: f64,
    slow_start: bool,
    ceiling: Option<Ceiling>,
    last_decrease: Option<Instant>,
    tolerance: f64,
    baseline: Option<Duration>,
    round: Round,
}

impl Aimd {
    /// A controller between `min` and `max` requests in flight (`min <= max`).
    pub fn new(min: u32, max: u32, tolerance: f64) -> Aimd {
        let (min, max) = (min.max(1), max.max(1));
        let min = min.min(max);
        Aimd {
            limit: f64::from(INITIAL.clamp(min, max)),
            min: f64::from(min),
            max: f64::from(max),
            slow_start: true,
            ceiling: None,
            last_decrease: None,
            tolerance,
            baseline: None,
            round: Round::default(),
        }
    }

    /// Requests that may be in flight now.
    pub fn limit(&self) -> u32 {
        self.limit as u32
    }

    /// The outcome of a request sent at `sent_at` while `in_flight` requests (itself
    /// included) were in flight.
    pub fn on_result(&mut self, sent_at: Instant, in_flight: u32, signal: Signal, now: Instant) {
        match signal {
            Signal::Neutral => {}
            Signal::Pushback => {
                if self.last_decrease.is_none_or(|at| sent_at > at) {
                    self.decrease(in_flight, now);
                }
            }
            Signal::Answer(took) => {
                if self.end_of_round(took, sent_at, in_flight, now) {
                    return;
                }
                // Only a limit in use is grown: half of it at least.
                if f64::from(in_flight) * 2.0 >= self.limit {
                    self.grow(now);
                }
            }
        }
    }

    /// Adds an answer to the round; at the round's end judges its latency and the
    /// ceiling probe. True when that decreased the limit.
    fn end_of_round(
        &mut self,
        took: Duration,
        sent_at: Instant,
        in_flight: u32,
        now: Instant,
    ) -> bool {
        if self.round.answers == 0 {
            self.round.probing = self.probing();
            self.round.size = self.limit().max(1);
        }
        self.round.answers += 1;
        self.round.total += took;
        self.round.peak = self.round.peak.max(in_flight);
        if self.round.answers < self.round.size {
            return false;
        }
        let round = std::mem::take(&mut self.round);
        let mean = round.total / round.answers;
        let Some(baseline) = self.baseline else {
            self.baseline = Some(mean);
            return false;
        };
        let slow = mean.as_secs_f64()
            > baseline.as_secs_f64() * self.tolerance + LATENCY_SLACK.as_secs_f64();
        // A slower target is believed after a few dozen rounds; a faster one at once.
        self.baseline = Some(if mean < baseline {
            (baseline + mean) / 2
        } else {
            baseline + (mean - baseline) / 20
        });
        // Slow at the round's load: the last answer's request may have gone with
        // few others (at the tail of a wave of retries), and cutting to a fraction
        // of that took a limit of 8 to 1.
        if slow && self.last_decrease.is_none_or(|at| sent_at > at) {
            self.decrease(round.peak, now);
            return true;
        }
        if round.probing && self.probing() {
            // A whole round at the ceiling without pushback: it was not the limit.
            self.ceiling = None;
        }
        false
    }

    fn probing(&self) -> bool {
        self.ceiling.is_some_and(|c| self.limit as u32 >= c.at)
    }

    fn grow(&mut self, now: Instant) {
        let step = if self.slow_start {
            1.0
        } else {
            1.0 / self.limit.max(1.0)
        };
        let mut next = (self.limit + step).min(self.max);
        if let Some(c) = self.ceiling
            && now < c.probe_at
        {
            // Just below the ceiling until a probe is due.
            next = next.min(f64::from(c.at) - 1e-6).max(self.limit);
        }
        self.limit = next;
    }

    /// The target was overloaded at `in_flight` requests at once: the limit goes to
    /// a fraction of that (answers that came in since may have raised it already).
    fn decrease(&mut self, in_flight: u32, now: Instant) {
        let at = in_flight.min(self.limit as u32).max(1);
        // Only a probe that failed, pushback again at the ceiling, waits longer for
        // the next. Decreases below it (slow rounds one after another while the
        // machine or the target is busy) set a lower ceiling probed after the first
        // wait: doubling for each of them held a limit cut to 2 for up to a minute
        // after a one-second stall.
        let wait = match self.ceiling {
            Some(c) if at == c.at => (c.wait * 2).min(MAX_PROBE),
            _ => FIRST_PROBE,
        };
        self.ceiling = Some(Ceiling {
            at,
            probe_at: now + wait,
            wait,
        });
        self.limit = (f64::from(at) * BACKOFF).floor().max(self.min);
        self.slow_start = false;
        self.last_decrease = Some(now);
        self.round = Round::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A target that takes `capacity` requests at once and answers the others 429,
    /// sent the controller's limit of requests every 20 ms (each answered 20 ms later)
    /// for `seconds`. Returns the mean limit and the 429s of the second half.
    fn run_against(capacity: u32, seconds: u64) -> (f64, u32) {
        let start = Instant::now();
        let mut aimd = Aimd::new(1, 64, 2.0);
        let (mut pushbacks_late, mut limits_late, mut steps_late) = (0, 0u64, 0u64);
        let mut now = start;
        let half = start + Duration::from_secs(seconds / 2);
        while now < start + Duration::from_secs(seconds) {
            let sent = now + Duration::from_micros(1);
            let limit = aimd.limit();
            now += 20 * MS;
            if now > half {
                limits_late += u64::from(limit);
                steps_late += 1;
            }
            for i in 1..=limit {
                let signal = if i > capacity {
                    if now > half {
                        pushbacks_late += 1;
                    }
                    Signal::Pushback
                } else {
                    Signal::Answer(20 * MS)
                };
                aimd.on_result(sent, limit, signal, now);
            }
        }
        (limits_late as f64 / steps_late as f64, pushbacks_late)
    }

    #[test]
    fn settles_just_below_a_hard_capacity_and_probes_it_rarely() {
        let (mean, late) = run_against(8, 120);
        assert!((7.5..=8.0).contains(&mean), "mean limit {mean}");
        // 60 s at 8 requests per 20 ms is 24000 answers; probes cost a handful.
        assert!(late <= 4, "{late} pushbacks in the last minute");
    }

    #[test]
    fn starts_at_the_initial_limit_and_doubles_each_round_until_pushback() {
        let t0 = Instant::now();
        let mut aimd = Aimd::new(1, 64, 2.0);
        assert_eq!(aimd.limit(), INITIAL);
        for _ in 0..10 {
            aimd.on_result(t0, 10, Signal::Answer(5 * MS), t0);
        }
        assert_eq!(aimd.limit(), 20);
        aimd.on_result(t0 + MS, 20, Signal::Pushback, t0 + MS);
        assert_eq!(aimd.limit(), 15);
        // Pushback for requests sent before the decrease is not counted twice.
        aimd.on_result(t0, 20, Signal::Pushback, t0 + 2 * MS);
        assert_eq!(aimd.limit(), 15);
        // Congestion avoidance: one more per round.
        let t1 = t0 + 5 * MS;

        for _ in 0..15 {
            aimd.on_result(t1, 15, Signal::Answer(5 * MS), t1);
        }
        assert_eq!(aimd.limit(), 15, "below 16 until ...");
        aimd.on_result(t1, 15, Signal::Answer(5 * MS), t1);
        assert_eq!(aimd.limit(), 16);
    }

    #[test]
    fn never_leaves_its_bounds() {
        let t0 = Instant::now();
        let mut aimd = Aimd::new(3, 12, 2.0);
        for i in 1..20 {
            aimd.on_result(t0 + i * MS, 12, Signal::Pushback, t0 + i * MS);
        }
        assert_eq!(aimd.limit(), 3);
        for _ in 0..1000 {
            aimd.on_result(t0, 12, Signal::Answer(MS), t0 + Duration::from_secs(100));
        }
        assert_eq!(aimd.limit(), 12);
    }

    #[test]
    fn a_limit_not_in_use_does_not_grow() {
        let t0 = Instant::now();
        let mut aimd = Aimd::new(1, 64, 2.0);
        for _ in 0..100 {
            aimd.on_result(t0, 2, Signal::Answer(5 * MS), t0);
        }
        assert_eq!(aimd.limit(), INITIAL);
    }

    /// A limit after a first round that set the baseline at 20 ms (slow start grew
    /// it).
    fn after_a_first_round_at_20ms(t0: Instant) -> Aimd {
        let mut aimd = Aimd::new(1, 64, 2.0);
        for _ in 0..INITIAL {
            aimd.on_result(t0, INITIAL, Signal::Answer(20 * MS), t0);
        }
        aimd
    }

    #[test]
    fn a_slow_round_is_cut_from_its_load_not_from_its_last_request() {
        let t0 = Instant::now();
        let mut aimd = after_a_first_round_at_20ms(t0);
        let before = aimd.limit();
        // A slow round at full load whose last answer's request went alone.
        let t1 = t0 + Duration::from_secs(1);
        for i in 0..before {
            let in_flight = if i + 1 == before { 1 } else { before };
            aimd.on_result(t1, in_flight, Signal::Answer(60 * MS), t1);
        }
        assert_eq!(aimd.limit(), (f64::from(before) * BACKOFF).floor() as u32);
    }

    #[test]
    fn answers_far_slower_than_usual_reduce_the_limit() {
        let t0 = Instant::now();
        let mut aimd = after_a_first_round_at_20ms(t0);
        let before = aimd.limit();
        // A round at 60 ms: more than 2 x 20 ms + 10 ms.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..before {
            aimd.on_result(t1, before, Signal::Answer(60 * MS), t1);
        }

        assert!(aimd.limit() < before, "{} from {before}", aimd.limit());
    }

    #[test]
    fn a_cascade_of_slow_rounds_is_probed_again_after_the_first_wait() {
        let t0 = Instant::now();
        let mut aimd = Aimd::new(1, 64, 2.0);
        for _ in 0..INITIAL {
            aimd.on_result(t0, INITIAL, Signal::Answer(20 * MS), t0);
        }
        // A stall: every round is slow, and each cuts the limit below the last.
        let mut now = t0;
        while aimd.limit() > 2 {
            now += 100 * MS;
            let limit = aimd.limit();
            for _ in 0..limit {
                aimd.on_result(now, limit, Signal::Answer(200 * MS), now);
            }
        }
        let ceiling = aimd.ceiling.expect("a ceiling at the last cut");
        assert_eq!(ceiling.wait, FIRST_PROBE, "{ceiling:?}");
        // Answers at the usual speed after the probe is due grow it past the ceiling.
        let later = ceiling.probe_at;
        for _ in 0..200 {
            let limit = aimd.limit();
            aimd.on_result(later, limit, Signal::Answer(20 * MS), later);
        }
        assert!(aimd.limit() >= 8, "limit {}", aimd.limit());
    }

    #[test]
    fn a_probe_that_fails_again_waits_twice_as_long() {
        let t0 = Instant::now();
        let mut aimd = Aimd::new(1, 64, 2.0);
        aimd.on_result(t0, 10, Signal::Pushback, t0);
        assert_eq!(
            aimd.ceiling.map(|c| (c.at, c.wait)),
            Some((10, FIRST_PROBE))
        );
        // Grown back to the ceiling once the probe is due, pushed back there again.
        let t1 = aimd.ceiling.unwrap().probe_at + MS;
        while aimd.limit() < 10 {
            let limit = aimd.limit();
            aimd.on_result(t1, limit, Signal::Answer(MS), t1);
        }
        aimd.on_result(t1 + MS, 10, Signal::Pushback, t1 + MS);
        assert_eq!(
            aimd.ceiling.map(|c| (c.at, c.wait)),
            Some((10, 2 * FIRST_PROBE))
        );
    }

    #[test]
    fn small_latency_changes_and_errors_without_load_meaning_change_nothing() {
        let t0 = Instant::now();
        let mut aimd = Aimd::new(1, 64, 2.0);
        for _ in 0..INITIAL {
            aimd.on_result(t0, INITIAL, Signal::Answer(MS), t0);
        }
        let before = aimd.limit();
        // 1 ms to 5 ms is five times slower, but within the 10 ms slack.
        for _ in 0..before {
            aimd.on_result(t0, before, Signal::Answer(5 * MS), t0);
        }
        assert!(aimd.limit() >= before);
        let after = aimd.limit();
        aimd.on_result(t0, after, Signal::Neutral, t0);
        assert_eq!(aimd.limit(), after);
    }
}
