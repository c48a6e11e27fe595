//! The Helm chart `charts/fanout` against the pinned helm and the local control
//! plane: it lints clean, every supported value set renders into objects the
//! apiserver accepts, wrong values are refused with the field named, and a real
//! install creates locked-down objects that `helm uninstall` removes again.
//!
//! Pods stay Pending (the control plane has no node yet), so installs never `--wait`.

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

/// The pinned helm, with its cache, config and data kept out of the user's home.
fn helm(args: &[&str]) -> Command {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    let home = HOME.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fanout-chart-helm-{}", std::process::id()));
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

#[test]
fn chart_crds_are_the_generated_crds() {
    let generated = std::fs::read(repo_root().join("crds/fanout.dev.yaml")).unwrap();
    let in_chart = std::fs::read(chart_dir().join("crds/fanout.dev.yaml")).unwrap();
    assert!(
        generated == in_chart,
        "charts/fanout/crds/fanout.dev.yaml differs from crds/fanout.dev.yaml: run \
         'cp crds/fanout.dev.yaml charts/fanout/crds/fanout.dev.yaml'"
    );
}

#[test]
fn helm_lint_is_clean_in_strict_mode() {
    let chart = chart_dir();
    for sets in [
        &[][..],
        &[
            "operator.replicas=2",
            "serviceMonitor.enabled=true",
            "prometheusRule.enabled=true",
            "grafanaDashboard.enabled=true",
        ][..],
        &["gateway.enabled=false"][..],
        &[
            "nats.credentials.secretName=nats-creds",
            "nats.ca.secretName=nats-ca",
        ][..],
        &[
            "gateway.tls.secretName=gateway-tls",
            "networkPolicy.enabled=true",
            "networkPolicy.nats.to[0].ipBlock.cidr=10.0.0.0/8",
            "networkPolicy.dispatchers.namespaces={shop}",
        ][..],
    ] {
        let mut cmd = helm(&[
            "lint",
            "--strict",
            chart.to_str().unwrap(),
            "--kube-version",
            KUBE_VERSION,
        ]);
        cmd.args(value_flags(sets));
        let out = run(&mut cmd);
        check(&out, &format!("helm lint --strict with {sets:?}")).unwrap();
    }
}

#[tokio::test]
async fn defaults_render_an_operator_a_gateway_and_least_privilege_rbac() {
    let client = cluster::client().await.unwrap();
    let ns = TestNamespace::create(&client, "chart").await.unwrap();
    let objects = render_and_dry_run("fan", &ns.name, &[]);
    let expected: BTreeSet<String> = [
        "ServiceAccount/fan-fanout-operator",
        "ClusterRole/fan-fanout-operator",
        "ClusterRoleBinding/fan-fanout-operator",
        "Role/fan-fanout-operator",
        "RoleBinding/fan-fanout-operator",
        "Role/fan-fanout-operator-apiserver",
        "RoleBinding/fan-fanout-operator-apiserver",
        "Service/fan-fanout-operator-metrics",
        "Deployment/fan-fanout-operator",
        "ServiceAccount/fan-fanout-gateway",
        "Service/fan-fanout-gateway",
        "Deployment/fan-fanout-gateway",
        "PodDisruptionBudget/fan-fanout-gateway",
        "ConfigMap/fan-fanout-connection",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    // One operator replica: no budget for it (it would block every drain).
    assert_eq!(kinds_and_names(&objects), expected);

    let operator = find(&objects, "Deployment", "fan-fanout-operator");
    assert_eq!(operator["spec"]["replicas"], 1);
    let pod = &operator["spec"]["template"]["spec"];
    assert_eq!(
        pod["containers"][0]["args"],
        serde_json::json!(["operator"])
    );
    assert_eq!(pod["containers"][0]["image"], "fanout:0.1.0");
    assert_eq!(pod["containers"][0]["imagePullPolicy"], "IfNotPresent");
    for (name, value) in [
        ("FANOUT_NATS_URL", NATS_URL),
        ("FANOUT_OPERATOR_LISTEN", "0.0.0.0:8081"),
        ("FANOUT_LEADER_ELECT", "true"),
        ("FANOUT_LEASE_NAME", "fan-fanout-operator"),
        ("FANOUT_DISPATCHER_IMAGE", "fanout:0.1.0"),
        ("FANOUT_DISPATCHER_IMAGE_PULL_POLICY", "IfNotPresent"),
        ("FANOUT_DISPATCHER_NATS_URL", NATS_URL),
        ("FANOUT_GATEWAY_CONFIG_MAP", "fan-fanout-gateway-routes"),
        ("FANOUT_GATEWAY_TOKENS_SECRET", "fan-fanout-gateway-tokens"),
        (
            "FANOUT_GATEWAY_TOKENS_DIR",
            "/var/run/fanout/gateway-tokens",
        ),
        ("FANOUT_STATUS_INTERVAL", "10s"),
    ] {
        assert_eq!(env_value(operator, name), value, "{name}");
    }
    for (name, field) in [
        ("FANOUT_NAMESPACE", "metadata.namespace"),
        ("FANOUT_POD_NAME", "metadata.name"),
    ] {
        let var = env(operator, name).unwrap_or_else(|| panic!("no env {name}"));
        assert_eq!(var["valueFrom"]["fieldRef"]["fieldPath"], field);
    }
    for probe in ["livenessProbe", "readinessProbe"] {
        let path = &pod["containers"][0][probe]["httpGet"]["path"];
        assert_eq!(
            path,
            if probe == "livenessProbe" {
                "/healthz"
            } else {
                "/readyz"
            }
        );
    }

    let gateway = find(&objects, "Deployment", "fan-fanout-gateway");
    let pod = &gateway["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["containers"][0]["args"], serde_json::json!(["gateway"]));
    assert_eq!(
        env_value(gateway, "FANOUT_GATEWAY_CONFIG"),
        "/etc/fanout/gateway/gateway.yaml"
    );
    assert_eq!(env_value(gateway, "FANOUT_GATEWAY_LISTEN"), "0.0.0.0:8080");
    assert_eq!(
        env_value(gateway, "FANOUT_GATEWAY_LISTEN_OPS"),
        "0.0.0.0:9090"
    );
    for (name, value) in [
        ("FANOUT_GATEWAY_HEADER_READ_TIMEOUT", "10s"),
        ("FANOUT_GATEWAY_BODY_READ_TIMEOUT", "30s"),
        ("FANOUT_GATEWAY_MAX_CONNECTIONS", "4096"),
    ] {
        assert_eq!(env_value(gateway, name), value, "{name}");
    }
    assert!(env(gateway, "FANOUT_GATEWAY_TLS_CERT_FILE").is_none());
    // Probes go to the ops port; the Service carries the events port alone, so
    // producers never reach the metrics.
    let container = &pod["containers"][0];
    assert_eq!(
        container["ports"],
        serde_json::json!([
            {"name": "http", "containerPort": 8080, "protocol": "TCP"},
            {"name": "ops", "containerPort": 9090, "protocol": "TCP"},
        ])
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "ops", "{probe}");
    }
    let service = find(&objects, "Service", "fan-fanout-gateway");
    assert_eq!(
        service["spec"]["ports"],
        serde_json::json!([
            {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"},
        ])
    );
    // The operator writes both; the gateway starts before they exist.
    let volumes = pod["volumes"].as_array().unwrap();
    let routes = volumes.iter().find(|v| v["name"] == "routes").unwrap();
    assert_eq!(routes["configMap"]["name"], "fan-fanout-gateway-routes");
    assert_eq!(routes["configMap"]["optional"], true);
    let tokens = volumes.iter().find(|v| v["name"] == "tokens").unwrap();
    assert_eq!(tokens["secret"]["secretName"], "fan-fanout-gateway-tokens");
    assert_eq!(tokens["secret"]["optional"], true);
    assert_eq!(
        find(&objects, "ServiceAccount", "fan-fanout-gateway")["automountServiceAccountToken"],
        false
    );

    // The chart's log settings reach the dispatcher pods through the operator.
    assert_eq!(env_value(operator, "FANOUT_DISPATCHER_LOG"), "info");
    assert_eq!(env_value(operator, "FANOUT_DISPATCHER_LOG_FORMAT"), "json");
    // Dispatchers get the default egress policy: nothing added.
    for name in [
        "FANOUT_DISPATCHER_EGRESS_DENY",
        "FANOUT_DISPATCHER_EGRESS_ALLOW",
    ] {
        assert!(env(operator, name).is_none(), "{name}");
    }
    // To find the apiserver's addresses: read two objects in `default`, nothing else.
    let apiserver = find(&objects, "Role", "fan-fanout-operator-apiserver");
    assert_eq!(apiserver["metadata"]["namespace"], "default");
    for rule in apiserver["rules"].as_array().unwrap() {
        assert_eq!(rule["verbs"], serde_json::json!(["get"]), "{rule}");
        assert_eq!(
            rule["resourceNames"],
            serde_json::json!(["kubernetes"]),
            "{rule}"
        );
    }
    let binding = find(&objects, "RoleBinding", "fan-fanout-operator-apiserver");
    assert_eq!(binding["subjects"][0]["name"], "fan-fanout-operator");
    assert_eq!(binding["subjects"][0]["namespace"], ns.name.as_str());

    // The operator changes nothing it does not create, never deletes (garbage
    // collection removes a route's objects), and reads Secrets by name only.
    let cluster_role = find(&objects, "ClusterRole", "fan-fanout-operator");
    let rules = cluster_role["rules"].as_array().unwrap();
    for rule in rules {
        let verbs = rule["verbs"].as_array().unwrap();
        assert!(!verbs.contains(&"delete".into()), "{rule}");
        assert!(!verbs.contains(&"deletecollection".into()), "{rule}");
        if verbs.contains(&"update".into()) {
            assert_eq!(
                rule["resources"],
                serde_json::json!(["fanoutroutes/finalizers"])
            );
        }
        if rule["resources"]
            .as_array()
            .unwrap()
            .contains(&"secrets".into())
        {
            assert_eq!(rule["verbs"], serde_json::json!(["get"]), "{rule}");
        }
    }
    // The Role in its own namespace limits changes to the gateway's two objects.
    let role = find(&objects, "Role", "fan-fanout-operator");
    for rule in role["rules"].as_array().unwrap() {
        if rule["verbs"] != serde_json::json!(["create"]) {
            assert!(rule["resourceNames"].is_array(), "{rule}");
        }
    }
    // The default dispatcher image is the only one allowed, and every namespace is
    // watched.
    assert!(env(operator, "FANOUT_ALLOWED_DISPATCHER_IMAGES").is_none());
    assert!(env(operator, "FANOUT_WATCH_NAMESPACE").is_none());
    ns.delete(&client).await.unwrap();
}

#[tokio::test]
async fn two_operator_replicas_get_a_disruption_budget() {
    let client = cluster::client().await.unwrap();
    let ns = TestNamespace::create(&client, "chart").await.unwrap();
    let objects = render_and_dry_run("fan", &ns.name, &["operator.replicas=2"]);
    assert_eq!(
        find(&objects, "Deployment", "fan-fanout-operator")["spec"]["replicas"],
        2
    );
    let budget = find(&objects, "PodDisruptionBudget", "fan-fanout-operator");
    assert_eq!(budget["spec"]["maxUnavailable"], 1);
    assert_eq!(
        budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "operator"
    );
    ns.delete(&client).await.unwrap();
}

#[tokio::test]
async fn service_monitors_render_only_when_enabled() {
    let client = cluster::client().await.unwrap();
    ensure_monitoring_crds();
    let ns = TestNamespace::create(&client, "chart").await.unwrap();
    let objects = render_and_dry_run(
        "fan",
        &ns.name,
        &[
            "serviceMonitor.enabled=true",
            "serviceMonitor.labels.release=prometheus",
        ],
    );
    let monitor = find(&objects, "ServiceMonitor", "fan-fanout-operator");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    // The selector matches the Service that exposes that port.
    let service = find(&objects, "Service", "fan-fanout-operator-metrics");
    assert!(selects(
        &monitor["spec"]["selector"]["matchLabels"],
        &service["metadata"]["labels"]
    ));
    assert_eq!(service["spec"]["ports"][0]["name"], "metrics");
    // The gateway's metrics are on its pods' ops port, which no Service exposes: a
    // PodMonitor scrapes them.
    let kinds = kinds_and_names(&objects);
    assert!(
        !kinds.contains("ServiceMonitor/fan-fanout-gateway"),
        "{kinds:?}"
    );
    let gateway_monitor = find(&objects, "PodMonitor", "fan-fanout-gateway");
    assert_eq!(
        gateway_monitor["metadata"]["labels"]["release"],
        "prometheus"
    );
    let endpoint = &gateway_monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], "ops");
    assert_eq!(endpoint["path"], "/metrics");
    let gateway = find(&objects, "Deployment", "fan-fanout-gateway");
    let pod_template = &gateway["spec"]["template"];
    assert!(selects(
        &gateway_monitor["spec"]["selector"]["matchLabels"],
        &pod_template["metadata"]["labels"]
    ));
    let ports = pod_template["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap();
    assert!(ports.iter().any(|p| p["name"] == "ops"), "{ports:?}");
    // Dispatcher pods are the operator's, in the routes' namespaces: a PodMonitor
    // finds them by the labels the operator gives them (checked against a real
    // dispatcher Deployment in cli/tests/operator/health.rs).
    let pods = find(&objects, "PodMonitor", "fan-fanout-dispatchers");
    assert_eq!(pods["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(pods["spec"]["namespaceSelector"]["any"], true);
    assert_eq!(
        pods["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "dispatcher"
    );
    assert_eq!(pods["spec"]["podMetricsEndpoints"][0]["port"], "metrics");

    let defaults = template("fan", &ns.name, &value_flags(&[]));
    check(&defaults, "helm template").unwrap();
    let defaults = String::from_utf8_lossy(&defaults.stdout);
    for kind in ["ServiceMonitor", "PodMonitor", "PrometheusRule"] {
        assert!(!defaults.contains(kind), "{kind} rendered by default");
    }
    ns.delete(&client).await.unwrap();
}

#[tokio::test]
async fn alerting_rules_render_when_enabled_with_the_labels_given() {
    let client = cluster::client().await.unwrap();
    ensure_monitoring_crds();
    let ns = TestNamespace::create(&client, "chart").await.unwrap();
    let objects = render_and_dry_run(
        "fan",
        &ns.name,
        &[
            "prometheusRule.enabled=true",
            "prometheusRule.labels.release=prometheus",
            "prometheusRule.alertLabels.team=payments",
            "prometheusRule.circuitOpenFor=3m",
            "prometheusRule.eventsNearExpiryFor=7m",
        ],
    );
    let rule = find(&objects, "PrometheusRule", "fan-fanout");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    let alerts: Vec<&Value> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    let names: BTreeSet<&str> = alerts
        .iter()
        .map(|a| a["alert"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "FanoutCircuitOpen",
            "FanoutEventsDeadLettered",
            "FanoutEventsNearExpiry",
            "FanoutTargetRefusingEvents",
            "FanoutGatewayNotStoring",
            "FanoutGatewayPublishSlow",
            "FanoutGatewayConfigReloadFailing",
            "FanoutGatewayConnectionsRefused",
            "FanoutGatewayTlsReloadFailing",
            "FanoutOperatorErrors",
            "FanoutOperatorNotLeading",
        ])
    );
    for alert in &alerts {
        assert_eq!(alert["labels"]["team"], "payments", "{alert}");
        assert!(alert["labels"]["severity"].is_string(), "{alert}");
        assert!(alert["annotations"]["summary"].is_string(), "{alert}");
    }
    let circuit = alerts
        .iter()
        .find(|a| a["alert"] == "FanoutCircuitOpen")
        .unwrap();
    assert_eq!(circuit["for"], "3m");
    let expiry = alerts
        .iter()
        .find(|a| a["alert"] == "FanoutEventsNearExpiry")
        .unwrap();
    assert_eq!(expiry["for"], "7m");
    // Prometheus fills in $labels when the alert fires; Helm must leave them alone.
    assert!(
        circuit["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("{{ $labels.target }}"),
        "{circuit}"
    );
    // The operator's own series are those of this release's namespace.
    let leading = alerts
        .iter()
        .find(|a| a["alert"] == "FanoutOperatorNotLeading")
        .unwrap();
    assert!(
        leading["expr"]
            .as_str()
            .unwrap()
            .contains(&format!("namespace=\"{}\"", ns.name)),
        "{leading}"
    );
    ns.delete(&client).await.unwrap();
}

#[tokio::test]
async fn the_grafana_dashboard_is_a_configmap_for_the_sidecar_when_enabled() {
    let client = cluster::client().await.unwrap();
    let ns = TestNamespace::create(&client, "chart").await.unwrap();
    let objects = render_and_dry_run(
        "fan",
        &ns.name,
        &[
            "grafanaDashboard.enabled=true",
            "grafanaDashboard.annotations.grafana_folder=Fanout",
        ],
    );
    let config_map = find(&objects, "ConfigMap", "fan-fanout-dashboard");
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(
        config_map["metadata"]["annotations"]["grafana_folder"],
        "Fanout"
    );
    let dashboard: Value =
        serde_json::from_str(config_map["data"]["fanout.json"].as_str().unwrap()).unwrap();
    assert_eq!(dashboard["uid"], "fanout-overview");
    // The JSON in the chart is the dashboard, unchanged by rendering.
    let file: Value =
        serde_json::from_slice(&std::fs::read(chart_dir().join("dashboards/fanout.json")).unwrap())
            .unwrap();
    assert_eq!(dashboard, file);

    let defaults = template("fan", &ns.name, &value_flags(&[]));
    check(&defaults, "helm template").unwrap();
    assert!(!String::from_utf8_lossy(&defaults.stdout).contains("fan-fanout-dashboard"));
    ns.delete(&client).await.unwrap();
}

#[tokio::test]
async fn gateway_disabled_renders_no_gateway_objects() {
    let client = cluster::client().await.unwrap();
    let ns = TestNamespace::create(&client, "chart").await.unwrap();
    let objects = render_and_dry_run("fan", &ns.name, &["gateway.enabled=false"]);
    let gateway_objects: Vec<_> = objects
        .iter()
        .filter(|o| o["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway")
        .collect();
    assert!(gateway_objects.is_empty(), "{gateway_objects:?}");
    find(&objects, "Deployment", "fan-fanout-operator");
    ns.delete(&client).await.unwrap();
}

#[tokio::test]
async fn nats_secrets_are_mounted_as_files_never_as_values() {
    let client = cluster::client().await.unwrap();
    let ns = TestNamespace::create(&client, "chart").await.unwrap();
    for (kind, sets, variable) in [
        (
            "credentials",
            [
                "nats.credentials.secretName=nats-creds",
                "nats.ca.secretName=nats-ca",
            ],
            "FANOUT_NATS_CREDENTIALS_FILE",
        ),
        (
            "token",
            [
                "nats.token.secretName=nats-token",
                "nats.ca.secretName=nats-ca",
            ],
            "FANOUT_NATS_TOKEN_FILE",
        ),
    ] {
        let objects = render_and_dry_run("fan", &ns.name, &sets);
        for name in ["fan-fanout-operator", "fan-fanout-gateway"] {
            let deployment = find(&objects, "Deployment", name);
            let pod = &deployment["spec"]["template"]["spec"];
            let file = env_value(deployment, variable);
            let ca = env_value(deployment, "FANOUT_NATS_CA_FILE");
            assert_eq!(ca, "/etc/fanout/nats/ca/ca.crt");
            let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
            let volumes = pod["volumes"].as_array().unwrap();
            for (volume, path) in [(format!("nats-{kind}"), file), ("nats-ca".into(), ca)] {
                let mount = mounts
                    .iter()
                    .find(|m| m["name"] == volume.as_str())
                    .unwrap();
                assert_eq!(mount["readOnly"], true);
                assert!(
                    path.starts_with(mount["mountPath"].as_str().unwrap()),
                    "{path} is not under {mount}"
                );
                let source = volumes
                    .iter()
                    .find(|v| v["name"] == volume.as_str())
                    .unwrap();
                assert!(source["secret"]["secretName"].is_string(), "{source}");
            }
            // No variable takes its value from a Secret: Secrets are files only.
            for var in pod["containers"][0]["env"].as_array().unwrap() {
                assert!(var["valueFrom"]["secretKeyRef"].is_null(), "{var}");
            }
        }
        // What `kubectl fanout` reads to reach NATS: the URL and the Secrets' names
        // and keys, never their values.
        let connection = find(&objects, "ConfigMap", "fan-fanout-connection");
        let labels = &connection["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/component"], "connection");
        assert_eq!(labels["app.kubernetes.io/part-of"], "fanout");
        let secret = format!("nats-{}", if kind == "token" { "token" } else { "creds" });
        let key = if kind == "token" {
            "token"
        } else {
            "nats.creds"
        };
        assert_eq!(
            connection["data"],
            serde_json::json!({
                "natsUrl": NATS_URL,
                format!("{kind}Secret"): secret,
                format!("{kind}Key"): key,
                "caSecret": "nats-ca",
                "caKey": "ca.crt",
                "operatorDeployment": "fan-fanout-operator",
            })
        );
    }
    ns.delete(&client).await.unwrap();
}

/// Whether every label of `selector` is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
}

#[tokio::test]
async fn gateway_tls_comes_from_the_secret_as_files_that_can_change() {
    let client = cluster::client().await.unwrap();
    let ns = TestNamespace::create(&client, "chart").await.unwrap();
    let objects = render_and_dry_run(
        "fan",
        &ns.name,
        &[
            "gateway.tls.secretName=gateway-tls",
            "gateway.tls.pollInterval=30s",
        ],
    );
    let gateway = find(&objects, "Deployment", "fan-fanout-gateway");
    let pod = &gateway["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "tls")
        .expect("a tls volume");
    assert_eq!(volume["secret"]["secretName"], "gateway-tls");
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "tls")
        .expect("a tls mount");
    assert_eq!(mount["readOnly"], true);
    // A subPath mount would never see the kubelet's updates of the Secret.
    assert!(mount["subPath"].is_null(), "{mount}");
    let dir = mount["mountPath"].as_str().unwrap();
    for (variable, key) in [
        ("FANOUT_GATEWAY_TLS_CERT_FILE", "tls.crt"),
        ("FANOUT_GATEWAY_TLS_KEY_FILE", "tls.key"),
    ] {
        assert_eq!(env_value(gateway, variable), format!("{dir}/{key}"));
        assert!(
            volume["secret"]["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["key"] == key && i["path"] == key),
            "{volume}"
        );
    }
    assert_eq!(
        env_value(gateway, "FANOUT_GATEWAY_TLS_POLL_INTERVAL"),
        "30s"
    );
    // The events port is named for what it speaks; probes stay plain HTTP on ops.
    assert_eq!(container["ports"][0]["name"], "https");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "ops");
    let service = find(&objects, "Service", "fan-fanout-gateway");
    let ports = service["spec"]["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0]["name"], "https");
    assert_eq!(ports[0]["targetPort"], "https");
    assert_eq!(ports[0]["appProtocol"], "https");
    ns.delete(&client).await.unwrap();
}

/// The NetworkPolicies the chart renders, as the apiserver stores them. The local
/// control plane (and the e2e node, whose bridge plugin enforces no policy) cannot
/// show traffic being stopped: what is checked is that each policy is valid, selects
/// the pods it is for, and admits exactly the ports and peers the values name.
#[tokio::test]
async fn network_policies_select_each_component_and_admit_only_what_the_values_name() {
    let client = cluster::client().await.unwrap();
    ensure_monitoring_crds();
    let ns = TestNamespace::create(&client, "chart").await.unwrap();
    let shop = TestNamespace::create(&client, "shop").await.unwrap();
    let crm = TestNamespace::create(&client, "crm").await.unwrap();
    let nats_peer = serde_json::json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "nats"}}});
    let scraper = serde_json::json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}});
    let namespaces = format!(
        "networkPolicy.dispatchers.namespaces={{{},{}}}",
        shop.name, crm.name
    );
    let objects = render_and_dry_run(
        "fan",
        &ns.name,
        &[
            "networkPolicy.enabled=true",
            "networkPolicy.nats.to[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=nats",
            "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring",
            &namespaces,
            "serviceMonitor.enabled=true",
        ],
    );
    let policy = |namespace: &str, name: &str| -> Value {
        objects
            .iter()
            .find(|o| {
                o["kind"] == "NetworkPolicy"
                    && o["metadata"]["namespace"] == namespace
                    && o["metadata"]["name"] == name
            })
            .unwrap_or_else(|| panic!("no NetworkPolicy {namespace}/{name}"))
            .clone()
    };
    // (port, peers) of each ingress rule; (ports, peers) of each egress rule.
    let ingress = |p: &Value| -> Vec<(i64, Value)> {
        p["spec"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| (r["ports"][0]["port"].as_i64().unwrap(), r["from"].clone()))
            .collect()
    };
    let egress_ports = |p: &Value| -> BTreeSet<(String, i64)> {
        p["spec"]["egress"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["ports"].as_array().cloned().unwrap_or_default())
            .map(|port| {
                (
                    port["protocol"].as_str().unwrap().to_string(),
                    port["port"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    let egress_to = |p: &Value, port: i64| -> Value {
        p["spec"]["egress"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| {
                r["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|x| x["port"] == port)
            })
            .map(|r| r["to"].clone())
            .unwrap_or(Value::Null)
    };
    let pod_labels = |deployment: &str| {
        find(&objects, "Deployment", deployment)["spec"]["template"]["metadata"]["labels"].clone()
    };
    let dns_and_nats = [
        ("TCP".to_string(), 4222),
        ("UDP".to_string(), 53),
        ("TCP".to_string(), 53),
    ];

    // The gateway: events from every pod of the cluster (the default), its ops port
    // from the scrapers only; out to DNS and NATS and nowhere else.
    let gateway = policy(&ns.name, "fan-fanout-gateway");
    assert_eq!(
        gateway["spec"]["policyTypes"],
        serde_json::json!(["Ingress", "Egress"])
    );
    assert!(selects(
        &gateway["spec"]["podSelector"]["matchLabels"],
        &pod_labels("fan-fanout-gateway")
    ));
    assert!(!selects(
        &gateway["spec"]["podSelector"]["matchLabels"],
        &pod_labels("fan-fanout-operator")
    ));
    assert_eq!(
        ingress(&gateway),
        [
            (8080, serde_json::json!([{"namespaceSelector": {}}])),
            (9090, serde_json::json!([scraper])),
        ]
    );
    assert_eq!(
        egress_ports(&gateway),
        dns_and_nats.iter().cloned().collect()
    );
    assert_eq!(egress_to(&gateway, 4222), serde_json::json!([nats_peer]));

    // The operator: its metrics from the scrapers; out to the apiserver, DNS, NATS.
    let operator = policy(&ns.name, "fan-fanout-operator");
    assert!(selects(
        &operator["spec"]["podSelector"]["matchLabels"],
        &pod_labels("fan-fanout-operator")
    ));
    assert_eq!(ingress(&operator), [(8081, serde_json::json!([scraper]))]);
    let mut expected: BTreeSet<(String, i64)> = dns_and_nats.iter().cloned().collect();
    expected.extend([("TCP".to_string(), 443), ("TCP".to_string(), 6443)]);
    assert_eq!(egress_ports(&operator), expected);

    // The dispatchers, in each namespace named: selected by the labels the operator
    // gives them (the PodMonitor's selector, checked against a real dispatcher
    // Deployment in cli/tests/operator/health.rs); metrics in, NATS, DNS and the targets
    // out, but not link-local addresses (cloud metadata).
    let pod_monitor = find(&objects, "PodMonitor", "fan-fanout-dispatchers");
    for namespace in [&shop.name, &crm.name] {
        let dispatchers = policy(namespace, "fan-fanout-dispatchers");
        assert_eq!(
            dispatchers["spec"]["podSelector"]["matchLabels"],
            pod_monitor["spec"]["selector"]["matchLabels"]
        );
        assert_eq!(
            ingress(&dispatchers),
            [(9090, serde_json::json!([scraper]))]
        );
        assert_eq!(
            egress_to(&dispatchers, 4222),
            serde_json::json!([nats_peer])
        );
        let targets = dispatchers["spec"]["egress"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert!(targets["ports"].is_null(), "targets on any port: {targets}");
        assert_eq!(targets["to"][0]["ipBlock"]["cidr"], "0.0.0.0/0");
        assert_eq!(
            targets["to"][0]["ipBlock"]["except"],
            serde_json::json!(["169.254.0.0/16"])
        );
    }
    assert_eq!(
        objects
            .iter()
            .filter(|o| o["kind"] == "NetworkPolicy")
            .count(),
        4,
        "{:?}",
        kinds_and_names(&objects)
    );

    // Without scrapers named, nothing may reach the metrics ports (the kubelet's
    // probes come from the pod's node, which a policy always admits).
    let objects = render_and_dry_run(
        "fan",
        &ns.name,
        &[
            "networkPolicy.enabled=true",
            "networkPolicy.nats.to[0].ipBlock.cidr=10.1.2.0/24",
        ],
    );
    let gateway = objects
        .iter()
        .find(|o| o["kind"] == "NetworkPolicy" && o["metadata"]["name"] == "fan-fanout-gateway")
        .unwrap();
    assert_eq!(
        ingress(gateway),
        [(8080, serde_json::json!([{"namespaceSelector": {}}]))]
    );
    let operator = objects
        .iter()
        .find(|o| o["kind"] == "NetworkPolicy" && o["metadata"]["name"] == "fan-fanout-operator")
        .unwrap();
    assert!(ingress(operator).is_empty(), "{operator}");

    // Off by default.
    let defaults = template("fan", &ns.name, &value_flags(&[]));
    check(&defaults, "helm template").unwrap();
    assert!(!String::from_utf8_lossy(&defaults.stdout).contains("NetworkPolicy"));
    for namespace in [shop, crm, ns] {
        namespace.delete(&client).await.unwrap();
    }
}

#[tokio::test]
async fn dispatcher_egress_values_become_the_operators_flags() {
    let client = cluster::client().await.unwrap();
    let ns = TestNamespace::create(&client, "chart").await.unwrap();
    let objects = render_and_dry_run(
        "fan",
        &ns.name,
        &[
            "dispatcher.egress.deny={10.0.0.0/8,evil.example}",
            "dispatcher.egress.allow={10.20.0.0/16}",
        ],
    );
    let operator = find(&objects, "Deployment", "fan-fanout-operator");
    assert_eq!(
        env_value(operator, "FANOUT_DISPATCHER_EGRESS_DENY"),
        "10.0.0.0/8,evil.example"
    );
    assert_eq!(
        env_value(operator, "FANOUT_DISPATCHER_EGRESS_ALLOW"),
        "10.20.0.0/16"
    );
    ns.delete(&client).await.unwrap();
}

#[tokio::test]
async fn tracing_values_reach_the_gateway_and_through_the_operator_the_dispatchers() {
    let client = cluster::client().await.unwrap();
    let ns = TestNamespace::create(&client, "chart").await.unwrap();
    let objects = render_and_dry_run("fan", &ns.name, &[]);
    for name in ["fan-fanout-gateway", "fan-fanout-operator"] {
        let deployment = find(&objects, "Deployment", name);
        let names = deployment.to_string();
        assert!(!names.contains("OTLP"), "{name}: traces are off by default");
    }

    let objects = render_and_dry_run(
        "fan",
        &ns.name,
        &[
            "tracing.otlpEndpoint=http://otel-collector.observability:4318",
            "tracing.samplingRatio=0.25",
            "tracing.headersSecret=otlp-headers",
        ],
    );
    let gateway = find(&objects, "Deployment", "fan-fanout-gateway");
    assert_eq!(
        env_value(gateway, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        "http://otel-collector.observability:4318"
    );
    assert_eq!(env_value(gateway, "FANOUT_OTLP_SAMPLING_RATIO"), "0.25");
    // The headers are a file of the mounted Secret, never a value.
    assert_eq!(
        env_value(gateway, "FANOUT_OTLP_HEADERS_FILE"),
        "/var/run/fanout/otlp/headers"
    );
    let volumes = &gateway["spec"]["template"]["spec"]["volumes"];
    let headers = volumes
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "otlp-headers")
        .unwrap();
    assert_eq!(headers["secret"]["secretName"], "otlp-headers");
    let operator = find(&objects, "Deployment", "fan-fanout-operator");
    assert_eq!(
        env_value(operator, "FANOUT_DISPATCHER_OTLP_ENDPOINT"),
        "http://otel-collector.observability:4318"
    );
    assert_eq!(
        env_value(operator, "FANOUT_DISPATCHER_OTLP_SAMPLING_RATIO"),
        "0.25"
    );
    assert_eq!(
        env_value(operator, "FANOUT_DISPATCHER_OTLP_HEADERS_SECRET"),
        "otlp-headers"
    );
    ns.delete(&client).await.unwrap();
}

#[test]
fn wrong_values_are_refused_with_the_field_named() {
    let cases: [(&[&str], &str); 14] = [
        (
            &["--set-string", "operator.replicas=two"],
            "/operator/replicas",
        ),
        (&["--set", "operator.replicas=0"], "/operator/replicas"),
        (&["--set", "nats.url=nats.example.com"], "/nats/url"),
        (
            &["--set", "replicas=2"],
            "additional properties 'replicas' not allowed",
        ),
        (
            &["--set", "gateway.sevice.port=80"],
            "additional properties 'sevice' not allowed",
        ),
        (
            &["--set", "gateway.service.type=External"],
            "/gateway/service/type",
        ),
        (
            &[
                "--set",
                "nats.token.secretName=a",
                "--set",
                "nats.credentials.secretName=b",
            ],
            "nats.credentials.secretName and nats.token.secretName",
        ),
        (
            &[
                "--set",
                "operator.replicas=2",
                "--set",
                "operator.leaderElection.enabled=false",
            ],
            "operator.leaderElection.enabled",
        ),
        (
            &["--set", "networkPolicy.enabled=true"],
            "networkPolicy.nats.to must list where NATS runs",
        ),
        (
            &["--set", "gateway.tls.secretName=Not_A_Name"],
            "/gateway/tls/secretName",
        ),
        (
            &["--set", "dispatcher.egress.deny={*.example.com}"],
            "/dispatcher/egress/deny/0",
        ),
        (
            &[
                "--set",
                "dispatcher.egress.allow[0]=10.0.0.0/8\\,10.1.0.0/16",
            ],
            "/dispatcher/egress/allow/0",
        ),
        (
            &["--set", "tracing.samplingRatio=2"],
            "/tracing/samplingRatio",
        ),
        (
            &["--set", "tracing.otlpEndpoint=collector:4318"],
            "/tracing/otlpEndpoint",
        ),
    ];
    for (flags, named) in cases {
        let mut all = vec!["--set".to_string(), format!("nats.url={NATS_URL}")];
        all.extend(flags.iter().map(|f| f.to_string()));
        let out = template("fan", "default", &all);
        assert!(!out.status.success(), "{flags:?} was accepted");
        let message = stderr(&out);
        assert!(message.contains(named), "{flags:?}: {message}");
    }

    // Without nats.url (there is no default: Fanout cannot guess where NATS runs).
    let out = template("fan", "default", &[]);
    assert!(
        !out.status.success(),
        "an install without nats.url was accepted"
    );
    assert!(stderr(&out).contains("/nats/url"), "{}", stderr(&out));
}

#[tokio::test]
async fn install_creates_locked_down_objects_and_uninstall_removes_them() {
    let client = cluster::client().await.unwrap();
    let ns = TestNamespace::create(&client, "chart").await.unwrap();
    // Enforce the "restricted" Pod Security Standard: the ReplicaSets can only create
    // their pods if the chart's security contexts meet it.
    check(
        &run(&mut kubectl(&[
            "label",
            "namespace",
            &ns.name,
            "pod-security.kubernetes.io/enforce=restricted",
        ])
        .unwrap()),
        "labelling the namespace",
    )
    .unwrap();
    let release = release_for(&ns);
    let fullname = format!("{release}-fanout");
    let kubeconfig = cluster::kubeconfig().unwrap();
    let chart = chart_dir();
    let install = |extra: &[&str]| {
        let mut cmd = helm(&[
            "install",
            &release,
            chart.to_str().unwrap(),
            "--namespace",
            &ns.name,
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ]);
        cmd.args(value_flags(&[
            "operator.replicas=2",
            "nats.token.secretName=nats-token",
        ]))
        .args(extra);
        run(&mut cmd)
    };

    // Should an assertion fail, the release (and its cluster-scoped RBAC) goes too.
    let mut guard = UninstallOnDrop {
        release: release.clone(),
        namespace: ns.name.clone(),
        kubeconfig: kubeconfig.clone(),
    };

    // A wrong value stops the install before anything is created. (--set-string
    // comes after --set, so it wins over operator.replicas=2.)
    let refused = install(&["--set-string", "operator.replicas=two"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("/operator/replicas"),
        "{}",
        stderr(&refused)
    );
    assert!(labelled(&ns.name, &release, "deployments,serviceaccounts").is_empty());

    check(&install(&[]), "helm install").unwrap();

    let pods = wait::until_blocking(
        "the ReplicaSets to create every pod",
        Duration::from_secs(60),
        || {
            let pods = labelled(&ns.name, &release, "pods");
            if pods.len() == 4 {
                Ok(pods)
            } else {
                Err(format!("{} pods; events: {}", pods.len(), events(&ns.name)))
            }
        },
    )
    .unwrap();
    for pod in &pods {
        let spec = &pod["spec"];
        let security = &spec["securityContext"];
        assert_eq!(
            security["runAsNonRoot"], true,
            "{}",
            pod["metadata"]["name"]
        );
        assert_eq!(security["runAsUser"], 65532);
        assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
        let container = &spec["containers"][0]["securityContext"];
        assert_eq!(container["readOnlyRootFilesystem"], true);
        assert_eq!(container["allowPrivilegeEscalation"], false);
        assert_eq!(
            container["capabilities"]["drop"],
            serde_json::json!(["ALL"])
        );
        let component = &pod["metadata"]["labels"]["app.kubernetes.io/component"];
        // Only the operator gets an API token.
        let has_token = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["projected"].is_object());
        assert_eq!(
            has_token,
            component == "operator",
            "{}",
            pod["metadata"]["name"]
        );
    }

    // What each ServiceAccount may do.
    let operator = format!("system:serviceaccount:{}:{fullname}-operator", ns.name);
    let gateway = format!("system:serviceaccount:{}:{fullname}-gateway", ns.name);
    let tokens = format!("secrets/{fullname}-gateway-tokens");
    for (who, verb, what, namespace, allowed) in [
        (
            &operator,
            "watch",
            "fanoutroutes.fanout.dev",
            "elsewhere",
            true,
        ),
        (
            &operator,
            "patch",
            "apitargets.fanout.dev/status",
            "elsewhere",
            true,
        ),
        (
            &operator,
            "update",
            "fanoutroutes.fanout.dev/finalizers",
            "elsewhere",
            true,
        ),
        (
            &operator,
            "delete",
            "fanoutroutes.fanout.dev",
            "elsewhere",
            false,
        ),
        // FanOutReplays: run them and write their status, nothing else.
        (
            &operator,
            "watch",
            "fanoutreplays.fanout.dev",
            "elsewhere",
            true,
        ),
        (
            &operator,
            "patch",
            "fanoutreplays.fanout.dev/status",
            "elsewhere",
            true,
        ),
        (
            &operator,
            "patch",
            "fanoutreplays.fanout.dev",
            "elsewhere",
            false,
        ),
        (
            &operator,
            "delete",
            "fanoutreplays.fanout.dev",
            "elsewhere",
            false,
        ),
        (&operator, "create", "deployments.apps", "elsewhere", true),
        (&operator, "delete", "deployments.apps", "elsewhere", false),
        (&operator, "update", "deployments.apps", "elsewhere", false),
        (&operator, "delete", "configmaps", "elsewhere", false),
        (&operator, "get", "secrets", "elsewhere", true),
        (&operator, "list", "secrets", "elsewhere", false),
        (&operator, "watch", "secrets", "elsewhere", false),
        (&operator, "create", "secrets", "elsewhere", false),
        (&operator, "create", "pods", "elsewhere", false),
        (
            &operator,
            "create",
            "leases.coordination.k8s.io",
            &ns.name,
            true,
        ),
        (
            &operator,
            "create",
            "leases.coordination.k8s.io",
            "elsewhere",
            false,
        ),
        (&operator, "patch", &tokens, &ns.name, true),
        (
            &operator,
            "update",
            &format!("leases.coordination.k8s.io/{fullname}-operator"),
            &ns.name,
            true,
        ),
        (
            &operator,
            "update",
            "leases.coordination.k8s.io/another",
            &ns.name,
            false,
        ),
        // The apiserver's addresses, for the dispatchers' egress policy.
        (&operator, "get", "services/kubernetes", "default", true),
        (
            &operator,
            "get",
            "endpointslices.discovery.k8s.io/kubernetes",
            "default",
            true,
        ),
        (&operator, "get", "services/other", "default", false),
        (
            &operator,
            "list",
            "endpointslices.discovery.k8s.io",
            "default",
            false,
        ),
        (&operator, "patch", "secrets/someone-elses", &ns.name, false),
        (&operator, "delete", &tokens, &ns.name, false),
        (&gateway, "get", "secrets", &ns.name, false),
        (&gateway, "get", "configmaps", &ns.name, false),
        (&gateway, "list", "fanoutroutes.fanout.dev", &ns.name, false),
    ] {
        let out = run(&mut kubectl(&can_i(verb, what, namespace, who)).unwrap());
        assert_eq!(
            out.status.success(),
            allowed,
            "{who} {verb} {what} in {namespace}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    let mut uninstall = helm(&[
        "uninstall",
        &release,
        "--namespace",
        &ns.name,
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ]);
    check(&run(&mut uninstall), "helm uninstall").unwrap();
    guard.release.clear();

    // Nothing of the release is left: not in the namespace (pods go through garbage
    // collection, hence the poll), not cluster-scoped, not Helm's release record.
    wait::until_blocking(
        "the release's objects to be gone",
        Duration::from_secs(60),
        || {
            let left = labelled(
                &ns.name,
                &release,
                "all,serviceaccounts,roles,rolebindings,poddisruptionbudgets,configmaps,secrets",
            );
            let cluster_left = run(&mut kubectl(&[
                "get",
                "clusterroles,clusterrolebindings",
                "-l",
                &format!("app.kubernetes.io/instance={release}"),
                "-o",
                "name",
            ])
            .unwrap());
            let cluster_left = String::from_utf8_lossy(&cluster_left.stdout).into_owned();
            let helm_records =
                labelled_by(&ns.name, &format!("owner=helm,name={release}"), "secrets");
            let default_left = labelled("default", &release, "roles,rolebindings");
            if left.is_empty()
                && default_left.is_empty()
                && cluster_left.trim().is_empty()
                && helm_records.is_empty()
            {
                Ok(())
            } else {
                Err(format!(
                    "left: {:?} {:?} {cluster_left} {:?}",
                    names(&left),
                    names(&default_left),
                    names(&helm_records)
                ))
            }
        },
    )
    .unwrap();
    // Helm leaves CRDs from crds/ in place: routes elsewhere would be deleted with them.
    for crd in [
        "fanoutroutes.fanout.dev",
        "apitargets.fanout.dev",
        "fanoutreplays.fanout.dev",
    ] {
        let out = run(&mut kubectl(&["get", "crd", crd]).unwrap());
        check(&out, &format!("the CRD {crd} after uninstall")).unwrap();
    }
    ns.delete(&client).await.unwrap();
}

#[tokio::test]
async fn allowed_images_and_watched_namespaces_reach_the_operator() {
    let client = cluster::client().await.unwrap();
    let ns = TestNamespace::create(&client, "chart").await.unwrap();
    let watched = TestNamespace::create(&client, "chart-watched")
        .await
        .unwrap();
    let objects = render_and_dry_run(
        "fan",
        &ns.name,
        &[
            "dispatcher.allowedImages={registry.example/fanout,other.example/fanout:2}",
            &format!("operator.watchNamespaces={{{}}}", watched.name),
        ],
    );
    let operator = find(&objects, "Deployment", "fan-fanout-operator");
    assert_eq!(
        env_value(operator, "FANOUT_ALLOWED_DISPATCHER_IMAGES"),
        "registry.example/fanout,other.example/fanout:2"
    );
    assert_eq!(env_value(operator, "FANOUT_WATCH_NAMESPACE"), watched.name);
    let names = kinds_and_names(&objects);
    assert!(
        !names.iter().any(|n| n.starts_with("Cluster")),
        "a namespaced install renders nothing cluster-wide: {names:?}"
    );
    let role = find(&objects, "Role", "fan-fanout-operator-watched");
    assert_eq!(role["metadata"]["namespace"], watched.name.as_str());
    let binding = find(&objects, "RoleBinding", "fan-fanout-operator-watched");
    assert_eq!(binding["subjects"][0]["namespace"], ns.name.as_str());
    watched.delete(&client).await.unwrap();
    ns.delete(&client).await.unwrap();
}

#[tokio::test]
async fn a_namespaced_install_has_rights_only_in_its_watched_namespaces() {
    let client = cluster::client().await.unwrap();
    let ns = TestNamespace::create(&client, "chart").await.unwrap();
    let watched = TestNamespace::create(&client, "chart-watched")
        .await
        .unwrap();
    let other = TestNamespace::create(&client, "chart-other").await.unwrap();
    let release = release_for(&ns);
    let fullname = format!("{release}-fanout");
    let kubeconfig = cluster::kubeconfig().unwrap();
    let chart = chart_dir();
    let mut guard = UninstallOnDrop {
        release: release.clone(),
        namespace: ns.name.clone(),
        kubeconfig: kubeconfig.clone(),
    };
    let mut install = helm(&[
        "install",
        &release,
        chart.to_str().unwrap(),
        "--namespace",
        &ns.name,
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ]);
    install.args(value_flags(&[&format!(
        "operator.watchNamespaces={{{}}}",
        watched.name
    )]));
    check(&run(&mut install), "helm install").unwrap();

    let cluster_wide = run(&mut kubectl(&[
        "get",
        "clusterroles,clusterrolebindings",
        "-l",
        &format!("app.kubernetes.io/instance={release}"),
        "-o",
        "name",
    ])
    .unwrap());
    check(&cluster_wide, "kubectl get clusterroles").unwrap();
    assert!(
        String::from_utf8_lossy(&cluster_wide.stdout)
            .trim()
            .is_empty(),
        "{}",
        String::from_utf8_lossy(&cluster_wide.stdout)
    );

    let operator = format!("system:serviceaccount:{}:{fullname}-operator", ns.name);
    let tokens = format!("secrets/{fullname}-gateway-tokens");
    let (w, o, own) = (watched.name.as_str(), other.name.as_str(), ns.name.as_str());
    for (verb, what, namespace, allowed) in [
        // In the watched namespace: what reconciling needs, and no more.
        ("watch", "fanoutroutes.fanout.dev", w, true),
        ("patch", "fanoutroutes.fanout.dev/status", w, true),
        ("watch", "fanoutreplays.fanout.dev", w, true),
        ("patch", "fanoutreplays.fanout.dev/status", w, true),
        ("get", "secrets", w, true),
        ("list", "secrets", w, false),
        ("create", "deployments.apps", w, true),
        ("delete", "deployments.apps", w, false),
        ("create", "secrets", w, false),
        // Anywhere else: nothing at all.
        ("get", "secrets", o, false),
        ("watch", "fanoutroutes.fanout.dev", o, false),
        ("watch", "fanoutreplays.fanout.dev", o, false),
        ("create", "deployments.apps", o, false),
        ("get", "configmaps", o, false),
        // Its own namespace: the Lease and the gateway's two objects, no reading.
        ("create", "leases.coordination.k8s.io", own, true),
        ("patch", &tokens, own, true),
        ("get", "secrets", own, false),
        ("list", "fanoutroutes.fanout.dev", own, false),
    ] {
        let out = run(&mut kubectl(&can_i(verb, what, namespace, &operator)).unwrap());
        assert_eq!(
            out.status.success(),
            allowed,
            "{verb} {what} in {namespace}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // Nor in every namespace at once.
    for (verb, what) in [("list", "secrets"), ("watch", "fanoutroutes.fanout.dev")] {
        let out = run(&mut kubectl(&[
            "auth",
            "can-i",
            verb,
            what,
            "--all-namespaces",
            "--as",
            &operator,
        ])
        .unwrap());
        assert!(!out.status.success(), "{verb} {what} cluster-wide");
    }

    let mut uninstall = helm(&[
        "uninstall",
        &release,
        "--namespace",
        &ns.name,
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ]);
    check(&run(&mut uninstall), "helm uninstall").unwrap();
    guard.release.clear();
    wait::until_blocking(
        "the Role in the watched namespace to be gone",
        Duration::from_secs(60),
        || {
            let left = labelled(&watched.name, &release, "roles,rolebindings");
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{:?}", names(&left)))
            }
        },
    )
    .unwrap();
    other.delete(&client).await.unwrap();
    watched.delete(&client).await.unwrap();
    ns.delete(&client).await.unwrap();
}

/// `kubectl auth can-i` arguments. `what` is `resource`, `resource/name`, or
/// `resource/status` and `resource/finalizers` for those subresources (kubectl would
/// read `resource/status` as an object named "status").
fn can_i<'a>(verb: &'a str, what: &'a str, namespace: &'a str, who: &'a str) -> Vec<&'a str> {
    let mut args = vec!["auth", "can-i", verb];
    match what.rsplit_once('/') {
        Some((resource, sub @ ("status" | "finalizers"))) => {
            args.extend([resource, "--subresource", sub]);
        }
        _ => args.push(what),
    }
    args.extend(["-n", namespace, "--as", who]);
    args
}

/// Uninstalls a release when dropped (a test that fails half-way would otherwise leave
/// its ClusterRole behind); an empty release name means it was uninstalled already.
struct UninstallOnDrop {
    release: String,
    namespace: String,
    kubeconfig: PathBuf,
}

impl Drop for UninstallOnDrop {
    fn drop(&mut self) {
        if self.release.is_empty() {
            return;
        }
        let _ = helm(&[
            "uninstall",
            &self.release,
            "--namespace",
            &self.namespace,
            "--ignore-not-found",
            "--kubeconfig",
            self.kubeconfig.to_str().unwrap_or_default(),
        ])
        .output();
    }
}

/// Objects of `kinds` in `namespace` labelled with the release as instance.
fn labelled(namespace: &str, release: &str, kinds: &str) -> Vec<Value> {
    labelled_by(
        namespace,
        &format!("app.kubernetes.io/instance={release}"),
        kinds,
    )
}

fn labelled_by(namespace: &str, selector: &str, kinds: &str) -> Vec<Value> {
    let out =
        run(&mut kubectl(&["get", kinds, "-n", namespace, "-l", selector, "-o", "json"]).unwrap());
    check(&out, &format!("kubectl get {kinds}")).unwrap();
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    list["items"].as_array().cloned().unwrap_or_default()
}

fn names(objects: &[Value]) -> Vec<String> {
    kinds_and_names(objects).into_iter().collect()
}

/// Recent events of a namespace, for failure messages.
fn events(namespace: &str) -> String {
    kubectl(&["get", "events", "-n", namespace])
        .ok()
        .and_then(|mut c| c.output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
