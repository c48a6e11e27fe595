//! An OAuth 2.0 token endpoint for tests: the client credentials grant (RFC 6749
//! section 4.4) for one client, which may authenticate with HTTP Basic or in the form
//! body. It issues `token-1`, `token-2`, ... (each request gets the next), records
//! every request, and can be told to fail.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use url::form_urlencoded;

use crate::pki::Issued;

/// One token request as the endpoint saw it.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// The form parameters, client credentials left out.
    pub form: Vec<(String, String)>,
    /// `basic`, `post`, or `none` when the client did not authenticate.
    pub client_authentication: &'static str,
    /// Whether the client's credentials were right.
    pub authenticated: bool,
    /// The token issued, if one was.
    pub issued: Option<String>,
}

impl TokenRequest {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

struct State {
    client_id: String,
    client_secret: String,
    expires_in: Option<u64>,
    /// Statuses answered, in order, before issuing again.
    failures: VecDeque<u16>,
    requests: Vec<TokenRequest>,
}

pub struct TokenServer {
    addr: SocketAddr,
    https: bool,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

impl TokenServer {
    /// Plain HTTP on 127.0.0.1, for `client_id` / `client_secret`, tokens valid for
    /// `expires_in` seconds (not said when `None`).
    pub async fn start(
        client_id: &str,
        client_secret: &str,
        expires_in: Option<u64>,
    ) -> anyhow::Result<TokenServer> {
        Self::listen(
            "127.0.0.1".parse()?,
            None,
            client_id,
            client_secret,
            expires_in,
        )
        .await
    }

    /// HTTPS on `host` with `certificate` (which must name `host`).
    pub async fn start_https(
        host: IpAddr,
        certificate: &Issued,
        client_id: &str,
        client_secret: &str,
        expires_in: Option<u64>,
    ) -> anyhow::Result<TokenServer> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = vec![CertificateDer::from_pem_slice(
            certificate.certificate_pem.as_bytes(),
        )?];
        let key = PrivateKeyDer::from_pem_slice(certificate.private_key_pem.as_bytes())?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tls = TlsAcceptor::from(Arc::new(config));
        Self::listen(host, Some(tls), client_id, client_secret, expires_in).await
    }

    async fn listen(
        host: IpAddr,
        tls: Option<TlsAcceptor>,
        client_id: &str,
        client_secret: &str,
        expires_in: Option<u64>,
    ) -> anyhow::Result<TokenServer> {
        let listener = TcpListener::bind((host, 0)).await?;
        let server = TokenServer {
            addr: listener.local_addr()?,
            https: tls.is_some(),
            state: Arc::new(Mutex::new(State {
                client_id: client_id.to_string(),
                client_secret: client_secret.to_string(),
                expires_in,
                failures: VecDeque::new(),
                requests: Vec::new(),
            })),
            stop: CancellationToken::new(),
        };
        let (state, stop) = (server.state.clone(), server.stop.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    _ = stop.cancelled() => return,
                };
                let (state, tls) = (state.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |r| answer(state.clone(), r));
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    }
                });
            }
        });
        Ok(server)
    }

    /// The token endpoint's URL.
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}/oauth/token", self.addr)
    }

    /// The next `statuses.len()` requests are answered with these statuses (and an
    /// OAuth error body) instead of a token.
    pub fn fail_next(&self, statuses: impl IntoIterator<Item = u16>) {
        self.lock().failures.extend(statuses);
    }

    pub fn requests(&self) -> Vec<TokenRequest> {
        self.lock().requests.clone()
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter_map(|r| r.issued)
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn answer(
    state: Arc<Mutex<State>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let basic = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|pair| {
            let (id, secret) = pair.split_once(':')?;
            let decode = |s: &str| {
                form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
            };
            Some((decode(id)?, decode(secret)?))
        });
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let take = |form: &mut Vec<(String, String)>, name: &str| {
        let at = form.iter().position(|(k, _)| k == name)?;
        Some(form.remove(at).1)
    };
    let posted = match (
        take(&mut form, "client_id"),
        take(&mut form, "client_secret"),
    ) {
        (Some(id), Some(secret)) => Some((id, secret)),
        _ => None,
    };
    let mut s = state.lock().unwrap();
    let (method, credentials) = match (basic, posted) {
        (Some(c), None) => ("basic", Some(c)),
        (None, Some(c)) => ("post", Some(c)),
        _ => ("none", None),
    };
    let authenticated =
        credentials.is_some_and(|(id, secret)| id == s.client_id && secret == s.client_secret);
    let grant_ok = form
        .iter()
        .any(|(k, v)| k == "grant_type" && v == "client_credentials");
    let json = |status: u16, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("cache-control", "no-store")
            .body(Full::new(Bytes::from(body)))
            .expect("valid response")
    };
    let (response, issued) = if !authenticated {
        let body =
            r#"{"error":"invalid_client","error_description":"unknown client or wrong secret"}"#;
        (json(401, body.into()), None)
    } else if !grant_ok {
        (
            json(400, r#"{"error":"unsupported_grant_type"}"#.into()),
            None,
        )
    } else if let Some(status) = s.failures.pop_front() {
        (
            json(status, r#"{"error":"temporarily_unavailable"}"#.into()),
            None,
        )
    } else {
        let token = format!(
            "token-{}",
            s.requests.iter().filter(|r| r.issued.is_some()).count() + 1
        );
        let expires = s
            .expires_in
            .map_or_else(String::new, |e| format!(r#","expires_in":{e}"#));
        let body = format!(r#"{{"access_token":"{token}","token_type":"Bearer"{expires}}}"#);
        (json(200, body), Some(token))
    };
    s.requests.push(TokenRequest {
        form,
        client_authentication: method,
        authenticated,
        issued,
    });
    Ok(response)
}
