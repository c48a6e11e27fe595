//! Reading a response body only as far as it is useful: the status already decided
//! the verdict, the body is kept for the dead letter (errors) or read to its end so
//! the connection can carry the next request (successes).

use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;

/// The start of a response body.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Limited {
    /// At most the limit's worth of bytes.
    pub bytes: Vec<u8>,
    /// The body was read to its end, so an HTTP/1.1 connection is free for the next
    /// request; a body cut short leaves the connection to be closed.
    pub ended: bool,
}

/// Reads up to `limit` bytes of `body`. Trailers are ignored.
pub async fn read_limited<B>(body: &mut B, limit: usize) -> Result<Limited, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    // Most answers to a webhook are empty: no buffer is allocated for them.
    let mut bytes = Vec::new();
    loop {
        if body.is_end_stream() {
            return Ok(Limited { bytes, ended: true });
        }
        if bytes.len() >= limit {
            return Ok(Limited {
                bytes,
                ended: false,
            });
        }
        let Some(frame) = body.frame().await else {
            return Ok(Limited { bytes, ended: true });
        };
        if let Ok(data) = frame?.into_data() {
            let room = limit - bytes.len();
            bytes.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures::stream;
    use http_body::Frame;
    use http_body_util::{Empty, Full, StreamBody};

    use super::*;

    fn chunks(
        parts: &[&'static str],
    ) -> StreamBody<impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>> + Unpin> {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(stream::iter(frames))
    }

    #[tokio::test]
    async fn an_empty_body_ends_at_once_without_a_buffer() {
        let limited = read_limited(&mut Empty::<Bytes>::new(), 1024)
            .await
            .unwrap();
        assert_eq!(
            limited,
            Limited {
                bytes: Vec::new(),
                ended: true
            }
        );
        assert_eq!(limited.bytes.capacity(), 0);
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_to_its_end() {
        let limited = read_limited(&mut chunks(&["he", "llo"]), 1024)
            .await
            .unwrap();
        assert_eq!(limited.bytes, b"hello");
        assert!(limited.ended);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_cut_and_not_ended() {
        let limited = read_limited(&mut chunks(&["abc", "def", "ghi"]), 5)
            .await
            .unwrap();
        assert_eq!(limited.bytes, b"abcde");
        assert!(!limited.ended);
        let limited = read_limited(&mut Full::new(Bytes::from_static(b"0123456789")), 4)
            .await
            .unwrap();
        assert_eq!(limited.bytes, b"0123");
    }

    #[tokio::test]
    async fn a_body_exactly_at_the_limit_counts_as_ended_when_nothing_follows() {
        let limited = read_limited(&mut Full::new(Bytes::from_static(b"12345")), 5)
            .await
            .unwrap();
        assert_eq!(limited.bytes, b"12345");
        assert!(limited.ended);
    }
}
