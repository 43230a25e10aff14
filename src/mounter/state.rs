//! The record kept per mount under the state directory (root-only files), so that a
//! restarted node plugin finds the mount processes its predecessor started.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One live mount.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// CSI volume id.
    pub volume_id: String,
    /// Mount point.
    pub target: PathBuf,
    /// Bucket URL.
    pub source: String,
    /// Process serving the mount.
    pub pid: u32,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Staging space reserved for it (its `--max-cache-size`).
    #[serde(default)]
    pub cache_size: u64,
    /// The pod it serves.
    #[serde(default)]
    pub pod: Option<super::PodRef>,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

/// A short stable name for a target path.
pub fn slug(target: &Path) -> String {
    // FNV-1a: stable across runs and versions, unlike the std hasher.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in target.as_os_str().as_encoded_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// Replace `path` with `bytes` at once, readable by its owner only: `owner`, else root.
fn write_private(path: &Path, bytes: &[u8], owner: Option<(u32, u32)>) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    if let Some((u, g)) = owner {
        std::os::unix::fs::chown(&tmp, Some(u), Some(g))?;
    }
    std::fs::rename(tmp, path)
}

impl StateDir {
    /// Use (and create) `root`: records and logs in `mounts/`, root-only; each mount's own
    /// directory in `private/<id>/`, private to the user its process runs as (`root` and
    /// `private/` can be crossed, not listed).
    pub fn new(root: &Path) -> std::io::Result<StateDir> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(root.join("mounts"))?;
        std::fs::create_dir_all(root.join("private"))?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711))?;
        std::fs::set_permissions(root.join("mounts"), std::fs::Permissions::from_mode(0o700))?;
        std::fs::set_permissions(root.join("private"), std::fs::Permissions::from_mode(0o711))?;
        Ok(StateDir {
            root: root.to_path_buf(),
        })
    }

    /// The directory of `target`'s mount process: its staging cache and secrets.
    fn private(&self, target: &Path) -> PathBuf {
        self.root.join("private").join(slug(target))
    }

    fn record_path(&self, target: &Path) -> PathBuf {
        self.root
            .join("mounts")
            .join(format!("{}.json", slug(target)))
    }

    /// Where the mount process of `target` writes its log.
    pub fn log_path(&self, target: &Path) -> PathBuf {
        self.root
            .join("mounts")
            .join(format!("{}.log", slug(target)))
    }

    /// Where the mount process of `target` stages files edited in place.
    pub fn cache_path(&self, target: &Path) -> PathBuf {
        self.private(target).join("cache")
    }

    /// Where the GCS key of `target` is kept while it is mounted.
    pub fn key_path(&self, target: &Path) -> PathBuf {
        self.private(target).join("key.json")
    }

    /// Save the GCS key, readable by its owner only: `owner` (the mount process's user),
    /// else root.
    pub fn save_key(
        &self,
        target: &Path,
        key: &str,
        owner: Option<(u32, u32)>,
    ) -> std::io::Result<PathBuf> {
        let p = self.key_path(target);
        write_private(&p, key.as_bytes(), owner)?;
        Ok(p)
    }

    /// Where the mount process of `target` writes a snapshot of its counters.
    pub fn metrics_path(&self, target: &Path) -> PathBuf {
        self.private(target).join("metrics.json")
    }

    /// Where the mount process of `target` keeps the tables a successor needs.
    pub fn journal_path(&self, target: &Path) -> PathBuf {
        self.private(target).join("journal")
    }

    /// Where the pod token of `target`'s mount is kept.
    pub fn token_path(&self, target: &Path) -> PathBuf {
        self.private(target).join("token")
    }

    /// Save (or replace, at once) the pod token of `target`'s mount, readable by `owner`
    /// only (else root).
    pub fn save_token(
        &self,
        target: &Path,
        token: &str,
        owner: Option<(u32, u32)>,
    ) -> std::io::Result<PathBuf> {
        let p = self.token_path(target);
        write_private(&p, token.as_bytes(), owner)?;
        Ok(p)
    }

    /// Make the directory of `target`'s mount process and its staging cache, private to
    /// `owner` (else root); returns the cache.
    pub fn make_cache(&self, target: &Path, owner: Option<(u32, u32)>) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        for p in [self.private(target), self.cache_path(target)] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&p)?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))?;
            if let Some((u, g)) = owner {
                std::os::unix::fs::chown(&p, Some(u), Some(g))?;
            }
        }
        Ok(self.cache_path(target))
    }

    /// Save the record of a mount.
    pub fn save(&self, record: &Record) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        write_private(&self.record_path(&record.target), &bytes, None)
    }

    /// The record of `target`, if any.
    pub fn load(&self, target: &Path) -> Option<Record> {
        let bytes = std::fs::read(self.record_path(target)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Forget `target`: its record, key and log.
    pub fn remove(&self, target: &Path) {
        let _ = std::fs::remove_dir_all(self.private(target));
        let _ = std::fs::remove_file(self.record_path(target));
        let _ = std::fs::remove_file(self.log_path(target));
    }

    /// Every record (for metrics and clean-up).
    pub fn all(&self) -> Vec<Record> {
        let Ok(dir) = std::fs::read_dir(self.root.join("mounts")) else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok())
            .filter(|e| {
                e.path().extension().is_some_and(|x| x == "json")
                    && !e.path().to_string_lossy().ends_with(".key.json")
            })
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect()
    }
}
