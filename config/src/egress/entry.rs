//! One entry of an egress deny or allow list, as the platform writes it: a network
//! (`10.0.0.0/8`), one address (`10.1.2.3`, `fd00::1`) or a host name
//! (`api.example.com`).

use std::fmt;
use std::str::FromStr;

use super::network::{Network, NetworkError};

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entry {
    Network(Network),
    /// Lower case, without a trailing dot; matched against the target URL's host
    /// exactly, before it is resolved.
    Host(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("an empty entry")]
    Empty,
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(
        "{0:?}: wildcards are not supported; name each host, or give the network its addresses are in"
    )]
    Wildcard(String),
    #[error(
        "{0:?} is neither a network (10.0.0.0/8), an address nor a host name (letters, digits, '-' and '.')"
    )]
    Invalid(String),
}

impl Entry {
    /// A host name as entries and lookups compare it.
    pub fn normalize_host(name: &str) -> String {
        name.trim_end_matches('.').to_ascii_lowercase()
    }
}

impl FromStr for Entry {
    type Err = EntryError;

    fn from_str(text: &str) -> Result<Entry, EntryError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(EntryError::Empty);
        }
        // Brackets are how URLs write IPv6 addresses; accept them here too.
        let unbracketed = text
            .strip_prefix('[')
            .and_then(|t| t.split_once(']'))
            .map(|(addr, rest)| format!("{addr}{rest}"));
        let candidate = unbracketed.as_deref().unwrap_or(text);
        if text.contains("://") {
            return Err(EntryError::Invalid(text.to_string()));
        }
        if candidate.contains('/') || candidate.contains(':') || looks_numeric(candidate) {
            return Ok(Entry::Network(candidate.parse()?));
        }
        if text.contains('*') {
            return Err(EntryError::Wildcard(text.to_string()));
        }
        let host = Entry::normalize_host(text);
        let valid = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(EntryError::Invalid(text.to_string()));
        }
        Ok(Entry::Host(host))
    }
}

/// `10.1.2.3`, or a malformed one like `10.1.2`: an address was meant, not a name.
fn looks_numeric(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Network(network) => network.fmt(f),
            Entry::Host(host) => f.write_str(host),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(text: &str) -> Result<Entry, EntryError> {
        text.parse()
    }

    #[test]
    fn networks_addresses_and_hosts_are_told_apart() {
        assert_eq!(
            entry("10.0.0.0/8").unwrap(),
            Entry::Network("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(entry("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(
            entry("fd00:ec2::254").unwrap().to_string(),
            "fd00:ec2::254/128"
        );
        assert_eq!(entry("[::1]").unwrap().to_string(), "::1/128");
        assert_eq!(entry("[fe80::]/10").unwrap().to_string(), "fe80::/10");
        assert_eq!(
            entry(" API.Example.com. ").unwrap(),
            Entry::Host("api.example.com".into())
        );
        assert_eq!(entry("inventory").unwrap(), Entry::Host("inventory".into()));
    }

    #[test]
    fn what_cannot_be_matched_is_refused_with_the_reason() {
        assert_eq!(entry(""), Err(EntryError::Empty));
        assert!(matches!(entry("10.1.2"), Err(EntryError::Network(_))));
        assert!(matches!(entry("10.1.0.0/8"), Err(EntryError::Network(_))));
        assert!(matches!(
            entry("*.example.com"),
            Err(EntryError::Wildcard(_))
        ));
        assert!(matches!(
            entry("http://example.com"),
            Err(EntryError::Invalid(_))
        ));
        assert!(matches!(entry("exa mple.com"), Err(EntryError::Invalid(_))));
        assert!(matches!(entry("-bad.example"), Err(EntryError::Invalid(_))));
        assert!(matches!(entry("a..b"), Err(EntryError::Invalid(_))));
        let message = entry("10.1.0.0/8").unwrap_err().to_string();
        assert!(message.contains("did you mean 10.0.0.0/8"), "{message}");
    }
}
