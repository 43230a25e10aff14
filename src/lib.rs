//! pail: mount object-storage buckets (S3, R2, GCS, S3-compatible, local) as file systems,
//! on a host (`pail mount`) or in Kubernetes through CSI (`pail csi`).
//!
//! Dependencies point one way (a test in `tests/layout.rs` keeps them so):
//! `fuse` → `fs` → `store`; `csi` → `mounter`, `csi` → `store` (the controller);
//! `csi` → `options` and `mounter` → `options` (one typed set of mount options). `store`
//! depends on none of the others; only `store` names `object_store`.

pub mod csi;
pub mod fs;
pub mod fuse;
pub mod mounter;
pub mod options;
pub mod store;
pub mod telemetry;
