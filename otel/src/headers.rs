//! Headers for the collector from a file: one `Name: value` per line, blank lines and
//! lines starting with `#` ignored.

use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum HeadersError {
    #[error("reading it")]
    Read(#[source] std::io::Error),
    // The line number only: the line may hold a secret.
    #[error("line {line}: not a `Name: value` header")]
    Line { line: usize },
}

pub fn read(path: &Path) -> Result<HashMap<String, String>, HeadersError> {
    parse(&std::fs::read_to_string(path).map_err(HeadersError::Read)?)
}

fn parse(text: &str) -> Result<HashMap<String, String>, HeadersError> {
    let mut out = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || HeadersError::Line { line: index + 1 };
        let (name, value) = line.split_once(':').ok_or_else(bad)?;
        let (name, value) = (name.trim(), value.trim());
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(token) || value.chars().any(char::is_control) {
            return Err(bad());
        }
        out.insert(name.to_string(), value.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_header_per_line() {
        let headers =
            parse("# the vendor's key\nAuthorization: Bearer abc\n\nX-Scope-OrgID:  team-a \n")
                .unwrap();
        assert_eq!(headers["Authorization"], "Bearer abc");
        assert_eq!(headers["X-Scope-OrgID"], "team-a");
        assert_eq!(headers.len(), 2);
    }

    #[test]
    fn a_bad_line_is_named_by_number_not_content() {
        let error = parse("Good: yes\nsecret-without-colon\n").unwrap_err();
        assert_eq!(error.to_string(), "line 2: not a `Name: value` header");
        assert!(parse("bad name: x").is_err());
    }
}
