//! `fanout dispatch` as a process: crashes lose nothing, SIGTERM drains, a config
//! that cannot work fails before consuming, probes and metrics are served, and a
//! target cut off from NATS is named by `/readyz` while the others deliver.
//!
//! Tests here block on child processes, so they run on a multi-threaded runtime:
//! the scripted targets must keep answering while the test thread waits.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream;
use fanout_testkit::nats_proxy::NatsProxy;
use fanout_testkit::process::Spawned;
use fanout_testkit::target::{Reply, TargetServer};
use fanout_testkit::{free_port, http, wait};
use support::ProvisionedRoute;

const T: Duration = Duration::from_secs(30);

/// Provisions route `orders` delivering to one ApiTarget at `url`.
async fn route_to(url: &str, target_extra: &str) -> ProvisionedRoute {
    ProvisionedRoute::new(&format!(
        "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: api}}
spec:
  url: {url}
  timeout: 2s
  retry: {{maxAttempts: 50, initialDelay: 50ms, maxDelay: 200ms}}
{target_extra}
---
apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: orders}}
spec:
  targets: [{{name: api, apiTargetRef: {{name: api}}}}]
"
    ))
    .await
}

/// Waits until the dispatcher serving probes at `addr` reports NATS away (`/readyz`).
async fn wait_nats_away(addr: &str) {
    wait::until("the dispatcher to report NATS away", T, || async {
        match http::get(addr, "/readyz").await {
            Ok(r) if r.status != 200 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
}

/// The target's consumer: events not yet fetched, and fetched but not yet acked.
async fn backlog(route: &ProvisionedRoute) -> (u64, usize) {
    let stream = route.js.get_stream(&route.config.stream).await.unwrap();
    let mut consumer: jetstream::consumer::PullConsumer = stream.get_consumer("api").await.unwrap();
    let info = consumer.info().await.unwrap();
    (info.num_pending, info.num_ack_pending)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_killed_mid_run_and_restarted_loses_nothing() {
    let target = TargetServer::start().await.unwrap();
    target.set_default(Reply::Delay(Duration::from_millis(20), 200));
    let setup = route_to(&target.url("/"), "  maxInFlight: 16\n").await;
    let sent: BTreeSet<String> = (0..300).map(|i| format!("evt-{i}")).collect();
    setup.publish(sent.iter().cloned()).await;

    let mut first = setup.dispatcher(free_port());
    target.wait_for(50, T).await.unwrap();
    first.kill(); // SIGKILL: no drain, no acks for what was in flight
    let before_restart = target.count();
    assert!(
        before_restart < 300,
        "the kill came too late to prove anything"
    );

    let mut second = setup.dispatcher(free_port());
    target.wait_for_keys(&sent, T).await.unwrap();
    assert!(second.terminate(T).unwrap().success());

    // At least once: duplicates are possible for what was in flight at the kill, and
    // they carry the same Idempotency-Key as the first copy.
    let all = target.keys();
    assert!(all.len() >= 300);
    assert!(all.iter().all(|k| sent.contains(k)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_restart_mid_run_loses_nothing_and_needs_no_dispatcher_restart() {
    let target = TargetServer::start().await.unwrap();
    target.set_default(Reply::Delay(Duration::from_millis(20), 200));
    let mut setup = route_to(&target.url("/"), "  maxInFlight: 16\n").await;
    let before: BTreeSet<String> = (0..300).map(|i| format!("evt-{i}")).collect();
    setup.publish(before.iter().cloned()).await;
    let port = free_port();
    let mut dispatcher = setup.dispatcher(port);
    target.wait_for(50, T).await.unwrap();

    // SIGKILL: the stream's file store survives, acks in flight are lost.
    setup.nats.kill();
    let addr = format!("127.0.0.1:{port}");
    wait_nats_away(&addr).await;
    assert!(
        target.distinct_keys().len() < 300,
        "NATS went away too late to prove anything"
    );
    setup.nats.restart().unwrap();

    // The same process picks up where it was, and takes new events too.
    let after: BTreeSet<String> = (300..400).map(|i| format!("evt-{i}")).collect();
    setup.publish(after.iter().cloned()).await;
    let all: BTreeSet<String> = before.union(&after).cloned().collect();
    target.wait_for_keys(&all, T).await.unwrap();
    assert_eq!(target.distinct_keys(), all);
    // Ready again: its own connection and the target's are back.
    wait::until("the dispatcher to be ready again", T, || async {
        match http::get(&addr, "/readyz").await {
            Ok(r) if r.status == 200 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    assert!(dispatcher.terminate(T).unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_whose_nats_connection_is_down_is_named_by_readyz_and_the_others_deliver() {
    let (api, audit) = (
        TargetServer::start().await.unwrap(),
        TargetServer::start().await.unwrap(),
    );
    let setup = ProvisionedRoute::new(&format!(
        "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: api}}
spec: {{url: \"{}\"}}
---
apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: audit}}
spec: {{url: \"{}\"}}
---
apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: orders}}
spec:
  targets:
  - {{name: api, apiTargetRef: {{name: api}}}}
  - {{name: audit, apiTargetRef: {{name: audit}}}}
",
        api.url("/"),
        audit.url("/")
    ))
    .await;
    let upstream = format!("127.0.0.1:{}", setup.nats.port());
    let proxy = NatsProxy::start(upstream.parse().unwrap()).await.unwrap();
    let port = free_port();
    let mut dispatcher = setup.dispatcher_via(&proxy.url(), port, &["--egress-allow", "127.0.0.1"]);
    let addr = format!("127.0.0.1:{port}");
    let ready = |expect: u16| {
        let addr = addr.clone();
        async move {
            wait::until(&format!("/readyz to answer {expect}"), T, || async {
                match http::get(&addr, "/readyz").await {
                    Ok(r) if r.status == expect => Ok(r.body),
                    other => Err(format!("{other:?}")),
                }
            })
            .await
            .unwrap()
        }
    };
    let first: BTreeSet<String> = (0..20).map(|i| format!("evt-{i}")).collect();
    setup.publish(first.iter().cloned()).await;
    api.wait_for_keys(&first, T).await.unwrap();
    audit.wait_for_keys(&first, T).await.unwrap();
    ready(200).await;

    // Only the api target's consumer connection goes: the dispatcher's own and the
    // audit target's stay up.
    proxy.cut("fanout-dispatcher-api");
    let body = ready(503).await;
    assert!(
        body.contains("target api is not connected to NATS"),
        "{body}"
    );
    assert!(
        proxy
            .connected()
            .contains(&"fanout-dispatcher-audit".to_string()),
        "{:?}",
        proxy.connected()
    );
    let later: BTreeSet<String> = (20..40).map(|i| format!("evt-{i}")).collect();
    setup.publish(later.iter().cloned()).await;
    let all: BTreeSet<String> = first.union(&later).cloned().collect();
    audit.wait_for_keys(&all, T).await.unwrap();
    assert_eq!(api.distinct_keys(), first, "api took events while cut off");

    // Back: ready again, and the api target gets what it missed.
    proxy.restore("fanout-dispatcher-api");
    ready(200).await;
    api.wait_for_keys(&all, T).await.unwrap();
    assert_eq!(api.distinct_keys(), all);
    assert!(dispatcher.terminate(T).unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_and_exits_zero() {
    let target = TargetServer::start().await.unwrap();
    target.set_default(Reply::Delay(Duration::from_millis(800), 200));
    let setup = route_to(&target.url("/"), "  maxInFlight: 8\n").await;
    let sent: BTreeSet<String> = (0..40).map(|i| format!("evt-{i}")).collect();
    setup.publish(sent.iter().cloned()).await;

    let mut dispatcher = setup.dispatcher(free_port());
    target.wait_for(8, T).await.unwrap();
    let status = dispatcher.terminate(T).unwrap();
    assert!(status.success(), "exit status {status}");
    // Everything it held was either delivered and acked or handed back: nothing waits
    // for an ack timeout.
    let (pending, ack_pending) = backlog(&setup).await;
    assert_eq!(ack_pending, 0);
    assert!(pending > 0 && pending < 40, "pending {pending}");

    target.set_default(Reply::Status(200));
    let mut again = setup.dispatcher(free_port());
    target.wait_for_keys(&sent, T).await.unwrap();
    assert!(again.terminate(T).unwrap().success());
}

/// A dispatcher for a route to `target` with `published` events, once `delivered` of
/// them have reached it and its NATS server has been killed under it.
async fn nats_away_under(
    target: &TargetServer,
    target_extra: &str,
    published: usize,
    delivered: usize,
) -> (ProvisionedRoute, Spawned) {
    let mut setup = route_to(&target.url("/"), target_extra).await;
    setup
        .publish((0..published).map(|i| format!("evt-{i}")))
        .await;
    let port = free_port();
    let dispatcher = setup.dispatcher(port);
    target.wait_for(delivered, T).await.unwrap();
    setup.nats.kill();
    wait_nats_away(&format!("127.0.0.1:{port}")).await;
    (setup, dispatcher)
}

/// A pod told to stop while NATS is away (a node drained during a NATS outage) must
/// still stop, within its termination grace period: what it cannot hand back,
/// JetStream redelivers after the ack wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_nats_is_away_still_stops_the_dispatcher() {
    let target = TargetServer::start().await.unwrap();
    target.set_default(Reply::Delay(Duration::from_millis(20), 200));
    let (_setup, mut dispatcher) = nats_away_under(&target, "  maxInFlight: 8\n", 200, 20).await;
    // The support's dispatcher has a grace of 10 s; stopping may take that, 5 s more
    // for NATS, and the exit itself.
    let status = dispatcher.terminate(Duration::from_secs(20));
    let status = status.expect("the dispatcher still runs 20 s after SIGTERM with NATS away");
    // It says why it stopped without handing everything back.
    assert!(!status.success(), "exit status {status}");
    let log = dispatcher.log();
    assert!(
        log.contains("NATS is away") || log.contains("is NATS reachable?"),
        "the log does not name NATS:\n{log}"
    );
}

/// With nothing in flight, a pod told to stop while NATS is away stops at once: it
/// does not wait out JetStream's timeout (5 s) for acknowledgements of its last
/// health snapshot and history records, which cannot come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_nats_is_away_and_nothing_is_in_flight_stops_at_once() {
    let target = TargetServer::start().await.unwrap();
    let (_setup, mut dispatcher) = nats_away_under(&target, "", 5, 5).await;
    // Less than JetStream's 5 s: stopping in time shows that no answer was awaited.
    let status = dispatcher.terminate(Duration::from_secs(4));
    let log = dispatcher.log();
    let status = status.unwrap_or_else(|e| panic!("{e:#}\n{log}"));
    assert!(!status.success(), "exit status {status}");
    assert!(
        log.contains("NATS is away: the last health snapshot is not written"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_file_fails_fast_naming_the_field() {
    let target = TargetServer::start().await.unwrap();
    let setup = route_to(
        &target.url("/"),
        "  auth: {bearer: {secretRef: {name: api-token, key: token}}}\n",
    )
    .await;
    setup.publish(["evt-1".to_string()]).await;
    let mut dispatcher = setup.dispatcher(free_port());
    assert!(!dispatcher.wait(T).unwrap().success());
    let stderr = dispatcher.log();
    assert!(
        stderr.contains("targets[api].credentials.bearerTokenFile"),
        "{stderr}"
    );
    assert!(stderr.contains("api-token/token"), "{stderr}");
    assert_eq!(backlog(&setup).await, (1, 0), "nothing was consumed");
    assert_eq!(target.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_was_never_provisioned_is_refused_at_start() {
    let target = TargetServer::start().await.unwrap();
    let setup = route_to(&target.url("/"), "").await;
    setup.js.delete_stream(&setup.config.stream).await.unwrap();
    let mut dispatcher = setup.dispatcher(free_port());
    assert!(!dispatcher.wait(T).unwrap().success());
    let stderr = dispatcher.log();
    assert!(
        stderr.contains("stream fanout_test_orders does not exist"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics_are_served() {
    let target = TargetServer::start().await.unwrap();
    let setup = route_to(&target.url("/"), "").await;
    setup.publish(["evt-1".to_string()]).await;
    let port = free_port();
    let mut dispatcher = setup.dispatcher(port);
    target.wait_for(1, T).await.unwrap();

    let addr = format!("127.0.0.1:{port}");
    let metrics = wait::until("the delivery to show in /metrics", T, || async {
        let r = http::get(&addr, "/metrics").await?;
        if r.status == 200
            && r.body.contains(
                r#"fanout_deliveries_total{route="test/orders",target="api",outcome="delivered"} 1"#,
            )
        {
            Ok(r)
        } else {
            Err(format!("{} {}", r.status, r.body))
        }
    })
    .await
    .unwrap();
    assert!(metrics.body.contains("# EOF"), "{}", metrics.body);
    assert_eq!(http::get(&addr, "/healthz").await.unwrap().status, 200);
    assert_eq!(http::get(&addr, "/readyz").await.unwrap().status, 200);

    assert!(dispatcher.terminate(T).unwrap().success());
}
