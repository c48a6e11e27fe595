//! The naive fan-out: what someone would write in an afternoon with async-nats and
//! reqwest. Per target of a route: its pull consumer, at most `--in-flight` reqwest
//! deliveries at a time (a task each), one ack per message, a nak with a delay on any
//! failure, no retry policy, breaker or limits.
//!
//! It runs the way `fanout dispatch` does, so that the dispatcher benchmark compares
//! designs rather than build settings: mimalloc, and each target on a thread of its
//! own with a single-threaded runtime and its own NATS connection (the dispatcher's
//! `engine.rs`, `thread_per_target`). Nothing else is tuned.
//!
//!     naive-fanout --config route.yaml --nats-url nats://127.0.0.1:4222

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use clap::Parser;
use fanout_config::RouteConfig;
use futures::StreamExt;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// The route's rendered configuration (what `fanout dispatch --config` reads).
    #[arg(long)]
    config: PathBuf,
    #[arg(long)]
    nats_url: String,
    /// Deliveries in flight per target.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// A message header to send along as an HTTP header (the bench's send time).
    #[arg(long)]
    forward_header: Option<String>,
}

fn main() {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.config).expect("reading --config");
    let config: RouteConfig = serde_yaml_ng::from_str(&text).expect("parsing --config");
    // reqwest is built without a default TLS crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let threads: Vec<_> = config
        .targets
        .into_iter()
        .map(|target| {
            let stream = config.stream.clone();
            let nats_url = args.nats_url.clone();
            let forward = args.forward_header.clone();
            let in_flight = args.in_flight;
            std::thread::Builder::new()
                .name(format!("target-{}", target.name))
                .spawn(move || {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a runtime")
                        .block_on(deliver(
                            nats_url,
                            stream,
                            target.consumer,
                            target.policy.url,
                            in_flight,
                            forward,
                        ))
                })
                .expect("a thread per target")
        })
        .collect();
    for thread in threads {
        thread.join().expect("a target's thread");
    }
}

/// Delivers everything `consumer` gets to `url`, for ever.
async fn deliver(
    nats_url: String,
    stream: String,
    consumer: String,
    url: String,
    in_flight: usize,
    forward: Option<String>,
) {
    let client = async_nats::connect(nats_url)
        .await
        .expect("connecting to NATS");
    let consumer: PullConsumer = jetstream::new(client)
        .get_consumer_from_stream(consumer, stream)
        .await
        .expect("the target's consumer");
    let http = reqwest::Client::new();
    let limit = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let mut messages = consumer.messages().await.expect("pulling messages");
    while let Some(Ok(message)) = messages.next().await {
        let permit = limit.clone().acquire_owned().await.expect("open semaphore");
        let (http, url, forward) = (http.clone(), url.clone(), forward.clone());
        tokio::spawn(async move {
            let mut request = http.post(&url).body(message.payload.clone());
            let value = forward
                .as_deref()
                .and_then(|name| Some((name, message.headers.as_ref()?.get(name)?)));
            if let Some((name, value)) = value {
                request = request.header(name, value.as_str());
            }
            match request.send().await {
                Ok(r) if r.status().is_success() => message.ack().await.expect("acking"),
                _ => message
                    .ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(1))))
                    .await
                    .expect("naking"),
            }
            drop(permit);
        });
    }
}
