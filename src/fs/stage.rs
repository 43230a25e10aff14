//! Staged files: an existing object opened for writing without `O_TRUNC`, appends, writes
//! after a seek, truncates, and files opened read-write are edited in a local cache file
//! and uploaded at close or fsync: whole (multipart, parallel), or on S3 with the unchanged
//! leading parts copied by the server, so that an append sends only what was appended. The
//! cache space is bounded: past `max_cache_size` writes fail with ENOSPC instead of filling
//! the node's disk.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::budget::Budget;
use super::error::{FsError, FsResult};
use super::write::{WriteConfig, Writer};
use crate::store::{Payload, PutOptions, SharedBucket, StoreErrorKind};

/// The shared, bounded cache directory.
#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
    max: u64,
    used: AtomicU64,
    next: AtomicU64,
}

impl Cache {
    /// A cache in `dir` (created on first use) holding at most `max` bytes.
    pub fn new(dir: PathBuf, max: u64) -> Cache {
        Cache {
            dir,
            max,
            used: AtomicU64::new(0),
            next: AtomicU64::new(0),
        }
    }

    /// Bytes staged now.
    pub(super) fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn reserve(&self, n: u64) -> FsResult<()> {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            if cur + n > self.max {
                return Err(FsError::new(
                    libc::ENOSPC,
                    format!("the staging cache is full ({} of {} bytes)", cur, self.max),
                ));
            }
            match self
                .used
                .compare_exchange_weak(cur, cur + n, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(actual) => cur = actual,
            }
        }
    }

    fn release(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    fn create_file(&self) -> FsResult<File> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io_err(e, &self.dir))?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("stage-{}-{n}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_err(e, &path))?;
        // Unlinked at once: nothing is left behind, even if the process dies.
        let _ = std::fs::remove_file(&path);
        Ok(f)
    }
}

fn io_err(e: std::io::Error, path: &Path) -> FsError {
    let errno = e.raw_os_error().unwrap_or(libc::EIO);
    FsError::new(errno, format!("staging file {}: {e}", path.display()))
}

/// One staged file.
pub struct Staged {
    store: SharedBucket,
    key: String,
    cache: Arc<Cache>,
    file: File,
    size: u64,
    reserved: u64,
    dirty: bool,
    /// Writes go to the end whatever the offset (O_APPEND).
    pub append: bool,
    /// The stored object's bytes `[0, remote)` are fetched lazily, chunk by chunk, before
    /// they are first read or written (and all of them before an upload).
    remote: u64,
    etag: Option<String>,
    fetched: Vec<bool>,
    /// Bytes `[0, clean)` are those of the stored object version `etag`: uploads copy that
    /// much server-side instead of sending it (S3).
    clean: u64,
    /// Chunks fetched from the store (tests assert on it).
    pub fetches: u64,
}

/// Granularity of lazy fetching.
const CHUNK: u64 = 1 << 20;

impl Drop for Staged {
    fn drop(&mut self) {
        self.cache.release(self.reserved);
    }
}

impl Staged {
    /// Stage `key`: its current contents (`size` bytes, or none when `empty`) are fetched
    /// into a cache file lazily, as they are read or written.
    pub async fn open(
        store: SharedBucket,
        key: String,
        cache: Arc<Cache>,
        size: u64,
        empty: bool,
        etag: Option<String>,
    ) -> FsResult<Staged> {
        let file = cache.create_file()?;
        let remote = if empty { 0 } else { size };
        let mut s = Staged {
            store,
            key,
            cache,
            file,
            size: 0,
            reserved: 0,
            dirty: empty,
            append: false,
            remote,
            etag,
            fetched: vec![false; remote.div_ceil(CHUNK) as usize],
            fetches: 0,
            clean: remote,
        };
        if remote > 0 {
            // Reserve the space now (ENOSPC at open, not in the middle of a write); the file
            // is sparse until its chunks arrive.
            s.grow(remote)?;
            s.file
                .set_len(remote)
                .map_err(|e| FsError::new(libc::EIO, e.to_string()))?;
            s.size = remote;
        }
        Ok(s)
    }

    /// Fetch the chunks of the stored object that `range` touches and that are not here yet.
    async fn ensure(&mut self, range: std::ops::Range<u64>) -> FsResult<()> {
        let end = range.end.min(self.remote);
        if range.start >= end {
            return Ok(());
        }
        for i in (range.start / CHUNK)..end.div_ceil(CHUNK) {
            let i = i as usize;
            if self.fetched[i] {
                continue;
            }
            let from = i as u64 * CHUNK;
            let to = (from + CHUNK).min(self.remote);
            let data = self
                .store
                .get_range(&self.key, from..to, self.etag.as_deref())
                .await?;
            if data.len() as u64 != to - from {
                return Err(FsError::new(
                    libc::EIO,
                    format!("{:?}: short read while staging", self.key),
                ));
            }
            self.file
                .write_all_at(&data, from)
                .map_err(|e| FsError::new(libc::EIO, e.to_string()))?;
            self.fetched[i] = true;
            self.fetches += 1;
        }
        Ok(())
    }

    /// Stage the data a streaming writer holds (nothing uploaded yet).
    pub fn adopt(&mut self, chunks: Vec<Bytes>) -> FsResult<()> {
        let mut off = 0u64;
        for c in chunks {
            self.write_at(off, &c)?;
            off += c.len() as u64;
        }
        Ok(())
    }

    fn grow(&mut self, to: u64) -> FsResult<()> {
        if to > self.reserved {
            self.cache.reserve(to - self.reserved)?;
            self.reserved = to;
        }
        Ok(())
    }

    /// Upload it even if unchanged (to rewrite its metadata).
    pub fn touch(&mut self) {
        self.dirty = true;
    }

    /// Upload to `key` from now on (the file was renamed while open).
    pub fn set_key(&mut self, key: String) {
        self.key = key;
        self.clean = 0;
    }

    /// Size of the staged file.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> FsResult<u32> {
        let end = offset + data.len() as u64;
        self.grow(end)?;
        self.file
            .write_all_at(data, offset)
            .map_err(|e| FsError::new(e.raw_os_error().unwrap_or(libc::EIO), e.to_string()))?;
        self.size = self.size.max(end);
        self.dirty = true;
        self.clean = self.clean.min(offset);
        Ok(data.len() as u32)
    }

    /// Write `data` at `offset` (at the end with O_APPEND).
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> FsResult<u32> {
        let offset = if self.append { self.size } else { offset };
        self.ensure(offset..offset + data.len() as u64).await?;
        self.write_at(offset, data)
    }

    /// Read up to `len` bytes at `offset`.
    pub async fn read(&mut self, offset: u64, len: u32) -> FsResult<Bytes> {
        if offset >= self.size {
            return Ok(Bytes::new());
        }
        let n = (len as u64).min(self.size - offset) as usize;
        self.ensure(offset..offset + n as u64).await?;
        let mut buf = vec![0u8; n];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|e| FsError::new(libc::EIO, e.to_string()))?;
        Ok(Bytes::from(buf))
    }

    /// Set the size (ftruncate).
    pub async fn truncate(&mut self, size: u64) -> FsResult<()> {
        // Bytes of the stored object past the new end are never needed.
        self.remote = self.remote.min(size);
        self.ensure(size.saturating_sub(1)..size).await?;
        self.grow(size)?;
        self.file
            .set_len(size)
            .map_err(|e| FsError::new(libc::EIO, e.to_string()))?;
        self.size = size;
        self.dirty = true;
        self.clean = self.clean.min(size);
        Ok(())
    }

    /// Upload the staged file if it changed since the last upload.
    pub async fn upload(
        &mut self,
        cfg: WriteConfig,
        budget: Budget,
        opts: PutOptions,
    ) -> FsResult<()> {
        if !self.dirty {
            return Ok(());
        }
        if self.upload_keeping_prefix(cfg, &opts).await? {
            return Ok(());
        }
        self.ensure(0..self.size).await?;
        let mut writer = Writer::new(self.store.clone(), self.key.clone(), cfg, budget);
        writer.set_options(opts);
        let chunk = cfg.part_size as u64;
        let mut off = 0;
        while off < self.size {
            let n = chunk.min(self.size - off) as usize;
            let mut buf = vec![0u8; n];
            self.file
                .read_exact_at(&mut buf, off)
                .map_err(|e| FsError::new(libc::EIO, e.to_string()))?;
            writer.write(off, Bytes::from(buf)).await?;
            off += n as u64;
        }
        writer.finish().await?;
        self.dirty = false;
        // The stored version is now unknown: later uploads send everything.
        self.clean = 0;
        Ok(())
    }

    /// Upload only what changed past an unchanged prefix of the stored object: the prefix
    /// is copied by the server in parts, pinned to the version this file was staged from,
    /// when it spans one part or more. False when that does not apply or the store cannot
    /// (the caller then uploads the whole file); an error when the object changed.
    async fn upload_keeping_prefix(
        &mut self,
        cfg: WriteConfig,
        opts: &PutOptions,
    ) -> FsResult<bool> {
        let features = self.store.features();
        let part = (cfg.part_size as u64).max(features.min_part_size).max(1);
        let keep = self.clean.min(self.remote) / part * part;
        let Some(etag) = self.etag.clone() else {
            return Ok(false);
        };
        if keep == 0 || !features.part_copy || self.size.div_ceil(part) > 10_000 {
            return Ok(false);
        }
        self.ensure(keep..self.size).await?;
        let result = self.send_keeping_prefix(keep, part, &etag, cfg, opts).await;
        match result {
            Ok(()) => {
                self.dirty = false;
                // Chunks not fetched yet are read from the new version (same bytes), whose
                // ETag the store reports as it will check it (the completion's may differ).
                let head = self.store.head(&self.key).await;
                self.etag = head.ok().flatten().and_then(|i| i.etag);
                if self.etag.is_some() {
                    self.clean = self.size;
                } else {
                    // No version to pin later reads to: fetch the rest now.
                    self.clean = 0;
                    self.ensure(0..self.size).await?;
                }
                Ok(true)
            }
            Err(e) if e.kind == StoreErrorKind::Precondition => Err(FsError::new(
                libc::ESTALE,
                format!(
                    "{:?}: the object was replaced since it was opened; not uploaded",
                    self.key
                ),
            )),
            Err(e) => {
                tracing::warn!(key = %self.key, error = %e, "copying the unchanged part server-side failed; uploading the whole file");
                Ok(false)
            }
        }
    }

    /// One multipart upload: parts `[0, keep)` copied from version `etag`, the rest sent
    /// from the staged file, at most `cfg.max_in_flight` at once; aborted on failure.
    async fn send_keeping_prefix(
        &mut self,
        keep: u64,
        part: u64,
        etag: &str,
        cfg: WriteConfig,
        opts: &PutOptions,
    ) -> crate::store::Result<()> {
        use futures::StreamExt;
        let mut upload = self.store.start_upload(&self.key, opts).await?;
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let mut at = 0;
        let mut result = Ok(());
        while at < self.size && result.is_ok() {
            let end = (at + part).min(self.size);
            let fut = if at < keep {
                upload.copy_part(&self.key, at..end, Some(etag))
            } else {
                let mut buf = vec![0u8; (end - at) as usize];
                if let Err(e) = self.file.read_exact_at(&mut buf, at) {
                    result = Err(crate::store::StoreError::new(
                        StoreErrorKind::Other,
                        format!("{:?}: staged data: {e}", self.key),
                    ));
                    break;
                }
                upload.put_part(Payload::from(buf))
            };
            in_flight.push(fut);
            at = end;
            while in_flight.len() >= cfg.max_in_flight.max(1) {
                if let Some(Err(e)) = in_flight.next().await {
                    result = Err(e);
                }
            }
        }
        while let Some(r) = in_flight.next().await {
            if let Err(e) = r {
                result = result.and(Err(e));
            }
        }
        if result.is_ok() {
            result = upload.complete().await.map(|_| ());
        }
        if result.is_err() {
            let _ = upload.abort().await;
        }
        result
    }
}
