//! What the in-cluster tests share: the chart installed with helm on the node's
//! control plane, `kubectl` as a user runs it, and events posted to the gateway
//! Service's ready endpoints.
//!
//! Services: the node has no kube-proxy (docs/node.md says why), so events go to
//! the gateway Service's ready endpoints, read from its EndpointSlices: the
//! addresses a Service would balance over.
#![allow(dead_code)]

pub mod nats_pods;

use std::sync::Arc;
use std::time::Duration;

use fanout_api::{FanOutRoute, FanOutRouteStatus};
use fanout_testkit::node::Node;
use fanout_testkit::{cluster, http, wait};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams};

/// Pods start in seconds here, but the first start of a test process may bring the
/// node up and import the image; each wait gets this long.
pub const T: Duration = Duration::from_secs(180);

/// The node's control plane, as a user's kubectl and a client see it.
#[derive(Clone)]
pub struct Cluster {
    pub node: Node,
    pub client: kube::Client,
}

impl Cluster {
    pub async fn connect(node: &Node) -> Cluster {
        Cluster {
            node: node.clone(),
            client: node.client().await.unwrap(),
        }
    }

    /// `kubectl -n <ns> <args>`; its stdout, or a failed test with its stderr.
    pub fn kubectl(&self, ns: &str, args: &[&str]) -> String {
        let mut full = vec!["-n", ns];
        full.extend_from_slice(args);
        let out = self.node.kubectl(&full).unwrap().output().unwrap();
        cluster::check(&out, &format!("kubectl {}", args.join(" "))).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl -n <ns> apply -f -` with `yaml`.
    pub fn apply(&self, ns: &str, yaml: &str) {
        let kubectl = self.node.kubectl(&["-n", ns, "apply", "-f", "-"]).unwrap();
        let out = cluster::run_with_stdin(kubectl, yaml.as_bytes()).unwrap();
        cluster::check(&out, "kubectl apply").unwrap();
    }

    pub fn api<K>(&self, ns: &str) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), ns)
    }

    /// `kubectl fanout <args>` as a user runs it: the pinned kubectl with this
    /// cluster's kubeconfig, the `fanout` binary the image was built from (by
    /// `Node::load_fanout_image`, so call that first) linked as `kubectl-fanout` on its
    /// PATH. Its stdout, or what it said on failure.
    pub fn kubectl_fanout(&self, args: &[&str]) -> Result<String, String> {
        // This test runs from <target>/<profile>/deps; the image's binary is in
        // <target>/debug or <target>/release (FANOUT_E2E_IMAGE_PROFILE).
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let target = exe
            .parent()
            .and_then(|deps| deps.parent())
            .and_then(|profile| profile.parent())
            .ok_or("no target directory above the test binary")?;
        let fanout = ["debug", "release"]
            .iter()
            .map(|p| target.join(p).join("fanout"))
            .find(|p| p.is_file())
            .ok_or("no fanout binary built for the image")?;
        let bin = tempfile::tempdir().map_err(|e| e.to_string())?;
        std::os::unix::fs::symlink(&fanout, bin.path().join("kubectl-fanout"))
            .map_err(|e| e.to_string())?;
        let path = format!(
            "{}:{}",
            bin.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = std::process::Command::new(
            fanout_testkit::tools::path("kubectl").map_err(|e| e.to_string())?,
        )
        .arg("fanout")
        .args(args)
        .env("PATH", path)
        .env("KUBECONFIG", &self.node.kubeconfig)
        .output()
        .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl fanout {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    pub async fn create_namespace(&self, name: &str) {
        Api::<Namespace>::all(self.client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap(),
            )
            .await
            .unwrap();
    }

    /// A route's status, or why there is none yet.
    pub async fn route_status(&self, ns: &str, route: &str) -> Result<FanOutRouteStatus, String> {
        self.api::<FanOutRoute>(ns)
            .get(route)
            .await
            .map_err(|e| e.to_string())?
            .status
            .ok_or_else(|| "no status yet".to_string())
    }

    pub async fn dispatcher_pods(&self, ns: &str, route: &str) -> Vec<Pod> {
        self.api::<Pod>(ns)
            .list(&ListParams::default().labels(&format!("fanout.dev/route={route}")))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
    }

    /// Waits until the route's dispatcher Deployment has `n` Ready pods.
    pub async fn wait_for_dispatchers(&self, ns: &str, route: &str, n: i32) {
        let deployments = self.api::<Deployment>(ns);
        let ready = wait::until(
            &format!("{n} dispatcher pods of {route} Ready"),
            T,
            || async {
                let d = deployments
                    .get_opt(&format!("{route}-dispatcher"))
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("no Deployment yet")?;
                let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
                if ready == n {
                    Ok(())
                } else {
                    Err(format!("{ready}/{n} ready"))
                }
            },
        )
        .await;
        if let Err(e) = ready {
            panic!("{e:#}\n{}", self.describe(ns));
        }
    }

    /// What the cluster looked like, for a failure message.
    pub fn describe(&self, ns: &str) -> String {
        let pods = self.node.kubectl(&["get", "pods", "-A", "-o", "wide"]);
        let events = self
            .node
            .kubectl(&["-n", ns, "get", "events", "--sort-by=.lastTimestamp"]);
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

/// A helm release of the chart, uninstalled (and its namespace deleted) when the
/// test ends, passed or not: the chart's ClusterRoles are cluster-wide, and a
/// release left behind by a failed run would block the next install.
#[derive(Clone)]
pub struct Release {
    pub cluster: Cluster,
    pub name: String,
    pub ns: String,
    /// Uninstalls when the last clone goes.
    _uninstall: Arc<Uninstall>,
}

struct Uninstall {
    node: Node,
    name: String,
    ns: String,
}

impl Release {
    /// `helm install <name> charts/fanout -n <ns> -f <values> --wait`; the namespace
    /// must exist.
    pub fn install(cluster: &Cluster, name: &str, ns: &str, values: &str) -> Release {
        let release = Release {
            cluster: cluster.clone(),
            name: name.to_string(),
            ns: ns.to_string(),
            _uninstall: Arc::new(Uninstall {
                node: cluster.node.clone(),
                name: name.to_string(),
                ns: ns.to_string(),
            }),
        };
        let dir = tempfile::tempdir().unwrap();
        let values_file = dir.path().join("values.yaml");
        std::fs::write(&values_file, values).unwrap();
        let chart = fanout_testkit::repo_root().join("charts/fanout");
        let install = cluster
            .node
            .helm(&[
                "install",
                name,
                chart.to_str().unwrap(),
                "-n",
                ns,
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
                cluster.describe(ns)
            );
        }
        release
    }

    /// `helm upgrade <name> charts/fanout -f <values> --wait`.
    pub fn upgrade(&self, values: &str) {
        let dir = tempfile::tempdir().unwrap();
        let values_file = dir.path().join("values.yaml");
        std::fs::write(&values_file, values).unwrap();
        let chart = fanout_testkit::repo_root().join("charts/fanout");
        let upgrade = self
            .cluster
            .node
            .helm(&[
                "upgrade",
                &self.name,
                chart.to_str().unwrap(),
                "-n",
                &self.ns,
                "-f",
                values_file.to_str().unwrap(),
                "--wait",
                "--timeout",
                "180s",
            ])
            .unwrap()
            .output()
            .unwrap();
        if !upgrade.status.success() {
            panic!(
                "helm upgrade failed:\n{}\n{}\n{}",
                String::from_utf8_lossy(&upgrade.stdout),
                String::from_utf8_lossy(&upgrade.stderr),
                self.cluster.describe(&self.ns)
            );
        }
    }

    /// Ready addresses (`ip:port`) of the gateway Service.
    pub async fn gateway_endpoints(&self) -> Result<Vec<String>, String> {
        let slices = self
            .cluster
            .api::<EndpointSlice>(&self.ns)
            .list(
                &ListParams::default()
                    .labels(&format!("kubernetes.io/service-name={}-gateway", self.name)),
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

    /// The gateway Service's ready endpoints, kept current (every 300 ms) until
    /// `stop`: what a Service balances over, for a producer that keeps sending while
    /// the gateway pods roll.
    pub fn endpoints(
        &self,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::sync::watch::Receiver<Vec<String>> {
        let (tx, rx) = tokio::sync::watch::channel(Vec::new());
        let release = self.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(found) = release.gateway_endpoints().await {
                    tx.send_replace(found);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        });
        rx
    }

    /// Posts one event to route `ns/route` through the `n`th ready gateway endpoint
    /// (in turn), retrying while the gateway does not know the route yet (404 until
    /// it has read what the operator wrote for it), does not have its ingest tokens
    /// yet (503 `route-not-ready`: a route applied before its Secret, until the copy
    /// and the kubelet's refresh of the gateway's mounted Secret follow;
    /// docs/operator.md) or cannot store (503); returns the id the gateway answered
    /// 202 with, after JetStream stored the event.
    pub async fn post(
        &self,
        n: usize,
        ns: &str,
        route: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> String {
        let endpoints = wait::until("ready gateway endpoints", T, || self.gateway_endpoints())
            .await
            .unwrap();
        let addr = &endpoints[n % endpoints.len()];
        let path = format!("/v1/namespaces/{ns}/routes/{route}/events");
        let r = wait::until("the gateway to accept an event", T, || async {
            let r = http::post(addr, &path, headers, body.as_bytes()).await?;
            match r.status {
                202 => Ok(r),
                404 | 503 => Err(format!("{} {}", r.status, r.body)),
                other => panic!("the gateway answered {other}: {}", r.body),
            }
        })
        .await
        .unwrap();
        serde_json::from_str::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("no id in {}", r.body))
    }

    /// `kubectl exec` into the operator pod, running `fanout <args>` there: how
    /// docs/operations.md says to reach NATS from inside the cluster, with the
    /// operator's NATS settings and credentials.
    pub fn fanout(&self, args: &[&str]) -> String {
        let deployment = format!("deploy/{}-operator", self.name);
        let mut full = vec!["exec", &deployment, "--", "fanout"];
        full.extend_from_slice(args);
        self.cluster.kubectl(&self.ns, &full)
    }
}

impl Drop for Uninstall {
    fn drop(&mut self) {
        if let Ok(mut cmd) = self.node.helm(&[
            "uninstall",
            &self.name,
            "-n",
            &self.ns,
            "--ignore-not-found",
        ]) {
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

/// Chart values for the node: the image just loaded, NATS at `nats_url` (with the
/// token in Secret `nats_token_secret`, key `token`, of the release's namespace and
/// of every route's namespace, when given), the operator reaching the apiserver by
/// its endpoint (no kube-proxy), short intervals. The apiserver listens on this
/// host's bridge address, where the tests' targets are too: dispatchers refuse the
/// apiserver's addresses, so that one is allowed (see docs/node.md).
pub fn values(image: &str, node: &Node, nats_url: &str, nats_token_secret: Option<&str>) -> String {
    let (repository, tag) = image.rsplit_once(':').expect("image names carry a tag");
    let repository = repository.trim_start_matches("docker.io/library/");
    let (nats_token, dispatcher_token) = match nats_token_secret {
        Some(secret) => (
            format!(", token: {{secretName: {secret}}}"),
            format!("\n  natsTokenSecret: {secret}"),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        "nats: {{url: \"{nats_url}\"{nats_token}}}
image: {{repository: {repository}, tag: \"{tag}\", pullPolicy: Never}}
dispatcher:
  image: {{pullPolicy: Never}}{dispatcher_token}
  # The test targets share the apiserver's address (this host on the bridge).
  egress: {{deny: [], allow: [\"{host}/32\"]}}
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
