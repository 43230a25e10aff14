//! A local directory acting as a bucket: the embedded default, no server needed.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::local::LocalFileSystem;

use super::raw::Raw;
use super::{Result, Source, Store, StoreError, StoreErrorKind};

pub(super) fn open(source: &Source) -> Result<Store> {
    let root = PathBuf::from(&source.bucket);
    if !root.is_dir() {
        return Err(StoreError::new(
            StoreErrorKind::NotFound,
            format!("bucket directory {} does not exist", root.display()),
        ));
    }
    let fs = LocalFileSystem::new_with_prefix(&root)
        .map_err(|e| StoreError::new(StoreErrorKind::Config, e.to_string()))?;
    let description = format!("file://{}", root.display());
    Ok(Store::new(
        Arc::new(fs),
        Raw::Local(root),
        false,
        description,
    ))
}
