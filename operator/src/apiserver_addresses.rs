//! The Kubernetes apiserver's addresses, which dispatchers refuse to connect to (their
//! egress policy, `fanout_config::egress`): the `kubernetes` Service's cluster IPs
//! (also in every pod's KUBERNETES_SERVICE_HOST), the endpoints behind it (its
//! EndpointSlice in `default`, where the apiservers publish themselves), and the host
//! of the operator's own connection when that is an address. Read at start and every
//! minute; the dispatchers' pod template carries the list, so a change rolls them.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use tokio_util::sync::CancellationToken;

/// Where the apiserver publishes its Service and endpoints.
pub const NAMESPACE: &str = "default";
pub const NAME: &str = "kubernetes";
const REFRESH_EVERY: Duration = Duration::from_secs(60);

/// The addresses as last read.
#[derive(Debug, Default)]
pub struct ApiserverAddresses {
    current: Mutex<Vec<IpAddr>>,
    /// The last reading's problem, so a lasting one is warned about once.
    problem: Mutex<Option<String>>,
}

/// What the process knows without asking the apiserver.
#[derive(Clone, Debug, Default)]
pub struct Known {
    /// KUBERNETES_SERVICE_HOST.
    pub service_host: Option<String>,
    /// The host of the URL the operator reaches the apiserver at.
    pub connection_host: Option<String>,
}

impl Known {
    /// KUBERNETES_SERVICE_HOST, and `connection_host`, the host of the cluster URL.
    pub fn from_env(connection_host: Option<&str>) -> Known {
        Known {
            service_host: std::env::var("KUBERNETES_SERVICE_HOST").ok(),
            connection_host: connection_host.map(str::to_string),
        }
    }
}

impl ApiserverAddresses {
    /// Sorted, without duplicates: the same set always renders the same pod template.
    pub fn current(&self) -> Vec<IpAddr> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the Service and its EndpointSlice again. What cannot be read (no RBAC
    /// for it, say) is left out with a warning; the rest still counts.
    pub async fn refresh(&self, client: &kube::Client, known: &Known) {
        let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
        let mut problems = Vec::new();
        let service = services.get_opt(NAME).await.unwrap_or_else(|e| {
            problems.push(format!("reading Service {NAMESPACE}/{NAME}: {e}"));
            None
        });
        let slice = slices.get_opt(NAME).await.unwrap_or_else(|e| {
            problems.push(format!("reading EndpointSlice {NAMESPACE}/{NAME}: {e}"));
            None
        });
        let addresses = addresses(known, service.as_ref(), slice.as_ref());
        let problem = (!problems.is_empty()).then(|| problems.join("; "));
        {
            let mut last = self.problem.lock().unwrap_or_else(|e| e.into_inner());
            if problem.is_some() && *last != problem {
                tracing::warn!(problem = problem.as_deref().unwrap_or(""), known = ?addresses, "some of the apiserver's addresses could not be read; dispatchers refuse the ones known (the chart grants this read with Role <fullname>-operator-apiserver in namespace default)");
            }
            *last = problem;
        }
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if *current != addresses {
            tracing::info!(addresses = ?addresses, "the apiserver's addresses, refused by dispatchers");
            *current = addresses;
        }
    }

    /// Refreshes every minute until `stop`.
    pub async fn keep_current(&self, client: kube::Client, known: Known, stop: CancellationToken) {
        loop {
            if stop
                .run_until_cancelled(tokio::time::sleep(REFRESH_EVERY))
                .await
                .is_none()
            {
                return;
            }
            self.refresh(&client, &known).await;
        }
    }
}

/// The addresses in what is known and what was read. Names (a kubeconfig's
/// `https://api.example.com`) are left out: dispatchers check addresses.
pub fn addresses(
    known: &Known,
    service: Option<&Service>,
    slice: Option<&EndpointSlice>,
) -> Vec<IpAddr> {
    let mut all = BTreeSet::new();
    let parse = |text: &str| text.trim_matches(['[', ']']).parse::<IpAddr>().ok();
    for host in [&known.service_host, &known.connection_host]
        .into_iter()
        .flatten()
    {
        all.extend(parse(host));
    }
    if let Some(spec) = service.and_then(|s| s.spec.as_ref()) {
        let ips = spec.cluster_ips.iter().flatten().chain(&spec.cluster_ip);
        all.extend(ips.filter_map(|ip| parse(ip)));
    }
    if let Some(slice) = slice {
        let endpoints = slice.endpoints.iter().flat_map(|e| &e.addresses);
        all.extend(endpoints.filter_map(|a| parse(a)));
    }
    all.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ServiceSpec;
    use k8s_openapi::api::discovery::v1::Endpoint;

    use super::*;

    #[test]
    fn every_address_of_the_apiserver_is_collected_once() {
        let known = Known {
            service_host: Some("10.96.0.1".into()),
            connection_host: Some("[fd00::1]".into()),
        };
        let service = Service {
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.96.0.1".into()),
                cluster_ips: Some(vec!["10.96.0.1".into(), "fd00:96::1".into()]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        };
        let slice = EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: vec![
                Endpoint {
                    addresses: vec!["192.0.2.10".into()],
                    ..Endpoint::default()
                },
                Endpoint {
                    addresses: vec!["192.0.2.11".into()],
                    ..Endpoint::default()
                },
            ],
            ..EndpointSlice::default()
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            addresses(&known, Some(&service), Some(&slice)),
            vec![
                ip("10.96.0.1"),
                ip("192.0.2.10"),
                ip("192.0.2.11"),
                ip("fd00::1"),
                ip("fd00:96::1")
            ]
        );
    }

    #[test]
    fn names_and_what_could_not_be_read_are_left_out() {
        let known = Known {
            service_host: None,
            connection_host: Some("api.example.com".into()),
        };
        assert!(addresses(&known, None, None).is_empty());
        let known = Known {
            service_host: Some("10.0.0.1".into()),
            connection_host: Some("127.0.0.1".into()),
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            addresses(&known, None, None),
            vec![ip("10.0.0.1"), ip("127.0.0.1")]
        );
    }
}
