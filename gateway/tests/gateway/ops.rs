//! Health, readiness and metrics on the ops port, the API description on the events
//! port, and configuration reloads.

use std::time::Duration;

use crate::support::{Harness, RouteSpec, Setup, TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_openapi_answer() {
    let h = Harness::start().await;
    let healthz = h.ops("/healthz").await;
    assert_eq!(healthz.status, 200);
    assert_eq!(healthz.json()["status"], "ok");
    let readyz = h.ops("/readyz").await;
    assert_eq!(readyz.status, 200);
    assert_eq!(readyz.json()["routes"], 1);
    let openapi = h.get("/openapi.json").await;
    assert_eq!(openapi.status, 200);
    let doc = openapi.json();
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["paths"]["/v1/namespaces/{ns}/routes/{route}/events:batch"]["post"].is_object());
}

/// Producers reach the events port; what it must not tell them (route names,
/// traffic, errors) is on the ops port, which a network policy can keep to scrapers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics_are_served_on_the_ops_port_only() {
    let h = Harness::start().await;
    assert_eq!(h.send_event(&[], "x").await.status, 202);
    for path in ["/metrics", "/healthz", "/readyz"] {
        h.get(path).await.problem(404);
        assert_eq!(h.ops(path).await.status, 200, "{path} on the ops port");
    }
    assert!(h.metrics().await.contains("shop/orders"));
    // And the ops port takes no events.
    let reply = h
        .request_to(
            &h.ops_base,
            hyper::http::Method::POST,
            &Harness::events_path("shop", "orders"),
            &[(
                "authorization",
                &format!("Bearer {}", crate::support::TOKEN),
            )],
            bytes::Bytes::from_static(b"x"),
        )
        .await;
    reply.problem(404);
    assert_eq!(h.stored("fanout_shop_orders").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_and_outcome() {
    let h = Harness::start().await;
    assert_eq!(h.send_event(&[], "x").await.status, 202);
    assert_eq!(h.send_event(&[], "y").await.status, 202);
    h.post(&Harness::events_path("any", "thing"), &[], "x")
        .await
        .problem(404);
    let reply = h.ops("/metrics").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    for expected in [
        r#"fanout_gateway_requests_total{route="shop/orders",endpoint="single",outcome="accepted"} 2"#,
        r#"fanout_gateway_requests_total{route="unknown",endpoint="single",outcome="route-not-found"} 1"#,
        r#"fanout_gateway_events_total{route="shop/orders",outcome="accepted"} 2"#,
        "fanout_gateway_publishes_in_flight 0",
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
    // One publish-latency histogram per shard; together they saw both events.
    let publishes: u64 = text
        .lines()
        .filter_map(|l| l.strip_prefix("fanout_gateway_publish_duration_seconds_count{shard=\""))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum();
    assert_eq!(publishes, 2, "{text}");
    // The requested but unknown route name never becomes a label.
    assert!(!text.contains("any/thing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_changes_add_routes_and_rotate_tokens_without_a_restart() {
    let h = Harness::start().await;
    let new_route = RouteSpec::new("shop", "returns").token("returns-token");
    crate::support::provision(&h, &new_route).await;
    h.reconfigure(&[RouteSpec::new("shop", "orders").token("rotated"), new_route]);

    let path = Harness::events_path("shop", "returns");
    fanout_testkit::wait::until(
        "the new route to be served",
        Duration::from_secs(10),
        || async {
            let reply = h
                .post(&path, &[("authorization", "Bearer returns-token")], "x")
                .await;
            match reply.status {
                202 => Ok(()),
                other => Err(format!("status {other}")),
            }
        },
    )
    .await
    .unwrap();
    // The old token of shop/orders no longer works; the rotated one does.
    assert_eq!(h.send_event(&[], "x").await.status, 403);
    let orders = Harness::events_path("shop", "orders");
    let reply = h
        .post(&orders, &[("authorization", "Bearer rotated")], "x")
        .await;
    assert_eq!(reply.status, 202);

    // A broken configuration is reported and keeps the routes as they were.
    std::fs::write(&h.config_path, "routes: [ {").unwrap();
    fanout_testkit::wait::until(
        "the failed reload to be counted",
        Duration::from_secs(10),
        || async {
            let metrics = String::from_utf8(h.ops("/metrics").await.body.to_vec()).unwrap();
            if metrics.contains(r#"fanout_gateway_config_reloads_total{result="failure"} 1"#) {
                Ok(())
            } else {
                Err("no failed reload yet".to_string())
            }
        },
    )
    .await
    .unwrap();
    let reply = h
        .post(&orders, &[("authorization", "Bearer rotated")], "x")
        .await;
    assert_eq!(reply.status, 202);
}

/// In Kubernetes the mounted ConfigMap and Secret are refreshed separately: a
/// configuration can name a token file a moment before it appears. That route waits
/// for it (its other tokens work; the coming one gets 503 route-not-ready), while
/// the rest of the configuration takes effect and no failed reload is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_named_before_it_exists_leaves_only_that_token_waiting() {
    let h = Harness::start().await;
    let returns = RouteSpec::new("shop", "returns").anonymous();
    crate::support::provision(&h, &returns).await;
    let dir = h.dir.path();
    let (current, next) = (dir.join("orders-current"), dir.join("orders-next"));
    std::fs::write(&current, format!("{TOKEN}\n")).unwrap();
    let yaml = format!(
        "routes:
- {{namespace: shop, name: orders, stream: {}, ingestPrefix: {}, tokenFiles: [{}, {}]}}
- {{namespace: shop, name: returns, stream: {}, ingestPrefix: {}, allowUnauthenticated: true}}
",
        RouteSpec::new("shop", "orders").stream(),
        RouteSpec::new("shop", "orders").ingest_prefix(),
        current.display(),
        next.display(),
        returns.stream(),
        returns.ingest_prefix(),
    );
    let tmp = h.config_path.with_extension("tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, &h.config_path).unwrap();

    let returns_path = Harness::events_path("shop", "returns");
    fanout_testkit::wait::until(
        "the new route served although a token file is missing",
        Duration::from_secs(10),
        || async {
            match h.post(&returns_path, &[], "x").await.status {
                202 => Ok(()),
                other => Err(format!("status {other}")),
            }
        },
    )
    .await
    .unwrap();
    let orders = Harness::events_path("shop", "orders");
    let with = |token: &'static str| {
        let orders = orders.clone();
        let h = &h;
        async move {
            let bearer = format!("Bearer {token}");
            h.post(&orders, &[("authorization", &bearer)], "x").await
        }
    };
    assert_eq!(with(TOKEN).await.status, 202);
    let waiting = with("next-token").await;
    let problem = waiting.problem(503);
    assert_eq!(
        problem["type"],
        "https://fanout.dev/problems/route-not-ready"
    );
    assert_eq!(waiting.headers["retry-after"], "5");
    let metrics = h.metrics().await;
    assert!(
        !metrics.contains(r#"fanout_gateway_config_reloads_total{result="failure"} 1"#),
        "{metrics}"
    );

    std::fs::write(&next, "next-token\n").unwrap();
    fanout_testkit::wait::until(
        "the token once its file exists",
        Duration::from_secs(10),
        || async {
            match with("next-token").await.status {
                202 => Ok(()),
                other => Err(format!("status {other}")),
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(with("wrong").await.status, 403, "nothing is waited for now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_without_a_config_file_and_serves_its_routes_once_it_appears() {
    let setup = Setup::default();
    let routes = setup.routes.clone();
    let h = Harness::with(setup.without_config_file()).await;
    assert_eq!(h.ops("/readyz").await.json()["routes"], 0);
    h.send_event(&[], "x").await.problem(404);

    h.reconfigure(&routes);
    fanout_testkit::wait::until(
        "the route to be served once the file exists",
        Duration::from_secs(10),
        || async {
            match h.send_event(&[], "x").await.status {
                202 => Ok(()),
                other => Err(format!("status {other}")),
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(h.ops("/readyz").await.json()["routes"], 1);
}
