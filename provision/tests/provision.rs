//! Provisioning against a real nats-server.

use async_nats::jetstream;
use fanout_config::Duration;
use fanout_config::health::{Circuit, HealthSnapshot};
use fanout_config::jetstream::{ConsumerPlan, RouteStreams, Storage, StreamPlan};
use fanout_config::names::RouteKey;
use fanout_provision::observe::observe;
use fanout_provision::{ProvisionError, Provisioner};
use fanout_testkit::nats::NatsServer;

fn plan(targets: &[&str]) -> RouteStreams {
    let stream = |name: &str, subjects: Vec<String>| StreamPlan {
        name: name.into(),
        subjects,
        max_age: "72h".parse().unwrap(),
        max_bytes: Some(1 << 20),
        max_messages: None,
        storage: Storage::File,
        replicas: 1,
        duplicate_window: "2m".parse().unwrap(),
        discard_old: false,
    };
    RouteStreams {
        stream: stream(
            "fanout_shop_orders",
            vec![
                "fanout.in.shop.orders.>".into(),
                "fanout.redrive.shop.orders.*".into(),
            ],
        ),
        dead_letter: Some(stream(
            "fanout_shop_orders_dlq",
            vec!["fanout.dlq.shop.orders.*".into()],
        )),
        consumers: targets
            .iter()
            .map(|t| ConsumerPlan {
                name: t.to_string(),
                filter_subjects: vec![
                    "fanout.in.shop.orders.>".into(),
                    format!("fanout.redrive.shop.orders.{t}"),
                ],
                ack_wait: Duration::from_secs(35),
                max_ack_pending: 64,
                pinned: None,
            })
            .collect(),
        history: None,
    }
}

async fn connect(server: &NatsServer) -> (Provisioner, jetstream::Context) {
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client);
    (Provisioner::new(js.clone()), js)
}

async fn consumer_names(js: &jetstream::Context, stream: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let mut names: Vec<String> = js
        .get_stream(stream)
        .await
        .unwrap()
        .consumer_names()
        .try_collect()
        .await
        .unwrap();
    names.sort();
    names
}

#[tokio::test]
async fn apply_creates_streams_and_one_consumer_per_target() {
    let server = NatsServer::start().unwrap();
    let (provisioner, js) = connect(&server).await;
    provisioner.apply(&plan(&["email", "crm"])).await.unwrap();

    let mut stream = js.get_stream("fanout_shop_orders").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(
        info.config.max_age,
        std::time::Duration::from_secs(72 * 3600)
    );
    assert_eq!(info.config.max_bytes, 1 << 20);
    assert_eq!(
        info.config.duplicate_window,
        std::time::Duration::from_secs(120)
    );
    assert_eq!(info.config.discard, jetstream::stream::DiscardPolicy::New);
    assert!(js.get_stream("fanout_shop_orders_dlq").await.is_ok());
    assert_eq!(
        consumer_names(&js, "fanout_shop_orders").await,
        ["crm", "email"]
    );

    let consumer: jetstream::consumer::PullConsumer = stream.get_consumer("email").await.unwrap();
    let config = &consumer.cached_info().config;
    assert_eq!(config.ack_wait, std::time::Duration::from_secs(35));
    assert_eq!(config.max_ack_pending, 64);
    assert_eq!(config.max_deliver, -1);
    assert_eq!(
        config.filter_subjects,
        [
            "fanout.in.shop.orders.>",
            "fanout.redrive.shop.orders.email"
        ]
    );
}

#[tokio::test]
async fn apply_is_idempotent_and_updates_in_place() {
    let server = NatsServer::start().unwrap();
    let (provisioner, js) = connect(&server).await;
    let mut p = plan(&["email"]);
    provisioner.apply(&p).await.unwrap();
    provisioner.apply(&p).await.unwrap();

    p.stream.max_age = "24h".parse().unwrap();
    p.consumers[0].max_ack_pending = 8;
    p.consumers[0].ack_wait = Duration::from_secs(90);
    provisioner.apply(&p).await.unwrap();

    let mut stream = js.get_stream("fanout_shop_orders").await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().config.max_age,
        std::time::Duration::from_secs(24 * 3600)
    );
    let consumer: jetstream::consumer::PullConsumer = stream.get_consumer("email").await.unwrap();
    assert_eq!(consumer.cached_info().config.max_ack_pending, 8);
    assert_eq!(
        consumer.cached_info().config.ack_wait,
        std::time::Duration::from_secs(90)
    );
}

#[tokio::test]
async fn apply_says_what_it_created_and_a_deleted_consumer_is_created_again() {
    let server = NatsServer::start().unwrap();
    let (provisioner, js) = connect(&server).await;
    let p = plan(&["email", "crm"]);
    let first = provisioner.apply(&p).await.unwrap();
    assert_eq!(
        first.created_streams,
        ["fanout_shop_orders", "fanout_shop_orders_dlq"]
    );
    assert_eq!(first.created_consumers, ["email", "crm"]);
    let again = provisioner.apply(&p).await.unwrap();
    assert!(
        again.created_streams.is_empty() && again.created_consumers.is_empty(),
        "{again:?}"
    );

    let stream = js.get_stream("fanout_shop_orders").await.unwrap();
    stream.delete_consumer("email").await.unwrap();
    let repaired = provisioner.apply(&p).await.unwrap();
    assert_eq!(repaired.created_consumers, ["email"]);
    assert!(repaired.created_streams.is_empty(), "{repaired:?}");
    assert_eq!(
        consumer_names(&js, "fanout_shop_orders").await,
        ["crm", "email"]
    );
}

#[tokio::test]
async fn a_removed_target_loses_its_consumer() {
    let server = NatsServer::start().unwrap();
    let (provisioner, js) = connect(&server).await;
    provisioner
        .apply(&plan(&["email", "crm", "analytics"]))
        .await
        .unwrap();
    provisioner.apply(&plan(&["email", "crm"])).await.unwrap();
    assert_eq!(
        consumer_names(&js, "fanout_shop_orders").await,
        ["crm", "email"]
    );
}

#[tokio::test]
async fn changing_storage_is_reported_not_forced() {
    let server = NatsServer::start().unwrap();
    let (provisioner, js) = connect(&server).await;
    let mut p = plan(&["email"]);
    provisioner.apply(&p).await.unwrap();
    p.stream.storage = Storage::Memory;
    let err = provisioner.apply(&p).await.unwrap_err();
    assert!(
        matches!(
            err,
            ProvisionError::ImmutableChange {
                field: "storage",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("fanout_shop_orders"), "{err}");
    // The existing stream is untouched.
    let mut stream = js.get_stream("fanout_shop_orders").await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().config.storage,
        jetstream::stream::StorageType::File
    );
}

fn d(text: &str) -> Duration {
    text.parse().unwrap()
}

/// The error and all its causes, as one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// Changes a plan so that it breaks one of JetStream's rules.
type Breaks = fn(&mut RouteStreams);

/// The rules the CRDs and rendering enforce (api/src/settings.rs, api/src/render.rs)
/// are JetStream's: each plan below breaks one, and this nats-server refuses it.
#[tokio::test]
async fn jetstream_refuses_what_rendering_refuses() {
    let server = NatsServer::start().unwrap();
    let (provisioner, _) = connect(&server).await;
    let cases: [(&str, Breaks); 5] = [
        ("duplicates window can not be larger then max age", |p| {
            p.stream.max_age = d("2h");
            p.stream.duplicate_window = d("3h");
        }),
        ("max age needs to be >= 100ms", |p| {
            p.stream.max_age = d("50ms")
        }),
        ("duplicates window needs to be >= 100ms", |p| {
            p.stream.duplicate_window = d("50ms")
        }),
        ("overlaps with", |p| {
            p.stream.subjects.push("shop.orders.*".into());
            p.stream.subjects.push("shop.*.placed".into());
        }),
        ("consumer subject filters cannot overlap", |p| {
            p.consumers[0].filter_subjects = vec![
                "fanout.in.shop.orders.>".into(),
                "fanout.in.shop.orders.placed".into(),
            ];
        }),
    ];
    for (refusal, breaks) in cases {
        let mut p = plan(&["email"]);
        breaks(&mut p);
        let err = provisioner.apply(&p).await.unwrap_err();
        assert!(
            chain(&err).contains(refusal),
            "{refusal:?} not in {}",
            chain(&err)
        );
        provisioner
            .delete(&[p.stream.name.clone(), "fanout_shop_orders_dlq".into()])
            .await
            .unwrap();
    }
}

/// What JetStream accepts at the edges of those rules.
#[tokio::test]
async fn jetstream_accepts_the_edges_rendering_allows() {
    let server = NatsServer::start().unwrap();
    let (provisioner, js) = connect(&server).await;
    let mut p = plan(&["email"]);
    p.stream.max_age = d("90m");
    p.stream.duplicate_window = d("90m");
    // No age limit: any window fits.
    let dead_letter = p.dead_letter.as_mut().unwrap();
    dead_letter.max_age = Duration::ZERO;
    dead_letter.duplicate_window = d("100h");
    // Filters that only intersect (each event matches one of them).
    p.consumers[0].filter_subjects = vec![
        "fanout.in.shop.orders.*.placed".into(),
        "fanout.in.shop.orders.eu.*".into(),
    ];
    provisioner.apply(&p).await.unwrap();

    // A window of 0 does not turn deduplication off: JetStream puts its default back.
    p.stream.duplicate_window = Duration::ZERO;
    provisioner.apply(&p).await.unwrap();
    let mut stream = js.get_stream("fanout_shop_orders").await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().config.duplicate_window,
        std::time::Duration::from_secs(120)
    );
}

#[tokio::test]
async fn delete_removes_streams_and_tolerates_missing_ones() {
    let server = NatsServer::start().unwrap();
    let (provisioner, js) = connect(&server).await;
    provisioner.apply(&plan(&["email"])).await.unwrap();
    let names = vec![
        "fanout_shop_orders".to_string(),
        "fanout_shop_orders_dlq".to_string(),
    ];
    provisioner.delete(&names).await.unwrap();
    assert!(js.get_stream("fanout_shop_orders").await.is_err());
    assert!(js.get_stream("fanout_shop_orders_dlq").await.is_err());
    provisioner.delete(&names).await.unwrap();
}

#[tokio::test]
async fn the_health_bucket_expires_entries() {
    let server = NatsServer::start().unwrap();
    let (provisioner, js) = connect(&server).await;
    let store = provisioner
        .ensure_health_bucket(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    store
        .put("shop.orders.email.pod-1", "{}".into())
        .await
        .unwrap();
    // A second call finds the same bucket.
    provisioner
        .ensure_health_bucket(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let mut kv_stream = js.get_stream("KV_fanout_health").await.unwrap();
    assert_eq!(
        kv_stream.info().await.unwrap().config.max_age,
        std::time::Duration::from_secs(30)
    );
}

fn snapshot(target: &str, pod: &str, circuit: Circuit, delivered: u64) -> Vec<u8> {
    serde_json::to_vec(&HealthSnapshot {
        namespace: "shop".into(),
        route: "orders".into(),
        target: target.into(),
        pod: pod.into(),
        circuit,
        delivered,
        failed: 0,
        dead_lettered: 0,
        in_flight: 0,
        last_success_time: None,
        last_error: None,
        reported_at: "2026-11-27T10:00:00.000Z".into(),
        ..Default::default()
    })
    .unwrap()
}

#[tokio::test]
async fn observe_combines_streams_consumers_and_health_snapshots() {
    let server = NatsServer::start().unwrap();
    let (provisioner, js) = connect(&server).await;
    provisioner
        .apply(&plan(&["email", "inventory"]))
        .await
        .unwrap();
    let key = RouteKey::new("shop", "orders");
    let targets = [
        "email".to_string(),
        "inventory".to_string(),
        "gone".to_string(),
    ];

    // Before any dispatcher ran there is no health bucket: everything reads as idle.
    let before = observe(
        &js,
        &key,
        "fanout_shop_orders",
        Some("fanout_shop_orders_dlq"),
        &targets,
    )
    .await
    .unwrap();
    assert_eq!(before.targets[0].reporting_pods, 0);

    for i in 0..3 {
        js.publish(format!("fanout.in.shop.orders.e{i}"), "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let store = provisioner
        .ensure_health_bucket(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    store
        .put(
            "shop.orders.email.pod-1",
            snapshot("email", "pod-1", Circuit::Closed, 7).into(),
        )
        .await
        .unwrap();
    store
        .put(
            "shop.orders.email.pod-2",
            snapshot("email", "pod-2", Circuit::Open, 5).into(),
        )
        .await
        .unwrap();
    // Another route's snapshot with a name that shares the prefix must not count.
    store
        .put(
            "shop.orders-eu.email.pod-1",
            snapshot("email", "pod-1", Circuit::Open, 100).into(),
        )
        .await
        .unwrap();

    let seen = observe(
        &js,
        &key,
        "fanout_shop_orders",
        Some("fanout_shop_orders_dlq"),
        &targets,
    )
    .await
    .unwrap();
    assert_eq!(seen.stream.messages, 3);
    assert!(seen.stream.bytes > 0);
    assert_eq!(seen.dead_letter.as_ref().map(|d| d.messages), Some(0));
    let email = &seen.targets[0];
    assert_eq!((email.delivered, email.reporting_pods), (12, 2));
    assert_eq!(email.circuit, Circuit::Open);
    assert_eq!(email.pending, 3);
    assert!(email.consumer_found);
    let inventory = &seen.targets[1];
    assert_eq!((inventory.reporting_pods, inventory.pending), (0, 3));
    assert!(
        !seen.targets[2].consumer_found,
        "no consumer for a target not provisioned"
    );

    // An unprovisioned route is an error that names its stream.
    let err = observe(
        &js,
        &RouteKey::new("shop", "none"),
        "fanout_shop_none",
        None,
        &[],
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("fanout_shop_none"), "{err}");
}
