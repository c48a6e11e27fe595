//! Fanout as a user's cluster runs it: the chart installed with helm on a control
//! plane with one real node (`e2e/node.sh`), the operator, gateway and dispatchers
//! running as pods of the locally built image, NATS and two scripted targets on
//! this host at the pod bridge's address.
//!
//! Services: the node has no kube-proxy (docs/node.md says why), so events go to
//! the gateway Service's ready endpoints, read from its EndpointSlices: the
//! addresses a Service would balance over.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use fanout_api::names::RouteKey;
use fanout_api::status::CircuitState;
use fanout_api::{FanOutRoute, FanOutRouteStatus};
use fanout_testkit::nats::NatsServer;
use fanout_testkit::node::{self, Node};
use fanout_testkit::target::{Reply, TargetServer};
use fanout_testkit::{cluster, http, wait};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams};

/// Pods start in seconds here, but the first start of a test process may bring the
/// node up and import the image; each wait gets this long.
const T: Duration = Duration::from_secs(180);
const RELEASE: &str = "fanout";
const ROUTE: &str = "orders";

struct Env {
    node: Node,
    client: kube::Client,
    ns: String,
}

impl Env {
    fn kubectl(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.ns];
        full.extend_from_slice(args);
        let out = self.node.kubectl(&full).unwrap().output().unwrap();
        cluster::check(&out, &format!("kubectl {}", args.join(" "))).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, yaml: &str) {
        let kubectl = self
            .node
            .kubectl(&["-n", &self.ns, "apply", "-f", "-"])
            .unwrap();
        let out = cluster::run_with_stdin(kubectl, yaml.as_bytes()).unwrap();
        cluster::check(&out, "kubectl apply").unwrap();
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn status(&self) -> Result<FanOutRouteStatus, String> {
        self.api::<FanOutRoute>()
            .get(ROUTE)
            .await
            .map_err(|e| e.to_string())?
            .status
            .ok_or_else(|| "no status yet".to_string())
    }

    /// Ready addresses (`ip:port`) of the gateway Service.
    async fn gateway_endpoints(&self) -> Result<Vec<String>, String> {
        let slices = self
            .api::<EndpointSlice>()
            .list(
                &ListParams::default()
                    .labels(&format!("kubernetes.io/service-name={RELEASE}-gateway")),
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut found = Vec::new();
        for slice in slices {
            let port = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some("http"))
                .and_then(|p| p.port);
            let Some(port) = port else { continue };
            for e in &slice.endpoints {
                if e.conditions.as_ref().and_then(|c| c.ready) == Some(true) {
                    found.extend(e.addresses.iter().map(|a| format!("{a}:{port}")));
                }
            }
        }
        if found.is_empty() {
            Err("no ready gateway endpoint".into())
        } else {
            Ok(found)
        }
    }

    /// Posts `n` events through the gateway endpoints in turn; returns the ids the
    /// gateway answered with (each was stored by JetStream before the 202).
    async fn send(&self, n: usize, from: usize) -> Vec<String> {
        let endpoints = wait::until("ready gateway endpoints", T, || self.gateway_endpoints())
            .await
            .unwrap();
        let path = format!("/v1/namespaces/{}/routes/{ROUTE}/events", self.ns);
        let mut ids = Vec::with_capacity(n);
        for i in from..from + n {
            let addr = &endpoints[i % endpoints.len()];
            let body = format!("{{\"order\": {i}}}");
            // 404 until the gateway has read the route the operator wrote for it.
            let r = wait::until("the gateway to accept an event", T, || async {
                let r = http::post(
                    addr,
                    &path,
                    &[("content-type", "application/json")],
                    body.as_bytes(),
                )
                .await?;
                if r.status == 202 {
                    Ok(r)
                } else {
                    Err(format!("{} {}", r.status, r.body))
                }
            })
            .await
            .unwrap();
            let id = serde_json::from_str::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_string))
                .unwrap_or_else(|| panic!("no id in {}", r.body));
            ids.push(id);
        }
        ids
    }

    async fn dispatcher_pods(&self) -> Vec<Pod> {
        self.api::<Pod>()
            .list(&ListParams::default().labels(&format!("fanout.dev/route={ROUTE}")))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    }

    /// What the cluster looked like, for a failure message.
    fn describe(&self) -> String {
        let pods = self.node.kubectl(&["get", "pods", "-A", "-o", "wide"]);
        let events =
            self.node
                .kubectl(&["-n", &self.ns, "get", "events", "--sort-by=.lastTimestamp"]);
        let mut text = String::new();
        for cmd in [pods, events].into_iter().flatten() {
            let mut cmd = cmd;
            if let Ok(out) = cmd.output() {
                text.push_str(&String::from_utf8_lossy(&out.stdout));
                text.push_str(&String::from_utf8_lossy(&out.stderr));
            }
        }
        text
    }
}

/// Uninstalls the release and deletes its namespace when the test ends, passed or
/// not: the chart's ClusterRoles are cluster-wide, and a release left behind by a
/// failed run would block the next install.
struct ReleaseGuard {
    node: Node,
    ns: String,
}

impl Drop for ReleaseGuard {
    fn drop(&mut self) {
        if let Ok(mut cmd) =
            self.node
                .helm(&["uninstall", RELEASE, "-n", &self.ns, "--ignore-not-found"])
        {
            let _ = cmd.output();
        }
        if let Ok(mut cmd) = self
            .node
            .kubectl(&["delete", "namespace", &self.ns, "--wait=false"])
        {
            let _ = cmd.output();
        }
    }
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

/// The route: `stock` and `mail`, anonymous producers, with `dispatcher` as given.
fn route_yaml(dispatcher: &str) -> String {
    format!(
        "apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: {ROUTE}}}
spec:
  targets:
    - {{name: stock, apiTargetRef: {{name: stock}}}}
    - {{name: mail, apiTargetRef: {{name: mail}}}}
  gateway: {{allowUnauthenticated: true}}
  dispatcher: {dispatcher}
"
    )
}

fn values(image: &str, nats_url: &str, node: &Node) -> String {
    let (repository, tag) = image.rsplit_once(':').expect("image names carry a tag");
    let repository = repository.trim_start_matches("docker.io/library/");
    format!(
        "nats: {{url: \"{nats_url}\"}}
image: {{repository: {repository}, tag: \"{tag}\", pullPolicy: Never}}
dispatcher: {{image: {{pullPolicy: Never}}}}
logFormat: text
operator:
  statusInterval: 2s
  # No kube-proxy on the e2e node: the operator reaches the apiserver at the
  # address the kubernetes Service's endpoint has (docs/node.md).
  extraEnv:
    - {{name: KUBERNETES_SERVICE_HOST, value: \"{host}\"}}
    - {{name: KUBERNETES_SERVICE_PORT, value: \"{port}\"}}
gateway:
  replicas: 2
  configPollInterval: 1s
",
        host = node.host_ip,
        port = node.api_port,
    )
}

/// Names of the JetStream streams on the server, from its monitoring endpoint.
async fn stream_names(nats: &NatsServer) -> Result<BTreeSet<String>, String> {
    let r = http::get(&nats.monitor_addr(), "/jsz?streams=true").await?;
    let v: serde_json::Value = serde_json::from_str(&r.body).map_err(|e| e.to_string())?;
    Ok(v["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
        .filter_map(|s| s["name"].as_str().map(str::to_string))
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
    let client = node.client().await.unwrap();
    let ns = format!("node-smoke-{}", std::process::id());
    let namespaces = Api::<Namespace>::all(client.clone());
    namespaces
        .create(
            &Default::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    let env = Env {
        node: node.clone(),
        client: client.clone(),
        ns: ns.clone(),
    };
    env.apply(&format!(
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
      args: [gateway, --config, /tmp/absent.yaml, --nats-url, \"{nats}\", --listen, \"0.0.0.0:8080\"]
      securityContext: {{readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
      readinessProbe: {{httpGet: {{path: /readyz, port: 8080}}, periodSeconds: 1}}
",
        nats = nats.url()
    ));
    let pods = env.api::<Pod>();
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
    let ip = ip.unwrap_or_else(|e| panic!("{e:#}\n{}", env.describe()));
    let r = http::get(&format!("{ip}:8080"), "/readyz").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    namespaces
        .delete(&ns, &DeleteParams::background())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installed_fanout_delivers_through_dispatcher_pods_on_a_real_node() {
    let node = node::node().unwrap();
    let image = node.load_fanout_image().unwrap();
    let host: IpAddr = node.host_ip;
    let nats = NatsServer::start_on(host).unwrap();
    let stock = TargetServer::start_on(host).await.unwrap();
    let mail = TargetServer::start_on(host).await.unwrap();
    let client = node.client().await.unwrap();
    let ns = format!("in-cluster-{}", std::process::id());
    let namespaces = Api::<Namespace>::all(client.clone());
    namespaces
        .create(
            &Default::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    let env = Env {
        node: node.clone(),
        client: client.clone(),
        ns: ns.clone(),
    };

    let _cleanup = ReleaseGuard {
        node: node.clone(),
        ns: ns.clone(),
    };

    // helm install: the operator and two gateway pods become Ready on the node.
    let dir = tempfile::tempdir().unwrap();
    let values_file = dir.path().join("values.yaml");
    std::fs::write(&values_file, values(&image, &nats.url(), &node)).unwrap();
    let chart = fanout_testkit::repo_root().join("charts/fanout");
    let install = node
        .helm(&[
            "install",
            RELEASE,
            chart.to_str().unwrap(),
            "-n",
            &ns,
            "-f",
            values_file.to_str().unwrap(),
            "--wait",
            "--timeout",
            "180s",
        ])
        .unwrap()
        .output()
        .unwrap();
    if !install.status.success() {
        panic!(
            "helm install failed:\n{}\n{}\n{}",
            String::from_utf8_lossy(&install.stdout),
            String::from_utf8_lossy(&install.stderr),
            env.describe()
        );
    }

    // A route with two targets: its dispatcher pods become Ready.
    let breaker = "  circuitBreaker: {failureRatio: 0.5, minimumRequests: 4, window: 10s, openDuration: 2s, halfOpenProbes: 1}";
    env.apply(&format!(
        "{}{}{}",
        target_yaml("stock", &stock.url("/reserve"), ""),
        target_yaml("mail", &mail.url("/send"), breaker),
        route_yaml("{replicas: 2}"),
    ));
    let deployments = env.api::<Deployment>();
    let ready = wait::until("two dispatcher pods Ready", T, || async {
        let d = deployments
            .get_opt(&format!("{ROUTE}-dispatcher"))
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no Deployment yet")?;
        let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
        if ready == 2 {
            Ok(())
        } else {
            Err(format!("{ready}/2 ready"))
        }
    })
    .await;
    if let Err(e) = ready {
        panic!("{e:#}\n{}", env.describe());
    }
    // On the node's pod network: the bridge's /24.
    let IpAddr::V4(bridge) = host else {
        panic!("the bridge address is IPv4")
    };
    for pod in env.dispatcher_pods().await {
        let ip: std::net::Ipv4Addr = pod
            .status
            .and_then(|s| s.pod_ip)
            .expect("a Ready pod has an IP")
            .parse()
            .unwrap();
        assert_eq!(ip.octets()[..3], bridge.octets()[..3], "pod IP {ip}");
    }

    // Events through the gateway reach both targets; status counts them per target.
    let mut sent: BTreeSet<String> = env.send(20, 0).await.into_iter().collect();
    stock.wait_for_keys(&sent, T).await.unwrap();
    mail.wait_for_keys(&sent, T).await.unwrap();
    wait::until("delivered counts in status", T, || async {
        let s = env.status().await?;
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
    let table = env.kubectl(&["get", "fanoutroutes"]);
    assert!(table.contains("DELIVERED"), "{table}");
    assert!(
        table.contains("stock=") && table.contains("mail="),
        "per-target delivered counts in:\n{table}"
    );

    // One target fails: its circuit opens, the other keeps delivering.
    mail.set_default(Reply::Status(503));
    let more = env.send(20, 20).await;
    sent.extend(more.iter().cloned());
    let more: BTreeSet<String> = more.into_iter().collect();
    stock.wait_for_keys(&more, T).await.unwrap();
    wait::until("mail's circuit Open in status", T, || async {
        let s = env.status().await?;
        let mail = s
            .targets
            .iter()
            .find(|t| t.name == "mail")
            .ok_or("no mail entry")?;
        let failing = s
            .conditions
            .iter()
            .any(|c| c.type_ == "TargetsHealthy" && c.status == "False");
        if mail.circuit == CircuitState::Open && failing {
            Ok(())
        } else {
            Err(format!("{:?} {:?}", mail.circuit, s.conditions))
        }
    })
    .await
    .unwrap();
    let stock_status = env.status().await.unwrap();
    let stock_entry = stock_status
        .targets
        .iter()
        .find(|t| t.name == "stock")
        .unwrap();
    assert_eq!(stock_entry.circuit, CircuitState::Closed);

    // It recovers, and nothing was lost meanwhile.
    mail.set_default(Reply::Status(200));
    mail.wait_for_keys(&sent, T).await.unwrap();

    // A dispatcher pod deleted mid-stream: every event still reaches every target.
    let victim = env.dispatcher_pods().await[0]
        .metadata
        .name
        .clone()
        .unwrap();
    let sender = {
        let env = Env {
            node: node.clone(),
            client: client.clone(),
            ns: ns.clone(),
        };
        tokio::spawn(async move { env.send(100, 100).await })
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
    env.api::<Pod>()
        .delete(&victim, &DeleteParams::default())
        .await
        .unwrap();
    let during: BTreeSet<String> = sender.await.unwrap().into_iter().collect();
    sent.extend(during);
    stock.wait_for_keys(&sent, T).await.unwrap();
    mail.wait_for_keys(&sent, T).await.unwrap();
    wait::until("the replacement dispatcher pod Ready", T, || async {
        let d = deployments
            .get(&format!("{ROUTE}-dispatcher"))
            .await
            .map_err(|e| e.to_string())?;
        let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
        let pods = env.dispatcher_pods().await;
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
    env.apply(&route_yaml(
        "{autoscaling: {minReplicas: 1, maxReplicas: 3, targetPendingPerReplica: 10, scaleDownDelay: 5s}}",
    ));
    let replicas = || async {
        let d = deployments
            .get(&format!("{ROUTE}-dispatcher"))
            .await
            .map_err(|e| e.to_string())?;
        let desired = d.spec.and_then(|s| s.replicas).unwrap_or(0);
        let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
        Ok::<_, String>((desired, ready, env.dispatcher_pods().await.len()))
    };
    let burst: BTreeSet<String> = env.send(120, 200).await.into_iter().collect();
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
    let scaled = env.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "reason=Scaled",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(scaled.contains("-> 3: target stock has"), "{scaled}");
    assert!(scaled.contains("-> 1"), "{scaled}");
    // The pod left delivers what comes next.
    stock.set_default(Reply::Status(200));
    let after: BTreeSet<String> = env.send(10, 320).await.into_iter().collect();
    sent.extend(after);
    stock.wait_for_keys(&sent, T).await.unwrap();
    mail.wait_for_keys(&sent, T).await.unwrap();

    // Deleting the route removes its streams and its pods.
    let key = RouteKey::new(&ns, ROUTE);
    let streams = stream_names(&nats).await.unwrap();
    assert!(streams.contains(&key.stream()), "{streams:?}");
    env.kubectl(&[
        "delete",
        "fanoutroute",
        ROUTE,
        "--wait=true",
        "--timeout=120s",
    ]);
    wait::until("the route's streams deleted", T, || async {
        let names = stream_names(&nats).await?;
        if names.contains(&key.stream()) || names.contains(&key.dead_letter_stream()) {
            Err(format!("{names:?}"))
        } else {
            Ok(())
        }
    })
    .await
    .unwrap();
    wait::until("the dispatcher pods gone", T, || async {
        let n = env.dispatcher_pods().await.len();
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
    cluster::check(&uninstall, "helm uninstall").unwrap();
    wait::until("every pod of the release gone", T, || async {
        let pods = env
            .api::<Pod>()
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
    namespaces
        .delete(&ns, &DeleteParams::background())
        .await
        .unwrap();
}
