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
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
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
    /// Moves everything queued into `sending`, which is empty.
    fn take_outgoing(&self, sending: &mut Vec<u8>);
    /// The server answered a `PING`.
    fn pong(&self) {}
    /// The connection ended.
    fn disconnected(&self);
    /// Notified when something is queued to be written and when all of it was.
    fn signals(&self) -> &Signals;
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

async fn write_loop<S: Session>(session: &S, mut writer: WriteHalf<Box<dyn Io>>) -> Ended {
    let signals = session.signals();
    let mut sending = Vec::with_capacity(64 * 1024);
    loop {
        signals.wake_writer.notified().await;
        signals.writing.store(true, Ordering::Release);
        session.take_outgoing(&mut sending);
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
    use super::*;

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
