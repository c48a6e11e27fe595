//! The routes' streams and consumers, made at start. A JetStream that is not ready yet
//! (a cluster still electing its meta leader, or whose servers are not yet current, so
//! that a replicated stream finds no peers to be placed on) is waited for, up to
//! `--jetstream-wait`, saying so in the log (from the first second without an answer
//! on); any other failure stops the start at once (`fanout_provision::transient` tells
//! them apart).

use std::time::Duration;

use anyhow::Context;
use fanout_api::render::Rendered;
use fanout_config::error_chain;
use fanout_config::names::RouteKey;
use fanout_provision::Provisioner;
use tokio::time::Instant;

/// The first pause between attempts, doubled after each up to [`LONGEST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const LONGEST_PAUSE: Duration = Duration::from_secs(2);
/// An attempt may take this long before the log says (once per route) what
/// standalone waits for: a JetStream without a leader may answer nothing, and its
/// requests time out only after seconds.
const QUIET: Duration = Duration::from_secs(1);

/// Creates or updates every route's JetStream objects, waiting at most `wait` in all
/// for JetStream to become ready.
pub async fn provision(
    provisioner: &Provisioner,
    routes: &[Rendered],
    wait: fanout_config::Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + wait.as_std();
    for route in routes {
        let key = RouteKey::new(&route.config.namespace, &route.config.name);
        let mut pause = FIRST_PAUSE;
        let mut announced = false;
        loop {
            let mut attempt = std::pin::pin!(provisioner.apply(&route.streams));
            let result = tokio::select! {
                result = &mut attempt => result,
                _ = tokio::time::sleep(QUIET), if !announced => {
                    announced = true;
                    tracing::info!(route = %key, "waiting for JetStream to answer");
                    attempt.await
                }
            };
            let error = match result {
                Ok(_) => break,
                Err(error) => error,
            };
            let transient = error.is_transient();
            if !transient || Instant::now() + pause > deadline {
                let context = if transient {
                    format!(
                        "provisioning route {key}: JetStream was not ready within --jetstream-wait {wait}"
                    )
                } else {
                    format!("provisioning route {key}")
                };
                return Err(error).context(context);
            }
            tracing::warn!(
                route = %key,
                error = %error_chain(&error),
                retry_in = ?pause,
                "JetStream is not ready for the route's streams yet; waiting for it"
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LONGEST_PAUSE);
        }
    }
    Ok(())
}
