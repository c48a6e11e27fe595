//! Reading the rendered route configuration and the credential files it points at.
//! Anything that cannot work fails here, before a single event is consumed, with a
//! message that names the field.

use std::path::{Path, PathBuf};

use base64::Engine;
use fanout_config::{RouteConfig, TargetConfig};
use http::{HeaderName, HeaderValue};

use crate::http::tls::{self, TlsFileError};
use crate::oauth2::{Grant, Redacted};
use crate::request::Auth;
use crate::signing::{InvalidSigningSecret, SigningKey};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading the route configuration {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing the route configuration {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("the route configuration {path} has no targets")]
    NoTargets { path: PathBuf },
    #[error("targets[{target}].{field}: reading {path}")]
    Credential {
        target: String,
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("targets[{target}].{field}: {path} holds a value that is not valid in an HTTP header")]
    CredentialValue {
        target: String,
        field: &'static str,
        path: PathBuf,
    },
    #[error("targets[{target}].credentials.signingSecretFile")]
    SigningSecret {
        target: String,
        #[source]
        source: InvalidSigningSecret,
    },
    #[error("targets[{target}].credentials.header.name: {name:?} is not a valid header name")]
    HeaderName { target: String, name: String },
    #[error("targets[{target}].{field}")]
    Tls {
        target: String,
        field: &'static str,
        /// Boxed: it is large, and rare.
        #[source]
        source: Box<TlsFileError>,
    },
    #[error(
        "targets[{target}].credentials.tls: a client certificate or CA bundle needs an https:// url, not {url}"
    )]
    TlsWithoutHttps { target: String, url: String },
}

/// Reads a rendered [`RouteConfig`] (YAML or JSON).
pub fn route_config(path: &Path) -> Result<RouteConfig, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let config: RouteConfig =
        serde_yaml_ng::from_str(&text).map_err(|source| LoadError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
    if config.targets.is_empty() {
        return Err(LoadError::NoTargets {
            path: path.to_path_buf(),
        });
    }
    Ok(config)
}

/// Reads a target's credentials from their files.
pub fn auth(target: &TargetConfig) -> Result<Auth, LoadError> {
    let creds = &target.credentials;
    let read = |field: &'static str, path: &Path| {
        std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|source| LoadError::Credential {
                target: target.name.clone(),
                field,
                path: path.to_path_buf(),
                source,
            })
    };
    let sensitive = |field: &'static str, path: &Path, value: String| {
        let mut header = HeaderValue::from_str(&value).map_err(|_| LoadError::CredentialValue {
            target: target.name.clone(),
            field,
            path: path.to_path_buf(),
        })?;
        // Keeps the value out of Debug output and HTTP/2 header compression tables.
        header.set_sensitive(true);
        Ok(header)
    };

    let mut authorization = None;
    if let Some(path) = &creds.bearer_token_file {
        let field = "credentials.bearerTokenFile";
        let token = read(field, path)?;
        authorization = Some(sensitive(field, path, format!("Bearer {token}"))?);
    }
    if let Some(basic) = &creds.basic {
        let user = read("credentials.basic.usernameFile", &basic.username_file)?;
        let password = read("credentials.basic.passwordFile", &basic.password_file)?;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        authorization = Some(sensitive(
            "credentials.basic.passwordFile",
            &basic.password_file,
            format!("Basic {encoded}"),
        )?);
    }
    let signing = match &creds.signing_secret_file {
        Some(path) => Some(
            SigningKey::parse(&read("credentials.signingSecretFile", path)?).map_err(|source| {
                LoadError::SigningSecret {
                    target: target.name.clone(),
                    source,
                }
            })?,
        ),
        None => None,
    };
    let header = match &creds.header {
        Some(h) => {
            let field = "credentials.header.valueFile";
            let name =
                HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| LoadError::HeaderName {
                    target: target.name.clone(),
                    name: h.name.clone(),
                })?;
            let value = sensitive(field, &h.value_file, read(field, &h.value_file)?)?;
            Some((name, value))
        }
        None => None,
    };
    let tls_error = |field| {
        move |source| LoadError::Tls {
            target: target.name.clone(),
            field,
            source: Box::new(source),
        }
    };
    let tls = match &creds.tls {
        Some(files) => {
            if !target
                .policy
                .url
                .to_ascii_lowercase()
                .starts_with("https://")
            {
                return Err(LoadError::TlsWithoutHttps {
                    target: target.name.clone(),
                    url: target.policy.url.clone(),
                });
            }
            Some(tls::from_files(files).map_err(tls_error("credentials.tls"))?)
        }
        None => None,
    };
    let oauth2 = match &creds.oauth2 {
        Some(o) => {
            let tls = match &o.ca_bundle_file {
                Some(path) => {
                    let files = fanout_config::route::TlsFiles {
                        client_certificate: None,
                        ca_bundle_file: Some(path.clone()),
                    };
                    Some(
                        tls::from_files(&files)
                            .map_err(tls_error("credentials.oauth2.caBundleFile"))?,
                    )
                }
                None => None,
            };
            Some(Grant {
                token_url: o.token_url.clone(),
                client_id: read("credentials.oauth2.clientIdFile", &o.client_id_file)?,
                client_secret: Redacted::new(read(
                    "credentials.oauth2.clientSecretFile",
                    &o.client_secret_file,
                )?),
                scopes: o.scopes.clone(),
                audience: o.audience.clone(),
                client_authentication: o.client_authentication,
                tls,
            })
        }
        None => None,
    };
    Ok(Auth {
        authorization,
        header,
        signing,
        tls,
        oauth2,
    })
}
