//! The plugin's side of the node cache: its directory and index, the socket mount
//! processes reach it on, and the copying in of offered objects.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use md5::Digest;
use serde::{Deserialize, Serialize};

use super::{BLOCK, CHALLENGE, Challenge, MAX_MESSAGE, Reply, Request, wire};

/// Who a connected mount is, as the plugin's records say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Which objects its keys name (digest of its store, bucket and prefix).
    pub namespace: String,
    /// Who it reads them as (digest of its identity and options).
    pub group: String,
    /// Its user: an offered file must be its own.
    pub uid: u32,
    /// Its mount point (whose FUSE connection backing files are registered on).
    pub target: PathBuf,
}

/// Where the plugin finds a mount's FUSE connection (a duplicate of its descriptor).
pub type FuseOf = dyn Fn(&Path) -> Option<OwnedFd> + Send + Sync;

/// Backing files one connection may hold registered at once.
const MAX_BACKINGS: usize = 4096;

/// `FUSE_DEV_IOC_BACKING_CLOSE`: `_IOW(229, 2, uint32_t)`.
const FUSE_DEV_IOC_BACKING_CLOSE: libc::c_ulong = 0x4004_e502;

fn close_backing(fuse: &OwnedFd, id: u32) -> std::io::Result<()> {
    // SAFETY: the ioctl reads one u32 from a live buffer.
    let r = unsafe {
        libc::ioctl(
            fuse.as_raw_fd(),
            FUSE_DEV_IOC_BACKING_CLOSE as _,
            &id as *const u32,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// What the index keeps of one copy (also its `<id>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    namespace: String,
    key: String,
    etag: String,
    size: u64,
    /// The group whose mount loaded it.
    group: String,
    /// Its bytes match the store's MD5 ETag.
    md5: bool,
    sums: Vec<u32>,
}

#[derive(Default)]
struct Index {
    entries: HashMap<String, (Meta, u64)>,
    used: u64,
    tick: u64,
    /// Copies read back and checked since this plugin started.
    checked: std::collections::HashSet<String>,
}

/// What [`NodeCache::get`] gives.
#[derive(Debug)]
pub enum Got {
    /// The copy (read-only), its block sums, and whether the plugin checked every block.
    Copy(std::fs::File, Vec<u32>, bool),
    /// Another identity stored it: the peer must answer this first.
    Prove(Challenge),
}

/// Copies the plugin reads back and checks before it first serves them, at most this large
/// (a larger one is checked by the mount, block by block, as it reads).
const CHECK_MAX: u64 = 64 << 20;

/// Challenges outstanding, at most (past that, all are forgotten: their proofs fail and
/// those mounts read the store).
const CHALLENGES: usize = 4096;

fn random_bytes<const N: usize>() -> Option<[u8; N]> {
    use std::io::Read;
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .ok()?;
    Some(b)
}

struct Job {
    id: String,
    meta: Meta,
    file: std::fs::File,
}

/// The node's cache.
pub struct NodeCache {
    dir: PathBuf,
    max: u64,
    index: Mutex<Index>,
    jobs: SyncSender<Job>,
    /// Offers queued or being copied (the same one is not queued twice), with their sizes.
    pending: Mutex<Pending>,
    /// Challenges given, by the peer's uid and the copy's id.
    challenges: Mutex<HashMap<(u32, String), Challenge>>,
    /// The device offered files must be on (the mounts' private directories).
    offer_dev: Option<u64>,
    /// The device of the cache's own files.
    own_dev: Option<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `parts`, each length-prefixed.
pub fn digest(parts: &[&[u8]]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part);
    }
    hex(ctx.finish().as_ref())
}

fn is_id(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The MD5 an ETag names, when it is a plain one (not a multipart or encrypted object's).
fn etag_md5(etag: &str) -> Option<String> {
    let e = etag.trim_matches('"');
    (e.len() == 32 && e.bytes().all(|b| b.is_ascii_hexdigit())).then(|| e.to_ascii_lowercase())
}

fn crc(data: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32
}

/// Offers waiting to be copied, at most: a pod reading a data set of small files offers
/// them faster than they are copied in, and an offer that finds the queue full is lost.
const QUEUE: usize = 4096;
/// Bytes of offers waiting, at most (their files stay open, and so on disk, until copied);
/// one offer is always taken when none waits.
const QUEUE_BYTES: u64 = 1 << 30;

/// Offers that may wait: [`QUEUE`], or a quarter of the open files this process may have
/// (each waiting offer holds one).
fn queue_len() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer to a local rlimit.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    };
    QUEUE.min((soft / 4).max(64) as usize)
}

/// Offers queued or being copied.
#[derive(Default)]
struct Pending {
    sizes: HashMap<String, u64>,
    bytes: u64,
}

impl Pending {
    fn remove(&mut self, id: &str) {
        if let Some(n) = self.sizes.remove(id) {
            self.bytes -= n;
        }
    }
}

impl NodeCache {
    /// The cache in `dir` (made root-only), holding at most `max` bytes; files offered must
    /// be on the device of `offers_from` (the mounts' own directories). Copies left by an
    /// earlier plugin are kept.
    pub fn open(dir: &Path, max: u64, offers_from: &Path) -> std::io::Result<Arc<NodeCache>> {
        match std::fs::symlink_metadata(dir) {
            Ok(m) if !m.is_dir() => {
                return Err(std::io::Error::other(format!(
                    "{} is not a directory",
                    dir.display()
                )));
            }
            Ok(_) => {}
            Err(_) => std::fs::create_dir_all(dir)?,
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(queue_len());
        let cache = Arc::new(NodeCache {
            dir: dir.to_path_buf(),
            max,
            index: Mutex::new(Index::default()),
            jobs,
            pending: Mutex::default(),
            challenges: Mutex::default(),
            offer_dev: std::fs::metadata(offers_from).ok().map(|m| m.dev()),
            own_dev: std::fs::metadata(dir).ok().map(|m| m.dev()),
        });
        cache.load();
        let worker = Arc::downgrade(&cache);
        std::thread::Builder::new()
            .name("pail-node-cache".into())
            .spawn(move || {
                for job in queue {
                    let Some(cache) = worker.upgrade() else { break };
                    let id = job.id.clone();
                    if let Err(e) = cache.copy_in(job) {
                        tracing::debug!(error = %e, "an offered copy was not kept");
                    }
                    lock(&cache.pending).remove(&id);
                }
            })?;
        Ok(cache)
    }

    /// Read the index an earlier plugin left; remove what is not a complete copy.
    fn load(&self) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut found: Vec<(std::time::SystemTime, String, Meta)> = Vec::new();
        let mut names = Vec::new();
        for e in dir.flatten() {
            names.push(e.file_name().to_string_lossy().into_owned());
        }
        for name in &names {
            let Some(id) = name.strip_suffix(".json").filter(|id| is_id(id)) else {
                continue;
            };
            let meta: Option<Meta> = std::fs::File::open(self.dir.join(name)).ok().and_then(|f| {
                let mut buf = Vec::new();
                use std::io::Read;
                f.take(MAX_MESSAGE as u64).read_to_end(&mut buf).ok()?;
                serde_json::from_slice(&buf).ok()
            });
            let data = std::fs::symlink_metadata(self.dir.join(id)).ok();
            match (meta, data) {
                (Some(meta), Some(d))
                    if d.is_file()
                        && d.len() == meta.size
                        && meta.sums.len() as u64 == meta.size.div_ceil(BLOCK) =>
                {
                    found.push((
                        d.modified().unwrap_or(std::time::UNIX_EPOCH),
                        id.to_string(),
                        meta,
                    ));
                }
                _ => {}
            }
        }
        found.sort_by_key(|(t, _, _)| *t);
        let mut ix = lock(&self.index);
        for (_, id, meta) in found {
            ix.tick += 1;
            ix.used += meta.size;
            let t = ix.tick;
            ix.entries.insert(id, (meta, t));
        }
        for name in names {
            let id = name.strip_suffix(".json").unwrap_or(&name);
            if !ix.entries.contains_key(id) {
                let _ = std::fs::remove_file(self.dir.join(&name));
            }
        }
        let kept = ix.entries.len();
        drop(ix);
        self.evict(0);
        if kept > 0 {
            tracing::info!(copies = kept, dir = %self.dir.display(), "node cache: kept the copies of the earlier plugin");
        }
    }

    /// Bytes the cache holds.
    pub fn used(&self) -> u64 {
        lock(&self.index).used
    }

    /// Copies the cache holds.
    pub fn len(&self) -> usize {
        lock(&self.index).entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn id(namespace: &str, key: &str, etag: &str, size: u64) -> String {
        digest(&[
            namespace.as_bytes(),
            key.as_bytes(),
            etag.as_bytes(),
            &size.to_le_bytes(),
        ])
    }

    /// Drop least recently used copies until `need` more bytes fit.
    fn evict(&self, need: u64) {
        let mut ix = lock(&self.index);
        while ix.used + need > self.max && !ix.entries.is_empty() {
            let Some(id) = ix
                .entries
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(id, _)| id.clone())
            else {
                break;
            };
            self.remove(&mut ix, &id);
        }
    }

    /// Forget copy `id` and remove its files (mounts holding it open keep reading it; the
    /// space comes back when they close).
    fn remove(&self, ix: &mut Index, id: &str) {
        ix.checked.remove(id);
        if let Some((meta, _)) = ix.entries.remove(id) {
            ix.used -= meta.size;
            let _ = std::fs::remove_file(self.dir.join(format!("{id}.json")));
            let _ = std::fs::remove_file(self.dir.join(id));
        }
    }

    /// A copy of `key` in version `etag`/`size` for `peer`. A copy another identity stored
    /// is given only against `proof`, the answer to the challenge the peer's last lookup of
    /// it got (else a new challenge).
    pub fn get(
        &self,
        peer: &Peer,
        key: &str,
        etag: &str,
        size: u64,
        proof: Option<&str>,
    ) -> Option<Got> {
        let id = Self::id(&peer.namespace, key, etag, size);
        let (sums, other, checked) = {
            let mut ix = lock(&self.index);
            ix.tick += 1;
            let tick = ix.tick;
            let checked = ix.checked.contains(&id);
            let (meta, used) = ix.entries.get_mut(&id)?;
            let other = meta.group != peer.group;
            if other && !meta.md5 {
                // Bytes another identity loaded that the plugin could not match to the store.
                return None;
            }
            *used = tick;
            (meta.sums.clone(), other, checked)
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(self.dir.join(&id))
            .ok()?;
        if other {
            let asked = lock(&self.challenges).remove(&(peer.uid, id.clone()));
            match (asked, proof) {
                (Some(c), Some(proof)) => {
                    let mut bytes = vec![0u8; c.len as usize];
                    file.read_exact_at(&mut bytes, c.offset).ok()?;
                    let want = super::proof(&c.nonce, &bytes);
                    // Compared whole, whatever differs first.
                    let same = want.len() == proof.len()
                        && want
                            .bytes()
                            .zip(proof.bytes())
                            .fold(0u8, |d, (a, b)| d | (a ^ b))
                            == 0;
                    if !same {
                        tracing::debug!("node cache: a mount's proof did not match");
                        return None;
                    }
                }
                _ => return self.challenge(peer.uid, id, size).map(Got::Prove),
            }
        }
        let verified = checked || size <= CHECK_MAX;
        if !checked && verified && !self.check(&id, &file, &sums) {
            return None;
        }
        Some(Got::Copy(file, sums, verified))
    }

    /// A new challenge for copy `id` of `size` bytes, given to `uid`.
    fn challenge(&self, uid: u32, id: String, size: u64) -> Option<Challenge> {
        let r: [u8; 24] = random_bytes()?;
        let len = size.min(CHALLENGE);
        let at = u64::from_le_bytes(r[..8].try_into().expect("8 bytes"));
        let c = Challenge {
            offset: at % (size - len + 1),
            len,
            nonce: hex(&r[8..]),
        };
        let mut all = lock(&self.challenges);
        if all.len() >= CHALLENGES {
            all.clear();
        }
        all.insert((uid, id), c.clone());
        Some(c)
    }

    /// Read copy `id` back and check every block; a damaged copy is dropped.
    fn check(&self, id: &str, file: &std::fs::File, sums: &[u32]) -> bool {
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut buf = vec![0u8; BLOCK as usize];
        let good = sums.iter().enumerate().all(|(b, sum)| {
            let off = b as u64 * BLOCK;
            let n = (size.saturating_sub(off)).min(BLOCK) as usize;
            n > 0 && file.read_exact_at(&mut buf[..n], off).is_ok() && crc(&buf[..n]) == *sum
        });
        let mut ix = lock(&self.index);
        if good {
            ix.checked.insert(id.to_string());
        } else {
            tracing::warn!("node cache: a copy failed its checksums when read back; dropped");
            self.remove(&mut ix, id);
        }
        good
    }

    /// `peer` offers its copy of `key` in `file`: queued to be copied in (dropped when the
    /// queue is full, the copy is known, or the file is not a plain file of the mount's
    /// own on the expected device).
    pub fn offer(
        &self,
        peer: &Peer,
        key: String,
        etag: String,
        size: u64,
        sums: Vec<u32>,
        file: OwnedFd,
    ) -> bool {
        if size == 0 || size > self.max || sums.len() as u64 != size.div_ceil(BLOCK) {
            return false;
        }
        let file = std::fs::File::from(file);
        let Ok(m) = file.metadata() else {
            return false;
        };
        if !m.is_file()
            || m.len() < size
            || m.uid() != peer.uid
            || self.offer_dev.is_some_and(|d| d != m.dev())
        {
            return false;
        }
        let id = Self::id(&peer.namespace, &key, &etag, size);
        if let Some((meta, _)) = lock(&self.index).entries.get(&id)
            && (meta.group == peer.group || meta.md5)
        {
            return false;
        }
        {
            let mut p = lock(&self.pending);
            if p.sizes.contains_key(&id) || (p.bytes > 0 && p.bytes + size > QUEUE_BYTES) {
                return false;
            }
            p.sizes.insert(id.clone(), size);
            p.bytes += size;
        }
        let md5 = false;
        let meta = Meta {
            namespace: peer.namespace.clone(),
            key,
            etag,
            size,
            group: peer.group.clone(),
            md5,
            sums,
        };
        match self.jobs.try_send(Job {
            id: id.clone(),
            meta,
            file,
        }) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                lock(&self.pending).remove(&id);
                false
            }
        }
    }

    /// Copy an offered file in, checking every block against its sum.
    fn copy_in(&self, job: Job) -> std::io::Result<()> {
        let Job { id, mut meta, file } = job;
        self.evict(meta.size);
        let tmp = self.dir.join(format!("{id}.tmp"));
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        let want_md5 = etag_md5(&meta.etag);
        let mut md5 = md5::Md5::new();
        let mut buf = vec![0u8; BLOCK as usize];
        let result = (|| {
            for (b, sum) in meta.sums.iter().enumerate() {
                let off = b as u64 * BLOCK;
                let n = (meta.size - off).min(BLOCK) as usize;
                file.read_exact_at(&mut buf[..n], off)?;
                if crc(&buf[..n]) != *sum {
                    return Err(std::io::Error::other(format!(
                        "block {b} fails its checksum"
                    )));
                }
                if want_md5.is_some() {
                    md5.update(&buf[..n]);
                }
                out.write_all(&buf[..n])?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        meta.md5 = want_md5.is_some_and(|w| hex(&md5.finalize()) == w);
        let json = serde_json::to_vec(&meta).map_err(std::io::Error::other)?;
        let meta_tmp = self.dir.join(format!("{id}.json.tmp"));
        std::fs::write(&meta_tmp, json)?;
        std::fs::rename(&tmp, self.dir.join(&id))?;
        std::fs::rename(&meta_tmp, self.dir.join(format!("{id}.json")))?;
        let mut ix = lock(&self.index);
        ix.tick += 1;
        let tick = ix.tick;
        ix.used += meta.size;
        ix.checked.remove(&id);
        if let Some((old, _)) = ix.entries.insert(id, (meta, tick)) {
            ix.used -= old.size;
        }
        Ok(())
    }

    /// Wait until every queued offer is copied in or dropped (tests, shutdown).
    pub fn settle(&self) {
        for _ in 0..2000 {
            if lock(&self.pending).sizes.is_empty() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Serve mounts at `socket`; `resolve` names the mount of a connecting user (`None`:
    /// the connection is refused).
    pub fn serve(
        self: &Arc<Self>,
        socket: &Path,
        resolve: impl Fn(u32) -> Option<Peer> + Send + Sync + 'static,
        fuse_of: Arc<FuseOf>,
    ) -> std::io::Result<()> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        // Mount processes run as users of their own: they may connect; who they are is
        // asked of the kernel for each connection.
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))?;
        let cache = Arc::downgrade(self);
        let resolve = Arc::new(resolve);
        std::thread::Builder::new()
            .name("pail-node-cache-listen".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    let Some(cache) = cache.upgrade() else { break };
                    let Some(peer) = peer_uid(&conn).and_then(|uid| resolve(uid)) else {
                        tracing::debug!("node cache: a connection from no mount of this node");
                        continue;
                    };
                    let fuse_of = fuse_of.clone();
                    let _ = std::thread::Builder::new()
                        .name("pail-node-cache-conn".into())
                        .spawn(move || cache.serve_conn(conn, peer, &*fuse_of));
                }
            })?;
        Ok(())
    }

    /// Register `file` as a backing file of `peer`'s FUSE connection: a plain file on the
    /// node's disk (its own copy or one of the node's), never one on a FUSE file system.
    fn back(&self, fuse: Option<&OwnedFd>, file: OwnedFd) -> Option<u32> {
        let fuse = fuse?;
        let file = std::fs::File::from(file);
        let m = file.metadata().ok()?;
        let local = [self.offer_dev, self.own_dev].contains(&Some(m.dev()));
        if !m.is_file() || !local {
            return None;
        }
        match fuser::BackingId::create_raw(fuse, &file) {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::debug!(error = %e, "registering a backing file failed");
                None
            }
        }
    }

    fn serve_conn(&self, conn: UnixStream, peer: Peer, fuse_of: &FuseOf) {
        let mut fuse: Option<OwnedFd> = None;
        let mut backings: std::collections::HashSet<u32> = Default::default();
        self.serve_requests(&conn, &peer, fuse_of, &mut fuse, &mut backings);
        // The mount process is gone or misbehaved: its registrations go with it (handles
        // open through them keep their file).
        if let Some(fuse) = &fuse {
            for id in backings {
                let _ = close_backing(fuse, id);
            }
        }
    }

    fn serve_requests(
        &self,
        conn: &UnixStream,
        peer: &Peer,
        fuse_of: &FuseOf,
        fuse: &mut Option<OwnedFd>,
        backings: &mut std::collections::HashSet<u32>,
    ) {
        while let Ok((body, fd)) = wire::recv(conn, MAX_MESSAGE) {
            let reply = match serde_json::from_slice::<Request>(&body) {
                Ok(Request::Get {
                    key,
                    etag,
                    size,
                    proof,
                }) => match self.get(peer, &key, &etag, size, proof.as_deref()) {
                    Some(Got::Prove(c)) => Reply {
                        challenge: Some(c),
                        ..Reply::default()
                    },
                    Some(Got::Copy(file, sums, verified)) => {
                        let reply = Reply {
                            hit: true,
                            sums,
                            verified,
                            ..Reply::default()
                        };
                        let body = serde_json::to_vec(&reply).unwrap_or_default();
                        if wire::send(conn, &body, Some(file.as_fd())).is_err() {
                            return;
                        }
                        continue;
                    }
                    None => Reply::default(),
                },
                Ok(Request::Put {
                    key,
                    etag,
                    size,
                    sums,
                }) => {
                    let hit = match fd {
                        Some(fd) => self.offer(peer, key, etag, size, sums, fd),
                        None => false,
                    };
                    Reply {
                        hit,
                        ..Reply::default()
                    }
                }
                Ok(Request::Backing) => {
                    if fuse.is_none() {
                        *fuse = fuse_of(&peer.target);
                    }
                    let id = match fd {
                        Some(fd) if backings.len() < MAX_BACKINGS => self.back(fuse.as_ref(), fd),
                        _ => None,
                    };
                    backings.extend(id);
                    Reply {
                        hit: id.is_some(),
                        backing: id.unwrap_or(0),
                        ..Reply::default()
                    }
                }
                Ok(Request::Unback { id }) => {
                    let closed = backings.remove(&id)
                        && fuse.as_ref().is_some_and(|f| close_backing(f, id).is_ok());
                    Reply {
                        hit: closed,
                        ..Reply::default()
                    }
                }
                Err(_) => return,
            };
            let body = serde_json::to_vec(&reply).unwrap_or_default();
            if wire::send(conn, &body, None).is_err() {
                return;
            }
        }
    }
}

/// The user of the process at the other end of `conn`, as the kernel recorded it.
fn peer_uid(conn: &UnixStream) -> Option<u32> {
    // SAFETY: getsockopt into a ucred of the right size.
    unsafe {
        let mut cred: libc::ucred = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        let r = libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        );
        (r == 0).then_some(cred.uid)
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
