//! Unit tests of failed uploads: an in-memory store whose writes fail on demand.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};

use super::*;

/// An in-memory store whose writes fail on demand.
#[derive(Debug)]
struct Failing {
    inner: InMemory,
    fail: Arc<AtomicBool>,
}

impl std::fmt::Display for Failing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "failing")
    }
}

fn injected() -> object_store::Error {
    object_store::Error::Generic {
        store: "failing",
        source: "injected failure".into(),
    }
}

#[derive(Debug)]
struct FailingUpload {
    inner: Box<dyn MultipartUpload>,
    fail: Arc<AtomicBool>,
}

#[async_trait]
impl MultipartUpload for FailingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        if self.fail.load(Ordering::SeqCst) {
            return Box::pin(async { Err(injected()) });
        }
        self.inner.put_part(data)
    }
    async fn complete(&mut self) -> object_store::Result<PutResult> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(injected());
        }
        self.inner.complete().await
    }
    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for Failing {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(injected());
        }
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FailingUpload {
            inner,
            fail: self.fail.clone(),
        }))
    }
    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

fn failing() -> (Store, Arc<AtomicBool>, Arc<Failing>) {
    let fail = Arc::new(AtomicBool::new(false));
    let inner = Arc::new(Failing {
        inner: InMemory::new(),
        fail: fail.clone(),
    });
    (Store::wrap(inner.clone()), fail, inner)
}

#[tokio::test]
async fn a_failed_small_upload_fails_close_and_leaves_no_object() {
    let (store, fail, _) = failing();
    let fs = fs_over(store.clone());
    let (_, fh) = fs.create(ROOT_INO, "f", excl()).await.unwrap();
    fs.write(fh, 0, Bytes::from_static(b"data")).await.unwrap();
    fail.store(true, Ordering::SeqCst);
    let e = fs.flush(fh, 7).await.unwrap_err();
    assert_eq!(e.errno, libc::EIO);
    assert!(e.message.contains("\"f\""), "{e}");
    // Every later call reports it too.
    assert_eq!(fs.release(fh).await.unwrap_err().errno, libc::EIO);
    fail.store(false, Ordering::SeqCst);
    assert!(store.head("f").await.unwrap().is_none());
    assert_eq!(
        fs.lookup(ROOT_INO, "f").await.unwrap_err().errno,
        libc::ENOENT
    );
}

#[tokio::test]
async fn a_failed_multipart_upload_fails_fsync_and_keeps_the_old_object() {
    let (store, fail, inner) = failing();
    put(&store, "f", b"old").await;
    let fs = fs_over(store.clone());
    let a = fs.lookup(ROOT_INO, "f").await.unwrap();
    let fh = fs.open(a.ino, trunc()).await.unwrap();
    fs.write(fh, 0, Bytes::from(data(2500))).await.unwrap();
    fail.store(true, Ordering::SeqCst);
    assert_eq!(fs.fsync(fh).await.unwrap_err().errno, libc::EIO);
    fs.release(fh).await.unwrap_err();
    let old = inner
        .get(&Path::from("f"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&old[..], b"old");
}
