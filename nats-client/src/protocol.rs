//! The NATS client protocol, as much of it as Fanout's own client speaks: what it writes
//! (`CONNECT`, `SUB`, `HPUB`, `PING`, `PONG`) and what it reads from the server.
//! Pure functions over buffers, so that every case is tested without a server.

use bytes::{Buf, Bytes, BytesMut};
use serde::Deserialize;

use crate::headers::Headers;

/// The longest control line accepted from a server (an `INFO` with a long list of
/// cluster URLs is the longest a server sends).
const MAX_CONTROL_LINE: usize = 64 * 1024;
/// The largest message accepted from a server: the most a server's `max_payload`
/// can be set to. It bounds what a broken server can make a client buffer.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// What the server says about itself when a client connects (and again when its
/// cluster changes).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Info {
    #[serde(default)]
    pub server_id: String,
    /// The largest message (headers and payload) the server accepts.
    #[serde(default)]
    pub max_payload: usize,
    #[serde(default)]
    pub headers: bool,
    #[serde(default)]
    pub tls_required: bool,
    #[serde(default)]
    pub tls_available: bool,
    /// What the client signs to prove it holds its credentials' key.
    #[serde(default)]
    pub nonce: Option<String>,
    /// The cluster's other servers a client may move to.
    #[serde(default)]
    pub connect_urls: Vec<String>,
    /// Lame duck mode: the server is about to shut down.
    #[serde(default)]
    pub ldm: bool,
}

/// One operation read from the server.
#[derive(Debug, PartialEq)]
pub enum ServerOp {
    Info(Box<InfoText>),
    Msg(Msg),
    Ping,
    Pong,
    Ok,
    Err(String),
}

/// An `INFO` line's JSON, parsed by whoever needs it (the handshake, or the
/// connection for a cluster update).
#[derive(Debug, PartialEq)]
pub struct InfoText(pub Bytes);

impl InfoText {
    pub fn parse(&self) -> Result<Info, ProtocolError> {
        serde_json::from_slice(&self.0).map_err(ProtocolError::Info)
    }
}

/// A message delivered to one of the client's subscriptions.
#[derive(Debug, PartialEq)]
pub struct Msg {
    pub subject: Bytes,
    pub sid: u64,
    /// Where an answer goes (empty when none is asked for).
    pub reply: Bytes,
    /// The status of a message without a body of its own (`NATS/1.0 503` when a
    /// request found no responders).
    pub status: Option<u16>,
    /// The header block as it came, its `NATS/1.0` line included (empty without
    /// headers).
    pub headers: Bytes,
    pub payload: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("the server sent a line of over {MAX_CONTROL_LINE} bytes")]
    LineTooLong,
    #[error("the server sent a message of {0} bytes, over the {MAX_MESSAGE} accepted")]
    MessageTooLarge(usize),
    #[error("the server sent an operation the client does not know: {0:?}")]
    Unknown(String),
    #[error("the server sent a malformed {op} line: {line:?}")]
    Malformed { op: &'static str, line: String },
    #[error("the server's INFO is not readable")]
    Info(#[source] serde_json::Error),
}

/// Reads the next complete operation from `buf`, consuming it; `None` until more
/// bytes arrive.
pub fn parse(buf: &mut BytesMut) -> Result<Option<ServerOp>, ProtocolError> {
    let Some(end) = memchr::memmem::find(buf, b"\r\n") else {
        return if buf.len() > MAX_CONTROL_LINE {
            Err(ProtocolError::LineTooLong)
        } else {
            Ok(None)
        };
    };
    let line = &buf[..end];
    let (op, args) = match line.iter().position(|b| *b == b' ' || *b == b'\t') {
        Some(at) => (&line[..at], trim(&line[at + 1..])),
        None => (line, &[][..]),
    };
    let op = if op.eq_ignore_ascii_case(b"MSG") {
        return message(buf, end, false);
    } else if op.eq_ignore_ascii_case(b"HMSG") {
        return message(buf, end, true);
    } else if op.eq_ignore_ascii_case(b"PING") {
        ServerOp::Ping
    } else if op.eq_ignore_ascii_case(b"PONG") {
        ServerOp::Pong
    } else if op.eq_ignore_ascii_case(b"+OK") {
        ServerOp::Ok
    } else if op.eq_ignore_ascii_case(b"-ERR") {
        let text = String::from_utf8_lossy(args);
        ServerOp::Err(text.trim_matches('\'').to_string())
    } else if op.eq_ignore_ascii_case(b"INFO") {
        let json = Bytes::copy_from_slice(args);
        ServerOp::Info(Box::new(InfoText(json)))
    } else {
        return Err(ProtocolError::Unknown(
            String::from_utf8_lossy(&line[..line.len().min(64)]).into_owned(),
        ));
    };
    buf.advance(end + 2);
    Ok(Some(op))
}

/// `MSG <subject> <sid> [reply] <size>` or
/// `HMSG <subject> <sid> [reply] <header size> <size>`, then the body and CRLF.
fn message(
    buf: &mut BytesMut,
    end: usize,
    headers: bool,
) -> Result<Option<ServerOp>, ProtocolError> {
    let op = if headers { "HMSG" } else { "MSG" };
    let line = &buf[..end];
    let malformed = || ProtocolError::Malformed {
        op,
        line: String::from_utf8_lossy(&line[..line.len().min(256)]).into_owned(),
    };
    // At most six fields: counted into an array, not collected (one per reply).
    let mut fields: [&[u8]; 6] = [&[]; 6];
    let mut count = 0;
    for field in line
        .split(|b| *b == b' ' || *b == b'\t')
        .filter(|f| !f.is_empty())
    {
        if count == fields.len() {
            return Err(malformed());
        }
        fields[count] = field;
        count += 1;
    }
    let (subject, sid, sizes) = match (headers, count) {
        (false, 4 | 5) | (true, 5 | 6) => {
            let sizes = if headers { 2 } else { 1 };
            (fields[1], fields[2], &fields[count - sizes..count])
        }
        _ => return Err(malformed()),
    };
    let with_reply = count == if headers { 6 } else { 5 };
    let sid = number(sid).ok_or_else(malformed)?;
    let total = number(sizes[sizes.len() - 1]).ok_or_else(malformed)? as usize;
    let header_len = if headers {
        number(sizes[0]).ok_or_else(malformed)? as usize
    } else {
        0
    };
    if header_len > total {
        return Err(malformed());
    }
    if total > MAX_MESSAGE {
        return Err(ProtocolError::MessageTooLarge(total));
    }
    let body_start = end + 2;
    if buf.len() < body_start + total + 2 {
        buf.reserve(body_start + total + 2 - buf.len());
        return Ok(None);
    }
    if &buf[body_start + total..body_start + total + 2] != b"\r\n" {
        return Err(malformed());
    }
    let subject_range = offset(buf, subject);
    let reply_range = if with_reply {
        offset(buf, fields[3])
    } else {
        0..0
    };
    let mut frame = buf.split_to(body_start + total + 2).freeze();
    let subject = frame.slice(subject_range);
    let reply = frame.slice(reply_range);
    frame.advance(body_start);
    let status = status(&frame[..header_len]);
    let headers = frame.slice(..header_len);
    let payload = frame.slice(header_len..total);
    Ok(Some(ServerOp::Msg(Msg {
        subject,
        sid,
        reply,
        status,
        headers,
        payload,
    })))
}

/// The text after a status code on a header block's first line (`Consumer
/// Deleted` in `NATS/1.0 409 Consumer Deleted`), empty when there is none.
pub fn status_text(headers: &[u8]) -> &[u8] {
    let Some(first) = headers.split(|b| *b == b'\r').next() else {
        return &[];
    };
    let rest = trim(first.strip_prefix(b"NATS/1.0").unwrap_or_default());
    match rest.iter().position(|b| *b == b' ') {
        Some(at) => trim(&rest[at..]),
        None => &[],
    }
}

/// The first value of header `name` (any case) in a header block.
pub fn header<'a>(headers: &'a [u8], name: &str) -> Option<&'a [u8]> {
    headers.split(|b| *b == b'\n').skip(1).find_map(|line| {
        let at = line.iter().position(|b| *b == b':')?;
        line[..at]
            .eq_ignore_ascii_case(name.as_bytes())
            .then(|| trim(&line[at + 1..]))
    })
}

/// The status code of a header block's first line, `NATS/1.0 <code> [text]`.
pub(crate) fn status(headers: &[u8]) -> Option<u16> {
    let first = headers.split(|b| *b == b'\r').next()?;
    let rest = first.strip_prefix(b"NATS/1.0")?;
    let code = trim(rest).split(|b| *b == b' ').next()?;
    std::str::from_utf8(code).ok()?.parse().ok()
}

fn number(text: &[u8]) -> Option<u64> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

fn trim(text: &[u8]) -> &[u8] {
    let start = text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(text.len());
    let end = text
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &text[start..end]
}

/// Where `part` (a slice of `whole`) sits in it.
fn offset(whole: &[u8], part: &[u8]) -> std::ops::Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

/// A subject that would break the protocol line it is written in.
#[derive(Debug, thiserror::Error)]
#[error("the subject {0:?} is empty or has whitespace or control characters")]
pub struct InvalidSubject(pub String);

/// Appends `HPUB <subject> <reply> <header size> <size>` and the message to `out`;
/// returns the message's size (headers and payload), which the server's
/// `max_payload` bounds. Nothing is appended when an error is returned.
pub fn hpub(
    out: &mut Vec<u8>,
    subject: &str,
    reply: &[u8],
    headers: &Headers,
    payload: &[u8],
) -> Result<usize, InvalidSubject> {
    if !is_token(subject.as_bytes()) {
        return Err(InvalidSubject(subject.to_string()));
    }
    let lines = headers.as_bytes();
    let header_len = b"NATS/1.0\r\n".len() + lines.len() + b"\r\n".len();
    let total = header_len + payload.len();
    out.reserve(subject.len() + reply.len() + 32 + total);
    out.extend_from_slice(b"HPUB ");
    out.extend_from_slice(subject.as_bytes());
    out.push(b' ');
    out.extend_from_slice(reply);
    out.push(b' ');
    write_number(out, header_len as u64);
    out.push(b' ');
    write_number(out, total as u64);
    out.extend_from_slice(b"\r\nNATS/1.0\r\n");
    out.extend_from_slice(lines);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    Ok(total)
}

/// Printable ASCII without whitespace.
fn is_token(text: &[u8]) -> bool {
    !text.is_empty() && text.iter().all(|b| b.is_ascii_graphic())
}

/// Appends `n` in decimal.
pub fn write_number(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    out.extend_from_slice(decimal(&mut digits, n));
}

/// `n` in decimal, in `digits`.
pub fn decimal(digits: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &digits[at..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(wire: &[u8]) -> Vec<ServerOp> {
        let mut buf = BytesMut::from(wire);
        let mut ops = Vec::new();
        while let Some(op) = parse(&mut buf).unwrap() {
            ops.push(op);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        ops
    }

    #[test]
    fn control_lines_are_read_whatever_their_case() {
        let ops = parse_all(b"PING\r\npong\r\n+OK\r\n-ERR 'Stale Connection'\r\n");
        assert_eq!(
            ops,
            [
                ServerOp::Ping,
                ServerOp::Pong,
                ServerOp::Ok,
                ServerOp::Err("Stale Connection".into())
            ]
        );
    }

    #[test]
    fn info_gives_the_limits_the_nonce_and_the_cluster() {
        let ops = parse_all(
            b"INFO {\"server_id\":\"N1\",\"max_payload\":1048576,\"headers\":true,\"nonce\":\"abc\",\"connect_urls\":[\"10.0.0.2:4222\"],\"ldm\":true,\"extra\":1} \r\n",
        );
        let [ServerOp::Info(text)] = &ops[..] else {
            panic!("{ops:?}")
        };
        let info = text.parse().unwrap();
        assert_eq!(info.max_payload, 1_048_576);
        assert!(info.headers && info.ldm && !info.tls_required);
        assert_eq!(info.nonce.as_deref(), Some("abc"));
        assert_eq!(info.connect_urls, ["10.0.0.2:4222"]);
    }

    #[test]
    fn messages_with_and_without_headers_give_their_subject_reply_status_and_payload() {
        let ops = parse_all(
            b"MSG _INBOX.a.7 1 10\r\n{\"seq\":12}\r\nHMSG _INBOX.a.8 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\nHMSG orders.new 1 $JS.ACK.s.c.1.2.3.4.5 18 20\r\nNATS/1.0\r\nA: b\r\n\r\nok\r\n",
        );
        assert_eq!(
            ops,
            [
                ServerOp::Msg(Msg {
                    subject: Bytes::from_static(b"_INBOX.a.7"),
                    sid: 1,
                    reply: Bytes::new(),
                    status: None,
                    headers: Bytes::new(),
                    payload: Bytes::from_static(b"{\"seq\":12}"),
                }),
                ServerOp::Msg(Msg {
                    subject: Bytes::from_static(b"_INBOX.a.8"),
                    sid: 1,
                    reply: Bytes::new(),
                    status: Some(503),
                    headers: Bytes::from_static(b"NATS/1.0 503\r\n\r\n"),
                    payload: Bytes::new(),
                }),
                ServerOp::Msg(Msg {
                    subject: Bytes::from_static(b"orders.new"),
                    sid: 1,
                    reply: Bytes::from_static(b"$JS.ACK.s.c.1.2.3.4.5"),
                    status: None,
                    headers: Bytes::from_static(b"NATS/1.0\r\nA: b\r\n\r\n"),
                    payload: Bytes::from_static(b"ok"),
                }),
            ]
        );
    }

    #[test]
    fn a_status_gives_its_text_and_its_headers() {
        let block = b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 90\r\nnats-pending-bytes:0\r\n\r\n";
        assert_eq!(status(block), Some(408));
        assert_eq!(status_text(block), b"Request Timeout");
        assert_eq!(header(block, "NATS-PENDING-MESSAGES"), Some(&b"90"[..]));
        assert_eq!(header(block, "Nats-Pending-Bytes"), Some(&b"0"[..]));
        assert_eq!(header(block, "Nats-Pin-Id"), None);
        assert_eq!(status_text(b"NATS/1.0 100\r\n\r\n"), b"");
        assert_eq!(status_text(b""), b"");
        // The status line is not a header.
        assert_eq!(header(b"NATS/1.0 409 X: y\r\n\r\n", "NATS/1.0 409 X"), None);
    }

    #[test]
    fn a_message_split_across_reads_is_read_once_complete() {
        let wire = b"HMSG _INBOX.a.1 1 12 21\r\nNATS/1.0\r\n\r\n{\"seq\":1}\r\nPING\r\n";
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut ops = Vec::new();
            while let Some(op) = parse(&mut buf).unwrap() {
                ops.push(op);
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(op) = parse(&mut buf).unwrap() {
                ops.push(op);
            }
            assert_eq!(ops.len(), 2, "cut at {cut}: {ops:?}");
            assert!(matches!(&ops[0], ServerOp::Msg(m) if m.payload == "{\"seq\":1}"));
            assert_eq!(ops[1], ServerOp::Ping);
        }
    }

    #[test]
    fn broken_input_is_an_error_not_a_guess() {
        for wire in [
            &b"MSG a 1\r\n"[..],
            b"MSG a x 2\r\nab\r\n",
            b"HMSG a 1 5 3\r\nabc\r\n",
            b"MSG a 1 2\r\nabcd\r\n",
            b"HELLO\r\n",
            b"HMSG a 1 r 2 2 9\r\nab\r\n",
        ] {
            let mut buf = BytesMut::from(wire);
            assert!(
                parse(&mut buf).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let mut long = BytesMut::from(&vec![b'I'; MAX_CONTROL_LINE + 1][..]);
        assert!(matches!(parse(&mut long), Err(ProtocolError::LineTooLong)));
        let mut huge = BytesMut::from(&b"MSG a 1 999999999\r\n"[..]);
        assert!(matches!(
            parse(&mut huge),
            Err(ProtocolError::MessageTooLarge(_))
        ));
    }

    #[test]
    fn a_publish_is_written_with_its_headers_and_sizes() {
        let mut headers = Headers::new();
        headers.append("Fanout-Event-Id", "e1").unwrap();
        let mut out = Vec::new();
        let size = hpub(&mut out, "in.orders", b"_INBOX.x.5", &headers, b"{}").unwrap();
        let expected =
            b"HPUB in.orders _INBOX.x.5 33 35\r\nNATS/1.0\r\nFanout-Event-Id: e1\r\n\r\n{}\r\n";
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(expected)
        );
        assert_eq!(size, 35);
    }

    #[test]
    fn a_subject_that_would_break_the_line_is_refused() {
        let mut out = Vec::new();
        let plain = Headers::new();
        for subject in ["", "in orders", "in.orders\r\nPUB x 1"] {
            assert!(
                hpub(&mut out, subject, b"r", &plain, b"").is_err(),
                "{subject:?}"
            );
        }
        assert!(out.is_empty());
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for n in [0, 7, 10, 255, 1_048_576, u64::MAX] {
            let mut out = Vec::new();
            write_number(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }
}
