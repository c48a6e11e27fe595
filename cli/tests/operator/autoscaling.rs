//! Dispatcher replicas set from the backlog.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autoscaled_route_follows_its_backlog_up_at_once_and_down_after_the_delay() {
    let env = Env::new("op-scale").await;
    let _operator = env.operator();
    env.apply(&format!(
        "{}{}",
        target_yaml("crm", "http://127.0.0.1:9/crm", ""),
        route_yaml(
            "orders",
            &["crm"],
            "  dispatcher: {autoscaling: {minReplicas: 1, maxReplicas: 5, targetPendingPerReplica: 10, scaleDownDelay: 3s}}"
        )
    ));
    let key = env.key("orders");
    let replicas_become = |want: i32| {
        let (env, name) = (&env, key.dispatcher_object_name());
        async move {
            wait::until(&format!("{want} dispatcher replicas"), T, || async {
                let d = env
                    .api::<Deployment>()
                    .get_opt(&name)
                    .await
                    .map_err(|e| e.to_string())?;
                let replicas = d.and_then(|d| d.spec).and_then(|s| s.replicas);
                if replicas == Some(want) {
                    Ok(())
                } else {
                    Err(format!("{replicas:?}"))
                }
            })
            .await
            .unwrap();
        }
    };
    replicas_become(1).await;

    // No dispatcher runs here (no node): 35 events stay pending, which calls for
    // four replicas of ten.
    let subject = format!("{}.order", key.ingest_prefix());
    for i in 0..35 {
        env.js
            .publish(subject.clone(), format!("{{\"n\": {i}}}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    replicas_become(4).await;
    let scaled = env.events("Scaled").await;
    // A reconcile may see the publishes partly done: it scales in two steps (1 -> 3 ->
    // 4), or straight to 4 once 31 or more are pending, which it then names.
    let note = scaled
        .iter()
        .filter_map(|e| e.note.as_deref())
        .find(|n| n.contains("-> 4:"))
        .unwrap_or_else(|| panic!("no Scaled Event to 4 in {scaled:?}"));
    let pending: u32 = note
        .split("target crm has ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no pending count for crm in {note:?}"));
    assert!(
        (31..=35).contains(&pending) && note.contains("(10 per replica)"),
        "{note}"
    );
    // No node runs them: none of the four is available, and status says so.
    wait::until("status to show 0/4 dispatchers", T, || async {
        let d = env.status("orders").await.and_then(|s| s.dispatchers);
        if d.as_deref() == Some("0/4") {
            Ok(())
        } else {
            Err(format!("{d:?}"))
        }
    })
    .await
    .unwrap();

    // The backlog is gone: back to the minimum once the delay has passed.
    env.js
        .get_stream(key.stream())
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    replicas_become(1).await;
    // Its own Event, not folded into the first one's series (which keeps the first
    // note).
    let notes: Vec<String> = env
        .events("Scaled")
        .await
        .into_iter()
        .filter_map(|e| e.note)
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("dispatcher replicas 4 -> 1")),
        "{notes:?}"
    );

    // A fixed count again, of zero: delivery pauses and the backlog waits.
    env.apply(&route_yaml(
        "orders",
        &["crm"],
        "  dispatcher: {replicas: 0}",
    ));
    replicas_become(0).await;
    env.ns.delete(&env.client).await.unwrap();
}
