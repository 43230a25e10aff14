//! Mounts shared by the pods of a node: a staged volume's pods that may reach the same (the
//! same volume, options and identity: [`Share::key`]) bind one mount, started at the first
//! publish below the staging path and stopped when the last pod's bind is gone. Each bind is
//! recorded (root only) with its pod's token; the mount's token is always one of a pod still
//! bound.

use std::path::Path;

use super::{MountError, ProcessMounter, lock};
use crate::mounter::state::Bind;
use crate::mounter::{MountRequest, MountState, Mounter, Share, kernel};

fn io(what: &str) -> impl Fn(std::io::Error) -> MountError + '_ {
    move |e| MountError::Io(format!("{what}: {e}"))
}

impl ProcessMounter {
    /// Publish `req` as a bind of the mount `share` names, starting that mount when no pod
    /// has it yet. The caller holds the target's lock.
    pub(super) fn publish_shared(
        &self,
        req: &MountRequest,
        share: &Share,
    ) -> Result<(), MountError> {
        let target = &req.target;
        let mount = share.mountpoint();
        if let Some(b) = self.records.load_bind(target) {
            let same =
                b.mount == mount && b.read_only == req.read_only && b.volume_id == req.volume_id;
            let mounted = kernel::mount_type(target).is_some();
            if same && mounted {
                // A republish: the pod's fresh token reaches the shared mount.
                if let Some(token) = &req.token {
                    self.records
                        .save_bind_token(target, token)
                        .map_err(io("saving the pod token"))?;
                    let l = self.lock(&mount);
                    let _g = lock(&l);
                    self.refresh_token_locked(&mount, token)?;
                }
                return Ok(());
            }
            if mounted {
                return Err(MountError::Conflict(format!(
                    "{} is already published with another volume, identity or read-only flag",
                    target.display()
                )));
            }
            // A bind recorded but not made (a plugin that died during the publish).
            self.unbind_locked(target, &b)?;
        } else {
            match self.state(target) {
                MountState::None => {}
                MountState::Dead => self.cleanup(target),
                MountState::Live(_) => {
                    return Err(MountError::Conflict(format!(
                        "{} is already published with a mount of its own",
                        target.display()
                    )));
                }
                MountState::Foreign(other) => {
                    return Err(MountError::Busy(format!(
                        "{} already has a {other} mount",
                        target.display()
                    )));
                }
            }
        }
        let l = self.lock(&mount);
        let _g = lock(&l);
        if let MountState::Live(_) = self.state(&mount) {
            if let Some(token) = &req.token {
                self.refresh_token_locked(&mount, token)?;
            }
        } else {
            let first = MountRequest {
                volume_id: req.volume_id.clone(),
                target: mount.clone(),
                spec: req.spec.clone(),
                token: req.token.clone(),
                read_only: req.spec.args.volume.read_only,
                pod: req.pod.clone(),
                share: None,
            };
            self.publish_locked(&first)?;
            tracing::info!(volume_id = %req.volume_id, mount = %mount.display(), "shared mount started");
        }
        // Recorded before it is made: a plugin dying in between leaves nothing untracked.
        let bind = Bind {
            volume_id: req.volume_id.clone(),
            target: target.clone(),
            mount: mount.clone(),
            read_only: req.read_only,
            pod: req.pod.clone(),
        };
        let made = self
            .records
            .save_bind(&bind)
            .map_err(io("saving the bind record"))
            .and_then(|()| match &req.token {
                Some(t) => self
                    .records
                    .save_bind_token(target, t)
                    .map_err(io("saving the pod token")),
                None => Ok(()),
            })
            .and_then(|()| {
                kernel::bind_beneath(&self.kubelet, &mount, &self.root, target, req.read_only)
                    .map_err(|e| match e.raw_os_error() {
                        Some(libc::ELOOP | libc::ENOTDIR) => MountError::Refused(format!(
                            "target_path {}: a symlink or a file on the way (it is never followed)",
                            target.display()
                        )),
                        _ => MountError::Io(format!(
                            "binding the shared mount at {}: {e}",
                            target.display()
                        )),
                    })
            });
        if let Err(e) = made {
            self.records.remove_bind(target);
            let _ = kernel::remove_beneath(&self.root, target);
            self.release_locked(&mount);
            return Err(e);
        }
        tracing::info!(volume_id = %req.volume_id, target = %target.display(), mount = %mount.display(), read_only = req.read_only, "published (shared mount)");
        Ok(())
    }

    /// Undo the bind `b` at `target`; stop its mount when no pod binds it any more. The
    /// caller holds the target's lock.
    pub(super) fn unbind_locked(&self, target: &Path, b: &Bind) -> Result<(), MountError> {
        match kernel::mount_type(target).as_deref() {
            Some("fuse.pail") => kernel::unmount_beneath(&self.root, target)
                .map_err(|e| MountError::Io(format!("unmounting {}: {e}", target.display())))?,
            None => {}
            Some(other) => {
                return Err(MountError::Busy(format!(
                    "{} has a {other} mount that pail did not make",
                    target.display()
                )));
            }
        }
        kernel::remove_beneath(&self.root, target)
            .map_err(|e| MountError::Io(format!("removing {}: {e}", target.display())))?;
        let l = self.lock(&b.mount);
        let _g = lock(&l);
        self.records.remove_bind(target);
        self.release_locked(&b.mount);
        tracing::info!(target = %target.display(), mount = %b.mount.display(), "unpublished (shared mount)");
        Ok(())
    }

    /// The binds of `mount`.
    pub(super) fn binds_of(&self, mount: &Path) -> Vec<Bind> {
        self.records
            .all_binds()
            .into_iter()
            .filter(|b| b.mount == mount)
            .collect()
    }

    /// With `mount`'s lock: stop it when no pod binds it any more; else give it the newest
    /// token of the pods still there (the token of a pod that left is dropped).
    fn release_locked(&self, mount: &Path) {
        let binds = self.binds_of(mount);
        if binds.is_empty() {
            self.cleanup(mount);
            let _ = kernel::remove_beneath(&self.kubelet, mount);
            tracing::info!(mount = %mount.display(), "shared mount stopped: no pod uses it");
            return;
        }
        if self.records.load(mount).is_some()
            && let Some((_, token)) = binds
                .iter()
                .filter_map(|b| self.records.load_bind_token(&b.target))
                .max_by_key(|(when, _)| *when)
            && let Err(e) = self.refresh_token_locked(mount, &token)
        {
            tracing::warn!(mount = %mount.display(), error = %e, "could not hand the shared mount another pod's token");
        }
    }

    /// Record the stage of `volume_id` at `staging` (made if missing, below kubelet's
    /// directory, without following links).
    pub(super) fn stage_locked(&self, volume_id: &str, staging: &Path) -> Result<(), MountError> {
        if let Some(s) = self.records.load_stage(staging)
            && s.volume_id != volume_id
        {
            return Err(MountError::Conflict(format!(
                "{} is the staging path of volume {}",
                staging.display(),
                s.volume_id
            )));
        }
        kernel::open_beneath(&self.kubelet, staging, true).map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP | libc::ENOTDIR) => MountError::Refused(format!(
                "staging_target_path {}: a symlink or a file on the way (it is never followed)",
                staging.display()
            )),
            _ => MountError::Io(format!("making {}: {e}", staging.display())),
        })?;
        self.records
            .save_stage(&crate::mounter::state::Stage {
                volume_id: volume_id.to_string(),
                staging: staging.to_path_buf(),
            })
            .map_err(io("saving the stage record"))
    }

    /// Stop the shared mounts below `staging` (none may still be bound into a pod) and
    /// forget the stage.
    pub(super) fn unstage_locked(&self, staging: &Path) -> Result<(), MountError> {
        let mounts: Vec<_> = self
            .records
            .all()
            .into_iter()
            .filter(|r| r.target.parent() == Some(staging))
            .map(|r| r.target)
            .collect();
        for mount in mounts {
            let l = self.lock(&mount);
            let _g = lock(&l);
            for b in self.binds_of(&mount) {
                if kernel::mount_type(&b.target).is_some() {
                    return Err(MountError::Busy(format!(
                        "the volume is still published at {}",
                        b.target.display()
                    )));
                }
                self.records.remove_bind(&b.target);
            }
            self.cleanup(&mount);
            kernel::remove_beneath(&self.kubelet, &mount)
                .map_err(|e| MountError::Io(format!("removing {}: {e}", mount.display())))?;
        }
        self.records.remove_stage(staging);
        tracing::info!(staging = %staging.display(), "unstaged");
        Ok(())
    }
}
