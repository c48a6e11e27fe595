//! The headers a message is published with, kept as the lines they are sent as
//! (`Name: value\r\n`): an event's headers are written once, into one buffer, and
//! copied into the publish as they are. A map of names to lists of values would cost
//! an allocation per header and a hash per name for each event, to be turned back
//! into these lines anyway.

/// A value that would end its header line early.
#[derive(Debug, thiserror::Error)]
#[error("the value of the {name} header contains a line break")]
pub struct LineBreak {
    pub name: String,
}

/// A message's headers, in the order added. Names compare without regard to case,
/// as HTTP's do (a header forwarded from a request keeps the case it was configured
/// with).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    lines: String,
}

impl Headers {
    pub fn new() -> Self {
        Headers {
            // An event's usual headers (type, ids, stream, trace context) fit.
            lines: String::with_capacity(256),
        }
    }

    /// Adds `name: value`. `name` must be a header name: the callers' names are
    /// constants, or checked when they are configured or by the HTTP parser.
    pub fn append(&mut self, name: &str, value: &str) -> Result<(), LineBreak> {
        debug_assert!(is_name(name), "{name:?} is not a header name");
        if value.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(LineBreak {
                name: name.to_string(),
            });
        }
        self.lines.reserve(name.len() + value.len() + 4);
        self.lines.push_str(name);
        self.lines.push_str(": ");
        self.lines.push_str(value);
        self.lines.push_str("\r\n");
        Ok(())
    }

    /// Sets `name` to `value` alone, replacing any values it had.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), LineBreak> {
        if self.contains(name) {
            let mut kept = Headers::new();
            for (n, v) in self.lines().filter(|(n, _)| !n.eq_ignore_ascii_case(name)) {
                // Taken from lines that had no line break.
                kept.append(n, v)?;
            }
            *self = kept;
        }
        self.append(name, value)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_all(name).next()
    }

    /// Every value of `name`, in the order added.
    pub fn get_all<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.lines()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Every header as (name, value), in the order added.
    pub fn lines(&self) -> impl Iterator<Item = (&str, &str)> {
        self.lines
            .split_terminator("\r\n")
            .filter_map(|line| line.split_once(": "))
    }

    /// The header lines as sent, each ending in CRLF.
    pub fn as_bytes(&self) -> &[u8] {
        self.lines.as_bytes()
    }
}

/// A token of visible ASCII without the separator `:`.
fn is_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_kept_in_order_with_every_value() {
        let mut h = Headers::new();
        h.append("Content-Type", "application/json").unwrap();
        h.append("X-Request-Id", "r1").unwrap();
        h.append("x-request-id", "r2").unwrap();
        assert_eq!(h.get("content-type"), Some("application/json"));
        assert_eq!(h.get_all("X-REQUEST-ID").collect::<Vec<_>>(), ["r1", "r2"]);
        assert!(!h.contains("traceparent"));
        assert_eq!(
            h.as_bytes(),
            b"Content-Type: application/json\r\nX-Request-Id: r1\r\nx-request-id: r2\r\n"
        );
    }

    #[test]
    fn set_replaces_every_value_of_the_name() {
        let mut h = Headers::new();
        h.append("traceparent", "00-a-b-01").unwrap();
        h.append("Fanout-Event-Id", "e1").unwrap();
        h.append("Traceparent", "00-c-d-01").unwrap();
        h.set("traceparent", "00-e-f-01").unwrap();
        assert_eq!(
            h.lines().collect::<Vec<_>>(),
            [("Fanout-Event-Id", "e1"), ("traceparent", "00-e-f-01")]
        );
    }

    #[test]
    fn a_value_with_a_line_break_is_refused() {
        let mut h = Headers::new();
        for value in ["a\r\nNats-Msg-Id: forged", "a\nb", "a\rb"] {
            let error = h.append("X-Note", value).unwrap_err();
            assert_eq!(error.name, "X-Note");
        }
        assert!(h.as_bytes().is_empty());
        // Values may hold ": " and spaces: only the first ": " of a line separates.
        h.append("X-Note", "a: b c").unwrap();
        assert_eq!(h.get("x-note"), Some("a: b c"));
    }
}
