//! A route's backlog nearing the end of its stream's retention, as a user of the
//! operator sees it: `kubectl apply`, events posted to the gateway, then the
//! route's status, `kubectl get fanoutroutes` and its Events, with no dispatcher
//! running (the case only reporting can cover) and then with one.

mod support;

use std::collections::BTreeSet;

use fanout_testkit::target::TargetServer;
use k8s_openapi::api::events::v1::Event;
use support::operator::{self, Env, T, route_yaml, target_yaml};

const RETENTION: &str = "BacklogWithinRetention";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_older_than_half_of_max_age_is_reported_until_it_is_delivered() {
    let env = Env::new("op-retention").await;
    let _operator = env.operator();
    let api = TargetServer::start().await.unwrap();
    // 30s: reported at 15s, dead-lettered at 27s.
    env.apply(&format!(
        "{}{}",
        target_yaml("api", &api.url("/in"), ""),
        route_yaml(
            "orders",
            &["api"],
            "  source: {retention: {maxAge: 30s}, duplicateWindow: 5s}\n  gateway: {allowUnauthenticated: true}"
        ),
    ));
    let fresh = env
        .wait_condition("orders", RETENTION, "True", Some("WithinRetention"))
        .await;
    assert_eq!(fresh.oldest_undelivered_time, None);

    // Events accepted while no dispatcher runs: nothing delivers them.
    let dir = tempfile::tempdir().unwrap();
    let (route_file, gateway_file) = operator::rendered(&env, "orders", dir.path()).await;
    let (_gateway, gateway, _ops) = operator::gateway(&env, dir.path(), &gateway_file);
    operator::send(&env, &gateway, "orders", 0..3).await;
    let status = env
        .wait_condition("orders", RETENTION, "False", Some("EventsNearExpiry"))
        .await;
    let condition = operator::condition(&status.conditions, RETENTION);
    assert!(
        condition
            .message
            .starts_with("target api's oldest undelivered event is "),
        "{}",
        condition.message
    );
    assert!(
        condition.message.contains("keeps events 30s") && condition.message.contains("27s"),
        "{}",
        condition.message
    );
    let target = &status.targets[0];
    assert!(target.oldest_undelivered_time.is_some(), "{target:?}");
    assert_eq!(
        status.oldest_undelivered_time,
        target.oldest_undelivered_time
    );
    let warnings: Vec<Event> = env.events("EventsNearExpiry").await;
    assert!(
        warnings
            .iter()
            .any(|e| e.type_.as_deref() == Some("Warning")
                && e.note.as_deref().is_some_and(|n| n.contains("target api"))),
        "{warnings:?}"
    );
    let table = env.kubectl(&["get", "fanoutroutes", "orders"]);
    let header = table.lines().next().unwrap_or_default();
    assert!(header.contains("OLDEST-UNDELIVERED"), "{table}");
    let ages: Vec<&str> = table
        .lines()
        .skip(1)
        .flat_map(str::split_whitespace)
        .filter(|cell| cell.ends_with('s') && cell[..cell.len() - 1].parse::<u32>().is_ok())
        .collect();
    assert!(!ages.is_empty(), "an age like 16s in:\n{table}");

    // A dispatcher starts: the backlog is delivered in time and the route is back
    // within its retention.
    let (_dispatcher, _) =
        operator::dispatcher(&env, dir.path(), &route_file, "orders-dispatcher-0");
    let sent: BTreeSet<String> = api
        .wait_for(3, T)
        .await
        .unwrap()
        .iter()
        .map(|r| r.header("idempotency-key").unwrap_or_default().to_string())
        .collect();
    assert_eq!(sent.len(), 3, "{sent:?}");
    let status = env
        .wait_condition("orders", RETENTION, "True", Some("WithinRetention"))
        .await;
    assert_eq!(status.oldest_undelivered_time, None);
    let warned_at = warnings.iter().filter_map(|e| e.event_time.clone()).max();
    let recovered = env.events("WithinRetention").await;
    assert!(
        recovered
            .iter()
            .any(|e| e.type_.as_deref() == Some("Normal") && e.event_time.clone() > warned_at),
        "a Normal Event after the warning: {recovered:?}"
    );
}
