//! Per-key ordering through the front door: events posted to the gateway of `fanout
//! standalone` (or published to NATS for `fanout dispatch` processes) with their key
//! in a header (or in the body, read by a CEL key), a route target with `ordering:
//! {key: {header: X-Account}}`, and a
//! target on loopback that fails one key's head for a while. What a user checks:
//! each key's events reach the target in the order they were stored, a failing head
//! holds back only its own key, and `/status` shows the blocked key; also when a
//! dispatcher is killed mid-run and with two replicas.
//!
//! "In order" allows what at-least-once delivery allows: an event may arrive again
//! (a retry, or a resend after a crash lost its ack), but no event arrives before
//! every earlier event of its key has been delivered.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fanout_testkit::nats::NatsServer;
use fanout_testkit::target::{Received, Reply, TargetServer};
use fanout_testkit::{free_port, wait};
use support::ProvisionedRoute;
use support::standalone::Standalone;

const T: Duration = Duration::from_secs(60);

fn id(key: &str, n: usize) -> String {
    format!("{key}-{n:03}")
}

/// (key, index) of a request's Idempotency-Key `A-003`.
fn parse(r: &Received) -> (String, usize) {
    let id = r.header("idempotency-key").unwrap();
    let (key, n) = id.rsplit_once('-').unwrap();
    (key.to_string(), n.parse().unwrap())
}

/// Checks that every key's events arrived in stream order (see the file's comment):
/// each request is for the key's next unsettled event or repeats an earlier one. An
/// event is settled by a 2xx, or (those in `dead_lettered`) by its one refusal.
/// Returns, per key, how many of its events were settled.
fn assert_in_order(received: &[Received], dead_lettered: &[&str]) -> BTreeMap<String, usize> {
    let mut done: BTreeMap<String, usize> = BTreeMap::new();
    let mut log: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in received {
        let (key, n) = parse(r);
        log.entry(key.clone())
            .or_default()
            .push(format!("{n}:{}", r.status));
        let delivered = done.entry(key.clone()).or_default();
        assert!(
            n <= *delivered + 1,
            "key {key}: event {n} arrived before event {} was delivered: {:?}",
            *delivered + 1,
            log[&key]
        );
        let refused = dead_lettered.contains(&r.header("idempotency-key").unwrap());
        if n == *delivered + 1 && ((200..300).contains(&r.status) || refused) {
            *delivered = n;
        }
    }
    done
}

/// When the first successful request for event `id` arrived.
fn delivered_at(received: &[Received], id: &str) -> std::time::Instant {
    received
        .iter()
        .find(|r| r.header("idempotency-key") == Some(id) && r.status == 200)
        .unwrap_or_else(|| panic!("{id} was not delivered"))
        .at
}

fn standalone_manifests(url: &str, after_dead_letter: &str) -> String {
    format!(
        "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: ledger}}
spec:
  url: {url}
  timeout: 2s
  maxInFlight: 8
  retry: {{maxAttempts: 10, initialDelay: 500ms, maxDelay: 4s, jitter: none}}
---
apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: accounts}}
spec:
  gateway: {{allowUnauthenticated: true}}
  targets:
    - name: ledger
      apiTargetRef: {{name: ledger}}
      ordering:
        key: {{header: X-Account}}
        afterDeadLetter: {after_dead_letter}
"
    )
}

/// Posts events 1..=count of each key, interleaved (A-001, B-001, ..., A-002, ...),
/// one at a time, so the stream stores them in that order.
async fn post_interleaved(s: &Standalone, keys: &[&str], count: usize) -> BTreeSet<String> {
    post_interleaved_from(s, keys, 1, count).await
}

/// Like [`post_interleaved`], events `first..=last`.
async fn post_interleaved_from(
    s: &Standalone,
    keys: &[&str],
    first: usize,
    last: usize,
) -> BTreeSet<String> {
    let mut sent = BTreeSet::new();
    for n in first..=last {
        for key in keys {
            let id = id(key, n);
            s.accept(
                "accounts",
                &[
                    ("Idempotency-Key", &id),
                    ("X-Account", key),
                    ("Content-Type", "application/json"),
                ],
                &format!("{{\"account\": \"{key}\", \"entry\": {n}}}"),
            )
            .await;
            sent.insert(id);
        }
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_head_holds_back_its_own_key_only_and_every_key_stays_in_order() {
    let nats = NatsServer::start().unwrap();
    let target = TargetServer::start().await.unwrap();
    target.set_default(Reply::Delay(Duration::from_millis(20), 200));
    // A's third event fails four times (0.5 + 1 + 2 + 4 s of backoff); C's second is
    // refused for good and dead-lettered.
    target.script_for_key(&id("A", 3), std::iter::repeat_n(Reply::Status(503), 4));
    target.script_for_key(&id("C", 2), [Reply::StatusBody(400, "unknown account")]);
    let s = Standalone::start(
        &nats,
        "bank",
        &standalone_manifests(&target.url("/"), "continue"),
    )
    .await;
    let sent = post_interleaved(&s, &["A", "B", "C"], 10).await;

    // While A's head fails, /status shows one blocked key.
    let blocked = wait::until("a blocked key in /status", T, || async {
        let t = s.target("accounts", "ledger").await;
        match t["blockedKeys"].as_u64() {
            Some(1) if t["oldestBlockedTime"].is_string() => Ok(t),
            _ => Err(t.to_string()),
        }
    })
    .await
    .unwrap();
    assert_eq!(blocked["circuit"], "Closed", "{blocked}");

    let expected: BTreeSet<String> = sent.into_iter().filter(|i| i != &id("C", 2)).collect();
    target.wait_for_keys(&expected, T).await.unwrap();
    let received = target.received();
    // C goes on after its dead letter (afterDeadLetter: continue).
    let settled = assert_in_order(&received, &[&id("C", 2)]);
    assert_eq!(
        settled,
        BTreeMap::from([("A".into(), 10), ("B".into(), 10), ("C".into(), 10)])
    );

    // B's events flowed while A's head was failing; A's later events waited for it.
    let a3 = delivered_at(&received, &id("A", 3));
    assert!(delivered_at(&received, &id("B", 10)) < a3);
    assert!(delivered_at(&received, &id("A", 4)) > a3);
    let attempts = received
        .iter()
        .filter(|r| r.header("idempotency-key") == Some(&id("A", 3)))
        .count();
    assert_eq!(attempts, 5, "four failures, then delivered");

    let settled = wait::until("the key to be unblocked", T, || async {
        let t = s.target("accounts", "ledger").await;
        if t["blockedKeys"].is_null() && t["deadLettered"] == 1 {
            Ok(t)
        } else {
            Err(t.to_string())
        }
    })
    .await
    .unwrap();
    assert_eq!(settled["concurrencyLimit"], 8, "{settled}");
    s.sigterm_exits_zero();
}

/// More keys than requests may go at once (maxInFlight: 2 against an API that
/// takes 2): heads wait for a free request without going over the limit, and the
/// requests that two failing heads leave free while they back off go to the other
/// keys, whose events all arrive before the failing heads are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_of_more_keys_than_max_in_flight_take_turns_and_failing_heads_free_their_requests() {
    let nats = NatsServer::start().unwrap();
    let target = TargetServer::start().await.unwrap();
    target.limit_concurrency(2, Duration::from_millis(20));
    // 0.5 + 1 + 2 s of backoff each.
    for head in [id("A", 1), id("B", 1)] {
        target.script_for_key(&head, std::iter::repeat_n(Reply::Status(503), 3));
    }
    let manifests = standalone_manifests(&target.url("/"), "continue")
        .replace("maxInFlight: 8", "maxInFlight: 2");
    let s = Standalone::start(&nats, "bank", &manifests).await;
    let keys = ["A", "B", "C", "D", "E", "F"];
    let sent = post_interleaved(&s, &keys, 4).await;

    target.wait_for_keys(&sent, T).await.unwrap();
    let received = target.received();
    let settled = assert_in_order(&received, &[]);
    assert!(settled.values().all(|n| *n == 4), "{settled:?}");
    let over_limit = received.iter().filter(|r| r.status == 429).count();
    assert_eq!(
        over_limit, 0,
        "never more than maxInFlight requests at once"
    );
    let failing_heads_delivered =
        delivered_at(&received, &id("A", 1)).min(delivered_at(&received, &id("B", 1)));
    for key in &keys[2..] {
        assert!(
            delivered_at(&received, &id(key, 4)) < failing_heads_delivered,
            "{key}'s events went while A's and B's heads backed off"
        );
    }
    s.sigterm_exits_zero();
}

/// The key computed by CEL from the body: no header names the account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_computed_by_cel_from_the_body_keeps_each_key_in_order() {
    let nats = NatsServer::start().unwrap();
    let target = TargetServer::start().await.unwrap();
    target.set_default(Reply::Delay(Duration::from_millis(20), 200));
    target.script_for_key(&id("A", 2), std::iter::repeat_n(Reply::Status(503), 3));
    let manifests = standalone_manifests(&target.url("/"), "continue").replace(
        "key: {header: X-Account}",
        "key: {cel: 'event.data.account'}",
    );
    let s = Standalone::start(&nats, "bank", &manifests).await;
    let mut sent = BTreeSet::new();
    for n in 1..=6 {
        for key in ["A", "B"] {
            let id = id(key, n);
            let body = format!("{{\"account\": \"{key}\", \"entry\": {n}}}");
            s.accept(
                "accounts",
                &[
                    ("Idempotency-Key", &id),
                    ("Content-Type", "application/json"),
                ],
                &body,
            )
            .await;
            sent.insert(id);
        }
    }
    // An entry without an account has no key the expression can compute.
    s.accept(
        "accounts",
        &[
            ("Idempotency-Key", "X-001"),
            ("Content-Type", "application/json"),
        ],
        r#"{"entry": 1}"#,
    )
    .await;

    target.wait_for_keys(&sent, T).await.unwrap();
    let received = target.received();
    let settled = assert_in_order(
        &received
            .iter()
            .filter(|r| r.header("idempotency-key") != Some("X-001"))
            .cloned()
            .collect::<Vec<_>>(),
        &[],
    );
    assert_eq!(settled, BTreeMap::from([("A".into(), 6), ("B".into(), 6)]));
    let a2 = delivered_at(&received, &id("A", 2));
    assert!(
        delivered_at(&received, &id("B", 6)) < a2,
        "B flowed meanwhile"
    );
    assert!(delivered_at(&received, &id("A", 3)) > a2);

    // The keyless entry was not sent out of turn: it is a dead letter, reason
    // `ordering`, naming the field.
    let listed = wait::until("the keyless entry's dead letter", T, || async {
        let out = s.cli(&["dlq", "list", "--route", "accounts"]);
        if out.contains("X-001") {
            Ok(out)
        } else {
            Err(out)
        }
    })
    .await
    .unwrap();
    let line = listed.lines().find(|l| l.contains("X-001")).unwrap();
    assert!(
        line.contains("ordering") && line.contains("ordering.key.cel"),
        "{listed}"
    );
    assert!(
        received
            .iter()
            .all(|r| r.header("idempotency-key") != Some("X-001"))
    );
    s.sigterm_exits_zero();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_block_a_dead_lettered_key_waits_for_its_redrive() {
    let nats = NatsServer::start().unwrap();
    let target = TargetServer::start().await.unwrap();
    target.script_for_key(&id("A", 2), [Reply::StatusBody(400, "account frozen")]);
    let s = Standalone::start(
        &nats,
        "bank",
        &standalone_manifests(&target.url("/"), "block"),
    )
    .await;
    let sent = post_interleaved(&s, &["A", "B"], 5).await;

    let b: BTreeSet<String> = (1..=5).map(|n| id("B", n)).collect();
    target.wait_for_keys(&b, T).await.unwrap();
    wait::until("A blocked by its dead letter", T, || async {
        let t = s.target("accounts", "ledger").await;
        if t["blockedKeys"] == 1 && t["deadLettered"] == 1 {
            Ok(())
        } else {
            Err(t.to_string())
        }
    })
    .await
    .unwrap();
    assert!(
        !target.distinct_keys().contains(&id("A", 3)),
        "A's later events wait for the redrive"
    );

    // Standalone started again finds the block where it was left (it is kept in
    // NATS), while another key's new events go through.
    s.sigterm_exits_zero();
    let s = Standalone::start(
        &nats,
        "bank",
        &standalone_manifests(&target.url("/"), "block"),
    )
    .await;
    let more = post_interleaved_from(&s, &["B"], 6, 8).await;
    target.wait_for_keys(&more, T).await.unwrap();
    wait::until("A still blocked after the restart", T, || async {
        let t = s.target("accounts", "ledger").await;
        if t["blockedKeys"] == 1 {
            Ok(())
        } else {
            Err(t.to_string())
        }
    })
    .await
    .unwrap();
    assert!(!target.distinct_keys().contains(&id("A", 3)));

    let out = s.cli(&[
        "dlq", "redrive", "--route", "accounts", "--target", "ledger",
    ]);
    assert!(out.contains("redriven 1 dead letter(s)"), "{out}");
    target.wait_for_keys(&sent, T).await.unwrap();
    // No event of A went before its redriven second one was delivered.
    let settled = assert_in_order(&target.received(), &[]);
    assert_eq!(settled["A"], 5);
    wait::until("the key unblocked", T, || async {
        let t = s.target("accounts", "ledger").await;
        if t["blockedKeys"].is_null() {
            Ok(())
        } else {
            Err(t.to_string())
        }
    })
    .await
    .unwrap();
    s.sigterm_exits_zero();
}

/// Route `orders` (namespace `test`) whose one target is ordered by `X-Account`.
async fn ordered_route(url: &str) -> ProvisionedRoute {
    ProvisionedRoute::new(&format!(
        "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: ledger}}
spec:
  url: {url}
  timeout: 2s
  maxInFlight: 8
  retry: {{maxAttempts: 20, initialDelay: 300ms, maxDelay: 1s, jitter: none}}
---
apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: orders}}
spec:
  targets:
    - name: ledger
      apiTargetRef: {{name: ledger}}
      ordering: {{key: {{header: X-Account}}}}
"
    ))
    .await
}

/// `keys` accounts with `count` events each, interleaved, published to NATS.
async fn publish_interleaved(
    route: &ProvisionedRoute,
    keys: usize,
    count: usize,
) -> BTreeSet<String> {
    let events: Vec<(String, Vec<(&'static str, String)>)> = (1..=count)
        .flat_map(|n| {
            (0..keys).map(move |k| {
                let key = format!("K{k}");
                (id(&key, n), vec![("X-Account", key)])
            })
        })
        .collect();
    let sent = events.iter().map(|(id, _)| id.clone()).collect();
    route.publish_with(events).await;
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_killed_mid_run_keeps_every_key_in_order() {
    let target = TargetServer::start().await.unwrap();
    target.set_default(Reply::Delay(Duration::from_millis(20), 200));
    target.script_for_key(&id("K0", 3), std::iter::repeat_n(Reply::Status(503), 3));
    let route = ordered_route(&target.url("/")).await;
    let sent = publish_interleaved(&route, 10, 30).await;

    let mut first = route.dispatcher(free_port());
    target.wait_for(60, T).await.unwrap();
    first.kill(); // SIGKILL: no drain, acks in flight lost, the pin left to expire
    assert!(target.distinct_keys().len() < sent.len(), "killed too late");

    let mut second = route.dispatcher(free_port());
    target
        .wait_for_keys(&sent, Duration::from_secs(120))
        .await
        .unwrap();
    assert!(second.terminate(T).unwrap().success());
    let settled = assert_in_order(&target.received(), &[]);
    assert!(settled.values().all(|n| *n == 30), "{settled:?}");
    assert!(
        second.log().contains("ordered target: delivering"),
        "{}",
        second.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_keep_every_key_in_order_and_the_standby_takes_over() {
    let target = TargetServer::start().await.unwrap();
    target.set_default(Reply::Delay(Duration::from_millis(20), 200));
    target.script_for_key(&id("K0", 3), std::iter::repeat_n(Reply::Status(503), 3));
    let route = ordered_route(&target.url("/")).await;
    let first_half = publish_interleaved(&route, 10, 15).await;

    let (port_a, port_b) = (free_port(), free_port());
    let a = route.dispatcher(port_a);
    let b = route.dispatcher(port_b);
    target.wait_for_keys(&first_half, T).await.unwrap();

    // One of them delivers; the other stands by.
    let active = |log: &str| log.contains("ordered target: delivering");
    let (mut delivering, mut standby) = match (active(&a.log()), active(&b.log())) {
        (true, false) => (a, b),
        (false, true) => (b, a),
        other => panic!(
            "exactly one replica delivers: {other:?}\n{}\n{}",
            a.log(),
            b.log()
        ),
    };

    // The one delivering dies mid-run; the standby takes over.
    let rest: Vec<(String, Vec<(&'static str, String)>)> = (16..=30)
        .flat_map(|n| {
            (0..10).map(move |k| {
                let key = format!("K{k}");
                (id(&key, n), vec![("X-Account", key)])
            })
        })
        .collect();
    let all: BTreeSet<String> = first_half
        .iter()
        .cloned()
        .chain(rest.iter().map(|(id, _)| id.clone()))
        .collect();
    route.publish_with(rest).await;
    target.wait_for(first_half.len() + 40, T).await.unwrap();
    delivering.kill();
    target
        .wait_for_keys(&all, Duration::from_secs(120))
        .await
        .unwrap();
    assert!(active(&standby.log()), "{}", standby.log());
    assert!(standby.terminate(T).unwrap().success());
    let settled = assert_in_order(&target.received(), &[]);
    assert!(settled.values().all(|n| *n == 30), "{settled:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopping_hands_over_at_once_and_its_head_in_flight_keeps_its_place() {
    let target = TargetServer::start().await.unwrap();
    target.set_default(Reply::Delay(Duration::from_millis(20), 200));
    // K0's third event is in flight for 1.5 s when its dispatcher is told to stop;
    // it fails, and is handed back after its key's later events were.
    target.script_for_key(
        &id("K0", 3),
        [Reply::Delay(Duration::from_millis(1500), 503)],
    );
    let route = ordered_route(&target.url("/")).await;
    let sent = publish_interleaved(&route, 3, 10).await;
    let a = route.dispatcher(free_port());
    let b = route.dispatcher(free_port());
    wait::until("K0's third event in flight", T, || async {
        match target.distinct_keys().contains(&id("K0", 3)) {
            true => Ok(()),
            false => Err(format!("{:?}", target.keys())),
        }
    })
    .await
    .unwrap();
    let active = |log: &str| log.contains("ordered target: delivering");
    let (mut delivering, mut standby) = match (active(&a.log()), active(&b.log())) {
        (true, false) => (a, b),
        (false, true) => (b, a),
        other => panic!("exactly one replica delivers: {other:?}"),
    };
    let stopped = std::time::Instant::now();
    assert!(delivering.terminate(T).unwrap().success());
    target.wait_for_keys(&sent, T).await.unwrap();
    // Let go of, the pin moves at once, not after the takeover time (22s here).
    assert!(
        stopped.elapsed() < Duration::from_secs(15),
        "{:?}",
        stopped.elapsed()
    );
    assert!(active(&standby.log()), "{}", standby.log());
    assert!(standby.terminate(T).unwrap().success());
    let settled = assert_in_order(&target.received(), &[]);
    assert!(settled.values().all(|n| *n == 10), "{settled:?}");
}
