//! NetworkPolicies: which component each selects, and what it admits.

use super::*;

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
