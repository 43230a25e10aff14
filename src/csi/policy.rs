//! What the admin allows a volume, whoever wrote it (on a shared cluster anyone who may
//! create a pod writes inline volumes): where credentials may come from, which endpoints
//! a mount may reach, and how much memory and staging space one mount may ask for.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::Status;

use crate::options::{NetSpec, VolumeOptions};
use crate::store::Provider;
use crate::store::net::NetPolicy;

/// The environment variables of a driver-level identity, passed to mount processes only
/// when the admin allows it (IRSA, EKS Pod Identity, ECS, GCP application credentials).
pub const DRIVER_IDENTITY_ENV: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_SESSION_NAME",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_STS_REGIONAL_ENDPOINTS",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "GOOGLE_APPLICATION_CREDENTIALS",
];

/// The admin's policy.
#[derive(Debug, Clone)]
pub struct DriverPolicy {
    /// Endpoints mounts may reach.
    pub net: Arc<NetPolicy>,
    /// Volumes without credentials of their own may use the node plugin's identity
    /// (PersistentVolumes only, unless `node_credentials_inline`).
    pub node_credentials: bool,
    /// ... inline volumes too.
    pub node_credentials_inline: bool,
    /// The node plugin's identity, as environment variables for mount processes.
    pub driver_env: Vec<(String, String)>,
    /// Most `--memory-limit` a volume may ask for.
    pub max_memory_limit: u64,
    /// Most `--max-cache-size` a volume may ask for.
    pub max_cache_size: u64,
    /// Memory volumes (`provider: memory`) and their size; refused when `None`.
    pub memory_volume_size: Option<u64>,
    /// The Google workload identity provider of pod tokens, for GCS volumes that name none.
    pub gcp_workload_identity_provider: Option<String>,
}

/// The staging space (`max-cache-size`) of a volume that names none (`pail mount`'s own
/// default is larger: it reserves nothing on a shared node).
pub const DEFAULT_CACHE_SIZE: u64 = 2 << 30;

impl DriverPolicy {
    /// A policy allowing the public endpoints only, no node credentials, default limits.
    pub fn strict() -> DriverPolicy {
        DriverPolicy {
            net: Arc::new(NetPolicy::new(&[], false).expect("valid defaults")),
            node_credentials: false,
            node_credentials_inline: false,
            driver_env: Vec::new(),
            max_memory_limit: 1 << 30,
            max_cache_size: 10 << 30,
            memory_volume_size: None,
            gcp_workload_identity_provider: None,
        }
    }

    /// The driver-level identity from this process's environment.
    pub fn capture_driver_env() -> Vec<(String, String)> {
        DRIVER_IDENTITY_ENV
            .iter()
            .filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?)))
            .collect()
    }

    /// Hold a volume's options to the limits: a default over a maximum is lowered to it, a
    /// value the volume asked for over it is refused.
    pub fn apply_limits(&self, v: &mut VolumeOptions, provider: Provider) -> Result<(), Status> {
        let defaults = VolumeOptions::default();
        let limit = |name: &str, value: &mut u64, default: u64, max: u64| {
            if *value <= max {
                Ok(())
            } else if *value == default {
                *value = max;
                Ok(())
            } else {
                Err(Status::invalid_argument(format!(
                    "mountOptions: {name} {value} is over this driver's maximum of {max} bytes"
                )))
            }
        };
        limit(
            "memory-limit",
            &mut v.memory_limit,
            defaults.memory_limit,
            self.max_memory_limit,
        )?;
        // Each mount reserves its staging space on the node: one that does not ask for
        // more takes a share that lets many volumes fit the node's budget.
        if v.max_cache_size == defaults.max_cache_size {
            v.max_cache_size = DEFAULT_CACHE_SIZE;
        }
        limit(
            "max-cache-size",
            &mut v.max_cache_size,
            defaults.max_cache_size,
            self.max_cache_size,
        )?;
        v.validate()
            .map_err(|e| Status::invalid_argument(format!("mountOptions: {e}")))?;
        if provider == Provider::Memory && self.memory_volume_size.is_none() {
            return Err(Status::invalid_argument(
                "provider: memory volumes are turned off on this driver (--memory-volume-size)",
            ));
        }
        Ok(())
    }

    /// Whether a volume may use the node's identity: a PersistentVolume (kubelet says the
    /// volume is not ephemeral, with podInfoOnMount) or, with the second opt-in, any.
    pub fn node_credentials_for(&self, attrs: &HashMap<String, String>) -> bool {
        let persistent = attrs
            .get("csi.storage.k8s.io/ephemeral")
            .map(String::as_str)
            == Some("false");
        self.node_credentials && (persistent || self.node_credentials_inline)
    }

    /// Where a mount process may connect: the admin's endpoints, and the metadata
    /// addresses (for credentials) only for `driver_identity`.
    pub fn net_spec(&self, driver_identity: bool) -> NetSpec {
        NetSpec {
            allowed_endpoints: self.net.admin_list(),
            metadata_credentials: driver_identity && self.net.metadata,
        }
    }

    /// The credential environment of a mount process: the driver's identity for
    /// `driver_identity`, else none (and no instance metadata).
    pub fn identity_env(&self, driver_identity: bool) -> Vec<(String, String)> {
        if driver_identity {
            self.driver_env.clone()
        } else {
            vec![("AWS_EC2_METADATA_DISABLED".into(), "true".into())]
        }
    }
}
