//! Open files: reading through the prefetcher, streaming writes of new files, staged
//! edits of existing ones (append, seek+write, truncate, read-write), and what close,
//! fsync and release do with each.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::Mutex as AsyncMutex;

use super::read::Reader;
use super::stage::Staged;
use super::write::Writer;
use super::*;
use crate::store::PutOptions;

impl Fs {
    pub(super) fn new_fh(&self, handle: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::new(AsyncMutex::new(handle)));
        fh
    }

    pub(super) fn handle(&self, fh: u64) -> FsResult<Arc<AsyncMutex<Handle>>> {
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

    fn mark_local(&self, ino: u64, size: u64) {
        if let Some(i) = self.inodes().get_mut(ino) {
            i.local = true;
            i.stat.size = size;
            i.stat.mtime = SystemTime::now();
        }
    }

    async fn stage(&self, inode: &Inode, empty: bool, append: bool) -> FsResult<Staged> {
        let mut s = Staged::open(
            self.store.clone(),
            inode.key.clone(),
            self.cache.clone(),
            inode.stat.size,
            empty,
            inode.stat.etag.clone(),
        )
        .await?;
        s.append = append;
        Ok(s)
    }

    /// Change attributes. A size change truncates or extends the file (staging it); mode,
    /// owner and times are accepted and not stored.
    pub async fn setattr(&self, ino: u64, size: Option<u64>, fh: Option<u64>) -> FsResult<Attr> {
        let inode = self.inode(ino)?;
        if let Some(size) = size {
            self.writable()?;
            if inode.kind == Kind::Dir {
                return Err(FsError::new(libc::EISDIR, "cannot truncate a directory"));
            }
            let handle = match fh.and_then(|fh| self.handle(fh).ok()) {
                Some(h) => Some(h),
                // truncate(2) by path: use any handle open for writing on this inode.
                None => self.writing_handle(ino).await,
            };
            match handle {
                Some(h) => {
                    let mut h = h.lock().await;
                    self.truncate_handle(&mut h, &inode, size).await?;
                }
                None if size == inode.stat.size && !inode.local => {}
                None => {
                    // No open file: stage, truncate, upload now.
                    let fresh = self.getattr(ino).await?;
                    let mut inode = self.inode(ino)?;
                    inode.stat.size = fresh.size;
                    let mut staged = self.stage(&inode, size == 0, false).await?;
                    staged.truncate(size).await?;
                    staged
                        .upload(
                            self.cfg.write,
                            self.budget.clone(),
                            self.upload_options(ino),
                        )
                        .await?;
                    if let Some(i) = self.inodes().get_mut(ino) {
                        i.stat.size = size;
                        i.stat.mtime = SystemTime::now();
                        i.expiry = Instant::now();
                    }
                }
            }
        }
        Ok(self.attr_of(&self.inode(ino)?))
    }

    fn all_handles(&self) -> Vec<Arc<AsyncMutex<Handle>>> {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Upload what every handle writing `ino` holds (a rename must see the written data),
    /// and point staged handles at `new_key`. Streaming writers are completed.
    pub(super) async fn settle_writers(&self, ino: u64, new_key: &str) -> FsResult<()> {
        for h in self.all_handles() {
            let mut g = h.lock().await;
            match &mut *g {
                Handle::Write { ino: i, writer, .. } if *i == ino => {
                    self.finish(ino, writer).await?;
                }
                Handle::Staged { ino: i, staged } if *i == ino => {
                    self.upload_staged(ino, staged).await?;
                    staged.set_key(new_key.to_string());
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn writing_handle(&self, ino: u64) -> Option<Arc<AsyncMutex<Handle>>> {
        for h in self.all_handles() {
            let g = h.lock().await;
            let owner = match &*g {
                Handle::Write { ino: i, .. } | Handle::Staged { ino: i, .. } => *i,
                _ => continue,
            };
            drop(g);
            if owner == ino {
                return Some(h);
            }
        }
        None
    }

    async fn truncate_handle(&self, h: &mut Handle, inode: &Inode, size: u64) -> FsResult<()> {
        if let Handle::Write { writer, ino, .. } = h {
            if writer.size() == size {
                return Ok(());
            }
            let ino = *ino;
            self.to_staged(h, ino, inode).await?;
        }
        match h {
            Handle::Staged { staged, ino } => {
                staged.truncate(size).await?;
                self.mark_local(*ino, size);
                Ok(())
            }
            _ => Err(FsError::new(libc::EBADF, "file not open for writing")),
        }
    }

    /// Turn a streaming writer that has sent nothing yet into a staged file.
    async fn to_staged(&self, h: &mut Handle, ino: u64, inode: &Inode) -> FsResult<()> {
        let Handle::Write { writer, .. } = h else {
            return Ok(());
        };
        let Some(chunks) = writer.take_unsent() else {
            return Err(FsError::new(
                libc::EINVAL,
                format!(
                    "{:?}: out-of-order write after {} bytes were uploaded: a new file can be rewritten in place only while it is under one part (--part-size)",
                    inode.key,
                    writer.size()
                ),
            ));
        };
        let mut staged = self.stage(inode, true, false).await?;
        staged.adopt(chunks)?;
        *h = Handle::Staged { ino, staged };
        Ok(())
    }

    /// chmod, chown, utimes: stored in object metadata with `persist_metadata` (the object
    /// is rewritten, or the pending upload carries them); otherwise accepted and not stored.
    pub async fn chattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        mtime: Option<SystemTime>,
    ) -> FsResult<Attr> {
        let inode = self.inode(ino)?;
        if !self.cfg.persist_metadata
            || inode.kind != Kind::File
            || (mode, uid, gid, mtime) == (None, None, None, None)
        {
            return Ok(self.attr_of(&inode));
        }
        self.writable()?;
        let mut m = self.upload_meta(ino);
        let old_mode = meta::mode(&m).unwrap_or(meta::S_IFREG | 0o644);
        if let Some(p) = mode {
            m.insert(
                "mode".into(),
                ((old_mode & meta::S_IFMT) | (p & 0o7777)).to_string(),
            );
        }
        if let Some(u) = uid {
            m.insert("uid".into(), u.to_string());
        }
        if let Some(g) = gid {
            m.insert("gid".into(), g.to_string());
        }
        let when = mtime.unwrap_or(inode.stat.mtime);
        meta::set_mtime(&mut m, when);
        if let Some(i) = self.inodes().get_mut(ino) {
            i.stat.meta = m.clone();
            i.stat.mtime = when;
        }
        if inode.local {
            // Open for writing: the upload at close carries the new metadata.
            if let Some(h) = self.writing_handle(ino).await
                && let Handle::Write { writer, .. } = &mut *h.lock().await
            {
                writer.set_meta(m);
            }
            return Ok(self.attr_of(&self.inode(ino)?));
        }
        // Rewrite the object with its new metadata (through the staging cache).
        let fresh = self.inode(ino)?;
        let mut staged = self.stage(&fresh, false, false).await?;
        staged.touch();
        staged
            .upload(
                self.cfg.write,
                self.budget.clone(),
                PutOptions {
                    meta: m,
                    ..Default::default()
                },
            )
            .await?;
        if let Some(i) = self.inodes().get_mut(ino) {
            i.stat.etag = None;
            i.expiry = Instant::now();
            i.stat.mtime = when;
        }
        Ok(self.attr_of(&self.inode(ino)?))
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
            let fresh_new = inode.local && inode.stat.size == 0;
            if mode.truncate && !mode.read && !mode.append {
                // The common case: a sequential rewrite streams, no local copy.
                self.mark_local(ino, 0);
                let mut writer = Writer::new(
                    self.store.clone(),
                    inode.key.clone(),
                    self.cfg.write,
                    self.budget.clone(),
                );
                writer.set_meta(self.upload_meta(ino));
                return Ok(self.new_fh(Handle::Write {
                    ino,
                    pid: mode.pid,
                    writer,
                }));
            }
            let mut inode = inode;
            if !inode.local {
                inode.stat.size = self.getattr(ino).await?.size;
                inode = Inode {
                    stat: self.inode(ino)?.stat,
                    ..inode
                };
            }
            let staged = self
                .stage(&inode, mode.truncate || fresh_new, mode.append)
                .await?;
            self.mark_local(ino, staged.size());
            return Ok(self.new_fh(Handle::Staged { ino, staged }));
        }
        let attr = self.getattr(ino).await?;
        let etag = self.inode(ino)?.stat.etag;
        let reader = Reader::new(
            self.store.clone(),
            inode.key.clone(),
            attr.size,
            etag,
            self.cfg.read,
            self.budget.clone(),
        );
        Ok(self.new_fh(Handle::Read(reader)))
    }

    /// Create and open a new file `name` in `parent`.
    pub async fn create(&self, parent: u64, name: &str, mode: CreateMode) -> FsResult<(Attr, u64)> {
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
        let now = SystemTime::now();
        let stat = Stat {
            size: 0,
            mtime: now,
            etag: None,
            meta: if self.cfg.persist_metadata {
                meta::new_meta(
                    meta::S_IFREG | (mode.perm & 0o7777),
                    mode.uid,
                    mode.gid,
                    now,
                )
            } else {
                Default::default()
            },
        };
        let (attr, inode) = {
            let mut inodes = self.inodes();
            let ino = inodes.insert_local(parent, name, key.clone(), stat);
            let i = inodes.get_mut(ino).expect("just inserted");
            i.lookups += 1;
            (self.attr_of(i), i.clone())
        };
        let handle = if mode.read {
            let mut staged = self.stage(&inode, true, mode.append).await?;
            staged.append = mode.append;
            Handle::Staged {
                ino: attr.ino,
                staged,
            }
        } else {
            let mut writer =
                Writer::new(self.store.clone(), key, self.cfg.write, self.budget.clone());
            writer.set_meta(self.upload_meta(attr.ino));
            Handle::Write {
                ino: attr.ino,
                pid: mode.pid,
                writer,
            }
        };
        Ok((attr, self.new_fh(handle)))
    }

    /// Read up to `len` bytes at `offset` from handle `fh`.
    pub async fn read(&self, fh: u64, offset: u64, len: u32) -> FsResult<Bytes> {
        let h = self.handle(fh)?;
        let mut h = h.lock().await;
        match &mut *h {
            Handle::Read(r) => r.read(offset, len).await,
            Handle::Staged { staged, .. } => staged.read(offset, len).await,
            Handle::Write { .. } => Err(FsError::new(libc::EBADF, "file opened write-only")),
            Handle::Dir(_) => Err(FsError::new(libc::EISDIR, "is a directory")),
        }
    }

    /// Write `data` at `offset` through handle `fh`.
    pub async fn write(&self, fh: u64, offset: u64, data: Bytes) -> FsResult<u32> {
        let h = self.handle(fh)?;
        let mut h = h.lock().await;
        if let Handle::Write { ino, writer, .. } = &mut *h
            && offset != writer.size()
        {
            // A seek in a new file (zip, numpy, TensorBoard…): continue it as a staged file.
            let ino = *ino;
            let inode = self.inode(ino)?;
            self.to_staged(&mut h, ino, &inode).await?;
        }
        match &mut *h {
            Handle::Write { ino, writer, .. } => {
                let n = writer.write(offset, data).await?;
                let size = writer.size();
                self.mark_local(*ino, size);
                Ok(n)
            }
            Handle::Staged { ino, staged } => {
                let n = staged.write(offset, &data).await?;
                self.mark_local(*ino, staged.size());
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
        match &mut *h {
            Handle::Write {
                ino,
                pid: opener,
                writer,
            } => {
                // A close() before any write (e.g. the shell's dup2-then-close of a
                // redirection) leaves the upload open; the release after the last close
                // completes it anyway.
                if (*opener == pid || pid == 0) && writer.size() > 0 {
                    let ino = *ino;
                    self.finish(ino, writer).await?;
                }
                Ok(())
            }
            Handle::Staged { ino, staged } => {
                let ino = *ino;
                self.upload_staged(ino, staged).await
            }
            _ => Ok(()),
        }
    }

    /// fsync(): complete the upload now.
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        let mut h = h.lock().await;
        self.complete(&mut h).await
    }

    /// Complete the upload of a file open for writing (nothing for other handles).
    async fn complete(&self, h: &mut Handle) -> FsResult<()> {
        match h {
            Handle::Write { ino, writer, .. } => {
                let ino = *ino;
                self.finish(ino, writer).await
            }
            Handle::Staged { ino, staged } => {
                let ino = *ino;
                self.upload_staged(ino, staged).await
            }
            _ => Ok(()),
        }
    }

    /// The options (metadata) an upload of `ino` carries now.
    pub(super) fn upload_options(&self, ino: u64) -> PutOptions {
        PutOptions {
            meta: self.upload_meta(ino),
            ..Default::default()
        }
    }

    /// The metadata an upload of `ino` carries now.
    pub(super) fn upload_meta(&self, ino: u64) -> crate::store::Meta {
        if !self.cfg.persist_metadata {
            return Default::default();
        }
        let mut m = self.inode(ino).map(|i| i.stat.meta).unwrap_or_default();
        if meta::mode(&m).is_none() {
            m = meta::new_meta(
                meta::S_IFREG | self.cfg.file_mode as u32,
                self.cfg.uid,
                self.cfg.gid,
                SystemTime::now(),
            );
        }
        meta::set_mtime(&mut m, SystemTime::now());
        m
    }

    async fn upload_staged(&self, ino: u64, staged: &mut Staged) -> FsResult<()> {
        let opts = self.upload_options(ino);
        let result = staged
            .upload(self.cfg.write, self.budget.clone(), opts)
            .await;
        match &result {
            Ok(()) => {
                if let Some(i) = self.inodes().get_mut(ino) {
                    // The object changed: its old ETag must not pin later reads.
                    i.stat.size = staged.size();
                    i.stat.etag = None;
                    i.expiry = Instant::now();
                }
            }
            Err(e) => {
                tracing::error!(ino, error = %e, "upload of a staged file failed; the object was not changed");
            }
        }
        result
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
        let result = self.complete(&mut h).await;
        match &*h {
            Handle::Staged { ino, staged } => {
                // Uploaded or not, the next lookup asks the store.
                if let Some(i) = self.inodes().get_mut(*ino) {
                    i.local = false;
                    i.stat.size = staged.size();
                    i.stat.etag = None;
                    i.expiry = Instant::now();
                }
            }
            Handle::Dir(snapshot) => {
                let inos = snapshot.inos();
                self.inodes().sweep(&inos);
            }
            Handle::Write { .. } | Handle::Read(_) => {}
        }
        result
    }
}
