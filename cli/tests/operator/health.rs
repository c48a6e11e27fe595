//! Delivery through the rendered configuration, and the health the status reports:
//! per target, per ApiTarget, and while NATS is away; the chart's monitoring checked
//! against what the processes export.

use super::*;

/// Applies route `orders` to ApiTarget `crm` (nothing listens there) and waits for
/// its stream.
async fn provision_orders(env: &Env) {
    env.apply(&format!(
        "{}{}",
        target_yaml("crm", "http://127.0.0.1:9/crm", ""),
        route_yaml("orders", &["crm"], "")
    ));
    env.wait_condition("orders", "StreamReady", "True", None)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_and_restarted_flips_stream_ready_and_recovers() {
    let mut env = Env::new("op-nats").await;
    let _operator = env.operator();
    provision_orders(&env).await;

    env.nats.kill();
    let status = env
        .wait_condition("orders", "StreamReady", "False", None)
        .await;
    let stream = operator::condition(&status.conditions, "StreamReady");
    assert_eq!(stream.reason, "NatsUnavailable", "{}", stream.message);
    assert_eq!(
        status.targets.len(),
        1,
        "the last numbers are kept while NATS is away"
    );

    env.nats.restart().unwrap();
    env.wait_condition("orders", "StreamReady", "True", Some("Provisioned"))
        .await;
    env.ns.delete(&env.client).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_configuration_delivers_and_status_reports_each_targets_health() {
    let env = Env::new("op-e2e").await;
    let operator = env.operator();
    let healthy = TargetServer::start().await.unwrap();
    let flaky = TargetServer::start().await.unwrap();
    let retry = "  retry: {maxAttempts: 1000, initialDelay: 100ms, maxDelay: 500ms}";
    let breaker = format!(
        "{retry}\n  circuitBreaker: {{failureRatio: 0.5, minimumRequests: 4, window: 10s, openDuration: 2s, halfOpenProbes: 1}}"
    );
    env.apply(&format!(
        "{}{}{}",
        target_yaml("healthy", &healthy.url("/in"), retry),
        target_yaml("flaky", &flaky.url("/in"), &breaker),
        route_yaml(
            "orders",
            &["healthy", "flaky"],
            "  gateway: {allowUnauthenticated: true}"
        ),
    ));
    let key = env.key("orders");

    // Read back what the operator rendered, as a pod would mount it.
    let dir = tempfile::tempdir().unwrap();
    let (route_file, gateway_file) = operator::rendered(&env, "orders", dir.path()).await;
    let (_dispatcher, dispatcher_port) =
        operator::dispatcher(&env, dir.path(), &route_file, "orders-dispatcher-e2e");
    let dispatcher_port = dispatcher_port.to_string();
    let (_gateway, gateway_addr, gateway_ops) = operator::gateway(&env, dir.path(), &gateway_file);
    let send =
        |n: usize, from: usize| operator::send(&env, &gateway_addr, "orders", from..from + n);

    // Both targets receive everything; status counts it per target.
    send(20, 0).await;
    healthy.wait_for(20, T).await.unwrap();
    flaky.wait_for(20, T).await.unwrap();
    let status = wait::until("delivered counts in status", T, || async {
        let s = env.status("orders").await.ok_or("no status")?;
        let delivered: Vec<u64> = s.targets.iter().map(|t| t.delivered).collect();
        let healthy = s
            .conditions
            .iter()
            .any(|c| c.type_ == "TargetsHealthy" && c.status == "True");
        if delivered == vec![20, 20] && healthy {
            Ok(s)
        } else {
            Err(format!("{delivered:?} {:?}", s.conditions))
        }
    })
    .await
    .unwrap();
    assert_eq!(status.healthy_targets.as_deref(), Some("2/2"));
    // What a person sees with `kubectl get fanoutroutes`.
    let table = cluster::kubectl(&["get", "fanoutroutes", "-n", &env.ns.name])
        .unwrap()
        .output()
        .unwrap();
    cluster::check(&table, "kubectl get fanoutroutes").unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("DELIVERED"), "{table}");
    assert!(table.contains("healthy=20 flaky=20"), "{table}");
    assert!(status.targets.iter().all(|t| t.last_success_time.is_some()));
    assert_eq!(status.stream.as_ref().map(|s| s.messages), Some(20));

    // One target fails: its circuit opens and status says so; the other keeps going.
    flaky.set_default(Reply::Status(503));
    send(20, 20).await;
    let status = env
        .wait_condition("orders", "TargetsHealthy", "False", Some("TargetsFailing"))
        .await;
    let flaky_status = status.targets.iter().find(|t| t.name == "flaky").unwrap();
    assert_ne!(
        flaky_status.circuit,
        fanout_api::status::CircuitState::Closed
    );
    assert!(
        flaky_status
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("503"),
        "{flaky_status:?}"
    );
    healthy.wait_for(40, T).await.unwrap();
    let shown = wait::until("the ApiTarget to show the open circuit", T, || async {
        let t = env
            .api::<ApiTarget>()
            .get("flaky")
            .await
            .map_err(|e| e.to_string())?;
        let circuit = t.status.as_ref().and_then(|s| s.circuit);
        if circuit.is_some_and(|c| c != fanout_api::status::CircuitState::Closed) {
            Ok(())
        } else {
            let route = env.status("orders").await.map(|s| s.targets);
            Err(format!("{:?}; the route's targets: {route:?}", t.status))
        }
    })
    .await;
    if let Err(e) = shown {
        panic!("{e}\n{}", operator.diagnosis().await)
    }

    // It recovers: probes succeed, the circuit closes and every event arrives.
    flaky.set_default(Reply::Status(200));
    env.wait_condition("orders", "TargetsHealthy", "True", None)
        .await;
    wait::until("all 40 events at the recovered target", T, || async {
        let n = flaky.distinct_keys().len();
        if n == 40 {
            Ok(())
        } else {
            Err(format!("{n} distinct ids"))
        }
    })
    .await
    .unwrap();
    assert_eq!(healthy.distinct_keys().len(), 40);

    let dispatcher_addr = format!("127.0.0.1:{dispatcher_port}");
    let operator_addr = format!("127.0.0.1:{}", operator.port);
    chart_monitoring_fits(
        &env,
        &key.dispatcher_object_name(),
        // The gateway's metrics are on its ops port, as the chart's PodMonitor
        // scrapes them.
        &[&dispatcher_addr, &gateway_ops, &operator_addr],
    )
    .await;
    env.ns.delete(&env.client).await.unwrap();
}

/// The chart's monitoring fits what the processes are: every alert of its
/// PrometheusRule and every query of its Grafana dashboard selects series that the
/// running processes at `scrape` export, and its PodMonitor selects the pods of the
/// dispatcher Deployment the operator made, on a port that they have.
async fn chart_monitoring_fits(env: &Env, deployment: &str, scrape: &[&str]) {
    let home = tempfile::tempdir().unwrap();
    let rendered = Command::new(fanout_testkit::tools::path("helm").unwrap())
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .args(["template", "fan"])
        .arg(fanout_testkit::repo_root().join("charts/fanout"))
        .args(["--set", "nats.url=nats://nats:4222"])
        .args(["--set", "serviceMonitor.enabled=true"])
        .args(["--set", "prometheusRule.enabled=true"])
        .args(["--set", "grafanaDashboard.enabled=true"])
        .output()
        .unwrap();
    cluster::check(&rendered, "helm template").unwrap();
    let rendered = String::from_utf8(rendered.stdout).unwrap();

    let mut exposition = prometheus::Exposition::default();
    for addr in scrape {
        let r = http::get(addr, "/metrics").await.unwrap();
        assert_eq!(r.status, 200, "{addr}: {}", r.body);
        exposition.add(&r.body).unwrap();
    }
    let objects = prometheus::objects(&rendered).unwrap();
    let rules = prometheus::rules(&rendered).unwrap();
    assert!(rules.len() >= 8, "{rules:?}");
    let dashboard = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "fan-fanout-dashboard")
        .and_then(|o| o["data"]["fanout.json"].as_str())
        .expect("the dashboard ConfigMap");
    let panels = prometheus::dashboard_queries(dashboard).unwrap();
    assert!(panels.len() >= 15, "{panels:?}");
    let unmatched: Vec<String> = rules
        .iter()
        .chain(&panels)
        .flat_map(|(what, expr)| {
            exposition
                .unmatched(expr)
                .unwrap_or_else(|e| vec![format!("does not parse: {e}")])
                .into_iter()
                .map(move |why| format!("{what}: {why}"))
        })
        .collect();
    assert!(unmatched.is_empty(), "{unmatched:#?}");

    let pod_monitor = objects
        .iter()
        .find(|o| o["kind"] == "PodMonitor" && o["metadata"]["name"] == "fan-fanout-dispatchers")
        .expect("the dispatchers' PodMonitor");
    let template = env
        .api::<Deployment>()
        .get(deployment)
        .await
        .unwrap()
        .spec
        .unwrap()
        .template;
    let pod_labels = template.metadata.unwrap().labels.unwrap();
    let selector = pod_monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    for (name, value) in selector {
        assert_eq!(
            pod_labels.get(name).map(String::as_str),
            value.as_str(),
            "the PodMonitor selects {name}={value} of the dispatcher pods"
        );
    }
    let port = &pod_monitor["spec"]["podMetricsEndpoints"][0]["port"];
    let ports: Vec<String> = template.spec.unwrap().containers[0]
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.name.clone())
        .collect();
    assert!(
        ports.iter().any(|p| p == port),
        "port {port} not among {ports:?}"
    );
}

/// An operator told to stop while NATS is away (a rollout during a NATS outage) must
/// still stop, within its pod's termination grace period, and say why it could not
/// flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_nats_is_away_still_stops_the_operator() {
    let mut env = Env::new("op-nats-stop").await;
    let mut operator = env.operator();
    provision_orders(&env).await;

    env.nats.kill();
    env.wait_condition("orders", "StreamReady", "False", None)
        .await;
    let exit = operator
        .process
        .terminate(Duration::from_secs(20))
        .expect("the operator still runs 20 s after SIGTERM with NATS away");
    assert!(exit.success(), "SIGTERM is a clean stop: {exit:?}");
    let log = operator.process.log();
    assert!(
        log.contains("stopping without flushing NATS"),
        "the log does not say NATS was not flushed:\n{log}"
    );
    env.ns.delete(&env.client).await.unwrap();
}
