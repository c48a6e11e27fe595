//! Every manifest under `examples/` must parse into the API types and resolve into
//! valid delivery policies, so the examples in the docs cannot rot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fanout_api::render::{Rendered, render, secret_keys};
use fanout_api::{ApiTarget, FanOutRoute};
use k8s_openapi::api::core::v1::Secret;
use serde::Deserialize;

/// The objects of one example directory, by kind and name.
#[derive(Default)]
struct Example {
    targets: BTreeMap<String, ApiTarget>,
    routes: BTreeMap<String, FanOutRoute>,
    secrets: BTreeMap<String, Secret>,
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn load(dir: &Path) -> Example {
    let mut example = Example::default();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no manifests", dir.display());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = serde_yaml_ng::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", file.display()));
            let kind = value["kind"].as_str().unwrap_or_default().to_string();
            match kind.as_str() {
                "ApiTarget" => {
                    let t: ApiTarget = parse(value, &file);
                    example.targets.insert(t.metadata.name.clone().unwrap(), t);
                }
                "FanOutRoute" => {
                    let r: FanOutRoute = parse(value, &file);
                    example.routes.insert(r.metadata.name.clone().unwrap(), r);
                }
                "Secret" => {
                    let s: Secret = parse(value, &file);
                    example.secrets.insert(s.metadata.name.clone().unwrap(), s);
                }
                other => panic!("{}: unexpected kind {other:?}", file.display()),
            }
        }
    }
    example
}

fn parse<T: serde::de::DeserializeOwned>(value: serde_yaml_ng::Value, file: &Path) -> T {
    let kind = value["kind"].as_str().unwrap_or_default().to_string();
    serde_yaml_ng::from_value(value).unwrap_or_else(|e| panic!("{}: {kind}: {e}", file.display()))
}

fn example_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn secret_has_key(secret: &Secret, key: &str) -> bool {
    secret
        .string_data
        .as_ref()
        .is_some_and(|d| d.contains_key(key))
        || secret.data.as_ref().is_some_and(|d| d.contains_key(key))
}

#[test]
fn there_are_at_least_two_complete_scenarios() {
    let dirs = example_dirs();
    assert!(dirs.len() >= 2, "found {dirs:?}");
    for dir in dirs {
        let example = load(&dir);
        assert!(
            !example.routes.is_empty(),
            "{}: no FanOutRoute",
            dir.display()
        );
        assert!(
            !example.targets.is_empty(),
            "{}: no ApiTarget",
            dir.display()
        );
    }
}

fn render_example(example: &Example, route: &FanOutRoute) -> Rendered {
    let mut route = route.clone();
    route.metadata.namespace = Some("example".into());
    render(
        &route,
        |name| example.targets.get(name),
        Path::new("/secrets"),
    )
    .unwrap_or_else(|e| panic!("{:?}: {e}", route.metadata.name))
}

#[test]
fn every_route_renders_with_its_targets() {
    for dir in example_dirs() {
        let example = load(&dir);
        for route in example.routes.values() {
            let rendered = render_example(&example, route);
            assert_eq!(rendered.config.targets.len(), route.spec.targets.len());
            assert_eq!(rendered.streams.consumers.len(), route.spec.targets.len());
        }
    }
}

#[test]
fn every_secret_reference_exists_in_the_example() {
    for dir in example_dirs() {
        let example = load(&dir);
        // (who needs it, Secret, key) for every credential and ingest token.
        let mut wanted: Vec<(String, String, String)> = Vec::new();
        for (name, target) in &example.targets {
            for (secret, key) in secret_keys(target.spec.auth.as_ref()) {
                wanted.push((format!("ApiTarget {name}"), secret, key));
            }
        }
        for (name, route) in &example.routes {
            for token in route.spec.gateway.iter().flat_map(|g| &g.bearer_tokens) {
                wanted.push((
                    format!("FanOutRoute {name}"),
                    token.name.clone(),
                    token.key.clone(),
                ));
            }
        }
        for (owner, secret, key) in wanted {
            let found = example
                .secrets
                .get(&secret)
                .is_some_and(|s| secret_has_key(s, &key));
            assert!(
                found,
                "{}: {owner} needs Secret {secret} key {key}",
                dir.display()
            );
        }
    }
}

#[test]
fn the_order_example_uses_overrides_and_filters() {
    let example = load(&examples_dir().join("order-placed"));
    let route = &example.routes["orders"];
    let names: Vec<_> = route.spec.targets.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["inventory", "email", "analytics"]);
    let rendered = render_example(&example, route);
    let policy = &rendered.config.targets[2].policy;
    assert_eq!(policy.retry.max_attempts, 2, "route override wins");
    assert_eq!(
        policy.retry.initial_delay.to_string(),
        "2s",
        "target value kept"
    );
    assert_eq!(policy.max_in_flight, 8);
    assert_eq!(rendered.streams.consumers[2].max_ack_pending, 8);
    assert_eq!(
        rendered.config.targets[1].filter.headers["X-Event-Type"],
        "order.placed"
    );
    assert_eq!(
        rendered.streams.stream.subjects,
        [
            "fanout.in.example.orders.>",
            "shop.orders.>",
            "fanout.redrive.example.orders.*"
        ]
    );
}
