//! The mount process's side of the node cache: one connection to the plugin's socket, made
//! again when it breaks (a plugin restart), and nothing asked for a while when it cannot
//! be made. Every failure reads as "no copy": the mount reads the store.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Challenge, MAX_MESSAGE, Reply, Request, wire};

/// How long an answer may take.
const ANSWER: Duration = Duration::from_secs(5);
/// How long to leave the plugin alone after a failed connection.
const BACKOFF: Duration = Duration::from_secs(5);

/// Connections a mount keeps, so that its readers' opens ask the plugin in parallel (the
/// plugin serves each on a thread of its own).
const CONNECTIONS: usize = 4;

/// One connection, and when connecting last failed.
type Slot = Mutex<(Option<UnixStream>, Option<Instant>)>;

/// A mount's connections to the node cache.
pub struct Client {
    socket: PathBuf,
    /// The first also carries every passthrough registration and its closing (the plugin
    /// keeps them per connection).
    conns: Vec<Slot>,
    next: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("socket", &self.socket)
            .finish()
    }
}

/// A copy the plugin gave.
pub struct Copy {
    /// The file, read-only.
    pub file: std::fs::File,
    /// CRC-32C of each 1 MiB block.
    pub sums: Vec<u32>,
    /// The plugin read it back and checked every block.
    pub verified: bool,
}

/// The plugin's answer to a lookup.
pub enum Lookup {
    /// A copy.
    Copy(Copy),
    /// Another identity stored it: answer this challenge first.
    Prove(Challenge),
}

impl Client {
    /// A client of the plugin's socket at `socket` (connected on first use).
    pub fn new(socket: PathBuf) -> Client {
        Client {
            socket,
            conns: (0..CONNECTIONS).map(|_| Mutex::new((None, None))).collect(),
            next: Default::default(),
        }
    }

    /// A free connection for a lookup or an offer (else the next one in turn).
    fn any(&self) -> std::sync::MutexGuard<'_, (Option<UnixStream>, Option<Instant>)> {
        for slot in &self.conns {
            if let Ok(st) = slot.try_lock() {
                return st;
            }
        }
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.conns.len();
        self.conns[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ask(
        &self,
        req: &Request,
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Option<(Reply, Option<OwnedFd>)> {
        let mut st = match req {
            Request::Backing | Request::Unback { .. } => {
                self.conns[0].lock().unwrap_or_else(|p| p.into_inner())
            }
            _ => self.any(),
        };
        if st.0.is_none() {
            if st.1.is_some_and(|t| t.elapsed() < BACKOFF) {
                return None;
            }
            match UnixStream::connect(&self.socket) {
                Ok(c) => {
                    let _ = c.set_read_timeout(Some(ANSWER));
                    let _ = c.set_write_timeout(Some(ANSWER));
                    st.0 = Some(c);
                    st.1 = None;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "the node cache is not reachable");
                    st.1 = Some(Instant::now());
                    return None;
                }
            }
        }
        let conn = st.0.as_ref()?;
        let body = serde_json::to_vec(req).ok()?;
        let answer = wire::send(conn, &body, fd).and_then(|()| wire::recv(conn, MAX_MESSAGE));
        match answer {
            Ok((body, fd)) => match serde_json::from_slice::<Reply>(&body) {
                Ok(reply) => Some((reply, fd)),
                Err(_) => {
                    st.0 = None;
                    None
                }
            },
            Err(e) => {
                tracing::debug!(error = %e, "the node cache's connection broke");
                st.0 = None;
                None
            }
        }
    }

    /// The node's copy of `key` in version `etag`/`size`; `answer` is a challenge the last
    /// lookup got and the bytes it asked for.
    pub fn get(
        &self,
        key: &str,
        etag: &str,
        size: u64,
        answer: Option<(&Challenge, &[u8])>,
    ) -> Option<Lookup> {
        let req = Request::Get {
            key: key.to_string(),
            etag: etag.to_string(),
            size,
            proof: answer.map(|(c, bytes)| super::proof(&c.nonce, bytes)),
        };
        let (reply, fd) = self.ask(&req, None)?;
        if let Some(c) = reply.challenge {
            return Some(Lookup::Prove(c));
        }
        let file = std::fs::File::from(fd?);
        reply.hit.then_some(Lookup::Copy(Copy {
            file,
            sums: reply.sums,
            verified: reply.verified,
        }))
    }

    /// Have the plugin register `file` as a backing file of this mount's FUSE connection;
    /// its id.
    pub fn back(&self, file: &std::fs::File) -> Option<u32> {
        let (reply, _) = self.ask(&Request::Backing, Some(file.as_fd()))?;
        reply.hit.then_some(reply.backing)
    }

    /// Close a backing file [`Client::back`] registered.
    pub fn unback(&self, id: u32) {
        self.ask(&Request::Unback { id }, None);
    }

    /// Offer the node this mount's copy of `key`; whether it was taken.
    pub fn offer(
        &self,
        key: &str,
        etag: &str,
        size: u64,
        file: &std::fs::File,
        sums: &[u32],
    ) -> bool {
        let req = Request::Put {
            key: key.to_string(),
            etag: etag.to_string(),
            size,
            sums: sums.to_vec(),
        };
        self.ask(&req, Some(file.as_fd()))
            .is_some_and(|(reply, _)| reply.hit)
    }
}
