//! Adaptive concurrency through the front door: `fanout standalone` with an ApiTarget
//! that says `concurrency: {adaptive: true}`, events posted to its gateway, and a
//! target on loopback that takes 8 requests at once and answers 429 with
//! `Retry-After: 1` to any beyond. What a user checks: every event arrives, the 429s
//! stop after the first seconds, `/status` and `/metrics` show a limit near 8, and
//! the circuit stays closed throughout.

mod support;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use fanout_testkit::nats::NatsServer;
use fanout_testkit::target::TargetServer;
use fanout_testkit::{http, wait};
use support::standalone::Standalone;

const CAPACITY: usize = 8;
const EVENTS: usize = 2400;
/// Limits are judged only while at least this many events are yet to be delivered.
const BACKLOG_JUDGED: usize = 200;

fn manifests(url: &str, adaptive: bool) -> String {
    format!(
        "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: busy}}
spec:
  url: {url}
  maxInFlight: 64
  concurrency: {{adaptive: {adaptive}}}
  retry: {{maxAttempts: 100, initialDelay: 100ms, maxDelay: 1s}}
---
apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: orders}}
spec:
  gateway: {{allowUnauthenticated: true}}
  targets: [{{name: busy, apiTargetRef: {{name: busy}}}}]
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_takes_8_at_once_is_sent_about_8_and_its_circuit_stays_closed() {
    let nats = NatsServer::start().unwrap();
    let target = TargetServer::start().await.unwrap();
    target.limit_concurrency(CAPACITY, Duration::from_millis(40));
    let standalone = Standalone::start(&nats, "shop", &manifests(&target.url("/"), true)).await;

    // A backlog of JSON events in batches of 800, as a producer would send them.
    let path = "/v1/namespaces/shop/routes/orders/events:batch";
    let mut sent = BTreeSet::new();
    for batch in 0..EVENTS / 800 {
        let items: Vec<String> = (0..800)
            .map(|i| format!("{{\"order\": {}}}", batch * 800 + i))
            .collect();
        let body = format!("[{}]", items.join(","));
        let key = format!("batch-{batch}");
        let r = http::post(
            &standalone.gateway,
            path,
            &[
                ("Content-Type", "application/json"),
                ("Idempotency-Key", &key),
            ],
            body.as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 202, "{}", r.body);
        sent.extend(
            serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string()),
        );
    }
    assert_eq!(sent.len(), EVENTS);

    // While they are delivered, /status is read over and over: the circuit never
    // opens, and the limit is recorded while a backlog remains. The last events come
    // as sparse retries: a slow round then cuts the limit to 3/4 of the few in
    // flight, and with nothing left to send nothing grows it back (a CI run ended
    // at 2), which says nothing about the limit found under load.
    let seen = Mutex::new((BTreeSet::new(), Vec::new()));
    wait::until("every event delivered", Duration::from_secs(90), || async {
        let t = standalone.target("orders", "busy").await;
        let delivered = target.distinct_keys().len();
        let mut seen = seen.lock().unwrap();
        seen.0
            .insert(t["circuit"].as_str().unwrap_or_default().to_string());
        if delivered + BACKLOG_JUDGED <= EVENTS {
            seen.1.extend(t["concurrencyLimit"].as_u64());
        }
        match delivered {
            n if n >= EVENTS => Ok(()),
            n => Err(format!("{n} of {EVENTS} delivered; {t}")),
        }
    })
    .await
    .unwrap();
    let (circuits, limits) = seen.into_inner().unwrap();
    assert_eq!(sent, target.distinct_keys(), "every event arrived");
    assert_eq!(circuits, BTreeSet::from(["Closed".to_string()]));
    assert!(
        !standalone.process.log().contains("circuit opened"),
        "{}",
        standalone.process.log()
    );

    // After the first seconds the target is rarely pushed past what it takes.
    let received = target.received();
    let start = received[0].at + Duration::from_secs(5);
    let late: Vec<_> = received.iter().filter(|r| r.at >= start).collect();
    let late_429 = late.iter().filter(|r| r.status == 429).count();
    let total_429 = received.iter().filter(|r| r.status == 429).count();
    eprintln!(
        "{} requests, {total_429} answered 429; after the first 5 s: {} requests, {late_429} answered 429; limits seen in /status: {limits:?}",
        received.len(),
        late.len()
    );
    assert!(late.len() > 1000, "the run lasted long enough to judge");
    assert!(
        late_429 * 100 <= late.len(),
        "{late_429} of {} requests after the first 5 s answered 429",
        late.len()
    );

    // Status and metrics show the limit it found: near 8. A probe of 9 now and then
    // cuts it to 6 for a few rounds, and on a loaded machine a slow round can cut 8
    // to 5, and two in a row 6 to 4 to 3 for a second; it never climbs past what
    // the target takes by more than the probe. (Cuts from the in-flight count of a
    // request that waited in admission, or of a round's last request, took it to 1
    // or 2: those are fixed, and the bound below would catch them.)
    assert!(
        limits.len() >= 10,
        "too few limits read while a backlog remained: {limits:?}"
    );
    let mut settled_limits = limits[limits.len() / 2..].to_vec();
    settled_limits.sort_unstable();
    let median = settled_limits[settled_limits.len() / 2];
    assert!((6..=9).contains(&median), "median {median}: {limits:?}");
    assert!(
        settled_limits.iter().all(|l| (3..=9).contains(l)),
        "{limits:?}"
    );
    let metrics = standalone.get("/metrics").await;
    let gauge = metrics
        .lines()
        .find(|l| {
            l.starts_with("fanout_target_concurrency_limit{") && l.contains("target=\"busy\"")
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    let value: u64 = gauge.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((4..=9).contains(&value), "{gauge}");
    standalone.sigterm_exits_zero();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_adaptive_concurrency_the_limit_is_max_in_flight() {
    let nats = NatsServer::start().unwrap();
    let target = TargetServer::start().await.unwrap();
    let standalone = Standalone::start(&nats, "shop", &manifests(&target.url("/"), false)).await;
    standalone
        .accept("orders", &[("Content-Type", "application/json")], "{}")
        .await;
    target.wait_for(1, Duration::from_secs(30)).await.unwrap();
    let limit = wait::until("the limit in /status", Duration::from_secs(30), || async {
        let t = standalone.target("orders", "busy").await;
        t["concurrencyLimit"].as_u64().ok_or_else(|| t.to_string())
    })
    .await
    .unwrap();
    assert_eq!(limit, 64);
    standalone.sigterm_exits_zero();
}
