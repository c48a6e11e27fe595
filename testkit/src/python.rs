//! Python tools from PyPI for tests (a real Standard Webhooks verifier, schemathesis),
//! each installed once into its own venv under the cache, pinned.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

/// The Python interpreter of a venv that has `package==version` installed, at
/// `${FANOUT_CACHE:-~/.cache/fanout}/tools/<package>-<version>/`, made with
/// `python3`.
pub fn venv_with(package: &str, version: &str) -> anyhow::Result<PathBuf> {
    let dir = venv_using(&Python::default_python3()?, package, version)?;
    Ok(dir.join("bin/python"))
}

/// A Python interpreter and its version (`3.12.4`).
#[derive(Clone, Debug)]
pub struct Python {
    pub path: PathBuf,
    pub version: String,
}

impl Python {
    /// `python3` on PATH.
    pub fn default_python3() -> anyhow::Result<Python> {
        let path = PathBuf::from("python3");
        let version = version_of(&path).context("python3 is needed")?;
        Ok(Python { path, version })
    }

    /// The newest Python of at least `min` found: `FANOUT_PYTHON`, `python3.14` to
    /// `python3.12` on PATH, pyenv's versions; else `python3`, whatever it is.
    pub fn newest(min: (u32, u32)) -> anyhow::Result<Python> {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(path) = std::env::var_os("FANOUT_PYTHON") {
            candidates.push(path.into());
        }
        for name in ["python3.14", "python3.13", "python3.12"] {
            candidates.push(name.into());
        }
        if let Some(root) = Command::new("pyenv")
            .arg("root")
            .output()
            .ok()
            .filter(|o| o.status.success())
        {
            let root = PathBuf::from(String::from_utf8_lossy(&root.stdout).trim());
            let mut versions: Vec<PathBuf> = std::fs::read_dir(root.join("versions"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| entry.path().join("bin/python3"))
                .collect();
            versions.sort();
            candidates.extend(versions.into_iter().rev());
        }
        for path in candidates {
            if let Some(version) = version_of(&path) {
                let python = Python { path, version };
                if python.at_least(min) {
                    return Ok(python);
                }
            }
        }
        Python::default_python3()
    }

    pub fn at_least(&self, min: (u32, u32)) -> bool {
        let mut parts = self
            .version
            .split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= min
    }
}

fn version_of(path: &std::path::Path) -> Option<String> {
    let output = Command::new(path)
        .args(["-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The venv (its directory) with `package==version` installed with `python`, at
/// `${FANOUT_CACHE:-~/.cache/fanout}/tools/<package>-<version>-py<x.y>/` (or without
/// the Python version for `python3`, the venvs earlier runs made), installed once:
/// every Python tool of the tests comes from here.
pub fn venv_using(python: &Python, package: &str, version: &str) -> anyhow::Result<PathBuf> {
    let cache = std::env::var_os("FANOUT_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/fanout")))
        .context("neither FANOUT_CACHE nor HOME is set")?;
    let name = if python.path == std::path::Path::new("python3") {
        format!("{package}-{version}")
    } else {
        let minor: Vec<&str> = python.version.split('.').take(2).collect();
        format!("{package}-{version}-py{}", minor.join("."))
    };
    let dir = cache.join("tools").join(&name);
    let marker = dir.join(".installed");
    if marker.is_file() {
        return Ok(dir);
    }
    // Made in place (a venv's scripts name its path in their first line, so it
    // cannot be built elsewhere and moved), one process at a time; the marker says
    // it is complete.
    std::fs::create_dir_all(cache.join("tools"))?;
    let lock = std::fs::File::create(cache.join("tools").join(format!(".{name}.lock")))?;
    lock.lock().context("locking the venv while it is made")?;
    if !marker.is_file() {
        let _ = std::fs::remove_dir_all(&dir);
        run(Command::new(&python.path).args(["-m", "venv"]).arg(&dir))?;
        run(Command::new(dir.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("{package}=={version}")))?;
        std::fs::write(
            &marker,
            format!("{package}=={version} python={}", python.version),
        )?;
    }
    Ok(dir)
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
