//! `-o`: what kubectl users expect. Tables by default; `wide` adds columns; `json`
//! and `yaml` print the data for scripts.

use std::io::Write as _;

use anyhow::Context as _;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Yaml,
    Wide,
}

/// Prints `value` as JSON or YAML when asked for; false when a table is wanted.
pub fn structured(format: Option<Format>, value: &impl Serialize) -> anyhow::Result<bool> {
    let text = match format {
        Some(Format::Json) => {
            let mut text = serde_json::to_string_pretty(value).context("writing JSON")?;
            text.push('\n');
            text
        }
        Some(Format::Yaml) => serde_yaml_ng::to_string(value).context("writing YAML")?,
        Some(Format::Wide) | None => return Ok(false),
    };
    print(&text)?;
    Ok(true)
}

/// Writes `text` to stdout.
pub fn print(text: &str) -> anyhow::Result<()> {
    std::io::stdout()
        .write_all(text.as_bytes())
        .context("writing to stdout")
}
