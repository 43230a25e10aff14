//! `--background`: re-run this command as a detached child and return once it reports that
//! the mount is live (or print why it failed).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use pail::mounter::ready::{Readiness, spawn_and_wait as spawn_ready};

const CHILD_ENV: &str = "PAIL_DAEMON_CHILD";

/// Whether this process is the daemon child of `--background`.
pub fn is_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Start the daemon and wait for it to report.
pub fn spawn_and_wait(log_file: &Option<PathBuf>) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the pail binary")?;
    let args: Vec<_> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--background")
        .collect();
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if log_file.is_none() {
        cmd.stderr(Stdio::null());
    }
    cmd.process_group(0);
    let (child, readiness) =
        spawn_ready(&mut cmd, Duration::from_secs(120)).context("starting the mount daemon")?;
    match readiness {
        Readiness::Ready => {
            println!("pail: mounted (daemon pid {})", child.id());
            Ok(())
        }
        Readiness::Failed(why) => bail!("{why}"),
        Readiness::TimedOut => bail!("the mount daemon did not report within 120 s"),
    }
}

/// Tell the waiting parent that the mount is live.
pub fn report_ready() {
    pail::mounter::ready::report_ready();
}

/// Tell the waiting parent why mounting failed.
pub fn report_failure(message: &str) {
    pail::mounter::ready::report_failure(message);
}
