//! The replay module against a real nats-server, for what the front-door tests
//! (cli/tests/replay.rs) cannot arrange: two runners of one replay at once, an empty
//! window, the provisioner meeting a replay's reading consumer.

use std::time::Duration;

use async_nats::jetstream;
use fanout_config::RouteKey;
use fanout_config::jetstream::{ConsumerPlan, RouteStreams, Storage, StreamPlan};
use fanout_config::policy::RateLimit;
use fanout_config::route::Filter;
use fanout_provision::Provisioner;
use fanout_provision::replay::{self, From, Record, ReplayError, Scope, Until, Window};
use fanout_testkit::nats::NatsServer;
use futures::TryStreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn plan() -> RouteStreams {
    RouteStreams {
        stream: StreamPlan {
            name: "fanout_shop_orders".into(),
            subjects: vec![
                "fanout.in.shop.orders.>".into(),
                "fanout.redrive.shop.orders.*".into(),
            ],
            max_age: "72h".parse().unwrap(),
            max_bytes: None,
            max_messages: None,
            storage: Storage::File,
            replicas: 1,
            duplicate_window: "2m".parse().unwrap(),
            discard_old: false,
        },
        dead_letter: None,
        history: None,
        consumers: vec![ConsumerPlan {
            name: "crm".into(),
            filter_subjects: vec![
                "fanout.in.shop.orders.>".into(),
                "fanout.redrive.shop.orders.crm".into(),
            ],
            ack_wait: "10s".parse().unwrap(),
            max_ack_pending: 64,
            pinned: None,
        }],
    }
}

fn scope(rate: Option<f64>) -> Scope {
    Scope {
        route: RouteKey::new("shop", "orders"),
        target: "crm".into(),
        stream: "fanout_shop_orders".into(),
        subjects: vec!["fanout.in.shop.orders.>".into()],
        filter: Filter::default(),
        rate_limit: rate.map(|r| RateLimit {
            requests_per_second: r,
            burst: 1,
        }),
    }
}

async fn route_with_events(n: usize) -> (NatsServer, jetstream::Context) {
    let server = NatsServer::start().unwrap();
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    Provisioner::new(js.clone()).apply(&plan()).await.unwrap();
    for i in 0..n {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(fanout_config::EVENT_ID_HEADER, format!("evt-{i}").as_str());
        js.publish_with_headers("fanout.in.shop.orders.event", headers, "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    (server, js)
}

async fn copies(js: &jetstream::Context) -> usize {
    js.get_stream("fanout_shop_orders")
        .await
        .unwrap()
        .info_with_subjects("fanout.redrive.shop.orders.crm")
        .await
        .unwrap()
        .try_fold(0, |n, (_, c)| async move { Ok(n + c) })
        .await
        .unwrap()
}

const ALL: Window = Window {
    from: From::Sequence(1),
    until: Until::Latest,
};

#[tokio::test]
async fn two_runners_of_one_replay_cannot_both_go_on() {
    let (_server, js) = route_with_events(40).await;
    let scope = scope(Some(20.0));
    let (first_progress, mut seen) = watch::channel(Record::default());
    let stop = CancellationToken::new();
    let first = {
        let (js, scope, stop) = (js.clone(), scope.clone(), stop.clone());
        tokio::spawn(async move {
            replay::run(&js, &scope, Some(&ALL), "twice", &first_progress, &stop).await
        })
    };
    // The first has started (its record exists) when the second takes the same id.
    seen.wait_for(|r| r.sent > 0).await.unwrap();
    let (second_progress, _) = watch::channel(Record::default());
    let second = replay::run(&js, &scope, Some(&ALL), "twice", &second_progress, &stop).await;
    let first = first.await.unwrap();
    let taken = [&first, &second]
        .iter()
        .filter(|r| matches!(r, Err(ReplayError::Taken { .. })))
        .count();
    assert_eq!(taken, 1, "one of them is told: {first:?} {second:?}");
    assert!(first.is_ok() || second.is_ok(), "{first:?} {second:?}");
    // What both published is stored once (the copies' message ids).
    assert_eq!(copies(&js).await, 40);
}

#[tokio::test]
async fn a_window_with_no_events_completes_at_once_and_sends_nothing() {
    let (_server, js) = route_with_events(5).await;
    let (progress, _) = watch::channel(Record::default());
    let after = Window {
        from: From::Sequence(6),
        until: Until::Latest,
    };
    let record = replay::run(
        &js,
        &scope(None),
        Some(&after),
        "empty",
        &progress,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(record.complete);
    assert_eq!((record.total, record.sent), (0, 0));
    assert_eq!(copies(&js).await, 0);
    // Without a record and without a window there is nothing to resume.
    let (progress, _) = watch::channel(Record::default());
    let e = replay::run(
        &js,
        &scope(None),
        None,
        "never",
        &progress,
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("a window is needed"), "{e}");
}

#[tokio::test]
async fn the_provisioner_leaves_a_replays_reading_consumer_alone() {
    let (_server, js) = route_with_events(300).await;
    // A slow replay: its reader stays while the route is provisioned again.
    let (progress, mut seen) = watch::channel(Record::default());
    let stop = CancellationToken::new();
    let run = {
        let (js, stop) = (js.clone(), stop.clone());
        tokio::spawn(async move {
            replay::run(
                &js,
                &scope(Some(50.0)),
                Some(&ALL),
                "slow",
                &progress,
                &stop,
            )
            .await
        })
    };
    seen.wait_for(|r| r.sent > 0).await.unwrap();
    Provisioner::new(js.clone()).apply(&plan()).await.unwrap();
    let names: Vec<String> = js
        .get_stream("fanout_shop_orders")
        .await
        .unwrap()
        .consumer_names()
        .try_collect()
        .await
        .unwrap();
    assert!(
        names.iter().any(|n| n.starts_with("fanout_replay_")),
        "{names:?}"
    );
    stop.cancel();
    let record = run.await.unwrap().unwrap();
    assert!(!record.complete);
    // Stopped: what it sent is recorded, and the next run goes on from there.
    let (progress, _) = watch::channel(Record::default());
    let resumed = tokio::time::timeout(
        Duration::from_secs(30),
        replay::run(
            &js,
            &scope(None),
            None,
            "slow",
            &progress,
            &CancellationToken::new(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(resumed.complete);
    assert_eq!(resumed.sent, 300);
    assert_eq!(copies(&js).await, 300);
}
