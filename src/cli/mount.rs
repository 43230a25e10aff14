//! `pail mount`: flags (named after mount-s3's where a user would look for them), start-up
//! checks with clear errors, the FUSE session, and clean unmount on SIGTERM/SIGINT.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use pail::fs::{Fs, FsConfig, ReadConfig, WriteConfig};
use pail::fuse::{MountConfig, lazy_unmount};
use pail::store::{Source, Store, StoreOptions};

use super::LogFormat;
use super::daemon;

/// Arguments of `pail mount`.
#[derive(Debug, Clone, Args)]
pub struct MountArgs {
    /// Bucket URL: s3://bucket[/prefix/], gs://bucket[/prefix/], file:///dir or memory://.
    pub source: String,
    /// Directory to mount at.
    pub mountpoint: PathBuf,

    /// Key prefix to mount (appended to the one in the URL).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Region of the bucket (S3); default AWS_REGION, then us-east-1.
    #[arg(long)]
    pub region: Option<String>,
    /// Endpoint of an S3-compatible store or GCS emulator, e.g. http://127.0.0.1:8333.
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// Path-style addressing (endpoint/bucket/key); always used with --endpoint-url.
    #[arg(long)]
    pub force_path_style: bool,
    /// Agree to pay for requests on a requester-pays bucket.
    #[arg(long)]
    pub requester_pays: bool,
    /// Send unsigned requests (public buckets).
    #[arg(long)]
    pub no_sign_request: bool,
    /// AWS profile in the shared credentials file.
    #[arg(long)]
    pub profile: Option<String>,
    /// GCS service account JSON key file.
    #[arg(long)]
    pub service_account_file: Option<PathBuf>,

    /// Refuse every change with EROFS.
    #[arg(long)]
    pub read_only: bool,
    /// Owner of files and directories (default: the mounting user).
    #[arg(long)]
    pub uid: Option<u32>,
    /// Group of files and directories (default: the mounting group).
    #[arg(long)]
    pub gid: Option<u32>,
    /// Permission bits of files, octal.
    #[arg(long, default_value = "0644", value_parser = parse_mode)]
    pub file_mode: u16,
    /// Permission bits of directories, octal.
    #[arg(long, default_value = "0755", value_parser = parse_mode)]
    pub dir_mode: u16,
    /// Let other users (and root) use the mount.
    #[arg(long)]
    pub allow_other: bool,
    /// How long metadata is cached: seconds, "minimal" (0) or "indefinite".
    #[arg(long, default_value = "1", value_parser = parse_ttl)]
    pub metadata_ttl: Duration,
    /// Size of one ranged GET and one upload part (e.g. 8M).
    #[arg(long, default_value = "8M", value_parser = parse_size)]
    pub part_size: u64,
    /// Most bytes read ahead of one sequential reader (e.g. 32M).
    #[arg(long, default_value = "32M", value_parser = parse_size)]
    pub max_prefetch: u64,
    /// Parts uploading at once per file being written.
    #[arg(long, default_value_t = 4)]
    pub upload_concurrency: usize,
    /// FUSE threads reading requests from the kernel.
    #[arg(long, default_value_t = 2)]
    pub max_threads: usize,
    /// Timeout of one request to the store, seconds.
    #[arg(long, default_value_t = 30)]
    pub request_timeout: u64,
    /// Retries of a request on transient errors.
    #[arg(long, default_value_t = 10)]
    pub max_retries: usize,

    /// Where files edited in place (append, seek+write, truncate) are staged.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Most bytes staged at once; past it writes fail with ENOSPC.
    #[arg(long, default_value = "10G", value_parser = parse_size)]
    pub max_cache_size: u64,
    /// Memory all prefetched and uploading parts of the mount may hold together (e.g. 1G);
    /// readers stop prefetching and writers wait when it is spent.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub memory_limit: u64,
    /// Store mode, owner and mtime in object metadata (s3fs's x-amz-meta-mode/uid/gid/mtime)
    /// and show them; without it they come from --file-mode/--uid/--gid and chmod is a no-op.
    #[arg(long)]
    pub persist_metadata: bool,
    /// Most keys a directory rename copies; past it rename fails with EXDEV.
    #[arg(long, default_value_t = 1000)]
    pub rename_dir_limit: usize,
    /// Serve this already mounted /dev/fuse descriptor instead of mounting.
    #[arg(long)]
    pub fuse_fd: Option<i32>,
    /// Stay in the foreground (the default).
    #[arg(long, conflicts_with = "background")]
    pub foreground: bool,
    /// Return once mounted, leaving a daemon serving the mount.
    #[arg(long)]
    pub background: bool,
    /// Write logs to this file instead of stderr.
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log debug details.
    #[arg(long)]
    pub debug: bool,
}

fn parse_mode(s: &str) -> Result<u16, String> {
    u16::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal mode such as 0644"))
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    match s {
        "minimal" => Ok(Duration::ZERO),
        "indefinite" => Ok(Duration::from_secs(100 * 365 * 24 * 3600)),
        _ => s
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| {
                format!("{s:?} is not a number of seconds, \"minimal\" or \"indefinite\"")
            }),
    }
}

/// Parse a size such as `8M`, `64MiB`, `1G` or `4096`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 8M"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}")),
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("{s:?} is out of range"))
}

/// Run `pail mount`.
pub fn run(args: MountArgs) -> anyhow::Result<()> {
    if args.background && !daemon::is_child() {
        return daemon::spawn_and_wait(&args.log_file);
    }
    super::logging::init(args.log_format, args.debug, args.log_file.as_deref())?;
    match mount_and_serve(&args) {
        Ok(()) => Ok(()),
        Err(e) => {
            daemon::report_failure(&format!("{e:#}"));
            Err(e)
        }
    }
}

fn validate(args: &MountArgs) -> anyhow::Result<()> {
    if args.part_size < 5 << 20 || args.part_size > 5 << 30 {
        bail!(
            "--part-size {}: must be between 5 MiB and 5 GiB (S3 multipart limits)",
            args.part_size
        );
    }
    if args.max_prefetch < args.part_size {
        bail!(
            "--max-prefetch {} must be at least --part-size {}",
            args.max_prefetch,
            args.part_size
        );
    }
    if args.memory_limit < 2 * args.part_size {
        bail!(
            "--memory-limit {}: must be at least twice --part-size {}",
            args.memory_limit,
            args.part_size
        );
    }
    if !(1..=64).contains(&args.upload_concurrency) {
        bail!(
            "--upload-concurrency {}: must be 1 to 64",
            args.upload_concurrency
        );
    }
    if !(1..=64).contains(&args.max_threads) {
        bail!("--max-threads {}: must be 1 to 64", args.max_threads);
    }
    if args.fuse_fd.is_none() && !args.mountpoint.is_dir() {
        bail!(
            "mount point {}: not an existing directory",
            args.mountpoint.display()
        );
    }
    Ok(())
}

fn mount_and_serve(args: &MountArgs) -> anyhow::Result<()> {
    validate(args)?;
    let mut source = Source::parse(&args.source)?;
    if let Some(p) = &args.prefix {
        source = source.with_prefix(p)?;
    }
    let opts = StoreOptions {
        region: args.region.clone(),
        endpoint_url: args.endpoint_url.clone(),
        force_path_style: args.force_path_style,
        requester_pays: args.requester_pays,
        no_sign_request: args.no_sign_request,
        service_account_file: args.service_account_file.clone(),
        service_account_key: None,
        credentials: None,
        profile: args.profile.clone(),
        request_timeout: Some(Duration::from_secs(args.request_timeout.max(1))),
        max_retries: Some(args.max_retries),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pail-worker")
        .build()
        .context("starting the runtime")?;
    let store = Store::open(&source, &opts)?;
    rt.block_on(store.check(&source.prefix))
        .with_context(|| format!("cannot use {}", store.description()))?;
    // SAFETY: geteuid/getegid have no preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let cfg = FsConfig {
        prefix: source.prefix.clone(),
        read_only: args.read_only,
        uid: args.uid.unwrap_or(euid),
        gid: args.gid.unwrap_or(egid),
        file_mode: args.file_mode,
        dir_mode: args.dir_mode,
        metadata_ttl: args.metadata_ttl,
        read: ReadConfig {
            part_size: args.part_size,
            initial_window: (1 << 20).min(args.part_size),
            max_window: args.max_prefetch,
        },
        write: WriteConfig {
            part_size: args.part_size as usize,
            max_in_flight: args.upload_concurrency,
        },
        cache_dir: args.cache_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("pail-cache-{}", std::process::id()))
        }),
        max_cache_size: args.max_cache_size,
        rename_dir_limit: args.rename_dir_limit,
        memory_limit: args.memory_limit,
        persist_metadata: args.persist_metadata,
    };
    // Handle SIGTERM/SIGINT from before the mount is reported live.
    let (mut term, mut int) = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        Ok::<_, std::io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    })?;
    let fs = Arc::new(Fs::new(store.clone(), cfg));
    let mcfg = MountConfig {
        fsname: format!("pail:{}", args.source),
        read_only: args.read_only,
        allow_other: args.allow_other,
        threads: args.max_threads,
    };
    let mut mounted = match args.fuse_fd {
        Some(fd) => {
            if fd < 3 {
                bail!("--fuse-fd {fd}: not a /dev/fuse descriptor");
            }
            // SAFETY: the caller passed us ownership of this open descriptor.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            pail::fuse::serve_fd(fs.clone(), rt.handle().clone(), owned, &mcfg)
                .with_context(|| format!("serving FUSE descriptor {fd}"))?
        }
        None => pail::fuse::mount(fs.clone(), rt.handle().clone(), &args.mountpoint, &mcfg)
            .with_context(|| format!("mounting at {}", args.mountpoint.display()))?,
    };
    tracing::info!(
        source = %store.description(),
        mountpoint = %args.mountpoint.display(),
        read_only = args.read_only,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_units() {
        assert_eq!(parse_size("8M").unwrap(), 8 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("8X").unwrap_err().contains("8X"));
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn modes_are_octal() {
        assert_eq!(parse_mode("0644").unwrap(), 0o644);
        assert_eq!(parse_mode("755").unwrap(), 0o755);
        assert!(parse_mode("0999").is_err());
    }

    #[test]
    fn ttls_accept_words() {
        assert_eq!(parse_ttl("minimal").unwrap(), Duration::ZERO);
        assert_eq!(parse_ttl("2.5").unwrap(), Duration::from_millis(2500));
        assert!(parse_ttl("-1").is_err());
    }
}
