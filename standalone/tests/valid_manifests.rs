//! What the apiserver accepts, standalone accepts and JetStream provisions. (What the
//! apiserver refuses, standalone refuses in the same words: `cli/tests/validation_parity.rs`
//! holds both to `e2e/manifests/invalid`.)

use fanout_standalone::{checks, manifests_dir, prepare, secrets};

/// Standalone's first refusal of these manifest files, or None when they would run.
fn first_refusal(texts: &[&str]) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    for (i, text) in texts.iter().enumerate() {
        std::fs::write(dir.path().join(format!("{i}.yaml")), text).unwrap();
    }
    let manifests = match manifests_dir::read(&[dir.path().to_path_buf()], "test") {
        Ok(m) => m,
        Err(e) => return Some(format!("{:#}", anyhow::Error::from(e))),
    };
    if let Some(problem) = checks::check(&manifests).first() {
        return Some(problem.to_string());
    }
    let state = secrets::StateDir::open(None).unwrap();
    state.write_secrets(&manifests).unwrap();
    match prepare::prepare(&manifests, &state) {
        Ok(_) => None,
        Err(e) => Some(format!("{:#}", anyhow::Error::from(e))),
    }
}

/// The manifests the apiserver accepts (`e2e/manifests/valid`, each file complete),
/// standalone accepts too, and provisions their streams and consumers on a real nats-server, so the edges
/// the CRD allows (a duplicate window as long as the stream keeps events, no age
/// limit, dead letters kept briefly) are ones JetStream allows too.
#[tokio::test]
async fn what_the_apiserver_accepts_standalone_accepts_and_jetstream_provisions() {
    let nats = fanout_testkit::nats::NatsServer::start().unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let provisioner = fanout_provision::Provisioner::new(async_nats::jetstream::new(client));
    let dir = fanout_testkit::repo_root().join("e2e/manifests/valid");
    let mut refused = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file = entry.unwrap().path();
        let text = std::fs::read_to_string(&file).unwrap();
        if let Some(problem) = first_refusal(&[&text]) {
            refused.push(format!("{}: {problem}", file.display()));
            continue;
        }
        let manifests = manifests_dir::read(std::slice::from_ref(&file), "test").unwrap();
        let state = secrets::StateDir::open(None).unwrap();
        for route in prepare::prepare(&manifests, &state).unwrap().routes {
            if let Err(e) = provisioner.apply(&route.streams).await {
                refused.push(format!(
                    "{}: JetStream: {:#}",
                    file.display(),
                    anyhow::Error::from(e)
                ));
            }
        }
    }
    assert!(refused.is_empty(), "{}", refused.join("\n"));
}
