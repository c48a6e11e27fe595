//! The Kubernetes objects that run a route's dispatchers: a ServiceAccount without
//! API access, a ConfigMap holding the rendered route configuration, and a
//! Deployment whose pod template changes whenever the configuration or a referenced
//! Secret does, so that an edit rolls the pods. The pods get the platform's egress
//! policy and the apiserver's addresses to refuse. Pure: built from the route, its
//! rendering and the operator's settings, applied by the route controller.
//!
//! [`build`] names each object's builder; the pod they run is built in [`pod`]
//! (container, environment, volumes, security).

mod pod;

use std::collections::BTreeMap;
use std::net::IpAddr;

use fanout_api::FanOutRoute;
use fanout_api::names::RouteKey;
use fanout_api::render::Rendered;
use fanout_config::egress::Entry;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, PodTemplateSpec, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use sha2::{Digest, Sha256};

// Named by the tests below, which predate the pod builders' own module.
#[cfg(test)]
use fanout_api::route::ImagePullPolicy;

/// Where dispatcher pods find their configuration and Secrets. The rendering uses
/// `SECRETS_DIR` for credential file paths, so the two must agree.
pub const CONFIG_DIR: &str = "/etc/fanout/route";
pub const CONFIG_KEY: &str = "route.yaml";
pub const SECRETS_DIR: &str = "/var/run/fanout/secrets";
/// Port of the dispatcher's /metrics, /healthz and /readyz.
pub const METRICS_PORT: i32 = 9090;
/// User and group the dispatcher runs as (the image's non-root user); also the group
/// that owns the mounted Secret files.
pub const DISPATCHER_UID: i64 = 65532;
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
    /// How dispatchers authenticate to NATS, if they must.
    pub nats_auth: Option<NatsAuth>,
    /// Secret (in the route's namespace) with the CA of NATS's certificate under
    /// `NATS_CA_KEY`, when dispatchers reach NATS over TLS with a private CA.
    pub nats_ca_secret: Option<String>,
    /// The platform's egress entries, added to the dispatchers' defaults.
    pub egress_deny: Vec<Entry>,
    pub egress_allow: Vec<Entry>,
    /// `FANOUT_LOG` and `FANOUT_LOG_FORMAT` of the pods (the chart's `logLevel` and
    /// `logFormat`).
    pub log: String,
    pub log_format: String,
    /// Where the pods send their spans, when tracing is on.
    pub otlp: Option<OtlpSettings>,
}

/// Key of the CA certificate in `DispatcherSettings::nats_ca_secret`.
pub const NATS_CA_KEY: &str = "ca.crt";

/// The dispatchers' trace export (`fanout dispatch --otlp-*`).
#[derive(Clone, Debug, PartialEq)]
pub struct OtlpSettings {
    pub endpoint: String,
    pub sampling_ratio: f64,
    /// Secret (in the route's namespace) with the collector's headers under
    /// [`OTLP_HEADERS_KEY`].
    pub headers_secret: Option<String>,
}

/// Key of the collector's headers in `OtlpSettings::headers_secret`.
pub const OTLP_HEADERS_KEY: &str = "headers";

/// A Secret in the route's namespace with the dispatchers' NATS credentials. It is
/// mounted with the other Secrets, under `SECRETS_DIR/<secret>/<key>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NatsAuth {
    /// Key `nats.creds`: a credentials file (JWT and NKey seed).
    Credentials { secret: String },
    /// Key `token`: a token.
    Token { secret: String },
}

impl NatsAuth {
    pub const CREDENTIALS_KEY: &str = "nats.creds";
    pub const TOKEN_KEY: &str = "token";

    /// The Secret and key to mount.
    pub fn secret_key(&self) -> (&str, &str) {
        match self {
            NatsAuth::Credentials { secret } => (secret, Self::CREDENTIALS_KEY),
            NatsAuth::Token { secret } => (secret, Self::TOKEN_KEY),
        }
    }

    /// The dispatcher's environment variable naming the mounted file.
    fn env(&self) -> (&'static str, String) {
        let (secret, key) = self.secret_key();
        let file = format!("{SECRETS_DIR}/{secret}/{key}");
        match self {
            NatsAuth::Credentials { .. } => ("FANOUT_NATS_CREDENTIALS_FILE", file),
            NatsAuth::Token { .. } => ("FANOUT_NATS_TOKEN_FILE", file),
        }
    }
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

/// Builds the objects for `route`, with `replicas` dispatcher pods (see
/// [`crate::autoscale`]). `secrets` maps each referenced Secret to its keys and
/// `resource_version`s to the versions read while checking them: a rotated Secret
/// changes the hash and so restarts the pods, which read credentials at start.
/// `apiserver`: the apiserver's addresses, which the pods refuse to connect to.
pub fn build(
    route: &FanOutRoute,
    rendered: &Rendered,
    replicas: i32,
    secrets: &BTreeMap<String, Vec<String>>,
    secret_versions: &BTreeMap<String, String>,
    settings: &DispatcherSettings,
    apiserver: &[IpAddr],
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
    let config_hash = config_hash(&config_yaml, secret_versions);
    let dispatcher = route.spec.dispatcher.clone().unwrap_or_default();
    let pod = pod::spec(&name, dispatcher, secrets, settings, apiserver);
    Ok(DispatcherObjects {
        service_account: service_account(meta.clone()),
        config_map: config_map(meta.clone(), config_yaml),
        deployment: deployment(meta, labels, replicas, config_hash, pod),
    })
}

/// The pod template's [`CONFIG_HASH_ANNOTATION`]: the configuration and the
/// referenced Secrets' versions, so that a change of either rolls the pods.
fn config_hash(config_yaml: &str, secret_versions: &BTreeMap<String, String>) -> String {
    let mut hash = Sha256::new();
    hash.update(config_yaml.as_bytes());
    for (secret, version) in secret_versions {
        hash.update(format!("\n{secret}={version}"));
    }
    format!("{:x}", hash.finalize())
}

fn service_account(meta: ObjectMeta) -> ServiceAccount {
    ServiceAccount {
        metadata: meta,
        // Dispatchers talk to NATS and the targets only.
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

fn config_map(meta: ObjectMeta, config_yaml: String) -> ConfigMap {
    ConfigMap {
        metadata: meta,
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), config_yaml)])),
        ..ConfigMap::default()
    }
}

/// `replicas` pods of `pod`, selected by `labels`, whose template carries
/// `config_hash`.
fn deployment(
    meta: ObjectMeta,
    labels: BTreeMap<String, String>,
    replicas: i32,
    config_hash: String,
    pod: PodSpec,
) -> Deployment {
    Deployment {
        metadata: meta,
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
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
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
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

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use fanout_api::route::{ApiTargetRef, AutoscalingSpec, DispatcherSpec, RouteTargetSpec};
    use fanout_api::{ApiTarget, FanOutRouteSpec};

    use super::*;

    /// Route `shop/orders` with one target, `crm`, and these dispatcher settings.
    pub(crate) fn route(dispatcher: Option<DispatcherSpec>) -> FanOutRoute {
        let mut r = FanOutRoute::new(
            "orders",
            FanOutRouteSpec {
                source: None,
                targets: vec![RouteTargetSpec {
                    name: "crm".into(),
                    api_target_ref: ApiTargetRef { name: "crm".into() },
                    filter: None,
                    transform: None,
                    overrides: None,
                    ordering: None,
                }],
                dead_letter: None,
                dispatcher,
                gateway: None,
                history: None,
            },
        );
        r.metadata.namespace = Some("shop".into());
        r.metadata.uid = Some("uid-1".into());
        r
    }

    fn rendered(route: &FanOutRoute) -> Rendered {
        let target: ApiTarget = serde_json::from_value(serde_json::json!({
            "apiVersion": "fanout.dev/v1alpha1", "kind": "ApiTarget",
            "metadata": {"name": "crm", "namespace": "shop"},
            "spec": {"url": "https://crm.example/hook",
                     "auth": {"bearer": {"secretRef": {"name": "crm-token", "key": "token"}}}}
        }))
        .unwrap();
        fanout_api::render::render(route, |_| Some(&target), Path::new(SECRETS_DIR)).unwrap()
    }

    fn settings(nats_auth: Option<NatsAuth>) -> DispatcherSettings {
        DispatcherSettings {
            image: "fanout:1".into(),
            image_pull_policy: "IfNotPresent".into(),
            nats_url: "nats://nats:4222".into(),
            nats_auth,
            nats_ca_secret: Some("nats-ca".into()),
            egress_deny: Vec::new(),
            egress_allow: Vec::new(),
            log: "info,fanout_dispatcher=debug".into(),
            log_format: "text".into(),
            otlp: None,
        }
    }

    fn secrets() -> BTreeMap<String, Vec<String>> {
        BTreeMap::from([("crm-token".to_string(), vec!["token".to_string()])])
    }

    fn pod(d: &Deployment) -> &PodSpec {
        d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    fn hash(d: &Deployment) -> String {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[CONFIG_HASH_ANNOTATION]
            .clone()
    }

    #[test]
    fn objects_are_owned_by_the_route_and_mount_secrets_where_the_config_says() {
        let r = route(None);
        let o = build(
            &r,
            &rendered(&r),
            1,
            &secrets(),
            &BTreeMap::new(),
            &settings(None),
            &[],
        )
        .unwrap();
        let owner = &o.deployment.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.uid.as_str(), owner.controller),
            ("uid-1", Some(true))
        );
        assert_eq!(
            o.config_map.metadata.owner_references,
            o.deployment.metadata.owner_references
        );
        assert_eq!(
            o.service_account.automount_service_account_token,
            Some(false)
        );
        assert_eq!(
            o.deployment.metadata.name.as_deref(),
            Some("orders-dispatcher")
        );

        let config: fanout_config::RouteConfig =
            serde_yaml_ng::from_str(&o.config_map.data.as_ref().unwrap()[CONFIG_KEY]).unwrap();
        let token_file = config.targets[0]
            .credentials
            .bearer_token_file
            .clone()
            .unwrap();
        let pod = pod(&o.deployment);
        let projected = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "secrets")
            .unwrap();
        let item = &projected
            .projected
            .as_ref()
            .unwrap()
            .sources
            .as_ref()
            .unwrap()[0]
            .secret
            .as_ref()
            .unwrap()
            .items
            .as_ref()
            .unwrap()[0];
        assert_eq!(
            Path::new(SECRETS_DIR).join(&item.path),
            token_file,
            "the mounted path is the configured one"
        );
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("fanout:1"));
        assert_eq!(
            c.security_context
                .as_ref()
                .unwrap()
                .read_only_root_filesystem,
            Some(true)
        );
        let security = pod.security_context.as_ref().unwrap();
        assert_eq!(security.run_as_non_root, Some(true));
        // The Secret files (mode 0440) belong to the group the process runs as.
        assert_eq!(
            projected.projected.as_ref().unwrap().default_mode,
            Some(0o440)
        );
        assert_eq!(security.fs_group, security.run_as_group);
        assert_eq!(security.fs_group, Some(DISPATCHER_UID));
        let selector = o
            .deployment
            .spec
            .as_ref()
            .unwrap()
            .selector
            .match_labels
            .clone()
            .unwrap();
        assert_eq!(selector[ROUTE_LABEL], "orders");
        // The operator's log settings (the chart's) reach the pods.
        let env_of = |name: &str| {
            c.env
                .as_ref()
                .unwrap()
                .iter()
                .find(|e| e.name == name)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(
            env_of("FANOUT_LOG").as_deref(),
            Some("info,fanout_dispatcher=debug")
        );
        assert_eq!(env_of("FANOUT_LOG_FORMAT").as_deref(), Some("text"));
        assert!(
            c.env
                .as_ref()
                .unwrap()
                .iter()
                .all(|e| !e.name.starts_with("FANOUT_NATS_CREDENTIALS"))
        );
    }

    #[test]
    fn the_pod_template_changes_with_the_config_or_a_secret_version() {
        let deployment = |r: &FanOutRoute, replicas: i32, secret_version: &str| {
            build(
                r,
                &rendered(r),
                replicas,
                &secrets(),
                &BTreeMap::from([("crm-token".into(), secret_version.into())]),
                &settings(None),
                &[],
            )
            .unwrap()
            .deployment
        };
        let r = route(None);
        let one = deployment(&r, 1, "1");
        let rotated = deployment(&r, 1, "2");
        assert_eq!(hash(&one), hash(&deployment(&r, 1, "1")));
        assert_ne!(hash(&one), hash(&rotated));
        let scaled = route(Some(DispatcherSpec {
            replicas: Some(3),
            ..DispatcherSpec::default()
        }));
        let more = deployment(&scaled, 3, "1");
        assert_ne!(
            hash(&one),
            hash(&more),
            "replicas are in the config (limits are shared among them)"
        );
        assert_eq!(more.spec.as_ref().unwrap().replicas, Some(3));
        // With autoscaling, the configuration holds maxReplicas whatever runs now
        // (pods count each other to share a limit), so scaling restarts no pods.
        let autoscaled = route(Some(DispatcherSpec {
            autoscaling: Some(AutoscalingSpec {
                max_replicas: 3,
                ..AutoscalingSpec::default()
            }),
            ..DispatcherSpec::default()
        }));
        let few = deployment(&autoscaled, 1, "1");
        let many = deployment(&autoscaled, 3, "1");
        assert_eq!(hash(&few), hash(&many));
        assert_eq!(
            hash(&few),
            hash(&more),
            "the same share as 3 fixed replicas"
        );
        assert_eq!(few.spec.as_ref().unwrap().replicas, Some(1));
    }

    #[test]
    fn route_overrides_and_nats_credentials_reach_the_container() {
        let r = route(Some(DispatcherSpec {
            image: Some("registry.local/fanout:2".into()),
            image_pull_policy: Some(ImagePullPolicy::Never),
            ..DispatcherSpec::default()
        }));
        let auth = NatsAuth::Credentials {
            secret: "nats".into(),
        };
        let o = build(
            &r,
            &rendered(&r),
            1,
            &secrets(),
            &BTreeMap::new(),
            &settings(Some(auth)),
            &[],
        )
        .unwrap();
        let c = &pod(&o.deployment).containers[0];
        assert_eq!(c.image.as_deref(), Some("registry.local/fanout:2"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("Never"));
        let creds = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "FANOUT_NATS_CREDENTIALS_FILE")
            .unwrap();
        assert_eq!(
            creds.value.as_deref(),
            Some("/var/run/fanout/secrets/nats/nats.creds")
        );
        let ca = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "FANOUT_NATS_CA_FILE")
            .unwrap();
        assert_eq!(
            ca.value.as_deref(),
            Some("/var/run/fanout/secrets/nats-ca/ca.crt")
        );
    }

    fn env(d: &Deployment) -> BTreeMap<String, String> {
        pod(d).containers[0]
            .env
            .iter()
            .flatten()
            .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
            .collect()
    }

    #[test]
    fn the_pods_refuse_the_apiserver_and_carry_the_platforms_egress_entries() {
        let r = route(None);
        let mut with_entries = settings(None);
        with_entries.egress_deny = vec![
            "10.0.0.0/8".parse().unwrap(),
            "evil.example".parse().unwrap(),
        ];
        with_entries.egress_allow = vec!["10.1.0.0/16".parse().unwrap()];
        let apiserver: Vec<IpAddr> =
            vec!["10.96.0.1".parse().unwrap(), "192.0.2.10".parse().unwrap()];
        let build_with = |settings: &DispatcherSettings, apiserver: &[IpAddr]| {
            build(
                &r,
                &rendered(&r),
                1,
                &secrets(),
                &BTreeMap::new(),
                settings,
                apiserver,
            )
            .unwrap()
            .deployment
        };
        let vars = env(&build_with(&with_entries, &apiserver));
        assert_eq!(vars["FANOUT_EGRESS_APISERVER"], "10.96.0.1,192.0.2.10");
        assert_eq!(vars["FANOUT_EGRESS_DENY"], "10.0.0.0/8,evil.example");
        assert_eq!(vars["FANOUT_EGRESS_ALLOW"], "10.1.0.0/16");
        // What the dispatcher parses back is what the operator was given.
        let parsed: Vec<Entry> = vars["FANOUT_EGRESS_DENY"]
            .split(',')
            .map(|e| e.parse().unwrap())
            .collect();
        assert_eq!(parsed, with_entries.egress_deny);

        // Nothing to add: no variable (an empty one would not parse).
        let vars = env(&build_with(&settings(None), &[]));
        for name in [
            "FANOUT_EGRESS_APISERVER",
            "FANOUT_EGRESS_DENY",
            "FANOUT_EGRESS_ALLOW",
        ] {
            assert!(!vars.contains_key(name), "{name}");
        }
        // Loopback stays refused: nothing the operator sets allows it.
        assert!(!vars.values().any(|v| v.contains("127.0.0.")));
    }

    #[test]
    fn the_pods_export_traces_where_the_platform_says_with_headers_from_a_secret() {
        let r = route(None);
        let build_with = |settings: &DispatcherSettings| {
            build(
                &r,
                &rendered(&r),
                1,
                &secrets(),
                &BTreeMap::new(),
                settings,
                &[],
            )
            .unwrap()
            .deployment
        };
        let vars = env(&build_with(&settings(None)));
        assert!(!vars.keys().any(|k| k.contains("OTLP")), "off by default");

        let mut traced = settings(None);
        traced.otlp = Some(OtlpSettings {
            endpoint: "http://otel-collector.observability:4318".into(),
            sampling_ratio: 0.25,
            headers_secret: Some("otlp-headers".into()),
        });
        let vars = env(&build_with(&traced));
        assert_eq!(
            vars["OTEL_EXPORTER_OTLP_ENDPOINT"],
            "http://otel-collector.observability:4318"
        );
        assert_eq!(vars["FANOUT_OTLP_SAMPLING_RATIO"], "0.25");
        // A file of the mounted Secret, never the headers themselves.
        assert_eq!(
            vars["FANOUT_OTLP_HEADERS_FILE"],
            format!("{SECRETS_DIR}/otlp-headers/headers")
        );
    }

    #[test]
    fn a_route_without_a_uid_cannot_own_anything() {
        let mut r = route(None);
        let rendered = rendered(&r);
        r.metadata.uid = None;
        assert!(matches!(
            build(
                &r,
                &rendered,
                1,
                &secrets(),
                &BTreeMap::new(),
                &settings(None),
                &[]
            ),
            Err(BuildError::NoUid)
        ));
    }
}
