//! The local disk data cache (`--read-cache`): whole objects kept in unlinked files of the
//! staging space (the same `--max-cache-size`; least recently used entries give way when
//! staging or a new entry needs room), keyed by key, ETag and size, so another version of
//! an object is never served from it. A first open of an uncached object loads it whole with
//! parallel ranged GETs pinned to its ETag; reads of blocks not loaded yet go to the store
//! meanwhile, reads of blocks being loaded wait for them. Every 1 MiB block is checksummed
//! (CRC-32C) when written and verified before it is first served; a block that fails is
//! dropped and read from the store. One entry serves every reader of the mount.
//!
//! Under the CSI node plugin the copies are the node's ([`SharedCopies`]): a mount asks the
//! plugin for a copy before loading an object, and offers the plugin what it loaded.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;

use super::budget::Budget;
use super::cache::{Cache, CacheFile};
use crate::store::SharedBucket;

/// Checksummed unit of an entry.
pub const BLOCK: u64 = 1 << 20;

const MISSING: u8 = 0;
const LOADING: u8 = 1;
const READY: u8 = 2;
const VERIFIED: u8 = 3;

/// One version of one object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version {
    /// Object key.
    pub key: String,
    /// Its ETag.
    pub etag: String,
    /// Its size.
    pub size: u64,
}

/// The node's store of verified local copies, shared by the mounts of a node (the CSI node
/// plugin's): a mount asks it before loading an object, and offers it each object it loaded.
pub trait SharedCopies: Send + Sync {
    /// A read-only copy of `v` with its block checksums, if the node has one this mount may
    /// be given; or the proof the node asks first (a copy another identity stored), which
    /// the mount answers by asking again with the bytes of that range, read from the store
    /// with its own credentials.
    fn get(&self, v: &Version, answer: Option<(&Challenge, &[u8])>) -> NodeLookup;
    /// Offer the loaded and verified copy of `v` held in `file`, with its block checksums.
    fn offer(&self, v: &Version, file: &std::fs::File, sums: &[u32]);
    /// Register `file` as a backing file of this mount's FUSE connection (passthrough, for
    /// a mount without CAP_SYS_ADMIN); its id.
    fn back(&self, _file: &std::fs::File) -> Option<u32> {
        None
    }
    /// Close a backing file [`SharedCopies::back`] registered.
    fn unback(&self, _id: u32) {}
}

/// A copy the node gave.
#[derive(Debug)]
pub struct SharedCopy {
    /// The file, opened read-only.
    pub file: std::fs::File,
    /// CRC-32C of each block.
    pub sums: Vec<u32>,
    /// The node read every block back and found it matching its sum: the kernel may read
    /// the file directly (passthrough) from the first open. Otherwise the mount verifies
    /// each block before it serves it.
    pub verified: bool,
}

/// What the node asks before it gives a copy another identity stored: the bytes `range` of
/// the object, which only a mount that may read the object (in that version) can fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The bytes asked for (at most [`MAX_CHALLENGE`]).
    pub range: std::ops::Range<u64>,
    /// The node's token for this challenge.
    pub nonce: String,
}

/// The largest range a node may ask a mount to fetch as its proof.
pub const MAX_CHALLENGE: u64 = 64 << 10;

/// The node's answer to a lookup.
#[derive(Debug)]
pub enum NodeLookup {
    /// No copy this mount may be given.
    Miss,
    /// A copy.
    Copy(SharedCopy),
    /// Prove first.
    Prove(Challenge),
}

/// The node's copies, as the file system's settings hold them.
#[derive(Clone)]
pub struct SharedCopiesRef(pub Arc<dyn SharedCopies>);

impl std::fmt::Debug for SharedCopiesRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedCopies")
    }
}

/// Copies of the node held open by one mount, at most (each holds a descriptor).
const SHARED_HELD: usize = 4096;

/// A cached object.
pub struct Entry {
    version: Version,
    file: CacheFile,
    states: Vec<AtomicU8>,
    sums: Vec<AtomicU32>,
    changed: tokio::sync::Notify,
    /// The entry stopped loading (an error, a changed object, evicted).
    stopped: AtomicBool,
    /// The load task (and its verification pass) is over.
    settled: AtomicBool,
    last_used: AtomicU64,
    /// The parts loaded last, still in memory: a reader following the load is served from
    /// them, not from the file.
    fresh: Mutex<std::collections::VecDeque<(u64, Bytes)>>,
    /// The node's copy (not this mount's staging space, never offered back).
    from_node: bool,
}

/// Loaded parts kept in memory per entry.
const FRESH: usize = 6;

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

fn crc(data: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32
}

impl Entry {
    fn blocks(&self, off: u64, end: u64) -> std::ops::Range<usize> {
        (off / BLOCK) as usize..end.div_ceil(BLOCK) as usize
    }

    fn state(&self, b: usize) -> u8 {
        self.states[b].load(Ordering::Acquire)
    }

    /// Every block loaded and verified: the file may be read by the kernel directly.
    pub fn is_verified(&self) -> bool {
        (0..self.states.len()).all(|b| self.state(b) == VERIFIED)
    }

    /// The load is over: every block is in its final state until something happens to it.
    pub fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    /// It is the node's copy (tests).
    #[cfg(test)]
    pub fn is_from_node(&self) -> bool {
        self.from_node
    }

    /// The file holding the object.
    pub fn file(&self) -> &std::fs::File {
        &self.file.file
    }

    /// Verify the block `b` read as `data`; drop it when it does not match.
    fn verify(&self, b: usize, data: &[u8]) -> bool {
        if self.sums[b].load(Ordering::Acquire) == crc(data) {
            let _ = self.states[b].compare_exchange(
                READY,
                VERIFIED,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            true
        } else {
            tracing::warn!(key = %self.version.key, block = b, "a read-cache block failed its checksum; reading it from the store");
            self.states[b].store(MISSING, Ordering::Release);
            false
        }
    }

    /// Read and verify every block loaded and not verified yet.
    fn verify_all(&self) {
        let mut buf = vec![0u8; BLOCK as usize];
        for b in 0..self.states.len() {
            if self.state(b) != READY {
                continue;
            }
            let n = self.block_len(b);
            if self
                .file()
                .read_exact_at(&mut buf[..n], b as u64 * BLOCK)
                .is_err()
            {
                self.states[b].store(MISSING, Ordering::Release);
                continue;
            }
            self.verify(b, &buf[..n]);
        }
    }

    fn block_len(&self, b: usize) -> usize {
        let start = b as u64 * BLOCK;
        (self.version.size - start).min(BLOCK) as usize
    }
}

/// The cache of one mount.
pub struct ReadCache {
    cache: Arc<Cache>,
    store: SharedBucket,
    budget: Budget,
    part_size: u64,
    concurrency: usize,
    entries: Mutex<HashMap<Version, Arc<Entry>>>,
    tick: AtomicU64,
    shared: Option<Arc<dyn SharedCopies>>,
    /// Reads answered from the cache.
    pub hits: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ReadCache {
    /// A cache in `cache`'s space, loading with `concurrency` GETs of `part_size`.
    pub fn new(
        cache: Arc<Cache>,
        store: SharedBucket,
        budget: Budget,
        part_size: u64,
        concurrency: usize,
        shared: Option<Arc<dyn SharedCopies>>,
    ) -> ReadCache {
        ReadCache {
            cache,
            store,
            budget,
            part_size: part_size.max(BLOCK) / BLOCK * BLOCK,
            concurrency: concurrency.max(1),
            entries: Mutex::new(HashMap::new()),
            tick: AtomicU64::new(0),
            shared,
            hits: AtomicU64::new(0),
        }
    }

    fn new_entry(version: Version, file: CacheFile, sums: Vec<u32>, now: u64) -> Entry {
        let blocks = version.size.div_ceil(BLOCK) as usize;
        let from_node = !sums.is_empty();
        let state = if from_node { READY } else { MISSING };
        Entry {
            version,
            file,
            states: (0..blocks).map(|_| AtomicU8::new(state)).collect(),
            sums: if from_node {
                sums.into_iter().map(AtomicU32::new).collect()
            } else {
                (0..blocks).map(|_| AtomicU32::new(0)).collect()
            },
            changed: tokio::sync::Notify::new(),
            stopped: AtomicBool::new(false),
            settled: AtomicBool::new(false),
            last_used: AtomicU64::new(now),
            fresh: Mutex::new(std::collections::VecDeque::new()),
            from_node,
        }
    }

    /// The node's copy of `version`, when it has one this mount may read.
    async fn node_copy(
        &self,
        shared: Arc<dyn SharedCopies>,
        version: &Version,
        now: u64,
    ) -> Option<Arc<Entry>> {
        let ask = {
            let shared = shared.clone();
            let v = version.clone();
            move || shared.get(&v, None)
        };
        let mut lookup = tokio::task::spawn_blocking(ask).await.ok()?;
        if let NodeLookup::Prove(challenge) = lookup {
            // Another identity loaded it: the node gives it only to a mount that shows it
            // may read the object, in this version, now — with bytes only the store gives.
            let r = &challenge.range;
            if r.start >= r.end || r.end > version.size || r.end - r.start > MAX_CHALLENGE {
                return None;
            }
            let bytes = self
                .store
                .get_range(&version.key, r.clone(), Some(&version.etag))
                .await
                .ok()?;
            let v = version.clone();
            lookup =
                tokio::task::spawn_blocking(move || shared.get(&v, Some((&challenge, &bytes))))
                    .await
                    .ok()?;
        }
        let NodeLookup::Copy(copy) = lookup else {
            return None;
        };
        let blocks = version.size.div_ceil(BLOCK) as usize;
        if copy.sums.len() != blocks || copy.file.metadata().ok()?.len() != version.size {
            return None;
        }
        let verified = copy.verified;
        let file = self.cache.foreign(copy.file);
        let entry = Arc::new(Self::new_entry(version.clone(), file, copy.sums, now));
        if verified {
            for s in &entry.states {
                s.store(VERIFIED, Ordering::Release);
            }
            entry.settled.store(true, Ordering::Release);
        }
        let mut entries = lock(&self.entries);
        if let Some(e) = entries.get(version) {
            return Some(e.clone());
        }
        let held = entries.values().filter(|e| e.from_node).count();
        if held >= SHARED_HELD {
            // Close the least recently used of the node's copies this mount holds.
            let mut order: Vec<(u64, Version)> = entries
                .iter()
                .filter(|(_, e)| e.from_node)
                .map(|(v, e)| (e.last_used.load(Ordering::Relaxed), v.clone()))
                .collect();
            order.sort_by_key(|(tick, _)| *tick);
            for (_, v) in order.into_iter().take(held + 1 - SHARED_HELD) {
                if let Some(e) = entries.remove(&v) {
                    e.stopped.store(true, Ordering::Release);
                    e.changed.notify_waiters();
                }
            }
        }
        entries.insert(version.clone(), entry.clone());
        drop(entries);
        if verified {
            return Some(entry);
        }
        // Checked once, in the background, so that the kernel may read it directly.
        let e = entry.clone();
        tokio::spawn(async move {
            let _ = tokio::task::spawn_blocking({
                let e = e.clone();
                move || e.verify_all()
            })
            .await;
            e.settled.store(true, Ordering::Release);
            e.changed.notify_waiters();
        });
        Some(entry)
    }

    /// The entry of `version`, loading it when it is new; `None` when it cannot be cached
    /// (empty, or no room even after evicting every unused entry).
    pub async fn entry(self: &Arc<Self>, version: Version) -> Option<Arc<Entry>> {
        if version.size == 0 {
            return None;
        }
        let now = self.tick.fetch_add(1, Ordering::Relaxed);
        if let Some(e) = lock(&self.entries).get(&version) {
            e.last_used.store(now, Ordering::Relaxed);
            return Some(e.clone());
        }
        if let Some(shared) = &self.shared
            && let Some(e) = self.node_copy(shared.clone(), &version, now).await
        {
            return Some(e);
        }
        let mut file = self.cache.file().ok()?;
        if file.grow(version.size).is_err() {
            self.evict(version.size);
            file.grow(version.size).ok()?;
        }
        let entry = Arc::new(Self::new_entry(version.clone(), file, Vec::new(), now));
        let mut entries = lock(&self.entries);
        if let Some(e) = entries.get(&version) {
            // Another opener won the race: use its entry (ours gives its room back).
            return Some(e.clone());
        }
        entries.insert(version, entry.clone());
        drop(entries);
        self.load(entry.clone());
        Some(entry)
    }

    /// Drop least recently used entries until `need` bytes are free or none is left;
    /// returns the bytes given back now (entries still being read give theirs back when
    /// their last reader is done).
    pub fn evict(&self, need: u64) -> u64 {
        let mut entries = lock(&self.entries);
        let mut order: Vec<(u64, Version)> = entries
            .iter()
            .map(|(v, e)| (e.last_used.load(Ordering::Relaxed), v.clone()))
            .collect();
        order.sort_by_key(|(tick, _)| *tick);
        let mut freed = 0;
        for (_, v) in order {
            if freed >= need {
                break;
            }
            if let Some(e) = entries.remove(&v) {
                e.stopped.store(true, Ordering::Release);
                e.changed.notify_waiters();
                if Arc::strong_count(&e) == 1 {
                    freed += v.size;
                }
            }
        }
        freed
    }

    /// Load `entry` whole, `concurrency` parts at a time, in order.
    fn load(self: &Arc<Self>, entry: Arc<Entry>) {
        let this = self.clone();
        tokio::spawn(async move {
            let size = entry.version.size;
            let parts: Vec<(u64, u64)> = (0..size)
                .step_by(this.part_size as usize)
                .map(|s| (s, (s + this.part_size).min(size)))
                .collect();
            let results = futures::stream::iter(parts)
                .map(|(start, end)| {
                    let this = this.clone();
                    let entry = entry.clone();
                    async move { this.load_part(&entry, start, end).await }
                })
                .buffer_unordered(this.concurrency)
                .collect::<Vec<bool>>()
                .await;
            if results.iter().all(|ok| *ok) {
                // Verify the whole file once, while it is hot, so that the kernel may read
                // it directly (passthrough) from the next open.
                let e = entry.clone();
                let shared = this.shared.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    e.verify_all();
                    // The node keeps a copy for the mounts and pods that come next.
                    if let Some(shared) = shared
                        && e.is_verified()
                    {
                        let sums: Vec<u32> =
                            e.sums.iter().map(|s| s.load(Ordering::Acquire)).collect();
                        shared.offer(&e.version, e.file(), &sums);
                    }
                })
                .await;
            }
            entry.settled.store(true, Ordering::Release);
            entry.changed.notify_waiters();
        });
    }

    /// Load one part; false when it failed (its blocks go back to the store's readers).
    async fn load_part(&self, e: &Arc<Entry>, start: u64, end: u64) -> bool {
        let blocks = e.blocks(start, end);
        if e.stopped.load(Ordering::Acquire) {
            return false;
        }
        for b in blocks.clone() {
            e.states[b].store(LOADING, Ordering::Release);
        }
        let _held = self.budget.take(end - start).await;
        let got = self
            .store
            .get_range(&e.version.key, start..end, Some(&e.version.etag))
            .await;
        let ok = match got {
            Ok(data) if data.len() as u64 == end - start && !e.stopped.load(Ordering::Acquire) => {
                let entry = e.clone();
                let blocks = blocks.clone();
                let kept = data.clone();
                let written = tokio::task::spawn_blocking(move || {
                    entry.file().write_all_at(&data, start)?;
                    for b in blocks {
                        let from = (b as u64 * BLOCK - start) as usize;
                        let to = from + entry.block_len(b);
                        entry.sums[b].store(crc(&data[from..to]), Ordering::Release);
                        entry.states[b].store(READY, Ordering::Release);
                    }
                    Ok::<_, std::io::Error>(())
                })
                .await
                .is_ok_and(|r| r.is_ok());
                if written {
                    let mut fresh = lock(&e.fresh);
                    fresh.push_back((start, kept));
                    while fresh.len() > FRESH {
                        fresh.pop_front();
                    }
                }
                written
            }
            Ok(_) => false,
            Err(err) => {
                tracing::debug!(key = %e.version.key, error = %err, "read-cache load failed");
                false
            }
        };
        if !ok {
            e.stopped.store(true, Ordering::Release);
            for b in blocks {
                let _ = e.states[b].compare_exchange(
                    LOADING,
                    MISSING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
        }
        e.changed.notify_waiters();
        ok
    }

    /// Bytes `[off, end)` of `e`, waiting for blocks being loaded; `None` when a block is
    /// not (or no longer) in the cache: the caller reads the store.
    pub async fn read(&self, e: &Arc<Entry>, off: u64, end: u64) -> Option<Bytes> {
        let blocks = e.blocks(off, end);
        loop {
            let notified = e.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let states: Vec<u8> = blocks.clone().map(|b| e.state(b)).collect();
            if states.contains(&MISSING) {
                return None;
            }
            if !states.contains(&LOADING) {
                break;
            }
            notified.await;
        }
        e.last_used
            .store(self.tick.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        let in_memory = lock(&e.fresh).iter().find_map(|(start, data)| {
            let s = *start;
            (off >= s && end <= s + data.len() as u64)
                .then(|| data.slice((off - s) as usize..(end - s) as usize))
        });
        if let Some(data) = in_memory {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Some(data);
        }
        let entry = e.clone();
        let data = tokio::task::spawn_blocking(move || {
            let all_verified = blocks.clone().all(|b| entry.state(b) == VERIFIED);
            if all_verified {
                let mut buf = vec![0u8; (end - off) as usize];
                entry.file().read_exact_at(&mut buf, off).ok()?;
                return Some(Bytes::from(buf));
            }
            // Read the whole blocks, verify those not verified yet, keep the asked range.
            let first = blocks.start as u64 * BLOCK;
            let last = (blocks.end as u64 * BLOCK).min(entry.version.size);
            let mut buf = vec![0u8; (last - first) as usize];
            entry.file().read_exact_at(&mut buf, first).ok()?;
            for b in blocks {
                let from = (b as u64 * BLOCK - first) as usize;
                let to = from + entry.block_len(b);
                if entry.state(b) != VERIFIED && !entry.verify(b, &buf[from..to]) {
                    return None;
                }
            }
            let bytes = Bytes::from(buf);
            Some(bytes.slice((off - first) as usize..(end - first) as usize))
        })
        .await
        .ok()
        .flatten()?;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(data)
    }

    /// The entry of `version`, if the mount holds one (tests).
    #[cfg(test)]
    pub fn peek(&self, version: &Version) -> Option<Arc<Entry>> {
        lock(&self.entries).get(version).cloned()
    }

    /// Damage block `b` of `version`'s file (tests of the checksum).
    #[cfg(test)]
    pub fn corrupt(&self, version: &Version, b: usize) {
        if let Some(e) = lock(&self.entries).get(version) {
            let _ = e.file().write_all_at(b"corrupted", b as u64 * BLOCK);
            e.states[b].store(READY, Ordering::Release);
        }
    }
}
