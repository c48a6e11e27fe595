//! What the operator tests share: `fanout operator` as a process scoped to a test
//! namespace of the local control plane (e2e/cluster.sh), with a nats-server of its
//! own, and manifests applied with kubectl.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream;
use fanout_api::names::RouteKey;
use fanout_api::status::Condition;
use fanout_api::{FanOutRoute, FanOutRouteStatus};
use fanout_testkit::cluster::{self, TestNamespace};
use fanout_testkit::nats::NatsServer;
use fanout_testkit::process::Spawned;
use fanout_testkit::{free_port, http, wait};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::Api;

pub const T: Duration = Duration::from_secs(60);

/// A running `fanout operator`; killed when dropped, its log printed if the test is
/// failing then.
/// The condition of `type_` among `conditions`; fails the test, naming those there,
/// when it is missing.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {conditions:?}"))
}

pub struct Operator {
    pub process: Spawned,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Operator {
    pub fn start(ns: &str, nats_url: &str, identity: &str, leader_elect: bool) -> Operator {
        Operator::start_with(ns, nats_url, identity, leader_elect, &[], None)
    }

    /// Like [`Operator::start`], with `extra` flags (a second `--watch-namespace`
    /// adds a namespace) and another kubeconfig than the control plane's.
    pub fn start_with(
        ns: &str,
        nats_url: &str,
        identity: &str,
        leader_elect: bool,
        extra: &[&str],
        kubeconfig: Option<&Path>,
    ) -> Operator {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let kubeconfig = kubeconfig
            .map(Path::to_path_buf)
            .unwrap_or_else(|| cluster::kubeconfig().unwrap());
        let mut command = Command::new(env!("CARGO_BIN_EXE_fanout"));
        command
            .args(["operator", "--watch-namespace", ns, "--namespace", ns])
            .args(["--pod-name", identity, "--lease-name", "fanout-operator"])
            .args([
                "--leader-elect",
                if leader_elect { "true" } else { "false" },
            ])
            .args(["--nats-url", nats_url, "--dispatcher-image", "fanout:test"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--status-interval", "1s"])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("FANOUT_LOG", "info,fanout_operator=debug");
        Operator {
            process: Spawned::start(command, &dir.path().join("operator.log")).unwrap(),
            port,
            _dir: dir,
        }
    }

    pub async fn metrics(&self) -> Result<String, String> {
        let r = http::get(&format!("127.0.0.1:{}", self.port), "/metrics").await?;
        Ok(r.body)
    }

    /// What to print when a test waited in vain for the operator: its reconcile and
    /// error counters and the end of its log (debug for the operator's own modules).
    pub async fn diagnosis(&self) -> String {
        let log = self.process.log();
        let mut start = log.len().saturating_sub(8000);
        while !log.is_char_boundary(start) {
            start += 1;
        }
        let reconciles: Vec<String> = self
            .metrics()
            .await
            .unwrap_or_else(|e| e)
            .lines()
            .filter(|l| {
                l.starts_with("fanout_operator_reconciles")
                    || l.starts_with("fanout_operator_errors")
            })
            .map(str::to_string)
            .collect();
        // The ApiTarget controller's lines, which the route controller's crowd out of
        // the log's end.
        let targets: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("target_controller") || l.contains("apitarget"))
            .collect();
        format!(
            "--- the operator's reconciles ---\n{}\n--- its ApiTarget controller's lines ---\n{}\n--- the operator's log, its end ---\n{}",
            reconciles.join("\n"),
            targets.join("\n"),
            &log[start..]
        )
    }
}

pub struct Env {
    pub client: kube::Client,
    pub ns: TestNamespace,
    pub nats: NatsServer,
    pub js: jetstream::Context,
    /// `--nats-token-file <file>` when NATS requires a token (every process started
    /// here passes it), else nothing.
    pub nats_flags: Vec<String>,
    _token_dir: Option<tempfile::TempDir>,
}

impl Env {
    pub async fn new(prefix: &str) -> Env {
        Env::with_nats(prefix, NatsServer::start().unwrap()).await
    }

    /// With a NATS that refuses clients without `token`, as a production one would.
    pub async fn with_nats_token(prefix: &str, token: &str) -> Env {
        let nats = NatsServer::start_with_token(std::net::Ipv4Addr::LOCALHOST.into(), token);
        Env::with_nats(prefix, nats.unwrap()).await
    }

    async fn with_nats(prefix: &str, nats: NatsServer) -> Env {
        let client = cluster::client().await.unwrap();
        let ns = TestNamespace::create(&client, prefix).await.unwrap();
        let mut options = async_nats::ConnectOptions::new();
        let (mut nats_flags, mut token_dir) = (Vec::new(), None);
        if let Some(token) = nats.token() {
            options = options.token(token.to_string());
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("token");
            std::fs::write(&file, token).unwrap();
            nats_flags = vec!["--nats-token-file".into(), file.display().to_string()];
            token_dir = Some(dir);
        }
        let js = jetstream::new(options.connect(nats.url()).await.unwrap());
        Env {
            client,
            ns,
            nats,
            js,
            nats_flags,
            _token_dir: token_dir,
        }
    }

    pub fn operator(&self) -> Operator {
        self.operator_with(&[])
    }

    /// The operator with `flags` added.
    pub fn operator_with(&self, flags: &[&str]) -> Operator {
        let mut all: Vec<&str> = self.nats_flags.iter().map(String::as_str).collect();
        all.extend_from_slice(flags);
        Operator::start_with(&self.ns.name, &self.nats.url(), "op-1", false, &all, None)
    }

    pub fn key(&self, route: &str) -> RouteKey {
        RouteKey::new(&self.ns.name, route)
    }

    /// The gateway's route list as the operator last wrote it (`gateway.yaml` of the
    /// `fanout-gateway` ConfigMap in the test namespace).
    pub async fn gateway_config(&self) -> Result<fanout_config::gateway::GatewayConfig, String> {
        let cm = self
            .api::<ConfigMap>()
            .get_opt("fanout-gateway")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("absent")?;
        let data = cm.data.unwrap_or_default();
        let yaml = data.get("gateway.yaml").ok_or("no gateway.yaml")?;
        serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())
    }

    /// `kubectl -n <namespace> <args>`; its stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.ns.name.as_str()];
        full.extend_from_slice(args);
        let out = cluster::kubectl(&full).unwrap().output().unwrap();
        cluster::check(&out, &format!("kubectl {}", args.join(" "))).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn apply(&self, yaml: &str) {
        let kubectl =
            cluster::kubectl(&["apply", "--server-side", "-n", &self.ns.name, "-f", "-"]).unwrap();
        let out = cluster::run_with_stdin(kubectl, yaml.as_bytes()).unwrap();
        cluster::check(&out, "kubectl apply").unwrap();
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    pub async fn status(&self, route: &str) -> Option<FanOutRouteStatus> {
        self.api::<FanOutRoute>()
            .get_opt(route)
            .await
            .ok()
            .flatten()
            .and_then(|r| r.status)
    }

    /// Waits until the route's condition `type_` has `status` (and `reason`, if given).
    pub async fn wait_condition(
        &self,
        route: &str,
        type_: &str,
        status: &str,
        reason: Option<&str>,
    ) -> FanOutRouteStatus {
        wait::until(
            &format!("{route} {type_}={status} {reason:?}"),
            T,
            || async {
                let s = self.status(route).await.ok_or("no status")?;
                let c = s
                    .conditions
                    .iter()
                    .find(|c| c.type_ == type_)
                    .ok_or(format!("no {type_} in {:?}", s.conditions))?;
                if c.status == status && reason.is_none_or(|r| r == c.reason) {
                    Ok(s.clone())
                } else {
                    Err(format!("{}/{}: {}", c.status, c.reason, c.message))
                }
            },
        )
        .await
        .unwrap()
    }

    pub async fn consumers(&self, stream: &str) -> Result<BTreeSet<String>, String> {
        use futures::TryStreamExt;
        let s = self
            .js
            .get_stream(stream)
            .await
            .map_err(|e| e.to_string())?;
        s.consumer_names()
            .try_collect()
            .await
            .map_err(|e| e.to_string())
    }

    pub async fn events(&self, reason: &str) -> Vec<Event> {
        self.api::<Event>()
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    }

    /// Waits for an Event with `reason` about route `route`; the first one found.
    pub async fn wait_event(&self, reason: &str, route: &str) -> Event {
        wait::until(&format!("a {reason} Event on {route}"), T, || async {
            self.events(reason)
                .await
                .into_iter()
                .find(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(route))
                .ok_or_else(|| "none".to_string())
        })
        .await
        .unwrap()
    }
}

pub fn target_yaml(name: &str, url: &str, extra: &str) -> String {
    format!(
        "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: {name}}}
spec:
  url: {url}
  timeout: 3s
  maxInFlight: 16
{extra}
---
"
    )
}

pub fn route_yaml(name: &str, targets: &[&str], extra: &str) -> String {
    let targets: Vec<String> = targets
        .iter()
        .map(|t| format!("    - {{name: {t}, apiTargetRef: {{name: {t}}}}}"))
        .collect();
    format!(
        "apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: {name}}}
spec:
  targets:
{}
{extra}
",
        targets.join("\n")
    )
}

/// What the operator rendered for `route` (the dispatcher's `route.yaml` and the
/// gateway's `gateway.yaml`), read back from the API server as pods would mount it and
/// written into `dir`; their paths. This control plane has no node, so tests run
/// those processes themselves.
pub async fn rendered(env: &Env, route: &str, dir: &Path) -> (PathBuf, PathBuf) {
    rendered_holding(env, route, dir, &env.key(route).stream()).await
}

/// Like [`rendered`], once the gateway's routes also hold `gateway_text` (the
/// operator writes the gateway's ConfigMap after the route's own).
pub async fn rendered_holding(
    env: &Env,
    route: &str,
    dir: &Path,
    gateway_text: &str,
) -> (PathBuf, PathBuf) {
    let key = env.key(route);
    let read = |name: String, file: &'static str, must_hold: String| async move {
        wait::until(&format!("ConfigMap {name}"), T, || async {
            let cm = env
                .api::<ConfigMap>()
                .get_opt(&name)
                .await
                .map_err(|e| e.to_string())?;
            let yaml = cm
                .and_then(|c| c.data)
                .and_then(|mut d| d.remove(file))
                .ok_or("absent")?;
            if yaml.contains(&must_hold) {
                Ok(yaml)
            } else {
                Err(yaml)
            }
        })
        .await
        .unwrap()
    };
    let route_config = read(key.dispatcher_object_name(), "route.yaml", key.stream()).await;
    let gateway_config = read(
        "fanout-gateway".into(),
        "gateway.yaml",
        gateway_text.to_string(),
    )
    .await;
    let (route_file, gateway_file) = (dir.join("route.yaml"), dir.join("gateway.yaml"));
    std::fs::write(&route_file, route_config).unwrap();
    std::fs::write(&gateway_file, gateway_config).unwrap();
    (route_file, gateway_file)
}

/// `fanout dispatch` with `config`, as a dispatcher pod named `pod` runs it; its
/// probes' port.
pub fn dispatcher(env: &Env, dir: &Path, config: &Path, pod: &str) -> (Spawned, u16) {
    let port = free_port();
    let process = super::spawn(
        dir,
        pod,
        &[
            "dispatch",
            "--config",
            config.to_str().unwrap(),
            "--nats-url",
            &env.nats.url(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--pod-name",
            pod,
            "--health-interval",
            "1s",
            // The targets are on loopback, which dispatchers refuse by default.
            "--egress-allow",
            "127.0.0.1",
        ]
        .into_iter()
        .chain(env.nats_flags.iter().map(String::as_str))
        .collect::<Vec<_>>(),
    );
    (process, port)
}

/// `fanout gateway` with `config`; the addresses of its events and ops ports.
pub fn gateway(env: &Env, dir: &Path, config: &Path) -> (Spawned, String, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let ops = format!("127.0.0.1:{}", free_port());
    let process = super::spawn(
        dir,
        "gateway",
        &[
            "gateway",
            "--config",
            config.to_str().unwrap(),
            "--nats-url",
            &env.nats.url(),
            "--listen",
            &addr,
            "--listen-ops",
            &ops,
        ]
        .into_iter()
        .chain(env.nats_flags.iter().map(String::as_str))
        .collect::<Vec<_>>(),
    );
    (process, addr, ops)
}

/// Posts `{"order": i}` for `i` in `range` to `route` through the gateway at `addr`,
/// waiting for each 202 (the gateway may not have loaded the route yet); the event ids
/// the gateway answered with, in order.
pub async fn send(
    env: &Env,
    addr: &str,
    route: &str,
    range: std::ops::Range<usize>,
) -> Vec<String> {
    let path = format!("/v1/namespaces/{}/routes/{route}/events", env.ns.name);
    let mut ids = Vec::with_capacity(range.len());
    for i in range {
        let body = format!("{{\"order\": {i}}}");
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
        let answer: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let id = answer["id"].as_str();
        ids.push(
            id.unwrap_or_else(|| panic!("no id in {}", r.body))
                .to_string(),
        );
    }
    ids
}
