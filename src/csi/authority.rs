//! Interoperability with gRPC clients that send a unix socket's path as the HTTP/2
//! `:authority` (kubelet before 1.26, whose grpc-go dials the bare path; grpc-java): h2
//! refuses such requests with PROTOCOL_ERROR. Every accepted connection passes through a
//! rewriter that replaces each literal `:authority` value the client sends with `localhost`
//! (meaningless on a unix socket anyway); everything else is copied byte for byte.
//!
//! The rewrite is safe for HPACK's dynamic table: a rewritten entry is never larger than the
//! client's, so the server evicts no entry the client may still reference by index.

use std::pin::Pin;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::UnixListener;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE's initial value).
const MAX_FRAME: usize = 16_384;
/// Frames larger than this are not buffered: the rewriter passes the rest through.
const MAX_BUFFERED: usize = 1 << 20;
const AUTHORITY: &[u8] = b"localhost";

/// Incoming connections of `listener`, each behind the `:authority` rewriter.
pub fn incoming(
    listener: UnixListener,
) -> Pin<Box<dyn Stream<Item = std::io::Result<DuplexStream>> + Send>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let conn = match accepted {
                Ok((client, _)) => {
                    let (ours, server) = tokio::io::duplex(64 * 1024);
                    tokio::spawn(pump(client, ours));
                    Ok(server)
                }
                Err(e) => Err(e),
            };
            if tx.send(conn).await.is_err() {
                return;
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// Copy `client` to `server` through the rewriter, and `server` back to `client` as is.
async fn pump(client: tokio::net::UnixStream, server: DuplexStream) {
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = tokio::io::split(server);
    let up = async {
        let mut rewriter = Rewriter::default();
        let mut buf = vec![0u8; 16 * 1024];
        let mut out = Vec::new();
        loop {
            let n = client_rd.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            out.clear();
            rewriter.feed(&buf[..n], &mut out);
            server_wr.write_all(&out).await?;
        }
        server_wr.shutdown().await
    };
    let down = async {
        tokio::io::copy(&mut server_rd, &mut client_wr).await?;
        client_wr.shutdown().await
    };
    // The server closing ends the connection; the client closing its side still lets the
    // server's answers through.
    tokio::pin!(up, down);
    tokio::select! {
        _ = &mut down => {}
        _ = &mut up => {
            let _ = down.await;
        }
    }
}

#[derive(Default, PartialEq)]
enum Phase {
    #[default]
    Preface,
    Frames,
    /// Not HTTP/2 with prior knowledge, or a frame too large to buffer: copy as is.
    Passthrough,
}

/// A header block split over HEADERS and CONTINUATION frames, being collected.
struct Pending {
    stream: [u8; 4],
    flags: u8,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

/// The client-to-server byte stream rewriter.
#[derive(Default)]
pub struct Rewriter {
    phase: Phase,
    buf: Vec<u8>,
    pending: Option<Pending>,
}

impl Rewriter {
    /// Consume `input`, appending what can be sent on to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.phase == Phase::Passthrough {
            out.extend_from_slice(input);
            return;
        }
        self.buf.extend_from_slice(input);
        loop {
            match self.phase {
                Phase::Passthrough => {
                    out.append(&mut self.buf);
                    return;
                }
                Phase::Preface => {
                    let n = self.buf.len().min(PREFACE.len());
                    if self.buf[..n] != PREFACE[..n] {
                        self.phase = Phase::Passthrough;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return;
                    }
                    out.extend_from_slice(PREFACE);
                    self.buf.drain(..PREFACE.len());
                    self.phase = Phase::Frames;
                }
                Phase::Frames => {
                    if self.buf.len() < 9 {
                        return;
                    }
                    let len =
                        u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                    if len > MAX_BUFFERED {
                        self.flush_pending(out);
                        self.phase = Phase::Passthrough;
                        continue;
                    }
                    if self.buf.len() < 9 + len {
                        return;
                    }
                    let frame: Vec<u8> = self.buf.drain(..9 + len).collect();
                    self.frame(&frame, out);
                }
            }
        }
    }

    fn frame(&mut self, frame: &[u8], out: &mut Vec<u8>) {
        let (kind, flags) = (frame[3], frame[4]);
        let stream: [u8; 4] = frame[5..9].try_into().expect("4 bytes");
        let payload = &frame[9..];
        match kind {
            HEADERS => {
                self.flush_pending(out);
                let Some((priority, fragment)) = split_headers(flags, payload) else {
                    out.extend_from_slice(frame);
                    return;
                };
                self.pending = Some(Pending {
                    stream,
                    flags: flags & !PADDED,
                    priority,
                    block: fragment.to_vec(),
                });
            }
            CONTINUATION if self.pending.as_ref().is_some_and(|p| p.stream == stream) => {
                if let Some(p) = &mut self.pending {
                    p.block.extend_from_slice(payload);
                    p.flags |= flags & END_HEADERS;
                }
            }
            _ => {
                self.flush_pending(out);
                out.extend_from_slice(frame);
                return;
            }
        }
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.flags & END_HEADERS != 0)
        {
            self.flush_pending(out);
        }
    }

    /// Send the collected header block, rewritten, as HEADERS (+ CONTINUATION) frames.
    fn flush_pending(&mut self, out: &mut Vec<u8>) {
        let Some(p) = self.pending.take() else {
            return;
        };
        let block = rewrite_block(&p.block).unwrap_or(p.block);
        let complete = p.flags & END_HEADERS != 0;
        let mut first = Vec::with_capacity(5 + block.len().min(MAX_FRAME));
        if let Some(pri) = p.priority {
            first.extend_from_slice(&pri);
        }
        let take = block.len().min(MAX_FRAME - first.len());
        first.extend_from_slice(&block[..take]);
        let mut rest = &block[take..];
        let last = rest.is_empty();
        let flags = (p.flags & !END_HEADERS) | if last && complete { END_HEADERS } else { 0 };
        put_frame(out, HEADERS, flags, p.stream, &first);
        while !rest.is_empty() {
            let take = rest.len().min(MAX_FRAME);
            let last = take == rest.len();
            let flags = if last && complete { END_HEADERS } else { 0 };
            put_frame(out, CONTINUATION, flags, p.stream, &rest[..take]);
            rest = &rest[take..];
        }
    }
}

fn put_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: [u8; 4], payload: &[u8]) {
    let len = (payload.len() as u32).to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream);
    out.extend_from_slice(payload);
}

/// A HEADERS payload's priority fields and header block fragment (padding removed).
fn split_headers(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut p = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        pad = *p.first()? as usize;
        p = &p[1..];
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        priority = Some(p.get(..5)?.try_into().ok()?);
        p = &p[5..];
    }
    let end = p.len().checked_sub(pad)?;
    Some((priority, &p[..end]))
}

/// An HPACK integer with an `n`-bit prefix at `block[*pos]` (RFC 7541, 5.1).
fn integer(block: &[u8], pos: &mut usize, n: u32) -> Option<usize> {
    let max = (1usize << n) - 1;
    let mut value = (*block.get(*pos)? as usize) & max;
    *pos += 1;
    if value < max {
        return Some(value);
    }
    let mut shift = 0;
    loop {
        let b = *block.get(*pos)?;
        *pos += 1;
        value = value.checked_add(((b & 0x7f) as usize).checked_shl(shift)?)?;
        shift += 7;
        if b & 0x80 == 0 || shift > 28 {
            return (b & 0x80 == 0).then_some(value);
        }
    }
}

/// A string literal at `block[*pos]`: (Huffman-coded, bytes) (RFC 7541, 5.2).
fn string<'a>(block: &'a [u8], pos: &mut usize) -> Option<(bool, &'a [u8])> {
    let huffman = *block.get(*pos)? & 0x80 != 0;
    let len = integer(block, pos, 7)?;
    let s = block.get(*pos..pos.checked_add(len)?)?;
    *pos += len;
    Some((huffman, s))
}

/// The header block with every literal `:authority` value replaced by `localhost`; None if
/// the block is malformed (it is then sent as is, for h2 to judge).
pub fn rewrite_block(block: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len());
    let mut pos = 0;
    while pos < block.len() {
        let start = pos;
        let b = block[pos];
        let prefix = match b {
            _ if b & 0x80 != 0 => 7,    // indexed field
            _ if b & 0xc0 == 0x40 => 6, // literal, incremental indexing
            _ if b & 0xe0 == 0x20 => {
                // dynamic table size update
                integer(block, &mut pos, 5)?;
                out.extend_from_slice(&block[start..pos]);
                continue;
            }
            _ => 4, // literal without indexing / never indexed
        };
        let index = integer(block, &mut pos, prefix)?;
        if prefix == 7 {
            out.extend_from_slice(&block[start..pos]);
            continue;
        }
        let is_authority = if index == 0 {
            let (huffman, name) = string(block, &mut pos)?;
            !huffman && name == b":authority"
        } else {
            index == 1 // the static table's :authority
        };
        let value_start = pos;
        string(block, &mut pos)?;
        if is_authority {
            out.extend_from_slice(&block[start..value_start]);
            out.push(AUTHORITY.len() as u8);
            out.extend_from_slice(AUTHORITY);
        } else {
            out.extend_from_slice(&block[start..pos]);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &[u8]) -> Vec<u8> {
        let mut v = vec![s.len() as u8];
        v.extend_from_slice(s);
        v
    }

    /// :method POST, :scheme http, :path (literal, indexed name), :authority (literal with
    /// incremental indexing, static name), then a new-name literal.
    fn block(authority: &[u8]) -> Vec<u8> {
        let mut b = vec![0x83, 0x86, 0x44];
        b.extend(lit(b"/csi.v1.Identity/GetPluginInfo"));
        b.push(0x41);
        b.extend(lit(authority));
        b.push(0x40);
        b.extend(lit(b"te"));
        b.extend(lit(b"trailers"));
        b
    }

    #[test]
    fn rewrites_a_socket_path_authority_and_keeps_the_rest() {
        assert_eq!(
            rewrite_block(&block(b"/var/lib/kubelet/plugins_registry/x.sock")).unwrap(),
            block(b"localhost")
        );
        // Without indexing, by literal name, and a long (multi-byte length) value.
        let mut b = vec![0x00];
        b.extend(lit(b":authority"));
        let long = vec![b'/'; 300];
        b.extend([0x7f, 0xad, 0x01]); // 300 = 127 + 45 + 128
        b.extend(&long);
        let mut want = vec![0x00];
        want.extend(lit(b":authority"));
        want.extend(lit(b"localhost"));
        assert_eq!(rewrite_block(&b).unwrap(), want);
        // Indexed fields and size updates are copied.
        assert_eq!(
            rewrite_block(&[0x3f, 0xe1, 0x1f, 0xbe]).unwrap(),
            [0x3f, 0xe1, 0x1f, 0xbe]
        );
        assert!(
            rewrite_block(&[0x41, 0x05, b'a']).is_none(),
            "truncated value"
        );
    }

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        put_frame(&mut v, kind, flags, [0, 0, 0, 1], payload);
        v
    }

    #[test]
    fn rewrites_across_padding_continuations_and_split_reads() {
        let path = block(b"/run/csi/csi.sock");
        let (a, b) = path.split_at(10);
        let mut headers = vec![3u8]; // pad length
        headers.extend_from_slice(a);
        headers.extend([0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, &[])); // SETTINGS
        input.extend(frame(HEADERS, PADDED, &headers));
        input.extend(frame(CONTINUATION, END_HEADERS, b));
        input.extend(frame(0x0, 0x1, b"\0\0\0\0\0")); // DATA, END_STREAM

        let mut want = PREFACE.to_vec();
        want.extend(frame(0x4, 0, &[]));
        want.extend(frame(HEADERS, END_HEADERS, &block(b"localhost")));
        want.extend(frame(0x0, 0x1, b"\0\0\0\0\0"));

        for chunk in [1, 7, 4096] {
            let mut r = Rewriter::default();
            let mut out = Vec::new();
            for piece in input.chunks(chunk) {
                r.feed(piece, &mut out);
            }
            assert_eq!(out, want, "fed {chunk} bytes at a time");
        }
    }

    #[test]
    fn passes_through_what_is_not_http2() {
        let mut r = Rewriter::default();
        let mut out = Vec::new();
        r.feed(b"GET / HTTP/1.1\r\n\r\n", &mut out);
        r.feed(b"more", &mut out);
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\nmore");
    }
}
