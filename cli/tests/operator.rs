//! `fanout operator` as a process against the real local control plane
//! (kube-apiserver + controller-manager from e2e/cluster.sh) and a real nats-server.
//!
//! Each test gets its own namespace, NATS server and operator scoped to that
//! namespace (`--watch-namespace`), so tests run in parallel on one control plane.
//! This control plane has no node, so dispatcher pods never run: the end-to-end test
//! starts the real `fanout dispatch` and `fanout gateway` processes itself, with the
//! configuration the operator rendered, read back from the API server. Pods on a real
//! node are e2e/tests/in_cluster.rs's part.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream;
use fanout_api::{ApiTarget, FanOutRoute};
use fanout_config::RouteConfig;
use fanout_config::gateway::GatewayConfig;
use fanout_testkit::cluster;
use fanout_testkit::prometheus;
use fanout_testkit::target::{Reply, TargetServer};
use fanout_testkit::{http, wait};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use support::operator::{self, Env, Operator, T, route_yaml, target_yaml};

const SECRETS: &str = "apiVersion: v1
kind: Secret
metadata: {name: email-token}
stringData: {token: s3cr3t}
---
apiVersion: v1
kind: Secret
metadata: {name: ingest}
stringData: {token: ingest-token}
---
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_becomes_streams_consumers_and_dispatcher_objects_and_follows_edits() {
    let env = Env::new("op-apply").await;
    let _operator = env.operator();
    let auth = "  auth: {bearer: {secretRef: {name: email-token, key: token}}}";
    env.apply(&format!(
        "{SECRETS}{}{}{}",
        target_yaml("inventory", "http://127.0.0.1:9/in", ""),
        target_yaml("email", "http://127.0.0.1:9/mail", auth),
        route_yaml(
            "orders",
            &["inventory", "email"],
            "  gateway: {bearerTokens: [{name: ingest, key: token}]}"
        ),
    ));
    let key = env.key("orders");

    // JetStream: both streams and one consumer per target, with the target's limits.
    let consumers = wait::until("both consumers", T, || async {
        let c = env.consumers(&key.stream()).await?;
        if c.len() == 2 {
            Ok(c)
        } else {
            Err(format!("{c:?}"))
        }
    })
    .await
    .unwrap();
    assert_eq!(
        consumers,
        BTreeSet::from(["email".to_string(), "inventory".to_string()])
    );
    env.js.get_stream(key.dead_letter_stream()).await.unwrap();
    // The delivery history: its own bounded stream, on by default.
    let mut history = env.js.get_stream(key.attempts_stream()).await.unwrap();
    let history = history.info().await.unwrap();
    assert_eq!(history.config.max_bytes, 128 * 1024 * 1024);
    assert_eq!(
        history.config.discard,
        async_nats::jetstream::stream::DiscardPolicy::Old
    );
    let mut stream = env.js.get_stream(key.stream()).await.unwrap();
    let info = stream.consumer_info("inventory").await.unwrap();
    assert_eq!(
        info.config.ack_wait,
        Duration::from_secs(8),
        "timeout 3s + 5s slack"
    );
    assert_eq!(info.config.max_ack_pending, 16);
    assert!(
        info.config
            .filter_subjects
            .contains(&key.redrive_subject("inventory"))
    );
    assert_eq!(
        stream.info().await.unwrap().config.subjects[0],
        key.ingest_subjects()
    );

    // Kubernetes: ServiceAccount, ConfigMap and Deployment, owned by the route.
    let route = env.api::<FanOutRoute>().get("orders").await.unwrap();
    let uid = route.metadata.uid.clone().unwrap();
    let name = key.dispatcher_object_name();
    let deployment = wait::until("the Deployment", T, || async {
        env.api::<Deployment>()
            .get_opt(&name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("absent".to_string())
    })
    .await
    .unwrap();
    let owner =
        |refs: Option<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>| {
            refs.unwrap_or_default()
                .first()
                .map(|o| (o.uid.clone(), o.controller))
        };
    assert_eq!(
        owner(deployment.metadata.owner_references.clone()),
        Some((uid.clone(), Some(true)))
    );
    let sa = env.api::<ServiceAccount>().get(&name).await.unwrap();
    assert_eq!(
        owner(sa.metadata.owner_references),
        Some((uid.clone(), Some(true)))
    );
    assert_eq!(sa.automount_service_account_token, Some(false));
    let config_map = env.api::<ConfigMap>().get(&name).await.unwrap();
    assert_eq!(
        owner(config_map.metadata.owner_references.clone()),
        Some((uid.clone(), Some(true)))
    );
    let config: RouteConfig =
        serde_yaml_ng::from_str(&config_map.data.unwrap()["route.yaml"]).unwrap();
    assert_eq!(config.targets.len(), 2);
    let email = config.targets.iter().find(|t| t.name == "email").unwrap();
    assert_eq!(
        email.credentials.bearer_token_file.as_deref(),
        Some(std::path::Path::new(
            "/var/run/fanout/secrets/email-token/token"
        )),
        "the ConfigMap names a file, never the secret value"
    );
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let volumes = pod.volumes.unwrap();
    let projected = volumes.iter().find(|v| v.name == "secrets").unwrap();
    assert_eq!(
        projected
            .projected
            .as_ref()
            .unwrap()
            .sources
            .as_ref()
            .unwrap()[0]
            .secret
            .as_ref()
            .unwrap()
            .name,
        "email-token"
    );
    let hash_of = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()["fanout.dev/config-hash"]
            .clone()
    };
    let first_hash = hash_of(&env.api::<Deployment>().get(&name).await.unwrap());

    // Status: streams ready, no node to run pods yet, the finalizer is on.
    let status = env
        .wait_condition("orders", "StreamReady", "True", None)
        .await;
    assert_eq!(status.observed_generation, route.metadata.generation);
    let available = status
        .conditions
        .iter()
        .find(|c| c.type_ == "DispatcherAvailable")
        .unwrap();
    assert_eq!(available.status, "False");
    assert_eq!(status.targets.len(), 2);
    assert!(
        route
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"fanout.dev/jetstream".to_string())
    );

    // The gateway's routes and token copy.
    let gateway = wait::until("the gateway ConfigMap", T, || async {
        let cm = env
            .api::<ConfigMap>()
            .get_opt("fanout-gateway")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("absent")?;
        let config: GatewayConfig =
            serde_yaml_ng::from_str(&cm.data.unwrap_or_default()["gateway.yaml"])
                .map_err(|e| e.to_string())?;
        if config.routes.is_empty() {
            Err("no routes".to_string())
        } else {
            Ok(config)
        }
    })
    .await
    .unwrap();
    assert_eq!(gateway.routes[0].stream, key.stream());
    let token_key = format!("{}.orders.0", env.ns.name);
    assert_eq!(
        gateway.routes[0].token_files,
        vec![PathBuf::from(format!(
            "/var/run/fanout/gateway-tokens/{token_key}"
        ))]
    );
    let tokens = env
        .api::<Secret>()
        .get("fanout-gateway-tokens")
        .await
        .unwrap();
    assert_eq!(tokens.data.unwrap()[&token_key].0, b"ingest-token");

    // Editing the ApiTarget re-renders the route: the consumer and the config follow.
    env.apply(
        &target_yaml("inventory", "http://127.0.0.1:9/in", "")
            .replace("timeout: 3s", "timeout: 10s"),
    );
    wait::until("ack wait to follow the new timeout", T, || async {
        let s = env
            .js
            .get_stream(key.stream())
            .await
            .map_err(|e| e.to_string())?;
        let wait = s
            .consumer_info("inventory")
            .await
            .map_err(|e| e.to_string())?
            .config
            .ack_wait;
        if wait == Duration::from_secs(15) {
            Ok(())
        } else {
            Err(format!("{wait:?}"))
        }
    })
    .await
    .unwrap();
    wait::until("the pod template to change", T, || async {
        let d = env
            .api::<Deployment>()
            .get(&name)
            .await
            .map_err(|e| e.to_string())?;
        if hash_of(&d) != first_hash {
            Ok(())
        } else {
            Err("same hash".into())
        }
    })
    .await
    .unwrap();

    // A target removed from the route loses its consumer.
    env.apply(&route_yaml(
        "orders",
        &["inventory"],
        "  gateway: {bearerTokens: [{name: ingest, key: token}]}",
    ));
    wait::until("the email consumer to go", T, || async {
        let c = env.consumers(&key.stream()).await?;
        if c == BTreeSet::from(["inventory".to_string()]) {
            Ok(())
        } else {
            Err(format!("{c:?}"))
        }
    })
    .await
    .unwrap();

    // Deleting the route deletes its streams, then the finalizer lets it go.
    env.api::<FanOutRoute>()
        .delete("orders", &Default::default())
        .await
        .unwrap();
    wait::until("the route to be gone", T, || async {
        match env.api::<FanOutRoute>().get_opt("orders").await {
            Ok(None) => Ok(()),
            other => Err(format!(
                "{:?}",
                other.map(|r| r.map(|r| r.metadata.finalizers))
            )),
        }
    })
    .await
    .unwrap();
    assert!(
        env.js.get_stream(key.stream()).await.is_err(),
        "stream deleted"
    );
    assert!(
        env.js.get_stream(key.dead_letter_stream()).await.is_err(),
        "DLQ stream deleted"
    );
    assert!(
        env.js.get_stream(key.attempts_stream()).await.is_err(),
        "history stream deleted"
    );
    wait::until("the gateway to drop the route", T, || async {
        let cm = env
            .api::<ConfigMap>()
            .get("fanout-gateway")
            .await
            .map_err(|e| e.to_string())?;
        let config: GatewayConfig =
            serde_yaml_ng::from_str(&cm.data.unwrap_or_default()["gateway.yaml"])
                .map_err(|e| e.to_string())?;
        if config.routes.is_empty() {
            Ok(())
        } else {
            Err(format!("{:?}", config.routes))
        }
    })
    .await
    .unwrap();
    env.ns.delete(&env.client).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_references_are_reported_and_picked_up_when_they_appear() {
    let env = Env::new("op-refs").await;
    let _operator = env.operator();
    env.apply(&route_yaml("orders", &["crm"], ""));
    let status = env
        .wait_condition("orders", "Ready", "False", Some("ApiTargetNotFound"))
        .await;
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert!(
        ready.message.contains("\"crm\" does not exist"),
        "{}",
        ready.message
    );
    wait::until("an ApiTargetNotFound Event", T, || async {
        let events = env.events("ApiTargetNotFound").await;
        if events.is_empty() {
            Err("none".to_string())
        } else {
            Ok(())
        }
    })
    .await
    .unwrap();
    assert!(
        env.js.get_stream(env.key("orders").stream()).await.is_err(),
        "nothing provisioned for a route that does not render"
    );

    // The ApiTarget appears, but its Secret does not exist yet.
    env.apply(&target_yaml(
        "crm",
        "http://127.0.0.1:9/crm",
        "  auth: {bearer: {secretRef: {name: crm-token, key: token}}}",
    ));
    let status = env
        .wait_condition("orders", "Ready", "False", Some("SecretNotFound"))
        .await;
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert!(ready.message.contains("crm-token"), "{}", ready.message);
    wait::until("the ApiTarget to say its Secret is missing", T, || async {
        let t = env
            .api::<ApiTarget>()
            .get("crm")
            .await
            .map_err(|e| e.to_string())?;
        let s = t.status.ok_or("no status")?;
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .ok_or("no Ready")?;
        if c.status == "False"
            && c.reason == "SecretNotFound"
            && s.routes == vec!["orders".to_string()]
        {
            Ok(())
        } else {
            Err(format!("{c:?} {:?}", s.routes))
        }
    })
    .await
    .unwrap();
    assert!(
        env.api::<Deployment>()
            .get_opt(&env.key("orders").dispatcher_object_name())
            .await
            .unwrap()
            .is_none(),
        "no Deployment whose pods could not start"
    );

    // The Secret appears: everything is created without touching the route.
    env.apply(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: crm-token}\nstringData: {token: t}\n",
    );
    let status = env
        .wait_condition("orders", "Ready", "False", Some("NoPodAvailable"))
        .await;
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "StreamReady" && c.status == "True")
    );
    wait::until("the ApiTarget to be Ready", T, || async {
        let t = env
            .api::<ApiTarget>()
            .get("crm")
            .await
            .map_err(|e| e.to_string())?;
        let c = t
            .status
            .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
            .ok_or("no Ready")?;
        if c.status == "True" {
            Ok(())
        } else {
            Err(format!("{c:?}"))
        }
    })
    .await
    .unwrap();
    env.api::<Deployment>()
        .get(&env.key("orders").dispatcher_object_name())
        .await
        .unwrap();
    env.ns.delete(&env.client).await.unwrap();
}

/// The new credential kinds: the route waits for every key they need (the default
/// key names applied), then its dispatcher pods mount exactly those keys, and the
/// rendered configuration points at the files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_of_oauth2_tls_and_header_auth_is_checked_and_mounted() {
    let env = Env::new("op-creds").await;
    let _operator = env.operator();
    // Every Secret but one key, before the objects that use them.
    let secret = |name: &str, keys: &[&str]| {
        let data: Vec<String> = keys.iter().map(|k| format!("{k}: value-of-{k}")).collect();
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\nstringData: {{{}}}\n",
            data.join(", ")
        )
    };
    env.apply(&secret("crm-oauth", &["client-id"]));
    env.apply(&secret("idp-ca", &["ca.crt"]));
    env.apply(&secret("crm-tenant", &["tenant"]));
    env.apply(&secret("crm-tls", &["tls.crt", "tls.key"]));
    env.apply(&secret("crm-ca", &["bundle.pem"]));
    env.apply(&target_yaml(
        "crm",
        "https://127.0.0.1:9/crm",
        "  auth:
    oauth2:
      tokenUrl: https://127.0.0.1:9/token
      secretRef: {name: crm-oauth}
      caBundle: {secretRef: {name: idp-ca}}
    header: {name: X-Tenant, secretRef: {name: crm-tenant, key: tenant}}
    tls:
      clientCertificate: {secretRef: {name: crm-tls}}
      caBundle: {secretRef: {name: crm-ca}, key: bundle.pem}",
    ));
    env.apply(&route_yaml("orders", &["crm"], ""));
    let status = env
        .wait_condition("orders", "Ready", "False", Some("SecretNotFound"))
        .await;
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert!(
        ready
            .message
            .contains("crm-oauth has no key \"client-secret\""),
        "the documented default key: {}",
        ready.message
    );

    env.apply(&secret("crm-oauth", &["client-id", "client-secret"]));
    env.wait_condition("orders", "Ready", "False", Some("NoPodAvailable"))
        .await;
    let deployment = env
        .api::<Deployment>()
        .get(&env.key("orders").dispatcher_object_name())
        .await
        .unwrap();
    let volumes = deployment
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.volumes.unwrap_or_default())
        .unwrap_or_default();
    let mounted: BTreeSet<String> = volumes
        .iter()
        .filter(|v| v.name == "secrets")
        .flat_map(|v| v.projected.iter().flat_map(|p| p.sources.iter().flatten()))
        .flat_map(|source| source.secret.iter().flat_map(|s| s.items.iter().flatten()))
        .map(|item| item.path.clone())
        .collect();
    let expected: BTreeSet<String> = [
        "crm-oauth/client-id",
        "crm-oauth/client-secret",
        "idp-ca/ca.crt",
        "crm-tenant/tenant",
        "crm-tls/tls.crt",
        "crm-tls/tls.key",
        "crm-ca/bundle.pem",
    ]
    .map(String::from)
    .into();
    assert_eq!(mounted, expected);

    let config = env
        .api::<ConfigMap>()
        .get(&env.key("orders").dispatcher_object_name())
        .await
        .unwrap();
    let yaml = config.data.unwrap().remove("route.yaml").unwrap();
    for path in &expected {
        assert!(yaml.contains(path.as_str()), "{path} in {yaml}");
    }
    assert!(!yaml.contains("value-of-"), "no Secret value in {yaml}");
    env.ns.delete(&env.client).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_and_restarted_flips_stream_ready_and_recovers() {
    let mut env = Env::new("op-nats").await;
    let _operator = env.operator();
    env.apply(&format!(
        "{}{}",
        target_yaml("crm", "http://127.0.0.1:9/crm", ""),
        route_yaml("orders", &["crm"], "")
    ));
    env.wait_condition("orders", "StreamReady", "True", None)
        .await;

    env.nats.kill();
    let status = env
        .wait_condition("orders", "StreamReady", "False", None)
        .await;
    let stream = status
        .conditions
        .iter()
        .find(|c| c.type_ == "StreamReady")
        .unwrap();
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
        let log = operator.process.log();
        let mut start = log.len().saturating_sub(8000);
        while !log.is_char_boundary(start) {
            start += 1;
        }
        let tail = &log[start..];
        let reconciles: String = operator
            .metrics()
            .await
            .unwrap_or_else(|e| e)
            .lines()
            .filter(|l| {
                l.starts_with("fanout_operator_reconciles")
                    || l.starts_with("fanout_operator_errors")
            })
            .collect::<Vec<_>>()
            .join("\n");
        panic!(
            "{e}\n--- the operator's reconciles ---\n{reconciles}\n--- the operator's log, its end ---\n{tail}"
        )
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autoscaled_route_follows_its_backlog_up_at_once_and_down_after_the_delay() {
    let env = Env::new("op-scale").await;
    let _operator = env.operator();
    env.apply(&format!(
        "{}{}",
        target_yaml("crm", "http://127.0.0.1:9/crm", ""),
        route_yaml(
            "orders",
            &["crm"],
            "  dispatcher: {autoscaling: {minReplicas: 1, maxReplicas: 5, targetPendingPerReplica: 10, scaleDownDelay: 3s}}"
        )
    ));
    let key = env.key("orders");
    let replicas_become = |want: i32| {
        let (env, name) = (&env, key.dispatcher_object_name());
        async move {
            wait::until(&format!("{want} dispatcher replicas"), T, || async {
                let d = env
                    .api::<Deployment>()
                    .get_opt(&name)
                    .await
                    .map_err(|e| e.to_string())?;
                let replicas = d.and_then(|d| d.spec).and_then(|s| s.replicas);
                if replicas == Some(want) {
                    Ok(())
                } else {
                    Err(format!("{replicas:?}"))
                }
            })
            .await
            .unwrap();
        }
    };
    replicas_become(1).await;

    // No dispatcher runs here (no node): 35 events stay pending, which calls for
    // four replicas of ten.
    let subject = format!("{}.order", key.ingest_prefix());
    for i in 0..35 {
        env.js
            .publish(subject.clone(), format!("{{\"n\": {i}}}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    replicas_become(4).await;
    let scaled = env.events("Scaled").await;
    // A reconcile may see the publishes half done and scale in two steps (1 -> 3 ->
    // 4); the last one is for the whole backlog.
    let note = scaled
        .iter()
        .filter_map(|e| e.note.as_deref())
        .find(|n| n.contains("-> 4:"))
        .unwrap_or_else(|| panic!("no Scaled Event to 4 in {scaled:?}"));
    assert!(note.contains("target crm has 35 pending"), "{note}");
    // No node runs them: none of the four is available, and status says so.
    wait::until("status to show 0/4 dispatchers", T, || async {
        let d = env.status("orders").await.and_then(|s| s.dispatchers);
        if d.as_deref() == Some("0/4") {
            Ok(())
        } else {
            Err(format!("{d:?}"))
        }
    })
    .await
    .unwrap();

    // The backlog is gone: back to the minimum once the delay has passed.
    env.js
        .get_stream(key.stream())
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    replicas_become(1).await;
    // Its own Event, not folded into the first one's series (which keeps the first
    // note).
    let notes: Vec<String> = env
        .events("Scaled")
        .await
        .into_iter()
        .filter_map(|e| e.note)
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("dispatcher replicas 4 -> 1")),
        "{notes:?}"
    );

    // A fixed count again, of zero: delivery pauses and the backlog waits.
    env.apply(&route_yaml(
        "orders",
        &["crm"],
        "  dispatcher: {replicas: 0}",
    ));
    replicas_become(0).await;
    env.ns.delete(&env.client).await.unwrap();
}

async fn lease_holder(env: &Env) -> Result<String, String> {
    let lease = env
        .api::<Lease>()
        .get_opt("fanout-operator")
        .await
        .map_err(|e| e.to_string())?;
    lease
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .ok_or("no holder".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_operators_one_reconciles_and_a_killed_leader_hands_over() {
    let env = Env::new("op-lease").await;
    let mut operators = [
        Operator::start(&env.ns.name, &env.nats.url(), "op-a", true),
        Operator::start(&env.ns.name, &env.nats.url(), "op-b", true),
    ];
    let holder = wait::until("a Lease holder", T, || lease_holder(&env))
        .await
        .unwrap();
    let (leader, standby) = if holder == "op-a" { (0, 1) } else { (1, 0) };

    env.apply(&format!(
        "{}{}",
        target_yaml("crm", "http://127.0.0.1:9/crm", ""),
        route_yaml("orders", &["crm"], "")
    ));
    env.wait_condition("orders", "StreamReady", "True", None)
        .await;
    let leader_metrics = operators[leader].metrics().await.unwrap();
    assert!(
        leader_metrics.contains("fanout_operator_leader 1"),
        "{leader_metrics}"
    );
    assert!(
        leader_metrics
            .contains("fanout_operator_reconciles_total{controller=\"fanoutroute\",result=\"ok\"}")
    );
    let standby_metrics = operators[standby].metrics().await.unwrap();
    assert!(
        standby_metrics.contains("fanout_operator_leader 0"),
        "{standby_metrics}"
    );
    assert!(
        !standby_metrics.contains("fanout_operator_reconciles_total{controller=\"fanoutroute\""),
        "the standby reconciled:\n{standby_metrics}"
    );

    // The leader dies without releasing the Lease: the standby takes over once the
    // Lease expires, and reconciles what changed meanwhile.
    operators[leader].process.kill();
    env.apply(&route_yaml("payments", &["crm"], ""));
    let new_holder = wait::until("the standby to take the Lease", T, || async {
        let h = lease_holder(&env).await?;
        if h != holder { Ok(h) } else { Err(h) }
    })
    .await
    .unwrap();
    assert_eq!(new_holder, if standby == 0 { "op-a" } else { "op-b" });
    env.wait_condition("payments", "StreamReady", "True", None)
        .await;
    assert!(
        operators[standby]
            .metrics()
            .await
            .unwrap()
            .contains("fanout_operator_leader 1")
    );
    env.ns.delete(&env.client).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_setting_jetstream_cannot_change_is_reported_not_forced() {
    let env = Env::new("op-immutable").await;
    let _operator = env.operator();
    // The CRD refuses a change of storage (e2e/tests/crds.rs); a stream of the
    // route's name can still exist with other storage, made another way (by hand,
    // or kept by NATS from an earlier route of that name).
    let key = env.key("orders");
    env.js
        .create_stream(jetstream::stream::Config {
            name: key.stream(),
            subjects: vec![key.ingest_subjects()],
            storage: jetstream::stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .unwrap();
    env.apply(&format!(
        "{}{}",
        target_yaml("crm", "http://127.0.0.1:9/crm", ""),
        route_yaml("orders", &["crm"], "  source: {storage: file}")
    ));
    let status = env
        .wait_condition(
            "orders",
            "StreamReady",
            "False",
            Some("ImmutableStreamSetting"),
        )
        .await;
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == "StreamReady")
        .unwrap();
    assert!(c.message.contains("storage"), "{}", c.message);
    let mut stream = env.js.get_stream(key.stream()).await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().config.storage,
        jetstream::stream::StorageType::Memory,
        "the stream and its events are kept"
    );
    env.ns.delete(&env.client).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_with_sigterm_exits_cleanly_and_hands_over_at_once() {
    let env = Env::new("op-handover").await;
    let mut a = Operator::start(&env.ns.name, &env.nats.url(), "op-a", true);
    wait::until("op-a to lead", T, || async {
        let h = lease_holder(&env).await?;
        if h == "op-a" { Ok(()) } else { Err(h) }
    })
    .await
    .unwrap();
    let _b = Operator::start(&env.ns.name, &env.nats.url(), "op-b", true);
    wait::until("op-b to stand by", T, || async {
        let m = _b.metrics().await?;
        if m.contains("fanout_operator_leader 0") {
            Ok(())
        } else {
            Err(m)
        }
    })
    .await
    .unwrap();

    let stopped = std::time::Instant::now();
    let exit = a.process.terminate(T).unwrap();
    assert!(exit.success(), "SIGTERM is a clean stop: {exit:?}");
    wait::until("op-b to lead", T, || async {
        let h = lease_holder(&env).await?;
        if h == "op-b" { Ok(()) } else { Err(h) }
    })
    .await
    .unwrap();
    // A released Lease is taken within a retry period of the stop (which may wait
    // up to 5 s for reconciles in flight); an expired one only after the whole lease
    // duration (15 s) without renewals.
    assert!(
        stopped.elapsed() < Duration::from_secs(13),
        "handover took {:?}",
        stopped.elapsed()
    );
    env.ns.delete(&env.client).await.unwrap();
}
