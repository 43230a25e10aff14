//! The Controller service: dynamic provisioning. CreateVolume gives each volume its own
//! prefix of a bucket (or, with `bucketPerVolume`, its own S3 bucket), idempotent per name;
//! DeleteVolume removes what it created. A request is first turned into a [`Plan`] (pure
//! parsing), then the plan is ensured against the bucket a [`BucketOpener`] gives. A small
//! record next to the volume (`<prefix>.pail-volume.json`, or `.pail-volume.json` in a
//! per-volume bucket) keeps the name and requested size, so a retry with another size is
//! ALREADY_EXISTS.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use super::pb::controller_server::Controller;
use super::pb::controller_service_capability::{self, rpc};
use super::pb::validate_volume_capabilities_response::Confirmed;
use super::pb::*;
use super::volume::{
    Secrets, VOLUME_ATTRIBUTES, bool_attr, capability, check_attributes, endpoint, keys, provider,
    secrets, store_args, volume_options,
};
use crate::store::source::{normalize_prefix, validate_bucket};
use crate::store::{
    Auth, Bucket, BucketExt, Payload, Provider, PutOptions, SharedBucket, Source, StoreError,
    StoreErrorKind, StoreOptions,
};

/// CSI limits volume ids to 128 bytes.
const MAX_VOLUME_ID: usize = 128;

/// StorageClass parameters that only the controller reads (the others are volume
/// attributes, passed on to the volume).
const PROVISIONING_PARAMS: &[&str] = &[keys::PREFIX_TEMPLATE, keys::BUCKET_PER_VOLUME];

/// A bucket the controller works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// S3 or GCS.
    pub provider: Provider,
    /// Bucket name.
    pub bucket: String,
    /// Endpoint, when not the provider's own.
    pub endpoint: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Pay for requests.
    pub requester_pays: bool,
}

/// Opens the bucket of a [`Target`] with the credentials of a Secret.
pub trait BucketOpener: Send + Sync {
    /// The bucket.
    fn open(&self, target: &Target, secrets: &Secrets) -> Result<SharedBucket, Status>;
}

/// The real opener: [`crate::store::open`].
pub struct StoreOpener;

impl BucketOpener for StoreOpener {
    fn open(&self, t: &Target, secrets: &Secrets) -> Result<SharedBucket, Status> {
        let source = Source {
            provider: t.provider,
            bucket: t.bucket.clone(),
            prefix: String::new(),
        };
        let opts = StoreOptions {
            region: t.region.clone(),
            endpoint_url: t.endpoint.clone(),
            requester_pays: t.requester_pays,
            auth: match (&secrets.s3, &secrets.gcs_key) {
                (Some(keys), _) => Auth::Keys(keys.clone()),
                (None, Some(key)) => Auth::GcsKey(key.clone()),
                (None, None) => Auth::Chain,
            },
            ..Default::default()
        };
        crate::store::open(&source, &opts).map_err(store_status)
    }
}

/// Where DeleteVolume goes when its Secret names nothing (it receives no parameters).
#[derive(Debug, Clone, Default)]
pub struct Defaults {
    /// Endpoint.
    pub endpoint: Option<String>,
    /// Region.
    pub region: Option<String>,
}

/// The service.
pub struct ControllerService {
    /// Defaults for DeleteVolume.
    pub defaults: Defaults,
    /// Opens buckets.
    pub opener: Arc<dyn BucketOpener>,
}

#[derive(Debug, Serialize, Deserialize)]
struct VolumeRecord {
    name: String,
    capacity_bytes: i64,
}

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

fn store_status(e: StoreError) -> Status {
    match e.kind {
        StoreErrorKind::PermissionDenied => Status::permission_denied(e.to_string()),
        StoreErrorKind::NotFound => Status::not_found(e.to_string()),
        StoreErrorKind::AlreadyExists => Status::already_exists(e.to_string()),
        StoreErrorKind::Config | StoreErrorKind::InvalidKey => {
            Status::invalid_argument(e.to_string())
        }
        _ => Status::unavailable(e.to_string()),
    }
}

/// A volume id: `provider/bucket/prefix`.
fn volume_id(provider: Provider, bucket: &str, prefix: &str) -> String {
    let p = if provider == Provider::Gcs {
        "gcs"
    } else {
        "s3"
    };
    format!("{p}/{bucket}/{prefix}")
}

/// The provider, bucket and prefix of a volume id pail made.
fn parse_volume_id(id: &str) -> Option<(Provider, &str, &str)> {
    let (provider, rest) = id.split_once('/')?;
    let (bucket, prefix) = rest.split_once('/')?;
    let provider = match provider {
        "s3" => Provider::S3,
        "gcs" => Provider::Gcs,
        _ => return None,
    };
    if validate_bucket(bucket).is_err() || normalize_prefix(prefix).ok()? != prefix {
        return None;
    }
    Some((provider, bucket, prefix))
}

/// FNV-1a: stable across runs and versions.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// The per-volume part of a prefix, shortened when the volume id would exceed 128 bytes:
/// a readable stem and a hash of the whole, so each name keeps its own stable prefix.
fn fit(fixed: usize, leaf: &str) -> Result<String, Status> {
    if fixed + leaf.len() < MAX_VOLUME_ID {
        return Ok(leaf.to_string());
    }
    let hash = format!("{:012x}", fnv(leaf) & 0xffff_ffff_ffff);
    let room = MAX_VOLUME_ID.saturating_sub(fixed + 1 + hash.len() + 1);
    if room < 8 {
        return Err(invalid(
            "the bucket name and prefix leave no room for a volume id of 128 bytes: shorten them",
        ));
    }
    let mut end = room;
    while !leaf.is_char_boundary(end) {
        end -= 1;
    }
    Ok(format!("{}-{hash}", &leaf[..end]))
}

/// Expand `${pv.name}`, `${pvc.name}` and `${pvc.namespace}` in a prefix template.
fn expand(template: &str, name: &str, params: &HashMap<String, String>) -> Result<String, Status> {
    let mut out = template.replace("${pv.name}", name);
    for (var, key) in [
        ("${pvc.name}", "csi.storage.k8s.io/pvc/name"),
        ("${pvc.namespace}", "csi.storage.k8s.io/pvc/namespace"),
    ] {
        if out.contains(var) {
            let v = params.get(key).ok_or_else(|| {
                invalid(format!(
                    "{}: {var} needs the provisioner's --extra-create-metadata",
                    keys::PREFIX_TEMPLATE
                ))
            })?;
            out = out.replace(var, v);
        }
    }
    if out.contains("${") {
        return Err(invalid(format!(
            "{}: unknown variable in {template:?}",
            keys::PREFIX_TEMPLATE
        )));
    }
    Ok(out)
}

/// A bucket name for a volume name (lowercase, S3-safe, at most 63 characters).
fn bucket_for(name: &str) -> Result<String, Status> {
    let b: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let b = b.trim_matches('-').to_string();
    validate_bucket(&b).map_err(|e| invalid(format!("name: {e}")))?;
    Ok(b)
}

/// What CreateVolume makes, decided from the request alone.
#[derive(Debug)]
pub struct Plan {
    name: String,
    capacity: i64,
    target: Target,
    per_bucket: bool,
    prefix: String,
    volume_id: String,
    context: HashMap<String, String>,
}

impl Plan {
    fn record_key(&self) -> String {
        record_key(&self.prefix)
    }
}

fn record_key(prefix: &str) -> String {
    if prefix.is_empty() {
        ".pail-volume.json".to_string()
    } else {
        format!("{}.pail-volume.json", prefix.trim_end_matches('/'))
    }
}

fn capacity(range: Option<&CapacityRange>) -> i64 {
    range
        .map(|c| {
            if c.required_bytes > 0 {
                c.required_bytes
            } else {
                c.limit_bytes
            }
        })
        .unwrap_or(0)
        .max(0)
}

impl ControllerService {
    fn endpoint(
        &self,
        param: Option<&String>,
        secrets: &Secrets,
    ) -> Result<Option<String>, Status> {
        let e = param
            .filter(|e| !e.is_empty())
            .cloned()
            .or_else(|| secrets.endpoint.clone())
            .or_else(|| self.defaults.endpoint.clone());
        if let Some(e) = &e {
            endpoint(e, keys::ENDPOINT)?;
        }
        Ok(e)
    }

    /// Check a CreateVolume request and decide what it makes.
    pub fn plan(&self, req: &CreateVolumeRequest) -> Result<Plan, Status> {
        if req.name.is_empty() {
            return Err(invalid("name is required"));
        }
        if req.name.len() > 253 || req.name.chars().any(|c| c.is_control()) {
            return Err(invalid("name: too long or has control characters"));
        }
        if req.volume_capabilities.is_empty() {
            return Err(invalid("volume_capabilities is required"));
        }
        for cap in &req.volume_capabilities {
            capability(Some(cap), "volume_capabilities")?;
        }
        if req.volume_content_source.is_some() {
            return Err(invalid(
                "volume_content_source: snapshots and clones are not supported",
            ));
        }
        let params = &req.parameters;
        let allowed: Vec<&str> = VOLUME_ATTRIBUTES
            .iter()
            .chain(PROVISIONING_PARAMS)
            .copied()
            .collect();
        check_attributes(params, "StorageClass parameter", &allowed)?;
        let provider = provider(params)?;
        if provider == Provider::Memory {
            return Err(invalid(format!(
                "{}: memory volumes cannot be provisioned",
                keys::PROVIDER
            )));
        }
        // Every attribute the volume will carry is checked here, as a publish would.
        volume_options(params, &[])?;
        store_args(params)?;
        if let Some(v) = params.get(keys::AUTH_SOURCE)
            && !["secret", "pod", "driver", "none"].contains(&v.as_str())
        {
            return Err(invalid(format!(
                "{}: {v:?} is not \"secret\", \"pod\", \"driver\" or \"none\"",
                keys::AUTH_SOURCE
            )));
        }
        let secrets = secrets(&req.secrets, provider)?;
        let per_bucket = bool_attr(params, keys::BUCKET_PER_VOLUME)?;
        let (bucket, prefix) = if per_bucket {
            if provider != Provider::S3 {
                return Err(invalid(format!(
                    "{}: supported on S3 only",
                    keys::BUCKET_PER_VOLUME
                )));
            }
            (bucket_for(&req.name)?, String::new())
        } else {
            self.prefix_of(req, provider)?
        };
        let target = Target {
            provider,
            bucket: bucket.clone(),
            endpoint: self.endpoint(params.get(keys::ENDPOINT), &secrets)?,
            region: params
                .get(keys::REGION)
                .cloned()
                .or_else(|| secrets.region.clone())
                .or_else(|| self.defaults.region.clone()),
            requester_pays: bool_attr(params, keys::REQUESTER_PAYS)?,
        };
        // Every volume attribute the StorageClass set reaches the volume (encryption, storage
        // class, identity…); bucket, prefix and provider are the controller's to say.
        let mut context: HashMap<String, String> = VOLUME_ATTRIBUTES
            .iter()
            .filter(|k| ![keys::BUCKET, keys::PREFIX, keys::PROVIDER].contains(k))
            .filter_map(|k| Some((k.to_string(), params.get(*k)?.clone())))
            .collect();
        context.insert(keys::BUCKET.into(), bucket.clone());
        context.insert(keys::PREFIX.into(), prefix.clone());
        // Exhaustive: a new backend must say here whether it can be provisioned.
        let provider_name = match provider {
            Provider::S3 => "s3",
            Provider::Gcs => "gcs",
            Provider::Local | Provider::Memory => {
                return Err(invalid(format!(
                    "{}: {} volumes cannot be provisioned",
                    keys::PROVIDER,
                    provider.scheme()
                )));
            }
        };
        context.insert(keys::PROVIDER.into(), provider_name.into());
        if let Some(e) = &target.endpoint {
            context.entry(keys::ENDPOINT.into()).or_insert(e.clone());
        }
        Ok(Plan {
            name: req.name.clone(),
            capacity: capacity(req.capacity_range.as_ref()),
            volume_id: volume_id(provider, &bucket, &prefix),
            target,
            per_bucket,
            prefix,
            context,
        })
    }

    /// The bucket and per-volume prefix of a volume in a shared bucket.
    fn prefix_of(
        &self,
        req: &CreateVolumeRequest,
        provider: Provider,
    ) -> Result<(String, String), Status> {
        let params = &req.parameters;
        let bucket = params
            .get(keys::BUCKET)
            .filter(|b| !b.is_empty())
            .ok_or_else(|| {
                invalid(format!(
                    "parameter {} (or {}) is required",
                    keys::BUCKET,
                    keys::BUCKET_PER_VOLUME
                ))
            })?
            .clone();
        validate_bucket(&bucket).map_err(|e| invalid(format!("{}: {e}", keys::BUCKET)))?;
        let base = normalize_prefix(params.get(keys::PREFIX).map(|s| s.as_str()).unwrap_or(""))
            .map_err(|e| invalid(format!("{}: {e}", keys::PREFIX)))?;
        let template = params
            .get(keys::PREFIX_TEMPLATE)
            .map(|s| s.as_str())
            .unwrap_or("${pv.name}");
        let leaf = normalize_prefix(&expand(template, &req.name, params)?)
            .map_err(|e| invalid(format!("{}: {e}", keys::PREFIX_TEMPLATE)))?;
        let leaf = leaf.trim_end_matches('/');
        if leaf.is_empty() {
            return Err(invalid(format!(
                "{}: expands to an empty prefix",
                keys::PREFIX_TEMPLATE
            )));
        }
        let fixed = volume_id(provider, &bucket, &base).len();
        let prefix = normalize_prefix(&format!("{base}{}", fit(fixed, leaf)?))
            .map_err(|e| invalid(format!("{}: {e}", keys::PREFIX_TEMPLATE)))?;
        Ok((bucket, prefix))
    }
}

/// Make what `plan` describes exist in `bucket` (idempotently).
pub async fn ensure(plan: &Plan, bucket: &dyn Bucket) -> Result<(), Status> {
    if plan.per_bucket {
        bucket.create_bucket().await.map_err(store_status)?;
    }
    let key = plan.record_key();
    match bucket.get_all(&key).await.map_err(store_status)? {
        Some(bytes) => {
            let rec: VolumeRecord = serde_json::from_slice(&bytes)
                .map_err(|e| Status::internal(format!("volume record {key:?}: {e}")))?;
            if rec.name != plan.name || rec.capacity_bytes != plan.capacity {
                return Err(Status::already_exists(format!(
                    "volume {:?} exists with {} bytes requested",
                    rec.name, rec.capacity_bytes
                )));
            }
        }
        None => {
            if !plan.prefix.is_empty() {
                bucket
                    .put_marker(&plan.prefix)
                    .await
                    .map_err(store_status)?;
            }
            let rec = serde_json::to_vec(&VolumeRecord {
                name: plan.name.clone(),
                capacity_bytes: plan.capacity,
            })
            .expect("serializable");
            bucket
                .put(&key, Payload::from(rec), &PutOptions::default())
                .await
                .map_err(store_status)?;
        }
    }
    Ok(())
}

impl ControllerService {
    /// The bucket and prefix of a volume id pail made, opened with `secrets`; `None` for a
    /// foreign id.
    fn open_volume(
        &self,
        id: &str,
        map: &HashMap<String, String>,
    ) -> Result<Option<(SharedBucket, String)>, Status> {
        let Some((provider, bucket, prefix)) = parse_volume_id(id) else {
            return Ok(None);
        };
        let secrets = secrets(map, provider)?;
        let target = Target {
            provider,
            bucket: bucket.to_string(),
            endpoint: self.endpoint(None, &secrets)?,
            region: secrets
                .region
                .clone()
                .or_else(|| self.defaults.region.clone()),
            requester_pays: false,
        };
        Ok(Some((
            self.opener.open(&target, &secrets)?,
            prefix.to_string(),
        )))
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        req: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let req = req.into_inner();
        let plan = self.plan(&req)?;
        let secrets = secrets(&req.secrets, plan.target.provider)?;
        let bucket = self.opener.open(&plan.target, &secrets)?;
        ensure(&plan, bucket.as_ref()).await?;
        tracing::info!(name = %req.name, volume_id = %plan.volume_id, "CreateVolume");
        Ok(Response::new(CreateVolumeResponse {
            volume: Some(Volume {
                capacity_bytes: plan.capacity,
                volume_id: plan.volume_id,
                volume_context: plan.context,
                content_source: None,
                accessible_topology: vec![],
            }),
        }))
    }

    async fn delete_volume(
        &self,
        req: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        let req = req.into_inner();
        if req.volume_id.is_empty() {
            return Err(invalid("volume_id is required"));
        }
        let Some((bucket, prefix)) = self.open_volume(&req.volume_id, &req.secrets)? else {
            tracing::info!("DeleteVolume of an id pail did not create: nothing to do");
            return Ok(Response::new(DeleteVolumeResponse {}));
        };
        let result = async {
            bucket.delete_prefix(&prefix).await?;
            if prefix.is_empty() {
                bucket.delete_bucket().await
            } else {
                bucket.delete(&record_key(&prefix)).await
            }
        }
        .await;
        match result {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(store_status(e)),
        }
        tracing::info!(volume_id = %req.volume_id, "DeleteVolume");
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let req = req.into_inner();
        if req.volume_id.is_empty() {
            return Err(invalid("volume_id is required"));
        }
        if req.volume_capabilities.is_empty() {
            return Err(invalid("volume_capabilities is required"));
        }
        let not_found = || Status::not_found(format!("no volume {:?}", req.volume_id));
        let (bucket, prefix) = self
            .open_volume(&req.volume_id, &req.secrets)?
            .ok_or_else(not_found)?;
        if bucket
            .head(&record_key(&prefix))
            .await
            .map_err(store_status)?
            .is_none()
        {
            return Err(not_found());
        }
        for cap in &req.volume_capabilities {
            if let Err(e) = capability(Some(cap), "volume_capabilities") {
                return Ok(Response::new(ValidateVolumeCapabilitiesResponse {
                    confirmed: None,
                    message: e.message().to_string(),
                }));
            }
        }
        Ok(Response::new(ValidateVolumeCapabilitiesResponse {
            confirmed: Some(Confirmed {
                volume_context: req.volume_context,
                volume_capabilities: req.volume_capabilities,
                parameters: req.parameters,
            }),
            message: String::new(),
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _req: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities: vec![ControllerServiceCapability {
                r#type: Some(controller_service_capability::Type::Rpc(
                    controller_service_capability::Rpc {
                        r#type: rpc::Type::CreateDeleteVolume as i32,
                    },
                )),
            }],
        }))
    }
}

#[cfg(test)]
mod tests;
