//! Shards: connections spread over them in turn, each publishes on its own NATS
//! connection, and readiness needs every one of those connections.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::http::Request;
use serde_json::Value;

use crate::support::{Harness, Setup, TOKEN, http_client};

/// nats-server's view of the gateway's connections: messages received on each.
async fn gateway_connections(h: &Harness) -> Vec<u64> {
    let uri = format!("http://{}/connz", h.nats.monitor_addr());
    let response = http_client()
        .get(uri.parse().unwrap())
        .await
        .expect("nats-server monitoring");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let connz: Value = serde_json::from_slice(&body).unwrap();
    let mut received: Vec<u64> = connz["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == "fanout-gateway")
        .map(|c| c["in_msgs"].as_u64().unwrap())
        .collect();
    received.sort_unstable();
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_go_to_the_shards_in_turn_and_each_publishes_on_its_own_nats_connection() {
    let h = Harness::with(Setup::default().flag("shards", "3")).await;
    assert_eq!(gateway_connections(&h).await, [0, 0, 0]);

    // Nine new connections, one event each: any nine in a row are three per shard.
    let mut clients = Vec::new();
    for i in 0..9 {
        let client = http_client();
        let request = Request::post(format!(
            "{}{}",
            h.base,
            Harness::events_path("shop", "orders")
        ))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::from(format!("event {i}"))))
        .unwrap();
        let response = client.request(request).await.expect("HTTP request");
        assert_eq!(response.status(), 202);
        // Kept open, so that the next request needs a new connection.
        clients.push(client);
    }
    assert_eq!(h.stored("fanout_shop_orders").await.len(), 9);
    assert_eq!(gateway_connections(&h).await, [3, 3, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_counts_the_shards_whose_nats_connection_is_down() {
    let mut h = Harness::with(Setup::default().flag("shards", "2")).await;
    h.nats.kill();
    // Each shard notices on its own connection.
    fanout_testkit::wait::until(
        "readyz to report both shards' connections down",
        Duration::from_secs(10),
        || async {
            let reply = h.ops("/readyz").await;
            let detail = match reply.status {
                503 => reply.problem(503)["detail"].to_string(),
                other => return Err(format!("readyz {other}")),
            };
            if detail.contains("not connected to NATS on 2 of its 2 shards") {
                Ok(())
            } else {
                Err(detail)
            }
        },
    )
    .await
    .unwrap();

    h.nats.restart().unwrap();
    h.wait_ready().await;
    assert_eq!(h.send_event(&[], "x").await.status, 202);
}
