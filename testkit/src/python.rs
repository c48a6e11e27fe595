//! Python tools from PyPI for tests (a real Standard Webhooks verifier, schemathesis),
//! each installed once into its own venv under the cache, pinned.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

/// The Python interpreter of a venv that has `package==version` installed, at
/// `${FANOUT_CACHE:-~/.cache/fanout}/tools/<package>-<version>/`.
pub fn venv_with(package: &str, version: &str) -> anyhow::Result<PathBuf> {
    let cache = std::env::var_os("FANOUT_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/fanout")))
        .context("neither FANOUT_CACHE nor HOME is set")?;
    let dir = cache.join("tools").join(format!("{package}-{version}"));
    let python = dir.join("bin/python");
    if python.is_file() {
        return Ok(python);
    }
    // Build beside the final place and rename, so a parallel or interrupted install
    // never leaves a half-made venv where the next run would use it.
    let staging = cache
        .join("tools")
        .join(format!(".{package}-{version}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(staging.parent().unwrap())?;
    run(Command::new("python3").args(["-m", "venv"]).arg(&staging))?;
    run(Command::new(staging.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("{package}=={version}")))?;
    match std::fs::rename(&staging, &dir) {
        Ok(()) => {}
        // Another process finished first; theirs is as good as ours.
        Err(_) if python.is_file() => {
            let _ = std::fs::remove_dir_all(&staging);
        }
        Err(e) => return Err(e).context(format!("moving the venv to {}", dir.display())),
    }
    Ok(python)
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
