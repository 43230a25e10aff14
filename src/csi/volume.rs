//! Volume attributes, StorageClass parameters and secrets: the allow-lists, their checks
//! (errors name the field, never a secret value) and the mount a publish turns into.

use std::collections::HashMap;
use std::path::PathBuf;

use tonic::Status;

use super::pb::VolumeCapability;
use super::pb::volume_capability::AccessType;
use super::pb::volume_capability::access_mode::Mode;
use super::policy::DriverPolicy;
use crate::mounter::{MountRequest, PodRef, Share};
use crate::options::{
    Auth, MountArgs, MountSpec, StoreArgs, VolumeOptions, parse_storage_class, parse_word,
};
use crate::store::source::{Credentials, normalize_prefix, validate_bucket};
use crate::store::{Provider, Source};

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
    keys::AUTH_SOURCE,
    keys::ROLE_ARN,
    keys::STS_ENDPOINT,
    keys::TOKEN_AUDIENCE,
    keys::WORKLOAD_IDENTITY_PROVIDER,
    keys::GCP_SERVICE_ACCOUNT,
    keys::SSE,
    keys::SSE_KMS_KEY_ID,
    keys::STORAGE_CLASS,
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
    /// Where the volume's credentials come from: `secret`, `pod` (the pod's service account
    /// token, exchanged at STS), `driver` (the node plugin's own identity, when the admin
    /// allows it) or `none` (unsigned requests, public buckets).
    pub const AUTH_SOURCE: &str = "authenticationSource";
    /// AWS role the pod's token assumes (else its ServiceAccount's
    /// `eks.amazonaws.com/role-arn` annotation).
    pub const ROLE_ARN: &str = "roleArn";
    /// STS endpoint of the token exchange (AWS-compatible or Google's).
    pub const STS_ENDPOINT: &str = "stsEndpoint";
    /// The audience of the pod token to use (one of the CSIDriver's tokenRequests).
    pub const TOKEN_AUDIENCE: &str = "tokenAudience";
    /// Google workload identity provider (the STS audience) of the pod's token.
    pub const WORKLOAD_IDENTITY_PROVIDER: &str = "workloadIdentityProvider";
    /// Google service account to impersonate (else the ServiceAccount's
    /// `iam.gke.io/gcp-service-account` annotation, if any).
    pub const GCP_SERVICE_ACCOUNT: &str = "gcpServiceAccount";
    /// Server-side encryption of writes: `AES256`, `aws:kms`, `aws:kms:dsse`.
    pub const SSE: &str = "sse";
    /// KMS key of `sse: aws:kms`.
    pub const SSE_KMS_KEY_ID: &str = "sseKmsKeyId";
    /// Storage class of writes, e.g. `STANDARD_IA`.
    pub const STORAGE_CLASS: &str = "storageClass";
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
    /// The bucket's region, as AWS tools name it.
    pub const AWS_REGION: &str = "AWS_REGION";
    /// The same, older name.
    pub const AWS_DEFAULT_REGION: &str = "AWS_DEFAULT_REGION";
}

/// Keys Kubernetes adds to the volume context or parameters on its own.
pub fn is_kubernetes_key(key: &str) -> bool {
    key.starts_with("csi.storage.k8s.io/") || key == "storage.kubernetes.io/csiProvisionerIdentity"
}

/// The owner files of a volume show by default.
const NOBODY: u32 = 65534;

const MAX_VALUE_LEN: usize = 1024;
const MAX_KEY_LEN: usize = 256;
/// Most attributes, secret keys or mount options one request may carry.
const MAX_ENTRIES: usize = 64;

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

/// A `"true"`/`"false"` attribute.
pub fn bool_attr(attrs: &HashMap<String, String>, key: &str) -> Result<bool, Status> {
    match attrs.get(key).map(|s| s.as_str()) {
        None | Some("") | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(invalid(format!(
            "{key}: {other:?} is not \"true\" or \"false\""
        ))),
    }
}

/// A non-empty attribute.
fn attr<'a>(attrs: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    attrs.get(key).map(|s| s.as_str()).filter(|s| !s.is_empty())
}

/// The provider attribute (S3 by default).
pub fn provider(attrs: &HashMap<String, String>) -> Result<Provider, Status> {
    match attr(attrs, keys::PROVIDER) {
        None => Ok(Provider::S3),
        Some(p) => Provider::from_name(p)
            .filter(|p| *p != Provider::Local)
            .ok_or_else(|| {
                invalid(format!(
                    "{}: {p:?} is not \"s3\", \"gcs\" or \"memory\"",
                    keys::PROVIDER
                ))
            }),
    }
}

/// Check an endpoint URL attribute.
pub fn endpoint(value: &str, field: &str) -> Result<(), Status> {
    let ok = (value.starts_with("http://") || value.starts_with("https://"))
        && value.len() <= 512
        && !value.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok && url::Url::parse(value).is_ok_and(|u| u.host_str().is_some()) {
        Ok(())
    } else {
        Err(invalid(format!(
            "{field}: {value:?} is not an http:// or https:// URL"
        )))
    }
}

/// Check a region name.
fn region(value: &str) -> Result<(), Status> {
    if value.len() > 64 || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(invalid(format!(
            "{}: {value:?} is not a region name",
            keys::REGION
        )));
    }
    Ok(())
}

/// Check a volume capability: mount access only, a known access mode. Returns whether the
/// mode is read-only, and the PV's mount options.
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

/// The pod's fsGroup kubelet delegates (`volume_mount_group`), as a group id.
pub fn mount_group(cap: Option<&VolumeCapability>) -> Result<Option<u32>, Status> {
    let Some(AccessType::Mount(m)) = cap.and_then(|c| c.access_type.as_ref()) else {
        return Ok(None);
    };
    if m.volume_mount_group.is_empty() {
        return Ok(None);
    }
    m.volume_mount_group
        .parse::<u32>()
        .ok()
        .filter(|g| *g != u32::MAX)
        .map(Some)
        .ok_or_else(|| {
            invalid(format!(
                "volume_capability: volume_mount_group {:?} is not a group id",
                m.volume_mount_group
            ))
        })
}

/// Check the size of a map of attributes or parameters and its keys: only `allowed` keys
/// and Kubernetes' own.
pub fn check_attributes(
    attrs: &HashMap<String, String>,
    what: &str,
    allowed: &[&str],
) -> Result<(), Status> {
    if attrs.len() > MAX_ENTRIES {
        return Err(invalid(format!(
            "{what}: {} entries, at most {MAX_ENTRIES}",
            attrs.len()
        )));
    }
    for (k, v) in attrs {
        if k.len() > MAX_KEY_LEN {
            return Err(invalid(format!(
                "{what}: a key is longer than {MAX_KEY_LEN} bytes"
            )));
        }
        if v.len() > MAX_VALUE_LEN {
            return Err(invalid(format!("{what} {k}: value too long")));
        }
        if !allowed.contains(&k.as_str()) && !is_kubernetes_key(k) {
            return Err(invalid(format!("unknown {what} {k:?}")));
        }
    }
    Ok(())
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
    /// The capability's read-only-ness.
    pub cap_read_only: bool,
    /// PV mountOptions.
    pub mount_flags: &'a [String],
    /// The pod's fsGroup (`volume_mount_group`), when kubelet delegates it.
    pub mount_group: Option<u32>,
    /// The volume is staged: its mount is shared, so the pod's `readonly` makes its bind
    /// read-only, not the mount.
    pub shared: bool,
}

/// The bucket and prefix a volume's attributes name.
pub fn source(attrs: &HashMap<String, String>) -> Result<Source, Status> {
    let provider = provider(attrs)?;
    let prefix = normalize_prefix(attr(attrs, keys::PREFIX).unwrap_or(""))
        .map_err(|e| invalid(format!("{}: {e}", keys::PREFIX)))?;
    if provider == Provider::Memory {
        // An empty bucket that lives as long as the mount (smoke tests, scratch space).
        return Ok(Source {
            provider,
            bucket: String::new(),
            prefix,
        });
    }
    let bucket = attr(attrs, keys::BUCKET)
        .ok_or_else(|| invalid(format!("volume attribute {} is required", keys::BUCKET)))?;
    validate_bucket(bucket).map_err(|e| invalid(format!("{}: {e}", keys::BUCKET)))?;
    Ok(Source {
        provider,
        bucket: bucket.to_string(),
        prefix,
    })
}

/// The connection options volume attributes set.
pub fn store_args(attrs: &HashMap<String, String>) -> Result<StoreArgs, Status> {
    let endpoint_url = attr(attrs, keys::ENDPOINT).map(str::to_string);
    if let Some(e) = &endpoint_url {
        endpoint(e, keys::ENDPOINT)?;
    }
    let region_name = attr(attrs, keys::REGION).map(str::to_string);
    if let Some(r) = &region_name {
        region(r)?;
    }
    let checked = |key: &str, parse: fn(&str) -> Result<String, String>| {
        attr(attrs, key)
            .map(|v| parse(v).map_err(|e| invalid(format!("{key}: {e}"))))
            .transpose()
    };
    let sse = checked(keys::SSE, |v| match v {
        "AES256" | "aws:kms" | "aws:kms:dsse" => Ok(v.to_string()),
        _ => Err(format!("{v:?} is not AES256, aws:kms or aws:kms:dsse")),
    })?;
    let sse_kms_key_id = checked(keys::SSE_KMS_KEY_ID, parse_word)?;
    if sse_kms_key_id.is_some() && !sse.as_deref().is_some_and(|s| s.starts_with("aws:kms")) {
        return Err(invalid(format!(
            "{}: needs {}: aws:kms",
            keys::SSE_KMS_KEY_ID,
            keys::SSE
        )));
    }
    let role_arn = checked(keys::ROLE_ARN, parse_word)?;
    if let Some(r) = &role_arn
        && !r.starts_with("arn:")
    {
        return Err(invalid(format!("{}: {r:?} is not an ARN", keys::ROLE_ARN)));
    }
    let sts_endpoint = attr(attrs, keys::STS_ENDPOINT).map(str::to_string);
    if let Some(e) = &sts_endpoint {
        endpoint(e, keys::STS_ENDPOINT)?;
    }
    Ok(StoreArgs {
        endpoint_url,
        region: region_name,
        force_path_style: bool_attr(attrs, keys::PATH_STYLE)?,
        requester_pays: bool_attr(attrs, keys::REQUESTER_PAYS)?,
        sse,
        sse_kms_key_id,
        storage_class: checked(keys::STORAGE_CLASS, parse_storage_class)?,
        role_arn,
        sts_endpoint,
        workload_identity_provider: checked(keys::WORKLOAD_IDENTITY_PROVIDER, parse_word)?,
        gcp_service_account: checked(keys::GCP_SERVICE_ACCOUNT, parse_word)?,
        ..Default::default()
    })
}

/// The mount options of a volume: its PV `mountOptions` and `mountOptions` attribute.
pub fn volume_options(
    attrs: &HashMap<String, String>,
    mount_flags: &[String],
) -> Result<VolumeOptions, Status> {
    if mount_flags.len() > MAX_ENTRIES {
        return Err(invalid(format!(
            "mountOptions: at most {MAX_ENTRIES} entries"
        )));
    }
    let mut items: Vec<&str> = mount_flags.iter().map(|s| s.as_str()).collect();
    if let Some(o) = attrs.get(keys::MOUNT_OPTIONS) {
        items.push(o);
    }
    VolumeOptions::from_mount_options(items).map_err(|e| invalid(format!("mountOptions: {e}")))
}

/// Where a volume's credentials come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthSource {
    /// Its Secret.
    Secret,
    /// The pod's service account token, exchanged at STS.
    Pod,
    /// The node plugin's own identity (admin opt-in).
    Driver,
    /// None: unsigned requests (public buckets), or a memory volume.
    Anonymous,
}

/// The credentials source of a volume: what `authenticationSource` says, else its Secret,
/// else the pod's token when kubelet passed one (the role is looked up later); never the
/// node's identity unless asked for and allowed.
pub fn auth_source(
    attrs: &HashMap<String, String>,
    secrets: &Secrets,
    provider: Provider,
    policy: &DriverPolicy,
) -> Result<AuthSource, Status> {
    let has_secret = secrets.s3.is_some() || secrets.gcs_key.is_some();
    let source = match attr(attrs, keys::AUTH_SOURCE) {
        _ if provider == Provider::Memory => AuthSource::Anonymous,
        Some("secret") | None if has_secret => AuthSource::Secret,
        Some("pod") => AuthSource::Pod,
        None if super::pod_identity::has_tokens(attrs) => AuthSource::Pod,
        Some("driver") => AuthSource::Driver,
        Some("none") => AuthSource::Anonymous,
        Some("secret") | None => {
            return Err(Status::failed_precondition(
                "no credentials for this volume: give it a Secret (nodePublishSecretRef, or the \
                 secretRef of an inline volume) with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                 (or GOOGLE_SERVICE_ACCOUNT_JSON for provider gcs), or use the pod's own identity \
                 (authenticationSource: pod, with a roleArn or an IRSA-annotated ServiceAccount); \
                 for a public bucket set authenticationSource: none",
            ));
        }
        Some(other) => {
            return Err(invalid(format!(
                "{}: {other:?} is not \"secret\", \"pod\", \"driver\" or \"none\"",
                keys::AUTH_SOURCE
            )));
        }
    };
    if source == AuthSource::Driver && !policy.node_credentials_for(attrs) {
        return Err(Status::failed_precondition(
            "authenticationSource: driver: this driver does not lend its own identity to this \
             volume (the admin allows it with --allow-node-credentials, and for inline volumes \
             also --allow-node-credentials-inline); give the volume a Secret instead",
        ));
    }
    Ok(source)
}

/// Build the mount of a publish at `target`: every value checked, against the admin's
/// `policy` too, before anything happens.
pub fn publish_request(
    input: &PublishInput<'_>,
    target: PathBuf,
    policy: &DriverPolicy,
) -> Result<MountRequest, Status> {
    check_attributes(input.attrs, "volume attribute", VOLUME_ATTRIBUTES)?;
    super::pod_identity::check_pod_info(input.attrs)?;
    let source = source(input.attrs)?;
    let target_of_pod = target.clone();
    let mut args = MountArgs::new(source.url(), target.clone());
    args.store = store_args(input.attrs)?;
    args.volume = volume_options(input.attrs, input.mount_flags)?;
    policy.apply_limits(&mut args.volume, source.provider)?;
    if source.provider == Provider::Memory {
        args.memory_capacity = policy.memory_volume_size;
    }
    let volume_read_only = input.cap_read_only || args.volume.read_only;
    let read_only = input.readonly || volume_read_only;
    args.volume.read_only = if input.shared {
        volume_read_only
    } else {
        read_only
    };
    // The pods that use a volume run as any user: let them in. Files show as nobody's unless
    // the volume says otherwise (the mount process's own user is private to it).
    args.volume.allow_other = true;
    args.volume.uid.get_or_insert(NOBODY);
    args.volume.gid.get_or_insert(NOBODY);
    if let Some(g) = input.mount_group {
        // The pod's fsGroup (VOLUME_MOUNT_GROUP): its files are the group's, group-writable.
        args.volume.gid = Some(g);
        args.volume.file_mode |= 0o060;
        args.volume.dir_mode |= 0o070;
    }
    let secrets = secrets(input.secrets, source.provider)?;
    if args.store.region.is_none() {
        args.store.region = secrets.region.clone();
    }
    let source_of_auth = auth_source(input.attrs, &secrets, source.provider, policy)?;
    let mut token = None;
    let auth = match source_of_auth {
        AuthSource::Secret => secrets.auth(source.provider).ok_or_else(|| {
            Status::failed_precondition(format!(
                "authenticationSource: secret: the Secret has no {} for provider {}",
                if source.provider == Provider::Gcs {
                    secret_keys::GCS_KEY
                } else {
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                },
                source.provider.scheme()
            ))
        })?,
        AuthSource::Pod => {
            let gcs = source.provider == Provider::Gcs;
            token = Some(super::pod_identity::pick_token(
                input.attrs,
                attr(input.attrs, keys::TOKEN_AUDIENCE),
                gcs,
            )?);
            if gcs && args.store.workload_identity_provider.is_none() {
                args.store.workload_identity_provider =
                    policy.gcp_workload_identity_provider.clone();
            }
            if let Some((ns, _, pod)) = super::pod_identity::pod_of(input.attrs) {
                args.store.role_session_name = Some(crate::store::identity::session_name(
                    &format!("pail-{ns}-{pod}"),
                ));
            }
            // The mounter names the file it keeps the token in.
            Auth::Token {
                file: PathBuf::new(),
            }
        }
        AuthSource::Driver => Auth::Chain,
        AuthSource::Anonymous => Auth::Anonymous,
    };
    let driver = source_of_auth == AuthSource::Driver;
    Ok(MountRequest {
        volume_id: input.volume_id.to_string(),
        target,
        spec: MountSpec {
            args,
            auth,
            net: Some(policy.net_spec(driver)),
            env: policy.identity_env(driver),
        },
        token,
        read_only,
        pod: pod_ref(input.attrs, &target_of_pod),
        share: None,
    })
}

/// Share `req`'s mount with the other pods of the node staged at `staging` that may reach
/// the same: the key is a SHA-256 of the volume id, the identity the mount signs with (with
/// `authenticationSource: pod`, the pod's namespace and ServiceAccount; else the spec's own
/// credentials) and the whole spec (options, endpoint, policy, secrets). Anything different
/// gives another mount.
pub fn share(req: &mut MountRequest, attrs: &HashMap<String, String>, staging: PathBuf) {
    let mut identity = String::new();
    if matches!(req.spec.auth, Auth::Token { .. }) {
        match super::pod_identity::pod_of(attrs) {
            Some((ns, sa, _)) => {
                // One session name for the ServiceAccount's mount, not the first pod's.
                req.spec.args.store.role_session_name = Some(crate::store::identity::session_name(
                    &format!("pail-{ns}-sa-{sa}"),
                ));
                identity = format!("serviceaccount {ns}/{sa}");
            }
            // Without the ServiceAccount's name, the pod's own mount.
            None => {
                identity = format!(
                    "pod {}",
                    req.pod.as_ref().map(|p| p.uid.as_str()).unwrap_or_default()
                )
            }
        }
    }
    let mut spec = req.spec.clone();
    spec.args.mountpoint = PathBuf::new();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [
        req.volume_id.as_bytes(),
        identity.as_bytes(),
        &spec.to_json(),
    ] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part);
    }
    let key = ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    req.share = Some(Share { staging, key });
}

/// The pod of a publish: namespace and name from kubelet's pod info, uid from the target
/// path (`…/pods/<uid>/volumes/…`).
fn pod_ref(attrs: &HashMap<String, String>, target: &std::path::Path) -> Option<PodRef> {
    use super::pod_identity::{NAMESPACE_KEY, POD_KEY};
    let uid = target
        .iter()
        .skip_while(|c| *c != "pods")
        .nth(1)?
        .to_str()?
        .to_string();
    let name = |k| attr(attrs, k).filter(|v| super::pod_identity::is_object_name(v));
    Some(PodRef {
        namespace: name(NAMESPACE_KEY)?.to_string(),
        name: name(POD_KEY)?.to_string(),
        uid: uid
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-')
            .then_some(uid)?,
    })
}

/// What a Secret holds, checked.
#[derive(Default)]
pub struct Secrets {
    /// S3 keys.
    pub s3: Option<Credentials>,
    /// A GCS service account JSON.
    pub gcs_key: Option<String>,
    /// (Provisioner secret) endpoint for DeleteVolume.
    pub endpoint: Option<String>,
    /// (Provisioner secret) region for DeleteVolume.
    pub region: Option<String>,
}

impl Secrets {
    /// The credentials these secrets give a mount of `provider`, if any.
    pub fn auth(&self, provider: Provider) -> Option<Auth> {
        match provider {
            Provider::Gcs => self
                .gcs_key
                .as_ref()
                .map(|json| Auth::GcsKey { json: json.clone() }),
            _ => self.s3.as_ref().map(|c| Auth::Keys {
                access_key_id: c.access_key_id.clone(),
                secret_access_key: c.secret_access_key.clone(),
                session_token: c.session_token.clone(),
            }),
        }
    }
}

/// Parse and check a Secret for `provider`.
pub fn secrets(map: &HashMap<String, String>, provider: Provider) -> Result<Secrets, Status> {
    if map.len() > MAX_ENTRIES {
        return Err(invalid(format!(
            "secret: {} keys, at most {MAX_ENTRIES}",
            map.len()
        )));
    }
    let mut s = Secrets::default();
    let (mut id, mut secret, mut token) = (None, None, None);
    for (k, v) in map {
        if v.len() > 64 * 1024 {
            return Err(invalid(format!("secret key {k}: value too long")));
        }
        let plain = || {
            if v.chars().any(|c| c.is_control()) {
                Err(invalid(format!(
                    "secret key {k}: control characters in value"
                )))
            } else {
                Ok(v.clone())
            }
        };
        match k.as_str() {
            secret_keys::ACCESS_KEY_ID => id = Some(plain()?),
            secret_keys::SECRET_ACCESS_KEY => secret = Some(plain()?),
            secret_keys::SESSION_TOKEN => token = Some(plain()?),
            secret_keys::GCS_KEY => {
                if serde_json::from_str::<serde_json::Value>(v).is_err() {
                    return Err(invalid(format!("secret key {k}: not JSON")));
                }
                s.gcs_key = Some(v.clone());
            }
            secret_keys::ENDPOINT => {
                endpoint(v, "secret key endpointUrl")?;
                s.endpoint = Some(v.clone());
            }
            secret_keys::REGION | secret_keys::AWS_REGION | secret_keys::AWS_DEFAULT_REGION => {
                region(v)?;
                s.region = Some(v.clone());
            }
            _ => return Err(invalid(format!("unknown secret key {k:?}"))),
        }
    }
    match (id, secret) {
        (Some(access_key_id), Some(secret_access_key)) => {
            s.s3 = Some(Credentials {
                access_key_id,
                secret_access_key,
                session_token: token,
            })
        }
        (None, None) => {}
        _ => {
            return Err(invalid(format!(
                "secret: {} and {} go together",
                secret_keys::ACCESS_KEY_ID,
                secret_keys::SECRET_ACCESS_KEY
            )));
        }
    }
    if provider == Provider::S3 && s.gcs_key.is_some() {
        return Err(invalid(format!(
            "secret key {} is for provider \"gcs\"",
            secret_keys::GCS_KEY
        )));
    }
    Ok(s)
}

#[cfg(test)]
mod tests;
