//! A route running against real parts: a nats-server, JetStream objects provisioned
//! from rendered manifests, the delivery engine, and scripted loopback targets.

#![allow(dead_code)] // each test file uses a different part

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use fanout_api::manifests::Manifests;
use fanout_config::RouteConfig;
use fanout_config::egress::{EgressPolicy, Settings};
use fanout_config::health::HealthSnapshot;
use fanout_config::jetstream::RouteStreams;
use fanout_dispatcher::NatsArgs;
use fanout_dispatcher::{Engine, EngineOptions, Metrics, load};
use fanout_provision::Provisioner;
use fanout_testkit::nats::NatsServer;
use fanout_testkit::wait;
use futures::StreamExt;

pub const NAMESPACE: &str = "test";

pub struct Harness {
    pub nats: NatsServer,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub config: RouteConfig,
    pub streams: RouteStreams,
    pub metrics: Arc<Metrics>,
    pub engine: Option<Engine>,
    pub secrets: tempfile::TempDir,
}

/// Renders `manifests` (ApiTargets and one FanOutRoute, namespace `test`) the way the
/// operator does; Secret keys are read from files `<secrets_dir>/<secret>/<key>`.
pub fn render(manifests: &str, secrets_dir: &Path) -> (RouteConfig, RouteStreams) {
    let rendered = Manifests::parse(manifests, NAMESPACE)
        .unwrap()
        .render(secrets_dir)
        .unwrap()
        .remove(0);
    (rendered.config, rendered.streams)
}

impl Harness {
    /// Provisions the route without starting delivery.
    pub async fn provisioned(manifests: &str, secrets: &[(&str, &str, &str)]) -> Harness {
        let nats = NatsServer::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        for (secret, key, value) in secrets {
            std::fs::create_dir_all(dir.path().join(secret)).unwrap();
            std::fs::write(dir.path().join(secret).join(key), value).unwrap();
        }
        let (config, streams) = render(manifests, dir.path());
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client.clone());
        Provisioner::new(js.clone()).apply(&streams).await.unwrap();
        Harness {
            nats,
            client,
            js,
            config,
            streams,
            metrics: Arc::new(Metrics::default()),
            engine: None,
            secrets: dir,
        }
    }

    /// Provisions the route and starts delivering.
    pub async fn start(manifests: &str, secrets: &[(&str, &str, &str)]) -> Harness {
        let mut h = Harness::provisioned(manifests, secrets).await;
        h.start_engine().await;
        h
    }

    /// Starts delivering with loopback allowed (the targets are there).
    pub async fn start_engine(&mut self) {
        self.start_engine_with(EgressPolicy::new(Settings::default()))
            .await;
    }

    /// Starts delivering with the egress policy `egress`.
    pub async fn start_engine_with(&mut self, egress: EgressPolicy) {
        let auths = self
            .config
            .targets
            .iter()
            .map(|t| load::auth(t).unwrap())
            .collect();
        let options = EngineOptions {
            pod: "test-pod".into(),
            health_interval: Duration::from_millis(200),
            shutdown_grace: Duration::from_secs(5),
            // As `fanout dispatch` runs (standalone's shared runtime is covered by
            // its own tests).
            thread_per_target: true,
            egress: Arc::new(egress),
            ..EngineOptions::new(NatsArgs::for_url(self.nats.url()))
        };
        let engine = Engine::start(
            self.config.clone(),
            auths,
            self.client.clone(),
            self.metrics.clone(),
            options,
        )
        .await
        .unwrap();
        self.engine = Some(engine);
    }

    pub async fn stop_engine(&mut self) {
        if let Some(engine) = self.engine.take() {
            engine.stop().await;
        }
    }

    /// Publishes an event the way the gateway stores it, and waits for the PubAck.
    pub async fn publish(&self, id: &str, body: &str, headers: &[(&str, &str)]) {
        self.publish_to(
            &format!("fanout.in.{NAMESPACE}.{}.event", self.config.name),
            id,
            body,
            headers,
        )
        .await;
    }

    pub async fn publish_to(&self, subject: &str, id: &str, body: &str, headers: &[(&str, &str)]) {
        let mut map = HeaderMap::new();
        map.insert("Fanout-Event-Id", id);
        map.insert("Nats-Msg-Id", id);
        map.insert("Content-Type", "application/json");
        for (k, v) in headers {
            map.insert(*k, *v);
        }
        self.js
            .publish_with_headers(subject.to_string(), map, body.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    pub fn snapshot(&self, target: &str) -> HealthSnapshot {
        self.engine
            .as_ref()
            .expect("engine running")
            .snapshots()
            .into_iter()
            .find(|s| s.target == target)
            .unwrap_or_else(|| panic!("no target {target}"))
    }

    /// Waits until a target's snapshot satisfies `check`.
    pub async fn wait_snapshot(
        &self,
        target: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&HealthSnapshot) -> bool,
    ) -> HealthSnapshot {
        wait::until(what, timeout, || async {
            let s = self.snapshot(target);
            if check(&s) {
                Ok(s)
            } else {
                Err(format!("{s:?}"))
            }
        })
        .await
        .unwrap()
    }

    /// (pending, ack pending) of a target's consumer.
    pub async fn consumer_backlog(&self, target: &str) -> (u64, usize) {
        let stream = self.js.get_stream(&self.config.stream).await.unwrap();
        let mut consumer: consumer::PullConsumer = stream.get_consumer(target).await.unwrap();
        let info = consumer.info().await.unwrap();
        (info.num_pending, info.num_ack_pending)
    }

    /// Waits until a target's consumer has nothing pending or unacknowledged.
    pub async fn wait_settled(&self, target: &str, timeout: Duration) {
        wait::until(
            &format!("{target}'s consumer to settle"),
            timeout,
            || async {
                match self.consumer_backlog(target).await {
                    (0, 0) => Ok(()),
                    other => Err(format!("(pending, ack pending) = {other:?}")),
                }
            },
        )
        .await
        .unwrap();
    }

    /// Every message in the dead-letter stream.
    pub async fn dead_letters(&self) -> Vec<jetstream::Message> {
        let name = self
            .config
            .dead_letter_stream
            .clone()
            .expect("dead letters enabled");
        let stream = self.js.get_stream(&name).await.unwrap();
        let mut stream = stream;
        let count = stream.info().await.unwrap().state.messages as usize;
        if count == 0 {
            return Vec::new();
        }
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config::default())
            .await
            .unwrap();
        let mut messages = consumer
            .fetch()
            .max_messages(count)
            .messages()
            .await
            .unwrap();
        let mut out = Vec::new();
        while let Some(m) = messages.next().await {
            out.push(m.unwrap());
        }
        out
    }
}

pub fn header<'a>(message: &'a jetstream::Message, name: &str) -> Option<&'a str> {
    message.headers.as_ref()?.get(name).map(|v| v.as_str())
}
