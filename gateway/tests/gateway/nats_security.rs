//! The gateway on a NATS secured as production runs it: TLS verified against the CA
//! given (`--nats-ca-file`), a credentials file (`--nats-credentials-file`: a user JWT
//! and the NKey seed that signs the server's nonce), or a token file. Events go in by
//! HTTP; what counts is the 202 and the stream's content, and, when the gateway lacks
//! what the server asks for, a 503 and nothing stored.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use fanout_testkit::nats::NatsServer;
use fanout_testkit::pki::TestCa;
use serde_json::Value;

use crate::support::{Backend, Harness, RouteSpec, Setup, TOKEN, http_client, stored_messages};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn route() -> RouteSpec {
    RouteSpec::new("shop", "orders").token(TOKEN)
}

/// A server requiring TLS and user JWTs, with the route's stream provisioned by a
/// client holding both.
async fn tls_and_jwt_backend() -> Backend {
    let ca = TestCa::new("nats test ca").unwrap();
    let nats = NatsServer::start_secured(LOCALHOST, Some(&ca), true).unwrap();
    let options = async_nats::ConnectOptions::with_credentials_file(nats.creds_file().unwrap())
        .await
        .unwrap()
        .add_root_certificates(nats.ca_file().unwrap())
        .require_tls(true);
    Backend::on(nats, options, &[route()]).await
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The server's view of its client connections (`/connz`).
async fn connections(nats: &NatsServer) -> Vec<Value> {
    let uri: hyper::Uri = format!("http://{}/connz", nats.monitor_addr())
        .parse()
        .unwrap();
    let reply = http_client().get(uri).await.unwrap();
    let body = http_body_util::BodyExt::collect(reply.into_body())
        .await
        .unwrap()
        .to_bytes();
    let connz: Value = serde_json::from_slice(&body).unwrap();
    connz["connections"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_stored_over_tls_with_a_credentials_file() {
    let backend = tls_and_jwt_backend().await;
    let creds = backend.nats.creds_file().unwrap();
    let ca = backend.nats.ca_file().unwrap();
    let setup = Setup::default()
        .flag("nats-credentials-file", path_str(&creds))
        .flag("nats-ca-file", path_str(&ca));
    let h = Harness::on(backend, setup).await;

    let reply = h
        .send_event(&[("content-type", "application/json")], r#"{"order":1}"#)
        .await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    let id = reply.json()["id"].as_str().unwrap().to_string();
    let stored = stored_messages(&h.js, "fanout_shop_orders").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(&stored[0].payload[..], br#"{"order":1}"#);
    assert_eq!(
        crate::support::stored_header(&stored[0], "Fanout-Event-Id"),
        Some(id.as_str())
    );

    // Every shard's connection is the gateway's, and speaks TLS.
    let gateway: Vec<Value> = connections(&h.nats)
        .await
        .into_iter()
        .filter(|c| c["name"] == "fanout-gateway")
        .collect();
    assert!(!gateway.is_empty(), "no gateway connection in connz");
    for connection in &gateway {
        assert!(
            connection["tls_version"]
                .as_str()
                .is_some_and(|v| !v.is_empty()),
            "{connection}"
        );
    }
}

/// Polls the server's log until it holds `needle` (the server refused the gateway).
async fn server_logged(nats: &NatsServer, needle: &str) {
    let log = nats.log_file();
    fanout_testkit::wait::until(
        &format!("nats-server to log {needle:?}"),
        Duration::from_secs(20),
        || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains(needle) {
                Ok(())
            } else {
                Err(text.lines().last().unwrap_or_default().to_string())
            }
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_what_the_server_asks_for_is_unready_and_answers_503() {
    // (flags beyond the URL, what the server logs when it refuses the gateway)
    type Case = (fn(&NatsServer) -> Vec<(String, String)>, &'static str);
    let cases: [Case; 2] = [
        (
            |nats| {
                let ca = nats.ca_file().unwrap();
                vec![("nats-ca-file".into(), path_str(&ca).to_string())]
            },
            "authentication error",
        ),
        (
            |nats| {
                let creds = nats.creds_file().unwrap();
                vec![("nats-credentials-file".into(), path_str(&creds).to_string())]
            },
            "TLS handshake error",
        ),
    ];
    for (flags, refusal) in cases {
        let backend = tls_and_jwt_backend().await;
        let mut setup = Setup::default().unready();
        for (name, value) in flags(&backend.nats) {
            setup = setup.flag(&name, &value);
        }
        let h = Harness::on(backend, setup).await;
        server_logged(&h.nats, refusal).await;

        let ready = h.ops("/readyz").await;
        let problem = ready.problem(503);
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("not connected to NATS"),
            "{problem}"
        );
        let reply = h.send_event(&[], "lost?").await;
        reply.problem(503);
        assert!(reply.header("retry-after").is_some());
        assert!(
            stored_messages(&h.js, "fanout_shop_orders")
                .await
                .is_empty(),
            "{refusal}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_stored_with_a_nats_token_file() {
    let nats = NatsServer::start_with_token(LOCALHOST, "nats-t0ken").unwrap();
    let options = async_nats::ConnectOptions::with_token("nats-t0ken".into());
    let backend = Backend::on(nats, options, &[route()]).await;
    let token_file = backend.dir.path().join("nats-token");
    std::fs::write(&token_file, "nats-t0ken\n").unwrap();
    let setup = Setup::default().flag("nats-token-file", path_str(&token_file));
    let h = Harness::on(backend, setup).await;

    let reply = h.send_event(&[], "with a token").await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    let stored = stored_messages(&h.js, "fanout_shop_orders").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(&stored[0].payload[..], b"with a token");
}
