//! Running a FUSE session: mount at a path, or serve a `/dev/fuse` fd that another process
//! opened and mounted (the seam that lets a privileged node plugin mount and an
//! unprivileged daemon serve, and a crashed daemon be replaced).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::FuseFs;
use crate::fs::Fs;

/// Kernel-side options of a mount.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// What `/proc/mounts` shows as the source (e.g. the bucket URL).
    pub fsname: String,
    /// Mount read-only in the kernel as well.
    pub read_only: bool,
    /// Let users other than the mounting one use the mount.
    pub allow_other: bool,
    /// FUSE session threads reading requests from the kernel.
    pub threads: usize,
}

/// A running session.
pub struct Mounted {
    thread: Option<JoinHandle<io::Result<()>>>,
    unmounter: Option<SessionUnmounter>,
    ended: Option<oneshot::Receiver<()>>,
    mountpoint: Option<PathBuf>,
}

pub(super) fn config(cfg: &MountConfig) -> Config {
    let mut options = vec![
        MountOption::FSName(cfg.fsname.clone()),
        MountOption::Subtype("pail".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    options.push(if cfg.read_only {
        MountOption::RO
    } else {
        MountOption::RW
    });
    let mut c = Config::default();
    c.mount_options = options;
    c.acl = if cfg.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    c.n_threads = Some(cfg.threads.max(1));
    c
}

/// Set once the kernel's INIT has been answered: the mount serves from then on.
#[derive(Default)]
pub struct Initialized {
    done: std::sync::Mutex<bool>,
    cond: std::sync::Condvar,
}

impl Initialized {
    pub(super) fn set(&self) {
        *self.done.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cond.notify_all();
    }

    /// Wait up to `timeout` for INIT; whether it came.
    fn wait(&self, timeout: std::time::Duration) -> bool {
        let done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        let (done, _) = self
            .cond
            .wait_timeout_while(done, timeout, |d| !*d)
            .unwrap_or_else(|p| p.into_inner());
        *done
    }
}

/// How long a new session may take to get the kernel's INIT.
const INIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub(super) fn run(
    session: Session<FuseFs>,
    initialized: Arc<Initialized>,
    unmounter: Option<SessionUnmounter>,
    mountpoint: Option<PathBuf>,
) -> io::Result<Mounted> {
    let (tx, rx) = oneshot::channel();
    let initialized_on_exit = initialized.clone();
    let thread = std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let r = session.run();
            let _ = tx.send(());
            // A session that ends before INIT (a bad descriptor) must not leave a waiter.
            initialized_on_exit.set();
            r
        })?;
    if !initialized.wait(INIT_TIMEOUT) {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the kernel did not start the FUSE session (no INIT)",
        ));
    }
    Ok(Mounted {
        thread: Some(thread),
        unmounter,
        ended: Some(rx),
        mountpoint,
    })
}

/// Mount `fs` at `mountpoint`. Returns once the kernel has completed the FUSE handshake.
pub fn mount(fs: Arc<Fs>, rt: Handle, mountpoint: &Path, cfg: &MountConfig) -> io::Result<Mounted> {
    let initialized = Arc::new(Initialized::default());
    let fuse = FuseFs::new(fs, rt, initialized.clone(), None);
    let mut session = Session::new(fuse, mountpoint, &config(cfg))?;
    let unmounter = session.unmount_callable();
    run(
        session,
        initialized,
        Some(unmounter),
        Some(mountpoint.to_path_buf()),
    )
}

/// Serve `fs` on `fd`, which this process mounted at `mountpoint` itself (as root, without
/// fusermount): as [`serve_fd`], and [`Mounted::unmount`] unmounts `mountpoint`.
pub fn serve_mounted(
    fs: Arc<Fs>,
    rt: Handle,
    fd: OwnedFd,
    mountpoint: &Path,
    cfg: &MountConfig,
) -> io::Result<Mounted> {
    let mut m = serve_fd(fs, rt, fd, cfg)?;
    m.mountpoint = Some(mountpoint.to_path_buf());
    Ok(m)
}

/// Serve `fs` on an already mounted `/dev/fuse` descriptor.
pub fn serve_fd(fs: Arc<Fs>, rt: Handle, fd: OwnedFd, cfg: &MountConfig) -> io::Result<Mounted> {
    let c = config(cfg);
    let acl = c.acl;
    let initialized = Arc::new(Initialized::default());
    let fuse = FuseFs::new(fs, rt, initialized.clone(), Some(fd.as_fd()));
    let session = Session::from_fd(fuse, fd, acl, c)?;
    run(session, initialized, None, None)
}

impl Mounted {
    /// Wait until the session ends (unmounted from outside, or the kernel connection closed).
    pub async fn ended(&mut self) {
        if let Some(rx) = self.ended.take() {
            let _ = rx.await;
        }
    }

    /// Unmount (when this process mounted) and wait for the session thread.
    pub fn unmount(mut self) -> io::Result<()> {
        let result = match (self.unmounter.take(), &self.mountpoint) {
            (Some(mut u), _) => u.unmount(),
            (None, Some(mp)) => unmount_now(mp),
            (None, None) => Ok(()),
        };
        if let Err(e) = result
            && let Some(mp) = &self.mountpoint
        {
            if e.raw_os_error() != Some(libc::EINVAL) {
                tracing::warn!(mountpoint = %mp.display(), error = %e, "unmount failed; detaching");
            }
            lazy_unmount(mp)?;
        }
        self.join()
    }

    /// Wait for the session thread.
    pub fn join(mut self) -> io::Result<()> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| io::Error::other("FUSE session thread panicked"))?,
            None => Ok(()),
        }
    }
}

/// `umount`: fails (EBUSY) while the mount is in use.
fn unmount_now(path: &Path) -> io::Result<()> {
    umount_with(path, 0)
}

/// `umount -l`: detach the mount even if it is busy or its daemon is gone.
pub fn lazy_unmount(path: &Path) -> io::Result<()> {
    umount_with(path, libc::MNT_DETACH)
}

fn umount_with(path: &Path, flags: libc::c_int) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let r = unsafe { libc::umount2(c.as_ptr(), flags) };
    let err = io::Error::last_os_error();
    match (r, err.raw_os_error()) {
        (0, _) => Ok(()),
        // Not (or no longer) a mount point: someone unmounted it first, as asked.
        (_, Some(libc::EINVAL | libc::ENOENT)) => Ok(()),
        _ => Err(err),
    }
}
