//! A target's rate limit is the route's, whatever the number of `fanout dispatch`
//! replicas running it: one replica alone uses all of it, three share it. Measured
//! at the target, over a backlog published with plain NATS publishes (how services
//! that speak NATS send events).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use fanout_config::names::{HEALTH_BUCKET, RouteKey};
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

/// Each of `pods`' health snapshot entry in the route's KV bucket, or why not yet.
async fn snapshots<'p>(
    route: &ProvisionedRoute,
    pods: &[&'p str],
) -> Result<BTreeMap<&'p str, async_nats::jetstream::kv::Entry>, String> {
    let key = RouteKey::new(&route.config.namespace, &route.config.name);
    // The first dispatcher creates the bucket.
    let bucket = route
        .js
        .get_key_value(HEALTH_BUCKET)
        .await
        .map_err(|e| e.to_string())?;
    let mut found = BTreeMap::new();
    for pod in pods {
        let entry = bucket
            .entry(key.health_key("api", pod))
            .await
            .map_err(|e| e.to_string())?
            .ok_or(format!("no snapshot of {pod} yet"))?;
        found.insert(*pod, entry);
    }
    Ok(found)
}

/// Waits until each of `pods` has counted the route's dispatchers with all of them
/// running. A dispatcher writes its health snapshot, then counts the snapshots to
/// size its share of the rate limit; so once every pod has a snapshot, each pod's
/// next write is followed by a count that sees them all.
async fn counted(route: &ProvisionedRoute, pods: &[&str]) {
    let revisions = || async {
        let found = snapshots(route, pods).await?;
        Ok::<_, String>(
            found
                .into_iter()
                .map(|(pod, entry)| (pod, entry.revision))
                .collect::<BTreeMap<_, _>>(),
        )
    };
    let all_live = wait::until(
        "a snapshot of every pod",
        Duration::from_secs(30),
        revisions,
    )
    .await
    .unwrap();
    wait::until(
        "every pod's next snapshot",
        Duration::from_secs(30),
        || async {
            let now = revisions().await?;
            if now.iter().all(|(pod, revision)| *revision > all_live[pod]) {
                Ok(())
            } else {
                Err(format!("{now:?} against {all_live:?}"))
            }
        },
    )
    .await
    .unwrap();
}

/// Waits until each of `pods` has delivered at least `events`, as its health
/// snapshot says.
async fn delivering(route: &ProvisionedRoute, pods: &[&str], events: u64) {
    wait::until("every pod delivering", Duration::from_secs(30), || async {
        let mut delivered = BTreeMap::new();
        for (pod, entry) in snapshots(route, pods).await? {
            let snapshot: fanout_config::health::HealthSnapshot =
                serde_json::from_slice(&entry.value).map_err(|e| e.to_string())?;
            delivered.insert(pod, snapshot.delivered);
        }
        if delivered.values().all(|d| *d >= events) {
            Ok(())
        } else {
            Err(format!("{delivered:?}"))
        }
    })
    .await
    .unwrap();
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
    let first = dispatcher(&route, "dispatcher-0");
    counted(&route, &["dispatcher-0"]).await;
    let alone = rate(&api, api.count(), Duration::from_secs(5)).await;

    // Three replicas: each takes a third.
    let others = [
        dispatcher(&route, "dispatcher-1"),
        dispatcher(&route, "dispatcher-2"),
    ];
    counted(&route, &["dispatcher-0", "dispatcher-1", "dispatcher-2"]).await;
    // The first replica took up to maxInFlight events into hand at the whole rate
    // before the others came, and the consumer lets no more be pending: until it has
    // worked them off at its new share, the newcomers get few. Measure once each
    // newcomer has delivered 40 (3 s at its share), over 10 s.
    delivering(&route, &["dispatcher-1", "dispatcher-2"], 40).await;
    let shared = rate(&api, api.count(), Duration::from_secs(10)).await;
    drop(others);
    drop(first);
    eprintln!("aggregate: {alone:.1}/s alone, {shared:.1}/s shared by three");
    assert!(
        near(alone) && near(shared),
        "aggregate rates {alone:.1}/s alone and {shared:.1}/s with three replicas; the limit is {RATE}/s"
    );
}
