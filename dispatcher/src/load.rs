//! Reading the rendered route configuration and the credential files it points at.
//! Anything that cannot work fails here, before a single event is consumed, with a
//! message that names the field.

use std::path::{Path, PathBuf};

use base64::Engine;
use fanout_config::{RouteConfig, TargetConfig};
use http::HeaderValue;

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
    Ok(Auth {
        authorization,
        signing,
    })
}
