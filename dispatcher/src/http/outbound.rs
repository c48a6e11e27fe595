//! What the client sends: a request that can write its own header lines onto an
//! HTTP/1.1 connection, and make itself into `http::Request` for HTTP/2. A delivery's
//! request ([`crate::request::Attempt`]) writes its headers straight from the target's
//! template and the event, with no header map in between; any `http::Request` (the
//! OAuth 2.0 token requests, tests) writes its map's.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use http_body_util::Full;

pub trait Outbound {
    fn method(&self) -> &Method;

    /// Its body, whole (a clone of `Bytes`: a count, not a copy).
    fn body(&self) -> Bytes;

    /// Appends its header lines (`name: value\r\n`) to `out`; never `Host`,
    /// `Content-Length` or `Transfer-Encoding`, which the client writes itself.
    fn write_headers(&self, out: &mut Vec<u8>);

    /// The same request as `http`'s type (without `Host`; the client sets it).
    fn to_request(&self) -> Request<Full<Bytes>>;
}

impl Outbound for Request<Full<Bytes>> {
    fn method(&self) -> &Method {
        Request::method(self)
    }

    fn body(&self) -> Bytes {
        full_body(Request::body(self))
    }

    fn write_headers(&self, out: &mut Vec<u8>) {
        write_map(out, self.headers());
    }

    fn to_request(&self) -> Request<Full<Bytes>> {
        self.clone()
    }
}

/// Appends `map`'s headers as lines, leaving out those the client writes itself.
pub fn write_map(out: &mut Vec<u8>, map: &HeaderMap) {
    for (name, value) in map {
        write_header(out, name, value);
    }
}

/// Appends the line of one header, unless it is one the client writes itself.
pub fn write_header(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    if !is_the_clients(name) {
        write_line(out, name, value.as_bytes());
    }
}

/// Appends `name: value\r\n`; `value` must be a valid header value (no CR or LF).
pub fn write_line(out: &mut Vec<u8>, name: &HeaderName, value: &[u8]) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Headers that describe the connection or the message's length: only the client
/// sets them, from the target's URL and the body.
fn is_the_clients(name: &HeaderName) -> bool {
    name == HOST || name == CONTENT_LENGTH || name == TRANSFER_ENCODING
}

/// The bytes of a `Full` body: its one frame, there at once.
fn full_body(body: &Full<Bytes>) -> Bytes {
    use futures::FutureExt;
    use http_body_util::BodyExt;
    body.clone()
        .frame()
        .now_or_never()
        .flatten()
        .and_then(Result::ok)
        .and_then(|frame| frame.into_data().ok())
        .unwrap_or_default()
}
