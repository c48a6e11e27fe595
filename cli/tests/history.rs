//! The delivery history as a user reads it: events posted to the gateway of `fanout
//! standalone`, targets that fail, retry, refuse or filter, and then `fanout attempts`
//! and `fanout events` (table, wide, JSON, YAML) telling what happened at each target.

mod support;

use std::time::Duration;

use fanout_testkit::nats::NatsServer;
use fanout_testkit::target::{Reply, TargetServer};
use fanout_testkit::wait;
use support::standalone::Standalone;

const T: Duration = Duration::from_secs(30);
const ROUTE: &str = "orders";

fn manifests(crm: &str, mail: &str, billing: &str) -> String {
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
        "{}{}{}apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: {ROUTE}}}
spec:
  targets:
    - {{name: crm, apiTargetRef: {{name: crm}}}}
    - {{name: mail, apiTargetRef: {{name: mail}}, filter: {{headers: {{X-Event-Type: order.placed}}}}}}
    - {{name: billing, apiTargetRef: {{name: billing}}}}
  gateway: {{allowUnauthenticated: true}}
  history: {{retention: {{maxAge: 1h, maxBytes: 8388608}}}}
---
apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: audit}}
spec:
  targets:
    - {{name: crm, apiTargetRef: {{name: crm}}}}
  gateway: {{allowUnauthenticated: true}}
  history: {{enabled: false}}
",
        target("crm", crm),
        target("mail", mail),
        target("billing", billing),
    )
}

/// The rows of a table whose first column is `first`.
fn rows<'a>(table: &'a str, first: &str) -> Vec<Vec<&'a str>> {
    table
        .lines()
        .skip(1)
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|cells| cells.first() == Some(&first))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_of_a_retried_then_delivered_event_and_the_failed_ones_are_told() {
    let nats = NatsServer::start().unwrap();
    let crm = TargetServer::start().await.unwrap();
    let mail = TargetServer::start().await.unwrap();
    let billing = TargetServer::start().await.unwrap();
    // order-1: the CRM fails twice, then takes it. order-2: billing refuses it.
    crm.script_for_key("order-1", [Reply::Status(503), Reply::Status(503)]);
    billing.script_for_key("order-2", [Reply::StatusBody(400, "no such account")]);
    let yaml = manifests(
        &crm.url("/crm"),
        &mail.url("/mail"),
        &billing.url("/billing"),
    );
    let s = Standalone::start(&nats, "shop", &yaml).await;

    for (key, event_type) in [
        ("order-1", "order.placed"),
        ("order-2", "order.placed"),
        ("order-3", "order.updated"),
    ] {
        s.accept(
            ROUTE,
            &[
                ("Idempotency-Key", key),
                ("X-Event-Type", event_type),
                ("Authorization", "Bearer producer-secret-7"),
            ],
            r#"{"card": "4111-1111-1111-1111"}"#,
        )
        .await;
    }

    // What `fanout attempts` shows once the records are written (a few hundred ms
    // after the attempts: the history is written off the delivery path).
    let table = wait::until(
        "the third attempt of order-1 at the CRM in the history",
        T,
        || async {
            let table = s.try_cli(&["attempts", ROUTE, "order-1"])?;
            if rows(&table, "crm").len() == 3 && rows(&table, "mail").len() == 1 {
                Ok(table)
            } else {
                Err(table)
            }
        },
    )
    .await
    .unwrap();
    let crm_rows = rows(&table, "crm");
    assert_eq!(crm_rows[0][1], "1", "{table}");
    assert!(crm_rows[0][3].starts_with("retrying in"), "{table}");
    assert_eq!(crm_rows[0][4], "503", "{table}");
    assert_eq!(crm_rows[1][1], "2", "{table}");
    assert!(crm_rows[1][3].starts_with("retrying in"), "{table}");
    assert_eq!(
        (crm_rows[2][1], crm_rows[2][3], crm_rows[2][4]),
        ("3", "delivered", "200"),
        "{table}"
    );
    assert_eq!(rows(&table, "mail")[0][3], "delivered", "{table}");
    assert_eq!(rows(&table, "billing")[0][3], "delivered", "{table}");
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "TARGET", "ATTEMPT", "TIME", "OUTCOME", "STATUS", "LATENCY", "ERROR"
        ]
    );

    // The same as JSON, with `--route`; the trace id of each attempt is the one its
    // request carried.
    let text = s.cli(&[
        "attempts", "--route", ROUTE, "order-1", "--target", "crm", "-o", "json",
    ]);
    // What the event carried stays out of the history. (The whole card number: a
    // random trace id can hold "4111".)
    assert!(
        !text.contains("4111-1111-1111-1111") && !text.contains("producer-secret"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let attempts = json["attempts"].as_array().unwrap();
    let statuses: Vec<_> = attempts
        .iter()
        .map(|a| a["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [503, 503, 200], "{json}");
    let outcomes: Vec<_> = attempts
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["retrying", "retrying", "delivered"], "{json}");
    assert!(
        attempts
            .iter()
            .all(|a| a["target"] == "crm" && a["event"] == "order-1")
    );
    // Latencies to the microsecond, no more digits.
    assert!(
        attempts.iter().all(|a| a["latencyMs"]
            .as_f64()
            .is_some_and(|ms| ms > 0.0 && (ms * 1000.0 - (ms * 1000.0).round()).abs() < 1e-6)),
        "{json}"
    );
    let sent_traces: Vec<String> = crm
        .received()
        .iter()
        .filter(|r| r.header("idempotency-key") == Some("order-1"))
        .map(|r| r.header("traceparent").unwrap()[3..35].to_string())
        .collect();
    let recorded_traces: Vec<&str> = attempts
        .iter()
        .map(|a| a["traceId"].as_str().unwrap())
        .collect();
    assert_eq!(sent_traces, recorded_traces);

    // The refused event: an attempt that failed, then its dead letter.
    let refused = s.cli(&[
        "attempts", ROUTE, "order-2", "--target", "billing", "-o", "wide",
    ]);
    let billing_rows = rows(&refused, "billing");
    assert_eq!(billing_rows.len(), 2, "{refused}");
    assert_eq!(
        (billing_rows[0][3], billing_rows[0][4]),
        ("failed", "400"),
        "{refused}"
    );
    assert!(billing_rows[0][6].contains("no such account"), "{refused}");
    assert_eq!(billing_rows[1][3], "dead-lettered (permanent)", "{refused}");

    // `fanout events --failed`: the dead-lettered event, not the one that got through
    // after its retries.
    let failed = s.cli(&["events", ROUTE, "--failed", "--since", "10m"]);
    let failed_rows = rows(&failed, "order-2");
    assert_eq!(failed_rows.len(), 1, "{failed}");
    assert_eq!(failed_rows[0][1], "billing", "{failed}");
    assert_eq!(failed_rows[0][2], "dead-lettered (permanent)", "{failed}");
    assert!(rows(&failed, "order-1").is_empty(), "{failed}");
    assert!(rows(&failed, "order-3").is_empty(), "{failed}");
    let none = s.cli(&["events", ROUTE, "--failed", "--target", "crm"]);
    assert_eq!(
        none.trim(),
        "no failed events of route shop/orders in the last 1h"
    );

    // Every event at every target, as YAML: the e-mail target skipped the update.
    let all: serde_json::Value =
        serde_yaml_ng::from_str(&s.cli(&["events", ROUTE, "-o", "yaml"])).unwrap();
    let state = |event: &str, target: &str| {
        all["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event"] == event && e["target"] == target)
            .map(|e| {
                (
                    e["state"].as_str().unwrap().to_string(),
                    e["attempts"].as_u64().unwrap(),
                )
            })
            .unwrap_or_else(|| panic!("no {event} at {target} in {all}"))
    };
    assert_eq!(state("order-1", "crm"), ("delivered".to_string(), 3));
    assert_eq!(state("order-3", "mail"), ("filtered".to_string(), 0));
    assert_eq!(state("order-2", "billing"), ("deadLettered".to_string(), 1));

    // A route without history says so, naming the field.
    s.accept("audit", &[("Idempotency-Key", "a-1")], "{}").await;
    let error = s.try_cli(&["attempts", "audit", "a-1"]).unwrap_err();
    assert!(
        error.contains("route shop/audit has no delivery history")
            && error.contains("spec.history.enabled"),
        "{error}"
    );
    s.sigterm_exits_zero();
}
