//! The egress policy through the front door: `fanout standalone` told to refuse
//! loopback, and `fanout dispatch` with its default policy, against real loopback
//! targets (the only addresses tests connect to). Events posted to the gateway or
//! published to NATS reach nothing, the status says why, and an allow entry lets
//! them through: the events kept meanwhile are delivered.
//!
//! Tests block on child processes, so they run on a multi-threaded runtime: the
//! targets must keep answering while the test thread waits.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream;
use fanout_config::health::{Circuit, HealthSnapshot};
use fanout_testkit::nats::NatsServer;
use fanout_testkit::target::TargetServer;
use fanout_testkit::{free_port, http, wait};
use support::ProvisionedRoute;
use support::standalone::Standalone;

const T: Duration = Duration::from_secs(30);
const ROUTE: &str = "orders";

/// `inventory` and `email` ApiTargets at these URLs, and route `orders` to both,
/// open to producers without a token.
fn manifests(inventory: &str, email: &str) -> String {
    let target = |name: &str, url: &str| {
        format!(
            "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: {name}}}
spec:
  url: {url}
  timeout: 2s
  retry: {{maxAttempts: 3, initialDelay: 50ms, maxDelay: 100ms}}
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
    - {{name: inventory, apiTargetRef: {{name: inventory}}}}
    - {{name: email, apiTargetRef: {{name: email}}}}
  gateway: {{allowUnauthenticated: true}}
",
        target("inventory", inventory),
        target("email", email)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_refuses_loopback_when_told_and_an_allow_entry_lets_the_kept_events_through() {
    let nats = NatsServer::start().unwrap();
    let inventory = TargetServer::start().await.unwrap();
    let email = TargetServer::start().await.unwrap();
    // `email` by name: only its DNS answer says loopback, so the check must come
    // after resolving.
    let yaml = manifests(
        &inventory.url("/reservations"),
        &email.url("/send").replace("127.0.0.1", "localhost"),
    );
    let s = Standalone::start_with(&nats.url(), "shop", &yaml, &["--egress-deny-loopback"]).await;
    let sent: BTreeSet<String> = ["order-1", "order-2"].map(String::from).into();
    for key in &sent {
        s.accept(ROUTE, &[("Idempotency-Key", key)], "{}").await;
    }

    for (name, why) in [
        (
            "inventory",
            "connection refused by egress policy: 127.0.0.1 is loopback (127.0.0.0/8); \
             refused by default: to allow it, add 127.0.0.0/8 to the egress allow list",
        ),
        (
            "email",
            "connection refused by egress policy: localhost resolves only to refused addresses: \
             127.0.0.1 is loopback (127.0.0.0/8)",
        ),
    ] {
        let t = wait::until(&format!("{name}'s refusal in /status"), T, || async {
            let t = s.target(ROUTE, name).await;
            let error = t["lastError"].as_str().unwrap_or("");
            // failed: an event tried, not only the check of the URL at start.
            if t["circuit"] == "Open" && error.starts_with(why) && t["failed"].as_u64() >= Some(1) {
                Ok(t)
            } else {
                Err(t.to_string())
            }
        })
        .await
        .unwrap();
        assert_eq!(t["delivered"], 0, "{t}");
        assert_eq!(t["deadLettered"], 0, "kept, not dead-lettered: {t}");
    }
    assert_eq!(inventory.connections(), 0, "not even a connection");
    assert_eq!(email.connections(), 0, "not even a connection");
    let metrics = s.get("/metrics").await;
    assert!(
        metrics.contains(
            r#"fanout_delivery_failures_total{route="shop/orders",target="inventory",reason="egress"}"#
        ),
        "{metrics}"
    );
    assert!(
        s.process
            .log()
            .contains("the egress policy refuses the target's address"),
        "{}",
        s.process.log()
    );
    s.sigterm_exits_zero();

    // Allowed by an entry: the events accepted while refused are delivered.
    let s = Standalone::start_with(
        &nats.url(),
        "shop",
        &yaml,
        &["--egress-deny-loopback", "--egress-allow", "127.0.0.1"],
    )
    .await;
    assert_eq!(inventory.wait_for_keys(&sent, T).await.unwrap(), sent);
    assert_eq!(email.wait_for_keys(&sent, T).await.unwrap(), sent);
    let status = wait::until("every delivery settled", T, || async {
        let status = s.status().await;
        if status["settled"] == true {
            Ok(status)
        } else {
            Err(status.to_string())
        }
    })
    .await
    .unwrap();
    for name in ["inventory", "email"] {
        let t = support::standalone::find_target(&status, ROUTE, name);
        assert_eq!(t["circuit"], "Closed", "{t}");
        assert_eq!(t["deadLettered"], 0, "{t}");
    }
    s.sigterm_exits_zero();
}

/// Route `orders` (namespace `test`) to one ApiTarget at `url`, provisioned.
async fn route_to(url: &str) -> ProvisionedRoute {
    ProvisionedRoute::new(&format!(
        "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: api}}
spec:
  url: {url}
  timeout: 2s
  retry: {{maxAttempts: 3, initialDelay: 50ms, maxDelay: 100ms}}
---
apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: {ROUTE}}}
spec:
  targets: [{{name: api, apiTargetRef: {{name: api}}}}]
"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_dispatch_refuses_loopback_by_default_and_reports_it_for_the_status() {
    let target = TargetServer::start().await.unwrap();
    let setup = route_to(&target.url("/")).await;
    setup.publish(["evt-1".to_string()]).await;
    let port = free_port();
    // No egress flag: a dispatcher pod's defaults.
    let mut dispatcher = setup.dispatcher_with(port, &[]);
    let addr = format!("127.0.0.1:{port}");
    wait::until("the refusal in /metrics", T, || async {
        let body = http::get(&addr, "/metrics").await?.body;
        let refused =
            r#"fanout_delivery_failures_total{route="test/orders",target="api",reason="egress"} 1"#;
        let open = r#"fanout_circuit_state{route="test/orders",target="api"} 2"#;
        if body.contains(refused) && body.contains(open) {
            Ok(())
        } else {
            Err(body)
        }
    })
    .await
    .unwrap();
    // The health snapshot the operator turns into the route's and the ApiTarget's
    // status.
    let kv = jetstream::new(async_nats::connect(setup.nats.url()).await.unwrap())
        .get_key_value("fanout_health")
        .await
        .unwrap();
    let snapshot: HealthSnapshot = wait::until("the refusal in the health snapshot", T, || async {
        let entry = kv
            .get("test.orders.api.test-pod")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no snapshot")?;
        let s: HealthSnapshot = serde_json::from_slice(&entry).map_err(|e| e.to_string())?;
        if s.last_error.is_some() && s.failed >= 1 {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await
    .unwrap();
    assert_eq!(snapshot.circuit, Circuit::Open);
    assert!(
        snapshot.last_error.as_deref().unwrap().starts_with(
            "connection refused by egress policy: 127.0.0.1 is loopback (127.0.0.0/8)"
        ),
        "{snapshot:?}"
    );
    assert_eq!(target.connections(), 0);
    let log = dispatcher.log();
    assert!(
        log.contains("refusing loopback, unspecified, link-local"),
        "{log}"
    );
    assert!(dispatcher.terminate(T).unwrap().success());

    // An allow entry: the event kept meanwhile is delivered.
    let mut allowed = setup.dispatcher_with(free_port(), &["--egress-allow", "127.0.0.0/8"]);
    let sent = BTreeSet::from(["evt-1".to_string()]);
    assert_eq!(target.wait_for_keys(&sent, T).await.unwrap(), sent);
    assert!(allowed.terminate(T).unwrap().success());
}

#[test]
fn a_bad_egress_entry_fails_the_start_naming_the_flag() {
    for (flag, value, why) in [
        (
            "--egress-allow",
            "*.example.com",
            "wildcards are not supported",
        ),
        ("--egress-deny", "10.1.0.0/8", "did you mean 10.0.0.0/8"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_fanout"))
            .args(["dispatch", "--config", "/nonexistent", flag, value])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag) && stderr.contains(why), "{stderr}");
    }
}
