//! A TCP proxy on loopback that can freeze: it stops forwarding in both directions
//! while keeping every connection open, and accepts new connections without
//! forwarding them either. That is what a hung apiserver or a network partition
//! looks like to a client (no error, no reset, just silence), which a closed port
//! cannot show. Bytes pass untouched, so TLS goes through end to end.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A running proxy; it and its connections stop when it is dropped.
pub struct FreezingProxy {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
    stop: CancellationToken,
}

impl FreezingProxy {
    /// Listens on a free port of 127.0.0.1 and forwards each connection to
    /// `upstream` (which must be on loopback too).
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<FreezingProxy> {
        let listener = bind_for(upstream).await?;
        let addr = listener.local_addr()?;
        let (frozen, _) = watch::channel(false);
        let stop = CancellationToken::new();
        let subscribe = frozen.clone();
        accept_each(listener, stop.clone(), move |client| {
            forward(client, upstream, subscribe.subscribe())
        });
        Ok(FreezingProxy { addr, frozen, stop })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding: bytes already read are held back, nothing more is read,
    /// connections stay open.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Forwards again, held bytes first.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

/// A listener on a free port of 127.0.0.1 for a proxy to `upstream`, which must be
/// on loopback too.
pub(crate) async fn bind_for(upstream: SocketAddr) -> anyhow::Result<TcpListener> {
    anyhow::ensure!(
        upstream.ip().is_loopback(),
        "the proxy forwards to loopback only, not {upstream}"
    );
    Ok(TcpListener::bind("127.0.0.1:0").await?)
}

/// Hands each connection `listener` accepts to `forward`, on a task of its own, until
/// `stop`, which ends the connections too.
pub(crate) fn accept_each<F, Fut>(listener: TcpListener, stop: CancellationToken, forward: F)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let client = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((client, _)) => client,
                    Err(_) => continue,
                },
            };
            let (forwarding, stop) = (forward(client), stop.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = forwarding => {}
                }
            });
        }
    });
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn forward(client: TcpStream, upstream: SocketAddr, mut frozen: watch::Receiver<bool>) {
    if thawed(&mut frozen).await.is_none() {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        pump(client_read, server_write, frozen.clone()),
        pump(server_read, client_write, frozen),
    );
}

/// Copies `from` to `to` until either end closes, pausing while frozen.
async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if thawed(&mut frozen).await.is_none() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // A read that was already waiting when the freeze came is held back too.
        if thawed(&mut frozen).await.is_none() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Waits until the proxy is not frozen; `None` when the proxy is gone.
async fn thawed(frozen: &mut watch::Receiver<bool>) -> Option<()> {
    frozen.wait_for(|f| !*f).await.ok().map(|_| ())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn forwards_until_frozen_then_holds_bytes_until_thawed() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = [0u8; 64];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                s.write_all(&buf[..n]).await.unwrap();
            }
        });
        let proxy = FreezingProxy::start(upstream).await.unwrap();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut buf = [0u8; 5];
        c.write_all(b"hello").await.unwrap();
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");

        proxy.freeze();
        c.write_all(b"again").await.unwrap();
        let silent = tokio::time::timeout(Duration::from_millis(500), c.read(&mut buf)).await;
        assert!(silent.is_err(), "a frozen proxy forwarded: {silent:?}");

        proxy.thaw();
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"again");
    }
}
