//! `fanout dlq` against a real nats-server, with dead letters written by the real
//! `fanout dispatch`: list shows why each event was given up on, redrive delivers it
//! to its one target again with the same Idempotency-Key and empties the dead-letter
//! stream, and the route's other targets are not delivered twice.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use fanout_testkit::free_port;
use fanout_testkit::target::{Reply, TargetServer};
use fanout_testkit::wait;
use support::{ProvisionedRoute, run as fanout};

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_with_their_reason_and_redriven_to_their_target_only() {
    let api = TargetServer::start().await.unwrap();
    let audit = TargetServer::start().await.unwrap();
    api.set_default(Reply::StatusBody(400, "missing field customer"));
    let manifests = format!(
        "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: api}}
spec: {{url: '{}', timeout: 2s}}
---
apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: audit}}
spec: {{url: '{}', timeout: 2s}}
---
apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: orders}}
spec:
  targets:
    - {{name: api, apiTargetRef: {{name: api}}}}
    - {{name: audit, apiTargetRef: {{name: audit}}}}
",
        api.url("/in"),
        audit.url("/in")
    );
    let orders = ProvisionedRoute::new(&manifests).await;
    let _dispatcher = orders.dispatcher(free_port());

    let sent: BTreeSet<String> = (1..=3).map(|i| format!("evt-{i}")).collect();
    orders.publish(sent.iter().cloned()).await;
    audit.wait_for(3, T).await.unwrap();
    let nats_url = orders.nats.url();
    let route = ["-n", "test", "--route", "orders", "--nats-url", &nats_url];
    let listed = wait::until("three dead letters", T, || async {
        let text = fanout(&[&["dlq", "list"][..], &route[..]].concat());
        if text.lines().count() == 4 {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await
    .unwrap();
    for id in &sent {
        let line = listed.lines().find(|l| l.contains(id.as_str())).unwrap();
        assert!(line.contains("api"), "{line}");
        assert!(line.contains("permanent"), "{line}");
        assert!(line.contains("400"), "{line}");
        assert!(line.contains("missing field customer"), "{line}");
    }
    let first_attempts = api.keys();
    assert_eq!(first_attempts.len(), 3, "a 400 is not retried");

    // The cause is fixed; the dead letters go to `api` again, and only to it.
    api.set_default(Reply::Status(200));
    let out = fanout(&[&["dlq", "redrive", "--target", "api"][..], &route[..]].concat());
    assert!(out.contains("redriven 3 dead letter(s)"), "{out}");
    api.wait_for(6, T).await.unwrap();
    let redriven: BTreeSet<String> = api.keys()[3..].iter().cloned().collect();
    assert_eq!(
        redriven, sent,
        "the same Idempotency-Key as the first attempt"
    );
    assert_eq!(audit.count(), 3, "the other target is not delivered twice");
    let empty = fanout(&[&["dlq", "list"][..], &route[..]].concat());
    assert_eq!(
        empty.lines().count(),
        1,
        "only the header is left:\n{empty}"
    );
    let again = fanout(&[&["dlq", "redrive", "--target", "api"][..], &route[..]].concat());
    assert!(again.contains("redriven 0"), "{again}");
}
