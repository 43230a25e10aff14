//! `--background`: re-run this command as a detached child and return once it reports that
//! the mount is live (or print why it failed). The same readiness pipe (`PAIL_READY_FD`)
//! lets any parent, such as the CSI node plugin, wait for a mount.

use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

const CHILD_ENV: &str = "PAIL_DAEMON_CHILD";
/// Environment variable naming the descriptor a mount process reports readiness on.
pub const READY_FD_ENV: &str = "PAIL_READY_FD";

/// Whether this process is the daemon child of `--background`.
pub fn is_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Start the daemon and wait for it to report.
pub fn spawn_and_wait(log_file: &Option<PathBuf>) -> anyhow::Result<()> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid two-element array for pipe(2) to fill.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe");
    }
    let (read_fd, write_fd) = (fds[0], fds[1]);
    // SAFETY: read_fd was just created by pipe(2) and is owned here only.
    let mut reader = unsafe { std::fs::File::from_raw_fd(read_fd) };
    // SAFETY: setting FD_CLOEXEC on our own descriptor.
    unsafe { libc::fcntl(read_fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    let exe = std::env::current_exe().context("locating the pail binary")?;
    let args: Vec<_> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--background")
        .collect();
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env(CHILD_ENV, "1")
        .env(READY_FD_ENV, write_fd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if log_file.is_none() {
        cmd.stderr(Stdio::null());
    }
    // SAFETY: setsid is async-signal-safe and runs in the child before exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting the mount daemon")?;
    // SAFETY: closing our copy of the write end so EOF arrives when the child closes its.
    unsafe { libc::close(write_fd) };
    let mut report = String::new();
    reader
        .read_to_string(&mut report)
        .context("waiting for the mount daemon")?;
    if report.starts_with("ready") {
        println!("pail: mounted (daemon pid {})", child.id());
        return Ok(());
    }
    let why = report.trim().trim_start_matches("error: ");
    if why.is_empty() {
        bail!("the mount daemon exited before mounting");
    }
    bail!("{why}")
}

fn report(line: &str) {
    let Some(fd) = std::env::var(READY_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    // Only once: later calls find no variable.
    // SAFETY: single-threaded at this point of start-up in the callers that matter; the
    // variable is removed so the descriptor is used once.
    unsafe { std::env::remove_var(READY_FD_ENV) };
    // SAFETY: the parent passed us this descriptor for exactly this message.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let _ = f.write_all(line.as_bytes());
}

/// Tell the waiting parent that the mount is live.
pub fn report_ready() {
    report("ready\n");
}

/// Tell the waiting parent why mounting failed.
pub fn report_failure(message: &str) {
    report(&format!("error: {message}\n"));
}
