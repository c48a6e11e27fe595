//! A real HTTP target on loopback with scripted behaviour: it answers with a
//! programmed sequence of replies (status codes, Retry-After, latency, connection
//! resets), records every request it receives, and can go down and come back up on
//! the same port. Over HTTPS it can require a client certificate from a given CA,
//! as an API that uses mutual TLS does.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

use crate::pki::{Issued, TestCa};
use crate::wait;

/// How the target answers one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// This status with an empty body.
    Status(u16),
    /// This status and body.
    StatusBody(u16, &'static str),
    /// 429/503-style answer with a `Retry-After` value.
    RetryAfter(u16, String),
    /// Wait, then answer with the status (for timeouts and slow targets).
    Delay(Duration, u16),
    /// Close the connection without answering.
    Reset,
}

/// One request as the target saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub at: Instant,
    /// The client certificate presented in the TLS handshake, if any.
    pub client_certificate: Option<CertificateDer<'static>>,
    /// The status it was answered with (0 for a reset connection).
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    script: VecDeque<Reply>,
    /// Replies for the requests of one event (by Idempotency-Key), before `script`.
    by_key: HashMap<String, VecDeque<Reply>>,
    /// Headers every request must carry, with these values (lower-case names), or it
    /// is answered 401 like a real API would.
    required: Vec<(String, Vec<String>)>,
    default: Option<Reply>,
    received: Vec<Received>,
    /// TCP connections accepted, whether or not a request came over them.
    connections: usize,
    /// Set by [`TargetServer::limit_concurrency`].
    capacity: Option<Capacity>,
    /// Requests being answered now.
    in_progress: usize,
}

/// An API that takes `max` requests at once, each answered after `latency`, and
/// turns away any beyond with 429 and `Retry-After: 1`.
#[derive(Clone, Copy, Debug)]
struct Capacity {
    max: usize,
    latency: Duration,
}

/// A scripted HTTP server on 127.0.0.1 (or an address of choice).
pub struct TargetServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<CancellationToken>,
    /// Set for HTTPS.
    tls: Option<TlsAcceptor>,
}

impl TargetServer {
    /// Starts on a free port, answering 200 to everything.
    pub async fn start() -> anyhow::Result<TargetServer> {
        Self::start_on("127.0.0.1".parse()?).await
    }

    /// Like [`start`](Self::start), on `host` (e.g. the e2e node's bridge address, so
    /// pods reach it).
    pub async fn start_on(host: std::net::IpAddr) -> anyhow::Result<TargetServer> {
        Self::listen(host, None).await
    }

    /// HTTPS on `host` with `certificate` (which must name `host`). With `client_ca`,
    /// the handshake fails unless the client presents a certificate that CA issued.
    pub async fn start_https(
        host: std::net::IpAddr,
        certificate: &Issued,
        client_ca: Option<&TestCa>,
    ) -> anyhow::Result<TargetServer> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.der().clone())?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(roots.into(), provider).build()?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let chain = vec![CertificateDer::from_pem_slice(
            certificate.certificate_pem.as_bytes(),
        )?];
        let key = PrivateKeyDer::from_pem_slice(certificate.private_key_pem.as_bytes())?;
        let mut config = builder.with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self::listen(host, Some(TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn listen(
        host: std::net::IpAddr,
        tls: Option<TlsAcceptor>,
    ) -> anyhow::Result<TargetServer> {
        let listener = bind_outside_ephemeral_range(host).await?;
        let mut server = TargetServer {
            addr: listener.local_addr()?,
            state: Arc::new(Mutex::new(State::default())),
            stop: None,
            tls,
        };
        server.serve(listener);
        Ok(server)
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Replies used in order for the next requests, then the default.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    /// Replies used in order for the requests carrying `Idempotency-Key: key`, before
    /// anything else.
    pub fn script_for_key(&self, key: &str, replies: impl IntoIterator<Item = Reply>) {
        self.state
            .lock()
            .unwrap()
            .by_key
            .entry(key.to_string())
            .or_default()
            .extend(replies);
    }

    /// Requests without header `name` set to exactly one of `accepted` are answered
    /// 401 (and still recorded), as an API that checks its credentials does. Replaces
    /// an earlier requirement on the same header (several values: a credential being
    /// rotated).
    pub fn require_header(&self, name: &str, accepted: &[&str]) {
        let name = name.to_ascii_lowercase();
        let mut state = self.state.lock().unwrap();
        state.required.retain(|(n, _)| *n != name);
        state
            .required
            .push((name, accepted.iter().map(|v| v.to_string()).collect()));
    }

    /// From now on, requests the script does not answer are answered like an API
    /// that takes `max` requests at once: each waits `latency` and gets 200, and one
    /// that arrives while `max` are in progress gets 429 with `Retry-After: 1` at once.
    pub fn limit_concurrency(&self, max: usize, latency: Duration) {
        self.state.lock().unwrap().capacity = Some(Capacity { max, latency });
    }

    /// The reply once the script is used up (200 unless set).
    pub fn set_default(&self, reply: Reply) {
        self.state.lock().unwrap().default = Some(reply);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().received.len()
    }

    /// TCP connections accepted so far: zero proves nothing reached the target, not
    /// even a connection without a request.
    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    /// The `Idempotency-Key` of every request, in the order they arrived (`<none>`
    /// for a request without one, so that it cannot pass for an expected key).
    pub fn keys(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .received
            .iter()
            .map(|r| r.header("idempotency-key").unwrap_or("<none>").to_string())
            .collect()
    }

    /// The distinct `Idempotency-Key`s received: one per event, however many times
    /// it was delivered.
    pub fn distinct_keys(&self) -> BTreeSet<String> {
        self.keys().into_iter().collect()
    }

    /// Waits until every key in `expected` has arrived; returns the distinct keys
    /// received by then (which may hold others: callers that mind compare).
    pub async fn wait_for_keys(
        &self,
        expected: &BTreeSet<String>,
        timeout: Duration,
    ) -> anyhow::Result<BTreeSet<String>> {
        wait::until(
            &format!("{} events at {}", expected.len(), self.addr),
            timeout,
            || async {
                let got = self.distinct_keys();
                match expected.difference(&got).count() {
                    0 => Ok(got),
                    missing => Err(format!("{missing} of {} missing", expected.len())),
                }
            },
        )
        .await
    }

    /// Waits until at least `n` requests arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<Received>> {
        wait::until(
            &format!("{n} requests at {}", self.addr),
            timeout,
            || async {
                let received = self.received();
                if received.len() >= n {
                    Ok(received)
                } else {
                    Err(format!("{} received", received.len()))
                }
            },
        )
        .await
    }

    /// Stops listening and drops open connections: the target is down.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.cancel();
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let listener = wait::until(
            "the target port to be free again",
            Duration::from_secs(10),
            || async {
                TcpListener::bind(self.addr)
                    .await
                    .map_err(|e| e.to_string())
            },
        )
        .await?;
        self.serve(listener);
        Ok(())
    }

    fn serve(&mut self, listener: TcpListener) {
        let stop = CancellationToken::new();
        self.stop = Some(stop.clone());
        let state = self.state.clone();
        let tls = self.tls.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                    _ = stop.cancelled() => return,
                };
                state.lock().unwrap().connections += 1;
                let state = state.clone();
                let stop = stop.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let serving = async move {
                        match tls {
                            None => serve_connection(stream, state, None).await,
                            Some(tls) => {
                                // A handshake that fails (no or a wrong client
                                // certificate) never becomes a request.
                                let Ok(stream) = tls.accept(stream).await else {
                                    return;
                                };
                                let presented = stream
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|c| c.first())
                                    .map(|c| c.clone().into_owned());
                                serve_connection(stream, state, presented).await;
                            }
                        }
                    };
                    tokio::select! {
                        _ = serving => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
    }
}

impl Drop for TargetServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A hyper service error closes the connection without a response.
#[derive(Debug)]
struct ResetConnection;

impl std::fmt::Display for ResetConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("scripted connection reset")
    }
}

impl std::error::Error for ResetConnection {}

async fn serve_connection<S>(
    stream: S,
    state: Arc<Mutex<State>>,
    client_certificate: Option<CertificateDer<'static>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        handle(state.clone(), client_certificate.clone(), request)
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn handle(
    state: Arc<Mutex<State>>,
    client_certificate: Option<CertificateDer<'static>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ResetConnection> {
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let headers = request
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                v.to_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    // Counts this request in progress until it is answered, however it ends.
    struct InProgress(Arc<Mutex<State>>);
    impl Drop for InProgress {
        fn drop(&mut self) {
            self.0.lock().unwrap().in_progress -= 1;
        }
    }
    let _in_progress = {
        state.lock().unwrap().in_progress += 1;
        InProgress(state.clone())
    };
    let reply = {
        let mut s = state.lock().unwrap();
        let mut received = Received {
            method,
            path,
            headers,
            body,
            at: Instant::now(),
            client_certificate,
            status: 0,
        };
        let unauthorized = s.required.iter().any(|(name, accepted)| {
            !received
                .header(name)
                .is_some_and(|v| accepted.iter().any(|a| a == v))
        });
        let key = received.header("idempotency-key").map(str::to_string);
        let for_key = key
            .and_then(|k| s.by_key.get_mut(&k))
            .and_then(VecDeque::pop_front);
        let reply = if unauthorized {
            Reply::StatusBody(401, "missing or wrong credentials")
        } else if let Some(scripted) = for_key.or_else(|| s.script.pop_front()) {
            scripted
        } else if let Some(capacity) = s.capacity {
            if s.in_progress > capacity.max {
                Reply::RetryAfter(429, "1".into())
            } else {
                Reply::Delay(capacity.latency, 200)
            }
        } else {
            s.default.clone().unwrap_or(Reply::Status(200))
        };
        received.status = match &reply {
            Reply::Status(code)
            | Reply::StatusBody(code, _)
            | Reply::RetryAfter(code, _)
            | Reply::Delay(_, code) => *code,
            Reply::Reset => 0,
        };
        s.received.push(received);
        reply
    };
    let respond = |status: u16, body: &'static str| {
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("valid response")
    };
    match reply {
        Reply::Status(code) => Ok(respond(code, "")),
        Reply::StatusBody(code, body) => Ok(respond(code, body)),
        Reply::RetryAfter(code, value) => {
            let mut response = respond(code, "");
            response
                .headers_mut()
                .insert("retry-after", value.parse().expect("valid header"));
            Ok(response)
        }
        Reply::Delay(delay, code) => {
            tokio::time::sleep(delay).await;
            Ok(respond(code, ""))
        }
        Reply::Reset => Err(ResetConnection),
    }
}

/// Lowest port the kernel hands out on its own (`net.ipv4.ip_local_port_range`).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// Binds a port below the kernel's ephemeral range. A target that stops and comes back
/// on its port must find it free: an ephemeral port can meanwhile become another
/// test's port, or the source port of a client's connection to the stopped target,
/// which then connects to itself and holds the port (seen as a target that never came
/// back in `a_target_down_for_a_while_then_up_receives_everything`).
async fn bind_outside_ephemeral_range(host: std::net::IpAddr) -> anyhow::Result<TcpListener> {
    use std::hash::{BuildHasher, RandomState};
    let low = ephemeral_low().max(10_001);
    let span = u64::from(low - 10_000);
    let seed = RandomState::new();
    let mut last_error = None;
    for attempt in 0u64..200 {
        let port = 10_000 + (seed.hash_one(attempt) % span) as u16;
        match TcpListener::bind((host, port)).await {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = Some(e),
        }
    }
    Err(anyhow::anyhow!(
        "no free port between 10000 and {low} on {host}: {}",
        last_error.map_or_else(String::new, |e| e.to_string())
    ))
}
