//! Replay through the front door: events posted to the gateway, delivered by the real
//! `fanout dispatch` with the configuration the operator rendered on the local control
//! plane, then sent again to one target with `kubectl fanout replay` (the plugin finding
//! NATS from the chart's connection ConfigMap) or a `FanOutReplay` applied with kubectl.
//!
//! What is checked is what the targets received (Idempotency-Keys, counts), the CLI's
//! output and the FanOutReplay's status as `kubectl get` shows it.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use fanout_api::FanOutReplay;
use fanout_testkit::process::Spawned;
use fanout_testkit::target::TargetServer;
use fanout_testkit::wait;
use support::operator::{self, Env, Operator, T, target_yaml};
use support::plugin::{self, Plugin};

/// Route `orders` with two targets, `crm` (rate-limited to `crm_rate` per second,
/// burst 1) and `audit`, running: operator, dispatcher, gateway, and the chart's
/// connection ConfigMap in the test namespace.
struct Shop {
    env: Env,
    crm: TargetServer,
    audit: TargetServer,
    gateway: String,
    plugin: Plugin,
    operator: Operator,
    _dispatcher: Spawned,
    _gateway: Spawned,
    dir: tempfile::TempDir,
}

impl Shop {
    async fn start(prefix: &str, crm_rate: u32) -> Shop {
        Shop::start_with(prefix, crm_rate, "", "").await
    }

    /// With `source` as the route's spec.source, `crm_filter` as crm's filter.
    async fn start_with(prefix: &str, crm_rate: u32, source: &str, crm_filter: &str) -> Shop {
        let env = Env::new(prefix).await;
        let operator = env.operator();
        let crm = TargetServer::start().await.unwrap();
        let audit = TargetServer::start().await.unwrap();
        let route = format!(
            "apiVersion: fanout.dev/v1alpha1
kind: FanOutRoute
metadata: {{name: orders}}
spec:
  targets:
    - {{name: crm, apiTargetRef: {{name: crm}}, filter: {{{crm_filter}}}}}
    - {{name: audit, apiTargetRef: {{name: audit}}}}
  gateway: {{allowUnauthenticated: true}}
{source}"
        );
        env.apply(&format!(
            "{}{}{route}",
            target_yaml(
                "crm",
                &crm.url("/crm"),
                &format!("  rateLimit: {{requestsPerSecond: {crm_rate}, burst: 1}}")
            ),
            target_yaml("audit", &audit.url("/audit"), ""),
        ));
        plugin::install_connection(&env.ns.name, &[&format!("nats.url={}", env.nats.url())]);
        let dir = tempfile::tempdir().unwrap();
        let (route_file, gateway_file) = operator::rendered(&env, "orders", dir.path()).await;
        let (dispatcher, _) =
            operator::dispatcher(&env, dir.path(), &route_file, "orders-dispatcher-1");
        let (gateway_process, gateway, _) = operator::gateway(&env, dir.path(), &gateway_file);
        Shop {
            env,
            crm,
            audit,
            gateway,
            plugin: Plugin::new(),
            operator,
            _dispatcher: dispatcher,
            _gateway: gateway_process,
            dir,
        }
    }

    async fn send(&self, range: std::ops::Range<usize>) -> Vec<String> {
        operator::send(&self.env, &self.gateway, "orders", range).await
    }

    /// `kubectl fanout <args> -n <ns> --operator-namespace <ns>`.
    fn args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = args.to_vec();
        all.extend(["-n", &self.env.ns.name]);
        all.extend(["--operator-namespace", &self.env.ns.name]);
        all
    }

    /// Sends one more event (the `posted`th) and waits until both targets have it,
    /// and crm has every copy replayed to it so far (as JetStream counts them on its
    /// redrive subject: copies are delivered at crm's rate limit, concurrently, so
    /// some may still arrive after the marker); the number of copies.
    async fn settle(&self, posted: usize) -> usize {
        self.settle_filtered(posted, posted + 1).await
    }

    /// [`Shop::settle`] when crm's filter takes only `crm_originals` of the events
    /// posted, the marker included or not.
    async fn settle_filtered(&self, posted: usize, crm_originals: usize) -> usize {
        let id = self.send(posted..posted + 1).await.remove(0);
        self.audit
            .wait_for_keys(&BTreeSet::from([id]), T)
            .await
            .unwrap();
        let copies = redriven(&self.env).await;
        self.crm.wait_for(crm_originals + copies, T).await.unwrap();
        copies
    }
}

/// How many times each Idempotency-Key arrived.
fn tally(keys: Vec<String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for k in keys {
        *counts.entry(k).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_is_replayed_to_one_target_only_with_the_original_keys_at_its_rate() {
    let shop = Shop::start("replay-window", 10).await;
    let before = shop.send(0..20).await;
    let from = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
    let window = shop.send(20..40).await;
    let until = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
    let after = shop.send(40..50).await;
    let all: BTreeSet<String> = before
        .iter()
        .chain(&window)
        .chain(&after)
        .cloned()
        .collect();
    shop.crm.wait_for_keys(&all, T).await.unwrap();
    shop.audit.wait_for_keys(&all, T).await.unwrap();
    assert_eq!((shop.crm.count(), shop.audit.count()), (50, 50));

    let replay = |extra: &[&'static str]| {
        let mut args = vec!["replay", "orders", "--target", "crm"];
        args.extend(["--from-time", &from, "--until", &until]);
        args.extend_from_slice(extra);
        shop.plugin.run(&shop.args(&args))
    };

    // A dry run lists exactly the window's events and sends nothing.
    let planned = replay(&["--dry-run"]);
    let listed: Vec<String> = planned
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().nth(2))
        .map(String::from)
        .collect();
    assert_eq!(listed, window, "oldest first, nothing else:\n{planned}");
    assert!(
        planned.contains("would send 20 events of route") && planned.contains("at most 10/s"),
        "{planned}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&replay(&["--dry-run", "-o", "json"])).unwrap();
    assert_eq!(json["total"], 20);
    assert_eq!(json["events"].as_array().unwrap().len(), 20);

    // The replay.
    let out = replay(&[]);
    assert!(
        out.contains("replayed 20 events of route") && out.contains("to target crm"),
        "{out}"
    );
    assert_eq!(
        shop.settle(50).await,
        20,
        "one copy per event of the window"
    );
    let crm = tally(shop.crm.keys());
    for id in &window {
        assert_eq!(crm[id], 2, "{id}: the original delivery and the replay");
    }
    for id in before.iter().chain(&after) {
        assert_eq!(crm[id], 1, "{id} is outside the window");
    }
    assert_eq!(
        shop.audit.count(),
        51,
        "the other target gets nothing twice (50 events and the marker)"
    );

    // Published no faster than crm's rate limit (10/s, burst 1): 20 copies take 1.9 s.
    // Their times are those JetStream stored them at, on the target's redrive subject.
    let mut stream = shop
        .env
        .js
        .get_stream(shop.env.key("orders").stream())
        .await
        .unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let redrive = shop.env.key("orders").redrive_subject("crm");
    let mut stored = Vec::new();
    for seq in 1..=last {
        let m = stream.get_raw_message(seq).await.unwrap();
        if m.subject.as_str() == redrive {
            stored.push(SystemTime::from(m.time));
        }
    }
    assert_eq!(stored.len(), 20);
    let span = stored[19].duration_since(stored[0]).unwrap();
    assert!(span >= Duration::from_millis(1700), "20 copies in {span:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_killed_midway_resumes_with_the_same_id_and_sends_nothing_twice() {
    let shop = Shop::start("replay-resume", 10).await;
    let ids = shop.send(0..40).await;
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    shop.crm.wait_for_keys(&all, T).await.unwrap();
    shop.audit.wait_for_keys(&all, T).await.unwrap();

    let args = shop.args(&[
        "replay",
        "orders",
        "--target",
        "crm",
        "--from-seq",
        "1",
        "--id",
        "night-1",
    ]);
    // 40 copies at 10/s take 4 s; the process is killed (SIGKILL: no chance to save
    // anything more) once 15 have arrived, after it recorded its progress (every
    // second).
    let mut first = shop.plugin.spawn(shop.dir.path(), "replay-1", &args);
    shop.crm.wait_for(55, T).await.unwrap();
    first.kill();
    let at_kill = shop.crm.count();
    assert!(at_kill < 80, "killed midway: {at_kill}");
    assert!(first.log().contains("replay night-1"), "{}", first.log());

    let resumed = shop.plugin.output(&args);
    let (out, said) = (
        String::from_utf8_lossy(&resumed.stdout),
        String::from_utf8_lossy(&resumed.stderr),
    );
    assert!(resumed.status.success(), "{out}\n{said}");
    assert!(out.contains("replayed 40 events of route"), "{out}");
    // It went on from the progress it had recorded, not from the start.
    assert!(
        said.contains("resuming replay night-1 after sequence"),
        "{said}"
    );
    assert!(
        !said.contains("resuming replay night-1 after sequence 0 "),
        "{said}"
    );
    assert_eq!(shop.settle(40).await, 40, "JetStream stored each copy once");
    let crm = tally(shop.crm.keys());
    for id in &ids {
        assert_eq!(
            crm[id], 2,
            "{id}: the original and exactly one replayed copy"
        );
    }
    assert_eq!(
        shop.audit.count(),
        41,
        "the other target gets nothing twice"
    );

    // Run once more: complete already, nothing sent.
    let again = shop.plugin.run(&args);
    assert!(again.contains("complete already"), "{again}");
    let json: serde_json::Value =
        serde_json::from_str(&shop.plugin.run(&[&args[..], &["-o", "json"]].concat())).unwrap();
    assert_eq!(
        (json["sent"].as_u64(), json["complete"].as_bool()),
        (Some(40), Some(true))
    );
    assert_eq!(shop.settle(41).await, 40);
    assert_eq!(shop.crm.count(), 40 + 40 + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_after_the_duplicate_window_at_most_the_last_second_is_sent_again() {
    // JetStream forgets copies' message ids after 1 s here: only the recorded
    // progress keeps a late resume from sending everything before the kill again.
    let shop = Shop::start_with("replay-late", 10, "  source: {duplicateWindow: 1s}", "").await;
    let ids = shop.send(0..40).await;
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    shop.crm.wait_for_keys(&all, T).await.unwrap();
    shop.audit.wait_for_keys(&all, T).await.unwrap();

    let args = shop.args(&[
        "replay",
        "orders",
        "--target",
        "crm",
        "--from-seq",
        "1",
        "--id",
        "late-1",
    ]);
    let mut first = shop.plugin.spawn(shop.dir.path(), "replay-1", &args);
    // Killed after about 25 copies (2.5 s at 10/s; progress is recorded every second).
    shop.crm.wait_for(65, T).await.unwrap();
    first.kill();
    // Here the condition is time itself: JetStream's 1 s duplicate window must pass.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let out = shop.plugin.run(&args);
    assert!(out.contains("replayed 40 events of route"), "{out}");
    let copies = shop.settle(40).await;
    let crm = tally(shop.crm.keys());
    for id in &ids {
        assert!(crm[id] >= 2, "{id} replayed at least once");
    }
    // Sent twice: only what was published after the last recorded progress (at most a
    // second's worth at 10/s, and the copies awaiting acknowledgement); starting over
    // would send the ~25 before the kill again.
    assert!(copies - 40 <= 15, "{} copies sent twice", copies - 40);
    assert_eq!(
        shop.audit.count(),
        41,
        "the other target gets nothing twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_sends_only_what_the_targets_filter_lets_through() {
    // crm takes order.placed only; its consumer takes whatever arrives on its redrive
    // subject, so the replay must leave the others out itself.
    let shop = Shop::start_with(
        "replay-filter",
        50,
        "",
        "headers: {X-Event-Type: order.placed}",
    )
    .await;
    let path = format!("/v1/namespaces/{}/routes/orders/events", shop.env.ns.name);
    let (mut placed, mut all) = (BTreeSet::new(), BTreeSet::new());
    for i in 0..10 {
        let kind = if i % 2 == 0 {
            "order.placed"
        } else {
            "order.updated"
        };
        let body = format!("{{\"order\": {i}}}");
        // Until the gateway has started and loaded the route.
        let r = wait::until("the gateway to accept an event", T, || async {
            let r = fanout_testkit::http::post(
                &shop.gateway,
                &path,
                &[("content-type", "application/json"), ("x-event-type", kind)],
                body.as_bytes(),
            )
            .await?;
            if r.status == 202 {
                Ok(r)
            } else {
                Err(format!("{} {}", r.status, r.body))
            }
        })
        .await
        .unwrap();
        let answer: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let id = answer["id"].as_str().unwrap().to_string();
        if i % 2 == 0 {
            placed.insert(id.clone());
        }
        all.insert(id);
    }
    shop.crm.wait_for_keys(&placed, T).await.unwrap();
    shop.audit.wait_for_keys(&all, T).await.unwrap();

    let args = shop.args(&["replay", "orders", "--target", "crm", "--from-seq", "1"]);
    let planned = shop.plugin.run(&[&args[..], &["--dry-run"]].concat());
    assert!(planned.contains("would send 5 events"), "{planned}");
    let out = shop.plugin.run(&args);
    assert!(out.contains("replayed 5 events"), "{out}");
    // The marker (no X-Event-Type) is not crm's either.
    let copies = shop.settle_filtered(10, 5).await;
    assert_eq!(copies, 5, "only the five order.placed copies");
    let crm = tally(shop.crm.keys());
    assert!(placed.iter().all(|id| crm[id] == 2), "{crm:?}");
    assert_eq!(crm.len(), placed.len(), "nothing else: {crm:?}");
}

/// `kubectl get fanoutreplay <name> -o jsonpath=<path>` in the test namespace.
fn get(env: &Env, name: &str, path: &str) -> String {
    env.kubectl(&[
        "get",
        "fanoutreplay",
        name,
        "-o",
        &format!("jsonpath={path}"),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fanoutreplay_shows_its_progress_and_completes() {
    let shop = Shop::start("replay-cr", 5).await;
    let ids = shop.send(0..30).await;
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    shop.crm.wait_for_keys(&all, T).await.unwrap();
    shop.audit.wait_for_keys(&all, T).await.unwrap();

    shop.env.apply(
        "apiVersion: fanout.dev/v1alpha1
kind: FanOutReplay
metadata: {name: crm-night}
spec:
  route: orders
  target: crm
  window: {fromSequence: 11, untilSequence: 30}
",
    );
    // While it runs (20 copies at 5/s: 4 s): sent so far of 20, Complete=False Running.
    let running = wait::until("progress in the FanOutReplay's status", T, || async {
        let progress = get(&shop.env, "crm-night", "{.status.progress}");
        let reason = get(
            &shop.env,
            "crm-night",
            "{.status.conditions[?(@.type==\"Complete\")].reason}",
        );
        let sent: u64 = progress
            .split('/')
            .next()
            .unwrap_or("")
            .parse()
            .unwrap_or(0);
        if reason == "Running" && sent > 0 && sent < 20 && progress.ends_with("/20") {
            Ok(progress)
        } else {
            Err(format!("{progress} {reason}"))
        }
    })
    .await
    .unwrap();
    eprintln!("while running: {running}");
    wait::until("Complete=True", T, || async {
        let complete = get(
            &shop.env,
            "crm-night",
            "{.status.conditions[?(@.type==\"Complete\")].status}",
        );
        if complete == "True" {
            Ok(())
        } else {
            Err(complete)
        }
    })
    .await
    .unwrap();
    let table = shop.env.kubectl(&["get", "fanoutreplays", "-o", "wide"]);
    let line = table.lines().find(|l| l.starts_with("crm-night")).unwrap();
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        &cells[..6],
        ["crm-night", "orders", "crm", "20/20", "30", "True"],
        "{table}"
    );
    let replay = shop
        .env
        .api::<FanOutReplay>()
        .get("crm-night")
        .await
        .unwrap();
    let status = replay.status.unwrap();
    assert_eq!(
        (
            status.first_sequence,
            status.last_sequence,
            status.sent,
            status.missing
        ),
        (Some(11), Some(30), Some(20), Some(0))
    );
    assert!(status.completion_time.is_some() && status.start_time.is_some());
    assert_eq!(shop.env.events("ReplayComplete").await.len(), 1);

    assert_eq!(shop.settle(30).await, 20);
    let crm = tally(shop.crm.keys());
    for (i, id) in ids.iter().enumerate() {
        let expected = if i >= 10 { 2 } else { 1 };
        assert_eq!(crm[id], expected, "event {i} ({id})");
    }
    assert_eq!(
        shop.audit.count(),
        31,
        "the other target gets nothing twice"
    );

    // A change is refused: a replay is what it was created as.
    let kubectl = fanout_testkit::cluster::kubectl(&[
        "-n",
        &shop.env.ns.name,
        "patch",
        "fanoutreplay",
        "crm-night",
        "--type=merge",
        "-p",
        "{\"spec\":{\"target\":\"audit\"}}",
    ])
    .unwrap()
    .output()
    .unwrap();
    assert!(!kubectl.status.success());
    assert!(
        String::from_utf8_lossy(&kubectl.stderr).contains("cannot be changed once created"),
        "{}",
        String::from_utf8_lossy(&kubectl.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_fanoutreplay_stops_its_replay() {
    let shop = Shop::start("replay-stop", 4).await;
    let ids = shop.send(0..40).await;
    let all: BTreeSet<String> = ids.iter().cloned().collect();
    shop.crm.wait_for_keys(&all, T).await.unwrap();
    shop.audit.wait_for_keys(&all, T).await.unwrap();

    shop.env.apply(
        "apiVersion: fanout.dev/v1alpha1
kind: FanOutReplay
metadata: {name: everything}
spec: {route: orders, target: crm, window: {since: 1h}}
",
    );
    // 40 copies at 4/s would take 10 s; it is deleted after a few.
    shop.crm.wait_for(44, T).await.unwrap();
    shop.env
        .kubectl(&["delete", "fanoutreplay", "everything", "--wait=true"]);
    wait::until("the operator to stop the replay", T, || async {
        let log = shop.operator.process.log();
        if log.contains("replay stopped: its FanOutReplay was deleted") {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await
    .unwrap();
    // What it published before it stopped; nothing more is published after.
    let published = redriven(&shop.env).await;
    assert!(published < 40, "stopped midway: {published}");
    // Were it still running, 4 more copies a second would be published: none are in 3 s.
    let more = wait::until(
        "more replayed events (there must be none)",
        Duration::from_secs(3),
        || async {
            let n = redriven(&shop.env).await;
            if n > published {
                Ok(n)
            } else {
                Err(n.to_string())
            }
        },
    )
    .await;
    assert!(more.is_err(), "still replaying after the delete: {more:?}");
    assert_eq!(shop.settle(40).await, published);
    assert_eq!(shop.crm.count(), 40 + published + 1);
    assert_eq!(shop.audit.count(), 41);
}

/// Copies the replay published to crm's redrive subject, as JetStream counts them.
async fn redriven(env: &Env) -> usize {
    use futures::TryStreamExt;
    let key = env.key("orders");
    let stream = env.js.get_stream(key.stream()).await.unwrap();
    stream
        .info_with_subjects(key.redrive_subject("crm"))
        .await
        .unwrap()
        .try_fold(0, |n, (_, count)| async move { Ok(n + count) })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_fanoutreplay_without_one_start_is_refused_naming_the_field() {
    let client = fanout_testkit::cluster::client().await.unwrap();
    let ns = fanout_testkit::cluster::TestNamespace::create(&client, "replay-invalid")
        .await
        .unwrap();
    for (window, message) in [
        ("{}", "set exactly one of since, fromTime and fromSequence"),
        (
            "{since: 2h, fromSequence: 7}",
            "set exactly one of since, fromTime and fromSequence",
        ),
        (
            "{fromSequence: 7, untilSequence: 9, untilTime: '2026-11-27T02:00:00Z'}",
            "set at most one of untilTime and untilSequence",
        ),
        ("{since: 0s}", "since must be greater than 0s"),
    ] {
        let manifest = format!(
            "apiVersion: fanout.dev/v1alpha1
kind: FanOutReplay
metadata: {{name: bad}}
spec: {{route: orders, target: crm, window: {window}}}
"
        );
        let apply =
            fanout_testkit::cluster::kubectl(&["apply", "-n", &ns.name, "-f", "-"]).unwrap();
        let out = fanout_testkit::cluster::run_with_stdin(apply, manifest.as_bytes()).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{window} was accepted");
        assert!(
            stderr.contains("spec.window") && stderr.contains(message),
            "{window}: {stderr}"
        );
    }
    ns.delete(&client).await.unwrap();
}
