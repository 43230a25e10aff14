//! The local staging space (`--cache-dir`, bounded by `--max-cache-size`): unlinked files
//! holding staged edits and the copies new files keep of what they already uploaded, each
//! charged for the bytes it may hold, and the read cache's entries, which give way when room
//! is needed. Past the bound, growing a file fails with ENOSPC instead of filling the
//! node's disk; nothing is left behind even if the process dies.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::{FsError, FsResult};

/// Frees room on demand (the read cache's least recently used entries): asked for bytes,
/// returns those it gave back.
type Reclaim = Box<dyn Fn(u64) -> u64 + Send + Sync>;

/// The shared, bounded cache directory.
pub struct Cache {
    dir: PathBuf,
    max: u64,
    used: AtomicU64,
    next: AtomicU64,
    reclaim: std::sync::OnceLock<Reclaim>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("dir", &self.dir)
            .field("max", &self.max)
            .field("used", &self.used)
            .finish_non_exhaustive()
    }
}

fn io_err(e: std::io::Error, path: &Path) -> FsError {
    let errno = e.raw_os_error().unwrap_or(libc::EIO);
    FsError::new(errno, format!("staging file {}: {e}", path.display()))
}

impl Cache {
    /// A cache in `dir` (created on first use) holding at most `max` bytes.
    pub fn new(dir: PathBuf, max: u64) -> Cache {
        Cache {
            dir,
            max,
            used: AtomicU64::new(0),
            next: AtomicU64::new(0),
            reclaim: std::sync::OnceLock::new(),
        }
    }

    /// What to ask for room when the space is spent (set once).
    pub fn set_reclaim(&self, f: impl Fn(u64) -> u64 + Send + Sync + 'static) {
        let _ = self.reclaim.set(Box::new(f));
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn reserve(&self, n: u64) -> FsResult<()> {
        match self.try_reserve(n) {
            Err(e) if self.reclaim.get().is_some_and(|r| r(n) > 0) => {
                self.try_reserve(n).map_err(|_| e)
            }
            r => r,
        }
    }

    fn try_reserve(&self, n: u64) -> FsResult<()> {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            if cur + n > self.max {
                return Err(FsError::new(
                    libc::ENOSPC,
                    format!(
                        "the staging cache is full ({cur} of {} bytes, --max-cache-size)",
                        self.max
                    ),
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

    /// A new empty file, unlinked at once, with nothing reserved yet.
    pub fn file(self: &Arc<Self>) -> FsResult<CacheFile> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io_err(e, &self.dir))?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("stage-{}-{n}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_err(e, &path))?;
        let _ = std::fs::remove_file(&path);
        Ok(CacheFile {
            file,
            reserved: 0,
            cache: self.clone(),
        })
    }
}

impl Cache {
    /// A file held beside the cache, outside its space (a copy the node gave).
    pub fn foreign(self: &Arc<Self>, file: File) -> CacheFile {
        CacheFile {
            file,
            reserved: 0,
            cache: self.clone(),
        }
    }
}

/// One file of the cache and the bytes reserved for it (given back when dropped).
#[derive(Debug)]
pub struct CacheFile {
    /// The file.
    pub file: File,
    reserved: u64,
    cache: Arc<Cache>,
}

impl CacheFile {
    /// Reserve room for the file to hold `to` bytes (ENOSPC past the bound).
    pub fn grow(&mut self, to: u64) -> FsResult<()> {
        if to > self.reserved {
            self.cache.reserve(to - self.reserved)?;
            self.reserved = to;
        }
        Ok(())
    }
}

impl Drop for CacheFile {
    fn drop(&mut self) {
        self.cache.release(self.reserved);
    }
}
