//! A fault-injecting HTTP proxy on 127.0.0.1 between pail and the S3 test server: it can
//! answer with an error status, reset the connection, delay, or cut a response mid-body,
//! for requests matching a method and a path fragment, a given number of times. It also
//! notes who signed each request, bearer tokens, the web identity tokens sent to an STS
//! behind it and the access keys that STS issued.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What to do with a matching request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status (and an S3-style error body) without forwarding.
    Status(u16),
    /// Close the connection without answering.
    Reset,
    /// Forward after this delay.
    Delay(Duration),
    /// Forward, but pass only this many bytes of the response, then close.
    Cut(usize),
}

#[derive(Debug, Clone)]
struct Rule {
    method: Option<String>,
    path: String,
    fault: Fault,
    times: Option<usize>,
}

/// A running proxy.
#[derive(Clone)]
pub struct Proxy {
    pub endpoint: String,
    rules: Arc<Mutex<Vec<Rule>>>,
    pub hits: Arc<Mutex<usize>>,
    traffic: Arc<Traffic>,
    signers: Arc<Mutex<Vec<String>>>,
    seen: Arc<Seen>,
}

/// Credentials that went through the proxy.
#[derive(Default)]
struct Seen {
    /// `Authorization: Bearer` tokens.
    bearers: Mutex<Vec<String>>,
    /// `WebIdentityToken` of STS requests.
    web_tokens: Mutex<Vec<String>>,
    /// `AccessKeyId`s in responses (what an STS issued).
    issued: Mutex<Vec<String>>,
}

/// Bytes that went through the proxy.
#[derive(Default)]
struct Traffic {
    /// Request bodies sent upstream.
    sent: AtomicU64,
    /// Responses (heads and bodies) sent back.
    received: AtomicU64,
}

impl Proxy {
    /// Start a proxy to `upstream` (`http://host:port`) on a free loopback port, in a thread
    /// of its own.
    pub fn start(upstream: &str) -> Proxy {
        Proxy::start_inner(upstream, false)
    }

    /// The same, but requests reach the upstream with its own `Host` (servers that read the
    /// bucket from the host name, such as fake-gcs-server; breaks SigV4 signatures).
    pub fn start_as_upstream_host(upstream: &str) -> Proxy {
        Proxy::start_inner(upstream, true)
    }

    fn start_inner(upstream: &str, rewrite_host: bool) -> Proxy {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", std_listener.local_addr().unwrap());
        let rules: Arc<Mutex<Vec<Rule>>> = Arc::default();
        let hits: Arc<Mutex<usize>> = Arc::default();
        let traffic: Arc<Traffic> = Arc::default();
        let signers: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen: Arc<Seen> = Arc::default();
        let (r, h, t, k, s) = (
            rules.clone(),
            hits.clone(),
            traffic.clone(),
            signers.clone(),
            seen.clone(),
        );
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    let (r, h, t, k, s, up) = (
                        r.clone(),
                        h.clone(),
                        t.clone(),
                        k.clone(),
                        s.clone(),
                        upstream.clone(),
                    );
                    tokio::spawn(async move {
                        let _ = serve(client, &up, rewrite_host, r, h, t, k, s).await;
                    });
                }
            });
        });
        Proxy {
            endpoint,
            rules,
            hits,
            traffic,
            signers,
            seen,
        }
    }

    /// `Authorization: Bearer` tokens of the requests so far.
    pub fn bearers(&self) -> Vec<String> {
        self.seen.bearers.lock().unwrap().clone()
    }

    /// Web identity tokens sent to the STS behind the proxy so far.
    pub fn web_tokens(&self) -> Vec<String> {
        self.seen.web_tokens.lock().unwrap().clone()
    }

    /// Access key ids the STS behind the proxy issued so far.
    pub fn issued(&self) -> Vec<String> {
        self.seen.issued.lock().unwrap().clone()
    }

    /// The access key ids that signed the requests so far (from `Authorization`), with
    /// `+token` when a session token came along.
    pub fn signers(&self) -> Vec<String> {
        self.signers.lock().unwrap().clone()
    }

    /// Request body bytes sent upstream and response bytes returned, since the last call.
    pub fn take_traffic(&self) -> (u64, u64) {
        (
            self.traffic.sent.swap(0, Ordering::SeqCst),
            self.traffic.received.swap(0, Ordering::SeqCst),
        )
    }

    /// Apply `fault` to requests with `method` (any when `None`) whose path contains `path`,
    /// `times` times (always when `None`).
    pub fn add(&self, method: Option<&str>, path: &str, fault: Fault, times: Option<usize>) {
        self.rules.lock().unwrap().push(Rule {
            method: method.map(str::to_string),
            path: path.to_string(),
            fault,
            times,
        });
    }

    /// Remove every rule.
    pub fn clear(&self) {
        self.rules.lock().unwrap().clear();
    }

    /// Faults injected so far.
    pub fn hits(&self) -> usize {
        *self.hits.lock().unwrap()
    }
}

fn take_fault(rules: &Mutex<Vec<Rule>>, method: &str, path: &str) -> Option<Fault> {
    let mut rules = rules.lock().unwrap();
    let i = rules.iter().position(|r| {
        r.method.as_deref().is_none_or(|m| m == method)
            && path.contains(&r.path)
            && r.times != Some(0)
    })?;
    if let Some(t) = rules[i].times.as_mut() {
        *t -= 1;
    }
    Some(rules[i].fault.clone())
}

async fn read_head(s: &mut TcpStream) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok(Some((buf, rest)));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    mut client: TcpStream,
    upstream: &str,
    rewrite_host: bool,
    rules: Arc<Mutex<Vec<Rule>>>,
    hits: Arc<Mutex<usize>>,
    traffic: Arc<Traffic>,
    signers: Arc<Mutex<Vec<String>>>,
    seen: Arc<Seen>,
) -> std::io::Result<()> {
    loop {
        let Some((head, mut body)) = read_head(&mut client).await? else {
            return Ok(());
        };
        let text = String::from_utf8_lossy(&head).into_owned();
        let mut first = text.split_whitespace();
        let (method, path) = (
            first.next().unwrap_or("").to_string(),
            first.next().unwrap_or("").to_string(),
        );
        let length: usize = text
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while body.len() < length {
            let mut chunk = vec![0u8; (length - body.len()).min(1 << 20)];
            let n = client.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            body.extend_from_slice(&chunk[..n]);
        }
        let header = |name: &str| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        if let Some(auth) = header("authorization")
            && let Some(id) = auth
                .split("Credential=")
                .nth(1)
                .and_then(|c| c.split('/').next())
        {
            let token = header("x-amz-security-token").map_or("", |_| "+token");
            signers.lock().unwrap().push(format!("{id}{token}"));
        }
        if let Some(b) = header("authorization")
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
        {
            seen.bearers.lock().unwrap().push(b.to_string());
        }
        if let Some((_, t)) =
            url::form_urlencoded::parse(&body).find(|(k, _)| k == "WebIdentityToken")
        {
            seen.web_tokens.lock().unwrap().push(t.into_owned());
        }
        let fault = take_fault(&rules, &method, &path);
        if fault.is_some() {
            *hits.lock().unwrap() += 1;
        }
        match fault {
            Some(Fault::Status(code)) => {
                let xml = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{}</Code><Message>injected</Message></Error>",
                    if code == 503 {
                        "SlowDown"
                    } else if code == 403 {
                        "AccessDenied"
                    } else {
                        "InternalError"
                    }
                );
                let resp = format!(
                    "HTTP/1.1 {code} Injected\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{xml}",
                    xml.len()
                );
                client.write_all(resp.as_bytes()).await?;
                continue;
            }
            Some(Fault::Reset) => return Ok(()),
            Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
            _ => {}
        }
        // Forward one request on a fresh upstream connection that closes after the response.
        let mut up = TcpStream::connect(upstream).await?;
        let head_text = text.replacen("\r\n", "\r\nConnection: close\r\n", 1);
        let head_text = head_text
            .lines()
            .filter(|l| !l.to_ascii_lowercase().starts_with("connection: keep-alive"))
            .map(|l| {
                if rewrite_host && l.to_ascii_lowercase().starts_with("host:") {
                    format!("Host: {upstream}")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\r\n");
        up.write_all(head_text.trim_end().as_bytes()).await?;
        up.write_all(b"\r\n\r\n").await?;
        up.write_all(&body).await?;
        traffic.sent.fetch_add(body.len() as u64, Ordering::SeqCst);
        let mut resp = Vec::new();
        up.read_to_end(&mut resp).await?;
        traffic
            .received
            .fetch_add(resp.len() as u64, Ordering::SeqCst);
        let text = String::from_utf8_lossy(&resp);
        for part in text.split("<AccessKeyId>").skip(1) {
            if let Some((id, _)) = part.split_once("</AccessKeyId>") {
                seen.issued.lock().unwrap().push(id.to_string());
            }
        }
        if let Some(Fault::Cut(n)) = fault {
            client.write_all(&resp[..n.min(resp.len())]).await?;
            return Ok(());
        }
        // The upstream closed; tell the client this connection ends with this response.
        if let Some(end) = resp.windows(2).position(|w| w == b"\r\n") {
            client.write_all(&resp[..end + 2]).await?;
            client.write_all(b"Connection: close\r\n").await?;
            client.write_all(&resp[end + 2..]).await?;
        } else {
            client.write_all(&resp).await?;
        }
        return Ok(());
    }
}
