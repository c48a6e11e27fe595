//! The Kubernetes objects that run a route's dispatchers: a ServiceAccount without
//! API access, a ConfigMap holding the rendered route configuration, and a
//! Deployment whose pod template changes whenever the configuration or a referenced
//! Secret does, so that an edit rolls the pods. Pure: built from the route, its
//! rendering and the operator's settings, applied by the route controller.

use std::collections::BTreeMap;

use fanout_api::FanOutRoute;
use fanout_api::names::RouteKey;
use fanout_api::render::Rendered;
use fanout_api::route::ImagePullPolicy;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecretProjection,
    SecurityContext, ServiceAccount, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use sha2::{Digest, Sha256};

/// Where dispatcher pods find their configuration and Secrets. The rendering uses
/// `SECRETS_DIR` for credential file paths, so the two must agree.
pub const CONFIG_DIR: &str = "/etc/fanout/route";
pub const CONFIG_KEY: &str = "route.yaml";
pub const SECRETS_DIR: &str = "/var/run/fanout/secrets";
/// Port of the dispatcher's /metrics, /healthz and /readyz.
pub const METRICS_PORT: i32 = 9090;
/// Pod template annotation whose change rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "fanout.dev/config-hash";
/// Label naming the route a dispatcher pod serves.
pub const ROUTE_LABEL: &str = "fanout.dev/route";

/// How dispatcher pods are built, from the operator's flags.
#[derive(Clone, Debug)]
pub struct DispatcherSettings {
    pub image: String,
    pub image_pull_policy: String,
    pub nats_url: String,
}

/// The three objects, ready for server-side apply.
#[derive(Clone, Debug)]
pub struct DispatcherObjects {
    pub service_account: ServiceAccount,
    pub config_map: ConfigMap,
    pub deployment: Deployment,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("serializing the rendered dispatcher configuration")]
    Serialize(#[source] serde_yaml_ng::Error),
    #[error("the route has no uid yet; owner references need one")]
    NoUid,
}

/// Builds the objects for `route`. `secrets` maps each referenced Secret to its keys
/// and `resource_version`s to the versions read while checking them: a rotated
/// Secret changes the hash and so restarts the pods, which read credentials at start.
pub fn build(
    route: &FanOutRoute,
    rendered: &Rendered,
    secrets: &BTreeMap<String, Vec<String>>,
    secret_versions: &BTreeMap<String, String>,
    settings: &DispatcherSettings,
) -> Result<DispatcherObjects, BuildError> {
    let key = RouteKey::new(&rendered.config.namespace, &rendered.config.name);
    let name = key.dispatcher_object_name();
    let owner = route.controller_owner_ref(&()).ok_or(BuildError::NoUid)?;
    let labels = labels(&key.name);
    let meta = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(key.namespace.clone()),
        labels: Some(labels.clone()),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    };

    let config_yaml = serde_yaml_ng::to_string(&rendered.config).map_err(BuildError::Serialize)?;
    let mut hash = Sha256::new();
    hash.update(config_yaml.as_bytes());
    for (secret, version) in secret_versions {
        hash.update(format!("\n{secret}={version}"));
    }
    let config_hash = format!("{:x}", hash.finalize());

    let service_account = ServiceAccount {
        metadata: meta.clone(),
        // Dispatchers talk to NATS and the targets only.
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    };
    let config_map = ConfigMap {
        metadata: meta.clone(),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), config_yaml)])),
        ..ConfigMap::default()
    };

    let dispatcher = route.spec.dispatcher.clone().unwrap_or_default();
    let image = dispatcher.image.unwrap_or_else(|| settings.image.clone());
    let pull_policy = match dispatcher.image_pull_policy {
        Some(ImagePullPolicy::Always) => "Always".to_string(),
        Some(ImagePullPolicy::IfNotPresent) => "IfNotPresent".to_string(),
        Some(ImagePullPolicy::Never) => "Never".to_string(),
        None => settings.image_pull_policy.clone(),
    };
    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: name.clone(),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "config".into(),
        mount_path: CONFIG_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    if !secrets.is_empty() {
        // One projected volume lays every key out as <secret>/<key>, the paths the
        // rendered configuration names.
        volumes.push(Volume {
            name: "secrets".into(),
            projected: Some(ProjectedVolumeSource {
                default_mode: Some(0o440),
                sources: Some(
                    secrets
                        .iter()
                        .map(|(secret, keys)| VolumeProjection {
                            secret: Some(SecretProjection {
                                name: secret.clone(),
                                items: Some(
                                    keys.iter()
                                        .map(|k| KeyToPath {
                                            key: k.clone(),
                                            path: format!("{secret}/{k}"),
                                            mode: None,
                                        })
                                        .collect(),
                                ),
                                optional: Some(false),
                            }),
                            ..VolumeProjection::default()
                        })
                        .collect(),
                ),
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "secrets".into(),
            mount_path: SECRETS_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }

    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("metrics".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        ..Probe::default()
    };
    let env = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    };
    let container = Container {
        name: "dispatcher".into(),
        image: Some(image),
        image_pull_policy: Some(pull_policy),
        args: Some(vec!["dispatch".into()]),
        env: Some(vec![
            env(
                "FANOUT_DISPATCH_CONFIG",
                &format!("{CONFIG_DIR}/{CONFIG_KEY}"),
            ),
            env("FANOUT_NATS_URL", &settings.nats_url),
            env("FANOUT_LISTEN", &format!("0.0.0.0:{METRICS_PORT}")),
            env("FANOUT_LOG_FORMAT", "json"),
            EnvVar {
                name: "FANOUT_POD_NAME".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.name".into(),
                        api_version: None,
                    }),
                    ..EnvVarSource::default()
                }),
            },
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: METRICS_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(probe("/readyz", 5)),
        liveness_probe: Some(probe("/healthz", 10)),
        resources: Some(dispatcher.resources.unwrap_or_else(default_resources)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    };

    let deployment = Deployment {
        metadata: meta,
        spec: Some(DeploymentSpec {
            replicas: Some(i32::try_from(rendered.config.replicas).unwrap_or(i32::MAX)),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                match_expressions: None,
            },
            // Start a new pod before stopping an old one: a stopping dispatcher hands
            // its events back for immediate redelivery, so overlap costs nothing.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_string(),
                        config_hash,
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(name),
                    automount_service_account_token: Some(false),
                    // The dispatcher's shutdown grace (25 s) plus time to flush acks.
                    termination_grace_period_seconds: Some(35),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    };
    Ok(DispatcherObjects {
        service_account,
        config_map,
        deployment,
    })
}

/// Labels of every dispatcher object of a route; also the Deployment's selector.
pub fn labels(route: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "fanout".into()),
        ("app.kubernetes.io/component".into(), "dispatcher".into()),
        (
            "app.kubernetes.io/managed-by".into(),
            "fanout-operator".into(),
        ),
        (ROUTE_LABEL.into(), route.into()),
    ])
}

/// Measured: one dispatcher thread delivers ~20k events/s in about one core and
/// 60 MiB (docs/benchmarks.md); the defaults leave room for bursts.
fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), Quantity("100m".into())),
            ("memory".into(), Quantity("64Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".into(),
            Quantity("256Mi".into()),
        )])),
        ..ResourceRequirements::default()
    }
}
