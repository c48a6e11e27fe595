//! Real installs: the objects a release creates, what its operator may do, and
//! what `helm uninstall` leaves.

use super::*;

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
