//! The file-system core: maps a bucket prefix to files and directories (lookup, stat,
//! listing, reads through the prefetcher, streaming and staged writes, mkdir/rmdir/unlink,
//! rename, metadata). It knows nothing of FUSE, gRPC or Kubernetes and is tested directly
//! against the in-memory store and the fault injector.

mod attrs;
mod budget;
mod cache;
mod dir;
mod dirops;
mod error;
mod handles;
mod inode;
mod journal;
mod listcache;
mod meta;
mod open;
mod read;
mod readcache;
mod readers;
mod stage;
mod write;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Mutex as AsyncMutex;

/// Data in the pieces the store sent it in ([`Fs::read_parts`]).
pub use crate::store::Payload;
pub use attrs::SetAttr;
pub use dir::DirEntry;
pub use error::{FsError, FsResult};
pub use inode::{Kind, ROOT_INO};
pub use journal::InitParams;
pub use read::ReadConfig;
pub use readcache::Entry as CachedObject;
pub use readcache::{
    Challenge as NodeChallenge, NodeLookup, SharedCopies, SharedCopiesRef, SharedCopy,
    Version as ObjectVersion,
};
pub use write::WriteConfig;

use crate::store::{BucketExt, SharedBucket};
use attrs::Times;
use cache::Cache;
use dir::DirSnapshot;
use inode::{Inode, Inodes, Stat};
use open::OpenFile;

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
    /// Store mode, owner, times and xattrs in object metadata (s3fs's convention) and show
    /// them.
    pub persist_metadata: bool,
    /// Keep object data on local disk (in `cache_dir`, within `max_cache_size`) across
    /// opens.
    pub read_cache: bool,
    /// The node's copies, shared with the node's other mounts (under the CSI node plugin).
    pub shared_copies: Option<SharedCopiesRef>,
    /// Where to keep the tables a successor process needs to take over the mount.
    pub journal: Option<std::path::PathBuf>,
    /// Take over from the predecessor whose journal this is.
    pub resume: bool,
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
            read_cache: false,
            shared_copies: None,
            journal: None,
            resume: false,
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
    /// Access time (as set by `utimensat`, else the modification time).
    pub atime: SystemTime,
    /// Status change time (chmod, chown, rename, write, truncate, link count).
    pub ctime: SystemTime,
    /// Permission bits.
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Links: 0 once the name of a file still open was removed.
    pub nlink: u32,
    /// Device number of a device node.
    pub rdev: u32,
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

/// An open file handle and how the kernel may cache it.
#[derive(Debug)]
pub struct Opened {
    /// The handle.
    pub fh: u64,
    /// The kernel may keep the file's pages from earlier opens: the object has not changed
    /// since they were read (FOPEN_KEEP_CACHE).
    pub keep_cache: bool,
    /// A local file holding the whole object, verified, that the kernel may read directly
    /// (FUSE passthrough); kept alive by the handle.
    pub backing: Option<Arc<CachedObject>>,
    /// The kernel may read this handle past its page cache (FOPEN_DIRECT_IO): the first
    /// open of a large object that no page of the kernel holds, not written here, with no
    /// local copy. A cold stream then costs one copy less; the next open of the unchanged
    /// object uses the page cache, so a second read can be served from memory.
    pub direct: bool,
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

/// One handle open for writing: its own flags, and the state it shares with every other
/// writing handle of the same inode.
struct WriteHandle {
    ino: u64,
    pid: u32,
    append: bool,
    file: Arc<OpenFile>,
}

enum Handle {
    Read(Arc<readers::Readers>),
    Write(WriteHandle),
    Dir(DirSnapshot),
    /// A handle a predecessor process opened: a reader is made again at its next read; a
    /// writer's unwritten bytes died with that process.
    Lost {
        ino: u64,
        write: bool,
    },
}

/// A handle in the table: whether it writes is fixed when it is made, and known without its
/// lock, so that a close() of a reading descriptor (every fork+exec of a process holding the
/// file closes one) never waits behind a read that is waiting for the store.
struct Slot {
    write: bool,
    handle: AsyncMutex<Handle>,
}

impl Slot {
    fn new(handle: Handle) -> Arc<Slot> {
        let write = matches!(handle, Handle::Write(_) | Handle::Lost { write: true, .. });
        Arc::new(Slot {
            write,
            handle: AsyncMutex::new(handle),
        })
    }
}

impl std::ops::Deref for Slot {
    type Target = AsyncMutex<Handle>;

    fn deref(&self) -> &AsyncMutex<Handle> {
        &self.handle
    }
}

/// The object version (ETag, size, mtime) a file's kernel pages were read from.
type PagesOf = (Option<String>, u64, SystemTime);

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
    handles: Mutex<HashMap<u64, Arc<Slot>>>,
    /// Files open for writing, by inode: one state shared by all their writing handles.
    open_files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    /// Access and change times set during the mount, by key (they outlive the inodes).
    times: Mutex<Times>,
    next_fh: AtomicU64,
    started: SystemTime,
    cache: Arc<Cache>,
    budget: budget::Budget,
    /// The local data cache (`read_cache`).
    read_cache: Option<Arc<readcache::ReadCache>>,
    /// Directory listings kept for the metadata TTL.
    listings: listcache::ListCache,
    /// The tables a successor process needs (`journal`).
    journal: Option<Mutex<journal::Journal>>,
    /// The version of each file whose pages the kernel may hold (read since it last changed).
    kept: Mutex<HashMap<u64, PagesOf>>,
    /// The readers shared by the read handles of each inode open now.
    open_readers: Mutex<HashMap<u64, std::sync::Weak<readers::Readers>>>,
    /// Lookups of unknown names asked of the store, by directory, since the time given.
    lookups_in: Mutex<HashMap<u64, (u32, Instant)>>,
    /// Counters.
    pub counters: Counters,
}

/// The inode table, locked; its changes reach the journal when the lock is released.
struct InodesGuard<'a> {
    guard: std::sync::MutexGuard<'a, Inodes>,
    journal: Option<&'a Mutex<journal::Journal>>,
}

impl std::ops::Deref for InodesGuard<'_> {
    type Target = Inodes;
    fn deref(&self) -> &Inodes {
        &self.guard
    }
}

impl std::ops::DerefMut for InodesGuard<'_> {
    fn deref_mut(&mut self) -> &mut Inodes {
        &mut self.guard
    }
}

impl Drop for InodesGuard<'_> {
    fn drop(&mut self) {
        if let Some(j) = self.journal
            && !self.guard.pending.is_empty()
        {
            let recs = std::mem::take(&mut self.guard.pending);
            if let Err(e) = lock(j).append(recs) {
                tracing::warn!(error = %e, "writing the mount's journal failed");
            }
        }
    }
}

/// Lock a std mutex, ignoring poisoning (no invariant spans a panic here).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Fs {
    /// A file system over `store` with `cfg`.
    pub fn new(store: SharedBucket, cfg: FsConfig) -> Fs {
        let started = SystemTime::now();
        // The store, as seen through the listing cache (which learns of every change).
        let (listings, store) = listcache::ListCache::new(cfg.metadata_ttl, store);
        let cache = Arc::new(Cache::new(cfg.cache_dir.clone(), cfg.max_cache_size));
        let budget = budget::Budget::new(cfg.memory_limit);
        let read_cache = cfg.read_cache.then(|| {
            let rc = Arc::new(readcache::ReadCache::new(
                cache.clone(),
                store.clone(),
                budget.clone(),
                (cfg.read.part_size / 2).max(readcache::BLOCK),
                6,
                cfg.shared_copies.as_ref().map(|s| s.0.clone()),
            ));
            let weak = Arc::downgrade(&rc);
            cache.set_reclaim(move |n| weak.upgrade().map(|rc| rc.evict(n)).unwrap_or(0));
            rc
        });
        let (inodes, handles, journal, next_fh) = Self::open_journal(&cfg, started);
        Fs {
            inodes: Mutex::new(inodes),
            cache,
            budget,
            read_cache,
            listings,
            kept: Mutex::new(HashMap::new()),
            open_readers: Mutex::new(HashMap::new()),
            lookups_in: Mutex::new(HashMap::new()),
            journal,
            store,
            cfg,
            handles: Mutex::new(handles),
            open_files: Mutex::new(HashMap::new()),
            times: Mutex::new(Times::default()),
            next_fh: AtomicU64::new(next_fh),
            started,
            counters: Counters::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    fn inodes(&self) -> InodesGuard<'_> {
        InodesGuard {
            guard: lock(&self.inodes),
            journal: self.journal.as_ref(),
        }
    }

    /// The inode table, handles and journal to start with: fresh, or (`resume`) those of
    /// the predecessor's journal.
    #[allow(clippy::type_complexity)]
    fn open_journal(
        cfg: &FsConfig,
        started: SystemTime,
    ) -> (
        Inodes,
        HashMap<u64, Arc<Slot>>,
        Option<Mutex<journal::Journal>>,
        u64,
    ) {
        let fresh = || (Inodes::new(&cfg.prefix, started), HashMap::new(), None, 1);
        let Some(path) = &cfg.journal else {
            return fresh();
        };
        let opened = if cfg.resume {
            journal::Journal::open(path).map(|(j, t)| (j, Some(t)))
        } else {
            journal::Journal::create(path).map(|j| (j, None))
        };
        let (j, tables) = match opened {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "the mount's journal cannot be used: a successor could not take it over");
                return fresh();
            }
        };
        let Some(t) = tables else {
            let mut inodes = Inodes::new(&cfg.prefix, started);
            inodes.journal_changes();
            return (inodes, HashMap::new(), Some(Mutex::new(j)), 1);
        };
        let inodes = Inodes::restore(&cfg.prefix, started, &t.nodes);
        let mut handles = HashMap::new();
        for (&fh, &(ino, kind)) in &t.handles {
            let h = match kind {
                journal::DIR => Handle::Dir(DirSnapshot::default()),
                k => Handle::Lost {
                    ino,
                    write: k == journal::WRITE,
                },
            };
            handles.insert(fh, Slot::new(h));
        }
        let next_fh = t.handles.keys().max().map_or(1, |m| m + 1);
        tracing::info!(
            inodes = t.nodes.len(),
            handles = t.handles.len(),
            "took over the predecessor's inodes and handles"
        );
        (inodes, handles, Some(Mutex::new(j)), next_fh)
    }

    /// Write `recs` to the journal (before the reply that depends on them).
    fn journal(&self, recs: Vec<journal::Record>) {
        if let Some(j) = &self.journal
            && let Err(e) = lock(j).append(recs)
        {
            tracing::warn!(error = %e, "writing the mount's journal failed");
        }
    }

    /// Record the kernel's INIT parameters (for a successor).
    pub fn record_init(&self, init: InitParams) {
        self.journal(vec![journal::Record::Init(init)]);
    }

    /// The INIT parameters the predecessor recorded, when taking over.
    pub fn resumed_init(&self) -> Option<InitParams> {
        self.journal.as_ref().and_then(|j| lock(j).init())
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
            Kind::Special(_) => (self.cfg.file_mode, 0),
        };
        let (mut uid, mut gid) = (self.cfg.uid, self.cfg.gid);
        if self.cfg.persist_metadata && inode.kind != Kind::Symlink {
            let m = &inode.stat.meta;
            perm = meta::mode(m).map(|m| (m & 0o7777) as u16).unwrap_or(perm);
            uid = meta::uid(m).unwrap_or(uid);
            gid = meta::gid(m).unwrap_or(gid);
        }
        let (atime, ctime, mtime) = {
            let times = lock(&self.times);
            let (atime, ctime) = times
                .get(&inode.key)
                .unwrap_or((inode.stat.atime, inode.stat.ctime));
            let mtime = match inode.kind {
                Kind::Dir => times.dir_mtime(&inode.key),
                _ => None,
            };
            (atime, ctime, mtime.unwrap_or(inode.stat.mtime))
        };
        Attr {
            ino: inode.ino,
            kind: inode.kind,
            size,
            mtime,
            atime,
            ctime,
            perm,
            uid,
            gid,
            rdev: match inode.kind {
                Kind::Special(_) => meta::rdev(&inode.stat.meta),
                _ => 0,
            },
            nlink: match (inode.unlinked, inode.kind) {
                (true, _) => 0,
                (false, Kind::Dir) => 2,
                (false, _) => 1,
            },
        }
    }

    fn expiry(&self) -> Instant {
        Instant::now() + self.cfg.metadata_ttl
    }

    fn dir_stat(&self, meta: crate::store::Meta) -> Stat {
        let mtime = meta::mtime(&meta).unwrap_or(self.started);
        Stat::new(0, mtime, None, meta)
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

    /// The metadata of the directory marker `dir_key` (with `--persist-metadata`).
    async fn dir_meta(&self, dir_key: &str) -> FsResult<crate::store::Meta> {
        if !self.cfg.persist_metadata {
            return Ok(Default::default());
        }
        Ok(self
            .store
            .head(dir_key)
            .await?
            .map(|i| i.meta)
            .unwrap_or_default())
    }

    /// Find `name` in `parent` without taking a reference.
    async fn resolve(&self, parent: u64, name: &str) -> FsResult<Attr> {
        let p = self.parent_dir(parent)?;
        meta::check_name(name, libc::ENOENT)?;
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
        if self.list_for_lookups(parent, &p.key).await {
            // The listing filled the table: a name it has is answered from it (one it
            // lacks is still asked of the store).
            let inodes = self.inodes();
            if let Some(child) = inodes.child(parent, name)
                && (child.local || child.expiry > Instant::now())
            {
                return Ok(self.attr_of(child));
            }
        }
        self.counters.remote_lookups.fetch_add(1, Ordering::Relaxed);
        let file_key = format!("{}{name}", p.key);
        let dir_key = format!("{file_key}/");
        // One HEAD answers for a file; only when there is none is the prefix listed. So a
        // file shadows a directory of the same name, and a file lookup costs one request.
        let file = self.store.head(&file_key).await?;
        let dir = match file {
            Some(_) => None,
            None => match self.store.dir_exists(&dir_key).await? {
                true => Some(self.dir_meta(&dir_key).await?),
                false => None,
            },
        };
        let mut inodes = self.inodes();
        let ino = match (file, dir) {
            (Some(info), _) => {
                let (kind, stat) = meta::stat_of(info);
                inodes.upsert(parent, name, file_key, kind, stat, self.expiry())
            }
            (None, Some(m)) => inodes.upsert(
                parent,
                name,
                dir_key,
                Kind::Dir,
                self.dir_stat(m),
                self.expiry(),
            ),
            (None, None) => {
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
        if inode.kind == Kind::Dir || inode.local || inode.unlinked || inode.expiry > Instant::now()
        {
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

    /// Bytes held in the staging cache now (staged edits and read-cache entries).
    pub fn cache_used(&self) -> u64 {
        self.cache.used()
    }

    /// Reads answered from the local data cache so far.
    pub fn read_cache_hits(&self) -> u64 {
        self.read_cache
            .as_ref()
            .map_or(0, |rc| rc.hits.load(Ordering::Relaxed))
    }

    /// The kernel's pages of `ino` no longer match the object (it is being changed here).
    fn forget_pages(&self, ino: u64) {
        lock(&self.kept).remove(&ino);
    }

    /// Number of inodes held in memory.
    pub fn inode_count(&self) -> usize {
        self.inodes().len()
    }

    /// Abort every upload still open (at unmount).
    pub async fn shutdown(&self) {
        let files: Vec<_> = lock(&self.open_files).drain().map(|(_, f)| f).collect();
        for f in files {
            f.abort().await;
        }
        lock(&self.handles).clear();
    }
}
