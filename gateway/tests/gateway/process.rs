//! The `fanout-gateway` process: graceful shutdown on SIGTERM, start-up errors, and
//! no secrets in its logs.

use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use fanout_testkit::process::send_signal;

use crate::support::{Backend, RouteSpec, TOKEN, stored_messages};

const GATEWAY: &str = env!("CARGO_BIN_EXE_fanout-gateway");

/// Starts the gateway with `backend`'s flags and `extra`, expecting it to refuse to
/// start: one still running after a deadline is killed and fails the test.
fn start_refused(backend: &Backend, extra: &[&std::ffi::OsStr]) -> std::process::Output {
    let port = fanout_testkit::free_port();
    let ops = fanout_testkit::free_port();
    let mut child = Command::new(GATEWAY)
        .args(backend.gateway_flags(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{ops}")))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let limit = Duration::from_secs(20);
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "the gateway was still running after {limit:?}; it should have refused to start"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Reads from `stream` until `needle` has arrived (or fails after a deadline).
async fn read_until(stream: &mut TcpStream, seen: &mut Vec<u8>, needle: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(seen).contains(needle) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "waiting for {needle:?}; got {:?}",
                    String::from_utf8_lossy(seen)
                )
            })
            .unwrap();
        assert!(
            n > 0,
            "connection closed; got {:?}",
            String::from_utf8_lossy(seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_finishes_the_request_in_progress_and_exits_0() {
    let backend = Backend::start(&[RouteSpec::new("shop", "orders").token(TOKEN)]).await;
    let port = fanout_testkit::free_port();
    let addr = format!("127.0.0.1:{port}");
    let ops = format!("127.0.0.1:{}", fanout_testkit::free_port());
    let mut child = Command::new(GATEWAY)
        .args(backend.gateway_flags(&addr, &ops))
        // Two shards drain, one with a request in progress.
        .args(["--shards", "2"])
        .env("FANOUT_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = crate::support::http_client();
    fanout_testkit::wait::until("gateway process ready", Duration::from_secs(20), || async {
        let uri: hyper::Uri = format!("http://{ops}/readyz").parse().unwrap();
        match client.get(uri).await {
            Ok(r) if r.status() == 200 => Ok(()),
            Ok(r) => Err(format!("readyz {}", r.status())),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .unwrap();

    let mut conn = TcpStream::connect(&addr).await.unwrap();
    // A wrong token first: it must not show up in the logs either.
    let wrong = "POST /v1/namespaces/shop/routes/orders/events HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer wrong-secret-value\r\nContent-Length: 1\r\n\r\nx";
    conn.write_all(wrong.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    read_until(&mut conn, &mut seen, "HTTP/1.1 403").await;

    // Start a request and stop half-way through its body. `Expect: 100-continue`
    // tells us when the handler has started reading it.
    let head = format!(
        "POST /v1/namespaces/shop/routes/orders/events HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nIdempotency-Key: in-progress\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    seen.clear();
    read_until(&mut conn, &mut seen, "100 Continue").await;
    conn.write_all(b"hello").await.unwrap();

    send_signal(child.id(), "TERM");
    fanout_testkit::wait::until("the listener to close", Duration::from_secs(10), || async {
        match TcpStream::connect(&addr).await {
            Ok(_) => Err("still accepting connections".to_string()),
            Err(_) => Ok(()),
        }
    })
    .await
    .unwrap();

    conn.write_all(b"world").await.unwrap();
    seen.clear();
    read_until(&mut conn, &mut seen, "\"duplicate\"").await;
    let answer = String::from_utf8_lossy(&seen).to_string();
    assert!(answer.contains("HTTP/1.1 202"), "{answer}");
    assert!(answer.contains("\"id\":\"in-progress\""), "{answer}");

    let status = tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        let mut logs = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut logs).unwrap();
        (status, logs)
    });
    let (status, logs) = tokio::time::timeout(Duration::from_secs(20), status)
        .await
        .expect("the gateway to exit")
        .unwrap();
    assert!(status.success(), "exit status {status}; logs:\n{logs}");
    assert!(logs.contains("shutdown signal received"), "{logs}");
    assert!(
        !logs.contains(TOKEN),
        "the token leaked into the logs:\n{logs}"
    );
    assert!(
        !logs.contains("wrong-secret-value"),
        "a presented token leaked into the logs:\n{logs}"
    );

    let stored = stored_messages(&backend.js, "fanout_shop_orders").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(&stored[0].payload[..], b"helloworld");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_token_file_stops_start_up_naming_the_route_and_the_file() {
    let backend = Backend::start(&[RouteSpec::new("shop", "orders").token(TOKEN)]).await;
    let token_file = backend.dir.path().join("shop-orders-token-0");
    std::fs::remove_file(&token_file).unwrap();
    let output = start_refused(&backend, &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("shop/orders"), "{stderr}");
    assert!(
        stderr.contains(&token_file.display().to_string()),
        "{stderr}"
    );
}

/// A header the gateway would never forward, set on the command line, is a mistake
/// to report rather than a setting to ignore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_header_the_gateway_or_jetstream_owns_stops_start_up_naming_it() {
    let backend = Backend::start(&[RouteSpec::new("shop", "orders").token(TOKEN)]).await;
    let output = start_refused(
        &backend,
        &[
            "--forward-headers".as_ref(),
            "X-Event-Type,Nats-Msg-Id".as_ref(),
        ],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--forward-headers")
            && stderr.contains(r#""Nats-Msg-Id" is set by the gateway or acted on by JetStream"#),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_nats_token_file_stops_start_up_naming_the_file() {
    let backend = Backend::start(&[RouteSpec::new("shop", "orders").token(TOKEN)]).await;
    let missing = backend.dir.path().join("no-such-nats-token");
    let output = start_refused(
        &backend,
        &["--nats-token-file".as_ref(), missing.as_os_str()],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "reading the NATS token file {}",
            missing.display()
        )),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_key_that_does_not_fit_the_certificate_stops_start_up_naming_both_files() {
    let backend = Backend::start(&[RouteSpec::new("shop", "orders").token(TOKEN)]).await;
    let cert = backend.dir.path().join("tls.crt");
    let key = backend.dir.path().join("tls.key");
    std::fs::write(&cert, include_bytes!("tls/server-a.pem")).unwrap();
    std::fs::write(&key, include_bytes!("tls/server-b.key")).unwrap();
    let output = start_refused(
        &backend,
        &[
            "--tls-cert-file".as_ref(),
            cert.as_os_str(),
            "--tls-key-file".as_ref(),
            key.as_os_str(),
        ],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "the key in {} cannot serve the certificate in {}",
            key.display(),
            cert.display()
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains("PRIVATE KEY"),
        "the key leaked into the output:\n{stderr}"
    );
}

/// During a rollout the kubelet sends SIGTERM while the Service may still send the pod
/// requests: with `--shutdown-delay`, the gateway reports not ready at once but goes
/// on storing events until the delay ends, so producers see no refused connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_shutdown_delay_reports_not_ready_but_stores_events_until_it_ends() {
    let backend = Backend::start(&[RouteSpec::new("shop", "orders").token(TOKEN)]).await;
    let addr = format!("127.0.0.1:{}", fanout_testkit::free_port());
    let ops = format!("127.0.0.1:{}", fanout_testkit::free_port());
    let mut child = Command::new(GATEWAY)
        .args(backend.gateway_flags(&addr, &ops))
        .args(["--shutdown-delay", "3s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = |want: u16| {
        let ops = ops.clone();
        async move {
            fanout_testkit::wait::until(
                &format!("readyz {want}"),
                Duration::from_secs(20),
                || async {
                    match fanout_testkit::http::get(&ops, "/readyz").await {
                        Ok(r) if r.status == want => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                },
            )
            .await
            .unwrap();
        }
    };
    ready(200).await;
    send_signal(child.id(), "TERM");
    ready(503).await;
    // Not ready, and still storing: a new connection gets its 202.
    let auth = format!("Bearer {TOKEN}");
    let r = fanout_testkit::http::post(
        &addr,
        "/v1/namespaces/shop/routes/orders/events",
        &[
            ("Authorization", &auth),
            ("Idempotency-Key", "during-delay"),
        ],
        b"{}",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(
        stored_messages(&backend.js, "fanout_shop_orders")
            .await
            .len(),
        1
    );
    let exited = tokio::task::spawn_blocking(move || child.wait().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(20), exited)
        .await
        .expect("the gateway to exit after the delay")
        .unwrap();
    assert!(status.success(), "exit status {status}");
}
