//! The HTTP server of the events port: shared state, the router, and serving
//! connections until shutdown. Each connection is bounded in time: its request
//! headers must arrive within the header read timeout (hyper closes it otherwise,
//! which also ends an idle keep-alive connection), a TLS handshake within the same
//! time, and a body within the body read timeout ([`crate::body`] answers 408).

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use fanout_otel::opentelemetry_sdk::trace::SdkTracer;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

use crate::config::{Route, RouteTable};
use crate::headers::ForwardHeaders;
use crate::limit::{ConnectionLimit, Slot};
use crate::metrics::Metrics;
use crate::problem::{Problem, ProblemKind};
use crate::publish::Publisher;
use crate::{batch, ingest, ops};

/// Path of the single-event endpoint.
pub const EVENTS_PATH: &str = "/v1/namespaces/{ns}/routes/{route}/events";
/// Path of the batch endpoint.
pub const BATCH_PATH: &str = "/v1/namespaces/{ns}/routes/{route}/events:batch";

/// What every handler of a shard shares.
pub struct AppState {
    pub routes: watch::Receiver<Arc<RouteTable>>,
    /// This shard's own NATS connection.
    pub publisher: Publisher,
    pub metrics: Arc<Metrics>,
    pub forward: ForwardHeaders,
    pub body_limit: usize,
    pub body_read_timeout: Duration,
    pub max_batch_items: usize,
    /// Where spans go, when tracing is on (see [`crate::spans`]).
    pub tracer: Option<SdkTracer>,
}

impl AppState {
    pub fn route(&self, namespace: &str, name: &str) -> Option<Arc<Route>> {
        self.routes.borrow().get(namespace, name).cloned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("listening on {addr} (--{flag})")]
    Bind {
        addr: SocketAddr,
        flag: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The events port's routes: the ingest endpoints and the API description. Health,
/// readiness and metrics are on the ops port ([`ops::router`]).
pub fn router(state: Arc<AppState>) -> Router {
    let router = Router::new()
        .route(EVENTS_PATH, post(ingest::handle))
        .route(BATCH_PATH, post(batch::handle))
        .route("/openapi.json", get(ops::openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CatchPanicLayer::custom(|_panic| {
            Problem::new(
                ProblemKind::Internal,
                "the gateway failed to handle the request",
            )
            .into_response()
        }));
    // Request spans and failures at debug: the handlers log what matters, once. The
    // layer costs a few clock reads and wrappers per request even when nothing it
    // records is kept (about 2% of the gateway's CPU per event), so it is there only
    // when the log filter, fixed at start, keeps some of it.
    let router = if request_tracing_enabled() {
        router.layer(
            TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
        )
    } else {
        router
    };
    router.with_state(state)
}

/// Whether the log filter keeps any of the request tracing (spans and events of
/// `tower_http::trace`, all at debug).
fn request_tracing_enabled() -> bool {
    tracing::span_enabled!(target: "tower_http::trace::make_span", Level::DEBUG)
        || tracing::enabled!(target: "tower_http::trace::on_request", Level::DEBUG)
        || tracing::enabled!(target: "tower_http::trace::on_response", Level::DEBUG)
        || tracing::enabled!(target: "tower_http::trace::on_failure", Level::DEBUG)
        || tracing::enabled!(target: "tower_http::trace::on_eos", Level::DEBUG)
}

pub async fn not_found() -> axum::response::Response {
    Problem::new(ProblemKind::NotFound, "no such endpoint; see /openapi.json").into_response()
}

async fn method_not_allowed() -> axum::response::Response {
    Problem::new(
        ProblemKind::MethodNotAllowed,
        "this endpoint does not take that method; see /openapi.json",
    )
    .into_response()
}

/// Connections the kernel may hold completed but not yet accepted (capped by
/// `net.core.somaxconn`). Producers connect in bursts (a gateway restart, a client
/// fleet scaling up); a connection that finds the queue full has its SYN dropped and
/// waits a whole second to retry. Tokio's `TcpListener::bind` asks for only 128.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr`, given by command-line flag `flag` (named in the error).
pub fn bind(addr: SocketAddr, flag: &'static str) -> Result<TcpListener, ServeError> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // A restarted gateway binds again at once, despite connections in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().map_err(|source| ServeError::Bind { addr, flag, source })
}

/// A connection to serve, and the slot it holds while open.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub slot: Option<Slot>,
}

/// Where a server's connections come from.
pub trait Accept: Send + 'static {
    fn accept(&mut self) -> impl Future<Output = Accepted> + Send;
}

/// A listening socket of its own (the ops port), with a cap on its connections.
pub struct Listening {
    pub listener: TcpListener,
    pub limit: ConnectionLimit,
}

impl Accept for Listening {
    async fn accept(&mut self) -> Accepted {
        loop {
            // axum's accept logs and waits out errors such as running out of file
            // descriptors.
            let (stream, peer) = axum::serve::Listener::accept(&mut self.listener).await;
            match self.limit.try_take() {
                Some(slot) => {
                    return Accepted {
                        stream,
                        peer,
                        slot: Some(slot),
                    };
                }
                None => tracing::debug!(%peer, "too many connections on the ops port; closing"),
            }
        }
    }
}

/// How a server speaks on each connection: the same for all of its connections.
#[derive(Clone)]
pub struct Protocol {
    http: http1::Builder,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
}

impl Protocol {
    /// HTTP/1.1, over TLS when `tls` is given; a client must send each request's
    /// headers (and finish a TLS handshake) within `header_read_timeout`.
    pub fn new(header_read_timeout: Duration, tls: Option<TlsAcceptor>) -> Self {
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout);
        Protocol {
            http,
            tls,
            handshake_timeout: header_read_timeout,
        }
    }
}

/// Serves connections from `listener` until `shutdown` completes; then stops
/// accepting, lets every connection finish the request in progress, and returns once
/// all have closed.
pub async fn serve(
    mut listener: impl Accept,
    router: Router,
    protocol: Protocol,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    // Connections hold a sender each: `closed()` tells them to drain once `draining`
    // is dropped. They hold a receiver of `done` each: its sender sees when all are gone.
    let (drain, draining) = watch::channel(());
    let (done, finished) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let router = router.clone();
        let protocol = protocol.clone();
        let drain = drain.clone();
        let finished = finished.clone();
        tokio::spawn(async move {
            connection(accepted, router, protocol, drain).await;
            drop(finished);
        });
    }
    drop(listener);
    drop(draining);
    drop(finished);
    done.closed().await;
}

/// Serves one connection until it closes, or until the server drains (then the
/// request in progress finishes first).
async fn connection(
    accepted: Accepted,
    router: Router,
    protocol: Protocol,
    drain: watch::Sender<()>,
) {
    let Accepted { stream, peer, slot } = accepted;
    // Answers are small and each is written once: send them at once rather than let
    // Nagle's algorithm hold them for the client's delayed ACK (a 40 ms stall).
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %fanout_config::error_chain(&e), "setting TCP_NODELAY failed");
    }
    match &protocol.tls {
        None => http(stream, router, &protocol.http, &drain).await,
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(protocol.handshake_timeout, acceptor.accept(stream));
            let tls = tokio::select! {
                tls = handshake => tls,
                () = drain.closed() => return,
            };
            match tls {
                Ok(Ok(tls)) => http(tls, router, &protocol.http, &drain).await,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %fanout_config::error_chain(&e), "TLS handshake failed")
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake not finished within the header read timeout")
                }
            }
        }
    }
    drop(slot);
}

async fn http<I>(io: I, router: Router, http: &http1::Builder, drain: &watch::Sender<()>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    let mut conn = pin!(http.serve_connection(TokioIo::new(io), service));
    let mut draining = pin!(drain.closed());
    let mut drained = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                // A client that went away, or a header read timeout: nothing to tell.
                if let Err(e) = served {
                    tracing::debug!(error = %fanout_config::error_chain(&e), "connection ended");
                }
                return;
            }
            () = &mut draining, if !drained => {
                drained = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn request_tracing_is_on_only_when_the_log_filter_keeps_some_of_it() {
        let with = |filter: &str| {
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .finish();
            tracing::subscriber::with_default(subscriber, request_tracing_enabled)
        };
        assert!(!with("info"));
        assert!(!with("debug,tower_http=info"));
        assert!(with("debug"));
        assert!(with("info,tower_http=debug"));
        assert!(with("info,tower_http::trace::on_failure=debug"));
    }

    /// A burst of connections larger than Tokio's default backlog (128) all complete
    /// their handshake while the gateway is too busy to accept them: none has its SYN
    /// dropped and waits a second to retry.
    #[tokio::test]
    async fn a_burst_of_connections_fits_in_the_listen_queue() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), "listen").unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = (0..400).map(|_| tokio::net::TcpStream::connect(addr));
        // A dropped SYN is retried after 1 s; the whole burst takes milliseconds.
        let connected = tokio::time::timeout(
            Duration::from_millis(900),
            futures::future::try_join_all(connects),
        )
        .await
        .expect("some connections waited for a SYN retry: the listen queue overflowed")
        .unwrap();
        assert_eq!(connected.len(), 400);
        drop(listener);
    }
}
