//! The private state directory: Secret keys as files, laid out like a Secret volume
//! (`secrets/<secret>/<key>`), plus the rendered configuration for inspection. Only
//! this user can read any of it (directories 0700, files 0600); values never reach a
//! log line or the rendered configuration, which holds file paths only.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fanout_api::manifests::{ManifestError, Manifests};

use crate::checks;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("creating the state directory {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("clearing old secrets from {path}")]
    Clear {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the Secrets")]
    Write(#[source] ManifestError),
    /// Refused before anything is written: the file would not be where the
    /// rendered configuration expects it, or outside the state directory altogether.
    #[error("Secret {name:?}: {what} {value:?} cannot be a file name: {problem}")]
    Unsafe {
        name: String,
        what: &'static str,
        value: String,
        problem: &'static str,
    },
}

/// Where standalone keeps its files; a temporary one is removed when dropped.
pub struct StateDir {
    path: PathBuf,
    _temporary: Option<tempfile::TempDir>,
}

impl StateDir {
    /// Uses `path` (created 0700 when missing, and set to 0700 when it exists) or a
    /// new temporary directory.
    pub fn open(path: Option<&Path>) -> Result<StateDir, StateError> {
        match path {
            Some(path) => {
                private_dir(path)?;
                Ok(StateDir {
                    path: path.to_path_buf(),
                    _temporary: None,
                })
            }
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("fanout-standalone-")
                    .tempdir()
                    .map_err(|source| StateError::Create {
                        path: std::env::temp_dir(),
                        source,
                    })?;
                private_dir(dir.path())?;
                Ok(StateDir {
                    path: dir.path().to_path_buf(),
                    _temporary: Some(dir),
                })
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `secrets/`: what the rendered configuration points credential files at.
    pub fn secrets_dir(&self) -> PathBuf {
        self.path.join("secrets")
    }

    /// Writes every Secret key, replacing what an earlier run left (a Secret removed
    /// from the manifests must not stay readable).
    pub fn write_secrets(&self, manifests: &Manifests) -> Result<(), StateError> {
        // `checks` refuses these at start with the document named; checked again here
        // because a name or key becomes a path below the state directory.
        for secret in &manifests.secrets {
            let name = secret.metadata.name.clone().unwrap_or_default();
            let unsafe_part = |what, value: &str, problem| StateError::Unsafe {
                name: name.clone(),
                what,
                value: value.to_string(),
                problem,
            };
            if let Some(problem) = checks::secret_name_problem(&name) {
                return Err(unsafe_part("name", &name, problem));
            }
            let data = secret.data.iter().flatten().map(|(k, _)| k);
            let string_data = secret.string_data.iter().flatten().map(|(k, _)| k);
            for key in data.chain(string_data) {
                if let Some(problem) = checks::secret_key_problem(key) {
                    return Err(unsafe_part("key", key, problem));
                }
            }
        }
        let dir = self.secrets_dir();
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StateError::Clear { path: dir, source }),
        }
        private_dir(&dir)?;
        // Secret subdirectories are made by `write_secrets` itself; create them first
        // so they are private too (the files inside are 0600 either way).
        for secret in &manifests.secrets {
            if let Some(name) = &secret.metadata.name {
                private_dir(&dir.join(name))?;
            }
        }
        manifests.write_secrets(&dir).map_err(StateError::Write)
    }
}

/// Creates `path` (and missing parents) and makes it private to this user.
fn private_dir(path: &Path) -> Result<(), StateError> {
    let error = |source| StateError::Create {
        path: path.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_private_files_and_stale_ones_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let state = StateDir::open(Some(&root.path().join("state"))).unwrap();
        std::fs::create_dir_all(state.secrets_dir().join("old")).unwrap();
        let m = Manifests::parse(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: token}\nstringData: {token: abc}\n",
            "demo",
        )
        .unwrap();
        state.write_secrets(&m).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let file = state.secrets_dir().join("token/token");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "abc");
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&state.secrets_dir().join("token")), 0o700);
        assert_eq!(mode(&state.secrets_dir()), 0o700);
        assert_eq!(mode(state.path()), 0o700);
        assert!(!state.secrets_dir().join("old").exists());
    }

    #[test]
    fn a_key_or_name_that_would_leave_the_directory_is_refused_before_writing() {
        let root = tempfile::tempdir().unwrap();
        let state = StateDir::open(Some(&root.path().join("state"))).unwrap();
        for text in [
            "apiVersion: v1\nkind: Secret\nmetadata: {name: ok}\nstringData: {a: x, ../../../escaped: x}\n",
            "apiVersion: v1\nkind: Secret\nmetadata: {name: ../../escaped}\nstringData: {k: x}\n",
        ] {
            let m = Manifests::parse(text, "demo").unwrap();
            let err = state.write_secrets(&m).unwrap_err();
            assert!(matches!(err, StateError::Unsafe { .. }), "{err}");
        }
        assert!(!root.path().join("escaped").exists());
        assert!(!state.secrets_dir().exists(), "nothing written");
    }

    #[test]
    fn a_temporary_state_dir_is_removed_when_dropped() {
        let state = StateDir::open(None).unwrap();
        let path = state.path().to_path_buf();
        assert!(path.is_dir());
        drop(state);
        assert!(!path.exists());
    }
}
