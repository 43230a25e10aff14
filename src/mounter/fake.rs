//! A mounter that only records: publishes become entries, unpublishes remove them, and a
//! test can mark a mount dead or fail the next publish. For the CSI services' unit tests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{MountError, MountInfo, MountRequest, MountState, Mounter, MounterStats};

/// The fake.
#[derive(Debug, Default)]
pub struct FakeMounter {
    mounts: Mutex<HashMap<PathBuf, (MountInfo, bool)>>,
    fail_next: Mutex<Option<String>>,
    /// Every publish that reached the mounter (volume id, source URL), in order.
    pub published: Mutex<Vec<(String, String)>>,
    /// Every pod token handed to a mount (target, token), in order.
    pub tokens: Mutex<Vec<(PathBuf, String)>>,
    /// The spec of the last publish that reached the mounter.
    pub last: Mutex<Option<crate::options::MountSpec>>,
    /// The share of every publish that reached the mounter (target, share), in order.
    pub shares: Mutex<Vec<(PathBuf, Option<super::Share>)>>,
}

impl FakeMounter {
    /// Mark the mount at `target` dead (its process gone).
    pub fn kill(&self, target: &Path) {
        if let Some(m) = self.lock().get_mut(target) {
            m.1 = false;
        }
    }

    /// Fail the next publish with this message.
    pub fn fail_next(&self, why: &str) {
        *self.fail_next.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.to_string());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (MountInfo, bool)>> {
        self.mounts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Mounter for FakeMounter {
    fn publish(&self, req: &MountRequest) -> Result<(), MountError> {
        self.shares
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((req.target.clone(), req.share.clone()));
        if let Some((live, true)) = self.lock().get(&req.target) {
            if live.volume_id != req.volume_id || live.read_only != req.read_only {
                return Err(MountError::Conflict(format!(
                    "{} is already published with another volume or read-only flag",
                    req.target.display()
                )));
            }
            if let Some(t) = &req.token {
                self.tokens
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((req.target.clone(), t.clone()));
            }
            return Ok(());
        }
        self.published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((req.volume_id.clone(), req.spec.args.source.clone()));
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(req.spec.clone());
        if let Some(why) = self
            .fail_next
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            return Err(MountError::Failed(why));
        }
        let info = MountInfo {
            volume_id: req.volume_id.clone(),
            read_only: req.read_only,
            ..Default::default()
        };
        self.lock().insert(req.target.clone(), (info, true));
        if let Some(t) = &req.token {
            self.tokens
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((req.target.clone(), t.clone()));
        }
        Ok(())
    }

    fn unpublish(&self, target: &Path) -> Result<(), MountError> {
        self.lock().remove(target);
        Ok(())
    }

    fn state(&self, target: &Path) -> MountState {
        match self.lock().get(target) {
            None => MountState::None,
            Some((info, true)) => MountState::Live(info.clone()),
            Some((_, false)) => MountState::Dead,
        }
    }

    fn stats(&self) -> MounterStats {
        MounterStats {
            mounts: self.lock().len(),
            dead_mounts: 0,
            restarts: 0,
        }
    }
}
