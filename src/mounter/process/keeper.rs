//! The keeper of each mount's connection: started beside the mount process, recorded, and
//! used by a plugin that finds the mount's process gone (it died while no plugin ran) to
//! take the connection over and start a successor, instead of losing the mount.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use super::super::state::{Keeper, Record};
use super::super::supervisor::{self, Supervised};
use super::ProcessMounter;
use crate::options::MountSpec;

impl ProcessMounter {
    /// Start the keeper of `target`'s connection. Without one (it did not start) the mount
    /// survives its process dying or its plugin dying, but not both at once.
    pub(super) fn keep(
        &self,
        target: &Path,
        spec: &MountSpec,
        fuse: BorrowedFd<'_>,
    ) -> Option<Keeper> {
        match self.spawner().start_keeper(target, spec, fuse) {
            Ok(s) => Some(Keeper {
                pid: s.pid,
                start_time: s.start_time,
                exe: s.exe,
            }),
            Err(e) => {
                tracing::warn!(target = %target.display(), error = %e, "no keeper for this mount's connection: it will not survive its process and its plugin dying at once");
                None
            }
        }
    }

    /// A live mount adopted from a predecessor plugin: give it a keeper if its own is gone
    /// (or it predates keepers).
    pub(super) fn keep_adopted(&self, r: &Record, sup: &Supervised) {
        if r.keeper.is_some() && supervisor::take_from_keeper(r).is_ok() {
            return;
        }
        if let Some(k) = self.keep(&r.target, &sup.spec, sup.fuse.as_fd())
            && let Some(mut now) = self.records.load(&r.target)
        {
            now.keeper = Some(k);
            if let Err(e) = self.records.save(&now) {
                tracing::warn!(target = %r.target.display(), error = %e, "could not record the mount's keeper");
            }
        }
    }

    /// A recorded mount whose process died while no plugin ran: take its connection from
    /// its keeper and start a successor on it. Whether the mount is served again.
    pub(super) fn revive(&self, r: &Record, spec: MountSpec) -> bool {
        let fuse = match supervisor::take_from_keeper(r) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(target = %r.target.display(), error = %e, "the mount's process and its keeper are gone: the mount is lost");
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
                sup.restarts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                drop(_guard);
                self.supervise(&r.target, sup);
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
