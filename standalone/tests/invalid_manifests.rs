//! The manifests the apiserver refuses (`e2e/manifests/invalid`) are refused by
//! standalone mode too, before anything starts, with the field named. Each file holds
//! one object; the test adds what it references (or a route using it), so the mistake
//! in the file is the only one. The ones it accepts (`e2e/manifests/valid`, each file
//! complete) standalone accepts too, and JetStream takes the streams they render.

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use fanout_api::policy::AuthSpec;
use fanout_api::render::secret_keys;
use fanout_standalone::{checks, manifests_dir, prepare, secrets};
use serde::Deserialize;

/// (file, what standalone's refusal says), or None for a mistake only the apiserver
/// can see (none at the moment; a new invalid manifest must be added here).
const EXPECTED: &[(&str, Option<&str>)] = &[
    (
        "anonymous-with-tokens.yaml",
        Some("spec.gateway: allowUnauthenticated cannot be combined"),
    ),
    (
        "auth-header-also-static.yaml",
        Some("spec.auth.header.name: auth.header.name is also set in spec.headers"),
    ),
    (
        "auth-header-authorization-with-oauth2.yaml",
        Some("spec.auth: bearer, basic, oauth2 and a header named Authorization each set"),
    ),
    (
        "auth-header-reserved.yaml",
        Some("spec.auth.header.name: headers set by Fanout itself"),
    ),
    (
        "autoscaling-min-above-max.yaml",
        Some("spec.dispatcher.autoscaling: minReplicas must be at most maxReplicas"),
    ),
    (
        "autoscaling-without-max.yaml",
        Some("spec.dispatcher.autoscaling: missing field `maxReplicas`"),
    ),
    (
        "bad-replicas.yaml",
        Some("spec.source.replicas: replicas must be 1 or 3"),
    ),
    (
        "bad-target-name.yaml",
        Some("spec.targets[Email.Service].name must be lowercase"),
    ),
    (
        "bad-url-scheme.yaml",
        Some("url: scheme \"ftp\" is not supported"),
    ),
    (
        "bearer-and-basic.yaml",
        Some("spec.auth: bearer, basic, oauth2 and a header named Authorization each set"),
    ),
    (
        "concurrency-min-above-max.yaml",
        Some("spec.concurrency.minInFlight: concurrency.minInFlight must be at most maxInFlight"),
    ),
    (
        "dead-letter-max-age-below-jetstream-minimum.yaml",
        Some(
            "spec.deadLetter.retention.maxAge: maxAge must be 0s (no age limit) or at least 100ms",
        ),
    ),
    (
        "dotted-route-name.yaml",
        Some("orders.v2: metadata.name must be a DNS label"),
    ),
    (
        "duplicate-target-names.yaml",
        Some("spec.targets: \"email\" is listed more than once"),
    ),
    (
        "duplicate-window-above-default-max-age.yaml",
        Some("spec.source: duplicateWindow (default 2m) must not be longer than retention.maxAge"),
    ),
    (
        "duplicate-window-above-max-age.yaml",
        Some("spec.source: duplicateWindow (default 2m) must not be longer than retention.maxAge"),
    ),
    (
        "duration-beyond-go-range.yaml",
        Some(
            "spec.retry.maxDelay: duration \"3000000h\" is too large: a duration must be at most 2562047h",
        ),
    ),
    (
        "failure-ratio-above-one.yaml",
        Some("circuitBreaker.failureRatio"),
    ),
    (
        "filter-cel-too-long.yaml",
        Some("spec.targets[0].filter.cel: must have at most 4096 characters"),
    ),
    (
        "latency-tolerance-below-minimum.yaml",
        Some("spec.concurrency.latencyTolerance: latencyTolerance must be at least 1.1"),
    ),
    (
        "malformed-duration.yaml",
        Some("spec.timeout: invalid duration \"5 seconds\""),
    ),
    (
        "max-age-below-default-duplicate-window.yaml",
        Some("spec.source: duplicateWindow (default 2m) must not be longer than retention.maxAge"),
    ),
    (
        "max-age-below-jetstream-minimum.yaml",
        Some("spec.source.retention.maxAge: maxAge must be 0s (no age limit) or at least 100ms"),
    ),
    ("max-delay-below-initial-delay.yaml", Some("maxDelay")),
    (
        "missing-api-target-ref-name.yaml",
        Some("spec.targets[0].apiTargetRef: missing field `name`"),
    ),
    (
        "negative-rate.yaml",
        Some("spec.rateLimit.requestsPerSecond: requestsPerSecond must be at least 0.001"),
    ),
    (
        "oauth2-plain-http-token-url.yaml",
        Some("spec.auth.oauth2.tokenUrl: tokenUrl must be an absolute https:// URL"),
    ),
    (
        "oauth2-scope-with-space.yaml",
        Some("spec.auth.oauth2.scopes: each scope must be printable ASCII without spaces"),
    ),
    (
        "ordering-key-credential-header.yaml",
        Some("spec.targets[0].ordering.key.header: header must be an HTTP header name"),
    ),
    (
        "ordering-key-header-and-cel.yaml",
        Some("spec.targets[0].ordering.key: key needs exactly one source"),
    ),
    (
        "ordering-key-no-source.yaml",
        Some("spec.targets[0].ordering.key: key needs exactly one source"),
    ),
    (
        "ordering-key-two-sources.yaml",
        Some("spec.targets[0].ordering.key: key needs exactly one source"),
    ),
    (
        "ordering-max-waiting-zero.yaml",
        Some("spec.targets[0].ordering.maxWaiting: must be at least 1"),
    ),
    (
        "ordering-unknown-after-dead-letter.yaml",
        Some("spec.targets[0].ordering.afterDeadLetter: unknown variant `skip`"),
    ),
    (
        "override-concurrency-min-above-max.yaml",
        Some(
            "spec.targets[0].overrides.concurrency.minInFlight: concurrency.minInFlight must be at most maxInFlight",
        ),
    ),
    (
        "override-max-in-flight-zero.yaml",
        Some("spec.targets[0].overrides.maxInFlight: must be at least 1"),
    ),
    (
        "override-zero-timeout.yaml",
        Some("spec.targets[0].overrides.timeout: timeout must be greater than 0s"),
    ),
    (
        "rate-below-minimum.yaml",
        Some("spec.rateLimit.requestsPerSecond: requestsPerSecond must be at least 0.001"),
    ),
    ("relative-url.yaml", Some("url")),
    (
        "repeated-filter-subject.yaml",
        Some("spec.targets[0].filter.subjects: each subject may be listed only once"),
    ),
    (
        "repeated-source-subject.yaml",
        Some("spec.source.subjects: each subject may be listed only once"),
    ),
    (
        "replicas-and-autoscaling.yaml",
        Some("spec.dispatcher: set replicas or autoscaling, not both"),
    ),
    ("reserved-header.yaml", Some("headers")),
    (
        "reserved-subject.yaml",
        Some("spec.source.subjects: subjects under 'fanout.' are reserved"),
    ),
    (
        "success-code-as-retryable.yaml",
        Some("retryableStatusCodes"),
    ),
    (
        "tls-empty.yaml",
        Some("spec.auth.tls: tls needs a clientCertificate, a caBundle or both"),
    ),
    (
        "tls-on-http-url.yaml",
        Some("spec.auth.tls: auth.tls (client certificate, CA bundle) needs an https:// url"),
    ),
    (
        "transform-empty.yaml",
        Some("targets[crm].transform: transform needs a body, headers or both"),
    ),
    (
        "transform-reserved-header.yaml",
        Some(
            "targets[crm].transform.headers[Authorization]: headers set by Fanout itself or by the connection",
        ),
    ),
    ("unknown-field.yaml", Some("spec.retries: unknown field")),
    (
        "zero-breaker-window.yaml",
        Some("spec.circuitBreaker.window: window must be greater than 0s"),
    ),
    (
        "zero-duplicate-window.yaml",
        Some("spec.source.duplicateWindow: duplicateWindow must be at least 100ms"),
    ),
    (
        "zero-targets.yaml",
        Some("spec.targets: needs at least 1 items"),
    ),
    (
        "zero-timeout.yaml",
        Some("spec.timeout: timeout must be greater than 0s"),
    ),
];

/// Manifests that complete the object in `text`: ApiTargets and ingest Secrets for a
/// route, a route for an ApiTarget.
fn complement(text: &str) -> String {
    let value =
        serde_yaml_ng::Value::deserialize(serde_yaml_ng::Deserializer::from_str(text)).unwrap();
    let mut out = String::new();
    let target = |name: &str| {
        format!(
            "---\napiVersion: fanout.dev/v1alpha1\nkind: ApiTarget\nmetadata: {{name: {name}}}\nspec: {{url: 'http://127.0.0.1:1/'}}\n"
        )
    };
    let secret = |name: &str, keys: &[&str]| {
        let data: Vec<String> = keys.iter().map(|k| format!("{k}: t")).collect();
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\nstringData: {{{}}}\n",
            data.join(", ")
        )
    };
    match value["kind"].as_str() {
        Some("ApiTarget") => {
            let name = value["metadata"]["name"].as_str().unwrap();
            out.push_str(&format!("---\napiVersion: fanout.dev/v1alpha1\nkind: FanOutRoute\nmetadata: {{name: probe}}\nspec: {{targets: [{{name: probe, apiTargetRef: {{name: {name}}}}}]}}\n"));
            // Every Secret key the target's auth refers to, so that only the mistake
            // in the file is left.
            let auth = serde_yaml_ng::from_value::<AuthSpec>(value["spec"]["auth"].clone()).ok();
            let mut secrets: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (name, key) in secret_keys(auth.as_ref()) {
                secrets.entry(name).or_default().push(key);
            }
            for (name, keys) in secrets {
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                out.push_str(&secret(&name, &keys));
            }
        }
        Some("FanOutRoute") => {
            for t in value["spec"]["targets"].as_sequence().into_iter().flatten() {
                if let Some(name) = t["apiTargetRef"]["name"].as_str() {
                    out.push_str(&target(name));
                }
            }
            for token in value["spec"]["gateway"]["bearerTokens"]
                .as_sequence()
                .into_iter()
                .flatten()
            {
                let (name, key) = (
                    token["name"].as_str().unwrap(),
                    token["key"].as_str().unwrap(),
                );
                out.push_str(&secret(name, &[key]));
            }
        }
        other => panic!("unexpected kind {other:?}"),
    }
    out
}

/// Standalone's first refusal of `file` plus its complement, or None when it would run.
fn refusal(file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(file).unwrap();
    first_refusal(&[&text, &complement(&text)])
}

/// Standalone's first refusal of these manifest files, or None when they would run.
fn first_refusal(texts: &[&str]) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    for (i, text) in texts.iter().enumerate() {
        std::fs::write(dir.path().join(format!("{i}.yaml")), text).unwrap();
    }
    let manifests = match manifests_dir::read(&[dir.path().to_path_buf()], "test") {
        Ok(m) => m,
        Err(e) => return Some(format!("{:#}", anyhow::Error::from(e))),
    };
    if let Some(problem) = checks::check(&manifests).first() {
        return Some(problem.to_string());
    }
    let state = secrets::StateDir::open(None).unwrap();
    state.write_secrets(&manifests).unwrap();
    match prepare::prepare(&manifests, &state) {
        Ok(_) => None,
        Err(e) => Some(format!("{:#}", anyhow::Error::from(e))),
    }
}

#[test]
fn what_the_apiserver_refuses_standalone_refuses_naming_the_field() {
    let dir = fanout_testkit::repo_root().join("e2e/manifests/invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let listed: Vec<&str> = EXPECTED.iter().map(|(f, _)| *f).collect();
    assert_eq!(names, listed, "every invalid manifest is listed here");
    let mut wrong = Vec::new();
    for (file, expected) in EXPECTED {
        let got = refusal(&dir.join(file));
        let ok = match (expected, &got) {
            (Some(fragment), Some(message)) => message.contains(fragment),
            (None, None) => true,
            _ => false,
        };
        if !ok {
            wrong.push(format!("{file}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// ... and provisions their streams and consumers on a real nats-server, so the edges
/// the CRD allows (a duplicate window as long as the stream keeps events, no age
/// limit, dead letters kept briefly) are ones JetStream allows too.
#[tokio::test]
async fn what_the_apiserver_accepts_standalone_accepts_and_jetstream_provisions() {
    let nats = fanout_testkit::nats::NatsServer::start().unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let provisioner = fanout_provision::Provisioner::new(async_nats::jetstream::new(client));
    let dir = fanout_testkit::repo_root().join("e2e/manifests/valid");
    let mut refused = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file = entry.unwrap().path();
        let text = std::fs::read_to_string(&file).unwrap();
        if let Some(problem) = first_refusal(&[&text]) {
            refused.push(format!("{}: {problem}", file.display()));
            continue;
        }
        let manifests = manifests_dir::read(std::slice::from_ref(&file), "test").unwrap();
        let state = secrets::StateDir::open(None).unwrap();
        for route in prepare::prepare(&manifests, &state).unwrap().routes {
            if let Err(e) = provisioner.apply(&route.streams).await {
                refused.push(format!(
                    "{}: JetStream: {:#}",
                    file.display(),
                    anyhow::Error::from(e)
                ));
            }
        }
    }
    assert!(refused.is_empty(), "{}", refused.join("\n"));
}
