//! Who a Fanout process is to NATS: a token, a credentials file (a user JWT and the NKey
//! seed that signs the server's nonce), or a user and password in the URL. Secrets
//! are read from files, kept out of `Debug` and logs, and re-read at every connect,
//! so that a rotated Secret is used from the next reconnection on.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

#[derive(Clone, Default)]
pub enum Auth {
    #[default]
    None,
    /// A file holding a token.
    TokenFile(PathBuf),
    /// A `.creds` file: a user JWT and its NKey seed.
    CredentialsFile(PathBuf),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::TokenFile(path) => write!(f, "TokenFile({})", path.display()),
            Auth::CredentialsFile(path) => write!(f, "CredentialsFile({})", path.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("reading the NATS token file {path}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the NATS token file {0} is empty")]
    EmptyToken(PathBuf),
    #[error("reading the NATS credentials file {path}")]
    CredentialsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the NATS credentials file {path} has no {part} section")]
    MissingPart { path: PathBuf, part: &'static str },
    #[error("the NKey seed in the NATS credentials file {path} is not a valid user seed")]
    Seed {
        path: PathBuf,
        #[source]
        source: nkeys::error::Error,
    },
    #[error("the server sent no nonce to sign, and the credentials need one")]
    NoNonce,
}

/// The authentication fields of `CONNECT`.
#[derive(Default, Serialize)]
pub struct Proof {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

impl Auth {
    /// Reads the files now: a process whose credentials cannot be read should say so
    /// at start, not at its first reconnection.
    pub fn check(&self) -> Result<(), CredentialsError> {
        match self {
            Auth::None => Ok(()),
            Auth::TokenFile(path) => token(path).map(drop),
            Auth::CredentialsFile(path) => credentials(path).map(drop),
        }
    }

    /// The proof for one connection, signing the server's `nonce` if the
    /// credentials need it.
    pub fn prove(&self, nonce: Option<&str>) -> Result<Proof, CredentialsError> {
        match self {
            Auth::None => Ok(Proof::default()),
            Auth::TokenFile(path) => Ok(Proof {
                auth_token: Some(token(path)?),
                ..Proof::default()
            }),
            Auth::CredentialsFile(path) => {
                let (jwt, key) = credentials(path)?;
                let nonce = nonce.ok_or(CredentialsError::NoNonce)?;
                let signature =
                    key.sign(nonce.as_bytes())
                        .map_err(|source| CredentialsError::Seed {
                            path: path.clone(),
                            source,
                        })?;
                Ok(Proof {
                    jwt: Some(jwt),
                    sig: Some(URL_SAFE_NO_PAD.encode(signature)),
                    ..Proof::default()
                })
            }
        }
    }
}

fn token(path: &Path) -> Result<String, CredentialsError> {
    let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::TokenFile {
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(CredentialsError::EmptyToken(path.to_path_buf()));
    }
    Ok(token.to_string())
}

/// The user JWT and the key of a `.creds` file.
fn credentials(path: &Path) -> Result<(String, nkeys::KeyPair), CredentialsError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| CredentialsError::CredentialsFile {
            path: path.to_path_buf(),
            source,
        })?;
    let missing = |part| CredentialsError::MissingPart {
        path: path.to_path_buf(),
        part,
    };
    let jwt = section(&text, "NATS USER JWT").ok_or_else(|| missing("user JWT"))?;
    let seed = section(&text, "USER NKEY SEED").ok_or_else(|| missing("NKey seed"))?;
    let key = nkeys::KeyPair::from_seed(seed).map_err(|source| CredentialsError::Seed {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((jwt.to_string(), key))
}

/// The first non-empty line after the `-----BEGIN <name>-----` line.
fn section<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let mut lines = text.lines().map(str::trim);
    lines.find(|line| line.starts_with("---") && line.contains(&format!("BEGIN {name}")))?;
    lines
        .find(|line| !line.is_empty())
        .filter(|line| !line.starts_with("---"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds_file(dir: &Path, jwt: &str, seed: &str) -> PathBuf {
        let path = dir.join("user.creds");
        std::fs::write(
            &path,
            format!(
                "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
                 ************************* IMPORTANT *************************\n\n\
                 -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
            ),
        )
        .unwrap();
        path
    }

    #[test]
    fn a_credentials_file_signs_the_nonce_with_its_seed() {
        let dir = tempfile::tempdir().unwrap();
        let user = nkeys::KeyPair::new_user();
        let path = creds_file(dir.path(), "eyJ0.eyJ1.c2ln", &user.seed().unwrap());
        let proof = Auth::CredentialsFile(path).prove(Some("n0nce")).unwrap();
        assert_eq!(proof.jwt.as_deref(), Some("eyJ0.eyJ1.c2ln"));
        let signature = URL_SAFE_NO_PAD.decode(proof.sig.unwrap()).unwrap();
        user.verify(b"n0nce", &signature).unwrap();
    }

    #[test]
    fn unusable_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let broken = creds_file(dir.path(), "eyJ0.eyJ1.c2ln", "SUnotaseed");
        let error = Auth::CredentialsFile(broken.clone()).check().unwrap_err();
        assert!(
            error.to_string().contains(&broken.display().to_string()),
            "{error}"
        );
        let no_seed = dir.path().join("jwt-only.creds");
        std::fs::write(
            &no_seed,
            "-----BEGIN NATS USER JWT-----\nabc\n------END NATS USER JWT------\n",
        )
        .unwrap();
        let error = Auth::CredentialsFile(no_seed).check().unwrap_err();
        assert!(
            error.to_string().contains("no NKey seed section"),
            "{error}"
        );
        let empty = dir.path().join("token");
        std::fs::write(&empty, "\n").unwrap();
        assert!(matches!(
            Auth::TokenFile(empty).check(),
            Err(CredentialsError::EmptyToken(_))
        ));
        let absent = Auth::TokenFile(dir.path().join("absent"));
        assert!(absent.check().unwrap_err().to_string().contains("absent"));
    }

    #[test]
    fn a_token_is_read_trimmed_and_never_shown_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret-token\n").unwrap();
        let auth = Auth::TokenFile(path);
        assert_eq!(
            auth.prove(None).unwrap().auth_token.as_deref(),
            Some("s3cret-token")
        );
        assert!(!format!("{auth:?}").contains("s3cret"));
    }
}
