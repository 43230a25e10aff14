//! What a mount process started by the CSI driver gives up before it touches the network:
//! root (it runs as an unprivileged user from then on), every capability (bounding set
//! included), new privileges (`PR_SET_NO_NEW_PRIVS`), core dumps and ptrace by others
//! (`PR_SET_DUMPABLE` 0), and every system call it does not use (a seccomp filter). It only
//! serves a FUSE descriptor that is already open, so it needs none of them.

use anyhow::{Context, bail};

use super::seccomp;

fn check(r: libc::c_int, what: &str) -> anyhow::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error()).with_context(|| what.to_string())
    }
}

/// The highest capability number this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Give up everything but what serving needs; runs before any other thread exists.
pub fn drop_privileges(uid: u32, gid: u32) -> anyhow::Result<()> {
    if uid == 0 {
        bail!("--run-as: refusing to stay root");
    }
    // SAFETY: plain prctl/set*id calls on this (still single-threaded) process.
    unsafe {
        for cap in 0..=last_cap() {
            // EINVAL for numbers this kernel lacks is fine.
            libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
        }
        check(libc::setgroups(0, std::ptr::null()), "setgroups")?;
        check(libc::setresgid(gid, gid, gid), "setresgid")?;
        check(libc::setresuid(uid, uid, uid), "setresuid")?;
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
        check(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            "PR_SET_NO_NEW_PRIVS",
        )?;
        check(
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0),
            "PR_SET_DUMPABLE",
        )?;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
        .unwrap_or("?");
    if !eff.trim_start_matches('0').is_empty() {
        bail!("capabilities left after dropping root: {eff}");
    }
    seccomp::install().context("installing the system-call filter")?;
    tracing::info!(
        uid,
        gid,
        "running unprivileged, with no capabilities and a system-call filter"
    );
    Ok(())
}
