//! Opening a new connection to a target: the egress policy's check of each address
//! (after DNS, so a changed answer is checked too), TCP (no Nagle delay), TLS for
//! https with ALPN offering h2 and http/1.1, then whichever protocol the target
//! chose: HTTP/1.1 on the dispatcher's own connection ([`super::h1`]), which the
//! delivering future drives, or HTTP/2 on hyper's, driven by a task of its own until
//! it closes.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fanout_config::egress::{EgressPolicy, HostRule, Refusal};
use http_body_util::Full;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use tokio::net::TcpStream;

use super::origin::{Host, Origin, Security};

pub use super::h1::Http1;
use super::h1::Io;
pub type Http2 = http2::SendRequest<Full<Bytes>>;

/// A new connection, ready for its first request.
pub enum Fresh {
    Http1(Http1),
    Http2(Http2),
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no connection within {0:?}")]
    Timeout(Duration),
    /// Nothing was sent: the policy refused every address before a connection.
    #[error("connection refused by egress policy")]
    Egress(#[source] Refusal),
    #[error("resolving {host}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {target}")]
    Tcp {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("TLS handshake")]
    Tls(#[source] io::Error),
    #[error("HTTP handshake")]
    Handshake(#[source] hyper::Error),
}

/// The TLS settings every https target without settings of its own uses: the
/// platform's trust store (as reqwest had), ring, and ALPN so a target that speaks
/// HTTP/2 is used over HTTP/2 (see [`super::tls`]).
pub fn tls_config() -> Result<Arc<ClientConfig>, rustls::Error> {
    super::tls::platform()
}

/// h2 first: when the target speaks it, one connection carries every request.
pub fn alpn() -> Vec<Vec<u8>> {
    super::tls::alpn()
}

/// Opens a connection to `origin` within `timeout` (resolving, TCP and TLS
/// handshakes), to an address `egress` allows.
pub async fn connect(
    origin: &Origin,
    tls: Option<&tokio_rustls::TlsConnector>,
    egress: &EgressPolicy,
    timeout: Duration,
) -> Result<Fresh, ConnectError> {
    let tcp = tokio::time::timeout(timeout, async {
        let tcp = tcp(origin, egress).await?;
        match (origin.security, tls, &origin.server_name) {
            (Security::Tls, Some(tls), Some(name)) => {
                let stream = tls
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(ConnectError::Tls)?;
                Ok(Stream::Tls(Box::new(stream)))
            }
            _ => Ok(Stream::Plain(tcp)),
        }
    })
    .await
    .map_err(|_| ConnectError::Timeout(timeout))??;
    match tcp {
        Stream::Plain(tcp) => Ok(Fresh::Http1(Http1::new(Io::Plain(tcp)))),
        Stream::Tls(stream) => {
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            if h2 {
                http2_handshake(*stream).await.map(Fresh::Http2)
            } else {
                Ok(Fresh::Http1(Http1::new(Io::Tls(stream))))
            }
        }
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

async fn tcp(origin: &Origin, egress: &EgressPolicy) -> Result<TcpStream, ConnectError> {
    let target = || format!("{}:{}", origin.host, origin.port);
    let addresses = allowed_addresses(origin, egress).await?;
    // In the resolver's order, as the standard library's connect tries them.
    let mut last = None;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(tcp) => {
                // Requests are written whole; a small one must not wait for a delayed ACK.
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
            Err(error) => last = Some(error),
        }
    }
    Err(ConnectError::Tcp {
        target: target(),
        source: last.unwrap_or_else(|| io::Error::other("the name has no addresses")),
    })
}

/// The addresses of `origin` a connection may go to: its address, or the ones its
/// name resolves to now (resolved on every new connection, so a changed DNS record
/// is followed, and checked), minus those the egress policy refuses. An error when
/// none is left.
pub async fn allowed_addresses(
    origin: &Origin,
    egress: &EgressPolicy,
) -> Result<Vec<SocketAddr>, ConnectError> {
    let name = match &origin.host {
        Host::Ip(ip) => {
            egress
                .check(*ip)
                .map_err(|r| ConnectError::Egress(Refusal::Address(r)))?;
            return Ok(vec![SocketAddr::new(*ip, origin.port)]);
        }
        Host::Name(name) => name,
    };
    let rule = egress.host(name);
    if rule == HostRule::Denied {
        return Err(ConnectError::Egress(Refusal::Host(name.clone())));
    }
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), origin.port))
        .await
        .map_err(|source| ConnectError::Resolve {
            host: name.clone(),
            source,
        })?
        .collect();
    if rule == HostRule::Allowed {
        return Ok(resolved);
    }
    let mut allowed = Vec::with_capacity(resolved.len());
    let mut refused = Vec::new();
    for address in resolved {
        match egress.check(address.ip()) {
            Ok(()) => allowed.push(address),
            Err(refusal) => refused.push(refusal),
        }
    }
    if allowed.is_empty() && !refused.is_empty() {
        return Err(ConnectError::Egress(Refusal::Resolved {
            name: name.clone(),
            refused,
        }));
    }
    if !refused.is_empty() {
        tracing::debug!(host = %name, refused = refused.len(), "skipping addresses the egress policy refuses");
    }
    Ok(allowed)
}

/// What the policy refuses of `origin` without resolving anything: an address host,
/// or a denied host name.
pub fn refused_without_lookup(origin: &Origin, egress: &EgressPolicy) -> Option<Refusal> {
    match &origin.host {
        Host::Ip(ip) => egress.check(*ip).err().map(Refusal::Address),
        Host::Name(name) => {
            (egress.host(name) == HostRule::Denied).then(|| Refusal::Host(name.clone()))
        }
    }
}

async fn http2_handshake<T>(io: T) -> Result<Http2, ConnectError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(io))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(error = %fanout_config::error_chain(&error), "HTTP/2 connection to a target ended");
        }
    });
    Ok(sender)
}
