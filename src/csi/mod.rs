//! The CSI driver: Identity, Node and Controller services (tonic) over a unix socket. The
//! node service turns publishes into mounts through a [`crate::mounter::Mounter`] (it never
//! runs FUSE in its own process); the controller provisions volumes in buckets through
//! [`crate::store`]. Requests are never logged with `{:?}`: they carry
//! secrets.

/// Code generated from `proto/csi.proto`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("csi.v1");
}

/// Code generated from `proto/pluginregistration.proto` (kubelet's plugin registration).
#[allow(missing_docs, clippy::all)]
pub mod registration_pb {
    tonic::include_proto!("pluginregistration");
}

pub mod authority;
pub mod controller;
pub mod events;
pub mod identity;
pub mod metrics;
pub mod node;
pub mod pod_identity;
pub mod policy;
pub mod registration;
pub mod server;
pub mod volume;

pub use server::{DEFAULT_DRIVER_NAME, Mode, Services, serve};
