//! Every error status, as RFC 9457 problem details, and never a 202 for an event that
//! was not stored.

use std::time::Duration;

use crate::support::{Harness, RouteSpec, Setup, TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_route_is_404() {
    let h = Harness::start().await;
    let reply = h
        .post(&Harness::events_path("shop", "nope"), &[], "x")
        .await;
    let problem = reply.problem(404);
    assert_eq!(
        problem["type"],
        "https://fanout.dev/problems/route-not-found"
    );
    assert!(problem["detail"].as_str().unwrap().contains("shop/nope"));
    let reply = h.get("/no/such/endpoint").await;
    reply.problem(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_malformed_token_is_401_and_wrong_token_403() {
    let h = Harness::start().await;
    let path = Harness::events_path("shop", "orders");

    let reply = h.post(&path, &[], "x").await;
    reply.problem(401);
    assert!(
        reply
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );

    let reply = h
        .post(&path, &[("authorization", "Basic c2hvcDpvcmRlcnM=")], "x")
        .await;
    reply.problem(401);

    let reply = h
        .post(&path, &[("authorization", "Bearer not-the-token")], "x")
        .await;
    reply.problem(403);

    let batch = Harness::batch_path("shop", "orders");
    let reply = h
        .post(
            &batch,
            &[
                ("authorization", "Bearer nope"),
                ("content-type", "application/json"),
            ],
            "[1]",
        )
        .await;
    reply.problem(403);

    assert!(h.stored("fanout_shop_orders").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_without_tokens_refuses_everyone_unless_anonymous_is_allowed() {
    let h = Harness::with(Setup::only(vec![
        RouteSpec::new("shop", "locked"),
        RouteSpec::new("shop", "open").anonymous(),
    ]))
    .await;
    let reply = h
        .post(
            &Harness::events_path("shop", "locked"),
            &[("authorization", &format!("Bearer {TOKEN}"))],
            "x",
        )
        .await;
    let problem = reply.problem(403);
    assert!(
        problem["detail"].as_str().unwrap().contains("no token"),
        "{problem}"
    );
    let reply = h
        .post(&Harness::events_path("shop", "open"), &[], "x")
        .await;
    assert_eq!(reply.status, 202);
    assert_eq!(h.stored("fanout_shop_open").await.len(), 1);
}

/// A route applied before its token Secret: the operator lists it with the tokens it
/// has and `tokensPending`. A producer with the coming token is told to retry, not
/// that its credential is refused; once the token is there, the same request is
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_still_on_its_way_is_503_with_retry_after_until_it_is_loaded() {
    let h = Harness::with(Setup::only(vec![
        RouteSpec::new("shop", "orders").tokens_pending(),
    ]))
    .await;
    let path = Harness::events_path("shop", "orders");
    let bearer = format!("Bearer {TOKEN}");

    let reply = h.post(&path, &[("authorization", &bearer)], "x").await;
    let problem = reply.problem(503);
    assert_eq!(
        problem["type"],
        "https://fanout.dev/problems/route-not-ready"
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("not loaded yet"),
        "{problem}"
    );
    assert_eq!(reply.headers["retry-after"], "5");
    // Without a credential there is nothing to wait for: still 401.
    h.post(&path, &[], "x").await.problem(401);
    assert!(h.stored("fanout_shop_orders").await.is_empty());

    h.reconfigure(&[RouteSpec::new("shop", "orders").token(TOKEN)]);
    fanout_testkit::wait::until(
        "the token to be loaded",
        Duration::from_secs(10),
        || async {
            match h
                .post(&path, &[("authorization", &bearer)], "x")
                .await
                .status
            {
                202 => Ok(()),
                other => Err(format!("status {other}")),
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(h.stored("fanout_shop_orders").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_limit_is_413() {
    let h = Harness::with(Setup::default().flag("body-limit", "1024")).await;
    let reply = h.send_event(&[], vec![b'x'; 1025]).await;
    reply.problem(413);
    let reply = h.send_event(&[], vec![b'x'; 1024]).await;
    assert_eq!(reply.status, 202);
    let reply = h
        .send_batch(
            "application/json",
            &[],
            format!("[\"{}\"]", "y".repeat(2000)),
        )
        .await;
    reply.problem(413);
    assert_eq!(h.stored("fanout_shop_orders").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_what_nats_accepts_is_413_and_not_sent() {
    // A body limit above nats-server's max_payload (1 MiB by default): the gateway's
    // client refuses the message before it is sent, and the connection stays up.
    let h = Harness::with(Setup::default().flag("body-limit", "2000000")).await;
    let reply = h.send_event(&[], vec![b'x'; 1_048_576]).await;
    let problem = reply.problem(413);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("larger than NATS"),
        "{problem}"
    );
    let reply = h.send_event(&[], vec![b'x'; 1_000_000]).await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    assert_eq!(h.stored("fanout_shop_orders").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_with_a_non_json_media_type_is_415() {
    let h = Harness::start().await;
    let reply = h.send_batch("text/plain", &[], "a\nb").await;
    let problem = reply.problem(415);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("application/x-ndjson")
    );
    let reply = h
        .post(
            &Harness::batch_path("shop", "orders"),
            &[("authorization", &format!("Bearer {TOKEN}"))],
            "[1]",
        )
        .await;
    reply.problem(415);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_that_is_not_an_array_is_400() {
    let h = Harness::start().await;
    h.send_batch("application/json", &[], r#"{"a":1}"#)
        .await
        .problem(400);
    h.send_batch("application/json", &[], "[")
        .await
        .problem(400);
    h.send_batch("application/json", &[], "[]")
        .await
        .problem(400);
    h.send_batch("application/x-ndjson", &[], "\n\n")
        .await
        .problem(400);
    assert!(h.stored("fanout_shop_orders").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_stream_is_507() {
    let h = Harness::with(Setup::only(vec![
        RouteSpec::new("shop", "orders")
            .token(TOKEN)
            .holding_at_most(2),
    ]))
    .await;
    for _ in 0..2 {
        assert_eq!(h.send_event(&[], "x").await.status, 202);
    }
    let reply = h.send_event(&[], "x").await;
    let problem = reply.problem(507);
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("fanout_shop_orders") && detail.contains("maximum messages"),
        "{detail}"
    );

    // In a batch, the full stream is reported per item.
    let reply = h.send_batch("application/json", &[], "[1,2]").await;
    assert_eq!(reply.status, 207);
    let body = reply.json();
    assert_eq!(body["failed"], 2);
    assert_eq!(body["results"][1]["status"], 507);
    assert_eq!(body["results"][1]["error"]["index"], 1);
    assert_eq!(h.stored("fanout_shop_orders").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_whose_stream_is_gone_is_503_with_a_later_retry() {
    let h = Harness::start().await;
    h.js.delete_stream("fanout_shop_orders").await.unwrap();
    let reply = h.send_event(&[], "x").await;
    let problem = reply.problem(503);
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("no JetStream stream stores subject fanout.in.shop.orders.event"),
        "{detail}"
    );
    assert_eq!(reply.header("retry-after"), Some("5"));
    // The same for each item of a batch.
    let reply = h.send_batch("application/json", &[], "[1]").await;
    assert_eq!(reply.json()["results"][0]["status"], 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_is_503_with_retry_after_until_it_is_back() {
    let mut h = Harness::start().await;
    h.nats.kill();
    fanout_testkit::wait::until(
        "readyz to report NATS down",
        Duration::from_secs(10),
        || async {
            match h.ops("/readyz").await.status {
                503 => Ok(()),
                other => Err(format!("readyz {other}")),
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(h.ops("/healthz").await.status, 200);

    let reply = h.send_event(&[], "x").await;
    reply.problem(503);
    let retry_after: u32 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!(retry_after >= 1);

    let reply = h.send_batch("application/json", &[], "[1]").await;
    reply.problem(503);
    assert!(reply.header("retry-after").is_some());

    h.nats.restart().unwrap();
    h.wait_ready().await;
    let reply = h.send_event(&[], "x").await;
    assert_eq!(reply.status, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_in_flight_limit_is_503_busy_instead_of_queueing() {
    let h = Harness::with(
        Setup::default()
            .flag("max-in-flight", "1")
            // The bound is the whole gateway's: the second request, on another
            // connection and so on the other shard, finds no slot either.
            .flag("shards", "2")
            .flag("in-flight-wait", "50ms")
            .flag("publish-timeout", "30s"),
    )
    .await;
    // A frozen nats-server keeps the TCP connection open but acknowledges nothing:
    // the first publish holds the only in-flight slot.
    let frozen = crate::support::Frozen::stop(&h.nats);
    let first = {
        let h = &h;
        async move { h.send_event(&[("idempotency-key", "held")], "x").await }
    };
    let second = async {
        // The first request is in flight once the in-flight gauge says so.
        fanout_testkit::wait::until("one publish in flight", Duration::from_secs(10), || async {
            let metrics = String::from_utf8(h.ops("/metrics").await.body.to_vec()).unwrap();
            if metrics.contains("fanout_gateway_publishes_in_flight 1") {
                Ok(())
            } else {
                Err("no publish in flight yet".to_string())
            }
        })
        .await
        .unwrap();
        let reply = h.send_event(&[], "y").await;
        drop(frozen);
        reply
    };
    let (first, second) = tokio::join!(first, second);
    let problem = second.problem(503);
    assert_eq!(problem["type"], "https://fanout.dev/problems/busy");
    assert_eq!(second.header("retry-after"), Some("1"));
    assert_eq!(first.status, 202, "{:?}", first.body);
    let stored = h.stored("fanout_shop_orders").await;
    assert_eq!(stored.len(), 1);
}

/// A nats-server that keeps the connection but stops answering: the event gets 503
/// once `--publish-timeout` has passed (not sooner), saying it may be stored, and
/// the client's retry with the same Idempotency-Key, once NATS answers again, stores
/// it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_not_acknowledged_in_time_is_503_and_its_retry_stores_it_once() {
    let h = Harness::with(
        Setup::default()
            .flag("publish-timeout", "1s")
            // The connection is not given up on for unanswered PINGs meanwhile.
            .flag("nats-ping-interval", "60s"),
    )
    .await;
    let key = [("idempotency-key", "order-7")];
    let frozen = crate::support::Frozen::stop(&h.nats);
    let asked = std::time::Instant::now();
    let reply = tokio::time::timeout(
        Duration::from_secs(30),
        h.send_event(&key, r#"{"order":7}"#),
    )
    .await
    .expect("no answer within 30 s: the publish timeout never fired");
    let waited = asked.elapsed();
    drop(frozen);
    let problem = reply.problem(503);
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("did not acknowledge the event within 1s")
            && detail.contains("same Idempotency-Key"),
        "{detail}"
    );
    assert!(reply.header("retry-after").is_some());
    assert!(
        waited >= Duration::from_secs(1),
        "answered after {waited:?}, before the publish timeout"
    );

    // The frozen server may have stored it on waking up; either way, once.
    let reply = h.send_event(&key, r#"{"order":7}"#).await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    assert_eq!(reply.json()["id"], "order-7");
    let stored = h.stored("fanout_shop_orders").await;
    assert_eq!(stored.len(), 1, "stored once");
}
