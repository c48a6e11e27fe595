//! Durations as users write them in manifests: `500ms`, `30s`, `5m`, `72h`, `1h30m`.
//!
//! The syntax is the subset of Go's `time.ParseDuration` that makes sense for delivery
//! policies (units `ms`, `s`, `m`, `h`, optional fractions, concatenation). Keeping to
//! Go's syntax matters: the CRD's CEL rules compare durations with Kubernetes' own
//! `duration()` function, so the apiserver and this parser must read a value the same way.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The regular expression the CRD schema enforces; [`Duration::from_str`] accepts the same set.
pub const PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// [`Duration::MAX`] as written in the CRD's CEL rule and in error messages.
pub const MAX_TEXT: &str = "2562047h";

/// What the CRD's rule and the parser say about a longer duration.
pub const MAX_MESSAGE: &str =
    "a duration must be at most 2562047h, the longest Kubernetes and NATS can represent";

/// A non-negative span of time, written as a Go-style duration string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(std::time::Duration);

impl Duration {
    pub const ZERO: Duration = Duration(std::time::Duration::ZERO);

    /// The longest duration accepted: Go's longest (`i64::MAX` nanoseconds, about 292
    /// years) in whole hours. Kubernetes' CEL `duration()` and NATS, both written in Go,
    /// cannot read a longer one.
    pub const MAX: Duration = Duration::from_secs(2_562_047 * 3600);

    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }

    pub const fn from_secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }

    pub const fn as_std(self) -> std::time::Duration {
        self.0
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseDurationError {
    #[error("empty duration; expected a value such as 500ms, 30s, 5m or 72h")]
    Empty,
    #[error(
        "invalid duration {0:?}: expected digits followed by a unit (ms, s, m, h), e.g. 500ms or 1h30m"
    )]
    Syntax(String),
    #[error("duration {0:?} is too large: {MAX_MESSAGE}")]
    Overflow(String),
}

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.is_empty() {
            return Err(ParseDurationError::Empty);
        }
        let syntax = || ParseDurationError::Syntax(input.to_string());
        let mut rest = input;
        let mut total_nanos: u128 = 0;
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(syntax)?;
            let (number, after) = rest.split_at(number_len);
            let (whole, fraction) = match number.split_once('.') {
                Some((w, f)) if !w.is_empty() && !f.is_empty() && !f.contains('.') => (w, f),
                None if !number.is_empty() => (number, ""),
                _ => return Err(syntax()),
            };
            // Longest unit first, so "ms" is not read as "m" followed by garbage.
            let (unit_nanos, unit_len) = if after.starts_with("ms") {
                (1_000_000u128, 2)
            } else if after.starts_with('s') {
                (1_000_000_000, 1)
            } else if after.starts_with('m') {
                (60_000_000_000, 1)
            } else if after.starts_with('h') {
                (3_600_000_000_000, 1)
            } else {
                return Err(syntax());
            };
            let overflow = || ParseDurationError::Overflow(input.to_string());
            let whole: u128 = whole.parse().map_err(|_| overflow())?;
            let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(overflow)?;
            // Fractions are exact to the nanosecond; further digits are dropped, like Go.
            let mut scale = unit_nanos;
            for digit in fraction.bytes() {
                scale /= 10;
                nanos += u128::from(digit - b'0') * scale;
            }
            total_nanos = total_nanos.checked_add(nanos).ok_or_else(overflow)?;
            rest = &after[unit_len..];
        }
        if total_nanos > Duration::MAX.0.as_nanos() {
            return Err(ParseDurationError::Overflow(input.to_string()));
        }
        let secs = (total_nanos / 1_000_000_000) as u64;
        let subsec = (total_nanos % 1_000_000_000) as u32;
        Ok(Duration(std::time::Duration::new(secs, subsec)))
    }
}

impl fmt::Display for Duration {
    /// The shortest exact spelling in a single unit: `72h`, `90s`, `500ms`, `1500ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if !self.0.subsec_nanos().is_multiple_of(1_000_000) {
            // Below millisecond precision: print seconds with a fraction Go can parse.
            return write!(f, "{}s", self.0.as_secs_f64());
        }
        if millis == 0 {
            return f.write_str("0s");
        }
        if !millis.is_multiple_of(1000) {
            return write!(f, "{millis}ms");
        }
        let secs = millis / 1000;
        if secs.is_multiple_of(3600) {
            write!(f, "{}h", secs / 3600)
        } else if secs.is_multiple_of(60) {
            write!(f, "{}m", secs / 60)
        } else {
            write!(f, "{secs}s")
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<'de, str>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // The CRDs are this schema's only users. The pattern cannot bound the value, so
        // a CEL rule does: `duration()` fails on anything longer than Go can hold, which
        // refuses the value with this rule's message and the field's path.
        json_schema!({
            "type": "string",
            "pattern": PATTERN,
            "maxLength": 32,
            "x-kubernetes-validations": [{
                "rule": format!("duration(self) <= duration('{MAX_TEXT}')"),
                "message": MAX_MESSAGE,
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> std::time::Duration {
        s.parse::<Duration>().unwrap().as_std()
    }

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse("250ms"), std::time::Duration::from_millis(250));
        assert_eq!(parse("30s"), std::time::Duration::from_secs(30));
        assert_eq!(parse("5m"), std::time::Duration::from_secs(300));
        assert_eq!(parse("72h"), std::time::Duration::from_secs(72 * 3600));
    }

    #[test]
    fn parses_concatenation_and_fractions_like_go() {
        assert_eq!(parse("1h30m"), std::time::Duration::from_secs(5400));
        assert_eq!(parse("1.5s"), std::time::Duration::from_millis(1500));
        assert_eq!(parse("0.25h"), std::time::Duration::from_secs(900));
        assert_eq!(parse("2m0.5s"), std::time::Duration::from_millis(120_500));
    }

    #[test]
    fn refuses_what_the_schema_pattern_refuses() {
        for bad in [
            "", "5", "ms", "-1s", "1d", "1.s", ".5s", "1..5s", "5 s", "1h-3m", "3us",
        ] {
            assert!(
                bad.parse::<Duration>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn error_names_the_offending_text() {
        let err = "10 minutes".parse::<Duration>().unwrap_err();
        assert!(err.to_string().contains("\"10 minutes\""), "{err}");
    }

    #[test]
    fn overflow_is_an_error_not_a_panic() {
        assert!(matches!(
            "99999999999999999999999h".parse::<Duration>(),
            Err(ParseDurationError::Overflow(_))
        ));
    }

    #[test]
    fn durations_longer_than_go_can_hold_are_refused() {
        assert_eq!(parse(MAX_TEXT), Duration::MAX.as_std());
        assert!(MAX_MESSAGE.contains(&format!("at most {MAX_TEXT},")));
        assert_eq!(parse("2562046h60m"), Duration::MAX.as_std());
        // Go's own limit is 2562047h47m16.854775807s; the CRD's rule stops at whole hours.
        for too_long in ["2562047h0.001s", "2562047h47m16.854775808s", "3000000h"] {
            let err = too_long.parse::<Duration>().unwrap_err();
            assert!(matches!(err, ParseDurationError::Overflow(_)), "{too_long}");
            assert!(err.to_string().ends_with(MAX_MESSAGE), "{err}");
        }
    }

    #[test]
    fn display_round_trips_through_parse() {
        for text in ["0s", "500ms", "1500ms", "30s", "90s", "5m", "72h", "336h"] {
            let d: Duration = text.parse().unwrap();
            assert_eq!(d.to_string(), text);
            assert_eq!(d.to_string().parse::<Duration>().unwrap(), d);
        }
        assert_eq!(
            parse("1h30m"),
            parse(&Duration::from_secs(5400).to_string())
        );
    }

    #[test]
    fn serde_uses_the_string_form() {
        let d: Duration = serde_json::from_str("\"2m\"").unwrap();
        assert_eq!(d, Duration::from_secs(120));
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"2m\"");
        let err = serde_json::from_str::<Duration>("\"2 minutes\"").unwrap_err();
        assert!(err.to_string().contains("2 minutes"));
    }
}
