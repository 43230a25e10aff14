//! The Node service: publish a volume at a pod's target path through a [`Mounter`],
//! unpublish it, report its health. Validation comes first; secrets never reach logs or
//! errors.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::pb::node_server::Node;
use super::pb::*;
use super::pod_identity::{self, Annotations};
use super::policy::DriverPolicy;
use super::volume::{PublishInput, capability, mount_group, publish_request};
use crate::mounter::{MountError, MountRequest, MountState, Mounter};
use crate::store::Provider;

/// The node plugin.
pub struct NodeService {
    /// Node id reported to Kubernetes.
    pub node_id: String,
    /// Target paths must be below this directory (kubelet's `pods/`).
    pub allowed_root: PathBuf,
    /// Starts and stops mounts.
    pub mounter: Arc<dyn Mounter>,
    /// What the admin allows volumes.
    pub policy: DriverPolicy,
    /// Mounts whose `statvfs` has not returned (a stopped or wedged mount process).
    pub probing: Arc<std::sync::Mutex<std::collections::HashSet<PathBuf>>>,
    /// ServiceAccount annotations (the role of a pod's identity).
    pub annotations: Arc<dyn Annotations>,
    /// Most volumes of this driver on the node (NodeGetInfo); 0: no limit.
    pub max_volumes: i64,
    /// Where a condition turning abnormal is told (an Event on the pod).
    pub events: Option<crate::mounter::EventSink>,
    /// Volumes (target paths) last reported abnormal.
    pub abnormal: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// How long a `statvfs` of a mount may take before the mount is reported as not answering.
const STATS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Check a target path: absolute and canonical (no `.`, `..` or empty segments, no
/// trailing `/`), strictly below `root`.
pub fn check_target(target: &str, root: &Path, field: &str) -> Result<PathBuf, Status> {
    if target.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    if target.len() > 4096 || target.contains('\0') {
        return Err(Status::invalid_argument(format!(
            "{field}: too long or has NUL"
        )));
    }
    let canonical = target.starts_with('/')
        && target[1..]
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..");
    if !canonical {
        return Err(Status::invalid_argument(format!(
            "{field}: {target:?} must be an absolute path without \".\", \"..\" or empty segments"
        )));
    }
    let p = Path::new(target);
    if !p.starts_with(root) || p == root {
        return Err(Status::invalid_argument(format!(
            "{field}: {target:?} is outside the kubelet directory {}",
            root.display()
        )));
    }
    Ok(p.to_path_buf())
}

/// Check a volume id: present, at most 128 bytes, printable.
pub fn check_volume_id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("volume_id is required"));
    }
    if id.len() > 128 || id.chars().any(|c| c.is_control()) {
        return Err(Status::invalid_argument(
            "volume_id: at most 128 bytes, without control characters",
        ));
    }
    Ok(())
}

fn status_of(e: MountError) -> Status {
    match e {
        MountError::Busy(m) => Status::failed_precondition(m),
        MountError::Conflict(m) => Status::already_exists(m),
        MountError::Exhausted(m) => Status::resource_exhausted(m),
        MountError::Refused(m) => Status::invalid_argument(m),
        MountError::Failed(m) => Status::internal(format!("mount failed: {m}")),
        MountError::Io(m) => Status::internal(m),
    }
}

/// Run a blocking mounter call off the async workers.
async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("{what} task: {e}")))
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        req: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        let req = req.into_inner();
        check_volume_id(&req.volume_id)?;
        let staging = self.check_staging(&req.staging_target_path)?;
        capability(req.volume_capability.as_ref(), "volume_capability")?;
        // The volume's attributes are checked now, so that a bad one fails here; its mount
        // starts at the first publish, which brings the pod's identity.
        super::volume::check_attributes(
            &req.volume_context,
            "volume attribute",
            super::volume::VOLUME_ATTRIBUTES,
        )?;
        super::volume::source(&req.volume_context)?;
        tracing::info!(volume_id = %req.volume_id, staging = %req.staging_target_path, "NodeStageVolume");
        if let Some(staging) = staging {
            let mounter = self.mounter.clone();
            let id = req.volume_id.clone();
            blocking("stage", move || mounter.stage(&id, &staging))
                .await?
                .map_err(status_of)?;
        }
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        req: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let req = req.into_inner();
        check_volume_id(&req.volume_id)?;
        let staging = self.check_staging(&req.staging_target_path)?;
        tracing::info!(volume_id = %req.volume_id, staging = %req.staging_target_path, "NodeUnstageVolume");
        if let Some(staging) = staging {
            let mounter = self.mounter.clone();
            blocking("unstage", move || mounter.unstage(&staging))
                .await?
                .map_err(status_of)?;
        }
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        req: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let req = req.into_inner();
        check_volume_id(&req.volume_id)?;
        let target = check_target(&req.target_path, &self.allowed_root, "target_path")?;
        let (cap_read_only, mount_flags) =
            capability(req.volume_capability.as_ref(), "volume_capability")?;
        // A staged volume (a PersistentVolume) shares its mount; an inline one has none.
        let staging = if req.staging_target_path.is_empty() {
            None
        } else {
            self.check_staging(&req.staging_target_path)?
        };
        let mount = publish_request(
            &PublishInput {
                volume_id: &req.volume_id,
                attrs: &req.volume_context,
                secrets: &req.secrets,
                readonly: req.readonly,
                cap_read_only,
                mount_flags: &mount_flags,
                mount_group: mount_group(req.volume_capability.as_ref())?,
                shared: staging.is_some(),
            },
            target.clone(),
            &self.policy,
        )?;
        let mut mount = mount;
        if mount.token.is_some() {
            self.resolve_identity(&mut mount, &req.volume_context)
                .await?;
        }
        if let Some(staging) = staging {
            super::volume::share(&mut mount, &req.volume_context, staging);
        }
        // The endpoints, and every address their names resolve to, before any connection.
        let store = &mount.spec.args.store;
        for (field, e) in [
            ("endpointUrl", &store.endpoint_url),
            ("stsEndpoint", &store.sts_endpoint),
        ] {
            if let Some(e) = e {
                self.check_endpoint(&req.volume_id, field, e).await?;
            }
        }
        tracing::info!(volume_id = %req.volume_id, target = %req.target_path, source = %mount.spec.args.source, read_only = mount.read_only, "NodePublishVolume");
        let mounter = self.mounter.clone();
        blocking("publish", move || mounter.publish(&mount))
            .await?
            .map_err(status_of)?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let req = req.into_inner();
        check_volume_id(&req.volume_id)?;
        let target = check_target(&req.target_path, &self.allowed_root, "target_path")?;
        tracing::info!(volume_id = %req.volume_id, target = %req.target_path, "NodeUnpublishVolume");
        let mounter = self.mounter.clone();
        blocking("unpublish", move || mounter.unpublish(&target))
            .await?
            .map_err(status_of)?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let req = req.into_inner();
        check_volume_id(&req.volume_id)?;
        if req.volume_path.is_empty() {
            return Err(Status::invalid_argument("volume_path is required"));
        }
        // The volume is looked up first: an unknown one is NOT_FOUND whatever the path.
        let not_found = || {
            Status::not_found(format!(
                "volume {} is not published at {}",
                req.volume_id, req.volume_path
            ))
        };
        let Ok(path) = check_target(&req.volume_path, &self.allowed_root, "volume_path") else {
            return Err(not_found());
        };
        let mounter = self.mounter.clone();
        let state = blocking("stats", move || mounter.state(&path)).await?;
        let (usage, condition) = match state {
            MountState::Live(info) if info.volume_id == req.volume_id && info.restarting => {
                tracing::warn!(volume_id = %req.volume_id, restarts = info.restarts, "the mount process died; a successor is starting");
                let restarting = VolumeCondition {
                    abnormal: true,
                    message: format!(
                        "the mount process died and a successor is starting on the same connection (requests wait meanwhile; {} restarts so far)",
                        info.restarts
                    ),
                };
                (vec![], restarting)
            }
            MountState::Live(info) if info.volume_id == req.volume_id => {
                match self.statvfs(PathBuf::from(&req.volume_path)).await {
                    Some(usage) => {
                        let ok = VolumeCondition {
                            abnormal: false,
                            message: if info.restarts == 0 {
                                "mounted".into()
                            } else {
                                format!(
                                    "mounted; its process died and was replaced {} times without unmounting",
                                    info.restarts
                                )
                            },
                        };
                        (usage, ok)
                    }
                    None => {
                        tracing::warn!(volume_id = %req.volume_id, path = %req.volume_path, "the mount does not answer");
                        let stuck = VolumeCondition {
                            abnormal: true,
                            message: "the mount does not answer (its pail mount process may be stopped or stuck)".into(),
                        };
                        (vec![], stuck)
                    }
                }
            }
            MountState::Dead => {
                tracing::warn!(volume_id = %req.volume_id, path = %req.volume_path, "the mount process of this volume is gone");
                let dead = VolumeCondition {
                    abnormal: true,
                    message: "the pail mount process of this volume is gone (transport endpoint is not connected); restart the pod".into(),
                };
                (vec![], dead)
            }
            _ => return Err(not_found()),
        };
        self.condition_changed(&req.volume_id, &req.volume_path, &condition);
        Ok(Response::new(NodeGetVolumeStatsResponse {
            usage,
            volume_condition: Some(condition),
        }))
    }

    async fn node_get_capabilities(
        &self,
        _req: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        use node_service_capability::{Rpc, Type, rpc};
        let cap = |t: rpc::Type| NodeServiceCapability {
            r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })),
        };
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: vec![
                cap(rpc::Type::StageUnstageVolume),
                cap(rpc::Type::GetVolumeStats),
                cap(rpc::Type::VolumeCondition),
                cap(rpc::Type::VolumeMountGroup),
            ],
        }))
    }

    async fn node_get_info(
        &self,
        _req: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: self.max_volumes,
            accessible_topology: None,
        }))
    }
}

impl NodeService {
    /// Check a staging path: present and canonical. Shared mounts live below it only when
    /// it is below kubelet's directory (the parent of `pods/`), where nothing but kubelet
    /// makes paths; elsewhere (`None`) each publish gets a mount of its own.
    fn check_staging(&self, path: &str) -> Result<Option<PathBuf>, Status> {
        let p = check_target(path, Path::new("/"), "staging_target_path")?;
        let kubelet = self.allowed_root.parent().unwrap_or(&self.allowed_root);
        if p.starts_with(kubelet) && p != kubelet {
            Ok(Some(p))
        } else {
            tracing::warn!(staging = %path, kubelet = %kubelet.display(), "a staging path outside kubelet's directory: its pods' mounts are not shared");
            Ok(None)
        }
    }

    /// Tell the pod when its volume's condition turns abnormal (once per episode).
    fn condition_changed(&self, volume_id: &str, path: &str, c: &VolumeCondition) {
        let turned = {
            let mut abnormal = self.abnormal.lock().unwrap_or_else(|p| p.into_inner());
            if c.abnormal {
                abnormal.insert(path.to_string())
            } else {
                abnormal.remove(path);
                false
            }
        };
        if let (true, Some(sink), Some(pod)) = (
            turned,
            &self.events,
            self.mounter.pod_of(std::path::Path::new(path)),
        ) {
            sink(crate::mounter::MountEvent {
                volume_id: volume_id.to_string(),
                pod,
                reason: "VolumeAbnormal",
                message: c.message.clone(),
                warning: true,
            });
        }
    }

    /// Check an endpoint a volume names, and every address its name resolves to, against
    /// the admin's allow-list.
    async fn check_endpoint(&self, volume_id: &str, field: &str, e: &str) -> Result<(), Status> {
        let url = url::Url::parse(e)
            .map_err(|_| Status::invalid_argument(format!("{field}: {e:?} is not a URL")))?;
        if let Err(err) = self.policy.net.check_endpoint_resolved(&url).await {
            tracing::warn!(volume_id = %volume_id, endpoint = %e, error = %err, "endpoint refused");
            return Err(match err.kind {
                crate::store::StoreErrorKind::Unavailable => Status::unavailable(format!(
                    "{field}: {}: the name does not resolve now",
                    url.host_str().unwrap_or_default()
                )),
                _ => Status::invalid_argument(format!("{field}: {}", err.message)),
            });
        }
        Ok(())
    }

    /// Complete a pod identity: the role (AWS) or service account (Google) the volume does
    /// not name comes from the pod's ServiceAccount annotations.
    async fn resolve_identity(
        &self,
        mount: &mut MountRequest,
        attrs: &std::collections::HashMap<String, String>,
    ) -> Result<(), Status> {
        let gcs = mount
            .spec
            .args
            .source
            .strip_prefix(Provider::Gcs.scheme())
            .is_some_and(|r| r.starts_with("://"));
        let store = &mut mount.spec.args.store;
        if gcs && store.workload_identity_provider.is_none() {
            return Err(Status::failed_precondition(
                "authenticationSource: pod: a gcs volume needs workloadIdentityProvider (or the \
                 driver's --workload-identity-provider)",
            ));
        }
        let needed = if gcs {
            store.gcp_service_account.is_none()
        } else {
            store.role_arn.is_none()
        };
        if !needed {
            return Ok(());
        }
        let Some((ns, sa, _)) = pod_identity::pod_of(attrs) else {
            return Err(Status::failed_precondition(
                "authenticationSource: pod: the volume names no roleArn and kubelet did not say \
                 which ServiceAccount the pod runs as (the CSIDriver needs podInfoOnMount)",
            ));
        };
        let annotations = self.annotations.service_account(&ns, &sa).await?;
        if gcs {
            // Without impersonation the federated identity itself is used.
            store.gcp_service_account = annotations
                .get(pod_identity::GCP_SA_ANNOTATION)
                .map(|v| crate::options::parse_word(v))
                .transpose()
                .map_err(|e| {
                    Status::failed_precondition(format!(
                        "ServiceAccount {ns}/{sa}: annotation {}: {e}",
                        pod_identity::GCP_SA_ANNOTATION
                    ))
                })?;
            return Ok(());
        }
        let role = annotations.get(pod_identity::ROLE_ANNOTATION).ok_or_else(|| {
            Status::failed_precondition(format!(
                "authenticationSource: pod: ServiceAccount {ns}/{sa} has no {} annotation and the \
                 volume names no roleArn: the pod has no AWS role (the node's identity is never \
                 lent in its place)",
                pod_identity::ROLE_ANNOTATION
            ))
        })?;
        let role = crate::options::parse_word(role)
            .ok()
            .filter(|r| r.starts_with("arn:"))
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "ServiceAccount {ns}/{sa}: annotation {} is not an ARN",
                    pod_identity::ROLE_ANNOTATION
                ))
            })?;
        store.role_arn = Some(role);
        Ok(())
    }

    /// The mount's size, from a `statvfs` run off the async workers; `None` when it did not
    /// answer within [`STATS_TIMEOUT`] (or an earlier one still has not): one stuck call per
    /// mount at most, so a wedged mount cannot pin threads nor stall other volumes.
    async fn statvfs(&self, path: PathBuf) -> Option<Vec<VolumeUsage>> {
        {
            let mut probing = self.probing.lock().unwrap_or_else(|p| p.into_inner());
            if !probing.insert(path.clone()) {
                return None;
            }
        }
        let probing = self.probing.clone();
        let task = tokio::task::spawn_blocking(move || {
            let r = statvfs_bytes(&path.to_string_lossy());
            probing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&path);
            r
        });
        match tokio::time::timeout(STATS_TIMEOUT, task).await {
            Ok(Ok(Some((total, free)))) => Some(vec![VolumeUsage {
                available: free,
                total,
                used: total - free,
                unit: volume_usage::Unit::Bytes as i32,
            }]),
            Ok(_) => Some(vec![]),
            Err(_) => None,
        }
    }
}

fn statvfs_bytes(path: &str) -> Option<(i64, i64)> {
    let c = std::ffi::CString::new(path).ok()?;
    // SAFETY: `st` is plain data that statvfs fills; `c` is a valid path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as i64;
    Some((st.f_blocks as i64 * frsize, st.f_bavail as i64 * frsize))
}

#[cfg(test)]
mod tests;
