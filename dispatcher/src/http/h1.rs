//! HTTP/1.1 on a connection of the dispatcher's own. The delivering future drives
//! the exchange: the request is written whole, the answer's head is parsed in place
//! (httparse, hyper's parser), and its body is read by `Content-Length`, by chunks or
//! to the connection's end, up to a limit. hyper's HTTP/1.1 client drove each
//! connection from a task of its own and handed every request and answer across a
//! channel, which cost a quarter to a third of a request's CPU (docs/benchmarks.md,
//! "An HTTP client of its own"). HTTP/2 stays on hyper.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use fanout_nats_client::protocol::write_number;
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::body::Limited;
use super::outbound::Outbound;

/// Larger answer heads are refused (hyper's limit is of the same order).
const MAX_HEAD: usize = 64 * 1024;
/// Answer headers read at most (hyper's default).
const MAX_HEADERS: usize = 100;
/// A chunk's size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;
/// Read at least this much at a time.
const READ_SIZE: usize = 4096;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing the request")]
    Write(#[source] io::Error),
    #[error("reading the answer")]
    Read(#[source] io::Error),
    #[error("the connection closed before the answer was complete")]
    Closed,
    #[error("malformed answer: {0}")]
    Malformed(String),
}

/// The byte stream under a connection: TCP, or TLS over it.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// How the answer's body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    /// At the connection's end (no length given).
    Close,
}

/// An answer's status line and headers.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The answer says the connection closes after it (`Connection: close`, or an
    /// HTTP/1.0 answer without `keep-alive`).
    pub closes: bool,
}

/// One HTTP/1.1 connection to a target: one request at a time.
pub struct Http1 {
    io: Io,
    /// Bytes read and not used yet.
    read: BytesMut,
    /// The request being written.
    write: Vec<u8>,
    /// Whether the connection can carry another request: cleared by anything that
    /// leaves it in an unknown state, and by an answer that says it closes.
    reusable: bool,
}

impl Http1 {
    pub fn new(io: Io) -> Http1 {
        Http1 {
            io,
            read: BytesMut::new(),
            write: Vec::new(),
            reusable: true,
        }
    }

    /// Whether it cannot carry another request: it said so, or, while idle, the
    /// peer closed it or sent something unasked. Asks the runtime's readiness, so it
    /// costs no system call while nothing has come.
    pub fn is_closed(&self) -> bool {
        if !self.reusable {
            return true;
        }
        let tcp = match &self.io {
            Io::Plain(tcp) => tcp,
            Io::Tls(tls) => tls.get_ref().0,
        };
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        // Ready: an end of stream, an error, or bytes nobody asked for.
        tcp.poll_peek(&mut cx, &mut buf).is_ready()
    }

    /// Writes a request for `target` (its origin form) with `headers` (`Host`
    /// among them) and `body`, then reads the answer's head, skipping interim
    /// (1xx) answers.
    pub async fn send(
        &mut self,
        target: &str,
        host: &HeaderValue,
        request: &impl Outbound,
    ) -> Result<Head, Error> {
        // Whatever goes wrong from here leaves the connection unusable, until the
        // answer's body has been read to its end.
        self.reusable = false;
        encode(&mut self.write, target, host, request);
        self.io.write_all(&self.write).await.map_err(Error::Write)?;
        self.io.flush().await.map_err(Error::Write)?;
        loop {
            if let Some(head) = self.parse_head()? {
                if head.status.is_informational() {
                    if head.status == StatusCode::SWITCHING_PROTOCOLS {
                        return Err(Error::Malformed("101 Switching Protocols".into()));
                    }
                    continue;
                }
                return Ok(head);
            }
            if self.read.len() > MAX_HEAD {
                return Err(Error::Malformed(format!(
                    "its head is longer than {MAX_HEAD} bytes"
                )));
            }
            self.fill().await?;
        }
    }

    /// Reads up to `limit` bytes of the body `head` announced. A body read to its
    /// end leaves the connection free for the next request, unless the answer said
    /// it closes.
    pub async fn read_body(&mut self, head: &Head, limit: usize) -> Result<Limited, Error> {
        let mut bytes = Vec::new();
        let ended = match head.framing {
            Framing::Length(length) => self.read_length(length, limit, &mut bytes).await?,
            Framing::Chunked => self.read_chunks(limit, &mut bytes).await?,
            // The connection ends with the body: not reusable either way.
            Framing::Close => {
                let ended = self.read_to_end(limit, &mut bytes).await?;
                return Ok(Limited { bytes, ended });
            }
        };
        // Bytes past the answer were not asked for: the connection's state is unknown.
        self.reusable = ended && self.read.is_empty() && !head.closes;
        Ok(Limited { bytes, ended })
    }

    /// Whether the connection can carry another request.
    pub fn is_reusable(&self) -> bool {
        self.reusable
    }

    /// The answer's head, once all of it has been read.
    fn parse_head(&mut self) -> Result<Option<Head>, Error> {
        if self.read.is_empty() {
            return Ok(None);
        }
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut answer = httparse::Response::new(&mut slots);
        let length = match answer.parse(&self.read) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(error) => return Err(Error::Malformed(error.to_string())),
        };
        let code = answer.code.unwrap_or_default();
        let status =
            StatusCode::from_u16(code).map_err(|_| Error::Malformed(format!("status {code}")))?;
        let mut headers = HeaderMap::with_capacity(answer.headers.len());
        for header in answer.headers.iter() {
            let name = HeaderName::from_bytes(header.name.as_bytes())
                .map_err(|_| Error::Malformed(format!("header name {:?}", header.name)))?;
            let value = HeaderValue::from_bytes(header.value)
                .map_err(|_| Error::Malformed(format!("the value of {name}")))?;
            headers.append(name, value);
        }
        // An HTTP/1.0 answer closes its connection unless it says otherwise.
        let closes = if answer.version == Some(0) {
            !has_token(&headers, "keep-alive")
        } else {
            has_token(&headers, "close")
        };
        let framing = framing(status, &headers)?;
        self.read.advance(length);
        Ok(Some(Head {
            status,
            headers,
            framing,
            closes,
        }))
    }

    /// Reads more into `read`; the connection's end here cuts an answer short.
    async fn fill(&mut self) -> Result<(), Error> {
        if self.read_more().await? == 0 {
            return Err(Error::Closed);
        }
        Ok(())
    }

    async fn read_more(&mut self) -> Result<usize, Error> {
        self.read.reserve(READ_SIZE);
        self.io.read_buf(&mut self.read).await.map_err(Error::Read)
    }

    /// A body of `length` bytes: whether it was read to its end. Past the limit,
    /// only what has already come is read (and dropped).
    async fn read_length(
        &mut self,
        length: u64,
        limit: usize,
        bytes: &mut Vec<u8>,
    ) -> Result<bool, Error> {
        let mut left = length;
        loop {
            let take = left.min(self.read.len() as u64) as usize;
            keep(bytes, &self.read[..take], limit);
            self.read.advance(take);
            left -= take as u64;
            if left == 0 {
                return Ok(true);
            }
            if bytes.len() >= limit {
                return Ok(false);
            }
            self.fill().await?;
        }
    }

    /// A chunked body, trailers skipped: whether it was read to its end. Past the
    /// limit, only what has already come is read.
    async fn read_chunks(&mut self, limit: usize, bytes: &mut Vec<u8>) -> Result<bool, Error> {
        loop {
            let size = loop {
                match chunk_size(&self.read)? {
                    Some((size, line)) => {
                        self.read.advance(line);
                        break size;
                    }
                    None if bytes.len() >= limit => return Ok(false),
                    None => self.fill().await?,
                }
            };
            if size == 0 {
                // Trailers, each a line, up to an empty one.
                loop {
                    match find_crlf(&self.read, MAX_CHUNK_LINE)? {
                        Some(0) => {
                            self.read.advance(2);
                            return Ok(true);
                        }
                        Some(end) => self.read.advance(end + 2),
                        None if bytes.len() >= limit => return Ok(false),
                        None => self.fill().await?,
                    }
                }
            }
            if !self.read_length(size, limit, bytes).await? {
                return Ok(false);
            }
            while self.read.len() < 2 {
                if bytes.len() >= limit {
                    return Ok(false);
                }
                self.fill().await?;
            }
            if &self.read[..2] != b"\r\n" {
                return Err(Error::Malformed("a chunk does not end in CRLF".into()));
            }
            self.read.advance(2);
        }
    }

    /// A body that ends with the connection: whether it was read to its end.
    async fn read_to_end(&mut self, limit: usize, bytes: &mut Vec<u8>) -> Result<bool, Error> {
        loop {
            keep(bytes, &self.read, limit);
            self.read.clear();
            if bytes.len() >= limit {
                return Ok(false);
            }
            if self.read_more().await? == 0 {
                return Ok(true);
            }
        }
    }
}

/// Keeps what fits of `data` under `limit`.
fn keep(bytes: &mut Vec<u8>, data: &[u8], limit: usize) {
    let room = limit.saturating_sub(bytes.len());
    bytes.extend_from_slice(&data[..data.len().min(room)]);
}

/// The request's bytes: its line, headers, a `Content-Length` and the body.
fn encode(out: &mut Vec<u8>, target: &str, host: &HeaderValue, request: &impl Outbound) {
    out.clear();
    out.extend_from_slice(request.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    request.write_headers(out);
    let body = request.body();
    out.extend_from_slice(b"content-length: ");
    write_number(out, body.len() as u64);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&body);
}

/// How the body of an answer with `status` and `headers` ends (RFC 9112, 6.3).
fn framing(status: StatusCode, headers: &HeaderMap) -> Result<Framing, Error> {
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Length(0));
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        // Chunked last: its length is known; any other coding last runs to the end.
        let last = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|c| !c.is_empty());
        return Ok(match last {
            Some(coding) if coding.eq_ignore_ascii_case("chunked") => Framing::Chunked,
            _ => Framing::Close,
        });
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let part = std::str::from_utf8(part).unwrap_or_default().trim();
            let n: u64 = part
                .parse()
                .ok()
                .filter(|_| part.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| Error::Malformed(format!("Content-Length {part:?}")))?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::Malformed("Content-Length values differ".into()));
            }
            length = Some(n);
        }
    }
    Ok(length.map_or(Framing::Close, Framing::Length))
}

/// Whether `Connection` lists `token`.
fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A chunk's size and the length of its line (CRLF included), once the line is in.
fn chunk_size(read: &[u8]) -> Result<Option<(u64, usize)>, Error> {
    let Some(end) = find_crlf(read, MAX_CHUNK_LINE)? else {
        return Ok(None);
    };
    let line = &read[..end];
    // Extensions, after `;`, are ignored.
    let digits = line
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let malformed = || Error::Malformed(format!("chunk size {:?}", String::from_utf8_lossy(line)));
    if digits.is_empty() || digits.len() > 15 {
        return Err(malformed());
    }
    let text = std::str::from_utf8(digits).map_err(|_| malformed())?;
    let size = u64::from_str_radix(text, 16).map_err(|_| malformed())?;
    Ok(Some((size, end + 2)))
}

/// Where the first CRLF of `read` is, if within `max` bytes.
fn find_crlf(read: &[u8], max: usize) -> Result<Option<usize>, Error> {
    match read.windows(2).position(|w| w == b"\r\n") {
        Some(end) if end <= max => Ok(Some(end)),
        Some(_) => Err(Error::Malformed("a line is too long".into())),
        None if read.len() > max => Err(Error::Malformed("a line is too long".into())),
        None => Ok(None),
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::Method;
    use tokio::net::TcpListener;

    use super::*;

    /// A connection to a loopback server that answers each request it reads with
    /// the next of `answers`, written in pieces as given (`|` splits them), then
    /// closes when `answers` run out.
    async fn answering(answers: &[&'static str]) -> (Http1, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answers: Vec<&'static str> = answers.to_vec();
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut requests = Vec::new();
            for answer in answers {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // The test requests are small and have a body of "{}".
                while !request.ends_with(b"\r\n\r\n{}") {
                    let n = tcp.read(&mut buf).await.unwrap();
                    assert!(n > 0, "the client closed");
                    request.extend_from_slice(&buf[..n]);
                }
                requests.push(String::from_utf8(request).unwrap());
                for piece in answer.split('|') {
                    tcp.write_all(piece.as_bytes()).await.unwrap();
                    tcp.flush().await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
            requests
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        (Http1::new(Io::Plain(tcp)), server)
    }

    async fn exchange(connection: &mut Http1, limit: usize) -> Result<(Head, Limited), Error> {
        let mut request = http::Request::new(http_body_util::Full::new(Bytes::from_static(b"{}")));
        *request.method_mut() = Method::POST;
        request
            .headers_mut()
            .insert("x-event", HeaderValue::from_static("a"));
        let host = HeaderValue::from_static("example.com");
        let head = connection.send("/hook?x=1", &host, &request).await?;
        let body = connection.read_body(&head, limit).await?;
        Ok((head, body))
    }

    #[tokio::test]
    async fn a_request_is_written_whole_and_a_sized_answer_read_to_its_end() {
        let (mut c, server) = answering(&[
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello",
            "HTTP/1.1 202 Accepted\r\ncontent-|length: 2\r\n\r|\nok",
        ])
        .await;
        let (head, body) = exchange(&mut c, 1024).await.unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.headers["x-a"], "1");
        assert_eq!(body.bytes, b"hello");
        assert!(body.ended && c.is_reusable());
        let (head, body) = exchange(&mut c, 1024).await.unwrap();
        assert_eq!(
            (head.status.as_u16(), body.bytes.as_slice()),
            (202, &b"ok"[..])
        );
        assert!(c.is_reusable());
        let requests = server.await.unwrap();
        assert_eq!(
            requests[0],
            "POST /hook?x=1 HTTP/1.1\r\nhost: example.com\r\nx-event: a\r\ncontent-length: 2\r\n\r\n{}"
        );
    }

    #[tokio::test]
    async fn a_chunked_answer_is_decoded_with_extensions_and_trailers() {
        let (mut c, _server) = answering(&[
            "HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: chunked\r\n\r\n4;ext=1\r\nWiki|\r\n5\r\npe|dia\r\n0\r\nx-trailer: t\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        ])
        .await;
        let (_, body) = exchange(&mut c, 1024).await.unwrap();
        assert_eq!(body.bytes, b"Wikipedia");
        assert!(body.ended && c.is_reusable());
        // The connection carries the next request.
        let (head, _) = exchange(&mut c, 1024).await.unwrap();
        assert_eq!(head.status, 200);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_cut_and_the_connection_not_reused() {
        let long: &'static str = format!(
            "HTTP/1.1 500 Oops\r\ncontent-length: 100000\r\n\r\n{}",
            "x".repeat(100_000)
        )
        .leak();
        let (mut c, _s) = answering(&[long]).await;
        let (_, body) = exchange(&mut c, 4).await.unwrap();
        assert_eq!((body.bytes.as_slice(), body.ended), (&b"xxxx"[..], false));
        assert!(!c.is_reusable());
        let chunked: &'static str = format!(
            "HTTP/1.1 500 Oops\r\ntransfer-encoding: chunked\r\n\r\n6\r\nabcdef\r\n186a0\r\n{}\r\n0\r\n\r\n",
            "y".repeat(100_000)
        )
        .leak();
        let (mut c, _s) = answering(&[chunked]).await;
        let (_, body) = exchange(&mut c, 8).await.unwrap();
        assert_eq!(
            (body.bytes.as_slice(), body.ended),
            (&b"abcdefyy"[..], false)
        );
        assert!(!c.is_reusable());
    }

    #[tokio::test]
    async fn a_body_over_the_limit_that_has_all_come_is_read_to_its_end() {
        let (mut c, _s) = answering(&[
            "HTTP/1.1 500 Oops\r\ncontent-length: 10\r\n\r\n0123456789",
            "HTTP/1.1 500 Oops\r\ntransfer-encoding: chunked\r\n\r\n6\r\nabcdef\r\n6\r\nghijkl\r\n0\r\n\r\n",
        ])
        .await;
        let (_, body) = exchange(&mut c, 4).await.unwrap();
        assert_eq!((body.bytes.as_slice(), body.ended), (&b"0123"[..], true));
        assert!(c.is_reusable());
        let (_, body) = exchange(&mut c, 8).await.unwrap();
        assert_eq!(
            (body.bytes.as_slice(), body.ended),
            (&b"abcdefgh"[..], true)
        );
        assert!(c.is_reusable());
    }

    #[tokio::test]
    async fn an_answer_without_a_length_runs_to_the_connections_end() {
        let (mut c, _s) = answering(&["HTTP/1.1 200 OK\r\n\r\nall of |this"]).await;
        let (_, body) = exchange(&mut c, 1024).await.unwrap();
        assert_eq!(body.bytes, b"all of this");
        assert!(body.ended && !c.is_reusable());
    }

    #[tokio::test]
    async fn interim_answers_are_skipped() {
        let (mut c, _s) = answering(&[
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        ])
        .await;
        let (head, body) = exchange(&mut c, 1024).await.unwrap();
        assert_eq!(head.status, 204);
        assert!(body.bytes.is_empty() && c.is_reusable());
    }

    #[tokio::test]
    async fn an_answer_that_closes_the_connection_is_not_pooled() {
        let (mut c, _s) =
            answering(&["HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"]).await;
        exchange(&mut c, 1024).await.unwrap();
        assert!(!c.is_reusable());
        let (mut c, _s) = answering(&["HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"]).await;
        exchange(&mut c, 1024).await.unwrap();
        assert!(!c.is_reusable());
        let (mut c, _s) =
            answering(&["HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n"])
                .await;
        exchange(&mut c, 1024).await.unwrap();
        assert!(c.is_reusable());
    }

    #[tokio::test]
    async fn bytes_past_the_answer_leave_the_connection_unused() {
        let (mut c, _s) =
            answering(&["HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\n"]).await;
        exchange(&mut c, 1024).await.unwrap();
        assert!(!c.is_reusable());
    }

    #[tokio::test]
    async fn malformed_answers_are_errors_that_say_what() {
        for (answer, says) in [
            ("HTTP/1.1 2x0 OK\r\n\r\n", "malformed answer"),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\nhello",
                "differ",
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
                "Content-Length",
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                "chunk size",
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabX\r\n",
                "CRLF",
            ),
            ("HTTP/1.1 101 Switching Protocols\r\n\r\n", "101"),
        ] {
            let (mut c, _s) = answering(&[answer]).await;
            let error = exchange(&mut c, 1024).await.unwrap_err();
            assert!(error.to_string().contains(says), "{answer:?}: {error}");
            assert!(!c.is_reusable());
        }
    }

    #[tokio::test]
    async fn an_answer_cut_short_is_a_closed_connection() {
        for answer in [
            "",
            "HTTP/1.1 200 OK\r\ncontent-le",
            "HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nabc",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n9\r\nabc",
        ] {
            let (mut c, _s) = answering(&[answer]).await;
            let error = exchange(&mut c, 1024).await.unwrap_err();
            assert!(matches!(error, Error::Closed), "{answer:?}: {error:?}");
        }
    }

    #[tokio::test]
    async fn a_head_larger_than_the_limit_is_refused() {
        let huge: &'static str = format!(
            "HTTP/1.1 200 OK\r\nx-big: {}\r\n",
            "a".repeat(MAX_HEAD + 10)
        )
        .leak();
        let (mut c, _s) = answering(&[huge]).await;
        let error = exchange(&mut c, 1024).await.unwrap_err();
        assert!(error.to_string().contains("longer than"), "{error}");
    }

    #[tokio::test]
    async fn an_idle_connection_the_peer_closed_is_seen_closed() {
        let (mut c, server) = answering(&["HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"]).await;
        exchange(&mut c, 1024).await.unwrap();
        assert!(!c.is_closed());
        // The server ends after its one answer, closing the connection.
        server.await.unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !c.is_closed() {
            assert!(tokio::time::Instant::now() < deadline, "never seen closed");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (n, v) in pairs {
                map.append(*n, HeaderValue::from_static(v));
            }
            map
        };
        let ok = StatusCode::OK;
        assert_eq!(
            framing(ok, &headers(&[("content-length", "7")])).unwrap(),
            Framing::Length(7)
        );
        assert_eq!(
            framing(
                ok,
                &headers(&[("content-length", "7"), ("content-length", "7")])
            )
            .unwrap(),
            Framing::Length(7)
        );
        // Transfer-Encoding wins over Content-Length.
        assert_eq!(
            framing(
                ok,
                &headers(&[
                    ("transfer-encoding", "gzip, chunked"),
                    ("content-length", "7")
                ])
            )
            .unwrap(),
            Framing::Chunked
        );
        assert_eq!(
            framing(ok, &headers(&[("transfer-encoding", "gzip")])).unwrap(),
            Framing::Close
        );
        assert_eq!(framing(ok, &headers(&[])).unwrap(), Framing::Close);
        assert_eq!(
            framing(StatusCode::NO_CONTENT, &headers(&[("content-length", "7")])).unwrap(),
            Framing::Length(0)
        );
    }
}
