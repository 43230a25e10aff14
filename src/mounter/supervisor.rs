//! Keeping a mount alive when its process dies. The node plugin holds a duplicate of each
//! mount's FUSE connection (so the kernel never aborts it while a mount process is gone) and
//! watches the process; when it exits without being asked to, a successor is started on the
//! same connection with `--resume` (it takes over the inode and handle tables from the
//! mount's journal), with backoff when it keeps dying. A restarted node plugin adopts the
//! live mount processes of its predecessor: it takes a duplicate of their connection from
//! them (`pidfd_getfd`), reads how they were started from `/proc`, and hands each mount over
//! to a process of its own binary (an upgrade replaces the code serving every mount).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ready::{Readiness, spawn_and_wait_with};
use super::state::StateDir;

/// Descriptor number of the FUSE connection in the mount process.
pub const FUSE_FD: i32 = 4;

/// How a mount process is started: its arguments (after `pail`) and environment.
#[derive(Clone)]
pub struct Launch {
    /// Arguments, from `mount` on.
    pub args: Vec<String>,
    /// Environment (holds credentials: never logged).
    pub env: Vec<(String, String)>,
}

impl Launch {
    fn command(&self, bin: &Path, resume: bool) -> Command {
        let mut cmd = Command::new(bin);
        cmd.args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if resume && !self.args.iter().any(|a| a == "--resume") {
            cmd.arg("--resume");
        }
        cmd
    }
}

/// What starts mount processes (a copy of the mounter's settings, for watcher threads).
#[derive(Clone)]
pub struct Spawner {
    /// The pail binary.
    pub bin: PathBuf,
    /// How long a process may take to serve.
    pub ready_timeout: Duration,
    /// The host's cgroup file system, when processes move to `pail.slice`.
    pub host_cgroup_root: Option<PathBuf>,
    /// Limits of `pail.slice`.
    pub cgroup_limits: super::cgroup::Limits,
    /// The records.
    pub records: StateDir,
    /// Successors that may fail to start in a row before the mount is given up.
    pub max_failed_starts: u32,
    /// Where events go.
    pub events: Option<super::EventSink>,
}

impl Spawner {
    /// Tell the pod of `target`'s mount (when it is known).
    fn event(&self, target: &Path, reason: &'static str, warning: bool, message: String) {
        let (Some(sink), Some(r)) = (&self.events, self.records.load(target)) else {
            return;
        };
        if let Some(pod) = r.pod {
            sink(super::MountEvent {
                volume_id: r.volume_id,
                pod,
                reason,
                message,
                warning,
            });
        }
    }
}

impl Spawner {
    /// Start a mount process serving `fuse` for `target`; its pid once it serves.
    pub fn start(
        &self,
        target: &Path,
        launch: &Launch,
        fuse: BorrowedFd<'_>,
        resume: bool,
    ) -> Result<u32, String> {
        let mut cmd = launch.command(&self.bin, resume);
        let (mut child, readiness) =
            spawn_and_wait_with(&mut cmd, &[(fuse, FUSE_FD)], true, self.ready_timeout)
                .map_err(|e| format!("starting the mount process: {e}"))?;
        let failure = match readiness {
            Readiness::Ready => None,
            Readiness::Failed(why) => Some(why),
            Readiness::TimedOut => Some(format!(
                "the mount process did not serve within {:?}",
                self.ready_timeout
            )),
        };
        if let Some(why) = failure {
            let _ = child.kill();
            let _ = child.wait();
            return Err(why);
        }
        let pid = child.id();
        if let Some(root) = &self.host_cgroup_root {
            let name = super::state::slug(target);
            if let Err(e) = super::cgroup::place(root, pid, &name, &self.cgroup_limits) {
                tracing::warn!(target = %target.display(), error = %e, "could not move the mount process out of the plugin's cgroup: it will stop with the plugin's container");
            }
        }
        // Its exit is seen through its pidfd; this only reaps it (no zombie).
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        Ok(pid)
    }
}

/// A mount the plugin keeps alive.
pub struct Supervised {
    /// Our duplicate of the FUSE connection.
    pub fuse: OwnedFd,
    /// How its processes start.
    pub launch: Launch,
    /// Its process now.
    pub pid: AtomicU32,
    /// Unpublish under way: a dying process is not replaced.
    pub stopping: AtomicBool,
    /// Processes started to replace a dead one.
    pub restarts: AtomicU64,
    /// No process serves it now (one is being started).
    pub down: AtomicBool,
    /// The next exit is a hand-over the plugin asked for, not a crash.
    pub handing_over: AtomicBool,
    /// Successors kept failing: the connection was aborted and the mount is dead.
    pub gave_up: AtomicBool,
}

/// Successors that fail to start in a row (about a minute of backoff) before the
/// supervisor gives the mount up.
pub const MAX_FAILED_STARTS: u32 = 8;

impl Supervised {
    /// A supervised mount served by `pid`.
    pub fn new(fuse: OwnedFd, launch: Launch, pid: u32) -> Arc<Supervised> {
        Arc::new(Supervised {
            fuse,
            launch,
            pid: AtomicU32::new(pid),
            stopping: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
            down: AtomicBool::new(false),
            handing_over: AtomicBool::new(false),
            gave_up: AtomicBool::new(false),
        })
    }
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags, returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Wait until the process behind `pidfd` exits.
fn wait_exit(pidfd: &OwnedFd) {
    let mut p = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: polling one valid descriptor.
        let r = unsafe { libc::poll(&mut p, 1, -1) };
        if r > 0 || (r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)) {
            return;
        }
    }
}

/// Watch `sup`'s process; replace it each time it dies, until the mount is unpublished.
pub fn watch(spawner: Spawner, target: PathBuf, sup: Arc<Supervised>, lock: Arc<Mutex<()>>) {
    std::thread::Builder::new()
        .name("pail-supervisor".into())
        .spawn(move || {
            let mut failures: u32 = 0;
            loop {
                let pid = sup.pid.load(Ordering::Acquire);
                let started = Instant::now();
                match pidfd_open(pid) {
                    Ok(pidfd) => wait_exit(&pidfd),
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => {
                        tracing::warn!(target = %target.display(), error = %e, "cannot watch the mount process");
                        return;
                    }
                }
                let handover = sup.handing_over.swap(false, Ordering::AcqRel);
                let lived = started.elapsed();
                let died = Instant::now();
                if handover || lived > Duration::from_secs(60) {
                    failures = 0;
                } else if lived < Duration::from_secs(10) {
                    // Dying soon after start, again: back off.
                    failures += 1;
                }
                if !handover && spawner.max_failed_starts == 0 {
                    give_up(&spawner, &target, &sup, "restarts are off (--max-failed-restarts=0)");
                    return;
                }
                if !handover {
                    spawner.event(
                        &target,
                        "MountProcessDied",
                        true,
                        format!("the mount process (pid {pid}) died; a successor is starting on the same connection (calls wait meanwhile)"),
                    );
                }
                if !handover {
                    tracing::warn!(target = %target.display(), pid, restarts = sup.restarts.load(Ordering::Relaxed), "the mount process died; starting a successor on its connection");
                }
                loop {
                    if sup.stopping.load(Ordering::Acquire) {
                        return;
                    }
                    sup.down.store(true, Ordering::Release);
                    // One quick death is replaced at once; a second in a row backs off.
                    if failures > 1 {
                        let wait = Duration::from_millis(250u64 << (failures - 2).min(7))
                            .min(Duration::from_secs(30));
                        std::thread::sleep(wait);
                    }
                    let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
                    if sup.stopping.load(Ordering::Acquire) {
                        return;
                    }
                    let began = Instant::now();
                    match spawner.start(&target, &sup.launch, sup.fuse.as_fd(), true) {
                        Ok(new) => {
                            sup.pid.store(new, Ordering::Release);
                            sup.down.store(false, Ordering::Release);
                            if !handover {
                                sup.restarts.fetch_add(1, Ordering::Relaxed);
                            }
                            if let Some(mut r) = spawner.records.load(&target) {
                                r.pid = new;
                                let _ = spawner.records.save(&r);
                            }
                            tracing::info!(target = %target.display(), pid = new, took = ?began.elapsed(), handover, "a successor serves the mount");
                            if !handover {
                                spawner.event(
                                    &target,
                                    "MountProcessReplaced",
                                    false,
                                    format!(
                                        "a successor (pid {new}) serves the volume, {} ms after the death; replaced {} times so far",
                                        died.elapsed().as_millis(),
                                        sup.restarts.load(Ordering::Relaxed)
                                    ),
                                );
                            }
                            break;
                        }
                        Err(why) => {
                            failures += 1;
                            tracing::warn!(target = %target.display(), error = %why, failures, "the successor did not start");
                            if failures >= spawner.max_failed_starts {
                                give_up(&spawner, &target, &sup, &why.to_string());
                                return;
                            }
                        }
                    }
                }
            }
        })
        .expect("spawning a supervisor thread");
}

/// Give the mount up: callers would wait forever, so fail them (ENOTCONN) instead; the
/// volume reports dead until it is published again.
fn give_up(spawner: &Spawner, target: &Path, sup: &Supervised, why: &str) {
    sup.gave_up.store(true, Ordering::Release);
    let aborted = super::kernel::abort_connection(target);
    tracing::error!(target = %target.display(), error = %why, ?aborted, "giving the mount up: no process serves it");
    spawner.event(
        target,
        "MountGivenUp",
        true,
        format!("no mount process serves the volume any more ({why}); its files fail with ENOTCONN until the pod is recreated"),
    );
}

/// Take over the supervision of `pid`, a mount process a predecessor plugin started: a
/// duplicate of its FUSE connection and how it was started.
pub fn adopt(pid: u32) -> std::io::Result<(OwnedFd, Launch)> {
    let pidfd = pidfd_open(pid)?;
    // SAFETY: pidfd_getfd(2) duplicates descriptor FUSE_FD of the process into ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), FUSE_FD, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    let fuse = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let split = |bytes: Vec<u8>| -> Vec<String> {
        bytes
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    };
    let cmdline = split(std::fs::read(format!("/proc/{pid}/cmdline"))?);
    let args: Vec<String> = cmdline
        .iter()
        .skip_while(|a| a.as_str() != "mount")
        .cloned()
        .collect();
    if args.is_empty() {
        return Err(std::io::Error::other("not a pail mount process"));
    }
    let env = split(std::fs::read(format!("/proc/{pid}/environ"))?)
        .into_iter()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect();
    Ok((fuse, Launch { args, env }))
}

/// A fingerprint of the program in `path`: its size and a CRC-64 of its bytes.
fn fingerprint(path: &str) -> Option<(u64, u64)> {
    let bytes = std::fs::read(path).ok()?;
    Some((
        bytes.len() as u64,
        crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, &bytes),
    ))
}

/// Whether `pid` runs another build of pail than this process (an upgrade): compared by
/// content, since a restarted container sees the same image under another mount.
pub fn runs_other_binary(pid: u32) -> bool {
    static OURS: std::sync::OnceLock<Option<(u64, u64)>> = std::sync::OnceLock::new();
    // Mounts started by one build share its file: read each file once.
    type Fingerprint = Option<(u64, u64)>;
    static SEEN: Mutex<Vec<((u64, u64), Fingerprint)>> = Mutex::new(Vec::new());
    let ours = *OURS.get_or_init(|| fingerprint("/proc/self/exe"));
    let exe = format!("/proc/{pid}/exe");
    let theirs = match std::fs::metadata(&exe) {
        Ok(m) => {
            use std::os::unix::fs::MetadataExt;
            let id = (m.dev(), m.ino());
            let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
            match seen.iter().find(|(k, _)| *k == id) {
                Some((_, f)) => *f,
                None => {
                    let f = fingerprint(&exe);
                    seen.push((id, f));
                    f
                }
            }
        }
        Err(_) => None,
    };
    match (theirs, ours) {
        (Some(theirs), Some(ours)) => theirs != ours,
        _ => true,
    }
}
