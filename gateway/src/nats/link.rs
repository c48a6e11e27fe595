//! A shard's connection to NATS: publishes are written straight into one outgoing
//! buffer, each with a reply subject that ends in a number, and one subscription
//! takes every reply, handed to its publisher by that number. The connection is kept
//! up in the background: lost, it fails every publish waiting on it (their events may
//! or may not be stored: the client retries with its Idempotency-Key) and moves to the
//! next server.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Notify, oneshot};

use super::handshake::{self, Connected, Io, Server, Settings};
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

/// The connection was lost before the reply came.
#[derive(Debug, thiserror::Error)]
#[error("the connection to NATS was lost before the reply came")]
pub struct Lost;

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
    waiting: HashMap<u64, oneshot::Sender<Reply>>,
    next: u64,
    max_payload: usize,
}

impl Link {
    /// Starts keeping a connection to one of `servers` on the current runtime, and
    /// returns at once: until it connects, every publish is refused with
    /// [`SendError::NotConnected`].
    pub fn start(servers: Vec<Server>, settings: Settings, ping_interval: Duration) -> Link {
        // A v7 id: a millisecond timestamp and 74 random bits, unique across the
        // shards and the gateway's replicas.
        let mut inbox = format!("_INBOX.{}.", uuid::Uuid::now_v7().simple()).into_bytes();
        inbox.shrink_to_fit();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                out: Vec::with_capacity(64 * 1024),
                waiting: HashMap::new(),
                next: 0,
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
        headers: &async_nats::HeaderMap,
        payload: &[u8],
    ) -> Result<Pending, SendError> {
        let shared = &self.shared;
        let mut state = shared.lock();
        // Changed only under the lock: the connection cannot go between this check
        // and the publish being queued (its end clears the queue).
        if !shared.connected.load(Ordering::Relaxed) {
            return Err(SendError::NotConnected);
        }
        let id = state.next;
        state.next += 1;
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
        let (tx, rx) = oneshot::channel();
        state.waiting.insert(id, tx);
        drop(state);
        if was_empty {
            shared.wake_writer.notify_one();
        }
        Ok(Pending {
            id,
            rx,
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

    /// Stops taking publishes and fails those waiting (their senders dropped).
    fn set_disconnected(&self) {
        let mut state = self.lock();
        self.connected.store(false, Ordering::Relaxed);
        state.out.clear();
        let waiting = std::mem::take(&mut state.waiting);
        drop(state);
        drop(waiting);
    }

    fn deliver(&self, msg: Msg) {
        let Some(id) = msg
            .subject
            .strip_prefix(self.inbox.as_slice())
            .and_then(|n| std::str::from_utf8(n).ok()?.parse::<u64>().ok())
        else {
            return;
        };
        let waiter = self.lock().waiting.remove(&id);
        if let Some(waiter) = waiter {
            let _ = waiter.send(Reply {
                status: msg.status,
                payload: msg.payload,
            });
        }
    }
}

/// A publish waiting for its reply. Dropped early (a timeout, a client gone), it
/// stops waiting.
pub struct Pending {
    id: u64,
    rx: oneshot::Receiver<Reply>,
    shared: Arc<Shared>,
    done: bool,
}

impl Future for Pending {
    type Output = Result<Reply, Lost>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = std::task::ready!(Pin::new(&mut self.rx).poll(cx));
        self.done = true;
        Poll::Ready(result.map_err(|_| Lost))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            self.shared.lock().waiting.remove(&self.id);
        }
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
    use super::*;

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
