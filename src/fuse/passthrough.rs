//! FUSE passthrough of the read cache: which open handles the kernel serves straight from
//! a verified local copy, one backing file per inode as the kernel requires, and the opens
//! the kernel would refuse to mix with them. Registering a backing file needs
//! CAP_SYS_ADMIN: a mount without it (the CSI node plugin's) has the plugin register it.

use std::sync::Arc;

use fuser::{BackingId, Errno, FileHandle, FopenFlags, ReplyOpen};

use crate::fs::{CachedObject, SharedCopiesRef};

/// Files the kernel reads directly from the read cache (FUSE passthrough): one backing file
/// per inode, the same for all its open handles as the kernel requires, kept after they
/// close for the next open. The kernel takes no other kind of open of an inode it reads
/// directly, and passthrough is only used for an inode none of whose handles use its page
/// cache.
pub(super) struct Passthrough {
    /// The kernel supports it, the read cache is on, and registering a backing file has not
    /// been refused (it needs CAP_SYS_ADMIN).
    pub(super) enabled: std::sync::atomic::AtomicBool,
    /// The kernel lets a file opened with FOPEN_DIRECT_IO be mmapped
    /// (FUSE_DIRECT_IO_ALLOW_MMAP, 6.6+): only then is a handle opened that way.
    pub(super) direct_io: std::sync::atomic::AtomicBool,
    state: std::sync::Mutex<PassthroughState>,
    /// This process may not register backing files itself (no CAP_SYS_ADMIN).
    own_denied: std::sync::atomic::AtomicBool,
    /// The node plugin, which registers them for it.
    node: Option<SharedCopiesRef>,
}

/// A registered backing file: by this process, or by the node plugin (closed through it).
enum Registered {
    Own(BackingId),
    Node(u32, SharedCopiesRef),
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Registered::Node(id, node) = self {
            node.0.unback(*id);
        }
    }
}

#[derive(Default)]
struct PassthroughState {
    inodes: std::collections::HashMap<u64, InodeIo>,
    /// Open handles: their inode and whether they read through passthrough.
    handles: std::collections::HashMap<u64, (u64, bool)>,
}

#[derive(Default)]
struct InodeIo {
    passthrough: usize,
    cached: usize,
    /// The registered backing file: held while passthrough handles are open, then kept
    /// (weakly: the read cache may still evict it) so that the next open reuses it.
    backing: Option<(Registered, Backed)>,
}

enum Backed {
    Open(Arc<CachedObject>),
    Idle(std::sync::Weak<CachedObject>),
}

impl Backed {
    fn is(&self, object: &Arc<CachedObject>) -> bool {
        match self {
            Backed::Open(o) => Arc::ptr_eq(o, object),
            Backed::Idle(w) => w.upgrade().is_some_and(|o| Arc::ptr_eq(&o, object)),
        }
    }
}

/// Idle backing files kept for reuse, at most.
const IDLE_BACKINGS: usize = 1024;

impl Passthrough {
    /// Passthrough for a mount whose node plugin (`node`, if any) registers backing files
    /// when this process may not.
    pub(super) fn new(node: Option<SharedCopiesRef>) -> Passthrough {
        Passthrough {
            enabled: Default::default(),
            direct_io: Default::default(),
            state: Default::default(),
            own_denied: Default::default(),
            node,
        }
    }

    /// Register `object`'s file as a backing file: ourselves, else through the plugin.
    fn register(&self, reply: &ReplyOpen, object: &CachedObject) -> Option<Registered> {
        use std::sync::atomic::Ordering;
        if !self.own_denied.load(Ordering::Relaxed) {
            match reply.open_backing(object.file()) {
                Ok(id) => return Some(Registered::Own(id)),
                Err(e) => {
                    self.own_denied.store(true, Ordering::Relaxed);
                    if self.node.is_none() {
                        self.enabled.store(false, Ordering::Relaxed);
                        tracing::info!(error = %e, "FUSE passthrough is not available (it needs CAP_SYS_ADMIN); cached files are read through pail");
                        return None;
                    }
                }
            }
        }
        let node = self.node.as_ref()?;
        let id = node.0.back(object.file())?;
        Some(Registered::Node(id, node.clone()))
    }

    /// Answer an open of `ino` as handle `fh`; `object` is a verified local copy the kernel
    /// may read directly; `asked` holds what the file system allows: `FOPEN_KEEP_CACHE`
    /// (keep its cached pages), `FOPEN_DIRECT_IO` (read past its page cache, given only
    /// where mmap still works) and `FOPEN_NOFLUSH` (a read-only handle: its close() has
    /// nothing to store). While the kernel reads an
    /// inode directly, it takes no other kind of open of it: those (a write, another
    /// version) fail with ETXTBSY, and false is returned so the caller drops the handle.
    pub(super) fn open(
        &self,
        reply: ReplyOpen,
        ino: u64,
        fh: u64,
        asked: FopenFlags,
        object: Option<Arc<CachedObject>>,
    ) -> bool {
        use std::sync::atomic::Ordering;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let idle = st
            .inodes
            .values()
            .filter(|io| io.passthrough == 0 && io.backing.is_some())
            .count();
        if idle > IDLE_BACKINGS {
            st.inodes
                .retain(|_, io| io.passthrough > 0 || io.cached > 0);
        }
        let io = st.inodes.entry(ino).or_default();
        let direct = match object {
            Some(object) if io.cached == 0 && self.enabled.load(Ordering::Relaxed) => {
                let usable = if io.backing.as_ref().is_some_and(|(_, b)| b.is(&object)) {
                    true
                } else if io.passthrough > 0 {
                    // Another version is being read directly: this one cannot be opened.
                    false
                } else {
                    match self.register(&reply, &object) {
                        Some(registered) => {
                            tracing::debug!(
                                ino,
                                "passthrough: the kernel reads this file from its local copy"
                            );
                            io.backing = Some((registered, Backed::Idle(std::sync::Weak::new())));
                            true
                        }
                        None => {
                            io.backing = None;
                            false
                        }
                    }
                };
                if usable && let Some((_, b)) = &mut io.backing {
                    *b = Backed::Open(object);
                }
                usable
            }
            _ => false,
        };
        if direct {
            let (registered, _) = io.backing.as_ref().expect("set above");
            match registered {
                Registered::Own(id) => {
                    reply.opened_passthrough(FileHandle(fh), asked & FopenFlags::FOPEN_NOFLUSH, id)
                }
                Registered::Node(raw, _) => {
                    // SAFETY: the plugin registered `raw` on this connection; it stays open
                    // until `Registered` is dropped (not by this wrapper: into_raw).
                    let id = unsafe { reply.wrap_backing(*raw) };
                    reply.opened_passthrough(
                        FileHandle(fh),
                        asked & FopenFlags::FOPEN_NOFLUSH,
                        &id,
                    );
                    let _ = id.into_raw();
                }
            }
            io.passthrough += 1;
            st.handles.insert(fh, (ino, true));
            return true;
        }
        if io.passthrough > 0 {
            tracing::debug!(
                ino,
                "open refused: the file is being read directly from its local copy"
            );
            reply.error(Errno::ETXTBSY);
            return false;
        }
        io.cached += 1;
        let mut flags = asked;
        if !self.direct_io.load(Ordering::Relaxed) {
            flags.remove(FopenFlags::FOPEN_DIRECT_IO);
        }
        reply.opened(FileHandle(fh), flags);
        st.handles.insert(fh, (ino, false));
        true
    }

    /// The flags of a file created and opened as handle `fh`.
    pub(super) fn created(&self, ino: u64, fh: u64) -> FopenFlags {
        // A new file: no local copy of it is open.
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.inodes.entry(ino).or_default().cached += 1;
        st.handles.insert(fh, (ino, false));
        FopenFlags::empty()
    }

    /// Handle `fh` is closed: the backing file goes with the last passthrough handle of its
    /// inode.
    pub(super) fn release(&self, fh: u64) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some((ino, through)) = st.handles.remove(&fh) else {
            return;
        };
        if let Some(io) = st.inodes.get_mut(&ino) {
            if through {
                io.passthrough -= 1;
                if io.passthrough == 0
                    && let Some((_, b)) = &mut io.backing
                    && let Backed::Open(o) = b
                {
                    // Kept for the next open, without keeping the cached copy from eviction.
                    *b = Backed::Idle(Arc::downgrade(o));
                }
            } else {
                io.cached = io.cached.saturating_sub(1);
            }
            if io.passthrough == 0 && io.cached == 0 && io.backing.is_none() {
                st.inodes.remove(&ino);
            }
        }
    }
}
