//! A real OpenTelemetry Collector (`fanout-otelcol`, built from pinned sources by
//! `e2e/tools.sh`): its OTLP receiver on a free loopback port (HTTP), its file
//! exporter writing what it received, which [`Collector::spans`] reads back.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::process::Spawned;
use crate::{free_port, tools, wait};

/// A running collector.
pub struct Collector {
    process: Spawned,
    port: u16,
    spans_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// One span as the collector received it.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a trace's root.
    pub parent_span_id: String,
    pub name: String,
    /// 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: u64,
    /// Attribute values as text (numbers and booleans written out).
    pub attributes: BTreeMap<String, String>,
    /// `service.name` of the process that sent it.
    pub service: String,
    /// 2 when the span says it failed.
    pub status_code: u64,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

impl Collector {
    /// Starts the collector and waits until its receiver takes connections.
    pub async fn start() -> anyhow::Result<Collector> {
        let binary = tools::path("fanout-otelcol")?;
        let dir = tempfile::Builder::new()
            .prefix("fanout-otelcol-")
            .tempdir()?;
        let port = free_port();
        let spans_file = dir.path().join("spans.jsonl");
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{port}
exporters:
  file:
    path: {spans}
    flush_interval: 100ms
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [file]
",
                spans = spans_file.display()
            ),
        )?;
        let mut command = Command::new(binary);
        command.arg("--config").arg(&config);
        let process = Spawned::start(command, &dir.path().join("otelcol.log"))?;
        let collector = Collector {
            process,
            port,
            spans_file,
            _dir: dir,
        };
        wait::until(
            "the collector's OTLP receiver",
            Duration::from_secs(30),
            || async {
                match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    Ok(_) => Ok(()),
                    Err(e) => Err(format!("{e}\n{}", collector.process.log())),
                }
            },
        )
        .await?;
        Ok(collector)
    }

    /// The base URL senders are given (`--otlp-endpoint`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The collector's own log, for failure messages.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Every span received so far.
    pub fn spans(&self) -> anyhow::Result<Vec<ReceivedSpan>> {
        let text = match std::fs::read_to_string(&self.spans_file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).context("reading the collector's file"),
        };
        let mut out = Vec::new();
        // The last line may be half written.
        for line in text.lines().filter(|l| l.ends_with('}')) {
            let Ok(request) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            for resource in array(&request["resourceSpans"]) {
                let service = attributes(&resource["resource"]["attributes"])
                    .remove("service.name")
                    .unwrap_or_default();
                for scope in array(&resource["scopeSpans"]) {
                    for span in array(&scope["spans"]) {
                        out.push(ReceivedSpan {
                            trace_id: text_of(&span["traceId"]),
                            span_id: text_of(&span["spanId"]),
                            parent_span_id: text_of(&span["parentSpanId"]),
                            name: text_of(&span["name"]),
                            kind: span["kind"].as_u64().unwrap_or(0),
                            attributes: attributes(&span["attributes"]),
                            service: service.clone(),
                            status_code: span["status"]["code"].as_u64().unwrap_or(0),
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}

fn array(value: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    value.as_array().into_iter().flatten()
}

fn text_of(value: &serde_json::Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

/// OTLP JSON attributes (`[{key, value: {stringValue | intValue | ...}}]`) as text.
fn attributes(list: &serde_json::Value) -> BTreeMap<String, String> {
    array(list)
        .filter_map(|kv| {
            let key = kv["key"].as_str()?.to_string();
            let value = kv["value"].as_object()?.values().next()?;
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Some((key, text))
        })
        .collect()
}
