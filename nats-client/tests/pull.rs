//! The pull consumer against a real nats-server: what JetStream delivers, how each
//! acknowledgement settles an event (read back from the consumer's own counts),
//! how many events it keeps on the way, and what it does across a restart, an idle
//! stretch and a deleted consumer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use fanout_nats_client::pull::{Ack, Pull, PullConfig, PullError};
use fanout_process::nats::NatsArgs;
use fanout_testkit::nats::NatsServer;
use tokio::time::{Instant, timeout};

const STREAM: &str = "ORDERS";
const CONSUMER: &str = "to-a";
const WAIT: Duration = Duration::from_secs(20);

async fn setup(server: &NatsServer, ack_wait: Duration) -> jetstream::Context {
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec!["orders.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    create_consumer(&js, ack_wait).await;
    js
}

async fn create_consumer(js: &jetstream::Context, ack_wait: Duration) {
    js.get_stream(STREAM)
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config {
            durable_name: Some(CONSUMER.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait,
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn publish(js: &jetstream::Context, n: usize) {
    for i in 0..n {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Fanout-Event-Id", format!("ev-{i}").as_str());
        js.publish_with_headers(
            format!("orders.{i}"),
            headers,
            format!("{{\"n\":{i}}}").into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
}

fn pull(server: &NatsServer, batch: usize, expires: Duration) -> Pull {
    pull_group(server, batch, expires, None)
}

fn pull_group(server: &NatsServer, batch: usize, expires: Duration, group: Option<&str>) -> Pull {
    let args = NatsArgs::for_url(server.url());
    let (servers, settings) = fanout_nats_client::settings(&args, "pull-test").unwrap();
    Pull::start(
        servers,
        settings,
        Duration::from_secs(10),
        PullConfig {
            stream: STREAM.into(),
            consumer: CONSUMER.into(),
            batch,
            expires,
            heartbeat: Duration::from_millis(500),
            group: group.map(str::to_string),
        },
    )
}

async fn next(pull: &Pull) -> fanout_nats_client::pull::Message {
    timeout(WAIT, pull.next())
        .await
        .expect("an event within the deadline")
        .expect("an event, not an error")
}

/// The consumer as the server counts it: (acks pending, events not yet delivered).
async fn counts(js: &jetstream::Context) -> (usize, u64) {
    let mut consumer: consumer::PullConsumer =
        js.get_consumer_from_stream(CONSUMER, STREAM).await.unwrap();
    let info = consumer.info().await.unwrap();
    (info.num_ack_pending, info.num_pending)
}

async fn until_counts(js: &jetstream::Context, want: (usize, u64)) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = counts(js).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "consumer counts {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_event_comes_once_with_its_headers_and_delivery_and_acks_settle_them() {
    let server = NatsServer::start().unwrap();
    let js = setup(&server, Duration::from_secs(30)).await;
    publish(&js, 50).await;
    let pull = pull(&server, 16, Duration::from_secs(5));
    let mut seen = Vec::new();
    for _ in 0..50 {
        let message = next(&pull).await;
        let info = message.info().expect("a consumer's delivery");
        assert_eq!(
            (info.stream, info.consumer, info.delivered),
            (STREAM, CONSUMER, 1)
        );
        let n = info.stream_sequence - 1;
        assert_eq!(message.subject, format!("orders.{n}"));
        assert_eq!(message.payload, format!("{{\"n\":{n}}}"));
        let id = fanout_nats_client::protocol::header(&message.headers, "fanout-event-id");
        assert_eq!(id, Some(format!("ev-{n}").as_bytes()));
        let age = std::time::SystemTime::now()
            .duration_since(info.published)
            .unwrap();
        assert!(age < Duration::from_secs(60), "published {age:?} ago");
        seen.push(info.stream_sequence);
        pull.ack(&message.reply, Ack::Ack);
    }
    seen.sort();
    assert_eq!(seen, (1..=50).collect::<Vec<_>>());
    until_counts(&js, (0, 0)).await;
}

#[tokio::test]
async fn no_more_than_the_batch_is_on_the_way_while_nothing_is_taken() {
    let server = NatsServer::start().unwrap();
    let js = setup(&server, Duration::from_secs(30)).await;
    publish(&js, 100).await;
    let pull = pull(&server, 16, Duration::from_secs(5));
    let first = next(&pull).await;
    // Sixteen delivered (one taken, fifteen waiting), the rest left in the stream.
    until_counts(&js, (16, 84)).await;
    pull.ack(&first.reply, Ack::Ack);
    // Taking more frees half the batch, and only then is more asked for.
    let mut taken = Vec::new();
    for _ in 0..8 {
        taken.push(next(&pull).await);
    }
    until_counts(&js, (23, 76)).await;
    for message in taken {
        pull.ack(&message.reply, Ack::Ack);
    }
    until_counts(&js, (15, 76)).await;
}

#[tokio::test]
async fn naks_terms_and_progress_settle_as_jetstream_defines_them() {
    let server = NatsServer::start().unwrap();
    let js = setup(&server, Duration::from_secs(2)).await;
    publish(&js, 3).await;
    let pull = pull(&server, 8, Duration::from_secs(5));
    let mut by_sequence = std::collections::BTreeMap::new();
    for _ in 0..3 {
        let message = next(&pull).await;
        by_sequence.insert(message.info().unwrap().stream_sequence, message);
    }
    let nak_at = Instant::now();
    pull.ack(
        &by_sequence[&1].reply,
        Ack::Nak(Some(Duration::from_millis(700))),
    );
    pull.ack(&by_sequence[&2].reply, Ack::Term);
    // Kept in progress past its 2 s ack wait, the third is not redelivered.
    let third = by_sequence[&3].reply.clone();
    let again = next(&pull).await;
    let info = again.info().unwrap();
    assert_eq!((info.stream_sequence, info.delivered), (1, 2));
    assert!(
        nak_at.elapsed() >= Duration::from_millis(600),
        "redelivered after {:?}",
        nak_at.elapsed()
    );
    pull.ack(&again.reply, Ack::Ack);
    for _ in 0..5 {
        pull.ack(&third, Ack::Progress);
        pull.flush(Duration::from_secs(1)).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    assert_eq!(counts(&js).await, (1, 0), "only the third is pending");
    pull.ack(&third, Ack::Ack);
    until_counts(&js, (0, 0)).await;
    // Nothing else comes: the termed event stays settled.
    assert!(
        timeout(Duration::from_millis(2500), pull.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_pull_that_expires_while_idle_is_renewed() {
    let server = NatsServer::start().unwrap();
    let js = setup(&server, Duration::from_secs(30)).await;
    let pull = pull(&server, 8, Duration::from_secs(1));
    // Several pulls expire before anything is published.
    tokio::time::sleep(Duration::from_secs(3)).await;
    publish(&js, 1).await;
    let message = next(&pull).await;
    assert_eq!(message.info().unwrap().stream_sequence, 1);
}

#[tokio::test]
async fn across_a_server_restart_events_keep_coming_and_nothing_stays_pending() {
    let mut server = NatsServer::start().unwrap();
    let js = setup(&server, Duration::from_secs(60)).await;
    publish(&js, 2).await;
    let pull = pull(&server, 8, Duration::from_secs(5));
    let (a, b) = (next(&pull).await, next(&pull).await);
    server.kill();
    server.restart().unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client);
    // An ack reaches a consumer only once JetStream has loaded it again.
    let deadline = Instant::now() + WAIT;
    while js
        .get_consumer_from_stream::<consumer::pull::Config, _, _>(CONSUMER, STREAM)
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "JetStream did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publish(&js, 1).await;
    for message in [&a, &b] {
        pull.ack(&message.reply, Ack::Ack);
    }
    // The restarted server may deliver the first two again (their acks raced its
    // start, or its consumer state had not been written); the third comes anyway.
    loop {
        let message = next(&pull).await;
        pull.ack(&message.reply, Ack::Ack);
        if message.info().unwrap().stream_sequence == 3 {
            break;
        }
    }
    // Nothing is left pending.
    until_counts(&js, (0, 0)).await;
}

#[tokio::test]
async fn a_deleted_consumer_is_told_and_its_successor_is_read() {
    let server = NatsServer::start().unwrap();
    let js = setup(&server, Duration::from_secs(30)).await;
    let pull = pull(&server, 8, Duration::from_secs(30));
    // The pull waits on the server before the consumer goes.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut consumer: consumer::PullConsumer =
            js.get_consumer_from_stream(CONSUMER, STREAM).await.unwrap();
        if consumer.info().await.unwrap().num_waiting > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no pull reached the server");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    js.get_stream(STREAM)
        .await
        .unwrap()
        .delete_consumer(CONSUMER)
        .await
        .unwrap();
    let refused = timeout(WAIT, pull.next())
        .await
        .expect("told within the deadline");
    match refused {
        Err(PullError::Refused { status, reason, .. }) => {
            assert_eq!(status, 409, "{reason}");
            assert!(reason.contains("Consumer Deleted"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    create_consumer(&js, Duration::from_secs(30)).await;
    publish(&js, 1).await;
    let message = next(&pull).await;
    assert_eq!(message.info().unwrap().stream_sequence, 1);
}

/// Counts its wake-ups.
#[derive(Default)]
struct Woken(AtomicUsize);

impl std::task::Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test]
async fn a_closed_consumer_ends_next() {
    let server = NatsServer::start().unwrap();
    setup(&server, Duration::from_secs(30)).await;
    let pull = pull(&server, 8, Duration::from_secs(5));
    let mut waiting = std::pin::pin!(pull.next());
    // Polled once with a waker that counts: it waits (the stream is empty).
    let woken = Arc::new(Woken::default());
    let waker = std::task::Waker::from(woken.clone());
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(waiting.as_mut().poll(&mut cx).is_pending());
    pull.close();
    assert_eq!(
        woken.0.load(Ordering::Relaxed),
        1,
        "close wakes the caller waiting"
    );
    let std::task::Poll::Ready(ended) = waiting.as_mut().poll(&mut cx) else {
        panic!("still waiting after close")
    };
    assert!(matches!(ended, Err(PullError::Closed)), "{ended:?}");
}

#[tokio::test]
async fn a_pinned_group_gives_every_event_to_one_client_until_it_stops_pulling() {
    let server = NatsServer::start().unwrap();
    let js = setup(&server, Duration::from_secs(30)).await;
    js.get_stream(STREAM)
        .await
        .unwrap()
        .delete_consumer(CONSUMER)
        .await
        .unwrap();
    js.get_stream(STREAM)
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config {
            durable_name: Some(CONSUMER.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            priority_policy: consumer::PriorityPolicy::PinnedClient,
            priority_groups: vec!["ordered".into()],
            priority_timeout: Duration::from_secs(2),
            // An event that reaches the first client as it closes comes back soon.
            ack_wait: Duration::from_secs(3),
            ..Default::default()
        })
        .await
        .unwrap();
    let first = pull_group(&server, 8, Duration::from_secs(1), Some("ordered"));
    let message = {
        publish(&js, 1).await;
        next(&first).await
    };
    let pin = message.header("Nats-Pin-Id").expect("a pin id").to_string();
    first.ack(&message.reply, Ack::Ack);
    // A second client of the group gets nothing while the first keeps pulling.
    let second = pull_group(&server, 8, Duration::from_secs(1), Some("ordered"));
    publish(&js, 3).await;
    for _ in 0..3 {
        let message = next(&first).await;
        assert_eq!(message.header("Nats-Pin-Id"), Some(pin.as_str()));
        first.ack(&message.reply, Ack::Ack);
    }
    assert!(
        timeout(Duration::from_millis(1500), second.next())
            .await
            .is_err(),
        "the unpinned client got an event"
    );
    // The first stops pulling: after the pin's timeout the second is pinned.
    first.close();
    assert!(!first.is_connected());
    drop(first);
    publish(&js, 1).await;
    let message = next(&second).await;
    assert_eq!(message.info().unwrap().stream_sequence, 5);
    assert_ne!(message.header("Nats-Pin-Id"), Some(pin.as_str()));
    second.ack(&message.reply, Ack::Ack);
    until_counts(&js, (0, 0)).await;
}
