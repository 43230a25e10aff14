//! How a published volume becomes a running FUSE mount: the node plugin mounts `/dev/fuse`
//! at the target itself and hands the descriptor and a typed spec to a separate, confined
//! `pail mount-worker` process running as a user of its own, waits until it serves, and
//! keeps a root-only record per mount (who its process is, its spec) so that a restarted
//! plugin can still supervise and unmount what its predecessor mounted. [`Mounter`] is the
//! seam the CSI node service drives; [`FakeMounter`] stands in for it in unit tests.

pub mod cgroup;
mod fake;
pub mod identity;
pub mod kernel;
pub mod logs;
pub mod nodecache;
pub mod process;
pub mod ready;
pub mod state;
pub mod supervisor;

use std::path::{Path, PathBuf};

use crate::options::MountSpec;

pub use fake::FakeMounter;
pub use identity::UidRange;
pub use process::{DEFAULT_UIDS, MountError, NodeBudget, ProcessMounter};

/// One mount to start.
pub struct MountRequest {
    /// CSI volume id (recorded, for logs).
    pub volume_id: String,
    /// Where to mount.
    pub target: PathBuf,
    /// What the mount process is told: the checked options, where its credentials come
    /// from (secrets included), its network policy. The mounter adds where its descriptor,
    /// user and files are (with `Auth::Token`, the token file).
    pub spec: MountSpec,
    /// The pod's service account token (secret, with `Auth::Token`), written to a file only
    /// the mount process may read; a republish rewrites it.
    pub token: Option<String>,
    /// Mount read-only.
    pub read_only: bool,
    /// The pod it is for (logs, Events, metrics).
    pub pod: Option<PodRef>,
    /// Share one mount among the pods of this node that may reach the same (a staged
    /// volume); `None`: a mount of the target's own.
    pub share: Option<Share>,
}

/// Where a shared mount lives and what it is shared by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The volume's staging path (kubelet's, below its directory).
    pub staging: PathBuf,
    /// What pods sharing the mount have in common (a digest of the volume, its options and
    /// the identity it signs with); pods with another key get a mount of their own.
    pub key: String,
}

impl Share {
    /// The mount point of the shared mount, below the staging path.
    pub fn mountpoint(&self) -> PathBuf {
        self.staging
            .join(format!("pail-{}", &self.key[..self.key.len().min(32)]))
    }
}

/// The pod a volume is published for: its namespace and name as kubelet passed them, its
/// uid from the target path.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Uid.
    pub uid: String,
}

/// Something that happened to a mount that its pod's owner should see (`kubectl describe
/// pod`): a reason, a message, and whether it is a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEvent {
    /// CSI volume id.
    pub volume_id: String,
    /// The pod.
    pub pod: PodRef,
    /// CamelCase reason (`MountProcessDied`…).
    pub reason: &'static str,
    /// What happened, for a person.
    pub message: String,
    /// A warning (else normal).
    pub warning: bool,
}

/// Where mount events go (the CSI layer posts them as Kubernetes Events).
pub type EventSink = std::sync::Arc<dyn Fn(MountEvent) + Send + Sync>;

/// One published volume, for per-volume metrics.
#[derive(Debug, Clone, Default)]
pub struct VolumeReport {
    /// CSI volume id.
    pub volume_id: String,
    /// Which mount of the volume (a volume has several when pods of other identities use
    /// it): a digest of its mount point, stable while it is mounted.
    pub mount: String,
    /// Its pod, when known (a shared mount: the pod that started it).
    pub pod: Option<PodRef>,
    /// The pods that use it (a shared mount's binds; else 1).
    pub pods: usize,
    /// Mount processes started to replace one that died.
    pub restarts: u64,
    /// No process serves it right now.
    pub restarting: bool,
    /// The mount process's last snapshot of its counters (JSON, see `crate::telemetry`).
    pub snapshot: Option<String>,
}

impl std::fmt::Debug for MountRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountRequest")
            .field("volume_id", &self.volume_id)
            .field("target", &self.target)
            .field("spec", &self.spec)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("read_only", &self.read_only)
            .field("share", &self.share)
            .finish()
    }
}

/// What a live mount was published as.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MountInfo {
    /// CSI volume id.
    pub volume_id: String,
    /// Mounted read-only.
    pub read_only: bool,
    /// Mount processes started to replace one that died.
    pub restarts: u64,
    /// Its process died and a successor is being started (requests wait meanwhile).
    pub restarting: bool,
}

/// What is at a target path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountState {
    /// No mount.
    None,
    /// A pail mount whose process serves it.
    Live(MountInfo),
    /// A pail mount whose process is gone ("transport endpoint is not connected").
    Dead,
    /// Some other file system (its type).
    Foreign(String),
}

/// Counters of a mounter, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MounterStats {
    /// Mounts recorded now.
    pub mounts: usize,
    /// Mount processes found dead so far.
    pub dead_mounts: u64,
    /// Mount processes started to replace one that died.
    pub restarts: u64,
}

/// Starts, stops and inspects mounts. Calls block: run them off the async workers.
pub trait Mounter: Send + Sync {
    /// Mount `req` at its target. Publishing the same volume again succeeds, handing a live
    /// mount the request's fresh pod token (a republish) without remounting; a target live
    /// with another volume or read-only flag is [`MountError::Conflict`]. Checked and done
    /// under the target's lock.
    fn publish(&self, req: &MountRequest) -> Result<(), MountError>;

    /// Unmount `target` and stop what serves it (a shared mount: once its last pod is
    /// gone). Already gone is success.
    fn unpublish(&self, target: &Path) -> Result<(), MountError>;

    /// Record that `volume_id` is staged at `staging` (its shared mounts start at the first
    /// publish, which brings the pod's identity). Staging again is success; another volume
    /// at the same path is [`MountError::Conflict`].
    fn stage(&self, _volume_id: &str, _staging: &Path) -> Result<(), MountError> {
        Ok(())
    }

    /// Stop the shared mounts below `staging` and forget the stage. A mount still bound
    /// into a pod is [`MountError::Busy`]. Not staged is success.
    fn unstage(&self, _staging: &Path) -> Result<(), MountError> {
        Ok(())
    }

    /// What is mounted at `target`.
    fn state(&self, target: &Path) -> MountState;

    /// Counters.
    fn stats(&self) -> MounterStats;

    /// The pod `target` was published for, when known.
    fn pod_of(&self, _target: &Path) -> Option<PodRef> {
        None
    }

    /// Every published volume, with what its mount process reports.
    fn volumes(&self) -> Vec<VolumeReport> {
        Vec::new()
    }
}
