//! The Helm chart `charts/fanout` against the pinned helm and the local control
//! plane: it lints clean, every supported value set renders into objects the
//! apiserver accepts, wrong values are refused with the field named, and a real
//! install creates locked-down objects that `helm uninstall` removes again.
//!
//! Pods stay Pending (the control plane has no node yet), so installs never `--wait`.

mod install;
mod monitoring;
mod network_policy;
mod render;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use fanout_testkit::cluster::{self, TestNamespace, check, kubectl};
use fanout_testkit::{tools, wait};
use serde_json::Value;

/// The NATS URL every value set uses; nothing connects to it in these tests.
const NATS_URL: &str = "nats://nats.nats.svc:4222";
/// The Kubernetes version of the local control plane (see e2e/tools.sh).
const KUBE_VERSION: &str = "v1.34.4";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e has a parent directory")
        .to_path_buf()
}

fn chart_dir() -> PathBuf {
    repo_root().join("charts/fanout")
}

/// The pinned helm, with its cache, config and data kept out of the user's home, in
/// the target directory's space for tests (one per process under the system's temp
/// directory was left behind by every run).
fn helm(args: &[&str]) -> Command {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    let home = HOME.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("chart-helm-home");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    });
    let mut cmd = Command::new(tools::path("helm").unwrap());
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .args(args);
    cmd
}

/// `--set` flags for the given `key=value` pairs, with nats.url first.
fn value_flags(sets: &[&str]) -> Vec<String> {
    std::iter::once(format!("nats.url={NATS_URL}"))
        .chain(sets.iter().map(|s| s.to_string()))
        .flat_map(|s| ["--set".to_string(), s])
        .collect()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `helm template` of the chart into `namespace`, with `extra` flags (values).
fn template(release: &str, namespace: &str, extra: &[String]) -> Output {
    let chart = chart_dir();
    let mut cmd = helm(&[
        "template",
        release,
        chart.to_str().unwrap(),
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
    ]);
    cmd.args(extra);
    run(&mut cmd)
}

/// Renders the chart and sends the result to the apiserver with
/// `kubectl apply --dry-run=server`; returns the objects as the server would store them.
fn render_and_dry_run(release: &str, namespace: &str, sets: &[&str]) -> Vec<Value> {
    let rendered = template(release, namespace, &value_flags(sets));
    check(&rendered, &format!("helm template with {sets:?}")).unwrap();
    let mut apply = kubectl(&["apply", "--dry-run=server", "-o", "json", "-f", "-"])
        .unwrap()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    apply
        .stdin
        .take()
        .unwrap()
        .write_all(&rendered.stdout)
        .unwrap();
    let out = apply.wait_with_output().unwrap();
    check(
        &out,
        &format!("kubectl apply --dry-run=server of the chart with {sets:?}"),
    )
    .unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    match json["kind"].as_str() {
        Some("List") => json["items"].as_array().unwrap().clone(),
        _ => vec![json],
    }
}

/// `Kind/name` of every object, sorted.
fn kinds_and_names(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in {:?}", kinds_and_names(objects)))
}

/// The value of environment variable `name` of the first container.
fn env<'a>(deployment: &'a Value, name: &str) -> Option<&'a Value> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

fn env_value<'a>(deployment: &'a Value, name: &str) -> &'a str {
    env(deployment, name)
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("no value for env {name}"))
}

/// A release name unique to one test: the test namespace's random suffix.
fn release_for(ns: &TestNamespace) -> String {
    ns.name.clone()
}

/// Installs minimal ServiceMonitor, PodMonitor and PrometheusRule CRDs (any spec
/// accepted), so the server dry-run can check the chart's monitoring objects' kind,
/// scope and metadata. The Prometheus Operator's own schemas are not available here;
/// their spec fields are checked below by reading the rendered objects, and the
/// alerts against the real processes' metrics in cli/tests/operator/health.rs.
fn ensure_monitoring_crds() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        for kind in ["ServiceMonitor", "PodMonitor", "PrometheusRule"] {
            let singular = kind.to_lowercase();
            let plural = format!("{singular}s");
            let crd = serde_json::json!({
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": format!("{plural}.monitoring.coreos.com")},
                "spec": {
                    "group": "monitoring.coreos.com",
                    "scope": "Namespaced",
                    "names": {"kind": kind, "listKind": format!("{kind}List"),
                              "plural": plural, "singular": singular},
                    "versions": [{"name": "v1", "served": true, "storage": true,
                        "schema": {"openAPIV3Schema": {"type": "object",
                            "x-kubernetes-preserve-unknown-fields": true}}}]
                }
            });
            let mut apply = kubectl(&["apply", "--server-side", "-f", "-"])
                .unwrap()
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            apply
                .stdin
                .take()
                .unwrap()
                .write_all(crd.to_string().as_bytes())
                .unwrap();
            check(
                &apply.wait_with_output().unwrap(),
                &format!("applying a {kind} CRD"),
            )
            .unwrap();
            let established = run(&mut kubectl(&[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/{plural}.monitoring.coreos.com"),
            ])
            .unwrap());
            check(&established, &format!("waiting for the {kind} CRD")).unwrap();
        }
    });
}

/// Whether every label of `selector` is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
}
