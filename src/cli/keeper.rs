//! `pail keep-connection`: holds a mount's FUSE connection (descriptor 4) and does nothing
//! else, so that the mount outlives both its process and its node plugin dying at once;
//! the next plugin takes the connection from it and starts a successor.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::Duration;

use anyhow::bail;

use pail::mounter::supervisor::{FUSE_FD, is_fuse};

use super::{daemon, harden};

/// Give up root, say ready, and hold the connection until killed (the plugin kills every
/// process of the mount's user when it unmounts).
pub fn run(uid: u32, gid: u32) -> anyhow::Result<()> {
    // SAFETY: descriptor 4 is ours from the plugin; owned here so it stays open.
    let fuse = unsafe { OwnedFd::from_raw_fd(FUSE_FD) };
    if !is_fuse(fuse.as_fd()) {
        let why = "descriptor 4 is not a FUSE connection";
        daemon::report_failure(why);
        bail!(why);
    }
    if let Err(e) = harden::drop_privileges(uid, gid) {
        daemon::report_failure(&format!("{e:#}"));
        return Err(e);
    }
    daemon::report_ready();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
