//! The readers of one read handle, so that reads of one descriptor run in parallel: a read
//! goes to the reader whose stream it continues (waiting for it when that reader is busy:
//! its prefetched parts are the fastest answer), else to a free reader, else to a new one,
//! up to [`MAX_READERS`]; past that it waits for one. Data loaders that share a descriptor
//! among threads (pread of shuffled blocks) so get what a descriptor per thread gets.
//! The readers are shared by every read handle of one version of a file that is open at
//! once (the pods reading one data set through binds of one mount): the kernel's misses of
//! each continue the same streams, so the object is fetched and prefetched once, not once
//! per handle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::store::Payload;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use super::error::FsResult;
use super::read::{NEAR, Reader};
use super::readcache::{Entry, ReadCache};

/// Most readers of one handle (each with its own prefetch, all within the mount's memory
/// budget).
pub const MAX_READERS: usize = 8;

/// One reader and where its stream stands (kept outside its lock, so that a read can tell
/// whether it continues a busy reader's stream).
struct Slot {
    reader: Arc<AsyncMutex<Reader>>,
    /// Offset just after the last byte it returned.
    next: AtomicU64,
    /// Offset up to which it has asked for data ahead.
    ahead: AtomicU64,
}

/// What a new reader of the handle is made from.
pub(super) struct Spec {
    pub store: crate::store::SharedBucket,
    pub key: String,
    pub size: u64,
    pub etag: Option<String>,
    pub cfg: super::read::ReadConfig,
    pub budget: super::budget::Budget,
    pub cached: Option<(Arc<ReadCache>, Arc<Entry>)>,
}

impl Spec {
    fn reader(&self) -> Reader {
        let mut r = Reader::new(
            self.store.clone(),
            self.key.clone(),
            self.size,
            self.etag.clone(),
            self.cfg,
            self.budget.clone(),
        );
        if let Some((cache, entry)) = &self.cached {
            r.use_cache(cache.clone(), entry.clone());
        }
        r
    }
}

/// The readers of one read handle.
pub(super) struct Readers {
    spec: Spec,
    slots: Mutex<Vec<Arc<Slot>>>,
    /// Which busy reader the next read waits for when every reader is busy.
    turn: std::sync::atomic::AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Readers {
    /// The readers of a handle, none made yet.
    pub fn new(spec: Spec) -> Readers {
        Readers {
            spec,
            slots: Mutex::new(Vec::new()),
            turn: Default::default(),
        }
    }

    /// Read up to `len` bytes at `offset`, on the reader [`Readers`] picks.
    pub async fn read(&self, offset: u64, len: u32) -> FsResult<Payload> {
        let (slot, mut reader) = match self.pick(offset, len) {
            Ok(ready) => ready,
            Err(slot) => {
                let guard = slot.reader.clone().lock_owned().await;
                (slot, guard)
            }
        };
        let result = reader.read(offset, len).await;
        slot.next.store(reader.next_offset(), Ordering::Release);
        slot.ahead.store(reader.ahead(), Ordering::Release);
        result
    }

    /// A reader for a read at `offset`: locked when it could be had at once, else the slot
    /// to wait for.
    #[allow(clippy::type_complexity)]
    fn pick(
        &self,
        offset: u64,
        len: u32,
    ) -> Result<(Arc<Slot>, OwnedMutexGuard<Reader>), Arc<Slot>> {
        let mut slots = lock(&self.slots);
        // The stream this read continues, busy or not: at or a little before where the
        // reader stands, or within what it asked for ahead plus the kernel's read-ahead
        // (which sends several requests of one stream at once).
        let continues = |s: &Slot| {
            let next = s.next.load(Ordering::Acquire);
            let ahead = s.ahead.load(Ordering::Acquire).max(next);
            offset.saturating_add(NEAR) >= next && offset <= ahead.saturating_add(NEAR)
        };
        if let Some(s) = slots.iter().find(|s| continues(s)) {
            return match s.reader.clone().try_lock_owned() {
                Ok(g) => Ok((s.clone(), g)),
                Err(_) => Err(s.clone()),
            };
        }
        for s in slots.iter() {
            if let Ok(g) = s.reader.clone().try_lock_owned() {
                return Ok((s.clone(), g));
            }
        }
        if slots.len() < MAX_READERS {
            // Reads just after this one (the kernel's read-ahead) wait for it and continue
            // its stream rather than start readers of their own.
            let slot = Arc::new(Slot {
                reader: Arc::new(AsyncMutex::new(self.spec.reader())),
                next: AtomicU64::new(offset),
                ahead: AtomicU64::new(offset + len as u64 + self.spec.cfg.initial_window),
            });
            let guard = slot
                .reader
                .clone()
                .try_lock_owned()
                .expect("a new reader is free");
            slots.push(slot.clone());
            return Ok((slot, guard));
        }
        // All busy: wait for each in turn.
        let i = self.turn.fetch_add(1, Ordering::Relaxed) % slots.len();
        Err(slots[i].clone())
    }

    /// They read what `spec` reads (the same object version, from the same cache entry).
    pub fn reads_as(&self, spec: &Spec) -> bool {
        let a = &self.spec;
        let same_entry = match (&a.cached, &spec.cached) {
            (None, None) => true,
            (Some((_, x)), Some((_, y))) => Arc::ptr_eq(x, y),
            _ => false,
        };
        a.key == spec.key && a.size == spec.size && a.etag == spec.etag && same_entry
    }

    /// GET requests sent by its readers so far (tests).
    #[cfg(test)]
    pub fn requests(&self) -> u64 {
        lock(&self.slots)
            .iter()
            .filter_map(|s| s.reader.try_lock().ok().map(|r| r.requests))
            .sum()
    }
}
