//! Traces in a cluster: `fanout operator` against the real local control plane, told
//! where the platform's OpenTelemetry Collector is (as the chart's `tracing` values
//! tell it), puts the endpoint, the sampling ratio and the headers Secret on the
//! dispatcher pods it creates; a dispatcher run with exactly the pod's settings (this
//! control plane has no node) and a gateway run as the chart runs it send one trace
//! per event to a real collector.

mod support;

use std::collections::BTreeMap;

use fanout_testkit::otel::Collector;
use fanout_testkit::target::TargetServer;
use fanout_testkit::{free_port, wait};
use k8s_openapi::api::apps::v1::Deployment;
use support::operator::{self, Env, T, route_yaml, target_yaml};

fn env_of(deployment: &Deployment) -> BTreeMap<String, String> {
    deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatcher_pods_export_to_the_platforms_collector_in_the_events_trace() {
    let collector = Collector::start().await.unwrap();
    let env = Env::new("op-trace").await;
    let endpoint = collector.endpoint();
    let _operator = env.operator_with(&[
        "--dispatcher-otlp-endpoint",
        &endpoint,
        "--dispatcher-otlp-sampling-ratio",
        "0.5",
        "--dispatcher-otlp-headers-secret",
        "otlp-headers",
    ]);
    let target = TargetServer::start().await.unwrap();
    env.apply(&format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: otlp-headers}}
stringData:
  headers: 'X-Scope-OrgID: shop'
---
{}{}",
        target_yaml("inventory", &target.url("/reservations"), ""),
        route_yaml(
            "orders",
            &["inventory"],
            "  gateway: {allowUnauthenticated: true}"
        ),
    ));

    let name = env.key("orders").dispatcher_object_name();
    let deployment = wait::until("the Deployment", T, || async {
        env.api::<Deployment>()
            .get_opt(&name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("absent".to_string())
    })
    .await
    .unwrap();
    let vars = env_of(&deployment);
    assert_eq!(vars["OTEL_EXPORTER_OTLP_ENDPOINT"], endpoint);
    assert_eq!(vars["FANOUT_OTLP_SAMPLING_RATIO"], "0.5");
    let headers_file = "/var/run/fanout/secrets/otlp-headers/headers";
    assert_eq!(vars["FANOUT_OTLP_HEADERS_FILE"], headers_file);
    // The headers come from the Secret, mounted where the variable says.
    let pod = deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let projected = serde_json::to_string(&pod.volumes).unwrap();
    assert!(
        projected.contains(r#""name":"otlp-headers""#)
            && projected.contains("otlp-headers/headers"),
        "{projected}"
    );

    // A dispatcher with exactly the pod's trace settings (the headers file is the
    // Secret's content in a local file: there is no kubelet to mount it), and the
    // gateway as the chart runs it.
    let dir = tempfile::tempdir().unwrap();
    let local_headers = dir.path().join("headers");
    std::fs::write(&local_headers, "X-Scope-OrgID: shop\n").unwrap();
    let (route_file, gateway_file) = operator::rendered(&env, "orders", dir.path()).await;
    let mut pod_env: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with("OTEL_") || k.starts_with("FANOUT_OTLP_"))
        .collect();
    for (name, value) in &mut pod_env {
        if name == "FANOUT_OTLP_HEADERS_FILE" {
            *value = local_headers.display().to_string();
        }
    }
    let listen = format!("127.0.0.1:{}", free_port());
    let _dispatcher = support::spawn_with_env(
        dir.path(),
        "orders-dispatcher",
        &[
            "dispatch",
            "--config",
            route_file.to_str().unwrap(),
            "--nats-url",
            &env.nats.url(),
            "--listen",
            &listen,
            "--egress-allow",
            "127.0.0.1",
        ],
        &pod_env,
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let ops = format!("127.0.0.1:{}", free_port());
    let _gateway = support::spawn_with_env(
        dir.path(),
        "gateway",
        &[
            "gateway",
            "--config",
            gateway_file.to_str().unwrap(),
            "--nats-url",
            &env.nats.url(),
            "--listen",
            &addr,
            "--listen-ops",
            &ops,
        ],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone())],
    );
    // The gateway (ratio 1) samples every trace; the dispatchers follow its decision
    // whatever their own ratio.
    operator::send(&env, &addr, "orders", 0..3).await;

    // Each process exports its spans in batches on its own schedule: the dispatchers'
    // can reach the collector before the gateway's, so wait for both.
    let spans = wait::until("the spans of three events", T, || async {
        let spans = collector.spans().map_err(|e| e.to_string())?;
        let attempts: Vec<_> = spans
            .iter()
            .filter(|s| s.name == "deliver inventory" && s.service == "fanout-dispatcher")
            .collect();
        let parents = attempts
            .iter()
            .filter(|a| spans.iter().any(|s| s.span_id == a.parent_span_id))
            .count();
        if attempts.len() == 3 && parents == 3 {
            Ok(spans)
        } else {
            Err(format!(
                "{parents} of {} attempts' parents: {spans:?}",
                attempts.len()
            ))
        }
    })
    .await
    .unwrap();
    for attempt in spans.iter().filter(|s| s.name == "deliver inventory") {
        let publish = spans
            .iter()
            .find(|s| s.span_id == attempt.parent_span_id)
            .expect("the attempt's parent is at the collector");
        assert_eq!(publish.service, "fanout-gateway");
        assert_eq!(publish.trace_id, attempt.trace_id);
        assert!(publish.name.starts_with("publish fanout_"), "{publish:?}");
    }
    env.ns.delete(&env.client).await.unwrap();
}

#[test]
fn a_sampling_ratio_dispatchers_would_refuse_stops_the_operator_at_start() {
    let said = support::try_run(&[
        "operator",
        "--dispatcher-image",
        "fanout:test",
        "--nats-url",
        "nats://127.0.0.1:1",
        "--dispatcher-otlp-sampling-ratio",
        "3",
    ])
    .unwrap_err();
    assert!(
        said.contains("--dispatcher-otlp-sampling-ratio: 3 is not between 0 and 1"),
        "{said}"
    );
}
