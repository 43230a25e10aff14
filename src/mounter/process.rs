//! One `pail mount` process per target path. Publish mounts `/dev/fuse` at the target,
//! starts `pail mount --fuse-fd 4` in its own session with the descriptor, waits until it
//! serves, and records it; unpublish unmounts (also a dead, "transport endpoint is not
//! connected" mount), stops the process and removes the target. Both are idempotent and
//! serialised per target.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::kernel;
use super::state::{Record, StateDir};
use super::supervisor::{self, FUSE_FD, Launch, Spawner, Supervised};
use super::{MountInfo, MountRequest, MountState, Mounter, MounterStats};
use crate::options::LogFormat;

/// Why a mount operation failed.
#[derive(Debug)]
pub enum MountError {
    /// Something else is mounted at the target.
    Busy(String),
    /// The node's staging space (or another node-wide budget) is spent.
    Exhausted(String),
    /// The target cannot be used (a symlink on the way).
    Refused(String),
    /// The mount process could not start or mount (bad bucket, credentials…).
    Failed(String),
    /// A local system call failed.
    Io(String),
}

impl std::fmt::Display for MountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MountError::Busy(m)
            | MountError::Exhausted(m)
            | MountError::Refused(m)
            | MountError::Failed(m)
            | MountError::Io(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for MountError {}

/// Starts and stops mount processes.
pub struct ProcessMounter {
    root: PathBuf,
    pail_bin: PathBuf,
    records: StateDir,
    locks: Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>,
    /// Mount processes found dead (for metrics), each counted once.
    dead_mounts: std::sync::atomic::AtomicU64,
    noticed_dead: Mutex<std::collections::HashSet<PathBuf>>,
    /// How long to wait for a mount process to serve.
    pub ready_timeout: Duration,
    /// The host's cgroup file system: mount processes move to pail's own cgroup there, out
    /// of the plugin's container, so that they outlive it (see [`super::cgroup`]).
    pub host_cgroup_root: Option<PathBuf>,
    /// Node-wide limits of that cgroup.
    pub cgroup_limits: super::cgroup::Limits,
    /// Extra certificates mount processes trust (the admin's PEM file).
    pub ca_bundle: Option<PathBuf>,
    /// Mount processes run as this user and group once started (unprivileged).
    pub run_as: Option<(u32, u32)>,
    /// Most staging space all mounts of the node may reserve together.
    pub node_cache_size: Option<u64>,
    /// Successors that may fail to start in a row before a mount is given up (0: a dead
    /// mount process is not replaced; its mount fails with ENOTCONN).
    pub max_failed_restarts: u32,
    /// Where events of mounts go (Kubernetes Events on their pods).
    pub events: Option<super::EventSink>,
    /// Mounts kept alive: the plugin holds their connection and replaces a dead process.
    supervised: Mutex<HashMap<PathBuf, Arc<Supervised>>>,
}

/// At most `max` bytes of the regular file at `path`, written by a mount process in its
/// own directory (not trusted: a symlink or a FIFO there is never followed or waited on).
fn read_capped(path: &Path, max: u64) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut out = String::new();
    file.take(max).read_to_string(&mut out).ok()?;
    Some(out)
}

fn pid_alive(pid: u32) -> bool {
    // A zombie still "exists": look at its state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Whether `pid` is the pail mount process of `target` (not a reused pid).
fn is_our_process(pid: u32, target: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let t = target.as_os_str().as_encoded_bytes();
    args.contains(&&b"mount"[..]) && args.contains(&t) && pid_alive(pid)
}

/// Every live pail mount process of `target` (found by its command line), including one
/// whose record was never written because the plugin died during the publish.
fn processes_of(target: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| is_our_process(*pid, target))
        .collect()
}

fn reap(pid: u32) {
    // SAFETY: waitpid with WNOHANG on a pid; harmless if it is not our child.
    unsafe {
        libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG);
    }
}

fn stop_process(pid: u32, target: &Path) {
    if !is_our_process(pid, target) {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut signalled = false;
    while is_our_process(pid, target) {
        reap(pid);
        if Instant::now() > deadline {
            if signalled {
                // SAFETY: signalling a process we verified is our mount process.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                reap(pid);
                return;
            }
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            signalled = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    reap(pid);
}

impl ProcessMounter {
    /// A mounter running `pail_bin`, keeping records in `state_dir`, mounting only below
    /// `root` (kubelet's `pods/` directory).
    pub fn new(pail_bin: PathBuf, state_dir: &Path, root: PathBuf) -> std::io::Result<Self> {
        Ok(ProcessMounter {
            root,
            pail_bin,
            records: StateDir::new(state_dir)?,
            locks: Mutex::new(HashMap::new()),
            dead_mounts: Default::default(),
            noticed_dead: Default::default(),
            ready_timeout: Duration::from_secs(60),
            host_cgroup_root: None,
            cgroup_limits: Default::default(),
            ca_bundle: None,
            run_as: None,
            node_cache_size: None,
            max_failed_restarts: supervisor::MAX_FAILED_STARTS,
            events: None,
            supervised: Mutex::new(HashMap::new()),
        })
    }

    fn spawner(&self) -> Spawner {
        Spawner {
            bin: self.pail_bin.clone(),
            ready_timeout: self.ready_timeout,
            host_cgroup_root: self.host_cgroup_root.clone(),
            cgroup_limits: self.cgroup_limits,
            records: self.records.clone(),
            max_failed_starts: self.max_failed_restarts,
            events: self.events.clone(),
        }
    }

    fn supervised(&self, target: &Path) -> Option<Arc<Supervised>> {
        self.supervised
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(target)
            .cloned()
    }

    /// Keep `sup` alive for `target`.
    fn supervise(&self, target: &Path, sup: Arc<Supervised>) {
        self.supervised
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(target.to_path_buf(), sup.clone());
        supervisor::watch(self.spawner(), target.to_path_buf(), sup, self.lock(target));
    }

    /// Adopt the live mount processes a predecessor plugin started: hold their connections,
    /// watch them, and hand each over to a process of this binary when theirs differs (an
    /// upgrade). Returns how many were adopted.
    pub fn adopt_live(&self) -> usize {
        let mut adopted = 0;
        for r in self.records.all() {
            if !is_our_process(r.pid, &r.target) {
                continue;
            }
            match supervisor::adopt(r.pid) {
                Ok((fuse, launch)) => {
                    let sup = Supervised::new(fuse, launch, r.pid);
                    let other = supervisor::runs_other_binary(r.pid);
                    if other {
                        sup.handing_over
                            .store(true, std::sync::atomic::Ordering::Release);
                    }
                    self.supervise(&r.target, sup);
                    if other {
                        tracing::info!(target = %r.target.display(), pid = r.pid, "handing the mount over to this version");
                        // SAFETY: signalling a process we verified is our mount process.
                        unsafe { libc::kill(r.pid as i32, libc::SIGTERM) };
                    }
                    adopted += 1;
                }
                Err(e) => {
                    tracing::warn!(target = %r.target.display(), pid = r.pid, error = %e, "cannot hold the connection of this mount: it will not survive its process");
                }
            }
        }
        adopted
    }

    fn lock(&self, target: &Path) -> Arc<Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks.len() > 10_000 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(target.to_path_buf()).or_default().clone()
    }

    /// Whether `target` is served by a live mount process of ours.
    pub fn is_live(&self, target: &Path) -> bool {
        matches!(self.state(target), MountState::Live(_))
    }

    /// How the mount process of `req` starts: its arguments (the checked options, and
    /// where its log, staging space, secrets, journal and counters live) and environment.
    fn launch(&self, req: &MountRequest) -> Result<Launch, MountError> {
        let target = &req.target;
        let mut options = req.options.clone();
        options.mountpoint = target.clone();
        options.fuse_fd = Some(FUSE_FD);
        options.log_format = LogFormat::Json;
        options.run_as = self.run_as;
        if options.store.ca_bundle.is_none() {
            options.store.ca_bundle = self.ca_bundle.clone();
        }
        let cache = self
            .records
            .make_cache(target, self.run_as)
            .map_err(|e| MountError::Io(format!("making the staging directory: {e}")))?;
        options.cache_dir = Some(cache);
        options.log_file = Some(self.records.log_path(target));
        if let Some(key) = &req.gcs_key {
            let path = self
                .records
                .save_key(target, key, self.run_as)
                .map_err(|e| MountError::Io(format!("saving the GCS key: {e}")))?;
            options.store.service_account_file = Some(path);
        }
        if let Some(token) = &req.token {
            let path = self
                .records
                .save_token(target, token, self.run_as)
                .map_err(|e| MountError::Io(format!("saving the pod token: {e}")))?;
            options.store.web_identity_token_file = Some(path);
        }
        // Only logging and the admin's proxy pass from the plugin; credentials and the endpoint
        // policy come with the request (the driver's identity only when the admin allows it).
        let mut env = vec![(
            "PATH".to_string(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        )];
        for var in ["PAIL_LOG"].iter().chain(crate::options::PROXY_ENV) {
            if let Ok(v) = std::env::var(var) {
                env.push((var.to_string(), v));
            }
        }
        env.extend(req.env.iter().cloned());
        options.journal = Some(self.records.journal_path(target));
        options.metrics_file = Some(self.records.metrics_path(target));
        let mut args = vec!["mount".to_string()];
        args.extend(options.to_args());
        Ok(Launch { args, env })
    }

    fn publish_locked(&self, req: &MountRequest) -> Result<(), MountError> {
        let target = &req.target;
        match self.state(target) {
            MountState::Live(_) => return Ok(()),
            MountState::Dead => {
                tracing::warn!(target = %target.display(), "replacing a dead pail mount");
                self.cleanup(target);
            }
            MountState::Foreign(other) => {
                return Err(MountError::Busy(format!(
                    "{} already has a {other} mount",
                    target.display()
                )));
            }
            MountState::None => {}
        }
        if let Some(cap) = self.node_cache_size {
            let reserved: u64 = self.records.all().iter().map(|r| r.cache_size).sum();
            let asked = req.options.volume.max_cache_size;
            if reserved + asked > cap {
                return Err(MountError::Exhausted(format!(
                    "the node's staging space is spent: {reserved} of {cap} bytes reserved by other mounts, this one asks {asked} (mountOptions max-cache-size)"
                )));
            }
        }
        let fsname = format!("pail:{}", req.options.source);
        let fuse = kernel::mount_fuse_beneath(&self.root, target, &fsname, req.read_only).map_err(
            |e| match e.raw_os_error() {
                Some(libc::ELOOP | libc::ENOTDIR) => MountError::Refused(format!(
                    "target_path {}: a symlink or a file on the way (it is never followed)",
                    target.display()
                )),
                _ => MountError::Io(format!("mounting FUSE at {}: {e}", target.display())),
            },
        )?;

        let launch = match self.launch(req) {
            Ok(l) => l,
            Err(e) => {
                drop(fuse);
                self.cleanup(target);
                return Err(e);
            }
        };
        let pid = match self.spawner().start(target, &launch, fuse.as_fd(), false) {
            Ok(pid) => pid,
            Err(why) => {
                drop(fuse);
                self.cleanup(target);
                return Err(MountError::Failed(why));
            }
        };
        if req.options.volume.read_ahead > 0
            && let Err(e) =
                kernel::set_read_ahead_beneath(&self.root, target, req.options.volume.read_ahead)
        {
            tracing::warn!(target = %target.display(), error = %e, "could not raise the kernel's read-ahead of the mount");
        }
        let record = Record {
            volume_id: req.volume_id.clone(),
            target: target.clone(),
            source: req.options.source.clone(),
            pid,
            read_only: req.read_only,
            cache_size: req.options.volume.max_cache_size,
            pod: req.pod.clone(),
        };
        self.records
            .save(&record)
            .map_err(|e| MountError::Io(format!("saving the mount record: {e}")))?;
        // The plugin keeps the connection and replaces the process if it dies.
        self.supervise(target, Supervised::new(fuse, launch, pid));
        tracing::info!(volume_id = %req.volume_id, target = %target.display(), pid = record.pid, "published");
        Ok(())
    }

    fn unpublish_locked(&self, target: &Path) -> Result<(), MountError> {
        if let Some(r) = self.records.load(target)
            && !is_our_process(r.pid, target)
        {
            self.notice_dead(target);
            tracing::warn!(target = %target.display(), pid = r.pid, "the mount process had died; cleaning up its mount");
        }
        match kernel::mount_type(target).as_deref() {
            Some("fuse.pail") | None => {}
            Some(other) => {
                return Err(MountError::Busy(format!(
                    "{} has a {other} mount that pail did not make",
                    target.display()
                )));
            }
        }
        self.cleanup(target);
        match kernel::remove_beneath(&self.root, target) {
            Ok(()) => {}
            Err(e) => {
                return Err(MountError::Io(format!(
                    "removing {}: {e}",
                    target.display()
                )));
            }
        }
        tracing::info!(target = %target.display(), "unpublished");
        Ok(())
    }

    /// Unmount whatever pail mount is at `target`, stop its process, drop the record.
    fn cleanup(&self, target: &Path) {
        let sup = self
            .supervised
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(target);
        if let Some(sup) = &sup {
            sup.stopping
                .store(true, std::sync::atomic::Ordering::Release);
        }
        let record = self.records.load(target);
        if kernel::mount_type(target).as_deref() == Some("fuse.pail")
            && let Err(e) = kernel::unmount_beneath(&self.root, target)
        {
            tracing::warn!(target = %target.display(), error = %e, "unmount failed");
        }
        if let Some(r) = record {
            stop_process(r.pid, target);
        }
        for pid in processes_of(target) {
            tracing::warn!(target = %target.display(), pid, "stopping a mount process with no record (its publish was interrupted)");
            stop_process(pid, target);
        }
        if let Some(sup) = &sup {
            stop_process(sup.pid.load(std::sync::atomic::Ordering::Acquire), target);
        }
        // Our hold on the connection goes last.
        drop(sup);
        self.records.remove(target);
        if let Some(root) = &self.host_cgroup_root {
            super::cgroup::remove(root, &super::state::slug(target));
        }
        self.noticed_dead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(target);
    }

    /// Count the mount at `target` as found dead, once.
    fn notice_dead(&self, target: &Path) {
        let mut noticed = self.noticed_dead.lock().unwrap_or_else(|p| p.into_inner());
        if noticed.insert(target.to_path_buf()) {
            self.dead_mounts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Pass the mount processes' log lines on to this process's output (and their errors
    /// to `events`), from now on.
    pub fn follow_logs(&self) {
        super::logs::follow(self.records.clone(), self.events.clone());
    }

    /// Number of mounts recorded.
    pub fn mount_count(&self) -> usize {
        self.records.all().len()
    }
}

impl Mounter for ProcessMounter {
    fn publish(&self, req: &MountRequest) -> Result<(), MountError> {
        let lock = self.lock(&req.target);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        self.publish_locked(req)
    }

    fn refresh_token(&self, target: &Path, token: &str) -> Result<(), MountError> {
        let lock = self.lock(target);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.records.load(target).is_none() {
            return Err(MountError::Io(format!(
                "{}: no mount of pail's to refresh",
                target.display()
            )));
        }
        self.records
            .save_token(target, token, self.run_as)
            .map(|_| ())
            .map_err(|e| MountError::Io(format!("saving the pod token: {e}")))
    }

    fn unpublish(&self, target: &Path) -> Result<(), MountError> {
        let lock = self.lock(target);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        self.unpublish_locked(target)
    }

    fn state(&self, target: &Path) -> MountState {
        match kernel::mount_type(target) {
            None => MountState::None,
            Some(t) if t != "fuse.pail" => MountState::Foreign(t),
            Some(_) => match (self.records.load(target), self.supervised(target)) {
                // Kept alive: live, or between a dead process and its successor.
                (Some(r), Some(sup)) if !sup.gave_up.load(std::sync::atomic::Ordering::Acquire) => {
                    use std::sync::atomic::Ordering;
                    MountState::Live(MountInfo {
                        volume_id: r.volume_id,
                        read_only: r.read_only,
                        restarts: sup.restarts.load(Ordering::Relaxed),
                        restarting: sup.down.load(Ordering::Acquire)
                            || !is_our_process(sup.pid.load(Ordering::Acquire), target),
                    })
                }
                (Some(r), None) if is_our_process(r.pid, target) => MountState::Live(MountInfo {
                    volume_id: r.volume_id,
                    read_only: r.read_only,
                    ..Default::default()
                }),
                _ => {
                    self.notice_dead(target);
                    MountState::Dead
                }
            },
        }
    }

    fn pod_of(&self, target: &Path) -> Option<super::PodRef> {
        self.records.load(target)?.pod
    }

    fn volumes(&self) -> Vec<super::VolumeReport> {
        use std::sync::atomic::Ordering;
        self.records
            .all()
            .into_iter()
            .map(|r| {
                let sup = self.supervised(&r.target);
                super::VolumeReport {
                    restarts: sup
                        .as_ref()
                        .map_or(0, |s| s.restarts.load(Ordering::Relaxed)),
                    restarting: sup.as_ref().is_some_and(|s| s.down.load(Ordering::Acquire)),
                    snapshot: read_capped(&self.records.metrics_path(&r.target), 1 << 20),
                    volume_id: r.volume_id,
                    pod: r.pod,
                }
            })
            .collect()
    }

    fn stats(&self) -> MounterStats {
        MounterStats {
            mounts: self.mount_count(),
            dead_mounts: self.dead_mounts.load(std::sync::atomic::Ordering::Relaxed),
            restarts: self
                .supervised
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .map(|s| s.restarts.load(std::sync::atomic::Ordering::Relaxed))
                .sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::read_capped;

    #[test]
    fn a_mount_processs_snapshot_is_read_capped_and_never_through_a_link_or_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.json");
        std::fs::write(&p, "x".repeat(5000)).unwrap();
        assert_eq!(read_capped(&p, 100).unwrap().len(), 100);
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "root only").unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        assert_eq!(read_capped(&link, 100), None);
        let fifo = dir.path().join("fifo.json");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(read_capped(&fifo, 100), None, "and it did not block");
    }
}
