//! Volume attributes, StorageClass parameters, secrets and mount options: the allow-lists,
//! their validation (errors name the field, never a secret value) and the `pail mount`
//! invocation they turn into.

use std::collections::HashMap;

use tonic::Status;

use super::pb::VolumeCapability;
use super::pb::volume_capability::AccessType;
use super::pb::volume_capability::access_mode::Mode;
use crate::mounter::MountRequest;
use crate::store::source::{normalize_prefix, validate_bucket};

/// The volume attributes a volume (static, inline, or provisioned from these StorageClass
/// parameters) may carry.
pub const VOLUME_ATTRIBUTES: &[&str] = &[
    keys::BUCKET,
    keys::PREFIX,
    keys::ENDPOINT,
    keys::REGION,
    keys::PATH_STYLE,
    keys::PROVIDER,
    keys::REQUESTER_PAYS,
    keys::MOUNT_OPTIONS,
];

/// Volume attribute keys (PV `volumeAttributes`, inline volume attributes, StorageClass
/// parameters copied into the volume context by CreateVolume).
pub mod keys {
    /// Bucket name (required).
    pub const BUCKET: &str = "bucketName";
    /// Key prefix inside the bucket.
    pub const PREFIX: &str = "prefix";
    /// Endpoint of an S3-compatible store or GCS emulator.
    pub const ENDPOINT: &str = "endpointUrl";
    /// Region (S3).
    pub const REGION: &str = "region";
    /// "true" for path-style addressing.
    pub const PATH_STYLE: &str = "forcePathStyle";
    /// "s3" (default) or "gcs".
    pub const PROVIDER: &str = "provider";
    /// "true" to pay for requests on a requester-pays bucket.
    pub const REQUESTER_PAYS: &str = "requesterPays";
    /// Extra `pail mount` flags from the allow-list, separated by spaces or commas.
    pub const MOUNT_OPTIONS: &str = "mountOptions";
    /// StorageClass: template of the prefix of each dynamic volume.
    pub const PREFIX_TEMPLATE: &str = "prefixTemplate";
    /// StorageClass: "true" to create a bucket per volume.
    pub const BUCKET_PER_VOLUME: &str = "bucketPerVolume";
}

/// Secret keys pail reads.
pub mod secret_keys {
    /// S3 access key id.
    pub const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
    /// S3 secret access key.
    pub const SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
    /// S3 session token of temporary credentials.
    pub const SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
    /// GCS service account JSON.
    pub const GCS_KEY: &str = "GOOGLE_SERVICE_ACCOUNT_JSON";
    /// Endpoint for the controller's DeleteVolume (which receives no parameters).
    pub const ENDPOINT: &str = "endpointUrl";
    /// Region for the controller's DeleteVolume.
    pub const REGION: &str = "region";
}

/// Keys Kubernetes adds to the volume context or parameters on its own.
fn is_kubernetes_key(key: &str) -> bool {
    key.starts_with("csi.storage.k8s.io/") || key == "storage.kubernetes.io/csiProvisionerIdentity"
}

/// `pail mount` flags a volume may set, and whether each takes a value.
const MOUNT_FLAGS: &[(&str, bool)] = &[
    ("read-only", false),
    ("allow-other", false),
    ("debug", false),
    ("persist-metadata", false),
    ("uid", true),
    ("gid", true),
    ("file-mode", true),
    ("dir-mode", true),
    ("metadata-ttl", true),
    ("part-size", true),
    ("max-prefetch", true),
    ("upload-concurrency", true),
    ("max-threads", true),
    ("request-timeout", true),
    ("max-retries", true),
    ("max-cache-size", true),
    ("memory-limit", true),
    ("rename-dir-limit", true),
];

const MAX_VALUE_LEN: usize = 1024;
/// Most attributes, secret keys or mount options one request may carry.
const MAX_ENTRIES: usize = 64;

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

fn bool_attr(attrs: &HashMap<String, String>, key: &str) -> Result<bool, Status> {
    match attrs.get(key).map(|s| s.as_str()) {
        None | Some("") | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(invalid(format!(
            "{key}: {other:?} is not \"true\" or \"false\""
        ))),
    }
}

/// Check the provider attribute.
pub fn provider(attrs: &HashMap<String, String>) -> Result<&'static str, Status> {
    match attrs.get(keys::PROVIDER).map(|s| s.as_str()) {
        None | Some("") | Some("s3") => Ok("s3"),
        Some("gcs") | Some("gs") => Ok("gcs"),
        Some("memory") => Ok("memory"),
        Some(other) => Err(invalid(format!(
            "{}: {other:?} is not \"s3\", \"gcs\" or \"memory\"",
            keys::PROVIDER
        ))),
    }
}

/// Check an endpoint URL attribute.
pub fn endpoint(value: &str, field: &str) -> Result<(), Status> {
    let ok = (value.starts_with("http://") || value.starts_with("https://"))
        && value.len() <= 512
        && !value.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok && url::Url::parse(value).is_ok() {
        Ok(())
    } else {
        Err(invalid(format!(
            "{field}: {value:?} is not an http:// or https:// URL"
        )))
    }
}

/// Parse mount options (`"uid=1000 read-only"`, `"--uid 1000,--read-only"`, or PV
/// `mountOptions` entries) into `--flag[=value]` arguments, refusing anything off the list.
pub fn mount_options<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Vec<String>, Status> {
    let mut tokens: Vec<String> = Vec::new();
    for item in items {
        tokens.extend(
            item.split(|c: char| c == ',' || c.is_whitespace())
                .filter(|t| !t.is_empty())
                .map(str::to_string),
        );
    }
    let mut args = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let token = tokens[i].trim_start_matches('-');
        let (name, inline) = match token.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (token, None),
        };
        let Some((flag, takes_value)) = MOUNT_FLAGS.iter().find(|(f, _)| *f == name) else {
            return Err(invalid(format!(
                "mountOptions: {name:?} is not an allowed option (allowed: {})",
                MOUNT_FLAGS
                    .iter()
                    .map(|(f, _)| *f)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        if *takes_value {
            let value = match inline {
                Some(v) => v,
                None => {
                    i += 1;
                    tokens
                        .get(i)
                        .cloned()
                        .ok_or_else(|| invalid(format!("mountOptions: {flag} needs a value")))?
                }
            };
            if value.is_empty()
                || value.len() > 64
                || !value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return Err(invalid(format!(
                    "mountOptions: {flag}: bad value {value:?}"
                )));
            }
            args.push(format!("--{flag}={value}"));
        } else {
            if inline.is_some() {
                return Err(invalid(format!("mountOptions: {flag} takes no value")));
            }
            args.push(format!("--{flag}"));
        }
        i += 1;
    }
    Ok(args)
}

/// Check a volume capability: mount access only, a known access mode. Returns whether the
/// mode is read-only.
pub fn capability(
    cap: Option<&VolumeCapability>,
    field: &str,
) -> Result<(bool, Vec<String>), Status> {
    let cap = cap.ok_or_else(|| invalid(format!("{field} is required")))?;
    let flags = match &cap.access_type {
        Some(AccessType::Mount(m)) => m.mount_flags.clone(),
        Some(AccessType::Block(_)) => {
            return Err(invalid(format!(
                "{field}: block access is not supported, pail volumes are file systems"
            )));
        }
        None => return Err(invalid(format!("{field}: access_type is required"))),
    };
    let mode = cap
        .access_mode
        .as_ref()
        .map(|m| m.mode())
        .unwrap_or(Mode::Unknown);
    let read_only = match mode {
        Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly => true,
        Mode::Unknown => {
            return Err(invalid(format!("{field}: access_mode is required")));
        }
        _ => false,
    };
    Ok((read_only, flags))
}

/// Everything NodePublishVolume needs, checked.
pub struct PublishInput<'a> {
    /// Volume id.
    pub volume_id: &'a str,
    /// Volume context (attributes).
    pub attrs: &'a HashMap<String, String>,
    /// Secrets from `nodePublishSecretRef`.
    pub secrets: &'a HashMap<String, String>,
    /// `readonly` of the request.
    pub readonly: bool,
    /// The capability's read-only-ness and mount flags.
    pub cap_read_only: bool,
    /// PV mountOptions.
    pub mount_flags: &'a [String],
}

/// Build the `pail mount` request of a publish.
pub fn publish_request(
    input: &PublishInput<'_>,
    target: std::path::PathBuf,
) -> Result<MountRequest, Status> {
    let attrs = input.attrs;
    if attrs.len() > MAX_ENTRIES {
        return Err(invalid(format!(
            "volume attributes: {} entries, at most {MAX_ENTRIES}",
            attrs.len()
        )));
    }
    if input.mount_flags.len() > MAX_ENTRIES {
        return Err(invalid(format!(
            "mountOptions: at most {MAX_ENTRIES} entries"
        )));
    }
    for (k, v) in attrs {
        if v.len() > MAX_VALUE_LEN {
            return Err(invalid(format!("volume attribute {k}: value too long")));
        }
        if !VOLUME_ATTRIBUTES.contains(&k.as_str()) && !is_kubernetes_key(k) {
            return Err(invalid(format!("unknown volume attribute {k:?}")));
        }
    }
    let provider = provider(attrs)?;
    let prefix = normalize_prefix(attrs.get(keys::PREFIX).map(|s| s.as_str()).unwrap_or(""))
        .map_err(|e| invalid(format!("{}: {e}", keys::PREFIX)))?;
    let source = if provider == "memory" {
        // An empty bucket that lives as long as the mount (smoke tests, scratch space).
        format!("memory://{prefix}")
    } else {
        let bucket = attrs
            .get(keys::BUCKET)
            .filter(|b| !b.is_empty())
            .ok_or_else(|| invalid(format!("volume attribute {} is required", keys::BUCKET)))?;
        validate_bucket(bucket).map_err(|e| invalid(format!("{}: {e}", keys::BUCKET)))?;
        let scheme = if provider == "gcs" { "gs" } else { "s3" };
        format!("{scheme}://{bucket}/{prefix}")
    };

    let mut args = Vec::new();
    if let Some(e) = attrs.get(keys::ENDPOINT).filter(|e| !e.is_empty()) {
        endpoint(e, keys::ENDPOINT)?;
        args.push(format!("--endpoint-url={e}"));
    }
    if let Some(r) = attrs.get(keys::REGION).filter(|r| !r.is_empty()) {
        if r.len() > 64 || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(invalid(format!(
                "{}: {r:?} is not a region name",
                keys::REGION
            )));
        }
        args.push(format!("--region={r}"));
    }
    if bool_attr(attrs, keys::PATH_STYLE)? {
        args.push("--force-path-style".into());
    }
    if bool_attr(attrs, keys::REQUESTER_PAYS)? {
        args.push("--requester-pays".into());
    }
    let mut options: Vec<&str> = input.mount_flags.iter().map(|s| s.as_str()).collect();
    if let Some(o) = attrs.get(keys::MOUNT_OPTIONS) {
        options.push(o);
    }
    let extra = mount_options(options)?;
    let read_only =
        input.readonly || input.cap_read_only || extra.iter().any(|a| a == "--read-only");
    args.extend(extra.into_iter().filter(|a| a != "--read-only"));
    if read_only {
        args.push("--read-only".into());
    }
    // The pods that use a volume run as any user: let them in.
    if !args.iter().any(|a| a == "--allow-other") {
        args.push("--allow-other".into());
    }

    let (env, gcs_key) = credentials(input.secrets, provider)?;
    Ok(MountRequest {
        volume_id: input.volume_id.to_string(),
        target,
        source,
        args,
        env,
        gcs_key,
        read_only,
    })
}

/// Environment variables for a mount process.
pub type Env = Vec<(String, String)>;

/// Credentials from a secret: environment for the mount process and an optional GCS key.
pub fn credentials(
    secrets: &HashMap<String, String>,
    provider: &str,
) -> Result<(Env, Option<String>), Status> {
    let mut env = Vec::new();
    let mut gcs_key = None;
    if secrets.len() > MAX_ENTRIES {
        return Err(invalid(format!(
            "secret: {} keys, at most {MAX_ENTRIES}",
            secrets.len()
        )));
    }
    for (k, v) in secrets {
        if v.len() > 64 * 1024 {
            return Err(invalid(format!("secret key {k}: value too long")));
        }
        match k.as_str() {
            secret_keys::ACCESS_KEY_ID
            | secret_keys::SECRET_ACCESS_KEY
            | secret_keys::SESSION_TOKEN => {
                if v.chars().any(|c| c.is_control()) {
                    return Err(invalid(format!(
                        "secret key {k}: control characters in value"
                    )));
                }
                env.push((k.clone(), v.clone()));
            }
            secret_keys::GCS_KEY => {
                if serde_json::from_str::<serde_json::Value>(v).is_err() {
                    return Err(invalid(format!("secret key {k}: not JSON")));
                }
                gcs_key = Some(v.clone());
            }
            secret_keys::ENDPOINT | secret_keys::REGION => {}
            _ => return Err(invalid(format!("unknown secret key {k:?}"))),
        }
    }
    let has_id = secrets.contains_key(secret_keys::ACCESS_KEY_ID);
    let has_secret = secrets.contains_key(secret_keys::SECRET_ACCESS_KEY);
    if has_id != has_secret {
        return Err(invalid(format!(
            "secret: {} and {} go together",
            secret_keys::ACCESS_KEY_ID,
            secret_keys::SECRET_ACCESS_KEY
        )));
    }
    if provider == "s3" && gcs_key.is_some() {
        return Err(invalid(format!(
            "secret key {} is for provider \"gcs\"",
            secret_keys::GCS_KEY
        )));
    }
    Ok((env, gcs_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn publish(attrs: &[(&str, &str)], secrets: &[(&str, &str)]) -> Result<MountRequest, Status> {
        let attrs = map(attrs);
        let secrets = map(secrets);
        publish_request(
            &PublishInput {
                volume_id: "v",
                attrs: &attrs,
                secrets: &secrets,
                readonly: false,
                cap_read_only: false,
                mount_flags: &[],
            },
            "/t".into(),
        )
    }

    #[test]
    fn attributes_become_mount_flags() {
        let r = publish(
            &[
                ("bucketName", "data"),
                ("prefix", "a/b"),
                ("endpointUrl", "http://127.0.0.1:9000"),
                ("forcePathStyle", "true"),
                ("mountOptions", "uid=1000 --metadata-ttl 5,read-only"),
                ("csi.storage.k8s.io/pod.name", "p"),
            ],
            &[("AWS_ACCESS_KEY_ID", "id"), ("AWS_SECRET_ACCESS_KEY", "s")],
        )
        .unwrap();
        assert_eq!(r.source, "s3://data/a/b/");
        assert!(r.read_only);
        for want in [
            "--endpoint-url=http://127.0.0.1:9000",
            "--force-path-style",
            "--uid=1000",
            "--metadata-ttl=5",
            "--read-only",
        ] {
            assert!(r.args.iter().any(|a| a == want), "{want} in {:?}", r.args);
        }
        assert_eq!(r.env.len(), 2);
    }

    #[test]
    fn bad_input_names_the_field_and_hides_secret_values() {
        type Pairs<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Pairs, Pairs, &str)] = &[
            (&[], &[], "bucketName"),
            (&[("bucketName", "b-1"), ("prefix", "../x")], &[], "prefix"),
            (&[("bucketName", "b-1"), ("color", "x")], &[], "color"),
            (
                &[("bucketName", "b-1"), ("mountOptions", "allow-root")],
                &[],
                "allow-root",
            ),
            (
                &[("bucketName", "b-1"), ("mountOptions", "uid=1;rm")],
                &[],
                "uid",
            ),
            (
                &[("bucketName", "b-1"), ("endpointUrl", "file:///etc")],
                &[],
                "endpointUrl",
            ),
            (
                &[("bucketName", "b-1"), ("provider", "azure")],
                &[],
                "provider",
            ),
            (
                &[("bucketName", "b-1")],
                &[("AWS_ACCESS_KEY_ID", "only-the-id")],
                "AWS_SECRET_ACCESS_KEY",
            ),
            (
                &[("bucketName", "b-1")],
                &[("PASSWORD", "hunter2")],
                "PASSWORD",
            ),
        ];
        for (attrs, secrets, field) in cases {
            let Err(e) = publish(attrs, secrets) else {
                panic!("{field}: must be refused")
            };
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(
                e.message().contains(field),
                "{field} not in {:?}",
                e.message()
            );
            assert!(!e.message().contains("hunter2") && !e.message().contains("only-the-id"));
        }
    }
}

#[cfg(test)]
mod random_input {
    //! Property test: random attributes, secrets and mount options never make the parsing
    //! panic, are refused with INVALID_ARGUMENT when refused, and never echo a secret.
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[(self.next() % items.len() as u64) as usize]
        }
        fn junk(&mut self) -> String {
            let alphabet = [
                'a', 'Z', '0', '/', '.', '-', '_', '=', ' ', ',', '\0', '\n', '\u{7f}', 'é', '$',
                '{', '}', ';', ':',
            ];
            let n = (self.next() % 40) as usize;
            (0..n)
                .map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize])
                .collect()
        }
    }

    const KEYS: &[&str] = &[
        "bucketName",
        "prefix",
        "endpointUrl",
        "region",
        "forcePathStyle",
        "provider",
        "requesterPays",
        "mountOptions",
        "csi.storage.k8s.io/ephemeral",
        "unknown",
        "",
    ];
    const VALUES: &[&str] = &[
        "my-bucket",
        "a/b/",
        "../etc",
        "/",
        "http://127.0.0.1:9000",
        "file:///etc",
        "true",
        "false",
        "s3",
        "gcs",
        "memory",
        "uid=1000",
        "read-only allow-other",
        "uid",
        "uid=;rm -rf",
        "metadata-ttl minimal",
        "",
    ];
    const SECRET_KEYS: &[&str] = &[
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "GOOGLE_SERVICE_ACCOUNT_JSON",
        "x",
    ];

    #[test]
    fn random_publish_requests_never_panic_nor_leak_secrets() {
        let mut rng = Rng(0x9e3779b97f4a7c15);
        for _ in 0..20_000 {
            let mut attrs = HashMap::new();
            for _ in 0..(rng.next() % 6) {
                let k = rng.pick(KEYS).to_string();
                let v = if rng.next().is_multiple_of(3) {
                    rng.junk()
                } else {
                    rng.pick(VALUES).to_string()
                };
                attrs.insert(k, v);
            }
            let secret_value = format!("SECRET{}", rng.next());
            let mut secrets = HashMap::new();
            for _ in 0..(rng.next() % 3) {
                secrets.insert(rng.pick(SECRET_KEYS).to_string(), secret_value.clone());
            }
            let flags: Vec<String> = (0..(rng.next() % 3)).map(|_| rng.junk()).collect();
            let input = PublishInput {
                volume_id: "v",
                attrs: &attrs,
                secrets: &secrets,
                readonly: rng.next().is_multiple_of(2),
                cap_read_only: rng.next().is_multiple_of(2),
                mount_flags: &flags,
            };
            match publish_request(&input, "/t".into()) {
                Ok(req) => {
                    assert!(
                        req.source.starts_with("s3://")
                            || req.source.starts_with("gs://")
                            || req.source.starts_with("memory://")
                    );
                    for a in &req.args {
                        assert!(a.starts_with("--"), "{a}");
                        assert!(!a.contains(&secret_value));
                        assert!(
                            !a.chars().any(|c| c.is_whitespace() || c.is_control()),
                            "{a:?}"
                        );
                    }
                    assert!(
                        !req.source.split('/').any(|s| s == ".." || s == "."),
                        "{}",
                        req.source
                    );
                }
                Err(e) => {
                    assert_eq!(e.code(), tonic::Code::InvalidArgument);
                    assert!(!e.message().contains(&secret_value), "{}", e.message());
                }
            }
        }
    }

    #[test]
    fn random_target_paths_never_escape_the_kubelet_dir() {
        let mut rng = Rng(42);
        let root = std::path::Path::new("/var/lib/kubelet/pods");
        let parts = [
            "/var", "/lib", "/kubelet", "/pods", "/..", "/.", "/x", "//", "/mount", "kubelet",
        ];
        for _ in 0..20_000 {
            let p: String = (0..(rng.next() % 8)).map(|_| rng.pick(&parts)).collect();
            if let Ok(t) = crate::csi::node::check_target(&p, root, "target_path") {
                assert!(t.starts_with(root) && t != root, "{p} accepted");
                assert!(!p.contains("/.."), "{p} accepted");
            }
        }
    }
}
