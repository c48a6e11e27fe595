//! What the chart renders for each supported value set, dry-run on the apiserver,
//! and the values it refuses.

use super::*;

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

/// `operator.watchSecrets` is the one value that adds list and watch on Secrets
/// (the operator's Secret metadata watch); the default leaves both out and sets
/// neither the flag nor a resync.
#[tokio::test]
async fn watch_secrets_adds_list_and_watch_on_secrets_and_the_operators_flag() {
    let client = cluster::client().await.unwrap();
    let ns = TestNamespace::create(&client, "chart").await.unwrap();
    let secret_verbs = |objects: &[Value]| {
        let role = find(objects, "ClusterRole", "fan-fanout-operator");
        role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["resources"] == serde_json::json!(["secrets"]))
            .map(|r| r["verbs"].clone())
            .collect::<Vec<_>>()
    };
    let defaults = render_and_dry_run("fan", &ns.name, &[]);
    assert_eq!(secret_verbs(&defaults), [serde_json::json!(["get"])]);
    let operator = find(&defaults, "Deployment", "fan-fanout-operator");
    assert!(env(operator, "FANOUT_WATCH_SECRETS").is_none());
    assert!(env(operator, "FANOUT_GATEWAY_RESYNC").is_none());

    let watching = render_and_dry_run(
        "fan",
        &ns.name,
        &["operator.watchSecrets=true", "operator.gatewayResync=10m"],
    );
    assert_eq!(
        secret_verbs(&watching),
        [serde_json::json!(["get", "list", "watch"])]
    );
    let operator = find(&watching, "Deployment", "fan-fanout-operator");
    assert_eq!(env_value(operator, "FANOUT_WATCH_SECRETS"), "true");
    assert_eq!(env_value(operator, "FANOUT_GATEWAY_RESYNC"), "10m");
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
