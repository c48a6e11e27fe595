//! The dispatcher's spans, in the trace each event carries (its `traceparent`, which
//! the gateway stores): one per attempt, whose span id is the parent id the target
//! receives in its own `traceparent`; one per dead letter or discard; and one for a
//! redrive, when a redriven event first reaches its target.
//!
//! A redrive is recorded here rather than where it was asked for (`fanout dlq
//! redrive`, run from a laptop without a collector): the redriven copy carries the
//! event's `traceparent`, and the time JetStream stored the copy is when it was
//! redriven.

use std::time::SystemTime;

use fanout_config::history::Outcome;
use fanout_otel::context;
use fanout_otel::opentelemetry::trace::{Span as _, SpanBuilder, SpanKind, Status, Tracer as _};
use fanout_otel::opentelemetry::{Context, KeyValue};
use fanout_otel::opentelemetry_sdk::trace::{SdkTracer, Span};

use crate::classify::Failure;
use crate::event::Event;

/// Longest error text kept on a span.
const MAX_ERROR_LEN: usize = 512;

/// The spans of one target.
pub struct TargetSpans {
    tracer: SdkTracer,
    route: String,
    target: String,
    attempt_name: String,
}

/// An attempt's span, open while its request is under way.
pub struct AttemptSpan {
    span: Span,
}

impl AttemptSpan {
    /// The `traceparent` its request carries: this span is the target's parent.
    pub fn traceparent(&self) -> String {
        context::format(self.span.span_context())
    }

    /// The trace id, when the span is recorded (sampled).
    pub fn sampled_trace_id(&self) -> Option<String> {
        let context = self.span.span_context();
        context.is_sampled().then(|| context.trace_id().to_string())
    }
}

impl TargetSpans {
    pub fn new(tracer: SdkTracer, route: &str, target: &str) -> TargetSpans {
        TargetSpans {
            tracer,
            route: route.to_string(),
            target: target.to_string(),
            attempt_name: format!("deliver {target}"),
        }
    }

    fn parent(event: &Event) -> Context {
        context::parent(event.header("traceparent"))
    }

    fn common(&self, event: &Event) -> Vec<KeyValue> {
        vec![
            KeyValue::new("fanout.route", self.route.clone()),
            KeyValue::new("fanout.target", self.target.clone()),
            KeyValue::new("fanout.event.id", event.id.clone()),
            KeyValue::new("messaging.message.id", event.id.clone()),
        ]
    }

    /// Opens the span of an attempt at `event`.
    pub fn start(&self, event: &Event) -> AttemptSpan {
        let parent = Self::parent(event);
        if event.is_redrive() && event.delivery == 1 {
            self.redriven(event, &parent);
        }
        let mut attributes = self.common(event);
        attributes.push(KeyValue::new("fanout.attempt", i64::from(event.delivery)));
        attributes.push(KeyValue::new("fanout.redrive", event.is_redrive()));
        let builder = SpanBuilder::from_name(self.attempt_name.clone())
            .with_kind(SpanKind::Client)
            .with_attributes(attributes);
        AttemptSpan {
            span: self.tracer.build_with_context(builder, &parent),
        }
    }

    /// Closes an attempt's span with its result.
    pub fn end(
        &self,
        mut attempt: AttemptSpan,
        outcome: Outcome,
        status: Option<u16>,
        failure: Option<&Failure>,
    ) {
        let span = &mut attempt.span;
        if !span.is_recording() {
            return;
        }
        span.set_attribute(KeyValue::new("fanout.outcome", outcome.as_str()));
        if let Some(status) = status {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        if let Some(failure) = failure {
            span.set_attribute(KeyValue::new("error.type", failure.category()));
            span.set_status(Status::error(cut(&failure.to_string())));
        }
        span.end();
    }

    /// Closes the span of an attempt whose connection the egress policy refused.
    pub fn refused(&self, mut attempt: AttemptSpan, failure: &Failure) {
        attempt
            .span
            .set_attribute(KeyValue::new("fanout.outcome", "refused"));
        attempt
            .span
            .set_attribute(KeyValue::new("error.type", failure.category()));
        attempt
            .span
            .set_status(Status::error(cut(&failure.to_string())));
        attempt.span.end();
    }

    /// `event` was dead-lettered (or discarded): a span from `started` to now.
    pub fn gave_up(
        &self,
        event: &Event,
        discarded: bool,
        reason: &str,
        error: &str,
        started: SystemTime,
    ) {
        let (name, outcome) = if discarded {
            (format!("discard {}", self.target), "discarded")
        } else {
            (format!("dead-letter {}", self.target), "dead-lettered")
        };
        let mut attributes = self.common(event);
        attributes.push(KeyValue::new("fanout.outcome", outcome));
        attributes.push(KeyValue::new(
            "fanout.dead_letter.reason",
            reason.to_string(),
        ));
        attributes.push(KeyValue::new("fanout.attempts", i64::from(event.delivery)));
        let builder = SpanBuilder::from_name(name)
            .with_kind(SpanKind::Producer)
            .with_start_time(started)
            .with_attributes(attributes);
        let mut span = self
            .tracer
            .build_with_context(builder, &Self::parent(event));
        span.set_status(Status::error(cut(error)));
        span.end();
    }

    /// The redrive that brought `event` back, as a span at the time JetStream stored
    /// the redriven copy.
    fn redriven(&self, event: &Event, parent: &Context) {
        let mut attributes = self.common(event);
        if let Some(id) = event.header("Nats-Msg-Id") {
            attributes.push(KeyValue::new("fanout.redrive.id", id.to_string()));
        }
        let builder = SpanBuilder::from_name(format!("redrive {}", self.target))
            .with_kind(SpanKind::Producer)
            .with_start_time(event.stored_at)
            .with_attributes(attributes);
        let mut span = self.tracer.build_with_context(builder, parent);
        span.end_with_timestamp(event.stored_at);
    }
}

fn cut(text: &str) -> String {
    if text.len() <= MAX_ERROR_LEN {
        return text.to_string();
    }
    let mut end = MAX_ERROR_LEN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
