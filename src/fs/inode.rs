//! The inode table: inode numbers for keys, cached stats with expiry, kernel lookup counts
//! and the negative-lookup cache. Never held across an `.await`.

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use super::journal::{self, Record};

/// Inode number of the mount root.
pub const ROOT_INO: u64 = 1;

/// File or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file (an object).
    File,
    /// A directory (a prefix, or a marker object).
    Dir,
    /// A symbolic link (an object whose body is the target).
    Symlink,
    /// A FIFO, socket or device node (with `--persist-metadata`): an empty object whose
    /// mode's type bits (`S_IFIFO`, `S_IFSOCK`, `S_IFCHR`, `S_IFBLK`) say which, as s3fs
    /// stores them.
    Special(u32),
}

/// The remote state of an inode as last seen.
#[derive(Debug, Clone)]
pub struct Stat {
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: SystemTime,
    /// Access time.
    pub atime: SystemTime,
    /// Status change time.
    pub ctime: SystemTime,
    /// ETag of the object, when known.
    pub etag: Option<String>,
    /// User metadata of the object (mode, owner, times, xattrs), when known.
    pub meta: crate::store::Meta,
}

impl Stat {
    /// A stat whose access and change times are its modification time.
    pub fn new(
        size: u64,
        mtime: SystemTime,
        etag: Option<String>,
        meta: crate::store::Meta,
    ) -> Stat {
        Stat {
            size,
            mtime,
            atime: mtime,
            ctime: mtime,
            etag,
            meta,
        }
    }
}

/// One inode.
#[derive(Debug, Clone)]
pub struct Inode {
    /// Inode number.
    pub ino: u64,
    /// Parent inode number.
    pub parent: u64,
    /// Name in the parent.
    pub name: String,
    /// Full key; directory keys end in `/` (the root may be "").
    pub key: String,
    /// File or directory.
    pub kind: Kind,
    /// Last known stat.
    pub stat: Stat,
    /// When the stat must be refreshed from the store.
    pub expiry: Instant,
    /// Kernel lookup count.
    pub lookups: u64,
    /// A new file being written through this mount, not yet in the store.
    pub local: bool,
    /// Its name was removed while the kernel still held it (nlink 0).
    pub unlinked: bool,
}

/// All inodes of a mount.
#[derive(Debug)]
pub struct Inodes {
    map: HashMap<u64, Inode>,
    by_name: HashMap<(u64, String), u64>,
    negative: HashMap<(u64, String), Instant>,
    next: u64,
    /// Changes not written to the journal yet (when there is one).
    pub pending: Vec<Record>,
    journaling: bool,
}

/// A kernel reference count that never reaches zero: inodes a successor process took over
/// (it cannot know how many references the kernel holds) stay until unmount.
const PINNED: u64 = u64::MAX / 4;

fn kind_code(kind: Kind) -> u8 {
    match kind {
        Kind::Dir => journal::DIR,
        // (A successor sees a special file as one again at its next lookup.)
        Kind::File | Kind::Special(_) => journal::FILE,
        Kind::Symlink => journal::LINK,
    }
}

impl Inodes {
    /// A table holding only the root, whose key is `prefix`.
    pub fn new(prefix: &str, mtime: SystemTime) -> Self {
        let root = Inode {
            ino: ROOT_INO,
            parent: ROOT_INO,
            name: String::new(),
            key: prefix.to_string(),
            kind: Kind::Dir,
            stat: Stat::new(0, mtime, None, Default::default()),
            expiry: far_future(),
            lookups: 1,
            local: false,
            unlinked: false,
        };
        Inodes {
            map: HashMap::from([(ROOT_INO, root)]),
            by_name: HashMap::new(),
            negative: HashMap::new(),
            next: ROOT_INO + 1,
            pending: Vec::new(),
            journaling: false,
        }
    }

    /// Record every change in [`Inodes::pending`] for the journal.
    pub fn journal_changes(&mut self) {
        self.journaling = true;
    }

    fn log(&mut self, rec: Record) {
        if self.journaling {
            self.pending.push(rec);
        }
    }

    /// The table a predecessor left in its journal: every inode the kernel may still name,
    /// with its key rebuilt from its parents, pinned, its attributes to be fetched again.
    pub fn restore(
        prefix: &str,
        mtime: SystemTime,
        nodes: &HashMap<u64, (u64, u8, String)>,
    ) -> Self {
        let mut t = Inodes::new(prefix, mtime);
        t.journal_changes();
        let mut keys: HashMap<u64, Option<String>> = HashMap::new();
        fn key_of(
            ino: u64,
            prefix: &str,
            nodes: &HashMap<u64, (u64, u8, String)>,
            keys: &mut HashMap<u64, Option<String>>,
            depth: usize,
        ) -> Option<String> {
            if ino == ROOT_INO {
                return Some(prefix.to_string());
            }
            if let Some(k) = keys.get(&ino) {
                return k.clone();
            }
            let (parent, kind, name) = nodes.get(&ino)?;
            let key = if depth > 4096 {
                None
            } else {
                key_of(*parent, prefix, nodes, keys, depth + 1).map(|p| {
                    let slash = if *kind == journal::DIR { "/" } else { "" };
                    format!("{p}{name}{slash}")
                })
            };
            keys.insert(ino, key.clone());
            key
        }
        let now = Instant::now();
        for (&ino, (parent, kind, name)) in nodes {
            let Some(key) = key_of(ino, prefix, nodes, &mut keys, 0) else {
                continue;
            };
            let kind = match *kind {
                journal::DIR => Kind::Dir,
                journal::LINK => Kind::Symlink,
                _ => Kind::File,
            };
            t.map.insert(
                ino,
                Inode {
                    ino,
                    parent: *parent,
                    name: name.clone(),
                    key,
                    kind,
                    stat: Stat::new(0, mtime, None, Default::default()),
                    expiry: now,
                    lookups: PINNED,
                    local: false,
                    unlinked: false,
                },
            );
            // The newest inode of a name wins.
            let id = (*parent, name.clone());
            if t.by_name.get(&id).is_none_or(|old| *old < ino) {
                t.by_name.insert(id, ino);
            }
            t.next = t.next.max(ino + 1);
        }
        t
    }

    /// The inode `ino`.
    pub fn get(&self, ino: u64) -> Option<&Inode> {
        self.map.get(&ino)
    }

    /// The inode `ino`, mutably.
    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Inode> {
        self.map.get_mut(&ino)
    }

    /// The child `name` of `parent`, if known.
    pub fn child(&self, parent: u64, name: &str) -> Option<&Inode> {
        let ino = self.by_name.get(&(parent, name.to_string()))?;
        self.map.get(ino)
    }

    /// Children of `parent` that exist only locally (files being written).
    pub fn local_children(&self, parent: u64) -> Vec<Inode> {
        self.map
            .values()
            .filter(|i| i.parent == parent && i.local && i.ino != ROOT_INO)
            .filter(|i| self.by_name.get(&(parent, i.name.clone())) == Some(&i.ino))
            .cloned()
            .collect()
    }

    /// Whether `(parent, name)` is cached as absent and the cache entry is still valid.
    pub fn is_negative(&self, parent: u64, name: &str, now: Instant) -> bool {
        self.negative
            .get(&(parent, name.to_string()))
            .is_some_and(|until| *until > now)
    }

    /// Insert or refresh the child `name` of `parent` as seen in the store. A child whose
    /// kind changed gets a new inode number; a file being written locally is left alone.
    /// Returns the inode number.
    pub fn upsert(
        &mut self,
        parent: u64,
        name: &str,
        key: String,
        kind: Kind,
        stat: Stat,
        expiry: Instant,
    ) -> u64 {
        let id = (parent, name.to_string());
        self.negative.remove(&id);
        if let Some(&ino) = self.by_name.get(&id)
            && let Some(inode) = self.map.get_mut(&ino)
        {
            if inode.local {
                // A file being written shadows the store until it is closed.
                return ino;
            }
            if inode.kind == kind {
                inode.stat = stat;
                inode.expiry = expiry;
                inode.key = key;
                return ino;
            }
        }
        self.insert(parent, name, key, kind, stat, expiry, false)
    }

    /// Insert a new file being written through this mount (it shadows the store).
    pub fn insert_local(&mut self, parent: u64, name: &str, key: String, stat: Stat) -> u64 {
        let id = (parent, name.to_string());
        self.negative.remove(&id);
        if let Some(&ino) = self.by_name.get(&id)
            && let Some(inode) = self.map.get_mut(&ino)
            && inode.kind == Kind::File
        {
            inode.local = true;
            inode.stat = stat;
            inode.key = key;
            inode.expiry = far_future();
            return ino;
        }
        self.insert(parent, name, key, Kind::File, stat, far_future(), true)
    }

    #[allow(clippy::too_many_arguments)] // private constructor of one record
    fn insert(
        &mut self,
        parent: u64,
        name: &str,
        key: String,
        kind: Kind,
        stat: Stat,
        expiry: Instant,
        local: bool,
    ) -> u64 {
        let ino = self.next;
        self.next += 1;
        self.log(Record::Node {
            ino,
            parent,
            kind: kind_code(kind),
            name: name.to_string(),
        });
        self.map.insert(
            ino,
            Inode {
                ino,
                parent,
                name: name.to_string(),
                key,
                kind,
                stat,
                expiry,
                lookups: 0,
                local,
                unlinked: false,
            },
        );
        self.by_name.insert((parent, name.to_string()), ino);
        ino
    }

    /// Forget the name `(parent, name)` (after unlink/rmdir), caching it as absent.
    pub fn remove_name(&mut self, parent: u64, name: &str, negative_until: Instant) {
        let id = (parent, name.to_string());
        if let Some(ino) = self.by_name.remove(&id)
            && let Some(inode) = self.map.get_mut(&ino)
        {
            inode.local = false;
            inode.unlinked = true;
            if inode.lookups == 0 {
                self.map.remove(&ino);
                self.log(Record::Drop { ino });
            }
        }
        self.negative.insert(id, negative_until);
    }

    /// Move `ino` to `(parent, name)` with key `key`; inodes below a moved directory get
    /// their keys rewritten. Whatever was at the destination loses its name.
    pub fn rename(
        &mut self,
        ino: u64,
        parent: u64,
        name: &str,
        key: String,
        negative_until: Instant,
    ) {
        let Some(old) = self.map.get(&ino).cloned() else {
            return;
        };
        self.remove_name(parent, name, negative_until);
        self.negative.remove(&(parent, name.to_string()));
        let old_id = (old.parent, old.name.clone());
        if self.by_name.get(&old_id) == Some(&ino) {
            self.by_name.remove(&old_id);
        }
        self.negative.insert(old_id, negative_until);
        if old.kind == Kind::Dir {
            for inode in self.map.values_mut() {
                if inode.ino != ino && inode.key.starts_with(&old.key) {
                    inode.key = format!("{key}{}", &inode.key[old.key.len()..]);
                }
            }
        }
        if let Some(i) = self.map.get_mut(&ino) {
            i.parent = parent;
            i.name = name.to_string();
            i.key = key;
            i.expiry = Instant::now();
        }
        self.log(Record::Move {
            ino,
            parent,
            name: name.to_string(),
        });
        self.by_name.insert((parent, name.to_string()), ino);
    }

    /// Add `n` kernel references to `ino`.
    pub fn add_lookups(&mut self, ino: u64, n: u64) {
        if let Some(inode) = self.map.get_mut(&ino) {
            inode.lookups += n;
        }
    }

    /// Drop `n` kernel references; an inode with none left (and not being written) is freed.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let Some(inode) = self.map.get_mut(&ino) else {
            return;
        };
        inode.lookups = inode.lookups.saturating_sub(n);
        if inode.lookups == 0 && !inode.local {
            self.drop_inode(ino);
        }
    }

    /// Free zero-reference inodes among `inos` (entries a plain readdir created).
    pub fn sweep(&mut self, inos: &[u64]) {
        for &ino in inos {
            if ino != ROOT_INO
                && self
                    .map
                    .get(&ino)
                    .is_some_and(|i| i.lookups == 0 && !i.local)
            {
                self.drop_inode(ino);
            }
        }
    }

    fn drop_inode(&mut self, ino: u64) {
        if let Some(inode) = self.map.remove(&ino) {
            self.log(Record::Drop { ino });
            let id = (inode.parent, inode.name);
            if self.by_name.get(&id) == Some(&ino) {
                self.by_name.remove(&id);
            }
        }
    }

    /// Number of inodes held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

/// An instant far enough ahead to mean "never expires".
pub fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(100 * 365 * 24 * 3600)
}
