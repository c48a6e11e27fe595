//! A target's rate limit is the route's, whatever the number of `fanout dispatch`
//! replicas running it: one replica alone uses all of it, three share it. Measured
//! at the target, over a backlog published with plain NATS publishes (how services
//! that speak NATS send events).

mod support;

use std::time::{Duration, Instant};

use fanout_testkit::free_port;
use fanout_testkit::process::Spawned;
use fanout_testkit::target::{Received, TargetServer};
use fanout_testkit::wait;
use support::ProvisionedRoute;

/// The target's limit.
const RATE: f64 = 40.0;

fn manifests(url: &str) -> String {
    format!(
        "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: api}}
spec:
  url: '{url}'
  timeout: 2s
  rateLimit: {{requestsPerSecond: {RATE}, burst: 3}}
---
apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: orders}}
spec:
  targets: [{{name: api, apiTargetRef: {{name: api}}}}]
  dispatcher: {{autoscaling: {{minReplicas: 1, maxReplicas: 3}}}}
"
    )
}

fn dispatcher(route: &ProvisionedRoute, pod: &str) -> Spawned {
    let listen = format!("127.0.0.1:{}", free_port());
    support::spawn(
        route.dir.path(),
        pod,
        &[
            "dispatch",
            "--config",
            route.config_file().to_str().unwrap(),
            "--nats-url",
            &route.nats.url(),
            "--listen",
            &listen,
            "--pod-name",
            pod,
            "--health-interval",
            "500ms",
            // The target is on loopback, which dispatchers refuse by default.
            "--egress-allow",
            "127.0.0.1",
        ],
    )
}

/// Requests per second the target received from request `from` on, over at least
/// `window`: waits for them.
async fn rate(target: &TargetServer, from: usize, window: Duration) -> f64 {
    let received: Vec<Received> =
        wait::until("a measuring window", Duration::from_secs(60), || async {
            let got = target.received();
            match (got.get(from), got.last()) {
                (Some(first), Some(last)) if last.at - first.at >= window => Ok(got),
                _ => Err(format!("{} requests", got.len())),
            }
        })
        .await
        .unwrap();
    let span = received.last().unwrap().at - received[from].at;
    (received.len() - from - 1) as f64 / span.as_secs_f64()
}

fn near(rate: f64) -> bool {
    (rate - RATE).abs() <= RATE * 0.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_targets_rate_limit_holds_for_the_route_with_one_or_three_dispatchers() {
    let api = TargetServer::start().await.unwrap();
    let route = ProvisionedRoute::new(&manifests(&api.url("/"))).await;
    route.publish((0..2000).map(|i| format!("evt-{i}"))).await;

    // One replica of an autoscaled route (up to 3): once it has counted itself, it
    // takes the whole limit, not a third of it.
    let started = Instant::now();
    let first = dispatcher(&route, "dispatcher-0");
    wait::until("the first requests", Duration::from_secs(30), || async {
        if api.count() > 0 && started.elapsed() > Duration::from_secs(2) {
            Ok(())
        } else {
            Err(format!("{}", api.count()))
        }
    })
    .await
    .unwrap();
    let alone = rate(&api, api.count(), Duration::from_secs(5)).await;

    // Three replicas: each takes a third.
    let others = [
        dispatcher(&route, "dispatcher-1"),
        dispatcher(&route, "dispatcher-2"),
    ];
    let since = Instant::now();
    wait::until(
        "the others to count in",
        Duration::from_secs(30),
        || async {
            if since.elapsed() > Duration::from_secs(3) {
                Ok(())
            } else {
                Err(String::new())
            }
        },
    )
    .await
    .unwrap();
    let shared = rate(&api, api.count(), Duration::from_secs(5)).await;
    drop(others);
    drop(first);
    eprintln!("aggregate: {alone:.1}/s alone, {shared:.1}/s shared by three");
    assert!(
        near(alone) && near(shared),
        "aggregate rates {alone:.1}/s alone and {shared:.1}/s with three replicas; the limit is {RATE}/s"
    );
}
