//! TLS settings of the connections to one server: whose certificates are trusted
//! (the platform's trust store, or a CA bundle of the target's own that replaces it)
//! and which client certificate is presented (mutual TLS). Every setting offers h2
//! and http/1.1 and uses ring, like the settings https targets share.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fanout_config::route::TlsFiles;
use rustls::ClientConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS files cannot be used; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path}: a PEM certificate cannot be read")]
    Certificate {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error("{path}: no PEM private key (PKCS#8, PKCS#1 or SEC1) can be read")]
    PrivateKey {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error("{path}: a certificate of the CA bundle is not usable as a trust anchor")]
    CaCertificate {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("the client certificate {certificate} and private key {key} cannot be used together")]
    ClientCertificate {
        certificate: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS settings")]
    Settings(#[source] rustls::Error),
}

/// The settings that https targets without TLS settings of their own share: the
/// platform's trust store, no client certificate.
pub fn platform() -> Result<Arc<ClientConfig>, rustls::Error> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let mut config = builder()?.with_platform_verifier()?.with_no_client_auth();
    config.alpn_protocols = alpn();
    Ok(Arc::new(config))
}

/// Settings from `files`: the CA bundle (when given) instead of the platform's
/// trust store, and the client certificate (when given). Read once; a rotated
/// Secret reaches a dispatcher pod with the rollout its new version causes.
pub fn from_files(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsFileError> {
    let verifying = match &files.ca_bundle_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in certificates(path)? {
                roots
                    .add(certificate)
                    .map_err(|source| TlsFileError::CaCertificate {
                        path: path.clone(),
                        source,
                    })?;
            }
            builder()
                .map_err(TlsFileError::Settings)?
                .with_root_certificates(roots)
        }
        None => {
            use rustls_platform_verifier::BuilderVerifierExt;
            builder()
                .map_err(TlsFileError::Settings)?
                .with_platform_verifier()
                .map_err(TlsFileError::Settings)?
        }
    };
    let mut config = match &files.client_certificate {
        Some(client) => {
            let chain = certificates(&client.certificate_file)?;
            let key = private_key(&client.private_key_file)?;
            verifying
                .with_client_auth_cert(chain, key)
                .map_err(|source| TlsFileError::ClientCertificate {
                    certificate: client.certificate_file.clone(),
                    key: client.private_key_file.clone(),
                    source,
                })?
        }
        None => verifying.with_no_client_auth(),
    };
    config.alpn_protocols = alpn();
    Ok(Arc::new(config))
}

/// h2 first: when the target speaks it, one connection carries every request.
pub fn alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

fn builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in a PEM file, in order (other PEM sections are skipped).
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let pem = read(path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsFileError::Certificate {
            path: path.to_path_buf(),
            source,
        })?;
    if certificates.is_empty() {
        return Err(TlsFileError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certificates)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| TlsFileError::PrivateKey {
        path: path.to_path_buf(),
        source,
    })
}
