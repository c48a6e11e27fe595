//! Schemathesis (a property-based API tester, from PyPI) against `/openapi.json`: no
//! server errors, and every response matches the document.

use std::path::PathBuf;
use std::process::Command;

use crate::support::{Harness, TOKEN};

const VERSION: &str = "4.32.5";
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance";

/// The schemathesis to run and whether its coverage phase can be trusted.
struct Schemathesis {
    st: PathBuf,
    coverage_phase: bool,
}

/// `st` from a venv under the Fanout tool cache, installed on first use;
/// `FANOUT_SCHEMATHESIS` names another one.
fn schemathesis() -> Schemathesis {
    if let Some(path) = std::env::var_os("FANOUT_SCHEMATHESIS") {
        return Schemathesis {
            st: PathBuf::from(path),
            coverage_phase: true,
        };
    }
    let cache = std::env::var_os("FANOUT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/fanout")
        });
    let venv = cache.join("tools").join(format!("schemathesis-{VERSION}"));
    let st = venv.join("bin/st");
    let marker = venv.join(".installed");
    let python = find_python();
    let recipe = format!("schemathesis=={VERSION} python={}", python.version);
    let found = Schemathesis {
        st: st.clone(),
        coverage_phase: at_least_3_12(&python.version),
    };
    if st.is_file() && std::fs::read_to_string(&marker).ok().as_deref() == Some(recipe.as_str()) {
        return found;
    }
    let _ = std::fs::remove_dir_all(&venv);
    let run = |command: &mut Command| {
        let output = command.output().expect("running an installer");
        assert!(
            output.status.success(),
            "{command:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(Command::new(&python.path).args(["-m", "venv"]).arg(&venv));
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("schemathesis=={VERSION}")));
    std::fs::write(&marker, recipe).unwrap();
    found
}

fn at_least_3_12(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (3, 12)
}

struct Python {
    path: PathBuf,
    version: String,
}

/// The Python to run schemathesis with: `FANOUT_PYTHON`, else the newest 3.12+ found
/// (on PATH, or installed by pyenv), else `python3`. CPython 3.11 has a bug in
/// `ast.parse` ("AST constructor recursion depth mismatch") that breaks
/// schemathesis' coverage phase at random, so with it that phase is left out.
fn find_python() -> Python {
    let version_of = |path: &std::path::Path| -> Option<String> {
        let output = Command::new(path)
            .args(["-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"])
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
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
        if let Some(version) = version_of(&path).filter(|v| at_least_3_12(v)) {
            return Python { path, version };
        }
    }
    let path = PathBuf::from("python3");
    let version = version_of(&path).expect("python3 is needed to run schemathesis");
    Python { path, version }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_holds_under_schemathesis() {
    let tool = tokio::task::spawn_blocking(schemathesis).await.unwrap();
    let phases = if tool.coverage_phase {
        "examples,coverage,fuzzing"
    } else {
        "examples,fuzzing"
    };
    let h = Harness::start().await;
    // Point the route parameters at the configured route, so generated events reach
    // the storing code and not only the 404 path.
    let config = h.dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        "[parameters]\n\"path.ns\" = \"shop\"\n\"path.route\" = \"orders\"\n",
    )
    .unwrap();
    let schema = format!("{}/openapi.json", h.base);
    let mut command = Command::new(&tool.st);
    command
        .arg("--config-file")
        .arg(&config)
        .args(["run", &schema, "--checks", CHECKS])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--max-examples", "25", "--seed", "7", "--no-color"])
        .args(["--phases", phases])
        .args(["--request-timeout", "10", "--workers", "2"])
        .current_dir(h.dir.path());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("running schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "schemathesis reported failures:\n{stdout}\n{stderr}"
    );
    // It really ran the operations (a misconfigured run can pass with nothing tested).
    assert!(stdout.contains("passed"), "{stdout}");
    let stored = h.stored("fanout_shop_orders").await;
    assert!(
        !stored.is_empty(),
        "schemathesis stored no event:\n{stdout}"
    );
}
