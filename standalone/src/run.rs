//! Start and stop of `fanout standalone`. Everything that can be checked without
//! NATS is checked first; then the routes are provisioned, the gateway and one engine
//! per route start, and the status endpoint serves. On SIGTERM or SIGINT the gateway
//! stops accepting first (so no event is accepted that no engine will see), then the
//! engines drain, and the process exits 0.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use fanout_config::names::RouteKey;
use fanout_dispatcher::request::Auth;
use fanout_dispatcher::{Engine, EngineOptions, Metrics, load};
use fanout_gateway::{Gateway, OpsPort};
use fanout_provision::Provisioner;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::prepare::{Prepared, prepare};
use crate::secrets::StateDir;
use crate::status::{LiveSnapshots, StatusSource, table};
use crate::{Args, checks, http, manifests_dir, provisioning};

/// Name of this process in health snapshots. Fixed, so that a restart overwrites the
/// previous run's snapshots instead of adding to them.
const POD: &str = "standalone";

/// How long NATS may take, after the deliveries' grace, to take the last acks.
const NATS_GRACE: Duration = fanout_process::nats::FLUSH_AT_EXIT;

/// How long snapshots stay in the KV bucket without a refresh.
const HEALTH_TTL: Duration = Duration::from_secs(60);

/// Runs until SIGTERM or SIGINT.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let signal = fanout_process::signal::shutdown().context("installing the signal handlers")?;

    let manifests = manifests_dir::read(&args.files, &args.namespace)?;
    let problems = checks::check(&manifests);
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|p| format!("  - {p}")).collect();
        anyhow::bail!("the manifests cannot run:\n{}", list.join("\n"));
    }
    let state = StateDir::open(args.state_dir.as_deref())?;
    state.write_secrets(&manifests)?;
    let prepared = prepare(&manifests, &state)?;
    let auths = credentials(&prepared)?;
    tracing::info!(
        state_dir = %state.path().display(),
        routes = prepared.routes.len(),
        targets = manifests.targets.len(),
        secrets = manifests.secrets.len(),
        "manifests rendered"
    );
    let tracing = fanout_otel::Tracing::start(&args.otlp, "fanout-standalone")?;
    let tracer = tracing.as_ref().map(fanout_otel::Tracing::tracer);
    let status_listener = tokio::net::TcpListener::bind(args.listen_metrics)
        .await
        .with_context(|| format!("listening on {} (--listen-metrics)", args.listen_metrics))?;

    let nats = args.nats.connect("fanout-standalone").await?;
    let js = jetstream::new(nats.clone());
    provisioning::provision(
        &Provisioner::new(js.clone()),
        &prepared.routes,
        args.jetstream_wait,
    )
    .await?;

    // The gateway's readiness and metrics are served with standalone's own, on
    // --listen-metrics: one address to probe and scrape, and none on the events port.
    let gateway = Gateway::start_traced(
        gateway_args(&args, &prepared)?,
        OpsPort::Embedded,
        tracer.clone(),
    )
    .await
    .context("starting the gateway")?;

    let metrics = Arc::new(Metrics::default());
    let engines: Arc<Mutex<Vec<Engine>>> = Arc::default();
    let options = EngineOptions {
        pod: POD.into(),
        health_interval: args.health_interval.as_std(),
        health_ttl: HEALTH_TTL,
        shutdown_grace: args.shutdown_grace.as_std(),
        nats: args.nats.clone(),
        // Every route's targets share this process's runtime: a thread each would add
        // up quickly on a laptop, and local use is not about throughput.
        thread_per_target: false,
        egress: Arc::new(args.egress.policy(args.egress_deny_loopback)),
        tracer,
    };
    for (route, auths) in prepared.routes.iter().zip(auths) {
        let key = RouteKey::new(&route.config.namespace, &route.config.name);
        let engine = Engine::start(
            route.config.clone(),
            auths,
            nats.clone(),
            metrics.clone(),
            options.clone(),
        )
        .await
        .with_context(|| format!("starting delivery of route {key}"))?;
        lock(&engines).push(engine);
    }

    let live: LiveSnapshots = {
        let engines = engines.clone();
        Arc::new(move || lock(&engines).iter().flat_map(Engine::snapshots).collect())
    };
    let configs = prepared.routes.iter().map(|r| r.config.clone()).collect();
    let status = Arc::new(StatusSource::new(js, configs, live));
    let shutdown = CancellationToken::new();
    let status_addr = status_listener.local_addr().ok();
    let targets: http::Targets = {
        let engines = engines.clone();
        Arc::new(move || {
            lock(&engines)
                .iter()
                .try_for_each(|engine| engine.readiness().check())
        })
    };
    let server = tokio::spawn(http::serve(
        status_listener,
        status.clone(),
        metrics,
        nats.clone(),
        targets,
        gateway.ops(),
        shutdown.clone(),
    ));
    if let Some(every) = args.print_status_every {
        tokio::spawn(print_status(
            status.clone(),
            every.as_std(),
            shutdown.clone(),
        ));
    }
    announce(&prepared, gateway.local_addr(), status_addr);

    signal.await;
    tracing::info!("stopping: the gateway stops accepting, then deliveries in flight finish");
    let gateway_stopped = gateway.shutdown().await;
    let mut stopping = JoinSet::new();
    for engine in std::mem::take(&mut *lock(&engines)) {
        stopping.spawn(engine.stop());
    }
    // Draining talks to NATS (acks, the last health snapshot); when NATS is gone it
    // would wait for a reconnect forever. What is not acknowledged is redelivered.
    let drain_limit = args.shutdown_grace.as_std() + NATS_GRACE;
    let drained = tokio::time::timeout(drain_limit, async {
        while stopping.join_next().await.is_some() {}
    })
    .await;
    shutdown.cancel();
    server
        .await
        .context("status server task")?
        .context("status server")?;
    drained.map_err(|_| {
        anyhow::anyhow!(
            "deliveries did not drain within {drain_limit:?} (is NATS reachable?); unacknowledged events will be delivered again"
        )
    })?;
    // What the engines' connection still holds (health snapshots, dead letters) must
    // reach the server before exit; the targets flushed their acks when they stopped.
    fanout_process::nats::flush_before_exit(&nats, NATS_GRACE).await?;
    gateway_stopped.context("stopping the gateway")?;
    if let Some(tracing) = tracing {
        // Sends the last spans; blocking, so off the runtime's thread.
        let _ = tokio::task::spawn_blocking(move || tracing.shutdown()).await;
    }
    drop(state);
    tracing::info!("stopped");
    Ok(())
}

/// Every target's credentials, read now so a missing or unusable Secret fails the
/// start, naming the route and the field.
fn credentials(prepared: &Prepared) -> anyhow::Result<Vec<Vec<Auth>>> {
    prepared
        .routes
        .iter()
        .map(|route| {
            route
                .config
                .targets
                .iter()
                .map(load::auth)
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("route {}/{}", route.config.namespace, route.config.name))
        })
        .collect()
}

/// The gateway's flags: its configuration file is the one just rendered, and it is
/// not re-read (standalone reads manifests once; restart to apply a change).
fn gateway_args(args: &Args, prepared: &Prepared) -> anyhow::Result<fanout_gateway::Args> {
    let flags = vec![
        "--config".to_string(),
        prepared.gateway_config.display().to_string(),
        "--config-poll-interval".into(),
        "0s".into(),
        "--listen".into(),
        args.listen_gateway.to_string(),
    ];
    let mut gateway =
        fanout_gateway::Args::from_flags(flags).context("building the gateway's settings")?;
    // The same NATS settings as the rest of the process (URL, credentials, CA).
    gateway.nats = args.nats.clone();
    Ok(gateway)
}

/// Tells a person where to send events and where to look.
fn announce(prepared: &Prepared, gateway: SocketAddr, status: Option<SocketAddr>) {
    for route in &prepared.routes {
        let targets: Vec<&str> = route
            .config
            .targets
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        tracing::info!(
            route = %format!("{}/{}", route.config.namespace, route.config.name),
            ingest = %format!(
                "http://{gateway}/v1/namespaces/{}/routes/{}/events",
                route.config.namespace, route.config.name
            ),
            targets = %targets.join(","),
            "route ready"
        );
    }
    if let Some(status) = status {
        tracing::info!(
            table = %format!("http://{status}/status.txt"),
            json = %format!("http://{status}/status"),
            "standalone running"
        );
    }
}

async fn print_status(status: Arc<StatusSource>, every: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate; nothing has happened yet
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        println!("{}", table(&status.report().await));
    }
}

fn lock(engines: &Mutex<Vec<Engine>>) -> std::sync::MutexGuard<'_, Vec<Engine>> {
    // A panic while holding the lock leaves the list usable: it is only ever pushed to
    // or taken whole.
    engines.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use fanout_api::manifests::Manifests;

    use super::*;

    #[test]
    fn headers_that_filters_match_on_are_forwarded_by_the_gateway() {
        let manifests = Manifests::parse(
            "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {name: api}
spec: {url: 'http://127.0.0.1:1/'}
---
apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {name: users}
spec:
  targets:
    - {name: a, apiTargetRef: {name: api}, filter: {headers: {X-Account-Kind: customer}}}
    - {name: b, apiTargetRef: {name: api}, filter: {headers: {x-event-type: user.created}}}
",
            "demo",
        )
        .unwrap();
        let state = StateDir::open(None).unwrap();
        let prepared = prepare(&manifests, &state).unwrap();
        // The rendered gateway entry carries them; the gateway stores them with the
        // route's events besides its own allow-list.
        assert_eq!(
            prepared.routes[0].gateway.forward_headers,
            ["X-Account-Kind", "x-event-type"]
        );
    }
}
