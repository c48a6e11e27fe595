//! W3C trace context: each attempt is a new span in the event's trace, so a target's
//! traces link back to whoever produced the event.

use rand::Rng;

/// The `traceparent` for one delivery attempt: the event's trace id and flags when it
/// carried a valid `traceparent`, a new trace otherwise; always a new span id.
pub fn child_traceparent(incoming: Option<&str>, rng: &mut impl Rng) -> String {
    let span: u64 = loop {
        let s = rng.random();
        if s != 0 {
            break s;
        }
    };
    // Written digit by digit: `format!` with `{:x}` was about 1% of the engine's CPU
    // (one per attempt; docs/benchmarks.md).
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    let flags = match incoming.and_then(parse) {
        Some((trace_id, flags)) => {
            out.push_str(trace_id);
            flags
        }
        None => {
            let trace: u128 = loop {
                let t = rng.random();
                if t != 0 {
                    break t;
                }
            };
            push_hex(&mut out, trace, 32);
            "01"
        }
    };
    out.push('-');
    push_hex(&mut out, u128::from(span), 16);
    out.push('-');
    out.push_str(flags);
    out
}

/// The lowest `digits` hex digits of `value`, lowercase, zero-padded.
fn push_hex(out: &mut String, value: u128, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(char::from(HEX[((value >> (4 * i)) & 0xf) as usize]));
    }
}

/// (trace id, flags) of a valid version-00 `traceparent`.
fn parse(value: &str) -> Option<(&str, &str)> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = version == "00"
        && parts.next().is_none()
        && hex(trace_id, 32)
        && hex(parent_id, 16)
        && hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0')
        && parent_id.bytes().any(|b| b != b'0');
    valid.then_some((trace_id, flags))
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn continues_the_events_trace_with_a_new_span() {
        let mut rng = StdRng::seed_from_u64(3);
        let out = child_traceparent(Some(INCOMING), &mut rng);
        assert!(
            out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{out}"
        );
        assert!(out.ends_with("-01"));
        assert_ne!(&out[36..52], "00f067aa0ba902b7", "a new span id");
        assert!(parse(&out).is_some());
    }

    #[test]
    fn ids_are_written_as_format_writes_them() {
        let mut rng = StdRng::seed_from_u64(7);
        let values = [0, 1, 0xabc, u64::MAX as u128, u128::MAX]
            .into_iter()
            .chain((0..100).map(|_| rng.random::<u128>()));
        for value in values {
            let mut out = String::new();
            push_hex(&mut out, value, 32);
            assert_eq!(out, format!("{value:032x}"));
            let mut out = String::new();
            push_hex(&mut out, value & u128::from(u64::MAX), 16);
            assert_eq!(out, format!("{:016x}", value as u64));
        }
        let out = child_traceparent(None, &mut rng);
        assert_eq!(out.len(), 55, "{out}");
    }

    #[test]
    fn starts_a_new_trace_when_there_is_none_or_it_is_invalid() {
        let mut rng = StdRng::seed_from_u64(3);
        for incoming in [
            None,
            Some("garbage"),
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"),
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
        ] {
            let out = child_traceparent(incoming, &mut rng);
            assert!(parse(&out).is_some(), "{out}");
            assert!(!out.contains("4bf92f3577b34da6"), "{incoming:?} -> {out}");
        }
    }
}
