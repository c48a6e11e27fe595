//! `fanout demo-target`: a small HTTP API to deliver to while trying Fanout out. It
//! logs each delivery (event id, attempt) and answers as told: a fixed status after a
//! fixed latency, and a share of 503s to show retries and circuit breakers at work.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};

/// Command-line settings of `fanout demo-target`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "FANOUT_DEMO_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,

    /// Name shown in the log lines. Default: the listen address.
    #[arg(long, env = "FANOUT_DEMO_NAME")]
    pub name: Option<String>,

    /// Share of requests answered with --fail-status, between 0 and 1.
    #[arg(long, env = "FANOUT_DEMO_FAIL_RATE", default_value_t = 0.0, value_parser = share)]
    pub fail_rate: f64,

    /// Status of a failed request (503 is retried by Fanout; 400 is not).
    #[arg(long, env = "FANOUT_DEMO_FAIL_STATUS", default_value_t = 503)]
    pub fail_status: u16,

    /// How long each answer takes.
    #[arg(long, env = "FANOUT_DEMO_LATENCY", default_value = "5ms")]
    pub latency: fanout_config::Duration,

    /// Status of every other request.
    #[arg(long, env = "FANOUT_DEMO_STATUS", default_value_t = 200)]
    pub status: u16,
}

fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{text:?} is not a number between 0 and 1")),
    }
}

struct Demo {
    name: String,
    fail_rate: f64,
    fail_status: StatusCode,
    status: StatusCode,
    latency: std::time::Duration,
    received: AtomicU64,
}

/// Serves until SIGTERM or SIGINT.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let code = |c: u16, flag: &str| {
        StatusCode::from_u16(c).with_context(|| format!("--{flag} {c} is not an HTTP status"))
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener
        .local_addr()
        .context("reading the listen address")?;
    let demo = Arc::new(Demo {
        name: args.name.unwrap_or_else(|| addr.to_string()),
        fail_rate: args.fail_rate,
        fail_status: code(args.fail_status, "fail-status")?,
        status: code(args.status, "status")?,
        latency: args.latency.as_std(),
        received: AtomicU64::new(0),
    });
    tracing::info!(name = %demo.name, %addr, fail_rate = demo.fail_rate, "demo target listening");
    let app = Router::new().fallback(receive).with_state(demo);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing the SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await
        .context("serving HTTP")
}

async fn receive(
    State(demo): State<Arc<Demo>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let n = demo.received.fetch_add(1, Ordering::Relaxed) + 1;
    tokio::time::sleep(demo.latency).await;
    let status = if demo.fail_rate > 0.0 && rand::random::<f64>() < demo.fail_rate {
        demo.fail_status
    } else {
        demo.status
    };
    tracing::info!(
        "{} #{n}: {method} {} event={} attempt={} type={} bytes={} -> {}",
        demo.name,
        uri.path(),
        header("idempotency-key"),
        header("fanout-attempt"),
        header("x-event-type"),
        body.len(),
        status.as_u16()
    );
    status
}
