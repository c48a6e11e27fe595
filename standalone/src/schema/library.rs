//! The part of Kubernetes' CEL library that the CRDs' rules call, with Go's semantics
//! where the apiserver relies on Go: `duration()` reads a string the way
//! `time.ParseDuration` does, and `isURL()`/`url()` the way `url.ParseRequestURI` does.
//! `lowerAscii()` comes from the cel crate's strings extension.

use std::sync::Arc;

use cel::extractors::This;
use cel::{Context, ExecutionError};

/// Registers `duration`, `isURL`, `url`, `getScheme`, `getHost` and `getHostname`.
pub fn register(context: &mut Context) -> Result<(), cel::DeclarationError> {
    context.add_function("duration", duration)?;
    context.add_function("isURL", |s: Arc<String>| parse_request_uri(&s).is_ok())?;
    context.add_function("url", url)?;
    context.add_function("getScheme", |This(s): This<Arc<String>>| {
        part(&s, |u| u.scheme)
    })?;
    context.add_function("getHost", |This(s): This<Arc<String>>| part(&s, |u| u.host))?;
    context.add_function("getHostname", |This(s): This<Arc<String>>| {
        part(&s, |u| hostname(&u.host))
    })?;
    Ok(())
}

/// A duration as nanoseconds: comparing them compares the durations, which is all the
/// rules do with one.
fn duration(text: Arc<String>) -> Result<i64, ExecutionError> {
    go_parse_duration(&text).ok_or_else(|| {
        ExecutionError::function_error(
            "duration",
            "type conversion error from 'string' to 'google.protobuf.Duration'",
        )
    })
}

/// `url()` hands the string on once it parses; the getters parse it again.
fn url(text: Arc<String>) -> Result<Arc<String>, ExecutionError> {
    match parse_request_uri(&text) {
        Ok(_) => Ok(text),
        Err(problem) => Err(ExecutionError::function_error(
            "url",
            format!("URL parse error during conversion from string: {problem}"),
        )),
    }
}

fn part(text: &str, get: impl Fn(Url) -> String) -> Result<cel::Value, ExecutionError> {
    parse_request_uri(text)
        .map(|u| cel::Value::from(get(u)))
        .map_err(|problem| ExecutionError::function_error("url", problem))
}

/// `time.ParseDuration`: an optional sign, then numbers with units (ns, us, µs, ms, s,
/// m, h), fractions allowed; `None` where Go returns an error (also on overflow).
pub fn go_parse_duration(text: &str) -> Option<i64> {
    let (negative, mut s) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if s == "0" {
        return Some(0);
    }
    if s.is_empty() {
        return None;
    }
    const LIMIT: u128 = 1 << 63;
    let mut total: u128 = 0;
    while !s.is_empty() {
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        let whole: u128 = if digits > 0 {
            s[..digits].parse().ok()?
        } else {
            0
        };
        if whole >= LIMIT {
            return None;
        }
        s = &s[digits..];
        let mut fraction = (0u128, 1u128);
        let mut fraction_digits = 0;
        if let Some(rest) = s.strip_prefix('.') {
            fraction_digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            for d in rest[..fraction_digits].bytes() {
                // Go stops adding precision once the scale would overflow.
                if fraction.1 < 1_000_000_000_000_000_000 {
                    fraction = (fraction.0 * 10 + u128::from(d - b'0'), fraction.1 * 10);
                }
            }
            s = &rest[fraction_digits..];
        }
        if digits == 0 && fraction_digits == 0 {
            return None;
        }
        let unit_length = s
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(s.len(), |(i, _)| i);
        let unit: u128 = match &s[..unit_length] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        s = &s[unit_length..];
        let mut value = whole.checked_mul(unit).filter(|v| *v <= LIMIT)?;
        if fraction.0 > 0 {
            value += (fraction.0 as f64 * (unit as f64 / fraction.1 as f64)) as u128;
            if value > LIMIT {
                return None;
            }
        }
        total += value;
        if total > LIMIT {
            return None;
        }
    }
    if negative {
        Some((total as i128).wrapping_neg() as i64)
    } else {
        i64::try_from(total).ok()
    }
}

/// What the rules read of a URL.
#[derive(Debug, PartialEq)]
pub struct Url {
    pub scheme: String,
    pub host: String,
}

/// `url.ParseRequestURI`: an absolute URI or an absolute path; no fragment is split
/// off, so a `#` in the host is an error, as in Go.
pub fn parse_request_uri(raw: &str) -> Result<Url, String> {
    if raw.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("net/url: invalid control character in URL".into());
    }
    if raw.is_empty() {
        return Err("empty url".into());
    }
    if raw == "*" {
        return Ok(Url {
            scheme: String::new(),
            host: String::new(),
        });
    }
    let (scheme, rest) = scheme(raw)?;
    let rest = match rest.split_once('?') {
        Some((before, _)) => before,
        None => rest,
    };
    if !rest.starts_with('/') {
        if scheme.is_empty() {
            return Err("invalid URI for request".into());
        }
        // An opaque URI (`mailto:x`): valid, without a host.
        return Ok(Url {
            scheme,
            host: String::new(),
        });
    }
    let mut host = String::new();
    if !scheme.is_empty()
        && let Some(after) = rest.strip_prefix("//")
    {
        let authority = after.split('/').next().unwrap_or_default();
        let host_part = match authority.rfind('@') {
            Some(i) => &authority[i + 1..],
            None => authority,
        };
        check_host(host_part)?;
        host = host_part.to_string();
    }
    Ok(Url { scheme, host })
}

fn scheme(raw: &str) -> Result<(String, &str), String> {
    for (i, c) in raw.char_indices() {
        match c {
            'a'..='z' | 'A'..='Z' => {}
            '0'..='9' | '+' | '-' | '.' if i > 0 => {}
            ':' if i == 0 => return Err("missing protocol scheme".into()),
            ':' => return Ok((raw[..i].to_ascii_lowercase(), &raw[i + 1..])),
            _ => return Ok((String::new(), raw)),
        }
    }
    Ok((String::new(), raw))
}

fn check_host(host: &str) -> Result<(), String> {
    let port = if host.starts_with('[') {
        let close = host.rfind(']').ok_or("missing ']' in host")?;
        &host[close + 1..]
    } else {
        host.rfind(':').map_or("", |i| &host[i..])
    };
    let valid_port =
        port.is_empty() || (port.starts_with(':') && port[1..].bytes().all(|b| b.is_ascii_digit()));
    if !valid_port {
        return Err(format!("invalid port {port:?} after host"));
    }
    let name = &host[..host.len() - port.len()];
    for b in name.bytes() {
        let allowed =
            b >= 0x80 || b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]<>\"%".contains(&b);
        if !allowed {
            return Err(format!(
                "invalid character {:?} in host name",
                (b as char).to_string()
            ));
        }
    }
    Ok(())
}

/// `URL.Hostname()`: the host without its port or an IPv6 literal's brackets.
fn hostname(host: &str) -> String {
    if let Some(inner) = host.strip_prefix('[') {
        return inner.split(']').next().unwrap_or_default().to_string();
    }
    host.rsplit_once(':')
        .map_or(host, |(name, _)| name)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_go_reads_them() {
        assert_eq!(go_parse_duration("0"), Some(0));
        assert_eq!(go_parse_duration("1h30m"), Some(5_400_000_000_000));
        assert_eq!(go_parse_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(go_parse_duration("100ms"), Some(100_000_000));
        assert_eq!(go_parse_duration("2us"), Some(2_000));
        assert_eq!(
            go_parse_duration("2562047h"),
            Some(2_562_047 * 3_600_000_000_000)
        );
        assert_eq!(
            go_parse_duration("2562048h"),
            None,
            "beyond int64 nanoseconds"
        );
        assert_eq!(go_parse_duration("1x"), None);
        assert_eq!(go_parse_duration("5"), None, "a unit is needed");
        assert_eq!(go_parse_duration(""), None);
        assert_eq!(go_parse_duration(".s"), None);
    }

    #[test]
    fn urls_parse_as_parse_request_uri_does() {
        let host = |s: &str| parse_request_uri(s).map(|u| (u.scheme, u.host));
        assert_eq!(host("http://x/"), Ok(("http".into(), "x".into())));
        assert_eq!(
            host("HTTPS://a.b:8443/p?q"),
            Ok(("https".into(), "a.b:8443".into()))
        );
        assert_eq!(
            host("http://[::1]:80/"),
            Ok(("http".into(), "[::1]:80".into()))
        );
        assert_eq!(host("http:/x"), Ok(("http".into(), String::new())));
        assert_eq!(host("mailto:x"), Ok(("mailto".into(), String::new())));
        assert!(host("x/y").is_err());
        assert!(host("http://x y/").is_err());
        assert!(host("http://x:port/").is_err());
        assert!(host("http://x#f").is_err());
        assert_eq!(hostname("[::1]:80"), "::1");
        assert_eq!(hostname("a.b:8443"), "a.b");
    }
}
