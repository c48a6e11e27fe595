//! `fanout standalone` on a three-node NATS cluster with an R3 route, under steady
//! load through its gateway, while a node fails the ways cluster nodes fail (and
//! started before its cluster can place the route's stream). Each
//! test ends with the ledger: every event the gateway accepted (202) reached every
//! target, or is a dead letter with a reason. Producers retry a 503 with the same
//! Idempotency-Key, as clients should; nothing else may go wrong for them.
//! docs/reliability.md has the longer runs (`scripts/faults.sh`).

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

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

/// Events accepted while a fault lasts (100 a second): `FANOUT_FAULT_HOLD_EVENTS`,
/// 500 by default; `scripts/faults.sh` holds faults longer.
fn hold() -> usize {
    std::env::var("FANOUT_FAULT_HOLD_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
}

/// One line of the fault table (`scripts/faults.sh` collects them from the tests'
/// output): what was accepted, what each target got, what the producer was told
/// while the fault lasted, and how soon the gateway stored again.
fn report(
    fault: &str,
    sent: &Sent,
    at_fault: Option<&Sent>,
    recovered_in: Option<Duration>,
    accounts: &[Account],
) {
    let unavailable = |s: &Sent| s.statuses.get(&503).copied().unwrap_or(0);
    let during = at_fault.map_or(0, |f| unavailable(sent) - unavailable(f));
    let targets: Vec<String> = accounts
        .iter()
        .map(|a| {
            format!(
                "{}={}/{}/{}/{}",
                a.target,
                a.delivered,
                a.duplicates,
                a.dead_lettered.values().sum::<usize>(),
                a.lost.len()
            )
        })
        .collect();
    eprintln!(
        "FAULT-REPORT\t{fault}\t{}\t{}\t{during}\t{}",
        sent.accepted.len(),
        targets.join(" "),
        recovered_in.map_or("-".to_string(), |d| format!("{:.1}s", d.as_secs_f64()))
    );
}

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
    /// When the fault began, and what the producer had seen by then.
    fault: Option<(Instant, Sent)>,
    /// How long after the fault the gateway accepted an event again.
    recovered_in: Option<Duration>,
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
            fault: None,
            recovered_in: None,
        }
    }

    /// Marks the start of the fault (call right after injecting it).
    fn fault_begins(&mut self) {
        self.fault = Some((Instant::now(), self.producer.sent()));
    }

    /// Holds the fault while `hold()` more events are accepted (the producer sends
    /// 100/s, so 100 events are a second), noting when the first got through.
    async fn hold_fault(&mut self) {
        let before = self.producer.sent().accepted.len();
        self.accepted_more(before, 1).await;
        if let Some((at, _)) = &self.fault {
            self.recovered_in = Some(at.elapsed());
        }
        self.accepted_more(before, hold()).await;
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

    /// Stops the load and checks the ledger once every target has settled; prints
    /// the fault's line of `scripts/faults.sh`'s table; what the producer saw.
    async fn finish(self, fault: &str) -> Sent {
        let sent = self.producer.stop().await;
        let mut accounts = Vec::new();
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
                Ok(account) => accounts.push(account),
                Err(e) => panic!("{e:#}\nproducer: {:?}", sent.statuses),
            }
        }
        report(
            fault,
            &sent,
            self.fault.as_ref().map(|(_, s)| s),
            self.recovered_in,
            &accounts,
        );
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
    run.finish("none: an R3 stream under load").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leaders_node_under_load_loses_nothing() {
    let mut run = Run::start().await;
    run.accepted_more(0, 100).await;
    let leader = run.leader().await;
    run.cluster.kill(leader);
    run.fault_begins();
    // A new leader takes over and the gateway stores again.
    run.hold_fault().await;
    tokio::task::block_in_place(|| run.cluster.restart(leader)).unwrap();
    let before = run.producer.sent().accepted.len();
    run.accepted_more(before, 100).await;
    run.finish("SIGKILL of the stream leader's node, then back")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_frozen_longer_than_the_ping_interval_loses_nothing() {
    let mut run = Run::start().await;
    run.accepted_more(0, 100).await;
    let leader = run.leader().await;
    run.cluster.freeze(leader);
    run.fault_begins();
    // Well past two PING intervals: clients of the frozen node have moved on.
    run.hold_fault().await;
    run.cluster.thaw(leader);
    let before = run.producer.sent().accepted.len();
    run.accepted_more(before, 100).await;
    run.finish("SIGSTOP of the stream leader's node, then SIGCONT")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_node_loses_nothing() {
    let mut run = Run::start().await;
    run.accepted_more(0, 100).await;
    run.fault_begins();
    for node in 0..3 {
        // Each node waits until its streams are current before the next goes.
        tokio::task::block_in_place(|| run.cluster.restart(node)).unwrap();
        let before = run.producer.sent().accepted.len();
        run.accepted_more(before, hold() / 3).await;
    }
    run.finish("rolling restart of the three nodes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_leaders_node_cut_off_from_the_others_and_healed_loses_nothing() {
    let mut run = Run::start_in_lab().await;
    run.accepted_more(0, 100).await;
    let leader = run.leader().await;
    let host = run.cluster.host(leader).unwrap().clone();
    run.lab.as_ref().unwrap().cut(&host).unwrap();
    run.fault_begins();
    // The other two elect a leader and take events; the cut node's clients give it
    // up after two PINGs.
    run.hold_fault().await;
    run.lab.as_ref().unwrap().heal(&host).unwrap();
    let before = run.producer.sent().accepted.len();
    run.accepted_more(before, 100).await;
    run.finish("the stream leader's node cut off from the others, then healed")
        .await;
}

/// The keys a `fanout demo-target` logged (`event=<key>` per request).
fn demo_target_keys(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split(" event=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_lossy_link_to_one_target_does_not_slow_the_other() {
    let mut lab = Lab::new().unwrap();
    let host = lab.add_host("far").unwrap();
    // The far target answers after 200 ms, over a link that drops 5% of the packets
    // it receives (tc netem is not in this kernel; iptables' statistic match is).
    let dir = tempfile::tempdir().unwrap();
    let far_addr = format!("{}:8080", host.addr);
    let mut command = lab.command(&host, std::path::Path::new(env!("CARGO_BIN_EXE_fanout")));
    command
        .args(["demo-target", "--listen", &far_addr, "--name", "far"])
        .args(["--latency", "200ms"])
        .env("NO_COLOR", "1");
    let far =
        fanout_testkit::process::Spawned::start(command, &dir.path().join("far.log")).unwrap();
    lab.drop_incoming(&host, 5).unwrap();
    let near = TargetServer::start().await.unwrap();
    let nats = fanout_testkit::nats::NatsServer::start().unwrap();
    let manifests = manifests(&near.url("/"), &format!("http://{far_addr}/"))
        .replace("spec:\n  source: {replicas: 3}\n", "spec:\n");
    let standalone = Standalone::start(&nats, "shop", &manifests).await;
    let path = format!("/v1/namespaces/shop/routes/{ROUTE}/events");
    let producer = Producer::start(
        &standalone.gateway,
        &path,
        &[],
        "order",
        Duration::from_millis(10),
    );

    // While the far target limps along, the near one keeps up with the producer:
    // what was accepted two seconds ago has reached it.
    let started = Instant::now();
    let mut checked = 0;
    while started.elapsed() < Duration::from_secs(u64::try_from(hold() / 100).unwrap_or(5)) {
        let accepted = producer.sent().accepted;
        // A window to observe, not a condition to wait for.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let got = near.distinct_keys();
        let late: Vec<&String> = accepted.iter().filter(|k| !got.contains(*k)).collect();
        assert!(
            late.len() * 10 <= accepted.len().max(10),
            "the near target fell behind: {} of {} accepted events not there two seconds later",
            late.len(),
            accepted.len()
        );
        checked += 1;
    }
    let sent = producer.stop().await;
    assert!(
        checked >= 3 && sent.accepted.len() > 200,
        "{:?}",
        sent.statuses
    );
    // Both ledgers balance: the far target gets everything too, later.
    near.wait_for_keys(&sent.accepted, T).await.unwrap();
    let far_keys = wait::until(
        "every event at the far target",
        Duration::from_secs(120),
        || async {
            let keys: BTreeSet<String> = demo_target_keys(&far.log()).into_iter().collect();
            let missing = sent.accepted.difference(&keys).count();
            if missing == 0 {
                Ok(keys)
            } else {
                Err(format!("{missing} missing"))
            }
        },
    )
    .await
    .unwrap();
    let near_account = Account::new("near", &sent.accepted, &near.keys(), &[]);
    let far_account = Account::new("far", &sent.accepted, &demo_target_keys(&far.log()), &[]);
    assert!(far_keys.len() >= sent.accepted.len());
    report(
        "200 ms and 5% packet loss to one target",
        &sent,
        None,
        None,
        &[near_account, far_account],
    );
    standalone.sigterm_exits_zero();
}

/// Started together with its cluster, before the cluster can place the route's R3
/// stream (two of the three servers still down, so no meta leader), standalone says
/// it waits for JetStream instead of exiting, and serves the route once the servers
/// are up: an event sent through its gateway then reaches both targets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_started_before_its_cluster_is_ready_waits_for_it() {
    let mut cluster = NatsCluster::start().unwrap();
    cluster.kill(1);
    cluster.kill(2);
    let a = TargetServer::start().await.unwrap();
    let b = TargetServer::start().await.unwrap();
    let mut standalone = Standalone::spawn_with(
        &cluster.urls(),
        "shop",
        &manifests(&a.url("/"), &b.url("/")),
        &["--nats-ping-interval", PING],
    );
    let waiting = "JetStream is not ready for the route's streams yet";
    wait::until("standalone to say it waits for JetStream", T, || {
        let log = standalone.process.log();
        let said = log.contains(waiting);
        async move { if said { Ok(()) } else { Err(log) } }
    })
    .await
    .unwrap();
    assert!(
        standalone.process.exited().is_none(),
        "standalone gave up:\n{}",
        standalone.process.log()
    );
    // A request to a JetStream without a leader times out only after seconds: the log
    // says what standalone waits for before that.
    let log = standalone.process.log();
    let announced = log.find("waiting for JetStream to answer");
    assert!(
        announced.is_some_and(|at| Some(at) < log.find(waiting)),
        "no word of the wait before the first failed attempt:\n{log}"
    );

    tokio::task::block_in_place(|| {
        cluster.restart(1)?;
        cluster.restart(2)
    })
    .unwrap();
    standalone.wait_ready().await;
    let key = "order-after-the-cluster-formed";
    standalone
        .accept(ROUTE, &[("idempotency-key", key)], r#"{"order":1}"#)
        .await;
    for target in [&a, &b] {
        target.wait_for(1, T).await.unwrap();
        assert_eq!(target.keys(), [key]);
    }
    standalone.sigterm_exits_zero();
}
