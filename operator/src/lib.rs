//! `fanout operator`: the controllers that turn `FanOutRoute` and `ApiTarget`
//! resources into running delivery.
//!
//! - [`route_controller`]: a route -> JetStream streams and consumers, the
//!   dispatcher's ConfigMap, ServiceAccount and Deployment, a finalizer, status; a
//!   pipeline of steps (dereference, validate, provision, scale, build, apply,
//!   observe, report), a module each.
//! - [`route_status`]: how a route's status and conditions are computed.
//! - [`dispatcher_objects`]: the Kubernetes objects of a route's dispatchers, and
//!   [`ownership`]: which existing ones the route may change;
//!   [`apiserver_addresses`]: the addresses those refuse as the apiserver's.
//! - [`image_policy`]: which dispatcher images a route may choose.
//! - [`target_controller`]: an ApiTarget's readiness, users and worst circuit.
//! - [`replay_controller`]: a FanOutReplay's run and status ([`replay_runs`]: the
//!   replays running; [`replay_scope`]: what one sends, shared with the CLI).
//! - [`retry`]: the one error policy of the controllers.
//! - [`gateway_sync`]: the gateway's route list and ingest-token copies.
//! - [`leader`]: Lease-based leader election; [`clients`]: apiserver connections
//!   with timeouts; [`server`] and [`metrics`]: probes and Prometheus metrics.

pub mod apiserver_addresses;
pub mod args;
pub mod autoscale;
pub mod clients;
pub mod conditions;
pub mod context;
pub mod dispatcher_objects;
pub mod error;
pub mod gateway_sync;
pub mod image_policy;
pub mod leader;
pub mod metrics;
pub mod ownership;
pub mod readiness;
pub mod replay_controller;
pub mod replay_runs;
pub mod replay_scope;
pub mod retry;
pub mod route_controller;
pub mod route_status;
pub mod secrets;
pub mod server;
pub mod target_controller;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use fanout_api::{ApiTarget, FanOutReplay, FanOutRoute};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Error as ControllerError;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::{Controller, WatchStreamExt};
use tokio_util::sync::CancellationToken;

pub use args::Args;

use crate::apiserver_addresses::{ApiserverAddresses, Known};
use crate::clients::Clients;
use crate::context::Context;
use crate::dispatcher_objects::{DispatcherSettings, NatsAuth, OtlpSettings};
use crate::gateway_sync::{Changes, GatewaySync};
use crate::image_policy::ImagePolicy;
use crate::leader::LeaderElector;
use crate::metrics::Metrics;
use crate::readiness::Readiness;

/// Runs the operator until SIGTERM or SIGINT. Returns an error when leadership is
/// lost, so that the process restarts and campaigns again from a clean state.
pub async fn run(args: Args) -> anyhow::Result<()> {
    // Registered before anything slow, so an early SIGTERM is a clean stop too.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    // A wrong allow-list entry stops the start, naming the flag.
    let images = ImagePolicy::new(&args.dispatcher.image, &args.dispatcher.allowed_images)?;
    // So is a trace setting every dispatcher pod would refuse.
    let ratio = args.dispatcher.otlp_sampling_ratio;
    if !(0.0..=1.0).contains(&ratio) {
        anyhow::bail!("--dispatcher-otlp-sampling-ratio: {ratio} is not between 0 and 1");
    }
    if let Some(endpoint) = args.dispatcher.otlp_endpoint.as_deref().map(str::trim)
        && !endpoint.is_empty()
        && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
    {
        anyhow::bail!("--dispatcher-otlp-endpoint: {endpoint:?} is not an http:// or https:// URL");
    }
    let clients = Clients::infer().await?;
    let known = Known::from_env(clients.host.as_deref());
    let namespace = args.namespace.clone().unwrap_or_else(own_namespace);
    let identity = args
        .pod_name
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("fanout-operator-{}", std::process::id()));
    // Start even while NATS is away: routes then report StreamReady=False and recover
    // once it is back, instead of the operator crash-looping.
    let nats = args.nats.connect_in_background("fanout-operator").await?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));

    let stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let server = tokio::spawn(server::serve(
        listener,
        metrics.clone(),
        ready.clone(),
        stop.clone(),
    ));
    let signal = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping");
        signal.cancel();
    });

    let mut elector = args.leader_elect.then(|| {
        LeaderElector::new(
            Api::<Lease>::namespaced(clients.lease.clone(), &namespace),
            args.lease_name.clone(),
            identity.clone(),
        )
    });
    if let Some(elector) = elector.as_mut() {
        // A standby is healthy and ready: it is waiting, not failing.
        ready.store(true, Ordering::Relaxed);
        tokio::select! {
            _ = elector.acquire() => {}
            _ = stop.cancelled() => return finish(server, stop).await,
        }
    }
    metrics.set_leader(true);

    let controllers = run_controllers(
        &args,
        &clients,
        known,
        nats.clone(),
        Shared {
            namespace,
            identity,
            images,
            metrics: metrics.clone(),
        },
        ready,
        stop.clone(),
    );
    // Losing the Lease drops the controllers' future, and with it every reconcile and
    // request in flight: nothing of this replica writes after this point.
    let lost = match elector.as_mut() {
        Some(elector) => {
            tokio::select! {
                _ = controllers => false,
                _ = elector.hold() => true,
            }
        }
        None => {
            controllers.await;
            false
        }
    };
    metrics.set_leader(false);
    if lost {
        tracing::error!("stepped down: stopped reconciling; restarting to campaign again");
        stop.cancel();
        let _ = server.await;
        anyhow::bail!("lost the leader Lease; restarting to campaign again");
    }
    if let Some(elector) = elector.as_mut() {
        elector.release().await;
    }
    if let Err(error) =
        fanout_process::nats::flush_before_exit(&nats, fanout_process::nats::FLUSH_AT_EXIT).await
    {
        // A process told to stop must stop: NATS being away is worth a warning only.
        tracing::warn!(
            error = format!("{error:#}"),
            "stopping without flushing NATS"
        );
    }
    finish(server, stop).await
}

async fn finish(
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    stop.cancel();
    server
        .await
        .context("probe server task")?
        .context("probe server")?;
    tracing::info!("stopped");
    Ok(())
}

/// What the controllers of every watched namespace share.
struct Shared {
    /// The operator's own namespace (gateway ConfigMap and token Secret).
    namespace: String,
    identity: String,
    images: ImagePolicy,
    metrics: Arc<Metrics>,
}

/// Runs the controllers of every watched namespace and the gateway sync until `stop`
/// fires.
async fn run_controllers(
    args: &Args,
    clients: &Clients,
    known: Known,
    nats: async_nats::Client,
    shared: Shared,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut scopes: Vec<Option<String>> = args
        .watch_namespaces
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .map(|n| Some(n.to_string()))
        .collect();
    scopes.sort();
    scopes.dedup();
    if scopes.is_empty() {
        scopes.push(None);
    }
    let settings = dispatcher_settings(args);
    // Before any Deployment is built, so that the first ones carry the addresses.
    let apiserver = Arc::new(ApiserverAddresses::default());
    apiserver.refresh(&clients.calls, &known).await;
    let apiserver_refresh = {
        let (apiserver, client, stop) = (apiserver.clone(), clients.calls.clone(), stop.clone());
        async move { apiserver.keep_current(client, known, stop).await }
    };
    let mut parts = Vec::new();
    let mut route_stores = Vec::new();
    let mut routes_ready = Vec::new();
    let mut secret_stores = Vec::new();
    let changes = Changes::default();
    for scope in scopes {
        tracing::info!(namespace = scope.as_deref().unwrap_or("(all)"), "watching");
        let scope = ApiScope(clients.watch.clone(), scope);
        if args.watch_secrets {
            let (part, store) = secret_metadata(&scope, changes.clone(), stop.clone());
            parts.push(part);
            secret_stores.push(store);
        }
        let (part, routes, ready) = scope_controllers(
            scope,
            |targets, routes, replays| {
                Context::new(
                    clients.calls.clone(),
                    nats.clone(),
                    targets,
                    routes,
                    replays,
                    settings.clone(),
                    shared.images.clone(),
                    apiserver.clone(),
                    args.status_interval.as_std(),
                    shared.metrics.clone(),
                    shared.identity.clone(),
                )
            },
            changes.clone(),
            stop.clone(),
        );
        parts.push(part);
        route_stores.push(routes);
        routes_ready.push(ready);
    }

    let gateway = GatewaySync {
        client: clients.calls.clone(),
        namespace: shared.namespace,
        config_map: args.gateway.config_map.clone(),
        tokens_secret: args.gateway.tokens_secret.clone(),
        tokens_dir: args.gateway.tokens_dir.clone(),
        routes: route_stores,
        routes_ready: routes_ready.clone(),
        secrets: args.watch_secrets.then_some(secret_stores),
        changes,
        resync: args.gateway.resync(args.watch_secrets),
        metrics: shared.metrics,
    }
    .run(stop.clone());

    let became_ready = async {
        for ready in &routes_ready {
            if ready.wait().await.is_err() {
                return;
            }
        }
        ready.store(true, Ordering::Relaxed);
        tracing::info!("caches synced; reconciling");
    };
    tokio::join!(
        futures::future::join_all(parts),
        until_stopped("gateway sync", gateway, stop.clone()),
        until_stopped("apiserver addresses", apiserver_refresh, stop.clone()),
        became_ready
    );
}

fn dispatcher_settings(args: &Args) -> DispatcherSettings {
    DispatcherSettings {
        image: args.dispatcher.image.clone(),
        image_pull_policy: args.dispatcher.image_pull_policy.clone(),
        nats_url: args
            .dispatcher
            .nats_url
            .clone()
            .unwrap_or_else(|| args.nats.url.clone()),
        nats_auth: match (
            &args.dispatcher.nats_credentials_secret,
            &args.dispatcher.nats_token_secret,
        ) {
            (Some(secret), _) => Some(NatsAuth::Credentials {
                secret: secret.clone(),
            }),
            (None, Some(secret)) => Some(NatsAuth::Token {
                secret: secret.clone(),
            }),
            (None, None) => None,
        },
        nats_ca_secret: args.dispatcher.nats_ca_secret.clone(),
        egress_deny: args.dispatcher.egress_deny.clone(),
        egress_allow: args.dispatcher.egress_allow.clone(),
        log: args.dispatcher.log.clone(),
        log_format: args.dispatcher.log_format.clone(),
        otlp: args
            .dispatcher
            .otlp_endpoint
            .as_deref()
            .filter(|e| !e.trim().is_empty())
            .map(|endpoint| OtlpSettings {
                endpoint: endpoint.trim().to_string(),
                sampling_ratio: args.dispatcher.otlp_sampling_ratio,
                headers_secret: args.dispatcher.otlp_headers_secret.clone(),
            }),
    }
}

/// The route, target and replay controllers of one scope (a namespace, or all of
/// them), and the scope's route cache. `context` builds the reconciles' context around
/// the scope's ApiTarget, FanOutRoute and FanOutReplay caches.
///
/// Every change to a route also wakes the gateway sync (`changes`).
///
/// Secrets do not trigger reconciles: by default they are not watched at all (that
/// would need list and watch on Secrets, which is read access to all of them), and
/// routes and targets are reconciled every status interval anyway, which picks up a
/// new or rotated Secret. See [`secret_metadata`] for `--watch-secrets`.
fn scope_controllers(
    scope: ApiScope,
    context: impl FnOnce(
        (Store<ApiTarget>, Readiness),
        (Store<FanOutRoute>, Readiness),
        Store<FanOutReplay>,
    ) -> Context,
    changes: Changes,
    stop: CancellationToken,
) -> (BoxFuture<'static, ()>, Store<FanOutRoute>, Readiness) {
    let routes_api: Api<FanOutRoute> = scope.get();
    let targets_api: Api<ApiTarget> = scope.get();
    let dispatchers = watcher::Config::default().labels(
        "app.kubernetes.io/component=dispatcher,app.kubernetes.io/managed-by=fanout-operator",
    );

    // The route cache is filled here rather than inside the controller, so that each
    // change also wakes the gateway sync (after the cache has it).
    let (route_store, route_writer) = reflector::store();
    let (routes_ready, routes_filled) = Readiness::new();
    let route_events = reflector::reflector(
        route_writer,
        watcher(routes_api.clone(), watcher::Config::default()).default_backoff(),
    )
    .inspect(move |event| {
        routes_filled.on_event(event);
        changes.on_event(event);
    })
    .applied_objects();
    let routes = Controller::for_stream(route_events, route_store.clone())
        .owns(scope.get::<Deployment>(), dispatchers);
    let (target_store, target_writer) = reflector::store();
    let (targets_ready, targets_filled) = Readiness::new();
    let target_events = reflector::reflector(
        target_writer,
        watcher(targets_api.clone(), watcher::Config::default()),
    )
    .default_backoff()
    .inspect(move |event| targets_filled.on_event(event))
    .touched_objects();
    let replays = Controller::new(scope.get::<FanOutReplay>(), watcher::Config::default());
    let ctx = Arc::new(context(
        (target_store, targets_ready),
        (route_store.clone(), routes_ready.clone()),
        replays.store(),
    ));

    // A changed ApiTarget re-renders every route that references it.
    let by_target = route_store.clone();
    let stop_routes = stop.clone();
    let route_controller = routes
        .watches_stream(target_events, move |t: ApiTarget| {
            routes_using_target(&by_target.state(), &t)
        })
        .graceful_shutdown_on(async move { stop_routes.cancelled().await })
        .run(
            route_controller::reconcile,
            route_controller::error_policy,
            ctx.clone(),
        )
        .for_each(|outcome| async move { log_stream_error("route controller", outcome) });

    let stop_targets = stop.clone();
    let target_controller = Controller::new(targets_api, watcher::Config::default())
        .watches(
            routes_api,
            watcher::Config::default(),
            move |r: FanOutRoute| {
                let namespace = r.metadata.namespace.clone().unwrap_or_default();
                r.spec
                    .targets
                    .iter()
                    .map(|t| ObjectRef::new(&t.api_target_ref.name).within(&namespace))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(async move { stop_targets.cancelled().await })
        .run(
            target_controller::reconcile,
            target_controller::error_policy,
            ctx.clone(),
        )
        .for_each(|outcome| async move { log_stream_error("target controller", outcome) });

    // Replays run as tasks of their own; this guard stops them when the controllers
    // stop, and with them when the Lease is lost (which drops this future).
    let replay_guard = ctx.replays.guard();
    let stop_replays = stop.clone();
    let replay_controller = replays
        .graceful_shutdown_on(async move { stop_replays.cancelled().await })
        .run(
            replay_controller::reconcile,
            replay_controller::error_policy,
            ctx,
        )
        .for_each(|outcome| async move { log_stream_error("replay controller", outcome) });

    let part = async move {
        let _replays_stop_with_us = replay_guard;
        tokio::join!(
            until_stopped("route controller", route_controller, stop.clone()),
            until_stopped("target controller", target_controller, stop.clone()),
            until_stopped("replay controller", replay_controller, stop),
        );
    };
    (part.boxed(), route_store, routes_ready)
}

/// With `--watch-secrets`: a cache of the metadata of every Secret in `scope`, whose
/// changes wake the gateway sync, so that a rotated ingest token is copied at once
/// rather than at the next resync. Only resourceVersions are kept: annotations (a
/// client-side `kubectl apply` leaves the whole Secret, values included, in one) and
/// managed fields are dropped before the cache sees them. The watch needs list and
/// watch on Secrets, which RBAC cannot narrow to some Secrets; hence opt-in
/// (docs/security/operator.md).
fn secret_metadata(
    scope: &ApiScope,
    changes: Changes,
    stop: CancellationToken,
) -> (BoxFuture<'static, ()>, Store<PartialObjectMeta<Secret>>) {
    let (store, writer) = reflector::store();
    let events = watcher(
        scope.get::<PartialObjectMeta<Secret>>(),
        watcher::Config::default(),
    )
    .modify(|secret| {
        secret.metadata.annotations = None;
        secret.metadata.managed_fields = None;
        secret.metadata.labels = None;
        secret.metadata.owner_references = None;
    })
    .default_backoff();
    let watch = reflector::reflector(writer, events).for_each(move |event| {
        if let Err(error) = &event {
            tracing::warn!(error = %fanout_config::error_chain(error), "Secret watch error; retrying");
        }
        changes.on_event(&event);
        std::future::ready(())
    });
    let part = async move {
        tokio::select! {
            _ = watch => {}
            _ = stop.cancelled() => {}
        }
    };
    (part.boxed(), store)
}

/// Logs what a controller's stream yields besides reconciles: a failed reconcile is
/// logged by its error policy, but a watch that fails (and is retried) would
/// otherwise leave no trace while the controller waits.
fn log_stream_error<T, E1, E2>(part: &'static str, outcome: Result<T, ControllerError<E1, E2>>)
where
    E1: std::error::Error + 'static,
    E2: std::error::Error + 'static,
{
    match outcome {
        Ok(_) | Err(ControllerError::ReconcilerFailed(..)) => {}
        Err(error @ ControllerError::ObjectNotFound(_)) => {
            tracing::debug!(part, error = %fanout_config::error_chain(&error), "controller");
        }
        Err(error) => {
            tracing::warn!(part, error = %fanout_config::error_chain(&error), "controller stream error; retrying");
        }
    }
}

/// How long in-flight reconciles may take to finish once the operator stops.
/// Cutting one short is safe (every step is idempotent and the next leader redoes
/// it); the bound exists because a controller stopped before its cache synced never
/// finishes by itself (kube-runtime waits for a store that will not fill).
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `part` until it ends, or until `SHUTDOWN_GRACE` after `stop` fired.
async fn until_stopped(
    name: &'static str,
    part: impl Future<Output = ()>,
    stop: CancellationToken,
) {
    let deadline = async {
        stop.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        _ = part => tracing::debug!(part = name, "stopped"),
        _ = deadline => tracing::warn!(part = name, "did not stop within the grace period; dropping it"),
    }
}

/// Cluster-wide, or one of the namespaces of `--watch-namespace`.
struct ApiScope(kube::Client, Option<String>);

impl ApiScope {
    fn get<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        match &self.1 {
            Some(ns) => Api::namespaced(self.0.clone(), ns),
            None => Api::all(self.0.clone()),
        }
    }
}

fn routes_using_target(
    routes: &[Arc<FanOutRoute>],
    target: &ApiTarget,
) -> Vec<ObjectRef<FanOutRoute>> {
    let namespace = target.metadata.namespace.as_deref();
    let name = target.metadata.name.as_deref().unwrap_or_default();
    routes
        .iter()
        .filter(|r| r.metadata.namespace.as_deref() == namespace)
        .filter(|r| r.spec.targets.iter().any(|t| t.api_target_ref.name == name))
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// The namespace of the pod's service account, when running in a cluster.
fn own_namespace() -> String {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "default".into())
}
