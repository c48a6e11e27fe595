//! A route's CEL filter and transform as a user of the operator meets them:
//! `kubectl apply` of a route whose expression does not compile (the apiserver
//! cannot compile user CEL, so it takes it), then the route's condition and Event
//! naming the field, nothing provisioned; fixed, the route renders and the
//! dispatcher and gateway the operator configured filter and reshape events posted
//! over HTTP.

mod support;

use fanout_testkit::target::TargetServer;
use fanout_testkit::{http, wait};
use k8s_openapi::api::events::v1::Event;
use support::operator::{self, Env, T, target_yaml};

const REASON: &str = "InvalidExpression";

fn route(filter: &str) -> String {
    format!(
        "apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: orders}}
spec:
  targets:
    - name: crm
      apiTargetRef: {{name: crm}}
      filter:
        cel: '{filter}'
      transform:
        body: '{{\"order\": event.data.order, \"total\": event.data.total}}'
        headers:
          X-Tenant: 'event.headers[\"x-tenant\"] + \"-eu\"'
  gateway: {{allowUnauthenticated: true}}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_expression_is_reported_on_the_route_naming_the_field_until_fixed() {
    let env = Env::new("op-cel").await;
    let _operator = env.operator();
    let crm = TargetServer::start().await.unwrap();
    env.apply(&format!(
        "{}{}",
        target_yaml("crm", &crm.url("/orders"), ""),
        route("event.data.total >")
    ));

    let status = env
        .wait_condition("orders", "Ready", "False", Some(REASON))
        .await;
    let ready = operator::condition(&status.conditions, "Ready");
    assert!(
        ready
            .message
            .starts_with("targets[crm].filter.cel: syntax error: column 19"),
        "{}",
        ready.message
    );
    let events: Vec<Event> = wait::until("a Warning Event naming the field", T, || async {
        let events = env.events(REASON).await;
        if events.iter().any(|e| {
            e.type_.as_deref() == Some("Warning")
                && e.note
                    .as_deref()
                    .is_some_and(|n| n.contains("targets[crm].filter.cel"))
        }) {
            Ok(events)
        } else {
            Err(format!("{events:?}"))
        }
    })
    .await
    .unwrap();
    assert!(!events.is_empty());
    // Nothing half-applied: no stream, so no consumer delivers with a broken filter.
    assert!(env.consumers(&env.key("orders").stream()).await.is_err());

    // A typo in another field is named the same way.
    env.apply(&route("event.data.totl > 100 && evnt.type == \"x\""));
    let status = wait::until("the condition to name the new mistake", T, || async {
        let s = env.status("orders").await.ok_or("no status")?;
        let ready = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .ok_or("no Ready")?;
        if ready.message.contains("evnt") {
            Ok(ready.message.clone())
        } else {
            Err(ready.message.clone())
        }
    })
    .await
    .unwrap();
    assert!(
        status.starts_with("targets[crm].filter.cel: column 26 (evnt): \"evnt\" is not defined"),
        "{status}"
    );

    // Fixed: provisioned and rendered, and what the operator configured filters and
    // reshapes events sent through the gateway.
    env.apply(&route("event.data.total > 100"));
    env.wait_condition("orders", "StreamReady", "True", None)
        .await;
    let ready = env
        .status("orders")
        .await
        .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
        .unwrap();
    assert_ne!(ready.reason, REASON, "{ready:?}");
    let dir = tempfile::tempdir().unwrap();
    // The gateway stores the header the transform reads (once the operator has
    // written the fixed route's gateway entry).
    let (route_file, gateway_file) =
        operator::rendered_holding(&env, "orders", dir.path(), "x-tenant").await;
    let gateway_config = std::fs::read_to_string(&gateway_file).unwrap();
    assert!(
        gateway_config.contains(&env.key("orders").stream()),
        "{gateway_config}"
    );
    let (_gateway, gateway, _ops) = operator::gateway(&env, dir.path(), &gateway_file);
    let (_dispatcher, _) = operator::dispatcher(&env, dir.path(), &route_file, "orders-0");
    for (order, total) in [(1, 50), (2, 150)] {
        post(
            &env,
            &gateway,
            &format!(r#"{{"order": {order}, "total": {total}}}"#),
        )
        .await;
    }
    let got = crm.wait_for(1, T).await.unwrap().remove(0);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&got.body).unwrap(),
        serde_json::json!({"order": 2, "total": 150})
    );
    assert_eq!(got.header("x-tenant"), Some("acme-eu"));
    // The other event was filtered out, not waiting: everything settles with one
    // delivery.
    wait::until(
        "the route to report one delivery and nothing pending",
        T,
        || async {
            let s = env.status("orders").await.ok_or("no status")?;
            let t = s.targets.first().ok_or("no target")?;
            if t.delivered == 1 && t.pending == 0 && t.in_flight == 0 {
                Ok(())
            } else {
                Err(format!("{t:?}"))
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(crm.count(), 1);
}

/// Posts `body` to route `orders` through the gateway at `addr`, waiting for the
/// 202 (the gateway may not have loaded the route yet).
async fn post(env: &Env, addr: &str, body: &str) {
    let path = format!("/v1/namespaces/{}/routes/orders/events", env.ns.name);
    wait::until("the gateway to accept an event", T, || async {
        let r = http::post(
            addr,
            &path,
            &[("content-type", "application/json"), ("x-tenant", "acme")],
            body.as_bytes(),
        )
        .await?;
        if r.status == 202 {
            Ok(())
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    })
    .await
    .unwrap();
}
