//! Keeping a mount alive when its process dies. The node plugin holds a duplicate of each
//! mount's FUSE connection (so the kernel never aborts it while a mount process is gone) and
//! a pidfd of its process; when the process exits without being asked to, a successor is
//! started on the same connection with the same spec and `resume` (it takes over the inode
//! and handle tables from the mount's journal), with backoff when it keeps dying. A
//! restarted node plugin adopts the live mount processes of its predecessor: those its
//! records name and [`identity::verify`] confirms; it takes a duplicate of their connection
//! (`pidfd_getfd`) and starts their successors from the spec in the record, never from
//! anything the process could have written (`/proc/<pid>/cmdline`, `environ`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::identity;
use super::ready::{Readiness, SpawnOptions, spawn_and_wait_with};
use super::state::{Keeper, Record, StateDir};
use crate::options::{MountSpec, SPEC_FD};

/// Descriptor number of the FUSE connection in the mount process.
pub const FUSE_FD: i32 = 4;

/// What starts mount processes (a copy of the mounter's settings, for watcher threads).
#[derive(Clone)]
pub struct Spawner {
    /// The pail binary.
    pub bin: PathBuf,
    /// How long a process may take to serve.
    pub ready_timeout: Duration,
    /// Where each mount process gets a cgroup of its own.
    pub cgroups: Option<super::cgroup::Placement>,
    /// The records.
    pub records: StateDir,
    /// Successors that may fail to start in a row before the mount is given up.
    pub max_failed_starts: u32,
    /// Where events go.
    pub events: Option<super::EventSink>,
}

/// A mount process that serves.
pub struct Started {
    /// Its pid.
    pub pid: u32,
    /// Its pidfd.
    pub pidfd: OwnedFd,
    /// Its start time (see [`Record::start_time`]).
    pub start_time: u64,
    /// The binary it runs.
    pub exe: Option<(u64, u64)>,
}

impl Started {
    /// It, as a mount's record names its keeper.
    pub fn as_keeper(&self) -> Keeper {
        Keeper {
            pid: self.pid,
            start_time: self.start_time,
            exe: self.exe,
        }
    }
}

/// A memory file holding `bytes`, read from its start.
fn memfd(bytes: &[u8]) -> std::io::Result<OwnedFd> {
    use std::io::{Seek, Write};
    let name = c"pail-mount-spec";
    // SAFETY: memfd_create with a valid C string; the descriptor returned is ours.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.write_all(bytes)?;
    f.rewind()?;
    Ok(f.into())
}

impl Spawner {
    /// Tell the pods of `target`'s mount (when they are known): its own pod, or every pod
    /// bound to a shared mount.
    pub(super) fn event(
        &self,
        target: &Path,
        reason: &'static str,
        warning: bool,
        message: String,
    ) {
        let (Some(sink), Some(r)) = (&self.events, self.records.load(target)) else {
            return;
        };
        let mut pods: Vec<super::PodRef> = self
            .records
            .all_binds()
            .into_iter()
            .filter(|b| b.mount == target)
            .filter_map(|b| b.pod)
            .collect();
        if pods.is_empty() {
            pods.extend(r.pod);
        }
        for pod in pods {
            sink(super::MountEvent {
                volume_id: r.volume_id.clone(),
                pod,
                reason,
                message: message.clone(),
                warning,
            });
        }
    }

    /// Start a mount process serving `fuse` for `target` as `spec` says (`resume`: taking
    /// over a live connection); it once it serves.
    pub fn start(
        &self,
        target: &Path,
        spec: &MountSpec,
        fuse: BorrowedFd<'_>,
        resume: bool,
    ) -> Result<Started, String> {
        let mut spec = spec.clone();
        spec.args.resume = resume;
        let spec_fd =
            memfd(&spec.to_json()).map_err(|e| format!("handing over the mount spec: {e}"))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["mount-worker", &format!("--spec-fd={SPEC_FD}")])
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let fds = vec![(fuse, FUSE_FD), (spec_fd.as_fd(), SPEC_FD)];
        self.launch(target, &spec, cmd, fds)
    }

    /// Start the keeper of `target`'s connection (`pail keep-connection`): a process of the
    /// mount's user, in the mount's cgroup, that only holds `fuse`.
    pub fn start_keeper(
        &self,
        target: &Path,
        spec: &MountSpec,
        fuse: BorrowedFd<'_>,
    ) -> Result<Started, String> {
        let Some((uid, gid)) = spec.args.run_as else {
            return Err("the mount has no user of its own".into());
        };
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "keep-connection",
            &format!("--uid={uid}"),
            &format!("--gid={gid}"),
        ]);
        self.launch(target, spec, cmd, vec![(fuse, FUSE_FD)])
    }

    /// Run `cmd` (environment cleared but for what it was given, no stdio) with `fds`, in
    /// `target`'s cgroup, and wait until it reports ready.
    fn launch(
        &self,
        target: &Path,
        spec: &MountSpec,
        mut cmd: Command,
        fds: Vec<(BorrowedFd<'_>, i32)>,
    ) -> Result<Started, String> {
        let envs: Vec<(std::ffi::OsString, std::ffi::OsString)> = cmd
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
            .collect();
        cmd.env_clear()
            .envs(envs)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own cgroup, joined before it runs, with its memory limit.
        let name = super::state::slug(target);
        let cgroups = match &self.cgroups {
            Some(p) => match p.prepare(&name, spec.args.volume.memory_limit) {
                Ok(files) => files,
                Err(e) => {
                    tracing::warn!(target = %target.display(), error = %e, "could not make the mount process's cgroup");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        let opts = SpawnOptions {
            fds,
            new_session: true,
            cgroups: cgroups.iter().map(|f| f.as_fd()).collect(),
        };
        let (mut child, readiness) = spawn_and_wait_with(&mut cmd, &opts, self.ready_timeout)
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
        // Our child, not reaped yet: its pid cannot have been reused.
        let pidfd =
            identity::pidfd_open(pid).map_err(|e| format!("watching the mount process: {e}"))?;
        let started = Started {
            pid,
            start_time: identity::start_time(pid).unwrap_or(0),
            exe: identity::exe(pid),
            pidfd,
        };
        // Its exit is seen through its pidfd; this only reaps it (no zombie).
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        Ok(started)
    }
}

/// The process serving a supervised mount now.
struct Current {
    pid: u32,
    pidfd: Arc<OwnedFd>,
}

/// A mount the plugin keeps alive.
pub struct Supervised {
    /// Our duplicate of the FUSE connection.
    pub fuse: OwnedFd,
    /// How its processes start.
    pub spec: MountSpec,
    current: Mutex<Current>,
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
    /// A supervised mount served by `pid` (whose pidfd is `pidfd`).
    pub fn new(fuse: OwnedFd, spec: MountSpec, pid: u32, pidfd: OwnedFd) -> Arc<Supervised> {
        Arc::new(Supervised {
            fuse,
            spec,
            current: Mutex::new(Current {
                pid,
                pidfd: Arc::new(pidfd),
            }),
            stopping: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
            down: AtomicBool::new(false),
            handing_over: AtomicBool::new(false),
            gave_up: AtomicBool::new(false),
        })
    }

    fn current(&self) -> (u32, Arc<OwnedFd>) {
        let c = self.current.lock().unwrap_or_else(|p| p.into_inner());
        (c.pid, c.pidfd.clone())
    }

    /// The pid of the process serving it now.
    pub fn pid(&self) -> u32 {
        self.current().0
    }

    /// Whether the process serving it now runs.
    pub fn alive(&self) -> bool {
        identity::signal(&self.current().1, 0)
    }

    /// Signal the process serving it now.
    pub fn signal(&self, sig: i32) -> bool {
        identity::signal(&self.current().1, sig)
    }

    /// Stop the process serving it now (see [`identity::stop`]).
    pub fn stop(&self, grace: Duration) {
        identity::stop(&self.current().1, grace);
    }
}

/// Watch `sup`'s process; replace it each time it dies, until the mount is unpublished.
pub fn watch(spawner: Spawner, target: PathBuf, sup: Arc<Supervised>, lock: Arc<Mutex<()>>) {
    std::thread::Builder::new()
        .name("pail-supervisor".into())
        .spawn(move || {
            let mut failures: u32 = 0;
            loop {
                let (pid, pidfd) = sup.current();
                let started = Instant::now();
                identity::wait_exit(&pidfd, None);
                // An unpublish stops the process: nothing to tell, nothing to replace.
                if sup.stopping.load(Ordering::Acquire) {
                    return;
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
                    tracing::warn!(target = %target.display(), pid, restarts = sup.restarts.load(Ordering::Relaxed), "the mount process died; starting a successor on its connection");
                    spawner.event(
                        &target,
                        "MountProcessDied",
                        true,
                        format!("the mount process (pid {pid}) died; a successor is starting on the same connection (calls wait meanwhile)"),
                    );
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
                    match spawner.start(&target, &sup.spec, sup.fuse.as_fd(), true) {
                        Ok(new) => {
                            if let Some(mut r) = spawner.records.load(&target) {
                                r.pid = new.pid;
                                r.start_time = new.start_time;
                                r.exe = new.exe;
                                let _ = spawner.records.save(&r);
                            }
                            let new_pid = new.pid;
                            *sup.current.lock().unwrap_or_else(|p| p.into_inner()) = Current {
                                pid: new.pid,
                                pidfd: Arc::new(new.pidfd),
                            };
                            sup.down.store(false, Ordering::Release);
                            if !handover {
                                sup.restarts.fetch_add(1, Ordering::Relaxed);
                            }
                            tracing::info!(target = %target.display(), pid = new_pid, took = ?began.elapsed(), handover, "a successor serves the mount");
                            if !handover {
                                spawner.event(
                                    &target,
                                    "MountProcessReplaced",
                                    false,
                                    format!(
                                        "a successor (pid {new_pid}) serves the volume, {} ms after the death; replaced {} times so far",
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

/// Whether `fd` is a `/dev/fuse` connection (character device 10:229).
pub fn is_fuse(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: fstat into plain data on a valid descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    st.st_mode & libc::S_IFMT == libc::S_IFCHR
        && libc::major(st.st_rdev) == 10
        && libc::minor(st.st_rdev) == 229
}

/// Take over the supervision of the mount process `r` names, started by a predecessor
/// plugin, once [`identity::verify`] confirms it is that process: its pidfd and a
/// duplicate of its FUSE connection.
pub fn adopt(r: &Record) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let pidfd = identity::verify(r).ok_or_else(|| {
        std::io::Error::other("the recorded process is gone, or another process has its pid")
    })?;
    // SAFETY: pidfd_getfd(2) duplicates descriptor FUSE_FD of the process into ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), FUSE_FD, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    let fuse = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if !is_fuse(fuse.as_fd()) {
        return Err(std::io::Error::other(
            "its descriptor 4 is not a FUSE connection",
        ));
    }
    // Not just any connection (a fresh /dev/fuse, or another mount's): the one recorded.
    if let Some(want) = r.connection
        && super::kernel::fuse_connection(fuse.as_fd()) != Some(want)
    {
        return Err(std::io::Error::other(format!(
            "its descriptor 4 is not the mount's FUSE connection ({want})"
        )));
    }
    Ok((pidfd, fuse))
}

/// Take `r`'s connection from its keeper, once [`identity::verify`] confirms the keeper is
/// the process that was started (its user, start time and binary): when the mount's own
/// process is gone, it is the only holder left.
pub fn take_from_keeper(r: &Record) -> std::io::Result<OwnedFd> {
    let k = as_keeper(r).ok_or_else(|| std::io::Error::other("the mount has no keeper"))?;
    adopt(&k).map(|(_, fuse)| fuse)
}

/// The pidfd of `r`'s keeper, once [`identity::verify`] confirms it is the process that was
/// started; `None` when it has none or it is gone.
pub fn keeper_pidfd(r: &Record) -> Option<OwnedFd> {
    identity::verify(&as_keeper(r)?)
}

/// `r` as a record of its keeper's process (same user and target).
fn as_keeper(r: &Record) -> Option<Record> {
    let k = r.keeper?;
    Some(Record {
        pid: k.pid,
        start_time: k.start_time,
        exe: k.exe,
        ..r.clone()
    })
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
    let theirs = match identity::exe(pid) {
        Some(id) => {
            let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
            match seen.iter().find(|(k, _)| *k == id) {
                Some((_, f)) => *f,
                None => {
                    let f = fingerprint(&format!("/proc/{pid}/exe"));
                    seen.push((id, f));
                    f
                }
            }
        }
        None => None,
    };
    match (theirs, ours) {
        (Some(theirs), Some(ours)) => theirs != ours,
        _ => true,
    }
}
