//! The keeper of each mount's connection: started beside the mount process, recorded, and
//! used by a plugin that finds the mount's process gone (it died while no plugin ran) to
//! take the connection over and start a successor, instead of losing the mount.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::super::state::{Keeper, Record, StateDir};
use super::super::supervisor::{self, MAX_FAILED_STARTS, Supervised};
use super::super::{identity, kernel};
use super::ProcessMounter;
use crate::options::MountSpec;

impl ProcessMounter {
    /// Start the keeper of `target`'s connection: what to record, and its pidfd for
    /// [`Self::watch_keeper`]. Without one (it did not start) the mount survives its process
    /// dying or its plugin dying, but not both at once.
    pub(super) fn keep(
        &self,
        target: &Path,
        spec: &MountSpec,
        fuse: BorrowedFd<'_>,
    ) -> Option<(Keeper, OwnedFd)> {
        match self.spawner().start_keeper(target, spec, fuse) {
            Ok(s) => Some((s.as_keeper(), s.pidfd)),
            Err(e) => {
                tracing::warn!(target = %target.display(), error = %e, "no keeper for this mount's connection: it will not survive its process and its plugin dying at once");
                None
            }
        }
    }

    /// A live mount adopted from a predecessor plugin: watch its keeper, or give it a new
    /// one if its own is gone (or it predates keepers).
    pub(super) fn keep_adopted(&self, r: &Record, sup: &Arc<Supervised>) {
        if let Some(pidfd) = supervisor::keeper_pidfd(r) {
            self.watch_keeper(&r.target, sup, pidfd);
            return;
        }
        if let Some((k, pidfd)) = self.keep(&r.target, &sup.spec, sup.fuse.as_fd()) {
            record_keeper(&self.records, &r.target, k);
            self.watch_keeper(&r.target, sup, pidfd);
        }
    }

    /// Replace `target`'s keeper (whose pidfd is `pidfd`) each time it dies while the mount
    /// is published, so that the mount keeps surviving its process and its plugin dying at
    /// once. Holds `sup` weakly: an unpublished mount's connection is not kept open by this.
    pub(super) fn watch_keeper(&self, target: &Path, sup: &Arc<Supervised>, pidfd: OwnedFd) {
        let spawner = self.spawner();
        let target = target.to_path_buf();
        let lock = self.lock(&target);
        let sup = Arc::downgrade(sup);
        std::thread::Builder::new()
            .name("pail-keeper-watch".into())
            .spawn(move || {
                let mut pidfd = pidfd;
                let mut started = Instant::now();
                let mut quick_deaths = 0;
                loop {
                    identity::wait_exit(&pidfd, None);
                    if started.elapsed() < Duration::from_secs(10) {
                        quick_deaths += 1;
                        if quick_deaths >= MAX_FAILED_STARTS {
                            tracing::warn!(target = %target.display(), "the mount's keepers keep dying: no new one; the mount will not survive its process and its plugin dying at once");
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(250u64 << quick_deaths.min(7)));
                    } else {
                        quick_deaths = 0;
                    }
                    let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
                    // An unpublish kills the keeper with the rest of the mount's user.
                    let Some(sup) = sup.upgrade() else { return };
                    if sup.stopping.load(Ordering::Acquire) || sup.gave_up.load(Ordering::Acquire)
                    {
                        return;
                    }
                    match spawner.start_keeper(&target, &sup.spec, sup.fuse.as_fd()) {
                        Ok(new) => {
                            record_keeper(&spawner.records, &target, new.as_keeper());
                            tracing::info!(target = %target.display(), pid = new.pid, "the mount's keeper died; a new one holds its connection");
                            pidfd = new.pidfd;
                            started = Instant::now();
                        }
                        Err(e) => {
                            tracing::warn!(target = %target.display(), error = %e, "the mount's keeper died and no new one started: the mount will not survive its process and its plugin dying at once");
                            return;
                        }
                    }
                }
            })
            .expect("spawning a keeper watcher thread");
    }

    /// A recorded mount whose process died while no plugin ran: take its connection from
    /// its keeper and start a successor on it. Whether the mount is served again.
    pub(super) fn revive(&self, r: &Record, spec: MountSpec) -> bool {
        let fuse = match supervisor::take_from_keeper(r) {
            Ok(f) => f,
            Err(e) => {
                // Gone, or not holding the mount's connection: nothing will serve the calls
                // waiting on it, so they fail (ENOTCONN) rather than wait forever. (Only
                // pail's own mount there: never another file system's connection.)
                let aborted = (kernel::mount_type(&r.target).as_deref() == Some("fuse.pail"))
                    .then(|| kernel::abort_connection(&r.target));
                tracing::warn!(target = %r.target.display(), error = %e, ?aborted, "the mount's process is gone and its keeper cannot give the connection back: the mount is lost");
                return false;
            }
        };
        let lock = self.lock(&r.target);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        match self.spawner().start(&r.target, &spec, fuse.as_fd(), true) {
            Ok(new) => {
                let mut now = r.clone();
                now.pid = new.pid;
                now.start_time = new.start_time;
                now.exe = new.exe;
                if let Err(e) = self.records.save(&now) {
                    tracing::warn!(target = %r.target.display(), error = %e, "could not record the successor");
                }
                let pid = new.pid;
                let sup = Supervised::new(fuse, spec, new.pid, new.pidfd);
                sup.restarts.fetch_add(1, Ordering::Relaxed);
                drop(_guard);
                self.supervise(&r.target, sup.clone());
                if let Some(pidfd) = supervisor::keeper_pidfd(r) {
                    self.watch_keeper(&r.target, &sup, pidfd);
                }
                tracing::info!(target = %r.target.display(), pid, "the mount's process had died while no plugin ran; a successor serves it on the connection its keeper held");
                self.spawner().event(
                    &r.target,
                    "MountProcessReplaced",
                    false,
                    format!("the mount process had died while the node plugin was down; a successor (pid {pid}) serves the volume on the same connection"),
                );
                true
            }
            Err(why) => {
                tracing::warn!(target = %r.target.display(), error = %why, "no successor for a mount whose process died while no plugin ran");
                false
            }
        }
    }
}

/// Name `keeper` in `target`'s record (a warning when it cannot be saved).
fn record_keeper(records: &StateDir, target: &Path, keeper: Keeper) {
    if let Some(mut r) = records.load(target) {
        r.keeper = Some(keeper);
        if let Err(e) = records.save(&r) {
            tracing::warn!(target = %target.display(), error = %e, "could not record the mount's keeper");
        }
    }
}
