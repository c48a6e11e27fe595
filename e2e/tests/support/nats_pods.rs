//! NATS itself as three pods on the node: a StatefulSet of the pinned nats-server
//! (`e2e/image.sh nats`), clustered with JetStream on every pod, so that routes can
//! ask for three replicas.
//!
//! Shaped like the official NATS chart's StatefulSet (one config per pod, a store
//! volume, the monitoring port), with one difference the node forces: it has no
//! cluster DNS and no kube-proxy (docs/node.md), so pods cannot find each other by a
//! headless Service's names. The pods run on the host's network instead, each with
//! ports of its own, picked by its ordinal (`apps.kubernetes.io/pod-index`) from
//! the config files in a ConfigMap; routes between them go over the host's loopback
//! and Fanout's pods reach them at the pod bridge's host address.

use std::net::IpAddr;
use std::time::Duration;

use fanout_testkit::{free_port, http, wait};

use super::Cluster;

/// A running three-pod NATS cluster.
pub struct NatsPods {
    host: IpAddr,
    /// (client, cluster, monitoring) port of each pod.
    ports: Vec<(u16, u16, u16)>,
}

impl NatsPods {
    /// Creates the pods in namespace `ns` (which must exist) from `image` and waits
    /// until every one is healthy and JetStream has a meta leader.
    pub async fn install(cluster: &Cluster, ns: &str, image: &str) -> NatsPods {
        let host = cluster.node.host_ip;
        let ports: Vec<(u16, u16, u16)> = (0..3)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let mut configs = String::new();
        for (i, (client, route, monitor)) in ports.iter().enumerate() {
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (_, r, _))| format!("nats://127.0.0.1:{r}"))
                .collect();
            configs.push_str(&format!(
                "  node-{i}.conf: |
    server_name: nats-{i}
    listen: 0.0.0.0:{client}
    http: 0.0.0.0:{monitor}
    jetstream {{ store_dir: /data }}
    cluster {{ name: fanout-e2e, listen: 0.0.0.0:{route}, routes: [{}] }}
",
                routes.join(", ")
            ));
        }
        cluster.apply(
            ns,
            &format!(
                "apiVersion: v1
kind: ConfigMap
metadata: {{name: nats}}
data:
{configs}---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: nats}}
spec:
  serviceName: nats
  replicas: 3
  podManagementPolicy: Parallel
  selector: {{matchLabels: {{app: nats}}}}
  template:
    metadata: {{labels: {{app: nats}}}}
    spec:
      hostNetwork: true
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 30
      securityContext: {{runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532, seccompProfile: {{type: RuntimeDefault}}}}
      containers:
        - name: nats
          image: {image}
          imagePullPolicy: Never
          args: [\"-c\", \"/etc/nats/node-$(POD_INDEX).conf\"]
          env:
            - name: POD_INDEX
              valueFrom: {{fieldRef: {{fieldPath: \"metadata.labels['apps.kubernetes.io/pod-index']\"}}}}
          securityContext: {{readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
          volumeMounts:
            - {{name: config, mountPath: /etc/nats}}
            - {{name: data, mountPath: /data}}
      volumes:
        - {{name: config, configMap: {{name: nats}}}}
        - {{name: data, emptyDir: {{}}}}
"
            ),
        );
        let pods = NatsPods { host, ports };
        for i in 0..3 {
            let monitor = pods.monitor_addr(i);
            let healthy = wait::until(&format!("nats-{i} healthy"), super::T, || async {
                match http::get(&monitor, "/healthz?js-enabled-only=true").await {
                    Ok(r) if r.status == 200 => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
            if let Err(e) = healthy {
                panic!("{e:#}\n{}", cluster.describe(ns));
            }
        }
        let monitor = pods.monitor_addr(0);
        wait::until(
            "a JetStream meta leader",
            Duration::from_secs(60),
            || async {
                let r = http::get(&monitor, "/jsz").await?;
                let v: serde_json::Value =
                    serde_json::from_str(&r.body).map_err(|e| e.to_string())?;
                match v["meta_cluster"]["leader"].as_str() {
                    Some(l) if !l.is_empty() => Ok(()),
                    _ => Err(r.body),
                }
            },
        )
        .await
        .unwrap();
        pods
    }

    /// Every pod's client URL, comma-separated: the chart's `nats.url`.
    pub fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|(client, _, _)| format!("nats://{}:{client}", self.host))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Pod `i`'s monitoring address (`host:port`).
    pub fn monitor_addr(&self, i: usize) -> String {
        format!("{}:{}", self.host, self.ports[i].2)
    }
}
