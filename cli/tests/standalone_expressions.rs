//! CEL filters and transforms on route targets, through the front door: manifests
//! with `filter.cel` and `transform` given to `fanout standalone`, events posted to
//! its gateway as producers post them (plain JSON, binary and structured
//! CloudEvents), and what each loopback target received, `/status`, `/metrics` and
//! `fanout dlq list` checked. Wrong expressions stop standalone before it starts,
//! naming the field.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use fanout_testkit::nats::NatsServer;
use fanout_testkit::process::Spawned;
use fanout_testkit::target::TargetServer;
use fanout_testkit::{free_port, wait, webhooks};
use support::standalone::{Standalone, command, find_target};

const T: Duration = Duration::from_secs(30);
const TOKEN: &str = "expressions-ingest-token";
const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn api_target(name: &str, url: &str, extra: &str) -> String {
    format!(
        "---
apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: {name}}}
spec:
  url: {url}
  timeout: 2s
  retry: {{maxAttempts: 3, initialDelay: 50ms, maxDelay: 200ms}}
{extra}"
    )
}

/// Route `orders` with these targets (YAML list items), producers holding `TOKEN`.
fn route(targets: &str) -> String {
    format!(
        "---
apiVersion: v1
kind: Secret
metadata: {{name: ingest}}
stringData: {{token: {TOKEN}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: crm-signing}}
stringData: {{secret: {SIGNING_SECRET}}}
---
apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: orders}}
spec:
  targets:
{targets}  gateway:
    bearerTokens: [{{name: ingest, key: token}}]
"
    )
}

/// Posts `body` with the route's token, `id` as its Idempotency-Key, and `headers`.
async fn post(s: &Standalone, id: &str, headers: &[(&str, &str)], body: &str) {
    let auth = format!("Bearer {TOKEN}");
    let mut all = vec![("Authorization", auth.as_str()), ("Idempotency-Key", id)];
    all.extend_from_slice(headers);
    s.accept("orders", &all, body).await;
}

/// A binary-mode CloudEvent of `kind` with a JSON body.
async fn post_cloudevent(s: &Standalone, id: &str, kind: &str, body: &str) {
    post(
        s,
        id,
        &[
            ("Content-Type", "application/json"),
            ("ce-specversion", "1.0"),
            ("ce-id", id),
            ("ce-source", "/shop"),
            ("ce-type", kind),
        ],
        body,
    )
    .await;
}

fn keys(target: &TargetServer) -> BTreeSet<String> {
    target.distinct_keys()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// Waits until the route's every event is settled for every target.
async fn settled(s: &Standalone) -> serde_json::Value {
    wait::until("every delivery settled", T, || async {
        let status = s.status().await;
        if status["settled"] == true {
            Ok(status)
        } else {
            Err(status.to_string())
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_targets_get_only_the_events_that_match_by_body_and_by_type() {
    let nats = NatsServer::start().unwrap();
    let big = TargetServer::start().await.unwrap();
    let placed = TargetServer::start().await.unwrap();
    let both = TargetServer::start().await.unwrap();
    let all = TargetServer::start().await.unwrap();
    let manifests = [
        api_target("big", &big.url("/big"), ""),
        api_target("placed", &placed.url("/placed"), ""),
        api_target("both", &both.url("/both"), ""),
        api_target("all", &all.url("/all"), ""),
        route(
            "    - name: big
      apiTargetRef: {name: big}
      filter: {cel: 'event.data.total > 100'}
    - name: placed
      apiTargetRef: {name: placed}
      filter:
        cel: event.type == \"order.placed\"
    - name: both
      apiTargetRef: {name: both}
      filter:
        cel: event.data.total > 100 && event.type == \"order.placed\"
    - name: all
      apiTargetRef: {name: all}
",
        ),
    ]
    .concat();
    let s = Standalone::start(&nats, "test", &manifests).await;

    post_cloudevent(&s, "placed-150", "order.placed", r#"{"total": 150}"#).await;
    post_cloudevent(&s, "placed-50", "order.placed", r#"{"total": 50}"#).await;
    post_cloudevent(
        &s,
        "cancelled-500",
        "order.cancelled",
        r#"{"total": 500.5}"#,
    )
    .await;
    // Not a CloudEvent: its type is "".
    post(
        &s,
        "plain-200",
        &[("Content-Type", "application/json")],
        r#"{"total": 200}"#,
    )
    .await;
    // Structured mode: type and data from the envelope.
    post(
        &s,
        "structured-300",
        &[("Content-Type", "application/cloudevents+json")],
        r#"{"specversion": "1.0", "id": "structured-300", "source": "/shop", "type": "order.placed", "data": {"total": 300}}"#,
    )
    .await;

    let every = set(&[
        "placed-150",
        "placed-50",
        "cancelled-500",
        "plain-200",
        "structured-300",
    ]);
    all.wait_for_keys(&every, T).await.unwrap();
    let status = settled(&s).await;
    assert_eq!(
        keys(&big),
        set(&["placed-150", "cancelled-500", "plain-200", "structured-300"])
    );
    assert_eq!(
        keys(&placed),
        set(&["placed-150", "placed-50", "structured-300"])
    );
    assert_eq!(keys(&both), set(&["placed-150", "structured-300"]));
    for name in ["big", "placed", "both", "all"] {
        let t = find_target(&status, "orders", name);
        assert_eq!(t["deadLettered"], 0, "{name}: {t}");
        assert_eq!(t["lastError"], serde_json::Value::Null, "{name}: {t}");
    }
    // The filtered-out events are counted, not lost.
    let metrics = s.get("/metrics").await;
    for (target, filtered) in [("big", 1), ("placed", 2), ("both", 3)] {
        let line = format!(
            r#"fanout_deliveries_total{{route="test/orders",target="{target}",outcome="filtered"}} {filtered}"#
        );
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    s.sigterm_exits_zero();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transformed_target_gets_the_reshaped_body_and_computed_headers_signed() {
    let nats = NatsServer::start().unwrap();
    let crm = TargetServer::start().await.unwrap();
    let raw = TargetServer::start().await.unwrap();
    let manifests = [
        api_target(
            "crm",
            &crm.url("/orders"),
            "  auth:\n    signing: {secretRef: {name: crm-signing, key: secret}}\n",
        ),
        api_target("raw", &raw.url("/raw"), ""),
        route(
            "    - name: crm
      apiTargetRef: {name: crm}
      filter:
        cel: event.data.customer.tier == 'gold' && event.data.items.exists(i, i.qty > 1)
      transform:
        body: |
          {\"order\": event.data.id, \"amount\": event.data.total,
           \"tenant\": event.headers[\"x-tenant\"],
           \"skus\": event.data.items.map(i, i.sku),
           \"gifts\": event.data.items.filter(i, has(i.note))}
        headers:
          X-Order-Total: string(event.data.total)
          X-Event-Type: event.type
          X-Coupon: 'has(event.data.coupon) ? event.data.coupon : null'
          X-Tenant: event.headers['x-tenant'] + '-eu'
    - name: raw
      apiTargetRef: {name: raw}
",
        ),
    ]
    .concat();
    let s = Standalone::start(&nats, "test", &manifests).await;
    // Of a JSON body, only what the expressions read is built (the SKUs, a customer's
    // tier): an item the transform keeps whole still arrives whole.
    let body = r#"{"id": "o-1", "total": 99.5, "items": [{"sku": "a-1", "qty": 2, "price": 9.5, "note": "gift"}, {"sku": "b-2", "qty": 1}], "customer": {"id": "c-7", "tier": "gold"}}"#;
    post(
        &s,
        "order-1",
        &[
            ("Content-Type", "application/json"),
            ("ce-specversion", "1.0"),
            ("ce-id", "order-1"),
            ("ce-source", "/shop"),
            ("ce-type", "order.placed"),
            // Not in the gateway's --forward-headers: stored because the transform
            // names it.
            ("X-Tenant", "acme"),
        ],
        body,
    )
    .await;

    let got = crm.wait_for(1, T).await.unwrap().remove(0);
    let json: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "order": "o-1", "amount": 99.5, "tenant": "acme", "skus": ["a-1", "b-2"],
            "gifts": [{"sku": "a-1", "qty": 2, "price": 9.5, "note": "gift"}]
        })
    );
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("x-order-total"), Some("99.5"));
    assert_eq!(got.header("x-event-type"), Some("order.placed"));
    assert_eq!(got.header("x-coupon"), None, "null leaves the header out");
    // A computed header replaces the event's own of that name: sent once.
    let tenants: Vec<&str> = got
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-tenant"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(tenants, ["acme-eu"]);
    assert_eq!(got.header("idempotency-key"), Some("order-1"));
    assert_eq!(got.header("ce-type"), Some("order.placed"));
    // The signature covers what the target received, by the official verifier.
    let verdicts = webhooks::verify(SIGNING_SECRET, std::slice::from_ref(&got)).unwrap();
    assert!(verdicts.iter().all(Result::is_ok), "{verdicts:?}");

    // The target without a transform gets the event as it was posted.
    let original = raw.wait_for(1, T).await.unwrap().remove(0);
    assert_eq!(&original.body[..], body.as_bytes());
    assert_eq!(original.header("x-tenant"), Some("acme"));
    assert_eq!(original.header("x-order-total"), None);
    s.sigterm_exits_zero();
}

/// The documented rule: an event an expression cannot be evaluated on (a missing
/// field, a body that is not JSON) is dead-lettered for that target with reason
/// `filter` or `transform` and the error, counted and shown in `/status`; the
/// route's other targets get it as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_expressions_cannot_evaluate_are_dead_lettered_with_the_reason() {
    let nats = NatsServer::start().unwrap();
    let big = TargetServer::start().await.unwrap();
    let crm = TargetServer::start().await.unwrap();
    let all = TargetServer::start().await.unwrap();
    let manifests = [
        api_target("big", &big.url("/big"), ""),
        api_target("crm", &crm.url("/crm"), ""),
        api_target("all", &all.url("/all"), ""),
        route(
            "    - name: big
      apiTargetRef: {name: big}
      filter: {cel: 'event.data.total > 100'}
    - name: crm
      apiTargetRef: {name: crm}
      transform: {body: '{\"order\": event.data.id}'}
    - name: all
      apiTargetRef: {name: all}
",
        ),
    ]
    .concat();
    let s = Standalone::start(&nats, "test", &manifests).await;
    let json = [("Content-Type", "application/json")];
    post(&s, "good", &json, r#"{"id": "o-1", "total": 500}"#).await;
    post(&s, "no-total", &json, r#"{"id": "o-2"}"#).await;
    post(&s, "no-id", &json, r#"{"total": 5}"#).await;
    post(&s, "not-json", &[("Content-Type", "text/plain")], "hello").await;

    all.wait_for_keys(&set(&["good", "no-total", "no-id", "not-json"]), T)
        .await
        .unwrap();
    let status = settled(&s).await;
    assert_eq!(keys(&big), set(&["good"]));
    assert_eq!(keys(&crm), set(&["good", "no-total"]));
    let big_status = find_target(&status, "orders", "big");
    assert_eq!(big_status["deadLettered"], 2, "{big_status}");
    let last = big_status["lastError"].as_str().unwrap_or_default();
    assert!(last.starts_with("filter.cel: "), "{big_status}");
    let crm_status = find_target(&status, "orders", "crm");
    assert_eq!(crm_status["deadLettered"], 2, "{crm_status}");
    assert_eq!(find_target(&status, "orders", "all")["deadLettered"], 0);

    let listed = s.cli(&["dlq", "list", "--route", "orders"]);
    let letter = |target: &str, id: &str| -> String {
        listed
            .lines()
            .find(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                cells.get(1) == Some(&target) && cells.get(2) == Some(&id)
            })
            .unwrap_or_else(|| panic!("no dead letter {target}/{id} in\n{listed}"))
            .to_string()
    };
    for (target, id, reason, error) in [
        (
            "big",
            "no-total",
            "filter",
            "filter.cel: no such key: total",
        ),
        ("big", "not-json", "filter", "filter.cel: "),
        (
            "crm",
            "no-id",
            "transform",
            "transform.body: no such key: id",
        ),
        ("crm", "not-json", "transform", "transform.body: "),
    ] {
        let line = letter(target, id);
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[4], reason, "{line}");
        assert!(line.contains(error), "{error:?} not in {line}");
    }
    // The whole error, with why the data is null, is in the dead letter itself.
    let error = dead_letter_error(&s, "big", "not-json").await;
    assert!(
        error.contains("event.data is null: the body is not JSON"),
        "{error}"
    );

    let metrics = s.get("/metrics").await;
    for line in [
        r#"fanout_expression_errors_total{route="test/orders",target="big",expression="filter"} 2"#,
        r#"fanout_expression_errors_total{route="test/orders",target="crm",expression="transform"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    s.sigterm_exits_zero();
}

/// The last error of `event`'s dead letter for `target`.
async fn dead_letter_error(s: &Standalone, target: &str, event: &str) -> String {
    let client = async_nats::connect(&s.nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let key = fanout_config::names::RouteKey::new(&s.namespace, "orders");
    let letters = fanout_provision::dead_letters::list(&js, &key, Some(target), 100)
        .await
        .unwrap();
    let letter = letters
        .into_iter()
        .find(|l| l.event_id == event)
        .unwrap_or_else(|| panic!("no dead letter of {event} for {target}"));
    letter.last_error.unwrap_or_default()
}

/// Runs standalone on `manifests`, expecting it to refuse them; its log.
fn refused(manifests: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("orders.yaml"), manifests).unwrap();
    // Nothing listens here: the refusal must come before connecting to NATS.
    let unused = format!("nats://127.0.0.1:{}", free_port());
    let mut process = Spawned::start(
        command(dir.path(), "test", &unused),
        &dir.path().join("standalone.log"),
    )
    .unwrap();
    assert!(!process.wait(T).unwrap().success(), "{}", process.log());
    process.log()
}

#[test]
fn wrong_expressions_stop_standalone_before_it_starts_naming_the_field() {
    let target = api_target("crm", "http://127.0.0.1:1/crm", "");
    let with = |item: &str| [target.clone(), route(item)].concat();
    let cases = [
        (
            "    - name: crm\n      apiTargetRef: {name: crm}\n      filter: {cel: 'event.data.total >'}\n",
            "targets[crm].filter.cel: syntax error: column 19",
        ),
        (
            "    - name: crm\n      apiTargetRef: {name: crm}\n      transform: {body: '{\"n\": event.dta.n}'}\n",
            "targets[crm].transform.body: column 7 (event.dta): event has no field \"dta\"",
        ),
        (
            "    - name: crm\n      apiTargetRef: {name: crm}\n      transform: {headers: {X-Total: 'event.data.total.format()'}}\n",
            "targets[crm].transform.headers[X-Total]: ",
        ),
    ];
    for (item, named) in cases {
        let log = refused(&with(item));
        assert!(log.contains("route test/orders"), "{log}");
        assert!(log.contains(named), "{named:?} not in\n{log}");
    }
}
