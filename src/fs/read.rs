//! Reading one open file: a prefetcher that ramps up parallel ranged GETs for sequential
//! reads and fetches only the requested range for random ones.
//!
//! The reader keeps a queue of ranged GETs running ahead of the read position. The window
//! (bytes requested ahead) starts small and doubles on every sequential read, up to
//! `max_window`; a read outside the queue cancels it and is served by one exact GET. The
//! last two consumed parts are kept so that slightly out-of-order kernel reads are served
//! from memory. Memory per reader is bounded by `max_window + 2 * part_size`; queued parts
//! also count against the mount's memory budget, and prefetching stops when it is spent.

use std::collections::VecDeque;

use crate::store::Payload;
use tokio::task::JoinHandle;

use std::sync::Arc;

use super::budget::{Budget, Held};
use super::error::{FsError, FsResult};
use super::readcache::{Entry, ReadCache};
use crate::store::SharedBucket;

/// How far around a reader's stream a read still belongs to it: above the kernel's
/// read-ahead (`--read-ahead`, 4 MiB by default).
pub(super) const NEAR: u64 = 8 << 20;

/// Tunables of the prefetcher.
#[derive(Debug, Clone, Copy)]
pub struct ReadConfig {
    /// Size of one ranged GET once the window is open.
    pub part_size: u64,
    /// Window at the start of a sequential stream.
    pub initial_window: u64,
    /// Largest window (bytes requested ahead of the reader).
    pub max_window: u64,
    /// A file of at least this size is read past the kernel's page cache on its first
    /// open (0: never); see [`Opened::direct`](super::Opened::direct).
    pub direct_first_read: u64,
}

impl Default for ReadConfig {
    fn default() -> Self {
        ReadConfig {
            part_size: 8 << 20,
            initial_window: 1 << 20,
            max_window: 32 << 20,
            direct_first_read: 0,
        }
    }
}

struct Part {
    start: u64,
    end: u64,
    task: JoinHandle<FsResult<Payload>>,
    held: Held,
}

/// A consumed part, in the pieces the store sent it in.
struct Ready {
    start: u64,
    data: Payload,
}

impl Ready {
    fn end(&self) -> u64 {
        self.start + self.data.len()
    }
    fn contains(&self, off: u64) -> bool {
        off >= self.start && off < self.end()
    }
}

/// The read state of one open file handle.
pub struct Reader {
    store: SharedBucket,
    key: String,
    size: u64,
    etag: Option<String>,
    cfg: ReadConfig,
    budget: Budget,
    window: u64,
    /// Offset just after the last byte returned.
    next_offset: u64,
    /// Offset where the next prefetch part starts.
    queue_end: u64,
    queue: VecDeque<Part>,
    recent: VecDeque<Ready>,
    /// Number of GET requests sent (tests assert on it).
    pub requests: u64,
    /// The local copy of the object, when the read cache holds (or is loading) it.
    cached: Option<(Arc<ReadCache>, Arc<Entry>)>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        for p in &self.queue {
            p.task.abort();
        }
    }
}

impl Reader {
    /// A reader of `key` (`size` bytes, pinned to `etag` when given).
    pub fn new(
        store: SharedBucket,
        key: String,
        size: u64,
        etag: Option<String>,
        cfg: ReadConfig,
        budget: Budget,
    ) -> Self {
        Reader {
            store,
            key,
            size,
            etag,
            cfg,
            budget,
            window: cfg.initial_window,
            next_offset: 0,
            queue_end: 0,
            queue: VecDeque::new(),
            recent: VecDeque::new(),
            requests: 0,
            cached: None,
        }
    }

    /// Offset just after the last byte returned.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Offset up to which data was asked for ahead of the reads.
    pub fn ahead(&self) -> u64 {
        self.queue_end.max(self.next_offset)
    }

    /// Serve reads from `entry` of the read cache where it holds them.
    pub fn use_cache(&mut self, cache: Arc<ReadCache>, entry: Arc<Entry>) {
        self.cached = Some((cache, entry));
    }

    /// Read up to `len` bytes at `offset`: pieces of the parts the store sent, not joined
    /// (a FUSE reply is written from them as they are).
    pub async fn read(&mut self, offset: u64, len: u32) -> FsResult<Payload> {
        if offset >= self.size || len == 0 {
            return Ok(Payload::new());
        }
        let end = (offset + len as u64).min(self.size);
        if let Some((cache, entry)) = &self.cached
            && let Some(data) = cache.read(entry, offset, end).await
        {
            self.next_offset = end;
            return Ok(Payload::from(data));
        }
        let in_queue = offset >= self.next_offset && offset < self.queue_end;
        let in_recent = self.recent.iter().any(|r| r.contains(offset));
        let sequential = offset == self.next_offset || in_queue || in_recent;
        if !sequential
            && offset < self.next_offset
            && offset + NEAR >= self.next_offset
            && !self.queue.is_empty()
        {
            // A little behind the stream (another handle of the file lagging, pages the
            // kernel dropped): read it aside; the stream goes on where it was. Further back
            // is a new stream.
            return self.read_aside(offset, end).await;
        }
        if !sequential {
            return self.read_random(offset, end).await;
        }
        if self.queue_end < end && self.queue.is_empty() {
            // Start (or restart) the stream at this offset.
            self.queue_end = offset;
        }
        self.fill(offset.max(self.next_offset), false).await;
        let mut out = Payload::new();
        let mut pos = offset;
        while pos < end {
            if let Some(r) = self.recent.iter().find(|r| r.contains(pos)) {
                let to = end.min(r.end());
                out.extend(r.data.slice(pos - r.start..to - r.start));
                pos = to;
                continue;
            }
            // Drop parts wholly before `pos`, then wait for the one holding it.
            while self.queue.front().is_some_and(|p| p.end <= pos) {
                if let Some(p) = self.queue.pop_front() {
                    p.task.abort();
                }
            }
            if self.queue.front().is_none_or(|p| p.start > pos) {
                // Not covered (the queue was cut short): start it here.
                self.abort_queue();
                self.queue_end = pos;
                self.fill(pos, true).await;
            }
            if self.queue.is_empty() {
                self.fill(pos, true).await;
            }
            let part = self.queue.pop_front().expect("fill queued a part");
            let data = match part.task.await {
                Ok(r) => r?,
                Err(e) => return Err(FsError::new(libc::EIO, format!("read task: {e}"))),
            };
            if data.len() != part.end - part.start {
                return Err(FsError::new(
                    libc::EIO,
                    format!(
                        "{:?}: short read at {}: got {} bytes, expected {}",
                        self.key,
                        part.start,
                        data.len(),
                        part.end - part.start
                    ),
                ));
            }
            // Consumed parts leave the budget (at most two are kept per reader), so a reader
            // waiting for the budget holds none of it.
            drop(part.held);
            self.recent.push_back(Ready {
                start: part.start,
                data,
            });
            while self.recent.len() > 2 {
                self.recent.pop_front();
            }
            self.window = (self.window * 2).min(self.cfg.max_window);
            self.fill(pos, false).await;
        }
        self.advance(end).await;
        Ok(out)
    }

    async fn advance(&mut self, end: u64) {
        self.next_offset = self.next_offset.max(end);
        let from = self.next_offset;
        self.fill(from, false).await;
    }

    /// Queue GETs so that `window` bytes after `from` are requested, as far as the memory
    /// budget allows; with `must`, wait for the budget for the first part if none is queued.
    async fn fill(&mut self, from: u64, must: bool) {
        while self.queue_end < self.size && self.queue_end < from + self.window {
            let part = self.cfg.part_size.max(1);
            let chunk = part.min(self.window);
            let start = self.queue_end;
            // Parts end on multiples of the part size, whatever the ramp before them: a store
            // keeps a large object in pieces of about that size, and a range across two of
            // them costs it two (SeaweedFS: 3.2-3.75 CPU-s per 2 GiB aligned, 3.5-4.2 not).
            let end = (start + chunk)
                .min((start / part + 1) * part)
                .min(self.size);
            let held = match self.budget.try_take(end - start) {
                Some(h) => h,
                None if must && self.queue.is_empty() => self.budget.take(end - start).await,
                None => break,
            };
            let store = self.store.clone();
            let key = self.key.clone();
            let etag = self.etag.clone();
            self.requests += 1;
            let task = tokio::spawn(async move {
                store
                    .get_parts(&key, start..end, etag.as_deref())
                    .await
                    .map_err(FsError::from)
            });
            self.queue.push_back(Part {
                start,
                end,
                task,
                held,
            });
            self.queue_end = end;
        }
    }

    fn abort_queue(&mut self) {
        for p in self.queue.drain(..) {
            p.task.abort();
        }
    }

    async fn read_random(&mut self, offset: u64, end: u64) -> FsResult<Payload> {
        self.abort_queue();
        self.window = self.cfg.initial_window;
        let data = self.read_aside(offset, end).await?;
        self.next_offset = end;
        self.queue_end = end;
        Ok(data)
    }

    /// One exact GET of `offset..end`, the stream left as it is.
    async fn read_aside(&mut self, offset: u64, end: u64) -> FsResult<Payload> {
        self.requests += 1;
        let _held = self.budget.take(end - offset).await;
        let data = self
            .store
            .get_parts(&self.key, offset..end, self.etag.as_deref())
            .await?;
        if data.len() != end - offset {
            return Err(FsError::new(
                libc::EIO,
                format!("{:?}: short read at {offset}", self.key),
            ));
        }
        Ok(data)
    }
}
