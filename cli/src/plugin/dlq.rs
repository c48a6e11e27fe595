//! `kubectl fanout dlq list|redrive <route>`: `fanout dlq` with the route and NATS
//! found in the cluster.

use anyhow::Context as _;
use fanout_api::FanOutRoute;
use fanout_config::names::RouteKey;
use fanout_provision::dead_letters;

use super::Session;
use super::cluster::explain;
use super::output::{self, Format};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// List a route's dead letters, oldest first.
    List {
        /// The FanOutRoute.
        route: String,
        /// Only this target's dead letters.
        #[arg(long)]
        target: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Send a target's dead letters again, oldest first, to that target only, and
    /// remove each from the dead-letter stream once the route's stream has it. Safe to
    /// run again after an interruption.
    Redrive {
        /// The FanOutRoute.
        route: String,
        /// The target to deliver to.
        #[arg(long)]
        target: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

pub async fn run(session: &Session, args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::List {
            route,
            target,
            limit,
        } => {
            let key = checked(session, &route, target.as_deref()).await?;
            let js = async_nats::jetstream::new(session.nats().await?);
            let letters = dead_letters::list(&js, &key, target.as_deref(), limit)
                .await
                .with_context(|| format!("listing the dead letters of route {key}"))?;
            if !output::structured(session.output, &letters)? {
                let wide = session.output == Some(Format::Wide);
                output::print(&crate::table::columns(&crate::dlq::rows(&letters, wide)))?;
            }
            Ok(())
        }
        Command::Redrive {
            route,
            target,
            limit,
        } => {
            let key = checked(session, &route, Some(&target)).await?;
            let js = async_nats::jetstream::new(session.nats().await?);
            let done = dead_letters::redrive(&js, &key, &target, limit)
                .await
                .with_context(|| format!("redriving dead letters of {key} to {target}"))?;
            if !output::structured(session.output, &done.events)? {
                output::print(&format!(
                    "redriven {} dead letter(s) of route {key} to target {target}\n",
                    done.events.len()
                ))?;
            }
            Ok(())
        }
    }
}

/// The route's key, once the cluster says the route (and the target) exist: a typo
/// is named, rather than reported as an empty dead-letter stream.
pub(super) async fn checked(
    session: &Session,
    route: &str,
    target: Option<&str>,
) -> anyhow::Result<RouteKey> {
    let key = RouteKey::new(&session.kube.namespace, route);
    let found = session
        .kube
        .api::<FanOutRoute>()
        .get(route)
        .await
        .map_err(|e| explain(e, &format!("FanOutRoute {key}")))?;
    if let Some(target) = target
        && !found.spec.targets.iter().any(|t| t.name == target)
    {
        let known: Vec<&str> = found.spec.targets.iter().map(|t| t.name.as_str()).collect();
        anyhow::bail!(
            "--target: route {key} has no target {target:?}; its targets: {}",
            known.join(", ")
        );
    }
    Ok(key)
}
