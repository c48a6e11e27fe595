//! Signed deliveries verify with the `standardwebhooks` library from PyPI: a real
//! client that nobody on this project wrote.

mod common;

use std::process::Command;
use std::time::Duration;

use common::Harness;
use fanout_testkit::python;
use fanout_testkit::target::TargetServer;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

const VERIFY: &str = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
case = json.load(open(sys.argv[1]))
try:
    Webhook(case["secret"]).verify(case["body"], case["headers"])
    print("verified")
except Exception as e:
    print(f"refused: {e}")
"#;

/// What the Python verifier says about a request's headers and body.
fn verify(python: &std::path::Path, headers: serde_json::Value, body: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let case = dir.path().join("case.json");
    let script = dir.path().join("verify.py");
    std::fs::write(
        &case,
        serde_json::json!({"secret": SECRET, "headers": headers, "body": body}).to_string(),
    )
    .unwrap();
    std::fs::write(&script, VERIFY).unwrap();
    let out = Command::new(python)
        .arg(&script)
        .arg(&case)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn signatures_verify_with_the_standard_webhooks_library() {
    let python = python::venv_with("standardwebhooks", "1.1.0").unwrap();
    let target = TargetServer::start().await.unwrap();
    let manifests = format!(
        "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: api}}
spec:
  url: {}
  auth: {{signing: {{secretRef: {{name: signing, key: secret}}}}}}
---
apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: orders}}
spec:
  targets: [{{name: api, apiTargetRef: {{name: api}}}}]
",
        target.url("/")
    );
    let h = Harness::start(&manifests, &[("signing", "secret", SECRET)]).await;
    let body = r#"{"order":42,"note":"ünïcödé"}"#;
    h.publish("evt-signed", body, &[]).await;

    let request = &target.wait_for(1, Duration::from_secs(20)).await.unwrap()[0];
    let headers = serde_json::json!({
        "webhook-id": request.header("webhook-id").unwrap(),
        "webhook-timestamp": request.header("webhook-timestamp").unwrap(),
        "webhook-signature": request.header("webhook-signature").unwrap(),
    });
    assert_eq!(request.header("webhook-id"), Some("evt-signed"));
    let received = std::str::from_utf8(&request.body).unwrap();
    assert_eq!(verify(&python, headers.clone(), received), "verified");
    // The verifier is not a rubber stamp: a changed body is refused.
    let tampered = verify(&python, headers, &received.replace("42", "43"));
    assert!(tampered.starts_with("refused"), "{tampered}");
}
