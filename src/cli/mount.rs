//! `pail mount`: flags (named after mount-s3's where a user would look for them), start-up
//! checks with clear errors, the FUSE session, and clean unmount on SIGTERM/SIGINT. The CSI
//! driver's mount processes run the same code from a [`MountSpec`] read from a descriptor
//! (`pail mount-worker`), never from flags.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use pail::fs::{Fs, FsConfig, ReadConfig, WriteConfig};
use pail::fuse::{MountConfig, lazy_unmount};
use pail::options::{Auth, MountArgs, MountSpec};
use pail::store::net::NetPolicy;
use pail::store::{BucketExt, Source, StoreError, StoreOptions, WebIdentity};

use super::daemon;

/// Run `pail mount`.
pub fn run(args: MountArgs) -> anyhow::Result<()> {
    let auth = args
        .credentials
        .auth(&args.store)
        .map_err(anyhow::Error::msg)?;
    if args.background && !daemon::is_child() {
        return daemon::spawn_and_wait(&args.log_file);
    }
    let spec = MountSpec {
        args,
        auth,
        net: None,
        env: Vec::new(),
    };
    serve(&spec, false)
}

/// Run a mount process of the CSI driver: everything comes from the spec on `spec_fd`.
pub fn run_worker(spec_fd: i32) -> anyhow::Result<()> {
    let spec = MountSpec::read_fd(spec_fd).and_then(|s| {
        // A mount process of the driver never serves as root, nor without its descriptor.
        match (s.args.run_as, s.args.fuse_fd) {
            (Some((uid, _)), Some(_)) if uid != 0 => Ok(s),
            _ => Err("the mount spec names no unprivileged user or no FUSE descriptor".into()),
        }
    });
    let spec = match spec {
        Ok(s) => s,
        Err(e) => {
            daemon::report_failure(&e);
            bail!(e);
        }
    };
    serve(&spec, true)
}

/// Allocations of 4 MiB and more always from fresh zero pages (mmap), never from a malloc
/// arena: each FUSE thread's 16 MiB request buffer then costs only the pages the kernel
/// writes, where an arena's calloc would touch all of it (64 idle threads held 240 MiB).
/// Smaller ones (the HTTP client's receive buffers, a few hundred KiB each) come from the
/// arenas and are reused: from fresh pages, every received byte cost a page fault first
/// (20 % of a cold stream's cycles). Arenas keep up to 32 MiB free at their top.
fn lean_malloc() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes glibc's allocator; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
    }
}

fn serve(spec: &MountSpec, csi: bool) -> anyhow::Result<()> {
    lean_malloc();
    let args = &spec.args;
    super::logging::init(args.log_format, args.volume.debug, args.log_file.as_deref())?;
    match mount_and_serve(spec) {
        Ok(()) => Ok(()),
        Err(e) => {
            // In the foreground on a terminal the error is printed once, by main.
            if csi || args.log_file.is_some() || daemon::is_child() {
                tracing::error!(error = %format!("{e:#}"), "mount failed");
            }
            daemon::report_failure(&report(&e, csi, spec));
            Err(e)
        }
    }
}

/// What a failed start tells whoever waits for it. Under the CSI driver (`--fuse-fd`) a
/// store error is told by category and hint only (the pod author sees it in events); the
/// details are in the mount's log.
fn report(e: &anyhow::Error, csi: bool, spec: &MountSpec) -> String {
    match e.chain().find_map(|c| c.downcast_ref::<StoreError>()) {
        Some(s) if csi && s.kind == pail::store::StoreErrorKind::Config => {
            // pail's own words (what to set, what the driver refused): no response body.
            format!("configuration error: {}", s.message)
        }
        Some(s) if csi => {
            // What was tried, in the volume's own words (never a secret).
            let (category, hint) = s.category();
            let endpoint = spec
                .args
                .store
                .endpoint_url
                .as_deref()
                .unwrap_or("the provider's endpoint");
            format!("{category} ({} at {endpoint}): {hint}", spec.args.source)
        }
        _ => format!("{e:#}"),
    }
}

fn validate(args: &MountArgs) -> anyhow::Result<()> {
    args.volume.validate().map_err(anyhow::Error::msg)?;
    if args.fuse_fd.is_none() {
        if !args.mountpoint.is_dir() {
            bail!(
                "mount point {}: not an existing directory",
                args.mountpoint.display()
            );
        }
        if let Some(fs) = pail::mounter::kernel::mount_type(&args.mountpoint) {
            bail!(
                "mount point {}: already mounted ({fs}); unmount it first (umount {})",
                args.mountpoint.display(),
                args.mountpoint.display()
            );
        }
    }
    Ok(())
}

/// How to reach the store, from the spec.
fn store_options(spec: &MountSpec) -> anyhow::Result<StoreOptions> {
    let (args, s) = (&spec.args, &spec.args.store);
    let net = match &spec.net {
        Some(n) => Some(Arc::new(
            NetPolicy::new(
                std::slice::from_ref(&n.allowed_endpoints),
                n.metadata_credentials,
            )
            .map_err(|e| anyhow::anyhow!("the endpoint allow-list: {e}"))?
            .with_proxies_from_env(),
        )),
        None => None,
    };
    Ok(StoreOptions {
        region: s.region.clone(),
        endpoint_url: s.endpoint_url.clone(),
        force_path_style: s.force_path_style,
        requester_pays: s.requester_pays,
        auth: store_auth(&spec.auth, s),
        request_timeout: Some(Duration::from_secs(args.volume.request_timeout)),
        max_retries: Some(args.volume.max_retries as usize),
        net,
        memory_capacity: args.memory_capacity,
        sse: s.sse.clone(),
        sse_kms_key_id: s.sse_kms_key_id.clone(),
        storage_class: s.storage_class.clone(),
        ca_bundle: match &s.ca_bundle {
            Some(p) => {
                Some(std::fs::read(p).with_context(|| format!("--ca-bundle {}", p.display()))?)
            }
            None => None,
        },
    })
}

/// The store's credential source of a spec's `auth` (every variant has its own).
fn store_auth(auth: &Auth, s: &pail::options::StoreArgs) -> pail::store::Auth {
    use pail::store::Auth as A;
    match auth {
        Auth::Chain => A::Chain,
        Auth::Profile { name } => A::Profile(name.clone()),
        Auth::Keys {
            access_key_id,
            secret_access_key,
            session_token,
        } => A::Keys(pail::store::Credentials {
            access_key_id: access_key_id.clone(),
            secret_access_key: secret_access_key.clone(),
            session_token: session_token.clone(),
        }),
        Auth::GcsKey { json } => A::GcsKey(json.clone()),
        Auth::GcsKeyFile { path } => A::GcsKeyFile(path.clone()),
        Auth::Token { file } => A::WebIdentity(WebIdentity {
            token_file: file.clone(),
            role_arn: s.role_arn.clone(),
            session_name: s.role_session_name.clone(),
            sts_endpoint: s.sts_endpoint.clone(),
            gcp_audience: s.workload_identity_provider.clone(),
            gcp_service_account: s.gcp_service_account.clone(),
            iam_endpoint: s.iam_credentials_endpoint.clone(),
        }),
        Auth::Anonymous => A::Anonymous,
    }
}

/// The node plugin's cache, as the file system asks it.
struct NodeCopies(pail::mounter::nodecache::Client);

impl pail::fs::SharedCopies for NodeCopies {
    fn get(
        &self,
        v: &pail::fs::ObjectVersion,
        answer: Option<(&pail::fs::NodeChallenge, &[u8])>,
    ) -> pail::fs::NodeLookup {
        use pail::fs::NodeLookup;
        use pail::mounter::nodecache::{Challenge, Lookup};
        let asked = answer.map(|(c, bytes)| {
            let challenge = Challenge {
                offset: c.range.start,
                len: c.range.end - c.range.start,
                nonce: c.nonce.clone(),
            };
            (challenge, bytes)
        });
        let asked = asked.as_ref().map(|(c, b)| (c, *b));
        match self.0.get(&v.key, &v.etag, v.size, asked) {
            Some(Lookup::Copy(c)) => NodeLookup::Copy(pail::fs::SharedCopy {
                file: c.file,
                sums: c.sums,
                verified: c.verified,
            }),
            Some(Lookup::Prove(c)) => match c.offset.checked_add(c.len) {
                Some(end) => NodeLookup::Prove(pail::fs::NodeChallenge {
                    range: c.offset..end,
                    nonce: c.nonce,
                }),
                None => NodeLookup::Miss,
            },
            None => NodeLookup::Miss,
        }
    }

    fn offer(&self, v: &pail::fs::ObjectVersion, file: &std::fs::File, sums: &[u32]) {
        self.0.offer(&v.key, &v.etag, v.size, file, sums);
    }

    fn back(&self, file: &std::fs::File) -> Option<u32> {
        self.0.back(file)
    }

    fn unback(&self, id: u32) {
        self.0.unback(id);
    }
}

/// The file system's settings, from the flags.
fn fs_config(args: &MountArgs, prefix: &str) -> FsConfig {
    let v = &args.volume;
    // SAFETY: geteuid/getegid have no preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    FsConfig {
        prefix: prefix.to_string(),
        read_only: v.read_only,
        uid: v.uid.unwrap_or(euid),
        gid: v.gid.unwrap_or(egid),
        file_mode: v.file_mode,
        dir_mode: v.dir_mode,
        metadata_ttl: v.metadata_ttl,
        read: ReadConfig {
            part_size: v.part_size,
            initial_window: (1 << 20).min(v.part_size),
            max_window: v.max_prefetch,
            direct_first_read: v.direct_first_read,
        },
        write: WriteConfig {
            part_size: v.part_size as usize,
            max_in_flight: v.upload_concurrency as usize,
        },
        cache_dir: args.cache_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("pail-cache-{}", std::process::id()))
        }),
        max_cache_size: v.max_cache_size,
        rename_dir_limit: v.rename_dir_limit,
        memory_limit: v.buffer_budget(),
        persist_metadata: v.persist_metadata,
        read_cache: v.read_cache,
        shared_copies: args
            .shared_cache
            .as_ref()
            .filter(|_| v.read_cache)
            .map(|socket| {
                pail::fs::SharedCopiesRef(std::sync::Arc::new(NodeCopies(
                    pail::mounter::nodecache::Client::new(socket.clone()),
                )))
            }),
        journal: args.journal.clone(),
        resume: args.resume,
    }
}

/// Replace the snapshot of this mount's counters at `path` (read by the node plugin).
fn write_metrics(path: &std::path::Path, fs: &Fs) -> std::io::Result<()> {
    let snap = pail::telemetry::Snapshot {
        cache_hits: fs.read_cache_hits(),
        memory_bytes: fs.memory_in_use(),
        staging_bytes: fs.cache_used(),
        ..pail::telemetry::snapshot()
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec(&snap).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, path)
}

fn mount_and_serve(spec: &MountSpec) -> anyhow::Result<()> {
    let args = &spec.args;
    validate(args)?;
    // A take-over needs socket buffers past the system default: made before privileges go.
    let resume_pair = if args.resume {
        Some(pail::fuse::ResumePair::new().context("preparing the take-over")?)
    } else {
        None
    };
    // Files only root may read (the CA bundle) are read before privileges go.
    let opts = store_options(spec)?;
    if let Some((uid, gid)) = args.run_as {
        if args.fuse_fd.is_none() {
            bail!("--run-as needs --fuse-fd (an unprivileged process cannot mount)");
        }
        super::harden::drop_privileges(uid, gid)?;
    }
    let mut source = Source::parse(&args.source)?;
    if let Some(p) = &args.store.prefix {
        source = source.with_prefix(p)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pail-worker")
        .build()
        .context("starting the runtime")?;
    let store = pail::store::open(&source, &opts)?;
    rt.block_on(store.check(&source.prefix)).map_err(|e| {
        use pail::store::StoreErrorKind as K;
        let fix = match e.kind {
            K::PermissionDenied => {
                "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or --profile, \
                 --service-account-file) and the bucket's policy"
            }
            K::NotFound => "check the bucket name, --region and --endpoint-url",
            K::Unavailable => "check --endpoint-url, the network and HTTPS_PROXY/NO_PROXY",
            _ => "see the message above; pail mount --help lists the flags",
        };
        // The store error stays in the chain: the CSI driver reports its category only.
        anyhow::Error::new(e).context(format!("cannot use {} ({fix})", store.describe()))
    })?;
    if args.volume.persist_metadata && !store.features().metadata {
        bail!(
            "--persist-metadata: {} does not keep object metadata",
            store.describe()
        );
    }
    let cfg = fs_config(args, &source.prefix);
    // Handle SIGTERM/SIGINT from before the mount is reported live.
    let (mut term, mut int) = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        Ok::<_, std::io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    })?;
    let fs = Arc::new(Fs::new(store.clone(), cfg));
    if let Some(path) = args.metrics_file.clone() {
        let fs = fs.clone();
        rt.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                if let Err(e) = write_metrics(&path, &fs) {
                    tracing::debug!(path = %path.display(), error = %e, "writing the metrics snapshot");
                }
            }
        });
    }
    let mcfg = MountConfig {
        fsname: format!("pail:{}", args.source),
        read_only: args.volume.read_only,
        allow_other: args.volume.allow_other,
        threads: args.volume.max_threads as usize,
    };
    let mut mounted = match args.fuse_fd {
        Some(fd) => {
            if fd < 3 {
                bail!("--fuse-fd {fd}: not a /dev/fuse descriptor");
            }
            // SAFETY: the caller passed us ownership of this open descriptor.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            match resume_pair {
                Some(pair) => {
                    pail::fuse::serve_resumed(fs.clone(), rt.handle().clone(), owned, pair, &mcfg)
                        .with_context(|| format!("taking over FUSE descriptor {fd}"))?
                }
                None => pail::fuse::serve_fd(fs.clone(), rt.handle().clone(), owned, &mcfg)
                    .with_context(|| format!("serving FUSE descriptor {fd}"))?,
            }
        }
        // As root, mount the connection here: replies of several pieces are then written on
        // its descriptor (fuser keeps the one it mounts to itself). Where mount(2) is not
        // allowed (a container without CAP_SYS_ADMIN), fuser mounts through fusermount3.
        None => match mount_here(&args.mountpoint, &mcfg) {
            Some(fd) => pail::fuse::serve_mounted(
                fs.clone(),
                rt.handle().clone(),
                fd,
                &args.mountpoint,
                &mcfg,
            )
            .inspect_err(|_| {
                let _ = lazy_unmount(&args.mountpoint);
            })
            .with_context(|| format!("serving the mount at {}", args.mountpoint.display()))?,
            None => pail::fuse::mount(fs.clone(), rt.handle().clone(), &args.mountpoint, &mcfg)
                .with_context(|| format!("mounting at {}", args.mountpoint.display()))?,
        },
    };
    if args.fuse_fd.is_none() && args.volume.read_ahead > 0 {
        // Root only; the CSI node plugin sets it for the mounts it makes.
        if let Err(e) =
            pail::mounter::kernel::set_read_ahead(&args.mountpoint, args.volume.read_ahead)
        {
            tracing::debug!(error = %e, "could not raise the kernel's read-ahead (needs root)");
        }
    }
    tracing::info!(
        source = %store.describe(),
        mountpoint = %args.mountpoint.display(),
        read_only = args.volume.read_only,
        "mounted"
    );
    daemon::report_ready();
    let signal = rt.block_on(async {
        tokio::select! {
            _ = int.recv() => true,
            _ = term.recv() => true,
            _ = mounted.ended() => false,
        }
    });
    if signal {
        tracing::info!(mountpoint = %args.mountpoint.display(), "signal received; unmounting");
        if args.fuse_fd.is_some() {
            // The mount belongs to whoever opened the descriptor; leave it to them.
            drop(mounted);
        } else if let Err(e) = mounted.unmount() {
            tracing::warn!(error = %e, "unmount failed");
            lazy_unmount(&args.mountpoint)?;
        }
    } else {
        tracing::info!(mountpoint = %args.mountpoint.display(), "unmounted");
        mounted.join()?;
    }
    Ok(())
}

/// Mount a FUSE connection at `mountpoint` with mount(2), when this process may (root with
/// CAP_SYS_ADMIN); its descriptor, or `None` to let fuser mount.
fn mount_here(mountpoint: &std::path::Path, cfg: &MountConfig) -> Option<OwnedFd> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    match pail::mounter::kernel::mount_fuse(mountpoint, &cfg.fsname, cfg.read_only) {
        Ok(fd) => Some(fd),
        Err(e) => {
            tracing::debug!(error = %e, "mount(2) refused; mounting through fuser");
            None
        }
    }
}
