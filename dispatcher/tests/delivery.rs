//! Delivery behaviour against a real nats-server and real loopback HTTP targets.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Harness, header};
use fanout_config::health::Circuit;
use fanout_testkit::target::{Reply, TargetServer};
use fanout_testkit::wait;

const T: Duration = Duration::from_secs(20);

/// An ApiTarget manifest with fast retries, plus `extra` spec lines.
fn api_target(name: &str, url: &str, extra: &str) -> String {
    let retry = if extra.contains("  retry:") {
        ""
    } else {
        "  retry: {maxAttempts: 5, initialDelay: 50ms, maxDelay: 200ms, jitter: none}\n"
    };
    format!(
        "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: {name}}}
spec:
  url: {url}
  timeout: 2s
{retry}{extra}
---
"
    )
}

/// A route `orders` delivering to one target per (name, extra target lines).
fn route(targets: &[(&str, &str)]) -> String {
    let mut out = String::from(
        "apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {name: orders}
spec:
  targets:
",
    );
    for (name, extra) in targets {
        out.push_str(&format!(
            "    - name: {name}\n      apiTargetRef: {{name: {name}}}\n{extra}"
        ));
    }
    out
}

/// Waits until `target` has received every id in `sent`, and nothing else.
async fn wait_ids(target: &TargetServer, sent: &BTreeSet<String>) {
    let got = target.wait_for_keys(sent, T).await.unwrap();
    assert_eq!(&got, sent, "ids received besides those sent");
}

#[tokio::test]
async fn retries_503_twice_then_delivers_once_with_the_same_idempotency_key() {
    let target = TargetServer::start().await.unwrap();
    target.script([Reply::Status(503), Reply::Status(503), Reply::Status(200)]);
    let manifests = api_target("api", &target.url("/hook"), "") + &route(&[("api", "")]);
    let h = Harness::start(&manifests, &[]).await;
    h.publish("evt-1", r#"{"order":1}"#, &[]).await;

    let received = target.wait_for(3, T).await.unwrap();
    h.wait_settled("api", T).await;
    let received_after = target.received();
    assert_eq!(received_after.len(), 3, "delivered once after two failures");
    let keys: Vec<_> = received
        .iter()
        .map(|r| r.header("idempotency-key").unwrap())
        .collect();
    assert_eq!(keys, ["evt-1", "evt-1", "evt-1"]);
    let attempts: Vec<_> = received
        .iter()
        .map(|r| r.header("fanout-attempt").unwrap())
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    assert_eq!(received[2].body.as_ref(), br#"{"order":1}"#);
    let s = h.snapshot("api");
    assert_eq!((s.delivered, s.failed, s.dead_lettered), (1, 2, 0));
    assert!(h.dead_letters().await.is_empty());
}

#[tokio::test]
async fn a_connection_reset_without_an_answer_is_retried() {
    let target = TargetServer::start().await.unwrap();
    target.script([Reply::Reset, Reply::Status(200)]);
    let manifests = api_target("api", &target.url("/hook"), "") + &route(&[("api", "")]);
    let h = Harness::start(&manifests, &[]).await;
    h.publish("evt-1", "{}", &[]).await;

    target.wait_for(2, T).await.unwrap();
    h.wait_settled("api", T).await;
    let s = h.snapshot("api");
    assert_eq!((s.delivered, s.failed, s.dead_lettered), (1, 1, 0));
    assert!(h.dead_letters().await.is_empty());
}

#[tokio::test]
async fn permanent_400_goes_to_the_dead_letter_stream_once_with_its_reason() {
    let target = TargetServer::start().await.unwrap();
    target.set_default(Reply::StatusBody(400, "missing sku"));
    let manifests = api_target("api", &target.url("/"), "") + &route(&[("api", "")]);
    let h = Harness::start(&manifests, &[]).await;
    h.publish("evt-bad", "{}", &[("X-Event-Type", "order.placed")])
        .await;

    // The consumer may count a message published a moment ago only a moment later
    // (JetStream signals its consumers asynchronously): settled before the first
    // attempt would say nothing, so the attempt is waited for first.
    target.wait_for(1, T).await.unwrap();
    h.wait_settled("api", T).await;
    assert_eq!(target.count(), 1, "a permanent failure is not retried");
    let letters = h.dead_letters().await;
    assert_eq!(letters.len(), 1);
    let dl = &letters[0];
    assert_eq!(dl.subject.as_str(), "fanout.dlq.test.orders.api");
    assert_eq!(header(dl, "Fanout-Reason"), Some("permanent"));
    assert_eq!(header(dl, "Fanout-Last-Status"), Some("400"));
    assert_eq!(
        header(dl, "Fanout-Last-Error"),
        Some("HTTP 400: missing sku")
    );
    assert_eq!(header(dl, "Fanout-Attempts"), Some("1"));
    assert_eq!(header(dl, "Fanout-Target"), Some("api"));
    assert_eq!(header(dl, "Fanout-Event-Id"), Some("evt-bad"));
    assert_eq!(header(dl, "X-Event-Type"), Some("order.placed"));
    assert_eq!(
        header(dl, "Fanout-Original-Subject"),
        Some("fanout.in.test.orders.event")
    );
    assert_eq!(dl.payload.as_ref(), b"{}");
    assert_eq!(h.snapshot("api").dead_lettered, 1);
}

#[tokio::test]
async fn exhausted_attempts_go_to_the_dead_letter_stream() {
    let target = TargetServer::start().await.unwrap();
    target.set_default(Reply::Status(503));
    let manifests = api_target(
        "api",
        &target.url("/"),
        "  circuitBreaker: {enabled: false}\n",
    ) + &route(&[("api", "")]);
    let h = Harness::start(&manifests, &[]).await;
    h.publish("evt-1", "{}", &[]).await;

    // As above: the attempts first, then settled, then nothing more.
    target.wait_for(5, T).await.unwrap();
    h.wait_settled("api", T).await;
    assert_eq!(target.count(), 5, "maxAttempts");
    let letters = h.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert_eq!(header(&letters[0], "Fanout-Reason"), Some("exhausted"));
    assert_eq!(header(&letters[0], "Fanout-Attempts"), Some("5"));
    assert_eq!(header(&letters[0], "Fanout-Last-Status"), Some("503"));
}

#[tokio::test]
async fn retry_after_is_waited_for() {
    let target = TargetServer::start().await.unwrap();
    target.script([Reply::RetryAfter(429, "1".into()), Reply::Status(200)]);
    let manifests = api_target("api", &target.url("/"), "") + &route(&[("api", "")]);
    let h = Harness::start(&manifests, &[]).await;
    h.publish("evt-1", "{}", &[]).await;

    let received = target.wait_for(2, T).await.unwrap();
    let gap = received[1].at - received[0].at;
    // Our own backoff would have been 50ms; the target asked for a second.
    assert!(gap >= Duration::from_millis(1000), "retried after {gap:?}");
    h.wait_settled("api", T).await;
}

#[tokio::test]
async fn a_target_down_for_a_while_then_up_receives_everything() {
    let mut target = TargetServer::start().await.unwrap();
    let manifests = api_target(
        "api",
        &target.url("/"),
        "  circuitBreaker: {enabled: false}\n  retry: {maxAttempts: 50, initialDelay: 50ms, maxDelay: 200ms}\n",
    ) + &route(&[("api", "")]);
    target.stop();
    let h = Harness::start(&manifests, &[]).await;
    let sent: BTreeSet<String> = (0..20).map(|i| format!("evt-{i}")).collect();
    for id in &sent {
        h.publish(id, "{}", &[]).await;
    }
    h.wait_snapshot(
        "api",
        "connection failures while the target is down",
        T,
        |s| s.failed >= 20,
    )
    .await;
    assert_eq!(h.snapshot("api").delivered, 0);

    target.restart().await.unwrap();
    wait_ids(&target, &sent).await;
    h.wait_settled("api", T).await;
    assert!(h.dead_letters().await.is_empty());
}

#[tokio::test]
async fn a_failing_target_does_not_hold_up_the_healthy_one() {
    let healthy = TargetServer::start().await.unwrap();
    let failing = TargetServer::start().await.unwrap();
    // Slow and failing: each attempt takes until the timeout.
    failing.set_default(Reply::Delay(Duration::from_secs(5), 200));
    let manifests = api_target("healthy", &healthy.url("/"), "")
        + &api_target(
            "failing",
            &failing.url("/"),
            "  circuitBreaker: {enabled: false}\n  maxInFlight: 4\n",
        )
        + &route(&[("healthy", ""), ("failing", "")]);
    let h = Harness::start(&manifests, &[]).await;
    let sent: BTreeSet<String> = (0..200).map(|i| format!("evt-{i}")).collect();
    for id in &sent {
        h.publish(id, "{}", &[]).await;
    }
    wait_ids(&healthy, &sent).await;
    h.wait_settled("healthy", T).await;
    assert_eq!(h.snapshot("healthy").delivered, 200);
    // Meanwhile the failing target has hardly started: 4 at a time, 2s each.
    let (pending, ack_pending) = h.consumer_backlog("failing").await;
    assert!(
        pending + ack_pending as u64 >= 150,
        "failing backlog {pending} + {ack_pending}"
    );
}

#[tokio::test]
async fn the_breaker_opens_stops_fetching_half_opens_and_closes() {
    let target = TargetServer::start().await.unwrap();
    target.set_default(Reply::Status(503));
    let manifests = api_target(
        "api",
        &target.url("/"),
        "  circuitBreaker: {failureRatio: 0.5, minimumRequests: 5, window: 10s, openDuration: 2s, halfOpenProbes: 2}
  retry: {maxAttempts: 100, initialDelay: 50ms, maxDelay: 100ms, jitter: none}
  maxInFlight: 4
",
    ) + &route(&[("api", "")]);
    let h = Harness::start(&manifests, &[]).await;
    let sent: BTreeSet<String> = (0..30).map(|i| format!("evt-{i}")).collect();
    for id in &sent {
        h.publish(id, "{}", &[]).await;
    }
    h.wait_snapshot("api", "the circuit to open", T, |s| {
        s.circuit == Circuit::Open
    })
    .await;

    // Open: nothing new is sent until the open duration has passed, even though the
    // target has recovered meanwhile (the breaker cannot know before probing).
    let opened = std::time::Instant::now();
    let at_open = target.count();
    target.set_default(Reply::Status(200));
    wait::until("the circuit to leave Open", T, || async {
        // Count first, state second: if the state is still Open afterwards, the count
        // was taken while open.
        let now = target.count();
        match h.snapshot("api").circuit {
            Circuit::Open => {
                // Requests already on the wire when it opened (at most maxInFlight) may land.
                assert!(
                    now <= at_open + 4,
                    "sent {} requests while open",
                    now - at_open
                );
                Err("open".to_string())
            }
            _ => Ok(()),
        }
    })
    .await
    .unwrap();
    assert!(
        opened.elapsed() >= Duration::from_millis(1500),
        "left Open after {:?}",
        opened.elapsed()
    );

    // The probes succeed, the circuit closes and everything is delivered.
    h.wait_snapshot("api", "the circuit to close", T, |s| {
        s.circuit == Circuit::Closed
    })
    .await;
    h.wait_settled("api", T).await;
    let delivered: BTreeSet<String> = target
        .received()
        .iter()
        .rev()
        .take(30)
        .map(|r| r.header("idempotency-key").unwrap().to_string())
        .collect();
    assert_eq!(
        delivered.len(),
        sent.len(),
        "every event delivered after recovery"
    );
    assert!(
        h.dead_letters().await.is_empty(),
        "no attempts were burned while open"
    );
    assert_eq!(h.snapshot("api").delivered, 30);
}

#[tokio::test]
async fn filters_keep_events_from_targets_they_do_not_match() {
    let all = TargetServer::start().await.unwrap();
    let placed = TargetServer::start().await.unwrap();
    let manifests = api_target("all", &all.url("/"), "")
        + &api_target("placed", &placed.url("/"), "")
        + &route(&[
            ("all", ""),
            (
                "placed",
                "      filter: {headers: {X-Event-Type: order.placed}}\n",
            ),
        ]);
    let h = Harness::start(&manifests, &[]).await;
    h.publish("a", "{}", &[("X-Event-Type", "order.placed")])
        .await;
    h.publish("b", "{}", &[("X-Event-Type", "order.cancelled")])
        .await;
    h.publish("c", "{}", &[]).await;
    h.publish("d", "{}", &[("x-event-type", "order.placed")])
        .await;

    h.wait_settled("all", T).await;
    h.wait_settled("placed", T).await;
    assert_eq!(
        all.distinct_keys(),
        ["a", "b", "c", "d"].map(String::from).into()
    );
    assert_eq!(placed.distinct_keys(), ["a", "d"].map(String::from).into());
}

#[tokio::test]
async fn subject_filters_are_applied_by_the_consumer() {
    let cancelled = TargetServer::start().await.unwrap();
    let manifests = api_target("cancelled", &cancelled.url("/"), "")
        + &route(&[(
            "cancelled",
            "      filter: {subjects: [\"fanout.in.test.orders.order.cancelled\"]}\n",
        )]);
    let h = Harness::start(&manifests, &[]).await;
    h.publish_to("fanout.in.test.orders.order.placed", "a", "{}", &[])
        .await;
    h.publish_to("fanout.in.test.orders.order.cancelled", "b", "{}", &[])
        .await;
    cancelled.wait_for(1, T).await.unwrap();
    h.wait_settled("cancelled", T).await;
    assert_eq!(cancelled.distinct_keys(), ["b"].map(String::from).into());
}

#[tokio::test]
async fn the_rate_limit_holds() {
    let target = TargetServer::start().await.unwrap();
    let manifests = api_target(
        "api",
        &target.url("/"),
        "  rateLimit: {requestsPerSecond: 20, burst: 1}\n",
    ) + &route(&[("api", "")]);
    let h = Harness::start(&manifests, &[]).await;
    for i in 0..30 {
        h.publish(&format!("evt-{i}"), "{}", &[]).await;
    }
    let received = target.wait_for(30, T).await.unwrap();
    let span = received[29].at - received[0].at;
    // 29 gaps of 50ms at 20/s.
    assert!(
        span >= Duration::from_millis(1350),
        "30 requests took only {span:?}"
    );
    for window in received.windows(11) {
        let took = window[10].at - window[0].at;
        assert!(
            took >= Duration::from_millis(450),
            "11 requests within {took:?}"
        );
    }
}

#[tokio::test]
async fn requests_carry_idempotency_trace_auth_and_route_headers() {
    let target = TargetServer::start().await.unwrap();
    let manifests = api_target(
        "api",
        &target.url("/hook"),
        "  method: PUT
  headers: {X-Source: fanout}
  auth:
    bearer: {secretRef: {name: api-token, key: token}}
",
    ) + &route(&[("api", "")]);
    let h = Harness::start(&manifests, &[("api-token", "token", "s3cret\n")]).await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    h.publish(
        "evt-7",
        r#"{"a":1}"#,
        &[("traceparent", incoming), ("ce-type", "order.placed")],
    )
    .await;

    let r = &target.wait_for(1, T).await.unwrap()[0];
    assert_eq!(r.method, "PUT");
    assert_eq!(r.path, "/hook");
    assert_eq!(r.header("idempotency-key"), Some("evt-7"));
    assert_eq!(r.header("authorization"), Some("Bearer s3cret"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-source"), Some("fanout"));
    assert_eq!(r.header("ce-type"), Some("order.placed"));
    assert_eq!(r.header("fanout-route"), Some("test/orders"));
    assert_eq!(r.header("fanout-target"), Some("api"));
    assert_eq!(r.header("fanout-attempt"), Some("1"));
    assert!(
        r.header("fanout-event-id").is_none(),
        "internal headers stay inside"
    );
    assert!(
        r.header("nats-msg-id").is_none(),
        "internal headers stay inside"
    );
    let traceparent = r.header("traceparent").unwrap();
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{traceparent}"
    );
    assert!(
        !traceparent.contains("00f067aa0ba902b7"),
        "a new span per attempt"
    );
}

#[tokio::test]
async fn a_redriven_event_reaches_only_its_target() {
    let email = TargetServer::start().await.unwrap();
    let crm = TargetServer::start().await.unwrap();
    let manifests = api_target("email", &email.url("/"), "")
        + &api_target("crm", &crm.url("/"), "")
        + &route(&[("email", ""), ("crm", "")]);
    let h = Harness::start(&manifests, &[]).await;
    h.publish_to("fanout.redrive.test.orders.email", "again", "{}", &[])
        .await;
    email.wait_for(1, T).await.unwrap();
    h.wait_settled("email", T).await;
    h.wait_settled("crm", T).await;
    assert_eq!(crm.count(), 0);
}

#[tokio::test]
async fn health_snapshots_reach_the_kv_bucket() {
    let target = TargetServer::start().await.unwrap();
    let manifests = api_target("api", &target.url("/"), "") + &route(&[("api", "")]);
    let h = Harness::start(&manifests, &[]).await;
    h.publish("evt-1", "{}", &[]).await;
    target.wait_for(1, T).await.unwrap();
    let kv = h.js.get_key_value("fanout_health").await.unwrap();
    let snapshot = wait::until("a snapshot with the delivery", T, || async {
        let entry = kv
            .get("test.orders.api.test-pod")
            .await
            .map_err(|e| e.to_string())?;
        let bytes = entry.ok_or("no entry yet")?;
        let s: fanout_config::health::HealthSnapshot =
            serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if s.delivered == 1 {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await
    .unwrap();
    assert_eq!(snapshot.circuit, Circuit::Closed);
    assert!(snapshot.last_success_time.is_some());
    assert_eq!(snapshot.route, "orders");
}

#[tokio::test]
async fn metrics_count_deliveries_by_outcome() {
    let target = TargetServer::start().await.unwrap();
    target.script([Reply::Status(503)]);
    let manifests = api_target("api", &target.url("/"), "") + &route(&[("api", "")]);
    let h = Harness::start(&manifests, &[]).await;
    h.publish("evt-1", "{}", &[]).await;
    target.wait_for(2, T).await.unwrap();
    h.wait_settled("api", T).await;
    let text = h.metrics.encode();
    assert!(
        text.contains(
            r#"fanout_deliveries_total{route="test/orders",target="api",outcome="delivered"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"fanout_deliveries_total{route="test/orders",target="api",outcome="retried"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"fanout_delivery_failures_total{route="test/orders",target="api",reason="status_5xx"} 1"#), "{text}");
}

#[tokio::test]
async fn stopping_drains_in_flight_requests_and_returns_the_rest() {
    let target = TargetServer::start().await.unwrap();
    target.set_default(Reply::Delay(Duration::from_millis(500), 200));
    let manifests =
        api_target("api", &target.url("/"), "  maxInFlight: 2\n") + &route(&[("api", "")]);
    let mut h = Harness::start(&manifests, &[]).await;
    let sent: BTreeSet<String> = (0..10).map(|i| format!("evt-{i}")).collect();
    for id in &sent {
        h.publish(id, "{}", &[]).await;
    }
    target.wait_for(1, T).await.unwrap();
    h.stop_engine().await;
    // The requests in flight finished and were acknowledged; nothing is stuck.
    let (_, ack_pending) = h.consumer_backlog("api").await;
    assert_eq!(ack_pending, 0, "stop left unacknowledged events behind");
    let delivered_before_stop = target.count();
    assert!(delivered_before_stop < 10);

    target.set_default(Reply::Status(200));
    h.start_engine().await;
    wait_ids(&target, &sent).await;
    h.wait_settled("api", T).await;
}

#[tokio::test]
async fn readiness_names_a_target_whose_connection_is_down_until_it_is_back() {
    let target = TargetServer::start().await.unwrap();
    let manifests = api_target("api", &target.url("/"), "") + &route(&[("api", "")]);
    let mut h = Harness::start(&manifests, &[]).await;
    let readiness = h.engine.as_ref().unwrap().readiness();
    wait::until("the target's connection to be up", T, || async {
        readiness.check()
    })
    .await
    .unwrap();
    h.nats.kill();
    let why = wait::until("the target's connection to be down", T, || async {
        match readiness.check() {
            Err(why) => Ok(why),
            Ok(()) => Err("still ready".to_string()),
        }
    })
    .await
    .unwrap();
    assert_eq!(why, "target api is not connected to NATS");
    h.nats.restart().unwrap();
    wait::until("the target's connection to be back", T, || async {
        readiness.check()
    })
    .await
    .unwrap();
    // And it takes events again.
    h.publish("evt-1", "{}", &[]).await;
    target.wait_for(1, T).await.unwrap();
}
