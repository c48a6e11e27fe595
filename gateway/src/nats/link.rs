//! A shard's connection to NATS: publishes are written straight into one outgoing
//! buffer, each with a reply subject that ends in a number, and one subscription
//! takes every reply, handed to its publisher by that number. The connection is kept
//! up in the background: lost, it fails every publish waiting on it (their events may
//! or may not be stored: the client retries with its Idempotency-Key) and moves to the
//! next server.
//!
//! Publishes waiting for their reply are kept in the order sent, where their number
//! finds them, and a sweep several times per reply timeout fails those that waited
//! too long: no timer, channel or hash per publish.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use fanout_nats_client::connection::{self, Session, Signals};
use fanout_nats_client::handshake::{Server, Settings};
use fanout_nats_client::headers::Headers;
use fanout_nats_client::protocol::{self, Info, InvalidSubject, Msg};

/// The subscription id of the replies.
const REPLIES: u64 = 1;

/// A reply to a publish: its status (503: nothing stores the subject) and payload.
#[derive(Debug)]
pub struct Reply {
    pub status: Option<u16>,
    pub payload: Bytes,
}

/// Why a publish was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("not connected to NATS")]
    NotConnected,
    #[error("the message is {size} bytes, over the server's maximum of {max}")]
    TooLarge { size: usize, max: usize },
    #[error(transparent)]
    Invalid(#[from] InvalidSubject),
}

/// Why a publish got no reply.
#[derive(Clone, Copy, Debug, thiserror::Error)]
pub enum NoReply {
    #[error("the connection to NATS was lost before the reply came")]
    Lost,
    #[error("no reply came within {0:?}")]
    TimedOut(Duration),
}

/// Sweeps per reply timeout: a publish fails between the timeout and an eighth more.
const SWEEPS_PER_TIMEOUT: u32 = 8;

/// A shard's handle on its connection. Cheap to clone.
#[derive(Clone)]
pub struct Link {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    signals: Signals,
    /// Written only while `state` is locked; read without it for readiness.
    connected: AtomicBool,
    /// `_INBOX.<random>.`: replies come to this prefix and a number.
    inbox: Vec<u8>,
}

struct State {
    out: Vec<u8>,
    /// Publishes sent and not yet finished with, oldest first: `waiting[i]` is
    /// publish number `first + i`.
    waiting: VecDeque<Slot>,
    first: u64,
    /// Sweeps so far: a publish remembers the count it was sent at.
    sweeps: u32,
    max_payload: usize,
}

/// Where a publish stands.
enum Slot {
    /// Sent at sweep `sweep`; `waker` is told when the reply comes.
    Waiting { sweep: u32, waker: Option<Waker> },
    /// Its reply (or why none came), not yet taken.
    Answered(Result<Reply, NoReply>),
    /// Taken, or no longer waited for.
    Finished,
}

impl Link {
    /// Starts keeping a connection to one of `servers` on the current runtime, and
    /// returns at once: until it connects, every publish is refused with
    /// [`SendError::NotConnected`]. A publish whose reply has not come within
    /// `reply_timeout` fails with [`NoReply::TimedOut`].
    pub fn start(
        servers: Vec<Server>,
        settings: Settings,
        ping_interval: Duration,
        reply_timeout: Duration,
    ) -> Link {
        // A v7 id: a millisecond timestamp and 74 random bits, unique across the
        // shards and the gateway's replicas.
        let mut inbox = format!("_INBOX.{}.", uuid::Uuid::now_v7().simple()).into_bytes();
        inbox.shrink_to_fit();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                out: Vec::with_capacity(64 * 1024),
                waiting: VecDeque::new(),
                first: 0,
                sweeps: 0,
                max_payload: 0,
            }),
            signals: Signals::default(),
            connected: AtomicBool::new(false),
            inbox,
        });
        let session = shared.clone();
        tokio::spawn(async move {
            connection::keep_connected(&*session, servers, settings, ping_interval).await;
        });
        tokio::spawn(sweep(shared.clone(), reply_timeout));
        Link { shared }
    }

    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Queues a publish of `payload` with `headers` to `subject`; the reply comes to
    /// the returned [`Pending`].
    pub fn request(
        &self,
        subject: &str,
        headers: &Headers,
        payload: &[u8],
    ) -> Result<Pending, SendError> {
        let shared = &self.shared;
        let mut state = shared.lock();
        // Changed only under the lock: the connection cannot go between this check
        // and the publish being queued (its end clears the queue).
        if !shared.connected.load(Ordering::Relaxed) {
            return Err(SendError::NotConnected);
        }
        let id = state.first + state.waiting.len() as u64;
        let mut reply = [0u8; 96];
        let reply = reply_subject(&mut reply, &shared.inbox, id);
        let was_empty = state.out.is_empty();
        let at = state.out.len();
        let size = protocol::hpub(&mut state.out, subject, reply, headers, payload)?;
        if size > state.max_payload {
            state.out.truncate(at);
            return Err(SendError::TooLarge {
                size,
                max: state.max_payload,
            });
        }
        let sweep = state.sweeps;
        state
            .waiting
            .push_back(Slot::Waiting { sweep, waker: None });
        drop(state);
        if was_empty {
            shared.signals.wake_writer.notify_one();
        }
        Ok(Pending {
            id,
            shared: shared.clone(),
            done: false,
        })
    }

    /// Waits until what is queued has been written (at shutdown), at most `limit`.
    pub async fn flush(&self, limit: Duration) {
        let shared = &self.shared;
        let is_empty = || shared.lock().out.is_empty();
        shared.signals.flush(is_empty, limit).await;
    }
}

/// `<inbox><id>` in `buf`, without allocating.
fn reply_subject<'a>(buf: &'a mut [u8; 96], inbox: &[u8], id: u64) -> &'a [u8] {
    let mut digits = [0u8; 20];
    let digits = protocol::decimal(&mut digits, id);
    let len = inbox.len() + digits.len();
    buf[..inbox.len()].copy_from_slice(inbox);
    buf[inbox.len()..len].copy_from_slice(digits);
    &buf[..len]
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic (each change is one statement).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops taking publishes and fails those waiting.
    fn set_disconnected(&self) {
        let mut state = self.lock();
        self.connected.store(false, Ordering::Relaxed);
        state.out.clear();
        let woken = state.answer_waiting(None, NoReply::Lost);
        drop(state);
        woken.into_iter().for_each(Waker::wake);
    }

    /// Counts a sweep and fails the publishes that have waited `reply_timeout`.
    fn sweep(&self, reply_timeout: Duration) {
        let mut state = self.lock();
        state.sweeps = state.sweeps.wrapping_add(1);
        let woken =
            state.answer_waiting(Some(SWEEPS_PER_TIMEOUT), NoReply::TimedOut(reply_timeout));
        drop(state);
        woken.into_iter().for_each(Waker::wake);
    }

    /// Hands a reply to its publish.
    fn deliver(&self, msg: Msg) {
        let Some(id) = msg
            .subject
            .strip_prefix(self.inbox.as_slice())
            .and_then(|n| std::str::from_utf8(n).ok()?.parse::<u64>().ok())
        else {
            return;
        };
        let mut state = self.lock();
        // A reply that comes after its publish timed out finds it finished.
        let Some(slot) = state.slot(id) else {
            return;
        };
        let Slot::Waiting { waker, .. } = slot else {
            return;
        };
        let waker = waker.take();
        *slot = Slot::Answered(Ok(Reply {
            status: msg.status,
            payload: msg.payload,
        }));
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl State {
    fn slot(&mut self, id: u64) -> Option<&mut Slot> {
        let index = usize::try_from(id.checked_sub(self.first)?).ok()?;
        self.waiting.get_mut(index)
    }

    /// Forgets the finished publishes at the front.
    fn trim(&mut self) {
        while matches!(self.waiting.front(), Some(Slot::Finished)) {
            self.waiting.pop_front();
            self.first += 1;
        }
    }

    /// Answers `why` to the publishes waiting since more than `sweeps` sweeps ago
    /// (to all that wait, for `None`), and returns their wakers, to be woken once the
    /// state is unlocked.
    fn answer_waiting(&mut self, sweeps: Option<u32>, why: NoReply) -> Vec<Waker> {
        let now = self.sweeps;
        let mut woken = Vec::new();
        for slot in &mut self.waiting {
            let Slot::Waiting { sweep, waker } = slot else {
                continue;
            };
            // Those after it were sent later still.
            if sweeps.is_some_and(|sweeps| now.wrapping_sub(*sweep) <= sweeps) {
                break;
            }
            woken.extend(waker.take());
            *slot = Slot::Answered(Err(why));
        }
        woken
    }
}

/// A publish waiting for its reply. Dropped early (a client gone), it stops waiting.
pub struct Pending {
    id: u64,
    shared: Arc<Shared>,
    done: bool,
}

impl Future for Pending {
    type Output = Result<Reply, NoReply>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.shared.lock();
        let answer = match state.slot(self.id) {
            Some(Slot::Waiting { waker, .. }) => {
                match waker {
                    Some(known) if known.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
            Some(slot) => match std::mem::replace(slot, Slot::Finished) {
                Slot::Answered(answer) => answer,
                // Taken already: not polled again after Ready.
                _ => Err(NoReply::Lost),
            },
            None => Err(NoReply::Lost),
        };
        state.trim();
        drop(state);
        self.done = true;
        Poll::Ready(answer)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            let mut state = self.shared.lock();
            if let Some(slot) = state.slot(self.id) {
                *slot = Slot::Finished;
            }
            state.trim();
        }
    }
}

/// Fails, several times per `reply_timeout`, the publishes that waited that long.
async fn sweep(shared: Arc<Shared>, reply_timeout: Duration) {
    let every = (reply_timeout / SWEEPS_PER_TIMEOUT).max(Duration::from_millis(1));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        shared.sweep(reply_timeout);
    }
}

impl Session for Shared {
    const WHILE_LOST: &'static str = "events are refused with 503 until it is back";

    fn subscriptions(&self) -> Vec<u8> {
        let mut subscribe = b"SUB ".to_vec();
        subscribe.extend_from_slice(&self.inbox);
        subscribe.extend_from_slice(b"* ");
        protocol::write_number(&mut subscribe, REPLIES);
        subscribe.extend_from_slice(b"\r\n");
        subscribe
    }

    fn connected(&self, info: &Info) {
        let mut state = self.lock();
        state.max_payload = info.max_payload;
        self.connected.store(true, Ordering::Relaxed);
    }

    fn info_changed(&self, info: &Info) {
        if info.max_payload > 0 {
            self.lock().max_payload = info.max_payload;
        }
    }

    fn message(&self, msg: Msg) {
        self.deliver(msg);
    }

    fn queue(&self, line: &[u8]) {
        let mut state = self.lock();
        let was_empty = state.out.is_empty();
        state.out.extend_from_slice(line);
        drop(state);
        if was_empty {
            self.signals.wake_writer.notify_one();
        }
    }

    fn take_outgoing(&self, sending: &mut Vec<u8>) {
        connection::move_bytes(&mut self.lock().out, sending);
    }

    fn disconnected(&self) {
        self.set_disconnected();
    }

    fn signals(&self) -> &Signals {
        &self.signals
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;

    /// A link that is connected to nothing: what is sent stays in its buffer, and
    /// the test plays the server's part.
    fn connected() -> Link {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                out: Vec::new(),
                waiting: VecDeque::new(),
                first: 0,
                sweeps: 0,
                max_payload: 1 << 20,
            }),
            signals: Signals::default(),
            connected: AtomicBool::new(true),
            inbox: b"_INBOX.t.".to_vec(),
        });
        Link { shared }
    }

    fn send(link: &Link) -> Pending {
        link.request("in.orders", &Headers::new(), b"{}").unwrap()
    }

    fn reply(link: &Link, id: u64, payload: &'static str) {
        link.shared.deliver(Msg {
            subject: Bytes::from(format!("_INBOX.t.{id}")),
            sid: REPLIES,
            reply: Bytes::new(),
            status: None,
            headers: Bytes::new(),
            payload: Bytes::from_static(payload.as_bytes()),
        });
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Counted(AtomicUsize);

    impl Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn poll(pending: &mut Pending, waker: &Arc<Counted>) -> Poll<Result<Reply, NoReply>> {
        let waker = Waker::from(waker.clone());
        Pin::new(pending).poll(&mut Context::from_waker(&waker))
    }

    fn waiting(link: &Link) -> usize {
        link.shared.lock().waiting.len()
    }

    #[test]
    fn replies_find_their_publish_in_any_order_and_wake_it() {
        let link = connected();
        let (mut a, mut b) = (send(&link), send(&link));
        let (wa, wb) = (Arc::new(Counted::default()), Arc::new(Counted::default()));
        assert!(poll(&mut a, &wa).is_pending());
        assert!(poll(&mut b, &wb).is_pending());
        reply(&link, 1, "second");
        assert_eq!(wb.0.load(Ordering::Relaxed), 1);
        assert_eq!(wa.0.load(Ordering::Relaxed), 0);
        let Poll::Ready(Ok(got)) = poll(&mut b, &wb) else {
            panic!("b has its reply")
        };
        assert_eq!(got.payload, "second");
        // The first publish still waits: nothing is forgotten before it.
        assert_eq!(waiting(&link), 2);
        reply(&link, 0, "first");
        let Poll::Ready(Ok(got)) = poll(&mut a, &wa) else {
            panic!("a has its reply")
        };
        assert_eq!(got.payload, "first");
        assert_eq!(waiting(&link), 0, "both finished: forgotten");
        // A reply to nothing (late, or not ours) changes nothing.
        reply(&link, 0, "again");
        reply(&link, 99, "unknown");
        assert_eq!(waiting(&link), 0);
    }

    #[test]
    fn a_publish_dropped_before_its_reply_is_forgotten() {
        let link = connected();
        let mut a = send(&link);
        let b = send(&link);
        drop(b);
        assert_eq!(waiting(&link), 2, "kept until the one before it finishes");
        reply(&link, 1, "late");
        reply(&link, 0, "a");
        assert!(matches!(poll(&mut a, &Arc::default()), Poll::Ready(Ok(_))));
        assert_eq!(waiting(&link), 0);
        // Dropped first in line, it is forgotten at once.
        drop(send(&link));
        assert_eq!(waiting(&link), 0);
    }

    #[test]
    fn a_publish_times_out_after_the_sweeps_of_one_timeout_not_before() {
        let link = connected();
        let timeout = Duration::from_secs(5);
        let mut old = send(&link);
        let waker = Arc::new(Counted::default());
        assert!(poll(&mut old, &waker).is_pending());
        link.shared.sweep(timeout);
        let mut young = send(&link);
        for _ in 1..SWEEPS_PER_TIMEOUT {
            link.shared.sweep(timeout);
        }
        // Sent before the first sweep, it may have waited just under the timeout.
        assert!(poll(&mut old, &waker).is_pending());
        link.shared.sweep(timeout);
        assert_eq!(waker.0.load(Ordering::Relaxed), 1);
        assert!(matches!(
            poll(&mut old, &waker),
            Poll::Ready(Err(NoReply::TimedOut(t))) if t == timeout
        ));
        assert!(poll(&mut young, &Arc::default()).is_pending());
        link.shared.sweep(timeout);
        assert!(matches!(
            poll(&mut young, &Arc::default()),
            Poll::Ready(Err(NoReply::TimedOut(_)))
        ));
        // Its reply, when it comes at last, finds it finished.
        reply(&link, 0, "late");
        assert_eq!(waiting(&link), 0);
    }

    #[test]
    fn a_lost_connection_fails_every_waiting_publish_at_once() {
        let link = connected();
        let mut pending: Vec<Pending> = (0..3).map(|_| send(&link)).collect();
        let waker = Arc::new(Counted::default());
        for p in &mut pending {
            assert!(poll(p, &waker).is_pending());
        }
        link.shared.set_disconnected();
        assert_eq!(waker.0.load(Ordering::Relaxed), 3);
        for p in &mut pending {
            assert!(matches!(poll(p, &waker), Poll::Ready(Err(NoReply::Lost))));
        }
        assert!(matches!(
            link.request("in.orders", &Headers::new(), b"{}"),
            Err(SendError::NotConnected)
        ));
        assert!(link.shared.lock().out.is_empty());
    }

    #[test]
    fn a_reply_subject_is_the_inbox_and_the_number() {
        let mut buf = [0u8; 96];
        assert_eq!(reply_subject(&mut buf, b"_INBOX.abc.", 0), b"_INBOX.abc.0");
        assert_eq!(
            reply_subject(&mut buf, b"_INBOX.abc.", u64::MAX),
            format!("_INBOX.abc.{}", u64::MAX).as_bytes()
        );
    }
}
