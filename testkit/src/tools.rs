//! Paths of the pinned third-party binaries that `e2e/tools.sh` builds or installs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, bail};

use crate::repo_root;

/// Absolute path of a pinned tool (`nats-server`, `kubectl`, `helm`, ...), built on
/// first use when the cache does not have it. `FANOUT_<NAME>` (upper case, `-` as `_`)
/// overrides the path, e.g. `FANOUT_NATS_SERVER=/usr/local/bin/nats-server`.
pub fn path(name: &str) -> anyhow::Result<PathBuf> {
    find(name, true)
}

/// Like [`path`], but fails instead of building a tool that is not built yet: for
/// tools that take minutes to build and that no test needs (Bento, for the peer
/// benchmark), which `e2e/tools.sh <group>` builds on request.
pub fn built_path(name: &str) -> anyhow::Result<PathBuf> {
    find(name, false)
}

fn find(name: &str, build: bool) -> anyhow::Result<PathBuf> {
    static CACHE: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some(found) = cache.get(name) {
        return Ok(found.clone());
    }
    let env_name = format!("FANOUT_{}", name.to_uppercase().replace('-', "_"));
    let found = match std::env::var_os(&env_name) {
        Some(p) => PathBuf::from(p),
        None => {
            let script = repo_root().join("e2e/tools.sh");
            let mut command = Command::new("bash");
            command.arg(&script).args(["path", name]);
            if !build {
                command.env("FANOUT_TOOLS_NO_BUILD", "1");
            }
            let out = command
                .output()
                .with_context(|| format!("running {} path {name}", script.display()))?;
            if !out.status.success() {
                bail!(
                    "{} path {name} failed:\n{}",
                    script.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            PathBuf::from(String::from_utf8(out.stdout)?.trim())
        }
    };
    if !found.is_file() {
        bail!("{name}: {} is not a file", found.display());
    }
    cache.insert(name.to_string(), found.clone());
    Ok(found)
}
