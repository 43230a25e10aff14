//! Files open for writing: one state per inode, shared by every handle that writes it, so
//! that writers of one file in one mount see each other's bytes (as on a local disk) and
//! every close that succeeds has its bytes in the stored object. A new file streams while
//! one handle writes it in order; anything else (a seek back, a second writer, a truncate, a
//! read) continues it as a staged file. A file whose name was removed while open is never
//! uploaded; a file renamed while open is uploaded under its new name.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Instant, SystemTime};

use tokio::sync::Mutex as AsyncMutex;

use super::stage::Staged;
use super::write::Writer;
use super::*;
use crate::store::PutOptions;

/// What one inode open for writing holds.
pub(super) enum Content {
    /// Being set up by its first opener (or that failed).
    Opening,
    /// A new object streamed by the handle `owner`, written in order.
    Stream { writer: Writer, owner: u64 },
    /// A local copy, uploaded at close and fsync.
    Staged(Staged),
    /// A stream whose name went: writes go nowhere (only the size is kept, for `fstat`).
    Gone { size: u64 },
}

/// The state shared by the writing handles of one inode.
pub(super) struct OpenFile {
    pub content: Arc<AsyncMutex<Content>>,
    handles: AtomicUsize,
    unlinked: AtomicBool,
    /// A modification time set (utimensat, futimens) since the last write: the one its
    /// upload stores (`cp -p`, `rsync -t` and `tar x` set it before they close).
    mtime: std::sync::Mutex<Option<SystemTime>>,
}

impl OpenFile {
    /// The modification time set since the last write, if any.
    pub fn set_mtime(&self) -> Option<SystemTime> {
        *self.mtime.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keep `t` as the time set (`None`: a write came after it).
    pub fn keep_mtime(&self, t: Option<SystemTime>) {
        *self.mtime.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }

    /// Whether its name went while it was open (nothing is uploaded).
    pub fn is_unlinked(&self) -> bool {
        self.unlinked.load(Ordering::Acquire)
    }

    /// Give up whatever is in progress (unmount).
    pub async fn abort(&self) {
        if let Content::Stream { writer, .. } = &mut *self.content.lock().await {
            writer.abort().await;
        }
    }
}

/// How a handle opens a file for writing.
#[derive(Debug, Clone, Copy)]
pub(super) struct How {
    /// O_TRUNC.
    pub truncate: bool,
    /// The file is new (created now, or a new file not stored yet).
    pub new: bool,
    /// The handle may stream: write-only, no append, contents replaced.
    pub stream: bool,
}

impl Content {
    /// Size of what is held.
    pub fn size(&self) -> u64 {
        match self {
            Content::Opening => 0,
            Content::Stream { writer, .. } => writer.size(),
            Content::Staged(s) => s.size(),
            Content::Gone { size } => *size,
        }
    }
}

impl Fs {
    /// The open file of `ino`, if it is open for writing.
    pub(super) fn open_file(&self, ino: u64) -> Option<Arc<OpenFile>> {
        lock(&self.open_files).get(&ino).cloned()
    }

    /// The options an upload of `ino` carries now: its metadata and Content-Type.
    pub(super) fn upload_options(&self, ino: u64) -> PutOptions {
        let set = self.open_file(ino).and_then(|f| f.set_mtime());
        self.upload_options_with(ino, set)
    }

    /// [`Fs::upload_options`], `set` being the modification time set since the last write
    /// (the open file's, known by the caller once it left the table at close).
    fn upload_options_with(&self, ino: u64, set: Option<SystemTime>) -> PutOptions {
        let key = self.inode(ino).map(|i| i.key).unwrap_or_default();
        PutOptions {
            meta: self.upload_meta(ino, set),
            content_type: meta::content_type(&key),
            condition: None,
        }
    }

    /// The metadata an upload of `ino` carries now.
    fn upload_meta(&self, ino: u64, set: Option<SystemTime>) -> crate::store::Meta {
        if !self.cfg.persist_metadata {
            return Default::default();
        }
        let Ok(inode) = self.inode(ino) else {
            return Default::default();
        };
        let mut m = inode.stat.meta.clone();
        let now = SystemTime::now();
        if meta::mode(&m).is_none() {
            m = meta::new_meta(
                meta::S_IFREG | self.cfg.file_mode as u32,
                self.cfg.uid,
                self.cfg.gid,
                now,
            );
        }
        let attr = self.attr_of(&inode);
        meta::set_mtime(&mut m, set.unwrap_or(now));
        meta::set_times(&mut m, attr.atime, now);
        m
    }

    /// Start, or join, the open file of `inode` for the writing handle `fh`.
    pub(super) async fn open_for_writing(
        &self,
        inode: &Inode,
        fh: u64,
        how: How,
    ) -> FsResult<Arc<OpenFile>> {
        let (file, first) = {
            let mut files = lock(&self.open_files);
            match files.get(&inode.ino) {
                Some(f) => {
                    f.handles.fetch_add(1, Ordering::AcqRel);
                    (f.clone(), None)
                }
                None => {
                    let f = Arc::new(OpenFile {
                        content: Arc::new(AsyncMutex::new(Content::Opening)),
                        handles: AtomicUsize::new(1),
                        unlinked: AtomicBool::new(false),
                        mtime: Default::default(),
                    });
                    // Nobody else has seen it: the lock is free.
                    let guard = f.content.clone().try_lock_owned().expect("a new lock");
                    files.insert(inode.ino, f.clone());
                    (f, Some(guard))
                }
            }
        };
        let result = match first {
            Some(mut guard) => match self.start(inode, fh, how).await {
                Ok(c) => {
                    *guard = c;
                    Ok(())
                }
                Err(e) => Err(e),
            },
            None => self.join(inode, &file, how).await,
        };
        match result {
            Ok(()) => {
                let size = file.content.lock().await.size();
                self.mark_local(inode.ino, size, how.truncate);
                Ok(file)
            }
            Err(e) => {
                self.leave(inode.ino, &file);
                Err(e)
            }
        }
    }

    /// The content of a file just opened for writing.
    async fn start(&self, inode: &Inode, fh: u64, how: How) -> FsResult<Content> {
        if how.stream {
            let mut writer = Writer::new(
                self.store.clone(),
                inode.key.clone(),
                self.cfg.write,
                self.budget.clone(),
                self.cache.clone(),
            );
            writer.set_options(self.upload_options(inode.ino));
            return Ok(Content::Stream { writer, owner: fh });
        }
        let staged = Staged::open(
            self.store.clone(),
            inode.key.clone(),
            &self.cache,
            inode.stat.size,
            how.truncate || how.new,
            inode.stat.etag.clone(),
        )?;
        Ok(Content::Staged(staged))
    }

    /// A second writer of an open file: the file is staged from now on.
    async fn join(&self, inode: &Inode, file: &OpenFile, how: How) -> FsResult<()> {
        let mut c = file.content.lock().await;
        self.to_staged(inode.ino, &mut c).await?;
        match &mut *c {
            Content::Staged(s) if how.truncate => s.truncate(0).await,
            Content::Staged(_) => Ok(()),
            _ => Err(FsError::new(
                libc::EIO,
                format!("{:?}: the file could not be opened", inode.key),
            )),
        }
    }

    /// A writing handle goes: the last one removes the open file.
    fn leave(&self, ino: u64, file: &Arc<OpenFile>) -> bool {
        if file.handles.fetch_sub(1, Ordering::AcqRel) != 1 {
            return false;
        }
        let mut files = lock(&self.open_files);
        if files.get(&ino).is_some_and(|f| Arc::ptr_eq(f, file)) {
            files.remove(&ino);
        }
        true
    }

    /// Continue a streamed file staged (a seek, a second writer, a truncate): the stream
    /// hands over what it wrote and its upload is abandoned.
    pub(super) async fn to_staged(&self, ino: u64, c: &mut Content) -> FsResult<()> {
        let Content::Stream { writer, .. } = c else {
            return Ok(());
        };
        let written = writer.hand_over().await?;
        let key = self.inode(ino)?.key;
        let staged = Staged::from_written(self.store.clone(), key, &self.cache, written, None)?;
        *c = Content::Staged(staged);
        Ok(())
    }

    /// Store what `c` holds (close, fsync): a stream completes, a staged file is uploaded
    /// when it changed; nothing for a file whose name went.
    pub(super) async fn store_content(
        &self,
        ino: u64,
        file: &OpenFile,
        c: &mut Content,
    ) -> FsResult<()> {
        if file.is_unlinked() {
            return Ok(());
        }
        match c {
            Content::Stream { writer, .. } => {
                self.finish_stream(ino, writer, file.set_mtime()).await
            }
            Content::Staged(s) => self.upload_staged(ino, s, file.set_mtime()).await,
            Content::Gone { .. } | Content::Opening => Ok(()),
        }
    }

    /// Upload a staged file that changed; `set` is the modification time set since its
    /// last write.
    async fn upload_staged(
        &self,
        ino: u64,
        staged: &mut Staged,
        set: Option<SystemTime>,
    ) -> FsResult<()> {
        if !staged.is_dirty() {
            return Ok(());
        }
        let opts = self.upload_options_with(ino, set);
        let result = staged
            .upload(self.cfg.write, self.budget.clone(), &self.cache, opts)
            .await;
        match &result {
            Ok(()) => {
                let mtime = set.unwrap_or_else(SystemTime::now);
                if let Some(i) = self.inodes().get_mut(ino) {
                    i.stat.size = staged.size();
                    i.stat.etag = None;
                    i.stat.mtime = mtime;
                    i.expiry = Instant::now();
                }
            }
            Err(e) => {
                tracing::error!(ino, error = %e, "upload of a staged file failed; the object was not changed");
            }
        }
        result
    }

    /// Complete a stream: the object appears.
    /// `set` is the modification time set since the last write, which the object keeps.
    async fn finish_stream(
        &self,
        ino: u64,
        writer: &mut Writer,
        set: Option<SystemTime>,
    ) -> FsResult<()> {
        let was_finished = writer.is_finished();
        if was_finished {
            return writer.finish().await;
        }
        // The metadata as it is now (a single PUT sends it; a multipart upload sent it at
        // its start, so a time set since is stored by a metadata copy once it completes).
        let opts = self.upload_options_with(ino, set);
        let recopy = self.cfg.persist_metadata && set.is_some() && writer.is_multipart();
        writer.set_options(opts.clone());
        let mut result = writer.finish().await;
        if result.is_ok()
            && recopy
            && let Ok(mut inode) = self.inode(ino)
        {
            // Pinned to the object just completed.
            inode.stat.etag = writer.etag().map(str::to_string);
            result = self.copy_meta(&inode, &opts.meta).await.map(|_| ());
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

    /// The last writing handle of `ino` closed: store what it holds, forget the open file.
    pub(super) async fn close_writer(&self, w: &WriteHandle) -> FsResult<()> {
        let last = self.leave(w.ino, &w.file);
        if !last {
            return Ok(());
        }
        let mut c = w.file.content.lock().await;
        let result = self.store_content(w.ino, &w.file, &mut c).await;
        let size = c.size();
        if let Some(i) = self.inodes().get_mut(w.ino) {
            // Uploaded or not, the next lookup asks the store.
            i.local = false;
            i.stat.size = size;
            i.stat.etag = None;
            i.expiry = Instant::now();
        }
        result
    }

    /// `ino` is open for writing, now `size` bytes: it shadows the store; when `modified`
    /// (a write, a truncate) its times change.
    pub(super) fn mark_local(&self, ino: u64, size: u64, modified: bool) {
        let now = SystemTime::now();
        if modified && let Some(f) = self.open_file(ino) {
            f.keep_mtime(None);
        }
        let mut inodes = self.inodes();
        let Some(i) = inodes.get_mut(ino) else {
            return;
        };
        i.local = !i.unlinked;
        i.stat.size = size;
        if !modified {
            return;
        }
        i.stat.mtime = now;
        i.stat.ctime = now;
        let key = i.key.clone();
        drop(inodes);
        lock(&self.times).written(&key, now);
    }

    /// The name of `ino` went (unlink, or replaced by a rename) while it may be open for
    /// writing: what it holds is never uploaded.
    pub(super) async fn forget_writes(&self, ino: u64) {
        let Some(file) = self.open_file(ino) else {
            return;
        };
        file.unlinked.store(true, Ordering::Release);
        let mut c = file.content.lock().await;
        if let Content::Stream { writer, .. } = &mut *c {
            let size = writer.size();
            writer.abort().await;
            *c = Content::Gone { size };
        }
    }

    /// Before `ino`, open for writing, is renamed to `new_key`. A file not stored yet is
    /// pointed at its new name and `true` returned (nothing to copy); otherwise what was
    /// written is stored under the old name first, to be copied.
    pub(super) async fn settle_for_rename(&self, ino: u64, new_key: &str) -> FsResult<bool> {
        let Some(file) = self.open_file(ino) else {
            return Ok(false);
        };
        let mut c = file.content.lock().await;
        match &mut *c {
            Content::Stream { writer, .. } => {
                if writer.set_key(new_key.to_string()) {
                    return Ok(true);
                }
                self.finish_stream(ino, writer, file.set_mtime()).await?;
                Ok(false)
            }
            Content::Staged(s) => {
                if !s.has_remote_bytes() {
                    s.set_key(new_key.to_string(), None);
                    return Ok(true);
                }
                self.upload_staged(ino, s, file.set_mtime()).await?;
                Ok(false)
            }
            Content::Gone { .. } | Content::Opening => Ok(false),
        }
    }

    /// After `ino`, open for writing, was copied to `new_key` (the copy is version `etag`):
    /// later uploads go there.
    pub(super) async fn repoint(&self, ino: u64, new_key: &str, etag: Option<String>) {
        if let Some(file) = self.open_file(ino)
            && let Content::Staged(s) = &mut *file.content.lock().await
        {
            s.set_key(new_key.to_string(), etag);
        }
    }
}
