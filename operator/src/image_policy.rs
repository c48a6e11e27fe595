//! Which dispatcher images a route may ask for (`spec.dispatcher.image`). A
//! dispatcher pod gets the route's Secrets and the namespace's NATS credentials
//! mounted, so the image is the platform's choice: the operator's own dispatcher
//! image, plus whatever `--allowed-dispatcher-images` lists.
//!
//! The rule, on references as written (no registry or `library/` normalisation, so
//! `fanout` and `docker.io/library/fanout` are different entries):
//! - an entry with a tag or digest (`registry.example/fanout:1.4`,
//!   `registry.example/fanout@sha256:…`) allows exactly that reference;
//! - an entry without one (`registry.example/fanout`) allows that repository with
//!   any tag and/or digest, and nothing below it (`registry.example/fanout/x` is
//!   another repository).

use std::fmt;

/// The images a route may run. Always holds the operator's default image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImagePolicy {
    default_image: String,
    allowed: Vec<Allowed>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Allowed {
    /// Exactly this reference.
    Exact(String),
    /// This repository, any tag or digest.
    Repository(String),
}

/// An entry of `--allowed-dispatcher-images` that is not an image reference.
#[derive(Debug, thiserror::Error)]
#[error("--allowed-dispatcher-images: {entry:?} is not an image reference ({why})")]
pub struct InvalidEntry {
    pub entry: String,
    pub why: &'static str,
}

/// Why a route's image was refused; the message names the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotAllowed {
    pub image: String,
    pub why: String,
}

impl fmt::Display for NotAllowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spec.dispatcher.image {:?} {}; the dispatcher Deployment is left as it is",
            self.image, self.why
        )
    }
}

impl ImagePolicy {
    /// `default_image` (`--dispatcher-image`) is always allowed; `entries` add more.
    pub fn new(default_image: &str, entries: &[String]) -> Result<ImagePolicy, InvalidEntry> {
        let allowed = entries
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .map(|entry| {
                let parsed = Reference::parse(entry).map_err(|why| InvalidEntry {
                    entry: entry.to_string(),
                    why,
                })?;
                Ok(if parsed.tag.is_none() && parsed.digest.is_none() {
                    Allowed::Repository(parsed.repository.to_string())
                } else {
                    Allowed::Exact(entry.to_string())
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ImagePolicy {
            default_image: default_image.to_string(),
            allowed,
        })
    }

    /// The image the operator uses when a route names none.
    pub fn default_image(&self) -> &str {
        &self.default_image
    }

    /// Whether a route may run `image`.
    pub fn check(&self, image: &str) -> Result<(), NotAllowed> {
        if image == self.default_image {
            return Ok(());
        }
        let refused = |why: String| NotAllowed {
            image: image.to_string(),
            why,
        };
        let parsed = Reference::parse(image)
            .map_err(|why| refused(format!("is not a valid image reference ({why})")))?;
        let allowed = self.allowed.iter().any(|a| match a {
            Allowed::Exact(e) => e == image,
            Allowed::Repository(r) => r == parsed.repository,
        });
        if allowed {
            Ok(())
        } else {
            Err(refused(format!(
                "is not an allowed dispatcher image (allowed: {}); the platform team sets the list with the chart value dispatcher.allowedImages",
                self.describe()
            )))
        }
    }

    /// The allowed images, for messages.
    pub fn describe(&self) -> String {
        std::iter::once(self.default_image.clone())
            .chain(self.allowed.iter().map(|a| match a {
                Allowed::Exact(e) => e.clone(),
                Allowed::Repository(r) => format!("{r} (any tag or digest)"),
            }))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// An image reference split into its parts: `repository[:tag][@digest]`.
struct Reference<'a> {
    repository: &'a str,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

impl<'a> Reference<'a> {
    /// Follows the distribution reference grammar closely enough that two different
    /// strings cannot name the same repository by a trick (case, empty parts, `..`).
    fn parse(s: &'a str) -> Result<Reference<'a>, &'static str> {
        if s.is_empty() || s.len() > 512 {
            return Err("empty or too long");
        }
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (s, None),
        };
        if let Some(d) = digest {
            let (algorithm, hex) = d.split_once(':').ok_or("a digest is algorithm:hex")?;
            let algorithm_ok = !algorithm.is_empty()
                && algorithm
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+._-".contains(c));
            let hex_ok = hex.len() >= 32 && hex.chars().all(|c| c.is_ascii_hexdigit());
            if !algorithm_ok || !hex_ok {
                return Err("malformed digest");
            }
        }
        // The tag follows the last ':' after the last '/' (a registry may have a port).
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
            None => (name, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && !t.starts_with(['.', '-'])
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !ok {
                return Err("malformed tag");
            }
        }
        let mut parts = repository.split('/');
        let first = parts.next().unwrap_or_default();
        let has_host = repository.contains('/')
            && (first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()));
        if has_host {
            let (host, port) = match first.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (first, None),
            };
            let host_ok = !host.is_empty()
                && host.split('.').all(|l| {
                    !l.is_empty()
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            let port_ok =
                port.is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
            if !host_ok || !port_ok {
                return Err("malformed registry host");
            }
        } else if !path_component(first) {
            return Err("malformed repository path");
        }
        if !parts.all(path_component) {
            return Err("malformed repository path");
        }
        Ok(Reference {
            repository,
            tag,
            digest,
        })
    }
}

/// `[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*`, loosely: lowercase, no empty part, no
/// separator at either end or two in a row (except `__` and `--`).
fn path_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let sep = |b: u8| b == b'.' || b == b'_' || b == b'-';
    !c.is_empty()
        && c.chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
        && !sep(bytes[0])
        && !sep(bytes[bytes.len() - 1])
        && !c.contains("..")
        && !c.contains("._")
        && !c.contains("_.")
        && !c.contains(".-")
        && !c.contains("-.")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> ImagePolicy {
        let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        ImagePolicy::new("registry.example/fanout:1.4", &entries).unwrap()
    }

    #[test]
    fn only_the_default_image_without_a_list() {
        let p = policy(&[]);
        assert!(p.check("registry.example/fanout:1.4").is_ok());
        for other in [
            "registry.example/fanout:1.5",
            "registry.example/fanout:1.4@sha256:0123456789abcdef0123456789abcdef",
            "evil.example/fanout:1.4",
            "busybox",
        ] {
            let e = p.check(other).unwrap_err();
            assert!(e.to_string().contains("spec.dispatcher.image"), "{e}");
        }
    }

    #[test]
    fn an_entry_with_a_tag_or_digest_allows_exactly_that_reference() {
        let digest = "registry.example/fanout@sha256:0123456789abcdef0123456789abcdef";
        let p = policy(&["registry.example/fanout:2.0", digest]);
        assert!(p.check("registry.example/fanout:2.0").is_ok());
        assert!(p.check(digest).is_ok());
        assert!(p.check("registry.example/fanout:2.1").is_err());
        // A digest pins other content than the tag says: not the same reference.
        assert!(
            p.check("registry.example/fanout:2.0@sha256:ffffffffffffffffffffffffffffffff")
                .is_err()
        );
    }

    #[test]
    fn an_entry_without_a_tag_allows_the_repository_with_any_tag_or_digest() {
        let p = policy(&["registry.example:5000/team/fanout"]);
        for ok in [
            "registry.example:5000/team/fanout",
            "registry.example:5000/team/fanout:9",
            "registry.example:5000/team/fanout@sha256:0123456789abcdef0123456789abcdef",
            "registry.example:5000/team/fanout:9@sha256:0123456789abcdef0123456789abcdef",
        ] {
            assert!(p.check(ok).is_ok(), "{ok}");
        }
        for refused in [
            "registry.example:5000/team/fanout/sub:1",
            "registry.example:5000/team/fanout-evil:1",
            "registry.example:5000/team/FANOUT:1",
            "registry.example/team/fanout:1",
            "registry.example:5000/team/../team/fanout:1",
            "registry.example:5000/team//fanout:1",
            "registry.example:5000/team/fanout:",
        ] {
            assert!(p.check(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn malformed_entries_are_refused_at_startup() {
        for bad in ["x/Y:1", "x:", "x@sha256:zz", "a//b"] {
            let e = ImagePolicy::new("fanout:1", &[bad.to_string()]).unwrap_err();
            assert!(e.to_string().contains("--allowed-dispatcher-images"), "{e}");
        }
    }
}
