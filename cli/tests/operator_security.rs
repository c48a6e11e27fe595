//! What a route author cannot make the operator do, against the real local control
//! plane: run a dispatcher image the platform did not allow, take over an object of
//! the dispatcher's name that Fanout did not create, or get a route reconciled in a
//! namespace the operator does not watch. (That the chart's RBAC gives a namespaced
//! install no access outside its namespaces is e2e/tests/chart/'s part.)

mod support;

use fanout_api::FanOutRoute;
use fanout_testkit::cluster::{self, TestNamespace};
use fanout_testkit::wait;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::Api;
use support::operator::{Env, Operator, T, route_yaml, target_yaml};

fn image(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

fn condition(status: &fanout_api::FanOutRouteStatus, type_: &str) -> fanout_api::status::Condition {
    support::operator::condition(&status.conditions, type_).clone()
}

async fn event_note(env: &Env, reason: &str, route: &str) -> String {
    let event = env.wait_event(reason, route).await;
    event
        .note
        .unwrap_or_else(|| panic!("a {reason} Event without a note"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_image_outside_the_allowed_list_is_refused_and_running_pods_are_kept() {
    let env = Env::new("op-image").await;
    // The platform allows one more repository, with any tag.
    let _operator = Operator::start_with(
        &env.ns.name,
        &env.nats.url(),
        "op-1",
        false,
        &["--allowed-dispatcher-images", "registry.example/fanout"],
        None,
    );
    env.apply(&format!(
        "{}{}",
        target_yaml("crm", "http://127.0.0.1:9/crm", ""),
        route_yaml("orders", &["crm"], "")
    ));
    let name = env.key("orders").dispatcher_object_name();
    let deployments = env.api::<Deployment>();
    let before = wait::until("the Deployment", T, || async {
        deployments
            .get_opt(&name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("absent".to_string())
    })
    .await
    .unwrap();
    assert_eq!(image(&before), "fanout:test", "the operator's own image");

    // A route author asks for an image of their own: refused, the field named, and
    // the Deployment (and so the pods running now) left exactly as it was.
    env.apply(&route_yaml(
        "orders",
        &["crm"],
        "  dispatcher: {image: \"evil.example/miner:1\"}",
    ));
    let status = env
        .wait_condition("orders", "Ready", "False", Some("ImageNotAllowed"))
        .await;
    let ready = condition(&status, "Ready");
    assert!(
        ready.message.contains("spec.dispatcher.image") && ready.message.contains("evil.example"),
        "{}",
        ready.message
    );
    let note = event_note(&env, "ImageNotAllowed", "orders").await;
    assert!(note.contains("spec.dispatcher.image"), "{note}");
    let after = deployments.get(&name).await.unwrap();
    assert_eq!(image(&after), "fanout:test");
    assert_eq!(after.metadata.generation, before.metadata.generation);

    // A route that starts with a foreign image gets no Deployment at all.
    env.apply(&route_yaml(
        "payments",
        &["crm"],
        "  dispatcher: {image: \"registry.example/fanout-evil:1\"}",
    ));
    env.wait_condition("payments", "Ready", "False", Some("ImageNotAllowed"))
        .await;
    assert!(
        deployments
            .get_opt(&env.key("payments").dispatcher_object_name())
            .await
            .unwrap()
            .is_none()
    );

    // An image of the allowed repository runs.
    env.apply(&route_yaml(
        "orders",
        &["crm"],
        "  dispatcher: {image: \"registry.example/fanout:2.0\"}",
    ));
    wait::until("the allowed image in the Deployment", T, || async {
        let d = deployments.get(&name).await.map_err(|e| e.to_string())?;
        if image(&d) == "registry.example/fanout:2.0" {
            Ok(())
        } else {
            Err(image(&d))
        }
    })
    .await
    .unwrap();
    // No node runs pods here: the route now waits for them, not for an image.
    env.wait_condition("orders", "Ready", "False", Some("NoPodAvailable"))
        .await;
    env.ns.delete(&env.client).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_object_of_the_dispatchers_name_is_left_alone_and_survives_the_route() {
    let env = Env::new("op-adopt").await;
    let name = env.key("orders").dispatcher_object_name();
    // Someone else's Deployment, of the name the route's dispatchers would get.
    env.apply(&format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, labels: {{team: billing}}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: billing}}}}
  template:
    metadata: {{labels: {{app: billing}}}}
    spec:
      containers: [{{name: app, image: billing.example/app:7}}]
"
    ));
    let deployments = env.api::<Deployment>();
    let theirs = deployments.get(&name).await.unwrap();

    let _operator = env.operator();
    env.apply(&format!(
        "{}{}",
        target_yaml("crm", "http://127.0.0.1:9/crm", ""),
        route_yaml("orders", &["crm"], "")
    ));
    let status = env
        .wait_condition("orders", "Ready", "False", Some("DispatcherObjectConflict"))
        .await;
    let message = condition(&status, "Ready").message;
    assert!(
        message.contains(&format!("Deployment {}/{name}", env.ns.name)),
        "{message}"
    );
    let available = condition(&status, "DispatcherAvailable");
    assert_eq!(
        (available.status.as_str(), available.reason.as_str()),
        ("False", "DispatcherObjectConflict")
    );
    assert!(
        condition(&status, "StreamReady").status == "True",
        "JetStream is the route's own and is provisioned"
    );
    let note = event_note(&env, "DispatcherObjectConflict", "orders").await;
    assert!(note.contains(&name), "{note}");

    // Untouched: same spec, no owner, no field written by the operator; and nothing
    // else of the route's was created beside it.
    let now = deployments.get(&name).await.unwrap();
    assert_eq!(now.metadata.generation, theirs.metadata.generation);
    assert_eq!(image(&now), "billing.example/app:7");
    assert!(now.metadata.owner_references.is_none());
    let managers: Vec<String> = now
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        !managers.iter().any(|m| m == "fanout-operator"),
        "{managers:?}"
    );
    assert!(
        env.api::<ConfigMap>()
            .get_opt(&name)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        env.api::<ServiceAccount>()
            .get_opt(&name)
            .await
            .unwrap()
            .is_none()
    );

    // Deleting the route: garbage collection removes what the route owns (a
    // ConfigMap made its dependent here, to see the collector act) and not the
    // Deployment that was never the route's.
    let route = env.api::<FanOutRoute>().get("orders").await.unwrap();
    env.apply(&format!(
        "apiVersion: v1
kind: ConfigMap
metadata:
  name: owned-by-orders
  ownerReferences:
    - {{apiVersion: fanout.dev/v1alpha1, kind: FanOutRoute, name: orders, uid: {}}}
data: {{}}
",
        route.metadata.uid.unwrap()
    ));
    env.kubectl(&["delete", "fanoutroute", "orders", "--wait=true"]);
    wait::until("the route's dependents to be collected", T, || async {
        match env.api::<ConfigMap>().get_opt("owned-by-orders").await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    let kept = deployments.get(&name).await.unwrap();
    assert_eq!(kept.metadata.uid, theirs.metadata.uid);
    assert_eq!(image(&kept), "billing.example/app:7");
    env.ns.delete(&env.client).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_watched_namespaces_are_reconciled() {
    let env = Env::new("op-watch").await;
    let second = TestNamespace::create(&env.client, "op-watch-b")
        .await
        .unwrap();
    let unwatched = TestNamespace::create(&env.client, "op-watch-x")
        .await
        .unwrap();
    let manifests = format!(
        "{}{}",
        target_yaml("crm", "http://127.0.0.1:9/crm", ""),
        route_yaml("orders", &["crm"], "")
    );
    let apply_in = |ns: &str| {
        let kubectl = cluster::kubectl(&["apply", "--server-side", "-n", ns, "-f", "-"]).unwrap();
        let out = cluster::run_with_stdin(kubectl, manifests.as_bytes()).unwrap();
        cluster::check(&out, "kubectl apply").unwrap();
    };
    // The unwatched route exists first, so the operator has every chance to see it.
    apply_in(&unwatched.name);
    // Two namespaces: the flag repeated (a comma-separated list works too).
    let _operator = Operator::start_with(
        &env.ns.name,
        &env.nats.url(),
        "op-1",
        false,
        &["--watch-namespace", &second.name],
        None,
    );
    apply_in(&env.ns.name);
    apply_in(&second.name);
    env.wait_condition("orders", "StreamReady", "True", None)
        .await;
    let routes_in = |ns: &str| Api::<FanOutRoute>::namespaced(env.client.clone(), ns);
    wait::until(
        "the second namespace's route to be provisioned",
        T,
        || async {
            let r = routes_in(&second.name)
                .get("orders")
                .await
                .map_err(|e| e.to_string())?;
            let ready = r
                .status
                .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "StreamReady"))
                .ok_or("no StreamReady")?;
            if ready.status == "True" {
                Ok(())
            } else {
                Err(format!("{ready:?}"))
            }
        },
    )
    .await
    .unwrap();

    // Both watched routes are done; the unwatched one was never touched: no
    // finalizer, no status, no stream, no dispatcher objects.
    let untouched = routes_in(&unwatched.name).get("orders").await.unwrap();
    assert!(untouched.status.is_none(), "{:?}", untouched.status);
    assert!(untouched.metadata.finalizers.is_none());
    let stream = fanout_api::names::RouteKey::new(&unwatched.name, "orders").stream();
    assert!(env.js.get_stream(&stream).await.is_err());
    assert!(
        Api::<Deployment>::namespaced(env.client.clone(), &unwatched.name)
            .get_opt("orders-dispatcher")
            .await
            .unwrap()
            .is_none()
    );
    // The gateway serves the watched routes only.
    let gateway = wait::until("the gateway's routes", T, || async {
        let cm = env
            .api::<ConfigMap>()
            .get_opt("fanout-gateway")
            .await
            .map_err(|e| e.to_string())?
            .and_then(|c| c.data)
            .and_then(|mut d| d.remove("gateway.yaml"))
            .ok_or("absent")?;
        if cm.contains(&second.name) {
            Ok(cm)
        } else {
            Err(cm)
        }
    })
    .await
    .unwrap();
    assert!(gateway.contains(&env.ns.name), "{gateway}");
    assert!(!gateway.contains(&unwatched.name), "{gateway}");
    second.delete(&env.client).await.unwrap();
    unwatched.delete(&env.client).await.unwrap();
    env.ns.delete(&env.client).await.unwrap();
}

#[test]
fn a_malformed_allowed_image_stops_the_operator_naming_the_flag() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args(["operator", "--dispatcher-image", "fanout:1"])
        .args([
            "--allowed-dispatcher-images",
            "registry.example/fanout,Registry.example/Team/App:1",
        ])
        // Checked before anything is contacted.
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--allowed-dispatcher-images")
            && stderr.contains("Registry.example/Team/App:1"),
        "{stderr}"
    );
}
