//! Moving a mount process out of the node plugin's container: into the root cgroup of every
//! hierarchy of the host's cgroup file system, so that stopping or replacing the plugin's
//! container (a restart, an upgrade) does not kill the processes serving live mounts. With
//! host PIDs, the restarted plugin finds them again through its mount records.

use std::path::Path;

/// Move `pid` into the root cgroup of each hierarchy under `root` (cgroup v2: `root` itself;
/// v1 or hybrid: each mounted controller directory). Returns how many hierarchies took it;
/// an error names the hierarchies that refused.
pub fn move_to_root(root: &Path, pid: u32) -> Result<usize, String> {
    let mut targets = Vec::new();
    if root.join("cgroup.procs").is_file() {
        targets.push(root.to_path_buf());
    } else {
        let entries = std::fs::read_dir(root).map_err(|e| format!("{}: {e}", root.display()))?;
        for e in entries.flatten() {
            let dir = e.path();
            // Symlinks (cpu -> cpu,cpuacct) name a hierarchy listed under its own name too.
            if !e.file_type().is_ok_and(|t| t.is_symlink()) && dir.join("cgroup.procs").is_file() {
                targets.push(dir);
            }
        }
    }
    if targets.is_empty() {
        return Err(format!("no cgroup hierarchy under {}", root.display()));
    }
    targets.sort();
    let mut failed = Vec::new();
    for dir in &targets {
        if let Err(e) = std::fs::write(dir.join("cgroup.procs"), pid.to_string()) {
            failed.push(format!("{}: {e}", dir.display()));
        }
    }
    if failed.is_empty() {
        Ok(targets.len())
    } else {
        Err(failed.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_pid_into_every_hierarchy_root() {
        let dir = tempfile::tempdir().unwrap();
        for h in ["memory", "pids", "unified"] {
            std::fs::create_dir(dir.path().join(h)).unwrap();
            std::fs::write(dir.path().join(h).join("cgroup.procs"), "").unwrap();
        }
        std::fs::create_dir(dir.path().join("not-a-hierarchy")).unwrap();
        std::os::unix::fs::symlink("memory", dir.path().join("mem")).unwrap();
        assert_eq!(move_to_root(dir.path(), 42), Ok(3));
        for h in ["memory", "pids", "unified"] {
            let procs = std::fs::read_to_string(dir.path().join(h).join("cgroup.procs")).unwrap();
            assert_eq!(procs, "42");
        }
        assert!(!dir.path().join("not-a-hierarchy/cgroup.procs").exists());
    }

    #[test]
    fn cgroup_v2_root_and_missing_roots() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), "").unwrap();
        assert_eq!(move_to_root(dir.path(), 7), Ok(1));
        let empty = tempfile::tempdir().unwrap();
        assert!(
            move_to_root(empty.path(), 7)
                .unwrap_err()
                .contains("no cgroup hierarchy")
        );
        assert!(move_to_root(&empty.path().join("nope"), 7).is_err());
    }
}
