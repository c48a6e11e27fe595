//! Batches: every item its own result, bad items reported by index while the others
//! are stored, publishes pipelined.

use crate::support::{Harness, Setup, stored_header};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_batch_stores_good_items_and_reports_the_bad_one_by_index() {
    let h = Harness::start().await;
    let body = r#"[
        {"order": 1},
        {"specversion":"1.0","id":"ce-b","source":"/s","type":"order.placed"},
        {"specversion":"1.0","source":"/s","type":"order.placed"},
        "plain text as JSON"
    ]"#;
    let reply = h
        .send_batch(
            "application/json",
            &[(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )],
            body,
        )
        .await;
    assert_eq!(
        reply.status,
        207,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let body = reply.json();
    assert_eq!(body["accepted"], 3);
    assert_eq!(body["failed"], 1);
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["index"], i);
    }
    assert_eq!(results[1]["id"], "ce-b");
    assert_eq!(results[2]["status"], 400);
    assert_eq!(results[2]["error"]["index"], 2);
    assert_eq!(results[2]["error"]["status"], 400);
    assert!(
        results[2]["error"]["detail"]
            .as_str()
            .unwrap()
            .contains("item 2")
    );

    let stored = h.stored("fanout_shop_orders").await;
    let ids: Vec<_> = stored
        .iter()
        .map(|m| stored_header(m, "Fanout-Event-Id").unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        [
            results[0]["id"].as_str().unwrap(),
            "ce-b",
            results[3]["id"].as_str().unwrap()
        ]
    );
    assert_eq!(&stored[0].payload[..], br#"{"order": 1}"#);
    assert_eq!(
        stored[1].subject.as_str(),
        "fanout.in.shop.orders.order.placed"
    );
    assert_eq!(
        stored_header(&stored[1], "Content-Type"),
        Some("application/cloudevents+json")
    );
    assert_eq!(
        stored_header(&stored[0], "Content-Type"),
        Some("application/json")
    );
    assert!(stored_header(&stored[2], "traceparent").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_batch_reports_a_bad_line_by_index() {
    let h = Harness::start().await;
    let body = "{\"n\":0}\n{\"n\":1\n\n{\"n\":2}\n";
    let reply = h.send_batch("application/x-ndjson", &[], body).await;
    assert_eq!(reply.status, 207);
    let body = reply.json();
    assert_eq!(body["accepted"], 2);
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], 202);
    assert_eq!(results[1]["status"], 400);
    assert_eq!(results[1]["error"]["index"], 1);
    assert!(
        results[1]["error"]["detail"]
            .as_str()
            .unwrap()
            .contains("line 2")
    );
    assert_eq!(results[2]["status"], 202);
    let payloads: Vec<_> = h
        .stored("fanout_shop_orders")
        .await
        .iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(payloads, ["{\"n\":0}", "{\"n\":2}"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_larger_than_the_in_flight_limit_is_stored_whole() {
    let h = Harness::with(Setup::default().flag("max-in-flight", "4")).await;
    let items: Vec<String> = (0..50).map(|i| format!("{{\"n\":{i}}}")).collect();
    let reply = h
        .send_batch("application/json", &[], format!("[{}]", items.join(",")))
        .await;
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let body = reply.json();
    assert_eq!(body["accepted"], 50);
    assert_eq!(body["failed"], 0);
    let sequences: Vec<u64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, (1..=50).collect::<Vec<u64>>());
    assert_eq!(h.stored("fanout_shop_orders").await.len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_batch_with_an_idempotency_key_is_stored_once() {
    let h = Harness::start().await;
    let body = "[{\"n\":0},{\"n\":1}]";
    let key = [("idempotency-key", "batch-9")];
    let first = h.send_batch("application/json", &key, body).await.json();
    let again = h.send_batch("application/json", &key, body).await.json();
    assert_eq!(first["results"][1]["id"], "batch-9-1");
    assert_eq!(first["results"][1]["duplicate"], false);
    assert_eq!(again["results"][1]["duplicate"], true);
    assert_eq!(
        again["results"][1]["sequence"],
        first["results"][1]["sequence"]
    );
    assert_eq!(h.stored("fanout_shop_orders").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_batch_needs_every_item_to_be_a_cloudevent() {
    let h = Harness::start().await;
    let body = r#"[{"specversion":"1.0","id":"a","source":"/s","type":"t"},{"id":"b"}]"#;
    let reply = h
        .send_batch("application/cloudevents-batch+json", &[], body)
        .await;
    assert_eq!(reply.status, 207);
    let body = reply.json();
    assert_eq!(body["results"][0]["id"], "a");
    assert_eq!(body["results"][1]["status"], 400);
    assert!(
        body["results"][1]["error"]["detail"]
            .as_str()
            .unwrap()
            .contains("specversion")
    );
}
