//! Moving a mount process out of the node plugin's container, so that stopping or
//! replacing the plugin's container (a restart, an upgrade) does not kill the processes
//! serving live mounts: into pail's own cgroup, `pail.slice/mount-<id>`, whose node-wide
//! memory and pids limits (chart values) bound all mount processes together, in the memory
//! and pids hierarchies (or the unified one, cgroup v2); into the root cgroup of every other
//! hierarchy (cgroup v1). With host PIDs, the restarted plugin finds them again through its
//! mount records.

use std::path::{Path, PathBuf};

/// The cgroup of pail's mount processes.
pub const SLICE: &str = "pail.slice";

/// Node-wide limits of all mount processes together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of memory.
    pub memory: Option<u64>,
    /// Processes and threads.
    pub pids: Option<u64>,
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

/// Place `pid` in `pail.slice/mount-<name>` (created with `limits` on the slice). Returns
/// how many hierarchies took it; an error names those that refused.
pub fn place(root: &Path, pid: u32, name: &str, limits: &Limits) -> Result<usize, String> {
    let child = format!("mount-{name}");
    let mut failed = Vec::new();
    let mut placed = 0;
    match hierarchies(root)? {
        None => {
            let slice = root.join(SLICE);
            let r = (|| {
                mkdir(&slice)?;
                // Delegate memory and pids to the slice's children (already on under systemd).
                let _ = write(&root.join("cgroup.subtree_control"), "+memory +pids");
                let _ = write(&slice.join("cgroup.subtree_control"), "+memory +pids");
                if let Some(m) = limits.memory {
                    write(&slice.join("memory.max"), &m.to_string())?;
                }
                if let Some(p) = limits.pids {
                    write(&slice.join("pids.max"), &p.to_string())?;
                }
                mkdir(&slice.join(&child))?;
                write(&slice.join(&child).join("cgroup.procs"), &pid.to_string())
            })();
            match r {
                Ok(()) => placed += 1,
                Err(e) => failed.push(e),
            }
        }
        Some(list) => {
            for (dir, controllers) in list {
                let has = |c: &str| controllers.split(',').any(|x| x == c);
                let r = if has("memory") || has("pids") {
                    (|| {
                        let slice = dir.join(SLICE);
                        mkdir(&slice)?;
                        if has("memory")
                            && let Some(m) = limits.memory
                        {
                            write(&slice.join("memory.limit_in_bytes"), &m.to_string())?;
                        }
                        if has("pids")
                            && let Some(p) = limits.pids
                        {
                            write(&slice.join("pids.max"), &p.to_string())?;
                        }
                        mkdir(&slice.join(&child))?;
                        write(&slice.join(&child).join("cgroup.procs"), &pid.to_string())
                    })()
                } else {
                    write(&dir.join("cgroup.procs"), &pid.to_string())
                };
                match r {
                    Ok(()) => placed += 1,
                    Err(e) => failed.push(e),
                }
            }
        }
    }
    if failed.is_empty() {
        Ok(placed)
    } else {
        Err(failed.join("; "))
    }
}

/// Remove the (empty) cgroup of the mount `name`.
pub fn remove(root: &Path, name: &str) {
    let child = format!("mount-{name}");
    match hierarchies(root) {
        Ok(None) => {
            let _ = std::fs::remove_dir(root.join(SLICE).join(&child));
        }
        Ok(Some(list)) => {
            for (dir, _) in list {
                let _ = std::fs::remove_dir(dir.join(SLICE).join(&child));
            }
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hierarchy(root: &Path, name: &str) {
        std::fs::create_dir(root.join(name)).unwrap();
        std::fs::write(root.join(name).join("cgroup.procs"), "").unwrap();
    }

    #[test]
    fn v1_memory_and_pids_go_to_the_slice_others_to_the_root() {
        let dir = tempfile::tempdir().unwrap();
        for h in ["memory", "pids", "cpu,cpuacct", "unified"] {
            hierarchy(dir.path(), h);
        }
        std::fs::create_dir(dir.path().join("not-a-hierarchy")).unwrap();
        std::os::unix::fs::symlink("cpu,cpuacct", dir.path().join("cpu")).unwrap();
        let limits = Limits {
            memory: Some(1 << 30),
            pids: Some(4096),
        };
        // A real cgroup file system makes these files itself.
        assert_eq!(place(dir.path(), 42, "abc", &limits), Ok(4));
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
        assert_eq!(read("memory/pail.slice/mount-abc/cgroup.procs"), "42");
        assert_eq!(
            read("memory/pail.slice/memory.limit_in_bytes"),
            "1073741824"
        );
        assert_eq!(read("pids/pail.slice/mount-abc/cgroup.procs"), "42");
        assert_eq!(read("pids/pail.slice/pids.max"), "4096");
        assert_eq!(read("cpu,cpuacct/cgroup.procs"), "42");
        assert_eq!(read("unified/cgroup.procs"), "42");
        assert!(!dir.path().join("not-a-hierarchy/cgroup.procs").exists());
        std::fs::remove_file(dir.path().join("memory/pail.slice/mount-abc/cgroup.procs")).unwrap();
        remove(dir.path(), "abc");
        assert!(!dir.path().join("memory/pail.slice/mount-abc").exists());
    }

    #[test]
    fn v2_has_one_slice_with_the_limits_and_missing_roots_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), "memory pids").unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), "").unwrap();
        let limits = Limits {
            memory: Some(1 << 20),
            pids: None,
        };
        assert_eq!(place(dir.path(), 7, "x", &limits), Ok(1));
        let slice = dir.path().join(SLICE);
        assert_eq!(
            std::fs::read_to_string(slice.join("memory.max")).unwrap(),
            "1048576"
        );
        assert_eq!(
            std::fs::read_to_string(slice.join("mount-x/cgroup.procs")).unwrap(),
            "7"
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(
            place(empty.path(), 7, "x", &limits)
                .unwrap_err()
                .contains("no cgroup hierarchy")
        );
        assert!(place(&empty.path().join("nope"), 7, "x", &limits).is_err());
    }
}
