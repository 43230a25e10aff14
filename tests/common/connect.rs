//! An HTTP CONNECT proxy on 127.0.0.1 (as a corporate egress proxy): it tunnels to the host
//! a client names and notes every tunnel it opened.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running CONNECT proxy.
pub struct ConnectProxy {
    /// `http://127.0.0.1:port`.
    pub url: String,
    tunnels: Arc<Mutex<Vec<String>>>,
}

impl ConnectProxy {
    /// Start one on a free loopback port, in a thread of its own.
    pub fn start() -> ConnectProxy {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", std_listener.local_addr().unwrap());
        let tunnels: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = tunnels.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                while let Ok((client, _)) = listener.accept().await {
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let _ = tunnel(client, seen).await;
                    });
                }
            });
        });
        ConnectProxy { url, tunnels }
    }

    /// The `host:port` of every tunnel opened so far.
    pub fn tunnels(&self) -> Vec<String> {
        self.tunnels.lock().unwrap().clone()
    }
}

async fn tunnel(mut client: TcpStream, seen: Arc<Mutex<Vec<String>>>) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).await? == 0 || head.len() > 8192 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut first = text.split_whitespace();
    let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    if method != "CONNECT" || !target.starts_with("127.0.0.1:") {
        client
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            .await?;
        return Ok(());
    }
    seen.lock().unwrap().push(target.to_string());
    let mut upstream = TcpStream::connect(target).await?;
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
