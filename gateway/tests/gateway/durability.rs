//! A nats-server crash and restart under steady load never leaves a 202 whose event
//! is missing from the stream.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use fanout_testkit::wait;

use crate::support::{Harness, Setup, stored_header};

const WORKERS: usize = 16;
/// Bounds the load even if a condition below is never met.
const MAX_REQUESTS_PER_WORKER: usize = 3_000;

#[derive(Default)]
struct Tally {
    accepted: AtomicUsize,
    unavailable: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_under_load_loses_no_accepted_event() {
    let mut h = Harness::with(Setup::default().flag("publish-timeout", "2s")).await;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let base = h.base.clone();

    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let (tally, stop, base) = (tally.clone(), stop.clone(), base.clone());
        workers.push(tokio::spawn(async move {
            let client = crate::support::http_client();
            let mut accepted = Vec::new();
            let mut other = Vec::new();
            for n in 0..MAX_REQUESTS_PER_WORKER {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let id = format!("w{worker}-{n}");
                let request =
                    hyper::Request::post(format!("{base}/v1/namespaces/shop/routes/orders/events"))
                        .header("authorization", format!("Bearer {}", crate::support::TOKEN))
                        .header("idempotency-key", &id)
                        .body(http_body_util::Full::new(bytes::Bytes::from(format!(
                            "{{\"event\":\"{id}\"}}"
                        ))))
                        .unwrap();
                match client.request(request).await.map(|r| r.status().as_u16()) {
                    Ok(202) => {
                        tally.accepted.fetch_add(1, Ordering::Relaxed);
                        accepted.push(id);
                    }
                    Ok(503) => {
                        tally.unavailable.fetch_add(1, Ordering::Relaxed);
                        // What a client does with Retry-After, shortened for the test.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Ok(status) => other.push(status),
                    Err(e) => panic!("HTTP error from the gateway: {e}"),
                }
            }
            (accepted, other)
        }));
    }

    let accepted_at_least = |n: usize| {
        let tally = tally.clone();
        move || {
            let tally = tally.clone();
            async move {
                let seen = tally.accepted.load(Ordering::Relaxed);
                if seen >= n {
                    Ok(())
                } else {
                    Err(format!("{seen} accepted"))
                }
            }
        }
    };
    wait::until(
        "load before the crash",
        Duration::from_secs(30),
        accepted_at_least(300),
    )
    .await
    .unwrap();
    h.nats.kill();
    {
        let tally = tally.clone();
        wait::until(
            "503s while NATS is down",
            Duration::from_secs(30),
            move || {
                let tally = tally.clone();
                async move {
                    match tally.unavailable.load(Ordering::Relaxed) {
                        0 => Err("no 503 yet".to_string()),
                        _ => Ok(()),
                    }
                }
            },
        )
        .await
        .unwrap();
    }
    h.nats.restart().unwrap();
    let before = tally.accepted.load(Ordering::Relaxed);
    wait::until(
        "load after the restart",
        Duration::from_secs(60),
        accepted_at_least(before + 300),
    )
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);

    let mut accepted_ids = HashSet::new();
    for worker in workers {
        let (accepted, other) = worker.await.unwrap();
        assert!(other.is_empty(), "statuses other than 202/503: {other:?}");
        accepted_ids.extend(accepted);
    }

    let stored = h.stored("fanout_shop_orders").await;
    let stored_ids: HashSet<String> = stored
        .iter()
        .map(|m| stored_header(m, "Fanout-Event-Id").unwrap().to_string())
        .collect();
    assert_eq!(stored_ids.len(), stored.len(), "an id was stored twice");
    let missing: Vec<_> = accepted_ids.difference(&stored_ids).collect();
    assert!(
        missing.is_empty(),
        "{} of {} accepted events are missing from the stream, e.g. {:?}",
        missing.len(),
        accepted_ids.len(),
        &missing[..missing.len().min(10)]
    );
    println!(
        "{} accepted, all stored; {} answered 503 during the outage; {} stored in all",
        accepted_ids.len(),
        tally.unavailable.load(Ordering::Relaxed),
        stored_ids.len()
    );
}
