//! The state directory of the node plugin: a root-only record per mount (what it was
//! published as, who its process is, its spec), and each mount's own files. Root never
//! opens, chowns, renames or follows a path inside a directory a mount process can write:
//!
//! - `mounts/` (root, 0700): `<id>.json` the record, `<id>.spec` the mount's spec (it holds
//!   the volume's secrets, as kubelet's own Secret volumes do, readable by root only),
//!   `<id>.log` the mount process's log (opened by root before the process drops root);
//! - `tokens/` (root, 0711): `<id>` the pod token, root-owned, readable by the mount's own
//!   group only; written beside it and renamed over it, in a directory only root writes;
//! - `private/` (root, 0711): `<id>/` owned by the mount's own user, mode 0700: its staging
//!   space, journal and counters. Root makes it (fresh, through a descriptor) and removes it
//!   (without following links); it reads the counters with `O_NOFOLLOW`, capped;
//! - `binds/` (root, 0700): `<id>.json` a pod's bind of a shared mount (which mount, as
//!   what), `<id>.token` that pod's own token (the shared mount's token is a copy of one of
//!   them); `<id>.stage.json` a volume staged on the node.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::options::MountSpec;

/// One live mount.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// CSI volume id.
    pub volume_id: String,
    /// Mount point.
    pub target: PathBuf,
    /// Bucket URL.
    pub source: String,
    /// Process serving the mount (0 while it starts).
    pub pid: u32,
    /// When that process started (clock ticks after boot, `/proc/<pid>/stat` field 22): with
    /// the pid, which process it is (a reused pid has another start time).
    #[serde(default)]
    pub start_time: u64,
    /// The binary it runs (device and inode), as started.
    #[serde(default)]
    pub exe: Option<(u64, u64)>,
    /// The user and group of its own it runs as.
    #[serde(default)]
    pub uid: u32,
    /// Its group.
    #[serde(default)]
    pub gid: u32,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Staging space reserved for it (its `--max-cache-size`).
    #[serde(default)]
    pub cache_size: u64,
    /// Memory reserved for it (its `--memory-limit`).
    #[serde(default)]
    pub memory: u64,
    /// The pod it serves.
    #[serde(default)]
    pub pod: Option<super::PodRef>,
    /// The process holding its FUSE connection besides the mount process and the plugin
    /// (`pail keep-connection`), so that both dying at once does not lose the mount.
    #[serde(default)]
    pub keeper: Option<Keeper>,
    /// Its FUSE connection, as the kernel numbers it (`fuse_connection` in the fdinfo of
    /// its descriptor; `None` where the kernel does not say): a descriptor taken from its
    /// process or keeper must be that connection.
    #[serde(default)]
    pub connection: Option<u64>,
}

/// Which process holds a mount's connection: its pid, start time and binary, as started.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Keeper {
    pub pid: u32,
    pub start_time: u64,
    pub exe: Option<(u64, u64)>,
}

/// A pod's bind of a shared mount.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Bind {
    /// CSI volume id.
    pub volume_id: String,
    /// The pod's target path.
    pub target: PathBuf,
    /// The shared mount it binds (its record's target).
    pub mount: PathBuf,
    /// Bound read-only.
    pub read_only: bool,
    /// The pod.
    #[serde(default)]
    pub pod: Option<super::PodRef>,
}

/// A volume staged on the node (NodeStageVolume).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stage {
    /// CSI volume id.
    pub volume_id: String,
    /// Kubelet's staging path.
    pub staging: PathBuf,
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

fn cstr(name: &str) -> std::io::Result<std::ffi::CString> {
    std::ffi::CString::new(name).map_err(std::io::Error::other)
}

fn os(r: libc::c_int) -> std::io::Result<libc::c_int> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Open directory `path` (root-owned all the way) without following a last symlink.
fn open_dir(path: &Path) -> std::io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)?;
    Ok(f.into())
}

/// Replace `dir`/`name` with `bytes` at once: written to a new file beside it (never an
/// existing one, never through a link), owned by root and group `group` (else root), with
/// `mode`, then renamed over it. `dir` must be a directory only root may write.
fn replace_in(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
    group: Option<u32>,
) -> std::io::Result<()> {
    let d = open_dir(dir)?;
    let tmp = cstr(&format!("{name}.tmp"))?;
    let dest = cstr(name)?;
    // SAFETY: valid descriptor and C string; a leftover of a crash is removed first.
    unsafe { libc::unlinkat(d.as_raw_fd(), tmp.as_ptr(), 0) };
    // SAFETY: openat with a valid directory descriptor and C string; the descriptor is ours.
    let fd = os(unsafe {
        libc::openat(
            d.as_raw_fd(),
            tmp.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode,
        )
    })?;
    // SAFETY: a new descriptor we own.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    if let Some(g) = group {
        // SAFETY: fchown of our own descriptor.
        os(unsafe { libc::fchown(f.as_raw_fd(), 0, g) })?;
    }
    // SAFETY: as above (the mode is kept exact whatever the umask).
    os(unsafe { libc::fchmod(f.as_raw_fd(), mode) })?;
    f.write_all(bytes)?;
    f.sync_all()?;
    // SAFETY: renameat within one directory we hold.
    os(unsafe { libc::renameat(d.as_raw_fd(), tmp.as_ptr(), d.as_raw_fd(), dest.as_ptr()) })?;
    Ok(())
}

impl StateDir {
    /// Use (and create) `root`: records, specs and logs in `mounts/` (root only), pod tokens
    /// in `tokens/`, each mount's own directory in `private/` (`root`, `tokens/` and
    /// `private/` can be crossed, not listed).
    pub fn new(root: &Path) -> std::io::Result<StateDir> {
        use std::os::unix::fs::PermissionsExt;
        for (dir, mode) in [
            (root.to_path_buf(), 0o711),
            (root.join("mounts"), 0o700),
            (root.join("private"), 0o711),
            (root.join("tokens"), 0o711),
            (root.join("binds"), 0o700),
        ] {
            std::fs::create_dir_all(&dir)?;
            let meta = std::fs::symlink_metadata(&dir)?;
            if !meta.is_dir() {
                return Err(std::io::Error::other(format!(
                    "{}: not a directory",
                    dir.display()
                )));
            }
            std::os::unix::fs::chown(&dir, Some(0), Some(0))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(StateDir {
            root: root.to_path_buf(),
        })
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn mounts(&self) -> PathBuf {
        self.root.join("mounts")
    }

    /// The directory of `target`'s mount process: its staging cache, journal, counters.
    fn private(&self, target: &Path) -> PathBuf {
        self.root.join("private").join(slug(target))
    }

    fn record_path(&self, target: &Path) -> PathBuf {
        self.mounts().join(format!("{}.json", slug(target)))
    }

    fn spec_name(target: &Path) -> String {
        format!("{}.spec", slug(target))
    }

    /// Where the mount process of `target` writes its log.
    pub fn log_path(&self, target: &Path) -> PathBuf {
        self.mounts().join(format!("{}.log", slug(target)))
    }

    /// Where the mount process of `target` stages files edited in place.
    pub fn cache_path(&self, target: &Path) -> PathBuf {
        self.private(target).join("cache")
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
        self.root.join("tokens").join(slug(target))
    }

    /// Save (or replace, at once) the pod token of `target`'s mount: root's file, readable
    /// by the mount's group `gid` only.
    pub fn save_token(&self, target: &Path, token: &str, gid: u32) -> std::io::Result<PathBuf> {
        replace_in(
            &self.root.join("tokens"),
            &slug(target),
            token.as_bytes(),
            0o640,
            Some(gid),
        )?;
        Ok(self.token_path(target))
    }

    /// Make the directory of `target`'s mount process anew, private to `uid`:`gid`. Whatever
    /// was there (a predecessor's) is removed first, without following links.
    pub fn make_private(&self, target: &Path, uid: u32, gid: u32) -> std::io::Result<PathBuf> {
        let path = self.private(target);
        remove_tree(&path)?;
        let parent = open_dir(&self.root.join("private"))?;
        let name = cstr(&slug(target))?;
        // SAFETY: valid descriptor and C string.
        os(unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o700) })?;
        // SAFETY: as above; the directory was just made by us (EEXIST above would have failed).
        let fd = os(unsafe {
            libc::openat(
                parent.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: a new descriptor we own.
        let dir = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: fchown/fchmod of our own descriptor.
        os(unsafe { libc::fchown(dir.as_raw_fd(), uid, gid) })?;
        // SAFETY: as above.
        os(unsafe { libc::fchmod(dir.as_raw_fd(), 0o700) })?;
        Ok(path)
    }

    /// Save the record of a mount.
    pub fn save(&self, record: &Record) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        replace_in(
            &self.mounts(),
            &format!("{}.json", slug(&record.target)),
            &bytes,
            0o600,
            None,
        )
    }

    /// Save the spec the mount process of `target` was started with (root only: it holds
    /// the volume's secrets).
    pub fn save_spec(&self, target: &Path, spec: &MountSpec) -> std::io::Result<()> {
        replace_in(
            &self.mounts(),
            &Self::spec_name(target),
            &spec.to_json(),
            0o600,
            None,
        )
    }

    /// The spec of `target`'s mount, from which its successors start.
    pub fn load_spec(&self, target: &Path) -> Option<MountSpec> {
        let bytes = std::fs::read(self.mounts().join(Self::spec_name(target))).ok()?;
        MountSpec::from_json(&bytes).ok()
    }

    /// The record of `target`, if any.
    pub fn load(&self, target: &Path) -> Option<Record> {
        let bytes = std::fs::read(self.record_path(target)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Forget `target`: its record, spec, token, log and private directory.
    pub fn remove(&self, target: &Path) {
        let _ = remove_tree(&self.private(target));
        let _ = std::fs::remove_file(self.mounts().join(Self::spec_name(target)));
        let _ = std::fs::remove_file(self.token_path(target));
        let _ = std::fs::remove_file(self.record_path(target));
        let _ = std::fs::remove_file(self.log_path(target));
    }

    fn binds(&self) -> PathBuf {
        self.root.join("binds")
    }

    fn save_json<T: Serialize>(&self, name: &str, value: &T) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
        replace_in(&self.binds(), name, &bytes, 0o600, None)
    }

    fn load_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Option<T> {
        serde_json::from_slice(&std::fs::read(self.binds().join(name)).ok()?).ok()
    }

    /// Save a pod's bind of a shared mount.
    pub fn save_bind(&self, bind: &Bind) -> std::io::Result<()> {
        self.save_json(&format!("{}.json", slug(&bind.target)), bind)
    }

    /// The bind at `target`, if any.
    pub fn load_bind(&self, target: &Path) -> Option<Bind> {
        self.load_json(&format!("{}.json", slug(target)))
    }

    /// Forget the bind at `target` and its pod's token.
    pub fn remove_bind(&self, target: &Path) {
        let _ = std::fs::remove_file(self.binds().join(format!("{}.json", slug(target))));
        let _ = std::fs::remove_file(self.binds().join(format!("{}.token", slug(target))));
    }

    /// Keep the pod token of the bind at `target` (root only).
    pub fn save_bind_token(&self, target: &Path, token: &str) -> std::io::Result<()> {
        replace_in(
            &self.binds(),
            &format!("{}.token", slug(target)),
            token.as_bytes(),
            0o600,
            None,
        )
    }

    /// The pod token of the bind at `target`, with when it was saved.
    pub fn load_bind_token(&self, target: &Path) -> Option<(std::time::SystemTime, String)> {
        let path = self.binds().join(format!("{}.token", slug(target)));
        let when = std::fs::metadata(&path).ok()?.modified().ok()?;
        Some((when, std::fs::read_to_string(path).ok()?))
    }

    /// Every bind.
    pub fn all_binds(&self) -> Vec<Bind> {
        let Ok(dir) = std::fs::read_dir(self.binds()) else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok())
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.ends_with(".json") && !n.ends_with(".stage.json")
            })
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect()
    }

    /// Record that `stage.volume_id` is staged at `stage.staging`.
    pub fn save_stage(&self, stage: &Stage) -> std::io::Result<()> {
        self.save_json(&format!("{}.stage.json", slug(&stage.staging)), stage)
    }

    /// What is staged at `staging`, if anything.
    pub fn load_stage(&self, staging: &Path) -> Option<Stage> {
        self.load_json(&format!("{}.stage.json", slug(staging)))
    }

    /// Forget the stage at `staging`.
    pub fn remove_stage(&self, staging: &Path) {
        let _ = std::fs::remove_file(self.binds().join(format!("{}.stage.json", slug(staging))));
    }

    /// Every record (for metrics and clean-up).
    pub fn all(&self) -> Vec<Record> {
        let Ok(dir) = std::fs::read_dir(self.mounts()) else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect()
    }
}

/// Remove `path` and everything below it, never following a link (std's `remove_dir_all`
/// works through descriptors); already gone is success.
fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_link_planted_where_root_writes_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path()).unwrap();
        let target = Path::new("/kubelet/pods/u/volumes/v/mount");
        // A root-only file a mount process would like to own or read.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "root's").unwrap();
        // Its own directory is the mount's: it may plant anything there...
        let private = state.make_private(target, 4242, 4242).unwrap();
        std::os::unix::fs::symlink(&victim, private.join("token.tmp")).unwrap();
        std::os::unix::fs::symlink(&victim, private.join("token")).unwrap();
        // ...but the token is written where only root writes, and the old directory (links
        // and all) is removed without following them.
        let token = state.save_token(target, "t1", 4242).unwrap();
        assert!(!token.starts_with(&private));
        let m = std::fs::metadata(&token).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (0, 4242, 0o640));
        state.make_private(target, 4242, 4242).unwrap();
        state.remove(target);
        let v = std::fs::metadata(&victim).unwrap();
        assert_eq!(
            (v.uid(), std::fs::read_to_string(&victim).unwrap().as_str()),
            (0, "root's")
        );
        // A leftover temporary file (even a link) beside the token is replaced, not followed.
        std::os::unix::fs::symlink(
            &victim,
            dir.path()
                .join("tokens")
                .join(format!("{}.tmp", slug(target))),
        )
        .unwrap();
        state.save_token(target, "t2", 4242).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's");
        assert_eq!(
            std::fs::read_to_string(state.token_path(target)).unwrap(),
            "t2"
        );
    }

    #[test]
    fn the_private_directory_is_the_mounts_alone() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path()).unwrap();
        let p = state.make_private(Path::new("/t"), 5000, 5001).unwrap();
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (5000, 5001, 0o700));
        for (sub, mode) in [
            ("", 0o711),
            ("mounts", 0o700),
            ("private", 0o711),
            ("tokens", 0o711),
            ("binds", 0o700),
        ] {
            let m = std::fs::metadata(dir.path().join(sub)).unwrap();
            assert_eq!((m.uid(), m.mode() & 0o777), (0, mode), "{sub}");
        }
    }
}
