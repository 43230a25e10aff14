//! How a published volume becomes a running FUSE mount: the node plugin mounts `/dev/fuse`
//! at the target itself and hands the descriptor to a separate `pail mount --fuse-fd`
//! process, waits until it serves, and keeps a state record per mount so that a restarted
//! plugin can still unmount what its predecessor mounted.

pub mod cgroup;
pub mod kernel;
pub mod process;
pub mod ready;
mod state;

use std::path::PathBuf;

pub use process::{MountError, ProcessMounter};

/// One mount to start.
pub struct MountRequest {
    /// CSI volume id (recorded, for logs).
    pub volume_id: String,
    /// Where to mount.
    pub target: PathBuf,
    /// Bucket URL (`s3://bucket/prefix/`).
    pub source: String,
    /// Vetted `pail mount` flags.
    pub args: Vec<String>,
    /// Credentials for the environment of the mount process (secret).
    pub env: Vec<(String, String)>,
    /// GCS service account JSON (secret), written to a root-only file.
    pub gcs_key: Option<String>,
    /// Mount read-only.
    pub read_only: bool,
}

impl std::fmt::Debug for MountRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountRequest")
            .field("volume_id", &self.volume_id)
            .field("target", &self.target)
            .field("source", &self.source)
            .field("args", &self.args)
            .field("env", &format_args!("<{} redacted>", self.env.len()))
            .field("gcs_key", &self.gcs_key.as_ref().map(|_| "<redacted>"))
            .field("read_only", &self.read_only)
            .finish()
    }
}
