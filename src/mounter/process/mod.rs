//! One `pail mount-worker` process per target path. Publish checks the node's budgets,
//! gives the mount a user of its own, mounts `/dev/fuse` at the target, starts the process
//! with the descriptor and its spec, waits until it serves, and records who it is;
//! unpublish unmounts (also a dead, "transport endpoint is not connected" mount), stops
//! every process of the mount's user and removes the target. Both are idempotent and
//! serialised per target; budgets and users are given out one publish at a time.

mod keeper;
mod shared;

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::identity::{self, UidRange};
use super::kernel;
use super::state::{Record, StateDir};
use super::supervisor::{self, FUSE_FD, Spawner, Supervised};
use super::{MountInfo, MountRequest, MountState, Mounter, MounterStats};
use crate::options::{Auth, LogFormat};

/// Why a mount operation failed.
#[derive(Debug)]
pub enum MountError {
    /// Something else is mounted at the target.
    Busy(String),
    /// The target is published already, with another volume or read-only flag.
    Conflict(String),
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
            | MountError::Conflict(m)
            | MountError::Exhausted(m)
            | MountError::Refused(m)
            | MountError::Failed(m)
            | MountError::Io(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for MountError {}

/// What one node gives all its mounts together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeBudget {
    /// Most mounts (0: no limit).
    pub max_volumes: usize,
    /// Most `--memory-limit` all mounts reserve together.
    pub memory: Option<u64>,
    /// Most staging space (`--max-cache-size`) all mounts reserve together.
    pub staging: Option<u64>,
}

/// The default users of mount processes.
pub const DEFAULT_UIDS: UidRange = UidRange {
    first: 900_000_000,
    last: 900_999_999,
};

/// Starts and stops mount processes.
pub struct ProcessMounter {
    /// Kubelet's `pods/`: targets are below it.
    root: PathBuf,
    /// Kubelet's directory: staging paths (and shared mounts) are below it.
    kubelet: PathBuf,
    pail_bin: PathBuf,
    records: StateDir,
    locks: Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>,
    /// Budgets and users are given out under this lock; the last uid given.
    giving: Mutex<u32>,
    /// Mount processes found dead (for metrics), each counted once.
    dead_mounts: std::sync::atomic::AtomicU64,
    noticed_dead: Mutex<HashSet<PathBuf>>,
    /// How long to wait for a mount process to serve.
    pub ready_timeout: Duration,
    /// Where mount processes get a cgroup of their own (see [`super::cgroup`]).
    pub cgroups: Option<super::cgroup::Placement>,
    /// Extra certificates mount processes trust (the admin's PEM file).
    pub ca_bundle: Option<PathBuf>,
    /// The users mount processes run as, one each.
    pub uids: UidRange,
    /// What the node gives all mounts together.
    pub budget: NodeBudget,
    /// Successors that may fail to start in a row before a mount is given up (0: a dead
    /// mount process is not replaced; its mount fails with ENOTCONN).
    pub max_failed_restarts: u32,
    /// Where events of mounts go (Kubernetes Events on their pods).
    pub events: Option<super::EventSink>,
    /// Mounts kept alive: the plugin holds their connection and replaces a dead process.
    supervised: Arc<Mutex<HashMap<PathBuf, Arc<Supervised>>>>,
    /// The node's read cache and the socket its mounts reach it on.
    node_cache: Option<(Arc<super::nodecache::NodeCache>, PathBuf)>,
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

/// Bytes free for unprivileged users on the file system of `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: `st` is plain data that statvfs fills; `c` is a valid path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ProcessMounter {
    /// A mounter running `pail_bin`, keeping records in `state_dir`, mounting only below
    /// `root` (kubelet's `pods/` directory).
    pub fn new(pail_bin: PathBuf, state_dir: &Path, root: PathBuf) -> std::io::Result<Self> {
        let records = StateDir::new(state_dir)?;
        let last = records.all().iter().map(|r| r.uid).max().unwrap_or(0);
        Ok(ProcessMounter {
            kubelet: root
                .parent()
                .map_or_else(|| root.clone(), Path::to_path_buf),
            root,
            pail_bin,
            records,
            locks: Mutex::new(HashMap::new()),
            giving: Mutex::new(last),
            dead_mounts: Default::default(),
            noticed_dead: Default::default(),
            ready_timeout: Duration::from_secs(60),
            cgroups: None,
            ca_bundle: None,
            uids: DEFAULT_UIDS,
            budget: NodeBudget::default(),
            max_failed_restarts: supervisor::MAX_FAILED_STARTS,
            events: None,
            supervised: Arc::default(),
            node_cache: None,
        })
    }

    /// Keep a read cache for the node in `dir` (root only), of at most `max` bytes, which
    /// mounts with `read-cache` ask before loading an object and offer what they loaded;
    /// they reach it on a socket in the state directory.
    pub fn enable_node_cache(&mut self, dir: &Path, max: u64) -> std::io::Result<()> {
        use super::nodecache::{NodeCache, peer_of};
        let cache = NodeCache::open(dir, max, self.records.root())?;
        let socket = self.records.root().join("cache.sock");
        let records = self.records.clone();
        let supervised = self.supervised.clone();
        cache.serve(
            &socket,
            move |uid| {
                // The kernel named the user; the plugin's own records say which mount has it.
                let r = records
                    .all()
                    .into_iter()
                    .find(|r| r.uid == uid && uid != 0)?;
                let spec = records.load_spec(&r.target)?;
                Some(peer_of(&spec, uid))
            },
            Arc::new(move |target: &Path| {
                let sup = lock(&supervised).get(target).cloned()?;
                sup.fuse.try_clone().ok()
            }),
        )?;
        self.node_cache = Some((cache, socket));
        Ok(())
    }

    /// The node's read cache, when it keeps one.
    pub fn node_cache(&self) -> Option<&Arc<super::nodecache::NodeCache>> {
        self.node_cache.as_ref().map(|(c, _)| c)
    }

    fn spawner(&self) -> Spawner {
        Spawner {
            bin: self.pail_bin.clone(),
            ready_timeout: self.ready_timeout,
            cgroups: self.cgroups.clone(),
            records: self.records.clone(),
            max_failed_starts: self.max_failed_restarts,
            events: self.events.clone(),
        }
    }

    fn supervised(&self, target: &Path) -> Option<Arc<Supervised>> {
        lock(&self.supervised).get(target).cloned()
    }

    /// Keep `sup` alive for `target`.
    fn supervise(&self, target: &Path, sup: Arc<Supervised>) {
        lock(&self.supervised).insert(target.to_path_buf(), sup.clone());
        supervisor::watch(self.spawner(), target.to_path_buf(), sup, self.lock(target));
    }

    /// Adopt the live mount processes a predecessor plugin started (those their records
    /// name, confirmed by who they are): hold their connections, watch them, and hand each
    /// over to a process of this binary when theirs differs (an upgrade). Returns how many
    /// were adopted.
    pub fn adopt_live(&self) -> usize {
        let mut adopted = 0;
        for r in self.records.all() {
            if r.pid == 0 {
                continue;
            }
            let Some(spec) = self.records.load_spec(&r.target) else {
                tracing::warn!(target = %r.target.display(), "no spec for this mount: it will not survive its process");
                continue;
            };
            match supervisor::adopt(&r) {
                Ok((pidfd, fuse)) => {
                    let sup = Supervised::new(fuse, spec, r.pid, pidfd);
                    let other = supervisor::runs_other_binary(r.pid);
                    if other {
                        sup.handing_over
                            .store(true, std::sync::atomic::Ordering::Release);
                    }
                    self.supervise(&r.target, sup.clone());
                    self.keep_adopted(&r, &sup);
                    if other {
                        tracing::info!(target = %r.target.display(), pid = r.pid, "handing the mount over to this version");
                        sup.signal(libc::SIGTERM);
                    }
                    adopted += 1;
                }
                Err(e) => {
                    tracing::warn!(target = %r.target.display(), pid = r.pid, error = %e, "not adopting this mount's process");
                    if r.keeper.is_some() && self.revive(&r, spec) {
                        adopted += 1;
                    }
                }
            }
        }
        adopted
    }

    /// Remove the cgroups of mounts no record names any more (their processes died with the
    /// node, or with a plugin that never cleaned up); those of recorded mounts stay.
    pub fn sweep_cgroups(&self) {
        if let Some(p) = &self.cgroups {
            let live = self
                .records
                .all()
                .iter()
                .map(|r| super::state::slug(&r.target))
                .collect();
            let swept = p.sweep(&live);
            if swept > 0 {
                tracing::info!(swept, "removed the cgroups of mounts that are gone");
            }
        }
    }

    /// The directory `path` is reached from: `pods/` for targets, kubelet's for shared
    /// mounts below staging paths.
    fn root_of(&self, path: &Path) -> &Path {
        if path.starts_with(&self.root) {
            &self.root
        } else {
            &self.kubelet
        }
    }

    fn lock(&self, target: &Path) -> Arc<Mutex<()>> {
        let mut locks = lock(&self.locks);
        if locks.len() > 10_000 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry(target.to_path_buf()).or_default().clone()
    }

    /// Whether `target` is served by a live mount process of ours.
    pub fn is_live(&self, target: &Path) -> bool {
        matches!(self.state(target), MountState::Live(_))
    }

    /// Check the node's budgets for `req` and give it a user of its own: its record, saved
    /// before anything starts (so that a plugin dying now leaves nothing untracked).
    fn reserve(&self, req: &MountRequest) -> Result<Record, MountError> {
        let mut last = lock(&self.giving);
        let others: Vec<Record> = self
            .records
            .all()
            .into_iter()
            .filter(|r| r.target != req.target)
            .collect();
        let v = &req.spec.args.volume;
        let b = &self.budget;
        if b.max_volumes > 0 && others.len() >= b.max_volumes {
            return Err(MountError::Exhausted(format!(
                "this node already serves {} pail volumes, its most (--max-volumes-per-node)",
                others.len()
            )));
        }
        if let Some(cap) = b.staging {
            let reserved: u64 = others.iter().map(|r| r.cache_size).sum();
            if reserved + v.max_cache_size > cap {
                return Err(MountError::Exhausted(format!(
                    "the node's staging space is spent: {reserved} of {cap} bytes reserved by other mounts, this one asks {} (mountOptions max-cache-size)",
                    v.max_cache_size
                )));
            }
        }
        if let Some(free) = free_bytes(self.records.root())
            && v.max_cache_size > free
        {
            return Err(MountError::Exhausted(format!(
                "the node's state directory has {free} bytes free, this mount asks {} of staging space (mountOptions max-cache-size)",
                v.max_cache_size
            )));
        }
        if let Some(cap) = b.memory {
            let reserved: u64 = others.iter().map(|r| r.memory).sum();
            if reserved + v.memory_limit > cap {
                return Err(MountError::Exhausted(format!(
                    "the node's memory for mounts is spent: {reserved} of {cap} bytes reserved by other mounts, this one asks {} (mountOptions memory-limit)",
                    v.memory_limit
                )));
            }
        }
        let taken: HashSet<u32> = others.iter().map(|r| r.uid).collect();
        let uid = self.uids.pick(&taken, *last).ok_or_else(|| {
            MountError::Exhausted(format!(
                "every user of the mount range {}-{} is taken (--mount-uids)",
                self.uids.first, self.uids.last
            ))
        })?;
        *last = uid;
        let record = Record {
            volume_id: req.volume_id.clone(),
            target: req.target.clone(),
            source: req.spec.args.source.clone(),
            pid: 0,
            start_time: 0,
            exe: None,
            uid,
            gid: uid,
            read_only: req.read_only,
            cache_size: v.max_cache_size,
            memory: v.memory_limit,
            pod: req.pod.clone(),
            keeper: None,
            connection: None,
        };
        self.records
            .save(&record)
            .map_err(|e| MountError::Io(format!("saving the mount record: {e}")))?;
        Ok(record)
    }

    /// The spec of `req`'s mount process: its options, and where its descriptor, user,
    /// files and secrets are.
    fn spec_of(
        &self,
        req: &MountRequest,
        r: &Record,
    ) -> Result<crate::options::MountSpec, MountError> {
        let target = &req.target;
        let mut spec = req.spec.clone();
        let a = &mut spec.args;
        a.mountpoint = target.clone();
        a.fuse_fd = Some(FUSE_FD);
        a.log_format = LogFormat::Json;
        a.run_as = Some((r.uid, r.gid));
        a.resume = false;
        if a.store.ca_bundle.is_none() {
            a.store.ca_bundle = self.ca_bundle.clone();
        }
        let private = self
            .records
            .make_private(target, r.uid, r.gid)
            .map_err(|e| MountError::Io(format!("making the mount's directory: {e}")))?;
        debug_assert!(private.ends_with(super::state::slug(target)));
        a.cache_dir = Some(self.records.cache_path(target));
        a.shared_cache = match &self.node_cache {
            Some((_, socket)) if a.volume.read_cache => Some(socket.clone()),
            _ => None,
        };
        a.log_file = Some(self.records.log_path(target));
        a.journal = Some(self.records.journal_path(target));
        a.metrics_file = Some(self.records.metrics_path(target));
        match (&req.token, &mut spec.auth) {
            (Some(token), Auth::Token { file }) => {
                *file = self
                    .records
                    .save_token(target, token, r.gid)
                    .map_err(|e| MountError::Io(format!("saving the pod token: {e}")))?;
            }
            (None, Auth::Token { .. }) | (Some(_), _) => {
                return Err(MountError::Io(
                    "a pod token goes with authenticationSource pod only".into(),
                ));
            }
            _ => {}
        }
        // Only logging and the admin's proxy pass from the plugin; credentials and the endpoint
        // policy are in the spec.
        let mut env = vec![(
            "PATH".to_string(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        )];
        for var in ["PAIL_LOG"].iter().chain(crate::options::PROXY_ENV) {
            if let Ok(v) = std::env::var(var) {
                env.push((var.to_string(), v));
            }
        }
        env.append(&mut spec.env);
        spec.env = env;
        self.records
            .save_spec(target, &spec)
            .map_err(|e| MountError::Io(format!("saving the mount's spec: {e}")))?;
        Ok(spec)
    }

    fn publish_locked(&self, req: &MountRequest) -> Result<(), MountError> {
        let target = &req.target;
        match self.state(target) {
            MountState::Live(live) => {
                if live.volume_id != req.volume_id || live.read_only != req.read_only {
                    return Err(MountError::Conflict(format!(
                        "{} is already published with another volume or read-only flag",
                        target.display()
                    )));
                }
                // A republish (requiresRepublish): a fresh token reaches the running mount.
                if let Some(token) = &req.token {
                    self.refresh_token_locked(target, token)?;
                }
                return Ok(());
            }
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
            MountState::None => {
                // A record without a mount: a publish interrupted before it mounted.
                if self.records.load(target).is_some() {
                    self.cleanup(target);
                }
            }
        }
        let mut record = self.reserve(req)?;
        let fsname = format!("pail:{}", req.spec.args.source);
        let fuse = match kernel::mount_fuse_beneath(
            self.root_of(target),
            target,
            &fsname,
            req.read_only,
        ) {
            Ok(f) => f,
            Err(e) => {
                self.cleanup(target);
                return Err(match e.raw_os_error() {
                    Some(libc::ELOOP | libc::ENOTDIR) => MountError::Refused(format!(
                        "target_path {}: a symlink or a file on the way (it is never followed)",
                        target.display()
                    )),
                    _ => MountError::Io(format!("mounting FUSE at {}: {e}", target.display())),
                });
            }
        };
        let started = self.spec_of(req, &record).and_then(|spec| {
            self.spawner()
                .start(target, &spec, fuse.as_fd(), false)
                .map(|s| (spec, s))
                .map_err(MountError::Failed)
        });
        let (spec, started) = match started {
            Ok(s) => s,
            Err(e) => {
                drop(fuse);
                self.cleanup(target);
                return Err(e);
            }
        };
        let v = &spec.args.volume;
        if v.read_ahead > 0
            && let Err(e) =
                kernel::set_read_ahead_beneath(self.root_of(target), target, v.read_ahead)
        {
            tracing::warn!(target = %target.display(), error = %e, "could not raise the kernel's read-ahead of the mount");
        }
        record.pid = started.pid;
        record.start_time = started.start_time;
        record.exe = started.exe;
        record.connection = kernel::fuse_connection(fuse.as_fd());
        let kept = self.keep(target, &spec, fuse.as_fd());
        record.keeper = kept.as_ref().map(|(k, _)| *k);
        if let Err(e) = self.records.save(&record) {
            drop(fuse);
            self.cleanup(target);
            return Err(MountError::Io(format!("saving the mount record: {e}")));
        }
        // The plugin keeps the connection and replaces the process if it dies, and the
        // keeper if it dies.
        let pid = started.pid;
        let sup = Supervised::new(fuse, spec, started.pid, started.pidfd);
        self.supervise(target, sup.clone());
        if let Some((_, pidfd)) = kept {
            self.watch_keeper(target, &sup, pidfd);
        }
        tracing::info!(volume_id = %req.volume_id, target = %target.display(), pid, uid = record.uid, "published");
        Ok(())
    }

    fn refresh_token_locked(&self, target: &Path, token: &str) -> Result<(), MountError> {
        let r = self.records.load(target).ok_or_else(|| {
            MountError::Io(format!(
                "{}: no mount of pail's to refresh",
                target.display()
            ))
        })?;
        self.records
            .save_token(target, token, r.gid)
            .map(|_| ())
            .map_err(|e| MountError::Io(format!("saving the pod token: {e}")))
    }

    fn unpublish_locked(&self, target: &Path) -> Result<(), MountError> {
        if let Some(r) = self.records.load(target)
            && r.pid != 0
            && self.supervised(target).is_none_or(|s| !s.alive())
            && identity::verify(&r).is_none()
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
        kernel::remove_beneath(self.root_of(target), target)
            .map_err(|e| MountError::Io(format!("removing {}: {e}", target.display())))?;
        tracing::info!(target = %target.display(), "unpublished");
        Ok(())
    }

    /// Unmount whatever pail mount is at `target`, stop every process of its user, drop
    /// the record.
    fn cleanup(&self, target: &Path) {
        let sup = lock(&self.supervised).remove(target);
        if let Some(sup) = &sup {
            sup.stopping
                .store(true, std::sync::atomic::Ordering::Release);
        }
        let record = self.records.load(target);
        if kernel::mount_type(target).as_deref() == Some("fuse.pail")
            && let Err(e) = kernel::unmount_beneath(self.root_of(target), target)
        {
            tracing::warn!(target = %target.display(), error = %e, "unmount failed");
        }
        // The process ends by itself once its mount is gone.
        let grace = Duration::from_secs(5);
        match (&sup, &record) {
            (Some(sup), _) => sup.stop(grace),
            (None, Some(r)) => {
                if let Some(pidfd) = identity::verify(r) {
                    identity::stop(&pidfd, grace);
                }
            }
            (None, None) => {}
        }
        // And whatever else runs as the mount's user (forked, or started by a plugin that
        // died during the publish).
        if let Some(r) = &record
            && self.uids.contains(r.uid)
        {
            identity::kill_all_of(r.uid);
        }
        // Our hold on the connection goes last.
        drop(sup);
        self.records.remove(target);
        if let Some(p) = &self.cgroups {
            p.remove(&super::state::slug(target));
        }
        lock(&self.noticed_dead).remove(target);
    }

    /// Count the mount at `target` as found dead, once.
    fn notice_dead(&self, target: &Path) {
        if lock(&self.noticed_dead).insert(target.to_path_buf()) {
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
        match &req.share {
            Some(share) => self.publish_shared(req, share),
            None if self.records.load_bind(&req.target).is_some() => {
                Err(MountError::Conflict(format!(
                    "{} is already published as a shared mount",
                    req.target.display()
                )))
            }
            None => self.publish_locked(req),
        }
    }

    fn unpublish(&self, target: &Path) -> Result<(), MountError> {
        let lock = self.lock(target);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        match self.records.load_bind(target) {
            Some(b) => self.unbind_locked(target, &b),
            None => self.unpublish_locked(target),
        }
    }

    fn stage(&self, volume_id: &str, staging: &Path) -> Result<(), MountError> {
        let lock = self.lock(staging);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        self.stage_locked(volume_id, staging)
    }

    fn unstage(&self, staging: &Path) -> Result<(), MountError> {
        let lock = self.lock(staging);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        self.unstage_locked(staging)
    }

    fn state(&self, target: &Path) -> MountState {
        use std::sync::atomic::Ordering;
        if let Some(b) = self.records.load_bind(target) {
            return match kernel::mount_type(target) {
                None => MountState::None,
                Some(t) if t != "fuse.pail" => MountState::Foreign(t),
                Some(_) => match self.state(&b.mount) {
                    MountState::Live(info) => MountState::Live(MountInfo {
                        volume_id: b.volume_id,
                        read_only: b.read_only,
                        ..info
                    }),
                    _ => MountState::Dead,
                },
            };
        }
        match kernel::mount_type(target) {
            None => MountState::None,
            Some(t) if t != "fuse.pail" => MountState::Foreign(t),
            Some(_) => match (self.records.load(target), self.supervised(target)) {
                // Kept alive: live, or between a dead process and its successor.
                (Some(r), Some(sup)) if !sup.gave_up.load(Ordering::Acquire) => {
                    MountState::Live(MountInfo {
                        volume_id: r.volume_id,
                        read_only: r.read_only,
                        restarts: sup.restarts.load(Ordering::Relaxed),
                        restarting: sup.down.load(Ordering::Acquire) || !sup.alive(),
                    })
                }
                (Some(r), None) if identity::verify(&r).is_some() => MountState::Live(MountInfo {
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
        match self.records.load(target) {
            Some(r) => r.pod,
            None => self.records.load_bind(target)?.pod,
        }
    }

    fn volumes(&self) -> Vec<super::VolumeReport> {
        use std::sync::atomic::Ordering;
        // The binds are read once per scrape, not once per mount.
        let binds = self.records.all_binds();
        self.records
            .all()
            .into_iter()
            .map(|r| {
                let sup = self.supervised(&r.target);
                let binds = binds.iter().filter(|b| b.mount == r.target).count();
                super::VolumeReport {
                    pods: if binds > 0 { binds } else { 1 },
                    restarts: sup
                        .as_ref()
                        .map_or(0, |s| s.restarts.load(Ordering::Relaxed)),
                    restarting: sup.as_ref().is_some_and(|s| s.down.load(Ordering::Acquire)),
                    snapshot: read_capped(&self.records.metrics_path(&r.target), 1 << 20),
                    mount: super::state::slug(&r.target),
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
            restarts: lock(&self.supervised)
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
