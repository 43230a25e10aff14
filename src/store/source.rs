//! Where a bucket is and how to reach it: the `s3://`, `gs://`, `file://` and `memory://`
//! source URLs and the connection options that go with them.

use std::path::PathBuf;
use std::time::Duration;

use super::{StoreError, StoreErrorKind};

/// The kind of store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// AWS S3 or an S3-compatible store (R2, MinIO, SeaweedFS, GCS via HMAC...).
    S3,
    /// Google Cloud Storage, native JSON/XML API.
    Gcs,
    /// A local directory acting as a bucket (the embedded default).
    Local,
    /// An in-memory bucket, empty at start (tests and demos).
    Memory,
}

impl Provider {
    /// The URL scheme of this provider.
    pub fn scheme(self) -> &'static str {
        match self {
            Provider::S3 => "s3",
            Provider::Gcs => "gs",
            Provider::Local => "file",
            Provider::Memory => "memory",
        }
    }

    /// The provider a scheme or a volume's `provider` attribute names.
    pub fn from_name(name: &str) -> Option<Provider> {
        match name {
            "s3" => Some(Provider::S3),
            "gs" | "gcs" => Some(Provider::Gcs),
            "file" => Some(Provider::Local),
            "memory" => Some(Provider::Memory),
            _ => None,
        }
    }
}

/// A bucket and the key prefix mounted from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Which store.
    pub provider: Provider,
    /// Bucket name (for `file://`, the directory).
    pub bucket: String,
    /// Key prefix: empty, or ending in `/`.
    pub prefix: String,
}

impl Source {
    /// The URL of this source (`s3://bucket/prefix/`).
    pub fn url(&self) -> String {
        format!(
            "{}://{}/{}",
            self.provider.scheme(),
            self.bucket,
            self.prefix
        )
    }

    /// Parse a source URL such as `s3://bucket/some/prefix/`, `gs://bucket`,
    /// `file:///srv/bucket` or `memory://`.
    pub fn parse(url: &str) -> Result<Source, StoreError> {
        let bad = |why: &str| {
            StoreError::new(
                StoreErrorKind::Config,
                format!("bad bucket URL {url:?}: {why}"),
            )
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected s3://, gs://, file:// or memory://"))?;
        let provider = Provider::from_name(scheme).ok_or_else(|| bad("unknown scheme"))?;
        match provider {
            Provider::Local => {
                if !rest.starts_with('/') {
                    return Err(bad("file:// needs an absolute path"));
                }
                Ok(Source {
                    provider,
                    bucket: rest.trim_end_matches('/').to_string(),
                    prefix: String::new(),
                })
            }
            Provider::Memory => Ok(Source {
                provider,
                bucket: String::new(),
                prefix: normalize_prefix(rest).map_err(|e| bad(&e))?,
            }),
            _ => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                validate_bucket(bucket).map_err(|e| bad(&e))?;
                Ok(Source {
                    provider,
                    bucket: bucket.to_string(),
                    prefix: normalize_prefix(prefix).map_err(|e| bad(&e))?,
                })
            }
        }
    }

    /// Append `extra` (a `--prefix` value) to the prefix taken from the URL.
    pub fn with_prefix(mut self, extra: &str) -> Result<Source, StoreError> {
        let extra = normalize_prefix(extra).map_err(|e| {
            StoreError::new(StoreErrorKind::Config, format!("bad prefix {extra:?}: {e}"))
        })?;
        self.prefix.push_str(&extra);
        Ok(self)
    }
}

/// Check a bucket name: S3/GCS rules, loosely (3 to 222 characters of `[a-z0-9._-]`).
pub fn validate_bucket(bucket: &str) -> Result<(), String> {
    if bucket.len() < 3 || bucket.len() > 222 {
        return Err(format!(
            "bucket name {bucket:?} must be 3 to 222 characters long"
        ));
    }
    if !bucket
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-' || c == '_')
    {
        return Err(format!(
            "bucket name {bucket:?} may only contain a-z, 0-9, '.', '-' and '_'"
        ));
    }
    Ok(())
}

/// Normalise a key prefix: no leading `/`, a trailing `/` unless empty, and no empty,
/// `.` or `..` segments.
pub fn normalize_prefix(prefix: &str) -> Result<String, String> {
    let trimmed = prefix.trim_start_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    let body = trimmed.strip_suffix('/').unwrap_or(trimmed);
    for seg in body.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(format!("segment {seg:?} is not allowed"));
        }
        if seg.chars().any(|c| c.is_control()) {
            return Err("control characters are not allowed".into());
        }
    }
    Ok(format!("{body}/"))
}

/// How to connect to the store.
#[derive(Clone, Default)]
pub struct StoreOptions {
    /// Region (S3). Defaults to `AWS_REGION`/`AWS_DEFAULT_REGION`, then `us-east-1`.
    pub region: Option<String>,
    /// Custom endpoint (S3-compatible stores, GCS emulators).
    pub endpoint_url: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`) instead of virtual-hosted.
    pub force_path_style: bool,
    /// Send `x-amz-request-payer: requester`.
    pub requester_pays: bool,
    /// Where the credentials come from.
    pub auth: Auth,
    /// Timeout of one request.
    pub request_timeout: Option<Duration>,
    /// Retries of one request on transient errors.
    pub max_retries: Option<usize>,
    /// Where clients may connect (none: anywhere, as `pail mount` by hand).
    pub net: Option<std::sync::Arc<super::net::NetPolicy>>,
    /// Most bytes a `memory://` bucket holds (none: unbounded).
    pub memory_capacity: Option<u64>,
    /// Server-side encryption of writes (S3): `AES256`, `aws:kms`, `aws:kms:dsse`.
    pub sse: Option<String>,
    /// The KMS key of `aws:kms`.
    pub sse_kms_key_id: Option<String>,
    /// Storage class of writes (S3).
    pub storage_class: Option<String>,
    /// Extra certificates to trust (PEM).
    pub ca_bundle: Option<Vec<u8>>,
}

/// Where a store's credentials come from: exactly one source, chosen before the store is
/// opened (`pail mount`'s flags, or a volume's `authenticationSource`).
#[derive(Clone, Default)]
pub enum Auth {
    /// The standard chains of this process's environment (S3: environment keys, the shared
    /// credentials file, a web identity token, container credentials, instance metadata;
    /// GCS: `GOOGLE_APPLICATION_CREDENTIALS`, the metadata server where allowed).
    #[default]
    Chain,
    /// A profile of the shared credentials file (S3).
    Profile(String),
    /// Static S3 keys.
    Keys(Credentials),
    /// A GCS service account key (JSON).
    GcsKey(String),
    /// A GCS service account key file.
    GcsKeyFile(PathBuf),
    /// A workload token exchanged at STS (AWS role, or Google workload identity).
    WebIdentity(super::identity::WebIdentity),
    /// Unsigned requests (public buckets).
    Anonymous,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Chain => f.write_str("Chain"),
            Auth::Profile(p) => write!(f, "Profile({p:?})"),
            Auth::Keys(_) => f.write_str("Keys(<redacted>)"),
            Auth::GcsKey(_) => f.write_str("GcsKey(<redacted>)"),
            Auth::GcsKeyFile(p) => write!(f, "GcsKeyFile({})", p.display()),
            Auth::WebIdentity(w) => write!(f, "WebIdentity({w:?})"),
            Auth::Anonymous => f.write_str("Anonymous"),
        }
    }
}

impl StoreOptions {
    /// Timeout of one request (30 s unless set).
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout.unwrap_or(Duration::from_secs(30))
    }

    /// Retries of one request on transient errors (10 unless set).
    pub fn max_retries(&self) -> usize {
        self.max_retries.unwrap_or(10)
    }

    /// The settings of this store's HTTP clients.
    pub fn http(&self, allow_http: bool) -> super::net::HttpSettings {
        super::net::HttpSettings {
            timeout: self.request_timeout(),
            allow_http,
            policy: self.net.clone(),
            ca_bundle: self.ca_bundle.clone().map(std::sync::Arc::new),
        }
    }

    /// Whether the credential chains may ask the instance metadata (and container
    /// credentials) addresses: not under a policy that keeps them closed, nor with
    /// `AWS_EC2_METADATA_DISABLED=true`.
    pub fn metadata_allowed(&self) -> bool {
        match &self.net {
            Some(p) => p.metadata,
            None => std::env::var("AWS_EC2_METADATA_DISABLED").as_deref() != Ok("true"),
        }
    }
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("force_path_style", &self.force_path_style)
            .field("requester_pays", &self.requester_pays)
            .field("auth", &self.auth)
            .field("net", &self.net)
            .finish()
    }
}

/// Static S3 credentials (access key, secret, optional session token).
#[derive(Clone)]
pub struct Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_carry_bucket_and_prefix() {
        let s = Source::parse("s3://my-bucket/some/prefix").unwrap();
        assert_eq!(s.provider, Provider::S3);
        assert_eq!(s.bucket, "my-bucket");
        assert_eq!(s.prefix, "some/prefix/");
        let s = Source::parse("s3://my-bucket").unwrap();
        assert_eq!(s.prefix, "");
        let s = Source::parse("gs://b-1/x/")
            .unwrap()
            .with_prefix("y")
            .unwrap();
        assert_eq!(s.provider, Provider::Gcs);
        assert_eq!(s.prefix, "x/y/");
    }

    #[test]
    fn bad_urls_name_the_problem() {
        let e = Source::parse("ftp://x/y").unwrap_err();
        assert!(e.message.contains("ftp://x/y"), "{e}");
        assert!(Source::parse("s3://UPPER/x").is_err());
        assert!(Source::parse("s3://ok-bucket/a/../b").is_err());
        assert!(Source::parse("s3://ok-bucket/a//b").is_err());
        assert!(Source::parse("file://relative/path").is_err());
    }

    #[test]
    fn file_urls_name_a_directory() {
        let s = Source::parse("file:///srv/bucket/").unwrap();
        assert_eq!(s.provider, Provider::Local);
        assert_eq!(s.bucket, "/srv/bucket");
    }
}
