//! Signed deliveries verify with the `standardwebhooks` library from PyPI: a real
//! client that nobody on this project wrote.

mod common;

use std::time::Duration;

use common::Harness;
use fanout_testkit::target::TargetServer;
use fanout_testkit::webhooks;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test]
async fn signatures_verify_with_the_standard_webhooks_library() {
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
    assert_eq!(
        webhooks::verify(SECRET, std::slice::from_ref(request)).unwrap(),
        [Ok(())]
    );
    assert_eq!(
        webhooks::verify_one(SECRET, headers.clone(), received).unwrap(),
        Ok(())
    );
    // The verifier is not a rubber stamp: a changed body is refused.
    let tampered = webhooks::verify_one(SECRET, headers, &received.replace("42", "43")).unwrap();
    assert!(tampered.is_err(), "{tampered:?}");
}
