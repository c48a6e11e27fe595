//! Standard Webhooks signatures checked by the official library (`standardwebhooks`
//! from PyPI): a verifier nobody on this project wrote. One Python process checks
//! every request of a test.

use std::process::Command;

use anyhow::{Context, bail};

use crate::python;
use crate::target::Received;

const VERIFY: &str = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
cases = json.load(open(sys.argv[1]))
for case in cases:
    try:
        Webhook(case["secret"]).verify(case["body"], case["headers"])
        print("verified")
    except Exception as e:
        print(f"refused: {e}")
"#;

/// What the library says of each request, in order: `Ok` if its signature verifies
/// with `secret`, else the library's reason.
pub fn verify(secret: &str, requests: &[Received]) -> anyhow::Result<Vec<Result<(), String>>> {
    let cases: Vec<serde_json::Value> = requests
        .iter()
        .map(|r| {
            let header = |name| r.header(name).unwrap_or_default();
            serde_json::json!({
                "secret": secret,
                "body": String::from_utf8_lossy(&r.body),
                "headers": {
                    "webhook-id": header("webhook-id"),
                    "webhook-timestamp": header("webhook-timestamp"),
                    "webhook-signature": header("webhook-signature"),
                },
            })
        })
        .collect();
    verify_cases(&cases)
}

/// Like [`verify`] for one body and header set given directly.
pub fn verify_one(
    secret: &str,
    headers: serde_json::Value,
    body: &str,
) -> anyhow::Result<Result<(), String>> {
    let case = serde_json::json!({"secret": secret, "headers": headers, "body": body});
    Ok(verify_cases(&[case])?.remove(0))
}

fn verify_cases(cases: &[serde_json::Value]) -> anyhow::Result<Vec<Result<(), String>>> {
    let python = python::venv_with("standardwebhooks", "1.1.0")?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("cases.json");
    let script = dir.path().join("verify.py");
    std::fs::write(&file, serde_json::to_string(cases)?)?;
    std::fs::write(&script, VERIFY)?;
    let out = Command::new(&python)
        .arg(&script)
        .arg(&file)
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "the verifier failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let verdicts: Vec<Result<(), String>> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| match line {
            "verified" => Ok(()),
            other => Err(other.to_string()),
        })
        .collect();
    if verdicts.len() != cases.len() {
        bail!("{} verdicts for {} requests", verdicts.len(), cases.len());
    }
    Ok(verdicts)
}
