//! (b3): the gateway's store step on a minimal NATS publish path of its own, to tell
//! what such a path could save against async-nats ((b2)). Not a client: no TLS, no
//! authentication, no reconnection; only what a shard's publishes need.
//!
//! Each shard's publishers write their publish straight into the shard's outgoing
//! buffer (no command sent to another task, no header map), with a reply subject that
//! ends in a number; one subscription takes every acknowledgement, and the reader
//! hands each to its publisher by that number. The buffer goes out in one write per
//! turn of the runtime, as async-nats' does. It is written plainly (each publish
//! formatted, each server line copied and split), so what it saves is a lower bound.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, oneshot};

use crate::jetstream::{ACK_TIMEOUT, PREFIX, STREAM, closed_loops, on_shard_threads, stored};
use crate::load::Report;

const INBOX: &str = "_INBOX.bench.raw";

/// `shards` threads, each with a current-thread runtime and one connection, driving
/// `per_shard` publishers in a closed loop, as [`crate::jetstream::publish_like_shards`].
pub fn publish_like_shards(
    port: u16,
    payload: &Bytes,
    shards: usize,
    per_shard: usize,
    warmup: Duration,
    duration: Duration,
) -> Report {
    let payload = payload.clone();
    on_shard_threads(shards, warmup, duration, move |start, end| async move {
        let connection = connect(port).await;
        closed_loops(per_shard, start, end, async || {
            let acked = connection.publish(&payload);
            matches!(tokio::time::timeout(ACK_TIMEOUT, acked).await, Ok(Ok(ack)) if stored(&ack))
        })
        .await
    })
}

/// What a shard's publishers, its writer and its reader share (one thread).
#[derive(Default)]
struct Connection {
    out: RefCell<Vec<u8>>,
    written: Notify,
    next: Cell<u64>,
    waiting: RefCell<HashMap<u64, oneshot::Sender<Bytes>>>,
}

impl Connection {
    /// Queues one publish as the gateway sends it; its acknowledgement comes to the
    /// returned receiver.
    fn publish(&self, payload: &[u8]) -> oneshot::Receiver<Bytes> {
        let n = self.next.get();
        self.next.set(n + 1);
        let id = uuid::Uuid::now_v7();
        let headers = format!(
            "NATS/1.0\r\nContent-Type: application/json\r\nFanout-Event-Id: {id}\r\nNats-Expected-Stream: {STREAM}\r\n\r\n"
        );
        let mut out = self.out.borrow_mut();
        let was_empty = out.is_empty();
        let line = format!(
            "HPUB {PREFIX}.event {INBOX}.{n} {} {}\r\n",
            headers.len(),
            headers.len() + payload.len()
        );
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(headers.as_bytes());
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        drop(out);
        if was_empty {
            self.written.notify_one();
        }
        let (tx, rx) = oneshot::channel();
        self.waiting.borrow_mut().insert(n, tx);
        rx
    }
}

/// Connects, subscribes to the acknowledgements, and starts the shard's writer and
/// reader.
async fn connect(port: u16) -> Rc<Connection> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::with_capacity(64 * 1024, read);
    let mut info = String::new();
    read.read_line(&mut info).await.unwrap();
    assert!(info.starts_with("INFO "), "not a NATS server: {info}");
    let hello = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true,\"protocol\":1}}\r\nSUB {INBOX}.* 1\r\n"
    );
    write.write_all(hello.as_bytes()).await.unwrap();
    let connection = Rc::new(Connection::default());
    tokio::task::spawn_local(writer(connection.clone(), write));
    tokio::task::spawn_local(reader(connection.clone(), read));
    connection
}

/// Writes what the publishers queued, once per wake-up.
async fn writer(connection: Rc<Connection>, mut write: OwnedWriteHalf) {
    let mut sending = Vec::new();
    loop {
        connection.written.notified().await;
        std::mem::swap(&mut sending, &mut *connection.out.borrow_mut());
        if write.write_all(&sending).await.is_err() {
            return;
        }
        sending.clear();
    }
}

/// Reads the server's operations and hands each acknowledgement to its publisher.
/// An answer with headers (`HMSG`: no responders, a status) counts as a failure.
async fn reader(connection: Rc<Connection>, mut read: BufReader<OwnedReadHalf>) {
    let mut buffer = BytesMut::with_capacity(64 * 1024);
    loop {
        while let Some(line_end) = buffer.windows(2).position(|w| w == b"\r\n") {
            let line = std::str::from_utf8(&buffer[..line_end])
                .unwrap()
                .to_string();
            let mut words = line.split(' ');
            match words.next().unwrap_or_default() {
                "MSG" | "HMSG" => {
                    let fields: Vec<&str> = words.collect();
                    let size: usize = fields.last().unwrap().parse().unwrap();
                    if buffer.len() < line_end + 2 + size + 2 {
                        break; // the rest has not arrived yet
                    }
                    buffer.advance(line_end + 2);
                    let body = buffer.split_to(size).freeze();
                    buffer.advance(2);
                    let n = fields[0].rsplit('.').next().and_then(|n| n.parse().ok());
                    let ack = if line.starts_with("HMSG") {
                        Bytes::new()
                    } else {
                        body
                    };
                    if let Some(tx) = n.and_then(|n| connection.waiting.borrow_mut().remove(&n)) {
                        let _ = tx.send(ack);
                    }
                }
                "PING" => {
                    buffer.advance(line_end + 2);
                    connection.out.borrow_mut().extend_from_slice(b"PONG\r\n");
                    connection.written.notify_one();
                }
                "-ERR" => panic!("the server refused the raw publisher: {line}"),
                _ => buffer.advance(line_end + 2), // +OK, PONG, INFO
            }
        }
        match read.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
