//! What the gateway tests share: a real nats-server with provisioned streams, a
//! gateway serving on loopback, an HTTP client, and readers of what got stored.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, message::StreamMessage};
use bytes::Bytes;
use fanout_config::gateway::{GatewayConfig, GatewayRoute};
use fanout_config::jetstream::{RouteStreams, Storage, StreamPlan};
use fanout_gateway::{Args, Gateway};
use fanout_provision::Provisioner;
use fanout_testkit::nats::NatsServer;
use fanout_testkit::process::send_signal;
use http_body_util::{BodyExt, Full};
use hyper::http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tempfile::TempDir;

/// The token of the default route.
pub const TOKEN: &str = "s3cret-token";

/// One route to configure and provision.
#[derive(Clone)]
pub struct RouteSpec {
    pub namespace: String,
    pub name: String,
    pub tokens: Vec<String>,
    pub anonymous: bool,
    /// Listed as having tokens not loaded yet (`tokensPending`).
    pub tokens_pending: bool,
    pub max_messages: Option<i64>,
    /// The headers its targets filter on (`forwardHeaders`).
    pub forward_headers: Vec<String>,
}

impl RouteSpec {
    pub fn new(namespace: &str, name: &str) -> Self {
        RouteSpec {
            namespace: namespace.into(),
            name: name.into(),
            tokens: vec![],
            anonymous: false,
            tokens_pending: false,
            max_messages: None,
            forward_headers: Vec::new(),
        }
    }

    pub fn forwarding(mut self, headers: &[&str]) -> Self {
        self.forward_headers = headers.iter().map(|h| h.to_string()).collect();
        self
    }

    pub fn token(mut self, token: &str) -> Self {
        self.tokens.push(token.into());
        self
    }

    pub fn anonymous(mut self) -> Self {
        self.anonymous = true;
        self
    }

    pub fn tokens_pending(mut self) -> Self {
        self.tokens_pending = true;
        self
    }

    pub fn holding_at_most(mut self, messages: i64) -> Self {
        self.max_messages = Some(messages);
        self
    }

    pub fn stream(&self) -> String {
        format!("fanout_{}_{}", self.namespace, self.name)
    }

    pub fn ingest_prefix(&self) -> String {
        format!("fanout.in.{}.{}", self.namespace, self.name)
    }

    pub fn plan(&self) -> RouteStreams {
        RouteStreams {
            stream: StreamPlan {
                name: self.stream(),
                subjects: vec![format!("{}.>", self.ingest_prefix())],
                max_age: "1h".parse().unwrap(),
                max_bytes: None,
                max_messages: self.max_messages,
                storage: Storage::File,
                replicas: 1,
                duplicate_window: "2m".parse().unwrap(),
                discard_old: false,
            },
            dead_letter: None,
            consumers: vec![],
            history: None,
        }
    }
}

/// What a test starts with: by default the route `shop/orders` with [`TOKEN`].
pub struct Setup {
    pub routes: Vec<RouteSpec>,
    flags: Vec<String>,
    /// Whether the configuration file exists when the gateway starts (the routes'
    /// streams are provisioned either way).
    config_file: bool,
    /// Whether starting waits until the gateway is ready.
    wait_ready: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            routes: vec![RouteSpec::new("shop", "orders").token(TOKEN)],
            flags: vec![],
            config_file: true,
            wait_ready: true,
        }
    }
}

impl Setup {
    pub fn only(routes: Vec<RouteSpec>) -> Self {
        Setup {
            routes,
            flags: vec![],
            config_file: true,
            wait_ready: true,
        }
    }

    /// Starts the gateway before its configuration file exists, as in Kubernetes
    /// before the operator has rendered the ConfigMap.
    pub fn without_config_file(mut self) -> Self {
        self.config_file = false;
        self
    }

    /// Starts the gateway without waiting for it to be ready (it may never be).
    pub fn unready(mut self) -> Self {
        self.wait_ready = false;
        self
    }

    pub fn flag(mut self, name: &str, value: &str) -> Self {
        self.flags.push(format!("--{name}"));
        self.flags.push(value.into());
        self
    }
}

/// What a gateway needs around it: nats-server with the routes' streams, and the
/// configuration and token files.
pub struct Backend {
    pub nats: NatsServer,
    pub js: jetstream::Context,
    pub dir: TempDir,
    pub config_path: PathBuf,
}

impl Backend {
    pub async fn start(routes: &[RouteSpec]) -> Backend {
        let nats = NatsServer::start().expect("starting nats-server");
        Backend::on(nats, async_nats::ConnectOptions::new(), routes).await
    }

    /// The routes' streams on `nats`, provisioned by a client with `options` (the
    /// credentials and CA a secured server asks for).
    pub async fn on(
        nats: NatsServer,
        options: async_nats::ConnectOptions,
        routes: &[RouteSpec],
    ) -> Backend {
        let client = options.connect(nats.url()).await.unwrap();
        let js = jetstream::new(client);
        let provisioner = Provisioner::new(js.clone());
        for route in routes {
            provisioner.apply(&route.plan()).await.unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("gateway.yaml");
        write_config(dir.path(), &config_path, routes);
        Backend {
            nats,
            js,
            dir,
            config_path,
        }
    }

    /// Flags of a gateway with events on `listen` and probes and metrics on `ops`.
    pub fn gateway_flags(&self, listen: &str, ops: &str) -> Vec<String> {
        gateway_flags(&self.config_path, &self.nats, listen, ops)
    }
}

fn gateway_flags(
    config: &std::path::Path,
    nats: &NatsServer,
    listen: &str,
    ops: &str,
) -> Vec<String> {
    vec![
        "--config".to_string(),
        config.display().to_string(),
        "--listen".into(),
        listen.into(),
        "--listen-ops".into(),
        ops.into(),
        "--nats-url".into(),
        nats.url(),
        "--config-poll-interval".into(),
        "100ms".into(),
    ]
}

pub fn http_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub struct Harness {
    pub nats: NatsServer,
    pub js: jetstream::Context,
    /// Kept so the gateway lives as long as the test.
    _gateway: Gateway,
    /// The events port.
    pub addr: std::net::SocketAddr,
    /// `http://host:port` of the events port.
    pub base: String,
    /// `http://host:port` of the ops port.
    pub ops_base: String,
    pub dir: TempDir,
    pub config_path: PathBuf,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "answer {} is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an RFC 9457 problem with this status and returns its body.
    pub fn problem(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let body = self.json();
        assert_eq!(body["status"], status);
        for member in ["type", "title", "detail"] {
            assert!(body[member].is_string(), "{member} in {body}");
        }
        body
    }
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::with(Setup::default()).await
    }

    pub async fn with(setup: Setup) -> Harness {
        let backend = Backend::start(&setup.routes).await;
        Harness::on(backend, setup).await
    }

    /// A gateway in front of `backend`, whose streams are `setup`'s routes'.
    pub async fn on(backend: Backend, setup: Setup) -> Harness {
        let Backend {
            nats,
            js,
            dir,
            config_path,
        } = backend;
        if !setup.config_file {
            std::fs::remove_file(&config_path).unwrap();
        }
        let mut flags = gateway_flags(&config_path, &nats, "127.0.0.1:0", "127.0.0.1:0");
        flags.extend(setup.flags);
        let gateway = Gateway::start(Args::from_flags(flags).unwrap())
            .await
            .expect("starting the gateway");
        let base = format!("http://{}", gateway.local_addr());
        let ops_base = format!("http://{}", gateway.ops_addr().expect("an ops port"));
        let harness = Harness {
            nats,
            js,
            addr: gateway.local_addr(),
            _gateway: gateway,
            base,
            ops_base,
            dir,
            config_path,
            client: http_client(),
        };
        if setup.wait_ready {
            harness.wait_ready().await;
        }
        harness
    }

    /// The ops port's metrics.
    pub async fn metrics(&self) -> String {
        let reply = self.ops("/metrics").await;
        assert_eq!(reply.status, 200);
        String::from_utf8(reply.body.to_vec()).unwrap()
    }

    /// Rewrites the configuration file (the gateway re-reads it).
    pub fn reconfigure(&self, routes: &[RouteSpec]) {
        write_config(self.dir.path(), &self.config_path, routes);
    }

    pub async fn wait_ready(&self) {
        fanout_testkit::wait::until("gateway ready", Duration::from_secs(20), || async {
            match self.ops("/readyz").await.status {
                200 => Ok(()),
                other => Err(format!("readyz {other}")),
            }
        })
        .await
        .unwrap();
    }

    pub fn events_path(namespace: &str, route: &str) -> String {
        format!("/v1/namespaces/{namespace}/routes/{route}/events")
    }

    pub fn batch_path(namespace: &str, route: &str) -> String {
        format!("/v1/namespaces/{namespace}/routes/{route}/events:batch")
    }

    /// GET on the events port.
    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    /// GET on the ops port (probes, metrics).
    pub async fn ops(&self, path: &str) -> Reply {
        self.request_to(&self.ops_base, Method::GET, path, &[], Bytes::new())
            .await
    }

    pub async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        self.request(Method::POST, path, headers, body.into()).await
    }

    /// POSTs to the default route's events endpoint with its token.
    pub async fn send_event(&self, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
        let auth = format!("Bearer {TOKEN}");
        let mut all = vec![("authorization", auth.as_str())];
        all.extend_from_slice(headers);
        self.post(&Harness::events_path("shop", "orders"), &all, body)
            .await
    }

    /// POSTs to the default route's batch endpoint with its token.
    pub async fn send_batch(
        &self,
        content_type: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let auth = format!("Bearer {TOKEN}");
        let mut all = vec![
            ("authorization", auth.as_str()),
            ("content-type", content_type),
        ];
        all.extend_from_slice(headers);
        self.post(&Harness::batch_path("shop", "orders"), &all, body)
            .await
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        self.request_to(&self.base, method, path, headers, body)
            .await
    }

    pub async fn request_to(
        &self,
        base: &str,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{base}{path}"))
            .body(Full::new(body))
            .unwrap();
        for (name, value) in headers {
            request.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let response = self.client.request(request).await.expect("HTTP request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    /// Every message in `stream`, in order.
    pub async fn stored(&self, stream: &str) -> Vec<StreamMessage> {
        stored_messages(&self.js, stream).await
    }
}

pub async fn stored_messages(js: &jetstream::Context, stream: &str) -> Vec<StreamMessage> {
    let mut handle = js.get_stream(stream).await.unwrap();
    let state = handle.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for sequence in state.first_sequence..=state.last_sequence {
        if let Ok(message) = handle.get_raw_message(sequence).await {
            out.push(message);
        }
    }
    out
}

/// The value of `name` on a stored message.
pub fn stored_header<'a>(message: &'a StreamMessage, name: &str) -> Option<&'a str> {
    message.headers.get(name).map(|v| v.as_str())
}

fn write_config(dir: &std::path::Path, path: &std::path::Path, routes: &[RouteSpec]) {
    let config = GatewayConfig {
        routes: routes
            .iter()
            .map(|r| GatewayRoute {
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                stream: r.stream(),
                ingest_prefix: r.ingest_prefix(),
                token_files: r
                    .tokens
                    .iter()
                    .enumerate()
                    .map(|(i, token)| {
                        let file = dir.join(format!("{}-{}-token-{i}", r.namespace, r.name));
                        std::fs::write(&file, format!("{token}\n")).unwrap();
                        file
                    })
                    .collect(),
                allow_unauthenticated: r.anonymous,
                tokens_pending: r.tokens_pending,
                forward_headers: r.forward_headers.clone(),
            })
            .collect(),
    };
    // Write then rename, as a ConfigMap update does, so the gateway never reads half.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A nats-server paused with SIGSTOP: connections stay open, nothing is answered.
/// Resumed (SIGCONT) when dropped.
pub struct Frozen {
    pid: u32,
}

impl Frozen {
    pub fn stop(nats: &NatsServer) -> Frozen {
        let pid = nats_pid(nats.port());
        send_signal(pid, "STOP");
        // kill(1) returns once the signal is sent; each of the server's threads stops
        // when the kernel next gets to it. Until all have, a publish sent now could
        // still be stored and acknowledged (seen on a busy machine).
        let limit = Duration::from_secs(10);
        let deadline = std::time::Instant::now() + limit;
        while !all_threads_stopped(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server {pid} had not stopped {limit:?} after SIGSTOP"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        Frozen { pid }
    }
}

/// Whether every thread of `pid` is stopped (state `T` in its `stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    threads.flatten().all(|thread| {
        std::fs::read_to_string(thread.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name, which is in parentheses.
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
        })
    })
}

impl Drop for Frozen {
    fn drop(&mut self) {
        send_signal(self.pid, "CONT");
    }
}

/// The pid of the nats-server listening on `port` (found by its command line).
fn nats_pid(port: u16) -> u32 {
    let port = port.to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_nats = args.first().is_some_and(|a| a.ends_with(b"nats-server"));
        let on_port = args
            .windows(2)
            .any(|w| w[0] == b"-p" && w[1] == port.as_bytes());
        if is_nats && on_port {
            return pid;
        }
    }
    panic!("no nats-server process listens on port {port}");
}

/// Creates a route's stream, as the operator would.
pub async fn provision(h: &Harness, route: &RouteSpec) {
    Provisioner::new(h.js.clone())
        .apply(&route.plan())
        .await
        .unwrap();
}
