//! The load generator: many HTTP/1.1 keep-alive connections, each sending one request
//! at a time, either as fast as answers come (closed loop: the maximum rate) or on a
//! fixed schedule (open loop: latency at a given rate).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One request, sent again and again.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub path: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
    /// The status that counts as success.
    pub expect: u16,
    /// Send a new `Idempotency-Key` with every request.
    pub idempotency_keys: bool,
}

/// Makes idempotency keys unique across connections and phases.
static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

impl Target {
    fn request(&self) -> hyper::Request<Full<Bytes>> {
        let mut builder = hyper::Request::post(&self.path).header("host", self.addr.to_string());
        for (name, value) in &self.headers {
            builder = builder.header(*name, value);
        }
        if self.idempotency_keys {
            let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
            builder = builder.header("idempotency-key", format!("bench-{key}"));
        }
        builder.body(Full::new(self.body.clone())).unwrap()
    }
}

/// What one run measured.
#[derive(Default)]
pub struct Report {
    pub ok: u64,
    pub failed: u64,
    pub elapsed: Duration,
    /// Microseconds per successful request (open loop only).
    pub latencies_us: Vec<u32>,
}

impl Report {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile (0..1) of the latencies, in milliseconds.
    pub fn latency_ms(&mut self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.latencies_us.sort_unstable();
        let at = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        f64::from(self.latencies_us[at]) / 1000.0
    }

    fn merge(&mut self, other: Report) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.latencies_us.extend(other.latencies_us);
    }
}

async fn connect(target: &Target) -> http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(target.addr).await.expect("connecting");
    stream.set_nodelay(true).unwrap();
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP handshake");
    tokio::spawn(connection);
    sender
}

/// Sends one request and reads the whole answer; `true` if it had the expected status.
async fn exchange(sender: &mut http1::SendRequest<Full<Bytes>>, target: &Target) -> bool {
    if sender.ready().await.is_err() {
        return false;
    }
    match sender.send_request(target.request()).await {
        Ok(response) => {
            let ok = response.status().as_u16() == target.expect;
            ok && response.into_body().collect().await.is_ok()
        }
        Err(_) => false,
    }
}

/// Every connection sends its next request as soon as the previous answer arrived.
/// The first `warmup` is not counted.
pub async fn closed_loop(
    target: &Target,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> Report {
    let start = Instant::now() + warmup;
    let end = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(&target).await;
            let mut report = Report::default();
            loop {
                let ok = exchange(&mut sender, &target).await;
                let now = Instant::now();
                if now >= end {
                    break;
                }
                if now >= start {
                    if ok {
                        report.ok += 1;
                    } else {
                        report.failed += 1;
                    }
                }
                if !ok {
                    sender = connect(&target).await;
                }
            }
            report
        }));
    }
    collect(tasks, duration).await
}

/// `rate` requests per second in all, spread evenly over the connections; each
/// latency is measured from the moment its request was due. Every connection is open
/// before the first request is due: the latency of a steady load, not of connecting.
pub async fn open_loop(
    target: &Target,
    connections: usize,
    rate: f64,
    duration: Duration,
) -> Report {
    let interval = Duration::from_secs_f64(connections as f64 / rate);
    let per_connection = (duration.as_secs_f64() / interval.as_secs_f64()) as u64;
    let senders = futures::future::join_all((0..connections).map(|_| connect(target))).await;
    let begin = Instant::now() + Duration::from_millis(50);
    let target = Arc::new(target.clone());
    let mut tasks = Vec::new();
    for (c, mut sender) in senders.into_iter().enumerate() {
        let target = target.clone();
        let offset = interval.mul_f64(c as f64 / connections as f64);
        tasks.push(tokio::spawn(async move {
            let mut report = Report::default();
            let mut last_done = Instant::now();
            for k in 0..per_connection {
                let due = begin + offset + interval * k as u32;
                tokio::time::sleep_until(due.into()).await;
                // Sent after `due` because the previous answer came late: that wait
                // counts (no coordinated omission). Sent late only because the timer
                // woke up late: that is the generator's, not the server's.
                let sent = Instant::now();
                let from = if last_done > due { due } else { sent };
                let ok = exchange(&mut sender, &target).await;
                last_done = Instant::now();
                if ok {
                    report.ok += 1;
                    let micros = last_done.duration_since(from).as_micros();
                    report
                        .latencies_us
                        .push(micros.min(u128::from(u32::MAX)) as u32);
                } else {
                    report.failed += 1;
                    sender = connect(&target).await;
                }
            }
            report
        }));
    }
    collect(tasks, duration).await
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<Report>>, duration: Duration) -> Report {
    let mut total = Report {
        elapsed: duration,
        ..Report::default()
    };
    for task in tasks {
        total.merge(task.await.expect("load task"));
    }
    total
}
