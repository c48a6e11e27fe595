//! `kubectl fanout` as users run it: the pinned kubectl finding `kubectl-fanout` on its
//! PATH, against the local control plane, with `fanout operator`, `fanout dispatch` and
//! `fanout gateway` as processes (this control plane has no node) and a NATS that
//! requires a token. The plugin is given no NATS settings: it reads the connection
//! ConfigMap the chart renders (`helm template`) and the Secret it names, with the
//! rights of whoever runs it.

mod support;

use std::collections::BTreeSet;

use fanout_testkit::cluster::{self, TestNamespace};
use fanout_testkit::target::{Reply, TargetServer};
use fanout_testkit::wait;
use support::operator::{self, Env, T, route_yaml, target_yaml};
use support::plugin::{self, Plugin};

const TOKEN: &str = "nats-s3cret";

/// Route `orders` with `inventory` (answers 200) and `email` (answers 400 until told
/// otherwise) in a fresh namespace that also plays the chart's namespace: the NATS
/// token in Secret `nats-token`, the connection ConfigMap naming it.
struct Shop {
    env: Env,
    inventory: TargetServer,
    email: TargetServer,
    gateway: String,
    _operator: operator::Operator,
    _processes: Vec<fanout_testkit::process::Spawned>,
    _dir: tempfile::TempDir,
}

impl Shop {
    async fn start(prefix: &str) -> Shop {
        let env = Env::with_nats_token(prefix, TOKEN).await;
        let operator = env.operator();
        let inventory = TargetServer::start().await.unwrap();
        let email = TargetServer::start().await.unwrap();
        email.set_default(Reply::StatusBody(400, "missing field customer"));
        env.apply(&format!(
            "apiVersion: v1
kind: Secret
metadata: {{name: nats-token}}
stringData: {{token: {TOKEN}}}
---
{}{}{}",
            target_yaml("inventory", &inventory.url("/in"), ""),
            target_yaml("email", &email.url("/mail"), ""),
            route_yaml(
                "orders",
                &["inventory", "email"],
                "  gateway: {allowUnauthenticated: true}"
            ),
        ));
        plugin::install_connection(
            &env.ns.name,
            &[
                &format!("nats.url={}", env.nats.url()),
                "nats.token.secretName=nats-token",
            ],
        );
        let dir = tempfile::tempdir().unwrap();
        let (route_file, gateway_file) = operator::rendered(&env, "orders", dir.path()).await;
        let (dispatcher, _) =
            operator::dispatcher(&env, dir.path(), &route_file, "orders-dispatcher-1");
        let (gateway_process, gateway, _) = operator::gateway(&env, dir.path(), &gateway_file);
        Shop {
            env,
            inventory,
            email,
            gateway,
            _operator: operator,
            _processes: vec![dispatcher, gateway_process],
            _dir: dir,
        }
    }

    fn ns(&self) -> &str {
        &self.env.ns.name
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_the_per_target_table_from_the_route_status() {
    let shop = Shop::start("plugin-status").await;
    operator::send(&shop.env, &shop.gateway, "orders", 0..5).await;
    shop.inventory.wait_for(5, T).await.unwrap();
    wait::until("the route's status to count every delivery", T, || async {
        let s = shop.env.status("orders").await.ok_or("no status")?;
        let numbers: Vec<(String, u64, u64)> = s
            .targets
            .iter()
            .map(|t| (t.name.clone(), t.delivered, t.dead_lettered))
            .collect();
        let wanted = vec![("inventory".to_string(), 5, 0), ("email".to_string(), 0, 5)];
        if numbers == wanted {
            Ok(())
        } else {
            Err(format!("{numbers:?}"))
        }
    })
    .await
    .unwrap();

    // From the status alone: no NATS settings, not even the ConfigMap's.
    let kubectl = Plugin::new();
    shop.env.kubectl(&[
        "delete",
        "configmap",
        "-l",
        "app.kubernetes.io/component=connection",
    ]);
    let table = kubectl.run(&["status", "orders", "-n", shop.ns()]);
    let route = format!("{}/orders", shop.ns());
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        [
            "ROUTE",
            "TARGET",
            "CIRCUIT",
            "DELIVERED",
            "FAILED",
            "DEAD-LETTERED",
            "PENDING",
            "IN-FLIGHT",
            "OLDEST",
            "LAST-ERROR"
        ],
        "{table}"
    );
    assert_eq!(
        lines[1],
        [
            &route,
            "inventory",
            "Closed",
            "5",
            "0",
            "0",
            "0",
            "0",
            "-",
            "-"
        ],
        "{table}"
    );
    assert_eq!(
        &lines[2][..4],
        [route.as_str(), "email", "Closed", "0"],
        "{table}"
    );
    assert_eq!(lines[2][5], "5", "dead-lettered: {table}");
    assert!(table.contains("HTTP 400"), "{table}");

    // kubectl's conventions: the context's namespace when -n is not given, -o.
    let wide = kubectl.run(&["status", "-n", shop.ns(), "-o", "wide"]);
    assert!(
        wide.lines().next().unwrap().contains("LAST-SUCCESS"),
        "{wide}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&kubectl.run(&["status", "orders", "-n", shop.ns(), "-o", "json"]))
            .unwrap();
    assert_eq!(json["routes"][0]["targets"][0]["delivered"], 5);
    assert_eq!(json["routes"][0]["targets"][1]["deadLettered"], 5);
    let yaml = kubectl.run(&["status", "orders", "-n", shop.ns(), "-o", "yaml"]);
    assert!(yaml.contains("deadLettered: 5"), "{yaml}");
    let missing = kubectl
        .try_run(&["status", "nope", "-n", shop.ns()])
        .unwrap_err();
    assert!(
        missing.contains(&format!("FanOutRoute {}/nope does not exist", shop.ns())),
        "{missing}"
    );
    let context = kubectl
        .try_run(&["status", "-n", shop.ns(), "--context", "nope"])
        .unwrap_err();
    assert!(context.contains("--context nope"), "{context}");
    // --kubeconfig instead of KUBECONFIG.
    let admin = cluster::kubeconfig().unwrap();
    let out = kubectl
        .command(&["status", "orders", "-n", shop.ns(), "--kubeconfig"])
        .arg(&admin)
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), table);

    // Below the table, what it cannot show: a route whose ingest token's Secret is
    // missing, so the gateway cannot take its producers' events yet.
    shop.env.apply(&route_yaml(
        "late",
        &["inventory"],
        "  gateway: {bearerTokens: [{name: late-ingest, key: token}]}",
    ));
    shop.env
        .wait_condition("late", "IngestReady", "False", Some("SecretNotFound"))
        .await;
    let shown = kubectl.run(&["status", "late", "-n", shop.ns()]);
    let why = format!(
        "{}/late: IngestReady=False (SecretNotFound): Secret {}/late-ingest does not exist",
        shop.ns(),
        shop.ns()
    );
    assert!(shown.contains(&why), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_and_the_delivery_history_are_read_with_nats_found_from_the_cluster() {
    let shop = Shop::start("plugin-dlq").await;
    let ids: BTreeSet<String> = operator::send(&shop.env, &shop.gateway, "orders", 0..3)
        .await
        .into_iter()
        .collect();
    shop.inventory.wait_for_keys(&ids, T).await.unwrap();
    let kubectl = Plugin::new();
    let ns = shop.ns().to_string();
    let args = |extra: &[&'static str]| -> Vec<String> {
        let mut all: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        all.extend([
            "-n".into(),
            ns.clone(),
            "--operator-namespace".into(),
            ns.clone(),
        ]);
        all
    };
    let run = |extra: &[&'static str]| {
        let a = args(extra);
        kubectl.run(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let listed = wait::until("three dead letters", T, || async {
        let text = run(&["dlq", "list", "orders"]);
        if text.lines().count() == 4 {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await
    .unwrap();
    for id in &ids {
        let line = listed.lines().find(|l| l.contains(id.as_str())).unwrap();
        for part in ["email", "permanent", "400", "missing field customer"] {
            assert!(line.contains(part), "{line}");
        }
    }
    let json: serde_json::Value =
        serde_json::from_str(&run(&["dlq", "list", "orders", "-o", "json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);
    assert_eq!(json[0]["reason"], "permanent");
    let refused = kubectl
        .try_run(
            &args(&["dlq", "redrive", "orders", "--target", "emial"])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
        .unwrap_err();
    assert!(
        refused.contains("--target") && refused.contains("its targets: inventory, email"),
        "{refused}"
    );

    // The delivery history says the same: each event failed at email only.
    let failed = wait::until("three failed events in the history", T, || async {
        let text = run(&["events", "orders", "--failed"]);
        let rows: Vec<&str> = text.lines().skip(1).collect();
        if rows.len() == 3 { Ok(text) } else { Err(text) }
    })
    .await
    .unwrap();
    for id in &ids {
        let line = failed.lines().find(|l| l.starts_with(id.as_str())).unwrap();
        assert!(
            line.contains("email") && line.contains("dead-lettered (permanent)"),
            "{line}"
        );
    }

    // The cause is fixed; the dead letters go to email again, and only to it.
    shop.email.set_default(Reply::Status(200));
    let out = run(&["dlq", "redrive", "orders", "--target", "email"]);
    assert!(out.contains("redriven 3 dead letter(s)"), "{out}");
    shop.email.wait_for(6, T).await.unwrap();
    let redriven: BTreeSet<String> = shop.email.keys()[3..].iter().cloned().collect();
    assert_eq!(redriven, ids, "the same Idempotency-Keys");
    assert_eq!(shop.inventory.count(), 3);
    assert_eq!(run(&["dlq", "list", "orders"]).lines().count(), 1);

    // One event's attempts at each target: refused, dead-lettered, then delivered
    // when redriven at email; delivered at once at inventory.
    let id = ids.first().unwrap().clone();
    let attempts = args(&["attempts", "orders"]);
    let attempts: Vec<&str> = attempts
        .iter()
        .map(String::as_str)
        .chain([id.as_str(), "-o", "json"])
        .collect();
    let history = wait::until("the redriven delivery in the history", T, || async {
        let json: serde_json::Value =
            serde_json::from_str(&kubectl.run(&attempts)).map_err(|e| e.to_string())?;
        let outcomes = |target: &str| -> Vec<String> {
            json["attempts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["target"] == target)
                .map(|a| a["outcome"].as_str().unwrap_or_default().to_string())
                .collect()
        };
        let got = (outcomes("email"), outcomes("inventory"));
        if got.0 == ["failed", "deadLettered", "delivered"] && got.1 == ["delivered"] {
            Ok(json)
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await
    .unwrap();
    assert_eq!(history["event"], id.as_str());
    let refused = kubectl
        .try_run(
            &args(&["events", "ordres"])
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
        .unwrap_err();
    assert!(refused.contains("ordres"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_uses_its_users_rights_and_says_what_to_pass_when_nats_is_out_of_reach() {
    let shop = Shop::start("plugin-rights").await;
    let ns = shop.ns().to_string();
    // Someone who may read routes and the chart's ConfigMap in this namespace, but not
    // the NATS token's Secret, and nothing in other namespaces.
    shop.env.apply(&format!(
        "apiVersion: v1
kind: ServiceAccount
metadata: {{name: developer}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: fanout-reader}}
rules:
  - apiGroups: [fanout.dev]
    resources: [fanoutroutes, apitargets]
    verbs: [get, list]
  - apiGroups: ['']
    resources: [configmaps]
    verbs: [list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: developer}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: fanout-reader}}
subjects: [{{kind: ServiceAccount, name: developer, namespace: {ns}}}]
"
    ));
    let token = shop
        .env
        .kubectl(&["create", "token", "developer", "--duration", "1h"]);
    let dir = tempfile::tempdir().unwrap();
    let developer = Plugin::with_kubeconfig(&support::token_kubeconfig(dir.path(), token.trim()));
    let list = ["dlq", "list", "orders", "-n", &ns];

    // Looking in every namespace is not allowed: say where to look instead.
    let everywhere = developer.try_run(&list).unwrap_err();
    assert!(
        everywhere.contains("in any namespace") && everywhere.contains("--operator-namespace"),
        "{everywhere}"
    );
    // The Secret with the NATS token is not theirs to read: say which, and the flag.
    let with_ns = [&list[..], &["--operator-namespace", &ns]].concat();
    let secret = developer.try_run(&with_ns).unwrap_err();
    assert!(
        secret.contains(&format!("Secret {ns}/nats-token")) && secret.contains("--nats-token-file"),
        "{secret}"
    );
    assert!(!secret.contains(TOKEN));
    // Given `get` on that one Secret, it works.
    shop.env.apply(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: fanout-nats}}
rules:
  - apiGroups: ['']
    resources: [secrets]
    resourceNames: [nats-token]
    verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: developer-nats}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: fanout-nats}}
subjects: [{{kind: ServiceAccount, name: developer, namespace: {ns}}}]
"
    ));
    let listed = wait::until("the developer's rights to apply", T, || async {
        developer.try_run(&with_ns)
    })
    .await
    .unwrap();
    assert!(listed.starts_with("SEQ"), "{listed}");

    // A NATS address only the cluster's DNS knows: not tried from here; the
    // port-forward to run and the flag to pass are printed.
    let client = cluster::client().await.unwrap();
    let elsewhere = TestNamespace::create(&client, "plugin-nats").await.unwrap();
    plugin::install_connection(
        &elsewhere.name,
        &["nats.url=nats://nats.messaging.svc:4222"],
    );
    let admin = Plugin::new();
    let inside = [&list[..], &["--operator-namespace", &elsewhere.name]].concat();
    let advice = admin.try_run(&inside).unwrap_err();
    assert!(
        advice.contains("nats://nats.messaging.svc:4222")
            && advice.contains("kubectl port-forward -n messaging svc/nats 4222:4222")
            && advice.contains("--nats-url nats://127.0.0.1:4222"),
        "{advice}"
    );
    let nats_url = shop.env.nats.url();
    // Following it: the local end of the forward (here NATS itself) with --nats-url;
    // the token still comes from the cluster (the first namespace's chart).
    let forwarded = [
        &list[..],
        &["--operator-namespace", &ns, "--nats-url", &nats_url],
    ]
    .concat();
    assert!(admin.run(&forwarded).starts_with("SEQ"));
    // Without any credentials NATS refuses, and the plugin says so.
    let no_token = [
        &list[..],
        &[
            "--operator-namespace",
            &elsewhere.name,
            "--nats-url",
            &nats_url,
        ],
    ]
    .concat();
    let refused = admin.try_run(&no_token).unwrap_err();
    assert!(refused.contains("cannot connect to NATS"), "{refused}");
    elsewhere.delete(&client).await.unwrap();
}

#[test]
fn the_install_script_puts_kubectl_fanout_on_path_and_packages_the_chart() {
    let prefix = tempfile::tempdir().unwrap();
    let charts = prefix.path().join("charts");
    let helm = fanout_testkit::tools::path("helm").unwrap();
    let kubectl = fanout_testkit::tools::path("kubectl").unwrap();
    let path = format!(
        "{}:{}",
        helm.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("bash")
        .arg(fanout_testkit::repo_root().join("scripts/install-kubectl-fanout.sh"))
        .arg("--prefix")
        .arg(prefix.path())
        .arg("--chart")
        .arg(&charts)
        .env("FANOUT_BIN", env!("CARGO_BIN_EXE_fanout"))
        .env("PATH", &path)
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&format!("installed {}/fanout", prefix.path().display()))
            && said.contains("is not on your PATH"),
        "{said}"
    );
    let chart = std::fs::read_dir(&charts)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "tgz"))
        .expect("the packaged chart");
    assert!(said.contains(&chart.display().to_string()), "{said}");

    // kubectl finds the plugin on PATH and runs it.
    let path = format!("{}:{path}", prefix.path().display());
    let listed = std::process::Command::new(&kubectl)
        .args(["plugin", "list"])
        .env("PATH", &path)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("kubectl-fanout"), "{listed}");
    let help = std::process::Command::new(&kubectl)
        .args(["fanout", "--help"])
        .env("PATH", &path)
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for command in ["status", "dlq", "replay"] {
        assert!(help.contains(command), "{help}");
    }
}
