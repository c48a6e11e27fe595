//! `fanout standalone` refuses exactly what the apiserver refuses, in the same words.
//! Every manifest in `e2e/manifests/invalid/` goes to a real apiserver with the CRDs installed
//! (`kubectl create --dry-run=server`) and to `fanout standalone -f`; the problems
//! each lists must be the same. And every CEL rule of the two CRDs standalone runs must
//! be broken by at least one of those manifests, so a new rule comes with its case.
//! (`kubectl apply --server-side` words unknown fields and repeated list keys in its
//! own way, since it fails while building the patch; the rest it says the same.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use fanout_testkit::cluster;

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../e2e/manifests/invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 20, "the corpus is in {}", dir.display());
    files
}

/// The problems in a refusal, one per line, in either tool's layout: kubectl's
/// "is invalid: \n* a\n* b", its one-problem "is invalid: a", or a strict decoding
/// error; standalone's "is invalid:\n* a\n* b".
fn problems(said: &str) -> BTreeSet<String> {
    if let Some(i) = said.find("strict decoding error: ") {
        return [said[i..].lines().next().unwrap().trim().to_string()].into();
    }
    let (_, after) = said
        .split_once("is invalid:")
        .unwrap_or_else(|| panic!("not a refusal: {said}"));
    let after = after.trim_start_matches(' ');
    if let Some(list) = after.strip_prefix('\n') {
        return list
            .lines()
            .map_while(|l| l.strip_prefix("* "))
            .map(str::to_string)
            .collect();
    }
    [after.lines().next().unwrap().to_string()].into()
}

fn apiserver_says(file: &Path, namespace: &str) -> String {
    let out = cluster::kubectl(&[
        "create",
        "--dry-run=server",
        "-n",
        namespace,
        "-f",
        file.to_str().unwrap(),
    ])
    .unwrap()
    .output()
    .unwrap();
    assert!(
        !out.status.success(),
        "the apiserver accepted {}",
        file.display()
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn standalone_says(file: &Path, namespace: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args(["standalone", "-n", namespace, "-f", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "standalone accepted {}",
        file.display()
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn standalone_refuses_every_manifest_the_apiserver_refuses_in_its_words() {
    let client = cluster::client().await.unwrap();
    let ns = cluster::TestNamespace::create(&client, "parity")
        .await
        .unwrap();
    let mut differences = Vec::new();
    for file in cases() {
        let apiserver = problems(&apiserver_says(&file, &ns.name));
        let standalone = problems(&standalone_says(&file, &ns.name));
        if apiserver != standalone {
            differences.push(format!(
                "{}:\n  apiserver:  {apiserver:#?}\n  standalone: {standalone:#?}",
                file.display()
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

/// Rule messages of a CRD, without those that judge only updates (`oldSelf`).
fn rule_messages(kind: &str) -> BTreeSet<String> {
    fn walk(schema: &serde_json::Value, out: &mut BTreeSet<String>) {
        match schema {
            serde_json::Value::Object(fields) => {
                for rule in fields
                    .get("x-kubernetes-validations")
                    .and_then(|r| r.as_array())
                    .into_iter()
                    .flatten()
                {
                    if !rule["rule"].as_str().unwrap().contains("oldSelf") {
                        out.insert(rule["message"].as_str().unwrap().to_string());
                    }
                }
                fields.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let crd = fanout_api::crd::all()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap();
    let mut out = BTreeSet::new();
    walk(
        &serde_json::to_value(&crd.spec.versions[0].schema).unwrap(),
        &mut out,
    );
    out
}

#[test]
fn every_rule_of_the_crds_is_broken_by_a_case() {
    let mut said: BTreeSet<(String, String)> = BTreeSet::new();
    for file in cases() {
        let text = std::fs::read_to_string(&file).unwrap();
        let kind = text
            .lines()
            .find_map(|l| l.strip_prefix("kind: "))
            .unwrap()
            .to_string();
        for problem in problems(&standalone_says(&file, "parity")) {
            said.insert((kind.clone(), problem));
        }
    }
    let mut missing = Vec::new();
    for kind in ["ApiTarget", "FanOutRoute"] {
        for message in rule_messages(kind) {
            if !said
                .iter()
                .any(|(k, problem)| k == kind && problem.ends_with(&message))
            {
                missing.push(format!("{kind}: {message}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "no case in e2e/manifests/invalid/ breaks these rules:\n{}",
        missing.join("\n")
    );
}
