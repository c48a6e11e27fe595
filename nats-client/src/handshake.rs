//! Connecting to one NATS server: TCP, the server's `INFO`, TLS when either side
//! requires it, `CONNECT` with the credentials, and a `PING` whose `PONG` says the
//! server accepted them.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::credentials::{Auth, CredentialsError, Proof};
use crate::protocol::{self, Info, ProtocolError, ServerOp};

/// A connection to a server, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// One server of `--nats-url`, or one the cluster announced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub host: String,
    pub port: u16,
    /// `tls://`: TLS even if the server does not ask for it.
    pub tls: bool,
    /// A user and password in the URL (`nats://user:pass@host`).
    user: Option<(String, String)>,
}

impl Server {
    /// Reads `nats://[user:pass@]host[:port]`, `tls://…` or `host[:port]`.
    pub fn parse(url: &str) -> Result<Server, UrlError> {
        let invalid = |why: &'static str| UrlError {
            url: redacted(url),
            why,
        };
        let (tls, rest) = match url.split_once("://") {
            Some(("nats", rest)) => (false, rest),
            Some(("tls", rest)) => (true, rest),
            Some(_) => return Err(invalid("the scheme must be nats:// or tls://")),
            None => (false, url),
        };
        let rest = rest.trim_end_matches('/');
        let (user, address) = match rest.rsplit_once('@') {
            Some((userinfo, address)) => {
                let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (Some((user.to_string(), pass.to_string())), address)
            }
            None => (None, rest),
        };
        let (host, port) = if let Some(bracketed) = address.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| invalid("an IPv6 address lacks its closing bracket"))?;
            (host, after.strip_prefix(':'))
        } else {
            match address.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (address, None),
            }
        };
        if host.is_empty() || host.contains('/') {
            return Err(invalid("it has no host"));
        }
        let port = match port {
            Some(port) => port
                .parse()
                .map_err(|_| invalid("the port is not a number"))?,
            None => 4222,
        };
        Ok(Server {
            host: host.to_string(),
            port,
            tls,
            user,
        })
    }
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "tls" } else { "nats" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// URLs (one, or a comma-separated list) without the passwords they may carry, for
/// errors and logs.
pub fn redacted(urls: &str) -> String {
    urls.split(',')
        .map(redacted_one)
        .collect::<Vec<_>>()
        .join(",")
}

fn redacted_one(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        (None, Some(at)) => format!("***@{}", &url[at + 1..]),
        _ => url.to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("--nats-url has an unusable URL {url:?}: {why}")]
pub struct UrlError {
    url: String,
    why: &'static str,
}

/// How to connect: who the client is, and whom it trusts.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The connection's name, shown in the server's monitoring.
    pub name: String,
    pub auth: Auth,
    /// TLS towards every server (a CA was given), or only towards those that ask.
    pub tls: Tls,
    /// For TCP, TLS and the server's answer to `CONNECT` together.
    pub timeout: Duration,
}

#[derive(Clone)]
pub enum Tls {
    /// Trust the CA given (`--nats-ca-file`), and require TLS of every server.
    Required(Arc<rustls::ClientConfig>),
    /// TLS only with a server that requires it or a `tls://` URL, trusting the
    /// system's roots.
    IfAsked,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tls::Required(_) => "Required",
            Tls::IfAsked => "IfAsked",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("connecting to {server}")]
    Connect {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{server} did not finish the handshake within {timeout:?}")]
    TimedOut { server: String, timeout: Duration },
    #[error("{server} closed the connection during the handshake")]
    Closed { server: String },
    #[error("{server} broke the protocol during the handshake")]
    Protocol {
        server: String,
        #[source]
        source: ProtocolError,
    },
    #[error("{server} does not offer TLS, and --nats-ca-file requires it")]
    NoTls { server: String },
    #[error("{server} requires TLS")]
    TlsSettings {
        server: String,
        #[source]
        source: rustls::Error,
    },
    #[error("the TLS handshake with {server} failed")]
    Tls {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{server} does not support message headers (NATS 2.2 or later is needed)")]
    NoHeaders { server: String },
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("{server} refused the connection: {reason}")]
    Refused { server: String, reason: String },
}

/// A connection that has passed the handshake.
pub struct Connected {
    pub stream: Box<dyn Io>,
    pub info: Info,
    /// What the server sent after its `PONG`.
    pub read: BytesMut,
}

#[derive(Serialize)]
struct Connect<'a> {
    verbose: bool,
    pedantic: bool,
    tls_required: bool,
    name: &'a str,
    lang: &'static str,
    version: &'static str,
    protocol: u8,
    echo: bool,
    headers: bool,
    no_responders: bool,
    #[serde(flatten)]
    proof: Proof,
}

/// Connects to `server` and subscribes `subscribe` (`SUB <subject> <sid>`).
pub async fn connect(
    server: &Server,
    settings: &Settings,
    subscribe: &[u8],
) -> Result<Connected, HandshakeError> {
    let name = server.to_string();
    match tokio::time::timeout(settings.timeout, handshake(server, settings, subscribe)).await {
        Ok(result) => result,
        Err(_) => Err(HandshakeError::TimedOut {
            server: name,
            timeout: settings.timeout,
        }),
    }
}

async fn handshake(
    server: &Server,
    settings: &Settings,
    subscribe: &[u8],
) -> Result<Connected, HandshakeError> {
    let name = server.to_string();
    let tcp = TcpStream::connect((server.host.as_str(), server.port))
        .await
        .map_err(|source| HandshakeError::Connect {
            server: name.clone(),
            source,
        })?;
    // Publishes are written a batch per turn of the runtime: no reason to delay them.
    let _ = tcp.set_nodelay(true);
    let mut stream: Box<dyn Io> = Box::new(tcp);
    let mut read = BytesMut::with_capacity(16 * 1024);
    let info = match next_op(&mut stream, &mut read, &name).await? {
        ServerOp::Info(text) => text.parse().map_err(|source| HandshakeError::Protocol {
            server: name.clone(),
            source,
        })?,
        other => {
            return Err(HandshakeError::Refused {
                server: name,
                reason: format!("it sent {other:?} before INFO"),
            });
        }
    };
    if !info.headers {
        return Err(HandshakeError::NoHeaders { server: name });
    }
    let config = match &settings.tls {
        Tls::Required(config) if info.tls_required || info.tls_available => Some(config.clone()),
        Tls::Required(_) => return Err(HandshakeError::NoTls { server: name }),
        Tls::IfAsked if info.tls_required || server.tls => Some(system_roots().map_err(
            |source| HandshakeError::TlsSettings {
                server: name.clone(),
                source,
            },
        )?),
        Tls::IfAsked => None,
    };
    let tls = config.is_some();
    if let Some(config) = config {
        let server_name =
            ServerName::try_from(server.host.clone()).map_err(|_| HandshakeError::Refused {
                server: name.clone(),
                reason: "its host is not a valid TLS server name".into(),
            })?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(server_name, stream)
            .await
            .map_err(|source| HandshakeError::Tls {
                server: name.clone(),
                source,
            })?;
        stream = Box::new(tls);
    }
    let mut proof = settings.auth.prove(info.nonce.as_deref())?;
    if let Some((user, pass)) = &server.user {
        proof.user = Some(user.clone());
        proof.pass = Some(pass.clone());
    }
    let connect = Connect {
        verbose: false,
        pedantic: false,
        tls_required: tls,
        name: &settings.name,
        lang: "rust",
        version: env!("CARGO_PKG_VERSION"),
        protocol: 1,
        echo: false,
        headers: true,
        no_responders: true,
        proof,
    };
    let mut hello = b"CONNECT ".to_vec();
    serde_json::to_writer(&mut hello, &connect).expect("CONNECT serializes");
    hello.extend_from_slice(b"\r\nPING\r\n");
    write(&mut stream, &hello, &name).await?;
    loop {
        match next_op(&mut stream, &mut read, &name).await? {
            ServerOp::Pong => break,
            ServerOp::Err(reason) => {
                return Err(HandshakeError::Refused {
                    server: name,
                    reason,
                });
            }
            ServerOp::Ping => write(&mut stream, b"PONG\r\n", &name).await?,
            ServerOp::Ok | ServerOp::Info(_) | ServerOp::Msg(_) => {}
        }
    }
    write(&mut stream, subscribe, &name).await?;
    Ok(Connected { stream, info, read })
}

async fn next_op(
    stream: &mut Box<dyn Io>,
    read: &mut BytesMut,
    server: &str,
) -> Result<ServerOp, HandshakeError> {
    loop {
        let parsed = protocol::parse(read).map_err(|source| HandshakeError::Protocol {
            server: server.to_string(),
            source,
        })?;
        if let Some(op) = parsed {
            return Ok(op);
        }
        let n = stream
            .read_buf(read)
            .await
            .map_err(|source| HandshakeError::Connect {
                server: server.to_string(),
                source,
            })?;
        if n == 0 {
            return Err(HandshakeError::Closed {
                server: server.to_string(),
            });
        }
    }
}

async fn write(stream: &mut Box<dyn Io>, bytes: &[u8], server: &str) -> Result<(), HandshakeError> {
    let result = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    }
    .await;
    result.map_err(|source| HandshakeError::Connect {
        server: server.to_string(),
        source,
    })
}

/// Trusting only `ca_pem`'s certificates.
pub fn trusting(ca_pem: &[u8]) -> Result<rustls::ClientConfig, TlsFileError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem) {
        let certificate = certificate.map_err(TlsFileError::Pem)?;
        roots.add(certificate).map_err(TlsFileError::Certificate)?;
    }
    if roots.is_empty() {
        return Err(TlsFileError::NoCertificate);
    }
    Ok(client_config()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("it is not PEM")]
    Pem(#[source] rustls::pki_types::pem::Error),
    #[error("it holds a certificate that cannot be used as a root")]
    Certificate(#[source] rustls::Error),
    #[error("it holds no certificate")]
    NoCertificate,
}

fn client_config() -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
}

fn system_roots() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    use rustls_platform_verifier::BuilderVerifierExt;
    Ok(Arc::new(
        client_config()
            .with_platform_verifier()?
            .with_no_client_auth(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_as_the_nats_clients_read_them() {
        let server = Server::parse("nats://10.0.0.1:4223").unwrap();
        assert_eq!(
            (server.host.as_str(), server.port, server.tls),
            ("10.0.0.1", 4223, false)
        );
        let server = Server::parse("tls://nats.example").unwrap();
        assert_eq!(
            (server.host.as_str(), server.port, server.tls),
            ("nats.example", 4222, true)
        );
        let server = Server::parse("127.0.0.1:4222").unwrap();
        assert_eq!(server.to_string(), "nats://127.0.0.1:4222");
        let server = Server::parse("nats://[::1]:5000").unwrap();
        assert_eq!((server.host.as_str(), server.port), ("::1", 5000));
        assert_eq!(server.to_string(), "nats://[::1]:5000");
        let server = Server::parse("nats://app:pw@nats:4222").unwrap();
        assert_eq!(server.user, Some(("app".into(), "pw".into())));
        assert_eq!(server.to_string(), "nats://nats:4222");
    }

    #[test]
    fn a_bad_url_is_named_without_its_password() {
        for url in [
            "http://nats:4222",
            "nats://",
            "nats://host:port",
            "nats://[::1",
        ] {
            let error = Server::parse(url).unwrap_err().to_string();
            assert!(error.contains("--nats-url"), "{error}");
        }
        let error = Server::parse("nats://app:hunter2@nats:x")
            .unwrap_err()
            .to_string();
        assert!(!error.contains("hunter2"), "{error}");
        assert!(error.contains("nats://***@nats:x"), "{error}");
        assert_eq!(
            redacted("nats://a:pw1@n1:4222,nats://n2:4222,b:pw2@n3"),
            "nats://***@n1:4222,nats://n2:4222,***@n3"
        );
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused() {
        assert!(matches!(
            trusting(b"not pem"),
            Err(TlsFileError::NoCertificate)
        ));
    }
}
