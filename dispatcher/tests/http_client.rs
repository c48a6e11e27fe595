//! The delivery HTTP client against real loopback servers: connection reuse,
//! redirects, the timeout, broken connections, body limits, HTTPS with HTTP/2 when
//! the server offers it, and the egress policy's check of each new connection.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fanout_config::egress::{EgressPolicy, Settings};
use fanout_config::error_chain;
use fanout_dispatcher::http::{ClientSettings, HttpClient, SendError, connect};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type Handler = Arc<dyn Fn(Request<Bytes>) -> Response<Full<Bytes>> + Send + Sync>;

/// A loopback server that counts the connections it accepted.
struct Server {
    url: String,
    connections: Arc<AtomicUsize>,
}

impl Server {
    /// Plain HTTP/1.1.
    async fn http(handler: Handler) -> Server {
        Server::start(handler, None).await
    }

    /// HTTPS with a certificate from the test CA, offering `alpn`.
    async fn https(handler: Handler, alpn: &[&[u8]]) -> Server {
        let certs = vec![CertificateDer::from_pem_slice(include_bytes!("tls/target.pem")).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(include_bytes!("tls/target.key")).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Server::start(
            handler,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
        .await
    }

    async fn start(handler: Handler, tls: Option<tokio_rustls::TlsAcceptor>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // The certificate is for localhost and 127.0.0.1.
        let (scheme, host) = match tls {
            Some(_) => ("https", "localhost"),
            None => ("http", "127.0.0.1"),
        };
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let handler = handler.clone();
                        async move {
                            let (head, body) = request.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            Ok::<_, Infallible>(handler(Request::from_parts(head, body)))
                        }
                    });
                    match tls {
                        None => {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(tcp), service)
                                .await;
                        }
                        Some(tls) => {
                            let stream = tls.accept(tcp).await.unwrap();
                            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                                let _ =
                                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                        .serve_connection(TokioIo::new(stream), service)
                                        .await;
                            } else {
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        Server {
            url: format!("{scheme}://{host}:{port}/hook"),
            connections,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn answer(status: u16, body: &'static str) -> Handler {
    Arc::new(move |_| {
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    })
}

fn client(url: &str, timeout: Duration) -> HttpClient {
    let settings = ClientSettings {
        timeout,
        max_idle: 16,
        egress: loopback_allowed(),
    };
    HttpClient::new(url, &settings, &mut Some(test_tls())).unwrap()
}

/// The servers here are on loopback, which `fanout standalone` allows by default.
fn loopback_allowed() -> Arc<EgressPolicy> {
    Arc::new(EgressPolicy::new(Settings::default()))
}

/// Trusts only the test CA, offers what the engine offers.
fn test_tls() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(include_bytes!("tls/ca.pem")).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = connect::alpn();
    Arc::new(config)
}

fn post(body: &'static str) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(Bytes::from_static(body.as_bytes())));
    *request.method_mut() = http::Method::POST;
    request
}

const LIMIT: usize = 1024;

#[tokio::test]
async fn sequential_requests_share_one_kept_alive_connection() {
    let server = Server::http(Arc::new(|request| {
        assert_eq!(request.uri(), "/hook");
        assert_eq!(request.version(), Version::HTTP_11);
        let host = request.headers()["host"].to_str().unwrap().to_string();
        Response::new(Full::new(Bytes::from(host)))
    }))
    .await;
    let client = client(&server.url, Duration::from_secs(5));
    for _ in 0..5 {
        let response = client.send(post("{}"), |_| LIMIT).await.unwrap();
        assert_eq!(response.status, StatusCode::OK);
        let host = String::from_utf8(response.body.unwrap()).unwrap();
        assert!(server.url.contains(&host), "Host {host}");
    }
    assert_eq!(server.connections(), 1);
    assert_eq!(client.idle_connections(), 1);
}

#[tokio::test]
async fn a_redirect_is_the_answer_and_is_not_followed() {
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    let server = Server::http(Arc::new(move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
        Response::builder()
            .status(302)
            .header("location", "/elsewhere")
            .body(Full::default())
            .unwrap()
    }))
    .await;
    let response = client(&server.url, Duration::from_secs(5))
        .send(post("{}"), |_| LIMIT)
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::FOUND);
    assert_eq!(response.headers["location"], "/elsewhere");
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_error_body_is_read_only_up_to_the_limit() {
    let long: &'static str = "x".repeat(10_000).leak();
    let server = Server::http(answer(500, long)).await;
    let client = client(&server.url, Duration::from_secs(5));
    let response = client.send(post("{}"), |_| 100).await.unwrap();
    assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.body.unwrap().len(), 100);
    // The rest was not read, so that connection is not reused.
    assert_eq!(client.idle_connections(), 0);
}

#[tokio::test]
async fn the_timeout_covers_a_slow_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    // Accepts and reads, never answers.
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = [0; 4096];
        while tcp.read(&mut buf).await.unwrap_or(0) > 0 {}
    });
    let started = Instant::now();
    let error = client(&url, Duration::from_millis(300))
        .send(post("{}"), |_| LIMIT)
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_connection_reset_is_a_connection_error_not_a_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    // Reads the request, then closes without answering.
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = [0; 4096];
            let _ = tcp.read(&mut buf).await;
            drop(tcp);
        }
    });
    let error = client(&url, Duration::from_secs(5))
        .send(post("{}"), |_| LIMIT)
        .await
        .unwrap_err();
    assert!(!error.is_timeout(), "{error:?}");
    assert!(matches!(error, SendError::Request(_)), "{error:?}");
}

#[tokio::test]
async fn a_refused_connection_is_a_connection_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    drop(listener);
    let error = client(&url, Duration::from_secs(5))
        .send(post("{}"), |_| LIMIT)
        .await
        .unwrap_err();
    assert!(matches!(error, SendError::Connect(_)), "{error:?}");
    let text = error_chain(&error);
    assert!(text.contains("connecting to 127.0.0.1:"), "{text}");
}

#[tokio::test]
async fn a_kept_alive_connection_the_server_closed_is_replaced_without_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    // Answers one request per connection with keep-alive, then closes it quietly,
    // as servers do when their keep-alive timeout is shorter than ours, and says
    // when it has.
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut buf = [0; 4096];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
                let _ = tcp.shutdown().await;
                drop(tcp);
                let _ = closed_tx.send(());
            });
        }
    });
    let client = client(&url, Duration::from_secs(5));
    for _ in 0..3 {
        let response = client.send(post("{}"), |_| LIMIT).await.unwrap();
        assert_eq!(response.status, StatusCode::OK);
        // The next request goes out on a pooled connection the server has closed.
        closed.recv().await.unwrap();
    }
    assert_eq!(connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn https_uses_http2_when_the_server_offers_it_and_shares_one_connection() {
    let server = Server::https(
        Arc::new(|request| {
            assert_eq!(request.version(), Version::HTTP_2);
            assert_eq!(request.uri().path(), "/hook");
            Response::new(Full::new(Bytes::from_static(b"ok")))
        }),
        &[b"h2", b"http/1.1"],
    )
    .await;
    let client = Arc::new(client(&server.url, Duration::from_secs(5)));
    let first = client.send(post("{}"), |_| LIMIT).await.unwrap();
    assert_eq!(first.status, StatusCode::OK);
    let concurrent: Vec<_> = (0..20)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.send(post("{}"), |_| LIMIT).await.unwrap().status })
        })
        .collect();
    for request in concurrent {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn https_uses_http1_when_the_server_offers_only_that() {
    let server = Server::https(
        Arc::new(|request| {
            assert_eq!(request.version(), Version::HTTP_11);
            Response::new(Full::default())
        }),
        &[b"http/1.1"],
    )
    .await;
    let client = client(&server.url, Duration::from_secs(5));
    for _ in 0..3 {
        assert_eq!(
            client.send(post("{}"), |_| LIMIT).await.unwrap().status,
            StatusCode::OK
        );
    }
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn an_untrusted_certificate_fails_the_connection() {
    let server = Server::https(answer(200, ""), &[b"http/1.1"]).await;
    let settings = ClientSettings {
        timeout: Duration::from_secs(5),
        max_idle: 4,
        egress: loopback_allowed(),
    };
    // The platform's trust store does not know the test CA.
    let client = HttpClient::new(&server.url, &settings, &mut None).unwrap();
    let error = client.send(post("{}"), |_| LIMIT).await.unwrap_err();
    assert!(matches!(error, SendError::Connect(_)), "{error:?}");
    assert!(
        error_chain(&error).contains("TLS"),
        "{}",
        error_chain(&error)
    );
}

/// A client for `url` with the policy `deny_loopback` and the entries make.
fn client_with_policy(url: &str, deny_loopback: bool, deny: &[&str], allow: &[&str]) -> HttpClient {
    let entries = |list: &[&str]| list.iter().map(|e| e.parse().unwrap()).collect();
    let settings = ClientSettings {
        timeout: Duration::from_secs(5),
        max_idle: 4,
        egress: Arc::new(EgressPolicy::new(Settings {
            deny_loopback,
            apiserver: Vec::new(),
            deny: entries(deny),
            allow: entries(allow),
        })),
    };
    HttpClient::new(url, &settings, &mut None).unwrap()
}

#[tokio::test]
async fn a_refused_address_gets_no_connection_and_the_error_says_why() {
    let server = Server::http(answer(200, "")).await;
    let client = client_with_policy(&server.url, true, &[], &[]);
    assert!(client.refused_without_lookup().is_some(), "known at start");
    let error = client.send(post("{}"), |_| LIMIT).await.unwrap_err();
    let refusal = error.egress_refusal().expect("an egress refusal");
    assert_eq!(
        refusal.to_string(),
        "127.0.0.1 is loopback (127.0.0.0/8); refused by default: to allow it, add 127.0.0.0/8 \
         to the egress allow list (flag --egress-allow, chart value dispatcher.egress.allow)"
    );
    assert!(
        error_chain(&error)
            .starts_with("connection refused by egress policy: 127.0.0.1 is loopback"),
        "{}",
        error_chain(&error)
    );
    assert_eq!(server.connections(), 0, "refused before connecting");

    // Allowed by an entry, the same URL connects.
    let allowed = client_with_policy(&server.url, true, &[], &["127.0.0.1"]);
    assert!(allowed.refused_without_lookup().is_none());
    let response = allowed.send(post("{}"), |_| LIMIT).await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn a_name_is_checked_by_the_addresses_it_resolves_to() {
    let server = Server::http(answer(200, "")).await;
    // The same server by a name: nothing in the URL says loopback; its DNS answer does.
    let url = server.url.replace("127.0.0.1", "localhost");
    let client = client_with_policy(&url, true, &[], &[]);
    assert!(
        client.refused_without_lookup().is_none(),
        "a name needs a lookup"
    );
    let error = client.send(post("{}"), |_| LIMIT).await.unwrap_err();
    let text = error_chain(&error);
    assert!(
        text.starts_with(
            "connection refused by egress policy: localhost resolves only to refused addresses: 127.0.0.1 is loopback (127.0.0.0/8)"
        ),
        "{text}"
    );
    assert_eq!(server.connections(), 0);

    // An allowed address among its answers is the one connected to.
    let by_address = client_with_policy(&url, true, &[], &["127.0.0.1"]);
    assert_eq!(
        by_address.send(post("{}"), |_| LIMIT).await.unwrap().status,
        StatusCode::OK
    );
    // An allowed name is connected to whatever it resolves to.
    let by_name = client_with_policy(&url, true, &[], &["localhost"]);
    assert_eq!(
        by_name.send(post("{}"), |_| LIMIT).await.unwrap().status,
        StatusCode::OK
    );
    assert_eq!(server.connections(), 2);

    // A denied name is refused before it is looked up, even where loopback is fine.
    let denied = client_with_policy(&url, false, &["LOCALHOST"], &[]);
    assert!(denied.refused_without_lookup().is_some());
    let error = denied.send(post("{}"), |_| LIMIT).await.unwrap_err();
    assert_eq!(
        error_chain(&error),
        "connection refused by egress policy: host localhost is on the egress deny list"
    );
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn a_connection_the_policy_allowed_is_pooled_and_reused() {
    let server = Server::http(answer(200, "")).await;
    let url = server.url.replace("127.0.0.1", "localhost");
    let client = client_with_policy(&url, true, &[], &["127.0.0.1"]);
    for _ in 0..5 {
        let response = client.send(post("{}"), |_| LIMIT).await.unwrap();
        assert_eq!(response.status, StatusCode::OK);
    }
    // One connection, so one lookup and one check; the pooled connection carried the
    // rest.
    assert_eq!(server.connections(), 1);
    assert_eq!(client.idle_connections(), 1);
}
