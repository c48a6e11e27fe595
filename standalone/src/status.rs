//! What `/status` and `--print-status-every` show: per route and target, the numbers
//! the operator puts into a FanOutRoute's status, read the same way
//! ([`fanout_provision::observe`]: consumer info plus the engines' health snapshots).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream;
use fanout_config::RouteConfig;
use fanout_config::health::{Circuit, HealthSnapshot};
use fanout_config::names::RouteKey;
use fanout_dispatcher::telemetry::rfc3339;
use fanout_provision::observe::{self, RouteObservation, StreamCounts};
use serde::Serialize;

/// The live snapshots of the engines in this process, to tell whether the numbers in
/// the KV bucket are final.
pub type LiveSnapshots = Arc<dyn Fn() -> Vec<HealthSnapshot> + Send + Sync>;

/// Everything `/status` reports.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// True when nothing is pending or in flight for any target and the reported
    /// counters are the engines' current ones: the numbers will not change until new
    /// events arrive.
    pub settled: bool,
    pub routes: Vec<RouteStatus>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_stream: Option<StreamStatus>,
    /// The stream's maxAge, e.g. `72h`; absent when it keeps events for ever. An
    /// event a target has not received is dead-lettered for it (reason `expired`)
    /// shortly before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    pub targets: Vec<TargetStatus>,
    /// Why the route could not be observed (then `targets` is empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StreamStatus {
    pub name: String,
    pub messages: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    pub name: String,
    pub circuit: Circuit,
    pub delivered: u64,
    /// Failed attempts (each retry counts).
    pub failed: u64,
    pub dead_lettered: u64,
    /// Events in the stream this target has not been sent yet.
    pub pending: u64,
    /// Events being delivered or waiting for their next attempt.
    pub in_flight: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the oldest event this target has not received yet was stored (RFC 3339),
    /// and how old it is (`41s`); absent when the target is up to date.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_undelivered_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_undelivered_age: Option<String>,
    /// The oldest undelivered event is older than half of the stream's maxAge: the
    /// route's `BacklogWithinRetention` condition would be False in a cluster.
    pub near_expiry: bool,
    /// Requests let go to the target at once now: maxInFlight, or what adaptive
    /// concurrency found the target takes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<u32>,
    /// Ordered targets: keys whose head event failed and waits (to be tried again,
    /// or redriven), and since when the longest-blocked one has waited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_keys: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_blocked_time: Option<String>,
}

impl From<&StreamCounts> for StreamStatus {
    fn from(s: &StreamCounts) -> Self {
        StreamStatus {
            name: s.name.clone(),
            messages: s.messages,
            bytes: s.bytes,
        }
    }
}

/// Reads the status of `routes`.
pub struct StatusSource {
    js: jetstream::Context,
    routes: Vec<RouteConfig>,
    live: LiveSnapshots,
}

impl StatusSource {
    pub fn new(js: jetstream::Context, routes: Vec<RouteConfig>, live: LiveSnapshots) -> Self {
        StatusSource { js, routes, live }
    }

    pub async fn report(&self) -> StatusReport {
        let live = (self.live)();
        let mut settled = true;
        let mut routes = Vec::with_capacity(self.routes.len());
        for route in &self.routes {
            let key = RouteKey::new(&route.namespace, &route.name);
            let targets: Vec<String> = route.targets.iter().map(|t| t.name.clone()).collect();
            let observed = observe::observe(
                &self.js,
                &key,
                &route.stream,
                route.dead_letter_stream.as_deref(),
                &targets,
            )
            .await;
            let status = match observed {
                Ok(o) => {
                    settled &= is_settled(route, &o, &live);
                    route_status(route, &o)
                }
                Err(e) => {
                    settled = false;
                    RouteStatus {
                        namespace: route.namespace.clone(),
                        name: route.name.clone(),
                        stream: None,
                        dead_letter_stream: None,
                        max_age: None,
                        targets: Vec::new(),
                        error: Some(fanout_config::error_chain(&e)),
                    }
                }
            };
            routes.push(status);
        }
        StatusReport { settled, routes }
    }
}

fn route_status(route: &RouteConfig, o: &RouteObservation) -> RouteStatus {
    let now = SystemTime::now();
    RouteStatus {
        namespace: route.namespace.clone(),
        name: route.name.clone(),
        stream: Some((&o.stream).into()),
        dead_letter_stream: o.dead_letter.as_ref().map(Into::into),
        max_age: route.expiry.map(|e| e.max_age.to_string()),
        targets: o
            .targets
            .iter()
            .map(|t| {
                let age = t
                    .oldest_unsettled
                    .map(|stored| now.duration_since(stored).unwrap_or_default());
                TargetStatus {
                    name: t.name.clone(),
                    circuit: t.circuit,
                    delivered: t.delivered,
                    failed: t.failed,
                    dead_lettered: t.dead_lettered,
                    pending: t.pending,
                    in_flight: t.in_flight,
                    last_success_time: t.last_success_time.clone(),
                    last_error: t.last_error.clone(),
                    oldest_undelivered_time: t.oldest_unsettled.map(rfc3339),
                    oldest_undelivered_age: age.map(|a| whole_seconds(a).to_string()),
                    near_expiry: match (route.expiry, age) {
                        (Some(expiry), Some(age)) => age >= expiry.warn_after(),
                        _ => false,
                    },
                    concurrency_limit: t.concurrency_limit,
                    blocked_keys: (t.blocked_keys > 0).then_some(t.blocked_keys),
                    oldest_blocked_time: t.oldest_blocked_since.clone(),
                }
            })
            .collect(),
        error: None,
    }
}

/// A span for people, to the second: `41s`, `71h`.
fn whole_seconds(d: Duration) -> fanout_config::Duration {
    fanout_config::Duration::from(Duration::from_secs(d.as_secs()))
}

/// Nothing left to do for the route, and the KV bucket already holds the engine's
/// latest counters (snapshots are written every health interval, so they lag).
fn is_settled(route: &RouteConfig, o: &RouteObservation, live: &[HealthSnapshot]) -> bool {
    o.targets.iter().all(|t| {
        let mut current = live.iter().filter(|s| {
            s.namespace == route.namespace && s.route == route.name && s.target == t.name
        });
        let reported = current.next().is_none_or(|s| {
            (s.delivered, s.failed, s.dead_lettered) == (t.delivered, t.failed, t.dead_lettered)
        });
        t.consumer_found && t.pending == 0 && t.in_flight == 0 && reported
    })
}

/// The report as a table for people: one line per target.
pub fn table(report: &StatusReport) -> String {
    render(report, false)
}

/// [`table`] with more columns: when each target last delivered and when its oldest
/// undelivered event was stored (`kubectl fanout status -o wide`).
pub fn wide_table(report: &StatusReport) -> String {
    render(report, true)
}

fn render(report: &StatusReport, wide: bool) -> String {
    let mut header = vec![
        "ROUTE",
        "TARGET",
        "CIRCUIT",
        "DELIVERED",
        "FAILED",
        "DEAD-LETTERED",
        "PENDING",
        "IN-FLIGHT",
        "OLDEST",
    ];
    if wide {
        header.extend(["OLDEST-UNDELIVERED", "LAST-SUCCESS"]);
    }
    header.push("LAST-ERROR");
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    for route in &report.routes {
        let label = format!("{}/{}", route.namespace, route.name);
        if let Some(error) = &route.error {
            rows.push(vec![label, "-".into(), error.clone()]);
            continue;
        }
        for t in &route.targets {
            let mut row = vec![
                label.clone(),
                t.name.clone(),
                format!("{:?}", t.circuit),
                t.delivered.to_string(),
                t.failed.to_string(),
                t.dead_lettered.to_string(),
                t.pending.to_string(),
                t.in_flight.to_string(),
                or_dash(&t.oldest_undelivered_age),
            ];
            if wide {
                row.extend([
                    or_dash(&t.oldest_undelivered_time),
                    or_dash(&t.last_success_time),
                ]);
            }
            row.push(or_dash(&t.last_error));
            rows.push(row);
        }
    }
    let columns = header.len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            // The last column (and an error line's message) is not padded.
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str, delivered: u64, circuit: Circuit) -> TargetStatus {
        TargetStatus {
            name: name.into(),
            circuit,
            delivered,
            failed: 0,
            dead_lettered: 0,
            pending: 0,
            in_flight: 0,
            last_success_time: None,
            last_error: None,
            oldest_undelivered_time: None,
            oldest_undelivered_age: None,
            near_expiry: false,
            concurrency_limit: None,
            blocked_keys: None,
            oldest_blocked_time: None,
        }
    }

    #[test]
    fn the_table_has_one_aligned_line_per_target() {
        let mut email = target("email", 7, Circuit::Open);
        email.last_error = Some("HTTP 503".into());
        email.oldest_undelivered_age = Some("41s".into());
        let report = StatusReport {
            settled: false,
            routes: vec![RouteStatus {
                namespace: "shop".into(),
                name: "orders".into(),
                stream: None,
                dead_letter_stream: None,
                max_age: Some("72h".into()),
                targets: vec![target("inventory", 120, Circuit::Closed), email],
                error: None,
            }],
        };
        assert_eq!(
            table(&report),
            "\
ROUTE        TARGET     CIRCUIT  DELIVERED  FAILED  DEAD-LETTERED  PENDING  IN-FLIGHT  OLDEST  LAST-ERROR
shop/orders  inventory  Closed   120        0       0              0        0          -       -
shop/orders  email      Open     7          0       0              0        0          41s     HTTP 503
"
        );
    }

    #[test]
    fn json_uses_the_names_of_the_route_status() {
        let json = serde_json::to_value(target("email", 1, Circuit::HalfOpen)).unwrap();
        assert_eq!(json["circuit"], "HalfOpen");
        assert_eq!(json["deadLettered"], 0);
        assert_eq!(json["inFlight"], 0);
    }
}
