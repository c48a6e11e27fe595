//! One target's HTTP client: sends a request over a pooled connection (a new one when
//! none is free), reads the answer's body up to a limit, and holds the whole attempt
//! to the target's timeout. Redirects are answers: nothing here follows them.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use fanout_config::egress::{EgressPolicy, Refusal};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::body::read_limited;
use super::connect::{self, ConnectError, Fresh, Http1, Http2};
use super::h1;
use super::origin::{Origin, OriginError, Security};
use super::outbound::Outbound;
use super::pool::Pool;

/// How long a connection may sit unused before it is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Connecting gets at most this long, even when the target's timeout is longer.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a target is reached.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// The whole attempt: connecting, sending, the answer and its body.
    pub timeout: Duration,
    /// Idle connections kept; more than the requests that can be in flight at once
    /// would never be used.
    pub max_idle: usize,
    /// Where new connections may go: checked per connection, not per request.
    pub egress: Arc<EgressPolicy>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("url")]
    Origin(#[from] OriginError),
    #[error("TLS settings")]
    Tls(#[source] rustls::Error),
}

/// Why no answer came back.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Connect(ConnectError),
    #[error("sending the request")]
    Request(#[source] ExchangeError),
    #[error("reading the response body")]
    Body(#[source] ExchangeError),
}

/// What failed in an exchange, by protocol.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Http1(h1::Error),
    #[error(transparent)]
    Http2(hyper::Error),
}

impl SendError {
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            SendError::Timeout(_) | SendError::Connect(ConnectError::Timeout(_))
        )
    }

    /// Why the egress policy refused the connection, when it did: then nothing was
    /// sent.
    pub fn egress_refusal(&self) -> Option<&Refusal> {
        match self {
            SendError::Connect(ConnectError::Egress(refusal)) => Some(refusal),
            _ => None,
        }
    }
}

/// The answer to one request.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body's start, or why it could not be read (the status still stands).
    pub body: Result<Vec<u8>, SendError>,
}

pub struct HttpClient {
    origin: Origin,
    tls: Option<tokio_rustls::TlsConnector>,
    pool: Arc<Pool<Http1, Http2>>,
    timeout: Duration,
    egress: Arc<EgressPolicy>,
}

impl HttpClient {
    /// A client for `url`. `tls` holds the TLS settings that https targets share: built
    /// here ([`connect::tls_config`]) when the first one needs them. Must be called
    /// within the Tokio runtime: idle connections are swept by a task.
    pub fn new(
        url: &str,
        settings: &ClientSettings,
        tls: &mut Option<Arc<rustls::ClientConfig>>,
    ) -> Result<HttpClient, ClientError> {
        let origin = Origin::parse(url)?;
        let tls = match origin.security {
            Security::Plain => None,
            Security::Tls => Some(match tls {
                Some(config) => config.clone(),
                None => tls
                    .insert(connect::tls_config().map_err(ClientError::Tls)?)
                    .clone(),
            }),
        };
        let pool = Arc::new(Pool::new(settings.max_idle, IDLE_TIMEOUT));
        tokio::spawn(sweep(Arc::downgrade(&pool)));
        Ok(HttpClient {
            origin,
            tls: tls.map(tokio_rustls::TlsConnector::from),
            pool,
            timeout: settings.timeout,
            egress: settings.egress.clone(),
        })
    }

    /// What the egress policy refuses of this target before any lookup: an address
    /// URL it refuses, or a denied host name. Names are checked per connection.
    pub fn refused_without_lookup(&self) -> Option<Refusal> {
        connect::refused_without_lookup(&self.origin, &self.egress)
    }

    /// Sends `request` (its URI and `Host` are the target's) and reads up to
    /// `body_limit(status)` bytes of the answer's body.
    pub async fn send(
        &self,
        request: impl Outbound,
        body_limit: impl FnOnce(StatusCode) -> usize,
    ) -> Result<Response, SendError> {
        let deadline = Instant::now() + self.timeout;
        let answer = tokio::time::timeout_at(deadline, self.exchange(&request))
            .await
            .map_err(|_| SendError::Timeout(self.timeout))??;
        match answer {
            Answer::Http1(head, mut connection) => {
                let limit = body_limit(head.status);
                let body =
                    match tokio::time::timeout_at(deadline, connection.read_body(&head, limit))
                        .await
                    {
                        Ok(Ok(limited)) => {
                            if connection.is_reusable() {
                                self.pool.put_idle(connection, std::time::Instant::now());
                            }
                            Ok(limited.bytes)
                        }
                        Ok(Err(error)) => Err(SendError::Body(ExchangeError::Http1(error))),
                        Err(_) => Err(SendError::Timeout(self.timeout)),
                    };
                Ok(Response {
                    status: head.status,
                    headers: head.headers,
                    body,
                })
            }
            Answer::Http2(response) => {
                let (head, mut body) = response.into_parts();
                let limit = body_limit(head.status);
                let body =
                    match tokio::time::timeout_at(deadline, read_limited(&mut body, limit)).await {
                        Ok(Ok(limited)) => Ok(limited.bytes),
                        Ok(Err(error)) => Err(SendError::Body(ExchangeError::Http2(error))),
                        Err(_) => Err(SendError::Timeout(self.timeout)),
                    };
                Ok(Response {
                    status: head.status,
                    headers: head.headers,
                    body,
                })
            }
        }
    }

    /// `request` as hyper's HTTP/2 client takes it: the target's URI and `Host`.
    fn for_http2(&self, request: &impl Outbound) -> Request<Full<Bytes>> {
        let mut request = request.to_request();
        *request.uri_mut() = self.origin.absolute.clone();
        request
            .headers_mut()
            .insert(http::header::HOST, self.origin.host_header.clone());
        request
    }

    /// Idle HTTP/1.1 connections in the pool (for tests and diagnostics).
    pub fn idle_connections(&self) -> usize {
        self.pool.idle_count()
    }

    /// Sends the request and gets the answer's head: over the shared HTTP/2
    /// connection, a kept-alive HTTP/1.1 one, or a new one.
    async fn exchange(&self, request: &impl Outbound) -> Result<Answer, SendError> {
        if let Some(mut shared) = self.pool.shared() {
            match shared.try_send_request(self.for_http2(request)).await {
                Ok(response) => return Ok(Answer::Http2(response)),
                // It closed before taking the request: open a new one below.
                Err(mut error) => {
                    if error.take_message().is_none() {
                        return Err(SendError::Request(ExchangeError::Http2(error.into_error())));
                    }
                }
            }
        }
        let target = self.origin.target();
        let host = &self.origin.host_header;
        while let Some(mut idle) = self.pool.take_idle(std::time::Instant::now()) {
            match idle.send(target, host, request).await {
                Ok(head) => return Ok(Answer::Http1(head, idle)),
                // The peer closed it while it was idle and the request could not be
                // written: another connection may carry it.
                Err(h1::Error::Write(_)) => continue,
                Err(error) => return Err(SendError::Request(ExchangeError::Http1(error))),
            }
        }
        let connect_timeout = self.timeout.min(MAX_CONNECT_TIMEOUT);
        // Boxed: connecting (DNS, TCP, TLS) needs a large future and happens rarely;
        // unboxed it would make every request's future that large, and every
        // delivery pays for moving it (docs/benchmarks.md).
        match Box::pin(connect::connect(
            &self.origin,
            self.tls.as_ref(),
            &self.egress,
            connect_timeout,
        ))
        .await
        .map_err(SendError::Connect)?
        {
            Fresh::Http1(mut connection) => {
                let head = connection
                    .send(target, host, request)
                    .await
                    .map_err(|e| SendError::Request(ExchangeError::Http1(e)))?;
                Ok(Answer::Http1(head, connection))
            }
            Fresh::Http2(mut connection) => {
                // Requests that found no connection at the same moment may each open
                // one; the last stays shared, the others close when their answer is in.
                self.pool.set_shared(connection.clone());
                let response = connection
                    .send_request(self.for_http2(request))
                    .await
                    .map_err(|e| SendError::Request(ExchangeError::Http2(e)))?;
                Ok(Answer::Http2(response))
            }
        }
    }
}

/// An answer's head, with what its body is read from.
enum Answer {
    /// The connection, to read the body from and pool again.
    Http1(h1::Head, Http1),
    Http2(http::Response<Incoming>),
}

/// Closes idle connections past their time even when no request comes to do it;
/// ends with the client.
async fn sweep(pool: Weak<Pool<Http1, Http2>>) {
    let mut every = tokio::time::interval(IDLE_TIMEOUT / 3);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.evict_expired(std::time::Instant::now()),
            None => return,
        }
    }
}
