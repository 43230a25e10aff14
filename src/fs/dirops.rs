//! Directory operations: listing (one snapshot per open handle), mkdir, rmdir, unlink and
//! rename.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::dir::DirSnapshot;
use super::*;
use crate::store::{CopyOptions, Listing, Payload, PutOptions};

/// Lookups of unknown names of one directory within the metadata TTL after which the
/// directory is listed.
const LOOKUPS_BEFORE_LISTING: u32 = 32;

/// Entries past which such a listing is given up.
const LOOKUP_LISTING_MAX: usize = 100_000;

impl Fs {
    /// Open directory `ino`.
    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        let inode = self.inode(ino)?;
        if inode.kind != Kind::Dir {
            return Err(FsError::new(
                libc::ENOTDIR,
                format!("{:?} is not a directory", inode.key),
            ));
        }
        Ok(self.new_fh(ino, Handle::Dir(DirSnapshot::default())))
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

    /// Many names of directory `ino` (key `key`) looked up that the mount did not know (a
    /// data loader opening each file of a data set by name): list it once — a LIST per
    /// 1,000 entries instead of a HEAD per name — so that the next lookups are answered
    /// from the listing for the metadata TTL. True when it was listed now. Not with
    /// `--persist-metadata` (a listing has no object metadata), nor for a directory of more
    /// than [`LOOKUP_LISTING_MAX`] entries.
    pub(super) async fn list_for_lookups(&self, ino: u64, key: &str) -> bool {
        let ttl = self.cfg.metadata_ttl;
        if self.cfg.persist_metadata || ttl.is_zero() {
            return false;
        }
        {
            let now = std::time::Instant::now();
            let mut counts = self.lookups_in.lock().unwrap_or_else(|p| p.into_inner());
            if counts.len() >= 4096 {
                counts.retain(|_, (_, since)| now.duration_since(*since) < ttl);
            }
            let c = counts.entry(ino).or_insert((0, now));
            if now.duration_since(c.1) >= ttl {
                *c = (0, now);
            }
            c.0 = c.0.saturating_add(1);
            if c.0 != LOOKUPS_BEFORE_LISTING {
                return false;
            }
        }
        self.counters.listings.fetch_add(1, Ordering::Relaxed);
        let generation = self.listings.generation();
        match self.store.list_dir_upto(key, LOOKUP_LISTING_MAX).await {
            Ok(Some(listing)) => {
                let listing = (*self.listings.put(key, listing, generation)).clone();
                self.list_dir_with(ino, Some(listing)).await.is_ok()
            }
            _ => false,
        }
    }

    async fn list_dir(&self, ino: u64) -> FsResult<Vec<DirEntry>> {
        self.list_dir_with(ino, None).await
    }

    /// The entries of directory `ino`, from `listing` if given.
    async fn list_dir_with(&self, ino: u64, given: Option<Listing>) -> FsResult<Vec<DirEntry>> {
        let dir = self.inode(ino)?;
        // With persisted metadata every listing is fresh (it HEADs each entry).
        let kept = (!self.cfg.persist_metadata)
            .then(|| given.or_else(|| self.listings.get(&dir.key).map(|l| (*l).clone())))
            .flatten();
        let mut listing = match kept {
            Some(kept) => kept,
            None => {
                self.counters.listings.fetch_add(1, Ordering::Relaxed);
                let generation = self.listings.generation();
                let listing = self.store.list_dir(&dir.key).await?;
                if self.cfg.persist_metadata {
                    listing
                } else {
                    (*self.listings.put(&dir.key, listing, generation)).clone()
                }
            }
        };
        let mut dir_meta = std::collections::HashMap::new();
        if self.cfg.persist_metadata {
            // Modes, owners, times and symlinks live in object metadata: one HEAD per object
            // and directory marker (as s3fs does), many at a time.
            let mut keys: Vec<String> = listing.files.iter().map(|(_, i)| i.key.clone()).collect();
            let files = keys.len();
            keys.extend(listing.dirs.iter().map(|d| format!("{}{d}/", dir.key)));
            let heads = self.head_all(keys).await;
            let (file_heads, marker_heads) = heads.split_at(files);
            for ((_, info), head) in listing.files.iter_mut().zip(file_heads) {
                if let Ok(Some(h)) = head {
                    *info = h.clone();
                }
            }
            for (name, head) in listing.dirs.iter().zip(marker_heads) {
                if let Ok(Some(h)) = head {
                    dir_meta.insert(name.clone(), h.meta.clone());
                }
            }
        }
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
            let key = info.key.clone();
            let (kind, stat) = meta::stat_of(info);
            let ino = inodes.upsert(ino, &name, key, kind, stat, expiry);
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
            let stat = self.dir_stat(dir_meta.remove(&name).unwrap_or_default());
            let ino = inodes.upsert(ino, &name, key, Kind::Dir, stat, expiry);
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

    /// Create directory `name` in `parent` (a marker object `name/`; with
    /// `--persist-metadata` the marker carries its mode and owner).
    pub async fn mkdir(
        &self,
        parent: u64,
        name: &str,
        perm: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        self.writable()?;
        let key = self.new_key(parent, name, "/").await?;
        let m = if self.cfg.persist_metadata {
            meta::new_meta(libc::S_IFDIR | (perm & 0o7777), uid, gid, SystemTime::now())
        } else {
            Default::default()
        };
        let opts = PutOptions {
            meta: m.clone(),
            content_type: Some(crate::store::DIRECTORY_CONTENT_TYPE.into()),
            ..Default::default()
        };
        self.store.put(&key, Payload::new(), &opts).await?;
        let mut inodes = self.inodes();
        let ino = inodes.upsert(
            parent,
            name,
            key,
            Kind::Dir,
            self.dir_stat(m),
            self.expiry(),
        );
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
        // A file open for writing is never uploaded once its name is gone (POSIX: the name
        // goes at once; writes to the open descriptor go nowhere visible).
        self.forget_writes(inode.ino).await;
        self.store.delete(&inode.key).await?;
        let mut inodes = self.inodes();
        if let Some(i) = inodes.get_mut(inode.ino) {
            i.stat.ctime = SystemTime::now();
        }
        inodes.remove_name(parent, name, self.expiry());
        drop(inodes);
        lock(&self.times).remove(&inode.key);
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
        let listing = self.store.list_dir(&inode.key).await?;
        let busy = !self.inodes().local_children(attr.ino).is_empty();
        if !listing.dirs.is_empty() || !listing.files.is_empty() || busy {
            return Err(FsError::new(
                libc::ENOTEMPTY,
                format!("{:?} is not empty", inode.key),
            ));
        }
        self.store.delete(&inode.key).await?;
        self.inodes().remove_name(parent, name, self.expiry());
        Ok(())
    }

    /// Rename `name` in `parent` to `newname` in `newparent`, replacing a file (or an empty
    /// directory) there as POSIX says. A file is a server-side copy then a delete; a
    /// directory copies every key below it, at most `rename_dir_limit` of them (EXDEV past
    /// it, so `mv` falls back to copying).
    pub async fn rename(
        &self,
        parent: u64,
        name: &str,
        newparent: u64,
        newname: &str,
        noreplace: bool,
    ) -> FsResult<()> {
        self.writable()?;
        meta::check_name(newname, libc::EINVAL)?;
        let src = self.resolve(parent, name).await?;
        let np = self.parent_dir(newparent)?;
        let dst = match self.resolve(newparent, newname).await {
            Ok(a) => Some(a),
            Err(e) if e.errno == libc::ENOENT => None,
            Err(e) => return Err(e),
        };
        if dst.as_ref().is_some_and(|d| d.ino == src.ino) {
            return Ok(());
        }
        if noreplace && dst.is_some() {
            return Err(FsError::new(libc::EEXIST, format!("{newname:?} exists")));
        }
        let inode = self.inode(src.ino)?;
        let new_key = match src.kind {
            Kind::File | Kind::Symlink | Kind::Special(_) => {
                if dst.as_ref().is_some_and(|d| d.kind == Kind::Dir) {
                    return Err(FsError::new(
                        libc::EISDIR,
                        format!("{newname:?} is a directory"),
                    ));
                }
                let new_key = format!("{}{newname}", np.key);
                meta::check_key(&new_key)?;
                self.rename_file(&inode, &new_key).await?;
                new_key
            }
            Kind::Dir => {
                let new_key = format!("{}{newname}/", np.key);
                meta::check_key(&new_key)?;
                if new_key.starts_with(&inode.key) {
                    return Err(FsError::new(
                        libc::EINVAL,
                        "cannot move a directory into itself",
                    ));
                }
                if let Some(d) = &dst {
                    if d.kind != Kind::Dir {
                        return Err(FsError::new(
                            libc::ENOTDIR,
                            format!("{newname:?} is not a directory"),
                        ));
                    }
                    let l = self.store.list_dir(&new_key).await?;
                    if !l.files.is_empty() || !l.dirs.is_empty() {
                        return Err(FsError::new(
                            libc::ENOTEMPTY,
                            format!("{newname:?} is not empty"),
                        ));
                    }
                }
                // Files open for writing below it: stored first, so the tree copy takes
                // them, or pointed at their new names.
                let open = self.open_below(&inode.key);
                for (ino, key) in &open {
                    let moved = format!("{new_key}{}", &key[inode.key.len()..]);
                    self.settle_for_rename(*ino, &moved).await?;
                }
                self.rename_tree(&inode.key, &new_key).await?;
                for (ino, key) in &open {
                    let moved = format!("{new_key}{}", &key[inode.key.len()..]);
                    let etag = self.store.head(&moved).await?.and_then(|i| i.etag);
                    self.repoint(*ino, &moved, etag).await;
                }
                new_key
            }
        };
        if let Some(d) = &dst {
            // What was there loses its name: an open writer of it must not bring it back.
            self.forget_writes(d.ino).await;
        }
        let now = std::time::SystemTime::now();
        self.inodes()
            .rename(src.ino, newparent, newname, new_key.clone(), self.expiry());
        let mut times = lock(&self.times);
        times.rename(&inode.key, &new_key);
        drop(times);
        self.changed(&new_key, now, inode.stat.atime);
        Ok(())
    }

    /// Move the object of `inode` to `new_key`: a server-side copy then a delete. A file
    /// open for writing and not stored yet is just pointed at its new name.
    /// The key of a new entry `name` (+ `suffix`) of the directory `parent`: the name
    /// checked, not taken (`EEXIST`), the key within the store's limit (`ENAMETOOLONG`).
    pub(super) async fn new_key(&self, parent: u64, name: &str, suffix: &str) -> FsResult<String> {
        let p = self.parent_dir(parent)?;
        meta::check_name(name, libc::EINVAL)?;
        match self.resolve(parent, name).await {
            Ok(_) => return Err(FsError::new(libc::EEXIST, format!("{name:?} exists"))),
            Err(e) if e.errno == libc::ENOENT => {}
            Err(e) => return Err(e),
        }
        let key = format!("{}{name}{suffix}", p.key);
        meta::check_key(&key)?;
        Ok(key)
    }

    async fn rename_file(&self, inode: &Inode, new_key: &str) -> FsResult<()> {
        if self.settle_for_rename(inode.ino, new_key).await? {
            // Nothing of ours is stored under the old name; what is there is replaced.
            self.store.delete(&inode.key).await?;
            return Ok(());
        }
        if inode.local
            && self.open_file(inode.ino).is_none()
            && self.store.head(&inode.key).await?.is_none()
        {
            return Err(FsError::new(
                libc::EBUSY,
                format!("{:?} is being written and not stored yet", inode.key),
            ));
        }
        let copied = self.copy_renamed(&inode.key, new_key).await?;
        self.store.delete(&inode.key).await?;
        self.repoint(inode.ino, new_key, copied.etag).await;
        Ok(())
    }

    /// Copy `from` to `to` for a rename: its metadata kept, its Content-Type the one of its
    /// new name when that differs (`page.tmp` → `page.html`), as the object's own version
    /// (pinned to it); a store that cannot copy with new headers (GCS) keeps the old type.
    async fn copy_renamed(&self, from: &str, to: &str) -> FsResult<crate::store::PutResult> {
        let wanted = meta::content_type(to);
        if wanted.is_some()
            && wanted != meta::content_type(from)
            && let Some(info) = self.store.head(from).await?
            && info.content_type != wanted
        {
            let opts = CopyOptions {
                replace: Some(PutOptions {
                    meta: info.meta.clone(),
                    content_type: wanted,
                    condition: None,
                }),
                if_match: info.etag.clone(),
            };
            match self.store.copy(from, to, &opts).await {
                Err(e) if e.kind == crate::store::StoreErrorKind::Unsupported => {}
                other => return Ok(other?),
            }
        }
        Ok(self.store.copy(from, to, &CopyOptions::default()).await?)
    }

    /// The files open for writing below the directory key `dir`: (inode, key).
    fn open_below(&self, dir: &str) -> Vec<(u64, String)> {
        let open: Vec<u64> = lock(&self.open_files).keys().copied().collect();
        let inodes = self.inodes();
        open.into_iter()
            .filter_map(|ino| {
                let i = inodes.get(ino)?;
                i.key.starts_with(dir).then(|| (ino, i.key.clone()))
            })
            .collect()
    }

    async fn rename_tree(&self, from: &str, to: &str) -> FsResult<()> {
        let limit = self.cfg.rename_dir_limit;
        let Some(keys) = self.store.list_keys(from, limit).await? else {
            return Err(FsError::new(
                libc::EXDEV,
                format!(
                    "{from:?} has more than {limit} keys: not renamed (raise --rename-dir-limit, or copy)"
                ),
            ));
        };
        // Every new key fits, or nothing is copied.
        if let Some(longest) = keys.iter().map(|k| k.len()).max() {
            meta::check_key_len(to.len() + longest.saturating_sub(from.len()))?;
        }
        // Copy everything first, so a failure leaves the source whole. Markers (keys
        // ending in `/`, the directory's own included) are copied with their metadata, or
        // made anew where a store cannot copy them.
        for (i, key) in keys.iter().enumerate() {
            let target = format!("{to}{}", &key[from.len()..]);
            let mut copied = self
                .store
                .copy(key, &target, &CopyOptions::default())
                .await
                .map(|_| ());
            if key.ends_with('/') && copied.is_err() {
                copied = self.store.put_marker(&target).await;
            }
            if let Err(e) = copied {
                tracing::error!(from, to, copied = i, total = keys.len(), error = %e,
                    "directory rename failed while copying; the source is intact, the destination holds a partial copy");
                return Err(e.into());
            }
        }
        self.store.put_marker(to).await?;
        // Deepest first, so that local directories are empty when their marker goes.
        let mut doomed = keys.clone();
        doomed.sort_by_key(|k| std::cmp::Reverse(k.len()));
        for (i, key) in doomed.iter().enumerate() {
            if let Err(e) = self.store.delete(key).await {
                tracing::error!(from, to, deleted = i, total = keys.len(), error = %e,
                    "directory rename copied everything but could not delete all of the source");
                return Err(e.into());
            }
        }
        self.store.delete(from).await?;
        Ok(())
    }

    /// Create the symbolic link `name` in `parent` pointing at `target` (s3fs's convention:
    /// the object's body is the target, its `mode` metadata has S_IFLNK).
    pub async fn symlink(
        &self,
        parent: u64,
        name: &str,
        target: &str,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        self.writable()?;
        self.parent_dir(parent)?;
        if !self.store.features().metadata {
            return Err(FsError::new(
                libc::ENOTSUP,
                "symbolic links need object metadata, which this store does not keep",
            ));
        }
        let key = self.new_key(parent, name, "").await?;
        let now = std::time::SystemTime::now();
        let m = meta::new_meta(meta::S_IFLNK | 0o777, uid, gid, now);
        let opts = PutOptions {
            meta: m.clone(),
            ..Default::default()
        };
        self.store
            .put(&key, Payload::from(target.as_bytes().to_vec()), &opts)
            .await?;
        let stat = Stat::new(target.len() as u64, now, None, m);
        let mut inodes = self.inodes();
        let ino = inodes.upsert(parent, name, key, Kind::Symlink, stat, self.expiry());
        inodes.add_lookups(ino, 1);
        Ok(self.attr_of(inodes.get(ino).expect("inserted")))
    }

    /// The target of the symbolic link `ino`.
    pub async fn readlink(&self, ino: u64) -> FsResult<bytes::Bytes> {
        let inode = self.inode(ino)?;
        if inode.kind != Kind::Symlink {
            return Err(FsError::new(libc::EINVAL, "not a symbolic link"));
        }
        if let Some(t) = inode.stat.meta.get(meta::GCSFUSE_SYMLINK) {
            return Ok(bytes::Bytes::from(t.clone()));
        }
        self.store
            .get_all(&inode.key)
            .await?
            .ok_or_else(|| FsError::not_found(&inode.key))
    }

    /// HEAD every key, 32 at a time, in order.
    async fn head_all(
        &self,
        keys: Vec<String>,
    ) -> Vec<crate::store::Result<Option<crate::store::ObjectInfo>>> {
        use futures::StreamExt;
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(32) {
            let futs: Vec<_> = chunk
                .iter()
                .map(|k| {
                    let store = self.store.clone();
                    let k = k.clone();
                    async move { store.head(&k).await }
                })
                .collect();
            out.extend(
                futures::stream::iter(futs)
                    .buffered(32)
                    .collect::<Vec<_>>()
                    .await,
            );
        }
        out
    }
}
