//! A bucket wrapper that times every request and counts it by operation and outcome
//! (`crate::telemetry`), whatever the backend.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{
    Bucket, CopyOptions, Features, ListOptions, ObjectInfo, Page, PartFuture, Payload, PutOptions,
    PutResult, Result, SharedBucket, StoreErrorKind, Upload,
};
use crate::telemetry;

/// `inner`, metered.
#[derive(Debug)]
pub struct Metered {
    inner: SharedBucket,
}

impl Metered {
    /// Meter `inner`.
    pub fn wrap(inner: SharedBucket) -> SharedBucket {
        Arc::new(Metered { inner })
    }
}

fn status<T>(r: &Result<T>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => match e.kind {
            StoreErrorKind::NotFound => "not_found",
            StoreErrorKind::PermissionDenied => "denied",
            StoreErrorKind::Precondition => "precondition",
            StoreErrorKind::AlreadyExists => "exists",
            StoreErrorKind::InvalidKey => "invalid_key",
            StoreErrorKind::Config => "config",
            StoreErrorKind::Unsupported => "unsupported",
            StoreErrorKind::Unavailable => "unavailable",
            StoreErrorKind::Full => "full",
            StoreErrorKind::Other => "error",
        },
    }
}

async fn timed<T>(op: &'static str, f: impl Future<Output = Result<T>>) -> Result<T> {
    let started = Instant::now();
    let r = f.await;
    telemetry::store_request(op, status(&r), started.elapsed());
    r
}

fn timed_part(op: &'static str, f: PartFuture) -> PartFuture {
    Box::pin(timed(op, f))
}

#[async_trait::async_trait]
impl Bucket for Metered {
    fn describe(&self) -> &str {
        self.inner.describe()
    }

    fn features(&self) -> Features {
        self.inner.features()
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        timed("head", self.inner.head(key)).await
    }

    async fn list(&self, prefix: &str, opts: &ListOptions) -> Result<Page> {
        timed("list", self.inner.list(prefix, opts)).await
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Bytes> {
        Ok(self.get_parts(key, range, if_match).await?.to_bytes())
    }

    async fn get_parts(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Payload> {
        let data = timed("get", self.inner.get_parts(key, range, if_match)).await?;
        crate::telemetry::add(crate::telemetry::Counter::BytesFetched, data.len());
        Ok(data)
    }

    async fn put(&self, key: &str, data: Payload, opts: &PutOptions) -> Result<PutResult> {
        timed("put", self.inner.put(key, data, opts)).await
    }

    async fn start_upload(&self, key: &str, opts: &PutOptions) -> Result<Box<dyn Upload>> {
        let inner = timed("start_upload", self.inner.start_upload(key, opts)).await?;
        Ok(Box::new(MeteredUpload { inner }))
    }

    async fn copy(&self, from: &str, to: &str, opts: &CopyOptions) -> Result<PutResult> {
        timed("copy", self.inner.copy(from, to, opts)).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        timed("delete", self.inner.delete(key)).await
    }

    async fn put_marker(&self, dir: &str) -> Result<()> {
        timed("put_marker", self.inner.put_marker(dir)).await
    }

    async fn create_bucket(&self) -> Result<()> {
        timed("create_bucket", self.inner.create_bucket()).await
    }

    async fn delete_bucket(&self) -> Result<()> {
        timed("delete_bucket", self.inner.delete_bucket()).await
    }
}

struct MeteredUpload {
    inner: Box<dyn Upload>,
}

#[async_trait::async_trait]
impl Upload for MeteredUpload {
    fn put_part(&mut self, data: Payload) -> PartFuture {
        timed_part("put_part", self.inner.put_part(data))
    }

    fn copy_part(&mut self, from: &str, range: Range<u64>, if_match: Option<&str>) -> PartFuture {
        timed_part("copy_part", self.inner.copy_part(from, range, if_match))
    }

    async fn complete(&mut self) -> Result<PutResult> {
        timed("complete_upload", self.inner.complete()).await
    }

    async fn abort(&mut self) -> Result<()> {
        timed("abort_upload", self.inner.abort()).await
    }
}
