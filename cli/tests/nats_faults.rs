//! `fanout standalone` on a three-node NATS cluster with an R3 route, under steady
//! load through its gateway, while a node fails the ways cluster nodes fail. Each
//! test ends with the ledger: every event the gateway accepted (202) reached every
//! target, or is a dead letter with a reason. Producers retry a 503 with the same
//! Idempotency-Key, as clients should; nothing else may go wrong for them.
//! docs/reliability.md has the longer runs (`scripts/faults.sh`).

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use fanout_testkit::ledger::{self, Account};
use fanout_testkit::nats_cluster::NatsCluster;
use fanout_testkit::netns::Lab;
use fanout_testkit::producer::{Producer, Sent};
use fanout_testkit::target::TargetServer;
use fanout_testkit::wait;
use support::standalone::Standalone;

const T: Duration = Duration::from_secs(60);
const ROUTE: &str = "orders";
/// The clients' PING interval in these tests: a frozen server is given up on after
/// two unanswered PINGs.
const PING: &str = "1s";

fn manifests(a: &str, b: &str) -> String {
    format!(
        "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: a}}
spec: {{url: '{a}', timeout: 2s, retry: {{maxAttempts: 1000, initialDelay: 100ms, maxDelay: 1s}}}}
---
apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: b}}
spec: {{url: '{b}', timeout: 2s, retry: {{maxAttempts: 1000, initialDelay: 100ms, maxDelay: 1s}}}}
---
apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: {ROUTE}}}
spec:
  source: {{replicas: 3}}
  targets:
    - {{name: a, apiTargetRef: {{name: a}}}}
    - {{name: b, apiTargetRef: {{name: b}}}}
  gateway: {{allowUnauthenticated: true}}
"
    )
}

/// The route on the cluster, its two targets and a producer at 100 events/s.
struct Run {
    producer: Producer,
    standalone: Standalone,
    a: TargetServer,
    b: TargetServer,
    cluster: NatsCluster,
    /// The network the nodes are on, if not loopback (dropped after them).
    lab: Option<Lab>,
}

impl Run {
    async fn start() -> Run {
        Self::start_on(NatsCluster::start().unwrap(), None).await
    }

    /// The cluster's nodes each in a network namespace of their own.
    async fn start_in_lab() -> Run {
        let mut lab = Lab::new().unwrap();
        let cluster = NatsCluster::start_in(&mut lab).unwrap();
        Self::start_on(cluster, Some(lab)).await
    }

    async fn start_on(cluster: NatsCluster, lab: Option<Lab>) -> Run {
        let a = TargetServer::start().await.unwrap();
        let b = TargetServer::start().await.unwrap();
        let standalone = Standalone::start_with(
            &cluster.urls(),
            "shop",
            &manifests(&a.url("/"), &b.url("/")),
            &["--nats-ping-interval", PING],
        )
        .await;
        let path = format!("/v1/namespaces/shop/routes/{ROUTE}/events");
        let producer = Producer::start(
            &standalone.gateway,
            &path,
            &[],
            "order",
            Duration::from_millis(10),
        );
        Run {
            producer,
            standalone,
            a,
            b,
            cluster,
            lab,
        }
    }

    /// Waits until `n` more events were accepted than `since`.
    async fn accepted_more(&self, since: usize, n: usize) {
        wait::until(&format!("{n} more accepted events"), T, || async {
            let got = self.producer.sent().accepted.len();
            if got >= since + n {
                Ok(())
            } else {
                Err(format!(
                    "{got} accepted: {:?}",
                    self.producer.sent().statuses
                ))
            }
        })
        .await
        .unwrap();
    }

    /// The node leading the route's stream.
    async fn leader(&self) -> usize {
        let stream = "fanout_shop_orders";
        let name = wait::until("the stream's leader", T, || async {
            let mut last = String::new();
            for i in 0..3 {
                if self.cluster.is_running(i) {
                    match self.cluster.stream_leader(i, stream).await {
                        Ok(leader) => return Ok(leader),
                        Err(e) => last = e,
                    }
                }
            }
            Err(last)
        })
        .await
        .unwrap();
        self.cluster.index_of(&name).unwrap()
    }

    /// Stops the load and checks the ledger once every target has settled; what the
    /// producer saw.
    async fn finish(self) -> Sent {
        let sent = self.producer.stop().await;
        assert!(
            sent.accepted.len() > 100,
            "too little got through to prove anything: {:?}",
            sent.statuses
        );
        for (name, target) in [("a", &self.a), ("b", &self.b)] {
            let balanced =
                wait::until(&format!("target {name}'s ledger to balance"), T, || async {
                    // The CLI may time out while the cluster settles; that is retried.
                    let table = self
                        .standalone
                        .try_cli(&["dlq", "list", "--route", ROUTE, "--limit", "100000"])?;
                    let dead = ledger::dead_letters(&table);
                    let account = Account::new(name, &sent.accepted, &target.keys(), &dead);
                    account.balances().map(|()| account)
                })
                .await;
            match balanced {
                Ok(account) => eprintln!("{account}"),
                Err(e) => panic!("{e:#}\nproducer: {:?}", sent.statuses),
            }
        }
        let unexpected: Vec<_> = sent
            .statuses
            .iter()
            .filter(|(status, _)| ![202u16, 503].contains(status))
            .collect();
        assert!(
            unexpected.is_empty(),
            "producers see only 202 and 503: {:?}",
            sent.statuses
        );
        assert_eq!(
            sent.unavailable_without_retry_after, 0,
            "every 503 says when to retry"
        );
        self.standalone.sigterm_exits_zero();
        sent
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_three_replicas_gets_a_stream_on_all_three_nodes() {
    let run = Run::start().await;
    let leader = run.leader().await;
    let body = fanout_testkit::http::get(
        &run.cluster.monitor_addr(leader),
        "/jsz?streams=true&config=true",
    )
    .await
    .unwrap()
    .body;
    let jsz: serde_json::Value = serde_json::from_str(&body).unwrap();
    let stream = jsz["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
        .find(|s| s["name"] == "fanout_shop_orders")
        .unwrap()
        .clone();
    assert_eq!(stream["config"]["num_replicas"], 3, "{stream}");
    let peers: BTreeSet<&str> = stream["cluster"]["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str())
        .chain(stream["cluster"]["leader"].as_str())
        .collect();
    assert_eq!(peers.len(), 3, "{stream}");
    run.accepted_more(0, 150).await;
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leaders_node_under_load_loses_nothing() {
    let mut run = Run::start().await;
    run.accepted_more(0, 100).await;
    let leader = run.leader().await;
    run.cluster.kill(leader);
    let before = run.producer.sent().accepted.len();
    // A new leader takes over and the gateway stores again.
    run.accepted_more(before, 100).await;
    tokio::task::block_in_place(|| run.cluster.restart(leader)).unwrap();
    let before = run.producer.sent().accepted.len();
    run.accepted_more(before, 100).await;
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_frozen_longer_than_the_ping_interval_loses_nothing() {
    let run = Run::start().await;
    run.accepted_more(0, 100).await;
    let leader = run.leader().await;
    run.cluster.freeze(leader);
    let before = run.producer.sent().accepted.len();
    // Well past two PING intervals: clients of the frozen node have moved on.
    run.accepted_more(before, 300).await;
    run.cluster.thaw(leader);
    let before = run.producer.sent().accepted.len();
    run.accepted_more(before, 100).await;
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_node_loses_nothing() {
    let mut run = Run::start().await;
    for node in 0..3 {
        let before = run.producer.sent().accepted.len();
        run.accepted_more(before, 50).await;
        tokio::task::block_in_place(|| run.cluster.restart(node)).unwrap();
    }
    let before = run.producer.sent().accepted.len();
    run.accepted_more(before, 100).await;
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_leaders_node_cut_off_from_the_others_and_healed_loses_nothing() {
    let run = Run::start_in_lab().await;
    run.accepted_more(0, 100).await;
    let leader = run.leader().await;
    let lab = run.lab.as_ref().unwrap();
    let host = run.cluster.host(leader).unwrap().clone();
    lab.cut(&host).unwrap();
    // The other two elect a leader and take events; the cut node's clients give it
    // up after two PINGs. The partition lasts while 500 more are accepted (5 s).
    let before = run.producer.sent().accepted.len();
    run.accepted_more(before, 500).await;
    lab.heal(&host).unwrap();
    let before = run.producer.sent().accepted.len();
    run.accepted_more(before, 100).await;
    run.finish().await;
}
