//! The two loopback HTTP targets of the peer benchmark, in a child process of their
//! own so that the CPU time they spend is measured apart from the contender's: a
//! contender that opens a connection per request costs its targets more, and that
//! belongs in the comparison.
//!
//! Each target is a minimal hyper server that reads the body and answers 200 (or 503
//! while told to fail), counting requests and accepted connections and keeping the
//! publish-to-delivery latency of requests that carry [`SENT_HEADER`]. The bench
//! steers them over a third loopback port: `GET /counts`, `POST /reset`,
//! `POST /fail/1` (target B answers 503) and `POST /fail/0`, `GET /latency`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Microseconds since the epoch at publish time; the targets subtract it from their
/// clock on arrival.
pub const SENT_HEADER: &str = "X-Bench-Sent";

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

// ---------------------------------------------------------------------------------
// The child process

#[derive(Default)]
struct Target {
    delivered: AtomicU64,
    connections: AtomicU64,
    failing: AtomicBool,
    latencies_us: Mutex<Vec<u64>>,
}

impl Target {
    fn handle(&self, sent: Option<u64>) -> hyper::Response<Full<Bytes>> {
        if self.failing.load(Ordering::Relaxed) {
            return status(503, "");
        }
        if let Some(sent) = sent {
            let latency = now_us().saturating_sub(sent);
            self.latencies_us.lock().unwrap().push(latency);
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
        status(200, "")
    }

    fn reset(&self) {
        self.delivered.store(0, Ordering::Relaxed);
        self.connections.store(0, Ordering::Relaxed);
        self.latencies_us.lock().unwrap().clear();
    }
}

fn status(code: u16, body: &str) -> hyper::Response<Full<Bytes>> {
    hyper::Response::builder()
        .status(code)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// Runs both targets and the control port until killed; first prints
/// `<port of A> <port of B> <control port>` on stdout.
pub fn serve() {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let a = Arc::new(Target::default());
            let b = Arc::new(Target::default());
            let port_a = listen(a.clone()).await;
            let port_b = listen(b.clone()).await;
            let control = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            println!("{port_a} {port_b} {}", control.local_addr().unwrap().port());
            loop {
                let (stream, _) = control.accept().await.unwrap();
                let (a, b) = (a.clone(), b.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let answer = control_request(&a, &b, &req);
                        async move { Ok::<_, std::convert::Infallible>(answer) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
}

async fn listen(target: Arc<Target>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            target.connections.fetch_add(1, Ordering::Relaxed);
            let _ = stream.set_nodelay(true);
            let t = target.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let t = t.clone();
                        async move {
                            let sent = req
                                .headers()
                                .get(SENT_HEADER)
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.parse::<u64>().ok());
                            let _ = req.into_body().collect().await;
                            Ok::<_, std::convert::Infallible>(t.handle(sent))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    port
}

fn control_request<B>(
    a: &Target,
    b: &Target,
    req: &hyper::Request<B>,
) -> hyper::Response<Full<Bytes>> {
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/counts") => {
            let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
            let counts = [&a.delivered, &b.delivered, &a.connections, &b.connections].map(load);
            status(
                200,
                &format!("{} {} {} {}", counts[0], counts[1], counts[2], counts[3]),
            )
        }
        ("POST", "/reset") => {
            a.reset();
            b.reset();
            status(200, "")
        }
        ("POST", "/fail/1") | ("POST", "/fail/0") => {
            b.failing
                .store(req.uri().path() == "/fail/1", Ordering::Relaxed);
            status(200, "")
        }
        ("GET", "/latency") => {
            let mut all = a.latencies_us.lock().unwrap().clone();
            all.extend(b.latencies_us.lock().unwrap().iter());
            all.sort_unstable();
            let pct = |p: f64| {
                all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            };
            match (pct(0.50), pct(0.99)) {
                (Some(p50), Some(p99)) => status(200, &format!("{} {p50} {p99}", all.len())),
                _ => status(200, "0 0 0"),
            }
        }
        _ => status(404, ""),
    }
}

// ---------------------------------------------------------------------------------
// The bench's side

/// What the targets received since the last reset.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub a: u64,
    pub b: u64,
    /// Connections both targets accepted.
    pub connections: u64,
}

/// The targets' child process and its control port.
pub struct Targets {
    process: std::process::Child,
    pub a: SocketAddr,
    pub b: SocketAddr,
    control: String,
    http: reqwest::Client,
}

impl Targets {
    /// Starts `bench_binary --child-targets` and reads its ports.
    pub fn start(bench_binary: PathBuf) -> Targets {
        use std::io::BufRead;
        let mut command = std::process::Command::new(bench_binary);
        command
            .arg("--child-targets")
            .stdout(std::process::Stdio::piped());
        let mut process = fanout_testkit::tied::spawn(command).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(process.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ports: Vec<u16> = line
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        Targets {
            process,
            a: addr(ports[0]),
            b: addr(ports[1]),
            control: format!("http://127.0.0.1:{}", ports[2]),
            http: reqwest::Client::new(),
        }
    }

    pub fn url_a(&self) -> String {
        format!("http://{}/events", self.a)
    }

    pub fn url_b(&self) -> String {
        format!("http://{}/events", self.b)
    }

    async fn call(&self, method: reqwest::Method, path: &str) -> String {
        let response = self
            .http
            .request(method, format!("{}{path}", self.control))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "targets: {path}: {}",
            response.status()
        );
        response.text().await.unwrap()
    }

    pub async fn counts(&self) -> Counts {
        let text = self.call(reqwest::Method::GET, "/counts").await;
        let n: Vec<u64> = text.split(' ').map(|n| n.parse().unwrap()).collect();
        Counts {
            a: n[0],
            b: n[1],
            connections: n[2] + n[3],
        }
    }

    pub async fn reset(&self) {
        self.call(reqwest::Method::POST, "/reset").await;
    }

    /// Whether target B answers 503 to everything.
    pub async fn fail_b(&self, failing: bool) {
        let path = if failing { "/fail/1" } else { "/fail/0" };
        self.call(reqwest::Method::POST, path).await;
    }

    /// (samples, p50 ms, p99 ms) of publish-to-delivery latency since the last reset.
    pub async fn latency(&self) -> (u64, f64, f64) {
        let text = self.call(reqwest::Method::GET, "/latency").await;
        let n: Vec<u64> = text.split(' ').map(|n| n.parse().unwrap()).collect();
        (n[0], n[1] as f64 / 1000.0, n[2] as f64 / 1000.0)
    }

    /// CPU seconds the targets' process has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        crate::usage(self.process.id()).0
    }
}

impl Drop for Targets {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
