//! `fanout operator` as a process against the real local control plane
//! (kube-apiserver + controller-manager from e2e/cluster.sh) and a real nats-server.
//!
//! Each test gets its own namespace, NATS server and operator scoped to that
//! namespace (`--watch-namespace`), so tests run in parallel on one control plane.
//! This control plane has no node, so dispatcher pods never run: the end-to-end test
//! starts the real `fanout dispatch` and `fanout gateway` processes itself, with the
//! configuration the operator rendered, read back from the API server. Pods on a real
//! node are e2e/tests/in_cluster.rs's part.

#[path = "../support/mod.rs"]
mod support;

mod autoscaling;
mod health;
mod leadership;
mod reconcile;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream;
use fanout_api::{ApiTarget, FanOutRoute};
use fanout_config::RouteConfig;
use fanout_testkit::cluster;
use fanout_testkit::prometheus;
use fanout_testkit::target::{Reply, TargetServer};
use fanout_testkit::{http, wait};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use support::operator::{self, Env, Operator, T, route_yaml, target_yaml};

const SECRETS: &str = "apiVersion: v1
kind: Secret
metadata: {name: email-token}
stringData: {token: s3cr3t}
---
apiVersion: v1
kind: Secret
metadata: {name: ingest}
stringData: {token: ingest-token}
---
";
