//! `fanout standalone` as a process, against a real nats-server and real loopback
//! targets: events posted to its gateway reach every target, `/status` reports the
//! counts and circuits, bad manifests fail before anything starts, SIGTERM exits 0.
//!
//! Tests block on child processes, so they run on a multi-threaded runtime: the
//! scripted targets must keep answering while the test thread waits.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use fanout_testkit::nats::NatsServer;
use fanout_testkit::process::Spawned;
use fanout_testkit::target::{Reply, TargetServer};
use fanout_testkit::{free_port, wait};
use support::standalone::{Standalone, command, find_target};

const T: Duration = Duration::from_secs(30);
const TOKEN: &str = "test-ingest-token";

/// Route `orders` in namespace `test`, delivering to `a` and `b`; producers need the
/// bearer token from the Secret `ingest`.
fn manifests(a: &str, b: &str) -> String {
    format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: ingest}}
stringData: {{token: {TOKEN}}}
---
apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: a}}
spec:
  url: {a}
  timeout: 2s
  retry: {{maxAttempts: 50, initialDelay: 50ms, maxDelay: 200ms}}
---
apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: b}}
spec:
  url: {b}
  timeout: 2s
  retry: {{maxAttempts: 50, initialDelay: 50ms, maxDelay: 200ms}}
  circuitBreaker: {{failureRatio: 0.5, minimumRequests: 4, window: 30s, openDuration: 2s, halfOpenProbes: 1}}
---
apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: orders}}
spec:
  targets:
    - {{name: a, apiTargetRef: {{name: a}}}}
    - {{name: b, apiTargetRef: {{name: b}}}}
  gateway:
    bearerTokens: [{{name: ingest, key: token}}]
"
    )
}

/// Posts order `id` with the route's token.
async fn post_order(s: &Standalone, id: &str) {
    let auth = format!("Bearer {TOKEN}");
    s.accept(
        "orders",
        &[
            ("Authorization", &auth),
            ("Idempotency-Key", id),
            ("Content-Type", "application/json"),
        ],
        "{\"order\": 1}",
    )
    .await;
}

/// Target `name` of the route in a `/status` answer.
fn target<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    find_target(status, "orders", name)
}

/// `/readyz` on the status address is what a user or a script waits for: from its
/// first 200 on, an event posted at once is stored, also when NATS comes back after a
/// restart (the gateway's shards reconnect on their own connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_means_an_event_posted_at_once_is_stored_also_after_nats_restarts() {
    let mut nats = NatsServer::start().unwrap();
    let a = TargetServer::start().await.unwrap();
    let b = TargetServer::start().await.unwrap();
    let s = Standalone::spawn(&nats, "test", &manifests(&a.url("/a"), &b.url("/b")));
    s.wait_ready().await;
    post_order(&s, "first").await;

    nats.kill();
    wait::until("not ready while NATS is down", T, || async {
        match fanout_testkit::http::get(&s.status, "/readyz").await {
            Ok(r) if r.status == 503 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    nats.restart().unwrap();
    s.wait_ready().await;
    post_order(&s, "second").await;

    let sent = BTreeSet::from(["first".to_string(), "second".to_string()]);
    a.wait_for_keys(&sent, T).await.unwrap();
    b.wait_for_keys(&sent, T).await.unwrap();
    s.sigterm_exits_zero();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_both_targets_and_status_counts_them() {
    let nats = NatsServer::start().unwrap();
    let a = TargetServer::start().await.unwrap();
    let b = TargetServer::start().await.unwrap();
    let s = Standalone::start(&nats, "test", &manifests(&a.url("/a"), &b.url("/b"))).await;

    let sent: BTreeSet<String> = (0..25).map(|i| format!("order-{i}")).collect();
    for id in &sent {
        post_order(&s, id).await;
    }
    a.wait_for_keys(&sent, T).await.unwrap();
    b.wait_for_keys(&sent, T).await.unwrap();

    let status = wait::until(
        "status to report 25 deliveries per target, settled",
        T,
        || async {
            let status = s.status().await;
            let delivered = |t| target(&status, t)["delivered"].as_u64();
            if status["settled"] == true && delivered("a") == Some(25) && delivered("b") == Some(25)
            {
                Ok(status)
            } else {
                Err(status.to_string())
            }
        },
    )
    .await
    .unwrap();
    for name in ["a", "b"] {
        let t = target(&status, name);
        assert_eq!(t["circuit"], "Closed");
        assert_eq!(
            (t["pending"].as_u64(), t["deadLettered"].as_u64()),
            (Some(0), Some(0))
        );
    }
    assert_eq!(status["routes"][0]["stream"]["messages"], 25);

    let table = s.get("/status.txt").await;
    let line = table.lines().find(|l| l.contains(" a ")).expect(&table);
    assert!(
        line.split_whitespace().collect::<Vec<_>>()[..4] == ["test/orders", "a", "Closed", "25"],
        "{table}"
    );

    // One scrape on the status address has the dispatchers' metrics and the
    // gateway's; the gateway's own address serves events only.
    let metrics = s.get("/metrics").await;
    assert!(
        metrics
            .contains(r#"fanout_gateway_events_total{route="test/orders",outcome="accepted"} 25"#),
        "{metrics}"
    );
    assert!(metrics.contains("fanout_deliveries_total"), "{metrics}");
    assert_eq!(metrics.matches("# EOF").count(), 1, "{metrics}");
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    for path in ["/metrics", "/readyz"] {
        let r = fanout_testkit::http::get(&s.gateway, path).await.unwrap();
        assert_eq!(r.status, 404, "{path} on the gateway's address: {}", r.body);
    }
    s.sigterm_exits_zero();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_opens_its_circuit_while_the_other_delivers_then_closes_it_and_catches_up()
{
    let nats = NatsServer::start().unwrap();
    let a = TargetServer::start().await.unwrap();
    let b = TargetServer::start().await.unwrap();
    b.set_default(Reply::Status(503));
    let s = Standalone::start(&nats, "test", &manifests(&a.url("/a"), &b.url("/b"))).await;

    let sent: BTreeSet<String> = (0..10).map(|i| format!("order-{i}")).collect();
    for id in &sent {
        post_order(&s, id).await;
    }
    a.wait_for_keys(&sent, T).await.unwrap();
    let status = wait::until("b's circuit to show as Open", T, || async {
        let status = s.status().await;
        if target(&status, "b")["circuit"] == "Open" && target(&status, "a")["delivered"] == 10 {
            Ok(status)
        } else {
            Err(status.to_string())
        }
    })
    .await
    .unwrap();
    let b_status = target(&status, "b");
    assert_eq!(b_status["delivered"], 0);
    assert!(b_status["failed"].as_u64() >= Some(4), "{b_status}");
    assert_eq!(b_status["lastError"], "HTTP 503");
    assert_eq!(
        b_status["deadLettered"], 0,
        "an open circuit keeps the backlog"
    );
    assert_eq!(target(&status, "a")["circuit"], "Closed");
    assert_eq!(status["settled"], false, "b still has events to deliver");

    // b answers again: a half-open probe closes the circuit and the backlog drains.
    b.set_default(Reply::Status(200));
    b.wait_for_keys(&sent, T).await.unwrap();
    wait::until("b's circuit Closed and everything settled", T, || async {
        let status = s.status().await;
        if target(&status, "b")["circuit"] == "Closed" && status["settled"] == true {
            Ok(())
        } else {
            Err(status.to_string())
        }
    })
    .await
    .unwrap();
    let status = s.status().await;
    assert_eq!(target(&status, "b")["delivered"], 10);
    assert_eq!(
        target(&status, "b")["deadLettered"],
        0,
        "nothing was given up on"
    );
    s.sigterm_exits_zero();
}

/// Runs standalone on `manifests`, expecting it to refuse them; its stderr.
fn run_to_exit(manifests: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("orders.yaml"), manifests).unwrap();
    // Nothing listens on this port: a refusal must come before connecting to NATS.
    let unused = format!("nats://127.0.0.1:{}", free_port());
    let mut process = Spawned::start(
        command(dir.path(), "test", &unused),
        &dir.path().join("standalone.log"),
    )
    .unwrap();
    assert!(!process.wait(T).unwrap().success());
    process.log()
}

#[test]
fn bad_manifests_fail_before_starting_naming_the_document_and_field() {
    let good = manifests("http://127.0.0.1:1/a", "http://127.0.0.1:1/b");

    let misspelt = good.replace("  timeout: 2s\n  retry:", "  timeout: 2s\n  retries:");
    let stderr = run_to_exit(&misspelt);
    assert!(
        stderr.contains("orders.yaml: document 2 (ApiTarget a) is invalid:\nstrict decoding error: unknown field \"spec.retries\""),
        "{stderr}"
    );

    let no_secret = good.replace("name: ingest, key: token", "name: ingest, key: other");
    let stderr = run_to_exit(&no_secret);
    assert!(
        stderr.contains(
            "FanOutRoute test/orders: spec.gateway.bearerTokens: Secret test/ingest has no key \"other\""
        ),
        "{stderr}"
    );

    let bad_url = good.replace("url: http://127.0.0.1:1/b", "url: ftp://127.0.0.1:1/b");
    let stderr = run_to_exit(&bad_url);
    assert!(
        stderr.contains("(ApiTarget b) is invalid:\n* spec.url: Invalid value: \"string\": url must be an absolute http:// or https:// URL with a host"),
        "{stderr}"
    );
    assert!(!stderr.contains(TOKEN), "no secret values in the output");
}

/// Every file below `dir`, relative to it, sorted.
fn files_below(dir: &std::path::Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path.clone());
            }
            found.insert(path.strip_prefix(dir).unwrap().display().to_string());
        }
    }
    found
}

/// A Secret name or key with `../` would make standalone write the value outside its
/// state directory (`<state>/secrets/<name>/<key>`): it refuses them at start, naming
/// the document and field, before writing anything.
#[test]
fn secret_names_and_keys_that_leave_the_state_dir_are_refused_before_writing() {
    let good = manifests("http://127.0.0.1:1/a", "http://127.0.0.1:1/b");
    let cases = [
        (
            // The route's token is under a key that climbs out of secrets/ingest/.
            good.replace(
                "stringData: {token: ",
                "stringData: {../../../escaped: x, token: ",
            ),
            "orders.yaml: document 1 (Secret ingest): stringData: key \"../../../escaped\" must consist of letters, digits, '-', '_' or '.'",
        ),
        (
            good.replace(
                "metadata: {name: ingest}",
                "metadata: {name: ../../../escaped}",
            ),
            "orders.yaml: document 1 (Secret ../../../escaped): metadata.name: must be a DNS subdomain",
        ),
    ];
    for (manifests, named) in cases {
        let dir = tempfile::tempdir().unwrap();
        // manifests/, the state dir in sandbox/state; anything escaping it lands in
        // sandbox/ or dir/.
        let files = dir.path().join("manifests");
        let sandbox = dir.path().join("sandbox");
        std::fs::create_dir_all(&files).unwrap();
        std::fs::create_dir_all(&sandbox).unwrap();
        std::fs::write(files.join("orders.yaml"), &manifests).unwrap();
        let before = files_below(dir.path());
        let unused = format!("nats://127.0.0.1:{}", free_port());
        let mut command = command(&files, "test", &unused);
        command.arg("--state-dir").arg(sandbox.join("state"));
        let mut process = Spawned::start(command, &dir.path().join("standalone.log")).unwrap();
        assert!(!process.wait(T).unwrap().success(), "{}", process.log());
        let stderr = process.log();
        let mut after = files_below(dir.path());
        after.remove("standalone.log");
        assert_eq!(after, before, "standalone wrote files:\n{stderr}");
        assert!(stderr.contains(named), "{stderr}");
    }
}

/// A stream JetStream refuses (another stream already takes the route's subjects) is
/// not waited for like a cluster that is not ready: the start stops at once, well
/// within `--jetstream-wait`, saying which route and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_jetstream_refuses_stops_the_start_at_once_with_the_reason() {
    let nats = NatsServer::start().unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    async_nats::jetstream::new(client)
        .create_stream(async_nats::jetstream::stream::Config {
            name: "someone_elses".into(),
            subjects: vec!["fanout.in.test.orders.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let good = manifests("http://127.0.0.1:1/a", "http://127.0.0.1:1/b");
    let mut standalone = Standalone::spawn(&nats, "test", &good);
    let exit = tokio::task::block_in_place(|| standalone.process.wait(T)).unwrap();
    assert!(!exit.success());
    let log = standalone.process.log();
    assert!(
        log.contains("provisioning route test/orders") && log.contains("subjects overlap"),
        "{log}"
    );
    assert!(!log.contains("JetStream is not ready"), "{log}");
}
