//! Kernel-side mount operations: mount `/dev/fuse` at a target (as libfuse's fusermount
//! does), unmount, and read the mount table. Targets are reached from the kubelet
//! directory one component at a time without following a symlink (`O_NOFOLLOW`), and
//! mounted, unmounted and removed through the descriptor so reached, so no symlink a pod
//! placed can send a mount elsewhere.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn os(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn open_at(dir: libc::c_int, name: &std::ffi::CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid C string; the descriptor returned is ours.
    let fd = os(unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The components of `target` below `root`: plain names only.
fn components<'a>(root: &Path, target: &'a Path) -> io::Result<Vec<&'a std::ffi::OsStr>> {
    let rel = target.strip_prefix(root).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "target outside the kubelet directory",
        )
    })?;
    rel.components()
        .map(|c| match c {
            std::path::Component::Normal(n) => Ok(n),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "target with \".\" or \"..\"",
            )),
        })
        .collect()
}

/// Open the directory `target` below `root` (the admin's kubelet directory, whose own path
/// may hold symlinks) without following any symlink below it, making the missing
/// directories on the way when `create`. Symlinks give ELOOP or ENOTDIR.
pub fn open_beneath(root: &Path, target: &Path, create: bool) -> io::Result<OwnedFd> {
    let names = components(root, target)?;
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    let mut dir = open_at(
        libc::AT_FDCWD,
        &cstr(root)?,
        libc::O_PATH | libc::O_DIRECTORY,
    )?;
    for name in names {
        let c = CString::new(name.as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if create {
            // SAFETY: `dir` is an open directory and `c` a valid C string.
            let r = unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o750) };
            if r != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(e);
                }
            }
        }
        dir = open_at(dir.as_raw_fd(), &c, flags)?;
    }
    Ok(dir)
}

/// The path that names what `fd` is open on (`/proc/self/fd/N`), for calls that take paths.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Remove the empty directory `target` below `root` (reached without symlinks). Already
/// gone is success.
pub fn remove_beneath(root: &Path, target: &Path) -> io::Result<()> {
    let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
        return Ok(());
    };
    let dir = match open_beneath(root, parent, false) {
        Ok(d) => d,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    let c = CString::new(name.as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `dir` is an open directory and `c` a valid C string.
    let r = unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT) => Ok(()),
        _ => Err(e),
    }
}

/// Open `/dev/fuse` and mount it at `target` (below `root`, reached without symlinks,
/// created if missing) as a `fuse.pail` file system. The returned descriptor is the FUSE
/// connection: whoever serves it serves the mount.
pub fn mount_fuse_beneath(
    root: &Path,
    target: &Path,
    fsname: &str,
    read_only: bool,
) -> io::Result<OwnedFd> {
    let dir = open_beneath(root, target, true)?;
    mount_fuse(&fd_path(&dir), fsname, read_only)
}

/// Bind the mount at `source` (below `source_root`) at `target` (below `target_root`,
/// created if missing), both reached without symlinks; read-only (and always nosuid,
/// nodev) when `read_only`. The new mount API (Linux 5.12): the copy is made read-only
/// before it is attached, so it is never writable, even for an instant.
pub fn bind_beneath(
    source_root: &Path,
    source: &Path,
    target_root: &Path,
    target: &Path,
    read_only: bool,
) -> io::Result<()> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const MOUNT_ATTR_NOSUID: u64 = 0x2;
    const MOUNT_ATTR_NODEV: u64 = 0x4;
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let from = open_beneath(source_root, source, false)?;
    let to = open_beneath(target_root, target, true)?;
    let empty = c"";
    // SAFETY: open_tree on a descriptor we hold with an empty path; the result is ours.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            from.as_raw_fd(),
            empty.as_ptr(),
            (OPEN_TREE_CLONE
                | libc::O_CLOEXEC as libc::c_uint
                | libc::AT_EMPTY_PATH as libc::c_uint) as libc::c_ulong,
        )
    };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nobody else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as libc::c_int) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_NOSUID
            | MOUNT_ATTR_NODEV
            | if read_only { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr on our detached tree with a valid, sized attribute struct.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: move_mount between two descriptors we hold, empty paths.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            to.as_raw_fd(),
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Let the kernel read ahead `bytes` on the file system of `dev` (its backing device's
/// `read_ahead_kb`). FUSE starts at 128 KiB, so sequential reads reach the daemon as 128 KiB
/// requests. Needs root; call it once the FUSE session is initialized (INIT lowers it).
fn set_bdi_read_ahead(dev: u64, bytes: u64) -> io::Result<()> {
    std::fs::write(
        format!(
            "/sys/class/bdi/{}:{}/read_ahead_kb",
            libc::major(dev),
            libc::minor(dev)
        ),
        (bytes / 1024).to_string(),
    )
}

/// [`set_bdi_read_ahead`] for the mount at `path`.
pub fn set_read_ahead(path: &Path, bytes: u64) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    set_bdi_read_ahead(std::fs::metadata(path)?.dev(), bytes)
}

/// [`set_bdi_read_ahead`] for the mount at `target` below `root` (reached without symlinks).
pub fn set_read_ahead_beneath(root: &Path, target: &Path, bytes: u64) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dir = open_beneath(root, target, false)?;
    set_bdi_read_ahead(std::fs::metadata(fd_path(&dir))?.dev(), bytes)
}

/// Unmount whatever is mounted at `target` below `root` (reached without symlinks).
pub fn unmount_beneath(root: &Path, target: &Path) -> io::Result<()> {
    match open_beneath(root, target, false) {
        Ok(dir) => unmount(&fd_path(&dir)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Open `/dev/fuse` and mount it at `target` as a `fuse.pail` file system. The returned
/// descriptor is the FUSE connection: whoever serves it serves the mount.
pub fn mount_fuse(target: &Path, fsname: &str, read_only: bool) -> io::Result<OwnedFd> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let fd: OwnedFd = dev.into();
    let data = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions",
        fd.as_raw_fd()
    );
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOATIME;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    let source = CString::new(fsname.replace(',', "_"))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let fstype = CString::new("fuse.pail").expect("static");
    let target_c = cstr(target)?;
    let data_c = CString::new(data).expect("no NUL");
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            flags,
            data_c.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The FUSE connection `fd` (a `/dev/fuse` descriptor of this process) belongs to, as the
/// kernel numbers it (the `fuse_connection` line of the descriptor's fdinfo, the number under
/// /sys/fs/fuse/connections): `None` for a descriptor not mounted, and on kernels that do
/// not say (6.18 does).
pub fn fuse_connection(fd: BorrowedFd<'_>) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("fuse_connection:"))?
        .trim()
        .parse()
        .ok()
}

/// Unmount `target`; a busy mount is detached. Not mounted is success.
pub fn unmount(target: &Path) -> io::Result<()> {
    let c = cstr(target)?;
    // SAFETY: `c` is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(()),
        _ => {
            // SAFETY: as above.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
                Ok(())
            } else {
                let e2 = io::Error::last_os_error();
                if e2.raw_os_error() == Some(libc::EINVAL) {
                    Ok(())
                } else {
                    Err(e2)
                }
            }
        }
    }
}

/// The file-system type mounted at `target`, if any (from /proc/self/mountinfo).
pub fn mount_type(target: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = target.to_string_lossy();
    let mut found = None;
    for line in text.lines() {
        let mut fields = line.split(' ');
        let Some(mp) = fields.nth(4) else { continue };
        if unescape(mp) != want {
            continue;
        }
        let after = line.split(" - ").nth(1)?;
        found = after.split(' ').next().map(str::to_string);
    }
    found
}

/// Abort the FUSE connection mounted at `target` (through fusectl, mounted when it is not):
/// every waiting and later call fails with ENOTCONN instead of waiting for a server that
/// will not come.
pub fn abort_connection(target: &Path) -> io::Result<()> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let want = target.to_string_lossy();
    let dev = text
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|mp| unescape(mp) == want))
        .filter_map(|l| l.split(' ').nth(2))
        .next_back()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not mounted"))?;
    let (major, minor) = dev
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        .ok_or_else(|| io::Error::other(format!("device {dev:?}")))?;
    let conns = Path::new("/sys/fs/fuse/connections");
    if !text.lines().any(|l| l.contains(" - fusectl ")) {
        let none = cstr(Path::new("none"))?;
        let kind = cstr(Path::new("fusectl"))?;
        let at = cstr(conns)?;
        // SAFETY: valid NUL-terminated strings; no data.
        let r = unsafe {
            libc::mount(
                none.as_ptr(),
                at.as_ptr(),
                kind.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // The kernel names a connection by its device number, major << 20 | minor.
    std::fs::write(conns.join(format!("{}/abort", (major << 20) | minor)), "1")
}

/// Undo the octal escapes of /proc/self/mountinfo (`\040` for a space…).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x"), 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_reached_without_following_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let r = root.path();
        std::os::unix::fs::symlink(outside.path(), r.join("evil")).unwrap();
        std::fs::create_dir(r.join("pod")).unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("pod/last")).unwrap();
        for bad in ["evil/volumes/x/mount", "pod/last"] {
            let e = open_beneath(r, &r.join(bad), true).unwrap_err();
            assert!(
                matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)),
                "{bad}: {e}"
            );
        }
        assert_eq!(
            std::fs::read_dir(outside.path()).unwrap().count(),
            0,
            "nothing made outside"
        );
        let fd = open_beneath(r, &r.join("pod/volumes/v/mount"), true).unwrap();
        assert!(r.join("pod/volumes/v/mount").is_dir());
        drop(fd);
        remove_beneath(r, &r.join("pod/volumes/v/mount")).unwrap();
        assert!(!r.join("pod/volumes/v/mount").exists());
        remove_beneath(r, &r.join("pod/volumes/v/mount")).unwrap();
        assert!(open_beneath(r, Path::new("/elsewhere"), false).is_err());
    }

    #[test]
    fn a_descriptor_names_the_connection_it_was_mounted_with() {
        use std::os::fd::AsFd;
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let fds: Vec<OwnedFd> = dirs
            .iter()
            .map(|d| mount_fuse(d.path(), "pail:test", true).unwrap())
            .collect();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let got: Vec<Option<u64>> = fds.iter().map(|f| fuse_connection(f.as_fd())).collect();
        let fresh: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .unwrap()
            .into();
        let unmounted = fuse_connection(fresh.as_fd());
        for d in &dirs {
            unmount(d.path()).unwrap();
        }
        if got[0].is_none() {
            // A kernel that does not say (before the fdinfo line): the check is skipped.
            return;
        }
        for (d, got) in dirs.iter().zip(got) {
            // mountinfo's major:minor of the mount; the kernel numbers the connection
            // major << 20 | minor.
            let want = d.path().to_string_lossy();
            let dev = mountinfo
                .lines()
                .find(|l| l.split(' ').nth(4).is_some_and(|mp| unescape(mp) == want))
                .and_then(|l| l.split(' ').nth(2))
                .unwrap();
            let (major, minor) = dev.split_once(':').unwrap();
            let number = (major.parse::<u64>().unwrap() << 20) | minor.parse::<u64>().unwrap();
            assert_eq!(got, Some(number), "{}", d.path().display());
        }
        assert_eq!(
            unmounted, None,
            "a descriptor never mounted has no connection"
        );
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(super::unescape(r"/a\040b/c"), "/a b/c");
        assert_eq!(super::unescape("/plain"), "/plain");
    }
}
