//! The events both delivery benchmarks publish (`dispatch` and `peer`): binary-mode
//! CloudEvents with an order of [`BODY_BYTES`] of JSON, as the gateway stores them.

use bytes::Bytes;

/// Every event's body size.
pub const BODY_BYTES: usize = 256;

/// Event `i` as the gateway stores a binary-mode CloudEvent: its id, JSON content
/// type and `ce-*` attributes.
pub fn event_headers(i: usize) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Fanout-Event-Id", format!("evt-{i}").as_str());
    headers.insert("Content-Type", "application/json");
    headers.insert("ce-specversion", "1.0");
    headers.insert("ce-id", format!("evt-{i}").as_str());
    headers.insert("ce-source", "/bench");
    headers.insert("ce-type", "order.placed");
    headers
}

/// An order of [`BODY_BYTES`] bytes of JSON (padded), which the dispatch benchmark's
/// CEL filter passes.
pub fn body(i: usize) -> Bytes {
    let mut json = format!(
        r#"{{"id":"order-{i}","total":{},"items":[{{"sku":"a-1","qty":1}},{{"sku":"b-2","qty":3}}],"pad":""#,
        150 + i % 100
    );
    let pad = BODY_BYTES.saturating_sub(json.len() + 2);
    json.extend(std::iter::repeat_n('x', pad));
    json.push_str("\"}");
    Bytes::from(json)
}
