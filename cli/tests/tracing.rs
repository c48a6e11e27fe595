//! Traces as a user sees them in their tracing system: `fanout standalone` started
//! with `--otlp-endpoint` pointing at a real OpenTelemetry Collector (built from
//! pinned sources), events posted to the gateway, and the spans the collector
//! received: one trace from the producer's request, through the publish and every
//! attempt, a dead letter and its redrive, to the targets, which receive the same
//! trace in their `traceparent`.

mod support;

use std::time::Duration;

use fanout_testkit::nats::NatsServer;
use fanout_testkit::otel::{Collector, ReceivedSpan};
use fanout_testkit::target::{Reply, TargetServer};
use fanout_testkit::wait;
use support::standalone::Standalone;

const T: Duration = Duration::from_secs(40);
const ROUTE: &str = "orders";
const PRODUCER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";

fn manifests(crm: &str, billing: &str) -> String {
    let target = |name: &str, url: &str| {
        format!(
            "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: {name}}}
spec:
  url: {url}
  timeout: 2s
  retry: {{maxAttempts: 5, initialDelay: 100ms, maxDelay: 200ms, jitter: none}}
---
"
        )
    };
    format!(
        "{}{}apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: {ROUTE}}}
spec:
  targets:
    - {{name: crm, apiTargetRef: {{name: crm}}}}
    - {{name: billing, apiTargetRef: {{name: billing}}}}
  gateway: {{allowUnauthenticated: true}}
",
        target("crm", crm),
        target("billing", billing),
    )
}

/// The parent span id a target was given in its `traceparent`, for each request of
/// event `key`, in order; and the trace ids.
fn traceparents(target: &TargetServer, key: &str) -> Vec<(String, String)> {
    target
        .received()
        .iter()
        .filter(|r| r.header("idempotency-key") == Some(key))
        .map(|r| {
            let value = r.header("traceparent").unwrap();
            (value[3..35].to_string(), value[36..52].to_string())
        })
        .collect()
}

fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.name == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_the_producers_request_through_every_attempt_to_the_targets() {
    let collector = Collector::start().await.unwrap();
    let nats = NatsServer::start().unwrap();
    let crm = TargetServer::start().await.unwrap();
    let billing = TargetServer::start().await.unwrap();
    // The CRM fails once; billing refuses the event until its dead letter is redriven.
    crm.script_for_key("order-1", [Reply::Status(503)]);
    billing.script_for_key("order-1", [Reply::StatusBody(400, "unknown account")]);
    let yaml = manifests(&crm.url("/crm"), &billing.url("/billing"));
    let endpoint = collector.endpoint();
    let s =
        Standalone::start_with(&nats.url(), "shop", &yaml, &["--otlp-endpoint", &endpoint]).await;

    // One event continues the producer's trace, the other starts one at the gateway.
    let producer = format!("00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01");
    s.accept(
        ROUTE,
        &[("Idempotency-Key", "order-1"), ("traceparent", &producer)],
        "{}",
    )
    .await;
    s.accept(ROUTE, &[("Idempotency-Key", "order-2")], "{}")
        .await;
    wait::until("the retry at the CRM and the dead letter", T, || async {
        let letters = s.try_cli(&["dlq", "list", "--route", ROUTE])?;
        if traceparents(&crm, "order-1").len() == 2 && letters.contains("order-1") {
            Ok(())
        } else {
            Err(letters)
        }
    })
    .await
    .unwrap();
    s.cli(&["dlq", "redrive", "--route", ROUTE, "--target", "billing"]);
    wait::until("the redriven event at billing", T, || async {
        match traceparents(&billing, "order-1").len() {
            2 => Ok(()),
            n => Err(format!("{n} requests")),
        }
    })
    .await
    .unwrap();

    let spans = wait::until("every span at the collector", T, || async {
        let spans = collector.spans().map_err(|e| e.to_string())?;
        let of_order_1: Vec<ReceivedSpan> = spans
            .iter()
            .filter(|s| s.trace_id == PRODUCER_TRACE)
            .cloned()
            .collect();
        let complete = named(&of_order_1, "deliver crm").len() == 2
            && named(&of_order_1, "deliver billing").len() == 2
            && named(&of_order_1, "redrive billing").len() == 1
            && named(&of_order_1, "dead-letter billing").len() == 1
            && spans
                .iter()
                .filter(|s| s.name.starts_with("deliver"))
                .count()
                == 6;
        if complete {
            Ok(spans)
        } else {
            let names: Vec<_> = spans.iter().map(|s| (&s.name, &s.trace_id)).collect();
            Err(format!("{names:?}\n{}", collector.log()))
        }
    })
    .await
    .unwrap();
    let trace: Vec<ReceivedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == PRODUCER_TRACE)
        .cloned()
        .collect();
    assert!(trace.iter().all(|s| s.service == "fanout-standalone"));

    // The gateway's request continues the producer's span; the publish is its child.
    let request = named(
        &trace,
        "POST /v1/namespaces/{namespace}/routes/{route}/events",
    );
    assert_eq!(request.len(), 1, "{trace:#?}");
    let request = request[0];
    assert_eq!(
        (request.kind, request.parent_span_id.as_str()),
        (2, PRODUCER_SPAN)
    );
    assert_eq!(request.attribute("http.response.status_code"), Some("202"));
    let publish = named(&trace, "publish fanout_shop_orders")[0];
    assert_eq!(
        (publish.kind, &publish.parent_span_id),
        (4, &request.span_id)
    );
    assert_eq!(publish.attribute("messaging.message.id"), Some("order-1"));

    // Each attempt is a child of the publish, and the target's parent.
    let mut attempts = named(&trace, "deliver crm");
    attempts.sort_by_key(|s| s.attribute("fanout.attempt").map(str::to_string));
    for span in &attempts {
        assert_eq!((span.kind, &span.parent_span_id), (3, &publish.span_id));
        assert_eq!(span.attribute("fanout.target"), Some("crm"));
        assert_eq!(span.attribute("fanout.event.id"), Some("order-1"));
    }
    let described: Vec<_> = attempts
        .iter()
        .map(|s| {
            (
                s.attribute("fanout.attempt").unwrap(),
                s.attribute("http.response.status_code").unwrap(),
                s.attribute("fanout.outcome").unwrap(),
                s.status_code,
            )
        })
        .collect();
    assert_eq!(
        described,
        [("1", "503", "retrying", 2), ("2", "200", "delivered", 0)]
    );
    let sent: Vec<(String, String)> = attempts
        .iter()
        .map(|s| (s.trace_id.clone(), s.span_id.clone()))
        .collect();
    assert_eq!(traceparents(&crm, "order-1"), sent);

    // The dead letter and the redrive are in the same trace; the redriven attempt is
    // the parent of billing's second request.
    let dead_letter = named(&trace, "dead-letter billing")[0];
    assert_eq!(dead_letter.parent_span_id, publish.span_id);
    assert_eq!(
        dead_letter.attribute("fanout.dead_letter.reason"),
        Some("permanent")
    );
    let redrive = named(&trace, "redrive billing")[0];
    assert_eq!(redrive.parent_span_id, publish.span_id);
    let redriven: Vec<_> = named(&trace, "deliver billing")
        .into_iter()
        .filter(|s| s.attribute("fanout.redrive") == Some("true"))
        .collect();
    assert_eq!(redriven.len(), 1, "{trace:#?}");
    assert_eq!(redriven[0].attribute("fanout.outcome"), Some("delivered"));
    assert_eq!(
        traceparents(&billing, "order-1")[1],
        (PRODUCER_TRACE.to_string(), redriven[0].span_id.clone())
    );

    // Without a producer's trace, the gateway's request starts one.
    let (trace_2, parent_2) = traceparents(&crm, "order-2").remove(0);
    let of_2: Vec<ReceivedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == trace_2)
        .cloned()
        .collect();
    let root = named(
        &of_2,
        "POST /v1/namespaces/{namespace}/routes/{route}/events",
    )[0];
    assert_eq!(root.parent_span_id, "");
    let attempt = named(&of_2, "deliver crm")[0];
    assert_eq!(attempt.span_id, parent_2);
    assert_eq!(
        attempt.parent_span_id,
        named(&of_2, "publish fanout_shop_orders")[0].span_id
    );
    s.sigterm_exits_zero();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampling_ratio_of_zero_records_only_traces_the_producer_sampled() {
    let collector = Collector::start().await.unwrap();
    let nats = NatsServer::start().unwrap();
    let crm = TargetServer::start().await.unwrap();
    let billing = TargetServer::start().await.unwrap();
    let yaml = manifests(&crm.url("/crm"), &billing.url("/billing"));

    // A ratio outside 0..1 is refused at start, naming the flag.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.yaml"), &yaml).unwrap();
    let refused = support::standalone::command(dir.path(), "shop", &nats.url())
        .args(["--otlp-endpoint", &collector.endpoint()])
        .args(["--otlp-sampling-ratio", "1.5"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("--otlp-sampling-ratio: 1.5 is not between 0 and 1"),
        "{said}"
    );

    let endpoint = collector.endpoint();
    let s = Standalone::start_with(
        &nats.url(),
        "shop",
        &yaml,
        &["--otlp-endpoint", &endpoint, "--otlp-sampling-ratio", "0"],
    )
    .await;
    let sampled = format!("00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01");
    s.accept(
        ROUTE,
        &[("Idempotency-Key", "sampled"), ("traceparent", &sampled)],
        "{}",
    )
    .await;
    s.accept(ROUTE, &[("Idempotency-Key", "unsampled")], "{}")
        .await;
    wait::until("both events at both targets", T, || async {
        match (crm.count(), billing.count()) {
            (2, 2) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    // The targets still get a trace context: the unsampled one says so.
    let (_, unsampled_parent) = traceparents(&crm, "unsampled").remove(0);
    let unsampled = crm
        .received()
        .into_iter()
        .find(|r| r.header("idempotency-key") == Some("unsampled"))
        .unwrap();
    assert!(unsampled.header("traceparent").unwrap().ends_with("-00"));
    // Stopping sends what is queued.
    s.sigterm_exits_zero();
    let spans = wait::until("the sampled trace at the collector", T, || async {
        let spans = collector.spans().map_err(|e| e.to_string())?;
        if spans
            .iter()
            .filter(|s| s.name.starts_with("deliver"))
            .count()
            == 2
        {
            Ok(spans)
        } else {
            Err(format!("{spans:?}"))
        }
    })
    .await
    .unwrap();
    assert!(
        spans.iter().all(|s| s.trace_id == PRODUCER_TRACE),
        "{spans:#?}"
    );
    assert!(spans.iter().all(|s| s.span_id != unsampled_parent));
}
