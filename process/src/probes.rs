//! `/metrics`, `/healthz` and `/readyz`: what the operator and the dispatcher serve
//! beside their work, for Prometheus and the kubelet. (The gateway serves its own,
//! next to its API.)

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// What a process reports.
pub struct Probes {
    /// The OpenMetrics text exposition.
    pub metrics: Box<dyn Fn() -> String + Send + Sync>,
    /// `Ok` when the process can do its work; otherwise why not, for the 503's body.
    pub ready: Box<dyn Fn() -> Result<(), String> + Send + Sync>,
}

/// Serves the probes until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    probes: Probes,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(Arc::new(probes));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(probes): State<Arc<Probes>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        (probes.metrics)(),
    )
}

async fn ready(State(probes): State<Arc<Probes>>) -> impl IntoResponse {
    match (probes.ready)() {
        Ok(()) => (StatusCode::OK, "ready".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn readiness_follows_the_process_and_says_why_not() {
        let ready = Arc::new(AtomicBool::new(false));
        let probes = Probes {
            metrics: Box::new(|| "# EOF\n".to_string()),
            ready: Box::new({
                let ready = ready.clone();
                move || {
                    if ready.load(Ordering::Relaxed) {
                        Ok(())
                    } else {
                        Err("NATS Disconnected".into())
                    }
                }
            }),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, probes, async move {
            let _ = stopped.await;
        }));

        let answer = get(addr, "/readyz").await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.ends_with("NATS Disconnected"), "{answer}");
        ready.store(true, Ordering::Relaxed);
        let answer = get(addr, "/readyz").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        let answer = get(addr, "/healthz").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let answer = get(addr, "/metrics").await;
        assert!(
            answer.contains("content-type: application/openmetrics-text"),
            "{answer}"
        );
        assert!(answer.ends_with("# EOF\n"), "{answer}");

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
