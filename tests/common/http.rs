//! A fake HTTP service on 127.0.0.1 that answers every request with one canned response and
//! counts the connections it was sent: the node-local service an attacker would aim at, or
//! a store that redirects or leaks a body.
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
}

impl Fake {
    /// Answer every request with `status` (e.g. "307 Temporary Redirect"), `headers` (each
    /// "Name: value") and `body`.
    pub fn start(status: &str, headers: &[&str], body: &str) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections: Arc<AtomicUsize> = Arc::default();
        let count = connections.clone();
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
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(response.as_bytes());
            }
        });
        Fake {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            connections,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}
