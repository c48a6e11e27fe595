//! The generated CRDs on a real kube-apiserver: they install, the examples apply,
//! invalid manifests are refused with the field named, and `kubectl get` shows the
//! printer columns.

use std::path::{Path, PathBuf};

use fanout_api::{ApiTarget, FanOutRoute};
use fanout_testkit::cluster::{self, TestNamespace, check, kubectl};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};

fn manifests(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

fn apply(namespace: &str, path: &Path) -> std::process::Output {
    kubectl(&["apply", "--server-side", "--namespace", namespace, "-f"])
        .unwrap()
        .arg(path)
        .output()
        .unwrap()
}

fn get(namespace: &str, what: &str) -> String {
    let out = kubectl(&["get", what, "--namespace", namespace])
        .unwrap()
        .output()
        .unwrap();
    check(&out, &format!("kubectl get {what}")).unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn crds_install_and_become_established() {
    let client = cluster::client().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    for name in [
        "apitargets.fanout.dev",
        "fanoutroutes.fanout.dev",
        "fanoutreplays.fanout.dev",
    ] {
        let crd = crds.get(name).await.unwrap();
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        for wanted in ["Established", "NamesAccepted"] {
            let status = conditions
                .iter()
                .find(|c| c.type_ == wanted)
                .map(|c| c.status.as_str());
            assert_eq!(status, Some("True"), "{name}: {wanted} in {conditions:?}");
        }
    }
}

#[tokio::test]
async fn every_example_applies_server_side() {
    let client = cluster::client().await.unwrap();
    for dir in manifests("../examples") {
        let ns = TestNamespace::create(&client, "example").await.unwrap();
        let out = apply(&ns.name, &dir);
        check(
            &out,
            &format!("kubectl apply --server-side -f {}", dir.display()),
        )
        .unwrap();

        // Everything that was applied is served back with the same spec.
        let routes: Api<FanOutRoute> = Api::namespaced(client.clone(), &ns.name);
        let targets: Api<ApiTarget> = Api::namespaced(client.clone(), &ns.name);
        let listed_routes = routes.list(&Default::default()).await.unwrap();
        let listed_targets = targets.list(&Default::default()).await.unwrap();
        assert!(
            !listed_routes.items.is_empty(),
            "{}: no route stored",
            dir.display()
        );
        assert!(
            !listed_targets.items.is_empty(),
            "{}: no target stored",
            dir.display()
        );
        for route in &listed_routes.items {
            for t in &route.spec.targets {
                let found = listed_targets
                    .items
                    .iter()
                    .any(|a| a.metadata.name.as_deref() == Some(&t.api_target_ref.name));
                assert!(
                    found,
                    "{}: {} refers to a missing ApiTarget",
                    dir.display(),
                    t.name
                );
            }
        }
        ns.delete(&client).await.unwrap();
    }
}

#[tokio::test]
async fn minimal_manifests_apply_because_every_policy_has_a_default() {
    let client = cluster::client().await.unwrap();
    let ns = TestNamespace::create(&client, "valid").await.unwrap();
    for file in manifests("manifests/valid") {
        check(&apply(&ns.name, &file), &file.display().to_string()).unwrap();
    }
    ns.delete(&client).await.unwrap();
}

/// Each file in `manifests/invalid` starts with `# expect: <text>` lines; applying it
/// must fail and the error must contain every expected text (field path and message).
#[tokio::test]
async fn invalid_manifests_are_refused_naming_the_field() {
    let client = cluster::client().await.unwrap();
    let ns = TestNamespace::create(&client, "invalid").await.unwrap();
    let files = manifests("manifests/invalid");
    assert!(files.len() >= 8, "only {} invalid cases", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{}: no `# expect:` line",
            file.display()
        );
        let out = apply(&ns.name, file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let name = file.file_name().unwrap().to_string_lossy();
        if out.status.success() {
            failures.push(format!("{name}: was accepted"));
            continue;
        }
        for e in &expected {
            if !stderr.contains(e) {
                failures.push(format!("{name}: error does not mention {e:?}:\n{stderr}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    ns.delete(&client).await.unwrap();
}

/// JetStream cannot change a stream's storage in place, so an update that would is
/// refused; spelling out the default is not a change.
#[tokio::test]
async fn a_routes_storage_cannot_change_once_it_exists() {
    let client = cluster::client().await.unwrap();
    let ns = TestNamespace::create(&client, "storage").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("route.yaml");
    let route = |source: &str| {
        format!(
            "apiVersion: fanout.dev/v1alpha1\nkind: FanOutRoute\nmetadata: {{name: orders}}\nspec:\n  {source}\n  targets: [{{name: email, apiTargetRef: {{name: mailer}}}}]\n"
        )
    };

    std::fs::write(&file, route("source: {duplicateWindow: 2m}")).unwrap();
    check(&apply(&ns.name, &file), "creating the route").unwrap();
    std::fs::write(&file, route("source: {storage: file}")).unwrap();
    check(&apply(&ns.name, &file), "naming the default storage").unwrap();

    std::fs::write(&file, route("source: {storage: memory}")).unwrap();
    let out = apply(&ns.name, &file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the change was accepted");
    for expected in [
        "spec.source.storage",
        "source.storage cannot be changed once the route exists",
    ] {
        assert!(stderr.contains(expected), "{expected:?} not in {stderr}");
    }
    ns.delete(&client).await.unwrap();
}

#[tokio::test]
async fn kubectl_get_prints_the_printer_columns() {
    let client = cluster::client().await.unwrap();
    let ns = TestNamespace::create(&client, "columns").await.unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/order-placed");
    check(&apply(&ns.name, &example), "applying the order example").unwrap();

    // Status as the operator would write it; the oldest undelivered event is five
    // and a half minutes old.
    let oldest = k8s_openapi::jiff::Timestamp::now()
        .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(330))
        .unwrap()
        .to_string();
    let routes: Api<FanOutRoute> = Api::namespaced(client.clone(), &ns.name);
    let status = serde_json::json!({"status": {
        "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Delivering",
                        "message": "", "lastTransitionTime": "2026-11-26T00:00:00Z"}],
        "healthyTargets": "2/3", "dispatchers": "1/2", "pending": 42, "deadLettered": 7,
        "deliveredSummary": "inventory=12 mailer=10 analytics=0",
        "oldestUndeliveredTime": oldest,
    }});
    routes
        .patch_status("orders", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let targets: Api<ApiTarget> = Api::namespaced(client.clone(), &ns.name);
    let status = serde_json::json!({"status": {"circuit": "Open"}});
    targets
        .patch_status("analytics", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();

    let routes = Table::parse(&get(&ns.name, "fanoutroutes"));
    assert_eq!(
        routes.header,
        [
            "NAME",
            "READY",
            "TARGETS",
            "DISPATCHERS",
            "PENDING",
            "OLDEST-UNDELIVERED",
            "DELIVERED",
            "DEAD-LETTERED",
            "AGE"
        ]
    );
    let row = routes.row("orders");
    assert_eq!(&row[1..5], ["True", "2/3", "1/2", "42"], "{routes:?}");
    assert!(row[5].starts_with("5m"), "an age of 5m30s: {routes:?}");
    assert_eq!(
        &row[6..8],
        ["inventory=12 mailer=10 analytics=0", "7"],
        "{routes:?}"
    );

    let targets = Table::parse(&get(&ns.name, "apitargets"));
    assert_eq!(targets.header, ["NAME", "URL", "READY", "CIRCUIT", "AGE"]);
    let analytics = targets.row("analytics");
    assert_eq!(
        analytics[1],
        "https://collector.analytics.example.com/ingest"
    );
    assert_eq!(analytics[3], "Open", "{targets:?}");
    assert_eq!(targets.row("inventory")[3], "", "no circuit reported yet");

    // Short names and the category reach the same objects.
    assert!(get(&ns.name, "fr").contains("orders"));
    assert!(get(&ns.name, "apit").contains("inventory"));
    let category = get(&ns.name, "fanout");
    assert!(
        category.contains("fanoutroute.fanout.dev/orders"),
        "{category}"
    );
    assert!(
        category.contains("apitarget.fanout.dev/mailer"),
        "{category}"
    );
    ns.delete(&client).await.unwrap();
}

/// `kubectl get` output split at the header's column starts, so empty cells stay empty.
#[derive(Debug)]
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn parse(text: &str) -> Table {
        let mut lines = text.lines();
        let header_line = lines.next().expect("a header line");
        let starts: Vec<usize> = header_line
            .char_indices()
            .filter(|&(i, c)| c != ' ' && (i == 0 || header_line.as_bytes()[i - 1] == b' '))
            .map(|(i, _)| i)
            .collect();
        let cut = |line: &str| -> Vec<String> {
            starts
                .iter()
                .enumerate()
                .map(|(n, &start)| {
                    let end = starts
                        .get(n + 1)
                        .copied()
                        .unwrap_or(line.len())
                        .min(line.len());
                    line.get(start.min(end)..end)
                        .unwrap_or("")
                        .trim()
                        .to_string()
                })
                .collect()
        };
        Table {
            header: cut(header_line),
            rows: lines.map(cut).collect(),
        }
    }

    fn row(&self, name: &str) -> &[String] {
        self.rows
            .iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("no row {name} in {self:?}"))
    }
}
