//! The options of one mount, typed once: [`MountArgs`] is `pail mount`'s command line;
//! [`VolumeOptions`] is the part of it a CSI volume may set through `mountOptions` (being a
//! field there is what allows it), [`StoreArgs`] the part volume attributes set. The CSI
//! driver parses a volume into these structs, refuses bad values before mounting anything,
//! and hands the mount process a [`MountSpec`] (these structs and where the credentials come
//! from, [`Auth`]) through a descriptor: nothing is written as flags and parsed again.

mod parse;
mod spec;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

pub use parse::{
    node_memory, parse_direct_first_read, parse_ids, parse_mode, parse_size, parse_size_or_off,
    parse_storage_class, parse_ttl, parse_word,
};
pub use spec::{Auth, MountSpec, NetSpec, SPEC_FD};

/// The environment variables of an egress proxy, which a mount process takes from the
/// process that starts it (the admin's).
pub const PROXY_ENV: &[&str] = &[
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where the bucket is and how to reach it (set by flags, or by a volume's attributes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Store")]
pub struct StoreArgs {
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
    /// Server-side encryption of objects written (S3): AES256, aws:kms or aws:kms:dsse.
    #[arg(long, value_parser = ["AES256", "aws:kms", "aws:kms:dsse"])]
    pub sse: Option<String>,
    /// The KMS key of `--sse aws:kms`.
    #[arg(long, value_parser = parse_word)]
    pub sse_kms_key_id: Option<String>,
    /// Storage class of objects written (S3), e.g. STANDARD_IA or INTELLIGENT_TIERING.
    #[arg(long, value_parser = parse_storage_class)]
    pub storage_class: Option<String>,
    /// Extra PEM certificates to trust (a private CA of the store or of a proxy).
    #[arg(long)]
    pub ca_bundle: Option<PathBuf>,
    /// AWS: the role to assume with the workload token (STS AssumeRoleWithWebIdentity).
    #[arg(long, value_parser = parse_word, help_heading = "Credentials")]
    pub role_arn: Option<String>,
    /// AWS: the session name of the assumed role.
    #[arg(long, value_parser = parse_word, help_heading = "Credentials")]
    pub role_session_name: Option<String>,
    /// The STS endpoint of the exchange (default: the region's AWS STS, or Google's).
    #[arg(long, help_heading = "Credentials")]
    pub sts_endpoint: Option<String>,
    /// Google: the workload identity provider the token is exchanged at (the STS audience),
    /// e.g. //iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/providers/X.
    #[arg(long, value_parser = parse_word, help_heading = "Credentials")]
    pub workload_identity_provider: Option<String>,
    /// Google: the service account to impersonate with the federated token.
    #[arg(long, value_parser = parse_word, requires = "workload_identity_provider", help_heading = "Credentials")]
    pub gcp_service_account: Option<String>,
    /// Google: the IAM credentials endpoint of the impersonation.
    #[arg(long, help_heading = "Credentials")]
    pub iam_credentials_endpoint: Option<String>,
}

/// Where `pail mount` takes credentials from, when not from the environment's chain (at
/// most one; the CSI driver says it in the spec's [`Auth`] instead).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
#[command(next_help_heading = "Credentials")]
pub struct CredentialArgs {
    /// Send unsigned requests (public buckets).
    #[arg(long)]
    pub no_sign_request: bool,
    /// AWS profile in the shared credentials file.
    #[arg(long)]
    pub profile: Option<String>,
    /// GCS service account JSON key file.
    #[arg(long)]
    pub service_account_file: Option<PathBuf>,
    /// The workload's own token (a JWT), exchanged at STS for credentials (with --role-arn
    /// or --workload-identity-provider); read again whenever they are renewed and as soon
    /// as it changes.
    #[arg(long)]
    pub web_identity_token_file: Option<PathBuf>,
}

impl CredentialArgs {
    /// The one source these flags name (the environment's chain when none).
    pub fn auth(&self, store: &StoreArgs) -> Result<Auth, String> {
        let mut named = Vec::new();
        if self.no_sign_request {
            named.push(Auth::Anonymous);
        }
        if let Some(p) = &self.profile {
            named.push(Auth::Profile { name: p.clone() });
        }
        if let Some(f) = &self.service_account_file {
            named.push(Auth::GcsKeyFile { path: f.clone() });
        }
        if let Some(f) = &self.web_identity_token_file {
            if store.role_arn.is_none() && store.workload_identity_provider.is_none() {
                return Err(format!(
                    "--web-identity-token-file {}: also name --role-arn (AWS) or \
                     --workload-identity-provider (Google)",
                    f.display()
                ));
            }
            named.push(Auth::Token { file: f.clone() });
        } else if store.role_arn.is_some() || store.workload_identity_provider.is_some() {
            return Err(
                "--role-arn and --workload-identity-provider need --web-identity-token-file".into(),
            );
        }
        match named.len() {
            0 => Ok(Auth::Chain),
            1 => Ok(named.remove(0)),
            _ => Err("--no-sign-request, --profile, --service-account-file and \
                 --web-identity-token-file each name where credentials come from: give one"
                .into()),
        }
    }
}

/// What a volume's `mountOptions` may set: every field of this struct, and nothing else.
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
pub struct VolumeOptions {
    /// Refuse every change with EROFS.
    #[arg(long, help_heading = "Permissions")]
    pub read_only: bool,
    /// Let other users (and root) use the mount.
    #[arg(long, help_heading = "Permissions")]
    pub allow_other: bool,
    /// Log debug details.
    #[arg(long, help_heading = "Logging")]
    pub debug: bool,
    /// Store mode, owner and mtime in object metadata (s3fs's x-amz-meta-mode/uid/gid/mtime)
    /// and show them; without it they come from --file-mode/--uid/--gid and chmod is a no-op.
    #[arg(long, help_heading = "Permissions")]
    pub persist_metadata: bool,
    /// Owner of files and directories (default: the mounting user).
    #[arg(long, help_heading = "Permissions")]
    pub uid: Option<u32>,
    /// Group of files and directories (default: the mounting group).
    #[arg(long, help_heading = "Permissions")]
    pub gid: Option<u32>,
    /// Permission bits of files, octal.
    #[arg(long, default_value = "0644", value_parser = parse_mode, help_heading = "Permissions")]
    pub file_mode: u16,
    /// Permission bits of directories, octal.
    #[arg(long, default_value = "0755", value_parser = parse_mode, help_heading = "Permissions")]
    pub dir_mode: u16,
    /// How long metadata is cached: seconds, "minimal" (0) or "indefinite".
    #[arg(long, default_value = "1", value_parser = parse_ttl, help_heading = "Caching and performance")]
    pub metadata_ttl: Duration,
    /// Size of one ranged GET and one upload part, 5M to 5G (e.g. 8M).
    #[arg(long, default_value = "8M", value_parser = parse_size, help_heading = "Caching and performance")]
    pub part_size: u64,
    /// Most bytes read ahead of one sequential reader, at least --part-size (e.g. 32M).
    #[arg(long, default_value = "32M", value_parser = parse_size, help_heading = "Caching and performance")]
    pub max_prefetch: u64,
    /// How far the kernel reads ahead of a sequential reader, e.g. 4M (0: the kernel's
    /// 128 KiB); larger read-ahead means fewer, larger FUSE requests. Needs root to set.
    #[arg(long, default_value = "4M", value_parser = parse_size_or_off, help_heading = "Caching and performance")]
    pub read_ahead: u64,
    /// Read a file of at least this size past the kernel's page cache on the first open
    /// the mount serves of it, e.g. 64M; auto (the default): half the node's memory; 0 or
    /// off: never. FUSE replies land in the reader's buffer, one copy fewer for a one-pass
    /// stream, and a file too large to stay cached does not push the node's other cached
    /// data out; later opens of the unchanged object use the page cache, so the second read
    /// is a cold one. Needs kernel 6.6+ (mmap of such a file); on older kernels files
    /// always use the page cache.
    #[arg(long, default_value = "auto", value_parser = parse_direct_first_read, help_heading = "Caching and performance")]
    #[serde(default)]
    pub direct_first_read: u64,
    /// Parts uploading at once per file being written (1 to 64).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64), help_heading = "Caching and performance")]
    pub upload_concurrency: u16,
    /// FUSE threads reading requests from the kernel (1 to 64).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64), help_heading = "Caching and performance")]
    pub max_threads: u16,
    /// Timeout of one request to the store, seconds (1 to 3600).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600), help_heading = "Caching and performance")]
    pub request_timeout: u64,
    /// Retries of a request on transient errors (0 to 100).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(0..=100), help_heading = "Caching and performance")]
    pub max_retries: u16,
    /// Most bytes staged at once; past it writes fail with ENOSPC.
    #[arg(long, default_value = "10G", value_parser = parse_size, help_heading = "Caching and performance")]
    pub max_cache_size: u64,
    /// Memory all prefetched and uploading parts of the mount may hold together, at least
    /// twice --part-size (e.g. 1G); readers stop prefetching and writers wait when it is
    /// spent.
    #[arg(long, default_value = "1G", value_parser = parse_size, help_heading = "Caching and performance")]
    pub memory_limit: u64,
    /// Keep object data on local disk across opens (in the cache directory, within
    /// --max-cache-size with staged edits; least recently used objects give way): a second
    /// read of a file is a local read, through FUSE passthrough where the kernel and
    /// privileges allow.
    #[arg(long, help_heading = "Caching and performance")]
    pub read_cache: bool,
    /// Most keys a directory rename copies; past it rename fails with EXDEV.
    #[arg(long, default_value_t = 1000, help_heading = "Caching and performance")]
    pub rename_dir_limit: usize,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        VolumeOptions::parse_from(Vec::<String>::new()).expect("the defaults parse")
    }
}

/// The command line of `pail mount`, and (with the fields flags cannot set) what a mount
/// process is told in its [`MountSpec`].
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
pub struct MountArgs {
    /// Bucket URL: s3://bucket[/prefix/], gs://bucket[/prefix/], file:///dir or memory://.
    pub source: String,
    /// Directory to mount at.
    pub mountpoint: PathBuf,
    /// Where and how to reach the bucket.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Where credentials come from (flags only: a spec says it in its `auth`).
    #[command(flatten)]
    #[serde(skip)]
    pub credentials: CredentialArgs,
    /// What the mount does.
    #[command(flatten)]
    pub volume: VolumeOptions,
    /// Where files edited in place (append, seek+write, truncate) are staged.
    #[arg(long, help_heading = "Caching and performance")]
    pub cache_dir: Option<PathBuf>,
    /// Keep the tables a successor process needs to take the mount over in this file (the
    /// CSI node plugin's mount processes do).
    #[arg(long, hide = true)]
    pub journal: Option<PathBuf>,
    /// Stay in the foreground (the default).
    #[arg(long, conflicts_with = "background")]
    #[serde(skip)]
    pub foreground: bool,
    /// Return once mounted, leaving a daemon serving the mount.
    #[arg(long)]
    #[serde(skip)]
    pub background: bool,
    /// Write logs to this file instead of stderr.
    #[arg(long, help_heading = "Logging")]
    pub log_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text", help_heading = "Logging")]
    pub log_format: LogFormat,
    /// Serve this already mounted /dev/fuse descriptor instead of mounting (a spec only).
    #[arg(skip)]
    pub fuse_fd: Option<i32>,
    /// Write a snapshot of the mount's counters (JSON: bytes read, written and fetched from
    /// the store, request latencies) to this file every 5 s (the CSI node plugin serves them
    /// as per-volume Prometheus metrics; hidden from the help: for the benchmark and tools).
    #[arg(long, hide = true)]
    pub metrics_file: Option<PathBuf>,
    /// The node cache's socket: copies of objects are asked of and offered to the CSI node
    /// plugin (a spec only).
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_cache: Option<PathBuf>,
    /// Take over the already initialized connection of `fuse_fd` from the process whose
    /// `journal` this is (it died or is being replaced; a spec only).
    #[arg(skip)]
    pub resume: bool,
    /// After start-up, run as this user and group, with no capabilities, no new privileges
    /// and a system-call filter (the CSI driver's mount processes; a spec only).
    #[arg(skip)]
    pub run_as: Option<(u32, u32)>,
    /// Most bytes a memory:// bucket holds (the CSI driver caps memory volumes; a spec only).
    #[arg(skip)]
    pub memory_capacity: Option<u64>,
}

impl VolumeOptions {
    /// Checks that involve more than one option (each alone is checked when parsed).
    pub fn validate(&self) -> Result<(), String> {
        if self.part_size < 5 << 20 || self.part_size > 5 << 30 {
            return Err(format!(
                "--part-size {}: must be between 5 MiB and 5 GiB (S3 multipart limits)",
                self.part_size
            ));
        }
        if self.max_prefetch < self.part_size {
            return Err(format!(
                "--max-prefetch {} must be at least --part-size {}",
                self.max_prefetch, self.part_size
            ));
        }
        if self.read_ahead > 1 << 30 {
            return Err(format!("--read-ahead {}: at most 1G", self.read_ahead));
        }
        if self.memory_limit < self.overhead() + 2 * self.part_size {
            return Err(format!(
                "--memory-limit {}: must hold the process itself and its {} FUSE threads ({} \
                 bytes) and twice --part-size {}",
                self.memory_limit,
                self.max_threads,
                self.overhead(),
                self.part_size
            ));
        }
        Ok(())
    }

    /// Memory the mount process holds besides its data buffers: the process itself, and
    /// each FUSE thread's request buffer and stack. Part of `--memory-limit`.
    pub fn overhead(&self) -> u64 {
        BASE_MEMORY + self.max_threads as u64 * THREAD_MEMORY
    }

    /// The part of `--memory-limit` prefetched and uploading parts may hold together.
    pub fn buffer_budget(&self) -> u64 {
        self.memory_limit.saturating_sub(self.overhead())
    }
}

/// Memory of a mount process beyond its data buffers and FUSE threads: the runtime, its
/// tables, TLS and logging (measured idle: docs/SECURITY.md).
pub const BASE_MEMORY: u64 = 24 << 20;
/// Memory one FUSE thread may hold: its request buffer (up to 1 MiB requests are read into
/// it) and its stack.
pub const THREAD_MEMORY: u64 = 3 << 20;

impl MountArgs {
    /// A mount of `source` at `mountpoint` with every other option at its default.
    pub fn new(source: impl Into<String>, mountpoint: impl Into<PathBuf>) -> MountArgs {
        MountArgs {
            source: source.into(),
            mountpoint: mountpoint.into(),
            store: StoreArgs::default(),
            credentials: CredentialArgs::default(),
            volume: VolumeOptions::default(),
            cache_dir: None,
            fuse_fd: None,
            journal: None,
            metrics_file: None,
            shared_cache: None,
            resume: false,
            run_as: None,
            memory_capacity: None,
            foreground: false,
            background: false,
            log_file: None,
            log_format: LogFormat::Text,
        }
    }
}

#[cfg(test)]
mod tests;
