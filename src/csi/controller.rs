//! The Controller service: dynamic provisioning. CreateVolume gives each volume its own
//! prefix of a bucket (or, with `bucketPerVolume`, its own S3 bucket), idempotent per name;
//! DeleteVolume removes what it created. A small record next to the volume
//! (`<prefix>.pail-volume.json`, or `.pail-volume.json` in a per-volume bucket) keeps the
//! name and requested size, so a retry with another size is ALREADY_EXISTS.

use std::collections::HashMap;

use bytes::Bytes;
use object_store::PutPayload;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use super::pb::controller_server::Controller;
use super::pb::controller_service_capability::{self, rpc};
use super::pb::validate_volume_capabilities_response::Confirmed;
use super::pb::*;
use super::volume::{
    VOLUME_ATTRIBUTES, capability, credentials, endpoint, keys, mount_options, provider,
    secret_keys,
};
use crate::store::source::{Credentials, normalize_prefix, validate_bucket};
use crate::store::{Source, Store, StoreErrorKind, StoreOptions};

/// CSI limits volume ids to 128 bytes.
const MAX_VOLUME_ID: usize = 128;

/// Defaults for DeleteVolume, which receives only a volume id and secrets.
#[derive(Debug, Clone, Default)]
pub struct ControllerService {
    /// Endpoint when neither parameters nor secrets name one.
    pub default_endpoint: Option<String>,
    /// Region when neither parameters nor secrets name one.
    pub default_region: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct VolumeRecord {
    name: String,
    capacity_bytes: i64,
}

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

fn store_status(e: crate::store::StoreError) -> Status {
    match e.kind {
        StoreErrorKind::PermissionDenied => Status::permission_denied(e.to_string()),
        StoreErrorKind::NotFound => Status::not_found(e.to_string()),
        StoreErrorKind::Config | StoreErrorKind::InvalidKey => {
            Status::invalid_argument(e.to_string())
        }
        _ => Status::unavailable(e.to_string()),
    }
}

/// A volume id: `provider/bucket/prefix`.
fn volume_id(provider: &str, bucket: &str, prefix: &str) -> String {
    format!("{provider}/{bucket}/{prefix}")
}

fn parse_volume_id(id: &str) -> Option<(&str, &str, &str)> {
    let (provider, rest) = id.split_once('/')?;
    let (bucket, prefix) = rest.split_once('/')?;
    if !matches!(provider, "s3" | "gcs")
        || validate_bucket(bucket).is_err()
        || normalize_prefix(prefix).ok()? != prefix
    {
        return None;
    }
    Some((provider, bucket, prefix))
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

struct Target {
    provider: &'static str,
    bucket: String,
    endpoint: Option<String>,
    region: Option<String>,
    requester_pays: bool,
}

fn open_store(t: &Target, secrets: &HashMap<String, String>) -> Result<Store, Status> {
    let (env, gcs_key) = credentials(secrets, t.provider)?;
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let creds = match (
        get(secret_keys::ACCESS_KEY_ID),
        get(secret_keys::SECRET_ACCESS_KEY),
    ) {
        (Some(id), Some(secret)) => Some(Credentials {
            access_key_id: id,
            secret_access_key: secret,
            session_token: get(secret_keys::SESSION_TOKEN),
        }),
        _ => None,
    };
    let scheme = if t.provider == "gcs" { "gs" } else { "s3" };
    let source =
        Source::parse(&format!("{scheme}://{}/", t.bucket)).map_err(|e| invalid(e.to_string()))?;
    let opts = StoreOptions {
        region: t.region.clone(),
        endpoint_url: t.endpoint.clone(),
        requester_pays: t.requester_pays,
        credentials: creds,
        service_account_key: gcs_key,
        ..Default::default()
    };
    Store::open(&source, &opts).map_err(store_status)
}

impl ControllerService {
    fn resolve_endpoint(
        &self,
        params: Option<&String>,
        secrets: &HashMap<String, String>,
    ) -> Result<Option<String>, Status> {
        let e = params
            .or(secrets.get(secret_keys::ENDPOINT))
            .filter(|e| !e.is_empty())
            .cloned()
            .or_else(|| self.default_endpoint.clone());
        if let Some(e) = &e {
            endpoint(e, keys::ENDPOINT)?;
        }
        Ok(e)
    }
}

/// StorageClass parameters that only the controller reads (the others are volume
/// attributes, passed on to the volume).
const PROVISIONING_PARAMS: &[&str] = &[keys::PREFIX_TEMPLATE, keys::BUCKET_PER_VOLUME];

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create_volume(
        &self,
        req: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let req = req.into_inner();
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
        for k in params.keys() {
            if !VOLUME_ATTRIBUTES.contains(&k.as_str())
                && !PROVISIONING_PARAMS.contains(&k.as_str())
                && !k.starts_with("csi.storage.k8s.io/")
            {
                return Err(invalid(format!("unknown StorageClass parameter {k:?}")));
            }
        }
        let provider = provider(params)?;
        if provider == "memory" {
            return Err(invalid(format!(
                "{}: memory volumes cannot be provisioned",
                keys::PROVIDER
            )));
        }
        if let Some(o) = params.get(keys::MOUNT_OPTIONS) {
            mount_options([o.as_str()])?;
        }
        let capacity = req
            .capacity_range
            .as_ref()
            .map(|c| {
                if c.required_bytes > 0 {
                    c.required_bytes
                } else {
                    c.limit_bytes
                }
            })
            .unwrap_or(0)
            .max(0);
        let per_bucket = params.get(keys::BUCKET_PER_VOLUME).map(|s| s.as_str()) == Some("true");
        let (bucket, prefix) = if per_bucket {
            if provider != "s3" {
                return Err(invalid(format!(
                    "{}: supported on S3 only",
                    keys::BUCKET_PER_VOLUME
                )));
            }
            (bucket_for(&req.name)?, String::new())
        } else {
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
            let base = params.get(keys::PREFIX).map(|s| s.as_str()).unwrap_or("");
            let template = params
                .get(keys::PREFIX_TEMPLATE)
                .map(|s| s.as_str())
                .unwrap_or("${pv.name}");
            let joined = format!(
                "{}/{}",
                base.trim_end_matches('/'),
                expand(template, &req.name, params)?
            );
            let prefix = normalize_prefix(&joined)
                .map_err(|e| invalid(format!("{}: {e}", keys::PREFIX_TEMPLATE)))?;
            if prefix.is_empty() {
                return Err(invalid(format!(
                    "{}: expands to an empty prefix",
                    keys::PREFIX_TEMPLATE
                )));
            }
            (bucket, prefix)
        };
        let id = volume_id(provider, &bucket, &prefix);
        if id.len() > MAX_VOLUME_ID {
            return Err(invalid(format!(
                "the volume id {id:?} would exceed {MAX_VOLUME_ID} bytes: shorten the prefix"
            )));
        }
        let target = Target {
            provider,
            bucket: bucket.clone(),
            endpoint: self.resolve_endpoint(params.get(keys::ENDPOINT), &req.secrets)?,
            region: params
                .get(keys::REGION)
                .cloned()
                .or_else(|| req.secrets.get(secret_keys::REGION).cloned())
                .or_else(|| self.default_region.clone()),
            requester_pays: params.get(keys::REQUESTER_PAYS).map(|s| s.as_str()) == Some("true"),
        };
        let store = open_store(&target, &req.secrets)?;
        let record_key = if per_bucket {
            ".pail-volume.json".to_string()
        } else {
            format!("{}.pail-volume.json", prefix.trim_end_matches('/'))
        };
        if per_bucket {
            store.create_bucket().await.map_err(store_status)?;
        }
        match store.get_all(&record_key).await.map_err(store_status)? {
            Some(bytes) => {
                let rec: VolumeRecord = serde_json::from_slice(&bytes)
                    .map_err(|e| Status::internal(format!("volume record {record_key:?}: {e}")))?;
                if rec.name != req.name || rec.capacity_bytes != capacity {
                    return Err(Status::already_exists(format!(
                        "volume {:?} exists with {} bytes requested",
                        rec.name, rec.capacity_bytes
                    )));
                }
            }
            None => {
                if !prefix.is_empty() {
                    store.put_marker(&prefix).await.map_err(store_status)?;
                }
                let rec = serde_json::to_vec(&VolumeRecord {
                    name: req.name.clone(),
                    capacity_bytes: capacity,
                })
                .expect("serializable");
                store
                    .put(&record_key, PutPayload::from(Bytes::from(rec)))
                    .await
                    .map_err(store_status)?;
            }
        }
        let mut context = HashMap::new();
        context.insert(keys::BUCKET.to_string(), bucket);
        context.insert(keys::PREFIX.to_string(), prefix);
        context.insert(keys::PROVIDER.to_string(), provider.to_string());
        for k in [
            keys::ENDPOINT,
            keys::REGION,
            keys::PATH_STYLE,
            keys::REQUESTER_PAYS,
            keys::MOUNT_OPTIONS,
        ] {
            if let Some(v) = params.get(k) {
                context.insert(k.to_string(), v.clone());
            }
        }
        if !context.contains_key(keys::ENDPOINT)
            && let Some(e) = &target.endpoint
        {
            context.insert(keys::ENDPOINT.to_string(), e.clone());
        }
        tracing::info!(name = %req.name, volume_id = %id, "CreateVolume");
        Ok(Response::new(CreateVolumeResponse {
            volume: Some(Volume {
                capacity_bytes: capacity,
                volume_id: id,
                volume_context: context,
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
        let Some((provider, bucket, prefix)) = parse_volume_id(&req.volume_id) else {
            tracing::info!(volume_id = %req.volume_id, "DeleteVolume of an id pail did not create: nothing to do");
            return Ok(Response::new(DeleteVolumeResponse {}));
        };
        let target = Target {
            provider: if provider == "gcs" { "gcs" } else { "s3" },
            bucket: bucket.to_string(),
            endpoint: self.resolve_endpoint(None, &req.secrets)?,
            region: req
                .secrets
                .get(secret_keys::REGION)
                .cloned()
                .or_else(|| self.default_region.clone()),
            requester_pays: false,
        };
        let store = open_store(&target, &req.secrets)?;
        let result = async {
            if prefix.is_empty() {
                store.delete_prefix("").await?;
                store.delete_bucket().await
            } else {
                store.delete_prefix(prefix).await?;
                store
                    .delete(&format!(
                        "{}.pail-volume.json",
                        prefix.trim_end_matches('/')
                    ))
                    .await
            }
        }
        .await;
        match result {
            Ok(()) => {}
            Err(e) if e.kind == StoreErrorKind::NotFound => {}
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
mod tests {
    use super::*;

    #[test]
    fn volume_ids_round_trip_and_foreign_ids_are_not_ours() {
        let id = volume_id("s3", "bucket-a", "vols/pvc-1/");
        assert_eq!(
            parse_volume_id(&id),
            Some(("s3", "bucket-a", "vols/pvc-1/"))
        );
        for foreign in [
            "",
            "vol-123",
            "nfs/bucket-a/x/",
            "s3/UP/x/",
            "s3/bucket-a/../x/",
        ] {
            assert_eq!(parse_volume_id(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn prefix_templates_expand_known_variables_only() {
        let params: HashMap<String, String> = [
            (
                "csi.storage.k8s.io/pvc/name".to_string(),
                "data".to_string(),
            ),
            (
                "csi.storage.k8s.io/pvc/namespace".to_string(),
                "ml".to_string(),
            ),
        ]
        .into();
        assert_eq!(
            expand("${pvc.namespace}/${pvc.name}", "pvc-1", &params).unwrap(),
            "ml/data"
        );
        assert_eq!(
            expand("${pv.name}", "pvc-1", &HashMap::new()).unwrap(),
            "pvc-1"
        );
        assert!(expand("${pvc.name}", "pvc-1", &HashMap::new()).is_err());
        assert!(expand("${nope}", "pvc-1", &HashMap::new()).is_err());
    }
}
