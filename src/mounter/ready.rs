//! The readiness pipe between a parent and a `pail mount` child: the child writes `ready`
//! once the kernel has completed the FUSE handshake, or `error: …` and exits.
//!
//! The write end reaches the child as descriptor 3 and nowhere else (it is close-on-exec in
//! the parent), so concurrent spawns from a multi-threaded parent cannot keep each other's
//! pipes open.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Environment variable naming the descriptor the child reports readiness on.
pub const READY_FD_ENV: &str = "PAIL_READY_FD";
/// The descriptor number the write end has in the child.
pub const CHILD_FD: i32 = 3;

/// How a child's start ended.
#[derive(Debug)]
pub enum Readiness {
    /// The mount is live.
    Ready,
    /// The child said why it failed (or exited without a word).
    Failed(String),
    /// Nothing arrived in time.
    TimedOut,
}

fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid two-element array for pipe2(2) to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Spawn `cmd` with a readiness pipe and wait up to `timeout` for its report.
pub fn spawn_and_wait(cmd: &mut Command, timeout: Duration) -> io::Result<(Child, Readiness)> {
    spawn_and_wait_with(cmd, &SpawnOptions::default(), timeout)
}

/// Duplicate `fd` to a close-on-exec descriptor numbered 10 or more, out of the way of the
/// numbers the child is given.
fn high_dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a valid descriptor returns a new descriptor we own.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `n` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// How a child is started besides its command.
#[derive(Default)]
pub struct SpawnOptions<'a> {
    /// Descriptors the child gets, each at its number (above [`CHILD_FD`]).
    pub fds: Vec<(BorrowedFd<'a>, i32)>,
    /// Its own session, so that signals to the parent's process group do not reach it, and
    /// SIGKILL should the thread that started it end before it drops its privileges (the
    /// kernel clears that setting then): a start interrupted by a dying parent leaves
    /// nothing running as root.
    pub new_session: bool,
    /// `cgroup.procs` files (open for writing) the child joins before it runs a single
    /// instruction of its program, so that everything it allocates is charged there.
    pub cgroups: Vec<BorrowedFd<'a>>,
}

/// Like [`spawn_and_wait`], with `opts`.
pub fn spawn_and_wait_with(
    cmd: &mut Command,
    opts: &SpawnOptions<'_>,
    timeout: Duration,
) -> io::Result<(Child, Readiness)> {
    let (read_end, write_end) = cloexec_pipe()?;
    let write_high = high_dup(write_end.as_fd())?;
    drop(write_end);
    let mut plan: Vec<(i32, i32)> = vec![(write_high.as_raw_fd(), CHILD_FD)];
    let mut keep = Vec::new();
    for (fd, number) in &opts.fds {
        assert!(
            *number > CHILD_FD,
            "descriptor numbers above {CHILD_FD} only"
        );
        let high = high_dup(*fd)?;
        plan.push((high.as_raw_fd(), *number));
        keep.push(high);
    }
    let mut joins = Vec::new();
    for fd in &opts.cgroups {
        let high = high_dup(*fd)?;
        joins.push(high.as_raw_fd());
        keep.push(high);
    }
    let new_session = opts.new_session;
    cmd.env(READY_FD_ENV, CHILD_FD.to_string());
    // SAFETY: only async-signal-safe calls (setsid, prctl, write, dup2) run between fork and
    // exec; every source descriptor is 10 or more, so no dup2 clobbers a later source.
    unsafe {
        cmd.pre_exec(move || {
            if new_session {
                libc::setsid();
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
            }
            for fd in &joins {
                // "0": the writing process itself.
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (from, to) in &plan {
                if libc::dup2(*from, *to) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(write_high);
    drop(keep);
    let readiness = read_report(read_end, timeout)?;
    Ok((child, readiness))
}

fn read_report(fd: OwnedFd, timeout: Duration) -> io::Result<Readiness> {
    let deadline = Instant::now() + timeout;
    let mut file = std::fs::File::from(fd);
    let mut buf = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Readiness::TimedOut);
        }
        let mut pfd = libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            continue;
        }
        let mut chunk = [0u8; 4096];
        let got = file.read(&mut chunk)?;
        if got == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..got]);
        if buf.starts_with(b"ready") {
            return Ok(Readiness::Ready);
        }
    }
    let text = String::from_utf8_lossy(&buf).trim().to_string();
    let why = text.strip_prefix("error: ").unwrap_or(&text).to_string();
    Ok(Readiness::Failed(if why.is_empty() {
        "the mount process exited before mounting".into()
    } else {
        why
    }))
}

/// In the child: tell the parent the mount is live. Does nothing without a parent waiting.
pub fn report_ready() {
    report("ready\n");
}

/// In the child: tell the parent why mounting failed.
pub fn report_failure(message: &str) {
    report(&format!("error: {message}\n"));
}

fn report(line: &str) {
    use std::io::Write;
    let Some(fd) = std::env::var(READY_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return;
    };
    // SAFETY: start-up code runs this before other threads read the environment; removing
    // the variable makes sure the descriptor is used once.
    unsafe { std::env::remove_var(READY_FD_ENV) };
    // SAFETY: the parent handed us this descriptor for exactly this message.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let _ = f.write_all(line.as_bytes());
}
