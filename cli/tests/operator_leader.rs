//! Leader election when the leader's connection to the apiserver freezes: no error,
//! no closed connection, just no answer (a hung apiserver, a partition). The leader
//! reaches the real apiserver through a loopback proxy that stops forwarding; the
//! standby connects directly. The leader must stop reconciling before the standby
//! can take the Lease, or two operators would reconcile at once.

mod support;

use std::net::SocketAddr;

use fanout_testkit::cluster;
use fanout_testkit::proxy::FreezingProxy;
use fanout_testkit::wait;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use support::operator::{Env, Operator, T, route_yaml, target_yaml};

/// A copy of the control plane's kubeconfig that reaches the apiserver through a
/// freezing proxy; the proxy, and the file's directory.
async fn proxied_kubeconfig() -> (FreezingProxy, tempfile::TempDir) {
    let text = std::fs::read_to_string(cluster::kubeconfig().unwrap()).unwrap();
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server:"))
        .expect("a server line")
        .trim()
        .to_string();
    let upstream: SocketAddr = server.trim_start_matches("https://").parse().unwrap();
    let proxy = FreezingProxy::start(upstream).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("kubeconfig"),
        text.replace(&server, &format!("https://{}", proxy.addr())),
    )
    .unwrap();
    (proxy, dir)
}

async fn lease(env: &Env) -> Result<(String, Option<Timestamp>), String> {
    let spec = env
        .api::<Lease>()
        .get_opt("fanout-operator")
        .await
        .map_err(|e| e.to_string())?
        .and_then(|l| l.spec)
        .ok_or("no Lease")?;
    let holder = spec.holder_identity.ok_or("no holder")?;
    Ok((holder, spec.acquire_time.map(|t| t.0)))
}

/// The time of the first JSON log line whose message contains `words`.
fn logged_at(log: &str, words: &str) -> Option<Timestamp> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(words))
        })
        .and_then(|l| l["timestamp"].as_str()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_apiserver_steps_down_before_the_standby_takes_over() {
    let env = Env::new("op-freeze").await;
    let (proxy, dir) = proxied_kubeconfig().await;
    let mut leader = Operator::start_with(
        &env.ns.name,
        &env.nats.url(),
        "op-a",
        true,
        &["--log-format", "json"],
        Some(&dir.path().join("kubeconfig")),
    );
    wait::until("op-a to lead", T, || async {
        match lease(&env).await? {
            (h, _) if h == "op-a" => Ok(()),
            (h, _) => Err(h),
        }
    })
    .await
    .unwrap();
    let standby = Operator::start(&env.ns.name, &env.nats.url(), "op-b", true);
    wait::until("op-b to stand by", T, || async {
        let m = standby.metrics().await?;
        if m.contains("fanout_operator_leader 0") {
            Ok(())
        } else {
            Err(m)
        }
    })
    .await
    .unwrap();
    // op-a reconciles through the proxy.
    env.apply(&format!(
        "{}{}",
        target_yaml("crm", "http://127.0.0.1:9/crm", ""),
        route_yaml("orders", &["crm"], "")
    ));
    env.wait_condition("orders", "StreamReady", "True", None)
        .await;

    let frozen_at = Timestamp::now();
    proxy.freeze();
    let (_, acquired) = wait::until("op-b to take the Lease", T, || async {
        match lease(&env).await? {
            (h, Some(at)) if h == "op-b" => Ok(((), at)),
            (h, at) => Err(format!("{h} {at:?}")),
        }
    })
    .await
    .unwrap();

    // op-a said it stepped down, after the freeze and before op-b held the Lease,
    // and then exited to campaign again from scratch.
    let log = leader.process.log();
    let stepped_down = logged_at(&log, "stepped down")
        .unwrap_or_else(|| panic!("op-a never stepped down:\n{log}"));
    assert!(
        frozen_at < stepped_down && stepped_down < acquired,
        "frozen {frozen_at}, op-a stepped down {stepped_down}, op-b acquired {acquired}"
    );
    let exit = leader.process.wait(T).unwrap();
    assert!(!exit.success(), "{exit:?}");

    // The new leader reconciles.
    env.apply(&route_yaml("payments", &["crm"], ""));
    env.wait_condition("payments", "StreamReady", "True", None)
        .await;
    assert!(
        standby
            .metrics()
            .await
            .unwrap()
            .contains("fanout_operator_leader 1")
    );
    env.ns.delete(&env.client).await.unwrap();
}
