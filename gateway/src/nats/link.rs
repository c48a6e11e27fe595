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
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Notify;

use super::handshake::{self, Connected, Io, Server, Settings};
use super::headers::Headers;
use super::protocol::{self, InvalidSubject, Msg, ProtocolError, ServerOp};

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

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error("reading from NATS")]
    Read(#[source] std::io::Error),
    #[error("writing to NATS")]
    Write(#[source] std::io::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("the server did not answer {0} PINGs")]
    Stale(u32),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Unanswered PINGs after which the server is given up on.
const MAX_PINGS_OUT: u32 = 2;

/// A shard's handle on its connection. Cheap to clone.
#[derive(Clone)]
pub struct Link {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// The writer has something to send.
    wake_writer: Notify,
    /// The writer sent everything it had.
    drained: Notify,
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
            wake_writer: Notify::new(),
            drained: Notify::new(),
            connected: AtomicBool::new(false),
            inbox,
        });
        tokio::spawn(keep_connected(
            shared.clone(),
            servers,
            settings,
            ping_interval,
        ));
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
            shared.wake_writer.notify_one();
        }
        Ok(Pending {
            id,
            shared: shared.clone(),
            done: false,
        })
    }

    /// Waits until what is queued has been written (at shutdown), at most `limit`.
    pub async fn flush(&self, limit: Duration) {
        let drained = self.shared.drained.notified();
        tokio::pin!(drained);
        drained.as_mut().enable();
        if self.shared.lock().out.is_empty() {
            return;
        }
        self.shared.wake_writer.notify_one();
        let _ = tokio::time::timeout(limit, drained).await;
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

    /// Queues a control line (`PING`, `PONG`).
    fn queue(&self, line: &[u8]) {
        let mut state = self.lock();
        let was_empty = state.out.is_empty();
        state.out.extend_from_slice(line);
        drop(state);
        if was_empty {
            self.wake_writer.notify_one();
        }
    }

    fn set_connected(&self, max_payload: usize) {
        let mut state = self.lock();
        state.max_payload = max_payload;
        self.connected.store(true, Ordering::Relaxed);
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

/// Connects, serves the connection until it ends, and connects again, to each
/// server in turn, for as long as the runtime runs.
async fn keep_connected(
    shared: Arc<Shared>,
    mut servers: Vec<Server>,
    settings: Settings,
    ping_interval: Duration,
) {
    let mut subscribe = b"SUB ".to_vec();
    subscribe.extend_from_slice(&shared.inbox);
    subscribe.extend_from_slice(b"* ");
    protocol::write_number(&mut subscribe, REPLIES);
    subscribe.extend_from_slice(b"\r\n");
    // Shards spread over the cluster's servers, as the cluster's clients do.
    let mut next = rand_index(servers.len());
    let mut failures: u32 = 0;
    loop {
        let server = servers[next % servers.len()].clone();
        next += 1;
        match handshake::connect(&server, &settings, &subscribe).await {
            Ok(connected) => {
                if failures > 0 {
                    tracing::info!(%server, "connected to NATS again");
                }
                failures = 0;
                let ended = serve(&shared, connected, &mut servers, &server, ping_interval).await;
                tracing::warn!(%server, error = %fanout_config::error_chain(&ended), "lost the connection to NATS; events are refused with 503 until it is back");
            }
            Err(e) => {
                failures += 1;
                // Every failure of the first few, then one in 30: a long outage
                // should not flood the log.
                if failures <= 3 || failures.is_multiple_of(30) {
                    tracing::warn!(%server, attempt = failures, error = %fanout_config::error_chain(&e), "cannot connect to NATS");
                }
            }
        }
        // Quickly after a restart: while disconnected every event is refused.
        let delay = Duration::from_millis(u64::from(failures).saturating_mul(100).min(1000));
        tokio::time::sleep(delay).await;
    }
}

fn rand_index(n: usize) -> usize {
    // The low bits of a v7 id are random.
    (uuid::Uuid::now_v7().as_u128() as u64 % n.max(1) as u64) as usize
}

/// Serves one connection until it ends, and says why it did.
async fn serve(
    shared: &Shared,
    connected: Connected,
    servers: &mut Vec<Server>,
    server: &Server,
    ping_interval: Duration,
) -> Ended {
    let Connected { stream, info, read } = connected;
    learn_servers(servers, &info.connect_urls, server);
    let (reader, writer) = tokio::io::split(stream);
    let pings_out = AtomicU32::new(0);
    shared.set_connected(info.max_payload);
    let ended = tokio::select! {
        ended = write_loop(shared, writer) => ended,
        ended = read_loop(shared, reader, read, &pings_out, servers, server) => ended,
        ended = ping_loop(shared, &pings_out, ping_interval) => ended,
    };
    shared.set_disconnected();
    ended
}

async fn write_loop(shared: &Shared, mut writer: WriteHalf<Box<dyn Io>>) -> Ended {
    let mut sending = Vec::with_capacity(64 * 1024);
    loop {
        shared.wake_writer.notified().await;
        std::mem::swap(&mut sending, &mut shared.lock().out);
        if !sending.is_empty() {
            let written = async {
                writer.write_all(&sending).await?;
                writer.flush().await
            };
            if let Err(e) = written.await {
                return Ended::Write(e);
            }
            sending.clear();
        }
        shared.drained.notify_waiters();
    }
}

async fn read_loop(
    shared: &Shared,
    mut reader: ReadHalf<Box<dyn Io>>,
    mut read: BytesMut,
    pings_out: &AtomicU32,
    servers: &mut Vec<Server>,
    server: &Server,
) -> Ended {
    loop {
        loop {
            match protocol::parse(&mut read) {
                Ok(Some(ServerOp::Msg(msg))) => shared.deliver(msg),
                Ok(Some(ServerOp::Ping)) => shared.queue(b"PONG\r\n"),
                Ok(Some(ServerOp::Pong)) => pings_out.store(0, Ordering::Relaxed),
                Ok(Some(ServerOp::Ok)) => {}
                Ok(Some(ServerOp::Err(reason))) => {
                    // Fatal errors close the connection, which ends it below.
                    tracing::warn!(%server, %reason, "NATS sent an error");
                }
                Ok(Some(ServerOp::Info(text))) => match text.parse() {
                    Ok(info) => {
                        learn_servers(servers, &info.connect_urls, server);
                        if info.max_payload > 0 {
                            shared.lock().max_payload = info.max_payload;
                        }
                        if info.ldm {
                            tracing::info!(%server, "the NATS server is shutting down (lame duck mode)");
                        }
                    }
                    Err(e) => return Ended::Protocol(e),
                },
                Ok(None) => break,
                Err(e) => return Ended::Protocol(e),
            }
        }
        if read.capacity() - read.len() < 4096 {
            read.reserve(64 * 1024);
        }
        match reader.read_buf(&mut read).await {
            Ok(0) => return Ended::Closed,
            Ok(_) => {}
            Err(e) => return Ended::Read(e),
        }
    }
}

async fn ping_loop(shared: &Shared, pings_out: &AtomicU32, interval: Duration) -> Ended {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        ticks.tick().await;
        let out = pings_out.fetch_add(1, Ordering::Relaxed);
        if out >= MAX_PINGS_OUT {
            return Ended::Stale(out);
        }
        shared.queue(b"PING\r\n");
    }
}

/// Adds the servers a cluster announces (`host:port`) to those to try, with the
/// scheme of the one that announced them.
fn learn_servers(servers: &mut Vec<Server>, announced: &[String], from: &Server) {
    for address in announced {
        let url = if from.tls {
            format!("tls://{address}")
        } else {
            format!("nats://{address}")
        };
        if let Ok(found) = Server::parse(&url)
            && !servers
                .iter()
                .any(|s| s.host == found.host && s.port == found.port)
        {
            servers.push(found);
        }
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
            wake_writer: Notify::new(),
            drained: Notify::new(),
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
            status: None,
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

    #[test]
    fn announced_servers_are_added_once_with_the_announcers_scheme() {
        let first = Server::parse("tls://10.0.0.1:4222").unwrap();
        let mut servers = vec![first.clone()];
        let announced = [
            "10.0.0.1:4222".to_string(),
            "10.0.0.2:4222".into(),
            "10.0.0.2:4222".into(),
        ];
        learn_servers(&mut servers, &announced, &first);
        let names: Vec<String> = servers.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["tls://10.0.0.1:4222", "tls://10.0.0.2:4222"]);
    }
}
