//! The Node service: publish a volume at a pod's target path as a `pail mount` process,
//! unpublish it. Validation comes first; secrets never reach logs or errors.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::pb::node_server::Node;
use super::pb::*;
use super::volume::{PublishInput, capability, publish_request};
use crate::mounter::{MountError, ProcessMounter};

/// The node plugin.
pub struct NodeService {
    /// Node id reported to Kubernetes.
    pub node_id: String,
    /// Target paths must be below this directory (kubelet's root dir).
    pub allowed_root: PathBuf,
    /// Starts and stops mounts.
    pub mounter: Arc<ProcessMounter>,
}

/// Check a target path: absolute, no `..`, below `root`.
pub fn check_target(target: &str, root: &Path, field: &str) -> Result<PathBuf, Status> {
    if target.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    let p = Path::new(target);
    if !p.is_absolute()
        || p.components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(Status::invalid_argument(format!(
            "{field}: {target:?} must be an absolute path without . or .."
        )));
    }
    if !p.starts_with(root) || p == root {
        return Err(Status::invalid_argument(format!(
            "{field}: {target:?} is outside the kubelet directory {}",
            root.display()
        )));
    }
    if target.len() > 4096 {
        return Err(Status::invalid_argument(format!("{field}: too long")));
    }
    Ok(p.to_path_buf())
}

fn status_of(e: MountError) -> Status {
    match e {
        MountError::Busy(m) => Status::failed_precondition(m),
        MountError::Failed(m) => Status::internal(format!("mount failed: {m}")),
        MountError::Io(m) => Status::internal(m),
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_publish_volume(
        &self,
        req: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let req = req.into_inner();
        if req.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id is required"));
        }
        let target = check_target(&req.target_path, &self.allowed_root, "target_path")?;
        let (cap_read_only, mount_flags) =
            capability(req.volume_capability.as_ref(), "volume_capability")?;
        let mount = publish_request(
            &PublishInput {
                volume_id: &req.volume_id,
                attrs: &req.volume_context,
                secrets: &req.secrets,
                readonly: req.readonly,
                cap_read_only,
                mount_flags: &mount_flags,
            },
            target,
        )?;
        tracing::info!(volume_id = %req.volume_id, target = %req.target_path, source = %mount.source, read_only = mount.read_only, "NodePublishVolume");
        let mounter = self.mounter.clone();
        tokio::task::spawn_blocking(move || mounter.publish(&mount))
            .await
            .map_err(|e| Status::internal(format!("publish task: {e}")))?
            .map_err(status_of)?;
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let req = req.into_inner();
        if req.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id is required"));
        }
        let target = check_target(&req.target_path, &self.allowed_root, "target_path")?;
        tracing::info!(volume_id = %req.volume_id, target = %req.target_path, "NodeUnpublishVolume");
        let mounter = self.mounter.clone();
        tokio::task::spawn_blocking(move || mounter.unpublish(&target))
            .await
            .map_err(|e| Status::internal(format!("unpublish task: {e}")))?
            .map_err(status_of)?;
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let req = req.into_inner();
        if req.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id is required"));
        }
        let path = check_target(&req.volume_path, &self.allowed_root, "volume_path")?;
        let mounter = self.mounter.clone();
        let (mounted, live) = tokio::task::spawn_blocking(move || {
            let mounted = crate::mounter::kernel::mount_type(&path).as_deref() == Some("fuse.pail");
            (mounted, mounter.is_live(&path))
        })
        .await
        .map_err(|e| Status::internal(format!("stats task: {e}")))?;
        if !mounted {
            return Err(Status::not_found(format!(
                "{} is not a pail mount",
                req.volume_path
            )));
        }
        // Object stores have no capacity: report what the mount reports (large and free),
        // and whether its process is alive, which kubelet turns into events.
        let (usage, condition) = if live {
            let usage = statvfs_bytes(&req.volume_path)
                .map(|(total, free)| {
                    vec![VolumeUsage {
                        available: free,
                        total,
                        used: total - free,
                        unit: volume_usage::Unit::Bytes as i32,
                    }]
                })
                .unwrap_or_default();
            (
                usage,
                VolumeCondition {
                    abnormal: false,
                    message: "mounted".into(),
                },
            )
        } else {
            self.mounter
                .dead_mounts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(volume_id = %req.volume_id, path = %req.volume_path, "the mount process of this volume is gone");
            (
                vec![],
                VolumeCondition {
                    abnormal: true,
                    message: "the pail mount process of this volume is gone (transport endpoint is not connected); restart the pod".into(),
                },
            )
        };
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
                cap(rpc::Type::GetVolumeStats),
                cap(rpc::Type::VolumeCondition),
            ],
        }))
    }

    async fn node_get_info(
        &self,
        _req: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
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
mod tests {
    use super::check_target;
    use std::path::Path;

    #[test]
    fn targets_must_stay_below_the_kubelet_dir() {
        let root = Path::new("/var/lib/kubelet");
        assert!(check_target("/var/lib/kubelet/pods/x/volumes/v/mount", root, "t").is_ok());
        for bad in [
            "",
            "relative/path",
            "/etc/passwd",
            "/var/lib/kubelet",
            "/var/lib/kubelet/pods/../../../etc",
            "/var/lib/kubeletX/pods",
        ] {
            let e = check_target(bad, root, "target_path").unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }
}
