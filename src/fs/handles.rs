//! Open files: the handle table, open and create, reads (through the prefetcher, or the
//! staged copy of a file open for writing), writes, truncation, and what close, fsync and
//! release do with each kind of handle.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use bytes::Bytes;

use crate::store::Payload;

use super::open::{Content, How};
use super::stage::Staged;
use super::*;

/// The error of a writing handle whose process died with its unwritten bytes.
fn lost() -> FsError {
    FsError::new(
        libc::EIO,
        "this file was open for writing when the mount process died: what it had not stored yet was lost; reopen it",
    )
}

impl Fs {
    fn next_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn new_fh(&self, ino: u64, handle: Handle) -> u64 {
        let fh = self.next_fh();
        self.insert_handle(fh, ino, handle);
        fh
    }

    fn insert_handle(&self, fh: u64, ino: u64, handle: Handle) {
        let kind = match &handle {
            Handle::Read(_) | Handle::Lost { write: false, .. } => journal::READ,
            Handle::Write(_) | Handle::Lost { write: true, .. } => journal::WRITE,
            Handle::Dir(_) => journal::DIR,
        };
        self.journal(vec![journal::Record::Open { fh, ino, kind }]);
        lock(&self.handles).insert(fh, Slot::new(handle));
    }

    pub(super) fn handle(&self, fh: u64) -> FsResult<Arc<Slot>> {
        lock(&self.handles)
            .get(&fh)
            .cloned()
            .ok_or_else(|| FsError::new(libc::EBADF, format!("unknown file handle {fh}")))
    }

    fn take_handle(&self, fh: u64) -> Option<Arc<Slot>> {
        let h = lock(&self.handles).remove(&fh);
        if h.is_some() {
            self.journal(vec![journal::Record::Close { fh }]);
        }
        h
    }

    /// A new writing handle of `inode`.
    async fn open_writer(&self, inode: &Inode, pid: u32, append: bool, how: How) -> FsResult<u64> {
        let fh = self.next_fh();
        let file = self.open_for_writing(inode, fh, how).await?;
        self.insert_handle(
            fh,
            inode.ino,
            Handle::Write(WriteHandle {
                ino: inode.ino,
                pid,
                append,
                file,
            }),
        );
        Ok(fh)
    }

    /// Open file `ino`.
    pub async fn open(&self, ino: u64, mode: OpenMode) -> FsResult<u64> {
        self.open_with_cache(ino, mode).await.map(|o| o.fh)
    }

    /// Open `ino`, saying how the kernel may cache it.
    pub async fn open_with_cache(&self, ino: u64, mode: OpenMode) -> FsResult<Opened> {
        let inode = self.inode(ino)?;
        if inode.kind == Kind::Dir {
            return Err(FsError::new(
                libc::EISDIR,
                format!("{:?} is a directory", inode.key),
            ));
        }
        if mode.write {
            self.writable()?;
            self.forget_pages(ino);
            let mut inode = inode;
            if !inode.local && !mode.truncate {
                // Stage from what the store holds now.
                self.getattr(ino).await?;
                inode = self.inode(ino)?;
            }
            let how = How {
                truncate: mode.truncate,
                new: inode.local && inode.stat.size == 0,
                // The common case: a sequential rewrite streams, no local copy.
                stream: mode.truncate && !mode.read && !mode.append,
            };
            let fh = self.open_writer(&inode, mode.pid, mode.append, how).await?;
            return Ok(Opened {
                fh,
                keep_cache: false,
                backing: None,
                direct: false,
            });
        }
        let attr = self.getattr(ino).await?;
        let inode = self.inode(ino)?;
        let etag = inode.stat.etag.clone();
        // The kernel's pages of this file are good while the object is the one they were
        // read from (checked here, within the metadata TTL).
        let version = (etag.clone(), attr.size, attr.mtime);
        let keep_cache = !inode.local && {
            let mut kept = lock(&self.kept);
            let same = kept.get(&ino) == Some(&version);
            kept.insert(ino, version);
            same
        };
        let mut spec = self.readers_spec(&inode, attr.size, etag.clone());
        let mut backing = None;
        if let (Some(rc), Some(etag), false) = (&self.read_cache, etag, inode.local) {
            let version = readcache::Version {
                key: inode.key.clone(),
                etag,
                size: attr.size,
            };
            if let Some(entry) = rc.entry(version).await {
                if entry.is_verified() {
                    backing = Some(entry.clone());
                }
                spec.cached = Some((rc.clone(), entry));
            }
        }
        let above = self.config().read.direct_first_read;
        let direct =
            !keep_cache && !inode.local && backing.is_none() && above > 0 && attr.size >= above;
        let fh = self.new_fh(ino, Handle::Read(self.readers_for(ino, spec)));
        Ok(Opened {
            fh,
            keep_cache,
            backing,
            direct,
        })
    }

    /// Create and open a new file `name` in `parent`.
    pub async fn create(&self, parent: u64, name: &str, mode: CreateMode) -> FsResult<(Attr, u64)> {
        self.writable()?;
        let p = self.parent_dir(parent)?;
        meta::check_name(name, libc::EINVAL)?;
        match self.resolve(parent, name).await {
            Ok(existing) if existing.kind == Kind::Dir => {
                return Err(FsError::new(
                    libc::EISDIR,
                    format!("{name:?} is a directory"),
                ));
            }
            Ok(_) if mode.exclusive => {
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
        meta::check_key(&key)?;
        let now = SystemTime::now();
        let meta = if self.cfg.persist_metadata {
            meta::new_meta(
                meta::S_IFREG | (mode.perm & 0o7777),
                mode.uid,
                mode.gid,
                now,
            )
        } else {
            Default::default()
        };
        let inode = {
            let mut inodes = self.inodes();
            let ino = inodes.insert_local(parent, name, key, Stat::new(0, now, None, meta));
            let i = inodes.get_mut(ino).expect("just inserted");
            i.lookups += 1;
            i.clone()
        };
        let how = How {
            truncate: true,
            new: true,
            stream: !mode.read && !mode.append,
        };
        let fh = match self.open_writer(&inode, mode.pid, mode.append, how).await {
            Ok(fh) => fh,
            Err(e) => {
                self.inodes().forget(inode.ino, 1);
                return Err(e);
            }
        };
        Ok((self.attr_of(&self.inode(inode.ino)?), fh))
    }

    /// Read up to `len` bytes at `offset` from handle `fh`, in one buffer.
    pub async fn read(&self, fh: u64, offset: u64, len: u32) -> FsResult<Bytes> {
        Ok(self.read_parts(fh, offset, len).await?.to_bytes())
    }

    /// Read up to `len` bytes at `offset` from handle `fh`, in the pieces the store sent
    /// them in (a FUSE reply is written from them without joining them).
    pub async fn read_parts(&self, fh: u64, offset: u64, len: u32) -> FsResult<Payload> {
        let h = self.handle(fh)?;
        let mut h = h.lock().await;
        if let Handle::Lost { ino, write: false } = &*h {
            // Opened by the predecessor: read on with new readers of the object.
            *h = Handle::Read(Arc::new(self.readers_of(*ino).await?));
        }
        match &mut *h {
            Handle::Read(r) => {
                // Reads of one handle run in parallel: the handle's lock is not held.
                let r = r.clone();
                drop(h);
                r.read(offset, len).await
            }
            Handle::Write(w) => {
                let mut c = w.file.content.lock().await;
                self.to_staged(w.ino, &mut c).await?;
                match &mut *c {
                    Content::Staged(s) => s.read(offset, len).await.map(Payload::from),
                    _ => Ok(Payload::new()),
                }
            }
            Handle::Dir(_) => Err(FsError::new(libc::EISDIR, "is a directory")),
            Handle::Lost { .. } => Err(lost()),
        }
    }

    /// The readers of the handles of `ino` open now, if they read what `spec` does; else
    /// new ones, which later handles share.
    fn readers_for(&self, ino: u64, spec: readers::Spec) -> Arc<readers::Readers> {
        let mut open = lock(&self.open_readers);
        if let Some(r) = open.get(&ino).and_then(std::sync::Weak::upgrade)
            && r.reads_as(&spec)
        {
            return r;
        }
        if open.len() >= 4096 {
            open.retain(|_, r| r.strong_count() > 0);
        }
        let r = Arc::new(readers::Readers::new(spec));
        open.insert(ino, Arc::downgrade(&r));
        r
    }

    /// Readers of `ino` as the store holds it now.
    async fn readers_of(&self, ino: u64) -> FsResult<readers::Readers> {
        let attr = self.getattr(ino).await?;
        let inode = self.inode(ino)?;
        Ok(readers::Readers::new(self.readers_spec(
            &inode,
            attr.size,
            inode.stat.etag.clone(),
        )))
    }

    /// What the readers of `inode` (`size` bytes, pinned to `etag`) are made from.
    fn readers_spec(&self, inode: &Inode, size: u64, etag: Option<String>) -> readers::Spec {
        readers::Spec {
            store: self.store.clone(),
            key: inode.key.clone(),
            size,
            etag,
            cfg: self.cfg.read,
            budget: self.budget.clone(),
            cached: None,
        }
    }

    /// Write `data` at `offset` through handle `fh`.
    pub async fn write(&self, fh: u64, offset: u64, data: Bytes) -> FsResult<u32> {
        let h = self.handle(fh)?;
        let h = h.lock().await;
        let w = match &*h {
            Handle::Write(w) => w,
            Handle::Lost { write: true, .. } => return Err(lost()),
            _ => return Err(FsError::new(libc::EBADF, "file not open for writing")),
        };
        let mut c = w.file.content.lock().await;
        if let Content::Stream { writer, owner } = &*c
            && (*owner != fh || offset != writer.size())
        {
            // A seek in a new file (zip, numpy, TensorBoard…): continue it staged.
            self.to_staged(w.ino, &mut c).await?;
        }
        let n = match &mut *c {
            Content::Stream { writer, .. } => writer.write(offset, data).await?,
            Content::Staged(s) => s.write(offset, &data, w.append).await?,
            Content::Gone { size } => {
                *size = (*size).max(offset + data.len() as u64);
                data.len() as u32
            }
            Content::Opening => return Err(FsError::new(libc::EBADF, "file not open")),
        };
        let size = c.size();
        drop(c);
        self.mark_local(w.ino, size, true);
        Ok(n)
    }

    /// close(): store what a file written through `fh` by process `pid` holds.
    pub async fn flush(&self, fh: u64, pid: u32) -> FsResult<()> {
        let Ok(h) = self.handle(fh) else {
            return Ok(());
        };
        if !h.write {
            return Ok(());
        }
        let h = h.lock().await;
        let w = match &*h {
            Handle::Write(w) => w,
            Handle::Lost { write: true, .. } => return Err(lost()),
            _ => return Ok(()),
        };
        let mut c = w.file.content.lock().await;
        if let Content::Stream { writer, owner } = &*c {
            // A close() before any write (e.g. the shell's dup2-then-close of a
            // redirection), or by another process, leaves the stream open; the release
            // after the last close completes it anyway.
            if *owner != fh || (w.pid != pid && pid != 0) || writer.size() == 0 {
                return Ok(());
            }
        }
        self.store_content(w.ino, &w.file, &mut c).await
    }

    /// fsync(): store what the file holds now.
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        if !h.write {
            return Ok(());
        }
        let h = h.lock().await;
        match &*h {
            Handle::Write(w) => {
                let mut c = w.file.content.lock().await;
                self.store_content(w.ino, &w.file, &mut c).await
            }
            Handle::Lost { write: true, .. } => Err(lost()),
            _ => Ok(()),
        }
    }

    /// The last close of `fh`: store what is not stored yet, free the handle.
    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let Some(h) = self.take_handle(fh) else {
            return Ok(());
        };
        let h = h.lock().await;
        match &*h {
            Handle::Write(w) => self.close_writer(w).await,
            Handle::Dir(snapshot) => {
                let inos = snapshot.inos();
                self.inodes().sweep(&inos);
                Ok(())
            }
            Handle::Read(_) | Handle::Lost { .. } => Ok(()),
        }
    }

    /// Change the size of `ino` (truncate, ftruncate): through the file open for writing if
    /// there is one, otherwise staged, truncated and uploaded at once.
    pub(super) async fn truncate(&self, ino: u64, size: u64) -> FsResult<()> {
        self.writable()?;
        let inode = self.inode(ino)?;
        if inode.kind == Kind::Dir {
            return Err(FsError::new(libc::EISDIR, "cannot truncate a directory"));
        }
        if let Some(file) = self.open_file(ino) {
            let mut c = file.content.lock().await;
            if !matches!(&*c, Content::Stream { writer, .. } if writer.size() == size) {
                self.to_staged(ino, &mut c).await?;
            }
            if let Content::Staged(s) = &mut *c {
                s.truncate(size).await?;
            }
            drop(c);
            self.mark_local(ino, size, true);
            return Ok(());
        }
        let fresh = self.getattr(ino).await?;
        if fresh.size == size {
            return Ok(());
        }
        let inode = self.inode(ino)?;
        let mut staged = Staged::open(
            self.store.clone(),
            inode.key.clone(),
            &self.cache,
            fresh.size,
            size == 0,
            inode.stat.etag.clone(),
        )?;
        staged.truncate(size).await?;
        staged
            .upload(
                self.cfg.write,
                self.budget.clone(),
                &self.cache,
                self.upload_options(ino),
            )
            .await?;
        let now = SystemTime::now();
        if let Some(i) = self.inodes().get_mut(ino) {
            i.stat.size = size;
            i.stat.mtime = now;
            i.stat.ctime = now;
            i.stat.etag = None;
            i.expiry = Instant::now();
        }
        lock(&self.times).written(&inode.key, now);
        Ok(())
    }
}
