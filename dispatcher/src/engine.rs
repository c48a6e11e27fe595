//! Starts and stops the delivery of one route: a worker per target plus the health
//! reporter. Used by `fanout dispatch`, by `fanout standalone` and by the tests.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use fanout_config::RouteConfig;
use fanout_config::egress::EgressPolicy;
use fanout_config::health::HealthSnapshot;
use fanout_config::route::AfterDeadLetter;
use fanout_nats_client::handshake::{Server, Settings};
use fanout_nats_client::pull::Pull;
use fanout_otel::opentelemetry_sdk::trace::SdkTracer;
use fanout_process::nats::NatsArgs;
use fanout_process::thread::on_own_thread;
use fanout_provision::Provisioner;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::expressions::{ExpressionStartError, TargetExpressions};
use crate::history::{Flusher, RouteHistory};
use crate::http::{ClientError, ClientSettings, HttpClient};
use crate::oauth2::TokenSource;
use crate::ordering::{BlockedKeys, KeySource, Ordered};
use crate::rate_share::SharedLimit;
use crate::report::Reporter;
use crate::request::{Auth, RequestTemplate, TemplateError};
use crate::telemetry::{Metrics, TargetTelemetry};
use crate::tracing_otel::TargetSpans;
use crate::worker::{RouteContext, Worker, WorkerParts};
use crate::{expiry, health};

/// How the engine runs, beyond the route's configuration.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// This process's name in health snapshots (the pod name in Kubernetes).
    pub pod: String,
    /// How often health snapshots are written.
    pub health_interval: Duration,
    /// How long snapshots live in the KV bucket without being refreshed.
    pub health_ttl: Duration,
    /// How long requests in flight may take to finish after a stop.
    pub shutdown_grace: Duration,
    /// How each target's worker connects to NATS to take its events: a connection
    /// of its own, made with these settings.
    pub nats: NatsArgs,
    /// Each target's worker runs on a thread of its own, with its own
    /// single-threaded runtime (see [`fanout_process::thread`]), instead of on the
    /// caller's runtime.
    pub thread_per_target: bool,
    /// Where targets may be connected to. The default is a dispatcher pod's: loopback,
    /// link-local, metadata and unspecified addresses refused.
    pub egress: Arc<EgressPolicy>,
    /// Where spans go, when tracing is on.
    pub tracer: Option<SdkTracer>,
}

impl EngineOptions {
    /// The defaults, with workers connecting to NATS with `nats`.
    pub fn new(nats: NatsArgs) -> Self {
        EngineOptions {
            pod: "dispatcher".into(),
            health_interval: Duration::from_secs(5),
            health_ttl: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(25),
            nats,
            thread_per_target: false,
            egress: Arc::default(),
            tracer: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("stream {stream} does not exist (is the route provisioned?)")]
    MissingStream {
        stream: String,
        #[source]
        source: jetstream::context::GetStreamError,
    },
    #[error(
        "targets[{target}]: consumer {consumer} on stream {stream} does not exist (is the route provisioned?)"
    )]
    MissingConsumer {
        target: String,
        consumer: String,
        stream: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("targets[{target}].policy")]
    Template {
        target: String,
        #[source]
        source: TemplateError,
    },
    #[error("targets[{target}].policy")]
    HttpClient {
        target: String,
        #[source]
        source: ClientError,
    },
    #[error("targets[{target}].credentials.oauth2.tokenUrl")]
    TokenEndpoint {
        target: String,
        #[source]
        source: ClientError,
    },
    #[error(
        "targets[{target}].policy.rateLimit: {requests_per_second} requests/s cannot be enforced; use a rate in (0, 1000000]"
    )]
    RateLimit {
        target: String,
        requests_per_second: f64,
    },
    #[error("targets[{target}].{source}")]
    Expression {
        target: String,
        #[source]
        source: ExpressionStartError,
    },
    #[error("the health KV bucket")]
    HealthBucket(#[source] fanout_provision::ProvisionError),
    #[error("the ordering KV bucket (targets with ordering.afterDeadLetter: block)")]
    OrderingBucket(#[source] fanout_provision::ProvisionError),
    #[error("starting the thread of target {target}")]
    Thread {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("targets has {targets} entries but {auths} credential sets were given")]
    CredentialCount { targets: usize, auths: usize },
    #[error("the NATS settings")]
    NatsSettings(#[from] fanout_nats_client::SettingsError),
}

/// A running route.
pub struct Engine {
    workers: Vec<Arc<Worker>>,
    pod: String,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    /// Targets whose worker thread panicked.
    lost: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Publishes the delivery history; finished after the workers.
    history: Option<Flusher>,
}

impl Engine {
    /// Checks that the stream and every consumer exist, then starts delivering.
    /// `auths` holds each target's credentials, in the order of `config.targets`.
    pub async fn start(
        config: RouteConfig,
        auths: Vec<Auth>,
        nats: async_nats::Client,
        metrics: Arc<Metrics>,
        options: EngineOptions,
    ) -> Result<Engine, StartError> {
        if auths.len() != config.targets.len() {
            return Err(StartError::CredentialCount {
                targets: config.targets.len(),
                auths: auths.len(),
            });
        }
        // The HTTP client names ring itself; other rustls users in the process (the NATS
        // client) use the process default, ring too, as kube does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (servers, settings) = fanout_nats_client::settings(&options.nats, "fanout-dispatcher")?;
        let connect = Connect {
            servers,
            settings,
            ping_interval: options.nats.ping_interval.as_std(),
        };
        // Built for the first https target, then shared.
        let mut tls = None;

        let js = jetstream::new(nats);
        let stream =
            js.get_stream(&config.stream)
                .await
                .map_err(|source| StartError::MissingStream {
                    stream: config.stream.clone(),
                    source,
                })?;
        let label = format!("{}/{}", config.namespace, config.name);
        let route = Arc::new(RouteContext {
            label: label.clone(),
            js: js.clone(),
            dead_letter_enabled: config.dead_letter_stream.is_some(),
            expiry: config.expiry,
        });
        let expiry = config.expiry;
        let replicas = config.replicas.max(1);
        let mut history = config
            .history
            .as_ref()
            .map(|_| RouteHistory::new(config.key()));
        let config_key = config.key();
        // Created for the first target that blocks keys until a redrive.
        let mut ordering_bucket: Option<async_nats::jetstream::kv::Store> = None;

        let mut workers = Vec::with_capacity(config.targets.len());
        for (target, auth) in config.targets.into_iter().zip(auths) {
            let consumer: PullConsumer =
                stream
                    .get_consumer(&target.consumer)
                    .await
                    .map_err(|source| StartError::MissingConsumer {
                        target: target.name.clone(),
                        consumer: target.consumer.clone(),
                        stream: config.stream.clone(),
                        source,
                    })?;
            let client_error = |source| StartError::HttpClient {
                target: target.name.clone(),
                source,
            };
            let settings = client_settings(&target.policy, &options.egress);
            let client = match &auth.tls {
                Some(own) => HttpClient::new(&target.policy.url, &settings, &mut Some(own.clone())),
                None => HttpClient::new(&target.policy.url, &settings, &mut tls),
            }
            .map_err(client_error)?;
            let tokens = match &auth.oauth2 {
                Some(grant) => Some(
                    TokenSource::new(&target.name, grant, &settings, &mut tls).map_err(
                        |source| StartError::TokenEndpoint {
                            target: target.name.clone(),
                            source,
                        },
                    )?,
                ),
                None => None,
            };
            let template = RequestTemplate::new(&label, &target, auth).map_err(|source| {
                StartError::Template {
                    target: target.name.clone(),
                    source,
                }
            })?;
            let expressions =
                TargetExpressions::compile(&target).map_err(|source| StartError::Expression {
                    target: target.name.clone(),
                    source,
                })?;
            let limiter = match &target.policy.rate_limit {
                Some(limit) => {
                    Some(SharedLimit::new(limit.clone(), replicas).ok_or_else(|| {
                        StartError::RateLimit {
                            target: target.name.clone(),
                            requests_per_second: limit.requests_per_second,
                        }
                    })?)
                }
                None => None,
            };
            let ordered = match &target.ordering {
                Some(ordering) => {
                    let blocked = match ordering.after_dead_letter {
                        AfterDeadLetter::Block => {
                            let store = match &ordering_bucket {
                                Some(store) => store.clone(),
                                None => ordering_bucket
                                    .insert(
                                        Provisioner::new(js.clone())
                                            .ensure_ordering_bucket()
                                            .await
                                            .map_err(StartError::OrderingBucket)?,
                                    )
                                    .clone(),
                            };
                            Some(BlockedKeys::new(store, &config_key, &target.name))
                        }
                        AfterDeadLetter::Continue => None,
                    };
                    let key =
                        KeySource::new(&ordering.key).map_err(|source| StartError::Expression {
                            target: target.name.clone(),
                            source,
                        })?;
                    Some(Ordered::new(ordering, key, blocked))
                }
                None => None,
            };
            let telemetry = TargetTelemetry::new(
                &metrics,
                &config.namespace,
                &config.name,
                &target.name,
                expiry.map(|e| e.max_age.as_std()),
            );
            let report = Reporter::new(
                history.as_mut().map(|h| {
                    let dropped =
                        metrics.history_dropped(&config.namespace, &config.name, &target.name);
                    h.target(&target.name, dropped)
                }),
                options
                    .tracer
                    .clone()
                    .map(|tracer| TargetSpans::new(tracer, &label, &target.name)),
            );
            workers.push(Arc::new(Worker::new(WorkerParts {
                route: route.clone(),
                config: target,
                consumer,
                template,
                client,
                tokens,
                limiter,
                telemetry,
                report,
                expressions,
                ordered,
            })));
        }

        let bucket = Provisioner::new(js.clone())
            .ensure_health_bucket(options.health_ttl)
            .await
            .map_err(StartError::HealthBucket)?;

        let history = history.map(|h| h.start(js.clone(), CancellationToken::new()));
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let (lost_tx, lost) = tokio::sync::mpsc::unbounded_channel();
        for worker in &workers {
            let grace = options.shutdown_grace;
            let run = consume(connect.clone(), worker.clone(), shutdown.clone(), grace);
            if options.thread_per_target {
                let name = format!("target-{}", worker.name());
                let done = on_own_thread(name, move || run).map_err(|source| {
                    shutdown.cancel();
                    StartError::Thread {
                        target: worker.name().to_string(),
                        source,
                    }
                })?;
                let (route, target) = (label.clone(), worker.name().to_string());
                let lost = lost_tx.clone();
                tasks.spawn(async move {
                    if done.await.is_err() {
                        tracing::error!(%route, %target, "the target's worker thread panicked; it delivers no more until the dispatcher restarts");
                        let _ = lost.send(target);
                    }
                });
            } else {
                tasks.spawn(run);
            }
        }
        // On the engine's runtime and connection: a few requests per sweep interval.
        for worker in &workers {
            tasks.spawn(expiry::watch(
                worker.clone(),
                stream.clone(),
                expiry,
                shutdown.clone(),
            ));
        }
        tasks.spawn(health::report(
            workers.clone(),
            bucket,
            js.client(),
            options.pod.clone(),
            options.health_interval,
            shutdown.clone(),
        ));
        tracing::info!(route = %label, targets = workers.len(), pod = %options.pod, egress = %options.egress, "delivering");
        Ok(Engine {
            workers,
            pod: options.pod,
            shutdown,
            tasks,
            lost,
            history,
        })
    }

    /// The current health of every target, as it would be reported.
    pub fn snapshots(&self) -> Vec<HealthSnapshot> {
        self.workers.iter().map(|w| w.snapshot(&self.pod)).collect()
    }

    /// Resolves with a target's name if its worker thread panicked: that target gets
    /// no more deliveries from this process, which should then stop and be restarted.
    pub async fn worker_lost(&mut self) -> String {
        match self.lost.recv().await {
            Some(target) => target,
            // No thread per target, or every watcher has finished: nothing to report.
            None => std::future::pending().await,
        }
    }

    /// Whether every target's consumer connection is up, for `/readyz`.
    pub fn readiness(&self) -> Readiness {
        Readiness {
            workers: self.workers.clone(),
        }
    }

    /// Stops fetching, drains, writes a last health snapshot, and returns when done.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        // The workers' last records too.
        if let Some(history) = self.history.take() {
            history.finish().await;
        }
    }
}

/// Whether the engine's targets can take events: a cheap handle for a probe.
#[derive(Clone)]
pub struct Readiness {
    workers: Vec<Arc<Worker>>,
}

impl Readiness {
    /// `Err` names the first target whose consumer connection is not up.
    pub fn check(&self) -> Result<(), String> {
        match self.workers.iter().find(|w| !w.is_pulling()) {
            Some(worker) => Err(format!("target {} is not connected to NATS", worker.name())),
            None => Ok(()),
        }
    }
}

/// How workers connect to NATS to take their events.
#[derive(Clone)]
struct Connect {
    servers: Vec<Server>,
    settings: Settings,
    ping_interval: Duration,
}

/// How long the acks still queued at stop may take to be written.
const FLUSH_AT_STOP: Duration = Duration::from_secs(5);

/// Runs `worker` on a NATS connection of its own, made on the calling thread's
/// runtime, which then drives it: its events and acks never cross threads. Dead
/// letters and reads of the consumer go through the engine's connection: they are
/// rare.
async fn consume(
    connect: Connect,
    worker: Arc<Worker>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let Connect {
        servers,
        mut settings,
        ping_interval,
    } = connect;
    settings.name = format!("fanout-dispatcher-{}", worker.name());
    let pull = Pull::start(servers, settings, ping_interval, worker.pull_config());
    worker.clone().run(pull.clone(), shutdown, grace).await;
    // Acks are queued: send them before the connection goes.
    pull.flush(FLUSH_AT_STOP).await;
    pull.close();
}

fn client_settings(
    policy: &fanout_config::DeliveryPolicy,
    egress: &Arc<EgressPolicy>,
) -> ClientSettings {
    ClientSettings {
        timeout: policy.timeout.as_std(),
        // No more connections are ever busy at once than requests in flight.
        max_idle: policy.max_in_flight as usize,
        egress: egress.clone(),
    }
}
