//! What a target's CEL filter and transform cost per event, without NATS or HTTP:
//!
//!     cargo bench -p fanout-dispatcher --bench expressions
//!
//! For each configuration, every event of `events.rs` goes through what a dispatcher
//! does with it before sending: `Worker::select`'s expressions
//! (`TargetExpressions::select`) and the request built from the result
//! (`RequestTemplate::build`). The target without expressions is the baseline, in the
//! same rounds; the rows with one expression each show where the time goes. Built like
//! `fanout` (release, mimalloc). `FANOUT_BENCH_ROUNDS` (5) rounds of
//! `FANOUT_BENCH_EVENTS` (200000) events, the configurations in turn within a round;
//! the median round is printed, every round in brackets.

#[path = "shared/events.rs"]
mod events;
#[path = "shared/expressions.rs"]
mod expressions;

use std::hint::black_box;
use std::time::{Instant, SystemTime};

use fanout_config::TargetConfig;
use fanout_dispatcher::event::Event;
use fanout_dispatcher::expressions::{Outgoing, Selection, TargetExpressions};
use fanout_dispatcher::request::{Auth, RequestTemplate};

use expressions::{CEL_BODY, CEL_FILTER, CEL_HEADER};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Distinct events cycled through (their ids, totals and bodies differ).
const DISTINCT: usize = 1000;

struct Configuration {
    name: &'static str,
    expressions: TargetExpressions,
    template: RequestTemplate,
}

fn configuration(
    name: &'static str,
    filter: Option<&str>,
    body: Option<&str>,
    header: Option<&str>,
) -> Configuration {
    let mut target: TargetConfig = serde_yaml_ng::from_str(
        "name: crm
consumer: crm
deadLetterSubject: fanout.dlq.shop.orders.crm
filter: {}
policy:
  url: http://127.0.0.1:1/hook
  method: POST
  headers: {}
  timeout: 2s
  retry: {maxAttempts: 3, backoff: exponential, jitter: full, initialDelay: 100ms, maxDelay: 1s, retryAfterMax: 10s, retryableStatusCodes: ['5xx'], nonRetryableStatusCodes: []}
  maxInFlight: 64
",
    )
    .expect("the bench's target parses");
    target.filter.cel = filter.map(str::to_string);
    if body.is_some() || header.is_some() {
        target.transform = Some(fanout_config::route::Transform {
            body: body.map(str::to_string),
            headers: header
                .map(|h| ("X-Order-Total".to_string(), h.to_string()))
                .into_iter()
                .collect(),
        });
    }
    Configuration {
        name,
        expressions: TargetExpressions::compile(&target).expect("the bench's expressions compile"),
        template: RequestTemplate::new("shop/orders", &target, Auth::default())
            .expect("the bench's target has valid headers"),
    }
}

fn event(i: usize) -> Event {
    Event {
        id: format!("evt-{i}"),
        subject: "fanout.in.shop.orders.order.placed".into(),
        headers: events::event_headers(i),
        body: events::body(i),
        delivery: 1,
        stream_sequence: i as u64 + 1,
        stored_at: SystemTime::now(),
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
        black_box(configuration.template.build(outgoing, TRACEPARENT));
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
    let configurations = [
        configuration("no expressions (baseline)", None, None, None),
        configuration("filter", Some(CEL_FILTER), None, None),
        configuration("transform: body", None, Some(CEL_BODY), None),
        configuration("transform: header", None, None, Some(CEL_HEADER)),
        configuration(
            "filter and transform (the dispatch bench's)",
            Some(CEL_FILTER),
            Some(CEL_BODY),
            Some(CEL_HEADER),
        ),
    ];
    let events: Vec<Event> = (0..DISTINCT).map(event).collect();
    // Warm up: allocator pages, caches, branch predictors.
    for configuration in &configurations {
        run(configuration, &events, count / 10);
    }
    let mut timings = vec![Vec::new(); configurations.len()];
    for round in 1..=rounds {
        eprintln!("round {round}/{rounds} ...");
        for (configuration, timing) in configurations.iter().zip(&mut timings) {
            timing.push(run(configuration, &events, count));
        }
    }
    let baseline = median(&timings[0]);
    println!();
    println!(
        "{count} events of {} B per round, {rounds} rounds",
        events::BODY_BYTES
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
