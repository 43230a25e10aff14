//! Staged files: an existing object opened for writing without `O_TRUNC`, appends, writes
//! after a seek, truncates, files opened read-write, and new files that seek back are edited
//! in a local cache file and uploaded at close or fsync: whole (multipart, parallel), or with
//! the unchanged leading parts copied by the server, so that an append sends only what was
//! appended. Uploads are conditional on the version the file was staged from (where the
//! store can), so an object another client replaced meanwhile is never overwritten: the
//! upload fails with ESTALE and theirs stays.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;

use super::budget::Budget;
use super::cache::{Cache, CacheFile};
use super::error::{FsError, FsResult};
use super::write::{WriteConfig, Writer, Written};
use crate::store::{Condition, Payload, PutOptions, SharedBucket, StoreErrorKind};

/// One staged file.
pub struct Staged {
    store: SharedBucket,
    key: String,
    file: CacheFile,
    size: u64,
    dirty: bool,
    /// The stored object's bytes `[0, remote)` are fetched lazily, chunk by chunk, before
    /// they are first read or written (and all of them before a whole upload).
    remote: u64,
    /// The version of the stored object this file is based on (what uploads replace).
    etag: Option<String>,
    fetched: Vec<bool>,
    /// Bytes `[0, clean)` are those of the stored version `etag`: uploads copy that much
    /// server-side instead of sending it.
    clean: u64,
    /// Chunks fetched from the store (tests assert on it).
    pub fetches: u64,
}

/// Granularity of lazy fetching.
const CHUNK: u64 = 1 << 20;

fn io(e: std::io::Error) -> FsError {
    FsError::new(e.raw_os_error().unwrap_or(libc::EIO), e.to_string())
}

impl Staged {
    /// Stage `key`: its current contents (`size` bytes of version `etag`, or none when
    /// `empty`) are fetched into a cache file lazily, as they are read or written.
    pub fn open(
        store: SharedBucket,
        key: String,
        cache: &Arc<Cache>,
        size: u64,
        empty: bool,
        etag: Option<String>,
    ) -> FsResult<Staged> {
        let remote = if empty { 0 } else { size };
        let mut s = Staged {
            store,
            key,
            file: cache.file()?,
            size: 0,
            dirty: empty,
            remote,
            etag,
            fetched: vec![false; remote.div_ceil(CHUNK) as usize],
            fetches: 0,
            clean: remote,
        };
        if remote > 0 {
            // Reserve the space now (ENOSPC at open, not in the middle of a write); the file
            // is sparse until its chunks arrive.
            s.file.grow(remote)?;
            s.file.file.set_len(remote).map_err(io)?;
            s.size = remote;
        }
        Ok(s)
    }

    /// Continue a new file a streaming writer started: its local copy of what it sent,
    /// then the bytes it had not sent yet. The object it replaces is `etag`, if any.
    pub fn from_written(
        store: SharedBucket,
        key: String,
        cache: &Arc<Cache>,
        written: Written,
        etag: Option<String>,
    ) -> FsResult<Staged> {
        let file = match written.copy {
            Some(f) => f,
            None => cache.file()?,
        };
        let mut s = Staged {
            store,
            key,
            file,
            size: written.sent,
            dirty: true,
            remote: 0,
            etag,
            fetched: Vec::new(),
            fetches: 0,
            clean: 0,
        };
        let mut off = written.sent;
        for c in written.rest {
            s.write_at(off, &c)?;
            off += c.len() as u64;
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
            self.file.file.write_all_at(&data, from).map_err(io)?;
            self.fetched[i] = true;
            self.fetches += 1;
        }
        Ok(())
    }

    /// Upload it at the next close even if unchanged (its metadata changed).
    pub fn touch(&mut self) {
        self.dirty = true;
    }

    /// Whether it changed since its last upload.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Upload to `key` from now on (the file was renamed while open). With `etag`, the
    /// object there is a copy of the one staged from (same bytes); without, nothing there
    /// is ours: the whole file is uploaded at the next close (call only when every byte is
    /// local, see [`Staged::has_remote_bytes`]).
    pub fn set_key(&mut self, key: String, etag: Option<String>) {
        self.key = key;
        if etag.is_none() {
            self.clean = 0;
            self.dirty = true;
        }
        self.etag = etag;
    }

    /// Whether some of its bytes are still only in the stored object (not fetched).
    pub fn has_remote_bytes(&self) -> bool {
        self.remote > 0 && self.fetched.iter().any(|f| !f)
    }

    /// Fetch every byte of the stored object not fetched yet (before it goes away).
    pub async fn fetch_all(&mut self) -> FsResult<()> {
        self.ensure(0..self.size).await?;
        self.remote = 0;
        Ok(())
    }

    /// Size of the staged file.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> FsResult<u32> {
        let end = offset + data.len() as u64;
        self.file.grow(end)?;
        self.file.file.write_all_at(data, offset).map_err(io)?;
        self.size = self.size.max(end);
        self.dirty = true;
        self.clean = self.clean.min(offset);
        Ok(data.len() as u32)
    }

    /// Write `data` at `offset` (at the end with `append`).
    pub async fn write(&mut self, offset: u64, data: &[u8], append: bool) -> FsResult<u32> {
        let offset = if append { self.size } else { offset };
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
        self.file.file.read_exact_at(&mut buf, offset).map_err(io)?;
        Ok(Bytes::from(buf))
    }

    /// Set the size (ftruncate).
    pub async fn truncate(&mut self, size: u64) -> FsResult<()> {
        // Bytes of the stored object past the new end are never needed.
        self.remote = self.remote.min(size);
        self.ensure(size.saturating_sub(1)..size).await?;
        self.file.grow(size)?;
        self.file.file.set_len(size).map_err(io)?;
        self.size = size;
        self.dirty = true;
        self.clean = self.clean.min(size);
        Ok(())
    }

    /// The condition an upload carries: the stored object is still the version this file
    /// is based on (when the store checks conditions).
    fn condition(&self) -> Option<Condition> {
        if !self.store.features().conditional_writes {
            return None;
        }
        self.etag.clone().map(Condition::IfMatch)
    }

    /// Upload the staged file if it changed since the last upload.
    pub async fn upload(
        &mut self,
        cfg: WriteConfig,
        budget: Budget,
        cache: &Arc<Cache>,
        mut opts: PutOptions,
    ) -> FsResult<()> {
        if !self.dirty {
            return Ok(());
        }
        opts.condition = self.condition();
        let etag = match self.upload_keeping_prefix(cfg, &opts).await? {
            Some(etag) => etag,
            None => self.upload_whole(cfg, budget, cache, opts).await?,
        };
        self.dirty = false;
        self.etag = etag;
        if self.etag.is_some() {
            // The new version holds every byte here, the unfetched ones included.
            self.clean = self.size;
        } else {
            // No version to pin later reads to: keep everything local.
            self.fetch_all().await?;
            self.clean = 0;
        }
        Ok(())
    }

    async fn upload_whole(
        &mut self,
        cfg: WriteConfig,
        budget: Budget,
        cache: &Arc<Cache>,
        opts: PutOptions,
    ) -> FsResult<Option<String>> {
        self.ensure(0..self.size).await?;
        let mut writer = Writer::new(
            self.store.clone(),
            self.key.clone(),
            cfg,
            budget,
            cache.clone(),
        );
        writer.set_options(opts);
        let chunk = cfg.part_size as u64;
        let mut off = 0;
        while off < self.size {
            let n = chunk.min(self.size - off) as usize;
            let mut buf = vec![0u8; n];
            self.file.file.read_exact_at(&mut buf, off).map_err(io)?;
            writer.write(off, Bytes::from(buf)).await?;
            off += n as u64;
        }
        writer.finish().await?;
        Ok(writer.etag().map(str::to_string))
    }

    /// Upload only what changed past an unchanged prefix of the stored object: the prefix
    /// is copied by the server in parts, pinned to the version this file was staged from,
    /// when it spans one part or more. `None` when that does not apply or the store cannot
    /// (the caller then uploads the whole file); an error when the object changed.
    async fn upload_keeping_prefix(
        &mut self,
        cfg: WriteConfig,
        opts: &PutOptions,
    ) -> FsResult<Option<Option<String>>> {
        let features = self.store.features();
        let part = (cfg.part_size as u64).max(features.min_part_size).max(1);
        let keep = self.clean.min(self.remote) / part * part;
        let Some(etag) = self.etag.clone() else {
            return Ok(None);
        };
        if keep == 0 || !features.part_copy || self.size.div_ceil(part) > 10_000 {
            return Ok(None);
        }
        self.ensure(keep..self.size).await?;
        match self.send_keeping_prefix(keep, part, &etag, cfg, opts).await {
            Ok(new) => Ok(Some(new)),
            Err(e) if e.kind == StoreErrorKind::Precondition => Err(FsError::new(
                libc::ESTALE,
                format!(
                    "{:?}: the object was replaced since it was opened; not uploaded",
                    self.key
                ),
            )),
            Err(e) => {
                tracing::warn!(key = %self.key, error = %e, "copying the unchanged part server-side failed; uploading the whole file");
                Ok(None)
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
    ) -> crate::store::Result<Option<String>> {
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
                if let Err(e) = self.file.file.read_exact_at(&mut buf, at) {
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
        let result = match result {
            Ok(()) => upload.complete().await.map(|r| r.etag),
            Err(e) => Err(e),
        };
        if result.is_err() {
            let _ = upload.abort().await;
        }
        result
    }
}
