//! TLS on the events port with a certificate from files, as a Secret volume provides
//! it: clients that trust the CA post events; a rewritten certificate is served to
//! new connections while an open one keeps working. The files in `tls/` are made by
//! `tls/make.sh`: one CA, two server certificates for localhost and 127.0.0.1.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::support::{Harness, Setup, TOKEN};

const CA: &[u8] = include_bytes!("tls/ca.pem");
const CERT_A: &[u8] = include_bytes!("tls/server-a.pem");
const KEY_A: &[u8] = include_bytes!("tls/server-a.key");
const CERT_B: &[u8] = include_bytes!("tls/server-b.pem");
const KEY_B: &[u8] = include_bytes!("tls/server-b.key");

/// Writes the pair the way the kubelet updates a Secret volume: the new files
/// appear at once (a rename), never half-written.
fn install(dir: &Path, cert: &[u8], key: &[u8]) {
    for (name, contents) in [("tls.crt", cert), ("tls.key", key)] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

/// A gateway serving TLS from `tls.crt` and `tls.key` in a fresh directory, which
/// holds `a` at first and is re-read every 100ms.
async fn gateway_with_tls() -> (Harness, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), CERT_A, KEY_A);
    let cert = dir.path().join("tls.crt").display().to_string();
    let key = dir.path().join("tls.key").display().to_string();
    let h = Harness::with(
        Setup::default()
            .flag("tls-cert-file", &cert)
            .flag("tls-key-file", &key)
            .flag("tls-poll-interval", "100ms"),
    )
    .await;
    (h, dir)
}

fn connector() -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(CA).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// One TLS connection that verified the gateway's certificate against the CA: the
/// certificate it was shown, and HTTP/1.1 over it.
struct Connection {
    shown: CertificateDer<'static>,
    send: SendRequest<Full<Bytes>>,
}

async fn connect(h: &Harness) -> Result<Connection, String> {
    let tcp = TcpStream::connect(h.addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").unwrap();
    let tls = connector()
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let shown = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(Connection { shown, send })
}

impl Connection {
    /// Posts one event to shop/orders; the answer's status.
    async fn post(&mut self, body: &'static str) -> u16 {
        let request = hyper::Request::post(Harness::events_path("shop", "orders"))
            .header("host", "localhost")
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        let response = self
            .send
            .send_request(request)
            .await
            .expect("HTTP over TLS");
        let status = response.status().as_u16();
        let _ = response.into_body().collect().await;
        status
    }
}

fn der(pem: &[u8]) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trusts_the_ca_posts_an_event_over_tls() {
    let (h, _dir) = gateway_with_tls().await;
    let mut conn = connect(&h).await.unwrap();
    assert_eq!(conn.shown, der(CERT_A));
    assert_eq!(conn.post("over tls").await, 202);
    let stored = h.stored("fanout_shop_orders").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(&stored[0].payload[..], b"over tls");

    // Plain HTTP on the TLS port gets no answer: the port speaks TLS only.
    let mut plain = TcpStream::connect(h.addr).await.unwrap();
    let request = format!(
        "POST /v1/namespaces/shop/routes/orders/events HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 1\r\n\r\nx"
    );
    tokio::io::AsyncWriteExt::write_all(&mut plain, request.as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut plain, &mut answer),
    )
    .await
    .expect("the gateway to close a plain-text connection");
    assert!(
        !String::from_utf8_lossy(&answer).contains("202"),
        "{answer:?}"
    );
    assert_eq!(h.stored("fanout_shop_orders").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_to_new_connections_while_open_ones_keep_working() {
    let (h, dir) = gateway_with_tls().await;
    let mut old = connect(&h).await.unwrap();
    assert_eq!(old.shown, der(CERT_A));
    assert_eq!(old.post("before").await, 202);

    install(dir.path(), CERT_B, KEY_B);
    fanout_testkit::wait::until(
        "a new handshake to show certificate b",
        Duration::from_secs(10),
        || async {
            let conn = connect(&h).await?;
            if conn.shown == der(CERT_B) {
                Ok(())
            } else {
                Err("still certificate a".to_string())
            }
        },
    )
    .await
    .unwrap();
    let mut new = connect(&h).await.unwrap();
    assert_eq!(new.post("new connection").await, 202);
    // The connection made before the rotation was not dropped.
    assert_eq!(old.post("old connection").await, 202);
    assert_eq!(h.stored("fanout_shop_orders").await.len(), 3);
    assert!(
        h.metrics()
            .await
            .contains(r#"fanout_gateway_tls_reloads_total{result="success"} 1"#)
    );

    // A pair that does not fit together (b's certificate, a's key) is not used:
    // handshakes keep showing b, and the failure is counted.
    install(dir.path(), CERT_B, KEY_A);
    fanout_testkit::wait::until(
        "the failed reload to be counted",
        Duration::from_secs(10),
        || async {
            let metrics = h.metrics().await;
            if metrics.contains(r#"fanout_gateway_tls_reloads_total{result="failure"} 1"#) {
                Ok(())
            } else {
                Err(metrics)
            }
        },
    )
    .await
    .unwrap();
    let mut after = connect(&h).await.unwrap();
    assert_eq!(after.shown, der(CERT_B));
    assert_eq!(after.post("still served").await, 202);
}
