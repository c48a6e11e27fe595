//! The dispatcher pod: one container running `fanout dispatch` as a non-root user
//! without API access, its configuration and Secrets mounted read-only, told by
//! environment where NATS, its logs, traces and egress rules are.

use std::collections::BTreeMap;
use std::net::IpAddr;

use fanout_api::route::{DispatcherSpec, ImagePullPolicy};
use fanout_config::egress::Entry;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, ObjectFieldSelector, PodSecurityContext, PodSpec, Probe,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecretProjection, SecurityContext,
    Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    CONFIG_DIR, CONFIG_KEY, DISPATCHER_UID, DispatcherSettings, METRICS_PORT, NATS_CA_KEY,
    OTLP_HEADERS_KEY, SECRETS_DIR,
};

/// The pod of the dispatcher objects named `name`, as `dispatcher` (the route's
/// `spec.dispatcher`) and the operator's `settings` ask.
pub(super) fn spec(
    name: &str,
    dispatcher: DispatcherSpec,
    secrets: &BTreeMap<String, Vec<String>>,
    settings: &DispatcherSettings,
    apiserver: &[IpAddr],
) -> PodSpec {
    let (volumes, mounts) = volumes(name, secrets);
    let env = env(settings, apiserver);
    PodSpec {
        service_account_name: Some(name.to_string()),
        automount_service_account_token: Some(false),
        // The dispatcher's shutdown grace (25 s), the 5 s its drain may take beyond it
        // and the 5 s of its last flush to NATS, with a few seconds to spare.
        termination_grace_period_seconds: Some(40),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(DISPATCHER_UID),
            run_as_group: Some(DISPATCHER_UID),
            // Secret files are mode 0440 and owned by root unless the kubelet gives
            // them this group: without it the dispatcher cannot read a target's
            // credentials and crash-loops.
            fs_group: Some(DISPATCHER_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        containers: vec![container(dispatcher, settings, env, mounts)],
        volumes: Some(volumes),
        ..PodSpec::default()
    }
}

/// The configuration (the ConfigMap `name`) and, when the route uses any, the
/// Secrets, with where the container mounts each.
fn volumes(name: &str, secrets: &BTreeMap<String, Vec<String>>) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: name.to_string(),
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
        volumes.push(secrets_volume(secrets));
        mounts.push(VolumeMount {
            name: "secrets".into(),
            mount_path: SECRETS_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    (volumes, mounts)
}

/// One projected volume that lays every key out as `<secret>/<key>`, the paths the
/// rendered configuration names.
fn secrets_volume(secrets: &BTreeMap<String, Vec<String>>) -> Volume {
    Volume {
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
    }
}

/// The dispatcher's environment: its configuration, NATS (and how to authenticate),
/// logs, egress rules and trace export.
fn env(settings: &DispatcherSettings, apiserver: &[IpAddr]) -> Vec<EnvVar> {
    let env = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    };
    let mut env_vars = vec![
        env(
            "FANOUT_DISPATCH_CONFIG",
            &format!("{CONFIG_DIR}/{CONFIG_KEY}"),
        ),
        env("FANOUT_NATS_URL", &settings.nats_url),
        env("FANOUT_LISTEN", &format!("0.0.0.0:{METRICS_PORT}")),
        env("FANOUT_LOG", &settings.log),
        env("FANOUT_LOG_FORMAT", &settings.log_format),
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
    ];
    if let Some(auth) = &settings.nats_auth {
        let (name, file) = auth.env();
        env_vars.push(env(name, &file));
    }
    if let Some(secret) = &settings.nats_ca_secret {
        let file = format!("{SECRETS_DIR}/{secret}/{NATS_CA_KEY}");
        env_vars.push(env("FANOUT_NATS_CA_FILE", &file));
    }
    // The egress policy (the dispatcher's `--egress-*` flags). Only what is set: an
    // empty value would not parse.
    let list = |items: Vec<String>| items.join(",");
    for (name, value) in [
        (
            "FANOUT_EGRESS_APISERVER",
            list(apiserver.iter().map(IpAddr::to_string).collect()),
        ),
        (
            "FANOUT_EGRESS_DENY",
            list(settings.egress_deny.iter().map(Entry::to_string).collect()),
        ),
        (
            "FANOUT_EGRESS_ALLOW",
            list(settings.egress_allow.iter().map(Entry::to_string).collect()),
        ),
    ] {
        if !value.is_empty() {
            env_vars.push(env(name, &value));
        }
    }
    if let Some(otlp) = &settings.otlp {
        env_vars.push(env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp.endpoint));
        env_vars.push(env(
            "FANOUT_OTLP_SAMPLING_RATIO",
            &otlp.sampling_ratio.to_string(),
        ));
        if let Some(secret) = &otlp.headers_secret {
            let file = format!("{SECRETS_DIR}/{secret}/{OTLP_HEADERS_KEY}");
            env_vars.push(env("FANOUT_OTLP_HEADERS_FILE", &file));
        }
    }
    env_vars
}

/// The `dispatcher` container: the route's image, pull policy and resources where
/// it sets them, else the platform's.
fn container(
    dispatcher: DispatcherSpec,
    settings: &DispatcherSettings,
    env: Vec<EnvVar>,
    mounts: Vec<VolumeMount>,
) -> Container {
    let pull_policy = match dispatcher.image_pull_policy {
        Some(ImagePullPolicy::Always) => "Always".to_string(),
        Some(ImagePullPolicy::IfNotPresent) => "IfNotPresent".to_string(),
        Some(ImagePullPolicy::Never) => "Never".to_string(),
        None => settings.image_pull_policy.clone(),
    };
    Container {
        name: "dispatcher".into(),
        image: Some(dispatcher.image.unwrap_or_else(|| settings.image.clone())),
        image_pull_policy: Some(pull_policy),
        args: Some(vec!["dispatch".into()]),
        env: Some(env),
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
    }
}

/// An HTTP probe of the metrics port.
fn probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("metrics".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        ..Probe::default()
    }
}

/// A small request that lets a dispatcher start anywhere, a limit with room for
/// bursts (docs/capacity.md says what a target rate needs).
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
