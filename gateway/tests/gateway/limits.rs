//! What a slow or greedy client can hold: headers and bodies must arrive within their
//! timeouts, and connections beyond `--max-connections` are closed at once. Clients
//! here are raw TCP, so that they can be exactly as slow as a slowloris.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Harness, Setup, TOKEN};

/// How long a test waits for the gateway to cut a client off: the timeout under test
/// is 1s, so this is far beyond it, and far below "never".
const CUT_OFF_WITHIN: Duration = Duration::from_secs(8);

/// Sends `bytes` one at a time, `gap` apart, until the gateway closes the
/// connection; returns what it answered and how long the trickle lasted. Fails if
/// all of `bytes` were sent, or if the gateway had not closed within CUT_OFF_WITHIN.
async fn trickle(stream: TcpStream, bytes: &[u8], gap: Duration) -> (String, Duration) {
    let started = Instant::now();
    let (mut read, mut write) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut answer = Vec::new();
        // Until the gateway closes (0) or resets the connection.
        let _ = read.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    });
    let writer = async {
        for byte in bytes {
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(gap).await;
        }
        panic!("the whole request was sent: the gateway never cut the client off");
    };
    let answer = tokio::time::timeout(CUT_OFF_WITHIN, async {
        tokio::select! {
            answer = reader => answer.unwrap(),
            () = writer => unreachable!(),
        }
    })
    .await
    .expect("the gateway still held the connection");
    (answer, started.elapsed())
}

/// Request headers that never end (each line is a valid header), sent at 20 bytes a
/// second: a slowloris keeping its connection and memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_sent_byte_by_byte_are_cut_off_after_the_header_read_timeout() {
    let h = Harness::with(Setup::default().flag("header-read-timeout", "1s")).await;
    let mut headers = format!(
        "POST /v1/namespaces/shop/routes/orders/events HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\n"
    );
    for i in 0..1000 {
        headers.push_str(&format!("X-Slow-{i}: still coming\r\n"));
    }
    let stream = TcpStream::connect(h.addr).await.unwrap();
    let (answer, took) = trickle(stream, headers.as_bytes(), Duration::from_millis(50)).await;
    assert!(took >= Duration::from_millis(900), "cut off after {took:?}");
    // hyper closes without an answer: the request was never read.
    assert!(!answer.contains("202"), "{answer}");
    assert!(h.stored("fanout_shop_orders").await.is_empty());

    // A client that sends nothing at all is closed too.
    let mut idle = TcpStream::connect(h.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(CUT_OFF_WITHIN, idle.read(&mut buf))
        .await
        .expect("an idle connection was kept open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // Clients that send their headers at once are served as ever.
    assert_eq!(h.send_event(&[], "x").await.status, 202);
}

/// The headers arrive, then the body at 10 bytes a second: answered 408 once the
/// body read timeout has passed, the connection closed, nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_slowly_is_answered_408_and_cut_off() {
    let h = Harness::with(Setup::default().flag("body-read-timeout", "1s")).await;
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    let body = vec![b'x'; 1000];
    let head = format!(
        "POST /v1/namespaces/shop/routes/orders/events HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (answer, took) = trickle(stream, &body, Duration::from_millis(100)).await;
    assert!(took >= Duration::from_millis(900), "cut off after {took:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(
        answer.contains("https://fanout.dev/problems/request-timeout"),
        "{answer}"
    );
    assert!(
        answer.to_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(h.stored("fanout_shop_orders").await.is_empty());
    assert!(
        h.metrics().await.contains(
            r#"fanout_gateway_requests_total{route="shop/orders",endpoint="single",outcome="request-timeout"} 1"#
        ),
        "{}",
        h.metrics().await
    );

    // The batch endpoint reads its body the same way.
    let mut stream = TcpStream::connect(h.addr).await.unwrap();
    let head = format!(
        "POST /v1/namespaces/shop/routes/orders/events:batch HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n["
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (answer, _) = trickle(stream, &body, Duration::from_millis(100)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

/// Whether the gateway closes `stream` without answering anything.
async fn closed_at_once(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

/// Idle connections (within the header read timeout) fill the cap; the next one is
/// closed at once; once one of them closes, a client is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_at_once_until_others_close() {
    let h = Harness::with(
        Setup::default()
            .flag("max-connections", "3")
            // Two shards: the cap counts the connections of both.
            .flag("shards", "2")
            .flag("header-read-timeout", "60s"),
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(h.addr).await.unwrap());
    }
    fanout_testkit::wait::until(
        "three connections open",
        Duration::from_secs(10),
        || async {
            let metrics = h.metrics().await;
            if metrics.contains("fanout_gateway_connections_open 3") {
                Ok(())
            } else {
                Err(metrics)
            }
        },
    )
    .await
    .unwrap();

    let mut fourth = TcpStream::connect(h.addr).await.unwrap();
    assert!(
        closed_at_once(&mut fourth).await,
        "a fourth connection was kept"
    );
    // A real client's request on a new connection fails the same way.
    let mut client = TcpStream::connect(h.addr).await.unwrap();
    let request = format!(
        "POST /v1/namespaces/shop/routes/orders/events HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 1\r\n\r\nx"
    );
    let _ = client.write_all(request.as_bytes()).await;
    assert!(
        closed_at_once(&mut client).await,
        "a request beyond the cap was served"
    );
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("fanout_gateway_connections_refused_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fanout_gateway_connections_max 3"),
        "{metrics}"
    );
    // The idle ones are still open.
    for stream in &mut idle {
        let mut buf = [0u8; 1];
        assert!(
            tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf))
                .await
                .is_err(),
            "an idle connection within the cap was closed"
        );
    }

    // One idle client goes away: its slot is free again.
    drop(idle.pop());
    fanout_testkit::wait::until(
        "a new client to be served",
        Duration::from_secs(10),
        || async {
            let mut client = TcpStream::connect(h.addr)
                .await
                .map_err(|e| e.to_string())?;
            let close = request.replace("Content-Length", "Connection: close\r\nContent-Length");
            client
                .write_all(close.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut answer = Vec::new();
            let _ = client.read_to_end(&mut answer).await;
            let answer = String::from_utf8_lossy(&answer).into_owned();
            if answer.starts_with("HTTP/1.1 202") {
                Ok(())
            } else {
                Err(format!("answer {answer:?}"))
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(h.stored("fanout_shop_orders").await.len(), 1);
}

/// The ops port has a cap of its own (64): a flood of connections there cannot use
/// up the file descriptors the events port needs; probes are served again once
/// the flood goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_port_caps_its_connections_too() {
    let h = Harness::with(Setup::default().flag("header-read-timeout", "60s")).await;
    let ops: std::net::SocketAddr = h.ops_base.trim_start_matches("http://").parse().unwrap();
    let mut flood = Vec::new();
    for _ in 0..64 {
        flood.push(TcpStream::connect(ops).await.unwrap());
    }
    let mut extra = TcpStream::connect(ops).await.unwrap();
    assert!(
        closed_at_once(&mut extra).await,
        "a 65th connection was kept"
    );
    drop(flood);
    fanout_testkit::wait::until("probes answered again", Duration::from_secs(10), || async {
        let mut probe = TcpStream::connect(ops).await.map_err(|e| e.to_string())?;
        probe
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        let _ = probe.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        if answer.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(answer)
        }
    })
    .await
    .unwrap();
}
