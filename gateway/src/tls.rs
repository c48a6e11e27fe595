//! TLS on the events port. The certificate chain and key are files, in Kubernetes a
//! Secret mounted as a volume, which the kubelet updates in place when the Secret
//! changes (cert-manager renewing it, say). They are re-read periodically: a changed
//! pair that loads is used for every new handshake, while open connections keep the
//! session they have; a pair that does not load (half-written, key and certificate
//! not matching) leaves the previous one in use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::metrics::Metrics;
use crate::shard::Phase;

/// Why a certificate and key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate (-----BEGIN CERTIFICATE-----) in the file")]
    NoCertificate { path: PathBuf },
    #[error("{path}: not a PEM certificate chain")]
    Certificate {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error("{path}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file")]
    Key {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error("the key in {key} cannot serve the certificate in {cert}")]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// The certificate the events port serves, re-read from its files.
pub struct Certificates {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Loaded>,
}

/// A pair in use, and the file contents it came from (to notice a change).
struct Loaded {
    key: Arc<CertifiedKey>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

// By hand: the derived one would print the private key's PEM.
impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl Certificates {
    /// Loads the pair, failing with the file named.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Arc<Certificates>, TlsError> {
        let (cert_pem, key_pem) = read_pair(cert_file, key_file)?;
        let key = certified_key(cert_file, &cert_pem, key_file, &key_pem)?;
        Ok(Arc::new(Certificates {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: RwLock::new(Loaded {
                key: Arc::new(key),
                cert_pem,
                key_pem,
            }),
        }))
    }

    /// Re-reads the files: `Ok(true)` when they changed and the new pair is served
    /// from now on, `Ok(false)` when they did not change.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (cert_pem, key_pem) = read_pair(&self.cert_file, &self.key_file)?;
        {
            let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
            if current.cert_pem == cert_pem && current.key_pem == key_pem {
                return Ok(false);
            }
        }
        let key = certified_key(&self.cert_file, &cert_pem, &self.key_file, &key_pem)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Loaded {
            key: Arc::new(key),
            cert_pem,
            key_pem,
        };
        Ok(true)
    }

    /// How new connections are accepted: TLS 1.2 and 1.3 with rustls' safe defaults,
    /// HTTP/1.1 by ALPN, the current certificate at each handshake.
    pub fn acceptor(self: &Arc<Self>) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // One read lock per handshake, never per request.
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        Some(current.key.clone())
    }
}

fn read_pair(cert_file: &Path, key_file: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    Ok((read(cert_file)?, read(key_file)?))
}

fn certified_key(
    cert_file: &Path,
    cert_pem: &[u8],
    key_file: &Path,
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Certificate {
            path: cert_file.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_file.to_path_buf(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| TlsError::Key {
        path: key_file.to_path_buf(),
        source,
    })?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(|source| TlsError::Unusable {
        cert: cert_file.to_path_buf(),
        key: key_file.to_path_buf(),
        source,
    })
}

/// Re-reads the files every `interval` until the gateway stops serving.
pub async fn watch_files(
    certificates: Arc<Certificates>,
    interval: Duration,
    metrics: Arc<Metrics>,
    mut phase: watch::Receiver<Phase>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate; the pair is fresh
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = phase.wait_for(|phase| *phase != Phase::Serve) => return,
        }
        let certs = certificates.clone();
        match tokio::task::spawn_blocking(move || certs.reload()).await {
            Ok(Ok(changed)) => {
                last_error = None;
                if changed {
                    tracing::info!(cert = %certificates.cert_file.display(), "TLS certificate changed; new connections get the new one");
                    metrics.tls_reload(true);
                }
            }
            Ok(Err(e)) => {
                let message = fanout_config::error_chain(&e);
                // Once per distinct error: the kubelet may be half-way through an
                // update, and the next poll then sees the whole pair.
                if last_error.as_deref() != Some(message.as_str()) {
                    tracing::warn!(error = %message, "TLS certificate or key did not load; still serving the previous one");
                    metrics.tls_reload(false);
                    last_error = Some(message);
                }
            }
            Err(e) => {
                tracing::error!(error = %fanout_config::error_chain(&e), "TLS reload task failed")
            }
        }
    }
}
