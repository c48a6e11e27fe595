//! A JetStream pull consumer on a connection of its own: events read straight from
//! the socket into a queue, and acknowledgements written straight into the outgoing
//! buffer, with no header map, channel or task per message.
//!
//! It keeps at most `batch` events on the way (asked for and not yet taken): it asks
//! for more once half of that is free, so a caller that takes no more (its requests
//! are all busy) leaves the rest in the stream. A pull asks the server for idle
//! heartbeats; when neither events nor heartbeats come for two of their intervals
//! (a pull lost with a consumer's leader, say), it asks anew. Acknowledgements
//! queued while the connection is down are sent once it is back, as async-nats
//! does, rather than dropped: an event whose delivery ended while NATS was away is
//! then not delivered again, provided the server has its consumer by then.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::connection::{self, Session, Signals};
use crate::handshake::{Server, Settings};
use crate::protocol::{self, Info, Msg};

/// The subscription id of the events and the statuses of the pulls.
const EVENTS: u64 = 1;
/// JetStream's header with the pin id on every event of a pinned consumer's group.
pub const PIN_HEADER: &str = "Nats-Pin-Id";

/// Which consumer to read, and how.
#[derive(Clone, Debug)]
pub struct PullConfig {
    pub stream: String,
    pub consumer: String,
    /// The most events on the way at once: asked for and not yet taken.
    pub batch: usize,
    /// How long one pull waits on the server for events before it ends (it is then
    /// renewed).
    pub expires: Duration,
    /// How often the server says a waiting pull is alive.
    pub heartbeat: Duration,
    /// The priority group pulled from, for a consumer with one (a pinned consumer:
    /// one client at a time gets its events, known by the pin id it is given).
    pub group: Option<String>,
}

/// An event as JetStream delivered it.
#[derive(Clone, Debug)]
pub struct Message {
    pub subject: Bytes,
    /// The header block as it came (`NATS/1.0` and the lines; empty without headers).
    pub headers: Bytes,
    pub payload: Bytes,
    /// `$JS.ACK.…`: where its acknowledgement goes, and what [`Message::info`] reads.
    pub reply: Bytes,
}

/// What JetStream says of a delivery, in its acknowledgement subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery<'a> {
    pub stream: &'a str,
    pub consumer: &'a str,
    /// 1 for the first delivery of this event to this consumer.
    pub delivered: u64,
    pub stream_sequence: u64,
    pub consumer_sequence: u64,
    /// When the stream stored the event.
    pub published: SystemTime,
    /// Events left in the consumer after this one.
    pub pending: u64,
}

impl Message {
    /// The delivery's details, `None` for a message that did not come from a
    /// consumer.
    pub fn info(&self) -> Option<Delivery<'_>> {
        ack_info(&self.reply)
    }

    /// The first value of header `name` (any case), if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        std::str::from_utf8(protocol::header(&self.headers, name)?).ok()
    }
}

/// Reads `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer
/// seq>.<timestamp ns>.<pending>`, and the newer form with a domain and an account
/// hash after `$JS.ACK` and a random token at the end.
fn ack_info(reply: &[u8]) -> Option<Delivery<'_>> {
    let text = std::str::from_utf8(reply).ok()?;
    let mut tokens: [&str; 12] = [""; 12];
    let mut count = 0;
    for token in text.split('.') {
        *tokens.get_mut(count)? = token;
        count += 1;
    }
    let fields = match count {
        9 => &tokens[2..9],
        11 | 12 => &tokens[4..11],
        _ => return None,
    };
    if tokens[..2] != ["$JS", "ACK"] {
        return None;
    }
    let number = |i: usize| fields[i].parse::<u64>().ok();
    Some(Delivery {
        stream: fields[0],
        consumer: fields[1],
        delivered: number(2)?,
        stream_sequence: number(3)?,
        consumer_sequence: number(4)?,
        published: SystemTime::UNIX_EPOCH + Duration::from_nanos(number(5)?),
        pending: number(6)?,
    })
}

/// How an event is settled with JetStream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// Done with: never delivered again.
    Ack,
    /// Deliver it again, after the delay if one is given.
    Nak(Option<Duration>),
    /// Still being worked on: the ack wait starts over.
    Progress,
    /// Never deliver it again, though it was not done with.
    Term,
}

/// Why no event came.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The server refused or ended a pull for a reason that pulling again the same
    /// way would not change (the consumer is gone, a limit of the consumer).
    #[error(
        "JetStream refused the pull of consumer {consumer} on stream {stream}: {status} {reason}"
    )]
    Refused {
        stream: String,
        consumer: String,
        status: u16,
        reason: String,
    },
    /// The consumer was stopped: [`Pull::close`] was called.
    #[error("the pull consumer was closed")]
    Closed,
}

/// A handle on a pull consumer. Cheap to clone; the consumer stops when the last
/// handle is dropped or [`Pull::close`] is called.
#[derive(Clone)]
pub struct Pull {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

/// Held by the handles only, not by the consumer's tasks: its drop stops them.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.close();
    }
}

struct Shared {
    state: Mutex<State>,
    signals: Signals,
    /// The consumer's tasks end.
    stop: Notify,
    /// A `PONG` came.
    pong: Notify,
    closed: AtomicBool,
    config: PullConfig,
    /// `_INBOX.<random>`: events and the pulls' statuses come here.
    inbox: Vec<u8>,
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>`.
    next_subject: Vec<u8>,
}

struct State {
    /// Control lines and pulls: they belong to one connection.
    out: Vec<u8>,
    /// Acknowledgements: sent on whichever connection comes next.
    acks: Vec<u8>,
    /// Events received and not yet taken.
    ready: VecDeque<Message>,
    /// Events asked for that have neither come nor been given up by the server.
    asked: usize,
    connected: bool,
    /// When the last event or status came.
    last_heard: Instant,
    /// Cleared at stop: events on the way still come, no more are asked for.
    asking: bool,
    /// The pin id of a pinned consumer's group, once JetStream gave us one.
    pin: Option<String>,
    /// `PING`s queued and `PONG`s received on this connection: a `PONG` answers the
    /// `PING` of the same number, after the server read all that came before it.
    pings: u64,
    pongs: u64,
    /// A refusal not yet told to the caller.
    refused: Option<PullError>,
    /// The caller waiting for an event.
    waker: Option<Waker>,
}

impl Pull {
    /// Starts reading `config`'s consumer on a connection to one of `servers`, kept
    /// up on the current runtime, and returns at once.
    pub fn start(
        servers: Vec<Server>,
        settings: Settings,
        ping_interval: Duration,
        config: PullConfig,
    ) -> Pull {
        let shared = Arc::new(Shared::new(config));
        let session = shared.clone();
        tokio::spawn(async move {
            let stopped = session.stop.notified();
            tokio::pin!(stopped);
            stopped.as_mut().enable();
            if session.closed.load(Ordering::Relaxed) {
                return;
            }
            tokio::select! {
                _ = connection::keep_connected(&*session, servers, settings, ping_interval) => {}
                _ = stopped => {}
            }
        });
        tokio::spawn(watch_heartbeats(shared.clone()));
        Pull {
            _owner: Arc::new(Owner(shared.clone())),
            shared,
        }
    }

    /// The next event, waiting for one as long as it takes.
    pub async fn next(&self) -> Result<Message, PullError> {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            if let Some(message) = state.ready.pop_front() {
                let wake = self.shared.ask_if_due(&mut state);
                drop(state);
                if wake {
                    self.shared.signals.wake_writer.notify_one();
                }
                return Poll::Ready(Ok(message));
            }
            if let Some(refused) = state.refused.take() {
                return Poll::Ready(Err(refused));
            }
            if self.shared.closed.load(Ordering::Relaxed) {
                return Poll::Ready(Err(PullError::Closed));
            }
            // After a refusal nothing is asked for until the caller asks again.
            if self.shared.ask_if_due(&mut state) {
                self.shared.signals.wake_writer.notify_one();
            }
            match &mut state.waker {
                Some(known) if known.will_wake(cx.waker()) => {}
                waker => *waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// Settles the event whose acknowledgement subject is `reply`. Queued: sent with
    /// the next write, on this connection or the next one.
    pub fn ack(&self, reply: &[u8], how: Ack) {
        let mut state = self.shared.lock();
        let was_empty = state.out.is_empty() && state.acks.is_empty();
        write_ack(&mut state.acks, reply, how);
        let wake = was_empty && state.connected;
        drop(state);
        if wake {
            self.shared.signals.wake_writer.notify_one();
        }
    }

    /// At stop: no more events are asked for, and the pulls waiting on the server
    /// end (it drops them once nothing listens). Those already on the way still
    /// come, to be handed back; acknowledgements still go.
    pub fn stop_asking(&self) {
        let mut state = self.shared.lock();
        state.asking = false;
        if !state.connected {
            return;
        }
        let was_empty = state.out.is_empty() && state.acks.is_empty();
        state.out.extend_from_slice(b"UNSUB ");
        protocol::write_number(&mut state.out, EVENTS);
        state.out.extend_from_slice(b"\r\n");
        drop(state);
        if was_empty {
            self.shared.signals.wake_writer.notify_one();
        }
    }

    pub fn is_connected(&self) -> bool {
        self.shared.lock().connected
    }

    /// Waits until the server has read what is queued (acknowledgements first of
    /// all), at most `limit`: a `PING` goes after it, and its `PONG` says so. Nothing
    /// is waited for while the connection is down.
    pub async fn flush(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let shared = &self.shared;
        let mine = {
            let mut state = shared.lock();
            if !state.connected {
                return;
            }
            state.out.extend_from_slice(b"PING\r\n");
            state.pings += 1;
            state.pings
        };
        shared.signals.wake_writer.notify_one();
        loop {
            let pong = shared.pong.notified();
            tokio::pin!(pong);
            pong.as_mut().enable();
            {
                let state = shared.lock();
                if state.pongs >= mine || !state.connected {
                    return;
                }
            }
            if tokio::time::timeout_at(deadline, pong).await.is_err() {
                return;
            }
        }
    }

    /// Stops asking for events and ends the connection; `next` then fails with
    /// [`PullError::Closed`]. Flush first: what is still queued is not sent.
    pub fn close(&self) {
        self.shared.close();
    }
}

/// `PUB <reply> <size>` and the acknowledgement's body.
fn write_ack(out: &mut Vec<u8>, reply: &[u8], how: Ack) {
    let mut delay = Vec::new();
    let body: &[u8] = match how {
        Ack::Ack => b"+ACK",
        Ack::Nak(None) => b"-NAK",
        Ack::Nak(Some(after)) => {
            delay.extend_from_slice(b"-NAK {\"delay\":");
            protocol::write_number(&mut delay, nanos(after));
            delay.push(b'}');
            &delay
        }
        Ack::Progress => b"+WPI",
        Ack::Term => b"+TERM",
    };
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(reply);
    out.push(b' ');
    protocol::write_number(out, body.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

impl Shared {
    fn new(config: PullConfig) -> Shared {
        let inbox = format!("_INBOX.{}", uuid::Uuid::now_v7().simple()).into_bytes();
        let next_subject = format!(
            "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
            config.stream, config.consumer
        )
        .into_bytes();
        Shared {
            state: Mutex::new(State {
                out: Vec::with_capacity(4096),
                acks: Vec::with_capacity(16 * 1024),
                ready: VecDeque::with_capacity(config.batch),
                asked: 0,
                connected: false,
                last_heard: Instant::now(),
                asking: true,
                pin: None,
                pings: 0,
                pongs: 0,
                refused: None,
                waker: None,
            }),
            signals: Signals::default(),
            stop: Notify::new(),
            pong: Notify::new(),
            closed: AtomicBool::new(false),
            config,
            inbox,
            next_subject,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic (each change is one statement).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.stop.notify_waiters();
        let mut state = self.lock();
        // Its connection is dropped with the task that kept it.
        state.connected = false;
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Asks for more events once half of the batch is free; says whether the writer
    /// must be woken.
    fn ask_if_due(&self, state: &mut State) -> bool {
        let batch = self.config.batch.max(1);
        let on_the_way = state.asked + state.ready.len();
        if !state.connected
            || !state.asking
            || self.closed.load(Ordering::Relaxed)
            || on_the_way * 2 > batch
        {
            return false;
        }
        let wanted = batch - on_the_way;
        let was_empty = state.out.is_empty() && state.acks.is_empty();
        let mut body = Vec::with_capacity(96);
        body.extend_from_slice(b"{\"batch\":");
        protocol::write_number(&mut body, wanted as u64);
        body.extend_from_slice(b",\"expires\":");
        protocol::write_number(&mut body, nanos(self.config.expires));
        body.extend_from_slice(b",\"idle_heartbeat\":");
        protocol::write_number(&mut body, nanos(self.config.heartbeat));
        if let Some(group) = &self.config.group {
            // Names and pin ids are JSON-safe: tokens of letters, digits, - and _.
            body.extend_from_slice(b",\"group\":\"");
            body.extend_from_slice(group.as_bytes());
            body.push(b'"');
            if let Some(pin) = &state.pin {
                body.extend_from_slice(b",\"id\":\"");
                body.extend_from_slice(pin.as_bytes());
                body.push(b'"');
            }
        }
        body.push(b'}');
        let out = &mut state.out;
        out.extend_from_slice(b"PUB ");
        out.extend_from_slice(&self.next_subject);
        out.push(b' ');
        out.extend_from_slice(&self.inbox);
        out.push(b' ');
        protocol::write_number(out, body.len() as u64);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        out.extend_from_slice(b"\r\n");
        state.asked += wanted;
        was_empty
    }

    /// An event or a pull's status came.
    fn received(&self, msg: Msg) {
        let mut state = self.lock();
        state.last_heard = Instant::now();
        match msg.status {
            None if !msg.reply.is_empty() => {
                state.asked = state.asked.saturating_sub(1);
                if self.config.group.is_some()
                    && let Some(pin) = protocol::header(&msg.headers, PIN_HEADER)
                    && state.pin.as_deref().map(str::as_bytes) != Some(pin)
                {
                    state.pin = Some(String::from_utf8_lossy(pin).into_owned());
                }
                state.ready.push_back(Message {
                    subject: msg.subject,
                    headers: msg.headers,
                    payload: msg.payload,
                    reply: msg.reply,
                });
                let waker = state.waker.take();
                drop(state);
                if let Some(waker) = waker {
                    waker.wake();
                }
                return;
            }
            // An idle heartbeat (the pull is alive), or a message that is neither an
            // event nor a pull's end.
            Some(100) | None => return,
            _ => {}
        }
        // The pull ended: what it did not deliver is no longer on the way.
        let undelivered = protocol::header(&msg.headers, "Nats-Pending-Messages")
            .and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok())
            .unwrap_or(self.config.batch);
        state.asked = state.asked.saturating_sub(undelivered);
        let status = msg.status.unwrap_or(0);
        let reason = protocol::status_text(&msg.headers);
        if status == 423 {
            // Another client holds the group's pin now (ours expired, or was
            // unpinned): ask without one, to be given the next.
            state.pin = None;
        }
        // Ended by time, by a leader moving or a server stopping: pull again. The
        // rest (no such consumer, a limit exceeded) is the caller's to hear.
        let renewable = matches!(status, 404 | 408 | 423)
            || (status == 409
                && (reason.eq_ignore_ascii_case(b"Leadership Change")
                    || reason.eq_ignore_ascii_case(b"Server Shutdown")));
        let mut waker = None;
        if !renewable {
            state.refused = Some(PullError::Refused {
                stream: self.config.stream.clone(),
                consumer: self.config.consumer.clone(),
                status,
                reason: String::from_utf8_lossy(if reason.is_empty() && status == 503 {
                    b"no such consumer"
                } else {
                    reason
                })
                .into_owned(),
            });
            waker = state.waker.take();
        }
        // Refused, it waits for the caller to hear why and ask again: pulling again
        // at once would be refused again, as fast as the server answers.
        let wake_writer = renewable && self.ask_if_due(&mut state);
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        if wake_writer {
            self.signals.wake_writer.notify_one();
        }
    }
}

fn nanos(duration: Duration) -> u64 {
    duration.as_nanos().min(u64::MAX as u128) as u64
}

impl Session for Shared {
    const WHILE_LOST: &'static str = "no events are taken until it is back";

    fn subscriptions(&self) -> Vec<u8> {
        let mut subscribe = b"SUB ".to_vec();
        subscribe.extend_from_slice(&self.inbox);
        subscribe.push(b' ');
        protocol::write_number(&mut subscribe, EVENTS);
        subscribe.extend_from_slice(b"\r\n");
        subscribe
    }

    fn connected(&self, _info: &Info) {
        let mut state = self.lock();
        state.connected = true;
        (state.pings, state.pongs) = (0, 0);
        // Pulls of an earlier connection ended with it.
        state.asked = 0;
        state.last_heard = Instant::now();
        let wake = self.ask_if_due(&mut state) || !state.acks.is_empty();
        drop(state);
        if wake {
            self.signals.wake_writer.notify_one();
        }
    }

    fn info_changed(&self, _info: &Info) {}

    fn message(&self, msg: Msg) {
        if msg.sid == EVENTS {
            self.received(msg);
        }
    }

    fn queue(&self, line: &[u8]) {
        let mut state = self.lock();
        let was_empty = state.out.is_empty() && state.acks.is_empty();
        state.out.extend_from_slice(line);
        if line == b"PING\r\n" {
            state.pings += 1;
        }
        drop(state);
        if was_empty {
            self.signals.wake_writer.notify_one();
        }
    }

    fn take_outgoing(&self, sending: &mut Vec<u8>) {
        let mut state = self.lock();
        connection::move_bytes(&mut state.out, sending);
        sending.extend_from_slice(&state.acks);
        state.acks.clear();
    }

    fn pong(&self) {
        self.lock().pongs += 1;
        self.pong.notify_waiters();
    }

    fn disconnected(&self) {
        let mut state = self.lock();
        state.connected = false;
        self.pong.notify_waiters();
        state.out.clear();
        state.asked = 0;
    }

    fn signals(&self) -> &Signals {
        &self.signals
    }
}

/// Asks anew when a pull has gone quiet: no event and no heartbeat for two
/// heartbeat intervals while events are asked for.
async fn watch_heartbeats(shared: Arc<Shared>) {
    let every = shared.config.heartbeat.max(Duration::from_millis(10));
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shared.stop.notified() => return,
        }
        if shared.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut state = shared.lock();
        if !state.connected || state.asked == 0 || state.last_heard.elapsed() < every * 2 {
            continue;
        }
        tracing::debug!(stream = %shared.config.stream, consumer = %shared.config.consumer, "no heartbeat from the pull; pulling anew");
        state.asked = 0;
        state.last_heard = Instant::now();
        let wake = shared.ask_if_due(&mut state);
        drop(state);
        if wake {
            shared.signals.wake_writer.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acknowledgement_subject_gives_the_delivery_in_both_forms() {
        let old = ack_info(b"$JS.ACK.ORDERS.to-a.2.15.9.1700000000000000123.4").unwrap();
        assert_eq!(
            old,
            Delivery {
                stream: "ORDERS",
                consumer: "to-a",
                delivered: 2,
                stream_sequence: 15,
                consumer_sequence: 9,
                published: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_123),
                pending: 4,
            }
        );
        let new =
            ack_info(b"$JS.ACK.hub.ACC.ORDERS.to-a.2.15.9.1700000000000000123.4.xyz").unwrap();
        assert_eq!(new, old);
        let without_token = ack_info(b"$JS.ACK._.ACC.ORDERS.to-a.2.15.9.1700000000000000123.4");
        assert_eq!(without_token, Some(old));
        for broken in [
            &b"_INBOX.abc"[..],
            b"$JS.ACK.ORDERS.to-a.x.15.9.1.4",
            b"$JS.NAK.ORDERS.to-a.2.15.9.1.4",
            b"$JS.ACK.ORDERS.to-a.2.15.9.1",
            b"$JS.ACK.a.b.c.d.e.f.g.h.i.j.k.l.m",
        ] {
            assert_eq!(
                ack_info(broken),
                None,
                "{}",
                String::from_utf8_lossy(broken)
            );
        }
    }

    #[test]
    fn acknowledgements_are_written_as_jetstream_reads_them() {
        let mut out = Vec::new();
        write_ack(&mut out, b"$JS.ACK.s.c.1.2.3.4.5", Ack::Ack);
        write_ack(&mut out, b"r", Ack::Nak(None));
        write_ack(&mut out, b"r", Ack::Nak(Some(Duration::from_millis(1500))));
        write_ack(&mut out, b"r", Ack::Progress);
        write_ack(&mut out, b"r", Ack::Term);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "PUB $JS.ACK.s.c.1.2.3.4.5 4\r\n+ACK\r\nPUB r 4\r\n-NAK\r\n\
             PUB r 25\r\n-NAK {\"delay\":1500000000}\r\nPUB r 4\r\n+WPI\r\nPUB r 5\r\n+TERM\r\n"
        );
    }

    fn offline() -> Shared {
        Shared::new(PullConfig {
            stream: "ORDERS".into(),
            consumer: "to-a".into(),
            batch: 4,
            expires: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            group: None,
        })
    }

    fn sent(shared: &Shared) -> String {
        let mut sending = Vec::new();
        shared.take_outgoing(&mut sending);
        String::from_utf8(sending).unwrap()
    }

    fn event(shared: &Shared, n: u64) {
        shared.message(Msg {
            subject: Bytes::from_static(b"orders.new"),
            sid: EVENTS,
            reply: format!("$JS.ACK.ORDERS.to-a.1.{n}.{n}.1.0").into(),
            status: None,
            headers: Bytes::new(),
            payload: Bytes::new(),
        });
    }

    fn status(shared: &Shared, block: &'static str) {
        shared.message(Msg {
            subject: Bytes::from_static(b"_INBOX.x"),
            sid: EVENTS,
            reply: Bytes::new(),
            status: protocol::status(block.as_bytes()),
            headers: Bytes::from_static(block.as_bytes()),
            payload: Bytes::new(),
        });
    }

    #[test]
    fn a_connection_asks_for_the_batch_and_more_once_half_of_it_is_free() {
        let shared = offline();
        shared.connected(&Info::default());
        let first = sent(&shared);
        assert!(
            first.starts_with("PUB $JS.API.CONSUMER.MSG.NEXT.ORDERS.to-a _INBOX.")
                && first.ends_with(
                    "{\"batch\":4,\"expires\":30000000000,\"idle_heartbeat\":5000000000}\r\n"
                ),
            "{first}"
        );
        for n in 1..=4 {
            event(&shared, n);
        }
        assert_eq!(sent(&shared), "", "all four wait to be taken");
        let take = || shared.lock().ready.pop_front().map(|_| ());
        take();
        assert!(!shared.ask_if_due(&mut shared.lock()), "one free of four");
        take();
        assert!(shared.ask_if_due(&mut shared.lock()), "half free");
        assert!(sent(&shared).contains("{\"batch\":2,"));
        // A pull that expires gives back what it did not deliver.
        status(
            &shared,
            "NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 2\r\n\r\n",
        );
        assert_eq!(shared.lock().asked, 2, "asked for again at once");
        assert!(sent(&shared).contains("{\"batch\":2,"));
        // A refusal is not followed by another pull until the caller asks.
        status(&shared, "NATS/1.0 409 Exceeded MaxWaiting\r\n\r\n");
        assert_eq!(sent(&shared), "");
        let refused = shared.lock().refused.take().expect("told to the caller");
        assert!(
            refused.to_string().contains("409 Exceeded MaxWaiting"),
            "{refused}"
        );
    }

    #[test]
    fn acknowledgements_outlive_the_connection_and_pulls_do_not() {
        let shared = offline();
        shared.connected(&Info::default());
        event(&shared, 1);
        sent(&shared);
        shared.queue(b"PING\r\n");
        shared.disconnected();
        let shared = Arc::new(shared);
        let pull = Pull {
            _owner: Arc::new(Owner(shared.clone())),
            shared: shared.clone(),
        };
        pull.ack(b"$JS.ACK.ORDERS.to-a.1.1.1.1.0", Ack::Ack);
        assert_eq!(shared.lock().asked, 0);
        shared.connected(&Info::default());
        let resent = sent(&shared);
        assert!(!resent.contains("PING"), "{resent}");
        assert!(
            resent.contains("PUB $JS.ACK.ORDERS.to-a.1.1.1.1.0 4\r\n+ACK\r\n"),
            "{resent}"
        );
        assert!(
            resent.contains("{\"batch\":3,"),
            "one event still waits: {resent}"
        );
    }

    #[test]
    fn a_pinned_group_is_pulled_with_the_pin_it_was_given() {
        let mut config = offline().config.clone();
        config.group = Some("ordered".into());
        let shared = Shared::new(config);
        shared.connected(&Info::default());
        assert!(sent(&shared).contains(",\"group\":\"ordered\"}"));
        for _ in 0..2 {
            shared.message(Msg {
                subject: Bytes::from_static(b"orders.new"),
                sid: EVENTS,
                reply: Bytes::from_static(b"$JS.ACK.ORDERS.to-a.1.1.1.1.0"),
                status: None,
                headers: Bytes::from_static(b"NATS/1.0\r\nNats-Pin-Id: P1\r\n\r\n"),
                payload: Bytes::new(),
            });
        }
        shared.lock().ready.clear();
        assert!(shared.ask_if_due(&mut shared.lock()));
        assert!(sent(&shared).contains(",\"group\":\"ordered\",\"id\":\"P1\"}"));
        // Another client has the pin: asked for again without ours.
        status(&shared, "NATS/1.0 423 Pin ID Mismatch\r\n\r\n");
        let again = sent(&shared);
        assert!(again.contains(",\"group\":\"ordered\"}"), "{again}");
        assert!(shared.lock().refused.is_none());
    }

    #[test]
    fn after_stop_asking_nothing_more_is_asked_for() {
        let shared = Arc::new(offline());
        let pull = Pull {
            _owner: Arc::new(Owner(shared.clone())),
            shared: shared.clone(),
        };
        shared.connected(&Info::default());
        sent(&shared);
        pull.stop_asking();
        assert_eq!(sent(&shared), "UNSUB 1\r\n");
        status(&shared, "NATS/1.0 408 Request Timeout\r\n\r\n");
        assert_eq!(sent(&shared), "");
    }
}
