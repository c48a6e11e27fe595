//! What a copy of a stored event carries when it is published again (a redriven dead
//! letter, a replayed event): the event's own headers, its id among them, so the target
//! sees the same Idempotency-Key; never JetStream's instructions for the original
//! publish (see [`fanout_config::dead_letter::travels_with_copy`]).

use async_nats::HeaderMap;
use fanout_config::dead_letter::travels_with_copy;

/// The headers of `original` that travel with a copy, except those `drop` names, plus
/// the copy's own `Nats-Msg-Id` (so that publishing the same copy twice stores it once).
pub fn headers(original: &HeaderMap, drop: impl Fn(&str) -> bool, message_id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, values) in original.iter() {
        let name: &str = name.as_ref();
        if drop(name) || !travels_with_copy(name) {
            continue;
        }
        for v in values {
            headers.append(name, v.as_str());
        }
    }
    headers.insert("Nats-Msg-Id", message_id);
    headers
}

/// The first value of the header `name`, compared without regard to case as HTTP does.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.iter().find_map(|(k, values)| {
        let key: &str = k.as_ref();
        key.eq_ignore_ascii_case(name)
            .then(|| values.first().map(|v| v.as_str()))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_keeps_the_event_headers_and_gets_its_own_message_id() {
        let mut original = HeaderMap::new();
        original.insert("Fanout-Event-Id", "evt-1");
        original.insert("Nats-Msg-Id", "evt-1");
        original.insert("Nats-Expected-Stream", "fanout_shop_orders");
        original.insert("X-Event-Type", "order.placed");
        original.insert("Fanout-Reason", "permanent");
        let copy = headers(
            &original,
            |n| n.eq_ignore_ascii_case("Fanout-Reason"),
            "replay:r1:7",
        );
        assert_eq!(header(&copy, "fanout-event-id"), Some("evt-1"));
        assert_eq!(header(&copy, "X-Event-Type"), Some("order.placed"));
        assert_eq!(header(&copy, "Nats-Msg-Id"), Some("replay:r1:7"));
        assert_eq!(header(&copy, "Nats-Expected-Stream"), None);
        assert_eq!(header(&copy, "Fanout-Reason"), None);
    }
}
