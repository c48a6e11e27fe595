//! What each attempt leaves behind besides metrics and logs: its record in the
//! delivery history ([`crate::history`]) and its span ([`crate::tracing_otel`]). The
//! worker calls one method here at each point of a delivery; nothing here waits.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fanout_config::history::{Outcome, Record};

use crate::classify::Failure;
use crate::event::Event;
use crate::history::{TargetHistory, unix_ms};
use crate::trace;
use crate::tracing_otel::{AttemptSpan, TargetSpans};

/// How an attempt ended.
pub enum AttemptEnd<'a> {
    Delivered {
        status: u16,
    },
    /// Failed; the next attempt comes after `delay`.
    Retrying {
        failure: &'a Failure,
        delay: Duration,
    },
    /// Failed, and no attempt follows: a dead letter (or a discard) comes next.
    Failed {
        failure: &'a Failure,
    },
}

/// One attempt in progress.
pub struct Attempt {
    started_at: SystemTime,
    started: Instant,
    /// The `traceparent` the request carries.
    traceparent: String,
    /// Boxed: an open span is a few hundred bytes, and every delivery's future holds
    /// an `Attempt`, traced or not.
    span: Option<Box<AttemptSpan>>,
}

impl Attempt {
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The trace id to keep as the latency's exemplar: the attempt's, when its span
    /// is recorded.
    pub fn exemplar(&self) -> Option<String> {
        self.span.as_deref().and_then(AttemptSpan::sampled_trace_id)
    }
}

/// The reporter of one target.
#[derive(Default)]
pub struct Reporter {
    history: Option<Arc<TargetHistory>>,
    spans: Option<TargetSpans>,
}

impl Reporter {
    pub fn new(history: Option<Arc<TargetHistory>>, spans: Option<TargetSpans>) -> Reporter {
        Reporter { history, spans }
    }

    /// A request is about to be sent for `event`.
    pub fn start(&self, event: &Event) -> Attempt {
        let span = self
            .spans
            .as_ref()
            .map(|spans| Box::new(spans.start(event)));
        let traceparent = match &span {
            Some(span) => span.traceparent(),
            None => trace::child_traceparent(event.header("traceparent"), &mut rand::rng()),
        };
        Attempt {
            started_at: SystemTime::now(),
            started: Instant::now(),
            traceparent,
            span,
        }
    }

    /// The request of `attempt` was answered (or failed) and what follows is decided.
    pub fn finished(&self, event: &Event, attempt: Attempt, end: AttemptEnd<'_>) {
        let latency = attempt.started.elapsed();
        let (outcome, status, failure, retry_in) = match end {
            AttemptEnd::Delivered { status } => (Outcome::Delivered, Some(status), None, None),
            AttemptEnd::Retrying { failure, delay } => (
                Outcome::Retrying,
                failure.status(),
                Some(failure),
                Some(delay),
            ),
            AttemptEnd::Failed { failure } => {
                (Outcome::Failed, failure.status(), Some(failure), None)
            }
        };
        if let (Some(spans), Some(span)) = (&self.spans, attempt.span) {
            spans.end(*span, outcome, status, failure);
        }
        if let Some(history) = &self.history {
            let error = failure.map(|f| Cow::Owned(f.to_string()));
            history.record(&Record {
                error,
                status,
                // To the microsecond: finer digits say nothing and lengthen every record.
                latency_ms: Some(latency.as_micros() as f64 / 1000.0),
                retry_in_ms: retry_in.map(|d| d.as_millis() as u64),
                // The trace id: a `traceparent` made here is always well-formed.
                trace_id: attempt.traceparent.get(3..35).map(Cow::Borrowed),
                ..self.record(event, event.delivery, attempt.started_at, outcome)
            });
        }
    }

    /// Nothing was sent: the egress policy refused the connection. The event waits
    /// for the address to be allowed; only the span tells of it.
    pub fn refused(&self, attempt: Attempt, failure: &Failure) {
        if let (Some(spans), Some(span)) = (&self.spans, attempt.span) {
            spans.refused(*span, failure);
        }
    }

    /// The target's filter skips `event`.
    pub fn filtered(&self, event: &Event) {
        if let Some(history) = &self.history {
            history.record(&self.record(event, 0, SystemTime::now(), Outcome::Filtered));
        }
    }

    /// `event` was dead-lettered (or, with dead-lettering off, discarded) for `reason`.
    pub fn gave_up(
        &self,
        event: &Event,
        discarded: bool,
        reason: &str,
        status: Option<u16>,
        error: &str,
        started: SystemTime,
    ) {
        if let Some(spans) = &self.spans {
            spans.gave_up(event, discarded, reason, error, started);
        }
        if let Some(history) = &self.history {
            let outcome = if discarded {
                Outcome::Discarded
            } else {
                Outcome::DeadLettered
            };
            history.record(&Record {
                status,
                error: Some(Cow::Borrowed(error)),
                reason: Some(Cow::Borrowed(reason)),
                ..self.record(event, event.delivery, started, outcome)
            });
        }
    }

    fn record<'a>(
        &'a self,
        event: &'a Event,
        attempt: u32,
        at: SystemTime,
        outcome: Outcome,
    ) -> Record<'a> {
        Record {
            event: Cow::Borrowed(&event.id),
            // The message's subject names the target.
            target: Cow::Borrowed(""),
            attempt,
            at_ms: unix_ms(at),
            outcome,
            status: None,
            error: None,
            latency_ms: None,
            retry_in_ms: None,
            reason: None,
            seq: event.stream_sequence,
            redrive: event.is_redrive(),
            trace_id: None,
        }
    }
}
