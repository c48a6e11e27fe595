//! Fanout as a user's cluster runs it: the chart installed with helm on a control
//! plane with one real node (`e2e/node.sh`), the operator, gateway and dispatchers
//! running as pods of the locally built image, NATS and two scripted targets on
//! this host at the pod bridge's address.
//!
//! Services: the node has no kube-proxy (docs/node.md says why), so events go to
//! the gateway Service's ready endpoints, read from its EndpointSlices: the
//! addresses a Service would balance over.

mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use fanout_api::names::RouteKey;
use fanout_api::status::CircuitState;
use fanout_testkit::ledger::{self, Account};
use fanout_testkit::nats::NatsServer;
use fanout_testkit::node;
use fanout_testkit::producer::Producer;
use fanout_testkit::target::{Reply, TargetServer};
use fanout_testkit::{http, wait};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams};
use support::nats_pods::NatsPods;
use support::{Cluster, Release, T, values};

const RELEASE: &str = "fanout";
const ROUTE: &str = "orders";

/// Posts `n` events (`{"order": i}` for i from `from`) to the route through the
/// gateway endpoints in turn; returns the ids the gateway answered with.
async fn send(release: &Release, n: usize, from: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in from..from + n {
        let body = format!("{{\"order\": {i}}}");
        let headers = [("content-type", "application/json")];
        ids.push(release.post(i, &release.ns, ROUTE, &headers, &body).await);
    }
    ids
}

fn target_yaml(name: &str, url: &str, extra: &str) -> String {
    format!(
        "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: {name}}}
spec:
  url: {url}
  timeout: 3s
  maxInFlight: 16
  retry: {{maxAttempts: 1000, initialDelay: 100ms, maxDelay: 500ms}}
{extra}
---
"
    )
}

/// The route: `stock` and `mail`, anonymous producers, its stream on all three NATS
/// pods, with `dispatcher` as given.
fn route_yaml(dispatcher: &str) -> String {
    format!(
        "apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: {ROUTE}}}
spec:
  source: {{replicas: 3}}
  targets:
    - {{name: stock, apiTargetRef: {{name: stock}}}}
    - {{name: mail, apiTargetRef: {{name: mail}}}}
  gateway: {{allowUnauthenticated: true}}
  dispatcher: {dispatcher}
"
    )
}

/// Names of the JetStream streams on a NATS server (its monitoring address), with
/// their replica counts.
async fn streams(monitor: &str) -> Result<BTreeSet<(String, u64)>, String> {
    let r = http::get(monitor, "/jsz?streams=true&config=true").await?;
    let v: serde_json::Value = serde_json::from_str(&r.body).map_err(|e| e.to_string())?;
    Ok(v["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
        .filter_map(|s| {
            let replicas = s["config"]["num_replicas"].as_u64().unwrap_or(0);
            s["name"].as_str().map(|n| (n.to_string(), replicas))
        })
        .collect())
}

async fn stream_names(monitor: &str) -> Result<BTreeSet<String>, String> {
    Ok(streams(monitor)
        .await?
        .into_iter()
        .map(|(n, _)| n)
        .collect())
}

/// The node on its own: a pod of the fanout image (the gateway, as the chart runs
/// it: non-root, read-only root file system) becomes Ready, reaching NATS on this
/// host, and answers this host at its pod IP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fanout_pod_becomes_ready_on_the_node() {
    let node = node::node().unwrap();
    let image = node.load_fanout_image().unwrap();
    let nats = NatsServer::start_on(node.host_ip).unwrap();
    let cluster = Cluster::connect(&node).await;
    let ns = format!("node-smoke-{}", std::process::id());
    cluster.create_namespace(&ns).await;
    cluster.apply(
        &ns,
        &format!(
            "apiVersion: v1
kind: Pod
metadata: {{name: gateway}}
spec:
  automountServiceAccountToken: false
  securityContext: {{runAsNonRoot: true, runAsUser: 65532, seccompProfile: {{type: RuntimeDefault}}}}
  containers:
    - name: gateway
      image: {image}
      imagePullPolicy: Never
      args: [gateway, --config, /tmp/absent.yaml, --nats-url, \"{nats}\", --listen, \"0.0.0.0:8080\", --listen-ops, \"0.0.0.0:9090\"]
      securityContext: {{readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
      readinessProbe: {{httpGet: {{path: /readyz, port: 9090}}, periodSeconds: 1}}
",
            nats = nats.url()
        ),
    );
    let pods = cluster.api::<Pod>(&ns);
    let ip = wait::until("the gateway pod Ready", T, || async {
        let pod = pods.get("gateway").await.map_err(|e| e.to_string())?;
        let status = pod.status.ok_or("no status")?;
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        match status.pod_ip {
            Some(ip) if ready => Ok(ip),
            _ => Err(format!("phase {:?}", status.phase)),
        }
    })
    .await;
    let ip = ip.unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.describe(&ns)));
    let r = http::get(&format!("{ip}:9090"), "/readyz").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    // The events port does not answer probes or serve metrics.
    let r = http::get(&format!("{ip}:8080"), "/metrics").await.unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    Api::<Namespace>::all(cluster.client.clone())
        .delete(&ns, &DeleteParams::background())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installed_fanout_delivers_through_dispatcher_pods_on_a_real_node() {
    let node = node::node().unwrap();
    let image = node.load_fanout_image().unwrap();
    let host: IpAddr = node.host_ip;
    let stock = TargetServer::start_on(host).await.unwrap();
    let mail = TargetServer::start_on(host).await.unwrap();
    let cluster = Cluster::connect(&node).await;
    let ns = format!("in-cluster-{}", std::process::id());
    cluster.create_namespace(&ns).await;

    // NATS as three pods, clustered with JetStream.
    let nats_ns = format!("nats-{}", std::process::id());
    cluster.create_namespace(&nats_ns).await;
    let _nats_cleanup = DeleteNamespace(cluster.clone(), nats_ns.clone());
    let nats_image = node.load_nats_image().unwrap();
    let nats = NatsPods::install(&cluster, &nats_ns, &nats_image).await;

    // helm install: the operator and two gateway pods become Ready on the node.
    let release = Release::install(
        &cluster,
        RELEASE,
        &ns,
        &values(&image, &node, &nats.urls(), None),
    );

    // A route with two targets: its dispatcher pods become Ready.
    let breaker = "  circuitBreaker: {failureRatio: 0.5, minimumRequests: 4, window: 10s, openDuration: 2s, halfOpenProbes: 1}";
    cluster.apply(
        &ns,
        &format!(
            "{}{}{}",
            target_yaml("stock", &stock.url("/reserve"), ""),
            target_yaml("mail", &mail.url("/send"), breaker),
            route_yaml("{replicas: 2}"),
        ),
    );
    cluster.wait_for_dispatchers(&ns, ROUTE, 2).await;
    // On the node's pod network: the bridge's /24.
    let IpAddr::V4(bridge) = host else {
        panic!("the bridge address is IPv4")
    };
    for pod in cluster.dispatcher_pods(&ns, ROUTE).await {
        let ip: std::net::Ipv4Addr = pod
            .status
            .and_then(|s| s.pod_ip)
            .expect("a Ready pod has an IP")
            .parse()
            .unwrap();
        assert_eq!(ip.octets()[..3], bridge.octets()[..3], "pod IP {ip}");
    }

    // The dispatcher pods refuse the apiserver's addresses, which the operator read
    // with the chart's RBAC: the kubernetes Service's cluster IP (only that read can
    // tell it: its KUBERNETES_SERVICE_HOST is this host here) and its EndpointSlice.
    // Nothing is connected to: the pods only say what they refuse.
    let cluster_ip = cluster.kubectl(
        "default",
        &[
            "get",
            "service",
            "kubernetes",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    );
    let dispatchers = cluster
        .api::<Deployment>(&ns)
        .get(&RouteKey::new(&ns, ROUTE).dispatcher_object_name())
        .await
        .unwrap();
    let env: Vec<(String, String)> = dispatchers.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect();
    let value = |name: &str| {
        env.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} in {env:?}"))
    };
    let apiserver = value("FANOUT_EGRESS_APISERVER");
    for address in [cluster_ip.trim().to_string(), host.to_string()] {
        assert!(
            apiserver.split(',').any(|a| a == address),
            "{address} in {apiserver}"
        );
    }
    assert_eq!(value("FANOUT_EGRESS_ALLOW"), format!("{host}/32"));
    let operator_log = cluster.kubectl(&ns, &["logs", "deployment/fanout-operator"]);
    assert!(
        !operator_log.contains("could not be read"),
        "the chart's RBAC lets the operator read them:\n{operator_log}"
    );
    let pod = cluster.dispatcher_pods(&ns, ROUTE).await[0]
        .metadata
        .name
        .clone()
        .unwrap();
    let log = cluster.kubectl(&ns, &["logs", &pod]);
    assert!(
        log.contains(
            "refusing loopback, unspecified, link-local and cloud metadata addresses, the apiserver ("
        ),
        "{log}"
    );

    // Events through the gateway reach both targets; status counts them per target.
    let mut sent: BTreeSet<String> = send(&release, 20, 0).await.into_iter().collect();
    stock.wait_for_keys(&sent, T).await.unwrap();
    mail.wait_for_keys(&sent, T).await.unwrap();
    wait::until("delivered counts in status", T, || async {
        let s = cluster.route_status(&ns, ROUTE).await?;
        let delivered: Vec<(String, u64)> = s
            .targets
            .iter()
            .map(|t| (t.name.clone(), t.delivered))
            .collect();
        if s.targets.len() == 2 && s.targets.iter().all(|t| t.delivered >= 20) {
            Ok(())
        } else {
            Err(format!("{delivered:?}"))
        }
    })
    .await
    .unwrap();
    // The gateway's metrics are on its pods' ops port (what the chart's probes and
    // PodMonitor use), not on the Service's port that producers reach.
    let events_port = release.gateway_endpoints().await.unwrap()[0].clone();
    let r = http::get(&events_port, "/metrics").await.unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    let gateway_pods = cluster
        .api::<Pod>(&ns)
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=gateway"
        )))
        .await
        .unwrap();
    let mut stored = 0;
    for pod in gateway_pods {
        let ip = pod
            .status
            .and_then(|s| s.pod_ip)
            .expect("a Ready pod has an IP");
        let r = http::get(&format!("{ip}:9090"), "/metrics").await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        stored += r
            .body
            .lines()
            .filter(|l| {
                l.starts_with(&format!(
                    "fanout_gateway_events_total{{route=\"{ns}/{ROUTE}\",outcome=\"accepted\"}}"
                )) || l.starts_with(&format!(
                    "fanout_gateway_events_total{{route=\"{ns}/{ROUTE}\",outcome=\"duplicate\"}}"
                ))
            })
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
            .sum::<u64>();
    }
    assert!(stored >= 20, "the gateways counted {stored} stored events");

    let table = cluster.kubectl(&ns, &["get", "fanoutroutes"]);
    assert!(table.contains("DELIVERED"), "{table}");
    assert!(
        table.contains("stock=") && table.contains("mail="),
        "per-target delivered counts in:\n{table}"
    );

    // One target fails: its circuit opens, the other keeps delivering.
    mail.set_default(Reply::Status(503));
    let more = send(&release, 20, 20).await;
    sent.extend(more.iter().cloned());
    let more: BTreeSet<String> = more.into_iter().collect();
    stock.wait_for_keys(&more, T).await.unwrap();
    let circuit = |name: &'static str, want: CircuitState| {
        let cluster = cluster.clone();
        let ns = ns.clone();
        async move {
            wait::until(
                &format!("{name}'s circuit {want:?} in status"),
                T,
                || async {
                    let s = cluster.route_status(&ns, ROUTE).await?;
                    let t = s
                        .targets
                        .iter()
                        .find(|t| t.name == name)
                        .ok_or("no entry")?;
                    let healthy = s
                        .conditions
                        .iter()
                        .find(|c| c.type_ == "TargetsHealthy")
                        .map(|c| c.status.clone());
                    let want_healthy = if want == CircuitState::Closed {
                        "True"
                    } else {
                        "False"
                    };
                    if t.circuit == want && healthy.as_deref() == Some(want_healthy) {
                        Ok(())
                    } else {
                        Err(format!("{:?} {:?}", t.circuit, s.conditions))
                    }
                },
            )
            .await
            .unwrap()
        }
    };
    circuit("mail", CircuitState::Open).await;
    let stock_status = cluster.route_status(&ns, ROUTE).await.unwrap();
    let stock_entry = stock_status
        .targets
        .iter()
        .find(|t| t.name == "stock")
        .unwrap();
    assert_eq!(stock_entry.circuit, CircuitState::Closed);

    // It recovers: the circuit closes again, and nothing was lost meanwhile.
    mail.set_default(Reply::Status(200));
    mail.wait_for_keys(&sent, T).await.unwrap();
    circuit("mail", CircuitState::Closed).await;

    // A dispatcher pod deleted mid-stream: every event still reaches every target.
    let victim = cluster.dispatcher_pods(&ns, ROUTE).await[0]
        .metadata
        .name
        .clone()
        .unwrap();
    let sender = {
        let release = release.clone();
        tokio::spawn(async move { send(&release, 100, 100).await })
    };
    wait::until("some of the new events at stock", T, || async {
        if stock.distinct_keys().len() >= sent.len() + 10 {
            Ok(())
        } else {
            Err(format!("{}", stock.distinct_keys().len()))
        }
    })
    .await
    .unwrap();
    cluster
        .api::<Pod>(&ns)
        .delete(&victim, &DeleteParams::default())
        .await
        .unwrap();
    let during: BTreeSet<String> = sender.await.unwrap().into_iter().collect();
    sent.extend(during);
    stock.wait_for_keys(&sent, T).await.unwrap();
    mail.wait_for_keys(&sent, T).await.unwrap();
    let deployments = cluster.api::<Deployment>(&ns);
    wait::until("the replacement dispatcher pod Ready", T, || async {
        let d = deployments
            .get(&format!("{ROUTE}-dispatcher"))
            .await
            .map_err(|e| e.to_string())?;
        let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
        let pods = cluster.dispatcher_pods(&ns, ROUTE).await;
        if ready == 2
            && !pods
                .iter()
                .any(|p| p.metadata.name.as_deref() == Some(&victim))
        {
            Ok(())
        } else {
            Err(format!("{ready}/2 ready"))
        }
    })
    .await
    .unwrap();

    // Autoscaled instead: a backlog at a slow target adds pods, and once everything is
    // delivered the route goes back to one pod, stopping the others cleanly.
    stock.set_default(Reply::Delay(Duration::from_secs(2), 200));
    cluster.apply(
        &ns,
        &route_yaml(
            "{autoscaling: {minReplicas: 1, maxReplicas: 3, targetPendingPerReplica: 10, scaleDownDelay: 5s}}",
        ),
    );
    let replicas = || async {
        let d = deployments
            .get(&format!("{ROUTE}-dispatcher"))
            .await
            .map_err(|e| e.to_string())?;
        let desired = d.spec.and_then(|s| s.replicas).unwrap_or(0);
        let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
        Ok::<_, String>((
            desired,
            ready,
            cluster.dispatcher_pods(&ns, ROUTE).await.len(),
        ))
    };
    let burst: BTreeSet<String> = send(&release, 120, 200).await.into_iter().collect();
    sent.extend(burst.iter().cloned());
    wait::until("three dispatcher replicas for the backlog", T, || async {
        match replicas().await? {
            (3, _, _) => Ok(()),
            other => Err(format!("{other:?} (desired, ready, pods)")),
        }
    })
    .await
    .unwrap();
    stock.wait_for_keys(&sent, T).await.unwrap();
    mail.wait_for_keys(&sent, T).await.unwrap();
    wait::until("one dispatcher pod once the backlog is gone", T, || async {
        match replicas().await? {
            (1, 1, 1) => Ok(()),
            other => Err(format!("{other:?} (desired, ready, pods)")),
        }
    })
    .await
    .unwrap();
    let scaled = cluster.kubectl(
        &ns,
        &[
            "get",
            "events",
            "--field-selector",
            "reason=Scaled",
            "-o",
            "jsonpath={.items[*].message}",
        ],
    );
    assert!(scaled.contains("-> 3: target stock has"), "{scaled}");
    assert!(scaled.contains("-> 1"), "{scaled}");
    // The pod left delivers what comes next.
    stock.set_default(Reply::Status(200));
    let after: BTreeSet<String> = send(&release, 10, 320).await.into_iter().collect();
    sent.extend(after);
    stock.wait_for_keys(&sent, T).await.unwrap();
    mail.wait_for_keys(&sent, T).await.unwrap();

    // helm upgrade to a new image tag under load: the operator, gateway and
    // dispatcher pods all roll. Producers (sending to the Service's ready endpoints,
    // as a Service would) see nothing but 202s and 503s with Retry-After, and every
    // event accepted reaches both targets or a dead letter.
    let next = node.load_fanout_image_tagged("next").unwrap();
    // Pods name the image as the chart writes it (without docker.io/library/).
    let next_tag = &next[next.rfind(':').unwrap()..];
    let stop = tokio_util::sync::CancellationToken::new();
    let path = format!("/v1/namespaces/{ns}/routes/{ROUTE}/events");
    let mut endpoints = release.endpoints(stop.clone());
    endpoints.wait_for(|e| !e.is_empty()).await.unwrap();
    let producer = Producer::start_to(endpoints, &path, &[], "upgrade", Duration::from_millis(20));
    let accepted_more = |n: usize| {
        let producer = &producer;
        async move {
            let before = producer.sent().accepted.len();
            wait::until(&format!("{n} more events accepted"), T, || async {
                let sent = producer.sent();
                if sent.accepted.len() >= before + n {
                    Ok(())
                } else {
                    Err(format!("{:?}", sent.statuses))
                }
            })
            .await
            .unwrap();
        }
    };
    accepted_more(50).await;
    release.upgrade(&values(&next, &node, &nats.urls(), None));
    wait::until("every Fanout pod on the new image", T, || async {
        let pods = cluster
            .api::<Pod>(&ns)
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let old: Vec<String> = pods
            .items
            .iter()
            .filter(|p| {
                p.spec.as_ref().is_some_and(|s| {
                    s.containers
                        .iter()
                        .any(|c| !c.image.as_deref().is_some_and(|i| i.ends_with(next_tag)))
                })
            })
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        let dispatchers = cluster.dispatcher_pods(&ns, ROUTE).await;
        let ready = dispatchers.iter().all(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        if old.is_empty() && !dispatchers.is_empty() && ready {
            Ok(())
        } else {
            Err(format!("still on the old image: {old:?}"))
        }
    })
    .await
    .unwrap();
    accepted_more(50).await;
    let upgraded = producer.stop().await;
    stop.cancel();
    let dead = ledger::dead_letters(&release.fanout(&["dlq", "list", "-n", &ns, "--route", ROUTE]));
    for (name, target) in [("stock", &stock), ("mail", &mail)] {
        target.wait_for_keys(&upgraded.accepted, T).await.unwrap();
        let account = Account::new(name, &upgraded.accepted, &target.keys(), &dead);
        account.balances().unwrap();
    }
    assert!(
        upgraded.statuses.keys().all(|s| [202, 503].contains(s)),
        "producers saw only 202s and 503s during the upgrade: {:?} {:?}",
        upgraded.statuses,
        upgraded.failures
    );
    assert_eq!(upgraded.unavailable_without_retry_after, 0);

    // Deleting the route removes its streams and its pods.
    let key = RouteKey::new(&ns, ROUTE);
    let found = streams(&nats.monitor_addr(0)).await.unwrap();
    assert!(
        found.contains(&(key.stream(), 3)),
        "the route's stream on all three NATS pods: {found:?}"
    );
    cluster.kubectl(
        &ns,
        &[
            "delete",
            "fanoutroute",
            ROUTE,
            "--wait=true",
            "--timeout=120s",
        ],
    );
    wait::until("the route's streams deleted", T, || async {
        let names = stream_names(&nats.monitor_addr(0)).await?;
        if names.contains(&key.stream()) || names.contains(&key.dead_letter_stream()) {
            Err(format!("{names:?}"))
        } else {
            Ok(())
        }
    })
    .await
    .unwrap();
    wait::until("the dispatcher pods gone", T, || async {
        let n = cluster.dispatcher_pods(&ns, ROUTE).await.len();
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} left"))
        }
    })
    .await
    .unwrap();

    // helm uninstall removes the operator and gateway pods.
    let uninstall = node
        .helm(&[
            "uninstall",
            RELEASE,
            "-n",
            &ns,
            "--wait",
            "--timeout",
            "120s",
        ])
        .unwrap()
        .output()
        .unwrap();
    fanout_testkit::cluster::check(&uninstall, "helm uninstall").unwrap();
    wait::until("every pod of the release gone", T, || async {
        let pods = cluster
            .api::<Pod>(&ns)
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={RELEASE}")))
            .await
            .map_err(|e| e.to_string())?;
        if pods.items.is_empty() {
            Ok(())
        } else {
            Err(format!("{} left", pods.items.len()))
        }
    })
    .await
    .unwrap();
}

/// Deletes a namespace when the test ends, passed or not.
struct DeleteNamespace(Cluster, String);

impl Drop for DeleteNamespace {
    fn drop(&mut self) {
        if let Ok(mut cmd) = self
            .0
            .node
            .kubectl(&["delete", "namespace", &self.1, "--wait=false"])
        {
            let _ = cmd.output();
        }
    }
}
