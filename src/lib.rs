//! pail: mount object-storage buckets (S3, R2, GCS, S3-compatible, local) as file systems,
//! on a host (`pail mount`) or in Kubernetes through CSI (`pail csi`).
//!
//! Dependencies point one way: `csi` → `mounter`; `fuse` → `fs` → `store`.

pub mod csi;
pub mod fs;
pub mod fuse;
pub mod mounter;
pub mod store;
