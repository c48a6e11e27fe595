//! The controller-manager runs: an object whose owner is deleted is garbage-collected.
//! The operator relies on this for the Deployments and ConfigMaps it owns.

use std::time::Duration;

use fanout_testkit::cluster::{self, TestNamespace};
use fanout_testkit::wait;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, PostParams};

fn config_map(value: serde_json::Value) -> ConfigMap {
    serde_json::from_value(value).unwrap()
}

#[tokio::test]
async fn deleting_an_owner_garbage_collects_its_dependent() {
    let client = cluster::client().await.unwrap();
    let ns = TestNamespace::create(&client, "gc").await.unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);

    let owner = maps
        .create(
            &PostParams::default(),
            &config_map(serde_json::json!({"metadata": {"name": "owner"}})),
        )
        .await
        .unwrap();
    let uid = owner.metadata.uid.clone().unwrap();
    maps.create(
        &PostParams::default(),
        &config_map(serde_json::json!({"metadata": {
            "name": "dependent",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]
        }})),
    )
    .await
    .unwrap();

    maps.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    wait::until(
        "the dependent to be garbage-collected",
        Duration::from_secs(60),
        || async {
            match maps.get_opt("dependent").await {
                Ok(None) => Ok(()),
                Ok(Some(_)) => Err("dependent still exists".to_string()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await
    .unwrap();
    ns.delete(&client).await.unwrap();
}
