//! `kubectl fanout status [<route>]`: each target's delivery numbers, from the routes'
//! status as the operator wrote it, in the table `fanout standalone` prints at
//! `/status.txt` (and the same JSON as its `/status`). It needs no NATS.

use std::time::SystemTime;

use fanout_api::FanOutRoute;
use fanout_api::route::TargetStatus as CrTarget;
use fanout_api::status::CircuitState;
use fanout_config::health::Circuit;
use fanout_standalone::status::{self as table, RouteStatus, StatusReport, TargetStatus};
use kube::Api;
use kube::api::ListParams;

use super::Session;
use super::cluster::explain;
use super::output::{self, Format};

#[derive(clap::Args)]
pub struct Args {
    /// The FanOutRoute. Default: every route of the namespace.
    route: Option<String>,
    /// Every route of every namespace.
    #[arg(short = 'A', long, conflicts_with = "route")]
    all_namespaces: bool,
}

pub async fn run(session: &Session, args: Args) -> anyhow::Result<()> {
    let kube = &session.kube;
    let routes = match (&args.route, args.all_namespaces) {
        (Some(name), _) => vec![
            kube.api::<FanOutRoute>()
                .get(name)
                .await
                .map_err(|e| explain(e, &format!("FanOutRoute {}/{name}", kube.namespace)))?,
        ],
        (None, all) => {
            let api: Api<FanOutRoute> = if all {
                Api::all(kube.client.clone())
            } else {
                kube.api()
            };
            api.list(&ListParams::default())
                .await
                .map_err(|e| explain(e, "listing FanOutRoutes"))?
                .items
        }
    };
    let report = StatusReport {
        settled: false,
        routes: routes.iter().map(route_status).collect(),
    };
    if output::structured(session.output, &report)? {
        return Ok(());
    }
    if report.routes.is_empty() {
        eprintln!("No FanOutRoutes found in namespace {}.", kube.namespace);
        return Ok(());
    }
    let mut text = if session.output == Some(Format::Wide) {
        table::wide_table(&report)
    } else {
        table::table(&report)
    };
    // What the table cannot show: why a route is not ready, or why the gateway
    // cannot take its producers' events.
    for route in &routes {
        let conditions = route.status.iter().flat_map(|s| &s.conditions);
        for c in conditions
            .filter(|c| (c.type_ == "Ready" || c.type_ == "IngestReady") && c.status != "True")
        {
            text.push_str(&format!(
                "\n{}/{}: {}={} ({}): {}\n",
                route.metadata.namespace.as_deref().unwrap_or_default(),
                route.metadata.name.as_deref().unwrap_or_default(),
                c.type_,
                c.status,
                c.reason,
                c.message
            ));
        }
    }
    output::print(&text)
}

/// A route's status as the standalone table reads it.
fn route_status(route: &FanOutRoute) -> RouteStatus {
    let namespace = route.metadata.namespace.clone().unwrap_or_default();
    let name = route.metadata.name.clone().unwrap_or_default();
    let Some(status) = &route.status else {
        return RouteStatus {
            namespace,
            name,
            stream: None,
            dead_letter_stream: None,
            max_age: None,
            targets: Vec::new(),
            error: Some(
                "no status yet: is the operator running and watching this namespace?".into(),
            ),
        };
    };
    let stream = |s: &fanout_api::route::StreamStatus| table::StreamStatus {
        name: s.name.clone(),
        messages: s.messages,
        bytes: s.bytes,
    };
    let max_age = route
        .spec
        .source
        .as_ref()
        .and_then(|s| s.retention.as_ref())
        .and_then(|r| r.max_age)
        .unwrap_or(fanout_config::policy::defaults::STREAM_MAX_AGE);
    let expiry = fanout_config::expiry::Expiry::new(max_age);
    RouteStatus {
        namespace,
        name,
        stream: status.stream.as_ref().map(stream),
        dead_letter_stream: status.dead_letter_stream.as_ref().map(stream),
        max_age: expiry.map(|e| e.max_age.to_string()),
        targets: status
            .targets
            .iter()
            .map(|t| target_status(t, expiry))
            .collect(),
        error: None,
    }
}

fn target_status(t: &CrTarget, expiry: Option<fanout_config::expiry::Expiry>) -> TargetStatus {
    let time = |t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time| {
        humantime::format_rfc3339_seconds(SystemTime::from(t.0)).to_string()
    };
    // To the second, as standalone shows it: `41s`, `71h`.
    let age = t.oldest_undelivered_time.as_ref().map(|oldest| {
        let age = SystemTime::now()
            .duration_since(SystemTime::from(oldest.0))
            .unwrap_or_default();
        std::time::Duration::from_secs(age.as_secs())
    });
    TargetStatus {
        name: t.name.clone(),
        circuit: match t.circuit {
            CircuitState::Closed => Circuit::Closed,
            CircuitState::HalfOpen => Circuit::HalfOpen,
            CircuitState::Open => Circuit::Open,
        },
        delivered: t.delivered,
        failed: t.failed,
        dead_lettered: t.dead_lettered,
        pending: t.pending,
        in_flight: t.in_flight,
        last_success_time: t.last_success_time.as_ref().map(time),
        last_error: t.last_error.clone(),
        oldest_undelivered_time: t.oldest_undelivered_time.as_ref().map(time),
        oldest_undelivered_age: age.map(|a| fanout_config::Duration::from(a).to_string()),
        near_expiry: expiry.zip(age).is_some_and(|(e, a)| a >= e.warn_after()),
        concurrency_limit: t.concurrency_limit,
        blocked_keys: t.blocked_keys,
        oldest_blocked_time: t.oldest_blocked_time.as_ref().map(time),
    }
}
