//! The load generator: many HTTP/1.1 keep-alive connections, each sending one request
//! at a time, either as fast as answers come (closed loop: the maximum rate) or on a
//! fixed schedule (open loop: latency at a given rate).
//!
//! It shares the machine's cores with what it measures, so it is kept lean, as wrk is:
//! one thread per core, each a single-threaded runtime driving its share of the
//! connections; requests written as prepared bytes; answers parsed only for their
//! status and length. (A hyper client on a multi-threaded runtime needed 10–12 µs of
//! CPU per request, CPU the gateway and nats-server then lacked.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    /// The request's bytes on the wire.
    fn request(&self) -> Vec<u8> {
        let mut head = format!("POST {} HTTP/1.1\r\nhost: {}\r\n", self.path, self.addr);
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if self.idempotency_keys {
            let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
            head.push_str(&format!("idempotency-key: bench-{key}\r\n"));
        }
        head.push_str(&format!("content-length: {}\r\n\r\n", self.body.len()));
        let mut request = head.into_bytes();
        request.extend_from_slice(&self.body);
        request
    }

    /// The next request to send: the same bytes each time, unless each needs a key.
    fn next<'a>(&self, fixed: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        if self.idempotency_keys {
            std::borrow::Cow::Owned(self.request())
        } else {
            std::borrow::Cow::Borrowed(fixed)
        }
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

    /// Runs one after the other as one: their requests, latencies and times added up
    /// (unlike [`Report::merge`], whose parts ran over the same time).
    pub fn pooled(reports: &[Report]) -> Report {
        Report {
            ok: reports.iter().map(|r| r.ok).sum(),
            failed: reports.iter().map(|r| r.failed).sum(),
            elapsed: reports.iter().map(|r| r.elapsed).sum(),
            latencies_us: reports
                .iter()
                .flat_map(|r| r.latencies_us.iter().copied())
                .collect(),
        }
    }

    pub fn merge(&mut self, other: Report) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.latencies_us.extend(other.latencies_us);
    }
}

/// One keep-alive connection.
struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Connection {
    async fn open(addr: SocketAddr) -> Connection {
        let stream = TcpStream::connect(addr).await.expect("connecting");
        stream.set_nodelay(true).unwrap();
        Connection {
            stream,
            buffer: Vec::with_capacity(4096),
        }
    }

    /// Sends one request and reads its whole answer; `true` if it had the expected
    /// status, `false` if not or if the connection failed (then open a new one).
    async fn exchange(&mut self, target: &Target, request: &[u8]) -> bool {
        if self.stream.write_all(request).await.is_err() {
            return false;
        }
        self.buffer.clear();
        loop {
            match answer(&self.buffer) {
                Answer::Complete(status) => return status == target.expect,
                Answer::Partial => {}
                Answer::Invalid(why) => panic!("the server's answer is not usable: {why}"),
            }
            match self.stream.read_buf(&mut self.buffer).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
    }
}

enum Answer {
    Complete(u16),
    Partial,
    Invalid(String),
}

/// Whether `bytes` hold a whole answer (head and `Content-Length` bytes of body).
fn answer(bytes: &[u8]) -> Answer {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Answer::Partial,
        Err(e) => return Answer::Invalid(e.to_string()),
    };
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        });
    match (length, response.code) {
        (Some(length), Some(code)) if bytes.len() >= head_len + length => Answer::Complete(code),
        (Some(_), Some(_)) => Answer::Partial,
        _ => Answer::Invalid("no status or no Content-Length".into()),
    }
}

/// Runs `work` for every connection index, spread over one thread per core, each a
/// single-threaded runtime; merges what they measured.
async fn on_every_core<F, Fut>(connections: usize, duration: Duration, work: F) -> Report
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Report> + 'static,
{
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(connections.max(1));
    let work = Arc::new(work);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let work = work.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let mine = (t..connections).step_by(threads).map(|c| work(c));
                runtime.block_on(futures::future::join_all(mine))
            })
        })
        .collect();
    let reports = tokio::task::spawn_blocking(move || {
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("load thread"))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let mut total = Report {
        elapsed: duration,
        ..Report::default()
    };
    for report in reports {
        total.merge(report);
    }
    total
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
    let target = Arc::new(target.clone());
    on_every_core(connections, duration, move |_| {
        let target = target.clone();
        async move {
            let fixed = target.request();
            let mut connection = Connection::open(target.addr).await;
            let mut report = Report::default();
            loop {
                let ok = connection.exchange(&target, &target.next(&fixed)).await;
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
                    connection = Connection::open(target.addr).await;
                }
            }
            report
        }
    })
    .await
}

/// An open-loop schedule: `rate` requests per second in all, spread evenly over
/// `senders` that each send one at a time.
pub struct Pace {
    senders: usize,
    interval: Duration,
    per_sender: u64,
}

impl Pace {
    pub fn new(senders: usize, rate: f64, duration: Duration) -> Pace {
        let interval = Duration::from_secs_f64(senders as f64 / rate);
        Pace {
            senders,
            interval,
            per_sender: (duration.as_secs_f64() / interval.as_secs_f64()) as u64,
        }
    }

    /// Runs sender `index`'s share from `begin`: calls `send` (`true` for success) when
    /// each request is due, and measures each latency from the moment it was due.
    pub async fn run(
        &self,
        index: usize,
        begin: Instant,
        mut send: impl AsyncFnMut() -> bool,
    ) -> Report {
        let offset = self.interval.mul_f64(index as f64 / self.senders as f64);
        let mut report = Report::default();
        let mut last_done = Instant::now();
        for k in 0..self.per_sender {
            let due = begin + offset + self.interval * k as u32;
            tokio::time::sleep_until(due.into()).await;
            // Sent after `due` because the previous answer came late: that wait counts
            // (no coordinated omission). Sent late only because the timer woke up
            // late: that is the generator's, not the server's.
            let sent = Instant::now();
            let from = if last_done > due { due } else { sent };
            let ok = send().await;
            last_done = Instant::now();
            if ok {
                report.ok += 1;
                let micros = last_done.duration_since(from).as_micros();
                report
                    .latencies_us
                    .push(micros.min(u128::from(u32::MAX)) as u32);
            } else {
                report.failed += 1;
            }
        }
        report
    }
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
    let pace = Arc::new(Pace::new(connections, rate, duration));
    let all_open = Arc::new(tokio::sync::Barrier::new(connections));
    let begin = Arc::new(OnceLock::new());
    let target = Arc::new(target.clone());
    on_every_core(connections, duration, move |c| {
        let (target, pace) = (target.clone(), pace.clone());
        let (all_open, begin) = (all_open.clone(), begin.clone());
        async move {
            let fixed = target.request();
            let mut connection = Connection::open(target.addr).await;
            all_open.wait().await;
            let begin = *begin.get_or_init(|| Instant::now() + Duration::from_millis(50));
            pace.run(c, begin, async || {
                let ok = connection.exchange(&target, &target.next(&fixed)).await;
                if !ok {
                    connection = Connection::open(target.addr).await;
                }
                ok
            })
            .await
        }
    })
    .await
}
