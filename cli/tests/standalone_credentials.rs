//! Target credentials as a user configures them (`spec.auth` of an ApiTarget, values
//! in Secrets), run by `fanout standalone` with events posted to its gateway: an API
//! key header, mutual TLS with a private CA, and OAuth 2.0 client credentials against
//! a token endpoint. The targets refuse what a real API would refuse: a missing key
//! (401), a TLS handshake without the right client certificate, a token they no
//! longer accept (401).

mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use fanout_testkit::nats::NatsServer;
use fanout_testkit::oauth2::TokenServer;
use fanout_testkit::pki::TestCa;
use fanout_testkit::target::TargetServer;
use fanout_testkit::wait;
use support::standalone::Standalone;

const T: Duration = Duration::from_secs(30);
const ROUTE: &str = "orders";

/// A Secret with these keys, the values base64-encoded under `data` as `kubectl
/// create secret` writes them.
fn secret(name: &str, kind: &str, keys: &[(&str, &str)]) -> String {
    let data: Vec<String> = keys
        .iter()
        .map(|(k, v)| {
            format!(
                "  {k}: {}",
                base64::engine::general_purpose::STANDARD.encode(v)
            )
        })
        .collect();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: {kind}\ndata:\n{}\n---\n",
        data.join("\n")
    )
}

/// A route delivering to each of `targets` (ApiTargets of the same name), anonymous
/// producers.
fn route(targets: &[&str]) -> String {
    let targets: Vec<String> = targets
        .iter()
        .map(|t| format!("    - {{name: {t}, apiTargetRef: {{name: {t}}}}}"))
        .collect();
    format!(
        "apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: {ROUTE}}}
spec:
  targets:
{}
  gateway: {{allowUnauthenticated: true}}
",
        targets.join("\n")
    )
}

async fn post_events(s: &Standalone, keys: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    let mut sent = BTreeSet::new();
    for key in keys {
        s.accept(
            ROUTE,
            &[
                ("Idempotency-Key", &key),
                ("Content-Type", "application/json"),
            ],
            "{\"order\": 1}",
        )
        .await;
        sent.insert(key);
    }
    sent
}

/// Waits until `/status` says `target`'s `field` satisfies `ok`; returns the target.
async fn target_status(
    s: &Standalone,
    target: &str,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait::until(what, T, || async {
        let t = s.target(ROUTE, target).await;
        if ok(&t) {
            Ok(t)
        } else {
            Err(format!("{t}\n{}", s.process.log()))
        }
    })
    .await
    .unwrap()
}

/// The rendered route configuration standalone wrote for inspection.
fn rendered_config(s: &Standalone) -> String {
    std::fs::read_to_string(s.dir.path().join("state/routes/shop.orders.yaml")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_from_a_secret_is_sent_in_its_header() {
    let nats = NatsServer::start().unwrap();
    let crm = TargetServer::start().await.unwrap();
    crm.require_header("x-api-key", &["key-from-the-secret"]);
    let manifests = format!(
        "{}apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: crm}}
spec:
  url: '{}'
  headers: {{X-Source: fanout}}
  auth:
    header:
      name: X-Api-Key
      secretRef: {{name: crm-api-key, key: api-key}}
---
{}",
        secret(
            "crm-api-key",
            "Opaque",
            &[("api-key", "key-from-the-secret")]
        ),
        crm.url("/contacts"),
        route(&["crm"])
    );
    let s = Standalone::start(&nats, "shop", &manifests).await;
    let sent = post_events(&s, (1..=5).map(|i| format!("order-{i}"))).await;
    crm.wait_for_keys(&sent, T).await.unwrap();
    target_status(&s, "crm", "5 delivered", |t| t["delivered"] == 5).await;

    let received = crm.received();
    assert_eq!(received.len(), 5, "none refused: every request had the key");
    for r in &received {
        assert_eq!(r.header("x-api-key"), Some("key-from-the-secret"));
        assert_eq!(r.header("x-source"), Some("fanout"));
    }
    // The rendered configuration points at the Secret's file; the value is in
    // neither it nor the log.
    let rendered = rendered_config(&s);
    assert!(rendered.contains("crm-api-key/api-key"), "{rendered}");
    assert!(!rendered.contains("key-from-the-secret"), "{rendered}");
    assert!(!s.process.log().contains("key-from-the-secret"));
    s.sigterm_exits_zero();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_private_ca_delivers_and_nothing_else_gets_through() {
    let nats = NatsServer::start().unwrap();
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    // The API's own CA signs its server certificate; it takes clients whose
    // certificates another CA issued.
    let server_ca = TestCa::new("billing server CA").unwrap();
    let client_ca = TestCa::new("billing client CA").unwrap();
    let billing = TargetServer::start_https(
        loopback,
        &server_ca.server(&[loopback], &[]).unwrap(),
        Some(&client_ca),
    )
    .await
    .unwrap();
    let client = client_ca.client("fanout").unwrap();
    let stranger = TestCa::new("someone else")
        .unwrap()
        .client("fanout")
        .unwrap();

    let target = |name: &str, tls: &str| {
        format!(
            "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: {name}}}
spec:
  url: '{}'
  timeout: 2s
  retry: {{initialDelay: 100ms, maxDelay: 500ms}}
  auth:
    tls:
{tls}
---
",
            billing.url("/invoices")
        )
    };
    let ca_bundle = "      caBundle: {secretRef: {name: billing-ca}}";
    let manifests = [
        secret(
            "billing-client-tls",
            "kubernetes.io/tls",
            &[
                ("tls.crt", &client.certificate_pem),
                ("tls.key", &client.private_key_pem),
            ],
        ),
        secret(
            "stranger-tls",
            "kubernetes.io/tls",
            &[
                ("tls.crt", &stranger.certificate_pem),
                ("tls.key", &stranger.private_key_pem),
            ],
        ),
        secret("billing-ca", "Opaque", &[("ca.crt", server_ca.pem())]),
        // As documented: a kubernetes.io/tls Secret's keys, the CA's ca.crt.
        target(
            "billing",
            &format!(
                "      clientCertificate: {{secretRef: {{name: billing-client-tls}}}}\n{ca_bundle}"
            ),
        ),
        // Trusts the server but has no certificate to show.
        target("anonymous", ca_bundle),
        // A certificate the API's client CA did not issue.
        target(
            "stranger",
            &format!("      clientCertificate: {{secretRef: {{name: stranger-tls}}}}\n{ca_bundle}"),
        ),
        // The right client certificate, but the server is verified with the platform's
        // trust store, which does not know the API's private CA.
        target(
            "public-trust",
            "      clientCertificate: {secretRef: {name: billing-client-tls}}",
        ),
        route(&["billing", "anonymous", "stranger", "public-trust"]),
    ]
    .concat();
    let s = Standalone::start(&nats, "shop", &manifests).await;
    let sent = post_events(&s, (1..=4).map(|i| format!("invoice-{i}"))).await;
    billing.wait_for_keys(&sent, T).await.unwrap();
    target_status(&s, "billing", "4 delivered", |t| t["delivered"] == 4).await;

    let received = billing.received();
    assert_eq!(received.len(), 4, "only the billing target got through");
    for r in &received {
        assert_eq!(
            r.client_certificate.as_ref(),
            Some(&client.certificate_der),
            "the client certificate from the Secret"
        );
    }
    // What each learns, in its lastError: the API's alert (TLS 1.3 sends it after
    // the client's side of the handshake), or Fanout's own verdict on the server.
    for (name, problem) in [
        ("anonymous", "received fatal alert: CertificateRequired"),
        ("stranger", "received fatal alert: UnknownCA"),
        (
            "public-trust",
            "TLS handshake: invalid peer certificate: UnknownIssuer",
        ),
    ] {
        let t = target_status(&s, name, &format!("{name}'s TLS failure"), |t| {
            t["failed"].as_u64() > Some(0)
        })
        .await;
        assert_eq!(t["delivered"], 0, "{t}");
        let error = t["lastError"].as_str().unwrap_or_default();
        assert!(error.contains(problem), "{name}: {error}");
    }
    let log = s.process.log();
    assert!(
        !log.contains(client.private_key_pem.lines().nth(1).unwrap()),
        "no key material in the log"
    );
    s.sigterm_exits_zero();
}

/// The CRM's API behind OAuth 2.0: tokens from `tokens`, every request checked.
fn oauth2_target(name: &str, url: &str, token_url: &str, extra: &str) -> String {
    format!(
        "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: {name}}}
spec:
  url: '{url}'
  timeout: 2s
  maxInFlight: 16
  retry: {{maxAttempts: 50, initialDelay: 100ms, maxDelay: 300ms}}
  auth:
    oauth2:
      tokenUrl: '{token_url}'
      secretRef: {{name: crm-oauth}}
{extra}
---
"
    )
}

const CLIENT_ID: &str = "fanout-orders";
const CLIENT_SECRET: &str = "s3cret/with+symbols&more";

fn oauth2_secret() -> String {
    secret(
        "crm-oauth",
        "Opaque",
        &[("client-id", CLIENT_ID), ("client-secret", CLIENT_SECRET)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_tokens_are_shared_by_requests_and_replaced_once_after_a_401() {
    let nats = NatsServer::start().unwrap();
    let tokens = TokenServer::start(CLIENT_ID, CLIENT_SECRET, Some(3600))
        .await
        .unwrap();
    let crm = TargetServer::start().await.unwrap();
    crm.require_header("authorization", &["Bearer token-1"]);
    let manifests = [
        oauth2_secret(),
        oauth2_target(
            "crm",
            &crm.url("/contacts"),
            &tokens.url(),
            "      scopes: [contacts.write, contacts.read]\n      audience: https://crm.example.com",
        ),
        route(&["crm"]),
    ]
    .concat();
    let s = Standalone::start(&nats, "shop", &manifests).await;

    // Twenty events in flight together: one token request for all of them.
    let sent = post_events(&s, (1..=20).map(|i| format!("order-{i}"))).await;
    crm.wait_for_keys(&sent, T).await.unwrap();
    assert_eq!(crm.count(), 20, "none refused");
    let requests = tokens.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let first = &requests[0];
    assert!(first.authenticated, "{first:?}");
    assert_eq!(first.client_authentication, "basic");
    assert_eq!(first.param("grant_type"), Some("client_credentials"));
    assert_eq!(first.param("scope"), Some("contacts.write contacts.read"));
    assert_eq!(first.param("audience"), Some("https://crm.example.com"));

    // The CRM stops taking token-1 (revoked): the next request is refused with 401,
    // a new token is fetched once, and the same attempt is sent again with it.
    crm.require_header("authorization", &["Bearer token-2"]);
    post_events(&s, ["order-21".to_string()]).await;
    let for_21 = wait::until("order-21 delivered with token-2", T, || async {
        let got: Vec<_> = crm
            .received()
            .into_iter()
            .filter(|r| r.header("idempotency-key") == Some("order-21"))
            .collect();
        match got.last() {
            Some(r) if r.header("authorization") == Some("Bearer token-2") => Ok(got),
            _ => Err(format!("{} requests", got.len())),
        }
    })
    .await
    .unwrap();
    assert_eq!(for_21.len(), 2, "one refused, one delivered");
    assert_eq!(for_21[0].header("authorization"), Some("Bearer token-1"));
    assert_eq!(
        for_21[0].header("fanout-attempt"),
        for_21[1].header("fanout-attempt"),
        "the same attempt, sent again"
    );
    assert_eq!(
        tokens.issued(),
        ["token-1", "token-2"],
        "exactly one refresh"
    );
    let t = target_status(&s, "crm", "21 delivered", |t| t["delivered"] == 21).await;
    assert_eq!(
        t["failed"], 0,
        "the refused token is not the event's failure: {t}"
    );

    // Later events use token-2 without asking again.
    let more = post_events(&s, (22..=25).map(|i| format!("order-{i}"))).await;
    crm.wait_for_keys(&more, T).await.unwrap();
    assert_eq!(tokens.requests().len(), 2);
    let log = s.process.log();
    assert!(
        !log.contains(CLIENT_SECRET),
        "the client secret is not logged"
    );
    assert!(!rendered_config(&s).contains(CLIENT_SECRET));
    s.sigterm_exits_zero();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_token_endpoint_shows_in_last_error_and_the_event_is_retried() {
    let nats = NatsServer::start().unwrap();
    let tokens = TokenServer::start(CLIENT_ID, CLIENT_SECRET, Some(3600))
        .await
        .unwrap();
    tokens.fail_next([503, 503, 503]);
    let crm = TargetServer::start().await.unwrap();
    crm.require_header("authorization", &["Bearer token-1"]);
    let manifests = [
        oauth2_secret(),
        oauth2_target(
            "crm",
            &crm.url("/contacts"),
            &tokens.url(),
            "      clientAuthentication: post",
        ),
        route(&["crm"]),
    ]
    .concat();
    let s = Standalone::start(&nats, "shop", &manifests).await;
    post_events(&s, ["order-1".to_string()]).await;

    let t = target_status(&s, "crm", "the token failure in lastError", |t| {
        t["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("no access token"))
    })
    .await;
    let error = t["lastError"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "token endpoint {} answered HTTP 503",
            tokens.url()
        )),
        "{error}"
    );
    assert!(!error.contains(CLIENT_SECRET), "{error}");

    // Retried like a target that failed; delivered once the endpoint answers.
    crm.wait_for_keys(&BTreeSet::from(["order-1".to_string()]), T)
        .await
        .unwrap();
    let t = target_status(&s, "crm", "delivered", |t| t["delivered"] == 1).await;
    assert!(t["failed"].as_u64() >= Some(1), "{t}");
    assert_eq!(t["deadLettered"], 0, "{t}");
    assert_eq!(
        crm.count(),
        1,
        "the target was never sent a request without a token"
    );
    let requests = tokens.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.client_authentication == "post" && r.authenticated),
        "{requests:?}"
    );
    assert_eq!(tokens.issued(), ["token-1"]);
    s.sigterm_exits_zero();
}

/// Runs standalone on `manifests`, expecting it to refuse them before connecting to
/// NATS (nothing listens on its port); its output.
fn refused_at_start(manifests: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("manifests.yaml"), manifests).unwrap();
    let unused = format!("nats://127.0.0.1:{}", fanout_testkit::free_port());
    let mut process = fanout_testkit::process::Spawned::start(
        support::standalone::command(dir.path(), "shop", &unused),
        &dir.path().join("standalone.log"),
    )
    .unwrap();
    assert!(!process.wait(T).unwrap().success());
    process.log()
}

#[test]
fn unusable_credentials_stop_standalone_at_start_naming_the_field() {
    let target = |auth: &str| {
        format!(
            "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: billing}}
spec:
  url: https://127.0.0.1:1/invoices
  auth:
{auth}
---
{}",
            route(&["billing"])
        )
    };
    // A Secret whose tls.crt is not a certificate.
    let broken_pem =
        secret(
            "billing-client-tls",
            "kubernetes.io/tls",
            &[("tls.crt", "not a certificate"), ("tls.key", "not a key")],
        ) + &target("    tls:\n      clientCertificate: {secretRef: {name: billing-client-tls}}");
    let out = refused_at_start(&broken_pem);
    assert!(
        out.contains("targets[billing].credentials.tls")
            && out.contains("holds no PEM certificate"),
        "{out}"
    );
    assert!(out.contains("billing-client-tls/tls.crt"), "{out}");

    // The CRD's own rule, as the apiserver words it: a token URL that would carry the
    // secret in clear.
    let http_token_url = oauth2_secret()
        + &target(
            "    oauth2: {tokenUrl: 'http://idp.example.com/token', secretRef: {name: crm-oauth}}",
        );
    let out = refused_at_start(&http_token_url);
    assert!(
        out.contains("(ApiTarget billing) is invalid:\n* spec.auth.oauth2.tokenUrl: Invalid value: \"string\": tokenUrl must be an absolute https:// URL"),
        "{out}"
    );
    assert!(!out.contains(CLIENT_SECRET), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_replaced_before_it_expires_without_a_refusal() {
    let nats = NatsServer::start().unwrap();
    // Tokens live 2 s: each is replaced 0.2 s early.
    let tokens = TokenServer::start(CLIENT_ID, CLIENT_SECRET, Some(2))
        .await
        .unwrap();
    let crm = TargetServer::start().await.unwrap();
    let any_token: Vec<String> = (1..=50).map(|n| format!("Bearer token-{n}")).collect();
    crm.require_header(
        "authorization",
        &any_token.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let manifests = [
        oauth2_secret(),
        oauth2_target("crm", &crm.url("/contacts"), &tokens.url(), ""),
        route(&["crm"]),
    ]
    .concat();
    let s = Standalone::start(&nats, "shop", &manifests).await;
    post_events(&s, ["order-0".to_string()]).await;
    crm.wait_for(1, T).await.unwrap();

    // Events keep coming; before long one carries a new token, fetched because the
    // old one was about to expire (the API never refused one).
    let next = std::sync::atomic::AtomicUsize::new(1);
    wait::until("a request with token-2", T, || async {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = format!("order-{i}");
        post_events(&s, [key.clone()]).await;
        crm.wait_for_keys(&BTreeSet::from([key]), T)
            .await
            .map_err(|e| e.to_string())?;
        let with_new = crm
            .received()
            .iter()
            .any(|r| r.header("authorization") == Some("Bearer token-2"));
        if with_new {
            Ok(())
        } else {
            Err(format!("{:?}", tokens.issued()))
        }
    })
    .await
    .unwrap();
    let received = crm.received();
    assert_eq!(
        received.len(),
        crm.distinct_keys().len(),
        "each event sent once: no token was refused"
    );
    let first_new = received
        .iter()
        .position(|r| r.header("authorization") == Some("Bearer token-2"))
        .unwrap();
    let age = received[first_new].at - received[0].at;
    assert!(
        age >= Duration::from_millis(1700),
        "token-1 was used for {age:?}, not until shortly before its 2 s"
    );
    s.sigterm_exits_zero();
}
