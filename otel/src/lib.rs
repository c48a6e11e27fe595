//! OpenTelemetry traces of Fanout's processes, exported over OTLP/HTTP (protobuf) to
//! a collector; off unless an endpoint is given.
//!
//! - [`OtlpArgs`]: the flags every process that traces shares.
//! - [`Tracing`]: the exporter and its tracer, started from them.
//! - [`context`]: W3C `traceparent` to OpenTelemetry's span context and back, so a
//!   span continues the trace an event carries.
//!
//! Spans are batched and sent from a thread of the SDK's own; when the collector is
//! slow or away, the batch queue (2048 spans, `OTEL_BSP_MAX_QUEUE_SIZE`) fills and
//! further spans are dropped rather than slowing anything down.

pub mod context;
mod headers;

use std::path::PathBuf;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

pub use opentelemetry;
pub use opentelemetry_sdk;

/// How to export traces. Every flag is also an environment variable; the endpoint's
/// is the standard `OTEL_EXPORTER_OTLP_ENDPOINT`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct OtlpArgs {
    /// Base URL of an OTLP/HTTP collector, e.g. http://otel-collector:4318: spans are
    /// sent to <endpoint>/v1/traces. Without it nothing is traced.
    #[arg(long = "otlp-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub endpoint: Option<String>,

    /// Share of traces recorded, from 0 to 1, for events that arrive without a
    /// sampling decision; one whose `traceparent` says sampled (or not) keeps that.
    #[arg(
        long = "otlp-sampling-ratio",
        env = "FANOUT_OTLP_SAMPLING_RATIO",
        default_value_t = 1.0
    )]
    pub sampling_ratio: f64,

    /// File of headers sent to the collector, one `Name: value` per line (an API key
    /// from a mounted Secret, say). Read once at start; values are never logged.
    #[arg(long = "otlp-headers-file", env = "FANOUT_OTLP_HEADERS_FILE")]
    pub headers_file: Option<PathBuf>,
}

impl OtlpArgs {
    /// Whether tracing is on.
    pub fn enabled(&self) -> bool {
        self.endpoint
            .as_deref()
            .is_some_and(|e| !e.trim().is_empty())
    }

    /// The flags that give another process (a dispatcher pod) these settings; the
    /// headers file is not among them, its Secret is mounted there instead.
    pub fn to_args(&self) -> Vec<String> {
        let Some(endpoint) = self.endpoint.as_deref().filter(|_| self.enabled()) else {
            return Vec::new();
        };
        vec![
            format!("--otlp-endpoint={endpoint}"),
            format!("--otlp-sampling-ratio={}", self.sampling_ratio),
        ]
    }
}

/// Why tracing could not start; each names the flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error(
        "--otlp-endpoint (OTEL_EXPORTER_OTLP_ENDPOINT): {endpoint:?} is not an http:// or https:// URL"
    )]
    Endpoint { endpoint: String },
    #[error("--otlp-sampling-ratio: {0} is not between 0 and 1")]
    SamplingRatio(f64),
    #[error("--otlp-headers-file {path}")]
    Headers {
        path: PathBuf,
        #[source]
        source: headers::HeadersError,
    },
    #[error("--otlp-endpoint: building the OTLP exporter")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

/// A running exporter.
pub struct Tracing {
    provider: SdkTracerProvider,
    endpoint: String,
}

/// How long a batch may take to reach the collector.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

impl Tracing {
    /// Starts exporting as `service` (`service.name` of every span); `None` when no
    /// endpoint is set.
    pub fn start(args: &OtlpArgs, service: &'static str) -> Result<Option<Tracing>, OtlpError> {
        if !args.enabled() {
            return Ok(None);
        }
        let base = args.endpoint.as_deref().unwrap_or_default().trim();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(OtlpError::Endpoint {
                endpoint: base.to_string(),
            });
        }
        if !(0.0..=1.0).contains(&args.sampling_ratio) {
            return Err(OtlpError::SamplingRatio(args.sampling_ratio));
        }
        let headers = match &args.headers_file {
            Some(path) => headers::read(path).map_err(|source| OtlpError::Headers {
                path: path.clone(),
                source,
            })?,
            None => Default::default(),
        };
        // reqwest is built without a crypto provider of its own; ring is the process's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let endpoint = format!("{}/v1/traces", base.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(&endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .with_headers(headers)
            .build()
            .map_err(OtlpError::Exporter)?;
        let sampler =
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(args.sampling_ratio)));
        let resource = Resource::builder()
            .with_service_name(service)
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        tracing::info!(%endpoint, sampling_ratio = args.sampling_ratio, service, "exporting traces over OTLP");
        Ok(Some(Tracing { provider, endpoint }))
    }

    pub fn tracer(&self) -> SdkTracer {
        self.provider.tracer("fanout")
    }

    /// Sends the spans still queued and stops. Blocks for up to a few seconds: call
    /// it off the async runtime's threads (`spawn_blocking`).
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(endpoint = %self.endpoint, %error, "sending the last spans failed");
        }
    }
}
