//! OAuth 2.0 client credentials: a target's requests carry an access token from its
//! authorization server, fetched when first needed, kept until shortly before it
//! expires, and fetched again once when the target refuses it (401).
//!
//! - [`cache`]: the token shared by a target's requests; one fetch at a time.
//! - [`endpoint`]: the token request and what its answer means.

pub mod cache;
pub mod endpoint;

use std::sync::Arc;

use fanout_config::route::ClientAuthentication;
use http::HeaderValue;

use crate::http::{ClientError, ClientSettings};
use cache::TokenCache;
pub use endpoint::{TokenEndpoint, TokenError};

/// The grant as configured, its Secret values read.
#[derive(Clone, Debug)]
pub struct Grant {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Redacted,
    pub scopes: Vec<String>,
    pub audience: Option<String>,
    pub client_authentication: ClientAuthentication,
    /// The token endpoint's own CA bundle; `None`: the platform's trust store.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// A secret that never shows in Debug output or logs.
#[derive(Clone)]
pub struct Redacted(String);

impl Redacted {
    pub fn new(secret: String) -> Redacted {
        Redacted(secret)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A failed fetch, shared by every request that waited for it.
pub type SharedTokenError = Arc<TokenError>;

/// One target's access tokens.
pub struct TokenSource {
    endpoint: TokenEndpoint,
    cache: TokenCache<SharedTokenError>,
    /// For log lines.
    target: String,
}

impl TokenSource {
    /// Must be called within the Tokio runtime. The target's client `settings` bound
    /// each token request and say where it may connect: the token endpoint is
    /// checked against the egress policy like the target (the client secret goes
    /// there).
    pub fn new(
        target: &str,
        grant: &Grant,
        settings: &ClientSettings,
        shared_tls: &mut Option<Arc<rustls::ClientConfig>>,
    ) -> Result<TokenSource, ClientError> {
        Ok(TokenSource {
            endpoint: TokenEndpoint::new(grant, settings, shared_tls)?,
            cache: TokenCache::default(),
            target: target.to_string(),
        })
    }

    /// The `Authorization` value for the next request.
    pub async fn authorization(&self) -> Result<HeaderValue, SharedTokenError> {
        self.cache.get(None, || self.fetch()).await
    }

    /// A new `Authorization` value after the target refused `rejected`; other
    /// requests refused with the same token share the one new fetch.
    pub async fn replace(&self, rejected: &HeaderValue) -> Result<HeaderValue, SharedTokenError> {
        self.cache.get(Some(rejected), || self.fetch()).await
    }

    async fn fetch(&self) -> Result<cache::Token, SharedTokenError> {
        match self.endpoint.fetch().await {
            Ok(token) => {
                tracing::debug!(target = %self.target, lifetime = ?token.lifetime, "obtained an access token");
                Ok(token)
            }
            Err(error) => {
                tracing::warn!(target = %self.target, error = %fanout_config::error_chain(&error), "no access token");
                Err(Arc::new(error))
            }
        }
    }
}
