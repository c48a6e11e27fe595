//! What a target's CEL filter and transform cost per event, without NATS or HTTP:
//!
//!     cargo bench -p fanout-dispatcher --bench expressions
//!
//! For each configuration, every event of `events.rs` goes through what a dispatcher
//! does with it before sending: `Worker::select`'s expressions
//! (`TargetExpressions::select`) and the request's header lines written from the
//! result (`RequestTemplate::attempt`, as over HTTP/1.1). The target without expressions is the baseline, in the
//! same rounds; the rows with one expression each show where the time goes. The last
//! two run on a 4 KiB order: a filter that mostly does not read it, for what building
//! only the keys read saves, and a transform that takes the SKU of each of its 64
//! lines, for what building only that key of each line saves. Built like `fanout`
//! (release, mimalloc). `FANOUT_BENCH_ROUNDS` (5) rounds of
//! `FANOUT_BENCH_EVENTS` (200000) events, the configurations in turn within a round;
//! the median round is printed, every round in brackets. `FANOUT_BENCH_ONLY=all,large`
//! runs the baseline and the configurations named (`filter`, `body`, `header`, `all`,
//! `large`, `lines`), for a profile of one.

#[path = "shared/events.rs"]
mod events;
#[path = "shared/expressions.rs"]
mod expressions;

use std::hint::black_box;
use std::time::{Instant, SystemTime};

use fanout_api::manifests::Manifests;
use fanout_dispatcher::event::{Event, Headers};
use fanout_dispatcher::expressions::{Outgoing, Selection, TargetExpressions};
use fanout_dispatcher::http::Outbound;
use fanout_dispatcher::request::{Auth, RequestTemplate};

use expressions::{CEL_BODY, CEL_FILTER, CEL_HEADER};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A transform of the large order that reads one key of each of its lines.
const LINES_BODY: &str = r#"{"order": event.data.id, "skus": event.data.lines.map(l, l.sku)}"#;

/// Distinct events cycled through (their ids, totals and bodies differ).
const DISTINCT: usize = 1000;

struct Configuration {
    name: &'static str,
    /// The route target's name, which `FANOUT_BENCH_ONLY` names.
    target: &'static str,
    /// Runs on the large orders.
    large: bool,
    expressions: TargetExpressions,
    template: RequestTemplate,
}

/// The configurations, each a target of one route, rendered from manifests as the
/// operator renders them.
fn configurations() -> Vec<Configuration> {
    let cases: [(&str, &str, String); 7] = [
        ("no expressions (baseline)", "none", String::new()),
        (
            "filter",
            "filter",
            format!("      filter: {{cel: '{CEL_FILTER}'}}\n"),
        ),
        (
            "transform: body",
            "body",
            format!("      transform: {{body: '{CEL_BODY}'}}\n"),
        ),
        (
            "transform: header",
            "header",
            format!("      transform: {{headers: {{X-Order-Total: '{CEL_HEADER}'}}}}\n"),
        ),
        (
            "filter and transform (the dispatch bench's)",
            "all",
            format!(
                "      filter: {{cel: '{CEL_FILTER}'}}\n      transform:\n        body: '{CEL_BODY}'\n        headers: {{X-Order-Total: '{CEL_HEADER}'}}\n"
            ),
        ),
        (
            "filter, on a 4 KiB order of 64 lines",
            "large",
            format!("      filter: {{cel: '{CEL_FILTER}'}}\n"),
        ),
        (
            "transform: the SKUs of the 4 KiB order's 64 lines",
            "lines",
            format!("      transform: {{body: '{LINES_BODY}'}}\n"),
        ),
    ];
    let mut manifests = "apiVersion: fanout.dev/v1alpha1
kind: ApiTarget
metadata: {name: crm}
spec:
  url: http://127.0.0.1:1/hook
  maxInFlight: 64
---
apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {name: orders}
spec:
  targets:
"
    .to_string();
    for (_, target, spec) in &cases {
        manifests.push_str(&format!(
            "    - name: {target}\n      apiTargetRef: {{name: crm}}\n{spec}"
        ));
    }
    let secrets = tempfile::tempdir().expect("a temporary directory");
    let route = Manifests::parse(&manifests, "bench")
        .and_then(|m| m.render(secrets.path()))
        .expect("the bench's manifests render")
        .remove(0)
        .config;
    cases
        .iter()
        .zip(&route.targets)
        .map(|((name, target_name, _), target)| {
            assert_eq!(&target.name, target_name, "the route's targets in order");
            Configuration {
                name,
                target: target_name,
                large: matches!(*target_name, "large" | "lines"),
                expressions: TargetExpressions::compile(target)
                    .expect("the bench's expressions compile"),
                template: RequestTemplate::new("bench/orders", target, Auth::default())
                    .expect("the bench's target has valid headers"),
            }
        })
        .collect()
}

fn event(i: usize) -> Event {
    Event {
        id: format!("evt-{i}"),
        subject: "fanout.in.shop.orders.order.placed".into(),
        headers: Headers::from_map(&events::event_headers(i)),
        body: events::body(i),
        delivery: 1,
        stream_sequence: i as u64 + 1,
        stored_at: SystemTime::now(),
    }
}

/// Event `i` with a 4 KiB order: the bench's order with 64 lines and a customer,
/// most of which the filter does not read.
fn large_event(i: usize) -> Event {
    let lines: Vec<String> = (0..64)
        .map(|l| {
            format!(
                r#"{{"sku": "sku-{l}", "qty": {}, "price": {}.5, "note": "line {l}"}}"#,
                l % 5 + 1,
                l * 3
            )
        })
        .collect();
    let body = format!(
        r#"{{"id": "order-{i}", "total": {}, "items": [{{"sku": "a-1", "qty": 1}}], "customer": {{"id": "c-{i}", "name": "Customer {i}", "email": "c{i}@example.com", "tier": "gold"}}, "lines": [{}]}}"#,
        150 + i % 100,
        lines.join(", ")
    );
    Event {
        body: bytes::Bytes::from(body),
        ..event(i)
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// µs per event for `count` events through `configuration`.
fn run(configuration: &Configuration, events: &[Event], count: usize) -> f64 {
    const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    // The request's header lines, written as a worker writes them over HTTP/1.1.
    let mut lines = Vec::with_capacity(2048);
    let started = Instant::now();
    for i in 0..count {
        let event = &events[i % events.len()];
        let selection = configuration.expressions.select(black_box(event), true);
        let Selection::Send(transformed) = selection else {
            panic!(
                "{}: every bench event passes the filter",
                configuration.name
            );
        };
        let outgoing = Outgoing::new(event, transformed.as_deref());
        lines.clear();
        let attempt = configuration.template.attempt(outgoing, TRACEPARENT);
        attempt.write_headers(&mut lines);
        black_box((&lines, attempt.body()));
    }
    started.elapsed().as_secs_f64() * 1e6 / count as f64
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn main() {
    let rounds = env_or("FANOUT_BENCH_ROUNDS", 5);
    let count = env_or("FANOUT_BENCH_EVENTS", 200_000);
    let only = std::env::var("FANOUT_BENCH_ONLY").ok();
    let configurations: Vec<Configuration> = configurations()
        .into_iter()
        .enumerate()
        .filter(|(i, c)| {
            *i == 0
                || only
                    .as_deref()
                    .is_none_or(|o| o.split(',').any(|n| n == c.target))
        })
        .map(|(_, c)| c)
        .collect();
    let events: Vec<Event> = (0..DISTINCT).map(event).collect();
    let large: Vec<Event> = (0..DISTINCT).map(large_event).collect();
    let events_of = |c: &Configuration| if c.large { &large } else { &events };
    // Warm up: allocator pages, caches, branch predictors.
    for configuration in &configurations {
        run(configuration, events_of(configuration), count / 10);
    }
    let mut timings = vec![Vec::new(); configurations.len()];
    for round in 1..=rounds {
        eprintln!("round {round}/{rounds} ...");
        for (configuration, timing) in configurations.iter().zip(&mut timings) {
            timing.push(run(configuration, events_of(configuration), count));
        }
    }
    let baseline = median(&timings[0]);
    println!();
    println!(
        "{count} events of {} B per round ({} B for the 4 KiB order), {rounds} rounds",
        events::BODY_BYTES,
        large[0].body.len()
    );
    println!();
    println!("| configuration | µs per event and target (rounds) | added to the baseline |");
    println!("|---|---:|---:|");
    for (configuration, timing) in configurations.iter().zip(&timings) {
        let rounds: Vec<String> = timing.iter().map(|t| format!("{t:.2}")).collect();
        let m = median(timing);
        let added = if configuration.name == configurations[0].name {
            String::new()
        } else {
            format!("{:.2}", m - baseline)
        };
        println!(
            "| {} | {m:.2} ({}) | {added} |",
            configuration.name,
            rounds.join(", ")
        );
    }
}
