//! A target whose address the egress policy refuses, in the engine against a real
//! nats-server and a real loopback target: nothing reaches it, its events wait
//! without using attempts or going to the dead-letter stream, its snapshot says why,
//! and they are delivered once a policy allows it, or dead-lettered as expired with
//! the refusal if the stream's retention runs out first.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use common::{Harness, header};
use fanout_config::egress::EgressPolicy;
use fanout_config::health::Circuit;
use fanout_testkit::target::TargetServer;
use fanout_testkit::wait;

const T: Duration = Duration::from_secs(20);

fn manifests(url: &str, source: &str) -> String {
    format!(
        "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: api}}
spec:
  url: {url}
  timeout: 2s
  maxInFlight: 2
  retry: {{maxAttempts: 2, initialDelay: 50ms, maxDelay: 100ms, jitter: none}}
---
apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: orders}}
spec:
{source}  targets: [{{name: api, apiTargetRef: {{name: api}}}}]
"
    )
}

const REFUSAL: &str = "connection refused by egress policy: 127.0.0.1 is loopback (127.0.0.0/8)";

#[tokio::test]
async fn a_refused_target_keeps_its_events_without_using_attempts_until_allowed() {
    let target = TargetServer::start().await.unwrap();
    let mut h = Harness::provisioned(&manifests(&target.url("/"), ""), &[]).await;
    // A pod's policy: loopback refused.
    h.start_engine_with(EgressPolicy::default()).await;
    // Known from the URL alone: reported before any event.
    let s = h.snapshot("api");
    assert_eq!(s.circuit, Circuit::Open);
    assert!(
        s.last_error.as_deref().unwrap_or("").starts_with(REFUSAL),
        "{s:?}"
    );

    let sent: BTreeSet<String> = (0..5).map(|i| format!("evt-{i}")).collect();
    for id in &sent {
        h.publish(id, "{}", &[]).await;
    }
    // maxInFlight events wait in hand, the rest in the stream.
    wait::until("2 events held, 3 in the stream", T, || async {
        match h.consumer_backlog("api").await {
            (3, 2) => Ok(()),
            other => Err(format!("(pending, ack pending) = {other:?}")),
        }
    })
    .await
    .unwrap();
    // One event checks the address; the other waits for the next check.
    let s = h
        .wait_snapshot("api", "a refused attempt", T, |s| s.failed >= 1)
        .await;
    assert_eq!(s.circuit, Circuit::Open);
    assert_eq!(
        (s.delivered, s.dead_lettered, s.in_flight),
        (0, 0, 0),
        "{s:?}"
    );
    assert!(
        s.last_error.as_deref().unwrap_or("").starts_with(REFUSAL),
        "{s:?}"
    );
    // Held long past what two attempts at 50-100 ms would take: neither retried
    // through JetStream (each would count) nor dead-lettered as exhausted.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stream = h.js.get_stream(&h.config.stream).await.unwrap();
    let mut consumer: PullConsumer = stream.get_consumer("api").await.unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(info.num_redelivered, 0, "no attempt was used up: {info:?}");
    assert!(h.dead_letters().await.is_empty());
    assert_eq!(target.connections(), 0, "nothing reached the target");
    let metrics = h.metrics.encode();
    assert!(
        metrics.contains(
            r#"fanout_delivery_failures_total{route="test/orders",target="api",reason="egress"}"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"fanout_circuit_state{route="test/orders",target="api"} 2"#),
        "{metrics}"
    );

    // The platform allows loopback: the restarted engine delivers the backlog.
    h.stop_engine().await;
    h.start_engine().await;
    let got = target.wait_for_keys(&sent, T).await.unwrap();
    assert_eq!(got, sent);
    h.wait_settled("api", T).await;
    assert_eq!(h.snapshot("api").circuit, Circuit::Closed);
    assert!(h.dead_letters().await.is_empty());
}

#[tokio::test]
async fn events_still_refused_at_the_end_of_retention_are_dead_lettered_as_expired() {
    let target = TargetServer::start().await.unwrap();
    let source = "  source: {retention: {maxAge: 6s}, duplicateWindow: 1s}\n";
    let mut h = Harness::provisioned(&manifests(&target.url("/"), source), &[]).await;
    h.start_engine_with(EgressPolicy::default()).await;
    for id in ["evt-1", "evt-2", "evt-3"] {
        h.publish(id, "{}", &[]).await;
    }
    let letters = wait::until("three dead letters", T, || async {
        let letters = h.dead_letters().await;
        if letters.len() == 3 {
            Ok(letters)
        } else {
            Err(format!("{} dead letters", letters.len()))
        }
    })
    .await
    .unwrap();
    for letter in &letters {
        assert_eq!(header(letter, "Fanout-Reason"), Some("expired"));
        let error = header(letter, "Fanout-Last-Error").unwrap_or("");
        assert!(
            error.contains("not delivered within the stream's retention"),
            "{error}"
        );
        // Held in hand or waiting in the stream, each says why it waited.
        assert!(error.contains(REFUSAL), "{error}");
    }
    assert_eq!(target.connections(), 0);
}
