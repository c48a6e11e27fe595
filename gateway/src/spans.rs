//! The gateway's spans, when tracing is on (`--otlp-endpoint`): one for each ingest
//! request, continuing the producer's `traceparent` (or starting a trace), and one
//! for each event's publish, a child of the request's. The event is stored with the
//! publish span's `traceparent`, so the dispatchers' attempt spans hang below it: one
//! trace from the producer's request to every target.

use axum::http::{HeaderMap, StatusCode};
use fanout_otel::context;
use fanout_otel::opentelemetry::trace::{
    Span as _, SpanBuilder, SpanKind, Status, TraceContextExt, Tracer as _,
};
use fanout_otel::opentelemetry::{Context, KeyValue};
use fanout_otel::opentelemetry_sdk::trace::{SdkTracer, Span};

use crate::event::Event;
use crate::metrics::Endpoint;
use crate::publish::{PublishError, Stored};

const SINGLE_ROUTE: &str = "/v1/namespaces/{namespace}/routes/{route}/events";
const BATCH_ROUTE: &str = "/v1/namespaces/{namespace}/routes/{route}/events:batch";

/// The span of one ingest request.
pub struct RequestSpan {
    tracer: SdkTracer,
    context: Context,
}

/// The span of one event's publish.
pub struct PublishSpan {
    span: Span,
}

/// Opens the span of a request to `endpoint` of route `route` (`namespace/name`).
pub fn request(
    tracer: &SdkTracer,
    headers: &HeaderMap,
    endpoint: Endpoint,
    route: &str,
) -> RequestSpan {
    let incoming = headers.get("traceparent").and_then(|v| v.to_str().ok());
    let http_route = match endpoint {
        Endpoint::Single => SINGLE_ROUTE,
        Endpoint::Batch => BATCH_ROUTE,
    };
    let builder = SpanBuilder::from_name(format!("POST {http_route}"))
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.route", http_route),
            KeyValue::new("fanout.route", route.to_string()),
        ]);
    let span = tracer.build_with_context(builder, &context::parent(incoming));
    RequestSpan {
        tracer: tracer.clone(),
        context: Context::new().with_span(span),
    }
}

impl RequestSpan {
    /// Opens the span of `event`'s publish to `stream` and stores its `traceparent`
    /// with the event (the producer's `tracestate` stays as it came).
    pub fn publish(&self, event: &mut Event, stream: &str) -> PublishSpan {
        let builder = SpanBuilder::from_name(format!("publish {stream}"))
            .with_kind(SpanKind::Producer)
            .with_attributes([
                KeyValue::new("messaging.system", "nats"),
                KeyValue::new("messaging.operation.type", "send"),
                KeyValue::new("messaging.destination.name", event.subject.clone()),
                KeyValue::new("messaging.message.id", event.id.clone()),
                KeyValue::new("fanout.event.id", event.id.clone()),
                KeyValue::new("fanout.stream", stream.to_string()),
            ]);
        let span = self.tracer.build_with_context(builder, &self.context);
        // The producer's, if any, is replaced. Hex digits and dashes: never refused.
        let traceparent = context::format(span.span_context());
        if event.headers.set("traceparent", &traceparent).is_err() {
            tracing::debug!("a traceparent with a line break was not stored");
        }
        PublishSpan { span }
    }

    /// Closes the request's span with the status it was answered.
    pub fn end(self, status: StatusCode) {
        let span = self.context.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        if status.is_server_error() {
            span.set_status(Status::error(status.to_string()));
        }
        span.end();
    }
}

impl PublishSpan {
    /// Closes the publish's span once JetStream answered (or did not).
    pub fn end(mut self, stored: Result<&Stored, &PublishError>) {
        match stored {
            Ok(stored) => {
                self.span.set_attribute(KeyValue::new(
                    "messaging.nats.stream.sequence",
                    stored.sequence as i64,
                ));
                self.span
                    .set_attribute(KeyValue::new("fanout.duplicate", stored.duplicate));
            }
            Err(error) => {
                self.span
                    .set_status(Status::error(fanout_config::error_chain(error)));
            }
        }
        self.span.end();
    }
}
