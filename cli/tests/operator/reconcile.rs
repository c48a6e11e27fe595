//! How a route becomes JetStream and Kubernetes objects, and what its status says
//! when something it needs is missing or cannot change.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_becomes_streams_consumers_and_dispatcher_objects_and_follows_edits() {
    let env = Env::new("op-apply").await;
    let _operator = env.operator();
    let auth = "  auth: {bearer: {secretRef: {name: email-token, key: token}}}";
    env.apply(&format!(
        "{SECRETS}{}{}{}",
        target_yaml("inventory", "http://127.0.0.1:9/in", ""),
        target_yaml("email", "http://127.0.0.1:9/mail", auth),
        route_yaml(
            "orders",
            &["inventory", "email"],
            "  gateway: {bearerTokens: [{name: ingest, key: token}]}"
        ),
    ));
    let key = env.key("orders");

    // JetStream: both streams and one consumer per target, with the target's limits.
    let consumers = wait::until("both consumers", T, || async {
        let c = env.consumers(&key.stream()).await?;
        if c.len() == 2 {
            Ok(c)
        } else {
            Err(format!("{c:?}"))
        }
    })
    .await
    .unwrap();
    assert_eq!(
        consumers,
        BTreeSet::from(["email".to_string(), "inventory".to_string()])
    );
    env.js.get_stream(key.dead_letter_stream()).await.unwrap();
    // The delivery history: its own bounded stream, on by default.
    let mut history = env.js.get_stream(key.attempts_stream()).await.unwrap();
    let history = history.info().await.unwrap();
    assert_eq!(history.config.max_bytes, 128 * 1024 * 1024);
    assert_eq!(
        history.config.discard,
        async_nats::jetstream::stream::DiscardPolicy::Old
    );
    let mut stream = env.js.get_stream(key.stream()).await.unwrap();
    let info = stream.consumer_info("inventory").await.unwrap();
    assert_eq!(
        info.config.ack_wait,
        Duration::from_secs(8),
        "timeout 3s + 5s slack"
    );
    assert_eq!(info.config.max_ack_pending, 16);
    assert!(
        info.config
            .filter_subjects
            .contains(&key.redrive_subject("inventory"))
    );
    assert_eq!(
        stream.info().await.unwrap().config.subjects[0],
        key.ingest_subjects()
    );

    // Kubernetes: ServiceAccount, ConfigMap and Deployment, owned by the route.
    let route = env.api::<FanOutRoute>().get("orders").await.unwrap();
    let uid = route.metadata.uid.clone().unwrap();
    let name = key.dispatcher_object_name();
    let deployment = wait::until("the Deployment", T, || async {
        env.api::<Deployment>()
            .get_opt(&name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("absent".to_string())
    })
    .await
    .unwrap();
    let owner =
        |refs: Option<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>| {
            refs.unwrap_or_default()
                .first()
                .map(|o| (o.uid.clone(), o.controller))
        };
    assert_eq!(
        owner(deployment.metadata.owner_references.clone()),
        Some((uid.clone(), Some(true)))
    );
    let sa = env.api::<ServiceAccount>().get(&name).await.unwrap();
    assert_eq!(
        owner(sa.metadata.owner_references),
        Some((uid.clone(), Some(true)))
    );
    assert_eq!(sa.automount_service_account_token, Some(false));
    let config_map = env.api::<ConfigMap>().get(&name).await.unwrap();
    assert_eq!(
        owner(config_map.metadata.owner_references.clone()),
        Some((uid.clone(), Some(true)))
    );
    let config: RouteConfig =
        serde_yaml_ng::from_str(&config_map.data.unwrap()["route.yaml"]).unwrap();
    assert_eq!(config.targets.len(), 2);
    let email = config.targets.iter().find(|t| t.name == "email").unwrap();
    assert_eq!(
        email.credentials.bearer_token_file.as_deref(),
        Some(std::path::Path::new(
            "/var/run/fanout/secrets/email-token/token"
        )),
        "the ConfigMap names a file, never the secret value"
    );
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let volumes = pod.volumes.unwrap();
    let projected = volumes.iter().find(|v| v.name == "secrets").unwrap();
    assert_eq!(
        projected
            .projected
            .as_ref()
            .unwrap()
            .sources
            .as_ref()
            .unwrap()[0]
            .secret
            .as_ref()
            .unwrap()
            .name,
        "email-token"
    );
    let hash_of = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()["fanout.dev/config-hash"]
            .clone()
    };
    let first_hash = hash_of(&env.api::<Deployment>().get(&name).await.unwrap());

    // Status: streams ready, no node to run pods yet, the finalizer is on.
    let status = env
        .wait_condition("orders", "StreamReady", "True", None)
        .await;
    assert_eq!(status.observed_generation, route.metadata.generation);
    let available = operator::condition(&status.conditions, "DispatcherAvailable");
    assert_eq!(available.status, "False");
    assert_eq!(status.targets.len(), 2);
    assert!(
        route
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"fanout.dev/jetstream".to_string())
    );

    // The gateway's routes and token copy.
    let gateway = wait::until("the gateway ConfigMap", T, || async {
        let config = env.gateway_config().await?;
        if config.routes.is_empty() {
            Err("no routes".to_string())
        } else {
            Ok(config)
        }
    })
    .await
    .unwrap();
    assert_eq!(gateway.routes[0].stream, key.stream());
    let token_key = format!("{}.orders.0", env.ns.name);
    assert_eq!(
        gateway.routes[0].token_files,
        vec![PathBuf::from(format!(
            "/var/run/fanout/gateway-tokens/{token_key}"
        ))]
    );
    let tokens = env
        .api::<Secret>()
        .get("fanout-gateway-tokens")
        .await
        .unwrap();
    assert_eq!(tokens.data.unwrap()[&token_key].0, b"ingest-token");

    // Editing the ApiTarget re-renders the route: the consumer and the config follow.
    env.apply(
        &target_yaml("inventory", "http://127.0.0.1:9/in", "")
            .replace("timeout: 3s", "timeout: 10s"),
    );
    wait::until("ack wait to follow the new timeout", T, || async {
        let s = env
            .js
            .get_stream(key.stream())
            .await
            .map_err(|e| e.to_string())?;
        let wait = s
            .consumer_info("inventory")
            .await
            .map_err(|e| e.to_string())?
            .config
            .ack_wait;
        if wait == Duration::from_secs(15) {
            Ok(())
        } else {
            Err(format!("{wait:?}"))
        }
    })
    .await
    .unwrap();
    wait::until("the pod template to change", T, || async {
        let d = env
            .api::<Deployment>()
            .get(&name)
            .await
            .map_err(|e| e.to_string())?;
        if hash_of(&d) != first_hash {
            Ok(())
        } else {
            Err("same hash".into())
        }
    })
    .await
    .unwrap();

    // A target removed from the route loses its consumer.
    env.apply(&route_yaml(
        "orders",
        &["inventory"],
        "  gateway: {bearerTokens: [{name: ingest, key: token}]}",
    ));
    wait::until("the email consumer to go", T, || async {
        let c = env.consumers(&key.stream()).await?;
        if c == BTreeSet::from(["inventory".to_string()]) {
            Ok(())
        } else {
            Err(format!("{c:?}"))
        }
    })
    .await
    .unwrap();

    // Deleting the route deletes its streams, then the finalizer lets it go.
    env.api::<FanOutRoute>()
        .delete("orders", &Default::default())
        .await
        .unwrap();
    wait::until("the route to be gone", T, || async {
        match env.api::<FanOutRoute>().get_opt("orders").await {
            Ok(None) => Ok(()),
            other => Err(format!(
                "{:?}",
                other.map(|r| r.map(|r| r.metadata.finalizers))
            )),
        }
    })
    .await
    .unwrap();
    assert!(
        env.js.get_stream(key.stream()).await.is_err(),
        "stream deleted"
    );
    assert!(
        env.js.get_stream(key.dead_letter_stream()).await.is_err(),
        "DLQ stream deleted"
    );
    assert!(
        env.js.get_stream(key.attempts_stream()).await.is_err(),
        "history stream deleted"
    );
    wait::until("the gateway to drop the route", T, || async {
        let config = env.gateway_config().await?;
        if config.routes.is_empty() {
            Ok(())
        } else {
            Err(format!("{:?}", config.routes))
        }
    })
    .await
    .unwrap();
    env.ns.delete(&env.client).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_references_are_reported_and_picked_up_when_they_appear() {
    let env = Env::new("op-refs").await;
    let _operator = env.operator();
    env.apply(&route_yaml("orders", &["crm"], ""));
    let status = env
        .wait_condition("orders", "Ready", "False", Some("ApiTargetNotFound"))
        .await;
    let ready = operator::condition(&status.conditions, "Ready");
    assert!(
        ready.message.contains("\"crm\" does not exist"),
        "{}",
        ready.message
    );
    wait::until("an ApiTargetNotFound Event", T, || async {
        let events = env.events("ApiTargetNotFound").await;
        if events.is_empty() {
            Err("none".to_string())
        } else {
            Ok(())
        }
    })
    .await
    .unwrap();
    assert!(
        env.js.get_stream(env.key("orders").stream()).await.is_err(),
        "nothing provisioned for a route that does not render"
    );

    // The ApiTarget appears, but its Secret does not exist yet.
    env.apply(&target_yaml(
        "crm",
        "http://127.0.0.1:9/crm",
        "  auth: {bearer: {secretRef: {name: crm-token, key: token}}}",
    ));
    let status = env
        .wait_condition("orders", "Ready", "False", Some("SecretNotFound"))
        .await;
    let ready = operator::condition(&status.conditions, "Ready");
    assert!(ready.message.contains("crm-token"), "{}", ready.message);
    wait::until("the ApiTarget to say its Secret is missing", T, || async {
        let t = env
            .api::<ApiTarget>()
            .get("crm")
            .await
            .map_err(|e| e.to_string())?;
        let s = t.status.ok_or("no status")?;
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .ok_or("no Ready")?;
        if c.status == "False"
            && c.reason == "SecretNotFound"
            && s.routes == vec!["orders".to_string()]
        {
            Ok(())
        } else {
            Err(format!("{c:?} {:?}", s.routes))
        }
    })
    .await
    .unwrap();
    assert!(
        env.api::<Deployment>()
            .get_opt(&env.key("orders").dispatcher_object_name())
            .await
            .unwrap()
            .is_none(),
        "no Deployment whose pods could not start"
    );

    // The Secret appears: everything is created without touching the route.
    env.apply(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: crm-token}\nstringData: {token: t}\n",
    );
    let status = env
        .wait_condition("orders", "Ready", "False", Some("NoPodAvailable"))
        .await;
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "StreamReady" && c.status == "True")
    );
    wait::until("the ApiTarget to be Ready", T, || async {
        let t = env
            .api::<ApiTarget>()
            .get("crm")
            .await
            .map_err(|e| e.to_string())?;
        let c = t
            .status
            .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
            .ok_or("no Ready")?;
        if c.status == "True" {
            Ok(())
        } else {
            Err(format!("{c:?}"))
        }
    })
    .await
    .unwrap();
    env.api::<Deployment>()
        .get(&env.key("orders").dispatcher_object_name())
        .await
        .unwrap();
    env.ns.delete(&env.client).await.unwrap();
}

/// The new credential kinds: the route waits for every key they need (the default
/// key names applied), then its dispatcher pods mount exactly those keys, and the
/// rendered configuration points at the files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_of_oauth2_tls_and_header_auth_is_checked_and_mounted() {
    let env = Env::new("op-creds").await;
    let _operator = env.operator();
    // Every Secret but one key, before the objects that use them.
    let secret = |name: &str, keys: &[&str]| {
        let data: Vec<String> = keys.iter().map(|k| format!("{k}: value-of-{k}")).collect();
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\nstringData: {{{}}}\n",
            data.join(", ")
        )
    };
    env.apply(&secret("crm-oauth", &["client-id"]));
    env.apply(&secret("idp-ca", &["ca.crt"]));
    env.apply(&secret("crm-tenant", &["tenant"]));
    env.apply(&secret("crm-tls", &["tls.crt", "tls.key"]));
    env.apply(&secret("crm-ca", &["bundle.pem"]));
    env.apply(&target_yaml(
        "crm",
        "https://127.0.0.1:9/crm",
        "  auth:
    oauth2:
      tokenUrl: https://127.0.0.1:9/token
      secretRef: {name: crm-oauth}
      caBundle: {secretRef: {name: idp-ca}}
    header: {name: X-Tenant, secretRef: {name: crm-tenant, key: tenant}}
    tls:
      clientCertificate: {secretRef: {name: crm-tls}}
      caBundle: {secretRef: {name: crm-ca}, key: bundle.pem}",
    ));
    env.apply(&route_yaml("orders", &["crm"], ""));
    let status = env
        .wait_condition("orders", "Ready", "False", Some("SecretNotFound"))
        .await;
    let ready = operator::condition(&status.conditions, "Ready");
    assert!(
        ready
            .message
            .contains("crm-oauth has no key \"client-secret\""),
        "the documented default key: {}",
        ready.message
    );

    env.apply(&secret("crm-oauth", &["client-id", "client-secret"]));
    env.wait_condition("orders", "Ready", "False", Some("NoPodAvailable"))
        .await;
    let deployment = env
        .api::<Deployment>()
        .get(&env.key("orders").dispatcher_object_name())
        .await
        .unwrap();
    let volumes = deployment
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.volumes.unwrap_or_default())
        .unwrap_or_default();
    let mounted: BTreeSet<String> = volumes
        .iter()
        .filter(|v| v.name == "secrets")
        .flat_map(|v| v.projected.iter().flat_map(|p| p.sources.iter().flatten()))
        .flat_map(|source| source.secret.iter().flat_map(|s| s.items.iter().flatten()))
        .map(|item| item.path.clone())
        .collect();
    let expected: BTreeSet<String> = [
        "crm-oauth/client-id",
        "crm-oauth/client-secret",
        "idp-ca/ca.crt",
        "crm-tenant/tenant",
        "crm-tls/tls.crt",
        "crm-tls/tls.key",
        "crm-ca/bundle.pem",
    ]
    .map(String::from)
    .into();
    assert_eq!(mounted, expected);

    let config = env
        .api::<ConfigMap>()
        .get(&env.key("orders").dispatcher_object_name())
        .await
        .unwrap();
    let yaml = config.data.unwrap().remove("route.yaml").unwrap();
    for path in &expected {
        assert!(yaml.contains(path.as_str()), "{path} in {yaml}");
    }
    assert!(!yaml.contains("value-of-"), "no Secret value in {yaml}");
    env.ns.delete(&env.client).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_setting_jetstream_cannot_change_is_reported_not_forced() {
    let env = Env::new("op-immutable").await;
    let _operator = env.operator();
    // The CRD refuses a change of storage (e2e/tests/crds.rs); a stream of the
    // route's name can still exist with other storage, made another way (by hand,
    // or kept by NATS from an earlier route of that name).
    let key = env.key("orders");
    env.js
        .create_stream(jetstream::stream::Config {
            name: key.stream(),
            subjects: vec![key.ingest_subjects()],
            storage: jetstream::stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .unwrap();
    env.apply(&format!(
        "{}{}",
        target_yaml("crm", "http://127.0.0.1:9/crm", ""),
        route_yaml("orders", &["crm"], "  source: {storage: file}")
    ));
    let status = env
        .wait_condition(
            "orders",
            "StreamReady",
            "False",
            Some("ImmutableStreamSetting"),
        )
        .await;
    let c = operator::condition(&status.conditions, "StreamReady");
    assert!(c.message.contains("storage"), "{}", c.message);
    let mut stream = env.js.get_stream(key.stream()).await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().config.storage,
        jetstream::stream::StorageType::Memory,
        "the stream and its events are kept"
    );
    env.ns.delete(&env.client).await.unwrap();
}

/// `kubectl apply -f examples/order-placed/` applies `route.yaml` before
/// `secrets.yaml`: the route can reach the gateway before its ingest token exists.
/// Without `--watch-secrets` (the default) no event says when the Secret appears, so
/// the sync looks for it again soon, backing off, instead of waiting for the resync
/// (an hour here): the route's producers were refused with 403 until then. Meanwhile
/// the route is listed with `tokensPending`, so the gateway answers them 503 with
/// Retry-After rather than refusing their token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_secret_created_after_its_route_reaches_the_gateway_without_a_watch() {
    let env = Env::new("op-gwlate").await;
    let _operator = env.operator_with(&["--gateway-resync", "1h"]);
    // The route listed in the gateway's configuration: its token files, and whether
    // some are pending.
    let token_files = |what: &'static str, want: (usize, bool)| {
        let env = &env;
        wait::until(what, T, move || async move {
            let config = env.gateway_config().await?;
            match config
                .routes
                .first()
                .map(|r| (r.token_files.len(), r.tokens_pending))
            {
                Some(listed) if listed == want => Ok(()),
                other => Err(format!("token files, pending: {other:?}")),
            }
        })
    };
    env.apply(&format!(
        "{}{}",
        target_yaml("inventory", "http://127.0.0.1:9/in", ""),
        route_yaml(
            "orders",
            &["inventory"],
            "  gateway: {bearerTokens: [{name: ingest, key: token}]}"
        )
    ));
    // Listed without its token, which is not there yet; the route's status and an
    // Event name the Secret, and the route stays Ready (NATS publishes deliver).
    token_files("the route listed without its token", (0, true))
        .await
        .unwrap();
    let status = env
        .wait_condition("orders", "IngestReady", "False", Some("SecretNotFound"))
        .await;
    let ingest = operator::condition(&status.conditions, "IngestReady");
    assert!(
        ingest.message.contains("/ingest does not exist"),
        "{}",
        ingest.message
    );
    assert_ne!(
        operator::condition(&status.conditions, "Ready").reason,
        "SecretNotFound",
        "a missing ingest token does not hold back the dispatchers"
    );
    let event = env.wait_event("SecretNotFound", "orders").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"), "{event:?}");
    assert!(
        event.note.as_deref().is_some_and(|n| n.contains("/ingest")),
        "{event:?}"
    );
    env.apply(SECRETS);
    token_files("the late token in the gateway's route", (1, false))
        .await
        .unwrap();
    env.wait_condition("orders", "IngestReady", "True", Some("TokensFound"))
        .await;
    let secret = env
        .api::<Secret>()
        .get("fanout-gateway-tokens")
        .await
        .unwrap();
    let copied = secret.data.unwrap_or_default();
    let copy = copied.get(&format!("{}.orders.0", env.ns.name));
    assert_eq!(copy.map(|v| &v.0[..]), Some(&b"ingest-token"[..]));
    env.ns.delete(&env.client).await.unwrap();
}

/// The gateway's copy follows watch events, not a timer: with the resync set to an
/// hour, a route added later and a rotated ingest token still reach the gateway's
/// ConfigMap and token Secret within the test's deadline. Without the route watch
/// waking the sync, or without `--watch-secrets` waking it on the Secret's change,
/// nothing would be rewritten for an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_follows_new_routes_and_rotated_tokens_by_watch_events() {
    let env = Env::new("op-gwsync").await;
    let _operator = env.operator_with(&["--watch-secrets", "true", "--gateway-resync", "1h"]);
    let token_key = |route: &str| format!("{}.{route}.0", env.ns.name);
    let tokens = || async {
        let secret = env
            .api::<Secret>()
            .get_opt("fanout-gateway-tokens")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("absent")?;
        Ok::<_, String>(secret.data.unwrap_or_default())
    };
    let routes_listed = |what: &'static str, want: usize| {
        let env = &env;
        wait::until(what, T, move || async move {
            match env.gateway_config().await?.routes.len() {
                n if n == want => Ok(()),
                n => Err(format!("{n} routes")),
            }
        })
    };
    // The first write happens once the caches have synced, with no route yet.
    env.apply(&target_yaml("inventory", "http://127.0.0.1:9/in", ""));
    routes_listed("the gateway's first (empty) route list", 0)
        .await
        .unwrap();

    // A route created afterwards, with its token: a route event.
    env.apply(&format!(
        "{SECRETS}{}",
        route_yaml(
            "orders",
            &["inventory"],
            "  gateway: {bearerTokens: [{name: ingest, key: token}]}"
        )
    ));
    wait::until("the new route's token copied", T, || async {
        let data = tokens().await?;
        match data.get(&token_key("orders")) {
            Some(v) if v.0 == b"ingest-token" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    // The tokens are written before the route list (a listed route never lacks its
    // tokens), so the list may follow a moment later.
    routes_listed("the new route in the gateway's list", 1)
        .await
        .unwrap();

    // Rotation: only the Secret changes, no route does.
    env.apply(
        "apiVersion: v1
kind: Secret
metadata: {name: ingest}
stringData: {token: rotated-ingest-token}
",
    );
    wait::until("the rotated token copied", T, || async {
        let data = tokens().await?;
        match data.get(&token_key("orders")) {
            Some(v) if v.0 == b"rotated-ingest-token" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    env.ns.delete(&env.client).await.unwrap();
}
