//! Monitoring objects: ServiceMonitors, the PrometheusRule and the Grafana dashboard.

use super::*;

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
            "FanoutGatewayRouteNotReady",
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
