//! A connection kept up across a cluster's servers: connect, serve until the
//! connection ends, connect again to the next server, for as long as the runtime runs.
//!
//! What goes over it belongs to a [`Session`]: its subscriptions, what it queues to
//! be written, what it does with each message and when the connection comes and
//! goes. The session keeps its outgoing bytes under its own lock, together with the
//! state they belong to, so that queueing a message and recording it is one step.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf};
use tokio::sync::Notify;

use crate::handshake::{self, Connected, Io, Server, Settings};
use crate::protocol::{self, Info, Msg, ProtocolError, ServerOp};

/// Unanswered PINGs after which the server is given up on.
const MAX_PINGS_OUT: u32 = 2;

/// What runs over a kept-up connection.
pub trait Session: Send + Sync {
    /// Said in the log when the connection is lost: what the loss means for users.
    const WHILE_LOST: &'static str;

    /// The `SUB` lines every connection starts with.
    fn subscriptions(&self) -> Vec<u8>;
    /// A connection is up and about to be served; `info` is its server's.
    fn connected(&self, info: &Info);
    /// The server sent a new `INFO` (its cluster changed).
    fn info_changed(&self, info: &Info);
    /// A message to one of the subscriptions.
    fn message(&self, msg: Msg);
    /// Queues a control line (`PING`, `PONG`) to be written.
    fn queue(&self, line: &[u8]);
    /// Moves everything queued to the end of `sending` (with [`move_bytes`]).
    fn take_outgoing(&self, sending: &mut Vec<u8>);
    /// The server answered a `PING`.
    fn pong(&self) {}
    /// The connection ended.
    fn disconnected(&self);
    /// Notified when something is queued to be written and when all of it was.
    fn signals(&self) -> &Signals;
}

/// Moves `queued` to the end of `sending`: without a copy when `sending` is empty.
pub fn move_bytes(queued: &mut Vec<u8>, sending: &mut Vec<u8>) {
    if sending.is_empty() {
        std::mem::swap(sending, queued);
    } else {
        sending.extend_from_slice(queued);
        queued.clear();
    }
}

/// How a session and the connection's writer tell each other about the outgoing
/// bytes.
#[derive(Default)]
pub struct Signals {
    /// The writer has something to send: notified by whoever queued onto an empty
    /// buffer.
    pub wake_writer: Notify,
    /// The writer sent everything it had.
    pub drained: Notify,
    /// The writer holds bytes it has taken and not yet written.
    writing: AtomicBool,
}

impl Signals {
    /// Waits until what is queued has been written, at most `limit`; `is_empty`
    /// tells whether anything is queued.
    pub async fn flush(&self, is_empty: impl Fn() -> bool, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            // Bytes the writer has taken count until they are written.
            if is_empty() && !self.writing.load(Ordering::Acquire) {
                return;
            }
            self.wake_writer.notify_one();
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                return;
            }
        }
    }
}

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

/// Connects, serves the connection until it ends, and connects again, to each
/// server in turn, for as long as the runtime runs.
pub async fn keep_connected<S: Session>(
    session: &S,
    mut servers: Vec<Server>,
    settings: Settings,
    ping_interval: Duration,
) {
    let subscribe = session.subscriptions();
    // Clients spread over the cluster's servers.
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
                let ended = serve(session, connected, &mut servers, &server, ping_interval).await;
                tracing::warn!(%server, error = %fanout_config::error_chain(&ended), "lost the connection to NATS; {}", S::WHILE_LOST);
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
        // Quickly after a restart: the connection's users wait while it is down.
        let delay = Duration::from_millis(u64::from(failures).saturating_mul(100).min(1000));
        tokio::time::sleep(delay).await;
    }
}

fn rand_index(n: usize) -> usize {
    // The low bits of a v7 id are random.
    (uuid::Uuid::now_v7().as_u128() as u64 % n.max(1) as u64) as usize
}

/// Serves one connection until it ends, and says why it did.
async fn serve<S: Session>(
    session: &S,
    connected: Connected,
    servers: &mut Vec<Server>,
    server: &Server,
    ping_interval: Duration,
) -> Ended {
    let Connected { stream, info, read } = connected;
    learn_servers(servers, &info.connect_urls, server);
    let (reader, writer) = tokio::io::split(stream);
    let pings_out = AtomicU32::new(0);
    session.connected(&info);
    let ended = tokio::select! {
        ended = write_loop(session, writer) => ended,
        ended = read_loop(session, reader, read, &pings_out, servers, server) => ended,
        ended = ping_loop(session, &pings_out, ping_interval) => ended,
    };
    session.disconnected();
    ended
}

/// Most turns the writer lets the runtime take to gather more to write.
const GATHER_TURNS: u32 = 8;

async fn write_loop<S: Session>(session: &S, mut writer: impl AsyncWrite + Unpin) -> Ended {
    let signals = session.signals();
    let mut sending = Vec::with_capacity(64 * 1024);
    loop {
        signals.wake_writer.notified().await;
        signals.writing.store(true, Ordering::Release);
        session.take_outgoing(&mut sending);
        // Each write wakes the server, which costs both sides more than the bytes
        // (docs/benchmarks.md, "Fewer, larger writes to NATS"). So the writer first
        // lets the runtime serve what is ready, its sockets polled again, for as long
        // as that adds to the write, a few turns at most: under load one write then
        // carries the publishes of many requests; alone, a publish waits one turn.
        for _ in 0..GATHER_TURNS {
            let before = sending.len();
            tokio::task::yield_now().await;
            session.take_outgoing(&mut sending);
            if sending.len() == before {
                break;
            }
        }
        if !sending.is_empty() {
            let written = async {
                writer.write_all(&sending).await?;
                writer.flush().await
            };
            if let Err(e) = written.await {
                signals.writing.store(false, Ordering::Release);
                return Ended::Write(e);
            }
            sending.clear();
        }
        signals.writing.store(false, Ordering::Release);
        signals.drained.notify_waiters();
    }
}

async fn read_loop<S: Session>(
    session: &S,
    mut reader: ReadHalf<Box<dyn Io>>,
    mut read: BytesMut,
    pings_out: &AtomicU32,
    servers: &mut Vec<Server>,
    server: &Server,
) -> Ended {
    loop {
        loop {
            match protocol::parse(&mut read) {
                Ok(Some(ServerOp::Msg(msg))) => session.message(msg),
                Ok(Some(ServerOp::Ping)) => session.queue(b"PONG\r\n"),
                Ok(Some(ServerOp::Pong)) => {
                    pings_out.store(0, Ordering::Relaxed);
                    session.pong();
                }
                Ok(Some(ServerOp::Ok)) => {}
                Ok(Some(ServerOp::Err(reason))) => {
                    // Fatal errors close the connection, which ends it below.
                    tracing::warn!(%server, %reason, "NATS sent an error");
                }
                Ok(Some(ServerOp::Info(text))) => match text.parse() {
                    Ok(info) => {
                        learn_servers(servers, &info.connect_urls, server);
                        session.info_changed(&info);
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

async fn ping_loop<S: Session>(session: &S, pings_out: &AtomicU32, interval: Duration) -> Ended {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        ticks.tick().await;
        let out = pings_out.fetch_add(1, Ordering::Relaxed);
        if out >= MAX_PINGS_OUT {
            return Ended::Stale(out);
        }
        session.queue(b"PING\r\n");
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
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use tokio::net::UnixStream;

    use super::*;

    /// A session that only queues lines.
    #[derive(Default)]
    struct Lines {
        out: Mutex<Vec<u8>>,
        signals: Signals,
    }

    impl Session for Lines {
        const WHILE_LOST: &'static str = "";
        fn subscriptions(&self) -> Vec<u8> {
            Vec::new()
        }
        fn connected(&self, _: &Info) {}
        fn info_changed(&self, _: &Info) {}
        fn message(&self, _: Msg) {}
        fn queue(&self, line: &[u8]) {
            let mut out = self.out.lock().unwrap();
            let was_empty = out.is_empty();
            out.extend_from_slice(line);
            drop(out);
            if was_empty {
                self.signals.wake_writer.notify_one();
            }
        }
        fn take_outgoing(&self, sending: &mut Vec<u8>) {
            move_bytes(&mut self.out.lock().unwrap(), sending);
        }
        fn disconnected(&self) {}
        fn signals(&self) -> &Signals {
            &self.signals
        }
    }

    /// Keeps each write as the server would receive it: one segment per write.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<String>>>);

    impl Writes {
        fn lines_per_write(&self) -> Vec<usize> {
            let writes = self.0.lock().unwrap();
            writes.iter().map(|w| w.lines().count()).collect()
        }
    }

    impl AsyncWrite for Writes {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let text = String::from_utf8(buf.to_vec()).unwrap();
            self.0.lock().unwrap().push(text);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Runs the writer beside `work` on one thread, as a gateway shard does, until
    /// `done` says what was written is complete.
    fn written(work: impl AsyncFnOnce(Arc<Lines>), done: impl Fn(&[usize]) -> bool) -> Vec<usize> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let session = Arc::new(Lines::default());
        let writes = Writes::default();
        runtime.block_on(async {
            let writer = tokio::spawn({
                let (session, writes) = (session.clone(), writes.clone());
                async move { write_loop(&*session, writes).await }
            });
            work(session).await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !done(&writes.lines_per_write()) {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "writes: {:?}",
                    writes.lines_per_write()
                );
                tokio::task::yield_now().await;
            }
            writer.abort();
        });
        writes.lines_per_write()
    }

    /// Queues a line each time a byte comes on `from`, and passes the byte on to
    /// `to`: each pass reaches the next reader only when the runtime polls its
    /// sockets again, as a request on a connection that became readable meanwhile.
    async fn relay(session: &Lines, mut from: UnixStream, mut to: Option<UnixStream>) {
        // Read with room to spare: a short read tells the runtime the socket is
        // drained, so the next byte is seen only at its next poll.
        let mut buf = [0u8; 16];
        while from.read(&mut buf).await.is_ok_and(|n| n > 0) {
            session.queue(b"PUB a 1\r\n");
            let passed = match to.as_mut() {
                Some(to) => to.write_all(b"x").await.is_ok(),
                None => false,
            };
            if !passed {
                return;
            }
        }
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

    #[test]
    fn what_is_queued_over_the_next_turns_goes_in_one_write() {
        // Five lines, each queued one poll of the sockets after the one before.
        let writes = written(
            async |session| {
                let (mut first, mut from) = UnixStream::pair().unwrap();
                for i in 0..5 {
                    let (to, next) = UnixStream::pair().unwrap();
                    let to = (i < 4).then_some(to);
                    let session = session.clone();
                    tokio::spawn(async move { relay(&session, from, to).await });
                    from = next;
                }
                first.write_all(b"x").await.unwrap();
            },
            |writes| writes.iter().sum::<usize>() == 5,
        );
        assert_eq!(writes, [5]);
    }

    #[test]
    fn a_steady_stream_of_lines_does_not_hold_the_writer_back() {
        // A line on every poll of the sockets, for ever: the writer still writes, at
        // most GATHER_TURNS turns' worth at a time.
        let writes = written(
            async |session| {
                let (mut to, from) = UnixStream::pair().unwrap();
                to.write_all(b"x").await.unwrap();
                tokio::spawn(async move { relay(&session, from, Some(to)).await });
            },
            |writes| writes.len() >= 3,
        );
        let most = GATHER_TURNS as usize + 1;
        assert!(writes.iter().all(|&lines| lines <= most), "{writes:?}");
    }
}
