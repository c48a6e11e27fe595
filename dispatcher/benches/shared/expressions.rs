//! The CEL filter and transform the benchmarks put on a target (`dispatch` and
//! `expressions`): every event of `events.rs` passes the filter.

pub const CEL_FILTER: &str = r#"event.data.total > 100 && event.type == "order.placed""#;
pub const CEL_BODY: &str = r#"{"order": event.data.id, "amount": event.data.total, "skus": event.data.items.map(i, i.sku)}"#;
pub const CEL_HEADER: &str = "string(event.data.total)";
