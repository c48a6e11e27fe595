//! (b3): the gateway's store step on the gateway's own NATS client
//! (`fanout_gateway::nats::Link`, what `fanout gateway` publishes with), shaped like
//! its shards, to set beside async-nats' ((b2)).

use std::time::Duration;

use bytes::Bytes;
use fanout_gateway::nats::{Headers, Link};
use fanout_process::nats::NatsArgs;

use crate::jetstream::{ACK_TIMEOUT, PREFIX, STREAM, closed_loops, on_shard_threads, stored};
use crate::load::Report;

/// `shards` threads, each with a current-thread runtime and one connection, driving
/// `per_shard` publishers in a closed loop, as [`crate::jetstream::publish_like_shards`].
pub fn publish_like_shards(
    url: &str,
    payload: &Bytes,
    shards: usize,
    per_shard: usize,
    warmup: Duration,
    duration: Duration,
) -> Report {
    let args = NatsArgs::for_url(url);
    let (servers, settings) = fanout_gateway::nats::settings(&args, "gateway-bench").unwrap();
    let payload = payload.clone();
    on_shard_threads(shards, warmup, duration, move |start, end| async move {
        let link = Link::start(servers, settings, Duration::from_secs(10), ACK_TIMEOUT);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !link.is_connected() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "(b3) did not connect"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let subject = format!("{PREFIX}.event");
        closed_loops(per_shard, start, end, async || {
            let mut headers = Headers::new();
            headers.append("Content-Type", "application/json").unwrap();
            let id = uuid::Uuid::now_v7().to_string();
            headers.append("Fanout-Event-Id", &id).unwrap();
            headers.append("Nats-Expected-Stream", STREAM).unwrap();
            let Ok(pending) = link.request(&subject, &headers, &payload) else {
                return false;
            };
            matches!(pending.await, Ok(reply) if reply.status.is_none() && stored(&reply.payload))
        })
        .await
    })
}
