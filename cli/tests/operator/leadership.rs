//! Leader election: one of two operators reconciles, and hands over when killed or
//! stopped.

use super::*;

async fn lease_holder(env: &Env) -> Result<String, String> {
    let lease = env
        .api::<Lease>()
        .get_opt("fanout-operator")
        .await
        .map_err(|e| e.to_string())?;
    lease
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .ok_or("no holder".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_operators_one_reconciles_and_a_killed_leader_hands_over() {
    let env = Env::new("op-lease").await;
    let mut operators = [
        Operator::start(&env.ns.name, &env.nats.url(), "op-a", true),
        Operator::start(&env.ns.name, &env.nats.url(), "op-b", true),
    ];
    let holder = wait::until("a Lease holder", T, || lease_holder(&env))
        .await
        .unwrap();
    let (leader, standby) = if holder == "op-a" { (0, 1) } else { (1, 0) };

    env.apply(&format!(
        "{}{}",
        target_yaml("crm", "http://127.0.0.1:9/crm", ""),
        route_yaml("orders", &["crm"], "")
    ));
    env.wait_condition("orders", "StreamReady", "True", None)
        .await;
    let leader_metrics = operators[leader].metrics().await.unwrap();
    assert!(
        leader_metrics.contains("fanout_operator_leader 1"),
        "{leader_metrics}"
    );
    assert!(
        leader_metrics
            .contains("fanout_operator_reconciles_total{controller=\"fanoutroute\",result=\"ok\"}")
    );
    let standby_metrics = operators[standby].metrics().await.unwrap();
    assert!(
        standby_metrics.contains("fanout_operator_leader 0"),
        "{standby_metrics}"
    );
    assert!(
        !standby_metrics.contains("fanout_operator_reconciles_total{controller=\"fanoutroute\""),
        "the standby reconciled:\n{standby_metrics}"
    );

    // The leader dies without releasing the Lease: the standby takes over once the
    // Lease expires, and reconciles what changed meanwhile.
    operators[leader].process.kill();
    env.apply(&route_yaml("payments", &["crm"], ""));
    let new_holder = wait::until("the standby to take the Lease", T, || async {
        let h = lease_holder(&env).await?;
        if h != holder { Ok(h) } else { Err(h) }
    })
    .await
    .unwrap();
    assert_eq!(new_holder, if standby == 0 { "op-a" } else { "op-b" });
    env.wait_condition("payments", "StreamReady", "True", None)
        .await;
    assert!(
        operators[standby]
            .metrics()
            .await
            .unwrap()
            .contains("fanout_operator_leader 1")
    );
    env.ns.delete(&env.client).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_with_sigterm_exits_cleanly_and_hands_over_at_once() {
    let env = Env::new("op-handover").await;
    let mut a = Operator::start(&env.ns.name, &env.nats.url(), "op-a", true);
    wait::until("op-a to lead", T, || async {
        let h = lease_holder(&env).await?;
        if h == "op-a" { Ok(()) } else { Err(h) }
    })
    .await
    .unwrap();
    let _b = Operator::start(&env.ns.name, &env.nats.url(), "op-b", true);
    wait::until("op-b to stand by", T, || async {
        let m = _b.metrics().await?;
        if m.contains("fanout_operator_leader 0") {
            Ok(())
        } else {
            Err(m)
        }
    })
    .await
    .unwrap();

    let stopped = std::time::Instant::now();
    let exit = a.process.terminate(T).unwrap();
    assert!(exit.success(), "SIGTERM is a clean stop: {exit:?}");
    wait::until("op-b to lead", T, || async {
        let h = lease_holder(&env).await?;
        if h == "op-b" { Ok(()) } else { Err(h) }
    })
    .await
    .unwrap();
    // A released Lease is taken within a retry period of the stop (which may wait
    // up to 5 s for reconciles in flight); an expired one only after the whole lease
    // duration (15 s) without renewals.
    assert!(
        stopped.elapsed() < Duration::from_secs(13),
        "handover took {:?}",
        stopped.elapsed()
    );
    env.ns.delete(&env.client).await.unwrap();
}
