//! Single events: 202 only once stored, with the id, headers and subject they carry.

use crate::support::{Harness, RouteSpec, Setup, TOKEN, stored_header};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_event_is_in_the_stream_with_its_headers() {
    let h = Harness::start().await;
    let reply = h
        .send_event(
            &[
                ("content-type", "application/json"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                ("x-event-type", "order.placed"),
                ("x-not-forwarded", "nope"),
            ],
            r#"{"order":42}"#,
        )
        .await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.json();
    assert_eq!(body["stream"], "fanout_shop_orders");
    assert_eq!(body["sequence"], 1);
    assert_eq!(body["duplicate"], false);
    let id = body["id"].as_str().unwrap().to_string();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);

    let stored = h.stored("fanout_shop_orders").await;
    assert_eq!(stored.len(), 1);
    let message = &stored[0];
    assert_eq!(message.subject.as_str(), "fanout.in.shop.orders.event");
    assert_eq!(&message.payload[..], br#"{"order":42}"#);
    assert_eq!(stored_header(message, "Fanout-Event-Id"), Some(id.as_str()));
    // A made-up id is never repeated by a retry: no duplicate-table entry for it.
    assert_eq!(stored_header(message, "Nats-Msg-Id"), None);
    assert_eq!(
        stored_header(message, "Content-Type"),
        Some("application/json")
    );
    assert_eq!(
        stored_header(message, "traceparent"),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(stored_header(message, "X-Event-Type"), Some("order.placed"));
    assert_eq!(stored_header(message, "x-not-forwarded"), None);
    assert_eq!(stored_header(message, "authorization"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_idempotency_key_is_stored_once() {
    let h = Harness::start().await;
    let first = h.send_event(&[("idempotency-key", "order-42")], "a").await;
    let second = h.send_event(&[("idempotency-key", "order-42")], "a").await;
    assert_eq!(first.status, 202);
    assert_eq!(second.status, 202);
    let (first, second) = (first.json(), second.json());
    assert_eq!(first["id"], "order-42");
    assert_eq!(first["duplicate"], false);
    assert_eq!(second["id"], "order-42");
    assert_eq!(second["duplicate"], true);
    assert_eq!(second["sequence"], first["sequence"]);
    assert_eq!(h.stored("fanout_shop_orders").await.len(), 1);

    // Any printable key comes back as it was sent, quotes and backslashes included.
    let key = r#"order "43" \ {"#;
    let reply = h.send_event(&[("idempotency-key", key)], "b").await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    assert_eq!(reply.json()["id"], key);
    assert_eq!(reply.json()["sequence"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_cloudevent_gives_the_id_and_the_subject() {
    let h = Harness::start().await;
    let event = r#"{"specversion":"1.0","id":"ce-123","source":"/shop","type":"order.placed","data":{"n":1}}"#;
    let reply = h
        .send_event(&[("content-type", "application/cloudevents+json")], event)
        .await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    assert_eq!(reply.json()["id"], "ce-123");
    let stored = h.stored("fanout_shop_orders").await;
    assert_eq!(
        stored[0].subject.as_str(),
        "fanout.in.shop.orders.order.placed"
    );
    assert_eq!(&stored[0].payload[..], event.as_bytes());
    assert_eq!(
        stored_header(&stored[0], "Content-Type"),
        Some("application/cloudevents+json")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_cloudevent_gives_the_id_from_ce_headers() {
    let h = Harness::start().await;
    let reply = h
        .send_event(
            &[
                ("content-type", "text/plain"),
                ("ce-specversion", "1.0"),
                ("ce-id", "bin-7"),
                ("ce-source", "/users"),
                ("ce-type", "user/created v2"),
            ],
            "hello",
        )
        .await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    assert_eq!(reply.json()["id"], "bin-7");
    let stored = h.stored("fanout_shop_orders").await;
    assert_eq!(
        stored[0].subject.as_str(),
        "fanout.in.shop.orders.user_created_v2"
    );
    assert_eq!(stored_header(&stored[0], "ce-id"), Some("bin-7"));
    assert_eq!(
        stored_header(&stored[0], "ce-type"),
        Some("user/created v2")
    );
    assert_eq!(stored_header(&stored[0], "Fanout-Event-Id"), Some("bin-7"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_wins_over_the_cloudevent_id() {
    let h = Harness::start().await;
    let event = r#"{"specversion":"1.0","id":"ce-1","source":"/s","type":"t"}"#;
    let reply = h
        .send_event(
            &[
                ("content-type", "application/cloudevents+json"),
                ("idempotency-key", "client-key"),
            ],
            event,
        )
        .await;
    assert_eq!(reply.json()["id"], "client-key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_cloudevents_and_ids_are_400_and_not_stored() {
    let h = Harness::start().await;
    let missing_type = r#"{"specversion":"1.0","id":"x","source":"/s"}"#;
    let reply = h
        .send_event(
            &[("content-type", "application/cloudevents+json")],
            missing_type,
        )
        .await;
    let problem = reply.problem(400);
    assert!(
        problem["detail"].as_str().unwrap().contains("type"),
        "{problem}"
    );

    let reply = h
        .send_event(&[("ce-specversion", "1.0"), ("ce-id", "x")], "")
        .await;
    assert!(
        reply.problem(400)["detail"]
            .as_str()
            .unwrap()
            .contains("ce-source")
    );

    let long_key = "k".repeat(300);
    let reply = h.send_event(&[("idempotency-key", &long_key)], "").await;
    assert!(
        reply.problem(400)["detail"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key")
    );

    assert!(h.stored("fanout_shop_orders").await.is_empty());
}

/// A producer cannot steer JetStream or forge the event's id through a forwarded
/// header: names the gateway sets or JetStream acts on (`Nats-*`, `Fanout-*`) are
/// never taken from a request, even when a route's targets filter on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_the_gateway_or_jetstream_own_are_never_forwarded() {
    let route = RouteSpec::new("shop", "orders").token(TOKEN).forwarding(&[
        "X-Account-Kind",
        "Nats-Expected-Last-Sequence",
        "Nats-Msg-Id",
        "Fanout-Event-Id",
    ]);
    let h = Harness::with(Setup::only(vec![route])).await;
    let reply = h
        .send_event(
            &[
                ("x-account-kind", "customer"),
                // Forwarded, JetStream would refuse the event (the stream is empty).
                ("nats-expected-last-sequence", "999"),
                ("nats-msg-id", "forged-dedupe-id"),
                ("fanout-event-id", "forged-id"),
            ],
            r#"{"order":43}"#,
        )
        .await;
    assert_eq!(reply.status, 202, "{:?}", reply.body);
    let id = reply.json()["id"].as_str().unwrap().to_string();
    assert_ne!(id, "forged-id");

    let stored = h.stored("fanout_shop_orders").await;
    assert_eq!(stored.len(), 1);
    let message = &stored[0];
    assert_eq!(stored_header(message, "X-Account-Kind"), Some("customer"));
    assert_eq!(stored_header(message, "Fanout-Event-Id"), Some(id.as_str()));
    assert_eq!(stored_header(message, "Nats-Msg-Id"), None);
    assert_eq!(stored_header(message, "Nats-Expected-Last-Sequence"), None);
    assert_eq!(message.headers.get_all("Fanout-Event-Id").count(), 1);
}
