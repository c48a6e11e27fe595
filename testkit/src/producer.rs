//! A producer posting events to the gateway at a steady rate until stopped, the way
//! a well-behaved client does: each event has its own Idempotency-Key, a 503 is
//! retried with the same key after its Retry-After, and every answer is counted.
//! What it got a 202 for is what the ledger must find delivered.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::http;

/// Longest a producer waits before retrying a 503 (whatever Retry-After says).
const MAX_RETRY_WAIT: Duration = Duration::from_secs(2);

/// What a producer saw.
#[derive(Clone, Debug, Default)]
pub struct Sent {
    /// Keys the gateway answered 202 for.
    pub accepted: BTreeSet<String>,
    /// Every answer by status (0: no answer: the connection failed, or there was no
    /// address to send to).
    pub statuses: BTreeMap<u16, usize>,
    /// 503s that came without a Retry-After.
    pub unavailable_without_retry_after: usize,
    /// Why requests got no answer (the first few).
    pub failures: Vec<String>,
}

/// A running producer.
pub struct Producer {
    stop: CancellationToken,
    task: JoinHandle<()>,
    sent: Arc<Mutex<Sent>>,
}

impl Producer {
    /// Posts to `http://<addr><path>` every `every`, with `headers`, keys
    /// `<prefix>-<n>`.
    pub fn start(
        addr: &str,
        path: &str,
        headers: &[(&str, &str)],
        prefix: &str,
        every: Duration,
    ) -> Producer {
        let (_, addrs) = watch::channel(vec![addr.to_string()]);
        Self::start_to(addrs, path, headers, prefix, every)
    }

    /// Like [`start`](Self::start), to whichever of `addrs` (the ready endpoints of a
    /// Service, kept current by the caller) comes next, in turn.
    pub fn start_to(
        addrs: watch::Receiver<Vec<String>>,
        path: &str,
        headers: &[(&str, &str)],
        prefix: &str,
        every: Duration,
    ) -> Producer {
        let stop = CancellationToken::new();
        let sent = Arc::new(Mutex::new(Sent::default()));
        let (path, prefix) = (path.to_string(), prefix.to_string());
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let task = tokio::spawn({
            let (stop, sent) = (stop.clone(), sent.clone());
            async move {
                let mut ticker = tokio::time::interval(every);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                for n in 0.. {
                    tokio::select! {
                        _ = ticker.tick() => {}
                        _ = stop.cancelled() => return,
                    }
                    let key = format!("{prefix}-{n}");
                    post_until_settled(&addrs, n, &path, &headers, &key, &sent, &stop).await;
                }
            }
        });
        Producer { stop, task, sent }
    }

    /// What it has seen so far.
    pub fn sent(&self) -> Sent {
        self.sent.lock().unwrap().clone()
    }

    /// Stops after the event in progress; what it saw.
    pub async fn stop(self) -> Sent {
        self.stop.cancel();
        let _ = self.task.await;
        self.sent.lock().unwrap().clone()
    }
}

/// Posts one event until the gateway answers something other than 503 or a failed
/// connection (or the producer stops).
async fn post_until_settled(
    addrs: &watch::Receiver<Vec<String>>,
    n: usize,
    path: &str,
    headers: &[(String, String)],
    key: &str,
    sent: &Mutex<Sent>,
    stop: &CancellationToken,
) {
    let mut all: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    all.push(("Idempotency-Key", key));
    all.push(("Content-Type", "application/json"));
    let body = format!("{{\"key\": \"{key}\"}}");
    loop {
        let addr = {
            let list = addrs.borrow();
            if list.is_empty() {
                None
            } else {
                Some(list[n % list.len()].clone())
            }
        };
        let answer = match addr {
            Some(addr) => http::post(&addr, path, &all, body.as_bytes()).await,
            None => Err("no address to send to".to_string()),
        };
        let (status, retry_after) = match &answer {
            Ok(r) => (
                r.status,
                r.header("retry-after").and_then(|v| v.parse::<u64>().ok()),
            ),
            Err(_) => (0, None),
        };
        {
            let mut s = sent.lock().unwrap();
            *s.statuses.entry(status).or_default() += 1;
            if status == 202 {
                s.accepted.insert(key.to_string());
            }
            if status == 503 && retry_after.is_none() {
                s.unavailable_without_retry_after += 1;
            }
        }
        if status != 503 && status != 0 {
            return;
        }
        let wait = Duration::from_secs(retry_after.unwrap_or(1)).min(MAX_RETRY_WAIT);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
    }
}
