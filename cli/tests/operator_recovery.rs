//! A route's JetStream objects deleted behind Fanout's back (an admin's mistake, a
//! NATS node's storage lost), as an operator user sees it: the operator creates them
//! again within its resync interval, the route's status says what went missing and
//! what was lost with it, a Warning Event says so too, and producers' events are
//! stored again.

mod support;

use std::time::Duration;

use fanout_api::route::RecreatedStatus;
use fanout_testkit::wait;
use support::operator::{self, Env, T, route_yaml, target_yaml};

/// Waits until the route's status reports a recreation other than `after` (times
/// have a resolution of a second) whose objects include `object`.
async fn recreated(env: &Env, object: &str, after: Option<&RecreatedStatus>) -> RecreatedStatus {
    wait::until(&format!("{object} reported as recreated"), T, || async {
        let status = env.status("orders").await.ok_or("no status")?;
        match status.recreated {
            Some(r) if r.objects.iter().any(|o| o == object) && after.is_none_or(|a| *a != r) => {
                Ok(r)
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_consumers_deleted_behind_fanouts_back_are_created_again_and_reported() {
    let env = Env::new("op-recover").await;
    let _operator = env.operator();
    env.apply(&format!(
        "{}{}{}",
        target_yaml("crm", "http://127.0.0.1:9/crm", ""),
        target_yaml("email", "http://127.0.0.1:9/email", ""),
        route_yaml(
            "orders",
            &["crm", "email"],
            "  gateway: {allowUnauthenticated: true}"
        ),
    ));
    env.wait_condition("orders", "StreamReady", "True", Some("Provisioned"))
        .await;
    let key = env.key("orders");

    // Five events accepted through the gateway; no dispatcher runs (no node), so
    // they wait in the stream, and status counts them.
    let dir = tempfile::tempdir().unwrap();
    let (_, gateway_file) = operator::rendered(&env, "orders", dir.path()).await;
    let (_gateway, gateway, _) = operator::gateway(&env, dir.path(), &gateway_file);
    operator::send(&env, &gateway, "orders", 0..5).await;
    wait::until("five events in status", T, || async {
        let s = env.status("orders").await.ok_or("no status")?;
        match s.stream {
            Some(stream) if stream.messages == 5 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();

    // The stream is deleted behind Fanout's back.
    env.js.delete_stream(key.stream()).await.unwrap();
    let first = recreated(&env, &format!("stream {}", key.stream()), None).await;
    let r = first.clone();
    assert_eq!(r.lost_events, Some(5), "{r:?}");
    assert!(
        r.message.contains("the 5 events stream")
            && r.message.contains("5 of them not yet delivered"),
        "{}",
        r.message
    );
    assert!(
        env.js.get_stream(key.stream()).await.is_ok(),
        "the stream is back"
    );
    let consumers = env.consumers(&key.stream()).await.unwrap();
    assert!(
        consumers.contains(&key.consumer("crm")) && consumers.contains(&key.consumer("email")),
        "{consumers:?}"
    );
    let events = env.events("JetStreamObjectsRecreated").await;
    assert!(
        events.iter().any(|e| e.type_.as_deref() == Some("Warning")
            && e.note.as_deref().is_some_and(|n| n.contains("5 events"))),
        "{events:?}"
    );
    // Producers' events are stored again.
    operator::send(&env, &gateway, "orders", 5..6).await;

    // One target's consumer is deleted: it is created again, and the status says
    // the target gets what is still in the stream again.
    let stream = env.js.get_stream(key.stream()).await.unwrap();
    stream
        .delete_consumer(&key.consumer("email"))
        .await
        .unwrap();
    let r = recreated(
        &env,
        &format!("consumer {}", key.consumer("email")),
        Some(&first),
    )
    .await;
    assert!(
        r.message
            .contains("target email gets every event still in the stream again"),
        "{}",
        r.message
    );
    assert_eq!(r.lost_events, None, "no events are lost with a consumer");
    wait::until("the consumer back", Duration::from_secs(30), || async {
        let names = env.consumers(&key.stream()).await?;
        if names.contains(&key.consumer("email")) {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await
    .unwrap();
    env.ns.delete(&env.client).await.unwrap();
}
