//! The file-system core: maps a bucket prefix to files and directories (lookup, stat,
//! listing, reads through the prefetcher, streaming uploads, mkdir/rmdir/unlink). It knows
//! nothing of FUSE, gRPC or Kubernetes and is tested directly against the in-memory store.

mod budget;
mod dir;
mod dirops;
mod error;
mod handles;
mod inode;
mod meta;
mod read;
mod stage;
mod write;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Mutex as AsyncMutex;

use crate::store::BucketExt;

pub use dir::DirEntry;
pub use error::{FsError, FsResult};
pub use inode::{Kind, ROOT_INO};
pub use read::ReadConfig;
pub use write::WriteConfig;

use crate::store::{SharedBucket, valid_name};
use dir::DirSnapshot;
use inode::{Inode, Inodes, Stat};
use read::Reader;
use stage::{Cache, Staged};
use write::Writer;

/// Mount-wide settings of the file system.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Key prefix mounted as the root: empty, or ending in `/`.
    pub prefix: String,
    /// Refuse every change with EROFS.
    pub read_only: bool,
    /// Owner of every file and directory.
    pub uid: u32,
    /// Group of every file and directory.
    pub gid: u32,
    /// Permission bits of files.
    pub file_mode: u16,
    /// Permission bits of directories.
    pub dir_mode: u16,
    /// How long metadata (stat, lookups, absence) is trusted before asking the store again.
    pub metadata_ttl: Duration,
    /// Reads.
    pub read: ReadConfig,
    /// Writes.
    pub write: WriteConfig,
    /// Where files being edited in place are staged.
    pub cache_dir: std::path::PathBuf,
    /// Most bytes staged at once; past it writes fail with ENOSPC.
    pub max_cache_size: u64,
    /// Most keys a directory rename copies; past it rename fails with EXDEV.
    pub rename_dir_limit: usize,
    /// Bytes all prefetched and uploading parts of the mount may hold together.
    pub memory_limit: u64,
    /// Store mode, owner and mtime in object metadata (s3fs's convention) and show them.
    pub persist_metadata: bool,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            prefix: String::new(),
            read_only: false,
            uid: 0,
            gid: 0,
            file_mode: 0o644,
            dir_mode: 0o755,
            metadata_ttl: Duration::from_secs(1),
            read: ReadConfig::default(),
            write: WriteConfig::default(),
            cache_dir: std::env::temp_dir().join("pail-cache"),
            max_cache_size: 10 << 30,
            rename_dir_limit: 1000,
            memory_limit: 1 << 30,
            persist_metadata: false,
        }
    }
}

/// Attributes of a file or directory, as `stat` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// File or directory.
    pub kind: Kind,
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: SystemTime,
    /// Permission bits.
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// How a file is opened.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenMode {
    /// Opened for writing (O_WRONLY or O_RDWR).
    pub write: bool,
    /// O_TRUNC.
    pub truncate: bool,
    /// O_APPEND.
    pub append: bool,
    /// Opened for reading too (O_RDWR).
    pub read: bool,
    /// Process that opened it.
    pub pid: u32,
}

/// How a file is created.
#[derive(Debug, Clone, Copy, Default)]
pub struct CreateMode {
    /// O_EXCL.
    pub exclusive: bool,
    /// O_RDWR: readable while written (staged).
    pub read: bool,
    /// O_APPEND.
    pub append: bool,
    /// Process that created it.
    pub pid: u32,
    /// Permission bits asked for (mode & ~umask).
    pub perm: u32,
    /// Creator's user and group.
    pub uid: u32,
    /// Creator's group.
    pub gid: u32,
}

enum Handle {
    Read(Reader),
    Write { ino: u64, pid: u32, writer: Writer },
    Staged { ino: u64, staged: Staged },
    Dir(DirSnapshot),
}

/// Counters for tests and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Lookups answered by asking the store.
    pub remote_lookups: AtomicU64,
    /// Directory listings fetched from the store.
    pub listings: AtomicU64,
}

/// A mounted bucket prefix.
pub struct Fs {
    store: SharedBucket,
    cfg: FsConfig,
    inodes: Mutex<Inodes>,
    handles: Mutex<HashMap<u64, Arc<AsyncMutex<Handle>>>>,
    next_fh: AtomicU64,
    started: SystemTime,
    cache: Arc<Cache>,
    budget: budget::Budget,
    /// Counters.
    pub counters: Counters,
}

impl Fs {
    /// A file system over `store` with `cfg`.
    pub fn new(store: SharedBucket, cfg: FsConfig) -> Fs {
        let started = SystemTime::now();
        Fs {
            inodes: Mutex::new(Inodes::new(&cfg.prefix, started)),
            cache: Arc::new(Cache::new(cfg.cache_dir.clone(), cfg.max_cache_size)),
            budget: budget::Budget::new(cfg.memory_limit),
            store,
            cfg,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            started,
            counters: Counters::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    fn inodes(&self) -> std::sync::MutexGuard<'_, Inodes> {
        self.inodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn inode(&self, ino: u64) -> FsResult<Inode> {
        self.inodes()
            .get(ino)
            .cloned()
            .ok_or_else(|| FsError::new(libc::ESTALE, format!("unknown inode {ino}")))
    }

    fn attr_of(&self, inode: &Inode) -> Attr {
        let (mut perm, size) = match inode.kind {
            Kind::Dir => (self.cfg.dir_mode, 0),
            Kind::File => (self.cfg.file_mode, inode.stat.size),
            Kind::Symlink => (0o777, inode.stat.size),
        };
        let (mut uid, mut gid) = (self.cfg.uid, self.cfg.gid);
        if self.cfg.persist_metadata && inode.kind == Kind::File {
            let m = &inode.stat.meta;
            perm = meta::mode(m).map(|m| (m & 0o7777) as u16).unwrap_or(perm);
            uid = meta::uid(m).unwrap_or(uid);
            gid = meta::gid(m).unwrap_or(gid);
        }
        Attr {
            ino: inode.ino,
            kind: inode.kind,
            size,
            mtime: inode.stat.mtime,
            perm,
            uid,
            gid,
        }
    }

    fn expiry(&self) -> Instant {
        Instant::now() + self.cfg.metadata_ttl
    }

    fn dir_stat(&self) -> Stat {
        Stat {
            size: 0,
            mtime: self.started,
            etag: None,
            meta: Default::default(),
        }
    }

    fn writable(&self) -> FsResult<()> {
        if self.cfg.read_only {
            Err(FsError::read_only())
        } else {
            Ok(())
        }
    }

    fn parent_dir(&self, parent: u64) -> FsResult<Inode> {
        let p = self.inode(parent)?;
        if p.kind != Kind::Dir {
            return Err(FsError::new(
                libc::ENOTDIR,
                format!("{:?} is not a directory", p.key),
            ));
        }
        Ok(p)
    }

    /// Find `name` in `parent` and take a kernel reference to it.
    pub async fn lookup(&self, parent: u64, name: &str) -> FsResult<Attr> {
        let attr = self.resolve(parent, name).await?;
        self.inodes().add_lookups(attr.ino, 1);
        Ok(attr)
    }

    /// Find `name` in `parent` without taking a reference.
    async fn resolve(&self, parent: u64, name: &str) -> FsResult<Attr> {
        let p = self.parent_dir(parent)?;
        if !valid_name(name) {
            return Err(FsError::not_found(name));
        }
        let now = Instant::now();
        {
            let inodes = self.inodes();
            if let Some(child) = inodes.child(parent, name) {
                if child.local || child.expiry > now {
                    return Ok(self.attr_of(child));
                }
            } else if inodes.is_negative(parent, name, now) {
                return Err(FsError::not_found(format!("{}{name}", p.key)));
            }
        }
        self.counters.remote_lookups.fetch_add(1, Ordering::Relaxed);
        let file_key = format!("{}{name}", p.key);
        let dir_key = format!("{file_key}/");
        // One HEAD answers for a file; only when there is none is the prefix listed. So a
        // file shadows a directory of the same name, and a file lookup costs one request.
        let file = self.store.head(&file_key).await?;
        let dir = match file {
            Some(_) => false,
            None => self.store.dir_exists(&dir_key).await?,
        };
        let mut inodes = self.inodes();
        let ino = match (file, dir) {
            (Some(info), _) => {
                let (kind, stat) = meta::stat_of(info);
                inodes.upsert(parent, name, file_key, kind, stat, self.expiry())
            }
            (None, true) => inodes.upsert(
                parent,
                name,
                dir_key,
                Kind::Dir,
                self.dir_stat(),
                self.expiry(),
            ),
            (None, false) => {
                if let Some(child) = inodes.child(parent, name).filter(|c| c.local) {
                    return Ok(self.attr_of(child));
                }
                inodes.remove_name(parent, name, self.expiry());
                return Err(FsError::not_found(file_key));
            }
        };
        let inode = inodes.get(ino).expect("just inserted");
        Ok(self.attr_of(inode))
    }

    /// Drop `n` kernel references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes().forget(ino, n);
    }

    /// Attributes of `ino`, refreshed from the store when the cached ones expired.
    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let inode = self.inode(ino)?;
        if inode.kind == Kind::Dir || inode.local || inode.expiry > Instant::now() {
            return Ok(self.attr_of(&inode));
        }
        match self.store.head(&inode.key).await? {
            Some(info) => {
                let mut inodes = self.inodes();
                let expiry = self.expiry();
                if let Some(i) = inodes.get_mut(ino) {
                    if !i.local {
                        i.stat = meta::stat_of(info).1;
                        i.expiry = expiry;
                    }
                    return Ok(self.attr_of(i));
                }
                Err(FsError::new(libc::ESTALE, format!("unknown inode {ino}")))
            }
            None => Err(FsError::not_found(&inode.key)),
        }
    }

    /// Bytes of the memory budget held now (prefetched and uploading parts).
    pub fn memory_in_use(&self) -> u64 {
        self.budget.in_use()
    }

    /// Bytes held in the staging cache now.
    pub fn cache_used(&self) -> u64 {
        self.cache.used()
    }

    /// Number of inodes held in memory.
    pub fn inode_count(&self) -> usize {
        self.inodes().len()
    }

    /// Abort every upload still open (at unmount).
    pub async fn shutdown(&self) {
        let handles: Vec<_> = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, h)| h)
            .collect();
        for h in handles {
            if let Handle::Write { writer, .. } = &mut *h.lock().await {
                writer.abort().await;
            }
        }
    }
}
