//! A fake HTTP service on 127.0.0.1 that answers every request with one canned response,
//! counts the connections it was sent and keeps the requests: the node-local service an
//! attacker would aim at, a store that redirects or leaks a body, Google's STS, or the
//! Kubernetes API.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A running fake service.
pub struct Fake {
    /// `http://127.0.0.1:port`.
    pub endpoint: String,
    /// Its port.
    pub port: u16,
    connections: Arc<AtomicUsize>,
    requests: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Fake {
    /// Answer every request with `status` (e.g. "307 Temporary Redirect"), `headers` (each
    /// "Name: value") and `body`.
    pub fn start(status: &str, headers: &[&str], body: &str) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections: Arc<AtomicUsize> = Arc::default();
        let count = connections.clone();
        let requests: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let kept = requests.clone();
        let mut response = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for h in headers {
            response.push_str(h);
            response.push_str("\r\n");
        }
        response.push_str("\r\n");
        response.push_str(body);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                count.fetch_add(1, Ordering::SeqCst);
                kept.lock().unwrap().push(read_request(&mut conn));
                let _ = conn.write_all(response.as_bytes());
            }
        });
        Fake {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            connections,
            requests,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The requests so far (head and body, as text).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// One request: its head, then as much body as its Content-Length says.
fn read_request(conn: &mut std::net::TcpStream) -> String {
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = conn.read(&mut chunk) {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                break;
            }
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A store on 127.0.0.1 that lists one object, `big` (`size` bytes), and answers every
/// ranged GET of it with `sent` bytes, far more than asked: with a length header when
/// `declared`, else chunked until the client hangs up. Counts the body bytes it wrote.
pub struct Greedy {
    /// `http://127.0.0.1:port`.
    pub endpoint: String,
    written: Arc<AtomicUsize>,
}

impl Greedy {
    pub fn start(size: u64, sent: u64, declared: bool) -> Greedy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let written: Arc<AtomicUsize> = Arc::default();
        let count = written.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let count = count.clone();
                std::thread::spawn(move || {
                    loop {
                        let head = read_request(&mut conn);
                        if head.is_empty() {
                            return;
                        }
                        let first = head.lines().next().unwrap_or_default().to_string();
                        if first.starts_with("GET") && first.contains("list-type=2") {
                            let xml = format!(
                                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult>\
                                 <Contents><Key>g/big</Key><Size>{size}</Size><ETag>\"e\"</ETag>\
                                 <LastModified>2026-01-01T00:00:00.000Z</LastModified></Contents>\
                                 <IsTruncated>false</IsTruncated></ListBucketResult>"
                            );
                            let r = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{xml}",
                                xml.len()
                            );
                            if conn.write_all(r.as_bytes()).is_err() {
                                return;
                            }
                        } else if first.starts_with("HEAD") {
                            let r = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nETag: \"e\"\r\n\
                                 Last-Modified: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n"
                            );
                            if conn.write_all(r.as_bytes()).is_err() {
                                return;
                            }
                        } else if first.starts_with("GET") {
                            let head = if declared {
                                format!(
                                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {sent}\r\nETag: \"e\"\r\n\r\n"
                                )
                            } else {
                                "HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\nETag: \"e\"\r\n\r\n"
                                    .to_string()
                            };
                            if conn.write_all(head.as_bytes()).is_err() {
                                return;
                            }
                            let block = vec![b'z'; 1 << 20];
                            let mut left = sent;
                            while left > 0 {
                                let n = (block.len() as u64).min(left) as usize;
                                let ok = if declared {
                                    conn.write_all(&block[..n])
                                } else {
                                    conn.write_all(format!("{n:x}\r\n").as_bytes())
                                        .and_then(|_| conn.write_all(&block[..n]))
                                        .and_then(|_| conn.write_all(b"\r\n"))
                                };
                                if ok.is_err() {
                                    return;
                                }
                                count.fetch_add(n, Ordering::SeqCst);
                                left -= n as u64;
                            }
                            if !declared && conn.write_all(b"0\r\n\r\n").is_err() {
                                return;
                            }
                        } else {
                            let _ = conn
                                .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
                            return;
                        }
                    }
                });
            }
        });
        Greedy {
            endpoint: format!("http://127.0.0.1:{port}"),
            written,
        }
    }

    /// Body bytes written so far.
    pub fn written(&self) -> usize {
        self.written.load(Ordering::SeqCst)
    }
}
