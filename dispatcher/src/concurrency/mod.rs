//! How many requests a worker sends to its target at once.
//!
//! Without adaptive concurrency, a worker holds at most maxInFlight events and sends
//! each as soon as it is admitted, so no limit is needed here. This limit is used
//! when fewer requests may go than events are in hand: with adaptive concurrency
//! (the limit moves between `minInFlight` and maxInFlight, decided by
//! [`aimd::Aimd`]), and for ordered targets (which hold events waiting behind their
//! key's head besides those in flight; the limit stays at maxInFlight unless it is
//! adaptive too). Each request takes a [`Permit`] before it is sent and reports what
//! its answer said about the target's load when it returns it.
//!
//! The limit is a semaphore whose size follows the controller: a larger limit adds
//! permits at once; a smaller one removes free permits and keeps back the rest as
//! requests in flight return theirs.

pub mod aimd;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use fanout_config::policy::AdaptiveConcurrency;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::classify::{Failure, Verdict};
pub use aimd::Signal;

pub struct ConcurrencyLimit {
    semaphore: Semaphore,
    state: Mutex<State>,
    /// Permits out now (requests in flight).
    in_flight: AtomicU32,
    /// The limit as last decided, for reports.
    current: AtomicU32,
}

struct State {
    /// `None`: a fixed limit.
    controller: Option<aimd::Aimd>,
    /// The limit the semaphore is sized for.
    limit: u32,
    /// Permits still to be removed as requests return them.
    owed: u32,
}

impl ConcurrencyLimit {
    /// Always `limit` requests at once.
    pub fn fixed(limit: u32) -> ConcurrencyLimit {
        Self::with(None, limit.max(1))
    }

    /// Adaptive between `policy.min_in_flight` and `max_in_flight`.
    pub fn adaptive(policy: &AdaptiveConcurrency, max_in_flight: u32) -> ConcurrencyLimit {
        let controller = aimd::Aimd::new(
            policy.min_in_flight,
            max_in_flight,
            policy.latency_tolerance,
        );
        let limit = controller.limit();
        Self::with(Some(controller), limit)
    }

    fn with(controller: Option<aimd::Aimd>, limit: u32) -> ConcurrencyLimit {
        ConcurrencyLimit {
            semaphore: Semaphore::new(limit as usize),
            state: Mutex::new(State {
                controller,
                limit,
                owed: 0,
            }),
            in_flight: AtomicU32::new(0),
            current: AtomicU32::new(limit),
        }
    }

    /// Requests that may be in flight now.
    pub fn limit(&self) -> u32 {
        self.current.load(Ordering::Relaxed)
    }

    pub fn is_adaptive(&self) -> bool {
        self.lock().controller.is_some()
    }

    /// Permits free now: how many more requests could go without waiting.
    pub fn free(&self) -> usize {
        self.semaphore.available_permits()
    }

    /// Waits until a permit is free, without taking it: the ordered loop starts a
    /// head only then, instead of parking every head it may start in [`acquire`]
    /// (each with its timers) while the target is busy.
    ///
    /// [`acquire`]: ConcurrencyLimit::acquire
    pub async fn room(&self) {
        drop(
            self.semaphore
                .acquire()
                .await
                .expect("the semaphore is never closed"),
        );
    }

    /// Waits for room for one more request (first come, first served).
    pub async fn acquire(&self) -> Permit<'_> {
        let permit = self
            .semaphore
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let in_flight = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        Permit {
            limit: self,
            permit: Some(permit),
            sent_at: Instant::now(),
            in_flight,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns `permit` after its request said `signal`; the new limit if it moved.
    fn release(
        &self,
        permit: SemaphorePermit<'_>,
        sent_at: Instant,
        in_flight: u32,
        signal: Signal,
    ) -> Option<u32> {
        let now = self.in_flight.fetch_sub(1, Ordering::Relaxed);
        // Pushback is answered at once: the requests in flight as it comes back are
        // what the target was holding too (some may have reached it before this one,
        // whatever the count when it left).
        let in_flight = match signal {
            Signal::Pushback => in_flight.max(now),
            _ => in_flight,
        };
        let mut state = self.lock();
        let mut changed = None;
        if let Some(controller) = &mut state.controller {
            controller.on_result(sent_at, in_flight, signal, Instant::now());
            let wanted = controller.limit();
            if wanted != state.limit {
                self.resize(&mut state, wanted);
                changed = Some(wanted);
            }
        }
        if state.owed > 0 {
            state.owed -= 1;
            permit.forget();
        } else {
            drop(permit);
        }
        changed
    }

    fn resize(&self, state: &mut State, wanted: u32) {
        if wanted > state.limit {
            let mut more = wanted - state.limit;
            let cancelled = more.min(state.owed);
            state.owed -= cancelled;
            more -= cancelled;
            self.semaphore.add_permits(more as usize);
        } else {
            let fewer = state.limit - wanted;
            let removed = self.semaphore.forget_permits(fewer as usize) as u32;
            state.owed += fewer - removed;
        }
        state.limit = wanted;
        self.current.store(wanted, Ordering::Relaxed);
    }
}

/// Room for one request; give it back with [`Permit::finish`] (dropping it returns
/// it without a signal, for a request that was never sent).
pub struct Permit<'a> {
    limit: &'a ConcurrencyLimit,
    permit: Option<SemaphorePermit<'a>>,
    sent_at: Instant,
    in_flight: u32,
}

impl Permit<'_> {
    /// The request was sent now (admission may have waited after the permit).
    pub fn sending(&mut self) {
        self.sent_at = Instant::now();
        // Others may have gone while this one waited: a pushback to it says the
        // target could not take as many as are in flight now, not as many as were
        // when it took its permit (counting those cut a limit of 8 to 2).
        self.in_flight = self.limit.in_flight.load(Ordering::Relaxed);
    }

    /// Returns the permit with what the answer said; the new limit if it moved.
    pub fn finish(mut self, signal: Signal) -> Option<u32> {
        let permit = self.permit.take()?;
        self.limit
            .release(permit, self.sent_at, self.in_flight, signal)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.limit
                .release(permit, self.sent_at, self.in_flight, Signal::Neutral);
        }
    }
}

/// What a verdict says about the target's load: 429, 503 and timeouts (a 504 or
/// 408 from a gateway in front of it too) are pushback; a success is an answer whose
/// time counts; anything else says nothing about load.
pub fn signal(verdict: &Verdict, took: Duration) -> Signal {
    match verdict {
        Verdict::Delivered { .. } => Signal::Answer(took),
        Verdict::Retryable { failure, .. } | Verdict::Permanent { failure } => match failure {
            Failure::Status {
                code: 408 | 429 | 503 | 504,
                ..
            }
            | Failure::Timeout => Signal::Pushback,
            _ => Signal::Neutral,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> AdaptiveConcurrency {
        AdaptiveConcurrency {
            min_in_flight: 2,
            latency_tolerance: 2.0,
        }
    }

    #[tokio::test]
    async fn a_fixed_limit_lets_that_many_go_and_the_next_waits() {
        let limit = ConcurrencyLimit::fixed(2);
        let a = limit.acquire().await;
        let _b = limit.acquire().await;
        let third = tokio::time::timeout(Duration::from_millis(20), limit.acquire()).await;
        assert!(third.is_err(), "a third request waits");
        assert_eq!(
            a.finish(Signal::Pushback),
            None,
            "a fixed limit never moves"
        );
        let _c = tokio::time::timeout(Duration::from_millis(200), limit.acquire())
            .await
            .expect("a returned permit lets the next go");
        assert_eq!(limit.limit(), 2);
    }

    #[tokio::test]
    async fn a_request_that_waited_after_its_permit_is_judged_at_the_load_it_was_sent_into() {
        let limit = ConcurrencyLimit::adaptive(&policy(), 64);
        // The first permit, then nine more go out while its request waits in
        // admission (a rate limit, a Retry-After).
        let mut waited = limit.acquire().await;
        let mut others = Vec::new();
        for _ in 1..aimd::INITIAL {
            others.push(limit.acquire().await);
        }
        waited.sending();
        drop(others);
        // Ten were in flight when it went: 3/4 of ten, not of the one there was when
        // it took its permit.
        assert_eq!(waited.finish(Signal::Pushback), Some(7));
    }

    #[tokio::test]
    async fn pushback_counts_the_requests_in_flight_as_it_comes_back() {
        let limit = ConcurrencyLimit::adaptive(&policy(), 64);
        // Sent alone; nine more go before its 429 comes back.
        let mut first = limit.acquire().await;
        first.sending();
        let mut others = Vec::new();
        for _ in 1..aimd::INITIAL {
            others.push(limit.acquire().await);
        }
        assert_eq!(first.finish(Signal::Pushback), Some(7));
    }

    #[tokio::test]
    async fn pushback_shrinks_the_semaphore_even_while_every_permit_is_out() {
        let limit = ConcurrencyLimit::adaptive(&policy(), 64);
        assert_eq!(limit.limit(), aimd::INITIAL);
        let mut permits = Vec::new();
        for _ in 0..aimd::INITIAL {
            permits.push(limit.acquire().await);
        }
        // All ten are out; one comes back as pushback: the limit drops to 7, so the
        // three permits still owed are kept back as the others return.
        let first = permits.pop().unwrap();
        assert_eq!(first.finish(Signal::Pushback), Some(7));
        for permit in permits.drain(..) {
            drop(permit);
        }
        for _ in 0..7 {
            permits.push(limit.acquire().await);
        }
        let eighth = tokio::time::timeout(Duration::from_millis(20), limit.acquire()).await;
        assert!(eighth.is_err(), "the limit is 7 now");
    }

    #[test]
    fn only_load_related_answers_are_pushback() {
        let status = |code| Failure::Status {
            code,
            body: String::new(),
        };
        let retryable = |failure| Verdict::Retryable {
            failure,
            retry_after: None,
        };
        let took = Duration::from_millis(3);
        assert_eq!(signal(&retryable(status(429)), took), Signal::Pushback);
        assert_eq!(signal(&retryable(status(503)), took), Signal::Pushback);
        assert_eq!(signal(&retryable(Failure::Timeout), took), Signal::Pushback);
        assert_eq!(signal(&retryable(status(500)), took), Signal::Neutral);
        assert_eq!(
            signal(&retryable(Failure::Connection("refused".into())), took),
            Signal::Neutral
        );
        assert_eq!(
            signal(&Verdict::Delivered { status: 200 }, took),
            Signal::Answer(took)
        );
    }
}
