//! Attributes beyond the data: size changes, mode, owner and times (stored in object
//! metadata with `--persist-metadata`, through a metadata-only copy of the object onto
//! itself where the store can, or carried by the next upload of a file open for writing),
//! directory metadata on markers, extended attributes, access and change times kept for
//! the mount's lifetime, and `mknod`.

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use super::open::Content;
use super::stage::Staged;
use super::*;
use crate::store::{CopyOptions, Meta, Payload, PutOptions, StoreErrorKind};

/// Most keys whose access and change times are remembered (beyond them, the times of new
/// keys come from the store again).
const MAX_TIMES: usize = 100_000;

/// Access and change times set during the mount, by key.
#[derive(Debug, Default)]
pub(super) struct Times(
    HashMap<String, (SystemTime, SystemTime)>,
    /// Modification times set on directories: shown for the mount's lifetime whatever the
    /// store keeps on their markers (SeaweedFS keeps nothing), never reverting.
    HashMap<String, SystemTime>,
);

impl Times {
    /// The (atime, ctime) of `key`, if set.
    pub fn get(&self, key: &str) -> Option<(SystemTime, SystemTime)> {
        self.0.get(key).copied()
    }

    /// The modification time set on the directory `key`, if any.
    pub fn dir_mtime(&self, key: &str) -> Option<SystemTime> {
        self.1.get(key).copied()
    }

    fn set_dir_mtime(&mut self, key: &str, t: SystemTime) {
        if self.1.len() < MAX_TIMES || self.1.contains_key(key) {
            self.1.insert(key.to_string(), t);
        }
    }

    fn set(&mut self, key: &str, atime: SystemTime, ctime: SystemTime) {
        if self.0.len() < MAX_TIMES || self.0.contains_key(key) {
            self.0.insert(key.to_string(), (atime, ctime));
        }
    }

    /// `from` was renamed to `to` (a directory: every key below it).
    pub fn rename(&mut self, from: &str, to: &str) {
        fn moved<T>(map: &mut HashMap<String, T>, from: &str, to: &str) {
            let keys: Vec<String> = map
                .keys()
                .filter(|k| k.starts_with(from))
                .cloned()
                .collect();
            for k in keys {
                if let Some(t) = map.remove(&k) {
                    map.insert(format!("{to}{}", &k[from.len()..]), t);
                }
            }
        }
        moved(&mut self.0, from, to);
        moved(&mut self.1, from, to);
    }

    /// `key` is gone.
    pub fn remove(&mut self, key: &str) {
        self.0.remove(key);
        self.1.remove(key);
    }

    /// `key` was written now: its change time, if one is remembered.
    pub fn written(&mut self, key: &str, now: SystemTime) {
        if let Some(t) = self.0.get_mut(key) {
            t.1 = now;
        }
    }
}

/// What `setattr` changes.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    /// New size.
    pub size: Option<u64>,
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New access time.
    pub atime: Option<SystemTime>,
    /// New modification time.
    pub mtime: Option<SystemTime>,
}

fn enotsup(what: &str) -> FsError {
    FsError::new(
        libc::EOPNOTSUPP,
        format!("{what} needs --persist-metadata (kept in object metadata)"),
    )
}

impl Fs {
    /// `key` changed now (its ctime), its access time being `atime` unless one was set.
    pub(super) fn changed(&self, key: &str, now: SystemTime, atime: SystemTime) {
        let mut times = lock(&self.times);
        let atime = times.get(key).map_or(atime, |t| t.0);
        times.set(key, atime, now);
    }

    /// Change attributes: the size (truncating or extending the file), then mode, owner and
    /// times.
    pub async fn setattr(&self, ino: u64, set: SetAttr) -> FsResult<Attr> {
        if let Some(size) = set.size {
            self.forget_pages(ino);
            self.truncate(ino, size).await?;
        }
        let inode = self.inode(ino)?;
        let now = SystemTime::now();
        // A time set on a file open for writing is the one its upload stores; one set on a
        // directory is shown for the mount's lifetime (and stored on its marker below).
        if let (Some(t), Some(f)) = (set.mtime, self.open_file(ino)) {
            f.keep_mtime(Some(t));
        }
        if let (Some(t), Kind::Dir) = (set.mtime, inode.kind) {
            lock(&self.times).set_dir_mtime(&inode.key, t);
        }
        if set.atime.is_some() || set.mode.is_some() || set.uid.is_some() || set.gid.is_some() {
            let (atime, _) = lock(&self.times)
                .get(&inode.key)
                .unwrap_or((inode.stat.atime, inode.stat.ctime));
            lock(&self.times).set(&inode.key, set.atime.unwrap_or(atime), now);
        }
        let metadata = (set.mode, set.uid, set.gid, set.mtime, set.atime);
        if !self.cfg.persist_metadata || metadata == (None, None, None, None, None) {
            // Without --persist-metadata modes and owners come from the mount options.
            return Ok(self.attr_of(&self.inode(ino)?));
        }
        self.writable()?;
        let mut m = self.current_meta(&inode);
        let kind_bits = match inode.kind {
            Kind::Dir => libc::S_IFDIR,
            _ => meta::S_IFREG,
        };
        let old_mode = meta::mode(&m).unwrap_or(kind_bits | inode_perm(self, &inode));
        if let Some(p) = set.mode {
            m.insert(
                "mode".into(),
                ((old_mode & meta::S_IFMT) | (p & 0o7777)).to_string(),
            );
        }
        if let Some(u) = set.uid {
            m.insert("uid".into(), u.to_string());
        }
        if let Some(g) = set.gid {
            m.insert("gid".into(), g.to_string());
        }
        let mtime = set.mtime.unwrap_or(inode.stat.mtime);
        meta::set_mtime(&mut m, mtime);
        let atime = lock(&self.times)
            .get(&inode.key)
            .map_or(inode.stat.atime, |t| t.0);
        meta::set_times(&mut m, atime, now);
        // A directory's mode and owner must really be kept, unless what was asked is what
        // the mount shows anyway (some stores, SeaweedFS among them, drop the metadata of
        // directory markers).
        let shown = |v: Option<u32>, d: u32| v.is_none_or(|v| v == d);
        let strict = inode.kind == Kind::Dir
            && !(shown(set.mode.map(|m| m & 0o7777), self.cfg.dir_mode as u32)
                && shown(set.uid, self.cfg.uid)
                && shown(set.gid, self.cfg.gid));
        let before = inode.stat.meta.clone();
        if let Some(i) = self.inodes().get_mut(ino) {
            i.stat.meta = m.clone();
            i.stat.mtime = mtime;
        }
        if let Err(e) = self.store_meta(ino, m, strict).await {
            if let Some(i) = self.inodes().get_mut(ino) {
                i.stat.meta = before;
            }
            return Err(e);
        }
        Ok(self.attr_of(&self.inode(ino)?))
    }

    /// The metadata `inode` has, or what pail would give it.
    fn current_meta(&self, inode: &Inode) -> Meta {
        let m = inode.stat.meta.clone();
        if meta::mode(&m).is_some() {
            return m;
        }
        let bits = match inode.kind {
            Kind::Dir => libc::S_IFDIR,
            _ => meta::S_IFREG,
        };
        let attr = self.attr_of(inode);
        let mut fresh = meta::new_meta(bits | attr.perm as u32, attr.uid, attr.gid, attr.mtime);
        fresh.extend(m);
        fresh
    }

    /// Store new metadata `m` of `ino`: on the directory's marker; carried by the upload of a
    /// file open for writing; otherwise a metadata-only copy of the object onto itself
    /// (pinned to its version), or, where the store cannot, a rewrite of the object.
    /// With `strict`, a directory's metadata is read back, and EPERM returned when the
    /// store did not keep it.
    async fn store_meta(&self, ino: u64, m: Meta, strict: bool) -> FsResult<()> {
        let inode = self.inode(ino)?;
        if inode.kind == Kind::Dir {
            if inode.key.is_empty() {
                return Err(FsError::new(
                    libc::EPERM,
                    "the bucket root has no marker to keep metadata on (mount a prefix)",
                ));
            }
            let opts = PutOptions {
                meta: m.clone(),
                content_type: Some(crate::store::DIRECTORY_CONTENT_TYPE.into()),
                ..Default::default()
            };
            self.store.put(&inode.key, Payload::new(), &opts).await?;
            if strict {
                let kept = self.store.head(&inode.key).await?.map(|i| i.meta);
                if kept.and_then(|k| meta::mode(&k)) != meta::mode(&m) {
                    return Err(FsError::new(
                        libc::EPERM,
                        format!(
                            "{:?}: this store does not keep metadata on directory markers",
                            inode.key
                        ),
                    ));
                }
            }
            return Ok(());
        }
        if let Some(file) = self.open_file(ino) {
            let mut c = file.content.lock().await;
            match &mut *c {
                Content::Stream { writer, .. } => {
                    writer.set_options(self.upload_options(ino));
                    return Ok(());
                }
                Content::Staged(s) if s.is_dirty() => return Ok(()),
                Content::Staged(s) => {
                    if !self.copy_meta(&inode, &m).await? {
                        s.touch();
                    }
                    return Ok(());
                }
                Content::Gone { .. } | Content::Opening => return Ok(()),
            }
        }
        if self.copy_meta(&inode, &m).await? {
            return Ok(());
        }
        // Rewrite the object with its new metadata (through the staging cache).
        let mut staged = Staged::open(
            self.store.clone(),
            inode.key.clone(),
            &self.cache,
            inode.stat.size,
            false,
            inode.stat.etag.clone(),
        )?;
        staged.touch();
        let opts = PutOptions {
            meta: m,
            content_type: meta::content_type(&inode.key),
            condition: None,
        };
        staged
            .upload(self.cfg.write, self.budget.clone(), &self.cache, opts)
            .await?;
        if let Some(i) = self.inodes().get_mut(ino) {
            i.stat.etag = None;
            i.expiry = Instant::now();
        }
        Ok(())
    }

    /// Replace the metadata of the stored object of `inode` by copying it onto itself;
    /// `false` when the store cannot.
    pub(super) async fn copy_meta(&self, inode: &Inode, m: &Meta) -> FsResult<bool> {
        let opts = CopyOptions {
            replace: Some(PutOptions {
                meta: m.clone(),
                content_type: meta::content_type(&inode.key),
                condition: None,
            }),
            if_match: inode.stat.etag.clone(),
        };
        match self.store.copy(&inode.key, &inode.key, &opts).await {
            Ok(done) => {
                if let Some(i) = self.inodes().get_mut(inode.ino) {
                    i.stat.etag = done.etag;
                }
                Ok(true)
            }
            Err(e) if e.kind == StoreErrorKind::Unsupported => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The extended attributes of `ino`.
    fn xattr_map(&self, ino: u64) -> FsResult<std::collections::BTreeMap<String, Vec<u8>>> {
        if !self.cfg.persist_metadata {
            return Err(enotsup("extended attributes"));
        }
        meta::xattrs(&self.inode(ino)?.stat.meta)
    }

    /// The value of the extended attribute `name`.
    pub fn getxattr(&self, ino: u64, name: &str) -> FsResult<Vec<u8>> {
        self.xattr_map(ino)?
            .remove(name)
            .ok_or_else(|| FsError::new(libc::ENODATA, format!("no attribute {name:?}")))
    }

    /// The names of the extended attributes.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<String>> {
        Ok(self.xattr_map(ino)?.into_keys().collect())
    }

    /// Set the extended attribute `name` (`XATTR_CREATE`/`XATTR_REPLACE` in `flags`).
    pub async fn setxattr(&self, ino: u64, name: &str, value: &[u8], flags: i32) -> FsResult<()> {
        self.writable()?;
        let mut map = self.xattr_map(ino)?;
        if name.is_empty() || name.len() > 255 {
            return Err(FsError::new(libc::ERANGE, "bad attribute name"));
        }
        let exists = map.contains_key(name);
        if flags & libc::XATTR_CREATE != 0 && exists {
            return Err(FsError::new(libc::EEXIST, format!("{name:?} exists")));
        }
        if flags & libc::XATTR_REPLACE != 0 && !exists {
            return Err(FsError::new(
                libc::ENODATA,
                format!("no attribute {name:?}"),
            ));
        }
        map.insert(name.to_string(), value.to_vec());
        self.set_xattrs(ino, &map).await
    }

    /// Remove the extended attribute `name`.
    pub async fn removexattr(&self, ino: u64, name: &str) -> FsResult<()> {
        self.writable()?;
        let mut map = self.xattr_map(ino)?;
        if map.remove(name).is_none() {
            return Err(FsError::new(
                libc::ENODATA,
                format!("no attribute {name:?}"),
            ));
        }
        self.set_xattrs(ino, &map).await
    }

    async fn set_xattrs(
        &self,
        ino: u64,
        map: &std::collections::BTreeMap<String, Vec<u8>>,
    ) -> FsResult<()> {
        let inode = self.inode(ino)?;
        let mut m = self.current_meta(&inode);
        meta::set_xattrs(&mut m, map);
        // S3 keeps at most 2 KiB of user metadata per object.
        let size: usize = m.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > 2048 {
            return Err(FsError::new(
                libc::ENOSPC,
                "extended attributes past the store's 2 KiB of object metadata",
            ));
        }
        let now = SystemTime::now();
        let atime = self.attr_of(&inode).atime;
        meta::set_times(&mut m, atime, now);
        if let Some(i) = self.inodes().get_mut(ino) {
            i.stat.meta = m.clone();
        }
        self.changed(&inode.key, now, atime);
        self.store_meta(ino, m, true).await
    }

    /// mknod: a regular file is created empty; FIFOs, sockets and devices, with
    /// `--persist-metadata`, are empty objects whose metadata holds their mode and device
    /// number as s3fs stores them (without it, EPERM).
    pub async fn mknod(
        &self,
        parent: u64,
        name: &str,
        mut mode: CreateMode,
        kind: u32,
        rdev: u32,
    ) -> FsResult<Attr> {
        if kind != meta::S_IFREG {
            if !self.cfg.persist_metadata {
                return Err(FsError::new(
                    libc::EPERM,
                    "FIFOs, sockets and devices need --persist-metadata (their kind is kept in object metadata)",
                ));
            }
            if !meta::SPECIAL_TYPES.contains(&kind) {
                return Err(FsError::new(
                    libc::EINVAL,
                    format!("mknod of file type {kind:o}"),
                ));
            }
            return self.make_special(parent, name, &mode, kind, rdev).await;
        }
        mode.exclusive = true;
        let (attr, fh) = self.create(parent, name, mode).await?;
        let stored = self.fsync(fh).await;
        let released = self.release(fh).await;
        stored.and(released)?;
        Ok(self.attr_of(&self.inode(attr.ino)?))
    }
}

impl Fs {
    /// A FIFO, socket or device node `name` in `parent`: an empty object with its mode.
    async fn make_special(
        &self,
        parent: u64,
        name: &str,
        mode: &CreateMode,
        kind: u32,
        rdev: u32,
    ) -> FsResult<Attr> {
        self.writable()?;
        let key = self.new_key(parent, name, "").await?;
        let now = SystemTime::now();
        let mut m = meta::new_meta(kind | (mode.perm & 0o7777), mode.uid, mode.gid, now);
        if rdev != 0 {
            m.insert("rdev".into(), rdev.to_string());
        }
        let opts = PutOptions {
            meta: m.clone(),
            condition: Some(crate::store::Condition::IfNoneMatch)
                .filter(|_| self.store.features().conditional_writes),
            ..Default::default()
        };
        self.store.put(&key, Payload::new(), &opts).await?;
        let stat = inode::Stat::new(0, now, None, m);
        let mut inodes = self.inodes();
        let ino = inodes.upsert(parent, name, key, Kind::Special(kind), stat, self.expiry());
        inodes.add_lookups(ino, 1);
        let inode = inodes.get(ino).cloned();
        drop(inodes);
        let inode = inode.ok_or_else(|| FsError::new(libc::EIO, "the new node vanished"))?;
        Ok(self.attr_of(&inode))
    }
}

fn inode_perm(fs: &Fs, inode: &Inode) -> u32 {
    fs.attr_of(inode).perm as u32
}
