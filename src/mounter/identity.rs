//! Who a mount process is, by what the kernel says and the process cannot change: its pid
//! with its start time (`/proc/<pid>/stat`), its real user (`/proc/<pid>/status`), the
//! binary it runs (the device and inode `/proc/<pid>/exe` resolves to), and a pidfd held
//! from then on. Never its command line or environment, which it writes itself. Each mount
//! runs as a user of its own from the admin's range, so "every process of that user" is
//! exactly that mount's, and can be stopped all at once.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::state::Record;

/// The users mount processes run as: `first..=last`, one per mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    /// The first.
    pub first: u32,
    /// The last.
    pub last: u32,
}

impl UidRange {
    /// Parse `first-last` (at least one uid, never root).
    pub fn parse(s: &str) -> Result<UidRange, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?} is not a range such as 900000000-900999999"))?;
        let num = |v: &str| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| format!("{s:?} is not a range of user ids"))
        };
        let (first, last) = (num(a)?, num(b)?);
        if first == 0 || last < first || last == u32::MAX {
            return Err(format!(
                "{s:?}: a range of user ids above 0, first to last, without 4294967295"
            ));
        }
        Ok(UidRange { first, last })
    }

    /// Whether `uid` is in the range.
    pub fn contains(&self, uid: u32) -> bool {
        (self.first..=self.last).contains(&uid)
    }

    /// A uid of the range that no record holds and no process runs as, after `after` in
    /// turn (so a uid freed now is the last to come back).
    pub fn pick(&self, taken: &HashSet<u32>, after: u32) -> Option<u32> {
        let size = (self.last - self.first) as u64 + 1;
        let start = if self.contains(after) {
            (after - self.first) as u64 + 1
        } else {
            0
        };
        let running = running_uids();
        (0..size.min(1 << 20))
            .map(|i| self.first + ((start + i) % size) as u32)
            .find(|u| !taken.contains(u) && !running.contains(u))
    }
}

/// The real uid of every process on the node.
fn running_uids() -> HashSet<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashSet::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(real_uid)
        .collect()
}

/// The start time of `pid` (clock ticks after boot), unless it is gone or a zombie.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields after its last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is the state (field 3); the start time is field 22.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// The real user of `pid`.
pub fn real_uid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The binary `pid` runs: device and inode.
pub fn exe(pid: u32) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    Some((m.dev(), m.ino()))
}

/// A pidfd of `pid`.
pub fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    if pid == 0 || pid > i32::MAX as u32 {
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: pidfd_open(2) takes a pid and flags, returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Send `sig` to the process of `pidfd` (0: only whether it still runs).
pub fn signal(pidfd: &OwnedFd, sig: i32) -> bool {
    // SAFETY: pidfd_send_signal(2) on a pidfd we hold; no siginfo.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        ) == 0
    }
}

/// Wait up to `timeout` (forever when `None`) for the process of `pidfd` to exit; whether
/// it did.
pub fn wait_exit(pidfd: &OwnedFd, timeout: Option<Duration>) -> bool {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ms = match deadline {
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as i32,
            None => -1,
        };
        let mut p = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polling one valid descriptor.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r > 0 {
            return true;
        }
        if r == 0 {
            return false;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return false;
        }
    }
}

/// The process a record names, if it is still that process: the same pid, start time,
/// user and binary, and alive once its pidfd is held (so the pid cannot have been reused
/// in between). Its pidfd.
pub fn verify(r: &Record) -> Option<OwnedFd> {
    let pidfd = pidfd_open(r.pid).ok()?;
    let same = start_time(r.pid) == Some(r.start_time)
        && r.start_time != 0
        && real_uid(r.pid) == Some(r.uid)
        && r.exe.is_none_or(|e| exe(r.pid) == Some(e));
    (same && signal(&pidfd, 0)).then_some(pidfd)
}

/// Stop the process of `pidfd`: it ends by itself once its mount is gone; after `grace` it
/// gets SIGTERM, after as long again SIGKILL.
pub fn stop(pidfd: &OwnedFd, grace: Duration) {
    if wait_exit(pidfd, Some(grace)) {
        return;
    }
    signal(pidfd, libc::SIGTERM);
    if !wait_exit(pidfd, Some(grace)) {
        signal(pidfd, libc::SIGKILL);
        wait_exit(pidfd, Some(grace));
    }
}

/// SIGKILL every process running as `uid` (a mount's own user: whatever its process left,
/// forked or half-started): from a child that takes that uid and signals all it may.
pub fn kill_all_of(uid: u32) {
    if uid == 0 {
        return;
    }
    // SAFETY: the child runs only raw system calls (async-signal-safe) and _exits.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            let ok = libc::syscall(libc::SYS_setresgid, uid, uid, uid) == 0
                && libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) == 0
                && libc::syscall(libc::SYS_setresuid, uid, uid, uid) == 0;
            if ok {
                libc::syscall(libc::SYS_kill, -1, libc::SIGKILL);
            }
            libc::_exit(0);
        }
        if pid > 0 {
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_and_uids_picked_in_turn() {
        assert!(UidRange::parse("0-10").is_err());
        assert!(UidRange::parse("10-5").is_err());
        assert!(UidRange::parse("x").is_err());
        // Ids no process runs as while this runs: the integration tests' drivers take
        // ranges of 1,000 from 900000000 up to 900899999 (tests/common/csi.rs), and their
        // mount processes run meanwhile.
        let r = UidRange::parse("900999000-900999002").unwrap();
        let mut taken = HashSet::new();
        assert_eq!(r.pick(&taken, 0), Some(900999000));
        assert_eq!(r.pick(&taken, 900999000), Some(900999001));
        assert_eq!(r.pick(&taken, 900999002), Some(900999000));
        taken.extend([900999000, 900999001, 900999002]);
        assert_eq!(r.pick(&taken, 0), None);
    }

    #[test]
    fn a_process_is_known_by_its_start_time_and_user_not_its_pid_alone() {
        let me = std::process::id();
        let r = Record {
            volume_id: "v".into(),
            target: "/t".into(),
            source: "s3://b/".into(),
            pid: me,
            start_time: start_time(me).unwrap(),
            exe: exe(me),
            uid: real_uid(me).unwrap(),
            gid: 0,
            read_only: false,
            cache_size: 0,
            memory: 0,
            pod: None,
            keeper: None,
            connection: None,
        };
        assert!(verify(&r).is_some());
        for other in [
            Record {
                start_time: r.start_time + 1,
                ..r.clone()
            },
            Record {
                uid: r.uid + 1,
                ..r.clone()
            },
            Record {
                exe: Some((0, 0)),
                ..r.clone()
            },
            Record {
                pid: 0,
                ..r.clone()
            },
        ] {
            assert!(verify(&other).is_none(), "{other:?}");
        }
    }

    #[test]
    fn every_process_of_a_user_is_stopped() {
        let uid = 900_777_001;
        let mut children = Vec::new();
        for _ in 0..2 {
            let mut cmd = std::process::Command::new("sleep");
            cmd.arg("60");
            std::os::unix::process::CommandExt::uid(&mut cmd, uid);
            children.push(cmd.spawn().unwrap());
        }
        let mut bystander = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        kill_all_of(uid);
        for mut c in children {
            let status = c.wait().unwrap();
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(libc::SIGKILL)
            );
        }
        assert!(
            bystander.try_wait().unwrap().is_none(),
            "root's process lives"
        );
        bystander.kill().unwrap();
        bystander.wait().unwrap();
    }
}
