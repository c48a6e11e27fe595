//! What a user does with `fanout standalone`, entering where they enter: the shipped
//! `examples/order-placed` (its Secrets as shipped, only the ApiTargets' URLs pointed
//! at scripted targets on loopback), events posted to the gateway with the example's
//! ingest token, then `/status` and `fanout dlq` read the way the docs say. The
//! targets check their credentials like real APIs (401 otherwise), and signatures are
//! verified with the official Standard Webhooks library.

mod support;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use fanout_testkit::example::OrderApis;
use fanout_testkit::nats::NatsServer;
use fanout_testkit::target::{Reply, TargetServer};
use fanout_testkit::{wait, webhooks};
use support::standalone::Standalone;

const T: Duration = Duration::from_secs(30);
const ROUTE: &str = "orders";

/// The order example running in standalone mode, with its three APIs.
struct Orders {
    apis: OrderApis,
    standalone: Standalone,
    _nats: NatsServer,
}

impl std::ops::Deref for Orders {
    type Target = OrderApis;
    fn deref(&self) -> &OrderApis {
        &self.apis
    }
}

impl Orders {
    async fn start() -> Orders {
        let nats = NatsServer::start().unwrap();
        let apis = OrderApis::start_on(Ipv4Addr::LOCALHOST.into())
            .await
            .unwrap();
        let standalone = Standalone::start(&nats, "shop", &apis.example.yaml()).await;
        Orders {
            apis,
            standalone,
            _nats: nats,
        }
    }

    /// Posts order `i` as a producer does: the ingest token, an Idempotency-Key and
    /// the event type; returns the key.
    async fn post(&self, i: usize, event_type: &str) -> String {
        let key = format!("order-{i}");
        self.standalone
            .accept(
                ROUTE,
                &[
                    ("Authorization", &self.ingest_authorization()),
                    ("Idempotency-Key", &key),
                    ("X-Event-Type", event_type),
                    ("Content-Type", "application/json"),
                ],
                &format!("{{\"order\": {i}, \"total\": 42.5}}"),
            )
            .await;
        key
    }

    /// Waits until `/status` says every delivery has settled; returns it.
    async fn settled(&self) -> serde_json::Value {
        wait::until("every delivery settled", T, || async {
            let status = self.standalone.status().await;
            if status["settled"] == true {
                Ok(status)
            } else {
                Err(status.to_string())
            }
        })
        .await
        .unwrap()
    }

    fn dlq(&self, args: &[&str]) -> String {
        let mut all = vec!["dlq"];
        all.extend_from_slice(args);
        all.extend(["--route", ROUTE]);
        self.standalone.cli(&all)
    }
}

fn keys(received: &[fanout_testkit::target::Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| r.header("idempotency-key").unwrap_or("<none>").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_example_delivers_every_event_with_every_credential() {
    let o = Orders::start().await;

    // Producers without the token, or with another, are turned away.
    let refused = o.standalone.post(ROUTE, &[], "{}").await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    let wrong = o
        .standalone
        .post(ROUTE, &[("Authorization", "Bearer not-the-token")], "{}")
        .await;
    assert_eq!(wrong.status, 403, "{}", wrong.body);

    let mut all = BTreeSet::new();
    let mut placed = BTreeSet::new();
    for i in 1..=12 {
        let event_type = if i % 3 == 0 {
            "order.updated"
        } else {
            "order.placed"
        };
        let key = o.post(i, event_type).await;
        if event_type == "order.placed" {
            placed.insert(key.clone());
        }
        all.insert(key);
    }
    o.inventory.wait_for_keys(&all, T).await.unwrap();
    o.analytics.wait_for_keys(&all, T).await.unwrap();
    o.mailer.wait_for_keys(&placed, T).await.unwrap();
    let status = o.settled().await;

    // Each API got each of its events once, with its credentials: none was refused.
    let inventory = o.inventory.received();
    assert_eq!(keys(&inventory).len(), 12, "{:?}", keys(&inventory));
    let mail = o.mailer.received();
    assert_eq!(
        keys(&mail).into_iter().collect::<BTreeSet<_>>(),
        placed,
        "the e-mail target's filter passes order.placed only"
    );
    assert_eq!(mail.len(), placed.len());
    let analytics = o.analytics.received();
    assert_eq!(analytics.len(), 12);
    assert!(analytics.iter().all(|r| r.method == "PUT"));
    let verdicts = webhooks::verify(&o.signing_secret(), &analytics).unwrap();
    assert!(verdicts.iter().all(Result::is_ok), "{verdicts:?}");
    for r in &analytics {
        assert_eq!(r.header("webhook-id"), r.header("idempotency-key"));
    }
    assert!(
        inventory
            .iter()
            .all(|r| r.header("x-source") == Some("fanout")),
        "the ApiTarget's static header"
    );

    let count = |target: &str, field: &str| {
        support::standalone::find_target(&status, ROUTE, target)[field].as_u64()
    };
    assert_eq!(count("inventory", "delivered"), Some(12));
    assert_eq!(count("email", "delivered"), Some(8));
    assert_eq!(count("analytics", "delivered"), Some(12));
    for target in ["inventory", "email", "analytics"] {
        assert_eq!(count(target, "failed"), Some(0), "{status}");
        assert_eq!(count(target, "deadLettered"), Some(0), "{status}");
    }
    o.standalone.sigterm_exits_zero();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_is_dead_lettered_once_listed_and_redriven_to_that_target_only() {
    let o = Orders::start().await;
    o.inventory
        .script_for_key("order-2", [Reply::StatusBody(400, "unknown sku 77")]);
    let sent: BTreeSet<String> =
        futures::future::join_all((1..=4).map(|i| o.post(i, "order.placed")))
            .await
            .into_iter()
            .collect();
    o.mailer.wait_for_keys(&sent, T).await.unwrap();
    o.analytics.wait_for_keys(&sent, T).await.unwrap();
    o.inventory.wait_for_keys(&sent, T).await.unwrap();

    let listed = wait::until("the dead letter in `fanout dlq list`", T, || async {
        let text = o.dlq(&["list"]);
        if text.contains("order-2") {
            Ok(text)
        } else {
            Err(format!("{text}\n{}", o.standalone.process.log()))
        }
    })
    .await
    .unwrap();
    let lines: Vec<&str> = listed.lines().skip(1).collect();
    assert_eq!(lines.len(), 1, "one dead letter:\n{listed}");
    for word in ["order-2", "inventory", "permanent", "400", "unknown sku 77"] {
        assert!(lines[0].contains(word), "{word} in {listed}");
    }
    let status = o.settled().await;
    let inventory = support::standalone::find_target(&status, ROUTE, "inventory");
    assert_eq!(inventory["deadLettered"], 1, "{status}");
    assert_eq!(inventory["delivered"], 3, "{status}");
    assert_eq!(
        keys(&o.inventory.received())
            .iter()
            .filter(|k| *k == "order-2")
            .count(),
        1,
        "a 400 is not retried"
    );

    // The inventory API is fixed; the dead letter goes to it again, and only to it.
    let out = o.dlq(&["redrive", "--target", "inventory"]);
    assert!(out.contains("redriven 1 dead letter(s)"), "{out}");
    let redriven = o.inventory.wait_for(5, T).await.unwrap();
    assert_eq!(
        redriven[4].header("idempotency-key"),
        Some("order-2"),
        "the same Idempotency-Key as the first attempt"
    );
    o.settled().await;
    assert_eq!(
        o.mailer.count(),
        4,
        "the other targets are not delivered twice"
    );
    assert_eq!(o.analytics.count(), 4);
    let empty = o.dlq(&["list"]);
    assert_eq!(
        empty.lines().count(),
        1,
        "only the header is left:\n{empty}"
    );
    o.standalone.sigterm_exits_zero();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_attempts_are_dead_lettered_and_retry_after_is_waited_for() {
    let o = Orders::start().await;
    // The route gives analytics two attempts; both fail.
    o.analytics
        .script_for_key("order-1", [Reply::Status(503), Reply::Status(503)]);
    // The inventory API asks for 2 s; its own backoff would wait at most 500 ms.
    o.inventory.script_for_key(
        "order-1",
        [Reply::RetryAfter(503, "2".into()), Reply::Status(200)],
    );
    o.post(1, "order.placed").await;

    let listed = wait::until("analytics' dead letter", T, || async {
        let text = o.dlq(&["list", "--target", "analytics"]);
        if text.contains("order-1") {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await
    .unwrap();
    assert!(listed.contains("exhausted"), "{listed}");
    assert!(listed.contains("503"), "{listed}");
    assert_eq!(
        o.analytics.count(),
        2,
        "maxAttempts: 2 from the route's override"
    );

    let inventory = o.inventory.wait_for(2, T).await.unwrap();
    let waited = inventory[1].at - inventory[0].at;
    assert!(
        waited >= Duration::from_millis(1900),
        "the second attempt came {waited:?} after the first, not after Retry-After's 2 s"
    );
    let status = o.settled().await;
    let target = |name| support::standalone::find_target(&status, ROUTE, name).clone();
    assert_eq!(target("inventory")["delivered"], 1);
    assert_eq!(target("inventory")["deadLettered"], 0);
    assert_eq!(target("analytics")["deadLettered"], 1);
    assert_eq!(target("email")["delivered"], 1);
    o.standalone.sigterm_exits_zero();
}

/// A route that keeps events 20 s, with four targets: `up` answers; `down` fails and
/// opens its circuit (its events wait in the dispatcher's hands); `busy` asks for a
/// retry after a minute each time (past the stream's retention); `slow` takes 5 s
/// per event, one at a time (its backlog waits in the stream, unfetched).
fn short_retention(up: &str, down: &str, busy: &str, slow: &str) -> String {
    format!(
        "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: up}}
spec: {{url: '{up}', timeout: 2s}}
---
apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: down}}
spec:
  url: '{down}'
  timeout: 2s
  maxInFlight: 1
  retry: {{maxAttempts: 100, initialDelay: 100ms, maxDelay: 200ms}}
  circuitBreaker: {{failureRatio: 0.5, minimumRequests: 2, window: 30s, openDuration: 5m}}
---
apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: busy}}
spec:
  url: '{busy}'
  timeout: 2s
  retry: {{maxAttempts: 100, retryAfterMax: 5m}}
---
apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: slow}}
spec:
  url: '{slow}'
  timeout: 10s
  maxInFlight: 1
---
apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: {ROUTE}}}
spec:
  source:
    retention: {{maxAge: 20s}}
    duplicateWindow: 5s
  targets:
    - {{name: up, apiTargetRef: {{name: up}}}}
    - {{name: down, apiTargetRef: {{name: down}}}}
    - {{name: busy, apiTargetRef: {{name: busy}}}}
    - {{name: slow, apiTargetRef: {{name: slow}}}}
  gateway: {{allowUnauthenticated: true}}
"
    )
}

/// The dead letters of `target` in `fanout dlq list` output: (event id, line).
fn letters<'a>(listed: &'a str, target: &str) -> Vec<(&'a str, &'a str)> {
    listed
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            (cells.get(1) == Some(&target)).then(|| (cells[2], l))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_a_target_cannot_take_before_max_age_are_dead_lettered_as_expired_not_lost() {
    let nats = NatsServer::start().unwrap();
    let up = TargetServer::start().await.unwrap();
    let down = TargetServer::start().await.unwrap();
    let busy = TargetServer::start().await.unwrap();
    let slow = TargetServer::start().await.unwrap();
    down.set_default(Reply::Status(503));
    busy.set_default(Reply::RetryAfter(503, "60".into()));
    slow.set_default(Reply::Delay(Duration::from_secs(5), 200));
    let s = Standalone::start(
        &nats,
        "shop",
        &short_retention(&up.url("/"), &down.url("/"), &busy.url("/"), &slow.url("/")),
    )
    .await;
    let sent: BTreeSet<String> = (1..=8).map(|i| format!("order-{i}")).collect();
    for key in &sent {
        s.accept(ROUTE, &[("Idempotency-Key", key)], "{}").await;
    }
    up.wait_for_keys(&sent, T).await.unwrap();

    // Long before anything expires, /status says how old the backlog is and that it
    // is past half of maxAge; the log says so too.
    let target = wait::until("down's backlog reported near expiry", T, || async {
        let t = s.target(ROUTE, "down").await;
        if t["nearExpiry"] == true {
            Ok(t)
        } else {
            Err(t.to_string())
        }
    })
    .await
    .unwrap();
    assert!(target["oldestUndeliveredAge"].is_string(), "{target}");
    assert!(target["oldestUndeliveredTime"].is_string(), "{target}");
    assert_eq!(target["deadLettered"], 0, "not dead-lettered yet: {target}");
    assert_eq!(s.status().await["routes"][0]["maxAge"], "20s");
    wait::until("the warning in the log", T, || async {
        let log = s.process.log();
        if log.contains("oldest undelivered event is older than half of the stream's maxAge") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await
    .unwrap();

    // The stream removes the events at 20 s; by then every event a target did not
    // take is dead-lettered for it with reason expired.
    wait::until("the stream to remove the events", T, || async {
        let status = s.status().await;
        match status["routes"][0]["stream"]["messages"].as_u64() {
            Some(0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    let listed = s.cli(&["dlq", "list", "--route", ROUTE]);
    let status = s.status().await;
    for name in ["down", "busy", "slow"] {
        let got = letters(&listed, name);
        assert!(got.iter().all(|(_, l)| l.contains("expired")), "{listed}");
        let mut accounted: BTreeSet<String> = got.iter().map(|(id, _)| id.to_string()).collect();
        let target = match name {
            "down" => &down,
            "busy" => &busy,
            _ => &slow,
        };
        if name == "slow" {
            // Delivered ones count too; the rest must be dead letters.
            accounted.extend(target.distinct_keys());
        }
        assert_eq!(
            accounted, sent,
            "{name}: every event delivered or dead-lettered\n{listed}"
        );
        let t = support::standalone::find_target(&status, ROUTE, name);
        assert_eq!(t["deadLettered"].as_u64(), Some(got.len() as u64), "{t}");
        assert!(t.get("oldestUndeliveredAge").is_none(), "{t}");
    }
    assert_eq!(letters(&listed, "down").len(), 8, "{listed}");
    // `busy` would only be asked again after the retention: given up at once, with
    // its answer.
    assert_eq!(busy.count(), 8, "one attempt each");
    assert!(
        letters(&listed, "busy")
            .iter()
            .all(|(_, l)| l.contains(" 503 ")),
        "{listed}"
    );
    // `slow`'s last events were never fetched: a sweep of the stream found them.
    assert!(
        letters(&listed, "slow")
            .iter()
            .any(|(_, l)| l.split_whitespace().nth(3) == Some("0")),
        "an unfetched event (0 attempts) among:\n{listed}"
    );
    assert!(
        listed.contains("not delivered within the stream's retention"),
        "{listed}"
    );
    assert_eq!(up.count(), 8, "the healthy target got each event once");

    // Fixed, the dead letters go to the busy target again, with the same keys.
    busy.set_default(Reply::Status(200));
    let before = busy.count();
    let out = s.cli(&["dlq", "redrive", "--route", ROUTE, "--target", "busy"]);
    assert!(out.contains("redriven 8 dead letter(s)"), "{out}");
    let all = busy.wait_for(before + 8, T).await.unwrap();
    let redriven: BTreeSet<String> = keys(&all[before..]).into_iter().collect();
    assert_eq!(redriven, sent);
    assert_eq!(up.count(), 8, "the other targets get nothing twice");
    s.sigterm_exits_zero();
}
