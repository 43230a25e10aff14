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
