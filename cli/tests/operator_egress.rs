//! The egress policy in a cluster: `fanout operator` against the real local control
//! plane puts the platform's egress entries and the apiserver's addresses on the
//! dispatcher pods it creates, and a dispatcher run with exactly the pod's settings
//! (this control plane has no node) refuses a target at the apiserver's address,
//! which the route's and the ApiTarget's status then show.

mod support;

use std::collections::BTreeMap;
use std::net::IpAddr;

use fanout_api::ApiTarget;
use fanout_api::status::CircuitState;
use fanout_testkit::target::TargetServer;
use fanout_testkit::{cluster, free_port, wait};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::PostParams;
use support::operator::{self, Env, T, route_yaml, target_yaml};

/// A real cluster's apiservers publish themselves in EndpointSlice default/kubernetes.
/// This control plane's apiserver advertises a loopback address, which it does not
/// publish, so the test publishes one the way it would: a TEST-NET address that
/// nothing ever connects to. Left in place (other runs of this test may read it);
/// an existing slice is used as it is.
async fn apiserver_endpoints(client: &kube::Client) -> Vec<IpAddr> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    if slices.get_opt("kubernetes").await.unwrap().is_none() {
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["192.0.2.10"]}],
            "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]
        }))
        .unwrap();
        // Another test run may have created it meanwhile.
        let _ = slices.create(&PostParams::default(), &slice).await;
    }
    let slice = slices.get("kubernetes").await.unwrap();
    slice
        .endpoints
        .iter()
        .flat_map(|e| &e.addresses)
        .map(|a| a.parse().unwrap())
        .collect()
}

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
async fn dispatcher_pods_refuse_the_apiserver_and_a_refused_target_shows_in_status() {
    let env = Env::new("op-egress").await;
    let endpoints = apiserver_endpoints(&env.client).await;
    let service_ip: IpAddr = Api::<Service>::namespaced(env.client.clone(), "default")
        .get("kubernetes")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.cluster_ip)
        .unwrap()
        .parse()
        .unwrap();
    let operator = env.operator_with(&[
        "--dispatcher-egress-deny",
        "10.0.0.0/8,evil.example",
        "--dispatcher-egress-allow",
        "10.1.0.0/16",
    ]);
    let target = TargetServer::start().await.unwrap();
    env.apply(&format!(
        "{}{}",
        target_yaml(
            "inventory",
            &target.url("/reservations"),
            "  retry: {maxAttempts: 3, initialDelay: 50ms, maxDelay: 100ms}"
        ),
        route_yaml(
            "orders",
            &["inventory"],
            "  gateway: {allowUnauthenticated: true}"
        ),
    ));

    // The Deployment carries the policy: the platform's entries and every address
    // the apiserver is reachable at (the Service's, its endpoints, and the one the
    // operator itself connects to).
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
    assert_eq!(vars["FANOUT_EGRESS_DENY"], "10.0.0.0/8,evil.example");
    assert_eq!(vars["FANOUT_EGRESS_ALLOW"], "10.1.0.0/16");
    let apiserver: Vec<IpAddr> = vars["FANOUT_EGRESS_APISERVER"]
        .split(',')
        .map(|a| a.parse().unwrap())
        .collect();
    let url = cluster::kubeconfig().unwrap();
    let kubeconfig = std::fs::read_to_string(url).unwrap();
    let connected: IpAddr = kubeconfig
        .split("server: https://")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .unwrap()
        .parse()
        .unwrap();
    for address in endpoints.iter().chain([&service_ip, &connected]) {
        assert!(apiserver.contains(address), "{address} in {apiserver:?}");
    }
    assert!(
        !vars.values().any(|v| v.contains("127.0.0.0/8")),
        "nothing allows loopback: {vars:?}"
    );

    // A dispatcher with exactly the pod's environment, given the rendered
    // configuration as the pod mounts it.
    let dir = tempfile::tempdir().unwrap();
    let (route_file, gateway_file) = operator::rendered(&env, "orders", dir.path()).await;
    let pod_env: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with("FANOUT_EGRESS_"))
        .collect();
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
            "--pod-name",
            "orders-dispatcher-1",
            "--health-interval",
            "1s",
        ],
        &pod_env,
    );
    let (_gateway, gateway_addr, _) = operator::gateway(&env, dir.path(), &gateway_file);
    operator::send(&env, &gateway_addr, "orders", 0..2).await;

    // Where a user looks: the route's TargetsHealthy condition, its target's
    // lastError and circuit, the Warning Event, and the ApiTarget's circuit.
    // Here the operator reaches the apiserver at 127.0.0.1 too, so the dispatcher
    // was told that address is the apiserver's: more specific than loopback, that is
    // what refuses it.
    let why =
        "connection refused by egress policy: 127.0.0.1 is the Kubernetes apiserver (127.0.0.1/32)";
    let status = env
        .wait_condition("orders", "TargetsHealthy", "False", Some("TargetsFailing"))
        .await;
    let condition = operator::condition(&status.conditions, "TargetsHealthy");
    assert!(
        condition
            .message
            .starts_with(&format!("inventory: circuit Open ({why}")),
        "{}",
        condition.message
    );
    let inventory = &status.targets[0];
    assert_eq!(inventory.circuit, CircuitState::Open);
    assert!(
        inventory
            .last_error
            .as_deref()
            .unwrap_or("")
            .starts_with(why),
        "{inventory:?}"
    );
    wait::until("the Warning Event", T, || async {
        let events = env.events("TargetsFailing").await;
        if events
            .iter()
            .any(|e| e.note.as_deref().unwrap_or("").contains(why))
        {
            Ok(())
        } else {
            Err(format!("{events:?}"))
        }
    })
    .await
    .unwrap();
    let shown = wait::until("the ApiTarget's circuit", T, || async {
        let t = env
            .api::<ApiTarget>()
            .get("inventory")
            .await
            .map_err(|e| e.to_string())?;
        match t.status.as_ref().and_then(|s| s.circuit) {
            Some(CircuitState::Open) => Ok(()),
            _ => {
                let route = env.status("orders").await.map(|s| s.targets);
                Err(format!("{:?}; the route's targets: {route:?}", t.status))
            }
        }
    })
    .await;
    if let Err(e) = shown {
        panic!("{e}\n{}", operator.diagnosis().await)
    }
    assert_eq!(target.connections(), 0, "nothing reached the target");
    assert_eq!(status.dead_lettered, Some(0), "the events are kept");
    env.ns.delete(&env.client).await.unwrap();
}
