//! The operations GCS and the local directory share through an `object_store`
//! implementation: HEAD, ranged GET, whole writes, multipart uploads (no part copies),
//! copies and deletes. Keys that `object_store` cannot address (control characters, empty
//! segments, a trailing `/`) are refused with [`StoreErrorKind::InvalidKey`].

use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, GetOptions, GetRange, ObjectStore, ObjectStoreExt,
    PutMode, PutPayload, UpdateVersion,
};

use super::{
    Condition, ObjectInfo, PartFuture, Payload, PutOptions, PutResult, Result, StoreError,
    StoreErrorKind, Upload,
};

/// An `object_store` implementation and whether it keeps user metadata.
#[derive(Debug, Clone)]
pub(super) struct Objects {
    pub inner: Arc<dyn ObjectStore>,
    pub metadata: bool,
}

/// Parse a key into an `object_store` path.
pub(super) fn path_of(key: &str) -> Result<Path> {
    Path::parse(key)
        .ok()
        .filter(|p| p.as_ref() == key)
        .ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::InvalidKey,
                format!("{key:?}: this store cannot address keys with control characters or empty segments"),
            )
        })
}

pub(super) fn info_of(key: &str, meta: &object_store::ObjectMeta) -> ObjectInfo {
    ObjectInfo {
        key: key.to_string(),
        size: meta.size,
        mtime: SystemTime::from(meta.last_modified),
        etag: meta.e_tag.clone(),
        meta: Default::default(),
        content_type: None,
    }
}

fn payload(data: Payload) -> PutPayload {
    data.chunks().iter().cloned().collect()
}

impl Objects {
    fn attributes(&self, opts: &PutOptions) -> Result<Attributes> {
        let mut attrs = Attributes::new();
        if !opts.meta.is_empty() {
            if !self.metadata {
                return Err(StoreError::new(
                    StoreErrorKind::Unsupported,
                    "this store does not keep object metadata",
                ));
            }
            for (k, v) in &opts.meta {
                attrs.insert(
                    Attribute::Metadata(k.clone().into()),
                    AttributeValue::from(v.clone()),
                );
            }
        }
        if let Some(ct) = &opts.content_type
            && self.metadata
        {
            attrs.insert(Attribute::ContentType, AttributeValue::from(ct.clone()));
        }
        Ok(attrs)
    }

    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let path = path_of(key)?;
        let opts = GetOptions {
            head: true,
            ..Default::default()
        };
        match self.inner.get_opts(&path, opts).await {
            Ok(r) => {
                let mut info = info_of(key, &r.meta);
                for (k, v) in r.attributes.iter() {
                    match k {
                        Attribute::Metadata(name) => {
                            info.meta.insert(name.to_string(), v.as_ref().to_string());
                        }
                        Attribute::ContentType => info.content_type = Some(v.to_string()),
                        _ => {}
                    }
                }
                Ok(Some(info))
            }
            Err(e) => {
                let e = StoreError::from_object_store(e, key);
                if e.is_not_found() { Ok(None) } else { Err(e) }
            }
        }
    }

    pub async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Bytes> {
        let path = path_of(key)?;
        let want = range.end - range.start;
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range)),
            if_match: if_match.map(str::to_string),
            ..Default::default()
        };
        let data = self
            .inner
            .get_opts(&path, opts)
            .await
            .map_err(|e| StoreError::from_object_store(e, key))?
            .bytes()
            .await
            .map_err(|e| StoreError::from_object_store(e, key))?;
        if data.len() as u64 != want {
            return Err(StoreError::new(
                StoreErrorKind::Unavailable,
                format!("{key:?}: short read: {} of {want} bytes", data.len()),
            ));
        }
        Ok(data)
    }

    pub async fn put(&self, key: &str, data: Payload, opts: &PutOptions) -> Result<PutResult> {
        let path = path_of(key)?;
        let mode = match &opts.condition {
            None => PutMode::Overwrite,
            Some(Condition::IfNoneMatch) => PutMode::Create,
            Some(Condition::IfMatch(e)) => PutMode::Update(UpdateVersion {
                e_tag: Some(e.clone()),
                version: None,
            }),
        };
        let put = object_store::PutOptions {
            mode,
            attributes: self.attributes(opts)?,
            ..Default::default()
        };
        let r = self
            .inner
            .put_opts(&path, payload(data), put)
            .await
            .map_err(|e| StoreError::from_object_store(e, key))?;
        Ok(PutResult { etag: r.e_tag })
    }

    pub async fn start_upload(&self, key: &str, opts: &PutOptions) -> Result<Box<dyn Upload>> {
        if opts.condition.is_some() {
            return Err(StoreError::new(
                StoreErrorKind::Unsupported,
                format!("{key:?}: conditional multipart uploads need S3"),
            ));
        }
        let path = path_of(key)?;
        let put = object_store::PutMultipartOptions {
            attributes: self.attributes(opts)?,
            ..Default::default()
        };
        let inner = self
            .inner
            .put_multipart_opts(&path, put)
            .await
            .map_err(|e| StoreError::from_object_store(e, key))?;
        Ok(Box::new(ObjectsUpload {
            key: key.to_string(),
            inner,
        }))
    }

    pub async fn copy(&self, from: &str, to: &str) -> Result<()> {
        let (src, dst) = (path_of(from)?, path_of(to)?);
        self.inner
            .copy(&src, &dst)
            .await
            .map_err(|e| StoreError::from_object_store(e, from))
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        let path = path_of(key)?;
        match self.inner.delete(&path).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = StoreError::from_object_store(e, key);
                if e.is_not_found() { Ok(()) } else { Err(e) }
            }
        }
    }
}

struct ObjectsUpload {
    key: String,
    inner: Box<dyn object_store::MultipartUpload>,
}

#[async_trait::async_trait]
impl Upload for ObjectsUpload {
    fn put_part(&mut self, data: Payload) -> PartFuture {
        let fut = self.inner.put_part(payload(data));
        let key = self.key.clone();
        Box::pin(async move {
            fut.await
                .map_err(|e| StoreError::from_object_store(e, &key))
        })
    }

    fn copy_part(&mut self, from: &str, _range: Range<u64>, _if_match: Option<&str>) -> PartFuture {
        let message = format!("{from:?}: this store cannot copy parts of objects");
        Box::pin(async move { Err(StoreError::new(StoreErrorKind::Unsupported, message)) })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let r = self
            .inner
            .complete()
            .await
            .map_err(|e| StoreError::from_object_store(e, &self.key))?;
        Ok(PutResult { etag: r.e_tag })
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner
            .abort()
            .await
            .map_err(|e| StoreError::from_object_store(e, &self.key))
    }
}
