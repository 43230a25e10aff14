//! Staged files: an existing object opened for writing without `O_TRUNC`, appends, writes
//! after a seek, truncates, and files opened read-write are edited in a local cache file
//! and uploaded whole (multipart, parallel) at close or fsync. The cache space is bounded:
//! past `max_cache_size` writes fail with ENOSPC instead of filling the node's disk.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::budget::Budget;
use super::error::{FsError, FsResult};
use super::write::{WriteConfig, Writer};
use crate::store::Store;

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
    store: Store,
    key: String,
    cache: Arc<Cache>,
    file: File,
    size: u64,
    reserved: u64,
    dirty: bool,
    /// Writes go to the end whatever the offset (O_APPEND).
    pub append: bool,
}

impl Drop for Staged {
    fn drop(&mut self) {
        self.cache.release(self.reserved);
    }
}

impl Staged {
    /// Stage `key`: its current contents (`size` bytes, or none when `empty`) are fetched
    /// into a cache file.
    pub async fn open(
        store: Store,
        key: String,
        cache: Arc<Cache>,
        size: u64,
        empty: bool,
        etag: Option<String>,
    ) -> FsResult<Staged> {
        let file = cache.create_file()?;
        let mut s = Staged {
            store,
            key,
            cache,
            file,
            size: 0,
            reserved: 0,
            dirty: empty,
            append: false,
        };
        if !empty && size > 0 {
            s.grow(size)?;
            let chunk = 8u64 << 20;
            let mut off = 0;
            while off < size {
                let end = (off + chunk).min(size);
                let data = s.store.get_range(&s.key, off..end, etag.as_deref()).await?;
                if data.len() as u64 != end - off {
                    return Err(FsError::new(
                        libc::EIO,
                        format!("{:?}: short read while staging", s.key),
                    ));
                }
                s.file
                    .write_all_at(&data, off)
                    .map_err(|e| FsError::new(libc::EIO, e.to_string()))?;
                off = end;
            }
            s.size = size;
        }
        Ok(s)
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
        Ok(data.len() as u32)
    }

    /// Write `data` at `offset` (at the end with O_APPEND).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> FsResult<u32> {
        let offset = if self.append { self.size } else { offset };
        self.write_at(offset, data)
    }

    /// Read up to `len` bytes at `offset`.
    pub fn read(&self, offset: u64, len: u32) -> FsResult<Bytes> {
        if offset >= self.size {
            return Ok(Bytes::new());
        }
        let n = (len as u64).min(self.size - offset) as usize;
        let mut buf = vec![0u8; n];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|e| FsError::new(libc::EIO, e.to_string()))?;
        Ok(Bytes::from(buf))
    }

    /// Set the size (ftruncate).
    pub fn truncate(&mut self, size: u64) -> FsResult<()> {
        self.grow(size)?;
        self.file
            .set_len(size)
            .map_err(|e| FsError::new(libc::EIO, e.to_string()))?;
        self.size = size;
        self.dirty = true;
        Ok(())
    }

    /// Upload the staged file if it changed since the last upload.
    pub async fn upload(
        &mut self,
        cfg: WriteConfig,
        budget: Budget,
        meta: crate::store::Meta,
    ) -> FsResult<()> {
        if !self.dirty {
            return Ok(());
        }
        let mut writer = Writer::new(self.store.clone(), self.key.clone(), cfg, budget);
        writer.set_meta(meta);
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
        Ok(())
    }
}
