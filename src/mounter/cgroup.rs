//! A cgroup of its own for each mount process, `pail.slice/mount-<id>`, in the memory and
//! pids hierarchies (or the unified one), whose memory limit is the mount's `--memory-limit`
//! (its whole memory: buffers, FUSE threads and the process itself), below `pail.slice`
//! with the node-wide limits of all mounts together. The process joins it before it runs
//! (its `cgroup.procs` is written between fork and exec), so everything it allocates is
//! charged there.
//!
//! Where `pail.slice` lives: with `--host-cgroup-root` (keepMountsOnRestart) in the host's
//! root cgroups, out of the plugin's container, so that mounts outlive it (into the root
//! cgroup of every other hierarchy on cgroup v1); otherwise below the plugin's own cgroup.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// The cgroup of pail's mount processes.
pub const SLICE: &str = "pail.slice";

/// How old the cgroup of a mount that is gone must be before a sweep removes it.
const MIN_SWEEP_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// Node-wide limits of all mount processes together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of memory.
    pub memory: Option<u64>,
    /// Processes and threads.
    pub pids: Option<u64>,
}

/// Where mount processes get their cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The cgroup file system (`/sys/fs/cgroup`, or the host's as the plugin sees it).
    pub root: PathBuf,
    /// Out of the plugin's container, into the host's root cgroups.
    pub host: bool,
    /// Node-wide limits of `pail.slice`.
    pub limits: Limits,
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("{}: {e}", path.display()))
}

fn mkdir(path: &Path) -> Result<(), String> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn open_procs(dir: &Path) -> Result<OwnedFd, String> {
    let path = dir.join("cgroup.procs");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map(Into::into)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The hierarchies under `root`: `None` for cgroup v2 (`root` itself), else each mounted
/// controller directory with the controllers it names.
fn hierarchies(root: &Path) -> Result<Option<Vec<(PathBuf, String)>>, String> {
    if root.join("cgroup.controllers").is_file() {
        return Ok(None);
    }
    let entries = std::fs::read_dir(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let mut found = Vec::new();
    for e in entries.flatten() {
        let dir = e.path();
        // Symlinks (cpu -> cpu,cpuacct) name a hierarchy listed under its own name too.
        if !e.file_type().is_ok_and(|t| t.is_symlink()) && dir.join("cgroup.procs").is_file() {
            found.push((dir, e.file_name().to_string_lossy().into_owned()));
        }
    }
    if found.is_empty() {
        return Err(format!("no cgroup hierarchy under {}", root.display()));
    }
    found.sort();
    Ok(Some(found))
}

/// This process's cgroup in the hierarchy of `controllers` (`""`: the unified one), from
/// `/proc/self/cgroup`, relative to the hierarchy's root.
fn own_path(proc_cgroup: &str, controllers: &str) -> PathBuf {
    let wanted: Vec<&str> = controllers.split(',').collect();
    proc_cgroup
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
            let names: Vec<&str> = ctl.split(',').collect();
            let hit = if controllers.is_empty() {
                ctl.is_empty()
            } else {
                wanted.iter().all(|w| names.contains(w))
            };
            hit.then(|| PathBuf::from(path.trim_start_matches('/')))
        })
        .next()
        .unwrap_or_default()
}

impl Placement {
    fn own(&self, controllers: &str) -> PathBuf {
        if self.host {
            return PathBuf::new();
        }
        own_path(
            &std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
            controllers,
        )
    }

    /// Make `pail.slice/mount-<name>` with its memory limit (and the slice with the node's
    /// limits); the `cgroup.procs` files a new process writes to join it.
    pub fn prepare(&self, name: &str, memory_max: u64) -> Result<Vec<OwnedFd>, String> {
        let child = format!("mount-{name}");
        let mut files = Vec::new();
        match hierarchies(&self.root)? {
            None => {
                let base = self.root.join(self.own(""));
                let slice = base.join(SLICE);
                mkdir(&slice)?;
                // Delegate memory and pids to the slice's children (already on under systemd).
                let _ = write(&base.join("cgroup.subtree_control"), "+memory +pids");
                let _ = write(&slice.join("cgroup.subtree_control"), "+memory +pids");
                if let Some(m) = self.limits.memory {
                    write(&slice.join("memory.max"), &m.to_string())?;
                }
                if let Some(p) = self.limits.pids {
                    write(&slice.join("pids.max"), &p.to_string())?;
                }
                let dir = slice.join(&child);
                mkdir(&dir)?;
                write(&dir.join("memory.max"), &memory_max.to_string())?;
                files.push(open_procs(&dir)?);
            }
            Some(list) => {
                for (dir, controllers) in list {
                    let has = |c: &str| controllers.split(',').any(|x| x == c);
                    if has("memory") || has("pids") {
                        let slice = dir.join(self.own(&controllers)).join(SLICE);
                        mkdir(&slice)?;
                        if has("memory")
                            && let Some(m) = self.limits.memory
                        {
                            write(&slice.join("memory.limit_in_bytes"), &m.to_string())?;
                        }
                        if has("pids")
                            && let Some(p) = self.limits.pids
                        {
                            write(&slice.join("pids.max"), &p.to_string())?;
                        }
                        let mine = slice.join(&child);
                        mkdir(&mine)?;
                        if has("memory") {
                            write(&mine.join("memory.limit_in_bytes"), &memory_max.to_string())?;
                        }
                        files.push(open_procs(&mine)?);
                    } else if self.host {
                        files.push(open_procs(&dir)?);
                    }
                }
            }
        }
        Ok(files)
    }

    /// The `pail.slice` directories, one per hierarchy that has one.
    fn slices(&self) -> Vec<PathBuf> {
        match hierarchies(&self.root) {
            Ok(None) => vec![self.root.join(self.own("")).join(SLICE)],
            Ok(Some(list)) => list
                .into_iter()
                .map(|(dir, controllers)| dir.join(self.own(&controllers)).join(SLICE))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Remove the cgroup of the mount `name`, once the processes just killed in it are gone
    /// (waiting up to a second for them).
    pub fn remove(&self, name: &str) {
        let child = format!("mount-{name}");
        for dir in self.slices() {
            let dir = dir.join(&child);
            for _ in 0..20 {
                match std::fs::remove_dir(&dir) {
                    // Tasks still leaving it.
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    _ => break,
                }
            }
        }
    }

    /// Remove the empty cgroups of mounts not in `live` (their processes died with the node
    /// or a plugin that never cleaned up); returns how many went. A cgroup that still holds a
    /// process cannot be removed and stays.
    pub fn sweep(&self, live: &std::collections::HashSet<String>) -> usize {
        let mut removed = 0;
        for slice in self.slices() {
            let Ok(entries) = std::fs::read_dir(&slice) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(mount) = name.strip_prefix("mount-") else {
                    continue;
                };
                // A cgroup made in the last minute may be one another plugin on this host
                // (tests run several) just prepared for a process about to join it.
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age >= MIN_SWEEP_AGE);
                if !live.contains(mount)
                    && old
                    && e.file_type().is_ok_and(|t| t.is_dir())
                    && std::fs::remove_dir(e.path()).is_ok()
                {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// The memory limit of the mount `name`'s cgroup, as the kernel holds it.
    pub fn memory_limit(&self, name: &str) -> Option<u64> {
        let child = format!("mount-{name}");
        let read = |p: PathBuf| std::fs::read_to_string(p).ok()?.trim().parse().ok();
        match hierarchies(&self.root).ok()? {
            None => read(
                self.root
                    .join(self.own(""))
                    .join(SLICE)
                    .join(&child)
                    .join("memory.max"),
            ),
            Some(list) => list
                .into_iter()
                .find(|(_, c)| c.split(',').any(|x| x == "memory"))
                .and_then(|(dir, c)| {
                    read(
                        dir.join(self.own(&c))
                            .join(SLICE)
                            .join(&child)
                            .join("memory.limit_in_bytes"),
                    )
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hierarchy(root: &Path, name: &str) {
        std::fs::create_dir(root.join(name)).unwrap();
        std::fs::write(root.join(name).join("cgroup.procs"), "").unwrap();
    }

    /// Make the files a real cgroup file system makes itself in a new cgroup.
    fn procs(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), "").unwrap();
    }

    #[test]
    fn v1_on_the_host_memory_and_pids_go_to_the_slice_others_to_the_root() {
        let dir = tempfile::tempdir().unwrap();
        for h in ["memory", "pids", "cpu,cpuacct", "unified"] {
            hierarchy(dir.path(), h);
        }
        std::fs::create_dir(dir.path().join("not-a-hierarchy")).unwrap();
        std::os::unix::fs::symlink("cpu,cpuacct", dir.path().join("cpu")).unwrap();
        for h in ["memory", "pids"] {
            procs(&dir.path().join(h).join("pail.slice/mount-abc"));
        }
        let p = Placement {
            root: dir.path().to_path_buf(),
            host: true,
            limits: Limits {
                memory: Some(1 << 30),
                pids: Some(4096),
            },
        };
        let files = p.prepare("abc", 64 << 20).unwrap();
        assert_eq!(files.len(), 4);
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
        assert_eq!(
            read("memory/pail.slice/memory.limit_in_bytes"),
            "1073741824"
        );
        assert_eq!(
            read("memory/pail.slice/mount-abc/memory.limit_in_bytes"),
            "67108864"
        );
        assert_eq!(read("pids/pail.slice/pids.max"), "4096");
        assert_eq!(p.memory_limit("abc"), Some(64 << 20));
        assert!(!dir.path().join("not-a-hierarchy/cgroup.procs").exists());
        for h in ["memory", "pids"] {
            std::fs::remove_file(dir.path().join(h).join("pail.slice/mount-abc/cgroup.procs"))
                .unwrap();
            std::fs::remove_file(
                dir.path()
                    .join(h)
                    .join("pail.slice/mount-abc/memory.limit_in_bytes"),
            )
            .ok();
        }
        p.remove("abc");
        assert!(!dir.path().join("memory/pail.slice/mount-abc").exists());
    }

    #[test]
    fn a_sweep_removes_the_empty_cgroups_of_mounts_that_are_gone_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), "memory pids").unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), "").unwrap();
        let slice = dir.path().join(SLICE);
        for d in [
            "mount-gone",
            "mount-live",
            "mount-busy",
            "mount-new",
            "other",
        ] {
            std::fs::create_dir_all(slice.join(d)).unwrap();
            if d == "mount-busy" {
                // A cgroup with a process in it cannot be removed (here: a file in it).
                std::fs::write(slice.join("mount-busy/cgroup.procs"), "42").unwrap();
            }
            if d != "mount-new" {
                let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
                std::fs::File::open(slice.join(d))
                    .unwrap()
                    .set_modified(hour_ago)
                    .unwrap();
            }
        }
        let p = Placement {
            root: dir.path().to_path_buf(),
            host: true,
            limits: Limits::default(),
        };
        let live = ["live".to_string()].into_iter().collect();
        assert_eq!(p.sweep(&live), 1);
        assert!(!slice.join("mount-gone").exists());
        for kept in ["mount-live", "mount-busy", "mount-new", "other"] {
            assert!(slice.join(kept).exists(), "{kept}");
        }
    }

    #[test]
    fn v2_has_one_slice_with_the_limits_and_missing_roots_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), "memory pids").unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), "").unwrap();
        procs(&dir.path().join("pail.slice/mount-x"));
        let p = Placement {
            root: dir.path().to_path_buf(),
            host: true,
            limits: Limits {
                memory: Some(1 << 20),
                pids: None,
            },
        };
        assert_eq!(p.prepare("x", 5 << 20).unwrap().len(), 1);
        let slice = dir.path().join(SLICE);
        assert_eq!(
            std::fs::read_to_string(slice.join("memory.max")).unwrap(),
            "1048576"
        );
        assert_eq!(p.memory_limit("x"), Some(5 << 20));
        let empty = tempfile::tempdir().unwrap();
        let q = Placement {
            root: empty.path().to_path_buf(),
            ..p.clone()
        };
        assert!(
            q.prepare("x", 1)
                .unwrap_err()
                .contains("no cgroup hierarchy")
        );
    }

    #[test]
    fn the_plugins_own_cgroup_is_read_per_hierarchy() {
        let text = "4:memory:/process_api/abc\n3:cpu,cpuacct:/x\n0::/kubepods/pod1\n";
        assert_eq!(own_path(text, "memory"), PathBuf::from("process_api/abc"));
        assert_eq!(own_path(text, "cpu,cpuacct"), PathBuf::from("x"));
        assert_eq!(own_path(text, ""), PathBuf::from("kubepods/pod1"));
        assert_eq!(own_path(text, "pids"), PathBuf::new());
    }
}
