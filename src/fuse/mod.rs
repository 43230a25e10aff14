//! A thin `fuser` adapter over [`crate::fs::Fs`]: every request is answered from a tokio
//! task, so the FUSE session threads never wait on the network.

mod passthrough;
mod reply;
mod resume;
mod session;

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use crate::fs::{Attr, CreateMode, Fs, FsError, Kind, OpenMode, SetAttr};

pub use resume::{ResumePair, serve_resumed};
pub use session::{MountConfig, Mounted, lazy_unmount, mount, serve_fd, serve_mounted};

/// Largest read/write request the kernel may send (1 MiB).
const MAX_IO: u32 = 1 << 20;
/// Entries asked from the core per readdir request.
const READDIR_BATCH: usize = 128;

/// The `fuser::Filesystem` over a [`Fs`].
pub struct FuseFs {
    fs: Arc<Fs>,
    rt: Handle,
    ttl: Duration,
    initialized: Arc<session::Initialized>,
    passthrough: Arc<passthrough::Passthrough>,
    /// Replies of several pieces, when the session's descriptor is known.
    vectored: Option<Arc<reply::Vectored>>,
    /// The connection was initialized by a predecessor whose INIT reply is not known: a
    /// capability the kernel offered may not have been granted.
    resumed: bool,
}

impl FuseFs {
    /// An adapter running the core's futures on `rt`; `initialized` is set once the kernel's
    /// INIT is answered. With `fd`, the descriptor the session reads, data replies are
    /// written from the pieces the store sent (else joined into one buffer first).
    pub fn new(
        fs: Arc<Fs>,
        rt: Handle,
        initialized: Arc<session::Initialized>,
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Self {
        let ttl = fs.config().metadata_ttl;
        let vectored = fd.and_then(|fd| match reply::Vectored::new(fd) {
            Ok(v) => Some(Arc::new(v)),
            Err(e) => {
                tracing::debug!(error = %e, "no vectored replies");
                None
            }
        });
        FuseFs {
            vectored,
            resumed: false,
            fs: fs.clone(),
            rt,
            ttl,
            initialized,
            passthrough: Arc::new(passthrough::Passthrough::new(
                fs.config().shared_copies.clone(),
            )),
        }
    }

    /// The same, serving a connection a predecessor initialized (a take-over): capabilities
    /// only a granted INIT makes safe stay off (files opened past the page cache).
    pub fn resumed(mut self) -> Self {
        self.resumed = true;
        self
    }

    /// Run operation `op` on the runtime (it replies itself), timed.
    fn spawn<F>(&self, op: &'static str, f: impl FnOnce(Arc<Fs>, Duration) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let fut = f(self.fs.clone(), self.ttl);
        let started = std::time::Instant::now();
        self.rt
            .spawn(OUTCOME.scope(std::cell::Cell::new(0), async move {
                fut.await;
                let errno = OUTCOME.with(|o| o.get());
                crate::telemetry::fuse_op(op, errno, started.elapsed());
            }));
    }
}

tokio::task_local! {
    /// The errno an operation answered with (0: success), counted when it ends.
    static OUTCOME: std::cell::Cell<i32>;
}

fn errno(e: &FsError, op: &str) -> Errno {
    let _ = OUTCOME.try_with(|o| o.set(e.errno));
    if e.is_expected() {
        tracing::debug!(op, error = %e, "request failed");
    } else {
        tracing::warn!(op, error = %e, "request failed");
    }
    Errno::from_i32(e.errno)
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: MAX_IO,
        flags: 0,
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
        Kind::Special(libc::S_IFIFO) => FileType::NamedPipe,
        Kind::Special(libc::S_IFSOCK) => FileType::Socket,
        Kind::Special(libc::S_IFCHR) => FileType::CharDevice,
        Kind::Special(libc::S_IFBLK) => FileType::BlockDevice,
        Kind::Special(_) => FileType::RegularFile,
    }
}

fn utf8(name: &OsStr) -> Option<String> {
    name.to_str().map(str::to_string)
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_write(MAX_IO);
        // Ok(previous) or Err(largest): the kernel's offer either way.
        let offered = match config.set_max_readahead(MAX_IO) {
            Ok(v) | Err(v) => v,
        };
        // What a successor needs to take this connection over (see `resume`).
        self.fs.record_init(crate::fs::InitParams {
            major: config.kernel_abi().0,
            minor: config.kernel_abi().1,
            flags: config.capabilities().bits(),
            max_readahead: offered,
        });
        let _ = config.set_max_background(64);
        // AUTO_INVAL_DATA: the kernel drops a file's cached pages when its size or mtime
        // changes in the attributes pail returns (kept pages never outlive the object).
        let mut wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_AUTO_INVAL_DATA
            // mmap of a file opened past the page cache (a large object's first open).
            | InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP;
        if self.fs.config().read_cache {
            wanted |= InitFlags::FUSE_PASSTHROUGH;
            // Backing files may sit on an overlay (a container's /tmp): two levels.
            let _ = config.set_max_stack_depth(2);
        }
        let available = config.capabilities() & wanted;
        let _ = config.add_capabilities(available);
        self.passthrough.enabled.store(
            available.contains(InitFlags::FUSE_PASSTHROUGH),
            std::sync::atomic::Ordering::Relaxed,
        );
        // After a take-over the kernel answered a predecessor's INIT, which may not have asked
        // for mmap of such files (an older pail): then an mmap would fail, so none is opened.
        self.passthrough.direct_io.store(
            !self.resumed && available.contains(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.initialized.set();
        Ok(())
    }

    fn destroy(&mut self) {
        let fs = self.fs.clone();
        // Called on the session thread at unmount: waiting here blocks no request.
        let _ = self.rt.block_on(async move {
            tokio::time::timeout(Duration::from_secs(30), fs.shutdown()).await
        });
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = utf8(name) else {
            return reply.error(Errno::ENOENT);
        };
        self.spawn("lookup", move |fs, ttl| async move {
            match fs.lookup(parent.0, &name).await {
                Ok(a) => reply.entry(&ttl, &file_attr(&a), Generation(0)),
                Err(e) => reply.error(errno(&e, "lookup")),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.spawn("getattr", move |fs, ttl| async move {
            match fs.getattr(ino.0).await {
                Ok(a) => reply.attr(&ttl, &file_attr(&a)),
                Err(e) => reply.error(errno(&e, "getattr")),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _ = fh;
        let time = |t: TimeOrNow| match t {
            TimeOrNow::SpecificTime(t) => t,
            TimeOrNow::Now => SystemTime::now(),
        };
        let set = SetAttr {
            size,
            mode,
            uid,
            gid,
            atime: atime.map(time),
            mtime: mtime.map(time),
        };
        self.spawn("setattr", move |fs, ttl| async move {
            match fs.setattr(ino.0, set).await {
                Ok(a) => reply.attr(&ttl, &file_attr(&a)),
                Err(e) => reply.error(errno(&e, "setattr")),
            }
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let Some(name) = utf8(name) else {
            return reply.error(Errno::EINVAL);
        };
        let (uid, gid) = (req.uid(), req.gid());
        self.spawn("mkdir", move |fs, ttl| async move {
            match fs.mkdir(parent.0, &name, mode & !umask, uid, gid).await {
                Ok(a) => reply.entry(&ttl, &file_attr(&a), Generation(0)),
                Err(e) => reply.error(errno(&e, "mkdir")),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let Some(name) = utf8(name) else {
            return reply.error(Errno::EINVAL);
        };
        let create = CreateMode {
            perm: mode & !umask & 0o7777,
            uid: req.uid(),
            gid: req.gid(),
            exclusive: true,
            read: false,
            append: false,
            pid: req.pid(),
        };
        let kind = mode & libc::S_IFMT;
        self.spawn("mknod", move |fs, ttl| async move {
            match fs.mknod(parent.0, &name, create, kind, rdev).await {
                Ok(a) => reply.entry(&ttl, &file_attr(&a), Generation(0)),
                Err(e) => reply.error(errno(&e, "mknod")),
            }
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        // Answered here: attributes come from cached metadata, never from the network.
        let Some(name) = utf8(name) else {
            return reply.error(Errno::ENODATA);
        };
        match self.fs.getxattr(ino.0, &name) {
            Ok(v) => xattr_reply(reply, size, &v),
            Err(e) => reply.error(xattr_errno(&e, "getxattr")),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(ino.0) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(n.as_bytes());
                    buf.push(0);
                }
                xattr_reply(reply, size, &buf)
            }
            Err(e) => reply.error(xattr_errno(&e, "listxattr")),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let Some(name) = utf8(name) else {
            return reply.error(Errno::EINVAL);
        };
        let value = value.to_vec();
        self.spawn("setxattr", move |fs, _| async move {
            match fs.setxattr(ino.0, &name, &value, flags).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e, "setxattr")),
            }
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some(name) = utf8(name) else {
            return reply.error(Errno::ENODATA);
        };
        self.spawn("removexattr", move |fs, _| async move {
            match fs.removexattr(ino.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e, "removexattr")),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some(name) = utf8(name) else {
            return reply.error(Errno::ENOENT);
        };
        self.spawn("unlink", move |fs, _| async move {
            match fs.unlink(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e, "unlink")),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some(name) = utf8(name) else {
            return reply.error(Errno::ENOENT);
        };
        self.spawn("rmdir", move |fs, _| async move {
            match fs.rmdir(parent.0, &name).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e, "rmdir")),
            }
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (Some(name), Some(newname)) = (utf8(name), utf8(newname)) else {
            return reply.error(Errno::EINVAL);
        };
        if flags.bits() & libc::RENAME_EXCHANGE != 0 {
            return reply.error(Errno::EINVAL);
        }
        let noreplace = flags.bits() & libc::RENAME_NOREPLACE != 0;
        self.spawn("rename", move |fs, _| async move {
            match fs
                .rename(parent.0, &name, newparent.0, &newname, noreplace)
                .await
            {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e, "rename")),
            }
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mode = open_mode(flags.0, req.pid());
        let read_only = !mode.write && !mode.truncate && !mode.append;
        let passthrough = self.passthrough.clone();
        self.spawn("open", move |fs, _| async move {
            match fs.open_with_cache(ino.0, mode).await {
                Ok(o) => {
                    let mut asked = FopenFlags::empty();
                    asked.set(FopenFlags::FOPEN_KEEP_CACHE, o.keep_cache);
                    asked.set(FopenFlags::FOPEN_DIRECT_IO, o.direct);
                    // A handle that writes nothing has nothing to store at close(): the
                    // kernel skips the round trip (5.16+; older kernels ask, pail answers at
                    // once), and a close() never waits on a mount nobody serves right now.
                    asked.set(FopenFlags::FOPEN_NOFLUSH, read_only);
                    if !passthrough.open(reply, ino.0, o.fh, asked, o.backing) {
                        let _ = fs.release(o.fh).await;
                    }
                }
                Err(e) => reply.error(errno(&e, "open")),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode_bits: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let Some(name) = utf8(name) else {
            return reply.error(Errno::EINVAL);
        };
        let mode = CreateMode {
            perm: mode_bits & !umask,
            uid: req.uid(),
            gid: req.gid(),
            exclusive: flags & libc::O_EXCL != 0,
            read: flags & libc::O_ACCMODE == libc::O_RDWR,
            append: flags & libc::O_APPEND != 0,
            pid: req.pid(),
        };
        let passthrough = self.passthrough.clone();
        self.spawn("create", move |fs, ttl| async move {
            match fs.create(parent.0, &name, mode).await {
                Ok((a, fh)) => reply.created(
                    &ttl,
                    &file_attr(&a),
                    Generation(0),
                    FileHandle(fh),
                    passthrough.created(a.ino, fh),
                ),
                Err(e) => reply.error(errno(&e, "create")),
            }
        });
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let unique = req.unique().0;
        let vectored = self.vectored.clone();
        self.spawn("read", move |fs, _| async move {
            match fs.read_parts(fh.0, offset, size).await {
                Ok(data) => {
                    crate::telemetry::add(crate::telemetry::Counter::BytesRead, data.len());
                    match vectored {
                        Some(v) => v.data(unique, &data, reply),
                        None => reply.data(&data.to_bytes()),
                    }
                }
                Err(e) => reply.error(errno(&e, "read")),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = bytes::Bytes::copy_from_slice(data);
        self.spawn("write", move |fs, _| async move {
            match fs.write(fh.0, offset, data).await {
                Ok(n) => {
                    crate::telemetry::add(crate::telemetry::Counter::BytesWritten, n as u64);
                    reply.written(n)
                }
                Err(e) => reply.error(errno(&e, "write")),
            }
        });
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let pid = req.pid();
        self.spawn("flush", move |fs, _| async move {
            match fs.flush(fh.0, pid).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e, "flush")),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.passthrough.release(fh.0);
        self.spawn("release", move |fs, _| async move {
            match fs.release(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e, "release")),
            }
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn("fsync", move |fs, _| async move {
            match fs.fsync(fh.0).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e, "fsync")),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.spawn("opendir", move |fs, _| async move {
            match fs.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(&e, "opendir")),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.spawn("readdir", move |fs, _| async move {
            match fs.readdir(ino.0, fh.0, offset, READDIR_BATCH).await {
                Ok(entries) => {
                    for e in entries {
                        if reply.add(
                            INodeNo(e.attr.ino),
                            e.offset,
                            file_type(e.attr.kind),
                            &e.name,
                        ) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(errno(&e, "readdir")),
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        fn fill(
            fs: &Fs,
            ttl: Duration,
            mut reply: ReplyDirectoryPlus,
            entries: Vec<crate::fs::DirEntry>,
        ) {
            for e in entries {
                let attr = file_attr(&e.attr);
                if reply.add(
                    INodeNo(e.attr.ino),
                    e.offset,
                    &e.name,
                    &ttl,
                    &attr,
                    Generation(0),
                ) {
                    break;
                }
                if e.name != "." && e.name != ".." {
                    fs.remember(e.attr.ino);
                }
            }
            reply.ok();
        }
        if let Some(entries) = self.fs.readdir_cached(fh.0, offset, READDIR_BATCH) {
            return fill(&self.fs, self.ttl, reply, entries);
        }
        self.spawn("readdirplus", move |fs, ttl| async move {
            match fs.readdir(ino.0, fh.0, offset, READDIR_BATCH).await {
                Ok(entries) => fill(&fs, ttl, reply, entries),
                Err(e) => reply.error(errno(&e, "readdirplus")),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.spawn("releasedir", move |fs, _| async move {
            let _ = fs.release(fh.0).await;
            reply.ok();
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Object stores have no fixed capacity: report a large, mostly free file system.
        let blocks = 1u64 << 40;
        reply.statfs(blocks, blocks, blocks, 1 << 32, 1 << 32, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (Some(name), Some(target)) = (utf8(link_name), target.to_str().map(str::to_string))
        else {
            return reply.error(Errno::EINVAL);
        };
        let (uid, gid) = (req.uid(), req.gid());
        self.spawn("symlink", move |fs, ttl| async move {
            match fs.symlink(parent.0, &name, &target, uid, gid).await {
                Ok(a) => reply.entry(&ttl, &file_attr(&a), Generation(0)),
                Err(e) => reply.error(errno(&e, "symlink")),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn("readlink", move |fs, _| async move {
            match fs.readlink(ino.0).await {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(errno(&e, "readlink")),
            }
        });
    }
}

/// Answer an xattr request: the size when asked for it, the bytes when they fit.
/// Extended attributes off (no --persist-metadata): ENOSYS, which the kernel remembers for
/// the mount, so `ls -l` and `cp -a` stop asking for every file (they see EOPNOTSUPP).
fn xattr_errno(e: &FsError, op: &str) -> Errno {
    if e.errno == libc::EOPNOTSUPP {
        Errno::ENOSYS
    } else {
        errno(e, op)
    }
}

fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() <= size as usize {
        reply.data(value);
    } else {
        reply.error(Errno::ERANGE);
    }
}

fn open_mode(flags: i32, pid: u32) -> OpenMode {
    let acc = flags & libc::O_ACCMODE;
    OpenMode {
        write: acc == libc::O_WRONLY || acc == libc::O_RDWR,
        truncate: flags & libc::O_TRUNC != 0,
        append: flags & libc::O_APPEND != 0,
        read: acc == libc::O_RDWR,
        pid,
    }
}
