//! The operator running with exactly the rights the chart gives a namespaced
//! install: the chart's ServiceAccount, Roles and RoleBindings (`helm template`,
//! applied to the local control plane), and a token of that ServiceAccount instead
//! of the admin's certificate. Everything a route (and a FanOutReplay) needs still
//! works in the watched namespace (so the chart's rules are enough), a route elsewhere
//! is not touched, and the operator never hits a refusal (so no rule is missing).

mod support;

use std::process::Command;

use fanout_api::{ApiTarget, FanOutReplay, FanOutRoute};
use fanout_testkit::cluster::{self, TestNamespace};
use fanout_testkit::process::Spawned;
use fanout_testkit::{free_port, repo_root, tools, wait};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use support::operator::{T, route_yaml, target_yaml};

const RELEASE: &str = "rbac";

fn kubectl_stdin(args: &[&str], input: &str) -> String {
    let out = cluster::run_with_stdin(cluster::kubectl(args).unwrap(), input.as_bytes()).unwrap();
    cluster::check(&out, &format!("kubectl {}", args.join(" "))).unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn kubectl(args: &[&str]) -> String {
    let out = cluster::kubectl(args).unwrap().output().unwrap();
    cluster::check(&out, &format!("kubectl {}", args.join(" "))).unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// The chart's operator ServiceAccount and RBAC for a release in `own` watching
/// `watched`, as `helm template` renders them.
fn chart_rbac(own: &str, watched: &str) -> String {
    let chart = repo_root().join("charts/fanout");
    let home = tempfile::tempdir().unwrap();
    let mut helm = Command::new(tools::path("helm").unwrap());
    helm.env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .args(["template", RELEASE])
        .arg(&chart)
        .args(["--namespace", own])
        .args(["--set", "nats.url=nats://127.0.0.1:4222"])
        .args(["--set", &format!("operator.watchNamespaces={{{watched}}}")]);
    let out = helm.output().unwrap();
    cluster::check(&out, "helm template").unwrap();
    // Only the operator's identity and rights: the Deployments would never run here.
    let text = String::from_utf8(out.stdout).unwrap();
    let documents: Vec<&str> = text
        .split("\n---")
        .filter(|d| {
            d.contains("app.kubernetes.io/component: operator")
                && [
                    "ServiceAccount",
                    "Role",
                    "RoleBinding",
                    "ClusterRole",
                    "ClusterRoleBinding",
                ]
                .iter()
                .any(|k| d.contains(&format!("\nkind: {k}\n")))
        })
        .collect();
    assert!(
        !documents.iter().any(|d| d.contains("kind: Cluster")),
        "{documents:?}"
    );
    documents.join("\n---")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_works_with_only_the_namespaced_charts_rights() {
    let client = cluster::client().await.unwrap();
    let own = TestNamespace::create(&client, "op-rbac").await.unwrap();
    let watched = TestNamespace::create(&client, "op-rbac-w").await.unwrap();
    let other = TestNamespace::create(&client, "op-rbac-x").await.unwrap();
    kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        &chart_rbac(&own.name, &watched.name),
    );
    let fullname = format!("{RELEASE}-fanout");
    let token = kubectl(&[
        "create",
        "token",
        &format!("{fullname}-operator"),
        "-n",
        &own.name,
        "--duration",
        "1h",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = support::token_kubeconfig(dir.path(), token.trim());
    let nats = fanout_testkit::nats::NatsServer::start().unwrap();

    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_fanout"));
    command
        .args(["operator", "--namespace", &own.name])
        .args(["--watch-namespace", &watched.name])
        .args(["--pod-name", "op-1"])
        .args(["--lease-name", &format!("{fullname}-operator")])
        .args([
            "--gateway-config-map",
            &format!("{fullname}-gateway-routes"),
        ])
        .args([
            "--gateway-tokens-secret",
            &format!("{fullname}-gateway-tokens"),
        ])
        .args([
            "--nats-url",
            &nats.url(),
            "--dispatcher-image",
            "fanout:test",
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--status-interval", "1s"])
        .env("KUBECONFIG", &kubeconfig)
        .env("FANOUT_LOG", "info,fanout_operator=debug");
    let operator = Spawned::start(command, &dir.path().join("operator.log")).unwrap();

    let manifests = format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: crm-token}}
stringData: {{token: t}}
---
apiVersion: v1
kind: Secret
metadata: {{name: ingest}}
stringData: {{token: ingest-token}}
---
{}{}",
        target_yaml(
            "crm",
            "http://127.0.0.1:9/crm",
            "  auth: {bearer: {secretRef: {name: crm-token, key: token}}}"
        ),
        route_yaml(
            "orders",
            &["crm"],
            "  gateway: {bearerTokens: [{name: ingest, key: token}]}"
        )
    );
    for ns in [&other.name, &watched.name] {
        kubectl_stdin(&["apply", "--server-side", "-n", ns, "-f", "-"], &manifests);
    }

    // In the watched namespace: streams, the dispatcher objects, status, Events,
    // the finalizer, the target's status.
    let routes = Api::<FanOutRoute>::namespaced(client.clone(), &watched.name);
    wait::until(
        "the route's dispatcher Deployment and status",
        T,
        || async {
            let r = routes.get("orders").await.map_err(|e| e.to_string())?;
            let ready = r
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .ok_or("no Ready")?;
            // No node runs pods here: waiting for pods means everything else is done.
            if ready.reason == "NoPodAvailable" && r.metadata.finalizers.is_some() {
                Ok(())
            } else {
                Err(format!("{ready:?}"))
            }
        },
    )
    .await
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), &watched.name)
        .get("orders-dispatcher")
        .await
        .unwrap();
    wait::until("the ApiTarget to be Ready", T, || async {
        let t = Api::<ApiTarget>::namespaced(client.clone(), &watched.name)
            .get("crm")
            .await
            .map_err(|e| e.to_string())?;
        let ready = t
            .status
            .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
            .ok_or("no Ready")?;
        if ready.status == "True" {
            Ok(())
        } else {
            Err(format!("{ready:?}"))
        }
    })
    .await
    .unwrap();
    let events = kubectl(&["get", "events.events.k8s.io", "-n", &watched.name]);
    assert!(
        events.contains("FanOutRoute/orders") || events.contains("orders"),
        "{events}"
    );

    // A FanOutReplay there runs, and its status is written (an empty window: the
    // calls are what matters here, replays themselves are cli/tests/replay.rs's).
    kubectl_stdin(
        &["apply", "--server-side", "-n", &watched.name, "-f", "-"],
        "apiVersion: fanout.dev/v1alpha1
kind: FanOutReplay
metadata: {name: crm-night}
spec: {route: orders, target: crm, window: {since: 1h}}
",
    );
    wait::until("the FanOutReplay to complete", T, || async {
        let r = Api::<FanOutReplay>::namespaced(client.clone(), &watched.name)
            .get("crm-night")
            .await
            .map_err(|e| e.to_string())?;
        let complete = r
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Complete"))
            .ok_or("no Complete")?;
        if complete.status == "True" {
            Ok(())
        } else {
            Err(format!("{complete:?}"))
        }
    })
    .await
    .unwrap();

    // In its own namespace: the gateway's routes and the copied ingest token.
    wait::until("the gateway's routes and tokens", T, || async {
        let cm = Api::<ConfigMap>::namespaced(client.clone(), &own.name)
            .get_opt(&format!("{fullname}-gateway-routes"))
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no ConfigMap")?;
        let secret = Api::<Secret>::namespaced(client.clone(), &own.name)
            .get_opt(&format!("{fullname}-gateway-tokens"))
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no Secret")?;
        let yaml = cm
            .data
            .unwrap_or_default()
            .remove("gateway.yaml")
            .unwrap_or_default();
        if yaml.contains(&watched.name) && secret.data.is_some_and(|d| d.len() == 1) {
            Ok(())
        } else {
            Err(yaml)
        }
    })
    .await
    .unwrap();

    // Elsewhere: nothing.
    let untouched = Api::<FanOutRoute>::namespaced(client.clone(), &other.name)
        .get("orders")
        .await
        .unwrap();
    assert!(untouched.status.is_none() && untouched.metadata.finalizers.is_none());

    // Deleting the route removes the finalizer (the streams are gone).
    kubectl(&[
        "delete",
        "fanoutroute",
        "orders",
        "-n",
        &watched.name,
        "--wait=true",
        "--timeout=60s",
    ]);

    let log = operator.log();
    assert!(
        !log.contains("forbidden") && !log.contains("Forbidden"),
        "a call the chart's RBAC does not allow:\n{log}"
    );
    drop(operator);
    for ns in [other, watched, own] {
        ns.delete(&client).await.unwrap();
    }
}
