//! `fanout dispatch` as a process: crashes lose nothing, SIGTERM drains, a config
//! that cannot work fails before consuming, probes and metrics are served.
//!
//! Tests here block on child processes, so they run on a multi-threaded runtime:
//! the scripted targets must keep answering while the test thread waits.

use std::collections::BTreeSet;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use fanout_api::manifests::Manifests;
use fanout_config::RouteConfig;
use fanout_provision::Provisioner;
use fanout_testkit::nats::NatsServer;
use fanout_testkit::target::{Reply, TargetServer};
use fanout_testkit::{free_port, wait};

const T: Duration = Duration::from_secs(30);

struct Setup {
    nats: NatsServer,
    js: jetstream::Context,
    config: RouteConfig,
    dir: tempfile::TempDir,
}

impl Setup {
    /// Provisions route `orders` delivering to one ApiTarget at `url`.
    async fn new(url: &str, target_extra: &str) -> Setup {
        let manifests = format!(
            "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {{name: api}}
spec:
  url: {url}
  timeout: 2s
  retry: {{maxAttempts: 50, initialDelay: 50ms, maxDelay: 200ms}}
{target_extra}
---
apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: orders}}
spec:
  targets: [{{name: api, apiTargetRef: {{name: api}}}}]
"
        );
        let dir = tempfile::tempdir().unwrap();
        let rendered = Manifests::parse(&manifests, "test")
            .unwrap()
            .render(dir.path())
            .unwrap()
            .remove(0);
        let nats = NatsServer::start().unwrap();
        let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        Provisioner::new(js.clone())
            .apply(&rendered.streams)
            .await
            .unwrap();
        std::fs::write(
            dir.path().join("route.yaml"),
            serde_yaml_ng::to_string(&rendered.config).unwrap(),
        )
        .unwrap();
        Setup {
            nats,
            js,
            config: rendered.config,
            dir,
        }
    }

    fn dispatcher(&self, listen_port: u16) -> Child {
        Command::new(env!("CARGO_BIN_EXE_fanout"))
            .arg("dispatch")
            .arg("--config")
            .arg(self.dir.path().join("route.yaml"))
            .args(["--nats-url", &self.nats.url()])
            .args(["--listen", &format!("127.0.0.1:{listen_port}")])
            .args(["--pod-name", "test-pod", "--shutdown-grace", "10s"])
            .env("FANOUT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("FANOUT_TEST_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::piped()
            })
            .spawn()
            .unwrap()
    }

    async fn publish(&self, ids: impl IntoIterator<Item = String>) {
        let mut acks = Vec::new();
        for id in ids {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Fanout-Event-Id", id.as_str());
            acks.push(
                self.js
                    .publish_with_headers("fanout.in.test.orders.event", headers, "{}".into())
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }

    async fn backlog(&self) -> (u64, usize) {
        let stream = self.js.get_stream(&self.config.stream).await.unwrap();
        let mut consumer: jetstream::consumer::PullConsumer =
            stream.get_consumer("api").await.unwrap();
        let info = consumer.info().await.unwrap();
        (info.num_pending, info.num_ack_pending)
    }
}

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn keys(target: &TargetServer) -> Vec<String> {
    target
        .received()
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_string())
        .collect()
}

async fn wait_all(target: &TargetServer, sent: &BTreeSet<String>) {
    wait::until("every event at the target", T, || async {
        let got: BTreeSet<String> = keys(target).into_iter().collect();
        if &got == sent {
            Ok(())
        } else {
            Err(format!("{} of {}", got.len(), sent.len()))
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_killed_mid_run_and_restarted_loses_nothing() {
    let target = TargetServer::start().await.unwrap();
    target.set_default(Reply::Delay(Duration::from_millis(20), 200));
    let setup = Setup::new(&target.url("/"), "  maxInFlight: 16\n").await;
    let sent: BTreeSet<String> = (0..300).map(|i| format!("evt-{i}")).collect();
    setup.publish(sent.iter().cloned()).await;

    let mut first = setup.dispatcher(free_port());
    target.wait_for(50, T).await.unwrap();
    first.kill().unwrap(); // SIGKILL: no drain, no acks for what was in flight
    first.wait().unwrap();
    let before_restart = target.count();
    assert!(
        before_restart < 300,
        "the kill came too late to prove anything"
    );

    let mut second = setup.dispatcher(free_port());
    wait_all(&target, &sent).await;
    signal(&second, "TERM");
    assert!(second.wait().unwrap().success());

    // At least once: duplicates are possible for what was in flight at the kill, and
    // they carry the same Idempotency-Key as the first copy.
    let all = keys(&target);
    assert!(all.len() >= 300);
    assert!(all.iter().all(|k| sent.contains(k)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_and_exits_zero() {
    let target = TargetServer::start().await.unwrap();
    target.set_default(Reply::Delay(Duration::from_millis(800), 200));
    let setup = Setup::new(&target.url("/"), "  maxInFlight: 8\n").await;
    let sent: BTreeSet<String> = (0..40).map(|i| format!("evt-{i}")).collect();
    setup.publish(sent.iter().cloned()).await;

    let mut dispatcher = setup.dispatcher(free_port());
    target.wait_for(8, T).await.unwrap();
    signal(&dispatcher, "TERM");
    let status = dispatcher.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    // Everything it held was either delivered and acked or handed back: nothing waits
    // for an ack timeout.
    let (pending, ack_pending) = setup.backlog().await;
    assert_eq!(ack_pending, 0);
    assert!(pending > 0 && pending < 40, "pending {pending}");

    target.set_default(Reply::Status(200));
    let mut again = setup.dispatcher(free_port());
    wait_all(&target, &sent).await;
    signal(&again, "TERM");
    assert!(again.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_file_fails_fast_naming_the_field() {
    let target = TargetServer::start().await.unwrap();
    let setup = Setup::new(
        &target.url("/"),
        "  auth: {bearer: {secretRef: {name: api-token, key: token}}}\n",
    )
    .await;
    setup.publish(["evt-1".to_string()]).await;
    let output = setup.dispatcher(free_port()).wait_with_output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("targets[api].credentials.bearerTokenFile"),
        "{stderr}"
    );
    assert!(stderr.contains("api-token/token"), "{stderr}");
    assert_eq!(setup.backlog().await, (1, 0), "nothing was consumed");
    assert_eq!(target.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_was_never_provisioned_is_refused_at_start() {
    let target = TargetServer::start().await.unwrap();
    let setup = Setup::new(&target.url("/"), "").await;
    setup.js.delete_stream(&setup.config.stream).await.unwrap();
    let output = setup.dispatcher(free_port()).wait_with_output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("stream fanout_test_orders does not exist"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics_are_served() {
    let target = TargetServer::start().await.unwrap();
    let setup = Setup::new(&target.url("/"), "").await;
    setup.publish(["evt-1".to_string()]).await;
    let port = free_port();
    let mut dispatcher = setup.dispatcher(port);
    target.wait_for(1, T).await.unwrap();

    let get = |path: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(response)
    };
    let metrics = wait::until("the delivery to show in /metrics", T, || async {
        let body = get("/metrics").await?;
        if body.contains(
            r#"fanout_deliveries_total{route="test/orders",target="api",outcome="delivered"} 1"#,
        ) {
            Ok(body)
        } else {
            Err(body)
        }
    })
    .await
    .unwrap();
    assert!(metrics.starts_with("HTTP/1.1 200"));
    assert!(get("/healthz").await.unwrap().starts_with("HTTP/1.1 200"));
    assert!(get("/readyz").await.unwrap().starts_with("HTTP/1.1 200"));

    signal(&dispatcher, "TERM");
    assert!(dispatcher.wait().unwrap().success());
}
