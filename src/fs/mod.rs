//! The file-system core: maps a bucket prefix to files and directories (lookup, stat,
//! listing, reads through the prefetcher, streaming uploads, mkdir/rmdir/unlink). It knows
//! nothing of FUSE, gRPC or Kubernetes and is tested directly against the in-memory store.

mod dir;
mod error;
mod inode;
mod read;
mod write;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::Mutex as AsyncMutex;

pub use dir::DirEntry;
pub use error::{FsError, FsResult};
pub use inode::{Kind, ROOT_INO};
pub use read::ReadConfig;
pub use write::WriteConfig;

use crate::store::{Store, valid_name};
use dir::DirSnapshot;
use inode::{Inode, Inodes, Stat};
use read::Reader;
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
    /// Process that opened it.
    pub pid: u32,
}

enum Handle {
    Read(Reader),
    Write { ino: u64, pid: u32, writer: Writer },
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
    store: Store,
    cfg: FsConfig,
    inodes: Mutex<Inodes>,
    handles: Mutex<HashMap<u64, Arc<AsyncMutex<Handle>>>>,
    next_fh: AtomicU64,
    started: SystemTime,
    /// Counters.
    pub counters: Counters,
}

impl Fs {
    /// A file system over `store` with `cfg`.
    pub fn new(store: Store, cfg: FsConfig) -> Fs {
        let started = SystemTime::now();
        Fs {
            inodes: Mutex::new(Inodes::new(&cfg.prefix, started)),
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
        let (perm, size) = match inode.kind {
            Kind::Dir => (self.cfg.dir_mode, 0),
            Kind::File => (self.cfg.file_mode, inode.stat.size),
        };
        Attr {
            ino: inode.ino,
            kind: inode.kind,
            size,
            mtime: inode.stat.mtime,
            perm,
            uid: self.cfg.uid,
            gid: self.cfg.gid,
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
                let stat = Stat {
                    size: info.size,
                    mtime: info.mtime,
                    etag: info.etag,
                };
                inodes.upsert(parent, name, file_key, Kind::File, stat, self.expiry())
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
                        i.stat = Stat {
                            size: info.size,
                            mtime: info.mtime,
                            etag: info.etag,
                        };
                        i.expiry = expiry;
                    }
                    return Ok(self.attr_of(i));
                }
                Err(FsError::new(libc::ESTALE, format!("unknown inode {ino}")))
            }
            None => Err(FsError::not_found(&inode.key)),
        }
    }

    /// Change attributes. Only a size equal to the current one (or 0 on an empty new
    /// file) is accepted; mode, owner and times are accepted and not stored.
    pub async fn setattr(&self, ino: u64, size: Option<u64>, fh: Option<u64>) -> FsResult<Attr> {
        let inode = self.inode(ino)?;
        if let Some(size) = size {
            self.writable()?;
            if inode.kind == Kind::Dir {
                return Err(FsError::new(libc::EISDIR, "cannot truncate a directory"));
            }
            let current = match fh.and_then(|fh| self.handle(fh).ok()) {
                Some(h) => match &*h.lock().await {
                    Handle::Write { writer, .. } => writer.size(),
                    _ => inode.stat.size,
                },
                None => inode.stat.size,
            };
            if size != current {
                return Err(FsError::new(
                    libc::ENOTSUP,
                    format!(
                        "{:?}: truncating from {current} to {size} bytes is not supported",
                        inode.key
                    ),
                ));
            }
        }
        Ok(self.attr_of(&self.inode(ino)?))
    }

    fn new_fh(&self, handle: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::new(AsyncMutex::new(handle)));
        fh
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<AsyncMutex<Handle>>> {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
            .ok_or_else(|| FsError::new(libc::EBADF, format!("unknown file handle {fh}")))
    }

    fn take_handle(&self, fh: u64) -> Option<Arc<AsyncMutex<Handle>>> {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh)
    }

    /// Open file `ino`.
    pub async fn open(&self, ino: u64, mode: OpenMode) -> FsResult<u64> {
        let inode = self.inode(ino)?;
        if inode.kind == Kind::Dir {
            return Err(FsError::new(
                libc::EISDIR,
                format!("{:?} is a directory", inode.key),
            ));
        }
        if mode.write {
            self.writable()?;
            if !(mode.truncate || (inode.local && inode.stat.size == 0)) {
                return Err(FsError::new(
                    libc::EPERM,
                    format!(
                        "{:?}: opening an existing file for writing needs O_TRUNC (append and in-place writes are not supported)",
                        inode.key
                    ),
                ));
            }
            if let Some(i) = self.inodes().get_mut(ino) {
                i.local = true;
                i.stat.size = 0;
                i.stat.mtime = SystemTime::now();
            }
            let writer = Writer::new(self.store.clone(), inode.key.clone(), self.cfg.write);
            return Ok(self.new_fh(Handle::Write {
                ino,
                pid: mode.pid,
                writer,
            }));
        }
        let attr = self.getattr(ino).await?;
        let etag = self.inode(ino)?.stat.etag;
        let reader = Reader::new(
            self.store.clone(),
            inode.key.clone(),
            attr.size,
            etag,
            self.cfg.read,
        );
        Ok(self.new_fh(Handle::Read(reader)))
    }

    /// Create and open a new file `name` in `parent`.
    pub async fn create(
        &self,
        parent: u64,
        name: &str,
        exclusive: bool,
        pid: u32,
    ) -> FsResult<(Attr, u64)> {
        self.writable()?;
        let p = self.parent_dir(parent)?;
        if !valid_name(name) {
            return Err(FsError::new(
                libc::EINVAL,
                format!("invalid file name {name:?}"),
            ));
        }
        match self.resolve(parent, name).await {
            Ok(existing) if existing.kind == Kind::Dir => {
                return Err(FsError::new(
                    libc::EISDIR,
                    format!("{name:?} is a directory"),
                ));
            }
            Ok(_) if exclusive => {
                return Err(FsError::new(libc::EEXIST, format!("{name:?} exists")));
            }
            Ok(_)
            | Err(FsError {
                errno: libc::ENOENT,
                ..
            }) => {}
            Err(e) => return Err(e),
        }
        let key = format!("{}{name}", p.key);
        let stat = Stat {
            size: 0,
            mtime: SystemTime::now(),
            etag: None,
        };
        let attr = {
            let mut inodes = self.inodes();
            let ino = inodes.insert_local(parent, name, key.clone(), stat);
            let i = inodes.get_mut(ino).expect("just inserted");
            i.lookups += 1;
            self.attr_of(i)
        };
        let writer = Writer::new(self.store.clone(), key, self.cfg.write);
        let fh = self.new_fh(Handle::Write {
            ino: attr.ino,
            pid,
            writer,
        });
        Ok((attr, fh))
    }

    /// Read up to `len` bytes at `offset` from handle `fh`.
    pub async fn read(&self, fh: u64, offset: u64, len: u32) -> FsResult<Bytes> {
        let h = self.handle(fh)?;
        let mut h = h.lock().await;
        match &mut *h {
            Handle::Read(r) => r.read(offset, len).await,
            Handle::Write { .. } => Err(FsError::new(
                libc::EBADF,
                "reading a file while it is being written is not supported",
            )),
            Handle::Dir(_) => Err(FsError::new(libc::EISDIR, "is a directory")),
        }
    }

    /// Write `data` at `offset` through handle `fh`.
    pub async fn write(&self, fh: u64, offset: u64, data: Bytes) -> FsResult<u32> {
        let h = self.handle(fh)?;
        let mut h = h.lock().await;
        match &mut *h {
            Handle::Write { ino, writer, .. } => {
                let n = writer.write(offset, data).await?;
                let size = writer.size();
                if let Some(i) = self.inodes().get_mut(*ino) {
                    i.stat.size = size;
                    i.stat.mtime = SystemTime::now();
                }
                Ok(n)
            }
            _ => Err(FsError::new(libc::EBADF, "file not open for writing")),
        }
    }

    /// close(): complete the upload of a file written through `fh` by process `pid`.
    pub async fn flush(&self, fh: u64, pid: u32) -> FsResult<()> {
        let Ok(h) = self.handle(fh) else {
            return Ok(());
        };
        let mut h = h.lock().await;
        if let Handle::Write {
            ino,
            pid: opener,
            writer,
        } = &mut *h
        {
            // A close() before any write (e.g. the shell's dup2-then-close of a redirection)
            // leaves the upload open; the release after the last close completes it anyway.
            if (*opener == pid || pid == 0) && writer.size() > 0 {
                let ino = *ino;
                self.finish(ino, writer).await?;
            }
        }
        Ok(())
    }

    /// fsync(): complete the upload now.
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        let mut h = h.lock().await;
        if let Handle::Write { ino, writer, .. } = &mut *h {
            let ino = *ino;
            self.finish(ino, writer).await?;
        }
        Ok(())
    }

    async fn finish(&self, ino: u64, writer: &mut Writer) -> FsResult<()> {
        let was_finished = writer.is_finished();
        let result = writer.finish().await;
        if was_finished {
            return result;
        }
        let mut inodes = self.inodes();
        if let Some(i) = inodes.get_mut(ino) {
            i.local = false;
            i.stat.size = writer.size();
            i.stat.etag = None;
            // Ask the store for the final ETag and mtime at the next stat.
            i.expiry = Instant::now();
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, "upload failed; the object was not written");
            let (parent, name, lookups) = match inodes.get(ino) {
                Some(i) => (i.parent, i.name.clone(), i.lookups),
                None => return result,
            };
            if lookups == 0 {
                inodes.remove_name(parent, &name, Instant::now());
            }
        }
        result
    }

    /// The last close of `fh`: finish an upload not finished yet, free the handle.
    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let Some(h) = self.take_handle(fh) else {
            return Ok(());
        };
        let mut h = h.lock().await;
        match &mut *h {
            Handle::Write { ino, writer, .. } => {
                let ino = *ino;
                self.finish(ino, writer).await
            }
            Handle::Dir(snapshot) => {
                let inos = snapshot.inos();
                self.inodes().sweep(&inos);
                Ok(())
            }
            Handle::Read(_) => Ok(()),
        }
    }

    /// Open directory `ino`.
    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        let inode = self.inode(ino)?;
        if inode.kind != Kind::Dir {
            return Err(FsError::new(
                libc::ENOTDIR,
                format!("{:?} is not a directory", inode.key),
            ));
        }
        Ok(self.new_fh(Handle::Dir(DirSnapshot::default())))
    }

    /// At most `max` entries of directory handle `fh` from `offset` on (offset 0 lists the
    /// store again). Each entry's `offset` is the value to pass to continue after it.
    pub async fn readdir(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        max: usize,
    ) -> FsResult<Vec<DirEntry>> {
        let h = self.handle(fh)?;
        let mut h = h.lock().await;
        let Handle::Dir(snapshot) = &mut *h else {
            return Err(FsError::new(libc::EBADF, "not a directory handle"));
        };
        if offset == 0 || !snapshot.is_loaded() {
            let entries = self.list_dir(ino).await?;
            *snapshot = DirSnapshot::new(entries);
        }
        Ok(snapshot.after(offset, max))
    }

    /// The entries of an already listed directory handle, without waiting: `None` when the
    /// listing must be (re)taken from the store or the handle is busy. Lets the FUSE adapter
    /// answer from memory on its own thread.
    pub fn readdir_cached(&self, fh: u64, offset: u64, max: usize) -> Option<Vec<DirEntry>> {
        if offset == 0 {
            return None;
        }
        let h = self.handle(fh).ok()?;
        let guard = h.try_lock().ok()?;
        match &*guard {
            Handle::Dir(snapshot) if snapshot.is_loaded() => Some(snapshot.after(offset, max)),
            _ => None,
        }
    }

    /// Take a kernel reference to `ino` (an entry returned by readdirplus).
    pub fn remember(&self, ino: u64) {
        self.inodes().add_lookups(ino, 1);
    }

    async fn list_dir(&self, ino: u64) -> FsResult<Vec<DirEntry>> {
        let dir = self.inode(ino)?;
        self.counters.listings.fetch_add(1, Ordering::Relaxed);
        let listing = self.store.list(&dir.key).await?;
        let expiry = self.expiry();
        let mut inodes = self.inodes();
        let mut entries: Vec<DirEntry> =
            Vec::with_capacity(listing.dirs.len() + listing.files.len() + 2);
        let dot = self.attr_of(&dir);
        let dotdot = inodes
            .get(dir.parent)
            .map(|p| self.attr_of(p))
            .unwrap_or_else(|| dot.clone());
        let mut names = std::collections::HashSet::new();
        // A file shadows a directory of the same name (as in lookup).
        for (name, info) in listing.files {
            let stat = Stat {
                size: info.size,
                mtime: info.mtime,
                etag: info.etag,
            };
            let ino = inodes.upsert(ino, &name, info.key, Kind::File, stat, expiry);
            let attr = self.attr_of(inodes.get(ino).expect("inserted"));
            names.insert(name.clone());
            entries.push(DirEntry {
                name,
                attr,
                offset: 0,
            });
        }
        for name in listing.dirs {
            if names.contains(&name) {
                continue;
            }
            let key = format!("{}{name}/", dir.key);
            let ino = inodes.upsert(ino, &name, key, Kind::Dir, self.dir_stat(), expiry);
            let attr = self.attr_of(inodes.get(ino).expect("inserted"));
            names.insert(name.clone());
            entries.push(DirEntry {
                name,
                attr,
                offset: 0,
            });
        }
        for local in inodes.local_children(ino) {
            if names.insert(local.name.clone()) {
                entries.push(DirEntry {
                    name: local.name.clone(),
                    attr: self.attr_of(&local),
                    offset: 0,
                });
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let mut all = vec![
            DirEntry {
                name: ".".into(),
                attr: dot,
                offset: 0,
            },
            DirEntry {
                name: "..".into(),
                attr: dotdot,
                offset: 0,
            },
        ];
        all.extend(entries);
        for (i, e) in all.iter_mut().enumerate() {
            e.offset = i as u64 + 1;
        }
        Ok(all)
    }

    /// Create directory `name` in `parent` (a marker object `name/`).
    pub async fn mkdir(&self, parent: u64, name: &str) -> FsResult<Attr> {
        self.writable()?;
        let p = self.parent_dir(parent)?;
        if !valid_name(name) {
            return Err(FsError::new(
                libc::EINVAL,
                format!("invalid directory name {name:?}"),
            ));
        }
        match self.resolve(parent, name).await {
            Ok(_) => return Err(FsError::new(libc::EEXIST, format!("{name:?} exists"))),
            Err(e) if e.errno == libc::ENOENT => {}
            Err(e) => return Err(e),
        }
        let key = format!("{}{name}/", p.key);
        self.store.put_marker(&key).await?;
        let mut inodes = self.inodes();
        let ino = inodes.upsert(parent, name, key, Kind::Dir, self.dir_stat(), self.expiry());
        inodes.add_lookups(ino, 1);
        Ok(self.attr_of(inodes.get(ino).expect("inserted")))
    }

    /// Remove file `name` from `parent` (delete the object).
    pub async fn unlink(&self, parent: u64, name: &str) -> FsResult<()> {
        self.writable()?;
        let attr = self.resolve(parent, name).await?;
        if attr.kind == Kind::Dir {
            return Err(FsError::new(
                libc::EISDIR,
                format!("{name:?} is a directory"),
            ));
        }
        let inode = self.inode(attr.ino)?;
        if !inode.local {
            self.store.delete(&inode.key).await?;
        }
        self.inodes().remove_name(parent, name, self.expiry());
        Ok(())
    }

    /// Remove the empty directory `name` from `parent`.
    pub async fn rmdir(&self, parent: u64, name: &str) -> FsResult<()> {
        self.writable()?;
        let attr = self.resolve(parent, name).await?;
        if attr.kind != Kind::Dir {
            return Err(FsError::new(
                libc::ENOTDIR,
                format!("{name:?} is not a directory"),
            ));
        }
        let inode = self.inode(attr.ino)?;
        let listing = self.store.list(&inode.key).await?;
        let busy = !self.inodes().local_children(attr.ino).is_empty();
        if !listing.dirs.is_empty() || !listing.files.is_empty() || busy {
            return Err(FsError::new(
                libc::ENOTEMPTY,
                format!("{:?} is not empty", inode.key),
            ));
        }
        self.store.delete_marker(&inode.key).await?;
        self.inodes().remove_name(parent, name, self.expiry());
        Ok(())
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
