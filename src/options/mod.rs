//! The options of one mount, typed once: [`MountArgs`] is `pail mount`'s command line;
//! [`VolumeOptions`] is the part of it a CSI volume may set through `mountOptions` (being a
//! field there is what allows it), [`StoreArgs`] the part volume attributes set. The CSI
//! driver parses a volume into these structs, refuses bad values before mounting anything,
//! and turns them back into the mount process's arguments with [`MountArgs::to_args`].

mod parse;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

pub use parse::{parse_ids, parse_mode, parse_size, parse_storage_class, parse_ttl, parse_word};

/// The environment variables of an egress proxy, which a mount process takes from the
/// process that starts it (the admin's), as the store layer reads them.
pub use crate::store::net::PROXY_ENV;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where the bucket is and how to reach it (set by flags, or by a volume's attributes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
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
    /// Send unsigned requests (public buckets).
    #[arg(long)]
    pub no_sign_request: bool,
    /// AWS profile in the shared credentials file.
    #[arg(long)]
    pub profile: Option<String>,
    /// GCS service account JSON key file.
    #[arg(long)]
    pub service_account_file: Option<PathBuf>,
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
    /// The workload's own token (a JWT), exchanged at STS for credentials; read again
    /// whenever they are renewed and as soon as it changes.
    #[arg(long)]
    pub web_identity_token_file: Option<PathBuf>,
    /// AWS: the role to assume with that token (STS AssumeRoleWithWebIdentity).
    #[arg(long, value_parser = parse_word, requires = "web_identity_token_file")]
    pub role_arn: Option<String>,
    /// AWS: the session name of the assumed role.
    #[arg(long, value_parser = parse_word)]
    pub role_session_name: Option<String>,
    /// The STS endpoint of the exchange (default: the region's AWS STS, or Google's).
    #[arg(long)]
    pub sts_endpoint: Option<String>,
    /// Google: the workload identity provider the token is exchanged at (the STS audience),
    /// e.g. //iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/providers/X.
    #[arg(long, value_parser = parse_word, requires = "web_identity_token_file")]
    pub workload_identity_provider: Option<String>,
    /// Google: the service account to impersonate with the federated token.
    #[arg(long, value_parser = parse_word, requires = "workload_identity_provider")]
    pub gcp_service_account: Option<String>,
    /// Google: the IAM credentials endpoint of the impersonation.
    #[arg(long)]
    pub iam_credentials_endpoint: Option<String>,
}

/// What a volume's `mountOptions` may set: every field of this struct, and nothing else.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct VolumeOptions {
    /// Refuse every change with EROFS.
    #[arg(long)]
    pub read_only: bool,
    /// Let other users (and root) use the mount.
    #[arg(long)]
    pub allow_other: bool,
    /// Log debug details.
    #[arg(long)]
    pub debug: bool,
    /// Store mode, owner and mtime in object metadata (s3fs's x-amz-meta-mode/uid/gid/mtime)
    /// and show them; without it they come from --file-mode/--uid/--gid and chmod is a no-op.
    #[arg(long)]
    pub persist_metadata: bool,
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
    /// How long metadata is cached: seconds, "minimal" (0) or "indefinite".
    #[arg(long, default_value = "1", value_parser = parse_ttl)]
    pub metadata_ttl: Duration,
    /// Size of one ranged GET and one upload part, 5M to 5G (e.g. 8M).
    #[arg(long, default_value = "8M", value_parser = parse_size)]
    pub part_size: u64,
    /// Most bytes read ahead of one sequential reader, at least --part-size (e.g. 32M).
    #[arg(long, default_value = "32M", value_parser = parse_size)]
    pub max_prefetch: u64,
    /// How far the kernel reads ahead of a sequential reader, e.g. 4M (0: the kernel's
    /// 128 KiB); larger read-ahead means fewer, larger FUSE requests. Needs root to set.
    #[arg(long, default_value = "4M", value_parser = parse_size)]
    pub read_ahead: u64,
    /// Parts uploading at once per file being written (1 to 64).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub upload_concurrency: u16,
    /// FUSE threads reading requests from the kernel (1 to 64).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub max_threads: u16,
    /// Timeout of one request to the store, seconds (1 to 3600).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout: u64,
    /// Retries of a request on transient errors (0 to 100).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(0..=100))]
    pub max_retries: u16,
    /// Most bytes staged at once; past it writes fail with ENOSPC.
    #[arg(long, default_value = "10G", value_parser = parse_size)]
    pub max_cache_size: u64,
    /// Memory all prefetched and uploading parts of the mount may hold together, at least
    /// twice --part-size (e.g. 1G); readers stop prefetching and writers wait when it is
    /// spent.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub memory_limit: u64,
    /// Keep object data on local disk across opens (in the cache directory, within
    /// --max-cache-size with staged edits; least recently used objects give way): a second
    /// read of a file is a local read, through FUSE passthrough where the kernel and
    /// privileges allow.
    #[arg(long)]
    pub read_cache: bool,
    /// Most keys a directory rename copies; past it rename fails with EXDEV.
    #[arg(long, default_value_t = 1000)]
    pub rename_dir_limit: usize,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        VolumeOptions::parse_from(Vec::<String>::new()).expect("the defaults parse")
    }
}

/// The command line of `pail mount`.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct MountArgs {
    /// Bucket URL: s3://bucket[/prefix/], gs://bucket[/prefix/], file:///dir or memory://.
    pub source: String,
    /// Directory to mount at.
    pub mountpoint: PathBuf,
    /// Where and how to reach the bucket.
    #[command(flatten)]
    pub store: StoreArgs,
    /// What the mount does.
    #[command(flatten)]
    pub volume: VolumeOptions,
    /// Where files edited in place (append, seek+write, truncate) are staged.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Serve this already mounted /dev/fuse descriptor instead of mounting.
    #[arg(long)]
    pub fuse_fd: Option<i32>,
    /// Keep the tables a successor process needs to take the mount over in this file (the
    /// CSI node plugin's mount processes).
    #[arg(long)]
    pub journal: Option<PathBuf>,
    /// Write a snapshot of the mount's counters (JSON: store requests and latencies, FUSE
    /// operation latencies, bytes, caches) to this file every few seconds (the CSI node
    /// plugin serves them as per-volume Prometheus metrics).
    #[arg(long)]
    pub metrics_file: Option<PathBuf>,
    /// Take over the already initialized connection of --fuse-fd from the process whose
    /// --journal this is (it died or is being replaced).
    #[arg(long, requires = "journal", requires = "fuse_fd")]
    pub resume: bool,
    /// After start-up, run as this user and group (`uid:gid`), with no capabilities,
    /// no new privileges and a system-call filter (the CSI driver's mount processes).
    #[arg(long, value_parser = parse_ids)]
    pub run_as: Option<(u32, u32)>,
    /// Most bytes a memory:// bucket holds (the CSI driver caps memory volumes).
    #[arg(long, value_parser = parse_size)]
    pub memory_capacity: Option<u64>,
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
}

fn flag(out: &mut Vec<String>, name: &str, on: bool) {
    if on {
        out.push(format!("--{name}"));
    }
}

fn value(out: &mut Vec<String>, name: &str, v: impl std::fmt::Display) {
    out.push(format!("--{name}={v}"));
}

/// A duration as `--metadata-ttl` takes it back exactly (whole seconds, or seconds with
/// nanoseconds).
fn seconds(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
    }
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
        if self.memory_limit < 2 * self.part_size {
            return Err(format!(
                "--memory-limit {}: must be at least twice --part-size {}",
                self.memory_limit, self.part_size
            ));
        }
        Ok(())
    }

    /// The arguments that give these options back when parsed.
    pub fn to_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        flag(&mut out, "read-only", self.read_only);
        flag(&mut out, "allow-other", self.allow_other);
        flag(&mut out, "debug", self.debug);
        flag(&mut out, "persist-metadata", self.persist_metadata);
        if let Some(u) = self.uid {
            value(&mut out, "uid", u);
        }
        if let Some(g) = self.gid {
            value(&mut out, "gid", g);
        }
        value(&mut out, "file-mode", format!("{:o}", self.file_mode));
        value(&mut out, "dir-mode", format!("{:o}", self.dir_mode));
        value(&mut out, "metadata-ttl", seconds(self.metadata_ttl));
        value(&mut out, "part-size", self.part_size);
        value(&mut out, "max-prefetch", self.max_prefetch);
        value(&mut out, "read-ahead", self.read_ahead);
        value(&mut out, "upload-concurrency", self.upload_concurrency);
        value(&mut out, "max-threads", self.max_threads);
        value(&mut out, "request-timeout", self.request_timeout);
        value(&mut out, "max-retries", self.max_retries);
        value(&mut out, "max-cache-size", self.max_cache_size);
        value(&mut out, "memory-limit", self.memory_limit);
        value(&mut out, "rename-dir-limit", self.rename_dir_limit);
        flag(&mut out, "read-cache", self.read_cache);
        out
    }
}

impl StoreArgs {
    /// The arguments that give these options back when parsed.
    pub fn to_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(p) = &self.prefix {
            value(&mut out, "prefix", p);
        }
        if let Some(r) = &self.region {
            value(&mut out, "region", r);
        }
        if let Some(e) = &self.endpoint_url {
            value(&mut out, "endpoint-url", e);
        }
        flag(&mut out, "force-path-style", self.force_path_style);
        flag(&mut out, "requester-pays", self.requester_pays);
        flag(&mut out, "no-sign-request", self.no_sign_request);
        if let Some(p) = &self.profile {
            value(&mut out, "profile", p);
        }
        if let Some(f) = &self.service_account_file {
            value(&mut out, "service-account-file", f.display());
        }
        if let Some(s) = &self.sse {
            value(&mut out, "sse", s);
        }
        if let Some(k) = &self.sse_kms_key_id {
            value(&mut out, "sse-kms-key-id", k);
        }
        if let Some(c) = &self.storage_class {
            value(&mut out, "storage-class", c);
        }
        if let Some(c) = &self.ca_bundle {
            value(&mut out, "ca-bundle", c.display());
        }
        if let Some(f) = &self.web_identity_token_file {
            value(&mut out, "web-identity-token-file", f.display());
        }
        let words = [
            ("role-arn", &self.role_arn),
            ("role-session-name", &self.role_session_name),
            ("sts-endpoint", &self.sts_endpoint),
            (
                "workload-identity-provider",
                &self.workload_identity_provider,
            ),
            ("gcp-service-account", &self.gcp_service_account),
            ("iam-credentials-endpoint", &self.iam_credentials_endpoint),
        ];
        for (name, v) in words {
            if let Some(v) = v {
                value(&mut out, name, v);
            }
        }
        out
    }
}

impl MountArgs {
    /// A mount of `source` at `mountpoint` with every other option at its default.
    pub fn new(source: impl Into<String>, mountpoint: impl Into<PathBuf>) -> MountArgs {
        MountArgs {
            source: source.into(),
            mountpoint: mountpoint.into(),
            store: StoreArgs::default(),
            volume: VolumeOptions::default(),
            cache_dir: None,
            fuse_fd: None,
            journal: None,
            metrics_file: None,
            resume: false,
            run_as: None,
            memory_capacity: None,
            foreground: false,
            background: false,
            log_file: None,
            log_format: LogFormat::Text,
        }
    }

    /// The arguments of `pail mount` (after the subcommand) that give these back.
    pub fn to_args(&self) -> Vec<String> {
        let mut out = vec![self.source.clone(), self.mountpoint.display().to_string()];
        out.extend(self.store.to_args());
        out.extend(self.volume.to_args());
        if let Some(d) = &self.cache_dir {
            value(&mut out, "cache-dir", d.display());
        }
        if let Some(fd) = self.fuse_fd {
            value(&mut out, "fuse-fd", fd);
        }
        if let Some(m) = &self.metrics_file {
            value(&mut out, "metrics-file", m.display());
        }
        if let Some(j) = &self.journal {
            value(&mut out, "journal", j.display());
        }
        flag(&mut out, "resume", self.resume);
        if let Some((u, g)) = self.run_as {
            value(&mut out, "run-as", format!("{u}:{g}"));
        }
        if let Some(n) = self.memory_capacity {
            value(&mut out, "memory-capacity", n);
        }
        flag(&mut out, "foreground", self.foreground);
        flag(&mut out, "background", self.background);
        if let Some(f) = &self.log_file {
            value(&mut out, "log-file", f.display());
        }
        let format = match self.log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        value(&mut out, "log-format", format);
        out
    }
}

#[cfg(test)]
mod tests;
