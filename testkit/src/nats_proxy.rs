//! A loopback proxy in front of a nats-server that can cut off one client by the
//! name it gives in `CONNECT`: that client's connections are closed, and new ones it
//! opens are closed right after `CONNECT`, until the cut is lifted. Every other
//! client goes on. That is one connection of a process going down while the others
//! stay up, which restarting the server (every connection at once) cannot show.
//!
//! Plain TCP only: the name is read from the client's first line.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio_util::sync::CancellationToken;

use crate::proxy::{accept_each, bind_for};

/// A running proxy; it and its connections stop when it is dropped.
pub struct NatsProxy {
    addr: SocketAddr,
    clients: Arc<Mutex<Clients>>,
    stop: CancellationToken,
}

#[derive(Default)]
struct Clients {
    /// Names cut off.
    cut: HashSet<String>,
    /// Connections forwarded now: an id, the client's name, what closes it.
    live: Vec<(u64, String, CancellationToken)>,
    next_id: u64,
}

/// A client's first line is `CONNECT {json}`: a few hundred bytes.
const MAX_FIRST_LINE: usize = 64 * 1024;

impl NatsProxy {
    /// Listens on a free port of 127.0.0.1 and forwards each connection to
    /// `upstream` (which must be on loopback too).
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<NatsProxy> {
        let listener = bind_for(upstream).await?;
        let addr = listener.local_addr()?;
        let clients = Arc::new(Mutex::new(Clients::default()));
        let stop = CancellationToken::new();
        let shared = clients.clone();
        accept_each(listener, stop.clone(), move |client| {
            forward(client, upstream, shared.clone())
        });
        Ok(NatsProxy {
            addr,
            clients,
            stop,
        })
    }

    /// `nats://127.0.0.1:<port>`, where clients connect.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Closes the connections of the client named `name` and refuses its new ones.
    pub fn cut(&self, name: &str) {
        let mut clients = self.clients.lock().unwrap();
        clients.cut.insert(name.to_string());
        for (_, _, close) in clients.live.iter().filter(|(_, n, _)| n == name) {
            close.cancel();
        }
    }

    /// Lets the client named `name` connect again.
    pub fn restore(&self, name: &str) {
        self.clients.lock().unwrap().cut.remove(name);
    }

    /// The names of the clients whose connections are forwarded now, sorted.
    pub fn connected(&self) -> Vec<String> {
        let clients = self.clients.lock().unwrap();
        let mut names: Vec<String> = clients
            .live
            .iter()
            .filter(|(_, _, close)| !close.is_cancelled())
            .map(|(_, name, _)| name.clone())
            .collect();
        names.sort();
        names
    }
}

impl Drop for NatsProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn forward(client: TcpStream, upstream: SocketAddr, clients: Arc<Mutex<Clients>>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    // The server speaks first (INFO), so its side is forwarded from the start.
    let downstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
    });
    let close = CancellationToken::new();
    if let Some((first, name)) = first_line(&mut from_client).await {
        let id = {
            let mut clients = clients.lock().unwrap();
            let id = clients.next_id;
            clients.next_id += 1;
            let admitted = !clients.cut.contains(&name);
            if admitted {
                clients.live.push((id, name, close.clone()));
            }
            admitted.then_some(id)
        };
        if let Some(id) = id {
            if to_server.write_all(&first).await.is_ok() {
                tokio::select! {
                    _ = close.cancelled() => {}
                    _ = tokio::io::copy(&mut from_client, &mut to_server) => {}
                }
            }
            clients.lock().unwrap().live.retain(|(i, _, _)| *i != id);
        }
    }
    // Dropping the halves closes both sockets.
    downstream.abort();
}

/// Reads up to the end of the client's first line: the bytes read, and the `name` of
/// its `CONNECT` (empty when it gives none). `None` when the first line is not a
/// `CONNECT` or the client leaves before it.
async fn first_line(from_client: &mut OwnedReadHalf) -> Option<(Vec<u8>, String)> {
    let mut read = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = read.windows(2).position(|w| w == b"\r\n") {
            break end;
        }
        if read.len() > MAX_FIRST_LINE {
            return None;
        }
        let n = from_client.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        read.extend_from_slice(&chunk[..n]);
    };
    let line = std::str::from_utf8(&read[..end]).ok()?;
    let options: serde_json::Value = serde_json::from_str(line.strip_prefix("CONNECT ")?).ok()?;
    let name = options["name"].as_str().unwrap_or_default().to_string();
    Some((read, name))
}
