//! Response bodies, bounded by what was asked: object data by the length of its range,
//! every other answer (listings, errors, STS and token answers, JSON documents) by
//! [`MAX_DOCUMENT`]. A body that says or turns out to be longer is an error as soon as it
//! is known, never buffered: a store (or anything answering in its name) cannot make a
//! mount hold more memory than its requests asked for.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use object_store::client::{HttpError, HttpErrorKind, HttpResponseBody};

use crate::store::Payload;

/// Most bytes of an answer that is not object data.
pub const MAX_DOCUMENT: u64 = 8 << 20;
/// Most bytes of an error answer read (its code is near the start; the rest is dropped).
pub const MAX_ERROR_BODY: u64 = 64 << 10;

/// Why a body was not read whole.
#[derive(Debug)]
pub enum BodyError {
    /// It is (or says it is) longer than `limit`.
    TooLong {
        /// What was allowed.
        limit: u64,
    },
    /// The connection failed while reading.
    Transport(reqwest::Error),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLong { limit } => {
                write!(f, "the answer is longer than the {limit} bytes asked for")
            }
            BodyError::Transport(e) => write!(f, "{e}"),
        }
    }
}

/// Read `resp`'s body: at most `limit` bytes, else [`BodyError::TooLong`] once the length
/// header or the bytes received pass it. The body is kept in the pieces it arrived in (no
/// assembly copy): object data goes on to FUSE replies made of those pieces.
pub async fn read_parts(resp: reqwest::Response, limit: u64) -> Result<Payload, BodyError> {
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(BodyError::TooLong { limit });
    }
    let mut resp = resp;
    let mut parts = Payload::new();
    // Small pieces (a store sending a byte at a time) are joined, so that the pieces of a
    // body number at most about two per PIECE bytes however it was sent.
    let mut small = BytesMut::new();
    let mut len = 0u64;
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Transport)? {
        len += chunk.len() as u64;
        if len > limit {
            return Err(BodyError::TooLong { limit });
        }
        if chunk.len() >= PIECE {
            if !small.is_empty() {
                parts.push(small.split().freeze());
            }
            parts.push(chunk);
        } else {
            small.extend_from_slice(&chunk);
            if small.len() >= PIECE {
                parts.push(small.split().freeze());
            }
        }
    }
    if !small.is_empty() {
        parts.push(small.freeze());
    }
    Ok(parts)
}

/// Pieces of a body smaller than this are joined with their neighbours.
const PIECE: usize = 64 << 10;

/// [`read_parts`] in one buffer (documents, which are parsed whole).
pub async fn read(resp: reqwest::Response, limit: u64) -> Result<Bytes, BodyError> {
    read_parts(resp, limit).await.map(|p| p.to_bytes())
}

/// Read at most `limit` bytes of `resp`'s body and drop the rest (error answers: only their
/// start is looked at).
pub async fn read_start(resp: reqwest::Response, limit: u64) -> Bytes {
    let mut resp = resp;
    let mut buf = BytesMut::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = (limit as usize).saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() as u64 >= limit {
            break;
        }
    }
    buf.freeze()
}

/// The limit of an answer to a request with these headers: the length of its byte range
/// (`Range: bytes=a-b`), else [`MAX_DOCUMENT`].
pub fn limit_of(headers: &http::HeaderMap) -> u64 {
    headers
        .get(http::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?)))
        .filter(|(a, b)| b >= a)
        .map_or(MAX_DOCUMENT, |(a, b)| b - a + 1)
}

/// A response body (of `object_store`'s client) that fails once more than its limit arrives.
pub struct Bounded {
    inner: HttpResponseBody,
    left: u64,
    limit: u64,
}

impl Bounded {
    /// `inner`, allowed `limit` bytes.
    pub fn new(inner: HttpResponseBody, limit: u64) -> Bounded {
        Bounded {
            inner,
            left: limit,
            limit,
        }
    }
}

fn too_long(limit: u64) -> HttpError {
    HttpError::new(
        HttpErrorKind::Decode,
        std::io::Error::other(BodyError::TooLong { limit }.to_string()),
    )
}

impl Body for Bounded {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.left {
                        this.left = 0;
                        return Poll::Ready(Some(Err(too_long(this.limit))));
                    }
                    this.left -= n;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // A lying length header must not size a buffer past the limit.
        let hint = self.inner.size_hint();
        let mut h = SizeHint::new();
        h.set_lower(hint.lower().min(self.left));
        if let Some(u) = hint.upper() {
            h.set_upper(u.min(self.left).max(h.lower()));
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_the_range_asked_for() {
        let mut h = http::HeaderMap::new();
        assert_eq!(limit_of(&h), MAX_DOCUMENT);
        h.insert(http::header::RANGE, "bytes=100-199".parse().unwrap());
        assert_eq!(limit_of(&h), 100);
        h.insert(http::header::RANGE, "bytes=5-".parse().unwrap());
        assert_eq!(limit_of(&h), MAX_DOCUMENT);
        h.insert(http::header::RANGE, "bytes=9-3".parse().unwrap());
        assert_eq!(limit_of(&h), MAX_DOCUMENT);
    }

    /// A server answering every request with `len` bytes, with or without a length header.
    async fn server(len: usize, chunked: bool) -> String {
        server_in(len, chunked, 64 << 10).await
    }

    /// The same, sending `piece` bytes at a time (chunks of that size when `chunked`).
    async fn server_in(len: usize, chunked: bool, piece: usize) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = conn.read(&mut buf).await;
                    let head = if chunked {
                        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_string()
                    } else {
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n")
                    };
                    if conn.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let block: Vec<u8> = (0..piece).map(|i| b'a' + (i % 26) as u8).collect();
                    let mut sent = 0;
                    while sent < len {
                        let n = block.len().min(len - sent);
                        let block = &block[..];
                        let piece = if chunked {
                            let mut p = format!("{n:x}\r\n").into_bytes();
                            p.extend_from_slice(&block[..n]);
                            p.extend_from_slice(b"\r\n");
                            p
                        } else {
                            block[..n].to_vec()
                        };
                        if conn.write_all(&piece).await.is_err() {
                            return;
                        }
                        sent += n;
                    }
                    if chunked {
                        let _ = conn.write_all(b"0\r\n\r\n").await;
                    }
                });
            }
        });
        url
    }

    #[tokio::test]
    async fn a_body_longer_than_asked_is_refused_whether_or_not_it_says_so() {
        crate::store::init_crypto();
        let client = reqwest::Client::new();
        for chunked in [false, true] {
            let url = server(1 << 20, chunked).await;
            let resp = client.get(&url).send().await.unwrap();
            let e = read(resp, 100_000).await.unwrap_err();
            assert!(matches!(e, BodyError::TooLong { limit: 100_000 }), "{e}");
            let resp = client.get(&url).send().await.unwrap();
            assert_eq!(read(resp, 1 << 20).await.unwrap().len(), 1 << 20);
            let resp = client.get(&url).send().await.unwrap();
            assert_eq!(read_start(resp, 1000).await.len(), 1000);
        }
    }

    #[tokio::test]
    async fn a_body_sent_a_byte_at_a_time_is_kept_in_few_pieces() {
        crate::store::init_crypto();
        let client = reqwest::Client::new();
        let len = 300_000;
        let url = server_in(len, true, 1).await;
        let resp = client.get(&url).send().await.unwrap();
        let parts = read_parts(resp, len as u64).await.unwrap();
        assert_eq!(parts.len(), len as u64);
        assert!(
            parts.chunks().len() <= 2 * len / PIECE + 1,
            "{} pieces",
            parts.chunks().len()
        );
        assert!(parts.to_bytes().iter().all(|&b| b == b'a'));
    }
}
