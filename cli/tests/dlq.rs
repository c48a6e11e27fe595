//! `fanout dlq` against a real nats-server, with dead letters written by the real
//! `fanout dispatch`: list shows why each event was given up on, redrive delivers it
//! to its one target again with the same Idempotency-Key and empties the dead-letter
//! stream, and the route's other targets are not delivered twice.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use fanout_api::manifests::Manifests;
use fanout_provision::Provisioner;
use fanout_testkit::nats::NatsServer;
use fanout_testkit::target::{Reply, TargetServer};
use fanout_testkit::{free_port, wait};

const T: Duration = Duration::from_secs(30);

fn fanout(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fanout {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn keys(target: &TargetServer) -> Vec<String> {
    target
        .received()
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_string())
        .collect()
}

struct Dispatcher(Child);

impl Drop for Dispatcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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
    let dir = tempfile::tempdir().unwrap();
    let rendered = Manifests::parse(&manifests, "test")
        .unwrap()
        .render(dir.path())
        .unwrap()
        .remove(0);
    let nats = NatsServer::start().unwrap();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    Provisioner::new(js.clone())
        .apply(&rendered.streams)
        .await
        .unwrap();
    let config = dir.path().join("route.yaml");
    std::fs::write(&config, serde_yaml_ng::to_string(&rendered.config).unwrap()).unwrap();
    let nats_url = nats.url();
    let _dispatcher = Dispatcher(
        Command::new(env!("CARGO_BIN_EXE_fanout"))
            .arg("dispatch")
            .arg("--config")
            .arg(&config)
            .args(["--nats-url", &nats_url])
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let sent: BTreeSet<String> = (1..=3).map(|i| format!("evt-{i}")).collect();
    for id in &sent {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Fanout-Event-Id", id.as_str());
        js.publish_with_headers("fanout.in.test.orders.event", headers, "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    audit.wait_for(3, T).await.unwrap();
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
    let first_attempts = keys(&api);
    assert_eq!(first_attempts.len(), 3, "a 400 is not retried");

    // The cause is fixed; the dead letters go to `api` again, and only to it.
    api.set_default(Reply::Status(200));
    let out = fanout(&[&["dlq", "redrive", "--target", "api"][..], &route[..]].concat());
    assert!(out.contains("redriven 3 dead letter(s)"), "{out}");
    let received = api.wait_for(6, T).await.unwrap();
    let redriven: BTreeSet<String> = received[3..]
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_string())
        .collect();
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
