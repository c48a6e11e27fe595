//! A target's URL taken apart once, at start: where to connect, what to verify the
//! certificate against, and the request target and `Host` value every request reuses.

use std::net::IpAddr;

use http::HeaderValue;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use rustls::pki_types::ServerName;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Security {
    Plain,
    Tls,
}

/// Where a target's host lives: a name to resolve, or an address to use as is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

/// Everything about a target's URL that a request needs, parsed once.
#[derive(Clone, Debug)]
pub struct Origin {
    pub security: Security,
    pub host: Host,
    pub port: u16,
    /// Origin-form (`/path?query`), what HTTP/1.1 sends on the request line.
    pub origin_form: Uri,
    /// Absolute form, which HTTP/2 turns into `:scheme`, `:authority` and `:path`.
    pub absolute: Uri,
    /// `host[:port]`, the port left out when it is the scheme's default.
    pub host_header: HeaderValue,
    /// The name the server's certificate must carry (https only).
    pub server_name: Option<ServerName<'static>>,
}

#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("{0:?} is not a valid URL")]
    Invalid(String, #[source] url::ParseError),
    #[error("scheme {0:?} is not supported; use http or https")]
    Scheme(String),
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error(
        "{0:?} carries credentials; use the target's credentials (bearer token or basic auth) instead"
    )]
    Credentials(String),
    #[error("{0:?}: the host is not a name a TLS certificate can carry")]
    ServerName(String, #[source] rustls::pki_types::InvalidDnsNameError),
    #[error("{0:?} cannot be sent as an HTTP request target")]
    Uri(String, #[source] http::Error),
}

impl Origin {
    /// The origin form as an HTTP/1.1 request line's target: path and query.
    pub fn target(&self) -> &str {
        self.origin_form
            .path_and_query()
            .map_or("/", |p| p.as_str())
    }

    pub fn parse(text: &str) -> Result<Origin, OriginError> {
        let url = url::Url::parse(text).map_err(|e| OriginError::Invalid(text.to_string(), e))?;
        let security = match url.scheme() {
            "http" => Security::Plain,
            "https" => Security::Tls,
            other => return Err(OriginError::Scheme(other.to_string())),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(OriginError::Credentials(redacted(&url)));
        }
        let host = match url.host() {
            Some(url::Host::Domain(name)) => Host::Name(name.to_string()),
            Some(url::Host::Ipv4(ip)) => Host::Ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Host::Ip(IpAddr::V6(ip)),
            None => return Err(OriginError::NoHost(text.to_string())),
        };
        let port = url
            .port_or_known_default()
            .expect("http and https have default ports");
        // `Url` already normalised the host (lower case, IPv6 in brackets) and left out a
        // default port, so its authority is what `Host` must say.
        let authority_text = match url.port() {
            Some(port) => format!("{}:{port}", host_text(&host)),
            None => host_text(&host),
        };
        // A fragment never leaves the client.
        let path_and_query = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        };
        let uri_error = |e: http::Error| OriginError::Uri(text.to_string(), e);
        let path_and_query =
            PathAndQuery::try_from(path_and_query).map_err(|e| uri_error(e.into()))?;
        let authority =
            Authority::try_from(authority_text.as_str()).map_err(|e| uri_error(e.into()))?;
        let scheme = match security {
            Security::Plain => Scheme::HTTP,
            Security::Tls => Scheme::HTTPS,
        };
        let origin_form = Uri::builder()
            .path_and_query(path_and_query.clone())
            .build()
            .map_err(uri_error)?;
        let absolute = Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(path_and_query)
            .build()
            .map_err(uri_error)?;
        let host_header =
            HeaderValue::from_str(&authority_text).map_err(|e| uri_error(e.into()))?;
        let server_name = match (security, &host) {
            (Security::Plain, _) => None,
            (Security::Tls, Host::Ip(ip)) => Some(ServerName::IpAddress((*ip).into())),
            (Security::Tls, Host::Name(name)) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|e| OriginError::ServerName(text.to_string(), e))?,
            ),
        };
        Ok(Origin {
            security,
            host,
            port,
            origin_form,
            absolute,
            host_header,
            server_name,
        })
    }
}

fn host_text(host: &Host) -> String {
    host.to_string()
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// The URL without its password, for an error message.
fn redacted(url: &url::Url) -> String {
    let mut url = url.clone();
    let _ = url.set_password(None);
    url.to_string()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn http_urls_keep_path_and_query_and_drop_the_fragment() {
        let o = Origin::parse("http://api.example.com/hooks/orders?tenant=7#ignored").unwrap();
        assert_eq!(o.security, Security::Plain);
        assert_eq!(o.host, Host::Name("api.example.com".into()));
        assert_eq!(o.port, 80);
        assert_eq!(o.origin_form, "/hooks/orders?tenant=7");
        assert_eq!(o.absolute, "http://api.example.com/hooks/orders?tenant=7");
        assert_eq!(o.host_header, "api.example.com");
    }

    #[test]
    fn a_default_port_is_left_out_of_host_and_another_is_kept() {
        let o = Origin::parse("https://API.example.com:443").unwrap();
        assert_eq!((o.security, o.port), (Security::Tls, 443));
        assert_eq!(o.host_header, "api.example.com");
        assert_eq!(o.origin_form, "/");
        let o = Origin::parse("https://api.example.com:8443/x").unwrap();
        assert_eq!(o.port, 8443);
        assert_eq!(o.host_header, "api.example.com:8443");
        assert!(o.server_name.is_some());
        assert_eq!(o.absolute, "https://api.example.com:8443/x");
    }

    #[test]
    fn ip_hosts_are_used_without_resolving() {
        let o = Origin::parse("http://127.0.0.1:9000/e").unwrap();
        assert_eq!(o.host, Host::Ip(Ipv4Addr::LOCALHOST.into()));
        assert_eq!(o.host_header, "127.0.0.1:9000");
        let o = Origin::parse("http://[::1]:9000/e").unwrap();
        assert_eq!(o.host, Host::Ip(Ipv6Addr::LOCALHOST.into()));
        assert_eq!(o.host_header, "[::1]:9000");
        assert_eq!(o.absolute, "http://[::1]:9000/e");
    }

    #[test]
    fn other_schemes_and_credentials_in_the_url_are_refused() {
        assert!(matches!(
            Origin::parse("ftp://example.com/"),
            Err(OriginError::Scheme(s)) if s == "ftp"
        ));
        let err = Origin::parse("https://user:secret@example.com/").unwrap_err();
        assert!(matches!(err, OriginError::Credentials(_)));
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(matches!(
            Origin::parse("not a url"),
            Err(OriginError::Invalid(..))
        ));
    }
}
