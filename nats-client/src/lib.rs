//! Fanout's own NATS client, for the paths every event takes: only what those need,
//! with the same authentication and TLS settings as every Fanout process
//! (`--nats-*`). The rest of Fanout (provisioning, key-value buckets, the CLI) uses
//! async-nats.
//!
//! Why not async-nats on these paths: there each publish is a command sent to the
//! connection's task, a header map copied into it, an inbox name and a reply
//! channel made per request, and each message received is parsed into a header
//! map. Written straight into a buffer and read straight from one, the gateway's
//! publish costs about a third less CPU (docs/benchmarks.md, "A publish path of its
//! own").
//!
//! - [`protocol`]: the bytes on the wire.
//! - [`headers`]: a message's headers, kept as the lines they are sent as.
//! - [`credentials`]: token and `.creds` files, the nonce signed.
//! - [`handshake`]: one server: TCP, `INFO`, TLS, `CONNECT`, `SUB`.
//! - [`connection`]: a connection kept up across a cluster's servers, for a
//!   [`connection::Session`] (the gateway's publishes and their replies).
//! - [`pull`]: a JetStream pull consumer, its events read and acknowledged on a
//!   connection of its own.

pub mod connection;
pub mod credentials;
pub mod handshake;
pub mod headers;
pub mod protocol;
pub mod pull;

use std::time::Duration;

use fanout_process::nats::NatsArgs;

pub use handshake::Server;
pub use headers::Headers;

use credentials::{Auth, CredentialsError};
use handshake::{Settings, Tls, TlsFileError, UrlError};

/// How long connecting to one server may take: TCP, TLS and the server's answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the `--nats-*` settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("--nats-url lists no server")]
    NoServer,
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("reading the NATS CA file {path}")]
    CaFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the NATS CA file {path} is unusable")]
    Ca {
        path: std::path::PathBuf,
        #[source]
        source: TlsFileError,
    },
}

/// The servers to connect to and how, from the `--nats-*` flags. Files are read now,
/// so that a missing or broken one stops the process at start.
pub fn settings(args: &NatsArgs, name: &str) -> Result<(Vec<Server>, Settings), SettingsError> {
    let servers = args
        .servers()
        .into_iter()
        .map(Server::parse)
        .collect::<Result<Vec<_>, _>>()?;
    if servers.is_empty() {
        return Err(SettingsError::NoServer);
    }
    let auth = match (&args.credentials_file, &args.token_file) {
        (Some(path), _) => Auth::CredentialsFile(path.clone()),
        (None, Some(path)) => Auth::TokenFile(path.clone()),
        (None, None) => Auth::None,
    };
    auth.check()?;
    let tls = match &args.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| SettingsError::CaFile {
                path: path.clone(),
                source,
            })?;
            let config = handshake::trusting(&pem).map_err(|source| SettingsError::Ca {
                path: path.clone(),
                source,
            })?;
            Tls::Required(std::sync::Arc::new(config))
        }
        None => Tls::IfAsked,
    };
    let settings = Settings {
        name: name.to_string(),
        auth,
        tls,
        timeout: CONNECT_TIMEOUT,
    };
    Ok((servers, settings))
}
